"""Shared fixtures: both core implementations, both async backends, a free port.

Every core and strategy test takes ``core`` and so runs once on the compiled
``resilio._core_c`` and once on the pure-Python twin ``resilio._core_py`` (the
propcache/multidict pattern). ``--no-c-extensions`` skips the compiled runs; without
it, a compiled core that cannot be imported fails those runs instead of skipping them,
so a broken build can never pass as a green, Python-only test run.
"""

from __future__ import annotations

import argparse
import importlib
import socket
from types import ModuleType

import pytest

C_EXT_MARK = pytest.mark.c_extension

_CORE_MODULES = {"c": "resilio._core_c", "py": "resilio._core_py"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--c-extensions",  # --no-c-extensions turns it off
        action=argparse.BooleanOptionalAction,
        default=True,
        dest="c_extensions",
        help="test resilio._core_c too (default: on; if it cannot be imported, that fails)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("c_extensions"):
        return
    skip_c = pytest.mark.skip(reason="--no-c-extensions given")
    for item in items:
        if item.get_closest_marker(C_EXT_MARK.name) is not None:
            item.add_marker(skip_c)


def _import_core(param: str) -> ModuleType:
    name = _CORE_MODULES[param]
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if param == "c":
            pytest.fail(
                f"cannot import the compiled core {name}: {exc!r}. Build it with "
                "`pip install -e .`, or pass --no-c-extensions to test only the "
                "pure-Python core.",
                pytrace=False,
            )
        raise


@pytest.fixture(params=[pytest.param("c", marks=C_EXT_MARK), "py"])
def core(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Return the core module under test (``resilio._core_c`` or ``resilio._core_py``).

    The selector ``resilio._core`` is switched to it for the test too, so strategies
    built during the test run on that implementation.
    """
    module = _import_core(request.param)
    import resilio._core as selector

    for name in module.__all__:
        monkeypatch.setattr(selector, name, getattr(module, name))
    monkeypatch.setattr(selector, "core_impl", "cython" if request.param == "c" else "python")
    return module


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param("trio", id="trio"),
    ],
)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every ``@pytest.mark.anyio`` test on asyncio and on trio."""
    backend: str = request.param
    return backend


@pytest.fixture
def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
