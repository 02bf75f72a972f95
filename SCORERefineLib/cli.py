"""``scorerefine`` command line: one sub-command per module in ``SCORERefineLib.commands``.

Each command module defines ``add_arguments(parser)``, ``run(args) -> int`` and a one-line
``HELP``. Errors the engine raises on purpose (:class:`SCORERefineError`) are printed as one clear
line and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from . import __version__
from .errors import Cancelled, SCORERefineError

#: sub-command name -> module under SCORERefineLib.commands
COMMANDS = {
    "phantoms": "phantoms",
    "regions": "regions",
    "rate": "rate",
    "evaluate": "evaluate",
    "train": "train",
    "scribble": "scribble",
    "refine": "refine",
    "quality": "quality",
    "benchmark": "benchmark",
    "demo": "demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scorerefine",
        description="SCORE: refine a segmentation from regional quality ratings.")
    parser.add_argument("--version", action="version", version=f"scorerefine {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"SCORERefineLib.commands.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except Cancelled as exc:
        print(f"scorerefine {args.command}: cancelled ({exc}); work done so far was kept.",
              file=sys.stderr)
        return 130
    except SCORERefineError as exc:
        print(f"scorerefine {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
