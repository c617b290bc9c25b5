"""The OpenAPI 3 document for the whole HTTP API, served at ``/api/openapi.json``.

One ``POST /api/generate/<kind>`` operation per kind of the registry (``common.domain.kinds``),
its request body the JSON Schema pydantic generates from the kind's request model, the very
model that validates requests (``common.domain.requests``), so the document cannot drift from
what the API accepts. The paths around those schemas are written here rather than by a
framework (flask-smorest, spectree): those would take over routing and our error contract
(``{"error": {"code", "message"}}`` with one field-precise message) and add dependencies to the
API image for what is one function. A test checks that every route Flask serves is documented
and every documented route exists. (Longer than our ~350-line norm: it is one declarative
document; splitting it would only scatter the operations.)
"""

from __future__ import annotations

from typing import Any

from common.domain.creation import Status
from common.domain.kinds import KINDS, Kind, KindRegistry, KindSpec
from common.domain.requests import request_json_schema


def _json_response(
    component: str, description: str, headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A response whose JSON body is ``#/components/schemas/<component>``."""
    schema = {"$ref": f"#/components/schemas/{component}"}
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


def _error_response(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return _json_response("Error", description, headers)


_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
_USER_HEADER = {
    "name": "X-Phoenix-User",
    "in": "header",
    "required": False,
    "description": "Local mode only (PHOENIX_AUTH=local): the caller's user id. "
    "In production a Firebase ID token is required instead (Authorization: Bearer).",
    "schema": {"type": "string", "pattern": r"^[A-Za-z0-9_.@-]{1,128}$"},
}


_WINDOW_PARAM = {
    "name": "window_hours",
    "in": "query",
    "required": False,
    "schema": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 24 * 90},
}


def _request_component(kind: Kind) -> str:
    return f"{kind.value.title()}Request"


def _generate_op(spec: KindSpec) -> dict[str, Any]:
    kind = spec.kind
    return {
        "summary": f"Ask for a {kind.value}; generation runs asynchronously",
        "operationId": f"generate_{kind.value}",
        "x-kind-label": spec.label,  # the page builds its kind choice from these operations
        "parameters": [_USER_HEADER],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": f"#/components/schemas/{_request_component(kind)}"}
                }
            },
        },
        "responses": {
            "202": {
                "description": "Accepted: the creation exists and its job was dispatched",
                "headers": {"Location": {"schema": {"type": "string"}}},
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Creation"}}
                },
            },
            "400": _error_response("Invalid request (the message names the field)"),
            "401": _error_response("Not authenticated"),
            "413": _error_response("Body over 64 KiB"),
            "415": _error_response("Body is not JSON"),
            "429": _error_response("Rate limit or concurrency cap", _RETRY_AFTER),
            "503": _error_response(
                "Recorded but not yet dispatched; it will be retried", _RETRY_AFTER
            ),
        },
    }


