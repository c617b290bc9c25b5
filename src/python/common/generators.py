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
