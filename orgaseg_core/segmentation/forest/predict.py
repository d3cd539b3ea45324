"""Segmenting an image with a pixel forest: grey -> the model's scale -> class probabilities,
tile by tile -> regions (:mod:`.regions`) -> labels at the input's size and their outlines."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..predict import Segmentation, blank_segmentation, is_blank, model_pyramid, network_input, preprocessed_grey
from ...common.errors import OrgasegError
from .features import MIN_SIDE, TILE, FeatureSpec, tiled_features
from .model import LoadedForest
from .levels import labels_at_levels
from .regions import RegionParams


def class_probabilities(forest, image: np.ndarray, spec: FeatureSpec, tile: int = TILE) -> np.ndarray:
    """Probabilities (Y, X, 3) float32 of background, interior and boundary for a normalised
    grey image (Y, X); features and prediction run tile by tile (bounded memory).

    scikit-learn sums the trees' votes in as many threads as the forest's ``n_jobs`` (all
    cores), in the order the threads finish: runs agree to float rounding (1e-7), and a pixel
    lying exactly on a threshold could rarely fall the other way.
    """
    out = np.zeros(image.shape + (3,), np.float32)
    columns = [int(c) for c in forest.classes_]
    for core, feats in tiled_features(image, spec, tile):
        h, w, n = feats.shape
        p = forest.predict_proba(feats.reshape(-1, n)).astype(np.float32)
        block = np.zeros((h * w, 3), np.float32)
        block[:, columns] = p  # a class absent from the training pixels stays at 0
        out[core] = block.reshape(h, w, 3)
    return out


def segment_forest_array(image: np.ndarray, loaded: LoadedForest, *, image_scale: float = 1.0,
                         preprocessing: bool = True, regions: RegionParams | None = None,
                         tile: int = TILE, levels: Sequence[float] | None = None,
                         views: int | None = None) -> Segmentation:
    """Segment one image (Y, X) or (Y, X, C) with a loaded pixel forest.

    image_scale: the input's pixel scale relative to the original images. regions: None = the
    parameters chosen on the model's validation images. levels, views: pyramid levels and
    test-time views (None = the model's choice, see :func:`segment_by_regions`). The labels
    come back at the input's size; ``probabilities`` are each object's mean foreground
    probability.
    """
    return segment_by_regions(
        image, loaded, lambda small: class_probabilities(loaded.forest, small, loaded.info.features, tile),
        image_scale=image_scale, preprocessing=preprocessing, regions=regions, tile=tile,
        levels=levels, views=views, what="the pixel forest")


def segment_by_regions(image: np.ndarray, loaded, probabilities: Callable[[np.ndarray], np.ndarray], *,
                       image_scale: float = 1.0, preprocessing: bool = True,
                       regions: RegionParams | None = None, tile: int = TILE,
                       levels: Sequence[float] | None = None, views: int | None = None,
                       what: str = "the model") -> Segmentation:
    """Segment one image (Y, X) or (Y, X, C) with a model that gives class probabilities per
    pixel (the pixel forest, the U-Net): the model's grey-level preprocessing, its scale and
    normalisation (``loaded.info``), ``probabilities(normalised grey at the model's scale)`` ->
    (Y, X, 3) background/interior/boundary, regions (:mod:`.regions`; None = the model's own
    parameters), labels back at the input's size. ``tile``: the side reported as tiles.

    levels: factors of the model's scale to predict at (:mod:`..pyramid`: the objects of every
    level merged, each from the level where it is well seen; None = the model's choice, (1,) =
    one scale). views: the probabilities averaged over this many flipped/turned copies of each
    level's image (:mod:`..views`; None = the model's choice, 1 = none)."""
    from ..outlines import label_outlines
    from ..views import stored_views, with_views

    info = loaded.info
    levels = model_pyramid(loaded) if levels is None else tuple(float(m) for m in levels)
    views = stored_views(info.metadata) if views is None else int(views)
    probabilities = with_views(probabilities, views)
    grey = preprocessed_grey(image, loaded, preprocessing=preprocessing)
    base = info.scale / float(image_scale)
    small = network_input(grey, base, info.norm_percentiles)
    if min(small.shape) < MIN_SIDE:
        raise OrgasegError(f"image of {image.shape[0]}x{image.shape[1]} px is {small.shape[0]}x{small.shape[1]} px "
                           f"at the model's scale; {what} needs at least {MIN_SIDE} px on each side")
    if is_blank(image):
        return blank_segmentation(image, model_shape=small.shape, n_tiles=(1, 1), pyramid=levels, views=views)
    labels, confidence = labels_at_levels(grey, base, levels, probabilities, regions or info.regions,
                                          info.norm_percentiles, image.shape[:2], first=small)
    return Segmentation(labels=labels, polygons=[], probabilities=np.asarray(confidence),
                        model_shape=tuple(small.shape), n_tiles=(-(-small.shape[0] // tile), -(-small.shape[1] // tile)),
                        refinement="none", geometries=label_outlines(labels), pyramid=levels, views=views)
