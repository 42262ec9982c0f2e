"""HuggingFace ``ViTModel`` (DINO checkpoints) and ``ViTForImageClassification``.

Both transformers layouts are handled:

- transformers 5: ``model.layers[i].attention.{q,k,v}_proj``;
- transformers 4.x: ``model.encoder.layer[i].attention.attention.{query,key,value}``.
"""

from __future__ import annotations

from torch import nn

from .base import AttentionSite, ModelAdapter, TokenLayout, register_adapter


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, (tuple, list)):
        return int(size[0]), int(size[1])
    return int(size), int(size)


@register_adapter
class ViTAdapter(ModelAdapter):
    """Adapter for ``ViTModel`` and ``ViTForImageClassification`` (one CLS token)."""

    supported_class_names = ("ViTModel", "ViTForImageClassification")
    attention_altering_arguments = ("head_mask", "attention_mask")

    @classmethod
    def handles(cls, model: nn.Module) -> bool:
        from transformers import ViTForImageClassification, ViTModel

        return isinstance(model, (ViTModel, ViTForImageClassification))

    def __init__(self, model: nn.Module) -> None:
        from transformers import ViTModel

        super().__init__(model)
        self.backbone = model if isinstance(model, ViTModel) else model.vit
        self.config = model.config

    def _layers(self) -> nn.ModuleList:
        if hasattr(self.backbone, "layers"):  # transformers >= 5
            return self.backbone.layers
        return self.backbone.encoder.layer  # transformers 4.x

    def transformer_blocks(self) -> list[nn.Module]:
        return list(self._layers())

    def attention_sites(self) -> list[AttentionSite]:
        sites = []
        for index, layer in enumerate(self._layers()):
            block = layer.attention
            if hasattr(block, "q_proj"):  # transformers >= 5: projections on the block itself
                module, query, key, value = block, block.q_proj, block.k_proj, block.v_proj
                output = block.o_proj
                head_dim = block.head_dim
                rule_modules: tuple[nn.Module, ...] = (block,)
            else:  # transformers 4.x: ViTAttention -> ViTSelfAttention
                module = block.attention
                query, key, value = module.query, module.key, module.value
                output = block.output.dense
                head_dim = module.attention_head_size
                rule_modules = (block, module)
            num_heads = query.out_features // head_dim
            sites.append(
                AttentionSite(
                    layer_index=index,
                    module=module,
                    query=query,
                    key=key,
                    value=value,
                    output=output,
                    num_heads=num_heads,
                    head_dim=head_dim,
                    # Older 4.x releases divide by sqrt(head_dim) instead of storing `scaling`.
                    scaling=float(getattr(module, "scaling", head_dim**-0.5)),
                    rule_modules=rule_modules,
                )
            )
        return sites

    def token_layout(self, height: int, width: int) -> TokenLayout:
        patch = _pair(self.config.patch_size)
        return TokenLayout(
            special_token_names=("cls",),
            grid=(height // patch[0], width // patch[1]),
            patch_size=patch,
        )

    @property
    def num_channels(self) -> int:
        return int(self.config.num_channels)

    @property
    def image_size(self) -> tuple[int, int]:
        return _pair(self.config.image_size)

    @property
    def num_labels(self) -> int | None:
        from transformers import ViTModel

        if isinstance(self.model, ViTModel):
            return None
        return int(self.model.config.num_labels)
