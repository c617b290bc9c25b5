"""What ``SweepReport.as_dict()`` should be, written once for the tests that check a sweep."""

from __future__ import annotations

COUNTERS = ("redispatched", "failed", "errors", "cancelled", "deleted", "slots_released", "queued")


def sweep_counts(**nonzero: int) -> dict[str, int]:
    """Every counter of a sweep report, 0 but those given (in the report's order)."""
    unknown = set(nonzero) - set(COUNTERS)
    assert not unknown, f"not sweep counters: {sorted(unknown)}"
    return {name: nonzero.get(name, 0) for name in COUNTERS}
