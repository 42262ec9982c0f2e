"""Every view of one image under the user's choices (:func:`render`), from its capture."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from PIL import Image
from torch import Tensor

from ..diagnostics import Diagnostics, token_name
from ..visualization import CLIP_HEADROOM, CLIP_PERCENTILE
from ._explorer import GAE, Capture, Explorer, describe_start_token, resolve_start_token
from ._figure import paper_figure
from ._inputs import AppInputError
from ._maps import fused_and_heads, percent_per_pixel_value, robust_scale, robust_top
from ._overlay import overlay_image
from ._settings import ViewSettings


@dataclass
class Views:
    """Everything the page shows for one image and one set of choices."""

    figure: Image.Image
    overlay: Image.Image
    layer_view: Image.Image | None
    top_patches: list[list]
    predictions: dict[str, float]
    mask: Image.Image | None
    summary: str
    arrays: dict[str, np.ndarray]
    seconds: float
    #: The overlay's colour bar, bottom and top, in percent of the map's total relevance per patch (the unit
    #: of the "Top patches" table); the top is the robust one of ``visualization.colour_scale`` where that
    #: clips a patch (then below the first row of "Top patches"), else the map's maximum.
    colour_scale: tuple[float, float] = (0.0, 0.0)
    #: The attention sinks and high-norm tokens of the image, as Markdown tables (:func:`diagnostics_markdown`).
    diagnostics: str = ""


def _head_index(head: str, num_heads: int) -> int | None:
    if head in (None, "", "fused"):
        return None
    try:
        index = int(str(head).removeprefix("head").strip())
    except ValueError:
        raise AppInputError(f"Unknown head {head!r}; expected 'fused' or 'head 0' .. 'head {num_heads - 1}'.") from None
    if not 0 <= index < num_heads:
        raise AppInputError(f"Head {index} does not exist: the model has {num_heads} heads (0 .. {num_heads - 1}).")
    return index


def _gae_target(explorer: Explorer, capture: Capture, target: str | None) -> int | str:
    """GAE's target from the page: a class by name (default: the predicted one) or a text prompt."""
    if explorer.has_text:
        if not target or not str(target).strip():
            raise AppInputError("GAE on an image-text model explains a text prompt: type one in the target box.")
        return str(target).strip()
    names = explorer.class_names
    if not target or target == "predicted":
        return int(capture.logits.argmax()) if capture.logits is not None else 0
    if target in names:
        return names.index(target)
    raise AppInputError(f"Unknown class {target!r}; expected 'predicted' or one of the model's classes.")


