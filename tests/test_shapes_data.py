"""The synthetic shapes generator: deterministic, masks aligned with objects, classes balanced."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from captum_tokenlrp.data import SHAPE_CLASSES, ShapesDataset, generate_shapes
from captum_tokenlrp.data.shapes import normalize


def test_deterministic_and_addressable():
    images, masks, labels = generate_shapes(12, seed=7)
    again, again_masks, again_labels = generate_shapes(12, seed=7)
    assert np.array_equal(images, again) and np.array_equal(masks, again_masks)
    assert np.array_equal(labels, again_labels)
    tail, tail_masks, _ = generate_shapes(4, seed=7, start=8)  # any slice regenerates exactly
    assert np.array_equal(tail, images[8:]) and np.array_equal(tail_masks, masks[8:])
    other, _, _ = generate_shapes(12, seed=8)
    assert not np.allclose(other, images)


def test_shapes_and_value_ranges():
    images, masks, labels = generate_shapes(30, seed=0, size=80)
    assert images.shape == (30, 80, 80, 3) and images.dtype == np.float32
    assert masks.shape == (30, 80, 80) and masks.dtype == bool
    assert images.min() >= 0 and images.max() <= 1
    assert np.array_equal(np.bincount(labels, minlength=6), np.full(6, 5))
    assert len(SHAPE_CLASSES) == 6


def test_masks_mark_the_object():
    images, masks, _ = generate_shapes(60, seed=3)
    for image, mask in zip(images, masks, strict=True):
        assert 0.01 < mask.mean() < 0.5
        inside = image[mask]
        # The object is one colour (plus pixel noise): small spread inside the mask ...
        assert inside.std(axis=0).max() < 0.06
        # ... and it stands out from the rest of the image.
        assert np.abs(inside.mean(0) - image[~mask].mean(0)).max() > 0.05


def test_global_colour_does_not_give_the_class_away():
    images, _, labels = generate_shapes(600, seed=4)
    means = images.mean(axis=(1, 2))
    per_class = np.stack([means[labels == c].mean(0) for c in range(6)])
    assert np.abs(per_class - means.mean(0)).max() < 0.05


def test_dataset_items_are_normalised_tensors():
    dataset = ShapesDataset(10, seed=1)
    pixels, label, mask = dataset[3]
    images, masks, labels = generate_shapes(1, seed=1, start=3)
    torch.testing.assert_close(pixels, normalize(images)[0])
    assert label == labels[0] and torch.equal(mask, torch.from_numpy(masks[0]))
    assert len(dataset) == 10


def test_clutter_curriculum_keeps_the_objects_and_plains_the_background():
    full, masks, labels = generate_shapes(12, seed=2)
    plain, plain_masks, plain_labels = generate_shapes(12, seed=2, clutter=0.0)
    assert np.array_equal(masks, plain_masks) and np.array_equal(labels, plain_labels)
    background_spread = [image[~mask].std(axis=0).mean() for image, mask in zip(plain, plain_masks, strict=True)]
    # One flat colour (up to float32 rounding): no gradient, texture, blobs or noise.
    assert max(background_spread) < 1e-4
    assert min(image[~mask].std(axis=0).mean() for image, mask in zip(full, masks, strict=True)) > 0.02
    with pytest.raises(ValueError, match="clutter"):
        generate_shapes(1, seed=2, clutter=1.5)
