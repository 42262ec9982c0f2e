"""``TextTokenRelevanceLRP``: token relevance redistribution for HuggingFace text Transformers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, Literal, overload

from torch import Tensor, nn

from .._utils.validation import TargetType
from ..rules import TokenRule
from .propagation import FUSED_HEAD_MODES, check_head_fusion, propagate, propagate_by_layer
from .text_base import PreparedText, TextTokenAttribution
from .token_lrp import HeadFusion, RedistributionRules

Start = Tensor | Literal["first", "last", "mean"] | None


class TextTokenRelevanceLRP(RedistributionRules, TextTokenAttribution):
    r"""Token relevance redistribution (Sawaki & Murata, JSAI 2025) for text Transformers.

    The same rules (i)-(iv) and head modes as :class:`TokenRelevanceLRP`, in every layer

    .. math::

        M_{ij} = \frac{a_j W_{ij}}{\sum_{j'} a_{j'} W_{ij'}},
        \qquad R^{(l-1)}_j = \sum_i R^{(l)}_i M_{ij},

    on BERT, RoBERTa and DistilBERT encoders and GPT-2, Llama, Qwen2, Gemma and Mistral decoders.
    ``w_ij`` are the model's own attention probabilities (its causal and padding masks, rotary
    position embeddings and grouped-query attention included) and ``v_j`` the value vectors they
    multiply (a key/value head shared by several query heads gives each of them its values).

    **Padding.** Pad tokens (``attention_mask`` 0) get no attention, so they receive no relevance,
    and the start is zero on them; the value mean ``v_mean`` of rules (ii) and (iv) is taken over the
    real tokens. A sentence in a padded batch therefore gets the relevance it gets alone. Decoders
    given a padded ``attention_mask`` and no ``position_ids`` run with positions counting the real
    tokens (as ``generate`` does), so left padding does not shift the positions.

    **The start.** Where the model's output is read: the first token (``[CLS]``, ``<s>``) of an
    encoder, which its classifier and pooler read; the last real token of a decoder, where the next
    token is predicted (and where a decoder's sequence classifier reads). ``target`` picks another
    position (a model without a classification head); ``initial_relevance="mean"`` starts from the
    attention-mask-weighted mean of the tokens, the read-out of mean-pooled sentence embeddings
    (sentence-transformers, e.g. all-MiniLM-L6-v2); ``"first"`` / ``"last"`` name the two ends; or
    any non-negative vector that is zero on padding.

    Parameters
    ----------
    model : nn.Module
        A supported text model (:func:`~captum_tokenlrp.supported_text_model_classes`).
    rule : str or TokenRule, default "iv"
        Default rule of every layer (a rule set on a layer's attention module as ``.rule`` wins).
    tokenizer : tokenizer, optional
        Tokenizes text given as ``inputs``; names the tokens in :meth:`tokens` and the views of
        :mod:`captum_tokenlrp.text`.
    max_chunk_elements : int, default 2**25
        Bound on the `(batch, heads, N, N)` work tensors of one layer (heads in groups).

    Examples
    --------
    >>> from transformers import AutoModel, AutoTokenizer
    >>> tokenizer = AutoTokenizer.from_pretrained("bert-base-uncased")          # doctest: +SKIP
    >>> model = AutoModel.from_pretrained("bert-base-uncased")                  # doctest: +SKIP
    >>> encoded = tokenizer(["a sentence", "and a longer one"], padding=True, return_tensors="pt")  # doctest: +SKIP
    >>> relevance = TextTokenRelevanceLRP(model, rule="iv").token_relevance(encoded)  # (2, N) # doctest: +SKIP
    """

    relevance_options: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {"initial_relevance": None, "head_fusion": "mean"}
    )

    def __init__(
        self,
        model: nn.Module,
        rule: str | TokenRule = "iv",
        *,
        tokenizer: Any = None,
        max_chunk_elements: int = 2**25,
    ) -> None:
        super().__init__(model, tokenizer=tokenizer)
        self._configure_rules(rule, max_chunk_elements)

    def token_relevance(
        self,
        inputs: Tensor | tuple[Tensor] | Mapping[str, Tensor],
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        initial_relevance: Start = None,
        head_fusion: HeadFusion = "mean",
    ) -> Tensor:
        """Relevance of every input token.

        Parameters
        ----------
        inputs : Tensor, 1-tuple of Tensor, mapping, str or sequence of str
            ``input_ids`` `(batch_size, num_tokens)` or a tokenizer's output (``BatchEncoding``); with
            ``tokenizer`` given, the text itself (see :meth:`TextTokenAttribution.token_relevance`).
        target : int, str, sequence of int or str, or Tensor, optional
            A model without a classification head: the position to explain (default: where the
            output is read, see the class notes; negative counts from the end). A sequence
            classifier: the class (index or ``config.id2label`` name), validated but not used (the
            rules do not depend on the class; a ``UserWarning`` says so once).
        additional_forward_args : tuple, dict or object, optional
            Extra forward arguments (``attention_mask``, ``token_type_ids``, ``position_ids``).
        initial_relevance : Tensor or {"first", "last", "mean"}, optional
            The start ``R^(L)``: `(num_tokens,)` or `(batch_size, num_tokens)`, non-negative and
            zero on padding, or a named start (see the class notes).
        head_fusion : str or None, default "mean"
            As in :meth:`TokenRelevanceLRP.token_relevance`.

        Returns
        -------
        Tensor
            float32 `(batch_size, num_tokens)` for the fused modes, `(batch_size, num_heads,
            num_tokens)` per head; zero on padding; each map sums to the start's total.
        """
        return super().token_relevance(
            inputs, target, additional_forward_args, initial_relevance=initial_relevance, head_fusion=head_fusion
        )

    def _token_relevance(
        self, prepared: PreparedText, target: TargetType, *, initial_relevance: Start, head_fusion: object
    ) -> Tensor:
        return self._relevance(prepared, target, initial_relevance, head_fusion)[0]

    def _relevance(self, prepared, target, initial_relevance, head_fusion, propagation=propagate):
        head_fusion = check_head_fusion(head_fusion)
        start = self._check_start(prepared, target, initial_relevance)
        kept = self._record(prepared, self.attention_sites, self._layer_matrix(head_fusion))
        return self._check_finite(propagation(start, kept, head_fusion), kept), start

    def token_relevance_by_layer(
        self,
        inputs: Tensor | tuple[Tensor] | Mapping[str, Tensor],
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        initial_relevance: Start = None,
        head_fusion: HeadFusion = "mean",
    ) -> Tensor:
        """Where the relevance sits after each layer: `(batch_size, num_layers + 1, num_tokens)` (per head:
        `(batch, heads, num_layers + 1, num_tokens)`); index ``l`` holds ``R^(l)``, the relevance of the tokens
        entering layer ``l`` (0-based, input side first), so index 0 is :meth:`token_relevance`'s map and index
        ``num_layers`` the start, as in :meth:`TokenRelevanceLRP.token_relevance_by_layer`."""
        prepared = self._prepare(inputs, additional_forward_args)
        return self._relevance(prepared, target, initial_relevance, head_fusion, propagate_by_layer)[0]

    def token_relevance_by_rule(
        self,
        inputs: Tensor | tuple[Tensor] | Mapping[str, Tensor],
        rules: Sequence[str | TokenRule],
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        initial_relevance: Start = None,
        head_fusions: Sequence[HeadFusion] = ("mean",),
    ) -> dict[str, dict[HeadFusion, Tensor]]:
        """Several rules and head modes from **one** forward pass: ``{rule name: {head mode: relevance}}``,
        each equal to :meth:`token_relevance` with that rule and mode."""
        names, defaults, modes = self._rule_set(rules, head_fusions)
        prepared = self._prepare(inputs, additional_forward_args)
        start = self._check_start(prepared, target, initial_relevance)
        kept = self._record(prepared, self.attention_sites, self._rule_set_matrices(defaults, modes))
        return self._rule_set_relevance(names, modes, kept, start, self._check_finite)

    # ---------------------------------------------------------- attribution
    @overload
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor] | Mapping[str, Tensor],
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: Literal[False] = False,
        *,
        initial_relevance: Start = None,
        head_fusion: HeadFusion = "mean",
    ) -> Tensor | tuple[Tensor]: ...

    @overload
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor] | Mapping[str, Tensor],
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        return_convergence_delta: Literal[True],
        initial_relevance: Start = None,
        head_fusion: HeadFusion = "mean",
    ) -> tuple[Tensor | tuple[Tensor], Tensor]: ...

    def attribute(
        self,
        inputs: Tensor | tuple[Tensor] | Mapping[str, Tensor],
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        *,
        initial_relevance: Start = None,
        head_fusion: HeadFusion = "mean",
    ) -> Tensor | tuple[Tensor] | tuple[Tensor | tuple[Tensor], Tensor]:
        """Per-token relevance, `(batch_size, num_tokens)` like ``input_ids`` (Captum's convention).

        Parameters as in :meth:`token_relevance` (``head_fusion`` one of the fused modes); with
        ``return_convergence_delta`` also ``start total - relevance total`` per sample (~0).
        """
        return super().attribute(
            inputs,
            target,
            additional_forward_args,
            return_convergence_delta,
            initial_relevance=initial_relevance,
            head_fusion=head_fusion,
        )

    def _check_attribute_options(self, options: Mapping[str, Any]) -> None:
        head_fusion = options["head_fusion"]
        if head_fusion not in FUSED_HEAD_MODES:
            check_head_fusion(head_fusion)
            raise ValueError(
                f"attribute returns one map per input, so head_fusion must be one of {list(FUSED_HEAD_MODES)}, got "
                f"{head_fusion!r}. For one map per head use token_relevance(..., head_fusion=None)."
            )

    def _relevance_and_start(self, prepared, target, options):
        return self._relevance(prepared, target, options["initial_relevance"], options["head_fusion"])

    def has_convergence_delta(self) -> bool:
        """True: the rules conserve relevance; the delta is ~0 up to float32 rounding."""
        return True

    @classmethod
    def get_name(cls) -> str:
        return "Text Token Relevance LRP"
