"""Organoids across a 100x range of sizes: one model applied at several scales (an image pyramid).

A StarDist model sees objects well within a band of sizes: large ones must fit its receptive
field (:mod:`.sizing` shrinks the data until they do), small ones need a few cells of its output
grid. Real organoid images hold both: in GOAT's lung image most organoids are 6-20 px across at
full resolution, in its intestinal images up to 470 px; at the scale where the large ones fit,
the small ones are 2-6 px and vanish. The network is trained at that one scale, where its
training organoids span a wide band of sizes (say 3-100 px); ``segment`` then predicts on the
image at that scale *and* enlarged 2x and 4x (the levels of the pyramid), and keeps each
object from the level where it lies in the well-seen part of that band:

* level factors ``m_0 = 1 < m_1 = 2 < ...`` multiply the model's scale; the coarsest level
  (``m_0``) has the widest view, the finer ones enlarge the small objects;
* an object found at level ``i`` with equivalent diameter ``d`` (px at that level) counts when
  it is at least :data:`MIN_LEVEL_DIAMETER` px across (below that StarDist's 2x2 grid cannot
  outline it; the finest level takes any size) and, at a finer level, under
  :data:`MAX_FINE_DIAMETER` px (larger ones were the coarser level's to find; large objects at
  an enlarged scale are mostly parts of organoids wider than the network sees);
* the objects are placed coarse level first, by probability within a level: an object keeps
  only the pixels not taken yet and is dropped when more than :data:`MAX_OVERLAP` of its area
  is taken. So the same organoid found at two levels counts once, a small structure found at
  a fine level inside a large organoid is not a second organoid, and a pyramid never loses an
  object that one scale finds at 8 px or more: it only adds what the finer levels see.

(Training on the enlarged images as well was tried and dropped: at 2x and 4x most training
organoids are wider than the receptive field, and in the same 10 CPU minutes the network
learned far less: F1 0.02 instead of 0.33 on held-out GOAT image 291, same data and budget.)

:func:`choose_pyramid` picks the levels from the training objects' sizes; ``train-segmentation``
then compares one level against the pyramid on the validation images and stores the better one
in the model. Everything here is numpy/scipy; the network calls live in ``predict``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

#: Training organoids under this diameter (px at the model's scale; 8 x 8 cells of StarDist's
#: 2x2 output grid) are small enough for a pyramid to be worth trying.
COMFORTABLE_DIAMETER = 16.0
#: Objects found at a level count from this diameter (px at that level; 4 x 4 grid cells) on,
#: except at the finest level, which takes any size.
MIN_LEVEL_DIAMETER = 8.0
#: Finer levels add only objects under this diameter (px at that level).
MAX_FINE_DIAMETER = 32.0
#: At most this many levels (1x, 2x, 4x the model's scale): each level costs 4x the pixels of
#: the one before it.
MAX_LEVELS = 3
#: Never enlarge the data beyond this factor of its own resolution (adds pixels, not detail).
MAX_ENLARGE = 2.0
#: A candidate that loses more than this part of its area to more probable objects is dropped.
MAX_OVERLAP = 0.5


@dataclass
class PyramidChoice:
    """The levels (factors of the model's scale) and why."""

    levels: tuple[float, ...]
    reason: str

    def as_dict(self) -> dict:
        return {"levels": list(self.levels), "reason": self.reason,
                "level_diameters_px": {"min": MIN_LEVEL_DIAMETER, "max_fine": MAX_FINE_DIAMETER}}


def parse_pyramid(value) -> tuple[float, ...] | None:
    """``"auto"``/None -> None (choose); ``"none"``/``"1"`` -> (1,); ``"1,2,4"`` or a sequence ->
    those factors (increasing, the first 1, each more than the one before). ValueError otherwise."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "auto"):
            return None
        if text in ("none", "off", "single"):
            return (1.0,)
        try:
            factors = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"pyramid must be 'auto', 'none' or factors like '1,2,4', got {value!r}") from None
    else:
        factors = [float(v) for v in value]
    if (not factors or not all(math.isfinite(f) for f in factors) or factors[0] != 1.0
            or any(b <= a for a, b in zip(factors, factors[1:]))):
        raise ValueError(f"pyramid factors must start at 1 and increase (e.g. '1,2,4'), got {value!r}")
    if len(factors) > MAX_LEVELS + 2 or factors[-1] > 16:
        raise ValueError(f"pyramid {value!r} is too deep: at most {MAX_LEVELS + 2} levels up to 16x")
    return tuple(factors)


def levels_key(levels: Sequence[float]) -> str:
    """Pyramid levels as ``parse_pyramid`` reads them and model files store their scores: "1,2,4"."""
    return ",".join(f"{float(v):g}" for v in levels)


def describe_levels(levels: Sequence[float]) -> str:
    """Pyramid levels for people: "1x, 2x, 4x"."""
    return ", ".join(f"{float(v):g}x" for v in levels)


def choose_pyramid(diameters: np.ndarray, resize: float, *, min_diameter: float = COMFORTABLE_DIAMETER,
                   max_levels: int = MAX_LEVELS, max_enlarge: float = MAX_ENLARGE) -> PyramidChoice:
    """Levels for training objects of these ``diameters`` (px of the training data) at ``resize``.

    One level (1,) when the small objects (5th percentile) are at least ``min_diameter`` px at
    the model's scale; otherwise factors 1, 2, 4, ... until they are, at most ``max_levels``
    levels and never enlarging the data beyond ``max_enlarge`` x its own resolution.
    """
    d = np.asarray(diameters, dtype=np.float64)
    if d.size == 0:
        raise ValueError("no objects to choose pyramid levels from")
    p5 = float(np.percentile(d, 5)) * float(resize)
    levels = [1.0]
    while (p5 * levels[-1] < min_diameter and len(levels) < max_levels
           and resize * levels[-1] * 2 <= max_enlarge + 1e-9):
        levels.append(levels[-1] * 2)
    if len(levels) == 1:
        if p5 >= min_diameter:
            reason = (f"the small objects (5th percentile {p5:.1f} px at the model's scale) are at least "
                      f"{min_diameter:g} px across: one level")
        else:
            reason = (f"the small objects are {p5:.1f} px at the model's scale, but enlarging beyond "
                      f"{max_enlarge:g}x the data's resolution adds no detail: one level")
    else:
        reason = (f"the small objects (5th percentile {p5:.1f} px at the model's scale) are under "
                  f"{min_diameter:g} px: also at {describe_levels(levels[1:])} the scale "
                  f"({p5 * levels[-1]:.1f} px at the finest)")
    return PyramidChoice(levels=tuple(levels), reason=reason)


def level_bands(n_levels: int, min_diameter: float = MIN_LEVEL_DIAMETER,
                max_fine: float = MAX_FINE_DIAMETER) -> list[tuple[float, float]]:
    """(low, high) equivalent diameter, in px at each level's own resolution, of the objects that
    count at each of ``n_levels`` levels (coarse to fine): at least ``min_diameter`` (any size
    at the finest level) and, at the finer levels, under ``max_fine``."""
    return [(0.0 if i == n_levels - 1 else min_diameter, math.inf if i == 0 else max_fine)
            for i in range(n_levels)]


@dataclass
class LevelObjects:
    """The objects one level found, at the output resolution.

    labels: (Y, X) ids 1..N (0 = background) resized to the output; probabilities[k]: object
    k + 1's probability; diameters[k]: its equivalent diameter in px at the level's own
    resolution (measured before resizing).
    """

    labels: np.ndarray
    probabilities: np.ndarray
    diameters: np.ndarray


def merge_levels(found: Sequence[LevelObjects], levels: Sequence[float], *,
                 min_diameter: float = MIN_LEVEL_DIAMETER, max_fine: float = MAX_FINE_DIAMETER,
                 max_overlap: float = MAX_OVERLAP) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """One label image from the objects of every level (see the module notes).

    found[i]: what level ``levels[i]`` found, all at the same output shape. Returns (labels
    uint32 with ids 1..K, origin) where ``origin[k]`` = (level index, that level's id) of
    object k + 1. Objects are placed coarse level first (the widest view), by decreasing
    probability within a level; each keeps only pixels not taken yet and is dropped when more
    than ``max_overlap`` of its area is taken. Linear in pixels (one bounding-box pass per
    level) and objects.
    """
    if len(found) != len(levels) or not found:
        raise ValueError("one LevelObjects per level is needed")
    shape = found[0].labels.shape
    bands = level_bands(len(levels), min_diameter, max_fine)
    candidates = []  # (probability, level, id, box)
    for index, (objects, (low, high)) in enumerate(zip(found, bands)):
        if objects.labels.shape != shape:
            raise ValueError(f"level {index} labels {objects.labels.shape} differ from {shape}")
        boxes = ndimage.find_objects(objects.labels)
        for k, box in enumerate(boxes):
            if box is None or k >= len(objects.diameters):
                continue
            if low <= float(objects.diameters[k]) < high:
                candidates.append((float(objects.probabilities[k]), index, k + 1, box))
    # coarse level first, then the most probable; then the id (deterministic)
    candidates.sort(key=lambda c: (c[1], -c[0], c[2]))
    out = np.zeros(shape, dtype=np.uint32)
    origin: list[tuple[int, int]] = []
    for _, index, old, box in candidates:
        mine = found[index].labels[box] == old
        area = int(np.count_nonzero(mine))
        if area == 0:
            continue
        free = mine & (out[box] == 0)
        if area - int(np.count_nonzero(free)) > max_overlap * area:
            continue
        origin.append((index, old))
        out[box][free] = len(origin)
    return out, origin

