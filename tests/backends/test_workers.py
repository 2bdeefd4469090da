"""`uvicorn --workers 4` sharing one rate limit and one circuit breaker through the
shared-memory backend: real worker processes, a real client on 127.0.0.1.

Each request goes over a fresh connection, so the kernel hands requests to all the
workers; a limit kept per worker would admit up to four times the burst, and a breaker
kept per worker would need four times the failures to open everywhere.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("resilio._core_c")

pytestmark = pytest.mark.c_extension

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 4
BURST = 40
MIN_THROUGHPUT = 8

APP = textwrap.dedent(
    f"""
    import os

    from resilio import CircuitBreaker, Pipeline
    from resilio.errors import BrokenCircuitError
    from resilio.integrations.asgi import RateLimitMiddleware

    SHM = "shm:" + os.environ["RESILIO_TEST_SHM"]
    breaker = CircuitBreaker(
        failure_ratio=0.5,
        minimum_throughput={MIN_THROUGHPUT},
        break_duration=600.0,
        name="dependency",
        backend=SHM,
    )
    pipeline = Pipeline(breaker)


    async def dependency():
        raise ConnectionError("dependency down")


    async def inner(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({{"type": "lifespan.startup.complete"}})
                else:
                    await send({{"type": "lifespan.shutdown.complete"}})
                    return
        status = 200
        if scope["path"] == "/dependency":
            try:
                await pipeline.execute(dependency)
            except BrokenCircuitError:
                status = 503
            except ConnectionError:
                status = 502
        await send({{"type": "http.response.start", "status": status, "headers": []}})
        await send({{"type": "http.response.body", "body": str(os.getpid()).encode()}})


    # A refill of one token per 1000 s: within a test the burst is all there is.
    app = RateLimitMiddleware(
        inner,
        rate=0.001,
        burst={BURST},
        backend=SHM,
        name="edge",
        exempt=["/pid", "/dependency"],
    )
    """
)


class Workers:
    def __init__(self, proc: subprocess.Popen[bytes], url: str) -> None:
        self.proc = proc
        self.url = url

    def get(self, path: str) -> httpx.Response:
        # A fresh connection per request: the next accept() may be any worker's.
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            return client.get(path, headers={"connection": "close"})

    def pids(self, want: int, timeout: float = 20.0) -> set[int]:
        """Worker pids seen answering /pid, once at least `want` have answered."""
        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(seen) < want:
            assert time.monotonic() < deadline, f"only {len(seen)} workers answered"
            seen.add(int(self.get("/pid").text))
        return seen


@pytest.fixture
def workers(tmp_path: Path, free_port: int) -> Iterator[Workers]:
    shm = f"/dev/shm/resilio-workers-{os.getpid()}-{uuid.uuid4().hex[:10]}"
    (tmp_path / "workers_app.py").write_text(APP)
    env = dict(os.environ)
    env["RESILIO_TEST_SHM"] = shm
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "workers_app:app",
            "--app-dir",
            str(tmp_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port),
            "--workers",
            str(WORKERS),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        env=env,
        start_new_session=True,
    )
    w = Workers(proc, f"http://127.0.0.1:{free_port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"uvicorn exited with {proc.returncode}"
            try:
                w.get("/pid")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.1)
        yield w
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(shm)


def test_workers_share_one_rate_limit_exactly(workers: Workers) -> None:
    assert len(workers.pids(2)) >= 2
    statuses = [workers.get("/limited").status_code for _ in range(3 * BURST)]
    assert statuses.count(200) == BURST
    assert statuses.count(429) == 2 * BURST
    assert statuses[:BURST] == [200] * BURST  # no refill in between, no early refusal


def test_a_killed_worker_leaves_the_limit_exact(workers: Workers) -> None:
    first = [workers.get("/limited").status_code for _ in range(BURST // 2)]
    assert first == [200] * (BURST // 2)
    victim = next(iter(workers.pids(2)))
    os.kill(victim, signal.SIGKILL)
    # The survivors (and the worker uvicorn starts in its place) go on from the same
    # state: exactly the other half of the burst, then refusals.
    rest: list[int] = []
    deadline = time.monotonic() + 30
    while len(rest) < 2 * BURST:
        assert time.monotonic() < deadline
        try:
            rest.append(workers.get("/limited").status_code)
        except httpx.TransportError:
            continue  # a connection the dying worker had accepted
    assert rest.count(200) == BURST - BURST // 2
    assert rest.count(429) == len(rest) - rest.count(200)


def test_breaker_opened_by_failures_in_any_worker_is_open_in_all(workers: Workers) -> None:
    assert len(workers.pids(2)) >= 2
    failed = 0
    codes = []
    for _ in range(4 * MIN_THROUGHPUT):
        r = workers.get("/dependency")
        codes.append(r.status_code)
        if r.status_code == 503:
            break
        assert r.status_code == 502
        failed += 1
    # One shared window: it opens after `minimum_throughput` failures in all, not
    # `minimum_throughput` per worker.
    assert failed == MIN_THROUGHPUT, codes
    answered_by = set()
    for _ in range(40):
        r = workers.get("/dependency")
        assert r.status_code == 503
        answered_by.add(int(r.text))
    assert len(answered_by) >= 2
