"""The real local server (``python -m api.local``) as the e2e and browser tests start it: its
own process group, data in a temp dir, a free port, readiness on /healthz, SIGTERM or Ctrl+C to
stop it. One implementation for every test that drives the product over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

START_TIMEOUT_S = 60.0


class LocalServer:
    def __init__(self, proc: subprocess.Popen[bytes], base: str, log_path: Path) -> None:
        self.proc = proc
        self.base = base
        self.log_path = log_path

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def url(self, path: str) -> str:
        return self.base + path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_local_server(data_dir: Path, extra_env: dict[str, str] | None = None) -> LocalServer:
    """Start ``python -m api.local`` on a free port with its data in ``data_dir``; return once
    /healthz answers. Retries once on a port collision (the port is free when picked, but
    another process may take it before the server binds)."""
    last_error = ""
    for _ in range(2):
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PHOENIX_")}
        env.update(
            PORT=str(port),
            PHOENIX_DATA_DIR=str(data_dir),
            PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
            PYTHONUNBUFFERED="1",
        )
        env.update(extra_env or {})
        log_path = data_dir / f"server-{port}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "api.local"],
                env=env,
                cwd=data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group, like a server started in its own terminal: lets a
                # test send Ctrl+C to the group without hitting pytest.
                start_new_session=True,
            )
        server = LocalServer(proc, f"http://127.0.0.1:{port}", log_path)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                if requests.get(server.url("/healthz"), timeout=1).status_code == 200:
                    return server
            except requests.RequestException:
                pass
            time.sleep(0.1)
        last_error = server.log_tail()
        stop_server(server)
    raise AssertionError(f"the local server did not start:\n{last_error}")


def stop_server(server: LocalServer, timeout: float = 30.0, *, ctrl_c: bool = False) -> int:
    """SIGTERM to the server (what Cloud Run / systemd send), or with ``ctrl_c`` SIGINT to its
    whole process group (what a terminal sends on Ctrl+C)."""
    if server.proc.poll() is None:
        if ctrl_c:
            os.killpg(server.proc.pid, signal.SIGINT)
        else:
            server.proc.send_signal(signal.SIGTERM)
        try:
            return server.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
            raise
    return int(server.proc.returncode)
