"""The `resilio` command.

    resilio check FILE      validate a config file (TOML, JSON or YAML): prints OK,
                            or the error naming the bad field; exit status 0 or 1
    resilio demo            a flaky upstream, bare httpx vs ResilientTransport side by
                            side; prints the comparison, writes an HTML report
    resilio bench           success-path overhead of each strategy on this machine

Each subcommand is a `_Command`: a name, a one-line help, a function that adds
its arguments to its parser, and a function that runs it and returns the exit
status. Add one to `COMMANDS` to add a subcommand.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple, TextIO

__all__ = ["COMMANDS", "main"]


class _Command(NamedTuple):
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, TextIO, TextIO], int]


def _configure_check(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="config file: .toml, .json, .yaml or .yml")


def _run_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    # Imported here so that `resilio --help` stays fast and works without msgspec extras.
    from resilio.config import ConfigError, check, load

    try:
        cfg = load(args.file)
        check(cfg, source=args.file)
    except ConfigError as exc:
        print(exc, file=err)
        return 1
    print("OK", file=out)
    return 0


def _configure_demo(parser: argparse.ArgumentParser) -> None:
    from resilio.demo.run import configure

    configure(parser)


def _run_demo(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from resilio.demo.run import execute

    return execute(args, out, err)


def _configure_bench(parser: argparse.ArgumentParser) -> None:
    from resilio.benchcmd import configure

    configure(parser)


def _run_bench(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from resilio.benchcmd import execute

    return execute(args, out, err)


#: Subcommands, in the order `resilio --help` lists them.
COMMANDS: list[_Command] = [
    _Command(
        "check",
        "validate a config file; print OK or the first error",
        _configure_check,
        _run_check,
    ),
    _Command(
        "demo",
        "run a flaky upstream, bare httpx vs ResilientTransport; write an HTML report",
        _configure_demo,
        _run_demo,
    ),
    _Command(
        "bench",
        "measure each strategy's success-path overhead on both core implementations",
        _configure_bench,
        _run_bench,
    ),
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resilio", description="resilio: resilience strategies for Python services."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.configure(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `resilio` command with `argv` (default: sys.argv[1:]); return the exit status."""
    args = _parser().parse_args(argv)
    status: int = args._run(args, sys.stdout, sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
