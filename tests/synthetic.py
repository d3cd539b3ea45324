"""Small synthetic segmentation data shared by test modules: dark discs on a bright background.

A plain module (not conftest) so that test modules import it by name.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile

SHAPE = (96, 128)


# --------------------------------------------------------------------------- synthetic data

def disc_pair(rng: np.random.Generator, shape=SHAPE, n=4, radius=(7, 12)) -> tuple[np.ndarray, np.ndarray]:
    """A bright noisy image with ``n`` dark discs (radius in ``radius`` px) and its label image."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    labels = np.zeros(shape, np.uint16)
    placed = 0
    for _ in range(200):
        r = rng.uniform(*radius)
        cy, cx = rng.uniform(r + 2, shape[0] - r - 2), rng.uniform(r + 2, shape[1] - r - 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        grown = (yy - cy) ** 2 + (xx - cx) ** 2 <= (r + 3) ** 2
        if labels[grown].any():
            continue
        placed += 1
        labels[disc] = placed
        if placed == n:
            break
    image = 200 - 120 * (labels > 0) + rng.normal(0, 6, shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def write_split(root: Path, n_train=6, n_val=2, seed=0, shape=SHAPE) -> Path:
    """A ``split`` folder (train/val with images/ + masks/) of disc images, and its provenance:
    run.json of the split pointing to a preprocess run.json at scale 0.5."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            image, labels = disc_pair(rng, shape)
            (root / split / "images").mkdir(parents=True, exist_ok=True)
            (root / split / "masks").mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(root / split / "images" / f"{split}_{i}.tif", image)
            tifffile.imwrite(root / split / "masks" / f"{split}_{i}.tif", labels)
    pre = root.parent / f"{root.name}-pre"
    pre.mkdir(exist_ok=True)
    (pre / "run.json").write_text(json.dumps({"step": "preprocess", "arguments": {
        "scale": 0.5, "remove_vignette": False, "flatten_background": False}}))
    (root / "run.json").write_text(json.dumps({"step": "split", "arguments": {"data": str(pre)}}))
    return root
