"""From the pixel forest's probabilities to instance labels.

The boundary probability, smoothed, is flooded from its low basins (a watershed of the pixels
below ``boundary_threshold``), so every region is enclosed by boundary; a region becomes an
organoid when its mean foreground probability (interior + boundary) is above
``min_foreground`` and it has at least ``min_area`` px. The background is a region too, but its
foreground probability is low. Linear in pixels (one watershed, bincounts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .features import BOUNDARY, INTERIOR


@dataclass(frozen=True)
class RegionParams:
    """How probabilities become regions (sizes in px at the model's scale)."""

    boundary_threshold: float = 0.35
    smoothing: float = 1.0
    min_foreground: float = 0.5
    min_area: float = 10.0

    def __post_init__(self):
        values = (self.boundary_threshold, self.smoothing, self.min_foreground, self.min_area)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise ValueError(f"region parameters must be finite numbers, got {values}")
        if not (0 <= self.boundary_threshold <= 1 and 0 <= self.min_foreground <= 1
                and self.smoothing >= 0 and self.min_area >= 0):
            raise ValueError("boundary_threshold and min_foreground must be within 0-1, smoothing and "
                             f"min_area 0 or more, got {values}")

    def as_dict(self) -> dict:
        return {"boundary_threshold": self.boundary_threshold, "smoothing": self.smoothing,
                "min_foreground": self.min_foreground, "min_area": self.min_area}


def regions_from_probabilities(prob: np.ndarray, params: RegionParams) -> tuple[np.ndarray, np.ndarray]:
    """Instance labels (Y, X) int32 (objects 1..N) and each object's mean foreground
    probability (N,) from class probabilities ``prob`` (Y, X, 3): background, interior,
    boundary."""
    from skimage.segmentation import watershed

    prob = np.asarray(prob, dtype=np.float32)
    boundary = prob[..., BOUNDARY]
    foreground = prob[..., INTERIOR] + prob[..., BOUNDARY]
    if params.smoothing > 0:
        boundary = ndimage.gaussian_filter(boundary, params.smoothing)
        foreground = ndimage.gaussian_filter(foreground, params.smoothing)
    seeds, n = ndimage.label(boundary < params.boundary_threshold)
    if n == 0:
        return np.zeros(prob.shape[:2], np.int32), np.zeros(0)
    regions = watershed(boundary, seeds)
    flat = regions.ravel()
    area = np.bincount(flat, minlength=n + 1)
    mean_fg = np.bincount(flat, weights=foreground.ravel(), minlength=n + 1) / np.maximum(area, 1)
    keep = (mean_fg > params.min_foreground) & (area >= params.min_area)
    keep[0] = False
    new_ids = np.zeros(n + 1, np.int32)
    new_ids[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return new_ids[regions], mean_fg[keep]
