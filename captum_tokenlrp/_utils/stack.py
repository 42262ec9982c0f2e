"""Warnings that point at the user's line, whatever depth of this package (and Captum) is between."""

from __future__ import annotations

import sys

_OWN_PACKAGES = ("captum_tokenlrp", "captum")


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` called by this function's caller that names the first
    frame outside this package and Captum (e.g. the user's ``lrp.token_relevance(...)`` line)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in _OWN_PACKAGES:
        frame, level = frame.f_back, level + 1
    return level
