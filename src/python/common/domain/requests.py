"""What a user may ask for: the request schemas for video and image, validated strictly.

The allowed values are the providers' (Veo accepts 4/6/8 s and 16:9 or 9:16; Imagen takes
1..4 samples in five aspect ratios), so a request that passes here is one the real models accept.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any, Mapping, cast

from common.domain.creation import Kind
from common.domain.errors import ValidationError

PROMPT_MAX_CHARS = 2000

VIDEO_ASPECT_RATIOS = ("16:9", "9:16")
VIDEO_DURATIONS = (4, 6, 8)
IMAGE_ASPECT_RATIOS = ("1:1", "3:4", "4:3", "9:16", "16:9")
IMAGE_COUNT_RANGE = (1, 4)


@dataclass(frozen=True)
class FieldSpec:
    """One request field: its JSON type, allowed values or range, and default."""

    type: type
    default: Any
    choices: tuple[Any, ...] | None = None
    minimum: int | None = None
    maximum: int | None = None


SCHEMAS: dict[Kind, dict[str, FieldSpec]] = {
    Kind.VIDEO: {
        "aspect_ratio": FieldSpec(str, "16:9", choices=VIDEO_ASPECT_RATIOS),
        "duration_seconds": FieldSpec(int, 8, choices=VIDEO_DURATIONS),
    },
    Kind.IMAGE: {
        "aspect_ratio": FieldSpec(str, "1:1", choices=IMAGE_ASPECT_RATIOS),
        "count": FieldSpec(int, 1, minimum=IMAGE_COUNT_RANGE[0], maximum=IMAGE_COUNT_RANGE[1]),
    },
}


@dataclass(frozen=True)
class GenerationRequest:
    kind: Kind
    prompt: str
    params: dict[str, Any]


def normalise_prompt(raw: str) -> str:
    """NFC-normalise, drop control and format characters (keeping newlines and tabs as spaces),
    collapse runs of whitespace. Prompts are shown back in the page and sent to providers, so
    invisible characters (zero-width joiners, bidi overrides, NULs) are removed, not stored."""
    text = unicodedata.normalize("NFC", raw)
    kept = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in "\n\t\r":
            kept.append(" ")
        elif cat in ("Cc", "Cf", "Cs", "Co", "Cn"):
            continue
        else:
            kept.append(ch)
    return " ".join("".join(kept).split())


def parse_generation_request(kind: Kind, body: Any) -> GenerationRequest:
    if not isinstance(body, Mapping):
        raise ValidationError("body", "must be a JSON object")
    schema = SCHEMAS[kind]
    unknown = sorted(set(body) - set(schema) - {"prompt"})
    if unknown:
        raise ValidationError(unknown[0], "unknown field")

    raw_prompt = body.get("prompt")
    if not isinstance(raw_prompt, str):
        raise ValidationError("prompt", "is required and must be a string")
    prompt = normalise_prompt(raw_prompt)
    if not prompt:
        raise ValidationError("prompt", "must not be empty")
    if len(prompt) > PROMPT_MAX_CHARS:
        raise ValidationError("prompt", f"must be at most {PROMPT_MAX_CHARS} characters")

    params: dict[str, Any] = {}
    for name, spec in schema.items():
        if name not in body:
            params[name] = spec.default
            continue
        value = body[name]
        # bool is an int in Python; JSON true is not a valid count or duration.
        if not isinstance(value, spec.type) or isinstance(value, bool):
            raise ValidationError(name, f"must be a {spec.type.__name__}")
        if spec.choices is not None and value not in spec.choices:
            allowed = ", ".join(str(c) for c in spec.choices)
            raise ValidationError(name, f"must be one of {allowed}")
        if spec.minimum is not None and cast(int, value) < spec.minimum:
            raise ValidationError(name, f"must be at least {spec.minimum}")
        if spec.maximum is not None and cast(int, value) > spec.maximum:
            raise ValidationError(name, f"must be at most {spec.maximum}")
        params[name] = value
    return GenerationRequest(kind=kind, prompt=prompt, params=params)
