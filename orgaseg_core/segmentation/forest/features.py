"""Pixel features and training targets of the pixel forest, computed in tiles.

The features are scikit-image's :func:`~skimage.feature.multiscale_basic_features` (Gaussian-
smoothed intensity, Sobel edges of it, and the Hessian eigenvalues, at ``num_sigma`` scales
from ``sigma_min`` to ``sigma_max`` px). Every filter reaches at most
:func:`halo` px (the Gaussians are truncated at 4 sigma), so an image is processed in tiles
with that much overlap and the features of each tile's core are exactly those of the whole
image: memory stays bounded and time linear in pixels, whatever the image size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from scipy import ndimage

#: classes of the pixel targets
BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
CLASS_NAMES = ("background", "interior", "boundary")
#: tile core side (px) of the feature computation
TILE = 1024
#: smallest side (px) an image may have at the model's scale (the filters' finite differences
#: need a few pixels)
MIN_SIDE = 8


@dataclass(frozen=True)
class FeatureSpec:
    """Which features: Gaussian scales (px at the model's scale) of intensity, edges, texture."""

    sigma_min: float = 1.0
    sigma_max: float = 32.0
    num_sigma: int = 6

    def __post_init__(self):
        ok = (isinstance(self.num_sigma, int) and not isinstance(self.num_sigma, bool) and self.num_sigma >= 1
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                      for v in (self.sigma_min, self.sigma_max))
              and 0 < self.sigma_min <= self.sigma_max)
        if not ok:
            raise ValueError(f"features need 0 < sigma_min <= sigma_max (finite) and a whole num_sigma >= 1, "
                             f"got sigma_min={self.sigma_min!r}, sigma_max={self.sigma_max!r}, "
                             f"num_sigma={self.num_sigma!r}")

    def as_dict(self) -> dict:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "num_sigma": self.num_sigma}

    @property
    def n_features(self) -> int:
        # intensity, edges and two Hessian eigenvalues per scale
        return 4 * self.num_sigma


def halo(spec: FeatureSpec) -> int:
    """Pixels of context a tile needs so that its features are exact (Gaussian truncated at 4
    sigma, plus the finite differences of the edges and the Hessian)."""
    return int(math.ceil(4.0 * spec.sigma_max)) + 3


def pixel_features(image: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Features (Y, X, F) float32 of a normalised grey image (Y, X), F = ``spec.n_features``."""
    from skimage.feature import multiscale_basic_features

    feats = multiscale_basic_features(np.asarray(image, dtype=np.float32), intensity=True, edges=True,
                                      texture=True, sigma_min=spec.sigma_min,
                                      sigma_max=spec.sigma_max, num_sigma=spec.num_sigma)
    return feats.astype(np.float32, copy=False)


def tiles(shape: tuple[int, int], margin: int, tile: int = TILE) -> Iterator[tuple[tuple[slice, slice], tuple[slice, slice]]]:
    """(outer, core) slice pairs covering an image of ``shape``: ``core`` tiles of at most
    ``tile`` px partition the image; ``outer`` is the core widened by ``margin`` px (clipped at
    the image border); the core within the outer tile is ``core`` shifted by the outer start."""
    height, width = shape
    for r0 in range(0, height, tile):
        for c0 in range(0, width, tile):
            r1, c1 = min(r0 + tile, height), min(c0 + tile, width)
            outer = (slice(max(0, r0 - margin), min(height, r1 + margin)),
                     slice(max(0, c0 - margin), min(width, c1 + margin)))
            yield outer, (slice(r0, r1), slice(c0, c1))


def tiled_features(image: np.ndarray, spec: FeatureSpec, tile: int = TILE) -> Iterator[tuple[tuple[slice, slice], np.ndarray]]:
    """(core slices, features of the core (h, w, F)) for each tile of ``image``: the same
    values as :func:`pixel_features` of the whole image, tile by tile."""
    margin = halo(spec)
    for outer, core in tiles(image.shape, margin, tile):
        feats = pixel_features(image[outer], spec)
        inner = (slice(core[0].start - outer[0].start, core[0].stop - outer[0].start),
                 slice(core[1].start - outer[1].start, core[1].stop - outer[1].start))
        yield core, feats[inner]


def pixel_targets(labels: np.ndarray, boundary_width: int = 1) -> np.ndarray:
    """Per-pixel classes (Y, X) uint8 of an instance label image: :data:`BACKGROUND` (0),
    :data:`INTERIOR` (1) and :data:`BOUNDARY` (2): an object's pixels within ``boundary_width``
    px of another label or of the background, so touching organoids stay apart."""
    labels = np.asarray(labels)
    out = (labels > 0).astype(np.uint8)
    if not out.any():
        return out
    # a pixel is on a boundary when a 4-neighbour carries another label
    edge = np.zeros(labels.shape, bool)
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge &= labels > 0
    if boundary_width > 1:
        edge = ndimage.binary_dilation(edge, iterations=int(boundary_width) - 1) & (labels > 0)
    out[edge] = BOUNDARY
    return out


def sample_pixels(targets: np.ndarray, n_per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Flat indices of up to ``n_per_class`` random pixels of each class of ``targets``
    (all of a class when it has fewer), sorted."""
    flat = targets.ravel()
    chosen = []
    for value in (BACKGROUND, INTERIOR, BOUNDARY):
        idx = np.flatnonzero(flat == value)
        if idx.size > n_per_class:
            idx = rng.choice(idx, n_per_class, replace=False)
        chosen.append(idx)
    return np.sort(np.concatenate(chosen))


def features_at(image: np.ndarray, spec: FeatureSpec, indices: np.ndarray, tile: int = TILE) -> np.ndarray:
    """Features (n, F) of the pixels at flat ``indices`` of ``image``, computed tile by tile
    (only the tiles holding chosen pixels)."""
    width = image.shape[1]
    rows, cols = np.divmod(np.asarray(indices, dtype=np.int64), width)
    out = np.empty((indices.size, spec.n_features), np.float32)
    margin = halo(spec)
    for outer, core in tiles(image.shape, margin, tile):
        inside = ((rows >= core[0].start) & (rows < core[0].stop)
                  & (cols >= core[1].start) & (cols < core[1].stop))
        if not inside.any():
            continue
        feats = pixel_features(image[outer], spec)
        out[inside] = feats[rows[inside] - outer[0].start, cols[inside] - outer[1].start]
    return out
