"""Every code example in docs/ is a file, and every one of them runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.py"))


def test_there_are_examples() -> None:
    assert EXAMPLES, "docs/examples/ holds no example"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"{path.name} failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.parametrize("page", sorted((ROOT / "docs").rglob("*.md")), ids=lambda p: p.name)
def test_pages_name_existing_examples(page: Path) -> None:
    """A page that cites docs/examples/X.py cites a file that exists."""
    text = page.read_text()
    for word in text.split():
        word = word.strip("`()[],.:;")
        if word.startswith("docs/examples/") and word.endswith(".py"):
            assert (ROOT / word).is_file(), f"{page.name} cites missing {word}"
