"""Processes released at the same instant against one SQLite file: the cross-process races the
contract tests hold the stores and the Veo slot guard to."""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any, Callable, Sequence


def race_processes(
    target: Callable[..., None], args: Sequence[tuple[Any, ...]], timeout: float = 120
) -> list[Any]:
    """One spawned process per ``args`` tuple, each calling ``target(*args, start, out)``: it
    should wait on the ``start`` event (set once all have started), then append its results to
    the shared list ``out``. Every process must exit 0; returns everything appended."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        out = manager.list()
        start = ctx.Event()
        procs = [ctx.Process(target=target, args=(*a, start, out)) for a in args]
        for p in procs:
            p.start()
        start.set()
        for p in procs:
            p.join(timeout)
            assert p.exitcode == 0
        return list(out)


def threads_at_once(start: Any, work: Callable[..., None], args: Sequence[tuple[Any, ...]]) -> None:
    """Inside a racing process: wait for ``start``, then run ``work(*a)`` for every ``a`` in
    its own thread, all at once; returns when all are done."""
    start.wait()
    threads = [threading.Thread(target=work, args=a) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
