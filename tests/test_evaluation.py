"""Evaluation scores on hand-built cases with known answers, and their contracts on real models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import vit_layers

from captum_tokenlrp import TokenRelevanceLRP
from captum_tokenlrp.evaluation import (
    cascade_stages,
    class_localisation_scores,
    gaussian_blur,
    localisation_scores,
    mean_confidence_interval,
    mean_threshold_iou,
    parameter_randomization_test,
    patch_relevance_grid,
    perturbation_curves,
    pointing_game,
    relevance_mass,
    spearman,
)
from captum_tokenlrp.evaluation.randomization import average_ranks


def square_mask(size=8, top=2, left=2, side=3, batch=1):
    mask = torch.zeros(batch, size, size, dtype=torch.bool)
    mask[:, top : top + side, left : left + side] = True
    return mask


# ------------------------------------------------------------------ localisation
def test_mass_of_a_map_equal_to_the_mask_is_one_and_a_uniform_map_scores_the_area():
    mask = square_mask()
    assert relevance_mass(mask.float(), mask).item() == pytest.approx(1.0)
    assert relevance_mass(torch.ones(1, 8, 8), mask).item() == pytest.approx(9 / 64)
    assert relevance_mass(torch.zeros(1, 8, 8), mask).item() == pytest.approx(9 / 64)  # no preference
    half = mask.float() + (~mask).float() * (9 / 55)  # as much outside as inside
    assert relevance_mass(half, mask).item() == pytest.approx(0.5)


def test_mass_sign_handling_and_captum_pixel_attributions():
    mask = square_mask()
    signed = mask.float() - 3 * (~mask).float()  # all positive evidence on the object
    assert relevance_mass(signed, mask).item() == pytest.approx(1.0)
    assert relevance_mass(signed, mask, sign="absolute").item() == pytest.approx(9 / (9 + 3 * 55))
    pixels = mask.float()[:, None].expand(1, 3, 8, 8)  # channels are summed
    assert relevance_mass((pixels,), mask).item() == pytest.approx(1.0)


def test_patch_resolution_pools_the_map_and_the_mask():
    # 8x8 image of 2x2 patches of 4 px; the object fills the top-left patch and one pixel elsewhere.
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, :4, :4] = True
    mask[:, 7, 7] = True
    pixel_map = torch.zeros(1, 8, 8)
    pixel_map[:, 0, 0] = 1.0  # everything in the top-left patch, on one pixel
    pixel_map[:, 6, 6] = 1.0  # and as much in the bottom-right patch, off the object
    assert relevance_mass(pixel_map, mask).item() == pytest.approx(0.5)
    assert relevance_mass(pixel_map, mask, patch_size=4).item() == pytest.approx(0.5)  # 1/16 share: background
    assert relevance_mass(pixel_map, mask, patch_size=4, object_share=1 / 16).item() == pytest.approx(1.0)
    grid = torch.tensor([[[3.0, 0.0], [1.0, 0.0]]])  # a patch grid is scored on its grid
    assert relevance_mass(grid, mask).item() == pytest.approx(0.75)


def test_pointing_game_hits_misses_and_ties():
    mask = square_mask()
    inside = torch.zeros(1, 8, 8)
    inside[0, 3, 3] = 1
    outside = torch.zeros(1, 8, 8)
    outside[0, 7, 7] = 1
    assert pointing_game(inside, mask).item() == 1.0
    assert pointing_game(outside, mask).item() == 0.0
    tie = inside + outside  # one top location on, one off the object
    assert pointing_game(tie, mask).item() == pytest.approx(0.5)
    assert pointing_game(torch.ones(1, 8, 8), mask).item() == pytest.approx(9 / 64)


def test_mean_threshold_iou_known_values():
    mask = square_mask()
    assert mean_threshold_iou(mask.float(), mask).item() == pytest.approx(1.0)
    shifted = square_mask(left=3).float()  # 3x3 square one column to the right: 6 shared of 12
    assert mean_threshold_iou(shifted, mask).item() == pytest.approx(6 / 12)
    assert mean_threshold_iou(torch.ones(1, 8, 8), mask).item() == 0.0  # nothing above the mean


def test_localisation_scores_per_image_and_both_resolutions():
    masks = torch.cat([square_mask(size=8, top=0, left=0, side=4), square_mask(size=8, top=4, left=4, side=4)])
    maps = torch.zeros(2, 8, 8)
    maps[0, :4, :4] = 1.0  # right
    maps[1, :4, :4] = 1.0  # wrong object
    scores = localisation_scores(maps, masks, patch_size=4)
    assert set(scores) == {"mass", "pointing", "iou", "mass_pixel", "pointing_pixel", "iou_pixel"}
    for values in scores.values():
        assert values.tolist() == pytest.approx([1.0, 0.0])


def test_localisation_rejects_bad_input():
    mask = square_mask()
    with pytest.raises(ValueError, match="batch_size, height, width"):
        relevance_mass(torch.ones(1, 8, 8), mask[0])
    with pytest.raises(ValueError, match="token relevance"):
        relevance_mass(torch.ones(1, 65), mask)
    with pytest.raises(ValueError, match="cannot be aligned"):
        relevance_mass(torch.ones(1, 3, 3), mask)
    with pytest.raises(ValueError, match="does not tile"):
        relevance_mass(torch.ones(1, 8, 8), mask, patch_size=3)
    with pytest.raises(ValueError, match="sign"):
        relevance_mass(torch.ones(1, 8, 8), mask, sign="negative")
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        relevance_mass([[1.0]], mask)
    with pytest.raises(ValueError, match="NaN"):
        relevance_mass(torch.full((1, 8, 8), math.nan), mask)


def test_patch_relevance_grid_drops_special_tokens(tiny_model, tiny_images):
    method = TokenRelevanceLRP(tiny_model)
    relevance = method.token_relevance(tiny_images)
    layout = method.token_layout(tiny_images)
    grid = patch_relevance_grid(relevance, layout)
    assert grid.shape == (3, 4, 4)
    torch.testing.assert_close(grid.flatten(1), relevance[:, 1:])
    with pytest.raises(ValueError, match="Per-head"):
        patch_relevance_grid(method.token_relevance(tiny_images, head_fusion=None), layout)


# ------------------------------------------------------------------ perturbation
class PatchWeightedLogit(torch.nn.Module):
    """Two-class logits (s, 0) with s = sum_p w_p * mean of patch p: a model whose patch
    importance is known exactly."""

    def __init__(self, weights: torch.Tensor, patch: int) -> None:
        super().__init__()
        self.weights, self.patch = weights, patch

    def forward(self, pixel_values):
        patch_means = F.avg_pool2d(pixel_values.mean(dim=1, keepdim=True), self.patch).flatten(1)
        score = patch_means @ self.weights
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def expected_curve(weights, order, steps):
    values = []
    for step in range(steps + 1):
        removed = order[: round(step / steps * len(order))]
        kept = weights.clone()
        kept[removed] = 0
        values.append(torch.sigmoid(kept.sum()).item())
    return values


def test_perfectly_ordered_deletion_curves_have_known_values():
    weights = torch.arange(16, dtype=torch.float32) / 20 - 0.2  # 4x4 patches, mixed signs
    model = PatchWeightedLogit(weights, patch=2)
    images = torch.ones(1, 3, 8, 8)
    perfect_map = weights.reshape(1, 4, 4)
    curves = perturbation_curves(
        model, images, perfect_map, patch_size=2, baseline=torch.zeros(1), target=0, num_steps=4
    )
    most_first = torch.argsort(weights, descending=True)
    assert curves.morf[0].tolist() == pytest.approx(expected_curve(weights, most_first, 4), abs=1e-6)
    assert curves.lerf[0].tolist() == pytest.approx(expected_curve(weights, most_first.flip(0), 4), abs=1e-6)
    assert curves.fractions.tolist() == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    # Areas by the trapezoid rule, written out.
    morf = curves.morf[0]
    trapezoid = sum((morf[i] + morf[i + 1]).item() / 2 * 0.25 for i in range(4))
    assert curves.auc_morf.item() == pytest.approx(trapezoid)
    assert curves.area_between.item() == pytest.approx(curves.auc_lerf.item() - trapezoid)
    # The perfect order is the best: any other map's MoRF area is at least as large.
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        other = perturbation_curves(
            model,
            images,
            torch.randn(1, 4, 4, generator=generator),
            patch_size=2,
            baseline=torch.zeros(1),
            target=0,
            num_steps=4,
        )
        assert other.auc_morf.item() >= curves.auc_morf.item() - 1e-7
        assert other.area_between.item() <= curves.area_between.item() + 1e-7


def test_pixel_maps_are_pooled_into_patches_and_batches_are_independent():
    weights = torch.linspace(-1, 1, 16)
    model = PatchWeightedLogit(weights, patch=2)
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    grid_maps = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(4))
    pixel_maps = grid_maps.repeat_interleave(2, 1).repeat_interleave(2, 2)[:, None].expand(3, 3, 8, 8) / 12
    together = perturbation_curves(model, images, grid_maps, patch_size=2, target=[0, 1, 0])
    from_pixels = perturbation_curves(model, (images,), (pixel_maps,), patch_size=2, target=[0, 1, 0])
    torch.testing.assert_close(together.morf, from_pixels.morf)
    single = perturbation_curves(model, images[1:2], grid_maps[1:2], patch_size=2, target=1)
    torch.testing.assert_close(single.morf[0], together.morf[1])
    torch.testing.assert_close(single.lerf[0], together.lerf[1])
    # Nothing removed: the unperturbed probability; everything removed: the baseline's.
    mean_colour = images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    assert together.morf[:, 0].tolist() == pytest.approx(torch.softmax(model(images), 1)[[0, 1, 2], [0, 1, 0]].tolist())
    assert together.morf[:, -1].tolist() == pytest.approx(
        torch.softmax(model(mean_colour), 1)[[0, 1, 2], [0, 1, 0]].tolist()
    )


def test_flat_maps_remove_patches_in_random_order():
    model = PatchWeightedLogit(torch.linspace(-1, 1, 16), patch=2)
    images = torch.ones(1, 3, 8, 8)
    runs = [
        perturbation_curves(
            model, images, torch.zeros(1, 4, 4), patch_size=2, target=0, seed=seed, baseline=torch.zeros(1)
        ).morf
        for seed in range(3)
    ]
    assert not torch.equal(runs[0], runs[1]) or not torch.equal(runs[1], runs[2])


def test_gaussian_blur_matches_a_two_dimensional_convolution():
    images = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    sigma = 1.5
    radius = math.ceil(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel_1d = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = torch.outer(kernel_1d, kernel_1d)
    kernel = (kernel / kernel.sum()).expand(3, 1, *kernel.shape)
    padded = F.pad(images, (radius,) * 4, mode="reflect")
    torch.testing.assert_close(gaussian_blur(images, sigma), F.conv2d(padded, kernel, groups=3))
    constant = torch.full((1, 3, 12, 12), 0.3)
    torch.testing.assert_close(gaussian_blur(constant, sigma), constant)


def test_label_free_models_follow_the_cosine_to_the_unperturbed_embedding(tiny_model, tiny_images):
    method = TokenRelevanceLRP(tiny_model)
    maps = patch_relevance_grid(method.token_relevance(tiny_images), method.token_layout(tiny_images))
    curves = perturbation_curves(tiny_model, tiny_images, maps, baseline="blur")
    assert curves.morf.shape == (3, 11)
    torch.testing.assert_close(curves.morf[:, 0], torch.ones(3))  # nothing removed: cosine 1
    torch.testing.assert_close(curves.morf[:, -1], curves.lerf[:, -1])  # all removed: same image
    assert (curves.morf.abs() <= 1 + 1e-6).all()


def test_classifier_targets_default_to_the_prediction(tiny_classifier, tiny_images):
    maps = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        predicted = tiny_classifier(tiny_images).logits.argmax(1)
        probability = torch.softmax(tiny_classifier(tiny_images).logits, 1)
    curves = perturbation_curves(tiny_classifier, tiny_images, maps)
    explicit = perturbation_curves(tiny_classifier, tiny_images, maps, target=predicted)
    torch.testing.assert_close(curves.morf, explicit.morf)
    torch.testing.assert_close(curves.morf[:, 0], probability.max(1).values)


def test_perturbation_rejects_bad_input(tiny_classifier, tiny_images):
    maps = torch.rand(3, 4, 4)
    with pytest.raises(ValueError, match="patch grid"):
        perturbation_curves(tiny_classifier, tiny_images, torch.rand(3, 5, 5))
    with pytest.raises(ValueError, match="one class per image"):
        perturbation_curves(tiny_classifier, tiny_images, maps, target=[0, 1])
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        perturbation_curves(tiny_classifier, tiny_images, maps, target=7)
    with pytest.raises(ValueError, match="baseline"):
        perturbation_curves(tiny_classifier, tiny_images, maps, baseline="noise")
    with pytest.raises(ValueError, match="patch_size is required"):
        perturbation_curves(lambda x: x.mean((2, 3)), tiny_images, maps)
    with pytest.raises(ValueError, match="expected 3"):
        perturbation_curves(tiny_classifier, tiny_images, maps[:2])
    with pytest.raises(ValueError, match="num_steps"):
        perturbation_curves(tiny_classifier, tiny_images, maps, num_steps=0)


def test_class_names_of_id2label_are_targets_as_in_the_attribution_api(tiny_classifier, tiny_model, tiny_images):
    names = ["cat", "dog", "star", "disc", "ring"]
    tiny_classifier.config.id2label = dict(enumerate(names))
    tiny_classifier.config.label2id = {name: index for index, name in enumerate(names)}
    maps = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(3))
    by_index = perturbation_curves(tiny_classifier, tiny_images, maps, target=2)
    by_name = perturbation_curves(tiny_classifier, tiny_images, maps, target="star")
    torch.testing.assert_close(by_name.morf, by_index.morf)
    per_image = perturbation_curves(tiny_classifier, tiny_images, maps, target=["star", "dog", "ring"])
    torch.testing.assert_close(
        per_image.lerf, perturbation_curves(tiny_classifier, tiny_images, maps, target=[2, 1, 4]).lerf
    )
    with torch.no_grad():
        probability = torch.softmax(tiny_classifier(tiny_images).logits, 1)
    torch.testing.assert_close(per_image.morf[:, 0], probability[[0, 1, 2], [2, 1, 4]])
    with pytest.raises(ValueError, match=r"'moon' is not a class.*'cat', 'dog', 'star', 'disc', 'ring'"):
        perturbation_curves(tiny_classifier, tiny_images, maps, target="moon")
    with pytest.raises(TypeError, match="no classification head"):
        perturbation_curves(tiny_model, tiny_images, maps, target="star")
    with pytest.raises(TypeError, match=r"forward function without a HuggingFace config\.id2label"):
        perturbation_curves(lambda x: x.mean((2, 3)), tiny_images, maps, target="star", patch_size=8)
    # The localisation scores have no model to read names from: they say so, and how to look a name up.
    masks = torch.ones(3, 2, 4, 4, dtype=torch.bool)
    with pytest.raises(TypeError, match=r"object indices.*label2id"):
        class_localisation_scores(maps, masks, "star")
    with pytest.raises(TypeError, match="integer object indices"):
        class_localisation_scores(maps, masks, torch.tensor([0.0, 1.0, 0.5]))


# ------------------------------------------------------------------ randomisation
def test_spearman_known_values():
    ramp = torch.arange(6.0)[None]
    assert spearman(ramp, ramp * 3 + 1).item() == pytest.approx(1.0)
    assert spearman(ramp, -ramp).item() == pytest.approx(-1.0)
    assert spearman(ramp, ramp**3).item() == pytest.approx(1.0)  # ranks, not values
    # Ties share their mean rank: [1, 2, 2, 3] -> ranks [0, 1.5, 1.5, 3].
    assert average_ranks(torch.tensor([[1.0, 2.0, 2.0, 3.0]])).tolist() == [[0.0, 1.5, 1.5, 3.0]]
    first, second = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]]), torch.tensor([[2.0, 1.0, 4.0, 3.0, 5.0]])
    # rho = 1 - 6 sum d^2 / (n (n^2 - 1)) without ties: d^2 sum = 4 -> 1 - 24 / 120.
    assert spearman(first, second).item() == pytest.approx(0.8)
    assert spearman(torch.ones(1, 5), first).item() == 0.0


def test_cascade_covers_every_parameter_once_output_side_first(tiny_classifier):
    stages = cascade_stages(tiny_classifier)
    assert [name for name, _ in stages] == ["head", "layer 2", "layer 1", "layer 0", "embeddings"]
    names = [parameter for _, parameters in stages for parameter in parameters]
    assert sorted(names) == sorted(name for name, _ in tiny_classifier.named_parameters())
    assert any("classifier" in name for name in stages[0][1])


def test_randomisation_decorrelates_token_relevance_and_leaves_the_model_alone(tiny_classifier, tiny_images):
    before = {name: value.clone() for name, value in tiny_classifier.state_dict().items()}
    result = parameter_randomization_test(
        tiny_classifier, lambda model, x: TokenRelevanceLRP(model).token_relevance(x), tiny_images
    )
    assert result.stages == ("head", "layer 2", "layer 1", "layer 0", "embeddings")
    assert result.spearman.shape == (5, 3)
    means = result.mean()
    # The head does not enter rules (i)-(iv): the map is unchanged by it; the blocks change it.
    assert means["head"] == pytest.approx(1.0)
    assert means["embeddings"] < 0.5
    for name, value in tiny_classifier.state_dict().items():
        assert torch.equal(value, before[name])
    assert len(vit_layers(tiny_classifier)) == 3


def test_a_method_that_ignores_the_model_fails_the_sanity_check(tiny_classifier, tiny_images):
    edge_detector = lambda _model, x: x.diff(dim=-1).abs().sum(dim=1)  # noqa: E731
    result = parameter_randomization_test(tiny_classifier, edge_detector, tiny_images)
    assert (result.spearman == 1.0).all()


def test_randomisation_rejects_bad_input(tiny_classifier, tiny_images):
    with pytest.raises(TypeError, match="callable"):
        parameter_randomization_test(tiny_classifier, "iv", tiny_images)
    with pytest.raises(ValueError, match="does not have"):
        parameter_randomization_test(tiny_classifier, lambda m, x: x, tiny_images, stages=[("x", ["nope"])])
    with pytest.raises(ValueError, match="one map per image"):
        parameter_randomization_test(tiny_classifier, lambda m, x: x[:1], tiny_images)


# ------------------------------------------------------------------ statistics
def test_mean_confidence_interval_uses_student_t():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mean, half = mean_confidence_interval(values)
    assert mean == pytest.approx(2.5)
    # t_{0.975, 3} = 3.182; sample std = 1.291.
    assert half == pytest.approx(3.182 * 1.2909944 / 2, rel=2e-3)
    big = torch.arange(500.0)
    assert mean_confidence_interval(big)[1] == pytest.approx(1.9647 * big.std().item() / math.sqrt(500), rel=1e-3)
    assert math.isnan(mean_confidence_interval(torch.ones(1))[1])


def test_random_relevance_is_a_per_image_control(tiny_classifier, tiny_images):
    from captum_tokenlrp.baselines import RandomRelevance

    method = RandomRelevance(tiny_classifier)
    batch = method.token_relevance(tiny_images)
    assert batch.shape == (3, 17) and (batch[:, 0] == 0).all() and (batch[:, 1:] > 0).all()
    torch.testing.assert_close(method.token_relevance(tiny_images[1:2])[0], batch[1])  # batch-independent
    assert not torch.equal(RandomRelevance(tiny_classifier, seed=1).token_relevance(tiny_images), batch)
    pixels = method.attribute(tiny_images)
    torch.testing.assert_close(pixels.sum(dim=(1, 2, 3)), batch.sum(dim=1))
    with pytest.raises(TypeError, match="seed"):
        RandomRelevance(tiny_classifier, seed="0")


def test_class_localisation_scores_known_values():
    # Two images, three objects (object 2 absent from image 0) on a 4 x 4 map.
    masks = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    masks[:, 0, 0, :2] = True
    masks[:, 1, 3, 2:] = True
    masks[1, 2, 1, 3] = True
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 0], maps[0, 3, 3] = 3.0, 1.0  # image 0: 3 on object 0, 1 on object 1
    maps[1, 1, 3], maps[1, 0, 1], maps[1, 2, 2] = 2.0, 2.0, -5.0  # image 1: a tie between objects 2 and 0
    scores = class_localisation_scores(maps, masks, torch.tensor([0, 2]))
    torch.testing.assert_close(scores["mass"], torch.tensor([0.75, 0.5]))
    torch.testing.assert_close(scores["pointing"], torch.tensor([1.0, 0.5]))  # image 1: two tied maxima
    torch.testing.assert_close(scores["sensitivity"], torch.tensor([1.0, 0.0]))  # a tie is not "more"
    other = class_localisation_scores(maps, masks, torch.tensor([1, 0]))
    torch.testing.assert_close(other["mass"], torch.tensor([0.25, 0.5]))
    torch.testing.assert_close(other["sensitivity"], torch.tensor([0.0, 0.0]))
    # A map without relevance on any object scores the target's share of the objects' area.
    empty = class_localisation_scores(torch.zeros(2, 4, 4), masks, torch.tensor([1, 2]))
    torch.testing.assert_close(empty["mass"], torch.tensor([0.5, 0.2]))
    with pytest.raises(ValueError, match="empty mask"):
        class_localisation_scores(maps, masks, torch.tensor([2, 0]))
    with pytest.raises(ValueError, match="num_objects"):
        class_localisation_scores(maps, masks[:, 0], torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="one object index"):
        class_localisation_scores(maps, masks, torch.tensor([0, 3]))


def test_multi_label_classifiers_follow_the_sigmoid_probability(tiny_images):
    from conftest import seeded, tiny_config
    from transformers import ViTForImageClassification

    model = seeded(
        lambda: ViTForImageClassification(tiny_config(num_labels=4, problem_type="multi_label_classification")),
        trained_norms=True,
    )
    grid = torch.rand(len(tiny_images), 4, 4, generator=torch.Generator().manual_seed(0))
    curves = perturbation_curves(model, tiny_images, grid, target=2)
    with torch.no_grad():
        expected = torch.sigmoid(model(tiny_images).logits[:, 2])
    torch.testing.assert_close(curves.morf[:, 0], expected)
    softmax = perturbation_curves(model, tiny_images, grid, target=2, score="probability")
    torch.testing.assert_close(softmax.morf[:, 0], torch.softmax(model(tiny_images).logits.detach(), -1)[:, 2])
