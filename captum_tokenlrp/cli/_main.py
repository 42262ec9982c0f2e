"""``tokenlrp``'s entry point: a command per sub-command, and what each error prints and returns."""

from __future__ import annotations

import argparse
import sys

from .._loading import CliError, quiet_transformers
from ._explain import explain
from ._explain_dir import explain_dir
from ._manifest import Interrupted
from ._parser import build_parser
from ._report import report
from ._shapes import write_shapes
from ._text import explain_text, explain_text_dir


def run_app(args: argparse.Namespace) -> int:
    """``tokenlrp app``: serve the explorer until interrupted (Gradio is imported only here)."""
    from ..app import launch

    launch(args.model, host=args.host, port=args.port, device=args.device, dtype=args.dtype)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``tokenlrp`` on ``argv`` (default: the process's arguments) and return the exit status: 0 done,
    2 a problem the user can fix (one line on stderr), 130 interrupted."""
    args = build_parser().parse_args(argv)
    if getattr(args, "head_fusion", None) == "none":
        args.head_fusion = None
    commands = {
        "explain": explain,
        "explain-dir": explain_dir,
        "shapes": write_shapes,
        "report": report,
        "app": run_app,
        "explain-text": explain_text,
        "explain-text-dir": explain_text_dir,
    }
    try:
        with quiet_transformers(not getattr(args, "verbose", False)):
            return commands[args.command](args)
    except CliError as error:
        print(f"tokenlrp: {error}", file=sys.stderr)
        return 2
    except (TypeError, ValueError) as error:  # the library's own input errors: already clear
        print(f"tokenlrp: {error}", file=sys.stderr)
        return 2
    except Interrupted as error:  # Ctrl-C in a resumable command: how far it got
        print(f"tokenlrp {error}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"tokenlrp {args.command}: interrupted.", file=sys.stderr)
        return 130
