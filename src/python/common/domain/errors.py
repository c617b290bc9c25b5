"""Domain errors. Entry points map these to HTTP statuses or exit codes; nothing below them does."""

from __future__ import annotations


class DomainError(Exception):
    """Base class for rule violations that callers are expected to handle."""


class ValidationError(DomainError):
    """Bad input from a user: names the offending field so the API can say which and why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFound(DomainError):
    """The creation does not exist (or, at the API, is not the caller's)."""


class InvalidTransition(DomainError):
    """A status change the lifecycle does not allow (e.g. completing a failed creation)."""


class AlreadyClaimed(DomainError):
    """Another live job execution holds the lease: this delivery is a duplicate and must back off."""


class AlreadyFinished(DomainError):
    """The creation is terminal: any further delivery is a no-op."""


class StopWork(DomainError):
    """The one way a lease renewal tells a running job to stop: raised by the lifecycle inside
    ``renew`` (and every other lease-checked change) and reported by the job's heartbeat.
    Subclasses say why (``LeaseLost``; a cancel request can be another)."""

    reason = "stop"


class LeaseLost(StopWork):
    """This execution's lease expired and someone else took the creation over: stop writing."""

    reason = "lease_lost"


class CancelRequested(LeaseLost):
    """The owner asked to cancel: the job holding the lease must stop and store nothing.

    A LeaseLost, so any code that already stops on a lost lease (a heartbeat thread, the
    generator's callbacks) stops on a cancel too; the job runner tells the two apart and ends
    the record ``cancelled``."""

    reason = "cancel_requested"


class GenerationError(Exception):
    """A provider or generator failure, classified so the runner knows whether to retry.

    ``code`` is machine-readable and ends up in the creation's ``error.code``.
    """

    def __init__(
        self, code: str, message: str, *, retryable: bool, outcome_unknown: bool = False
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable
        # The request may have reached the provider and been accepted (timeout or connection
        # lost after sending): the caller must not assume nothing was started.
        self.outcome_unknown = outcome_unknown


class DispatchError(Exception):
    """The queue/dispatcher refused or could not be reached; the creation stays recoverable."""
