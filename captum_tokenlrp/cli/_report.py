"""``tokenlrp report``: the offline HTML report of an explain-dir run (:mod:`captum_tokenlrp.report`)."""

from __future__ import annotations

import argparse

from .._loading import CliError


def report(args: argparse.Namespace) -> int:
    """An offline HTML report of an explain-dir run (see :mod:`captum_tokenlrp.report`)."""
    from ..report import ReportError, write_report

    try:
        index = write_report(args.run_dir, args.images, out=args.out, thumbnail_size=args.thumbnail_size)
    except ReportError as error:
        raise CliError(str(error)) from None
    print(f"Wrote {index}")
    return 0
