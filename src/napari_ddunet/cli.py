"""``napari-ddunet`` command line: one subcommand per module in :mod:`napari_ddunet.commands`.

Each command module defines ``add_parser(subparsers)`` and ``run(args) -> int`` and keeps
heavy imports inside ``run`` so that ``--help`` stays instant. :func:`main` alone turns what a
command raises into an exit status, each meaning one thing (docs/engine.md, "Exit codes").
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path

from napari_ddunet import __version__
from napari_ddunet.core.errors import DDUNetError, RunIOError

COMMANDS = ("predict", "info", "bench", "demo")

EXIT_DONE = 0
EXIT_BUG = 1          # an unexpected exception: the one case with a traceback
EXIT_USAGE = 2        # bad input or usage: nothing written, or the store left as it was
EXIT_IO_FAULT = 3     # an I/O fault during the run: the store stays resumable
EXIT_CANCELLED = 130  # cancelled or interrupted (SIGINT convention): the store stays resumable

EXIT_CODES_HELP = """exit status:
  0    done
  2    bad input or usage (one line on stderr; nothing written, or the output left as it was)
  3    an I/O fault during the run (disk full, unreadable chunk; the output stays resumable: --resume)
  130  cancelled or interrupted (Ctrl-C; the output stays resumable: --resume)
  1    a bug (the only case that prints a traceback; please report it)"""


class HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions as usual but keeps the exit-status table of an epilog as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("exit status:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-ddunet", description="DDU-Net segmentation of images too big for one GPU.",
        epilog=EXIT_CODES_HELP, formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"napari-ddunet {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"napari_ddunet.commands.{name}").add_parser(subparsers)
    return parser


@contextlib.contextmanager
def cancel_on_interrupt(cancel: threading.Event) -> Iterator[None]:
    """The first Ctrl-C sets ``cancel``: the run stops after the work in flight, its store consistent and
    resumable (exit 130). A second one raises KeyboardInterrupt as usual. Only in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        print("napari-ddunet: cancelling after the work in flight (Ctrl-C again to interrupt)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _resume_hint(args: argparse.Namespace) -> str:
    """How to continue a ``predict`` whose store exists; empty for other commands."""
    output = getattr(args, "output", None)
    if args.command != "predict" or output is None or not Path(output).exists():
        return ""
    return f"; {output} is resumable: fix the cause, then rerun the same command with --resume"


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status (see :data:`EXIT_CODES_HELP`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    name = f"napari-ddunet {args.command}"
    try:
        return int(args.run(args) or EXIT_DONE)
    except RunIOError as error:   # its message names --resume
        print(f"{name}: {_first_line(error)}", file=sys.stderr)
        return EXIT_IO_FAULT
    except DDUNetError as error:
        print(f"{name}: error: {_first_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        where = f" ({error.filename})" if getattr(error, "filename", None) else ""
        reason = error.strerror or _first_line(error)
        print(f"{name}: I/O error: {reason}{where}{_resume_hint(args)}", file=sys.stderr)
        return EXIT_IO_FAULT
    except KeyboardInterrupt:
        print(f"{name}: interrupted{_resume_hint(args)}", file=sys.stderr)
        return EXIT_CANCELLED
    except Exception:
        traceback.print_exc()
        print(f"{name}: internal error (a bug in napari-ddunet); please report it with the traceback above",
              file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
