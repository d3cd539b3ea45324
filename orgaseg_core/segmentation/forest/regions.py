"""From the pixel forest's probabilities to instance labels.

The boundary probability, smoothed, is flooded from its low basins (a watershed), so every
region is enclosed by boundary; a region becomes an organoid when its mean foreground
probability (interior + boundary) is above ``min_foreground`` and it has at least ``min_area``
px. The background is a region too, but its foreground probability is low.

The basins (watershed markers) are either the connected pixels below ``boundary_threshold``
(``h_minima`` 0, the pixel forest's default) or the minima at least ``h_minima`` deep
(:func:`skimage.morphology.h_minima`): a global threshold merges an organoid with the
background through any gap in its boundary, while a basin's depth does not depend on how
strong the boundary is elsewhere in the image (the U-Net's boundaries are thin and faint in
places). Linear in pixels (one watershed, bincounts; h-minima is a morphological
reconstruction).
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
    h_minima: float = 0.0

    def __post_init__(self):
        values = (self.boundary_threshold, self.smoothing, self.min_foreground, self.min_area, self.h_minima)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise ValueError(f"region parameters must be finite numbers, got {values}")
        if not (0 <= self.boundary_threshold <= 1 and 0 <= self.min_foreground <= 1
                and self.smoothing >= 0 and self.min_area >= 0 and 0 <= self.h_minima < 1):
            raise ValueError("boundary_threshold and min_foreground must be within 0-1, h_minima within "
                             f"0-1 (exclusive), smoothing and min_area 0 or more, got {values}")

    @classmethod
    def from_dict(cls, values: dict) -> "RegionParams":
        """From :meth:`as_dict` (``h_minima`` may be missing: folders of orgaseg 0.5-0.7)."""
        return cls(**{k: values[k] for k in ("boundary_threshold", "smoothing", "min_foreground", "min_area")},
                   h_minima=values.get("h_minima", 0.0))

    def as_dict(self) -> dict:
        return {"boundary_threshold": self.boundary_threshold, "smoothing": self.smoothing,
                "min_foreground": self.min_foreground, "min_area": self.min_area,
                "h_minima": self.h_minima}

    def describe(self) -> str:
        basins = (f"basins {self.h_minima:g} deep" if self.h_minima > 0
                  else f"boundary threshold {self.boundary_threshold:g}")
        return (f"{basins}, smoothing {self.smoothing:g} px, foreground above {self.min_foreground:g}")


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
    if params.h_minima > 0:
        from skimage.morphology import h_minima

        seeds, n = ndimage.label(h_minima(boundary, params.h_minima))
    else:
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
