"""Every kind of creation the product makes, in one table that every layer reads.

A kind's entry says what a request for it may contain (its request model), which Cloud Run Job
makes it, which media types its files have (and their extensions in the media store), and which
``Generator`` method renders it. The API's routes and OpenAPI document, the dispatchers' job
map, the job runner's file names, the rollout flag and the generators all come from here, so
adding a kind is one entry below, a ``jobs/<kind>/`` folder with its BUILD file (whose
``docker_image`` is what ``tools/affected_services.py`` finds) and a generator method.

Pure Python with no third-party imports: jobs import this before their claim. The request
model is named by ``"module:attribute"`` and imported only by whoever validates requests (the
API), so a job never loads pydantic to start.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Iterator, Mapping

_NAME = re.compile(r"[a-z][a-z0-9]*")


class Kind(str):
    """A kind's name (``"video"``). Interned, so ``Kind("video") is Kind.VIDEO`` as with an
    enum member; which names exist is a registry's business (``KINDS``), not this class's, so a
    test can build the whole product around a kind the production table does not have."""

    __slots__ = ()
    _interned: ClassVar[dict[str, "Kind"]] = {}
    VIDEO: ClassVar["Kind"]
    IMAGE: ClassVar["Kind"]

    def __new__(cls, name: object) -> "Kind":
        if isinstance(name, Kind):
            return name
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"not a kind name: {name!r}")
        found = cls._interned.get(name)
        if found is None:
            found = cls._interned.setdefault(name, super().__new__(cls, name))
        return found

    @property
    def value(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"Kind({self.value!r})"

    def __str__(self) -> str:
        return self.value


Kind.VIDEO = Kind("video")
Kind.IMAGE = Kind("image")


class UnknownKind(ValueError):
    """A kind name no entry of the registry has; the message lists the known ones."""


@dataclass(frozen=True)
class KindSpec:
    kind: Kind
    label: str  # what the page shows ("Video")
    # The pydantic model of a request body, as "module:attribute" (imported on first use), or
    # the model itself.
    request: Any
    job: str  # the Cloud Run Job's default name; PHOENIX_<KIND>_JOB overrides it
    media_types: Mapping[str, str]  # MIME type -> file extension in the media store
    generator: str  # the Generator method that makes it (common.ports.Generator.generate)
    # The seed's Celery task that makes it on the legacy path: a wire contract with the deployed
    # legacy worker. None for a kind born after the migration began: the legacy worker cannot
    # make it, so the rollout refuses to route it there (the legacy path is being retired).
    legacy_task: str | None = None
    _model: list[Any] = field(default_factory=list, compare=False, repr=False)

    @property
    def request_model(self) -> Any:
        if not self._model:
            ref = self.request
            if isinstance(ref, str):
                module, _, attr = ref.partition(":")
                ref = getattr(importlib.import_module(module), attr)
            self._model.append(ref)
        return self._model[0]

    @property
    def job_env(self) -> str:
        return f"PHOENIX_{self.kind.value.upper()}_JOB"

    @property
    def local_command_env(self) -> str:
        return f"PHOENIX_LOCAL_JOB_CMD_{self.kind.value.upper()}"


class KindRegistry:
    """The kinds a process knows, in order (the page and the OpenAPI list them so)."""

    def __init__(self, specs: Iterable[KindSpec]) -> None:
        self._specs: dict[Kind, KindSpec] = {}
        for spec in specs:
            if spec.kind in self._specs:
                raise ValueError(f"kind {spec.kind.value!r} is registered twice")
            self._specs[spec.kind] = spec

    def __iter__(self) -> Iterator[Kind]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._specs

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k.value for k in self._specs)

    def specs(self) -> tuple[KindSpec, ...]:
        return tuple(self._specs.values())

    def kind(self, name: object) -> Kind:
        """``name`` as a Kind of this registry, or UnknownKind naming the known ones."""
        if isinstance(name, str) and name in self._specs:
            return Kind(name)
        raise UnknownKind(f"unknown kind {name!r} (expected one of {', '.join(self.names)})")

    def spec(self, name: object) -> KindSpec:
        return self._specs[self.kind(name)]

    def with_kind(self, spec: KindSpec) -> "KindRegistry":
        """This registry plus one entry (how a test tries a kind the product does not have)."""
        return KindRegistry([*self._specs.values(), spec])

    def extension(self, mime_type: str) -> str:
        """The media store's file extension for a MIME type any kind produces; ``bin`` else."""
        for spec in self._specs.values():
            if mime_type in spec.media_types:
                return spec.media_types[mime_type]
        return "bin"

    def job_names(self, overrides: Mapping[str, str] = {}) -> dict[Kind, str]:
        """Kind -> Cloud Run Job name: ``overrides`` (kind name -> job, from PHOENIX_<KIND>_JOB
        via ``Settings.jobs``) or the entry's default."""
        return {k: overrides.get(k.value) or s.job for k, s in self._specs.items()}


KINDS = KindRegistry(
    [
        KindSpec(
            kind=Kind.VIDEO,
            label="Video",
            request="common.domain.requests:VideoRequest",
            job="phoenix-video-job",
            media_types={"video/mp4": "mp4"},
            generator="generate_video",
            legacy_task="jobs.async_video_generation_worker.generate_video_task",
        ),
        KindSpec(
            kind=Kind.IMAGE,
            label="Image",
            request="common.domain.requests:ImageRequest",
            job="phoenix-image-job",
            media_types={"image/png": "png", "image/jpeg": "jpg"},
            generator="generate_image",
            legacy_task="jobs.async_image_generation_worker.generate_image_task",
        ),
    ]
)
