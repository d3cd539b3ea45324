"""Per-object descriptors for classification: intensity relative to the background, rim and
core, texture and the shape of the outline's concavities.

:func:`object_descriptors` complements :func:`~orgaseg_core.objects.measurements.measure_objects`
with the cheap features that tell organoid types apart where the plain measurements do not:

- ``background_intensity``: median grey value of the image's background (label 0), in the
  image's own units; every intensity below is divided by it, so the descriptors do not depend
  on the bit depth (8/16-bit), the exposure or the lamp.
- ``relative_mean_intensity``, ``relative_std_intensity``, ``relative_p10_intensity``,
  ``relative_p90_intensity``: the object's grey values over the background.
- ``relative_rim_intensity``, ``relative_core_intensity``: mean over the background of the
  object's rim (pixels within ``RIM_FRACTION`` of the equivalent radius of its outline, at least
  ``RIM_MIN_PX``) and of the rest (its core); ``core_rim_ratio`` = core / rim. A cyst (light
  lumen in a dark wall) has a ratio above 1, a filled organoid about 1.
- ``relative_gradient``: mean Sobel gradient magnitude inside the object over the background
  (grain, texture).
- ``radius_cv``: coefficient of variation of the distances from the centroid to the outline
  pixels (0 for a disc; large for buds and branches).
- ``n_concavities``: regions of the convex hull outside the object deeper than
  ``CONCAVITY_MIN_DEPTH`` of the equivalent radius (about one per gap between two buds or
  branches); ``concavity_depth``: the deepest such point's distance to the object, over the
  equivalent radius.

Lengths are relative (unitless) so that the descriptors hold across pixel sizes. Each object is
handled inside its own bounding box (plus a 1 px frame), so the cost is linear in the pixels of
the bounding boxes; the background median is one pass over the image.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import ndimage

from ..common.errors import OrgasegError
from .measurements import _check_labels, _object_slices

#: Columns of :func:`object_descriptors`, in order (after ``label``).
DESCRIPTOR_COLUMNS = [
    "background_intensity", "relative_mean_intensity", "relative_std_intensity",
    "relative_p10_intensity", "relative_p90_intensity", "relative_rim_intensity",
    "relative_core_intensity", "core_rim_ratio", "relative_gradient", "radius_cv",
    "n_concavities", "concavity_depth",
]
#: Rim width as a fraction of the equivalent radius (and at least RIM_MIN_PX pixels).
RIM_FRACTION = 0.2
RIM_MIN_PX = 1.5
#: A concavity counts when it reaches this fraction of the equivalent radius into the hull.
CONCAVITY_MIN_DEPTH = 0.15


def background_level(grey: np.ndarray, labels: np.ndarray) -> float:
    """Median grey value of the pixels with label 0 (all pixels when there is none); > 0."""
    background = labels == 0
    values = grey[background] if background.any() else grey.ravel()
    level = float(np.median(values)) if values.size else 0.0
    # A black background (fluorescence-like or clipped) would make every ratio infinite.
    return level if level > 0 else 1.0


def _descriptors_of(grey: np.ndarray, gradient: np.ndarray, mask: np.ndarray, level: float
                    ) -> list[float]:
    """Descriptors of one object: ``mask`` (bool) with a 1 px frame of False around it."""
    from skimage.morphology import convex_hull_image

    values = grey[mask].astype(np.float64)
    area = values.size
    radius = math.sqrt(area / math.pi)
    inside = ndimage.distance_transform_edt(mask)
    rim_width = max(RIM_MIN_PX, RIM_FRACTION * radius)
    rim = mask & (inside <= rim_width)
    core = mask & (inside > rim_width)
    rim_mean = float(grey[rim].mean()) if rim.any() else float(values.mean())
    core_mean = float(grey[core].mean()) if core.any() else rim_mean
    p10, p90 = np.percentile(values, [10, 90])

    rows, cols = np.nonzero(mask)
    outline = mask & ~ndimage.binary_erosion(mask)
    orow, ocol = np.nonzero(outline)
    distances = np.hypot(orow - rows.mean(), ocol - cols.mean())
    radius_cv = float(distances.std() / distances.mean()) if distances.size and distances.mean() > 0 else 0.0

    hull = convex_hull_image(mask) if area >= 3 else mask
    deficiency = hull & ~mask
    n_concavities, depth = 0, 0.0
    if deficiency.any():
        # Distance of each hull pixel outside the object to the object.
        outside = ndimage.distance_transform_edt(~mask)
        regions, n = ndimage.label(deficiency)
        if n:
            # each region's largest distance (ndimage.maximum sorts the labels: 10x slower)
            deepest = np.zeros(n + 1, dtype=np.float64)
            np.maximum.at(deepest, regions[deficiency], outside[deficiency])
            deepest = deepest[1:] / max(radius, 1e-9)
            n_concavities = int((deepest >= CONCAVITY_MIN_DEPTH).sum())
            depth = float(deepest.max())
    return [
        float(values.mean()) / level, float(values.std()) / level, float(p10) / level,
        float(p90) / level, rim_mean / level, core_mean / level,
        core_mean / rim_mean if rim_mean > 0 else 1.0,
        float(gradient[mask].mean()) / level, radius_cv, float(n_concavities), depth,
    ]


def object_descriptors(grey: np.ndarray, labels: np.ndarray, *, background: float | None = None
                       ) -> pd.DataFrame:
    """One row per label present in ``labels`` (ascending): ``label`` and :data:`DESCRIPTOR_COLUMNS`.

    grey: (Y, X) image, any numeric dtype; labels: (Y, X) integer label image (0 = background).
    background: the background grey level to divide by (default: :func:`background_level`).
    """
    grey = np.asarray(grey)
    labels = np.asarray(labels)
    if grey.ndim != 2 or labels.shape != grey.shape:
        raise OrgasegError(f"descriptors need a grey (Y, X) image and a label image of the same "
                           f"shape, got {grey.shape} and {labels.shape}")
    level = float(background) if background is not None else background_level(grey, labels)
    if not math.isfinite(level) or level <= 0:
        level = 1.0
    grey = grey.astype(np.float32, copy=False)
    # The same object walk as measure_objects (sparse label values made consecutive first).
    ids, lookup_values, slices, lookup = _object_slices(_check_labels(labels))
    rows = []
    for label, value, box in zip(ids, lookup_values, slices):
        # One pixel of frame so that erosion, distances and the hull see the outline.
        r0, r1 = max(box[0].start - 1, 0), min(box[0].stop + 1, labels.shape[0])
        c0, c1 = max(box[1].start - 1, 0), min(box[1].stop + 1, labels.shape[1])
        mask = np.pad(lookup[r0:r1, c0:c1] == value, 1)
        window = np.pad(grey[r0:r1, c0:c1], 1, mode="edge")
        gradient = np.hypot(ndimage.sobel(window, 0), ndimage.sobel(window, 1)) / 8.0
        rows.append([label, level, *_descriptors_of(window, gradient, mask, level)])
    table = pd.DataFrame(rows, columns=["label"] + DESCRIPTOR_COLUMNS)
    table["label"] = table["label"].astype(np.int64)
    table["n_concavities"] = table["n_concavities"].astype(np.int64)
    return table


def measure_and_describe(labels: np.ndarray, grey: np.ndarray) -> pd.DataFrame:
    """:func:`~orgaseg_core.objects.measurements.measure_objects` and :func:`object_descriptors`
    of every object, one row per label: the object table of ``extract-objects`` and of the
    classifier's training objects (one function, so both see exactly the same values)."""
    from .measurements import measure_objects

    table = measure_objects(labels, grey)
    return table.merge(object_descriptors(grey, labels), on="label", how="left", validate="one_to_one")
