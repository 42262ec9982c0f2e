"""What the user chose on the page."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ViewSettings:
    """What the user chose on the page."""

    rules: tuple[str, ...] = ("i", "ii", "iii", "iv")
    method: str = "iv"
    head_fusion: str = "mean"
    head: str = "fused"
    start_token: int | None = None
    target: str | None = None
    opacity: float = 0.6
    depth: int = 0
    size_mode: str = "processor"
