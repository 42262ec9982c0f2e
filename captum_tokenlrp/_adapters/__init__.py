"""Model adapters: where each architecture keeps its attention and its tokens."""

from . import vit as _vit  # noqa: F401  (registers the ViT adapter)
from .base import (
    AttentionSite,
    ModelAdapter,
    TokenLayout,
    adapter_for,
    register_adapter,
    supported_model_classes,
)

__all__ = [
    "AttentionSite",
    "ModelAdapter",
    "TokenLayout",
    "adapter_for",
    "register_adapter",
    "supported_model_classes",
]
