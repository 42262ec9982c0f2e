"""One stack for images and text: one template, one adapter registry, one class per method.

The text side against float64 references written from the formulas (on each family's own eager
attention, per sentence on its real tokens): the head fusions and discard ratio of rollout, raw
attention's fused rows, every output token's map, the map at every depth; and the public surface
of the unification (modalities, the registry, the Text* names as views of the one classes).
"""

from __future__ import annotations

import pytest
import torch
from text_models import build_text_model, eager_attention_and_values, reference_text_relevance, token_ids

import captum_tokenlrp
from captum_tokenlrp import (
    ModelAdapter,
    TextModelAdapter,
    TextTokenRelevanceLRP,
    TokenRelevanceLRP,
    register_adapter,
    supported_model_classes,
    supported_text_model_classes,
)
from captum_tokenlrp.baselines import (
    AttentionRollout,
    AttnLRP,
    GenericAttentionExplainability,
    RawAttention,
    TextAttentionRollout,
    TextGenericAttentionExplainability,
    TextLayerIntegratedGradients,
    TextRawAttention,
    TokenIntegratedGradients,
)

DOUBLE = torch.float64
MASK = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0]])


def padded_batch(name: str = "bert"):
    model = build_text_model(name)
    ids = token_ids(3, 7)
    return model, ids, MASK.clone()


def first_token_start(mask: torch.Tensor) -> torch.Tensor:
    start = torch.zeros(mask.shape, dtype=DOUBLE)
    start[:, 0] = 1.0
    return start


def fuse(attention: torch.Tensor, how: str) -> torch.Tensor:
    """`(H, N, N)` -> `(N, N)`: the heads' mean, max or min."""
    if how == "mean":
        return attention.mean(dim=0)
    return attention.amax(dim=0) if how == "max" else attention.amin(dim=0)


def reference_rollout(layers, mask, start, how: str, discard_ratio: float = 0.0) -> torch.Tensor:
    """float64 rollout per sentence on its real tokens: fuse, discard the lowest entries, add I, normalise rows."""
    out = torch.zeros(mask.shape, dtype=DOUBLE)
    for b in range(mask.shape[0]):
        real = mask[b].bool().nonzero().flatten()
        relevance = start[b, real]
        matrices = []
        for attention, _ in layers:
            fused = fuse(attention[b][:, real][:, :, real], how)
            if discard_ratio:
                flat = fused.flatten().clone()
                count = int(flat.numel() * discard_ratio)
                lowest = flat.topk(count, largest=False).indices
                kept_first = flat[0].clone()
                flat[lowest] = 0.0
                flat[0] = kept_first
                fused = flat.reshape(fused.shape)
            fused = fused + torch.eye(len(real), dtype=DOUBLE)
            matrices.append(fused / fused.sum(dim=-1, keepdim=True))
        for matrix in reversed(matrices):
            relevance = relevance @ matrix
        out[b, real] = relevance
    return out


# --------------------------------------------------------------------------- the text side gains the image side's
@pytest.mark.parametrize("how", ["mean", "max", "min"])
def test_text_rollout_fuses_heads_as_the_image_side_does(how):
    model, ids, mask = padded_batch()
    layers = eager_attention_and_values(model, ids, attention_mask=mask)
    expected = reference_rollout(layers, mask, first_token_start(mask), how)
    ours = AttentionRollout(model).token_relevance(
        ids, additional_forward_args={"attention_mask": mask}, head_fusion=how
    )
    torch.testing.assert_close(ours.double(), expected, atol=2e-6, rtol=1e-4)
    assert float(ours[mask == 0].abs().max()) == 0.0  # padding gets nothing
    torch.testing.assert_close(ours.sum(dim=-1), torch.ones(3), atol=1e-5, rtol=0)


def test_text_rollout_discard_ratio_matches_the_formula():
    model = build_text_model("gpt2")
    ids = token_ids(2, 6)  # no padding: the discarded share is of the whole matrix
    mask = torch.ones_like(ids)
    layers = eager_attention_and_values(model, ids)
    start = torch.zeros(ids.shape, dtype=DOUBLE)
    start[:, -1] = 1.0  # a decoder starts at its last token
    for how in ("mean", "max"):
        expected = reference_rollout(layers, mask, start, how, discard_ratio=0.5)
        ours = AttentionRollout(model).token_relevance(ids, head_fusion=how, discard_ratio=0.5)
        torch.testing.assert_close(ours.double(), expected, atol=2e-6, rtol=1e-4)
    plain = AttentionRollout(model).token_relevance(ids)
    assert float((plain - AttentionRollout(model).token_relevance(ids, discard_ratio=0.5)).abs().max()) > 1e-3


