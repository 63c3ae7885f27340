"""The ``cosme`` command: one entry point, one module per subcommand.

Expected failures (:class:`~cosme_ros.errors.CosmeError`) print one ``error: …`` line and exit 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import signal
import sys
import threading
from typing import List, Optional

from cosme_ros import __version__
from cosme_ros.errors import CosmeError


def subcommand_modules() -> List[str]:
    """Every module of this package that defines ``add_parser(subparsers)`` is a subcommand.

    Each registers its parser with ``set_defaults(run=…)``; ``run(args) -> int``.
    """
    import cosme_ros.cli as package

    return sorted(
        m.name
        for m in pkgutil.iter_modules(package.__path__)
        if m.name not in ("main", "common") and not m.name.startswith("_")
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cosme", description="CosMe anomaly segmentation: offline tools and inference."
    )
    parser.add_argument("--version", action="version", version=f"cosme_ros {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in subcommand_modules():
        importlib.import_module(f"cosme_ros.cli.{name}").add_parser(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every command's cleanup runs (temporary outputs
    removed, the demo's node stopped); the exit status is 143 instead of 130."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: Optional[List[str]] = None) -> int:
    # ros2 run appends --ros-args; the offline tools have no use for them.
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--ros-args" in argv:
        argv = argv[: argv.index("--ros-args")]
    args = build_parser().parse_args(argv)
    # SIGTERM (systemd, docker stop, a supervisor) unwinds like Ctrl-C, for every command, once.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        return int(args.run(args) or 0)
    except CosmeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None:
            raise  # not about a file: a bug, keep the traceback
        # a file the command reads or writes (disk full, read-only, missing): one line
        print(f"error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
