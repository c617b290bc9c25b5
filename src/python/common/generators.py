"""Chooses the generator for a job process (the API never imports this: no google-genai or
Pillow in the API PEX). Imports are lazy so the local default never loads google-genai."""

from __future__ import annotations

from common.config import ConfigError, Settings
from common.ports import Generator


def build_generator(settings: Settings) -> Generator:
    if settings.generator == "local":
        from common.adapters.local_generator import LocalGenerator

        return LocalGenerator()
    if settings.generator == "vertex":
        from common.adapters.vertex_generator import VertexGenerator

        return VertexGenerator.from_settings(settings)
    raise ConfigError(f"unknown generator {settings.generator!r}")


class LazyGenerator(Generator):
    """Builds the real generator on first use. A job claims its creation before anything calls
    the generator, so the SDK import (google-genai: ~0.4 s) is paid after the claim, and a
    duplicate delivery that backs off never pays it at all."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._inner: Generator | None = None

    def generate(self, kind, prompt, params, ctx):  # type: ignore[no-untyped-def]
        if self._inner is None:
            self._inner = build_generator(self._settings)
        return self._inner.generate(kind, prompt, params, ctx)
