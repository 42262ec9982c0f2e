"""What ViT, DeiT and DINOv2 share in HuggingFace transformers: where the attention lives.

Two module layouts exist, and each family has used both:

- transformers 5 (and DINOv2's newer code): ``block.attention.{q,k,v,o}_proj``;
- transformers 4.x: ``block.attention.attention.{query,key,value}`` with the
  output projection at ``block.attention.output.dense``.

Blocks are ``backbone.layers`` (transformers 5) or ``backbone.encoder.layer``.
A family adapter only says which classes it handles, where the backbone is,
which special tokens precede the patches, and how a classifier reads them.
"""

from __future__ import annotations

import inspect
from typing import ClassVar

from torch import nn

from .base import AttentionSite, ModelAdapter, TokenLayout, transformers_classes


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, (tuple, list)):
        return int(size[0]), int(size[1])
    return int(size), int(size)


class ConfigTokens:
    """Token layout, channels and image size read from a ViT-style ``self.config`` (``patch_size``,
    ``num_channels``, ``image_size``): one CLS token before the patches unless a subclass says otherwise."""

    config: object

    def special_token_names(self) -> tuple[str, ...]:
        return ("cls",)

    def token_layout(self, height: int, width: int) -> TokenLayout:
        patch = _pair(self.config.patch_size)
        return TokenLayout(
            special_token_names=self.special_token_names(),
            grid=(height // patch[0], width // patch[1]),
            patch_size=patch,
        )

    @property
    def num_channels(self) -> int:
        return int(self.config.num_channels)

    @property
    def image_size(self) -> tuple[int, int]:
        return _pair(self.config.image_size)


class HFViTFamilyAdapter(ConfigTokens, ModelAdapter):
    """Base for HuggingFace ViT-like encoders: special tokens first, then patches in row-major order."""

    #: Attribute of a task model (classifier) that holds the base model.
    backbone_attribute: ClassVar[str] = ""
    attention_altering_arguments = ("head_mask", "attention_mask")
    #: ``transformers``' names of the base (headless) model classes and of the classifiers around them;
    #: :attr:`supported_class_names` is both, unless a subclass says otherwise.
    base_class_names: ClassVar[tuple[str, ...]] = ()
    classifier_class_names: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "supported_class_names" not in cls.__dict__:
            cls.supported_class_names = cls.base_class_names + cls.classifier_class_names

    @classmethod
    def base_classes(cls) -> tuple[type, ...]:
        """The base (headless) model classes, imported lazily."""
        return transformers_classes(cls.base_class_names)

    @classmethod
    def classifier_classes(cls) -> tuple[type, ...]:
        """The classifier classes whose ``backbone_attribute`` holds a base model."""
        return transformers_classes(cls.classifier_class_names)

    @classmethod
    def model_classes(cls) -> tuple[type, ...]:
        return cls.base_classes() + cls.classifier_classes()

    @classmethod
    def loading_options(cls, model_class: type) -> dict[str, object]:
        # A base model's pooler is never read by the explanation (and DINO checkpoints have none).
        if model_class in cls.base_classes() and "add_pooling_layer" in inspect.signature(model_class).parameters:
            return {"add_pooling_layer": False}
        return {}

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.backbone = model if isinstance(model, self.base_classes()) else getattr(model, self.backbone_attribute)
        self.config = model.config

    # ----------------------------------------------------------- layers
    def _layers(self) -> nn.ModuleList:
        if hasattr(self.backbone, "layers"):
            return self.backbone.layers
        return self.backbone.encoder.layer

    def transformer_blocks(self) -> list[nn.Module]:
        return list(self._layers())

    def attention_sites(self) -> list[AttentionSite]:
        sites = []
        for index, layer in enumerate(self._layers()):
            block = layer.attention
            if hasattr(block, "q_proj"):
                module, query, key, value, output = block, block.q_proj, block.k_proj, block.v_proj, block.o_proj
                head_dim = block.head_dim
                rule_modules: tuple[nn.Module, ...] = (block,)
            else:
                module = block.attention
                query, key, value, output = module.query, module.key, module.value, block.output.dense
                head_dim = module.attention_head_size
                rule_modules = (block, module)
            sites.append(
                AttentionSite.of(
                    index,
                    module,
                    (query, key, value, output),
                    query.out_features // head_dim,
                    head_dim,
                    # Older 4.x releases divide by sqrt(head_dim) instead of storing `scaling`.
                    float(getattr(module, "scaling", head_dim**-0.5)),
                    rule_modules,
                )
            )
        return sites

    @property
    def num_labels(self) -> int | None:
        if isinstance(self.model, self.base_classes()):
            return None
        return int(self.model.config.num_labels)
