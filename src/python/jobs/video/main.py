"""The video job as the repo runs it (`python -m jobs.video.main`: the local dispatcher's job
processes, tests, `./pants run src/python/jobs/video:video-job-local`): every generator, the local
one (the embedded default) included. Production runs `jobs.video.production` instead."""

from __future__ import annotations

import sys

from common.domain.creation import Kind
from common.job_main import main
from common.local_generators import ALL

if __name__ == "__main__":
    sys.exit(main(Kind.VIDEO, generators=ALL))
