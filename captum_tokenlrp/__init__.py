"""captum-tokenlrp: token relevance redistribution for Vision Transformers, as a Captum attribution.

Implements Sawaki & Murata, "Redistribution of inter-token relevance in
Transformer models" (JSAI 2025) over HuggingFace ``transformers`` ViTs.
"""

from ._adapters import ModelAdapter, TokenLayout, register_adapter, supported_model_classes
from ._core.propagation import HEAD_MODES
from ._core.token_lrp import TokenRelevanceLRP
from ._version import __version__ as __version__  # re-exported; defined once, in _version.py
from .rules import (
    RULE_I,
    RULE_II,
    RULE_III,
    RULE_IV,
    AttentionState,
    TokenActivation,
    TokenRule,
    TokenWeight,
    available_rules,
    get_rule,
    register_rule,
)

__all__ = [
    "HEAD_MODES",
    "RULE_I",
    "RULE_II",
    "RULE_III",
    "RULE_IV",
    "AttentionState",
    "ModelAdapter",
    "TokenActivation",
    "TokenLayout",
    "TokenRelevanceLRP",
    "TokenRule",
    "TokenWeight",
    "available_rules",
    "get_rule",
    "register_adapter",
    "register_rule",
    "supported_model_classes",
]
