"""A SIGTERM whose exception is lost (raised inside a finalizer or swallowed by a library's bare
``except:``) still stops the job: the handler re-delivers it until the job acknowledges it.

Before the re-delivery existed, a video job in CI swallowed its one Terminated, ignored every
later SIGTERM and polled Veo to completion past the task timeout.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Iterator

import pytest

from common.job_main import _StopOnSigterm
from common.job_runner import Terminated


@pytest.fixture
def handler() -> Iterator[_StopOnSigterm]:
    stop = _StopOnSigterm(reassert_s=0.05)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield stop
    finally:
        stop.acknowledge()
        signal.signal(signal.SIGTERM, previous)


def _swallowing_library_call() -> None:
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler runs here and raises
    except BaseException:  # noqa: BLE001  (what a careless library does)
        pass


def test_a_swallowed_terminated_is_raised_again_in_the_main_thread(handler: _StopOnSigterm) -> None:
    _swallowing_library_call()
    assert handler.requested.is_set()
    with pytest.raises(Terminated):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.01)  # the job going on with its work
    handler.acknowledge()


def test_once_acknowledged_later_signals_do_not_interrupt_the_hand_back(
    handler: _StopOnSigterm,
) -> None:
    with pytest.raises(Terminated):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    handler.acknowledge()
    os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM during the hand-back
    time.sleep(0.3)  # re-delivery would have fired several times by now
    assert handler.acknowledged.is_set()
