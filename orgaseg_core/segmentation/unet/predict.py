"""Segmenting an image with a U-Net: grey -> the model's scale -> class probabilities, tile by
tile with a margin (bounded memory, no seams) -> regions (:mod:`..forest.regions`) -> labels at
the input's size and their outlines. Imports torch."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..forest.features import tiles
from ..forest.predict import segment_by_regions
from ..forest.regions import RegionParams
from ..predict import Segmentation
from .model import LoadedUNet

#: side (px at the model's scale) of the tiles the network predicts, and the margin around
#: each: the U-Net's outputs near a tile's edge see less context, so they are cut away
TILE = 1024
MARGIN = 96


def _padded(block: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    """``block`` reflect-padded at the bottom and right to multiples of ``multiple`` (and at
    least ``multiple``): the network pools ``depth`` times."""
    h, w = block.shape
    ph, pw = (-h) % multiple, (-w) % multiple
    if h + ph < multiple:
        ph = multiple - h
    if w + pw < multiple:
        pw = multiple - w
    mode = "reflect" if min(h, w) > max(ph, pw) else "symmetric"
    return np.pad(block, ((0, ph), (0, pw)), mode=mode), (h, w)


def class_probabilities(loaded: LoadedUNet, image: np.ndarray, *, tile: int = TILE,
                        margin: int = MARGIN) -> np.ndarray:
    """Probabilities (Y, X, 3) float32 of background, interior and boundary for a normalised
    grey image (Y, X) at the model's scale, predicted in tiles of ``tile`` px with ``margin``
    px of context on each side."""
    import torch

    network, device, multiple = loaded.network, loaded.device, loaded.info.multiple
    out = np.zeros(image.shape + (3,), np.float32)
    with torch.inference_mode():
        for window, core in tiles(image.shape, margin, tile):
            block, (h, w) = _padded(np.ascontiguousarray(image[window], dtype=np.float32), multiple)
            x = torch.from_numpy(block)[None, None].to(device)
            prob = torch.softmax(network(x), dim=1)[0, :, :h, :w].permute(1, 2, 0).cpu().numpy()
            inner = tuple(slice(c.start - wd.start, c.stop - wd.start) for c, wd in zip(core, window))
            out[core] = prob[inner]
    return out


def segment_unet_array(image: np.ndarray, loaded: LoadedUNet, *, image_scale: float = 1.0,
                       preprocessing: bool = True, regions: RegionParams | None = None,
                       tile: int = TILE, levels: Sequence[float] | None = None,
                       views: int | None = None) -> Segmentation:
    """Segment one image (Y, X) or (Y, X, C) with a loaded U-Net.

    image_scale: the input's pixel scale relative to the original images. regions: None = the
    parameters chosen on the model's validation images. levels, views: pyramid levels and
    test-time views (None = the model's choice, see :func:`..forest.predict.segment_by_regions`).
    The labels come back at the input's size; ``probabilities`` are each object's mean
    foreground probability.
    """
    return segment_by_regions(image, loaded, lambda small: class_probabilities(loaded, small, tile=tile),
                              image_scale=image_scale, preprocessing=preprocessing, regions=regions,
                              tile=tile, levels=levels, views=views, what="the U-Net")
