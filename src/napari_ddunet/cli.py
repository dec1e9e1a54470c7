"""``napari-ddunet`` command line: one subcommand per module in :mod:`napari_ddunet.commands`.

Each command module defines ``add_parser(subparsers)`` and ``run(args) -> int`` and keeps
heavy imports inside ``run`` so that ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from napari_ddunet import __version__
from napari_ddunet.core.errors import DDUNetError

COMMANDS = ("predict", "info", "bench", "demo")


class UsageError(DDUNetError):
    """A bad command-line value found after parsing."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-ddunet", description="DDU-Net segmentation of images too big for one GPU."
    )
    parser.add_argument("--version", action="version", version=f"napari-ddunet {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"napari_ddunet.commands.{name}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except DDUNetError as error:
        print(f"napari-ddunet {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-ddunet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
