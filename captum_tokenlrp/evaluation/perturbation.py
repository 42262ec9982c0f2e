"""Faithfulness: how fast the model's output falls when the patches a map ranks highest are removed.

Patches are removed in 10 % steps, most relevant first (MoRF) and least relevant first (LeRF),
and the target score is recorded after each step. A faithful map makes the MoRF curve fall fast
(small area) and the LeRF curve stay high (large area); the area between them, LeRF − MoRF
(the "ABPC" of AttnLRP, Achtibat et al. 2024), summarises both. Both orders delete; the LeRF
curve is the one some papers call "insertion" in reverse (keeping the most relevant patches).

Batched: one forward pass per step for the whole batch and both orders.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._adapters import adapter_for
from .._core.base import evaluation_mode
from .._core.geometry import block_sums, crop_to_grid
from .._utils.validation import class_indices
from ._maps import Sign, apply_sign, attribution_map

Baseline = Literal["mean", "blur"]
Score = Literal["probability", "sigmoid", "cosine"]


@dataclass(frozen=True)
class PerturbationCurves:
    """Target score after removing each fraction of the patches.

    Attributes
    ----------
    fractions : Tensor
        `(num_steps + 1,)` share of patches removed, from 0 to 1.
    morf, lerf : Tensor
        `(batch_size, num_steps + 1)` score with the most (least) relevant patches removed first.
    """

    fractions: Tensor
    morf: Tensor
    lerf: Tensor

    @staticmethod
    def _area(curve: Tensor, fractions: Tensor) -> Tensor:
        # Trapezoid rule written out: numpy 2.4 removed np.trapz, and the rule is one line.
        return ((curve[:, 1:] + curve[:, :-1]) / 2 * fractions.diff()).sum(dim=1)

    @property
    def auc_morf(self) -> Tensor:
        """`(batch_size,)` area under the MoRF curve (lower is more faithful)."""
        return self._area(self.morf, self.fractions)

    @property
    def auc_lerf(self) -> Tensor:
        """`(batch_size,)` area under the LeRF curve (higher is more faithful)."""
        return self._area(self.lerf, self.fractions)

    @property
    def area_between(self) -> Tensor:
        """`(batch_size,)` LeRF area minus MoRF area (higher is more faithful)."""
        return self.auc_lerf - self.auc_morf


def gaussian_blur(pixel_values: Tensor, sigma: float) -> Tensor:
    """Blur `(batch, channels, H, W)` with a Gaussian of standard deviation ``sigma`` pixels
    (separable, reflected borders)."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=pixel_values.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(pixel_values.dtype)
    channels = pixel_values.shape[1]
    blurred = pixel_values
    for shape, padding in (((1, -1), (radius, radius, 0, 0)), ((-1, 1), (0, 0, radius, radius))):
        weight = kernel.reshape(1, 1, *shape).expand(channels, 1, *kernel.reshape(shape).shape).contiguous()
        blurred = F.conv2d(F.pad(blurred, padding, mode="reflect"), weight, groups=channels)
    return blurred


def _baseline_image(pixel_values: Tensor, baseline: Baseline | Tensor, patch: tuple[int, int]) -> Tensor:
    if isinstance(baseline, Tensor):
        try:
            return torch.broadcast_to(baseline.to(pixel_values), pixel_values.shape)
        except RuntimeError as error:
            raise ValueError(
                f"A baseline tensor must broadcast to the inputs' shape {tuple(pixel_values.shape)}, "
                f"got {tuple(baseline.shape)}."
            ) from error
    if baseline == "mean":
        return pixel_values.mean(dim=(2, 3), keepdim=True).expand_as(pixel_values)
    if baseline == "blur":
        return gaussian_blur(pixel_values, sigma=max(patch) / 2)
    raise ValueError(f"baseline must be 'mean', 'blur' or a tensor, got {baseline!r}.")


def _patch_ranking(maps: Tensor, generator: torch.Generator) -> Tensor:
    """`(batch, num_patches)` patch indices, most relevant first; ties broken at random (a flat
    map must not favour the top-left patches)."""
    batch, num_patches = maps.shape
    shuffle = torch.stack([torch.randperm(num_patches, generator=generator) for _ in range(batch)])
    shuffled = torch.gather(maps.cpu(), 1, shuffle)
    order = torch.sort(shuffled, dim=1, descending=True, stable=True).indices
    return torch.gather(shuffle, 1, order).to(maps.device)


