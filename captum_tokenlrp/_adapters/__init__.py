"""Model adapters: where each architecture keeps its attention and its tokens."""

from . import beit as _beit  # noqa: F401  (each module registers its adapter)
from . import clip as _clip  # noqa: F401
from . import deit as _deit  # noqa: F401
from . import dinov2 as _dinov2  # noqa: F401
from . import text as _text  # noqa: F401  (its registry tells adapter_for which models are text ones)
from . import vit as _vit  # noqa: F401
from . import vit_mae as _vit_mae  # noqa: F401
from .base import (
    AttentionSite,
    ModelAdapter,
    TokenLayout,
    adapter_class_for_model_type,
    adapter_for,
    register_adapter,
    supported_model_classes,
    supported_model_types,
)

__all__ = [
    "AttentionSite",
    "ModelAdapter",
    "TokenLayout",
    "adapter_class_for_model_type",
    "adapter_for",
    "register_adapter",
    "supported_model_classes",
    "supported_model_types",
]
