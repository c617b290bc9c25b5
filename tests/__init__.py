"""Phoenix's tests, by layer: unit, contract, integration, e2e, browser (support: helpers).

Pants runs each test file in a sandbox whose source roots are on ``sys.path`` as RELATIVE
paths. Many tests start real processes (the server, job entrypoints, the Celery worker) with
``PYTHONPATH`` built from ``sys.path`` and a different working directory, so make the entries
absolute once, here, before any test module runs.
"""

import os
import sys

sys.path[:] = [os.path.abspath(p) if p else p for p in sys.path]
