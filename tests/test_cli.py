"""The `resilio` command: `resilio check FILE`, in process and as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from resilio.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "config_example.toml"
BAD = """\
[[pipelines.payments.strategies]]
[pipelines.payments.strategies.retry]
attempts = 0
"""


@pytest.fixture
def bad_file(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    return path


def test_check_ok(core: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(EXAMPLE)]) == 0
    out, err = capsys.readouterr()
    assert out == "OK\n" and err == ""


def test_check_bad_field(bad_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(bad_file)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"{bad_file}: pipelines.payments.strategies[0].retry.attempts: "
        "Expected `int` >= 1 (got 0)\n"
    )


def test_check_builds_the_strategies(
    core: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Valid as data; only building the retry budget finds the window too short.
    path = tmp_path / "c.json"
    path.write_text(
        '{"pipelines": {"p": {"strategies": [{"retry": {"budget": {"window": 5e-9}}}]}}}'
    )
    assert main(["check", str(path)]) == 1
    assert "pipelines.p.strategies[0].retry: window must be >= 10 ns" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("missing.toml", None, "cannot read the file"),
        ("syntax.yaml", "a: [", "not valid YAML"),
        ("syntax.json", "{", "not valid JSON"),
        ("notes.txt", "", "unknown config format '.txt'"),
    ],
)
def test_check_unreadable_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: str | None, words: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(str(path)) and words in err


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["check"])
    assert info.value.code == 2
    assert "FILE" in capsys.readouterr().err


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for cmd in COMMANDS:
        assert cmd.name in out


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "resilio.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )


def test_subprocess_ok() -> None:
    proc = _run("check", str(EXAMPLE))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "OK\n", "")


def test_subprocess_bad(bad_file: Path) -> None:
    proc = _run("check", str(bad_file))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "pipelines.payments.strategies[0].retry.attempts" in proc.stderr
    assert "(got 0)" in proc.stderr
