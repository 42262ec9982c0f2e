"""Localisation: does an attribution map put its relevance on the object?

Every function takes any Captum attribution of image inputs — `(batch_size, channels, height,
width)` at pixel resolution (channels are summed) or a `(batch_size, height, width)` map, which
may be a patch grid coarser than the mask — and a ground-truth mask `(batch_size, height, width)`,
and returns one score per image, `(batch_size,)`.

Resolution: with ``patch_size`` the map is summed over the model's patches and a patch counts as
object when at least ``object_share`` of its pixels are (default one half); without it the
scores are computed at the map's own resolution. A map given as a patch grid is always scored
on that grid.

Sign: relevance is a quantity of evidence *for* the output, so by default negative values count
as zero (``sign="positive"``); ``"absolute"`` scores magnitudes (the usual choice to display
Integrated Gradients), ``"signed"`` the values as they are.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._maps import Sign, aligned


def relevance_mass(
    attributions: Tensor | tuple[Tensor],
    masks: Tensor,
    *,
    patch_size: int | tuple[int, int] | None = None,
    sign: Sign = "positive",
    object_share: float = 0.5,
) -> Tensor:
    r"""Share of the relevance that falls on the object (energy-based pointing game).

    .. math:: \mathrm{mass} = \frac{\sum_{p \in \mathrm{mask}} R_p}{\sum_p R_p}

    (Wang et al. 2020, Score-CAM; Arras et al. 2022, relevance mass accuracy). 1 when all
    relevance is on the object; the object's area share for a uniform map. A map with no
    relevance at all prefers no location and scores like a uniform map.

    Returns
    -------
    Tensor
        `(batch_size,)` in [0, 1] for non-negative maps.
    """
    maps, inside = aligned(attributions, masks, patch_size, sign, object_share)
    total = maps.sum(dim=(1, 2))
    on_object = (maps * inside).sum(dim=(1, 2))
    area = inside.float().mean(dim=(1, 2))
    return torch.where(total != 0, on_object / torch.where(total != 0, total, 1.0), area)


def pointing_game(
    attributions: Tensor | tuple[Tensor],
    masks: Tensor,
    *,
    patch_size: int | tuple[int, int] | None = None,
    sign: Sign = "positive",
    object_share: float = 0.5,
) -> Tensor:
    """Whether the most relevant location lies on the object (Zhang et al. 2018).

    1 for a hit, 0 for a miss. When several locations share the maximum (a map that is
    constant over each patch, viewed at pixel resolution, or a flat map), the score is the
    share of those tied locations on the object: the expected hit rate of picking one of them
    at random, so ties neither help nor hurt a method.

    Returns
    -------
    Tensor
        `(batch_size,)` in [0, 1].
    """
    maps, inside = aligned(attributions, masks, patch_size, sign, object_share)
    flat, inside = maps.flatten(1), inside.flatten(1).float()
    top = flat == flat.max(dim=1, keepdim=True).values
    return (top * inside).sum(dim=1) / top.sum(dim=1)


def mean_threshold_iou(
    attributions: Tensor | tuple[Tensor],
    masks: Tensor,
    *,
    patch_size: int | tuple[int, int] | None = None,
    sign: Sign = "positive",
    object_share: float = 0.5,
) -> Tensor:
    """IoU of the object mask with the map binarised at its own mean.

    The protocol of Chefer et al. (2021) for ImageNet-segmentation: a location is foreground
    when its relevance is strictly above the map's mean. Chefer et al. report the mean of the
    foreground and background IoU accumulated over a dataset; this returns the foreground IoU
    per image, so means and confidence intervals can be taken over images. A flat map has no
    location above its mean and scores 0.

    Returns
    -------
    Tensor
        `(batch_size,)` in [0, 1].
    """
    maps, inside = aligned(attributions, masks, patch_size, sign, object_share)
    predicted = maps > maps.mean(dim=(1, 2), keepdim=True)
    intersection = (predicted & inside).sum(dim=(1, 2)).float()
    union = (predicted | inside).sum(dim=(1, 2)).float()
    return torch.where(union > 0, intersection / union.clamp_min(1), torch.ones_like(union))


def localisation_scores(
    attributions: Tensor | tuple[Tensor],
    masks: Tensor,
    *,
    patch_size: int | tuple[int, int] | None = None,
    sign: Sign = "positive",
    object_share: float = 0.5,
) -> dict[str, Tensor]:
    """All three localisation scores, `(batch_size,)` each, at the patch resolution given by
    ``patch_size`` (keys ``"mass"``, ``"pointing"``, ``"iou"``) and, when ``patch_size`` is
    given, also at the map's own resolution (the same keys with the suffix ``"_pixel"``)."""
    metrics = {"mass": relevance_mass, "pointing": pointing_game, "iou": mean_threshold_iou}
    options = {"sign": sign, "object_share": object_share}
    scores = {name: metric(attributions, masks, patch_size=patch_size, **options) for name, metric in metrics.items()}
    if patch_size is not None:
        for name, metric in metrics.items():
            scores[f"{name}_pixel"] = metric(attributions, masks, **options)
    return scores


