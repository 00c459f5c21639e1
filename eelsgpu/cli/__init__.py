"""The ``eelsgpu`` command line: one module per sub-command in this package.

Each command module defines ``add_parser(subparsers)`` (its arguments, imports nothing heavy) and
``run(args) -> int``. :func:`main` builds the parser from :data:`COMMANDS` and turns every
error into one line naming the file and the problem (exit status 2; ``--debug`` shows the
traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from .. import __version__
from ..errors import EelsgpuError
from ._common import apply_ranges

#: Sub-commands in the order ``eelsgpu --help`` lists them; each is ``eelsgpu.cli.<name>``.
COMMANDS = (
    "demo",
    "convert",
    "info",
    "thickness",
    "deconvolve",
    "kk",
    "maps",
    "bandgap",
    "cluster",
    "decompose",
    "report",
    "batch",
)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake reported as one line (exit 2) like every other error."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="eelsgpu",
        description="Exact, GPU-ready analysis of EELS and SXES spectrum images.",
    )
    parser.add_argument("--version", action="version", version=f"eelsgpu {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"eelsgpu.cli.{name.replace('-', '_')}")
        except ModuleNotFoundError as exc:  # a command still being written
            if exc.name != f"eelsgpu.cli.{name}":
                raise
            continue
        p = module.add_parser(sub)
        apply_ranges(p)  # every numeric option range-checked, with its unit (cli._common)
        p.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show the traceback of an error (also: EELSGPU_DEBUG=1)",
        )
        p.set_defaults(_run=module.run)
    return parser


def _subject(args: argparse.Namespace) -> str:
    """The file a command works on, for messages that do not name one themselves."""
    for key in ("input", "manifest", "output", "out"):
        value = getattr(args, key, None)
        if isinstance(value, str) and value:
            return value
    return ""


def error_line(exc: BaseException, args: argparse.Namespace) -> str:
    """One line naming the file and the problem, whatever ``exc`` is."""
    if isinstance(exc, EelsgpuError):
        return str(exc)
    subject = _subject(args)
    if isinstance(exc, OSError) and (exc.filename or exc.strerror):
        names = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f)
        return f"{names or subject}: {exc.strerror or exc}"
    where = f"{subject}: " if subject else ""
    text = str(exc).strip().replace("\n", " ") or "no message"
    return (
        f"{where}{type(exc).__name__}: {text} (unexpected: run again with --debug for the "
        "traceback, and report it if it looks like a bug)"
    )


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM (a batch system's time limit, `kill`) ends the command like Ctrl-C does: the
    write in progress is cleaned up (a one-shot store) or left to resume (a batch run)."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``eelsgpu`` command.

    Every error ends in one line on stderr, ``eelsgpu COMMAND: error: FILE: problem``, and exit
    status 2 (``--debug`` or ``EELSGPU_DEBUG=1`` adds the traceback); Ctrl-C and SIGTERM give
    130.
    """
    import os
    import signal
    import threading

    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False) or os.environ.get("EELSGPU_DEBUG"))
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"eelsgpu {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `eelsgpu info x | head`: the reader left; nothing to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as exc:
        if debug:
            traceback.print_exc()
        print(f"eelsgpu {args.command}: error: {error_line(exc, args)}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
