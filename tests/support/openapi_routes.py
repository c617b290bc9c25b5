"""The routes a Flask app serves and the operations an OpenAPI document lists, as comparable
sets of (METHOD, path): what keeps the document and the app from drifting apart."""

from __future__ import annotations

import re

IGNORED_METHODS = {"HEAD", "OPTIONS"}  # Werkzeug adds them to every rule
_ANY = re.compile(r"<any\(([^)]*)\):(\w+)>")
_PARAM = re.compile(r"<(?:[a-z]+(?:\([^)]*\))?:)?(\w+)>")


def openapi_paths(rule: str) -> list[str]:
    """A Werkzeug rule as the OpenAPI path(s) it serves: ``<any(a, b):kind>`` becomes one
    concrete path per choice (that is how the document lists /api/generate/video|image), other
    converters become ``{name}``."""
    match = _ANY.search(rule)
    if match:
        choices = [c.strip().strip("'\"") for c in match.group(1).split(",")]
        return [p for c in choices for p in openapi_paths(rule.replace(match.group(0), c, 1))]
    return [_PARAM.sub(lambda m: "{" + m.group(1) + "}", rule)]


def flask_operations(app) -> set[tuple[str, str]]:
    ops = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.endswith(".static"):
            continue
        for path in openapi_paths(rule.rule):
            for method in (rule.methods or set()) - IGNORED_METHODS:
                ops.add((method, path))
    return ops


def documented_operations(doc: dict) -> set[tuple[str, str]]:
    methods = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    return {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in methods
    }
