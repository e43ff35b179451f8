"""The ``ctgan`` command: ``ctgan phantom``, ``ctgan sample``, ``ctgan info``.

Each subcommand is a small ``_add_<name>`` function that declares its arguments and a ``_run_<name>``
that checks them and calls the package. Bad input exits with status 2 and one clear line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ctgan import __version__

log = logging.getLogger("ctgan")


class UsageError(Exception):
    """Bad input from the command line; reported as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctgan",
        description="CT-GAN: learn a multi-scale GAN from one chest CT scan and generate new volumes.",
    )
    parser.add_argument("--version", action="version", version=f"ctgan {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


# --- subcommands (each issue adds its own) ---------------------------------------------------

_SUBCOMMANDS: list = []


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.run(args) or 0)
    except (UsageError, ValueError, FileNotFoundError, FileExistsError, PermissionError) as err:
        print(f"ctgan {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
