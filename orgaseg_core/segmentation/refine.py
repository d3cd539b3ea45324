"""Outlines beyond star-convex polygons: StarDist's objects refined at the image's resolution.

StarDist describes every object by ``n_rays`` distances from its centre, predicted at the
model's (reduced) scale on a subsampled grid: buds and crypts of organoids are cut off and
outlines are coarse. Two refinements grow each StarDist object into its true shape with a
marker-controlled watershed (:func:`skimage.segmentation.watershed`), each object keeping its
id, so that the labels, the traced outlines and the measurements follow the refined shape:

* ``"probability"``: into StarDist's own object-probability map (resized to the image), the
  region where it exceeds a threshold (:func:`refine_by_probability`); the network's learned
  foreground, whatever its shape.
* ``"edges"``: onto the strongest grey-level edges of the image itself, at full resolution, in
  a band around each object (:func:`refine_by_edges`).
* ``"none"``: StarDist's polygons as they are.

``train-segmentation`` measures all of them on the validation images and stores the best in
the model (:func:`choose_refinement`); ``segment --refine`` overrides it. Cost: distance
transforms over the image and a watershed over the band around the objects, linear in pixels
(up to the watershed's log).
"""

from __future__ import annotations

import logging
from typing import Mapping

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

REFINEMENTS = ("none", "probability", "edges")
#: Threshold on StarDist's object probability (0 at an object's edge, 1 at its centre) that
#: counts as foreground for the "probability" refinement.
FOREGROUND_PROB = 0.2
#: "edges": an object's seed is its core deeper than this part of its largest inner distance;
#: its outline may move up to this part of its equivalent radius outwards.
CORE_FRACTION = 0.4
BAND_FRACTION = 0.75
MIN_BAND_PX = 3.0


def check_refinement(method: str) -> str:
    """``method`` lower-cased if it is one of :data:`REFINEMENTS`, else ValueError naming them."""
    value = str(method).strip().lower()
    if value not in REFINEMENTS:
        raise ValueError(f"unknown outline refinement {method!r}; choose one of {', '.join(REFINEMENTS)}")
    return value


