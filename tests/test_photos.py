"""The real photos and their hand-drawn masks (captum_tokenlrp.data.photos; the [photos] extra)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from captum_tokenlrp.data import load_photos, photo_names
from captum_tokenlrp.data import photos as photos_module
from captum_tokenlrp.data.photos import rasterise

MASKS = Path(photos_module.__file__).with_name("photo_masks.json")


@pytest.fixture(scope="module")
def photos():
    return load_photos()


def test_at_least_ten_photos_from_four_packages_several_with_small_objects(photos):
    assert len(photos) >= 10
    assert {photo.package for photo in photos} == {"skimage", "sklearn", "matplotlib", "gradio"}
    shares = {photo.name: photo.mask.mean() for photo in photos}
    # The cat covers most of its photo; localisation also needs objects of a few percent.
    assert shares["chelsea"] > 0.7
    assert sum(share < 0.15 for share in shares.values()) >= 2
    assert shares["rocket"] < 0.05


def test_masks_rasterise_to_the_photo_size_non_empty_inside_the_frame(photos):
    records = {record["name"]: record for record in json.loads(MASKS.read_text())["photos"]}
    for photo in photos:
        width, height = photo.image.size
        assert photo.image.mode == "RGB"
        assert (width, height) == (records[photo.name]["width"], records[photo.name]["height"])
        for label, mask in photo.masks.items():
            assert mask.shape == (height, width) and mask.dtype == bool, (photo.name, label)
            # Each object is a real region, neither empty nor the whole frame.
            assert 0.002 < mask.mean() < 0.95, (photo.name, label, mask.mean())
            for polygon in photo.polygons[label]:
                assert len(polygon) >= 3
                xs, ys = np.array(polygon).T
                assert xs.min() >= 0 and ys.min() >= 0 and xs.max() <= width and ys.max() <= height


def test_rasterise_fills_the_polygon_and_nothing_else():
    mask = rasterise([[(2, 1), (6, 1), (6, 4), (2, 4)]], width=10, height=6)
    expected = np.zeros((6, 10), dtype=bool)
    expected[1:5, 2:7] = True
    np.testing.assert_array_equal(mask, expected)
    two = rasterise([[(0, 0), (1, 0), (1, 1), (0, 1)], [(8, 4), (9, 4), (9, 5), (8, 5)]], width=10, height=6)
    assert two.sum() == 8 and two[0, 0] and two[5, 9]


def test_the_cat_mask_matches_the_cat_not_the_background(photos):
    """Points read off the photo by eye: the cat's nose (about x 255, y 240) and eye are inside its mask, the
    blurred background at the right edge and the top-left corner are not; the rocket is a thin column."""
    cat = next(photo for photo in photos if photo.name == "chelsea").masks["cat"]
    assert cat[240, 255] and cat[120, 200]
    assert not cat[150, 440] and not cat[20, 5]
    rocket = next(photo for photo in photos if photo.name == "rocket").masks["rocket"]
    assert rocket[300, 322] and not rocket[300, 250] and not rocket[50, 322]


def test_names_select_photos_in_the_given_order():
    names = photo_names()
    assert names[0] == "chelsea" and len(set(names)) == len(names)
    picked = load_photos(["rocket", "chelsea"])
    assert [photo.name for photo in picked] == ["rocket", "chelsea"]
    assert [photo.name for photo in load_photos("coffee")] == ["coffee"]


def test_unknown_names_and_wrong_types_are_refused():
    with pytest.raises(ValueError, match=r"Unknown photo name\(s\) \['dog'\]; the photos are"):
        load_photos(["chelsea", "dog"])
    with pytest.raises(TypeError, match="names must be a photo name"):
        load_photos([3])


def test_missing_package_says_how_to_install_the_extra(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def without_gradio(name, *args, **kwargs):
        return None if name == "gradio" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", without_gradio)
    with pytest.raises(ModuleNotFoundError, match=r"'cheetah' is read from the installed package 'gradio', which "
                       r"is missing: pip install \"captum-tokenlrp\[photos\]\""):
        load_photos("cheetah")
    assert load_photos("chelsea")[0].name == "chelsea"  # the other packages' photos still load


def test_a_changed_photo_file_is_refused(monkeypatch, tmp_path):
    """Masks drawn on one file do not fit another: the recorded SHA-256 guards against a package release that
    replaced a photo."""
    record = next(r for r in json.loads(MASKS.read_text())["photos"] if r["name"] == "coffee")
    original = photos_module._package_folder(record["package"], "coffee") / record["resource"]
    changed = tmp_path / record["resource"]
    changed.parent.mkdir(parents=True)
    data = bytearray(original.read_bytes())
    data[-1] ^= 1
    changed.write_bytes(bytes(data))
    assert hashlib.sha256(bytes(data)).hexdigest() != record["sha256"]
    monkeypatch.setattr(photos_module, "_package_folder", lambda package, name: tmp_path)
    with pytest.raises(ValueError, match=r"'coffee' .* is not the file its masks were drawn on"):
        load_photos("coffee")
    (tmp_path / record["resource"]).unlink()
    with pytest.raises(FileNotFoundError, match="does not ship it"):
        load_photos("coffee")
