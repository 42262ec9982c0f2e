"""Conservation, non-negativity, batching, start tokens and vectors."""

from __future__ import annotations

import pytest
import torch

from captum_tokenlrp import TokenRelevanceLRP
from captum_tokenlrp._core.distances import row_divisors_
from captum_tokenlrp._core.kernels import RowScaled
from captum_tokenlrp._core.propagation import reduce_blocks, reduce_layer
from captum_tokenlrp.rules import normalize_rows

MODES = ["mean", "max", "min", None, "per_head_mean", "last_layer_per_head"]


@pytest.mark.parametrize("rule", ["i", "ii", "iii", "iv"])
@pytest.mark.parametrize("mode", MODES)
def test_conservation_and_non_negativity(rule, mode, tiny_model, tiny_images):
    relevance = TokenRelevanceLRP(tiny_model, rule=rule).token_relevance(tiny_images, head_fusion=mode)
    assert relevance.dtype == torch.float32
    assert (relevance >= 0).all()
    torch.testing.assert_close(relevance.sum(dim=-1), torch.ones(relevance.shape[:-1]), atol=1e-5, rtol=0)


def test_per_head_mean_is_mean_of_per_head_maps(tiny_model, tiny_images):
    lrp = TokenRelevanceLRP(tiny_model, rule="iv")
    per_head = lrp.token_relevance(tiny_images, head_fusion=None)
    torch.testing.assert_close(lrp.token_relevance(tiny_images, head_fusion="per_head_mean"), per_head.mean(1))


def test_conservation_of_custom_total(tiny_model, tiny_images):
    start = torch.rand(17, generator=torch.Generator().manual_seed(0)) * 3
    relevance = TokenRelevanceLRP(tiny_model, rule="ii").token_relevance(tiny_images, initial_relevance=start)
    torch.testing.assert_close(relevance.sum(-1), start.sum().expand(3), atol=1e-5, rtol=1e-6)


def test_batch_equals_single_calls(tiny_model, tiny_images):
    lrp = TokenRelevanceLRP(tiny_model, rule="iv")
    for mode in ("mean", None):
        batched = lrp.token_relevance(tiny_images, head_fusion=mode)
        singles = torch.cat([lrp.token_relevance(image[None], head_fusion=mode) for image in tiny_images])
        torch.testing.assert_close(batched, singles, atol=1e-6, rtol=1e-5)


def test_target_token_equals_one_hot_start(tiny_model, tiny_images):
    lrp = TokenRelevanceLRP(tiny_model, rule="iii")
    one_hot = torch.zeros(17)
    one_hot[5] = 1.0
    by_target = lrp.token_relevance(tiny_images, target=5)
    by_vector = lrp.token_relevance(tiny_images, initial_relevance=one_hot)
    torch.testing.assert_close(by_target, by_vector)
    assert (by_target - lrp.token_relevance(tiny_images)).abs().max() > 1e-3


def test_per_sample_targets(tiny_model, tiny_images):
    lrp = TokenRelevanceLRP(tiny_model, rule="i")
    mixed = lrp.token_relevance(tiny_images, target=torch.tensor([0, 3, 9]))
    for index, token in enumerate([0, 3, 9]):
        single = lrp.token_relevance(tiny_images[index : index + 1], target=token)
        torch.testing.assert_close(mixed[index : index + 1], single, atol=1e-6, rtol=1e-5)


def test_all_tokens_start_is_sum_of_one_hot_starts(tiny_model, tiny_images):
    """Propagation is linear in the start vector."""
    lrp = TokenRelevanceLRP(tiny_model, rule="iv")
    total = lrp.token_relevance(tiny_images, initial_relevance=torch.ones(17))
    parts = sum(lrp.token_relevance(tiny_images, target=token) for token in range(17))
    torch.testing.assert_close(total, parts, atol=1e-5, rtol=1e-5)


def test_classifier_starts_at_cls_whatever_the_class(tiny_classifier, tiny_images):
    lrp = TokenRelevanceLRP(tiny_classifier, rule="iv")
    default = lrp.token_relevance(tiny_images)
    for label in range(5):
        torch.testing.assert_close(lrp.token_relevance(tiny_images, target=label), default)
    # The classifier's backbone gives the same map as the ViTModel inside it.
    torch.testing.assert_close(TokenRelevanceLRP(tiny_classifier.vit, rule="iv").token_relevance(tiny_images), default)
    start = torch.zeros(17)
    start[4] = 2.0
    moved = lrp.token_relevance(tiny_images, target=1, initial_relevance=start)
    torch.testing.assert_close(moved.sum(-1), torch.full((3,), 2.0))


def test_deterministic(tiny_model, tiny_images):
    lrp = TokenRelevanceLRP(tiny_model, rule="iv")
    assert torch.equal(lrp.token_relevance(tiny_images), lrp.token_relevance(tiny_images))