def render(explorer: Explorer, capture: Capture, settings: ViewSettings, *, figure: bool = True) -> Views:
    """Every view for ``capture`` under ``settings``; no forward pass unless GAE needs its backward.

    ``figure=False`` skips the paper's figure (for choices that do not change it: opacity, layer).
    """
    began = time.perf_counter()
    layout, heads = capture.layout, explorer.num_heads
    head = _head_index(settings.head, heads)
    if not 0 <= settings.depth <= explorer.num_layers:
        raise AppInputError(f"Layer {settings.depth} is out of range 0 .. {explorer.num_layers}.")
    arrays: dict[str, np.ndarray] = {}
    # The selected method's map at every depth (rules) or at the input (GAE).
    by_layer: Tensor | None = None
    if settings.method == GAE:
        target = _gae_target(explorer, capture, settings.target)
        selected = explorer.gae(capture, target)
        label = f"GAE, target {target!r}"
        arrays["gae"] = selected.numpy()
    else:
        if head is None:
            by_layer = explorer.relevance_by_layer(capture, settings.method, settings.head_fusion, settings.start_token)
            if by_layer.dim() == 3:  # a per-head fused mode ("last_layer_per_head"): show the heads' mean
                by_layer = by_layer.mean(dim=0)
            label = f"rule ({settings.method}), {settings.head_fusion}"
        else:
            by_layer = explorer.relevance_by_layer(capture, settings.method, None, settings.start_token)[head]
            label = f"rule ({settings.method}), head {head}"
        selected = by_layer[0]
        arrays[f"relevance_{settings.method}_by_layer"] = by_layer.numpy()
    arrays["selected"] = selected.numpy()
    prediction = None
    predictions = explorer.predictions(capture)
    if predictions:
        name, probability = next(iter(predictions.items()))
        prediction = (name, probability)

    figure_image = None
    if figure and settings.rules:
        # By the token it resolves to: -1 and N - 1 are one figure.
        start = resolve_start_token(capture, settings.start_token)
        figure_key = ("figure", settings.rules, settings.head_fusion, start)
        if figure_key not in capture.results:
            explorer._remember(capture, figure_key, paper_figure(explorer, capture, settings, prediction))
        figure_image = capture.results[figure_key]
    for rule in settings.rules:
        fused_rel, head_rel = fused_and_heads(explorer, capture, rule, settings)
        # The keys of the CLI's schema (README, "Every .npz the commands write follows one schema").
        arrays[f"relevance_{rule}"] = fused_rel.numpy()
        arrays[f"relevance_{rule}_per_head"] = head_rel.numpy()

    original = explorer.original_map(capture, selected)
    percent = percent_per_pixel_value(capture, float(selected.sum()))
    top = robust_top(capture, selected, percent)
    overlay = overlay_image(capture.image, original, settings.opacity, label, percent_per_value=percent, high=top)
    bar_top = float(original.max()) if top is None else min(top, float(original.max()))
    colour_scale = (float(original.min()) * percent, bar_top * percent)
    layer_view = None
    if by_layer is not None:
        depth_map = explorer.original_map(capture, by_layer[settings.depth])
        depth_percent = percent_per_pixel_value(capture, float(by_layer[settings.depth].sum()))
        depth_top = robust_top(capture, by_layer[settings.depth], depth_percent)
        where = "the input tokens (the final map)" if settings.depth == 0 else f"entering layer {settings.depth}"
        if settings.depth == explorer.num_layers:
            where = "the start"
        layer_view = overlay_image(
            capture.image,
            depth_map,
            settings.opacity,
            f"R({settings.depth}): {where}",
            320,
            percent_per_value=depth_percent,
            high=depth_top,
        )
    mask_image = None
    mass = explorer.mass_on_object(capture, selected)
    if capture.mask is not None:
        mask_image = Image.fromarray((capture.mask * 255).astype(np.uint8)).convert("RGB")
        scale = max(1, 256 // max(mask_image.size))
        mask_image = mask_image.resize((mask_image.width * scale, mask_image.height * scale), Image.Resampling.NEAREST)
    special = float(selected[: layout.num_special_tokens].sum())
    total = float(selected.sum())
    parts = [
        f"{label}: {100 * special / total:.1f} % of the relevance stays on the special tokens"
        f" ({', '.join(layout.special_token_names)})."
        if total
        else f"{label}: the map is empty."
    ]
    if by_layer is not None:
        parts.append(f"Start: {describe_start_token(capture, settings.start_token)}.")
    scale = robust_scale(capture, selected)
    if scale.clipped:
        count = int(scale.outside(selected[layout.patch_slice].double().numpy() * 100.0 / total).sum())
        parts.append(
            f"Colour scale: its top is at most {CLIP_HEADROOM:g} x the {CLIP_PERCENTILE:g}th percentile of the "
            f"patches; {count} patch(es) above it are clipped (drawn in the top colour, outlined in cyan)."
        )
    if mass is not None:
        parts.append(f"Mass on the object: **{mass:.3f}** (its area share: {capture.mask.mean():.3f}).")
    seconds = time.perf_counter() - began
    parts.append(f"Forward pass {1000 * capture.forward_seconds:.0f} ms (cached); these views {1000 * seconds:.0f} ms.")
    arrays["grid"] = np.array(layout.grid)
    arrays["special_tokens"] = np.array(layout.special_token_names)
    arrays["patch_size"] = np.array(layout.patch_size)
    if capture.logits is not None:
        arrays["logits"] = capture.logits.numpy()
    if capture.diagnostics is not None:
        arrays.update(capture.diagnostics.as_arrays())
    return Views(
        figure=figure_image,
        overlay=overlay,
        layer_view=layer_view,
        top_patches=explorer.top_patches(capture, selected),
        predictions=predictions,
        mask=mask_image,
        summary=" ".join(parts),
        arrays=arrays,
        seconds=seconds,
        colour_scale=colour_scale,
        diagnostics=diagnostics_markdown(capture.diagnostics),
    )


def diagnostics_markdown(diagnostics: Diagnostics | None, max_rows: int = 12) -> str:
    """The image's attention sinks and high-norm tokens for the page: two Markdown tables (layers, heads and
    tokens counted from 0, as the API indexes them), or one line saying there are none."""
    if diagnostics is None:
        return "Attention sinks and high-norm tokens: not available for this model (its blocks could not be watched)."
    layout = diagnostics.layout
    sink_rule = f"a head whose queries send >= {100 * diagnostics.sink_share:.0f} % of their attention to one token"
    norm_rule = f"a patch token whose hidden-state norm is >= {diagnostics.norm_ratio:g} x its layer's median"
    if not diagnostics.sinks and not diagnostics.high_norm_tokens:
        return f"No attention sink ({sink_rule}) and no high-norm token ({norm_rule})."
    lines = []
    if diagnostics.sinks:
        ranked = sorted(diagnostics.sinks, key=lambda sink: -sink.share)
        lines += [
            f"**Attention sinks** ({sink_rule}; ringed on the figure, * on the head):",
            "",
            "| layer | head | token | share |",
            "|---:|---:|---|---:|",
        ]
        lines += [
            f"| {s.layer} | {s.head} | {s.token} = {token_name(s.token, layout)} | {100 * s.share:.1f} % |"
            for s in ranked[:max_rows]
        ]
        if len(ranked) > max_rows:
            lines.append(f"| | | {len(ranked) - max_rows} more | |")
        lines.append("")
    if diagnostics.high_norm_tokens:
        by_token: dict[int, list] = {}
        for entry in diagnostics.high_norm_tokens:
            by_token.setdefault(entry.token, []).append(entry)
        ranked_tokens = sorted(by_token.items(), key=lambda item: -max(entry.ratio for entry in item[1]))
        lines += [
            f"**High-norm tokens** ({norm_rule}; crossed on the figure's image column):",
            "",
            "| token | layers | largest ratio |",
            "|---|---|---:|",
        ]
        for token, entries in ranked_tokens[:max_rows]:
            layers = ", ".join(str(entry.layer) for entry in sorted(entries))
            ratio = max(entry.ratio for entry in entries)
            lines.append(f"| {token} = {token_name(token, layout)} | {layers} | {ratio:.1f} x |")
        if len(ranked_tokens) > max_rows:
            lines.append(f"| {len(ranked_tokens) - max_rows} more | | |")
    return "\n".join(lines).strip()
