"""A kind the product does not have ("audio"), for tests that build the product around it: its
registry entry and request model, exactly what adding a real kind would write."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from common.domain.kinds import KINDS, Kind, KindSpec
from common.domain.requests import GenerationBody


class AudioRequest(GenerationBody):
    voice: Literal["low", "high"] = "low"
    seconds: Annotated[int, Field(ge=1, le=30)] = 10


AUDIO = KindSpec(
    kind=Kind("audio"),
    label="Audio",
    request=AudioRequest,
    job="phoenix-audio-job",
    media_types={"audio/mpeg": "mp3"},
    generator="generate_audio",
)

WITH_AUDIO = KINDS.with_kind(AUDIO)
