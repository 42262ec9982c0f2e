"""Baselines for text Transformers, in the interface of :class:`~captum_tokenlrp.TextTokenRelevanceLRP`.

- :class:`TextRawAttention`: one layer's attention row of the explained token.
- :class:`TextAttentionRollout`: Abnar & Zuidema 2020 (rule (i) with mean fusion).
- :class:`TextGenericAttentionExplainability`: Chefer, Gur & Wolf, ICCV 2021 (class-specific).
- :class:`TextLayerIntegratedGradients`: Captum's ``LayerIntegratedGradients`` on the token embeddings.

The attention methods read the attention exactly as the LRP class does (one forward pass, the
model's own float32 probabilities), so all are compared on the same attention; they start where the
LRP class starts (``initial_relevance``, see :meth:`TextTokenAttribution._check_start`).

The two gradient methods explain one scalar per input (:attr:`target_sensitive`):

- a sequence classifier: the logit of ``target`` (default: the predicted class, per sample);
- a causal language model: the logit of the token id ``target`` at the explained position
  (option ``position``, default the last real token; default token: the argmax prediction there);
- any other model (a base encoder or decoder, a masked LM): ``<p(x), p(x).detach()>`` where ``p`` is
  the last hidden state pooled as the option ``pooling`` says (``"first"``: the first token, the
  default of encoders; ``"last"``: the last real token, the default of decoders; ``"mean"``: the
  attention-mask-weighted mean of the tokens, the read-out of sentence-transformers). Its gradient
  is ``J^T p``: how strongly the input expresses its own representation. Caveat: where the final
  LayerNorm has unit scale and zero shift (an untrained model), ``||p||`` is constant for
  ``"first"``/``"last"`` and the gradient vanishes (a warning says so).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from captum.attr import LayerIntegratedGradients
from torch import Tensor, nn

from .._adapters.text import last_real_token
from .._core.base import evaluation_mode
from .._core.text_base import PreparedText, TextTokenAttribution
from .._core.text_gradients import attention_gradients
from .._utils.validation import TargetType, _per_sample_targets, class_indices
from .attention import AttentionRollout, RawAttention
from .gradient import GenericAttentionExplainability, TokenIntegratedGradients, warn_if_vanishing

__all__ = [
    "TextAttentionRollout",
    "TextGenericAttentionExplainability",
    "TextLayerIntegratedGradients",
    "TextRawAttention",
]

#: Read-outs of the embedding score of a model without a head (option ``pooling``).
POOLINGS = ("first", "mean", "last")
#: Named baseline tokens of :class:`TextLayerIntegratedGradients` (``baseline=``).
BASELINE_TOKENS = ("pad", "mask", "unk")


# =========================================================================== attention methods
class TextRawAttention(RawAttention):
    """:class:`~captum_tokenlrp.baselines.RawAttention` for text models only (its text name).

    ``RawAttention(text_model)`` is the same method (the model's modality picks the inputs); see
    it for the options (``layer``, ``head_fusion`` mean/max/min/None, ``initial_relevance``).
    """

    modalities: ClassVar[tuple[str, ...]] = ("text",)


class TextAttentionRollout(AttentionRollout):
    """:class:`~captum_tokenlrp.baselines.AttentionRollout` for text models only (its text name).

    ``AttentionRollout(text_model)`` is the same method; see it for the options (``head_fusion``
    mean/max/min, ``discard_ratio``, ``initial_relevance``). With mean fusion and no discard it
    equals rule (i) of :class:`~captum_tokenlrp.TokenRelevanceLRP`.
    """

    modalities: ClassVar[tuple[str, ...]] = ("text",)


# =========================================================================== the explained scalar
@dataclass(frozen=True)
class _ReadOut:
    """What a gradient method explains for one batch.

    ``kind`` is "classifier", "language_model" or "embedding"; ``read`` is handed to the forward: the
    positions `(batch,)` long of a language model, or the pooling weights `(batch, N)` of an embedding
    (unused by a classifier); ``start`` `(batch, N)` is where the scalar reads (GAE's row of ``R``);
    ``targets`` `(batch,)` the class or token id, None for the predicted one (or an embedding).
    """

    kind: str
    read: Tensor
    start: Tensor
    targets: Tensor | None


class _ExplainedOutput:
    """The explained output of a text model as a Captum ``forward_func``.

    ``forward(input_ids, read, reference, *batched)``: `(batch, num_labels)` logits of a classifier,
    `(batch, vocab)` logits at ``read`` (positions) of a language model (Captum's ``target`` picks the
    class or token), or the embedding score `(batch,)` ``<p, reference>`` with ``p`` the last hidden
    state pooled by the weights ``read`` (``reference=None``: ``p.detach()``). ``batched`` are the
    forward's tensor keyword arguments with a batch dimension, named by ``names`` (Captum repeats
    them along the integration path); ``fixed`` are the others.
    """

    def __init__(self, attribution: TextTokenAttribution, kind: str, names: Sequence[str], fixed: Mapping) -> None:
        self.model = attribution.model
        self.backbone = attribution._adapter.backbone
        self.kind = kind
        self.names = tuple(names)
        self.fixed = dict(fixed)

    def vectors(self, input_ids: Tensor, read: Tensor, *batched: Tensor) -> Tensor:
        """Logits `(batch, classes or vocab)`, or the pooled hidden state `(batch, hidden)` of an embedding."""
        kwargs = {**self.fixed, **dict(zip(self.names, batched, strict=True))}
        if self.kind != "embedding":
            logits = self.model(input_ids, **kwargs).logits
            if self.kind == "classifier":
                return logits
            return logits[torch.arange(len(logits), device=logits.device), read]
        hidden: list[Tensor] = []

        def keep(_module: nn.Module, _args: tuple, output: object) -> None:
            # The headless model's last hidden state (a masked LM's too, before its head).
            hidden.append(output if isinstance(output, Tensor) else output[0])

        handle = self.backbone.register_forward_hook(keep)
        try:
            self.model(input_ids, **kwargs)
        finally:
            handle.remove()
        return torch.einsum("bn,bnd->bd", read.to(hidden[-1].dtype), hidden[-1])

    def __call__(self, input_ids: Tensor, read: Tensor, reference: Tensor | None, *batched: Tensor) -> Tensor:
        output = self.vectors(input_ids, read, *batched)
        if self.kind != "embedding":
            return output
        direction = output.detach() if reference is None else reference.to(output.dtype)
        return (output * direction).sum(dim=-1)


class _TextGradientAttribution(TextTokenAttribution):
    """Shared by the gradient methods: the explained scalar (see the module docstring) and its checks."""

    target_sensitive: ClassVar[bool] = True

    @property
    def output_kind(self) -> str:
        """What is explained: "classifier", "language_model" (a causal LM head) or "embedding" (anything else)."""
        if self._adapter.is_classifier:
            return "classifier"
        if self._adapter.is_decoder and self.model.get_output_embeddings() is not None:
            return "language_model"
        return "embedding"

    def _read_out(self, prepared: PreparedText, target: TargetType, pooling: object, position: object) -> _ReadOut:
        kind = self.output_kind
        mask = prepared.token_mask
        name = type(self.model).__name__
        if pooling is not None and kind != "embedding":
            raise ValueError(
                f"pooling applies to models without a head (their embedding score); {name} is explained by its "
                f"{'class logits' if kind == 'classifier' else 'next-token logits'}: call without pooling."
            )
        if position is not None and kind != "language_model":
            raise ValueError(
                f"position picks the explained position of a causal language model; {name} is not one: call "
                f"without position{' (choose the read-out with pooling)' if kind == 'embedding' else ''}."
            )
        if kind == "classifier":
            if target is not None:
                target = class_indices(target, self.model, is_classifier=True)
            targets = None if target is None else self._checked_ids(target, prepared, self._adapter.num_labels, "class")
            return _ReadOut(kind, self._adapter.default_start(mask), self._adapter.default_start(mask), targets)
        if kind == "language_model":
            positions = self._positions(prepared, position)
            start = torch.zeros(mask.shape, device=mask.device)
            start[torch.arange(len(start), device=mask.device), positions] = 1.0
            vocab = int(self.model.get_output_embeddings().weight.shape[0])
            named = [target] if isinstance(target, str) else target if isinstance(target, (list, tuple)) else []
            if any(isinstance(item, str) for item in named):
                raise TypeError(
                    f"target of a language model is the token id whose logit is explained, got {target!r}; convert "
                    "a token with tokenizer.convert_tokens_to_ids(token) (one id per sample, or one for all)."
                )
            targets = None if target is None else self._checked_ids(target, prepared, vocab, "token id")
            return _ReadOut(kind, positions, start, targets)
        if target is not None:
            raise ValueError(
                f"{name} has no classification or language-model head: its embedding score <p, p.detach()> is "
                f"explained (see captum_tokenlrp.baselines.text), so target must be None, got {target!r}; choose "
                "the read-out with pooling='first', 'mean' or 'last'."
            )
        if pooling is None:
            pooling = "last" if self._adapter.is_decoder else "first"
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS} (or None: the model's default), got {pooling!r}.")
        weights = self._inputs.named_or_given_start(pooling, prepared)
        return _ReadOut(kind, weights, weights, None)

    @staticmethod
    def _checked_ids(target: TargetType, prepared: PreparedText, upper: int, what: str) -> Tensor:
        targets = _per_sample_targets(target, prepared.batch_size)
        bad = targets[(targets < 0) | (targets >= upper)]
        if bad.numel():
            raise ValueError(f"target {bad[0].item()} is out of range: expected a {what} in [0, {upper}).")
        return targets.to(prepared.input_ids.device)

    @staticmethod
    def _positions(prepared: PreparedText, position: object) -> Tensor:
        mask = prepared.token_mask
        if position is None:
            return last_real_token(mask)
        tokens = prepared.num_tokens
        try:
            positions = _per_sample_targets(position, prepared.batch_size)
        except TypeError:
            raise TypeError(
                f"position must be an int or one int per sample (a token index), got {type(position).__name__}."
            ) from None
        bad = positions[(positions < -tokens) | (positions >= tokens)]
        if bad.numel():
            raise ValueError(
                f"position {bad[0].item()} is out of range: expected a token index in [-{tokens}, {tokens})."
            )
        positions = positions.remainder(tokens).to(mask.device)
        if not bool(mask[torch.arange(len(mask), device=mask.device), positions].all()):
            raise ValueError("position points at a padding token; choose one whose attention_mask is 1.")
        return positions

    def _explained(self, prepared: PreparedText, kind: str) -> tuple[_ExplainedOutput, tuple[Tensor, ...]]:
        """The forward and its batched tensor arguments (in the order of its ``names``)."""
        kwargs = {**self._adapter.forward_kwargs(), **prepared.kwargs}
        batch = prepared.batch_size
        batched = {
            name: value
            for name, value in kwargs.items()
            if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch
        }
        fixed = {name: value for name, value in kwargs.items() if name not in batched}
        return _ExplainedOutput(self, kind, list(batched), fixed), tuple(batched.values())

    def _warn_if_vanishing(self, values: Tensor, what: str) -> None:
        """Warn when some sample's ``values`` `(batch, ...)` are numerically zero (a vanishing gradient)."""
        warn_if_vanishing(
            self,
            values,
            what,
            "e.g. the embedding score of a random-init model with unit "
            "LayerNorms: try pooling='mean' or a trained model.",
        )


# =========================================================================== GAE
class TextGenericAttentionExplainability(_TextGradientAttribution, GenericAttentionExplainability):
    r"""Generic Attention Explainability (Chefer, Gur & Wolf, ICCV 2021), self-attention rule, for text.

    Per layer :math:`\bar A = \operatorname{mean}_h \big(\nabla_A S \odot A\big)^+`; starting from
    :math:`R = I`, :math:`R \leftarrow R + \bar A R` from the input side to the output; the map is
    the start's row of ``R`` (a distribution as start gives the weighted mean of rows). ``S`` is the
    explained scalar (module docstring: a classifier's logit, a language model's next-token logit,
    or the embedding score of a model without a head). Unlike the authors' display code, the start
    token's own entry is kept (they zero ``R[0, 0]`` before plotting).

    ``A`` is the model's own float32 attention, read as by :class:`TextTokenRelevanceLRP`; ``dS/dA``
    comes from the gradient at each layer's output projection (:mod:`captum_tokenlrp._core.text_gradients`),
    so the model runs its own attention implementation, unchanged. One forward and one backward pass
    for the whole batch; no parameter's ``.grad`` is touched. Padding gets 0.

    Parameters
    ----------
    model : nn.Module
        A supported HuggingFace text Transformer.
    tokenizer : tokenizer, optional
        Tokenizes text given as ``inputs`` and names the tokens (:meth:`tokens`).

    Options
    -------
    initial_relevance : Tensor or {"first", "last", "mean"}, optional
        The row(s) of ``R`` read; default: where the scalar reads (the classifier's token, the
        explained position, or the pooling's tokens).
    pooling : {"first", "mean", "last"}, optional
        Models without a head: how the last hidden state is pooled for the embedding score (default
        "first" on encoders, "last" on decoders).
    position : int or sequence of int, optional
        Causal language models: the explained position (default the last real token; negative
        counts from the end).

    ``target``: the class of a classifier, the token id of a language model (default, per sample:
    the prediction); None for other models.
    """

    relevance_options: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {"initial_relevance": None, "pooling": None, "position": None}
    )

    def _token_relevance(
        self,
        prepared: PreparedText,
        target: TargetType,
        *,
        initial_relevance: object,
        pooling: object,
        position: object,
    ) -> Tensor:
        read_out = self._read_out(prepared, target, pooling, position)
        start = read_out.start
        if initial_relevance is not None:
            start = self._inputs.named_or_given_start(initial_relevance, prepared)
        forward, batched = self._explained(prepared, read_out.kind)

        def scalar() -> Tensor:
            output = forward(prepared.input_ids, read_out.read, None, *batched)
            if read_out.kind == "embedding":
                return output
            targets = read_out.targets
            if targets is None:  # the prediction, per sample, from this very forward
                targets = output.detach().argmax(dim=-1)
            return output.gather(1, targets[:, None])[:, 0]

        with evaluation_mode(self.model):
            _, layers = attention_gradients(
                self.attention_sites, scalar, prepared.token_mask, needs_registry=self._adapter.needs_registry
            )
        batch, tokens = prepared.batch_size, prepared.num_tokens
        joint = torch.eye(tokens, device=start.device).expand(batch, tokens, tokens).clone()
        weighted = []
        for layer in layers:  # input side first: R <- R + A_bar R
            weighted.append((layer.gradient * layer.attention).clamp_min(0).mean(dim=1))
            joint = joint + torch.bmm(weighted[-1], joint)
        relevance = self._check_finite(torch.bmm(start[:, None], joint)[:, 0], weighted)
        self._warn_if_vanishing(torch.stack(weighted, dim=1), "weighted attention (all layers)")
        return relevance

    @classmethod
    def get_name(cls) -> str:
        return "Generic Attention Explainability"


