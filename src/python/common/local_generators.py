"""Every generator, the local one included: what jobs started from the repo select from
(``./pants run src/python/api:local``'s job processes, tests, the legacy worker).

A module of its own so that importing it is what brings ``common.adapters.local_generator``
(Pillow, imageio-ffmpeg) into a PEX: only entrypoints that import this carry them.
"""

from __future__ import annotations

from typing import Mapping

from common.config import Settings
from common.generators import PRODUCTION, GeneratorFactory
from common.ports import Generator


def _local(settings: Settings) -> Generator:
    from common.adapters.local_generator import LocalGenerator

    return LocalGenerator()


ALL: Mapping[str, GeneratorFactory] = {**PRODUCTION, "local": _local}
