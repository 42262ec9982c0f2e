"""transformers' load reports and progress bars, kept out of a command's output unless ``--verbose``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


class _LoadNoise(logging.Filter):
    """transformers' warnings and notes, dropped while a command runs without ``--verbose``.

    Errors pass. A load report that names weights *missing* from the checkpoint (left at their random
    initial values: the maps would explain a partly random model) becomes one line; one that only lists
    weights the model does not use (a ViT-MAE checkpoint's decoder, a classifier's head) is dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        message = record.getMessage()
        # transformers 5 writes one load report with a MISSING column; 4.x says "Some weights of X were not
        # initialized from the model checkpoint ... newly initialized".
        missing = ("LOAD REPORT" in message and "MISSING" in message) or "newly initialized" in message
        if missing:
            record.msg = (
                "some weights of the model are not in its checkpoint and were left at their random initial "
                "values; rerun with --verbose for the list."
            )
            record.args = ()
            return True
        return False


@contextmanager
def quiet_transformers(quiet: bool = True) -> Iterator[None]:
    """Without transformers' "Loading weights" bars and load reports while the block runs (``quiet``).

    Scoped: the progress-bar setting and the logging handlers are as they were afterwards, also when the
    block raises.
    """
    if not quiet:
        yield
        return
    from transformers.utils import logging as hf_logging

    hf_logging.get_verbosity()  # sets up transformers' own handler, where its records go
    library = logging.getLogger("transformers")
    targets = list(library.handlers) or [library]
    noise = _LoadNoise()
    bars = hf_logging.is_progress_bar_enabled()
    for target in targets:
        target.addFilter(noise)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        for target in targets:
            target.removeFilter(noise)
        if bars:
            hf_logging.enable_progress_bar()
