"""The `paretopipe` command: a thin layer that parses, calls the library, and reports.

Each command family lives in its own module under ``paretopipe.cli`` and exposes
``register(subparsers)``, which adds its sub-commands and sets ``func`` on each parser.
``func(args)`` returns an exit code. A :class:`~paretopipe.errors.ParetoPipeError` becomes a
one-line ``paretopipe: error: ...`` message and that error's exit code; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from paretopipe import __version__
from paretopipe.errors import ParetoPipeError
from paretopipe.threads import exit_code

# Command families, in the order `paretopipe --help` lists them.
_COMMAND_MODULES = (
    "paretopipe.cli.models_cmd",  # models, splits, verify, shard
    "paretopipe.cli.runtime_cmd",  # stage, run, sweep
    "paretopipe.cli.testbed_cmd",  # testbed
    "paretopipe.cli.profile_cmd",  # profile, predict
    "paretopipe.cli.trace_cmd",  # trace
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paretopipe",
        description=(
            "Split CNN inference across edge devices, at every valid split point, "
            "and measure what each choice costs."
        ),
    )
    parser.add_argument("--version", action="version", version=f"paretopipe {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # this command family is not part of this build
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from paretopipe.runtime.cores import quiet_waiting

    quiet_waiting()  # before any command imports torch: OpenMP reads its wait policy once
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        code = int(func(args) or 0)
    except ParetoPipeError as exc:
        print(f"paretopipe: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except BrokenPipeError:  # `paretopipe splits vgg16 | head`
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    except KeyboardInterrupt:
        print("paretopipe: interrupted", file=sys.stderr)
        code = 130
    return code


def entry() -> None:
    """The program's entry point (``paretopipe``, ``python -m paretopipe``): run the command,
    then end the process once no thread of ours is left to meet interpreter shutdown
    (see :mod:`paretopipe.threads`)."""
    sys.exit(exit_code(main()))


if __name__ == "__main__":
    entry()
