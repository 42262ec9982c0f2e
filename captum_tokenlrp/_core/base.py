"""What every token attribution in this package shares: input handling, the model pass, pixel maps."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from captum.attr import Attribution
from torch import Tensor, nn

from .._adapters import AttentionSite, TokenLayout, adapter_for
from .._utils.pixels import patch_relevance_to_pixels
from .._utils.validation import (
    bound_forward_arguments,
    check_forward_arguments,
    check_pixel_values,
    format_pixel_inputs,
    forward_arguments,
)
from .capture import LayerProjections, record_layers

#: Class-specific methods of the package, named in the warning of class-agnostic ones.
CLASS_SPECIFIC_METHODS = (
    "captum_tokenlrp.baselines.GenericAttentionExplainability, TokenIntegratedGradients or TokenGradCAM"
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
    """Validated inputs of one call."""

    pixel_values: Tensor
    is_tuple: bool
    args: tuple
    kwargs: dict[str, Any]
    layout: TokenLayout


class TokenAttribution(Attribution):
    """Base of the package's attributions: one relevance value per token, and a pixel map from it.

    Subclasses implement :meth:`token_relevance`; :meth:`attribute` spreads the patch tokens'
    relevance uniformly over their pixels (Captum convention: same shape as the input).

    Parameters
    ----------
    model : nn.Module
        A supported HuggingFace vision Transformer (see :func:`supported_model_classes`).
    """

    def __init__(self, model: nn.Module) -> None:
        self._adapter = adapter_for(model)
        # A wrapper (torch.compile, DataParallel, pipeline) is explained through the model inside it.
        model = self._adapter.model
        super().__init__(model)
        self.model = model

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
        named = bound_forward_arguments(self.model, pixel_values, args, kwargs)
        check_forward_arguments(self._adapter, named)
        layout = check_pixel_values(pixel_values, self._adapter, bool(named.get("interpolate_pos_encoding")))
        return PreparedInputs(pixel_values, is_tuple, args, kwargs, layout)

    def _record(self, prepared: PreparedInputs, sites: list[AttentionSite], compute) -> list[Tensor]:
        """One forward pass (no grad, eval mode) recording ``compute(state)`` for each site."""
        token_counts: list[int] = []

        def counted(layer: LayerProjections):
            token_counts.append(layer.query.shape[1])
            return compute(layer)

        with evaluation_mode(self.model), torch.no_grad(), record_layers(sites, counted) as kept:
            self.model(prepared.pixel_values, *prepared.args, **prepared.kwargs)
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

    def _warn_target_ignored(self, target: object, alternatives: str) -> None:
        """Say once per instance that a classifier's ``target`` does not change this method's map."""
        if target is None or not self._adapter.is_classifier or getattr(self, "_warned_target", False):
            return
        self._warned_target = True
        warnings.warn(
            f"{type(self).__name__} is class-agnostic: on a classifier its map starts where the head reads "
            f"and does not depend on target={target!r} (by design; the paper explains label-free models). "
            f"For class-specific maps use {alternatives}. This warning is shown once per instance.",
            UserWarning,
            stacklevel=4,
        )

    def _pixels(self, relevance: Tensor, prepared: PreparedInputs) -> Tensor:
        """`(batch, num_tokens)` relevance -> `(batch, channels, height, width)` pixel map."""
        layout = prepared.layout
        return patch_relevance_to_pixels(relevance[:, layout.patch_slice], layout, prepared.pixel_values.shape)

    @staticmethod
    def _format(attributions: Tensor, prepared: PreparedInputs) -> Tensor | tuple[Tensor]:
        return (attributions,) if prepared.is_tuple else attributions

    def token_relevance(self, inputs: Tensor | tuple[Tensor], *args: Any, **kwargs: Any) -> Tensor:
        raise NotImplementedError

    @property
    def multiplies_by_inputs(self) -> bool:
        return False
