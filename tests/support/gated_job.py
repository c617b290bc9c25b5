"""The real job entrypoint with a gate between claim and generation, for overlap tests.

``python -m tests.support.gated_job image|video --creation-id ID`` runs ``common.job_main.main``
unchanged, except that the job, once it holds the claim, waits until the file
``$PHOENIX_TEST_GATE_DIR/<creation id>`` exists before it generates. A test that starts several deliveries of one creation opens the gate only after all the
others have exited, so every duplicate is certain to have met a live lease (the default 120 s
lease outlives the wait): the overlap does not depend on how fast a busy machine starts
interpreters, as a ``[slow:N]`` marker would.

It hooks ``JobDeps.on_phase`` (the job runner's observation seam, also used for crash
injection), so no product code knows about it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from common import job_main
from common.domain.creation import Kind
from common.local_generators import ALL

GATE_TIMEOUT_S = 300.0


def _gated_build(original):  # type: ignore[no-untyped-def]
    def build(settings, *args, **kwargs):  # type: ignore[no-untyped-def]
        deps = original(settings, *args, **kwargs)
        gate_dir = Path(os.environ["PHOENIX_TEST_GATE_DIR"])
        previous = deps.on_phase

        def on_phase(phase, creation):  # type: ignore[no-untyped-def]
            previous(phase, creation)
            if phase != "claimed":
                return
            gate = gate_dir / creation.id
            deadline = time.monotonic() + GATE_TIMEOUT_S
            while not gate.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"gate {gate} never opened")
                time.sleep(0.02)

        deps.on_phase = on_phase
        return deps

    return build


if __name__ == "__main__":
    kind = Kind(sys.argv[1])
    job_main.build_job_deps = _gated_build(job_main.build_job_deps)  # type: ignore[assignment]
    # Every generator, like `python -m jobs.<kind>.main`: the tests select the local one.
    sys.exit(job_main.main(kind, sys.argv[2:], generators=ALL))
