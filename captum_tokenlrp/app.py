"""``tokenlrp app``: explore token relevance by looking, in a local web app.

    tokenlrp app [--model bundled] [--host 127.0.0.1] [--port 7860]

Two layers, so that the views can be tested and timed without a browser:

* :class:`Explorer` holds the model and, per image, one :class:`Capture` of its forward pass: every
  attention layer's projections and a classifier's logits. Every view (the paper's figure, the overlay,
  the relevance after each layer, the top patches, the mass on a known object) is computed from the
  capture, so changing the rule, the head mode, the head, the start token, the layer or the opacity
  never runs the model again. Captures and relevance are cached (least recently used first out).
* :func:`build_app` lays the views out with Gradio (the optional extra ``captum-tokenlrp[app]``) and
  :func:`launch` serves them on 127.0.0.1, with no network access (no analytics, no web fonts).

GAE (Chefer et al. 2021), offered beside the rules for a class or a text prompt as target, needs a
backward pass per target: it runs once per (image, target) and is cached like the rest.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import math
import re
import sys
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from . import TokenRelevanceLRP, __version__
from ._adapters import TokenLayout, adapter_for
from ._core.base import PreparedInputs
from ._core.geometry import patch_grid
from ._core.propagation import FUSED_HEAD_MODES, propagate_by_layer
from ._utils.loaded import (
    CliError,
    LoadedModel,
    keep_logits,
    load_model,
    prompt_explainer,
)
from .baselines import GenericAttentionExplainability
from .diagnostics import Diagnostics, recording, token_name
from .evaluation import relevance_mass
from .images import ImageGeometry, _pil_layout_kwargs, load_image, map_to_original, processor_geometry
from .rules import available_rules, get_rule
from .visualization import CLIP_HEADROOM, CLIP_PERCENTILE, ColourScale, colour_scale

__all__ = [
    "AppInputError",
    "Capture",
    "Explorer",
    "UnreadableUpload",
    "ViewSettings",
    "Views",
    "build_app",
    "bundled_samples",
    "launch",
    "overlay_image",
    "render",
]

#: Uploads above this many pixels are refused (a decompression bomb or a photo far beyond any ViT's input).
MAX_PIXELS = 40_000_000
#: In "native size" mode the image is first shrunk to this longest side, so the token count stays interactive.
NATIVE_MAX_SIDE = 448
#: The method name under which the app offers GAE (class- or prompt-sensitive) beside the rules.
GAE = "GAE"
#: Head modes offered for the fused map (the per-head maps are always computed for the figure).
HEAD_FUSIONS = (*FUSED_HEAD_MODES, "last_layer_per_head")
SIZE_MODES = ("processor", "native")
#: Opacity of the maps in the paper's figure (the overlay's slider leaves the figure as it is).
FIGURE_OPACITY = 0.6
#: The paper's figure's margins: left of the first panel (the rules' names), above the first row (title and
#: column names), and between panels.
FIGURE_LEFT, FIGURE_TOP, FIGURE_GAP = 64, 44, 4


class AppInputError(ValueError):
    """A problem with what the user gave the app (shown on the page; the app keeps running)."""


# ------------------------------------------------------------------------------------- the capture
@dataclass
class Capture:
    """One image's forward pass, kept so that every view can be recomputed without the model.

    Attributes
    ----------
    key : str
        sha256 of the image's pixels and the size mode.
    image : PIL.Image.Image
        The image as loaded (RGB, upright); the overlays are drawn on it.
    pixel_values : Tensor
        `(1, channels, H_in, W_in)`, what the model received.
    layers : list
        Every attention layer's projections (:class:`~captum_tokenlrp.LayerProjections`), input side first.
    prepared : PreparedInputs
        The inputs as the attribution prepared them (for the start vector).
    layout : TokenLayout
        Special tokens, grid and patch size.
    geometry : ImageGeometry
        Where the model input lies in the original image.
    logits : Tensor or None
        `(num_labels,)` for a classifier.
    mask : np.ndarray or None
        bool `(H_orig, W_orig)`: the object's pixels, for the bundled shapes samples.
    forward_seconds : float
        Wall time of the forward pass that made this capture.
    diagnostics : Diagnostics or None
        Attention sinks and high-norm tokens (:func:`~captum_tokenlrp.diagnostics.recording`), read from
        this same forward pass; None where the model's blocks could not be watched.
    """

    key: str
    image: Image.Image
    pixel_values: Tensor
    layers: list
    prepared: PreparedInputs
    layout: TokenLayout
    geometry: ImageGeometry
    logits: Tensor | None
    mask: np.ndarray | None
    forward_seconds: float
    diagnostics: Diagnostics | None = None
    results: OrderedDict = field(default_factory=OrderedDict, repr=False)


def image_key(image: Image.Image) -> str:
    """sha256 of an RGB image's size and pixels: equal pictures get equal keys, whatever file they came in."""
    digest = hashlib.sha256(f"{image.width}x{image.height}".encode())
    digest.update(np.asarray(image.convert("RGB")).tobytes())
    return digest.hexdigest()


def _check_upload(image: object) -> Image.Image:
    """The uploaded image, loaded like the CLI loads files; an :class:`AppInputError` saying what is wrong."""
    if image is None:
        raise AppInputError("No image: upload one, drop one on the image box, or pick a bundled sample.")
    if isinstance(image, UnreadableUpload):
        raise AppInputError(
            f"The upload is not an image this app can read ({image.reason}). Upload a PNG, JPEG, WebP, BMP, GIF "
            "or TIFF file."
        )
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    try:
        loaded = load_image(image)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise AppInputError(f"Cannot read the upload as an image: {error}") from None
    if loaded.width * loaded.height > MAX_PIXELS:  # a file path: its size is known once it is read
        raise AppInputError(
            f"The image has {loaded.width} x {loaded.height} pixels, more than the app takes ({MAX_PIXELS:,}); "
            "shrink it first (a ViT sees a few hundred pixels a side anyway)."
        )
    return loaded


