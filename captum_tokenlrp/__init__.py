"""captum-tokenlrp: token relevance redistribution for Transformers, as a Captum attribution.

Implements Sawaki & Murata, "Redistribution of inter-token relevance in
Transformer models" (JSAI 2025) over HuggingFace ``transformers`` vision Transformers and text
Transformers (BERT-style encoders, GPT-2 and Llama-style decoders) with one class,
:class:`TokenRelevanceLRP`: the model's adapter says its modality, which picks the inputs
(``pixel_values`` or token ids). :class:`TextTokenRelevanceLRP` is the same class for text models only.

The extension contract is public: :class:`ModelAdapter` (with :class:`AttentionSite` and
:class:`TokenLayout`; :class:`TextModelAdapter` for text models) describes an architecture,
registered with :func:`register_adapter` in one registry; :class:`TokenAttribution` is the template
every attribution follows (implement ``_token_relevance(prepared, target, **options)``;
:class:`PreparedInputs` / :class:`PreparedText` is what it receives, :class:`LayerProjections` what
:meth:`TokenAttribution._record` hands a per-layer computation), and ``attribution.engine`` runs its
steps one by one for views that replay them.
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
