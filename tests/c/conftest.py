"""Build C programs against csrc/ with the system compiler; probe for ThreadSanitizer."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"

# Same strictness as the extension build in setup.py.
BASE_FLAGS = ("-std=c11", "-Wall", "-Wextra", "-Werror", "-pthread", f"-I{CSRC}")
OPT_FLAGS = ("-O2",)
TSAN_FLAGS = ("-fsanitize=thread", "-O1", "-g")

# build_c(source, output, *, tsan) -> output
BuildC = Callable[..., Path]

_TSAN_PROBE = r"""
#include <pthread.h>
static _Atomic int hits;
static void *work(void *arg) { (void)arg; hits += 1; return NULL; }
int main(void) {
    pthread_t t;
    if (pthread_create(&t, NULL, work, NULL) != 0) return 1;
    pthread_join(t, NULL);
    return hits == 1 ? 0 : 1;
}
"""


@pytest.fixture(scope="session")
def c_compiler() -> str:
    """Return the C compiler: $CC if set, else ``cc``; fail if there is none."""
    name = os.environ.get("CC", "cc")
    path = shutil.which(name)
    if path is None:
        # The compiled core needs the same compiler, so its absence is a broken setup,
        # not a reason to skip.
        pytest.fail(f"no C compiler: {name!r} is not on PATH", pytrace=False)
    return path


def _compile(cc: str, source: Path, output: Path, flags: Sequence[str]) -> None:
    cmd = [cc, *BASE_FLAGS, *flags, str(source), "-o", str(output)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(
            f"compile failed ({proc.returncode}): {shlex.join(cmd)}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def build_c(c_compiler: str) -> BuildC:
    """Return ``build(source, output, *, tsan=False) -> output``; errors fail the test.

    ``tsan=True`` builds with ThreadSanitizer (``-fsanitize=thread -O1 -g``) instead of
    ``-O2``.
    """

    def build(source: Path, output: Path, *, tsan: bool = False) -> Path:
        _compile(c_compiler, source, output, TSAN_FLAGS if tsan else OPT_FLAGS)
        return output

    return build


@pytest.fixture(scope="session")
def tsan_available(c_compiler: str, tmp_path_factory: pytest.TempPathFactory) -> bool:
    """Say whether the compiler can build a trivial ThreadSanitizer program (once)."""
    work = tmp_path_factory.mktemp("tsan-probe")
    source = work / "probe.c"
    source.write_text(_TSAN_PROBE)
    cmd = [c_compiler, "-std=c11", "-pthread", *TSAN_FLAGS, str(source), "-o", str(work / "probe")]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return proc.returncode == 0
