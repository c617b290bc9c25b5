"""The image generation job: what the Cloud Run Job `phoenix-image-job` runs, once per creation."""

from __future__ import annotations

import sys

from common.domain.creation import Kind
from common.job_main import main

if __name__ == "__main__":
    sys.exit(main(Kind.IMAGE))
