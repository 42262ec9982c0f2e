"""The text side of the one template: :class:`TextTokenAttribution`, a :class:`TokenAttribution` for text models.

Everything text-specific (token ids or text in, padding, the read-out start) is the text input kind
(:class:`~captum_tokenlrp._core.inputs.TextInputs`); this class only fixes the modality, for the
methods written for text models alone (the text gradient baselines) and for user code that names it.
"""

from __future__ import annotations

from typing import ClassVar

from .base import TokenAttribution
from .inputs import NAMED_STARTS, TEXT_CLASS_SPECIFIC_METHODS, PreparedText

__all__ = ["NAMED_STARTS", "TEXT_CLASS_SPECIFIC_METHODS", "PreparedText", "TextTokenAttribution"]


class TextTokenAttribution(TokenAttribution):
    """The template of the text attributions: :class:`TokenAttribution` for text Transformers only.

    :meth:`token_relevance` validates the inputs and calls the subclass's :meth:`_token_relevance`;
    :meth:`attribute` returns the same per-token relevance, which already has the shape of the
    inputs `(batch_size, num_tokens)` (Captum's convention for token ids).

    Parameters
    ----------
    model : nn.Module
        A supported HuggingFace text Transformer (see :func:`supported_text_model_classes`).
    tokenizer : tokenizer, optional
        Tokenizes text given as ``inputs`` (a str or a list of them); its ``convert_ids_to_tokens``
        names the tokens in the visualisation helpers.
    """

    modalities: ClassVar[tuple[str, ...]] = ("text",)