# ------------------------------------------------------------------------------------------ explorer
class Explorer:
    """The model side of the app: captures per image, relevance per (rule, head mode, start), the views.

    Parameters
    ----------
    model : str, default "bundled"
        ``"bundled"`` (offline), a local checkpoint folder, or a hub id; any family the package explains.
    device, dtype : str
        Where and in which precision the model runs (relevance is float32 anyway).
    cache_size : int
        Images whose forward pass is kept.

    Raises
    ------
    CliError
        When the model or its image processor cannot be loaded (the message says why and what to do).
    """

    def __init__(self, model: str = "bundled", *, device: str = "cpu", dtype: str = "float32", cache_size: int = 8):
        self.loaded: LoadedModel = load_model(model, device, dtype)
        self.device, self.dtype = device, dtype
        self.lrp = TokenRelevanceLRP(self.loaded.model)
        self.adapter = adapter_for(self.loaded.model)
        self.sites = self.lrp.attention_sites
        self.num_layers = len(self.sites)
        self.num_heads = self.sites[-1].num_heads
        self.has_text = bool(getattr(self.adapter, "has_text", False))
        self.is_classifier = bool(self.adapter.is_classifier)
        self.cache_size = cache_size
        self._captures: OrderedDict[str, Capture] = OrderedDict()
        self._gae: GenericAttentionExplainability | None = None
        self.masks: dict[str, np.ndarray] = {}
        # Gradio runs the handlers of different events in parallel threads; a forward pass records through
        # hooks on the shared model, and the caches are shared: one model computation at a time.
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- descriptions
    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def class_names(self) -> list[str]:
        """A classifier's labels by index (``config.id2label``); empty for other models."""
        if not self.is_classifier:
            return []
        labels = getattr(self.loaded.model.config, "id2label", None) or {}
        count = int(getattr(self.loaded.model.config, "num_labels", len(labels)))
        return [str(labels.get(index, labels.get(str(index), f"class {index}"))) for index in range(count)]

    @property
    def methods(self) -> list[str]:
        """Rules by name (the four of the paper and any registered one), then GAE where it has a target."""
        rules = list(available_rules())
        return rules + ([GAE] if self.is_classifier or self.has_text else [])

    def describe(self) -> str:
        """One line on the model for the page's header."""
        model = self.loaded.model
        kind = "classifier" if self.is_classifier else ("image-text model" if self.has_text else "backbone")
        return (
            f"**{self.name}** - {type(model).__name__} ({kind}), {self.num_layers} layers x {self.num_heads} heads, "
            f"captum-tokenlrp {__version__}"
        )

    # ---------------------------------------------------------------- capture
    def capture(self, image: object, size_mode: str = "processor") -> Capture:
        """The image's forward pass (cached): projections of every layer, logits, geometry.

        Parameters
        ----------
        image : PIL.Image.Image, ndarray, str or os.PathLike
            What the user gave; read with :func:`~captum_tokenlrp.images.load_image`.
        size_mode : {"processor", "native"}
            ``"processor"``: the model's image processor resizes and crops, as in training.
            ``"native"``: the image at its own size (longest side at most :data:`NATIVE_MAX_SIDE`),
            cut to whole patches, with interpolated position embeddings.

        Raises
        ------
        AppInputError
            For an unreadable, empty or huge image, or a model that cannot take native sizes.
        """
        if size_mode not in SIZE_MODES:
            raise AppInputError(f"Unknown image-size mode {size_mode!r}; expected one of {SIZE_MODES}.")
        loaded = _check_upload(image)
        with self._lock:
            return self._capture(loaded, size_mode)

    def _capture(self, loaded: Image.Image, size_mode: str) -> Capture:
        pixels_key = image_key(loaded)
        key = f"{pixels_key}:{size_mode}"
        if key in self._captures:
            self._captures.move_to_end(key)
            return self._captures[key]
        pixel_values, geometry, forward_args = self._model_input(loaded, size_mode)
        prepared = self.lrp._prepare(pixel_values, forward_args)
        began = time.perf_counter()
        # The sinks and high-norm tokens from the same forward pass (hooks, no second pass).
        with recording(self.loaded.model) as watched, keep_logits(self.loaded.model) as logits:
            layers = self.lrp._record(prepared, self.sites, lambda layer: layer)
        seconds = time.perf_counter() - began
        layout = self.lrp.token_layout(pixel_values, forward_args)
        try:
            diagnostics = watched.diagnostics(layout)
        except (RuntimeError, ValueError):  # blocks that did not report: the page says it has no diagnostics
            diagnostics = None
        capture = Capture(
            key=key,
            image=loaded,
            pixel_values=pixel_values,
            layers=layers,
            prepared=prepared,
            layout=layout,
            geometry=geometry,
            logits=logits[-1][0] if logits else None,
            mask=self.masks.get(pixels_key),
            forward_seconds=seconds,
            diagnostics=diagnostics,
        )
        self._captures[key] = capture
        while len(self._captures) > self.cache_size:
            self._captures.popitem(last=False)
        return capture

    def _model_input(self, image: Image.Image, size_mode: str) -> tuple[Tensor, ImageGeometry, dict | None]:
        processor = getattr(self.loaded.processor, "image_processor", self.loaded.processor)
        parameter = next(p for p in self.loaded.model.parameters() if p.is_floating_point())
        if size_mode == "processor":
            pixel_values = processor(images=image, return_tensors="pt", **_pil_layout_kwargs(processor))["pixel_values"]
            geometry = processor_geometry(processor, (image.height, image.width))
            return pixel_values.to(parameter.device, parameter.dtype), geometry, None
        if not (self.adapter.any_image_size or "interpolate_pos_encoding" in _forward_parameters(self.loaded.model)):
            raise AppInputError(
                f"{type(self.loaded.model).__name__} cannot take images of another size than it was trained on; "
                "use the 'processor' image size."
            )
        scale = min(1.0, NATIVE_MAX_SIDE / max(image.width, image.height))
        resized = (max(1, round(image.height * scale)), max(1, round(image.width * scale)))
        patch_h, patch_w = self.adapter.token_layout(*resized).patch_size
        if resized[0] < patch_h or resized[1] < patch_w:
            raise AppInputError(
                f"The image ({image.width} x {image.height}) is smaller than one {patch_w} x {patch_h} patch; "
                "use the 'processor' image size."
            )
        native = copy.copy(processor)
        for attribute in ("do_resize", "do_center_crop", "do_pad"):
            if hasattr(native, attribute):
                setattr(native, attribute, False)
        shrunk = image.resize((resized[1], resized[0]), Image.Resampling.BICUBIC) if scale < 1 else image
        pixel_values = native(images=shrunk, return_tensors="pt", **_pil_layout_kwargs(native))["pixel_values"]
        rows, cols = resized[0] // patch_h, resized[1] // patch_w
        pixel_values = pixel_values[..., : rows * patch_h, : cols * patch_w]
        geometry = ImageGeometry(
            original=(image.height, image.width),
            resized=resized,
            crop=(0, 0, rows * patch_h, cols * patch_w),
            input=(rows * patch_h, cols * patch_w),
        )
        forward_args = None if self.adapter.any_image_size else {"interpolate_pos_encoding": True}
        return pixel_values.to(parameter.device, parameter.dtype), geometry, forward_args

    # ---------------------------------------------------------------- relevance
    def relevance_by_layer(
        self, capture: Capture, rule: str, head_fusion: str | None, start_token: int | None = None
    ) -> Tensor:
        """``R^(l)`` at every depth for one rule and head mode, from the capture (no forward pass).

        Returns
        -------
        Tensor
            `(L + 1, num_tokens)` for the fused modes, `(num_heads, L + 1, num_tokens)` per head; index 0 is
            the map on the input tokens, index L the start.
        """
        start_token = resolve_start_token(capture, start_token)
        key = ("rule", rule, head_fusion, start_token)
        with self._lock:
            if key not in capture.results:
                self._replay(capture, key, rule, head_fusion, start_token)
            return capture.results[key]

    def _replay(
        self, capture: Capture, key: tuple, rule: str, head_fusion: str | None, start_token: int | None
    ) -> None:
        """Replay the kept projections through ``rule`` (no forward pass) and cache ``R^(l)`` at every depth."""
        layer_matrix = self.lrp._layer_matrix(head_fusion, get_rule(rule))
        matrices = [layer_matrix(layer) for layer in capture.layers]
        explicit = None
        if start_token is not None:
            explicit = torch.zeros(1, capture.layout.num_tokens, device=capture.pixel_values.device)
            explicit[0, start_token] = 1.0
        try:
            replayed = self.lrp._propagated(capture.prepared, explicit, matrices, head_fusion, propagate_by_layer)
        except ValueError as error:  # non-finite relevance: say where, never draw it
            raise AppInputError(str(error)) from None
        self._remember(capture, key, replayed.relevance[0].float().cpu())

    def gae(self, capture: Capture, target: int | str) -> Tensor:
        """GAE's map `(num_tokens,)` for a class index or a text prompt (one forward and backward, cached)."""
        key = ("gae", target)
        with self._lock:
            if key not in capture.results:
                self._gae_map(capture, key, target)
            return capture.results[key]

    def _gae_map(self, capture: Capture, key: tuple, target: int | str) -> None:
        """GAE (a forward and a backward pass) for ``target``, cached."""
        if self._gae is None:
            try:
                self._gae = prompt_explainer(self.loaded, ["prompt"]) if self.has_text else None
            except CliError as error:
                raise AppInputError(str(error)) from None
            self._gae = self._gae or GenericAttentionExplainability(self.loaded.model)
        forward_args = capture.prepared.kwargs or None
        relevance = self._gae.token_relevance(capture.pixel_values, target, forward_args).detach()
        self._remember(capture, key, relevance.reshape(-1, relevance.shape[-1])[0].float().cpu())

    def _remember(self, capture: Capture, key: tuple, value: Tensor) -> None:
        capture.results[key] = value
        while len(capture.results) > 64:
            capture.results.popitem(last=False)

    # ---------------------------------------------------------------- numbers
    def predictions(self, capture: Capture, top: int = 5) -> dict[str, float]:
        """A classifier's most probable classes with their probabilities (sigmoid for multi-label heads)."""
        if capture.logits is None:
            return {}
        multi_label = getattr(self.loaded.model.config, "problem_type", None) == "multi_label_classification"
        probabilities = capture.logits.sigmoid() if multi_label else capture.logits.softmax(dim=-1)
        names = self.class_names
        best = probabilities.argsort(descending=True)[:top]
        return {names[int(index)]: float(probabilities[index]) for index in best}

    def top_patches(self, capture: Capture, relevance: Tensor, k: int = 10) -> list[list]:
        """The ``k`` most relevant patch tokens: rank, token index, grid row, grid column, share of the total (%)."""
        layout = capture.layout
        patches = relevance[layout.patch_slice]
        total = float(relevance.sum())
        order = patches.argsort(descending=True)[:k]
        rows = []
        for rank, index in enumerate(order.tolist(), start=1):
            row, col = divmod(index, layout.grid[1])
            share = 100.0 * float(patches[index]) / total if total else 0.0
            rows.append([rank, layout.num_special_tokens + index, row, col, round(share, 2)])
        return rows

    def mass_on_object(self, capture: Capture, relevance: Tensor) -> float | None:
        """Share of the map (on the original image) that falls on the sample's object, or None without a mask."""
        if capture.mask is None:
            return None
        original = self.original_map(capture, relevance)
        return float(relevance_mass(original[None], torch.from_numpy(capture.mask)[None])[0])

    def original_map(self, capture: Capture, relevance: Tensor) -> Tensor:
        """Token relevance `(num_tokens,)` as a map on the original image `(H_orig, W_orig)`."""
        grid = patch_grid(relevance, capture.layout)
        return map_to_original(grid, capture.geometry, patch_size=capture.layout.patch_size)


