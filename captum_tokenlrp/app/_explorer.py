"""The model side of the app: one capture of the forward pass per image, relevance replayed from it.

This module is the only one of the app that runs the attribution's steps one by one, through its
public engine (``TokenRelevanceLRP.engine``): :meth:`Explorer._capture` prepares the image and records
one forward pass, keeping every layer's projections, and :meth:`Explorer._replay` turns them into any
rule's layer matrices and propagates the start through them at every depth, so that every view is
computed from one forward pass.
"""

from __future__ import annotations

import copy
import inspect
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .. import TokenRelevanceLRP
from .._adapters import TokenLayout, adapter_for
from .._core.base import PreparedInputs
from .._core.geometry import patch_grid
from .._core.propagation import FUSED_HEAD_MODES
from .._loading import CliError, LoadedModel, keep_logits, load_model, prompt_explainer
from .._version import __version__
from ..baselines import GenericAttentionExplainability
from ..diagnostics import Diagnostics, recording
from ..evaluation import relevance_mass
from ..images import ImageGeometry, map_to_original, processor_geometry
from ..images._processor import pil_layout_kwargs
from ..rules import available_rules, get_rule
from ._inputs import AppInputError, check_upload, image_key

#: In "native size" mode the image is first shrunk to this longest side, so the token count stays interactive.
NATIVE_MAX_SIDE = 448


#: The method name under which the app offers GAE (class- or prompt-sensitive) beside the rules.
GAE = "GAE"


#: Head modes offered for the fused map (the per-head maps are always computed for the figure).
HEAD_FUSIONS = (*FUSED_HEAD_MODES, "last_layer_per_head")


SIZE_MODES = ("processor", "native")


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
        loaded = check_upload(image)
        with self._lock:
            return self._capture(loaded, size_mode)

    def _capture(self, loaded: Image.Image, size_mode: str) -> Capture:
        pixels_key = image_key(loaded)
        key = f"{pixels_key}:{size_mode}"
        if key in self._captures:
            self._captures.move_to_end(key)
            return self._captures[key]
        pixel_values, geometry, forward_args = self._model_input(loaded, size_mode)
        engine = self.lrp.engine
        prepared = engine.prepare(pixel_values, forward_args)
        began = time.perf_counter()
        # The sinks and high-norm tokens from the same forward pass (hooks, no second pass).
        with recording(self.loaded.model) as watched, keep_logits(self.loaded.model) as logits:
            layers = engine.record(prepared, sites=self.sites)
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
            pixel_values = processor(images=image, return_tensors="pt", **pil_layout_kwargs(processor))["pixel_values"]
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
        pixel_values = native(images=shrunk, return_tensors="pt", **pil_layout_kwargs(native))["pixel_values"]
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
        engine = self.lrp.engine
        layer_matrix = engine.layer_matrix(head_fusion, get_rule(rule))
        matrices = [layer_matrix(layer) for layer in capture.layers]
        explicit = None
        if start_token is not None:
            explicit = torch.zeros(1, capture.layout.num_tokens, device=capture.pixel_values.device)
            explicit[0, start_token] = 1.0
        try:
            replayed = engine.propagate(capture.prepared, matrices, head_fusion, start=explicit, how="by_layer")
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
