"""Outlines of the objects of a label image as polygons, for QuPath and for measurements.

Coordinates follow QuPath: x to the right, y down, in pixels, pixel (row r, column c) covering
[c, c + 1) x [r, r + 1), so its centre is (c + 0.5, r + 0.5). An object's outline runs through
the midpoints between its pixel centres and those of its neighbours (marching squares at level
0.5, :func:`skimage.measure.find_contours`), so rasterising the polygon with the pixel-centre
rule (as ``annotations-to-masks`` does) gives back the object's pixels, and the polygon's area is
close to its pixel count. Holes and separate parts of one object are kept (a Polygon with
interiors, or a MultiPolygon).

Cost: one :func:`scipy.ndimage.find_objects` pass over the image, then each object is traced
inside its own bounding box: linear in pixels and objects.
"""

from __future__ import annotations

import logging
from functools import reduce

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)


def _traced(mask: np.ndarray, row0: int, col0: int):
    """The geometry of a boolean (Y, X) ``mask`` whose pixel (0, 0) is pixel (row0, col0) of the
    image; None when it has no area."""
    import shapely
    from shapely.geometry import Polygon
    from skimage import measure

    padded = np.pad(mask.astype(np.uint8), 1)
    rings = []
    for contour in measure.find_contours(padded, 0.5):
        if len(contour) < 4:
            continue
        # contour (row, col) in padded pixel indices -> QuPath (x, y) of the image
        xy = np.stack([contour[:, 1] - 1 + col0 + 0.5, contour[:, 0] - 1 + row0 + 0.5], axis=1)
        ring = Polygon(np.round(xy, 3))
        if ring.area > 0:
            rings.append(ring if ring.is_valid else shapely.make_valid(ring))
    if not rings:
        return None
    # Nested contours alternate between outline and hole: their symmetric difference is the
    # object (holes cut out, islands inside holes kept).
    geometry = reduce(lambda a, b: a.symmetric_difference(b), sorted(rings, key=lambda g: -g.area))
    if not geometry.is_valid:
        geometry = shapely.make_valid(geometry)
    polygons = [g for g in getattr(geometry, "geoms", [geometry]) if g.geom_type in ("Polygon", "MultiPolygon")]
    if not polygons:
        return None
    return polygons[0] if len(polygons) == 1 else shapely.union_all(polygons)


def label_outlines(labels: np.ndarray) -> dict[int, object]:
    """label id -> shapely geometry of that object's outline (QuPath pixel coordinates).

    labels: (Y, X) integer label image, 0 = background; ids need not be consecutive. Objects
    too thin to enclose any area (a single row of pixels traces to a line) are outlined by the
    squares of their pixels, so every object with pixels has a geometry.
    """
    import shapely
    from shapely.geometry import box

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"a label image must be 2D, got shape {labels.shape}")
    outlines: dict[int, object] = {}
    for index, window in enumerate(ndimage.find_objects(labels)):
        if window is None:
            continue
        label = index + 1
        mask = labels[window] == label
        geometry = _traced(mask, window[0].start, window[1].start)
        if geometry is None or geometry.is_empty:
            rows, cols = np.nonzero(mask)
            geometry = shapely.union_all([box(c + window[1].start, r + window[0].start,
                                              c + window[1].start + 1, r + window[0].start + 1)
                                          for r, c in zip(rows, cols)])
            log.debug("object %d has no area enclosed by its outline; its pixel squares are used", label)
        outlines[label] = geometry
    return outlines
