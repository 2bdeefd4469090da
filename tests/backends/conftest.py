"""A real redis-server for the Redis backend tests, which a test may kill and restart.

`redis_server` starts ``redis-server --port P --bind 127.0.0.1 --save '' --appendonly
no`` on a free port as a subprocess, waits until it answers PING, yields a
`RedisServer` (its URL, and `kill` / `stop` / `start` / `restart` / `pause` /
`resume` on the same port), and kills it afterwards. Tests skip (with a message) only
when redis-server is not installed; CI installs it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REDIS_SERVER = shutil.which("redis-server")


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server subprocess on 127.0.0.1:`port` (same port across restarts)."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and return once it answers PING."""
        assert REDIS_SERVER is not None
        assert not self.alive, "already running"
        args = {
            "--port": str(self.port),
            "--bind": "127.0.0.1",
            "--save": "",
            "--appendonly": "no",
            "--dir": str(self.workdir),
        }
        self.proc = subprocess.Popen(
            [REDIS_SERVER, *(x for kv in args.items() for x in kv)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not _ping(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer PING on port {self.port}")
            time.sleep(0.01)

    def kill(self) -> None:
        """SIGKILL the server (no goodbye to its clients) and reap it."""
        self._signal_and_wait(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM the server and reap it."""
        self._signal_and_wait(signal.SIGTERM)

    def restart(self) -> None:
        """Kill it if it runs, then start it again on the same port (with no data)."""
        self.kill()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections but answers nothing."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def _signal_and_wait(self, sig: int) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGCONT)  # a paused server cannot act on SIGTERM
        proc.send_signal(sig)
        proc.wait(10)

    def client(self) -> Any:
        """A synchronous redis-py client, to look at (and meddle with) the server."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for one test; killed at the end."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (CI installs it)")
    server = RedisServer(free_tcp_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url