# =========================================================================== Integrated Gradients
class TextLayerIntegratedGradients(_TextGradientAttribution, TokenIntegratedGradients):
    """Captum's ``LayerIntegratedGradients`` on the token embeddings, summed over the hidden dimension.

    The path runs, in the embedding layer's output (``get_input_embeddings()``), from the embeddings of
    baseline token ids to those of the input; the explained scalar is that of the module docstring
    (for an embedding score, the reference ``p(x).detach()`` of the *input* is held fixed along the path,
    so the path explains one function). Baseline ids, as in Captum's BERT tutorial: special tokens and
    padding are kept, every other token is replaced by the ``baseline`` token, so special tokens and
    padding get exactly 0. Completeness: the attributions of a sample sum to ``S(x) - S(baseline)``
    up to Captum's convergence delta (``attribute(..., return_convergence_delta=True)``).

    Special tokens are the tokenizer's ``all_special_ids`` when ``tokenizer`` is given; without one,
    the token ids the config names (``bos``/``eos``/``sep``/``cls``/``pad``) and, on encoders, the first
    and last real token of each row (where ``[CLS]`` / ``[SEP]``, ``<s>`` / ``</s>`` sit).

    Parameters
    ----------
    model : nn.Module
        A supported HuggingFace text Transformer.
    n_steps : int, default 50
        Riemann steps of the path integral (Captum's ``gausslegendre``).
    baseline : {"pad", "mask", "unk"} or int, default "pad"
        The token replacing the real tokens in the baseline: the tokenizer's (or the config's) pad,
        mask or unknown token, or a token id.
    internal_batch_size : int, optional
        Passed to Captum to bound memory.
    tokenizer : tokenizer, optional
        Tokenizes text given as ``inputs``; gives the special tokens and the named baseline tokens.

    Options
    -------
    pooling, position
        As in :class:`TextGenericAttentionExplainability`.
    baselines : Tensor, optional
        Explicit baseline token ids, `(num_tokens,)` or `(batch_size, num_tokens)`, instead of ``baseline``.

    ``target`` as in :class:`TextGenericAttentionExplainability`.
    """

    relevance_options: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {"pooling": None, "position": None, "baselines": None}
    )

    def __init__(
        self,
        model: nn.Module,
        n_steps: int = 50,
        baseline: str | int = "pad",
        *,
        internal_batch_size: int | None = None,
        tokenizer: Any = None,
    ) -> None:
        super().__init__(model, tokenizer=tokenizer)
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps must be a positive int, got {n_steps!r}.")
        if isinstance(baseline, bool) or not isinstance(baseline, (str, int)):
            raise TypeError(
                f"baseline must be one of {BASELINE_TOKENS} or a token id (int), got {type(baseline).__name__}."
            )
        if isinstance(baseline, str) and baseline not in BASELINE_TOKENS:
            raise ValueError(f"baseline must be one of {BASELINE_TOKENS} or a token id (int), got {baseline!r}.")
        self.n_steps = n_steps
        self.baseline = baseline
        self.internal_batch_size = internal_batch_size

    # ------------------------------------------------------------------ baseline ids
    def _vocab_size(self) -> int:
        return int(self._adapter.input_embeddings().weight.shape[0])

    def _baseline_token(self) -> int:
        if not isinstance(self.baseline, str):
            token = int(self.baseline)
        else:
            source = self.tokenizer if self.tokenizer is not None else self.model.config
            token = getattr(source, f"{self.baseline}_token_id", None)
            if token is None:
                where = "its tokenizer" if self.tokenizer is not None else "config (and no tokenizer was given)"
                raise ValueError(
                    f"baseline={self.baseline!r}: {type(self.model).__name__}'s {where} has no {self.baseline} "
                    "token id. Pass tokenizer=, another baseline (e.g. 'unk' or 'mask' with a tokenizer), or a "
                    "token id, e.g. baseline=tokenizer.eos_token_id."
                )
        vocab = self._vocab_size()
        if not 0 <= token < vocab:
            raise ValueError(f"The baseline token id {token} is out of range: expected a token id in [0, {vocab}).")
        return int(token)

    def _special(self, prepared: PreparedText) -> Tensor:
        """`(batch, N)` bool: the tokens the baseline keeps (special tokens, padding)."""
        input_ids, mask = prepared.input_ids, prepared.token_mask
        if self.tokenizer is not None:
            ids = list(getattr(self.tokenizer, "all_special_ids", []))
        else:
            config = self.model.config
            names = ("bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id", "pad_token_id")
            ids = [getattr(config, name, None) for name in names]
        ids = [int(i) for i in ids if isinstance(i, int)]
        keep = ~mask | torch.isin(input_ids, torch.tensor(ids, dtype=input_ids.dtype, device=input_ids.device))
        if self.tokenizer is None and not self._adapter.is_decoder:
            rows = torch.arange(len(mask), device=mask.device)
            keep[rows, mask.to(torch.int8).argmax(dim=1)] = True
            keep[rows, last_real_token(mask)] = True
        return keep

    def baseline_ids(self, inputs: Any, additional_forward_args: Any = None) -> Tensor:
        """The baseline token ids `(batch_size, num_tokens)` used for ``inputs`` (as ``token_relevance`` takes them)."""
        prepared = self._prepare(inputs, additional_forward_args)
        return self._baseline_ids(prepared, None)

    def _baseline_ids(self, prepared: PreparedText, baselines: object) -> Tensor:
        input_ids = prepared.input_ids
        if baselines is None:
            return torch.where(self._special(prepared), input_ids, self._baseline_token())
        if not isinstance(baselines, Tensor) or baselines.is_floating_point() or baselines.dtype == torch.bool:
            got = f"dtype {baselines.dtype}" if isinstance(baselines, Tensor) else type(baselines).__name__
            raise TypeError(f"baselines must be a tensor of token ids (an integer tensor), got {got}.")
        if tuple(baselines.shape) not in ((prepared.num_tokens,), tuple(input_ids.shape)):
            raise ValueError(
                f"baselines must have shape ({prepared.num_tokens},) or {tuple(input_ids.shape)} (token ids like "
                f"input_ids), got {tuple(baselines.shape)}."
            )
        vocab = self._vocab_size()
        if bool(((baselines < 0) | (baselines >= vocab)).any()):
            raise ValueError(f"baselines hold token ids outside [0, {vocab}).")
        return baselines.to(input_ids).expand_as(input_ids).clone()

    # ------------------------------------------------------------------ Captum
    def _integrate(
        self, prepared: PreparedText, target: TargetType, options: Mapping[str, Any]
    ) -> tuple[Tensor, Tensor]:
        read_out = self._read_out(prepared, target, options["pooling"], options["position"])
        baselines = self._baseline_ids(prepared, options["baselines"])
        forward, batched = self._explained(prepared, read_out.kind)
        with evaluation_mode(self.model):
            targets, reference = read_out.targets, None
            if targets is None:  # the prediction (or the embedding's own direction) at the input, per sample
                with torch.no_grad():
                    vectors = forward.vectors(prepared.input_ids, read_out.read, *batched)
                if read_out.kind == "embedding":
                    reference = vectors
                else:
                    targets = vectors.argmax(dim=-1)
            attributions, delta = LayerIntegratedGradients(forward, self._adapter.input_embeddings()).attribute(
                prepared.input_ids,
                baselines=baselines,
                target=targets,
                additional_forward_args=(read_out.read, reference, *batched),
                n_steps=self.n_steps,
                internal_batch_size=self.internal_batch_size,
                return_convergence_delta=True,
            )
        relevance = attributions.sum(dim=-1).float()
        self._warn_if_vanishing(relevance, "map")
        return relevance, delta

    def _token_relevance(
        self, prepared: PreparedText, target: TargetType, *, pooling: object, position: object, baselines: object
    ) -> Tensor:
        options = {"pooling": pooling, "position": position, "baselines": baselines}
        return self._integrate(prepared, target, options)[0]

    def _attributions(
        self, prepared: PreparedText, target: TargetType, options: Mapping[str, Any], return_convergence_delta: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Per-token attributions `(batch_size, num_tokens)` and Captum's completeness error per sample,
        ``sum(attributions) - (S(inputs) - S(baselines))``."""
        relevance, delta = self._integrate(prepared, target, options)
        return relevance, delta if return_convergence_delta else None

    def has_convergence_delta(self) -> bool:
        """True, as Captum's ``LayerIntegratedGradients`` (its completeness error)."""
        return True

    @classmethod
    def get_name(cls) -> str:
        return "Layer Integrated Gradients"