def _resize_to(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A float map (y, x) resized to ``shape`` with linear interpolation (pixel centres aligned)."""
    if values.shape == tuple(shape):
        return values.astype(np.float32, copy=False)
    zoom = (shape[0] / values.shape[0], shape[1] / values.shape[1])
    out = ndimage.zoom(values.astype(np.float32), zoom, order=1, mode="nearest", grid_mode=True)
    # zoom rounds the output size; crop or pad the last row/column to the exact shape
    out = out[: shape[0], : shape[1]]
    if out.shape != tuple(shape):
        out = np.pad(out, ((0, shape[0] - out.shape[0]), (0, shape[1] - out.shape[1])), mode="edge")
    return out


def _keep_ids(refined: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Objects that the refinement lost entirely get their StarDist pixels back (never lost)."""
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return refined
    present = np.bincount(refined.ravel(), minlength=n + 1) > 0
    missing = ~present[labels] & (labels > 0)
    if missing.any():
        refined = refined.copy()
        refined[missing] = labels[missing]
    return refined


def refine_by_probability(labels: np.ndarray, prob: np.ndarray, *,
                          threshold: float = FOREGROUND_PROB) -> np.ndarray:
    """Grow (and trim) StarDist's objects into the region where its probability map > ``threshold``.

    labels: (Y, X) objects 1..N at the image's resolution. prob: StarDist's object probability
    on its grid, any shape (resized to ``labels``). Pixels of the foreground go to the object
    they are connected to through the foreground, along the probability's ridges (watershed of
    ``-prob`` from the objects' foreground pixels); foreground reached by no object and object
    pixels outside the foreground become background. Same dtype and ids as ``labels``.
    """
    from skimage.segmentation import watershed

    labels = np.asarray(labels)
    p = _resize_to(np.asarray(prob), labels.shape)
    foreground = p > threshold
    markers = np.where(foreground, labels, 0)
    refined = watershed(-p, markers=markers, mask=foreground)
    refined = np.where(foreground, refined, 0).astype(labels.dtype, copy=False)
    return _keep_ids(refined, labels)


def _grown(window: tuple[slice, ...], margin: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """``window`` (slices, e.g. of :func:`scipy.ndimage.find_objects`) grown by ``margin`` px on
    every side and clipped to an array of ``shape``."""
    return tuple(slice(max(w.start - margin, 0), min(w.stop + margin, n)) for w, n in zip(window, shape))


def _pieces(ids: np.ndarray) -> list[tuple[int | None, tuple[slice, ...]]]:
    """(id, box) of every id present in the label image ``ids``; or, when the boxes together
    hold more pixels than the image (boxes nested in boxes: a ring around others), one piece
    (None, the whole image), so that the work stays linear in pixels."""
    boxes = [(k, box) for k, box in enumerate(ndimage.find_objects(ids), start=1) if box is not None]
    if sum(int(np.prod([w.stop - w.start for w in box])) for _, box in boxes) > ids.size:
        return [(None, tuple(slice(0, n) for n in ids.shape))]
    return boxes


def edge_seeds(labels: np.ndarray, *, core_fraction: float = CORE_FRACTION,
               band_fraction: float = BAND_FRACTION, min_band: float = MIN_BAND_PX) -> np.ndarray:
    """The seeds of :func:`refine_by_edges` (int64, the shape of ``labels``): each object's core
    (pixels deeper inside than ``core_fraction`` of its largest inner distance) under its own
    id, the background farther than ``band_fraction`` x the nearest object's equivalent radius
    (at least ``min_band`` px) from every object as N + 1, and 0 in the band between them."""
    from skimage.segmentation import find_boundaries

    n = int(labels.max())
    areas = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float64)
    radius = np.sqrt(areas / np.pi)
    foreground = labels > 0
    # inner distance to the object's own edge (touching objects count as edges too), taken in
    # each object's box: its edge pixels (the transform's zeros) enclose its inside, so the
    # distances are those of one transform over the whole image (tests/test_refine.py; equal on
    # GOAT's and the generated images) at the cost of the boxes (0.9 s -> 0.1 s at 4032x3040 px)
    inside = foreground & ~find_boundaries(labels, mode="inner")
    markers = np.zeros(labels.shape, dtype=np.int64)
    for k, box in _pieces(labels):
        depth = ndimage.distance_transform_edt(inside[box])
        if k is None:  # one transform of the whole image; each object's deepest from its pixels
            deepest = np.zeros(n + 1, dtype=np.float64)
            np.maximum.at(deepest, labels[foreground], depth[foreground])
            core = foreground & (depth >= np.maximum(1.0, core_fraction * deepest[labels]))
            markers[core] = labels[core]
        else:
            own = labels[box] == k
            markers[box][own & (depth >= max(1.0, core_fraction * float(depth[own].max())))] = k
    # distance outside, and which object is nearest
    outside, (ri, ci) = ndimage.distance_transform_edt(~foreground, return_indices=True)
    band = np.maximum(min_band, band_fraction * radius[labels[ri, ci]])
    markers[~foreground & (outside > band)] = n + 1
    return markers


def refine_by_edges(labels: np.ndarray, grey: np.ndarray, *, core_fraction: float = CORE_FRACTION,
                    band_fraction: float = BAND_FRACTION, min_band: float = MIN_BAND_PX,
                    smooth: float = 1.0) -> np.ndarray:
    """Move StarDist's outlines onto the strongest grey-level edges nearby, at full resolution.

    labels: (Y, X) objects 1..N; grey: the image (Y, X), any range. Seeds
    (:func:`edge_seeds`): each object's core and the background beyond a band around every
    object. A watershed of the gradient magnitude (Gaussian of ``smooth`` px, Sobel) between
    these seeds places each outline on the strongest edge in between, so buds and crypts within
    the band are taken in. Same dtype and ids as ``labels``.
    """
    from skimage.filters import sobel
    from skimage.segmentation import watershed

    labels = np.asarray(labels)
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return labels.copy()
    grey = np.asarray(grey, dtype=np.float32)
    if grey.shape != labels.shape:
        raise ValueError(f"grey image {grey.shape} and labels {labels.shape} differ in shape")
    markers = edge_seeds(labels, core_fraction=core_fraction, band_fraction=band_fraction, min_band=min_band)
    # Only the band between the seeds is undecided. The flood runs there and on the seed pixels
    # that touch it (where a flood of the whole image spreads from, so the result is the same),
    # one connected part of the band at a time in its own box: a flood of the whole image
    # queues every seed pixel (16 s for 4032x3040 px with 200 organoids) and one over the
    # image's every pixel converts whole-image arrays (1.3 s); where the parts' boxes nest
    # (:func:`_pieces`), the band is flooded at once. The band's rim has the watershed's
    # connectivity (4 neighbours), so do its parts.
    region = ndimage.binary_dilation(markers == 0)
    parts, _ = ndimage.label(region)
    margin = int(4.0 * smooth + 0.5) + 2 if smooth > 0 else 2  # the Gaussian's radius + Sobel's
    refined = markers
    for i, box in _pieces(parts):
        # the edge map of the part's box, from the grey values of the box and a margin (the
        # filters' reach), so every value is the one a filter of the whole image gives
        outer = _grown(box, margin, grey.shape)
        inner = tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(box, outer))
        block = grey[outer]
        edges = sobel(ndimage.gaussian_filter(block, smooth) if smooth > 0 else block)[inner]
        mine = parts[box] == i if i is not None else region
        flood = watershed(edges, markers=np.where(mine, markers[box], 0), mask=mine)
        refined[box][mine] = flood[mine]
    refined[refined == n + 1] = 0
    return _keep_ids(refined.astype(labels.dtype), labels)


def refine_labels(method: str, labels: np.ndarray, *, grey: np.ndarray | None = None,
                  prob: np.ndarray | None = None, options: Mapping | None = None) -> np.ndarray:
    """Apply the refinement ``method`` (one of :data:`REFINEMENTS`) to ``labels`` (Y, X).

    grey: the image at the labels' resolution (for "edges"); prob: StarDist's probability map
    (for "probability"); options: keyword arguments of that refinement.
    """
    method = check_refinement(method)
    options = dict(options or {})
    if method == "none":
        return labels
    if method == "probability":
        if prob is None:
            raise ValueError("the 'probability' refinement needs StarDist's probability map")
        return refine_by_probability(labels, prob, **options)
    if grey is None:
        raise ValueError("the 'edges' refinement needs the grey image")
    return refine_by_edges(labels, grey, **options)
