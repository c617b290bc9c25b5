"""What a user may ask for: one pydantic model per kind, the single source of the validation
rules and of the JSON Schema the OpenAPI document serves (``api.openapi``).

The allowed values are the providers' (Veo accepts 4/6/8 s and 16:9 or 9:16; Imagen takes
1..4 samples in five aspect ratios), so a request that passes here is one the real models accept.
Models are strict (JSON ``"8"`` or ``true`` is not a duration or a count) and forbid unknown
fields. Pydantic's errors are turned into our contract: one ``ValidationError`` naming the field
and saying why in words a client can show.

Only the API imports this module (the kind registry names the models by string), so a job never
loads pydantic before its claim.
"""

from __future__ import annotations

import typing
import unicodedata
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Mapping

import pydantic
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from common.domain.errors import ValidationError
from common.domain.kinds import KINDS, Kind, KindRegistry, UnknownKind

PROMPT_MAX_CHARS = 2000

VIDEO_ASPECT_RATIOS = ("16:9", "9:16")
VIDEO_DURATIONS = (4, 6, 8)
IMAGE_ASPECT_RATIOS = ("1:1", "3:4", "4:3", "9:16", "16:9")
IMAGE_COUNT_RANGE = (1, 4)


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


def _json_integer(value: Any) -> Any:
    """Strict mode still lets 8.0 (and True for 1) through an integer ``Literal``: they compare
    equal. A choice of integers takes JSON integers only."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an integer")
    return value


class GenerationBody(BaseModel):
    """What every kind's request has: the prompt. A kind's model adds its own options."""

    model_config = ConfigDict(strict=True, extra="forbid")

    prompt: Annotated[
        str,
        Field(
            min_length=1,
            max_length=PROMPT_MAX_CHARS,
            # Blank-after-normalisation prompts are rejected; tell schema-driven clients so.
            pattern=r"\S",
            description="Unicode-normalised; control characters removed; must not be blank.",
        ),
    ]

    @field_validator("prompt", mode="before")
    @classmethod
    def _normalise(cls, value: Any) -> Any:
        # Limits apply to what is stored and sent, i.e. after normalisation.
        return normalise_prompt(value) if isinstance(value, str) else value


# ``title`` and the ``x-`` keys are for the page, which builds its form from the OpenAPI
# document: option labels (one per enum value) and the unit shown after a value.


class VideoRequest(GenerationBody):
    aspect_ratio: Annotated[
        Literal["16:9", "9:16"],
        Field(
            title="Aspect ratio",
            json_schema_extra={"x-labels": ["16:9 landscape", "9:16 portrait"]},
        ),
    ] = "16:9"
    duration_seconds: Annotated[
        Literal[4, 6, 8],
        BeforeValidator(_json_integer),
        Field(
            title="Duration",
            json_schema_extra={"x-labels": ["4 s", "6 s", "8 s"], "x-unit": ["s", "s"]},
        ),
    ] = 8


class ImageRequest(GenerationBody):
    aspect_ratio: Annotated[
        Literal["1:1", "3:4", "4:3", "9:16", "16:9"],
        Field(
            title="Aspect ratio",
            json_schema_extra={
                "x-labels": [
                    "1:1 square",
                    "3:4 portrait",
                    "4:3 landscape",
                    "9:16 tall",
                    "16:9 wide",
                ]
            },
        ),
    ] = "1:1"
    count: Annotated[
        int,
        Field(
            ge=IMAGE_COUNT_RANGE[0],
            le=IMAGE_COUNT_RANGE[1],
            title="Images",
            json_schema_extra={"x-unit": ["image", "images"]},
        ),
    ] = 1


@dataclass(frozen=True)
class GenerationRequest:
    kind: Kind
    prompt: str
    params: dict[str, Any]


def _message(model: type[BaseModel], error: Mapping[str, Any]) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    field = str(error["loc"][0]) if error["loc"] else ""
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "unknown field"
    annotation = model.model_fields[field].annotation if field in model.model_fields else None
    if typing.get_origin(annotation) is Literal and kind in ("literal_error", "value_error"):
        return "must be one of " + ", ".join(str(c) for c in typing.get_args(annotation))
    if kind in ("string_too_short", "string_pattern_mismatch"):
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters"
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}"
    if kind == "string_type":
        return "must be a string"
    if kind.startswith("int_"):
        return "must be an integer"
    return str(error["msg"])


def _first_error(model: type[BaseModel], exc: pydantic.ValidationError) -> ValidationError:
    """The error a client sees: unknown fields first (a typo explains the rest), then the
    fields in the model's order."""
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    error = errors[0]
    field = str(error["loc"][0]) if error["loc"] else "body"
    return ValidationError(field, _message(model, error))


def parse_generation_request(
    kind: Kind | str, body: Any, kinds: KindRegistry = KINDS
) -> GenerationRequest:
    """The request for ``kind`` with defaults applied, or ValidationError naming the field."""
    if not isinstance(body, Mapping):
        raise ValidationError("body", "must be a JSON object")
    try:
        spec = kinds.spec(kind)
    except UnknownKind as exc:
        raise ValidationError("kind", str(exc)) from None
    model: type[GenerationBody] = spec.request_model
    try:
        parsed = model.model_validate(dict(body))
    except pydantic.ValidationError as exc:
        raise _first_error(model, exc) from None
    params = parsed.model_dump(exclude={"prompt"})
    return GenerationRequest(kind=spec.kind, prompt=parsed.prompt, params=params)


def defaults(kind: Kind | str, kinds: KindRegistry = KINDS) -> dict[str, Any]:
    """The options a request for ``kind`` gets when it names none."""
    model: type[BaseModel] = kinds.spec(kind).request_model
    return {n: f.default for n, f in model.model_fields.items() if n != "prompt"}


def request_json_schema(kind: Kind | str, kinds: KindRegistry = KINDS) -> dict[str, Any]:
    """The JSON Schema of ``kind``'s request body, as pydantic generates it from the model."""
    model: type[BaseModel] = kinds.spec(kind).request_model
    return model.model_json_schema()