def test_interpolated_position_encoding_changes_the_grid(tiny_model):
    images = torch.randn(2, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    lrp = TokenRelevanceLRP(tiny_model, rule="iv")
    relevance = lrp.token_relevance(images, additional_forward_args={"interpolate_pos_encoding": True})
    assert relevance.shape == (2, 1 + 6 * 5)
    attribution, delta = lrp.attribute(
        images, additional_forward_args={"interpolate_pos_encoding": True}, return_convergence_delta=True
    )
    assert attribution.shape == images.shape
    assert delta.abs().max() < 1e-5


@pytest.mark.parametrize("mode", MODES)
def test_head_chunking_does_not_change_the_result(mode, tiny_model, tiny_images):
    whole = TokenRelevanceLRP(tiny_model, rule="iv").token_relevance(tiny_images, head_fusion=mode)
    for budget in (1, 3 * 17 * 17 * 3):  # one head per group; groups of 3 heads then 1
        chunked = TokenRelevanceLRP(tiny_model, rule="iv", max_chunk_elements=budget)
        torch.testing.assert_close(chunked.token_relevance(tiny_images, head_fusion=mode), whole, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", ["mean", "max", None, "per_head_mean", "last_layer_per_head"])
def test_all_token_relevance_rows_are_single_token_maps(mode, tiny_model, tiny_images):
    lrp = TokenRelevanceLRP(tiny_model, rule="iii")
    matrix = lrp.all_token_relevance(tiny_images, head_fusion=mode)
    per_head = mode in (None, "last_layer_per_head")
    assert matrix.shape == ((3, 4, 17, 17) if per_head else (3, 17, 17))
    torch.testing.assert_close(matrix.sum(-1), torch.ones(matrix.shape[:-1]), atol=1e-5, rtol=0)
    for token in (0, 6, 16):
        single = lrp.token_relevance(tiny_images, target=token, head_fusion=mode)
        torch.testing.assert_close(matrix[..., token, :], single, atol=1e-6, rtol=1e-5)


def test_bad_chunk_budget(tiny_model):
    with pytest.raises(ValueError, match="max_chunk_elements must be a positive int"):
        TokenRelevanceLRP(tiny_model, max_chunk_elements=0)


@pytest.mark.parametrize(("height", "width"), [(160, 160), (384, 384), (480, 480), (224, 320)])
def test_any_image_size_on_the_dino_architecture(height, width, dino_s16):
    images = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(height + width))
    lrp = TokenRelevanceLRP(dino_s16, rule="iv")
    extra = {"interpolate_pos_encoding": True}
    layout = lrp.token_layout(images, extra)
    assert layout.grid == (height // 16, width // 16)
    relevance = lrp.token_relevance(images, additional_forward_args=extra)
    assert relevance.shape == (1, 1 + layout.num_patches)
    torch.testing.assert_close(relevance.sum(-1), torch.ones(1), atol=1e-5, rtol=0)
    pixels, delta = lrp.attribute(images, additional_forward_args=extra, return_convergence_delta=True)
    assert pixels.shape == images.shape and delta.abs().max() < 1e-5
    # The last patch row and column map onto the bottom-right pixels.
    last_patch = relevance[0, -1] / (16 * 16 * 3)
    torch.testing.assert_close(pixels[0, :, -16:, -16:], last_patch.expand(3, 16, 16))


@pytest.mark.parametrize("how", ["mean", "max", "min"])
@pytest.mark.parametrize("divided", [True, False], ids=["matrices", "row-scaled"])
def test_blocks_of_inputs_and_heads_reduce_like_whole_layers(how, divided):
    generator = torch.Generator().manual_seed(5)
    contributions = torch.rand(3, 4, 6, 6, generator=generator)
    contributions[1, 2, 3] = 0.0  # an empty row: the identity row
    whole = reduce_layer([normalize_rows(contributions)], how, is_last_layer=False, num_heads=4)

    def block(inputs: slice, heads: slice):
        part = contributions[inputs, heads].clone()
        return inputs, normalize_rows(part) if divided else RowScaled(part, row_divisors_(part))

    # Inputs [0, 2) head by head, then input 2 in groups of heads: every input's blocks cover all four heads.
    blocks = [block(slice(0, 2), slice(head, head + 1)) for head in range(4)]
    blocks += [block(slice(2, 3), slice(0, 3)), block(slice(2, 3), slice(3, 4))]
    torch.testing.assert_close(reduce_blocks(blocks, how, False, 4, batch_size=3), whole, atol=1e-7, rtol=1e-6)


def test_per_head_layers_refuse_blocks_of_part_of_the_batch():
    matrices = torch.softmax(torch.randn(3, 2, 4, 4), dim=-1)
    with pytest.raises(ValueError, match="whole batch"):
        reduce_blocks([(slice(0, 2), matrices[0:2])], None, True, 2, batch_size=3)