def resolve_start_token(capture: Capture, start_token: int | None) -> int | None:
    """The start token as an index in ``[0, N)``: negative ones count from the end, as Python's (and the API's
    ``target``) do; None (the box left empty) stays None, the start where the model's output is read.

    Raises
    ------
    AppInputError
        Outside ``[-N, N)``, ``N`` the model's token count.
    """
    if start_token is None:
        return None
    count = capture.layout.num_tokens
    if not -count <= start_token < count:
        raise AppInputError(
            f"Start token {start_token} is out of range: the model has {count} tokens, so a start token lies in "
            f"[-{count}, {count}) (0 .. {count - 1}, or -1 .. -{count} counting from the end); leave the box "
            "empty to start where the model's output is read."
        )
    return start_token % count


def _start_token_from_box(text: object) -> int | None:
    """The "Start token" box's text as a token index: empty is None (where the model's output is read)."""
    if text is None or not str(text).strip():
        return None
    try:
        value = float(str(text).strip())
    except ValueError:
        value = math.nan
    if not value.is_integer():
        raise AppInputError(
            f"Start token {str(text).strip()!r} is not a token index: type an integer (negative ones count from "
            "the end, -1 the last token), or leave the box empty to start where the model's output is read."
        )
    return int(value)


def describe_start_token(capture: Capture, start_token: int | None) -> str:
    """Which token a start token names, for the page: ``"-1 = token 16 (patch row 3, col 3)"``, ``"token 0 (cls)"``."""
    resolved = resolve_start_token(capture, start_token)
    if resolved is None:
        return "where the model's output is read"
    layout = capture.layout
    given = f"{start_token} = token {resolved}" if start_token != resolved else f"token {resolved}"
    if resolved < layout.num_special_tokens:
        return f"{given} ({layout.special_token_names[resolved]})"
    row, col = divmod(resolved - layout.num_special_tokens, layout.grid[1])
    return f"{given} (patch row {row}, col {col})"


