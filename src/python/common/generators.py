"""Chooses the generator for a job process (the API never imports this: no google-genai in the
API PEX).

Which generators a build can select is decided by the module its entrypoint hands in, not by a
setting: this module knows only the production generator (Vertex), ``common.local_generators``
adds the local one. Pants' dependency inference follows those imports, so the production job
PEXes and images (entry ``jobs/<kind>/production.py``) never carry the local generator, Pillow
or imageio-ffmpeg, while ``jobs/<kind>/main.py`` (the repo's embedded defaults) carries both.
Imports stay lazy so a job never loads google-genai before its claim.
"""

from __future__ import annotations

from typing import Callable, Mapping

from common.config import ConfigError, Settings
from common.ports import Generator

GeneratorFactory = Callable[[Settings], Generator]


def _vertex(settings: Settings) -> Generator:
    from common.adapters.vertex_generator import VertexGenerator

    return VertexGenerator.from_settings(settings)


# What the production job images can run.
PRODUCTION: Mapping[str, GeneratorFactory] = {"vertex": _vertex}


def factory_for(
    settings: Settings, generators: Mapping[str, GeneratorFactory] = PRODUCTION
) -> GeneratorFactory:
    """The factory for ``PHOENIX_GENERATOR``, or a ConfigError naming what this build holds (a
    production image asked for ``local`` must stop before it claims anything)."""
    try:
        return generators[settings.generator]
    except KeyError:
        raise ConfigError(
            f"PHOENIX_GENERATOR={settings.generator!r} is not in this build "
            f"(it has: {', '.join(sorted(generators))}); the local generator is only in the "
            "repo's job targets (jobs/<kind>:<kind>-job-local, python -m jobs.<kind>.main)"
        ) from None


def build_generator(
    settings: Settings, generators: Mapping[str, GeneratorFactory] = PRODUCTION
) -> Generator:
    return factory_for(settings, generators)(settings)


class LazyGenerator(Generator):
    """Builds the real generator on first use. A job claims its creation before anything calls
    the generator, so the SDK import (google-genai: ~0.4 s) is paid after the claim, and a
    duplicate delivery that backs off never pays it at all. The choice itself is checked at
    once, so a misconfigured job fails before its claim."""

    def __init__(
        self, settings: Settings, generators: Mapping[str, GeneratorFactory] = PRODUCTION
    ) -> None:
        self._settings = settings
        self._factory = factory_for(settings, generators)
        self._inner: Generator | None = None

    def generate(self, kind, prompt, params, ctx):  # type: ignore[no-untyped-def]
        if self._inner is None:
            self._inner = self._factory(self._settings)
        return self._inner.generate(kind, prompt, params, ctx)
