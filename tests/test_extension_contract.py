"""The public extension contract: an adapter for a new architecture and a new attribution method,
written with the public API only (as the README and docstrings describe), and the engine's work
buffers kept away from user code."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import captum_tokenlrp
from captum_tokenlrp import (
    RULE_IV,
    AttentionSite,
    AttentionState,
    ModelAdapter,
    TokenAttribution,
    TokenLayout,
    TokenRelevanceLRP,
    TokenRule,
    register_adapter,
)
from captum_tokenlrp.rules import AttentionWeight, ValueDeviationActivation


# ------------------------------------------------------------------ a toy architecture
class ToyAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))
        self.probabilities = None  # the toy keeps its own attention, for the reference below

    def forward(self, x):
        b, n, _ = x.shape

        def split(t):
            return t.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        self.probabilities = torch.softmax(q @ k.transpose(-1, -2) * self.head_dim**-0.5, dim=-1)
        return self.o((self.probabilities @ v).transpose(1, 2).reshape(b, n, -1))


class ToyBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = ToyAttention(width, heads)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ToyViT(nn.Module):
    """CLS + 4 x 4 patches of 4 px, 3 blocks of 2 heads."""

    def __init__(self, width: int = 16, heads: int = 2, depth: int = 3) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, width, kernel_size=4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, width))
        self.blocks = nn.ModuleList(ToyBlock(width, heads) for _ in range(depth))

    def forward(self, pixel_values):
        tokens = self.patches(pixel_values).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(tokens), -1, -1), tokens], dim=1)
        for block in self.blocks:
            x = block(x)
        return x


class ToyAdapter(ModelAdapter):
    """Everything the package needs to know about ToyViT."""

    supported_class_names = ("ToyViT",)

    @classmethod
    def handles(cls, model):
        return isinstance(model, ToyViT)

    def attention_sites(self):
        return [
            AttentionSite(
                layer_index=index,
                module=block.attention,
                query=block.attention.q,
                key=block.attention.k,
                value=block.attention.v,
                output=block.attention.o,
                num_heads=block.attention.heads,
                head_dim=block.attention.head_dim,
                scaling=block.attention.head_dim**-0.5,
                rule_modules=(block.attention,),
            )
            for index, block in enumerate(self.model.blocks)
        ]

    def transformer_blocks(self):
        return list(self.model.blocks)

    def token_layout(self, height, width):
        return TokenLayout(special_token_names=("cls",), grid=(height // 4, width // 4), patch_size=(4, 4))

    @property
    def num_channels(self):
        return 3

    @property
    def image_size(self):
        return (16, 16)


@pytest.fixture
def toy():
    from captum_tokenlrp._adapters.base import _ADAPTERS

    register_adapter(ToyAdapter)
    torch.manual_seed(0)
    model = ToyViT().eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attention.q.weight.mul_(4)  # peaked attention: the rules then differ clearly
    yield model
    _ADAPTERS.remove(ToyAdapter)


def toy_layers(model, images):
    """Per layer the toy's own attention probabilities and per-head values, float64."""
    values = []
    hooks = [block.attention.v.register_forward_hook(lambda m, a, out: values.append(out)) for block in model.blocks]
    probabilities = []
    hooks += [
        block.attention.register_forward_hook(lambda m, a, out: probabilities.append(m.probabilities))
        for block in model.blocks
    ]
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    b, n, _ = values[0].shape
    return [
        (w.double(), v.reshape(b, n, 2, -1).transpose(1, 2).double())
        for w, v in zip(probabilities, values, strict=True)
    ]


def reference_rule_iv_per_head(layers):
    """Rule (iv) from METHOD.md with the toy's own w and v, per head, from e_CLS."""
    b, h, n, _ = layers[0][0].shape
    relevance = torch.zeros(b, h, n, dtype=torch.float64)
    relevance[..., 0] = 1
    for w, v in reversed(layers):
        activation = (v - v.mean(dim=-2, keepdim=True)).norm(dim=-1)  # a_j = ||v_j - v_mean||
        distance = (v.unsqueeze(-2) - v.unsqueeze(-3)).norm(dim=-1)  # [i, j] = ||v_j - v_i||
        z = (distance * w + torch.eye(n, dtype=torch.float64)) * activation.unsqueeze(-2)
        relevance = torch.einsum("bhi,bhij->bhj", relevance, z / z.sum(dim=-1, keepdim=True))
    return relevance