def _forward_parameters(model: torch.nn.Module) -> Sequence[str]:
    return list(inspect.signature(model.forward).parameters)


# ------------------------------------------------------------------------------------------- views
@dataclass(frozen=True)
class ViewSettings:
    """What the user chose on the page."""

    rules: tuple[str, ...] = ("i", "ii", "iii", "iv")
    method: str = "iv"
    head_fusion: str = "mean"
    head: str = "fused"
    start_token: int | None = None
    target: str | None = None
    opacity: float = 0.6
    depth: int = 0
    size_mode: str = "processor"


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


def overlay_image(
    image: Image.Image,
    relevance_map: Tensor,
    opacity: float,
    title: str,
    side: int = 480,
    *,
    percent_per_value: float | None = None,
    high: float | None = None,
) -> Image.Image:
    """The map blended over the image, scaled so that its longer side is ``side``, with a labelled colour bar.

    Drawn with PIL rather than matplotlib (about 10 ms instead of 200), since the sliders redraw it live.

    Parameters
    ----------
    image : PIL.Image.Image
        The original image, `(H, W)`.
    relevance_map : Tensor
        `(H, W)`: relevance on the original pixels (:meth:`Explorer.original_map`).
    opacity : float
        Weight of the colour map over the image, in [0, 1].
    title : str
        Written above the panel.
    percent_per_value : float, optional
        Converts a value of ``relevance_map`` (relevance per original pixel) into the percent of the total
        relevance that a patch of that density holds (:func:`_percent_per_pixel_value`); the bar is then
        labelled in that unit, the one of the "Top patches" table. Without it the bar shows the raw values.
    high : float, optional
        Top of the colour scale in the map's values (the robust top of :func:`_robust_top`); the map's
        maximum by default. Pixels above it are drawn in the top colour and outlined in cyan, and the bar's
        top label reads "≥".
    """
    from PIL import ImageDraw

    if not 0.0 <= opacity <= 1.0:
        raise AppInputError(f"Opacity must lie in [0, 1], got {opacity}.")
    values = relevance_map.double().numpy()
    low, maximum = float(values.min()), float(values.max())
    high = maximum if high is None else min(float(high), maximum)
    clipped = maximum > high
    colours = Image.fromarray(_colours(values, low, high))
    scale = side / max(image.width, image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR
    blended = Image.blend(image.convert("RGB").resize(size, resample), colours.resize(size, resample), opacity)
    if clipped:
        outside = Image.fromarray((values > high).astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)
        pixels = np.asarray(blended).copy()
        pixels[_outline(np.asarray(outside) > 0)] = CLIPPED_RGB
        blended = Image.fromarray(pixels)
    bar_width, margin, header = 16, 70, 22
    canvas = Image.new("RGB", (size[0] + bar_width + margin, size[1] + header), "white")
    canvas.paste(blended, (0, header))
    ramp = np.linspace(1.0, 0.0, size[1])[:, None].repeat(bar_width, axis=1)
    bar = Image.fromarray(_colours(ramp, 0.0, 1.0))
    canvas.paste(bar, (size[0] + 6, header))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill="black")
    x = size[0] + bar_width + 10
    above = ">= " if clipped else ""  # the top colour also stands for the clipped values above it
    if percent_per_value is None:
        draw.text((x, header), f"{above}{high:.3g}", fill="black")
        draw.text((x, header + size[1] - 12), f"{low:.3g}", fill="black")
    else:
        draw.text((x, header), f"{above}{high * percent_per_value:.3g} %", fill="black")
        draw.text((x, header + size[1] - 12), f"{low * percent_per_value:.3g} %", fill="black")
        draw.text((x, header + size[1] // 2 - 12), "of total\nper patch", fill="black")
    return canvas


#: Outline of the cells (pixels) a robust colour scale clips: the colour :mod:`.visualization` outlines them in.
CLIPPED_RGB = (0, 255, 255)
#: Rings (attention sinks) and crosses (high-norm tokens) on the paper's figure, as :mod:`.visualization`.
MARKER_RGB = (255, 255, 255)


def _outline(mask: np.ndarray) -> np.ndarray:
    """The border pixels of a boolean mask's regions (True pixels with a False or missing 4-neighbour)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def _robust_scale(capture: Capture, relevance: Tensor) -> ColourScale:
    """The colour scale of one map's patches in percent of its total (the unit of the bars and "Top patches"),
    robust to a few outlying patches (:func:`~captum_tokenlrp.visualization.colour_scale`).

    Taken on the patch tokens, one value per patch, not on the map's pixels: on a grid of a few dozen
    patches one patch covers more than 1 % of the pixels, so the pixels' percentile would be the outlier.
    """
    total = float(relevance.sum())
    patches = relevance[capture.layout.patch_slice].double().numpy()
    return colour_scale([100.0 * patches / total if total else patches])


def _robust_top(capture: Capture, relevance: Tensor, percent_per_value: float) -> float | None:
    """The top of :func:`_robust_scale` in the values of :meth:`Explorer.original_map` (relevance per
    original pixel), for :func:`overlay_image`'s ``high``; None where it clips nothing (the map's own maximum
    is then the top: decided on the patches, not on the pixels' rounding) or the map is empty."""
    scale = _robust_scale(capture, relevance)
    if not percent_per_value or not scale.clipped:
        return None
    return scale.high / percent_per_value


def _percent_per_pixel_value(capture: Capture, total: float) -> float:
    """The factor from relevance per original pixel (:meth:`Explorer.original_map`) to the percent of ``total``
    that a patch of that density holds.

    The map on the original image spreads each patch's relevance over the original pixels it covers, by area,
    so a patch covers ``patch_h * patch_w * (H_orig / H_resized) * (W_orig / W_resized)`` of them. 0 for an
    empty map (``total`` 0).
    """
    if not total:
        return 0.0
    geometry, (patch_h, patch_w) = capture.geometry, capture.layout.patch_size
    (height, width), (resized_h, resized_w) = geometry.original, geometry.resized
    pixels = patch_h * patch_w * (height / resized_h) * (width / resized_w)
    return 100.0 * pixels / total


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


def _fused_and_heads(explorer: Explorer, capture: Capture, rule: str, settings: ViewSettings) -> tuple[Tensor, Tensor]:
    """A rule's fused map `(num_tokens,)` (a per-head fused mode averaged) and per-head maps `(heads, num_tokens)`."""
    fused = explorer.relevance_by_layer(capture, rule, settings.head_fusion, settings.start_token)[..., 0, :]
    heads = explorer.relevance_by_layer(capture, rule, None, settings.start_token)[:, 0]
    return (fused.mean(dim=0) if fused.dim() == 2 else fused), heads


def _colours(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """`(H, W)` values -> `(H, W, 3)` uint8 inferno colours on the scale ``low .. high``."""
    from matplotlib import colormaps

    spread = high - low
    normalised = np.clip((values - low) / spread, 0.0, 1.0) if spread > 0 else np.zeros_like(values)
    return (colormaps["inferno"](normalised)[..., :3] * 255).astype(np.uint8)


def _paper_figure(
    explorer: Explorer, capture: Capture, settings: ViewSettings, prediction: tuple[str, float] | None, tile: int = 96
) -> Image.Image:
    """The paper's figure: one row per rule with the model input, the fused map, then one map per head.

    Drawn with PIL (a few tens of ms, where matplotlib's :func:`~captum_tokenlrp.visualization.plot_rule_grid`
    takes seconds), one robust colour scale per row as that function's default
    (:func:`~captum_tokenlrp.visualization.colour_scale`: clipped cells outlined in cyan), stated under the
    panels; the image's attention sinks ringed on their head's panels (``*`` on the head) and its high-norm
    tokens crossed on the image column, as that function marks them.
    """
    from PIL import ImageDraw

    from .visualization import image_for_display

    background = image_for_display(capture.pixel_values[0].float().cpu(), processor=explorer.loaded.processor)
    photo = Image.fromarray((background * 255).round().astype(np.uint8)).resize((tile, tile), Image.Resampling.BILINEAR)
    rows = list(settings.rules)
    diagnostics = capture.diagnostics
    sink_heads = {sink.head for sink in diagnostics.sinks} if diagnostics is not None else set()
    columns = [
        "image",
        "fused",
        *(f"head {index}{' *' if index in sink_heads else ''}" for index in range(explorer.num_heads)),
    ]
    left, top, gap, bottom = FIGURE_LEFT, FIGURE_TOP, FIGURE_GAP, 50
    width = left + len(columns) * (tile + gap)
    canvas = Image.new("RGB", (width, top + len(rows) * (tile + gap) + bottom), "white")
    draw = ImageDraw.Draw(canvas)
    title = f"{explorer.name} - fused: {settings.head_fusion}"
    if prediction is not None:
        title += f" - predicted: {prediction[0]} (p = {prediction[1]:.2f})"
    draw.text((4, 4), title, fill="black")
    for column, name in enumerate(columns):
        draw.text((left + column * (tile + gap) + 2, top - 14), name, fill="black")
    cells = capture.layout.grid
    clipped_any = False
    for row, rule in enumerate(rows):
        fused_rel, head_rel = _fused_and_heads(explorer, capture, rule, settings)
        grids = [patch_grid(fused_rel, capture.layout), *patch_grid(head_rel, capture.layout)]
        maps = [grid.double().numpy() for grid in grids]
        scale = colour_scale(maps)  # one per row, robust: one sink's patch does not darken the whole row
        clipped_any |= scale.clipped
        _, y = figure_panel_origin(row, 0, tile)
        draw.text((4, y + tile // 2 - 6), f"rule ({rule})", fill="black")
        canvas.paste(photo, (left, y))
        if diagnostics is not None:
            for cell in diagnostics.high_norm_cells():
                _cross(draw, figure_cell_box(left, y, tile, cells, cell))
        for column, values in enumerate(maps, start=1):
            colours = Image.fromarray(_colours(values, scale.low, scale.high)).resize(
                (tile, tile), Image.Resampling.NEAREST
            )
            x, _ = figure_panel_origin(row, column, tile)
            canvas.paste(Image.blend(photo, colours, FIGURE_OPACITY), (x, y))
            for cell in zip(*np.nonzero(scale.outside(values)), strict=True):
                draw.rectangle(figure_cell_box(x, y, tile, cells, cell), outline=CLIPPED_RGB)
            if diagnostics is not None and column >= 2:
                for cell in diagnostics.sink_cells(column - 2):
                    draw.ellipse(_inset(figure_cell_box(x, y, tile, cells, cell), 0.2), outline=MARKER_RGB, width=2)
    note = "colour scale: one per row (rule)"
    if clipped_any:
        note += (
            f"; its top is at most {CLIP_HEADROOM:g} x the {CLIP_PERCENTILE:g}th percentile of the row's maps, "
            "cells above it clipped (outlined in cyan)"
        )
    else:
        note += ", its minimum to maximum (nothing clipped)"
    draw.text((4, canvas.height - bottom + 2), note, fill="black")
    draw.text((4, canvas.height - bottom + 16), "inferno: dark = low, bright = high", fill="black")
    if diagnostics is not None:
        marks = (
            "ring: an attention sink's token on its head (* on the head); cross: a high-norm token"
            if diagnostics.sinks or diagnostics.high_norm_tokens
            else "no attention sink and no high-norm token"
        )
        draw.text((4, canvas.height - bottom + 30), marks, fill="black")
    return canvas


def figure_panel_origin(row: int, column: int, tile: int = 96) -> tuple[int, int]:
    """Top left ``(x, y)`` of the paper's figure's panel in ``row`` (rule) and ``column`` (0: the image,
    1: fused, 2 + h: head h)."""
    return FIGURE_LEFT + column * (tile + FIGURE_GAP), FIGURE_TOP + row * (tile + FIGURE_GAP)


def figure_cell_box(x: int, y: int, tile: int, grid: tuple[int, int], cell: tuple[int, int]) -> tuple[int, ...]:
    """The pixel box ``(x0, y0, x1, y1)`` of patch-grid ``cell`` (row, col) in a figure panel whose top left is
    ``(x, y)``, ``tile`` pixels square (corners inclusive, as PIL draws them)."""
    row, col = (int(value) for value in cell)
    x0, x1 = x + col * tile // grid[1], x + (col + 1) * tile // grid[1] - 1
    y0, y1 = y + row * tile // grid[0], y + (row + 1) * tile // grid[0] - 1
    return x0, y0, x1, y1


def _inset(box: tuple[int, ...], share: float) -> tuple[int, ...]:
    """``box`` shrunk by ``share`` of its size on each side (at most 1 pixel of room left)."""
    x0, y0, x1, y1 = box
    dx, dy = round((x1 - x0) * share), round((y1 - y0) * share)
    return x0 + dx, y0 + dy, max(x0 + dx, x1 - dx), max(y0 + dy, y1 - dy)


def _cross(draw, box: tuple[int, ...]) -> None:
    """A cross over ``box`` (a high-norm token's cell), in the markers' colour."""
    x0, y0, x1, y1 = _inset(box, 0.2)
    draw.line((x0, y0, x1, y1), fill=MARKER_RGB, width=2)
    draw.line((x0, y1, x1, y0), fill=MARKER_RGB, width=2)


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
            explorer._remember(capture, figure_key, _paper_figure(explorer, capture, settings, prediction))
        figure_image = capture.results[figure_key]
    for rule in settings.rules:
        fused_rel, head_rel = _fused_and_heads(explorer, capture, rule, settings)
        # The keys of the CLI's schema (README, "Every .npz the commands write follows one schema").
        arrays[f"relevance_{rule}"] = fused_rel.numpy()
        arrays[f"relevance_{rule}_per_head"] = head_rel.numpy()

    original = explorer.original_map(capture, selected)
    percent = _percent_per_pixel_value(capture, float(selected.sum()))
    top = _robust_top(capture, selected, percent)
    overlay = overlay_image(capture.image, original, settings.opacity, label, percent_per_value=percent, high=top)
    bar_top = float(original.max()) if top is None else min(top, float(original.max()))
    colour_scale = (float(original.min()) * percent, bar_top * percent)
    layer_view = None
    if by_layer is not None:
        depth_map = explorer.original_map(capture, by_layer[settings.depth])
        depth_percent = _percent_per_pixel_value(capture, float(by_layer[settings.depth].sum()))
        depth_top = _robust_top(capture, by_layer[settings.depth], depth_percent)
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
    scale = _robust_scale(capture, selected)
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


# ------------------------------------------------------------------------------------- samples
def bundled_samples(folder: Path, count: int = 6, seed: int = 1) -> dict[str, np.ndarray]:
    """Write ``count`` shapes images (one per class, the held-out stream ``seed``) as PNGs into ``folder``.

    Returns
    -------
    dict of str to ndarray
        :func:`image_key` of each sample -> its object mask, bool `(64, 64)`.
    """
    from .data.shapes import generate_shapes

    images, masks, labels = generate_shapes(count, seed)
    found = {}
    folder.mkdir(parents=True, exist_ok=True)
    from .data.shapes import SHAPE_CLASSES

    for index, (pixels, mask, label) in enumerate(zip(images, masks, labels, strict=True)):
        image = Image.fromarray(np.round(pixels * 255).astype(np.uint8))
        image.save(folder / f"{index:02d}-{SHAPE_CLASSES[int(label)]}.png")
        found[image_key(image)] = mask
    return found


# ------------------------------------------------------------------------------------------- Gradio
def _gradio():
    try:
        import gradio
    except ImportError:
        raise CliError(
            "tokenlrp app needs Gradio, an optional dependency: pip install 'captum-tokenlrp[app]'."
        ) from None
    return gradio


@dataclass
class _Session:
    """What one browser session (a tab; a reload starts a new one) holds: the model it loaded, if any, the
    start token it last ran, and the folder of its downloads."""

    explorer: Explorer | None = None
    start_token: object = ""
    downloads: Path | None = None

    def __deepcopy__(self, memo) -> _Session:
        # Gradio copies the initial value into each new session: a fresh one, never a copy of a model.
        return _Session(self.explorer, self.start_token, self.downloads)


def _user_error(gr, message: str):
    """The message for the page, and one line (not a traceback) in the server's log: the user can fix it.

    Internal errors (anything but :class:`AppInputError` and a model that does not load) keep Gradio's
    full traceback.
    """
    print(f"tokenlrp app: {message}", file=sys.stderr, flush=True)
    try:
        return gr.Error(message, print_exception=False)
    except TypeError:  # a Gradio without print_exception
        return gr.Error(message)


@dataclass(frozen=True)
class UnreadableUpload:
    """What the image box hands the handler when Gradio could not decode the upload (the reason, for the page)."""

    reason: str


def _image_box(gr, **options):
    """Gradio's image box, except that an upload it cannot decode reaches the handler as an
    :class:`UnreadableUpload` (so the page says what is wrong) instead of failing before it.

    The instance's ``preprocess`` is wrapped rather than the class subclassed: Gradio writes a ``.pyi``
    stub beside the module of every component subclass.
    """
    box = gr.Image(**options)
    decode = box.preprocess

    def preprocess(payload):
        try:
            return decode(payload)
        except Exception as error:  # any decoding failure: the page explains it, the app keeps running
            # Gradio's cache path means nothing to the user: name the file only.
            reason = re.sub(r"'[^']*/([^/']+)'", r"'\1'", str(error))
            return UnreadableUpload(f"{type(error).__name__}: {reason}")

    box.preprocess = preprocess
    return box


def build_app(explorer: Explorer, *, sample_dir: Path | None = None):
    """The Gradio page for ``explorer``.

    Parameters
    ----------
    explorer : Explorer
        The model side.
    sample_dir : Path, optional
        Where the bundled shapes samples are written (a temporary folder by default).

    Returns
    -------
    gradio.Blocks
    """
    gr = _gradio()
    sample_dir = Path(sample_dir or tempfile.mkdtemp(prefix="tokenlrp-samples-"))
    explorer.masks.update(bundled_samples(sample_dir))
    downloads = Path(tempfile.mkdtemp(prefix="tokenlrp-downloads-"))

    # The models the sessions hold, by the name they were loaded under: a second session asking for one gets the
    # same Explorer (one copy in memory; its caches are keyed by content, its lock serialises the work). Weak:
    # a model goes when the last session holding it does.
    models: weakref.WeakValueDictionary[str, Explorer] = weakref.WeakValueDictionary({explorer.name: explorer})

    def explorer_of(session: _Session) -> Explorer:
        """The model this browser session explains: the app's own until the session loads another."""
        return session.explorer if session.explorer is not None else explorer

    def heads_of(explorer: Explorer) -> list[str]:
        return ["fused"] + [f"head {index}" for index in range(explorer.num_heads)]

    def depth_label(explorer: Explorer) -> str:
        return f"Relevance entering layer l (0: the input tokens, {explorer.num_layers}: the start)"

    def settings_from(
        explorer: Explorer,
        rules,
        method,
        head_fusion,
        head,
        start_token,
        target_class,
        target_prompt,
        opacity,
        depth,
        size_mode,
    ):
        start = _start_token_from_box(start_token)
        return ViewSettings(
            rules=tuple(rules or ()),
            method=method,
            head_fusion=head_fusion,
            head=head,
            start_token=start,
            target=target_prompt if explorer.has_text else target_class,
            opacity=float(opacity),
            depth=int(depth),
            size_mode=size_mode,
        )

    def outputs_of(session: _Session, views: Views, capture: Capture, full: bool):
        stem = capture.key[:12]
        files = []
        if session.downloads is None:
            # One folder per session: files are named by the image, and another session may explain the same
            # image with another model or other choices at the same moment.
            session.downloads = Path(tempfile.mkdtemp(prefix="session-", dir=downloads))
        if full and views.figure is not None:
            figure_path = session.downloads / f"tokenlrp-{stem}-figure.png"
            views.figure.save(figure_path)
            files.append(str(figure_path))
        npz_path = session.downloads / f"tokenlrp-{stem}-relevance.npz"
        np.savez(npz_path, **views.arrays)
        files.append(str(npz_path))
        figure_out = views.figure if full else gr.skip()
        return (
            figure_out,
            views.overlay,
            views.layer_view,
            views.top_patches,
            views.predictions or None,
            views.mask,
            views.summary,
            files if full else gr.skip(),
            views.diagnostics,
        )

    def guarded(full: bool) -> Callable:
        def handler(session: _Session, image, size_mode, *choices):
            if image is None:
                return (None, None, None, [], None, None, "Upload an image or pick a bundled sample.", None, "")
            explorer = explorer_of(session)
            try:
                capture = explorer.capture(image, size_mode)
                views = render(explorer, capture, settings_from(explorer, *choices, size_mode), figure=full)
            except AppInputError as error:
                raise _user_error(gr, str(error)) from None
            return outputs_of(session, views, capture, full)

        return handler

    def on_start_token(session: _Session, image, size_mode, *choices):
        """Run when the start token is submitted (Enter) or left (blur), once per value: not on every keystroke."""
        start = choices[4]
        if start == session.start_token:  # Enter, then a click elsewhere: one run, one message
            return tuple(gr.skip() for _ in outputs)
        session.start_token = start
        return full(session, image, size_mode, *choices)

    def load_other(session: _Session, name: str):
        previous = explorer_of(session)
        other = models.get(name.strip())
        if other is None:
            try:
                other = Explorer(name.strip(), device=previous.device, dtype=previous.dtype)
            except (CliError, ValueError, TypeError) as error:
                raise _user_error(gr, f"Could not load {name!r}: {error}") from None
            models[name.strip()] = other
        other.masks.update(previous.masks)
        # This session's model only: the other sessions (tabs, users) keep theirs. The previous model of this
        # session is freed with its last reference; the app's own stays for the new sessions.
        session.explorer = other
        return (
            f"# Token relevance explorer\n{other.describe()}",
            gr.update(choices=other.methods, value="iv"),
            gr.update(choices=heads_of(other), value="fused"),
            gr.update(choices=["predicted", *other.class_names], value="predicted", visible=other.is_classifier),
            gr.update(visible=other.has_text),
            gr.update(maximum=other.num_layers, value=0, label=depth_label(other)),
            gr.update(visible=other.is_classifier),
        )

    with gr.Blocks(title="tokenlrp explorer", analytics_enabled=False) as app:
        # Gradio deep-copies a State's initial value into every new session (tab, reload): each starts on the
        # app's model and holds its own afterwards.
        session = gr.State(_Session())
        header = gr.Markdown(f"# Token relevance explorer\n{explorer.describe()}")
        with gr.Row():
            model_name = gr.Textbox(
                value=explorer.name,
                label="Model: 'bundled', a local checkpoint folder or a hub id",
                elem_id="model",
                scale=4,
            )
            load = gr.Button("Load model", elem_id="load-model", scale=1)
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                image = _image_box(
                    gr,
                    type="pil",
                    label="Image",
                    sources=["upload", "clipboard"],
                    elem_id="image-input",
                    format="png",  # lossless: a sample set by the radio keeps its pixels (and its mask) height=280
                )
                # Radio buttons rather than gr.Examples, whose sample grid throws in the browser on the
                # Gradio 6 releases that transformers 4.x can install.
                sample_paths = {path.stem: path for path in sorted(sample_dir.glob("*.png"))}
                samples = gr.Radio(
                    list(sample_paths),
                    value=None,
                    label="Or a bundled shapes sample (its object mask is known)",
                    elem_id="samples",
                )
                size_mode = gr.Radio(
                    list(SIZE_MODES),
                    value="processor",
                    label="Image size",
                    elem_id="size-mode",
                    info="processor: resized and cropped as in training; native: own size, interpolated positions",
                )
                rules = gr.CheckboxGroup(
                    list(available_rules()),
                    value=["i", "ii", "iii", "iv"],
                    label="Rules in the figure",
                    elem_id="rules",
                )
                method = gr.Radio(explorer.methods, value="iv", label="Method of the overlay", elem_id="method")
                head_fusion = gr.Radio(list(HEAD_FUSIONS), value="mean", label="Head fusion", elem_id="fusion")
                head = gr.Radio(heads_of(explorer), value="fused", label="Head of the overlay", elem_id="head")
                # A text box, not gr.Number: an empty Number reaches the handler as 0, a token like any other.
                start_token = gr.Textbox(
                    value="",
                    placeholder="empty: where the model's output is read",
                    lines=1,
                    max_lines=1,
                    label="Start token (empty: where the model's output is read; -1: the last token)",
                    info="A token index; negative ones count from the end, as in Python and the API's target.",
                    elem_id="start-token",
                )
                target_class = gr.Dropdown(
                    ["predicted", *explorer.class_names],
                    value="predicted",
                    label="GAE target class",
                    elem_id="target-class",
                    visible=explorer.is_classifier,
                )
                target_prompt = gr.Textbox(
                    value="", label="GAE target: a text prompt", elem_id="target-prompt", visible=explorer.has_text
                )
                opacity = gr.Slider(0.0, 1.0, value=0.6, step=0.05, label="Opacity", elem_id="opacity")
                depth = gr.Slider(
                    0,
                    explorer.num_layers,
                    value=0,
                    step=1,
                    elem_id="depth",
                    label=depth_label(explorer),
                )
            with gr.Column(scale=2):
                summary = gr.Markdown(elem_id="summary")
                diagnostics = gr.Markdown(elem_id="diagnostics")
                overlay = gr.Image(label="Overlay", show_label=False, elem_id="overlay", format="png")
                with gr.Row():
                    layer_view = gr.Image(label="Layer by layer", show_label=False, elem_id="layer-view", format="png")
                    mask = gr.Image(label="Object mask (bundled samples)", elem_id="mask", format="png")
                predictions = gr.Label(
                    label="Predicted classes",
                    num_top_classes=5,
                    visible=explorer.is_classifier,
                    elem_id="predictions",
                )
                top = gr.Dataframe(
                    headers=["rank", "token", "row", "col", "% of total"],
                    label="Top patches (% of the map's total relevance, as the colour bars)",
                    elem_id="top-patches",
                )
                figure = gr.Image(label="The paper's figure: rules x (fused, heads)", elem_id="figure", format="png")
                files = gr.File(label="Download: figure (PNG) and relevance (.npz)", file_count="multiple")
        choices = [rules, method, head_fusion, head, start_token, target_class, target_prompt, opacity, depth]
        outputs = [figure, overlay, layer_view, top, predictions, mask, summary, files, diagnostics]
        full, light = guarded(True), guarded(False)
        inputs = [session, image, size_mode, *choices]
        changed_by_load = [header, method, head, target_class, target_prompt, depth, predictions]
        load.click(load_other, [session, model_name], changed_by_load, show_progress="hidden").success(
            full, inputs, outputs
        )
        for component in (image, size_mode, rules, method, head_fusion, head, target_class):
            component.change(full, inputs, outputs)
        # A number being typed (9, 99, 999) is no start token yet: run on Enter or on leaving the box.
        # One queue for both (Enter, then a click elsewhere): the second sees the first's value and does nothing.
        start_token.submit(on_start_token, inputs, outputs, concurrency_id="start-token")
        start_token.blur(on_start_token, inputs, outputs, concurrency_id="start-token")
        target_prompt.submit(full, inputs, outputs)

        def pick_sample(name: str | None):
            if not name:
                return gr.skip()
            with Image.open(sample_paths[name]) as picked:
                return picked.convert("RGB")

        samples.change(pick_sample, samples, image)
        for component in (opacity, depth):
            component.release(light, inputs, outputs)
    return app


#: Gradio's browser client streams an upload's progress through its own fetch-based stand-in for EventSource,
#: whose ``close()`` is a stub that only prints ``console.warn("Method not implemented.")``; its upload widget
#: calls it twice per file (when the upload is done, and when the progress bar goes). Nothing fails, but two
#: warnings per upload bury the console messages that matter. The app cannot reach that object, so the page
#: drops exactly this message (nothing else) before Gradio's scripts run.
_QUIET_STUB_WARNING = """<script>
(function () {
  var warn = console.warn;
  console.warn = function () {
    if (arguments.length === 1 && arguments[0] === "Method not implemented.") { return; }
    return warn.apply(console, arguments);
  };
})();
</script>"""


def _theme(gr):
    """System fonts only: the default theme would fetch web fonts, and the app must need no network."""
    fonts = ["ui-sans-serif", "system-ui", "sans-serif"]
    return gr.themes.Default(font=fonts, font_mono=["ui-monospace", "monospace"])


def launch(
    model: str | Explorer = "bundled",
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    block: bool = True,
):
    """Load the model, build the page and serve it; prints the local URL.

    ``model`` is what :class:`Explorer` takes, or an :class:`Explorer` already built.

    Returns
    -------
    (gradio.Blocks, str)
        The running app and its URL (with ``block=False``; otherwise serves until interrupted).
    """
    gr = _gradio()
    explorer = model if isinstance(model, Explorer) else Explorer(model, device=device, dtype=dtype)
    app = build_app(explorer)
    _, url, _ = app.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        share=False,
        theme=_theme(gr),
        head=_QUIET_STUB_WARNING,
        max_file_size="50mb",
        footer_links=[],
        ssr_mode=False,
    )
    print(f"tokenlrp app: {explorer.name} at {url} (Ctrl+C to stop)", flush=True)
    if block:
        try:
            app.block_thread()
        finally:
            app.close()
    return app, url
