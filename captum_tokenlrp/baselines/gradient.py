"""Gradient baselines: Generic Attention Explainability, Integrated Gradients and GradCAM.

Gradient methods need one scalar per image to explain:

- a classifier (``ViTForImageClassification``): the logit of the target class
  (default: the predicted class);
- a model without labels (``ViTModel``, DINO): the projection of the output CLS
  embedding ``e(x)`` (``last_hidden_state[:, 0]``) onto a fixed reference
  direction ``r``, ``s(x) = <e(x), r> / ||r||``. By default ``r`` is the image's
  own CLS embedding, detached: ``s`` measures how strongly the image expresses
  its own representation, and its gradient at the image is ``J^T r / ||r||``
  (a cosine similarity to the image's own embedding would sit at its maximum,
  with zero gradient). Pass another image's embedding as ``reference`` to ask
  what makes two images alike. Caveat: when the final LayerNorm has unit scale
  and zero shift (an untrained model), ``||e||`` is constant, so the default
  score is too and its gradient vanishes; use another reference there.

:class:`ExplainedForward` is that scalar as a Captum ``forward_func``, ready for
``IntegratedGradients``, ``LayerGradCam`` (on :attr:`ExplainedForward.patch_grid`:
the patch tokens entering the last block as a `(batch, hidden, rows, cols)`
grid; the last block's *output* patch tokens never reach CLS, so their
gradient is zero), ``Saliency``, ``NoiseTunnel`` and the rest.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from captum.attr import IntegratedGradients, LayerGradCam
from torch import Tensor, nn

from .._adapters import TokenLayout, adapter_for
from .._core.attention_gradients import attention_gradients
from .._core.base import PreparedInputs, TokenAttribution, evaluation_mode
from .._utils.geometry import grid_to_tokens, patch_sums, tokens_to_grid
from .._utils.stack import user_stacklevel
from .._utils.validation import TargetType, TextPrompts, parse_targets, parse_text_target

#: Below this, in absolute value everywhere, a gradient map is reported as numerically zero.
VANISHING = 1e-7

__all__ = [
    "ExplainedForward",
    "GenericAttentionExplainability",
    "TokenGradCAM",
    "TokenIntegratedGradients",
    "patch_sums",
]


class PatchGridView(nn.Module):
    """Identity on `(batch, hidden, rows, cols)`: a module Captum's layer methods can hook."""

    def forward(self, grid: Tensor) -> Tensor:
        return grid


