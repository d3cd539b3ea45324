"""From the pixel forest's probabilities to instance labels.

The boundary probability, smoothed, is flooded from its low basins (a watershed), so every
region is enclosed by boundary; a region becomes an organoid when its mean foreground
probability (interior + boundary) is above ``min_foreground`` and it has at least ``min_area``
px. The background is a region too, but its foreground probability is low.

Not always: where the training images have faint, out-of-focus organoids annotated, the network
gives the background between organoids a foreground probability of 0.5-0.6, and the watershed
floods it as one region that passes ``min_foreground`` (GOAT image 291, held out: one "organoid"
of 1.5 million px, half the image, with ten organoids inside it). Two checks drop it
(:func:`background_regions`): a region that encloses two or more of the other organoids is the
background seen between them (an organoid does not surround others; one hole is allowed, e.g.
a lumen segmented on its own), and a region larger than ``max_area`` (set in training from the
largest training organoid, :data:`MAX_AREA_FACTOR`) is not an organoid.

The basins (watershed markers) are either the connected pixels below ``boundary_threshold``
(``h_minima`` 0, the pixel forest's default) or the minima at least ``h_minima`` deep
(:func:`skimage.morphology.h_minima`): a global threshold merges an organoid with the
background through any gap in its boundary, while a basin's depth does not depend on how
strong the boundary is elsewhere in the image (the U-Net's boundaries are thin and faint in
places). Linear in pixels (one watershed, bincounts; h-minima is a morphological
reconstruction).

The watershed's lines lie along the middle of the boundary class, and the training targets
(:func:`.features.pixel_targets`) put that class on the inner ``boundary_width`` px of every
organoid: so each region ends about half the band's width inside the organoid's true outline.
``grow`` px (at the model's scale) gives each organoid the background within that distance of
it (:func:`skimage.segmentation.expand_labels`: into background only, never into a neighbour),
at the first pyramid level only (``at_level``). U-Net training scores 0 and 1 px (half its
2 px boundary class) on its validation images with the other parameters; the pixel forest's
boundary class is 1 px wide and it does not grow. GOAT leave-one-image-out, the 30-minute U-Nets with their
settings chosen again (``benchmarks/bench_real_segmentation.py --rechoose``; 4 of 5 folds
chose 1 px): pooled F1 at IoU 0.5 0.655 -> 0.670, mean IoU of the organoids matched before
and after 0.776 -> 0.784.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from .features import BOUNDARY, INTERIOR

#: ``max_area`` is this many times the area of the largest training organoid: organoids larger
#: than any in training (grown for days longer, 2x across) are still kept
MAX_AREA_FACTOR = 4.0
#: a region enclosing this many kept regions (or more) is background, not an organoid
MIN_ENCLOSED = 2


@dataclass(frozen=True)
class RegionParams:
    """How probabilities become regions (sizes in px at the model's scale)."""

    boundary_threshold: float = 0.35
    smoothing: float = 1.0
    min_foreground: float = 0.5
    min_area: float = 10.0
    h_minima: float = 0.0
    #: regions larger than this (px at the model's scale) are not organoids; 0 = no limit
    max_area: float = 0.0
    #: every organoid grown by this many px (at the model's scale) into the background around it
    grow: float = 0.0

    def __post_init__(self):
        values = (self.boundary_threshold, self.smoothing, self.min_foreground, self.min_area, self.h_minima,
                  self.max_area, self.grow)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise ValueError(f"region parameters must be finite numbers, got {values}")
        if not (0 <= self.boundary_threshold <= 1 and 0 <= self.min_foreground <= 1
                and self.smoothing >= 0 and self.min_area >= 0 and 0 <= self.h_minima < 1
                and self.max_area >= 0 and self.grow >= 0):
            raise ValueError("boundary_threshold and min_foreground must be within 0-1, h_minima within "
                             f"0-1 (exclusive), smoothing, min_area, max_area and grow 0 or more, got {values}")

    @classmethod
    def from_dict(cls, values: dict) -> "RegionParams":
        """From :meth:`as_dict` (``h_minima`` may be missing: folders of orgaseg 0.5-0.7;
        ``max_area`` too: folders before 0.12, no limit; ``grow``: before 0.15, no growing)."""
        return cls(**{k: values[k] for k in ("boundary_threshold", "smoothing", "min_foreground", "min_area")},
                   h_minima=values.get("h_minima", 0.0), max_area=values.get("max_area", 0.0),
                   grow=values.get("grow", 0.0))

    def as_dict(self) -> dict:
        return {"boundary_threshold": self.boundary_threshold, "smoothing": self.smoothing,
                "min_foreground": self.min_foreground, "min_area": self.min_area,
                "h_minima": self.h_minima, "max_area": self.max_area, "grow": self.grow}

    def at_level(self, m: float) -> "RegionParams":
        """These parameters for the image enlarged ``m`` times (a pyramid level): ``max_area``
        grows with it (px); ``min_area`` stays (the smallest object a level may add); ``grow``
        only at the first level (``m`` 1). The finer levels add organoids too small for it:
        a few px across at the first level, blurred in the probabilities, and wider than the
        truth already (GOAT's lung image: median area 1.05-1.4x the true one; growing them
        too lowered F1 at IoU 0.5 there from 0.675 to 0.639)."""
        if m == 1:
            return self
        return replace(self, max_area=self.max_area * m * m, grow=0.0)

    def describe(self) -> str:
        basins = (f"basins {self.h_minima:g} deep" if self.h_minima > 0
                  else f"boundary threshold {self.boundary_threshold:g}")
        grown = f", grown {self.grow:g} px" if self.grow > 0 else ""
        return (f"{basins}, smoothing {self.smoothing:g} px, foreground above {self.min_foreground:g}{grown}")


def regions_from_probabilities(prob: np.ndarray, params: RegionParams) -> tuple[np.ndarray, np.ndarray]:
    """Instance labels (Y, X) int32 (objects 1..N) and each object's mean foreground
    probability (N,) from class probabilities ``prob`` (Y, X, 3): background, interior,
    boundary. The probability is the region's before ``params.grow``."""
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
    keep &= ~background_regions(regions, keep, area, params.max_area)
    new_ids = np.zeros(n + 1, np.int32)
    new_ids[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    labels = new_ids[regions]
    if params.grow > 0 and keep.any():
        from skimage.segmentation import expand_labels

        labels = expand_labels(labels, params.grow)
    return labels, mean_fg[keep]


def max_object_area(diameters: np.ndarray, factor: float = 1.0) -> float:
    """``max_area`` (px at the model's scale) for training organoids of these equivalent
    ``diameters`` (px of the data) and a model working at ``factor`` times the data's scale:
    :data:`MAX_AREA_FACTOR` times the largest one's area. 0 (no limit) without organoids."""
    d = np.asarray(diameters, dtype=np.float64)
    if d.size == 0:
        return 0.0
    return round(float(MAX_AREA_FACTOR * math.pi / 4 * (d.max() * factor) ** 2), 1)


def background_regions(regions: np.ndarray, keep: np.ndarray, area: np.ndarray,
                       max_area: float = 0.0) -> np.ndarray:
    """Which watershed regions that passed the foreground test are background: larger than
    ``max_area`` px (0: no limit), or enclosing :data:`MIN_ENCLOSED` or more of the other
    kept regions (holes of the region filled, the kept regions inside counted).

    regions: (Y, X) ids 0..n; keep: (n + 1,) bool, the regions kept so far; area: (n + 1,)
    px per region. Returns (n + 1,) bool. Each kept region under ``max_area`` is filled once
    within its bounding box (one :func:`scipy.ndimage.find_objects` pass first): linear in
    pixels for organoids whose boxes do not overlap much.
    """
    out = np.zeros(keep.shape, bool)
    if max_area > 0:
        out |= keep & (area > max_area)
    boxes = ndimage.find_objects(regions, max_label=keep.size - 1)
    for k in np.flatnonzero(keep & ~out):
        box = boxes[k - 1]
        if box is None:
            continue
        window = regions[box]
        inside = ndimage.binary_fill_holes(window == k) & (window != k)
        if not inside.any():
            continue
        enclosed = np.unique(window[inside])
        if int(np.count_nonzero(keep[enclosed])) >= MIN_ENCLOSED:
            out[k] = True
    return out
