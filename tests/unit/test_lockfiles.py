"""The three lockfiles stay what pants.toml says they are.

Tests run with the `pytest` resolve laid over the product resolve (python-default) in one
environment, so a distribution both hold must be the same version in each, or the tests would
exercise a version production never runs. The product lockfile must hold no test tool (that is
why the resolves are split), and a requirement's floor must admit no major older than the one
the lockfile holds and the tests ran against (a floor of `google-genai>=1.20` under code written
for 3.x would let a downgrade through unnoticed).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
THIRD_PARTY = ROOT / "3rdparty/python"
TEST_TOOLS = {"pytest", "hypothesis", "schemathesis", "playwright", "mypy", "pyyaml", "iniconfig"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(lockfile: str) -> dict[str, str]:
    path = THIRD_PARTY / lockfile
    if not path.is_file():
        pytest.fail(f"{path} is missing (the test depends on 3rdparty/python:lockfiles)")
    text = path.read_text()
    body = json.loads(text[text.index("\n{") :])
    return {
        _canonical(r["project_name"]): r["version"]
        for resolve in body["locked_resolves"]
        for r in resolve["locked_requirements"]
    }


def floors(requirements: str) -> dict[str, str]:
    """Requirement name -> its `>=` floor, from a requirements file."""
    found = {}
    for line in (THIRD_PARTY / requirements).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)", line)
        if not match:
            continue
        floor = re.search(r">=\s*([0-9][^,\s]*)", match.group(3))
        if floor:
            found[_canonical(match.group(1))] = floor.group(1)
    return found


def _release_line(version: str) -> tuple[int, ...]:
    """The part of a version that names an API generation: the major, or 0.minor."""
    parts = [int(p) for p in re.findall(r"\d+", version)[:2]]
    return tuple(parts[:2]) if parts[0] == 0 else (parts[0],)


def test_shared_distributions_are_pinned_to_one_version():
    product, tests = locked("python-default.lock"), locked("pytest.lock")
    differing = {
        name: (product[name], tests[name])
        for name in product.keys() & tests.keys()
        if product[name] != tests[name]
    }
    assert product.keys() & tests.keys(), "the resolves share nothing: is the parse broken?"
    assert differing == {}, (
        "python-default and pytest lock these at different versions; pin the pytest "
        f"resolve to the product's version in test-requirements.txt: {differing}"
    )


def test_product_lockfile_holds_no_test_tool():
    product = locked("python-default.lock")
    assert "flask" in product and "google-genai" in product
    assert sorted(TEST_TOOLS & product.keys()) == []
    assert "pytest" in locked("pytest.lock") and "mypy" in locked("mypy.lock")


@pytest.mark.parametrize(
    "requirements, lockfile",
    [
        ("requirements.txt", "python-default.lock"),
        ("test-requirements.txt", "pytest.lock"),
        ("mypy-requirements.txt", "mypy.lock"),
    ],
)
def test_floors_are_the_locked_majors(requirements: str, lockfile: str):
    versions = locked(lockfile)
    stale = {
        name: f">={floor} but locked {versions[name]}"
        for name, floor in floors(requirements).items()
        if name in versions and _release_line(floor) != _release_line(versions[name])
    }
    assert floors(requirements), f"no floors parsed from {requirements}"
    assert stale == {}, f"raise these floors to the tested major: {stale}"
