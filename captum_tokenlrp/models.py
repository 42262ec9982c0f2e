"""DINO ViT configurations and model loading.

Real weights come from the HuggingFace Hub (``ViTModel.from_pretrained``);
where the Hub is out of reach (tests, CI, firewalled machines),
:func:`random_dino_model` builds a seeded random-init model with the exact
architecture of a DINO checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = [
    "BUNDLED_MODEL_DIR",
    "DINO_ARCHITECTURES",
    "bundled_sample_image",
    "dino_config",
    "load_bundled_model",
    "load_vit",
    "random_dino_model",
]

#: The small ViT trained on the synthetic shapes data that ships with the package.
BUNDLED_MODEL_DIR = Path(__file__).resolve().parent / "bundled" / "shapes-vit"
BUNDLED_SAMPLE = Path(__file__).resolve().parent / "bundled" / "sample.png"
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


def load_vit(name_or_path: str, **kwargs: object):
    """Load a ViT (e.g. ``"facebook/dino-vits16"`` or a local directory) with ``from_pretrained``.

    Classifier checkpoints load as ``ViTForImageClassification``, others as ``ViTModel``.
    ``kwargs`` go to ``from_pretrained`` (``attn_implementation``, ``torch_dtype``, ...).
    """
    from transformers import AutoConfig, ViTForImageClassification, ViTModel

    config = AutoConfig.from_pretrained(name_or_path)
    architectures = getattr(config, "architectures", None) or []
    model_class = ViTForImageClassification if "ViTForImageClassification" in architectures else ViTModel
    return model_class.from_pretrained(name_or_path, **kwargs).eval()


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


def bundled_sample_image():
    """A sample image of the bundled shapes data (PIL image, 64 x 64, RGB)."""
    from PIL import Image

    with Image.open(BUNDLED_SAMPLE) as image:
        return image.convert("RGB")
