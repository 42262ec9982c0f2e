"""What every token attribution in this package shares: input handling, the model pass, the outputs.

One template for images and text: :class:`TokenAttribution` runs the verbs, and the adapter's
modality picks the input kind (:mod:`.inputs`: how inputs are prepared, where relevance starts and
what ``attribute`` returns).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor, nn

from .._adapters import AttentionSite, TokenLayout, adapter_for
from .._adapters.base import modality_of
from .._utils.stack import user_stacklevel
from .._utils.validation import TargetType, TextPrompts
from .capture import LayerProjections, record_layers
from .engine import Engine
from .inputs import (
    CLASS_SPECIFIC_METHODS,
    PROMPT_SPECIFIC_METHODS,
    InputKind,
    Prepared,
    PreparedInputs,
    PreparedText,
    input_kind,
)

__all__ = [
    "CLASS_SPECIFIC_METHODS",
    "PROMPT_SPECIFIC_METHODS",
    "MethodOptions",
    "PreparedInputs",
    "PreparedText",
    "TokenAttribution",
    "evaluation_mode",
]


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Run in eval mode (no dropout), then restore every module's own ``training`` flag."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for module, training in modes:
            module.training = training


class MethodOptions:
    """The keyword options of a method (:attr:`relevance_options`, with their defaults), checked once for the
    image and the text attributions."""

    #: Keyword options of ``token_relevance`` and ``attribute``, with their defaults.
    relevance_options: ClassVar[Mapping[str, Any]] = MappingProxyType({})

    def _options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` over the defaults; an unknown name is a TypeError listing the known ones."""
        unknown = sorted(set(options) - set(self.relevance_options))
        if unknown:
            known = ", ".join(self.relevance_options) or "none"
            raise TypeError(f"{type(self).__name__} got unexpected option(s) {unknown}; its options are: {known}.")
        return {**self.relevance_options, **options}


