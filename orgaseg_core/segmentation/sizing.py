"""How big the objects are, and the training resize and patch size chosen from that.

StarDist predicts, for every pixel, the distances to its object's boundary along ``n_rays``
rays. A pixel can only "see" a boundary that lies within the network's receptive field, so an
organoid much wider than that field comes out as several small objects or as circles of one
size (what issue 10 saw on real images at scale 0.5), and an organoid of a few pixels is lost
in the output grid. :func:`choose_resize` therefore picks a resize factor for the training data
from the sizes of the annotated objects, so that the large ones (95th percentile of the
equivalent diameters) span at most :data:`FIT_FRACTION` of the receptive field and, where
that leaves room, the small ones (5th percentile) keep at least :data:`MIN_DIAMETER` pixels;
:func:`choose_patch` then makes the training patches at least twice as wide as the large
objects. ``segment`` applies the same factor to new images (it is part of the model's scale).

All sizes are in pixels of the arrays given; nothing here needs TensorFlow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

#: The large objects (95th percentile diameter) should span at most this part of the
#: receptive field: its border pixels contribute little (the effective field is smaller).
FIT_FRACTION = 0.5
#: Smallest equivalent diameter (px) the small objects (5th percentile) should keep, where the
#: large ones allow it: with StarDist's default 2x2 output grid that is 4x4 grid cells.
MIN_DIAMETER = 8.0
#: Never enlarge the training data more than this (it adds pixels, not information).
MAX_ENLARGE = 2.0
#: Factors within this ratio of 1 are not worth a resampling of the data: 1 is used.
KEEP_TOLERANCE = 0.1
#: Largest patch side chosen automatically (px), and the usual one (StarDist's default).
MAX_PATCH = 512
DEFAULT_PATCH = 256


def equivalent_diameters(labels: np.ndarray, n: int) -> np.ndarray:
    """Equivalent diameters ``2 sqrt(area / pi)`` (px) of objects 1..n of ``labels``, indexed by
    id - 1 (0 for an id without pixels). One bincount (linear in pixels)."""
    areas = np.bincount(np.asarray(labels).ravel().astype(np.int64, copy=False), minlength=n + 1)[1:n + 1]
    return 2.0 * np.sqrt(areas / math.pi)


def object_diameters(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Equivalent diameters ``2 * sqrt(area / pi)`` (px) of every object of every label image.

    masks: integer label images (Y, X), 0 = background. One bincount per image (linear in
    pixels). Returns a float array, one entry per object with pixels.
    """
    out = []
    for labels in masks:
        labels = np.asarray(labels)
        if labels.size == 0 or labels.max() <= 0:
            continue
        d = equivalent_diameters(labels, int(labels.max()))
        out.append(d[d > 0])
    return np.concatenate(out) if out else np.zeros(0)


def receptive_field(grid: Sequence[int] = (2, 2), *, unet_depth: int = 3, kernel: int = 3,
                    conv_per_depth: int = 2, pool: int = 2, conv_after_unet: bool = True) -> int:
    """Receptive field (px of the network input, one side) of StarDist2D's default network.

    StarDist2D: ``conv_per_depth`` convolutions and a max-pool per factor of 2 of the grid, a
    U-Net (``unet_depth`` levels of ``conv_per_depth`` convolutions down, the same in the
    middle and up), one more convolution after it. Each k x k convolution at stride s widens
    the field by (k - 1) * s, each pooling by (pool - 1) * s. The theoretical field; the
    effective one is smaller (see :data:`FIT_FRACTION`).
    """
    field, stride = 1, 1
    g = max(int(v) for v in grid)
    while stride < g:
        field += conv_per_depth * (kernel - 1) * stride
        field += (2 - 1) * stride
        stride *= 2
    for level in range(unet_depth):  # down
        field += conv_per_depth * (kernel - 1) * stride * pool ** level
        field += (pool - 1) * stride * pool ** level
    field += conv_per_depth * (kernel - 1) * stride * pool ** unet_depth  # middle
    for level in reversed(range(unet_depth)):  # up
        field += conv_per_depth * (kernel - 1) * stride * pool ** level
    if conv_after_unet:
        field += (kernel - 1) * stride
    return int(field)


