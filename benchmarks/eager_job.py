"""The "eager" image job, for benchmarks/cold_start.py only: the same entrypoint as
``jobs.image.main``, but importing at module top the cloud SDKs the job uses, the way a naive
job would (google-genai, google.cloud.firestore, google.cloud.storage). Comparing its cold start
with the real job's measures what the lazy adapter imports save. Like with like: only SDKs the
job really uses (a job never needs google.cloud.tasks_v2, so the baseline does not load it).

Built by ``./pants package benchmarks:eager-image-job`` (dist/benchmarks/eager-image-job.pex).
"""

from __future__ import annotations

import sys

import google.cloud.firestore  # noqa: F401
import google.cloud.storage  # noqa: F401
import google.genai  # noqa: F401

from common.domain.creation import Kind
from common.job_main import main
from common.local_generators import ALL

if __name__ == "__main__":
    sys.exit(main(Kind.IMAGE, generators=ALL))
