"""The "eager" PRODUCTION image job, for the container figure of benchmarks/cold_start.py only:
``jobs.image``'s production entrypoint, but importing the cloud SDKs the job uses at module top,
the way a naive job would (google-genai, google.cloud.firestore, google.cloud.storage; not
google.cloud.tasks_v2, which no job needs). Built into an image by the production job image's
recipe, so the two images differ only in WHEN the SDKs are imported (benchmarks/eager_job.py is
the same idea for the process figure, where the job runs the local generator).
"""

from __future__ import annotations

import sys

import google.cloud.firestore  # noqa: F401
import google.cloud.storage  # noqa: F401
import google.genai  # noqa: F401

from common.domain.creation import Kind
from common.job_main import main

if __name__ == "__main__":
    sys.exit(main(Kind.IMAGE))
