"""A classifier's logits from the forward pass an explanation runs anyway, and its prediction."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from .errors import CliError


@contextmanager
def keep_logits(model: torch.nn.Module) -> Iterator[list]:
    """Keep a classifier's logits from the forward pass the explanation runs anyway (no extra pass)."""
    kept: list[torch.Tensor] = []

    def hook(_module, _inputs, output) -> None:
        logits = getattr(output, "logits", None)
        if logits is not None:
            kept.append(logits.detach().float().cpu())

    handle = model.register_forward_hook(hook)
    try:
        yield kept
    finally:
        handle.remove()


def class_name(model: torch.nn.Module, index: int) -> str:
    labels = getattr(model.config, "id2label", None) or {}
    return str(labels.get(index, labels.get(str(index), f"class {index}")))


def prediction(model: torch.nn.Module, logits: torch.Tensor) -> tuple[int, str, float]:
    """A classifier's predicted class for one image's logits `(num_labels,)`: index, name, probability
    (softmax, or sigmoid for a multi-label classifier)."""
    multi_label = getattr(model.config, "problem_type", None) == "multi_label_classification"
    probabilities = logits.float().sigmoid() if multi_label else logits.float().softmax(dim=-1)
    best = int(probabilities.argmax())
    return best, class_name(model, best), float(probabilities[best])


def prediction_arrays(model: torch.nn.Module, logits: torch.Tensor) -> dict[str, np.ndarray]:
    """The prediction as ``.npz`` entries: ``predicted_class``, ``class_name``, ``probability``."""
    index, name, probability = prediction(model, logits)
    return {"predicted_class": np.array(index), "class_name": np.array(name), "probability": np.array(probability)}


def target_class(model: torch.nn.Module, given: str | None) -> int | None:
    """``--target-class``: a class index or a label name of the classifier's ``id2label``; None stays None."""
    if given is None:
        return None
    labels = {str(name): int(index) for index, name in getattr(model.config, "id2label", {}).items()}
    if given.lstrip("-").isdigit():
        index = int(given)
        if not 0 <= index < len(labels):
            raise CliError(f"--target-class {index} is out of range: the classifier has {len(labels)} classes.")
        return index
    if given not in labels:
        raise CliError(f"--target-class {given!r} is not a class of the model; its classes are: {', '.join(labels)}.")
    return labels[given]
