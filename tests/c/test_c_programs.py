"""Build and run every tests/c/stress_*.c: optimized, then under ThreadSanitizer.

Each program includes csrc headers directly (no Python), hammers one primitive from
several pthreads, checks its own invariants, and exits 0 on success. ``argv[1]``, if
given, is the number of operations per thread (the programs default to 1000000).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
STRESS_SOURCES = sorted(HERE.glob("stress_*.c"))

# TSan slows atomics-heavy loops 5-15x; fewer operations keep CI time flat while
# still interleaving the threads many thousands of times.
TSAN_OPS_PER_THREAD = 100_000
TSAN_OPTIONS = "halt_on_error=1 exitcode=66"
RUN_TIMEOUT_S = 600


def _run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"{shlex.join(cmd)} did not finish in {RUN_TIMEOUT_S} s (deadlock or livelock?)\n"
            f"--- stdout ---\n{exc.stdout!r}\n--- stderr ---\n{exc.stderr!r}",
            pytrace=False,
        )
    if proc.returncode != 0:
        pytest.fail(
            f"{shlex.join(cmd)} exited with {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}",
            pytrace=False,
        )


def test_stress_programs_exist() -> None:
    # A rename or a moved directory must not turn the C suite into zero tests.
    assert STRESS_SOURCES, f"no stress_*.c in {HERE}"


@pytest.mark.parametrize("source", STRESS_SOURCES, ids=lambda p: p.stem)
def test_stress(source: Path, tmp_path: Path, build_c: Callable[..., Path]) -> None:
    exe = build_c(source, tmp_path / source.stem)
    _run([str(exe)])


@pytest.mark.parametrize("source", STRESS_SOURCES, ids=lambda p: p.stem)
def test_stress_tsan(
    source: Path, tmp_path: Path, build_c: Callable[..., Path], tsan_available: bool
) -> None:
    if not tsan_available:
        pytest.skip("the C compiler cannot build a ThreadSanitizer program")
    exe = build_c(source, tmp_path / f"{source.stem}-tsan", tsan=True)
    _run(
        [str(exe), str(TSAN_OPS_PER_THREAD)],
        env={**os.environ, "TSAN_OPTIONS": TSAN_OPTIONS},
    )