class _TargetScore:
    """The score a perturbation curve follows, computed in eval mode without gradients."""

    def __init__(self, model: Callable[..., Any], score: Score | None, forward_kwargs: dict[str, Any]) -> None:
        self.model, self.forward_kwargs = model, forward_kwargs
        if score is None:
            try:
                adapter = adapter_for(model)
            except TypeError:
                score = "probability"  # any other forward function: its output is taken as logits
            else:
                multi_label = getattr(adapter.model.config, "problem_type", None) == "multi_label_classification"
                score = ("sigmoid" if multi_label else "probability") if adapter.is_classifier else "cosine"
        if score not in ("probability", "sigmoid", "cosine"):
            raise ValueError(
                f"score must be 'probability', 'sigmoid', 'cosine' or None (chosen from the model), got {score!r}."
            )
        self.score = score

    def outputs(self, pixel_values: Tensor) -> Tensor:
        output = self.model(pixel_values, **self.forward_kwargs)
        if self.score in ("probability", "sigmoid"):
            logits = (output.logits if hasattr(output, "logits") else output).float()
            return torch.softmax(logits, dim=-1) if self.score == "probability" else torch.sigmoid(logits)
        tokens = output.last_hidden_state if hasattr(output, "last_hidden_state") else output
        if isinstance(tokens, tuple):
            tokens = tokens[0]
        return (tokens[:, 0] if tokens.dim() == 3 else tokens).float()

    def against(self, outputs: Tensor, reference: Tensor, target: Tensor | None) -> Tensor:
        if self.score != "cosine":
            return outputs.gather(1, target[:, None])[:, 0]
        return F.cosine_similarity(outputs, reference, dim=-1)


def _class_names_to_indices(target: object, model: object) -> object:
    """``target`` with class names (one, or one per image) replaced by their index in ``config.id2label``,
    as the attribution methods take them; integer targets unchanged."""
    if not (isinstance(target, str) or (isinstance(target, (list, tuple)) and any(isinstance(t, str) for t in target))):
        return target
    try:
        adapter = adapter_for(model)
    except TypeError:
        raise TypeError(
            f"target {target!r} is a class name, but model is a forward function without a HuggingFace "
            "config.id2label to look names up in. Pass class indices, or the HuggingFace classifier itself."
        ) from None
    return class_indices(target, adapter.model, adapter.is_classifier)


def _targets(target: object, outputs: Tensor, score: str, model: object = None) -> Tensor | None:
    # Names first, also for the cosine score: a class name on a model without classes is a mistake to report,
    # not a target to ignore.
    target = _class_names_to_indices(target, model)
    if score == "cosine":
        return None
    batch, num_classes = outputs.shape
    if target is None:
        return outputs.argmax(dim=1)
    chosen = torch.as_tensor(target, device=outputs.device)
    if chosen.is_floating_point() or chosen.dim() > 1:
        raise TypeError(
            f"target must be an int, a class name, a sequence of them or an integer tensor, got {target!r}."
        )
    chosen = chosen.expand(batch) if chosen.dim() == 0 else chosen
    if chosen.shape != (batch,):
        raise ValueError(f"target must give one class per image ({batch}), got {tuple(chosen.shape)}.")
    if ((chosen < 0) | (chosen >= num_classes)).any():
        raise ValueError(f"target classes must lie in [0, {num_classes}), got {chosen.tolist()}.")
    return chosen.long()