class ExplainedForward:
    """The scalar a gradient method explains, as a Captum ``forward_func``.

    ``forward(pixel_values, reference=None)`` returns class logits `(batch, num_labels)` for a
    classifier (Captum's ``target`` picks the class) and the embedding score
    ``<e(x), r> / ||r||`` of shape `(batch,)` for a model without labels.

    Parameters
    ----------
    model : nn.Module
        A supported HuggingFace ViT. It is not modified; a hook that routes the patch tokens
        entering the last block through :attr:`patch_grid` lives only for the duration of each call.
    **forward_kwargs
        Fixed keyword arguments for the model, e.g. ``interpolate_pos_encoding=True``.

    Notes
    -----
    For path methods (Integrated Gradients) pass ``reference`` from the *original* image,
    e.g. ``additional_forward_args=(fwd.reference(x),)``: the explained function must not
    change along the path. With ``reference=None`` each call uses its own input's embedding.
    """

    def __init__(
        self, model: nn.Module, text: TextPrompts | Mapping[str, Any] | None = None, **forward_kwargs: Any
    ) -> None:
        self._adapter = adapter_for(model)
        self.model = self._adapter.model
        self.forward_kwargs = forward_kwargs
        #: Prompts of an image-text model: the output is then the image-text similarity per prompt.
        self.text = None if text is None else parse_text_target(text, self._adapter, None)
        #: Hook target for ``LayerGradCam``: the last block's patch tokens as a grid.
        self.patch_grid = PatchGridView()

    @property
    def is_classifier(self) -> bool:
        """Whether the output is logits (a classifier's, or image-text similarities per prompt) rather
        than a label-free embedding score."""
        return self._adapter.is_classifier or self.text is not None

    def reference(self, pixel_values: Tensor) -> Tensor:
        """Image embeddings `(batch, hidden_size)` of ``pixel_values`` (no grad), for label-free models."""
        options = {**self._adapter.forward_kwargs(pixel_values), **self.forward_kwargs}
        with torch.no_grad(), evaluation_mode(self.model), self._adapter.explaining():
            return self._adapter.output_embedding(self._adapter.forward_module(pixel_values, **options)).detach()

    @contextmanager
    def _route_patches(self, layout: TokenLayout) -> Iterator[None]:

        def route(_module: nn.Module, args: tuple) -> tuple:
            hidden = args[0]
            return (grid_to_tokens(self.patch_grid(tokens_to_grid(hidden, layout)), hidden, layout), *args[1:])

        handle = self._adapter.transformer_blocks()[-1].register_forward_pre_hook(route)
        try:
            yield
        finally:
            handle.remove()

    def __call__(
        self,
        pixel_values: Tensor,
        reference: Tensor | Mapping[str, Any] | None = None,
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> Tensor:
        """The explained output for ``pixel_values`` `(batch, channels, height, width)`.

        ``reference`` (label-free models): `(batch, hidden_size)` directions, see :meth:`reference`.
        ``forward_kwargs``: more keyword arguments for the model, for this call. Captum passes
        ``additional_forward_args`` positionally, so a mapping in place of ``reference`` is taken as
        ``forward_kwargs`` (``infidelity(fwd, ..., additional_forward_args={"interpolate_pos_encoding":
        True})`` works).
        """
        if isinstance(reference, Mapping):
            reference, forward_kwargs = None, reference
        options = {**self._adapter.forward_kwargs(pixel_values), **self.forward_kwargs, **(forward_kwargs or {})}
        height, width = pixel_values.shape[-2:]
        with self._adapter.explaining(), self._route_patches(self._adapter.token_layout(height, width)):
            if self.text is not None:  # image-text similarity, (batch, num_prompts)
                text = self.text.model_inputs(pixel_values.device)
                return self.model(pixel_values=pixel_values, **text, **options).logits_per_image
            output = self._adapter.forward_module(pixel_values, **options)
        if self._adapter.is_classifier:
            return output.logits
        embedding = self._adapter.output_embedding(output)
        direction = embedding.detach() if reference is None else reference.to(embedding.dtype)
        if direction.shape != embedding.shape:
            raise ValueError(
                f"reference must have shape {tuple(embedding.shape)} (one embedding per sample), "
                f"got {tuple(direction.shape)}."
            )
        return (embedding * direction).sum(dim=-1) / direction.norm(dim=-1).clamp_min(1e-12)


def warn_if_vanishing(method: object, values: Tensor, what: str, why: str) -> None:
    """Warn when some sample's ``values`` `(batch, ...)` are numerically zero: every entry below
    :data:`VANISHING` in absolute value (a vanishing gradient; ``why`` says what likely causes it)."""
    largest = values.detach().abs().flatten(1).amax(dim=1)
    zero = (largest < VANISHING).nonzero().flatten().tolist()
    if zero:
        warnings.warn(
            f"{type(method).__name__}: the {what} of sample(s) {zero} is numerically zero (largest |value| "
            f"{float(largest.min()):.3g} < {VANISHING:g}): the explained output's gradient vanishes, {why}",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


class _GradientAttribution(TokenAttribution):
    """Shared target handling: class for a classifier (default predicted), none for label-free models."""

    target_sensitive = True

    def _explained(self, prepared: PreparedInputs, target: object = None) -> ExplainedForward:
        if prepared.args:
            raise ValueError(
                "Gradient baselines take extra model arguments by keyword: pass additional_forward_args "
                "as a dict, e.g. {'interpolate_pos_encoding': True}."
            )
        text = target if isinstance(target, TextPrompts) else None
        explained = ExplainedForward(self.model, text=text, **prepared.kwargs)
        explained._adapter = self._adapter  # one adapter: what it records in the forward is read for the start
        return explained

    def _targets(self, explained: ExplainedForward, prepared: PreparedInputs, target: TargetType) -> Tensor | None:
        pixel_values = prepared.pixel_values
        if isinstance(target, TextPrompts):  # one prompt: its similarity, column 0
            return torch.zeros(len(pixel_values), dtype=torch.long, device=pixel_values.device)
        if not explained.is_classifier:
            if target is not None:
                raise ValueError(
                    "A model without labels explains the CLS embedding score (see ExplainedForward); "
                    f"target must be None, got {target!r}."
                )
            return None
        if target is None:
            with torch.no_grad(), evaluation_mode(self.model):
                return explained(pixel_values).argmax(dim=-1)
        return parse_targets(target, self._adapter, prepared.layout, len(pixel_values)).to(pixel_values.device)

    def _warn_if_vanishing(self, maps: Tensor, patch_slice: slice | None = None) -> Tensor:
        """Return ``maps``; warn when some sample's map is numerically zero (a vanishing gradient).

        ``maps`` is `(batch, ...)`; with ``patch_slice`` only those entries of the last axis count
        (the patch tokens: GAE keeps a constant 1 on CLS). Numerically zero: every entry below
        :data:`VANISHING` in absolute value, which a per-panel colour scale would still draw as a map.
        """
        values = maps.detach()[..., patch_slice] if patch_slice is not None else maps.detach()
        warn_if_vanishing(
            self,
            values,
            "map",
            "as in a random-init model. Its colours would show float32 rounding noise, not relevance.",
        )
        return maps

    @staticmethod
    def _scalar(output: Tensor, targets: Tensor | None) -> Tensor:
        if targets is None:
            return output
        return output.gather(1, targets[:, None])[:, 0]


class GenericAttentionExplainability(_GradientAttribution):
    """Generic Attention Explainability (Chefer, Gur & Wolf, ICCV 2021) for self-attention.

    Per layer ``A_bar = mean_h (grad_A ⊙ A)^+``; starting from ``R = I``,
    ``R <- R + A_bar R`` from the first layer to the last; the map is the explained
    token's row of ``R`` (CLS). One forward and one backward pass for the whole batch.

    ``grad_A`` is obtained without switching the model's attention implementation:
    since the attention output is ``sum_j A_ij v_j`` (per head), ``dS/dA_ij = <dS/dctx_i, v_j>``,
    with ``dS/dctx`` the gradient at the output projection's input. ``A`` is recomputed in
    float32 from the hooked query and key projections while the model's own attention kernel
    runs and carries the gradient (the recorder's ``"recompute"`` mode, see
    :mod:`captum_tokenlrp._core.attention_gradients`). No parameter's ``.grad`` is touched.

    ``token_relevance`` gives `(batch_size, num_tokens)`; ``target`` is the class for a
    classifier (default: the predicted one) and must be None for a model without labels (its CLS
    embedding score is explained, see :class:`ExplainedForward`).

    One class for vision and text models: on a text model the instance is a
    :class:`~captum_tokenlrp.baselines.TextGenericAttentionExplainability` (its read-out of the
    explained scalar: a classifier's logit, a language model's next-token logit, an embedding
    score, with its options ``initial_relevance``, ``pooling``, ``position``).
    """

    modalities: ClassVar[tuple[str, ...]] = ("image", "text")
    modality_implementations: ClassVar[Mapping[str, str]] = MappingProxyType(
        {"text": "captum_tokenlrp.baselines.text:TextGenericAttentionExplainability"}
    )

    def _token_relevance(self, prepared: PreparedInputs, target: TargetType) -> Tensor:
        explained = self._explained(prepared, target)
        targets = self._targets(explained, prepared, target)
        pixel_values = prepared.pixel_values.detach().clone().requires_grad_(True)
        with evaluation_mode(self.model):
            layers = attention_gradients(self.attention_sites, lambda: self._scalar(explained(pixel_values), targets))
        batch, tokens = pixel_values.shape[0], prepared.layout.num_tokens
        joint = torch.eye(tokens, device=pixel_values.device).expand(batch, tokens, tokens).clone()
        weighted = []
        for layer in layers:
            weighted.append(layer.positive_contribution.mean(dim=1))
            joint = joint + weighted[-1] @ joint
        # The explained token(s): CLS, or where the classifier reads (e.g. DeiT's two tokens).
        start = self._start(prepared, None)  # where the model's output is read
        relevance = self._check_finite(torch.bmm(start[:, None], joint)[:, 0], weighted, prepared)
        return self._warn_if_vanishing(relevance, prepared.layout.patch_slice)

    @classmethod
    def get_name(cls) -> str:
        return "Generic Attention Explainability"


class TokenIntegratedGradients(_GradientAttribution):
    """Captum's Integrated Gradients on the explained scalar, with token maps by patch sums.

    Parameters
    ----------
    model : nn.Module
        A supported HuggingFace ViT.
    n_steps : int, default 50
        Riemann steps of the path integral.
    internal_batch_size : int, optional
        Passed to Captum to bound memory.
    tokenizer : tokenizer or processor, optional
        Tokenizes prompt strings given as ``target`` to an image-text model (CLIP, SigLIP).

    Options
    -------
    baselines : Tensor or float, optional
        Captum's IG baselines (default: zeros).

    ``token_relevance`` sums the attributions over each patch, `(batch_size, num_tokens)` (signed;
    special tokens 0); ``attribute`` returns Captum's pixel attributions and, with
    ``return_convergence_delta=True``, Captum's completeness error per sample,
    ``sum(attributions) - (F(inputs) - F(baselines))``.

    One class for vision and text models: on a text model the instance is a
    :class:`~captum_tokenlrp.baselines.TextLayerIntegratedGradients` (Captum's
    ``LayerIntegratedGradients`` on the token embeddings; its constructor and options).
    """

    modalities: ClassVar[tuple[str, ...]] = ("image", "text")
    modality_implementations: ClassVar[Mapping[str, str]] = MappingProxyType(
        {"text": "captum_tokenlrp.baselines.text:TextLayerIntegratedGradients"}
    )
    relevance_options: ClassVar[Mapping[str, Any]] = MappingProxyType({"baselines": None})

    def __init__(
        self, model: nn.Module, n_steps: int = 50, internal_batch_size: int | None = None, *, tokenizer: Any = None
    ) -> None:
        super().__init__(model, tokenizer=tokenizer)
        self.n_steps = n_steps
        self.internal_batch_size = internal_batch_size

    def _integrated_gradients(
        self,
        prepared: PreparedInputs,
        target: TargetType,
        baselines: Tensor | float | None,
        return_convergence_delta: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        explained = self._explained(prepared, target)
        targets = self._targets(explained, prepared, target)
        extra = None if explained.is_classifier else (explained.reference(prepared.pixel_values),)
        with evaluation_mode(self.model):
            result = IntegratedGradients(explained).attribute(
                prepared.pixel_values,
                baselines=baselines,
                target=targets,
                additional_forward_args=extra,
                n_steps=self.n_steps,
                internal_batch_size=self.internal_batch_size,
                return_convergence_delta=return_convergence_delta,
            )
        self._warn_if_vanishing(result[0] if return_convergence_delta else result)
        return result

    def _token_relevance(self, prepared: PreparedInputs, target: TargetType, *, baselines: object) -> Tensor:
        return patch_sums(self._integrated_gradients(prepared, target, baselines), prepared.layout)

    def _attributions(
        self, prepared: PreparedInputs, target: TargetType, options: Mapping[str, Any], return_convergence_delta: bool
    ) -> tuple[Tensor, Tensor | None]:
        # Captum's own pixel attributions (not patch-uniform), and its completeness error.
        result = self._integrated_gradients(prepared, target, options["baselines"], return_convergence_delta)
        return result if return_convergence_delta else (result, None)

    def has_convergence_delta(self) -> bool:
        """True, as Captum's ``IntegratedGradients``."""
        return True

    @classmethod
    def get_name(cls) -> str:
        return "Integrated Gradients"


class TokenGradCAM(_GradientAttribution):
    """Captum's ``LayerGradCam`` on the patch tokens entering the last block, as a patch grid.

    Channels are the hidden dimensions: ``cam = ReLU(sum_d alpha_d * h_d)`` with
    ``alpha_d`` the mean over patches of ``dS/dh_d``. The last block's input is used
    (as pytorch-grad-cam does for ViTs) because its output patch tokens do not reach CLS.

    Options
    -------
    relu : bool, default True
        Keep only the positive part (GradCAM's ReLU).

    ``token_relevance`` gives GradCAM per patch token, `(batch_size, num_tokens)` (special tokens 0).
    """

    relevance_options: ClassVar[Mapping[str, Any]] = MappingProxyType({"relu": True})

    def _token_relevance(self, prepared: PreparedInputs, target: TargetType, *, relu: bool) -> Tensor:
        explained = self._explained(prepared, target)
        targets = self._targets(explained, prepared, target)
        with evaluation_mode(self.model):
            cam = LayerGradCam(explained, explained.patch_grid).attribute(
                prepared.pixel_values, target=targets, relu_attributions=relu
            )
        tokens = self._warn_if_vanishing(cam.flatten(1).detach())
        special = tokens.new_zeros(len(tokens), prepared.layout.num_special_tokens)
        return torch.cat([special, tokens], dim=1)

    @classmethod
    def get_name(cls) -> str:
        return "GradCAM"
