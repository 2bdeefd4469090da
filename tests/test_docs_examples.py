"""Every code example in docs/ is a file, and every one of them runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.py"))
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# Info strings that mark a fenced block as Python. Anything else (text, sh, console,
# toml, mermaid, no tag at all) is not checked; there is no opt-out for Python itself.
PYTHON_TAGS = {"python", "py", "python3"}
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


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


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lines: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def python_blocks(page: Path) -> list[Block]:
    """The ```python fenced blocks of a Markdown page, as CommonMark delimits them."""
    blocks = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        # A backtick fence's info string may not contain a backtick (that is inline code).
        if m is None or (m["fence"][0] == "`" and "`" in m["info"]):
            i += 1
            continue
        fence, start = m["fence"], i
        body = []
        i += 1
        while i < len(lines):
            close = FENCE.match(lines[i])
            if (
                close is not None
                and close["fence"][0] == fence[0]
                and len(close["fence"]) >= len(fence)
                and not close["info"].strip()
            ):
                break
            body.append(lines[i])
            i += 1
        i += 1  # past the closing fence (or the end of an unclosed block)
        words = m["info"].split()
        if words and words[0].lower() in PYTHON_TAGS:
            blocks.append(Block(page, start + 1, tuple(body)))
    return blocks


def indented(lines: list[str] | tuple[str, ...]) -> list[tuple[int, str]]:
    """(indentation, stripped text) of each non-blank line."""
    out = []
    for line in lines:
        line = line.expandtabs()
        text = line.strip()
        if text:
            out.append((len(line) - len(line.lstrip()), text))
    return out


EXAMPLE_LINES = {path: indented(path.read_text().splitlines()) for path in EXAMPLES}
BLOCKS = [block for page in PAGES for block in python_blocks(page)]


def test_there_are_python_blocks() -> None:
    assert BLOCKS, "no ```python block found in README.md or docs/"


def find(block: list[tuple[int, str]]) -> tuple[int, Path | None, str]:
    """Match a block against the examples.

    Returns how many of its lines match (all of them: a match), the example with the
    longest match, and why the match stopped there. Lines are compared stripped, and
    their indentation relative to the block's first line must be the example's, so a
    block may sit at any depth of the file but cannot change its nesting.
    """
    best, best_path, best_why = 0, None, "not in any example"
    for path, lines in EXAMPLE_LINES.items():
        for start in range(len(lines) - best):
            if lines[start][1] != block[0][1]:
                continue
            shift = lines[start][0] - block[0][0]
            n, why = 0, "the file ends"
            while n < len(block) and start + n < len(lines):
                (have_indent, have), (want_indent, want) = lines[start + n], block[n]
                if have != want:
                    why = f"the file has {have!r}"
                    break
                if have_indent != want_indent + shift:
                    why = "the file indents it differently"
                    break
                n += 1
            if n == len(block):
                return n, path, ""
            if n > best:
                best, best_path, best_why = n, path, why
    return best, best_path, best_why


@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_python_block_is_an_example(block: Block) -> None:
    """Every ```python block is a contiguous run of lines of a docs/examples/*.py file.

    Blank lines do not count; indentation may differ by one shift for the whole block.
    Text that is not runnable Python (shell commands, output) belongs in ```text or
    ```sh blocks instead.
    """
    lines = indented(block.lines)
    assert lines, f"{block}: empty ```python block"
    matched, path, why = find(lines)
    if matched == len(lines):
        return
    missing = lines[matched][1]
    where = (
        f"the longest match is its first {matched} of {len(lines)} lines, in "
        f"docs/examples/{path.name}, where {why}"
        if path is not None
        else "its first line is in no example"
    )
    pytest.fail(
        f"{block}: this ```python block is not code of any docs/examples/*.py file; "
        f"first missing line: {missing!r} ({where}). Put the code in an example the "
        "tests run and show it unchanged; mark non-Python text ```text or ```sh.",
        pytrace=False,
    )