def test_an_adapter_written_with_the_public_api_explains_a_new_architecture(toy):
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    lrp = TokenRelevanceLRP(toy, rule="iv")
    assert lrp.token_layout(images).num_tokens == 17
    per_head = lrp.token_relevance(images, head_fusion=None)
    expected = reference_rule_iv_per_head(toy_layers(toy, images))
    torch.testing.assert_close(per_head.double(), expected, atol=1e-6, rtol=1e-5)
    pixels, delta = lrp.attribute(images, return_convergence_delta=True)
    assert pixels.shape == images.shape and float(delta.abs().max()) < 1e-5
    assert "ToyViT" in captum_tokenlrp.supported_model_classes()


def test_a_new_method_implements_only_its_part(toy):
    class LastLayerCLS(TokenAttribution):
        """The last layer's CLS attention row, heads averaged (the TokenAttribution docstring's example)."""

        def _token_relevance(self, prepared, target):
            (attention,) = self._record(prepared, self.attention_sites[-1:], lambda layer: layer.state().attention)
            return attention[:, :, 0].mean(dim=1)

    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    method = LastLayerCLS(toy)
    relevance = method.token_relevance(images)
    expected = toy_layers(toy, images)[-1][0][:, :, 0].mean(dim=1)
    torch.testing.assert_close(relevance.double(), expected, atol=1e-6, rtol=1e-5)
    pixels = method.attribute((images,))  # tuple in, tuple out, pixels from the template
    assert isinstance(pixels, tuple) and pixels[0].shape == images.shape
    torch.testing.assert_close(pixels[0].sum(dim=(1, 2, 3)), relevance[:, 1:].sum(dim=1))
    with pytest.raises(TypeError, match=r"unexpected option\(s\) \['head_fusion'\]; its options are: none"):
        method.token_relevance(images, head_fusion=None)


def test_attention_state_carries_no_work_buffers():
    assert "workspace" not in {field.name for field in dataclasses.fields(AttentionState)}
    assert not hasattr(TokenRule, "is_builtin")


class KeepingWeight(AttentionWeight):
    """A user's subclass of a built-in weight that keeps every attention tensor it is shown."""

    def __init__(self):
        self.seen = []

    def __call__(self, state):
        self.seen.append((state.attention, state.attention.clone()))
        return super().__call__(state)


def test_a_subclass_of_a_builtin_component_never_sees_work_buffers(tiny_model, tiny_images):
    weight = KeepingWeight()
    rule = TokenRule(ValueDeviationActivation(), weight, name="keeping")
    ours = TokenRelevanceLRP(tiny_model, rule=rule).token_relevance(tiny_images)
    builtin = TokenRelevanceLRP(tiny_model, rule="ii").token_relevance(tiny_images)
    torch.testing.assert_close(ours, builtin, atol=1e-6, rtol=1e-5)
    assert len(weight.seen) == 3  # one state per layer (all heads fit one chunk)
    for kept, copy_when_called in weight.seen:  # nothing overwrote what the user kept
        assert torch.equal(kept, copy_when_called)
    pointers = {kept.data_ptr() for kept, _ in weight.seen}
    assert len(pointers) == 3  # three tensors, not one reused buffer


def test_rule_iv_object_is_still_the_builtin_fast_path(tiny_model, tiny_images):
    by_name = TokenRelevanceLRP(tiny_model, rule="iv").token_relevance(tiny_images)
    by_object = TokenRelevanceLRP(tiny_model, rule=RULE_IV).token_relevance(tiny_images)
    torch.testing.assert_close(by_name, by_object, rtol=0, atol=0)
