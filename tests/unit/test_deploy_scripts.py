"""The deploy scripts (tools/deploy/*) against a fake ``gcloud``/``docker`` on PATH.

.github/workflows/deploy.yml runs these same scripts (its steps are one-line calls, checked
at the bottom of this file), so what is asserted here is what CI does: which service accounts
exist, which roles each holds on which resource, the sweeper's schedule and identity, the
Firestore index fields, and that every Cloud Run resource is deployed by image digest.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.support.fake_cli import Call, FakeCli, env_with, install

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools/deploy"
API_DEPLOY = ROOT / "src/python/api/deploy"
PROJECT = "demo-proj"
REGION = "europe-west1"
NUMBER = "123456789012"
DIGEST = "sha256:" + "ab" * 32
REGISTRY_IMAGE = f"{REGION}-docker.pkg.dev/{PROJECT}/phoenix/phoenix-api"
IMAGE = f"{REGISTRY_IMAGE}@{DIGEST}"


def sa(name: str) -> str:
    return f"phoenix-{name}@{PROJECT}.iam.gserviceaccount.com"


def member(name: str) -> str:
    return f"serviceAccount:{sa(name)}"


@pytest.fixture
def fake(tmp_path: Path) -> FakeCli:
    gcloud = install(tmp_path / "bin", "gcloud")
    gcloud.answer(["projects", "describe", PROJECT], stdout=NUMBER + "\n")
    return gcloud


def run(tmp_path: Path, *argv: str | Path, check: bool = True, **env: str):
    proc = subprocess.run(
        [str(a) for a in argv],
        env=env_with(tmp_path / "bin", **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{argv[0]} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> list[Call]:
    """The calls of one bootstrap run against a fresh project (shared by the tests below: a run
    is ~75 gcloud calls)."""
    tmp = tmp_path_factory.mktemp("fresh")
    gcloud = install(tmp / "bin", "gcloud")
    gcloud.answer(["projects", "describe", PROJECT], stdout=NUMBER + "\n")
    bootstrap(tmp)
    return gcloud.calls()


def bootstrap(tmp_path: Path, *extra: str, check: bool = True):
    return run(
        tmp_path,
        TOOLS / "bootstrap",
        "--project",
        PROJECT,
        "--region",
        REGION,
        "--github-repo",
        "acme/phoenix",
        *extra,
        check=check,
    )


def bindings(calls: list[Call]) -> set[tuple[str, str, str]]:
    """(resource, member, role) for every add-iam-policy-binding call."""
    found = set()
    for c in calls:
        if "add-iam-policy-binding" not in c.argv:
            continue
        i = c.argv.index("add-iam-policy-binding")
        kind = " ".join(c.argv[:i])
        resource = f"{kind} {c.argv[i + 1]}"
        found.add((resource, c.flag("member") or "", c.flag("role") or ""))
    return found


def verbs(calls: list[Call], verb: str) -> list[Call]:
    return [c for c in calls if verb in c.argv[:6]]


# --- bootstrap --------------------------------------------------------------------------------


LAUNCHER = f"projects/{PROJECT}/roles/phoenixJobLauncher"
CANCELLER = f"projects/{PROJECT}/roles/phoenixExecutionCanceller"
WIF_MEMBER = (
    f"principalSet://iam.googleapis.com/projects/{NUMBER}/locations/global/"
    "workloadIdentityPools/github/attribute.repository/acme/phoenix"
)
# The whole least-privilege matrix: every binding the bootstrap makes, and no other.
EXPECTED_BINDINGS = {
    # project level: only what has no narrower resource
    (f"projects {PROJECT}", member("api"), "roles/datastore.user"),
    (f"projects {PROJECT}", member("jobs"), "roles/datastore.user"),
    (f"projects {PROJECT}", member("jobs"), "roles/aiplatform.user"),
    (f"projects {PROJECT}", member("sweeper"), "roles/datastore.user"),
    (f"projects {PROJECT}", member("deploy"), "roles/run.developer"),
    (f"projects {PROJECT}", member("deploy"), "roles/cloudscheduler.admin"),
    (f"projects {PROJECT}", member("deploy"), "roles/datastore.indexAdmin"),
    # the queue
    ("tasks queues phoenix-jobs", member("api"), "roles/cloudtasks.enqueuer"),
    ("tasks queues phoenix-jobs", member("api"), "roles/cloudtasks.taskDeleter"),
    ("tasks queues phoenix-jobs", member("sweeper"), "roles/cloudtasks.enqueuer"),
    ("tasks queues phoenix-jobs", member("sweeper"), "roles/cloudtasks.viewer"),
    ("tasks queues phoenix-jobs", member("deploy"), "roles/cloudtasks.queueAdmin"),
    # the bucket
    (f"storage buckets gs://{PROJECT}-phoenix-media", member("api"), "roles/storage.objectUser"),
    (f"storage buckets gs://{PROJECT}-phoenix-media", member("jobs"), "roles/storage.objectUser"),
    (
        f"storage buckets gs://{PROJECT}-phoenix-media",
        member("sweeper"),
        "roles/storage.objectUser",
    ),
    # the image repository
    ("artifacts repositories phoenix", member("deploy"), "roles/artifactregistry.writer"),
    # the jobs: Cloud Tasks' account may start the two generation jobs (with overrides) and
    # nothing else; Scheduler's account may start the sweeper and nothing else
    ("run jobs phoenix-video-job", member("tasks"), LAUNCHER),
    ("run jobs phoenix-image-job", member("tasks"), LAUNCHER),
    ("run jobs phoenix-video-job", member("api"), CANCELLER),
    ("run jobs phoenix-image-job", member("api"), CANCELLER),
    ("run jobs phoenix-sweeper", member("scheduler"), "roles/run.invoker"),
    ("run services phoenix-api", "allUsers", "roles/run.invoker"),
    # acting as accounts
    (f"iam service-accounts {sa('tasks')}", member("api"), "roles/iam.serviceAccountUser"),
    (f"iam service-accounts {sa('tasks')}", member("sweeper"), "roles/iam.serviceAccountUser"),
    (f"iam service-accounts {sa('api')}", member("api"), "roles/iam.serviceAccountTokenCreator"),
    (f"iam service-accounts {sa('api')}", member("deploy"), "roles/iam.serviceAccountUser"),
    (f"iam service-accounts {sa('jobs')}", member("deploy"), "roles/iam.serviceAccountUser"),
    (f"iam service-accounts {sa('sweeper')}", member("deploy"), "roles/iam.serviceAccountUser"),
    (f"iam service-accounts {sa('scheduler')}", member("deploy"), "roles/iam.serviceAccountUser"),
    # GitHub Actions of this repository (and the production environment) act as the deployer
    (f"iam service-accounts {sa('deploy')}", WIF_MEMBER, "roles/iam.workloadIdentityUser"),
}


def test_bootstrap_fresh_project_sets_up_least_privilege(fresh):
    calls = fresh

    created_accounts = sorted(
        c.argv[3] for c in calls if c.startswith("iam", "service-accounts", "create")
    )
    assert created_accounts == sorted(
        f"phoenix-{n}" for n in ("api", "tasks", "jobs", "sweeper", "scheduler", "deploy")
    )
    assert bindings(calls) == EXPECTED_BINDINGS
    # No basic role and no admin role on a runtime account, anywhere.
    for _, who, role in bindings(calls):
        assert role not in ("roles/owner", "roles/editor", "roles/viewer"), (who, role)
        if who != member("deploy"):
            assert not role.endswith((".admin", "Admin")), (who, role)

    roles = {
        c.argv[3]: c.flag("permissions") for c in calls if c.startswith("iam", "roles", "create")
    }
    assert roles == {
        "phoenixJobLauncher": "run.jobs.run,run.jobs.runWithOverrides",
        "phoenixExecutionCanceller": "run.executions.get,run.executions.cancel",
    }

    (provider,) = [
        c
        for c in calls
        if c.startswith("iam", "workload-identity-pools", "providers", "create-oidc")
    ]
    assert provider.flag("issuer-uri") == "https://token.actions.githubusercontent.com"
    assert provider.flag("attribute-condition") == (
        "assertion.repository == 'acme/phoenix' && assertion.environment == 'production'"
    )

    (bucket,) = [c for c in calls if c.startswith("storage", "buckets", "create")]
    assert "--uniform-bucket-level-access" in bucket.argv
    assert "--public-access-prevention" in bucket.argv
    (lifecycle,) = [c for c in calls if c.startswith("storage", "buckets", "update")]
    rules = json.loads(lifecycle.files[f"--lifecycle-file={lifecycle.flag('lifecycle-file')}"])
    actions = {r["action"]["type"] for r in rules["rule"]}
    assert actions == {"AbortIncompleteMultipartUpload", "SetStorageClass"}
    assert "Delete" not in actions  # media is never deleted by age: that would lose user data

    (queue,) = [c for c in calls if c.startswith("tasks", "queues", "create")]
    assert queue.argv[3] == "phoenix-jobs"
    assert queue.flag("max-dispatches-per-second") == "0.15"
    assert queue.flag("max-attempts") == "10"

    (repo,) = [c for c in calls if c.startswith("artifacts", "repositories", "create")]
    assert repo.flag("repository-format") == "docker" and repo.flag("location") == REGION

    # The shells the per-resource bindings attach to run as their own accounts.
    shells = {
        c.argv[3]: c.flag("service-account") for c in calls if c.startswith("run", "jobs", "create")
    }
    assert shells == {
        "phoenix-video-job": sa("jobs"),
        "phoenix-image-job": sa("jobs"),
        "phoenix-sweeper": sa("sweeper"),
    }
    # Bindings on a resource come after the resource exists.
    order = [" ".join(c.argv[:4]) for c in calls]
    first_job_binding = next(
        i for i, c in enumerate(calls) if c.startswith("run", "jobs", "add-iam-policy-binding")
    )
    assert (
        max(i for i, o in enumerate(order) if o.startswith("run jobs create")) < first_job_binding
    )


def test_bootstrap_is_idempotent(tmp_path, fake, fresh):
    # The project now has everything the first run looked for.
    for c in fresh:
        if "describe" in c.argv[:5]:
            fake.answer(c.argv, stdout="{}")
    bootstrap(tmp_path)
    second = fake.calls()
    assert verbs(second, "create") == [] and verbs(second, "create-oidc") == []
    assert [c.argv[:4] for c in second if c.startswith("run", "deploy")] == []
    # What exists is brought up to date instead, and every binding is (re)asserted.
    assert {c.argv[3] for c in second if c.startswith("iam", "roles", "update")} == {
        "phoenixJobLauncher",
        "phoenixExecutionCanceller",
    }
    assert [c.argv[:4] for c in second if c.startswith("tasks", "queues", "update")] == [
        ["tasks", "queues", "update", "phoenix-jobs"]
    ]
    assert bindings(second) == EXPECTED_BINDINGS


def test_bootstrap_dry_run_prints_every_command_and_runs_none(tmp_path, fake, fresh):
    real = [c.argv for c in fresh]
    out = bootstrap(tmp_path, "--dry-run").stdout
    assert fake.calls() == []
    printed = [
        shlex.split(line[2:])[1:] for line in out.splitlines() if line.startswith("+ gcloud ")
    ]
    # A dry run assumes nothing exists: it prints exactly what a fresh project gets.
    unplaceholder = [[a.replace("PROJECT_NUMBER", NUMBER) for a in argv] for argv in printed]
    assert unplaceholder == real


def test_bootstrap_refuses_bad_arguments(tmp_path, fake):
    proc = bootstrap(tmp_path, "--github-repo", "not a repo", check=False)
    assert proc.returncode != 0 and "OWNER/NAME" in proc.stderr
    assert fake.calls() == []


# --- the deploy steps ---------------------------------------------------------------------


def deploy_env(**extra: str) -> dict[str, str]:
    return {"PROJECT_ID": PROJECT, "REGION": REGION, "MEDIA_BUCKET": f"{PROJECT}-media", **extra}


def rendered(call: Call) -> str:
    (text,) = [t for a, t in call.files.items() if a.endswith(".yaml")]
    return text


def test_api_deploy_applies_indexes_queue_service_sweeper_and_schedule(tmp_path, fake):
    run(tmp_path, TOOLS / "deploy-service", API_DEPLOY, IMAGE, **deploy_env())
    calls = fake.calls()
    order = [" ".join(c.argv[:4]) for c in calls]

    # Firestore indexes first (and waited for: no --async), exactly the file's fields.
    creates = [c for c in calls if c.startswith("firestore", "indexes", "composite", "create")]
    assert all("--async" not in c.argv for c in creates)
    spec = json.loads((API_DEPLOY / "firestore.indexes.json").read_text())
    assert sorted(
        (c.flag("collection-group"), tuple(c.flags("field-config"))) for c in creates
    ) == sorted(
        (
            i["collectionGroup"],
            tuple(f"field-path={f['fieldPath']},order={f['order'].lower()}" for f in i["fields"]),
        )
        for i in spec["indexes"]
    )
    exempt = {c.argv[4] for c in calls if c.startswith("firestore", "indexes", "fields", "update")}
    assert exempt == {o["fieldPath"] for o in spec["fieldOverrides"]}

    # The service and the sweeper job, both by digest.
    (service,) = [c for c in calls if c.startswith("run", "services", "replace")]
    (job,) = [c for c in calls if c.startswith("run", "jobs", "replace")]
    for c in (service, job):
        text = rendered(c)
        assert f"image: {IMAGE}" in text
        assert "${" not in re.sub(r"(?m)#.*$", "", text)  # every placeholder was substituted
        assert c.flag("region") == REGION and c.flag("project") == PROJECT
    sweeper = rendered(job)
    assert "name: phoenix-sweeper" in sweeper
    assert f"serviceAccountName: {sa('sweeper')}" in sweeper
    assert 'args: ["-m", "api.sweep"]' in sweeper

    # Scheduler: every minute, calling the sweeper job's :run as its own account.
    (schedule,) = [c for c in calls if c.startswith("scheduler", "jobs", "create", "http")]
    assert schedule.argv[4] == "phoenix-sweeper"
    assert schedule.flag("schedule") == "* * * * *"
    assert schedule.flag("uri") == (
        f"https://run.googleapis.com/v2/projects/{PROJECT}/locations/{REGION}/jobs/phoenix-sweeper:run"
    )
    assert schedule.flag("http-method") == "POST"
    assert schedule.flag("oauth-service-account-email") == sa("scheduler")
    assert schedule.flag("oauth-token-scope") == "https://www.googleapis.com/auth/cloud-platform"
    assert schedule.flag("location") == REGION

    # Order: indexes, queue, service, sweeper job, schedule.
    def at(prefix: str) -> int:
        return next(i for i, o in enumerate(order) if o.startswith(prefix))

    assert (
        at("firestore indexes composite create")
        < at("tasks queues create")
        < at("run services replace")
        < at("run jobs replace")
        < at("scheduler jobs create")
    )


def test_second_api_deploy_updates_instead_of_creating(tmp_path, fake):
    # The queue and the schedule exist; two of the three indexes exist (the API lists them
    # with the implicit __name__ field appended).
    fake.answer(["tasks", "queues", "describe"], stdout="{}")
    fake.answer(["scheduler", "jobs", "describe"], stdout="{}")
    spec = json.loads((API_DEPLOY / "firestore.indexes.json").read_text())
    listed = [
        {
            "name": f"projects/{PROJECT}/databases/(default)/collectionGroups/{i['collectionGroup']}/indexes/ID{n}",
            "queryScope": i["queryScope"],
            "fields": [*i["fields"], {"fieldPath": "__name__", "order": i["fields"][-1]["order"]}],
            "state": "READY",
        }
        for n, i in enumerate(spec["indexes"][:2])
    ]
    fake.answer(["firestore", "indexes", "composite", "list"], stdout=json.dumps(listed))
    run(tmp_path, TOOLS / "deploy-service", API_DEPLOY, IMAGE, **deploy_env())
    calls = fake.calls()
    creates = [c for c in calls if c.startswith("firestore", "indexes", "composite", "create")]
    assert len(creates) == len(spec["indexes"]) - 2
    assert [
        f"field-path={f['fieldPath']},order={f['order'].lower()}"
        for f in spec["indexes"][2]["fields"]
    ] == creates[0].flags("field-config")
    assert verbs(calls, "create") == creates
    assert len([c for c in calls if c.startswith("scheduler", "jobs", "update", "http")]) == 1
    assert len([c for c in calls if c.startswith("tasks", "queues", "update")]) == 1


@pytest.mark.parametrize("job", ["video", "image"])
def test_job_deploy_replaces_only_its_job_by_digest(tmp_path, fake, job):
    image = f"{REGION}-docker.pkg.dev/{PROJECT}/phoenix/phoenix-{job}-job@{DIGEST}"
    run(
        tmp_path,
        TOOLS / "deploy-service",
        ROOT / f"src/python/jobs/{job}/deploy",
        image,
        **deploy_env(),
    )
    calls = fake.calls()
    assert [c.argv[:3] for c in calls] == [["run", "jobs", "replace"]]
    text = rendered(calls[0])
    assert f"name: phoenix-{job}-job" in text and f"image: {image}" in text


@pytest.mark.parametrize(
    "image",
    [
        f"{REGISTRY_IMAGE}:0123abc",  # a tag: can be moved after the deploy
        f"{REGISTRY_IMAGE}@sha256:abc",  # not a full digest
        f"{REGISTRY_IMAGE}",
        "",
    ],
)
def test_deploy_refuses_an_image_not_pinned_by_digest(tmp_path, fake, image):
    proc = run(tmp_path, TOOLS / "deploy-service", API_DEPLOY, image, check=False, **deploy_env())
    assert proc.returncode != 0
    assert fake.calls() == []


def test_deploy_refuses_missing_settings(tmp_path, fake):
    proc = run(
        tmp_path,
        TOOLS / "deploy-service",
        API_DEPLOY,
        IMAGE,
        check=False,
        PROJECT_ID=PROJECT,
        REGION=REGION,
    )
    assert proc.returncode != 0 and "MEDIA_BUCKET" in proc.stderr
    assert fake.calls() == []


# --- push: the digest that is deployed -------------------------------------------------------


def _docker_info(tmp_path: Path, sha: str) -> Path:
    info = tmp_path / "dist/src.python.api/docker.docker-info.json"
    info.parent.mkdir(parents=True)
    info.write_text(
        json.dumps(
            {
                "version": 1,
                "image_id": "sha256:" + "00" * 32,
                "registries": [
                    {
                        "alias": "gar",
                        "address": f"{REGION}-docker.pkg.dev/{PROJECT}/phoenix",
                        "repository": "phoenix-api",
                        "tags": [
                            {
                                "template": "{build_args.GIT_SHA}",
                                "tag": sha,
                                "uses_local_alias": False,
                                "name": f"{REGISTRY_IMAGE}:{sha}",
                            }
                        ],
                    }
                ],
            }
        )
    )
    return info


@pytest.mark.parametrize(
    "registry_digest, ok", [(DIGEST, True), ("sha256:" + "cd" * 32, False), ("", False)]
)
def test_push_image_prints_the_registry_digest(tmp_path, fake, registry_digest, ok):
    sha = "0123456789abcdef0123456789abcdef01234567"
    _docker_info(tmp_path, sha)
    docker = install(tmp_path / "bin", "docker")
    docker.answer(["push"], stdout=f"{sha}: digest: {DIGEST} size: 1234\n")
    fake.answer(["artifacts", "docker", "images", "describe"], stdout=registry_digest + "\n")
    out = tmp_path / "github_output"
    proc = run(
        tmp_path,
        TOOLS / "push-image",
        "src/python/api:docker",
        check=False,
        GIT_SHA=sha,
        DIST=str(tmp_path / "dist"),
        GITHUB_OUTPUT=str(out),
    )
    assert [c.argv for c in docker.calls()] == [["push", f"{REGISTRY_IMAGE}:{sha}"]]
    (describe,) = fake.calls()
    assert describe.argv[4] == f"{REGISTRY_IMAGE}:{sha}"
    if ok:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == IMAGE
        assert out.read_text() == f"image={IMAGE}\n"
    else:
        assert proc.returncode != 0
        assert not out.exists()


# --- the workflow runs these scripts ---------------------------------------------------------


def test_deploy_workflow_runs_the_tested_scripts():
    import yaml

    wf = yaml.safe_load((ROOT / ".github/workflows/deploy.yml").read_text())
    steps = wf["jobs"]["deploy"]["steps"]
    runs = [s.get("run", "").strip() for s in steps]
    assert 'tools/deploy/push-image "$IMAGE_TARGET"' in runs
    assert 'tools/deploy/deploy-service "$DEPLOY_DIR" "$IMAGE"' in runs
    push = next(s for s in steps if s.get("run", "").strip().startswith("tools/deploy/push-image"))
    deploy = next(
        s for s in steps if s.get("run", "").strip().startswith("tools/deploy/deploy-service")
    )
    # The deployed image is the pushed digest, not a tag.
    assert deploy["env"]["IMAGE"] == "${{ steps.%s.outputs.image }}" % push["id"]
    # Every other `run:` is a one-liner: no deploy logic hides in YAML where no test runs it.
    for text in runs:
        assert "\n" not in text, text
