"""What every token attribution in this package shares: input handling, the model pass, pixel maps."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor, nn

from .._adapters import AttentionSite, TokenLayout, adapter_for
from .._utils.geometry import patch_relevance_to_pixels
from .._utils.stack import user_stacklevel
from .._utils.validation import (
    TargetType,
    TextPrompts,
    bound_forward_arguments,
    check_forward_arguments,
    check_pixel_values,
    explicit_start,
    format_pixel_inputs,
    forward_arguments,
    one_prompt,
    parse_text_target,
    resolve_start,
)
from .capture import LayerProjections, record_layers

#: Class-specific methods of the package, named in the warning of class-agnostic ones on a classifier: the
#: class-sensitive rules first (the same method, steered by the class), then the gradient baselines.
CLASS_SPECIFIC_METHODS = (
    "TokenRelevanceLRP(model, class_sensitive='attention') (or 'heads', 'attention+heads': the rules steered by "
    "the class), or captum_tokenlrp.baselines.GenericAttentionExplainability, TokenIntegratedGradients or "
    "TokenGradCAM"
)
#: Prompt-specific methods, named when prompts meet a class-agnostic method (class_sensitive needs a classifier).
PROMPT_SPECIFIC_METHODS = (
    "captum_tokenlrp.baselines.GenericAttentionExplainability, TokenIntegratedGradients or TokenGradCAM "
    "(they explain the image-text similarity)"
)


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


@dataclass(frozen=True)
class PreparedInputs:
    """The validated inputs of one call, as :meth:`TokenAttribution._token_relevance` receives them.

    Attributes
    ----------
    pixel_values : Tensor
        `(batch_size, channels, height, width)`, on the model's device and in its dtype.
    is_tuple : bool
        Whether the user passed a 1-tuple (Captum convention): the output is a 1-tuple then.
    args, kwargs
        Extra model arguments, positional and keyword (``additional_forward_args`` split).
    layout : TokenLayout
        Special tokens and patch grid of these inputs.
    """

    pixel_values: Tensor
    is_tuple: bool
    args: tuple
    kwargs: dict[str, Any]
    layout: TokenLayout


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
            raise TypeError(
                f"{type(self).__name__} got unexpected option(s) {unknown}; its options are: {known}."
            )
        return {**self.relevance_options, **options}


class TokenAttribution(MethodOptions, Attribution):
    """The template every attribution of this package follows: one relevance value per token.

    It owns the public verbs once: :meth:`token_relevance` (validate the inputs -> the subclass's
    :meth:`_token_relevance` -> `(batch_size, num_tokens)`) and :meth:`attribute` (the same, then
    the patch tokens' relevance spread uniformly over their pixels, Captum's convention: the shape
    of ``inputs``). A subclass implements only :meth:`_token_relevance` and declares its keyword
    options with their defaults in :attr:`relevance_options`; it may refine
    :meth:`_attributions` (e.g. Integrated Gradients keeps Captum's own pixel map) and
    :meth:`_check_attribute_options`.

    Parameters
    ----------
    model : nn.Module
        A supported HuggingFace vision Transformer (see :func:`supported_model_classes`). A
        wrapper (``torch.compile``, ``DataParallel``, a ``pipeline``) is explained through the
        model inside it, with a warning.
    tokenizer : tokenizer or processor, optional
        For an image-text model (CLIP, SigLIP): tokenizes prompt strings given as ``target``
        (the attribute may also be set later, ``attribution.tokenizer = processor.tokenizer``).

    Examples
    --------
    A method is a few lines: the last layer's CLS attention row, heads averaged.

    >>> class LastLayerCLS(TokenAttribution):
    ...     def _token_relevance(self, prepared, target):
    ...         (attention,) = self._record(prepared, self.attention_sites[-1:], lambda layer: layer.state().attention)
    ...         return attention[:, :, 0].mean(dim=1)
    """

    #: Whether the map depends on ``target`` beyond choosing the start token (gradient methods: the
    #: explained class or prompt). Class-agnostic methods compute one map for all prompts.
    target_sensitive: ClassVar[bool] = False

    #: How each forward pass obtains the attention probabilities (see :mod:`.capture`): ``"exact"``
    #: leaves the model's outputs bitwise its own; ``"fast"`` computes every layer's attention once,
    #: in float32 (outputs within float32 rounding of the model's kernel; the fastest on sdpa models).
    #: The default differs from :class:`~captum_tokenlrp.TokenRelevanceLRP`'s ``"fast"`` on purpose: the
    #: methods that inherit it (the baselines) take no ``attention_capture`` argument and promise the
    #: model's outputs bitwise its own during the call, and ``"fast"`` would move those outputs (and so
    #: anything read from them) by float32 rounding. The LRP, whose cost is every layer's N x N
    #: matrices, takes the argument and defaults to ``"fast"``.
    attention_capture: str = "exact"

    def __init__(self, model: nn.Module, *, tokenizer: Any = None) -> None:
        self.tokenizer = tokenizer
        self._adapter = adapter_for(model)
        # A wrapper (torch.compile, DataParallel, pipeline) is explained through the model inside it.
        model = self._adapter.model
        super().__init__(model)
        self.model = model

    # ------------------------------------------------------------------ the template
    def token_relevance(
        self,
        inputs: Tensor | tuple[Tensor],
        target: TargetType = None,
        additional_forward_args: Any = None,
        **options: Any,
    ) -> Tensor:
        """Relevance of every input token, in the model's own token order (special tokens first).

        Parameters
        ----------
        inputs : Tensor or 1-tuple of Tensor
            ``pixel_values`` of shape `(batch_size, channels, height, width)`.
        target : int, str, sequence of int or str, numpy integers or Tensor, optional
            What to explain; its meaning is the method's: an output token for a model without a
            head (negative indices count from the end), a class for a classifier (its index, or its
            name in ``model.config.id2label``), prompt text for an image-text model (CLIP, SigLIP;
            tokenized with :attr:`tokenizer`, truncated with a warning to the text tower's length).
            Any integer type Captum accepts.
        additional_forward_args : tuple, dict or object, optional
            Extra arguments for the model's forward: a tuple is passed positionally after
            ``inputs`` (Captum convention), a dict by keyword, e.g. ``{"interpolate_pos_encoding": True}``.
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
        prompts = parse_text_target(target, self._adapter, self.tokenizer)
        if prompts is None:
            return self._token_relevance(prepared, target, **options)
        return self._per_prompt(prepared, prompts, options)

    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor],
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        **options: Any,
    ) -> Tensor | tuple[Tensor] | tuple[Tensor | tuple[Tensor], Tensor]:
        """Pixel attribution of the same shape as ``inputs`` (Captum's convention).

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
            float32 `(batch_size, channels, height, width)`, a tuple if ``inputs`` was one; with
            ``return_convergence_delta``, the pair ``(attributions, delta)``.
        """
        options = self._options(options)
        self._check_attribute_options(options)
        if return_convergence_delta and not self.has_convergence_delta():
            raise ValueError(
                f"{type(self).__name__} has no convergence delta; call attribute without return_convergence_delta."
            )
        prepared = self._prepare(inputs, additional_forward_args)
        target = one_prompt(target, self._adapter, self.tokenizer, "attribute")
        attributions, delta = self._attributions(prepared, target, options, return_convergence_delta)
        output = (attributions,) if prepared.is_tuple else attributions
        return (output, delta) if return_convergence_delta else output

    def _per_prompt(self, prepared: PreparedInputs, prompts: TextPrompts, options: Mapping[str, Any]) -> Tensor:
        """One map per prompt, `(batch_size, num_prompts, ...)`; computed once when the method ignores the
        target (the class-agnostic ones: the map is the same for every prompt, and a warning says so)."""
        if not self.target_sensitive:
            relevance = self._token_relevance(prepared, prompts, **options)
            return relevance.unsqueeze(1).expand(relevance.shape[0], len(prompts), *relevance.shape[1:])
        maps = [self._token_relevance(prepared, prompts.select(index), **options) for index in range(len(prompts))]
        return torch.stack(maps, dim=1)

    def _token_relevance(self, prepared: PreparedInputs, target: TargetType, **options: Any) -> Tensor:
        """The method itself: `(batch_size, num_tokens)` (or per head) for validated inputs."""
        raise NotImplementedError(f"{type(self).__name__} must implement _token_relevance(prepared, target, ...).")

    def _attributions(
        self, prepared: PreparedInputs, target: TargetType, options: Mapping[str, Any], return_convergence_delta: bool
    ) -> tuple[Tensor, Tensor | None]:
        """`(pixel map, convergence delta or None)`; by default the token relevance spread over pixels."""
        relevance = self._token_relevance(prepared, target, **options)
        return self._pixels(relevance, prepared), None

    def _check_attribute_options(self, options: Mapping[str, Any]) -> None:
        """Refuse options that give no single map per input (e.g. per-head modes); none by default."""

    def _check_start(
        self, prepared: PreparedInputs, target: TargetType, initial_relevance: Tensor | None = None
    ) -> Tensor | None:
        """Before the forward pass: the explicitly asked start (checked), or None for the model's own.

        Class-agnostic methods call this, run the forward pass, then :meth:`_start`.
        """
        pixel_values = prepared.pixel_values
        if isinstance(target, TextPrompts):  # the image's own start; the prompt cannot change it
            self._warn_target_ignored(target, PROMPT_SPECIFIC_METHODS, force=True)
            target = None
        explicit = explicit_start(
            target, initial_relevance, self._adapter, prepared.layout, pixel_values.shape[0], pixel_values.device
        )
        self._warn_target_ignored(target, CLASS_SPECIFIC_METHODS)
        return explicit

    def _start(self, prepared: PreparedInputs, explicit: Tensor | None) -> Tensor:
        """After the forward pass: the start relevance `(batch_size, num_tokens)`."""
        pixel_values = prepared.pixel_values
        return resolve_start(explicit, self._adapter, prepared.layout, pixel_values.shape[0], pixel_values.device)

    @property
    def attention_sites(self) -> list[AttentionSite]:
        """The model's attention layers, input side first."""
        return self._adapter.attention_sites()

    def token_layout(self, inputs: Tensor | tuple[Tensor], additional_forward_args: Any = None) -> TokenLayout:
        """Which tokens are special and which are patches, on what grid, for these inputs.

        Parameters
        ----------
        inputs : Tensor or 1-tuple of Tensor
            ``pixel_values`` of shape `(batch_size, channels, height, width)`.
        additional_forward_args : tuple, dict or object, optional
            Extra model arguments (``interpolate_pos_encoding`` decides the allowed sizes).
        """
        return self._prepare(inputs, additional_forward_args).layout

    def _prepare(self, inputs: object, additional_forward_args: Any) -> PreparedInputs:
        pixel_values, is_tuple = format_pixel_inputs(inputs)
        args, kwargs = forward_arguments(additional_forward_args)
        named = bound_forward_arguments(self._adapter.forward_module, pixel_values, args, kwargs)
        check_forward_arguments(self._adapter, named)
        given = {name for name, value in named.items() if value is not None}
        reserved = sorted(given & set(self._adapter.forward_kwargs(pixel_values)))
        if reserved:
            raise ValueError(
                f"{', '.join(reserved)} is set by the explanation itself for {type(self.model).__name__} "
                f"(see the adapter {type(self._adapter).__name__}); call without it."
            )
        layout = check_pixel_values(pixel_values, self._adapter, bool(named.get("interpolate_pos_encoding")))
        return PreparedInputs(pixel_values, is_tuple, args, kwargs, layout)

    def _record(self, prepared: PreparedInputs, sites: list[AttentionSite], compute) -> list[Tensor]:
        """One forward pass (no grad, eval mode) recording ``compute(state)`` for each site."""
        token_counts: list[int] = []

        def counted(layer: LayerProjections):
            token_counts.append(layer.num_tokens)
            return compute(layer)

        kwargs = {**self._adapter.forward_kwargs(prepared.pixel_values), **prepared.kwargs}
        with evaluation_mode(self.model), torch.no_grad(), self._adapter.explaining():
            with record_layers(sites, counted, capture=self.attention_capture) as kept:
                self._adapter.forward_module(prepared.pixel_values, *prepared.args, **kwargs)
        unrecorded = [site.layer_index for site, value in zip(sites, kept, strict=True) if value is None]
        if unrecorded:
            raise RuntimeError(f"The forward pass did not run attention layers {unrecorded}.")
        num_tokens = token_counts[0]
        if num_tokens != prepared.layout.num_tokens:
            layout = prepared.layout
            raise RuntimeError(
                f"The model ran on {num_tokens} tokens, but the adapter expected {layout.num_tokens} "
                f"({layout.num_special_tokens} special + {layout.grid[0]}x{layout.grid[1]} patches)."
            )
        return kept

    def _check_finite(self, relevance: Tensor, layers: Sequence[Tensor], prepared: PreparedInputs) -> Tensor:
        """Return ``relevance``, or raise a ValueError naming the first layer that went non-finite.

        One reduction on the result; the layers are scanned only when it is not finite.
        """
        if bool(torch.isfinite(relevance.sum())):
            return relevance
        where = next((index for index, matrix in enumerate(layers) if not bool(torch.isfinite(matrix).all())), None)
        pixel_values = prepared.pixel_values
        dtype = next(self.model.parameters()).dtype
        largest = float(pixel_values.detach().abs().amax())
        place = (
            f"in layer {where} (0 = nearest the input) of {len(layers)}: its attention probabilities or value "
            f"vectors are NaN or infinite, i.e. the model's activations overflowed {dtype}"
            if where is not None
            else "while propagating (every layer's matrix is finite)"
        )
        raise ValueError(
            f"Relevance became non-finite {place}. The input reaches |pixel_values| = {largest:.3g}; an image "
            "processor's output is normally within a few units. Check the input's scaling and normalisation "
            "(use the model's image processor), or run the model in float32."
        )

    def _warn_target_ignored(self, target: object, alternatives: str, force: bool = False) -> None:
        """Say once per instance that a classifier's ``target`` (or a prompt) does not change this method's map."""
        relevant = force or (target is not None and self._adapter.is_classifier)
        if not relevant or getattr(self, "_warned_target", False):
            return
        self._warned_target = True
        warnings.warn(
            f"{type(self).__name__} is class-agnostic: its map starts where the model's output is read "
            f"and does not depend on target={target!r} (by design; the paper explains label-free models). "
            f"For class-specific maps use {alternatives}. This warning is shown once per instance.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )

    def _pixels(self, relevance: Tensor, prepared: PreparedInputs) -> Tensor:
        """`(batch, num_tokens)` relevance -> `(batch, channels, height, width)` pixel map."""
        layout = prepared.layout
        return patch_relevance_to_pixels(relevance[:, layout.patch_slice], layout, prepared.pixel_values.shape)

    @property
    def multiplies_by_inputs(self) -> bool:
        """False: relevance is not multiplied by the inputs (Captum's flag for its metrics)."""
        return False