@pytest.mark.parametrize("how", ["max", "min"])
def test_text_raw_attention_fuses_heads_and_keeps_the_starts_total(how):
    model, ids, mask = padded_batch("roberta")
    layers = eager_attention_and_values(model, ids, attention_mask=mask)
    attention = layers[-1][0]  # (B, H, N, N)
    start = mask.to(DOUBLE) / mask.sum(dim=1, keepdim=True)  # the "mean" start: every real token's row
    rows = torch.einsum("bn,bhnm->bhm", start, attention) * mask[:, None]
    fused = fuse(rows.transpose(0, 1), how)
    expected = fused / fused.sum(dim=-1, keepdim=True)
    ours = RawAttention(model).token_relevance(
        ids, additional_forward_args={"attention_mask": mask}, initial_relevance="mean", head_fusion=how
    )
    torch.testing.assert_close(ours.double(), expected, atol=2e-6, rtol=1e-4)
    _, delta = RawAttention(model).attribute(
        ids, additional_forward_args={"attention_mask": mask}, head_fusion=how, return_convergence_delta=True
    )
    assert float(delta.abs().max()) < 1e-5


def test_text_maps_of_every_output_token_and_every_depth():
    model, ids, mask = padded_batch("bert")
    lrp = TokenRelevanceLRP(model, rule="ii")
    forward = {"attention_mask": mask}
    every = lrp.all_token_relevance(ids, forward)  # (B, N, N): row i explains output token i
    layers = eager_attention_and_values(model, ids, attention_mask=mask)
    for position in (0, 2):
        start = torch.zeros(mask.shape, dtype=DOUBLE)
        start[:, position] = 1.0
        expected = reference_text_relevance(layers, mask.bool(), start, "ii")
        torch.testing.assert_close(every[:, position].double(), expected, atol=2e-6, rtol=1e-4)
        torch.testing.assert_close(lrp.token_relevance(ids, position, forward), every[:, position])
    by_layer = lrp.token_relevance_by_layer(ids, additional_forward_args=forward)
    assert by_layer.shape == (3, len(lrp.attention_sites) + 1, 7)
    torch.testing.assert_close(by_layer[:, 0], lrp.token_relevance(ids, additional_forward_args=forward))
    torch.testing.assert_close(by_layer.sum(dim=-1), torch.ones(3, len(lrp.attention_sites) + 1), atol=1e-5, rtol=0)
    truncated = reference_text_relevance(layers[1:], mask.bool(), first_token_start(mask), "ii")
    torch.testing.assert_close(by_layer[:, 1].double(), truncated, atol=2e-6, rtol=1e-4)


# --------------------------------------------------------------------------- one class per method
def test_one_class_per_method_for_both_modalities():
    model, ids, mask = padded_batch("bert_classifier")
    forward = {"attention_mask": mask}
    for one, text in (
        (TokenRelevanceLRP, TextTokenRelevanceLRP),
        (RawAttention, TextRawAttention),
        (AttentionRollout, TextAttentionRollout),
    ):
        unified = one(model)
        assert unified.modality == "text" and type(unified) is one
        torch.testing.assert_close(
            unified.token_relevance(ids, additional_forward_args=forward),
            text(model).token_relevance(ids, additional_forward_args=forward),
        )
    gae = GenericAttentionExplainability(model)
    assert isinstance(gae, TextGenericAttentionExplainability) and isinstance(gae, GenericAttentionExplainability)
    torch.testing.assert_close(
        gae.token_relevance(ids, 1, forward), TextGenericAttentionExplainability(model).token_relevance(ids, 1, forward)
    )
    ig = TokenIntegratedGradients(model, 8)
    assert isinstance(ig, TextLayerIntegratedGradients) and ig.n_steps == 8
    torch.testing.assert_close(
        ig.token_relevance(ids, 1, forward), TextLayerIntegratedGradients(model, 8).token_relevance(ids, 1, forward)
    )


def test_image_only_methods_and_text_names_say_which_class_explains_the_other_modality(tiny_model):
    with pytest.raises(TypeError, match=r"BertModel is a text Transformer.*vision Transformers only"):
        AttnLRP(build_text_model("bert"))
    vit = tiny_model  # a ViTModel
    for text_only in (TextRawAttention, TextAttentionRollout, TextGenericAttentionExplainability):
        with pytest.raises(TypeError, match=r"ViTModel is a vision Transformer.*TokenRelevanceLRP"):
            text_only(vit)
    assert type(GenericAttentionExplainability(vit)) is GenericAttentionExplainability
    assert TokenRelevanceLRP(vit).modality == "image"
    with pytest.raises(TypeError, match="token_layout describes image patches"):
        TokenRelevanceLRP(build_text_model("bert")).token_layout(token_ids(1, 4))


# --------------------------------------------------------------------------- one registry
def test_one_registry_with_the_modality_as_a_property():
    image, text = set(supported_model_classes("image")), set(supported_model_classes("text"))
    assert {"ViTModel", "Dinov2Model"} <= image and {"BertModel", "GPT2LMHeadModel"} <= text
    assert not image & text
    assert set(supported_model_classes()) == image | text
    assert tuple(supported_text_model_classes()) == tuple(supported_model_classes("text"))
    assert issubclass(TextModelAdapter, ModelAdapter) and TextModelAdapter.modality == "text"
    assert "TextModelAdapter" in captum_tokenlrp.__all__
    with pytest.raises(ValueError, match="modality must be one of"):
        supported_model_classes("audio")

    class NoLayout(ModelAdapter):  # an image adapter that forgot the token layout
        def attention_sites(self):
            return []

        def transformer_blocks(self):
            return []

    with pytest.raises(TypeError, match="does not implement token_layout, num_channels, image_size"):
        register_adapter(NoLayout)
    with pytest.raises(TypeError, match="without an implementation of token_layout"):
        NoLayout(torch.nn.Linear(1, 1))


