"""A real uvicorn server on 127.0.0.1, in a background thread, per test."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn


class RunningServer:
    def __init__(self, app: Any, port: int) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="auto"
        )
        self.server = uvicorn.Server(config)
        self.url = f"http://127.0.0.1:{port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def serve(free_port: int) -> Iterator[Callable[[Any], str]]:
    """Start an ASGI app under uvicorn on 127.0.0.1; return its base URL."""
    servers: list[RunningServer] = []

    def start(app: Any) -> str:
        s = RunningServer(app, free_port)
        s.start()
        servers.append(s)
        return s.url

    yield start
    for s in servers:
        s.stop()
