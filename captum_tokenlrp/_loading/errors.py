"""The one error type of the loading layer, the commands and the app: a problem the user can fix."""

from __future__ import annotations


class CliError(Exception):
    """A problem the user can fix; printed as one message, without a traceback."""
