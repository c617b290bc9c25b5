"""The ``jobs:run`` stand-in reads each job's Cloud Run descriptor (task timeout, maxRetries,
env) without a YAML library; this checks that reading against a real YAML parse of every job
descriptor, so a descriptor edit the small reader cannot follow fails here, not silently in the
container chain."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tools.standins.run_api import JobSpec, read_job_descriptor

ROOT = Path(__file__).resolve().parents[2]
JOBS = [
    ROOT / "src/python/jobs/video/deploy/job.yaml",
    ROOT / "src/python/jobs/image/deploy/job.yaml",
]
SUBS = {"PROJECT_ID": "p", "REGION": "r", "MEDIA_BUCKET": "b", "IMAGE": "img"}


def _render(path: Path) -> str:
    text = path.read_text()
    for name, value in SUBS.items():
        text = text.replace("${" + name + "}", value)
    return text


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.parts[-3])
def test_the_reader_agrees_with_a_yaml_parse(path: Path) -> None:
    text = _render(path)
    task = yaml.safe_load(text)["spec"]["template"]["spec"]["template"]["spec"]
    (container,) = task["containers"]
    expected_env = {e["name"]: str(e["value"]) for e in container["env"]}

    timeout, retries, env = read_job_descriptor(text)

    assert timeout == float(task["timeoutSeconds"])
    assert retries == int(task["maxRetries"])
    assert env == expected_env
    assert env  # a reader that finds nothing must not pass


def test_from_descriptor_merges_overrides_and_refuses_unfilled_placeholders(
    tmp_path: Path,
) -> None:
    spec = JobSpec.from_descriptor(
        JOBS[0], substitutions=SUBS, image="img", env={"PHOENIX_STORE": "x", "EXTRA": "1"}
    )
    assert spec.image == "img" and spec.env["PHOENIX_STORE"] == "x" and spec.env["EXTRA"] == "1"
    assert spec.env["PHOENIX_GCP_PROJECT"] == "p"
    with pytest.raises(ValueError, match="no substitution"):
        JobSpec.from_descriptor(JOBS[0], substitutions={"IMAGE": "img"})
