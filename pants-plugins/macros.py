# BUILD-file macros (pants.toml [GLOBAL].build_file_prelude_globs): the targets every image and
# every kind's job repeat, written once. Macros cannot import; they see the BUILD symbols.


def phoenix_image(*, pex, pex_path, repository, deployed=True, name="docker"):
    """The container image REPOSITORY:<GIT_SHA>: only PEX, installed as a venv at build time by
    the one Dockerfile of every image (src/python/Dockerfile; each folder's Dockerfile is a link
    to it). Built by `./pants package` (./pants brings up a Docker engine and a base image
    first). ``pex_path`` is the PEX's path under dist/ (the build context). ``deployed``: tagged
    `cloud-run`, which is how tools/affected_services.py finds deployables (.github/workflows/
    deploy.yml applies the folder's deploy/); "docker" targets are skipped with
    PHOENIX_NO_DOCKER."""
    docker_image(
        name=name,
        source="Dockerfile",
        dependencies=[f":{pex}", "src/python:dockerfile"],
        repository=repository,
        image_tags=["{build_args.GIT_SHA}"],
        extra_build_args=["GIT_SHA", "BASE_IMAGE", f"PEX={pex_path}"],
        tags=["cloud-run", "docker"] if deployed else ["docker"],
    )


def phoenix_job(kind):
    """The Cloud Run Job phoenix-KIND-job (one execution per creation), i.e. everything
    src/python/jobs/KIND/ holds besides its two one-line entrypoints:

    * KIND-job: entry production.py, which imports only the production generator (Vertex), so
      dependency inference leaves the local generator, Pillow and imageio-ffmpeg out. venv mode
      because start-up is paid on every creation.
    * KIND-job-local: entry main.py, every generator (the local one, the embedded default,
      included): what the repo runs (`CREATION_ID=<id> ./pants run
      src/python/jobs/KIND:KIND-job-local`, the local dispatcher's `python -m jobs.KIND.main`,
      tests). Never deployed.
    * docker: the image phoenix-KIND-job of the production PEX, deployed with deploy/job.yaml.
    """
    python_sources(name="lib")
    pex_binary(name=f"{kind}-job", entry_point="production.py", execution_mode="venv")
    pex_binary(name=f"{kind}-job-local", entry_point="main.py", execution_mode="venv")
    phoenix_image(
        pex=f"{kind}-job",
        pex_path=f"src.python.jobs.{kind}/{kind}-job.pex",
        repository=f"phoenix-{kind}-job",
    )
    files(name="deploy", sources=["deploy/*", "Dockerfile"])