def _id_param() -> dict[str, Any]:
    return {"name": "creation_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _creation_response(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return _json_response("Creation", description, headers)


def _control_ops() -> dict[str, Any]:
    """Cancel, delete and retry: the owner's controls over one creation."""
    common_errors = {
        "400": _error_response("Malformed identity header (local mode)"),
        "401": _error_response("Not authenticated"),
        "404": _error_response("Unknown, deleted, or not the caller's"),
    }
    return {
        "cancel": {
            "post": {
                "summary": "Cancel a queued or generating creation (idempotent)",
                "description": "A queued (pending) creation is cancelled at once and no job will "
                "run it. A generating (processing) one is asked to stop: its job sees the request "
                "at its next heartbeat, stops calling the provider, stores nothing and the "
                "creation becomes cancelled. A Veo generation the provider already started may "
                "still be charged (provider_started).",
                "operationId": "cancel_creation",
                "parameters": [_USER_HEADER, _id_param()],
                "responses": {
                    "200": _creation_response("Cancelled (or already was)"),
                    "202": _creation_response(
                        "Cancellation requested; the job stops at its next heartbeat"
                    ),
                    **common_errors,
                    "409": _error_response("Already completed or failed"),
                },
            }
        },
        "delete": {
            "summary": "Delete a finished creation and its media",
            "description": "Completed, failed and cancelled creations are removed with their "
            "media; a queued one is cancelled first. A generating one answers 409 (and is asked "
            "to stop): delete it once it is cancelled.",
            "operationId": "delete_creation",
            "parameters": [_USER_HEADER, _id_param()],
            "responses": {
                "204": {"description": "Deleted: record and media are gone"},
                "202": {
                    "description": "Deleted for the caller (404 from now on); some media could "
                    "not be removed yet and the sweeper finishes it",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                **common_errors,
                "409": _error_response("Still generating: cancellation was requested"),
            },
        },
        "retry": {
            "post": {
                "summary": "Make a new creation with a failed or cancelled one's request",
                "operationId": "retry_creation",
                "parameters": [_USER_HEADER, _id_param()],
                "responses": {
                    "202": _creation_response(
                        "Accepted: the NEW creation", {"Location": {"schema": {"type": "string"}}}
                    ),
                    **common_errors,
                    "409": _error_response("Not failed or cancelled"),
                    "429": _error_response("Rate limit or concurrency cap", _RETRY_AFTER),
                    "503": _error_response(
                        "Recorded but not yet dispatched; it will be retried", _RETRY_AFTER
                    ),
                },
            }
        },
    }


def build_openapi(kinds: KindRegistry = KINDS) -> dict[str, Any]:
    controls = _control_ops()
    creation_schema = {
        "type": "object",
        "required": [
            "id",
            "kind",
            "status",
            "progress",
            "prompt",
            "params",
            "media",
            "error",
            "created_at",
            "updated_at",
        ],
        "properties": {
            "id": {"type": "string"},
            "kind": {"type": "string", "enum": list(kinds.names)},
            "status": {
                "type": "string",
                "enum": [s.value for s in Status if s.public],
                "description": "pending (queued) -> processing (generating) -> completed | "
                "failed; cancel makes pending or processing creations cancelled (terminal).",
            },
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "prompt": {"type": "string"},
            "params": {"type": "object"},
            "path": {"type": "string"},
            "media": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["url", "mime_type"],
                    "properties": {"url": {"type": "string"}, "mime_type": {"type": "string"}},
                },
            },
            "error": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": {"type": "string"},
                            "message": {"type": "string"},
                        },
                    },
                ]
            },
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
            "cancel_requested_at": {
                "type": "string",
                "format": "date-time",
                "nullable": True,
                "description": "Set when the owner cancelled; a generating creation stops at its "
                "job's next heartbeat and then becomes cancelled.",
            },
            "cancelled_at": {"type": "string", "format": "date-time", "nullable": True},
            "provider_started": {
                "type": "boolean",
                "nullable": True,
                "description": "For a cancelled creation: whether a provider generation had "
                "already started (its charge is then probably spent); null otherwise.",
            },
        },
    }
    error_schema = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "reason": {
                        "type": "string",
                        "description": "429 only: too_many_active (unfinished-creations cap), "
                        "rate_limited (per-user per-minute limit) or busy (service-wide ceiling)",
                    },
                },
            }
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Phoenix generation API",
            "version": "1.0.0",
            "description": "Type a prompt, get "
            + " or ".join(f"a {k.value}" for k in kinds)
            + ". Generation is asynchronous: POST returns 202 with a creation to poll.",
        },
        "paths": {
            **{f"/api/generate/{s.kind.value}": {"post": _generate_op(s)} for s in kinds.specs()},
            "/api/creations": {
                "get": {
                    "summary": "The caller's creations, newest first",
                    "operationId": "list_creations",
                    "parameters": [
                        _USER_HEADER,
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["creations"],
                                        "properties": {
                                            "creations": {
                                                "type": "array",
                                                "items": {"$ref": "#/components/schemas/Creation"},
                                            }
                                        },
                                    }
                                }
                            },
                        },
                        "400": _error_response("Bad limit"),
                        "401": _error_response("Not authenticated"),
                    },
                }
            },
            "/api/creations/{creation_id}": {
                "get": {
                    "summary": "One creation (poll it until completed or failed)",
                    "operationId": "get_creation",
                    "parameters": [
                        _USER_HEADER,
                        {
                            "name": "creation_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "If-None-Match",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "OK",
                            "headers": {"ETag": {"schema": {"type": "string"}}},
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Creation"}
                                }
                            },
                        },
                        "304": {"description": "Not modified since the given ETag"},
                        "400": _error_response("Malformed identity header (local mode)"),
                        "401": _error_response("Not authenticated"),
                        "404": _error_response("Unknown, or not the caller's"),
                    },
                },
                "delete": controls["delete"],
            },
            "/api/creations/{creation_id}/cancel": controls["cancel"],
            "/api/creations/{creation_id}/retry": controls["retry"],
            "/": {
                "get": {
                    "summary": "The web page (HTML)",
                    "operationId": "index",
                    "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
                }
            },
            "/media/{key}": {
                "get": {
                    "summary": "A generated file (local media mode only; production serves "
                    "signed Cloud Storage URLs)",
                    "operationId": "media",
                    "parameters": [
                        {
                            "name": "key",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": {"description": "The file (supports Range requests)"},
                        "206": {"description": "Partial content"},
                        "304": {"description": "Not modified"},
                        "401": _error_response("Not authenticated (Firebase mode)"),
                        "404": _error_response(
                            "No such file, or not the caller's (the same answer as a foreign "
                            "creation)"
                        ),
                        "416": {"description": "Range not satisfiable"},
                    },
                }
            },
            "/admin/migration": {
                "get": {
                    "summary": "Migration dashboard (HTML, server-rendered SVG plots); admins only",
                    "operationId": "admin_migration_page",
                    "parameters": [_USER_HEADER, _WINDOW_PARAM],
                    "responses": {
                        "200": {"description": "HTML", "content": {"text/html": {}}},
                        "400": _error_response("Bad window or identity header"),
                        "401": _error_response("Not authenticated"),
                        "403": _error_response("Not an admin"),
                    },
                }
            },
            "/api/admin/migration": {
                "get": {
                    "summary": "Old and new dispatch paths compared per kind over a window; "
                    "admins only",
                    "operationId": "admin_migration",
                    "parameters": [_USER_HEADER, _WINDOW_PARAM],
                    "responses": {
                        "200": {
                            "description": "Per path and kind: counts, success rate, failure "
                            "codes, queue-wait and run-time percentiles, retries, cost",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "400": _error_response("Bad window or identity header"),
                        "401": _error_response("Not authenticated"),
                        "403": _error_response("Not an admin"),
                    },
                }
            },
            "/api/admin/failures": {
                "get": {
                    "summary": "Recent failed creations (24 h, newest first) with the internal "
                    "detail users never see; admins only",
                    "operationId": "admin_failures",
                    "parameters": [
                        _USER_HEADER,
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "id, user, kind, path, attempts, code, user message "
                            "and internal detail of each failure",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "400": _error_response("Bad limit or identity header"),
                        "401": _error_response("Not authenticated"),
                        "403": _error_response("Not an admin"),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Process is up",
                    "operationId": "healthz",
                    "responses": {"200": {"description": "OK"}},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Store reachable",
                    "operationId": "readyz",
                    "responses": {
                        "200": {"description": "Ready"},
                        "503": _error_response("Store unreachable"),
                    },
                }
            },
            "/api/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {"200": {"description": "OK"}},
                }
            },
        },
        "components": {
            "schemas": {
                **{_request_component(k): request_json_schema(k, kinds) for k in kinds},
                "Creation": creation_schema,
                "Error": error_schema,
            }
        },
    }