@dataclass
class ResizeChoice:
    """The resize factor for the training data, and why (sizes in px before resizing)."""

    factor: float
    reason: str
    n_objects: int
    p5: float
    median: float
    p95: float
    largest: float
    field: int
    n_too_small: int  # objects below MIN_DIAMETER after resizing

    def as_dict(self) -> dict:
        return {"factor": self.factor, "reason": self.reason, "n_objects": self.n_objects,
                "diameter_px": {"p5": round(self.p5, 1), "median": round(self.median, 1),
                                "p95": round(self.p95, 1), "largest": round(self.largest, 1)},
                "receptive_field_px": self.field,
                "n_below_min_diameter_after": self.n_too_small}


def choose_resize(diameters: np.ndarray, field: int, *, fit_fraction: float = FIT_FRACTION,
                  min_diameter: float = MIN_DIAMETER, max_enlarge: float = MAX_ENLARGE) -> ResizeChoice:
    """The factor by which to resize training data whose objects have these ``diameters`` (px).

    Shrinks when the 95th-percentile object is wider than ``fit_fraction * field``; enlarges
    (at most ``max_enlarge``) when the 5th-percentile object is narrower than
    ``min_diameter`` and the large ones leave room; otherwise 1. Factors within
    :data:`KEEP_TOLERANCE` of 1 become 1. Rounded to 2 significant digits.
    """
    d = np.asarray(diameters, dtype=np.float64)
    if d.size == 0:
        raise ValueError("no objects to choose a resize factor from")
    p5, median, p95 = (float(v) for v in np.percentile(d, (5, 50, 95)))
    fit = fit_fraction * field / p95  # largest factor that keeps the large objects in view
    grow = min_diameter / max(p5, 1e-6)  # factor that makes the small objects big enough
    if fit < 1.0:
        factor = fit
        reason = (f"the large objects (95th percentile {p95:.0f} px across) are wider than "
                  f"{fit_fraction:g} x the network's receptive field ({field} px): shrunk so they fit")
    elif grow > 1.0:
        factor = min(grow, fit, max_enlarge)
        reason = (f"the small objects (5th percentile {p5:.1f} px across) are below {min_diameter:g} px "
                  f"and the large ones ({p95:.0f} px) leave room in the receptive field ({field} px): "
                  "enlarged")
    else:
        factor = 1.0
        reason = (f"objects from {p5:.1f} to {p95:.0f} px across (5th-95th percentile) fit the "
                  f"receptive field ({field} px) as they are")
    factor = float(f"{factor:.2g}")
    if abs(factor - 1.0) <= KEEP_TOLERANCE:
        if factor != 1.0:
            reason += f" (factor {factor:g} is within {KEEP_TOLERANCE:g} of 1: kept as given)"
        factor = 1.0
    n_small = int(np.count_nonzero(d * factor < min_diameter))
    return ResizeChoice(factor=factor, reason=reason, n_objects=int(d.size), p5=p5, median=median,
                        p95=p95, largest=float(d.max()), field=int(field), n_too_small=n_small)


def choose_patch(shapes: Sequence[tuple[int, int]], divisor: tuple[int, int], p95_diameter: float, *,
                 default: int = DEFAULT_PATCH, largest: int = MAX_PATCH) -> tuple[int, int]:
    """Automatic patch size (rows, cols): ``default`` px, widened to twice the large objects'
    diameter (at most ``largest``), then reduced to a multiple of ``divisor`` that fits the
    smallest image (``shapes`` after resizing)."""
    want = min(max(default, int(math.ceil(2 * p95_diameter))), largest)
    out = []
    for axis, d in enumerate(divisor):
        fit = min(s[axis] for s in shapes) // d * d
        side = -(-want // d) * d
        out.append(max(d, min(side, fit)))
    return out[0], out[1]
