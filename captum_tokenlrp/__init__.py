"""captum-tokenlrp: token relevance redistribution for Transformers, as a Captum attribution.

Implements Sawaki & Murata, "Redistribution of inter-token relevance in
Transformer models" (JSAI 2025) over HuggingFace ``transformers`` vision Transformers
(:class:`TokenRelevanceLRP`) and text Transformers (:class:`TextTokenRelevanceLRP`: BERT-style
encoders, GPT-2 and Llama-style decoders; text adapters are :class:`TextModelAdapter` subclasses
registered with :func:`register_text_adapter`).

The extension contract is public: :class:`ModelAdapter` (with :class:`AttentionSite` and
:class:`TokenLayout`) describes an architecture, registered with :func:`register_adapter`;
:class:`TokenAttribution` is the template every attribution follows (implement
``_token_relevance(prepared, target, **options)``; :class:`PreparedInputs` is what it receives,
:class:`LayerProjections` what :meth:`TokenAttribution._record` hands a per-layer computation).
"""

from ._adapters import (
    AttentionSite,
    ModelAdapter,
    TokenLayout,
    register_adapter,
    supported_model_classes,
    supported_model_types,
)
from ._adapters.text import TextModelAdapter, register_text_adapter, supported_text_model_classes
from ._core.base import PreparedInputs, TokenAttribution
from ._core.capture import LayerProjections
from ._core.propagation import HEAD_MODES
from ._core.text_base import PreparedText, TextTokenAttribution
from ._core.text_lrp import TextTokenRelevanceLRP
from ._core.token_lrp import TokenRelevanceLRP
from ._utils.validation import TextPrompts
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
    "AttentionSite",
    "AttentionState",
    "LayerProjections",
    "ModelAdapter",
    "PreparedInputs",
    "PreparedText",
    "TextModelAdapter",
    "TextPrompts",
    "TextTokenAttribution",
    "TextTokenRelevanceLRP",
    "TokenActivation",
    "TokenAttribution",
    "TokenLayout",
    "TokenRelevanceLRP",
    "TokenRule",
    "TokenWeight",
    "available_rules",
    "get_rule",
    "register_adapter",
    "register_rule",
    "register_text_adapter",
    "supported_model_classes",
    "supported_model_types",
    "supported_text_model_classes",
]
