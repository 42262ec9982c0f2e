"""``tokenlrp explain``: the paper's figure and a ``.npz`` for a few images, all written or none."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .. import TokenRelevanceLRP
from .._loading import (
    DTYPES,
    CliError,
    LoadedModel,
    forward_options,
    keep_logits,
    load_model,
    prediction,
    prediction_arrays,
    preprocess,
    prompt_explainer,
    target_class,
)
from ..diagnostics import recording
from ..images import load_image
from ..visualization import display_geometry, patch_grid, plot_method_comparison, plot_rule_grid
from ._arrays import fused_for_display, layout_arrays, relevance_arrays, relevance_by_rule
from ._manifest import manifest_json, rule_names, run_manifest
from ._outputs import atomic_write_files, figure_bytes, file_sha256, npz_bytes, refuse_foreign


def class_sensitive_lrp(loaded: LoadedModel, rule: str, args: argparse.Namespace) -> TokenRelevanceLRP:
    """``TokenRelevanceLRP`` for ``explain``: the paper's rules, or ``--class-sensitive`` ones (classifiers)."""
    if args.class_sensitive is None:
        if args.target_class is not None:
            raise CliError("--target-class needs --class-sensitive: the paper's rules do not depend on the class.")
        return TokenRelevanceLRP(loaded.model, rule=rule)
    if args.target_token is not None:
        raise CliError("--class-sensitive starts where the classifier reads; it does not take --target-token.")
    if args.class_sensitive != "attention" and args.head_fusion != "mean":
        raise CliError(f"--class-sensitive {args.class_sensitive} fuses the heads itself: use --head-fusion mean.")
    try:
        return TokenRelevanceLRP(loaded.model, rule=rule, class_sensitive=args.class_sensitive)
    except ValueError as error:
        raise CliError(str(error)) from None


def output_names(paths: Sequence[Path]) -> list[str]:
    """Output names for the images given to ``explain``: the file name, extension included.

    ``OUT/<name>.png`` and ``OUT/<name>.npz`` (``cat.jpg`` -> ``cat.jpg.png``, ``cat.jpg.npz``), as
    ``explain-dir`` names its outputs: an output never has an input's name, even with ``--out`` the
    input's own folder.
    """
    names = [path.name for path in paths]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise CliError(
            f"Several inputs would write the same outputs ({', '.join(repeated)}): files of the same name in "
            "different folders. Explain them in separate runs (another --out), or use explain-dir, which "
            "mirrors the folder structure."
        )
    return names


def explain(args: argparse.Namespace) -> int:
    """The paper's figure and a ``.npz`` per image; every output is computed before any is written."""
    loaded = load_model(args.model, args.device, args.dtype)
    forward_args = forward_options(loaded, args.interpolate_pos_encoding)
    rules = rule_names(args)
    from ..models import BUNDLED_SAMPLE

    paths = [Path(path) for path in args.images] if args.images else [BUNDLED_SAMPLE]
    named = []
    for path, name in zip(paths, output_names(paths), strict=True):
        try:
            named.append((name, load_image(path), file_sha256(path)))
        except (OSError, ValueError) as error:
            raise CliError(f"Cannot read image {path}: {error}") from None
    out = Path(args.out)
    lrp = class_sensitive_lrp(loaded, rules[0], args)
    target = target_class(loaded.model, args.target_class)
    manifest_text = manifest_json(run_manifest(loaded, args, rules))
    # The "heads" modes fuse the heads by their contribution: no per-head maps.
    per_head_maps = args.class_sensitive not in ("heads", "attention+heads")
    modes = list(dict.fromkeys([args.head_fusion, None] if per_head_maps else [args.head_fusion]))
    mode = "" if args.class_sensitive is None else f" - class-sensitive ({args.class_sensitive})"
    if target is not None:
        mode += f", class {loaded.model.config.id2label[target]}"
    prompts = prompt_explainer(loaded, args.prompts)
    outputs = [out / f"{name}{suffix}" for name, _, _ in named for suffix in (".png", ".npz", ".prompts.png")]
    refuse_foreign(outputs, inputs=paths if args.images else ())
    files: list[tuple[Path, bytes]] = []
    for name, image, digest in named:
        pixel_values = preprocess(loaded.processor, [image]).to(args.device, DTYPES[args.dtype])
        # recording: attention sinks and high-norm tokens from the same forward pass, for the figure and the .npz
        with keep_logits(loaded.model) as logits, recording(loaded.model) as watched:
            relevance, layout = relevance_by_rule(
                lrp, pixel_values, rules, modes, args.target_token, forward_args, target
            )
        fused_maps = {rule: relevance[rule][args.head_fusion][0] for rule in rules}
        head_maps = {rule: relevance[rule][None][0] for rule in rules} if per_head_maps else {}
        arrays = relevance_arrays(rules, fused_maps, head_maps)
        # a per-head --head-fusion shows its mean as the fused column
        fused = {f"rule ({rule})": patch_grid(torch.from_numpy(fused_for_display(fused_maps[rule])), layout)
                 for rule in rules}
        per_head = {f"rule ({rule})": patch_grid(torch.from_numpy(maps), layout) for rule, maps in head_maps.items()}
        predicted = None
        if logits:
            _, class_label, probability = prediction(loaded.model, logits[-1][0])
            predicted = (class_label, probability)
            arrays.update(prediction_arrays(loaded.model, logits[-1][0]))
        diagnostics = watched.diagnostics(layout)
        arrays.update(diagnostics.as_arrays())
        geometry = display_geometry(loaded.processor, image, pixel_values.shape[-2:])
        figure = plot_rule_grid(
            pixel_values[0].float().cpu(),
            fused,
            per_head or None,
            title=f"{name} - {loaded.name}{mode}",
            prediction=predicted,
            scale=args.scale,
            processor=loaded.processor,
            geometry=geometry,
            diagnostics=diagnostics,
        )
        written = [(out / f"{name}.png", figure_bytes(figure))]
        if prompts is not None:
            maps = prompts.token_relevance(pixel_values, target=args.prompts, additional_forward_args=forward_args)
            arrays["prompts"] = np.array(args.prompts)
            arrays["prompt_gae"] = maps[0].float().cpu().numpy()
            panels = {text: patch_grid(maps[0, index].float().cpu(), layout) for index, text in enumerate(args.prompts)}
            figure = plot_method_comparison(
                pixel_values[0].float().cpu(),
                panels,
                title=f"{name} - GAE on the image-text similarity",
                processor=loaded.processor,
                geometry=geometry,
            )
            written.append((out / f"{name}.prompts.png", figure_bytes(figure)))
        arrays.update(input=np.array(name), input_sha256=np.array(digest))
        written.append(
            (out / f"{name}.npz", npz_bytes(**arrays, **layout_arrays(layout), manifest=np.array(manifest_text)))
        )
        files += written
    atomic_write_files(files)  # all or nothing: a failure on any image leaves no output of the run
    for path, _ in files:
        print(f"Wrote {path}")
    return 0
