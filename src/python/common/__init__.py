"""Phoenix's shared library: the creation domain, its ports, their adapters and the job runner.

Layering (enforced by review and by what each module imports):
- ``common.domain``: pure rules (lifecycle, requests, payloads, rollout). No I/O, no cloud SDKs.
- ``common.ports``: the small interfaces the services depend on.
- ``common.adapters``: one module per backend; only these import cloud SDKs, and lazily.
- ``common.job_runner``: the job's service layer (claim -> generate -> store -> complete).
- ``common.bootstrap``: the one place that picks adapters from configuration.
"""