def perturbation_curves(
    model: nn.Module | Callable[..., Any],
    inputs: Tensor | tuple[Tensor],
    attributions: Tensor | tuple[Tensor],
    *,
    target: int | str | Sequence[int] | Sequence[str] | Tensor | None = None,
    patch_size: int | tuple[int, int] | None = None,
    num_steps: int = 10,
    baseline: Baseline | Tensor = "mean",
    score: Score | None = None,
    sign: Sign = "signed",
    seed: int = 0,
    additional_forward_args: dict[str, Any] | None = None,
) -> PerturbationCurves:
    """MoRF and LeRF deletion curves of a batch of attribution maps.

    Parameters
    ----------
    model : nn.Module or callable
        A HuggingFace ViT (classifier or backbone) or any forward function of ``inputs``
        returning logits.
    inputs : Tensor or 1-tuple of Tensor
        ``pixel_values`` `(batch_size, channels, height, width)`, as the model takes them.
    attributions : Tensor or 1-tuple of Tensor
        The maps to test: `(batch_size, channels, height, width)` at pixel resolution (summed over
        channels and patches) or `(batch_size, rows, cols)`, one value per patch.
    target : int, str, sequence of int or str, or Tensor, optional
        Class whose probability is followed (classifiers), by index or by name of
        ``model.config.id2label`` (one for the batch or one per image); default: the class the model
        predicts on the unperturbed image.
    patch_size : int or (int, int), optional
        The removal unit; default: the model's patch size (required for other forward functions).
    num_steps : int, default 10
        Steps from 0 to all patches removed (10: 10 % each).
    baseline : "mean", "blur" or Tensor, default "mean"
        What replaces a removed patch: each image's mean colour, the image blurred with a
        Gaussian of standard deviation half a patch, or a tensor broadcastable to ``inputs``.
    score : "probability", "sigmoid", "cosine" or None
        Softmax probability of ``target`` (classifiers), its sigmoid probability (multi-label
        classifiers, ``config.problem_type == "multi_label_classification"``), or cosine similarity
        of the CLS embedding to the unperturbed image's (label-free models such as DINO). Default:
        chosen from the model.
    sign : "signed", "positive" or "absolute", default "signed"
        How the ranking reads the map: most relevant = largest value (signed), or largest magnitude.
    seed : int
        Seed of the random tie-break between equally relevant patches.
    additional_forward_args : dict, optional
        Keyword arguments for every forward, e.g. ``{"interpolate_pos_encoding": True}``.

    Returns
    -------
    PerturbationCurves
        Curves `(batch_size, num_steps + 1)` and their areas.
    """
    if isinstance(inputs, tuple) and len(inputs) == 1:
        inputs = inputs[0]
    if not isinstance(inputs, Tensor) or inputs.dim() != 4:
        raise ValueError(
            "inputs must be pixel_values of shape (batch_size, channels, height, width), got "
            f"{tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__}."
        )
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}.")
    batch, _, height, width = inputs.shape
    if patch_size is None:
        try:
            patch_size = adapter_for(model).token_layout(height, width).patch_size
        except TypeError as error:
            raise ValueError("patch_size is required when model is not a supported HuggingFace ViT.") from error
    patch = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    rows, cols = height // patch[0], width // patch[1]
    maps = apply_sign(attribution_map(attributions, batch), sign)
    if maps.shape[-2:] == (height, width):
        maps = block_sums(crop_to_grid(maps, patch), patch)
    elif maps.shape[-2:] != (rows, cols):
        raise ValueError(
            f"attributions must be at pixel resolution {height}x{width} or on the {rows}x{cols} patch grid, "
            f"got {tuple(maps.shape[-2:])}."
        )
    scorer = _TargetScore(model, score, additional_forward_args or {})
    generator = torch.Generator().manual_seed(seed)
    ranking = _patch_ranking(maps.flatten(1), generator)
    num_patches = rows * cols
    filler = _baseline_image(inputs, baseline, patch)
    fractions = torch.linspace(0, 1, num_steps + 1)
    context = evaluation_mode(model) if isinstance(model, nn.Module) else nullcontext()
    with context, torch.no_grad():
        reference = scorer.outputs(inputs)
        targets = _targets(target, reference, scorer.score, model)
        both = torch.cat([ranking, ranking.flip(1)])  # MoRF rows, then LeRF rows
        # Both orders run as one batch: inputs, fillers, references and targets doubled once.
        doubled, fill = inputs.repeat(2, 1, 1, 1), filler.repeat(2, 1, 1, 1)
        paired_reference = reference.repeat(2, 1)
        paired_targets = None if targets is None else targets.repeat(2)
        curves = []
        for fraction in fractions.tolist():
            removed = round(fraction * num_patches)
            keep = torch.ones(2 * batch, num_patches, device=inputs.device, dtype=inputs.dtype)
            keep.scatter_(1, both[:, :removed], 0.0)
            keep = keep.reshape(2 * batch, 1, rows, cols)
            keep = keep.repeat_interleave(patch[0], 2).repeat_interleave(patch[1], 3)
            keep = F.pad(keep, (0, width - cols * patch[1], 0, height - rows * patch[0]), value=1.0)
            perturbed = doubled * keep + fill * (1 - keep)
            curves.append(scorer.against(scorer.outputs(perturbed), paired_reference, paired_targets).cpu())
    curves = torch.stack(curves, dim=1)
    return PerturbationCurves(fractions, curves[:batch], curves[batch:])
