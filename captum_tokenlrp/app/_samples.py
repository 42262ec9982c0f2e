"""The bundled shapes samples offered on the page, with their object masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ._inputs import image_key


def bundled_samples(folder: Path, count: int = 6, seed: int = 1) -> dict[str, np.ndarray]:
    """Write ``count`` shapes images (one per class, the held-out stream ``seed``) as PNGs into ``folder``.

    Returns
    -------
    dict of str to ndarray
        :func:`image_key` of each sample -> its object mask, bool `(64, 64)`.
    """
    from ..data.shapes import generate_shapes

    images, masks, labels = generate_shapes(count, seed)
    found = {}
    folder.mkdir(parents=True, exist_ok=True)
    from ..data.shapes import SHAPE_CLASSES

    for index, (pixels, mask, label) in enumerate(zip(images, masks, labels, strict=True)):
        image = Image.fromarray(np.round(pixels * 255).astype(np.uint8))
        image.save(folder / f"{index:02d}-{SHAPE_CLASSES[int(label)]}.png")
        found[image_key(image)] = mask
    return found
