"""``TextTokenRelevanceLRP``: :class:`~captum_tokenlrp.TokenRelevanceLRP` for text models, under its text name."""

from __future__ import annotations

from typing import ClassVar

from .token_lrp import Start, TokenRelevanceLRP

__all__ = ["Start", "TextTokenRelevanceLRP"]


class TextTokenRelevanceLRP(TokenRelevanceLRP):
    """Token relevance redistribution for text Transformers: :class:`TokenRelevanceLRP` for text models only.

    ``TokenRelevanceLRP(model)`` explains a text model the same way (the model's modality picks
    the input kind); this name stays for the code that uses it, and refuses a vision model.
    Everything (rules, head modes, ``attention_capture``, ``class_sensitive`` for sequence
    classifiers, :meth:`token_relevance_by_layer`, :meth:`token_relevance_by_rule`,
    :meth:`all_token_relevance`) is :class:`TokenRelevanceLRP`'s; see its notes on text models.

    Examples
    --------
    >>> from transformers import AutoModel, AutoTokenizer
    >>> tokenizer = AutoTokenizer.from_pretrained("bert-base-uncased")          # doctest: +SKIP
    >>> model = AutoModel.from_pretrained("bert-base-uncased")                  # doctest: +SKIP
    >>> encoded = tokenizer(["a sentence", "and a longer one"], padding=True, return_tensors="pt")  # doctest: +SKIP
    >>> relevance = TextTokenRelevanceLRP(model, rule="iv").token_relevance(encoded)  # (2, N) # doctest: +SKIP
    """

    modalities: ClassVar[tuple[str, ...]] = ("text",)

    @classmethod
    def get_name(cls) -> str:
        return "Text Token Relevance LRP"
