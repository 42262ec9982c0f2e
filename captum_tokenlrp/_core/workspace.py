"""Reusable work buffers for the N x N tensors of one call.

Every layer needs the same large temporaries (attention scores, probabilities,
distances). Allocating them afresh per layer costs more than the arithmetic on
them: large blocks come from the system as new, unmapped pages, and touching
them page-faults. One buffer per role, reused layer after layer, stays mapped
and warm in cache.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class Workspace:
    """Named float32 buffers, grown on demand and handed out as views of the requested shape."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A float32 tensor of ``shape`` on ``like``'s device whose contents are undefined.

        The same memory is returned for the same ``name`` until a larger shape is asked for;
        a caller must be done with the previous view before asking again.
        """
        numel = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < numel or buffer.device != like.device:
            buffer = torch.empty(numel, dtype=torch.float32, device=like.device)
            self._buffers[name] = buffer
        return buffer[:numel].view(shape)


def softmax_into(scores: Tensor, out: Tensor) -> Tensor:
    """``softmax(scores, dim=-1)`` written into ``out`` (no allocation where torch allows it)."""
    try:
        return torch.ops.aten._softmax.out(scores, -1, False, out=out)
    except (AttributeError, RuntimeError):  # pragma: no cover - private op missing in some build
        return out.copy_(torch.softmax(scores, dim=-1))
