"""Baselines in the same interface as TokenRelevanceLRP: ``token_relevance`` and ``attribute``.

- :class:`RawAttention`: the last layer's attention row (DINO's map), per head or fused.
- :class:`AttentionRollout`: Abnar & Zuidema 2020 (rule (i) with mean fusion).
- :class:`GenericAttentionExplainability`: Chefer et al. 2021.
- :class:`TokenIntegratedGradients`, :class:`TokenGradCAM`: Captum's methods on the
  explained scalar of :class:`ExplainedForward`.
- :class:`AttnLRP`: Achtibat et al. 2024 (ICML), LRP rules for attention as lxt computes them.
- :class:`TransformerAttribution`: Chefer, Gur & Wolf 2021 (CVPR): LRP relevance x gradient of the
  attention, rolled out.
- :class:`TokenTM`: Wu et al. 2024, attention weighted by how each block transforms its tokens.
- :class:`RandomRelevance`: a random map, the control for evaluations.

Text Transformers (:mod:`.text`): :class:`TextRawAttention`, :class:`TextAttentionRollout`,
:class:`TextGenericAttentionExplainability`, :class:`TextLayerIntegratedGradients`.
"""

from .attention import AttentionRollout, RawAttention, mass_threshold_mask
from .attnlrp import AttnLRP
from .control import RandomRelevance
from .gradient import (
    ExplainedForward,
    GenericAttentionExplainability,
    TokenGradCAM,
    TokenIntegratedGradients,
    patch_sums,
)
from .text import (
    TextAttentionRollout,
    TextGenericAttentionExplainability,
    TextLayerIntegratedGradients,
    TextRawAttention,
)
from .tokentm import TokenTM
from .transformer_attribution import TransformerAttribution

__all__ = [
    "AttentionRollout",
    "AttnLRP",
    "ExplainedForward",
    "GenericAttentionExplainability",
    "RandomRelevance",
    "RawAttention",
    "TextAttentionRollout",
    "TextGenericAttentionExplainability",
    "TextLayerIntegratedGradients",
    "TextRawAttention",
    "TokenGradCAM",
    "TokenIntegratedGradients",
    "TokenTM",
    "TransformerAttribution",
    "mass_threshold_mask",
    "patch_sums",
]