# --------------------------------------------------------------------------- class-sensitive text
def float64_text_gradients(model, ids, mask, classes):
    """Per layer `(A, v, dS/dA)` in float64 from an eager copy, `S` the logits of ``classes``."""
    from text_models import _value_module, eager_copy

    eager = eager_copy(model)
    heads = eager.config.num_attention_heads
    values, hooks = [], []
    for index in range(eager.config.num_hidden_layers):
        module, _ = _value_module(eager, index)
        hooks.append(module.register_forward_hook(lambda _m, _i, out: values.append(out)))
    try:
        outputs = eager(ids, attention_mask=mask, output_attentions=True)
    finally:
        for hook in hooks:
            hook.remove()
    scalar = outputs.logits.gather(1, classes[:, None]).sum()
    gradients = torch.autograd.grad(scalar, outputs.attentions)
    layers = []
    for attention, value, gradient in zip(outputs.attentions, values, gradients, strict=True):
        batch, tokens, width = value.shape
        layers.append(
            (attention.detach(), value.reshape(batch, tokens, heads, width // heads).transpose(1, 2).detach(), gradient)
        )
    return layers


def reference_text_class_sensitive(layers, mask, rule, mode):
    """The class-sensitive rules straight from their formulas, per sentence on its real tokens."""
    from reference import reference_redistribution_from_probs

    batch, heads = layers[0][0].shape[:2]
    out = torch.zeros(mask.shape, dtype=DOUBLE)
    for b in range(batch):
        real = mask[b].bool().nonzero().flatten()
        positive = [(g[b] * a[b]).clamp(min=0)[:, real][:, :, real] for a, _, g in layers]
        scale = max(float(p.sum(dim=-1).max()) for p in positive) or 1.0
        relevance = torch.zeros(len(real), dtype=DOUBLE)
        relevance[0] = 1.0  # the classifier reads [CLS]
        for (attention, values, _), contribution in reversed(list(zip(layers, positive, strict=True))):
            matrices = []
            for h in range(heads):
                w = contribution[h] / scale if mode.startswith("attention") else attention[b, h][real][:, real]
                matrices.append(reference_redistribution_from_probs(w, values[b, h][real], rule))
            if mode.endswith("heads"):
                shares = contribution.sum(dim=(1, 2))
                alphas = shares / shares.sum() if float(shares.sum()) > 0 else torch.full((heads,), 1 / heads)
                fused = sum(alpha * matrix for alpha, matrix in zip(alphas, matrices, strict=True))
            else:
                fused = torch.stack(matrices).mean(dim=0)
            relevance = relevance @ fused
        out[b, real] = relevance
    return out


@pytest.mark.parametrize("mode", ["attention", "heads", "attention+heads"])
@pytest.mark.parametrize("rule", ["ii", "iv"])
def test_text_classifiers_get_the_class_sensitive_rules(rule, mode):
    model, ids, mask = padded_batch("bert_classifier")
    classes = torch.tensor([2, 0, 1])
    expected = reference_text_class_sensitive(float64_text_gradients(model, ids, mask, classes), mask, rule, mode)
    lrp = TokenRelevanceLRP(model, rule=rule, class_sensitive=mode)
    ours = lrp.token_relevance(ids, classes, {"attention_mask": mask})
    torch.testing.assert_close(ours.double(), expected, atol=2e-6, rtol=1e-4)
    assert float(ours[mask == 0].abs().max()) == 0.0 and float(ours.min()) >= 0
    torch.testing.assert_close(ours.sum(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    other = lrp.token_relevance(ids, (classes + 1) % 3, {"attention_mask": mask})
    assert float((other - ours).abs().max()) > 1e-4  # the class steers the map
    named = lrp.token_relevance(ids, [model.config.id2label[int(c)] for c in classes], {"attention_mask": mask})
    torch.testing.assert_close(named, ours)


def test_class_sensitive_text_needs_a_classifier():
    with pytest.raises(ValueError, match="no classification head"):
        TokenRelevanceLRP(build_text_model("bert"), class_sensitive="attention")


@pytest.mark.parametrize("capture", ["exact", "fast", "recompute"])
def test_text_attention_capture_modes_agree_with_the_reference(capture):
    model, ids, mask = padded_batch("llama")
    from text_models import reference_text_relevance as reference

    layers = eager_attention_and_values(model, ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0))
    start = torch.zeros(mask.shape, dtype=DOUBLE)
    start[torch.arange(3), mask.sum(dim=1) - 1] = 1.0  # a decoder starts at its last real token
    lrp = TokenRelevanceLRP(model, rule="iv", attention_capture=capture)
    ours = lrp.token_relevance(ids, additional_forward_args={"attention_mask": mask})
    torch.testing.assert_close(ours.double(), reference(layers, mask.bool(), start, "iv"), atol=2e-6, rtol=1e-4)
