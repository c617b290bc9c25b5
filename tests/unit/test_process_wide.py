"""``process_wide``: one client per process and arguments, even when threads race to build it."""

from __future__ import annotations

import threading
import time

from common.adapters.process_wide import process_wide


def test_one_build_per_arguments_however_spelled_even_under_a_race() -> None:
    builds: list[tuple[str, str]] = []

    @process_wide
    def client(project: str, endpoint: str = "") -> object:
        builds.append((project, endpoint))
        time.sleep(0.05)  # a slow constructor widens the race window
        return object()

    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(client("p"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(r) for r in results}) == 1
    assert client("p") is client("p", "") is client(project="p", endpoint="")
    assert client("p", "127.0.0.1:1") is not client("p")
    assert builds == [("p", ""), ("p", "127.0.0.1:1")]
    client.clear()
    client("p")
    assert len(builds) == 3
