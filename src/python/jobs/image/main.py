"""The image job as the repo runs it (`python -m jobs.image.main`: the local dispatcher's job
processes, tests, `./pants run src/python/jobs/image:image-job-local`): every generator, the local
one (the embedded default) included. Production runs `jobs.image.production` instead."""

from __future__ import annotations

import sys

from common.domain.creation import Kind
from common.job_main import main
from common.local_generators import ALL

if __name__ == "__main__":
    sys.exit(main(Kind.IMAGE, generators=ALL))