class TokenAttribution(MethodOptions, Attribution):
    """The template every attribution of this package follows: one relevance value per token.

    It owns the public verbs once, for images and text: :meth:`token_relevance` (validate the
    inputs -> the subclass's :meth:`_token_relevance` -> `(batch_size, num_tokens)`) and
    :meth:`attribute` (the same, then Captum's convention for the output: for an image the patch
    tokens' relevance spread uniformly over their pixels, the shape of ``inputs``; for text the
    token relevance itself, the shape of ``input_ids``). The model's adapter says which kind of
    input the model takes (:attr:`modality`; :mod:`captum_tokenlrp._core.inputs`). A subclass
    implements only :meth:`_token_relevance` and declares its keyword options with their defaults
    in :attr:`relevance_options`; it may refine :meth:`_attributions` (e.g. Integrated Gradients
    keeps Captum's own pixel map) and :meth:`_check_attribute_options`, and say which modalities
    it explains (:attr:`modalities`).

    Parameters
    ----------
    model : nn.Module
        A supported HuggingFace Transformer (see :func:`supported_model_classes`): a vision
        Transformer, or for the methods that explain both (:attr:`modalities`) a text one. A
        wrapper (``torch.compile``, ``DataParallel``, a ``pipeline``) is explained through the
        model inside it, with a warning.
    tokenizer : tokenizer or processor, optional
        For an image-text model (CLIP, SigLIP): tokenizes prompt strings given as ``target``
        (the attribute may also be set later, ``attribution.tokenizer = processor.tokenizer``).
        For a text model: tokenizes text given as ``inputs`` and names the tokens (:meth:`tokens`).

    Examples
    --------
    A method is a few lines: the last layer's attention row of the start token, heads averaged.

    >>> class LastLayerCLS(TokenAttribution):
    ...     def _token_relevance(self, prepared, target):
    ...         (attention,) = self._record(prepared, self.attention_sites[-1:], lambda layer: layer.state().attention)
    ...         return attention[:, :, 0].mean(dim=1)
    """

    #: Whether the map depends on ``target`` beyond choosing the start token (gradient methods: the
    #: explained class or prompt). Class-agnostic methods compute one map for all prompts.
    target_sensitive: ClassVar[bool] = False

    #: The kinds of model the method explains (adapter modalities): vision Transformers by default; the
    #: methods written for both (the rules, raw attention, rollout) say ``("image", "text")``.
    modalities: ClassVar[tuple[str, ...]] = ("image",)

    #: How each forward pass obtains the attention probabilities (see :mod:`.capture`): ``"exact"``
    #: leaves the model's outputs bitwise its own; ``"fast"`` computes every layer's attention once,
    #: in float32 (outputs within float32 rounding of the model's kernel; the fastest on sdpa models).
    #: The default differs from :class:`~captum_tokenlrp.TokenRelevanceLRP`'s ``"fast"`` on purpose: the
    #: methods that inherit it (the baselines) take no ``attention_capture`` argument and promise the
    #: model's outputs bitwise its own during the call, and ``"fast"`` would move those outputs (and so
    #: anything read from them) by float32 rounding. The LRP, whose cost is every layer's N x N
    #: matrices, takes the argument and defaults to ``"fast"``.
    attention_capture: str = "exact"

    #: Where a method's read-out differs between images and text, the subclass implementing it for a
    #: modality, as ``{"text": "module:Class"}``: constructing the public class on such a model builds that
    #: subclass (e.g. ``GenericAttentionExplainability(bert)`` is a ``TextGenericAttentionExplainability``,
    #: an instance of both). Empty: one implementation serves every modality in :attr:`modalities`.
    modality_implementations: ClassVar[Mapping[str, str]] = MappingProxyType({})

    def __new__(cls, model: object = None, *args: Any, **kwargs: Any) -> TokenAttribution:
        implementation = cls.modality_implementations.get(modality_of(model) or "")
        if implementation is not None:
            module, name = implementation.split(":")
            chosen = getattr(importlib.import_module(module), name)
            if issubclass(chosen, cls):
                return super().__new__(chosen)
        return super().__new__(cls)

    def __init__(self, model: nn.Module, *, tokenizer: Any = None) -> None:
        self.tokenizer = tokenizer
        self._adapter = adapter_for(model, self.modalities[0] if len(self.modalities) == 1 else None)
        #: How this model's inputs are prepared, started from and mapped back (:mod:`.inputs`).
        self._inputs: InputKind = input_kind(self._adapter.modality)
        # A wrapper (torch.compile, DataParallel, pipeline) is explained through the model inside it.
        model = self._adapter.model
        super().__init__(model)
        self.model = model

    @property
    def engine(self) -> Engine:
        """This attribution's steps as public verbs (prepare, record, start), for views that replay them."""
        return Engine(self)

    @property
    def modality(self) -> str:
        """``"image"`` or ``"text"``: the kind of input this attribution's model takes."""
        return self._adapter.modality

    # ------------------------------------------------------------------ the template
    def token_relevance(
        self,
        inputs: Tensor | tuple[Tensor] | Mapping[str, Tensor],
        target: TargetType = None,
        additional_forward_args: Any = None,
        **options: Any,
    ) -> Tensor:
        """Relevance of every input token, in the model's own token order (special tokens first).

        Parameters
        ----------
        inputs : Tensor, 1-tuple of Tensor, mapping, str or sequence of str
            An image model: ``pixel_values`` of shape `(batch_size, channels, height, width)`. A text
            model: ``input_ids`` `(batch_size, num_tokens)`, or a tokenizer's output (``BatchEncoding``
            or dict with ``input_ids`` and optionally ``attention_mask``, ``token_type_ids``...), or with
            :attr:`tokenizer` set the text itself (one string or a list; padded into one batch, and
            truncated with a warning to the model's position embeddings).
        target : int, str, sequence of int or str, numpy integers or Tensor, optional
            What to explain; its meaning is the method's: an output token for a model without a
            head (negative indices count from the end), a class for a classifier (its index, or its
            name in ``model.config.id2label``), prompt text for an image-text model (CLIP, SigLIP;
            tokenized with :attr:`tokenizer`, truncated with a warning to the text tower's length).
            Any integer type Captum accepts.
        additional_forward_args : tuple, dict or object, optional
            Extra arguments for the model's forward: a tuple is passed positionally after
            ``inputs`` (Captum convention), a dict by keyword, e.g. ``{"interpolate_pos_encoding": True}``
            or ``{"attention_mask": mask}``.
        **options
            The method's own options (:attr:`relevance_options`, documented on its class).

        Returns
        -------
        Tensor
            float32 `(batch_size, num_tokens)`, or `(batch_size, num_heads, num_tokens)` for the
            per-head options of methods that have them.
        """
        prepared = self._prepare(inputs, additional_forward_args)
        options = self._options(options)
        prompts = self._inputs.prompts(self, target)
        if prompts is None:
            return self._token_relevance(prepared, target, **options)
        return self._per_prompt(prepared, prompts, options)

    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor] | Mapping[str, Tensor],
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        **options: Any,
    ) -> Tensor | tuple[Tensor] | tuple[Tensor | tuple[Tensor], Tensor]:
        """Attribution in Captum's convention: the shape of ``inputs`` (pixels, or ``input_ids``).

        Parameters
        ----------
        inputs, target, additional_forward_args, **options
            As in :meth:`token_relevance`.
        return_convergence_delta : bool, default False
            Also return the method's convergence delta per sample, `(batch_size,)` (only where
            :meth:`has_convergence_delta` is True).

        Returns
        -------
        Tensor or 1-tuple of Tensor
            float32 `(batch_size, channels, height, width)` for an image model, `(batch_size,
            num_tokens)` for a text model; a tuple if ``inputs`` was one; with
            ``return_convergence_delta``, the pair ``(attributions, delta)``.
        """
        options = self._options(options)
        self._check_attribute_options(options)
        if return_convergence_delta and not self.has_convergence_delta():
            raise ValueError(
                f"{type(self).__name__} has no convergence delta; call attribute without return_convergence_delta."
            )
        prepared = self._prepare(inputs, additional_forward_args)
        target = self._inputs.one_target(self, target, "attribute")
        attributions, delta = self._attributions(prepared, target, options, return_convergence_delta)
        output = (attributions,) if prepared.is_tuple else attributions
        return (output, delta) if return_convergence_delta else output

    def _per_prompt(self, prepared: Prepared, prompts: TextPrompts, options: Mapping[str, Any]) -> Tensor:
        """One map per prompt, `(batch_size, num_prompts, ...)`; computed once when the method ignores the
        target (the class-agnostic ones: the map is the same for every prompt, and a warning says so)."""
        if not self.target_sensitive:
            relevance = self._token_relevance(prepared, prompts, **options)
            return relevance.unsqueeze(1).expand(relevance.shape[0], len(prompts), *relevance.shape[1:])
        maps = [self._token_relevance(prepared, prompts.select(index), **options) for index in range(len(prompts))]
        return torch.stack(maps, dim=1)

    def _token_relevance(self, prepared: Prepared, target: TargetType, **options: Any) -> Tensor:
        """The method itself: `(batch_size, num_tokens)` (or per head) for validated inputs; by default the
        relevance of :meth:`_relevance_and_start`, for a conserving method that implements that instead."""
        if type(self)._relevance_and_start is TokenAttribution._relevance_and_start:
            raise NotImplementedError(f"{type(self).__name__} must implement _token_relevance(prepared, target, ...).")
        return self._relevance_and_start(prepared, target, options)[0]

    def _attributions(
        self, prepared: Prepared, target: TargetType, options: Mapping[str, Any], return_convergence_delta: bool
    ) -> tuple[Tensor, Tensor | None]:
        """`(attribute's output, convergence delta or None)`: the token relevance in the input kind's output
        (pixels of an image; the tokens of a text), and for a conserving method (one whose
        :meth:`_relevance_and_start` returns its start) ``start total - explained total``."""
        relevance, start = self._relevance_and_start(prepared, target, options)
        outputs = self._pixels(relevance, prepared)
        if not return_convergence_delta or start is None:
            return outputs, None
        return outputs, self._inputs.convergence_delta(self, relevance, outputs, start, prepared)

    def _relevance_and_start(
        self, prepared: Prepared, target: TargetType, options: Mapping[str, Any]
    ) -> tuple[Tensor, Tensor | None]:
        """`(relevance, start or None)` for ``attribute``; conserving methods return their start."""
        return self._token_relevance(prepared, target, **options), None

    def _check_attribute_options(self, options: Mapping[str, Any]) -> None:
        """Refuse options that give no single map per input (e.g. per-head modes); none by default."""

    def _check_start(self, prepared: Prepared, target: TargetType, initial_relevance: object = None) -> Tensor | None:
        """Before the forward pass: the explicitly asked start (checked), or None for the model's own.

        Class-agnostic methods call this, run the forward pass, then :meth:`_start`.
        """
        return self._inputs.check_start(self, prepared, target, initial_relevance)

    def _start(self, prepared: Prepared, explicit: Tensor | None) -> Tensor:
        """After the forward pass: the start relevance `(batch_size, num_tokens)`."""
        return self._inputs.start(self, prepared, explicit)

    @property
    def attention_sites(self) -> list[AttentionSite]:
        """The model's attention layers, input side first."""
        return self._adapter.attention_sites()

    def token_layout(self, inputs: Tensor | tuple[Tensor], additional_forward_args: Any = None) -> TokenLayout:
        """Which tokens are special and which are patches, on what grid, for these inputs (image models).

        Parameters
        ----------
        inputs : Tensor or 1-tuple of Tensor
            ``pixel_values`` of shape `(batch_size, channels, height, width)`.
        additional_forward_args : tuple, dict or object, optional
            Extra model arguments (``interpolate_pos_encoding`` decides the allowed sizes).
        """
        if self.modality != "image":
            raise TypeError(
                f"token_layout describes image patches; {type(self.model).__name__} is a {self.modality} model "
                "(its tokens are its input_ids)."
            )
        return self._prepare(inputs, additional_forward_args).layout

    def tokens(self, input_ids: Tensor) -> list[list[str]]:
        """The token strings of `(batch_size, num_tokens)` ids (text models; needs :attr:`tokenizer`)."""
        if self.tokenizer is None:
            raise ValueError("Set tokenizer= (the model's tokenizer) to name the tokens.")
        return [self.tokenizer.convert_ids_to_tokens(row.tolist()) for row in input_ids]

    def _prepare(self, inputs: object, additional_forward_args: Any) -> Prepared:
        return self._inputs.prepare(self, inputs, additional_forward_args)

    def _device(self) -> torch.device:
        parameter = next(self.model.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def _record(self, prepared: Prepared, sites: Sequence[AttentionSite], compute) -> list:
        """One forward pass (no grad, eval mode) recording ``compute(layer)`` for each site."""
        token_counts: list[int] = []

        def counted(layer: LayerProjections):
            token_counts.append(layer.num_tokens)
            return compute(layer)

        adapter = self._adapter
        kwargs = {**adapter.forward_kwargs(prepared.inputs), **prepared.kwargs}
        recording = record_layers(
            sites,
            counted,
            capture=self.attention_capture,
            token_mask=prepared.token_mask,
            needs_registry=adapter.needs_registry,
        )
        with evaluation_mode(self.model), torch.no_grad(), adapter.explaining():
            with recording as kept:
                adapter.forward_module(prepared.inputs, *prepared.args, **kwargs)
        unrecorded = [site.layer_index for site, value in zip(sites, kept, strict=True) if value is None]
        if unrecorded:
            raise RuntimeError(f"The forward pass did not run attention layers {unrecorded}.")
        self._inputs.check_recorded(prepared, token_counts[0])
        return kept

    def _check_finite(self, relevance: Tensor, layers: Sequence[Tensor], prepared: Prepared | None = None) -> Tensor:
        """Return ``relevance``, or raise a ValueError naming the first layer that went non-finite.

        One reduction on the result; the layers are scanned only when it is not finite.
        """
        if bool(torch.isfinite(relevance.sum())):
            return relevance
        where = next((index for index, matrix in enumerate(layers) if not bool(torch.isfinite(matrix).all())), None)
        dtype = next(self.model.parameters()).dtype
        place = (
            f"in layer {where} (0 = nearest the input) of {len(layers)}: its attention probabilities or value "
            f"vectors are NaN or infinite, i.e. the model's activations overflowed {dtype}"
            if where is not None
            else "while propagating (every layer's matrix is finite)"
        )
        raise ValueError(f"Relevance became non-finite {place}. {self._inputs.non_finite_hint(self, prepared)}")

    def _warn_target_ignored(self, target: object, alternatives: str | None = None, force: bool = False) -> None:
        """Say once per instance that a classifier's ``target`` (or a prompt) does not change this method's map."""
        relevant = force or (target is not None and self._adapter.is_classifier)
        if not relevant or self.target_sensitive or getattr(self, "_warned_target", False):
            return
        self._warned_target = True
        where = "where the model's output is read" if self.modality == "image" else "where the classifier reads"
        warnings.warn(
            f"{type(self).__name__} is class-agnostic: its map starts {where} "
            f"and does not depend on target={target!r} (by design; the paper explains label-free models). "
            f"For class-specific maps use {alternatives or self._inputs.class_specific_methods}. "
            "This warning is shown once per instance.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )

    def _pixels(self, relevance: Tensor, prepared: Prepared) -> Tensor:
        """`(batch, num_tokens)` relevance -> what ``attribute`` returns: `(batch, channels, height, width)`
        pixels for an image, the token relevance itself for a text."""
        return self._inputs.outputs(relevance, prepared)

    def has_convergence_delta(self) -> bool:
        """Whether :meth:`attribute` can return a convergence delta (conserving methods)."""
        return False

    @property
    def multiplies_by_inputs(self) -> bool:
        """False: relevance is not multiplied by the inputs (Captum's flag for its metrics)."""
        return False
