"""What a user is told when a creation fails: a stable code and a message written for them.

Failures arrive with internal detail (an exception's text naming a bucket, a service account, a
URL; a provider's raw error). That detail helps an operator and must never reach a user, so the
record keeps both: ``CreationError.message`` is the text below for its code, and
``CreationError.detail`` is the internal text, shown only in logs and to operators. The API
renders the message from the code (``public_error``), so even a record written before this rule
existed cannot leak its detail.

Codes are stable: clients and the migration dashboard switch on them. A code missing here
still reaches the user as itself, with the generic message.
"""

from __future__ import annotations

GENERIC_MESSAGE = "The creation failed. Please try again."

_TRY_AGAIN_LATER = "The generation service is busy right now. Please try again in a few minutes."

USER_MESSAGES: dict[str, str] = {
    # The prompt or its options (permanent)
    "content_filtered": (
        "The request was blocked by the content safety filters. Try rephrasing the prompt."
    ),
    "invalid_argument": "These settings cannot be generated. Check the prompt and the options.",
    # The provider (retried, then final)
    "quota_exhausted": _TRY_AGAIN_LATER,
    "provider_busy": _TRY_AGAIN_LATER,
    "provider_unavailable": _TRY_AGAIN_LATER,
    "provider_timeout": "The generation took too long and was stopped. Please try again.",
    # A start whose answer was lost (issue 12): retried without paying twice, then final
    "start_outcome_unknown": _TRY_AGAIN_LATER,
    "provider_error": "The generation service could not complete this request.",
    "no_output": "The generation finished without producing any media. Please try again.",
    "render_failed": "The media could not be rendered. Please try again.",
    # Our side (operators have the detail)
    "permission_denied": "The service is not set up correctly for this request; we are on it.",
    "not_found": "The service is not set up correctly for this request; we are on it.",
    "internal_error": "Something went wrong on our side. Please try again.",
    "wrong_job_kind": "Something went wrong on our side. Please try again.",
    # Lifecycle (the sweeper and the job runner)
    "dispatch_failed": "The creation could not be started. Please try again.",
    "timed_out": "The creation took too long and was stopped. Please try again.",
    # the job was stopped (Cloud Run task timeout, SIGTERM); final only on its last attempt
    "terminated": "The creation took too long and was stopped. Please try again.",
    "max_attempts_exceeded": "The creation failed several times and was stopped. Please try again.",
    "cancelled": "The creation was cancelled.",
}


def user_message(code: str) -> str:
    return USER_MESSAGES.get(code, GENERIC_MESSAGE)


def split(code: str, message: str, detail: str | None = None) -> tuple[str, str | None]:
    """(user message, internal detail) for a failure described by ``message``: the message a
    user sees comes from the code; whatever ``message`` said that differs is kept as detail."""
    safe = user_message(code)
    if detail is None and message and message != safe:
        detail = message
    return safe, detail
