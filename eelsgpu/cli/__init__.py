"""The ``eelsgpu`` command line: one module per sub-command in this package.

Each command module defines ``add_parser(subparsers)`` (its arguments, imports nothing heavy) and
``run(args) -> int``. :func:`main` builds the parser from :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import EelsgpuError

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eelsgpu",
        description="Exact, GPU-ready analysis of EELS and SXES spectrum images.",
    )
    parser.add_argument("--version", action="version", version=f"eelsgpu {__version__}")
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
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``eelsgpu`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except EelsgpuError as exc:
        print(f"eelsgpu {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"eelsgpu {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
