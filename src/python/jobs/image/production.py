"""What the Cloud Run Job `phoenix-image-job` runs, once per creation: the production
generator (Vertex) only. Importing nothing that names the local generator keeps Pillow and
imageio-ffmpeg out of this PEX and image (tests/unit/test_production_targets.py checks)."""

from __future__ import annotations

import sys

from common.domain.creation import Kind
from common.generators import PRODUCTION
from common.job_main import main

if __name__ == "__main__":
    sys.exit(main(Kind.IMAGE, generators=PRODUCTION))
