"""How provider failures are classified (the retry decision lives here, so it is pinned down)."""

from __future__ import annotations

import pytest

from common.adapters.vertex_generator import _operation_error, classify


@pytest.mark.parametrize(
    "code, status, expected, retryable",
    [
        (429, "RESOURCE_EXHAUSTED", "quota_exhausted", True),
        (None, "RESOURCE_EXHAUSTED", "quota_exhausted", True),
        (400, "INVALID_ARGUMENT", "invalid_argument", False),
        (400, "FAILED_PRECONDITION", "invalid_argument", False),
        (403, "PERMISSION_DENIED", "permission_denied", False),
        (401, "UNAUTHENTICATED", "permission_denied", False),
        (404, "NOT_FOUND", "not_found", False),
        (500, "INTERNAL", "provider_unavailable", True),
        (503, "UNAVAILABLE", "provider_unavailable", True),
        (504, "DEADLINE_EXCEEDED", "provider_unavailable", True),
        (408, None, "provider_unavailable", True),
        (418, None, "provider_error", False),
    ],
)
def test_http_errors(code, status, expected, retryable):
    err = classify(code, status, "msg")
    assert (err.code, err.retryable, err.message) == (expected, retryable, "msg")


@pytest.mark.parametrize(
    "error, expected, retryable",
    [
        ({"code": 13, "message": "Internal error encountered."}, "provider_unavailable", True),
        ({"code": 8, "message": "quota"}, "quota_exhausted", True),
        ({"code": 3, "message": "bad duration"}, "invalid_argument", False),
        ({"code": 7, "message": "no access"}, "permission_denied", False),
        ({"code": 99, "message": "??"}, "provider_error", False),
    ],
)
def test_failed_operation_errors_use_rpc_codes_not_http_codes(error, expected, retryable):
    err = _operation_error(error)
    assert (err.code, err.retryable) == (expected, retryable)
    assert err.message == error["message"]