def class_localisation_scores(
    attributions: Tensor | tuple[Tensor],
    object_masks: Tensor,
    target: Tensor,
    *,
    patch_size: int | tuple[int, int] | None = None,
    sign: Sign = "positive",
    object_share: float = 0.5,
) -> dict[str, Tensor]:
    """Scores of a map that explains one of several objects in each image (a class of a multi-label model).

    Parameters
    ----------
    attributions : Tensor or 1-tuple of Tensor
        The map explaining object ``target``, as for :func:`relevance_mass`.
    object_masks : Tensor
        bool `(batch_size, num_objects, height, width)`: one mask per object (or per class, empty
        where the class is absent). Objects with an empty mask (at the scored resolution) are absent.
    target : Tensor
        `(batch_size,)` int: which object of ``object_masks`` the map explains; it must be present.

    Returns
    -------
    dict of str to Tensor
        `(batch_size,)` each:

        - ``"mass"``: relevance on the target object over the relevance on all present objects
          (``1 / num_objects``-like for a map that does not tell them apart); the target's share of
          their area when no object holds relevance;
        - ``"pointing"``: :func:`pointing_game` against the target object's mask;
        - ``"sensitivity"``: 1 when the target object holds strictly more relevance than every other
          present object, else 0 (a class-agnostic map scores 1 for one object per image).
    """
    if not isinstance(object_masks, Tensor) or object_masks.dim() != 4:
        raise ValueError(
            "object_masks must be a (batch_size, num_objects, height, width) tensor, got "
            f"{tuple(object_masks.shape) if isinstance(object_masks, Tensor) else type(object_masks).__name__}."
        )
    if isinstance(target, str) or (isinstance(target, (list, tuple)) and any(isinstance(t, str) for t in target)):
        # No model here to read names from: the caller knows which mask is which class.
        raise TypeError(
            f"target must hold object indices (the position of each image's object in object_masks), got "
            f"{target!r}. To score a class by name, look its index up first: model.config.label2id[name]."
        )
    target = torch.as_tensor(target)
    if target.is_floating_point():
        raise TypeError(f"target must hold integer object indices, got {target.tolist()}.")
    target = target.long().reshape(-1)
    batch, num_objects = object_masks.shape[:2]
    if target.shape != (batch,) or ((target < 0) | (target >= num_objects)).any():
        raise ValueError(
            f"target must hold one object index in [0, {num_objects}) per image ({batch}), got {target.tolist()}."
        )
    options = {"patch_size": patch_size, "sign": sign, "object_share": object_share}
    on_object, areas = [], []
    for index in range(num_objects):
        maps, inside = aligned(attributions, object_masks[:, index], **options)
        on_object.append((maps * inside).sum(dim=(1, 2)))
        areas.append(inside.float().sum(dim=(1, 2)))
    on_object, areas = torch.stack(on_object, dim=1), torch.stack(areas, dim=1)  # (batch, num_objects)
    present = areas > 0
    rows = torch.arange(batch)
    if not present[rows, target].all():
        missing = (~present[rows, target]).nonzero().flatten().tolist()
        raise ValueError(f"The target object of image(s) {missing} has an empty mask at the scored resolution.")
    mine = on_object[rows, target]
    total = (on_object * present).sum(dim=1)
    area_share = areas[rows, target] / areas.sum(dim=1)
    mass = torch.where(total > 0, mine / torch.where(total > 0, total, 1.0), area_share)
    others = on_object.masked_fill(~present, float("-inf"))
    others[rows, target] = float("-inf")
    sensitivity = (mine > others.amax(dim=1)).float()
    target_masks = object_masks[rows, target]
    return {"mass": mass, "pointing": pointing_game(attributions, target_masks, **options), "sensitivity": sensitivity}
