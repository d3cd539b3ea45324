"""Region models (the pixel forest, the U-Net) at several scales: an image pyramid.

The network or forest is trained at one scale, where the small organoids of some tissues are a
few pixels across (GOAT's lung organoids: 14 px at full resolution, 5 px at the scale where the
large intestinal ones fit the U-Net). Predicting on the image enlarged 2x (and 4x) as well and
keeping each organoid from the level where it is well seen (:func:`..pyramid.merge_levels`:
coarse level first, finer levels add only small objects where nothing was found) finds them:
held-out GOAT lung image, the same U-Net, F1 at IoU 0.5 0.21 at one scale, 0.57 at 1,2.

:func:`choose_region_pyramid` picks the levels on the validation images in training. Everything
here takes the model's class probabilities as a function: no framework is imported.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np

from ..predict import network_input, upscale_labels
from .regions import RegionParams, regions_from_probabilities

log = logging.getLogger(__name__)

#: How much lower (validation mean F1 over IoU 0.5-0.9) a deeper pyramid may score and still be
#: kept. Its levels are proposed from the training organoids' sizes, and the validation images
#: (often one) need not hold small organoids: on GOAT the finer level scored 0.003-0.006 lower on
#: a validation image of large organoids in 4 of 5 folds and raised F1 at IoU 0.5 on the held-out
#: images from 0.333 to 0.389, so a small loss there is noise, not evidence against it.
PYRAMID_TOLERANCE = 0.01


def labels_at_levels(grey: np.ndarray, base: float, levels: Sequence[float],
                     probabilities: Callable[[np.ndarray], np.ndarray], regions: RegionParams,
                     percentiles: Sequence[float], shape: tuple[int, int], *,
                     first: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Organoids of a grey image (Y, X, preprocessed, not normalised) from class probabilities
    at each pyramid level: level ``m`` predicts on ``grey`` resized by ``base * m`` (``first``:
    the first level's network input when already made). Returns labels (``shape``, ids 1..N)
    and each object's confidence (N,). One level is a plain prediction; several are merged by
    :func:`..pyramid.merge_levels` (each object from the level where it is well seen)."""
    from ..pyramid import LevelObjects, merge_levels
    from ..sizing import equivalent_diameters

    found = []
    for index, m in enumerate(levels):
        level_input = first if (index == 0 and first is not None) else network_input(grey, base * m, percentiles)
        level_labels, level_confidence = regions_from_probabilities(probabilities(level_input), regions.at_level(m))
        found.append(LevelObjects(labels=upscale_labels(level_labels, shape),
                                  probabilities=np.asarray(level_confidence, dtype=np.float64),
                                  diameters=equivalent_diameters(level_labels, len(level_confidence))))
    if len(found) == 1:
        labels, confidence = found[0].labels, found[0].probabilities
    else:
        labels, origin = merge_levels(found, levels)
        confidence = np.array([found[i].probabilities[old - 1] for i, old in origin], dtype=np.float64)
    if len(found) > 1 or base * levels[-1] > 1:
        # shrinking back can lose an object of a pixel or two: keep ids 1..N and their confidence
        present = np.bincount(labels.ravel().astype(np.int64), minlength=confidence.size + 1)[1:confidence.size + 1] > 0
        if not present.all():
            new_ids = np.zeros(confidence.size + 1, labels.dtype)
            new_ids[1:][present] = np.arange(1, int(present.sum()) + 1)
            labels, confidence = new_ids[labels], confidence[present]
    return labels, confidence


def choose_region_pyramid(greys: Sequence[np.ndarray], truths: Sequence[np.ndarray], factor: float,
                          probabilities: Callable[[np.ndarray], np.ndarray], regions: RegionParams,
                          percentiles: Sequence[float], train_diameters: np.ndarray, *,
                          given: Sequence[float] | None = None,
                          tolerance: float = PYRAMID_TOLERANCE) -> dict:
    """The pyramid a region model keeps, chosen on its validation images.

    greys: validation images (Y, X) at the data's scale, preprocessed, not normalised; truths:
    their label images. factor: the model's scale relative to them. train_diameters: the
    training objects' equivalent diameters (px of the data), from which
    :func:`..pyramid.choose_pyramid` proposes levels; every prefix of them (1; 1,2; 1,2,4) is
    scored by mean F1 over IoU 0.5-0.9, and the deepest one within ``tolerance`` of the best
    is kept: its finer levels only add small objects where the coarse level found nothing, so a
    validation image without small organoids cannot show what they are worth, and a small loss
    there is noise (:data:`PYRAMID_TOLERANCE`). given: levels chosen by the user, kept as they
    are (scored for the report). Returns {"levels", "reason", "scores" (levels text -> score),
    "chosen": "auto" or "given"}.
    """
    from ..evaluation import DEFAULT_THRESHOLDS, segmentation_metrics
    from ..pyramid import choose_pyramid, levels_key
    from ..train import mean_f1

    if given is not None:
        candidates = [tuple(float(v) for v in given)]
    else:
        proposal = choose_pyramid(train_diameters, factor)
        candidates = [tuple(proposal.levels[:k]) for k in range(1, len(proposal.levels) + 1)]
    scores = {}
    for levels in candidates:
        preds = [labels_at_levels(g, factor, levels, probabilities, regions, percentiles, t.shape)[0]
                 for g, t in zip(greys, truths)]
        scores[levels] = round(mean_f1(segmentation_metrics(list(truths), preds, thresholds=DEFAULT_THRESHOLDS)), 4)
        log.info("pyramid %s: validation mean F1 over IoU 0.5-0.9 %.3f", levels_key(levels), scores[levels])
    if given is not None:
        return {"levels": list(candidates[0]), "reason": "given", "scores": {levels_key(candidates[0]): scores[candidates[0]]},
                "chosen": "given"}
    top = max(scores.values())
    best = max((p for p in candidates if scores[p] >= top - tolerance), key=len)
    reason = proposal.reason
    if len(candidates) > 1:
        reason += (f"; kept {levels_key(best)}: the most levels within {tolerance:g} of the best validation "
                   f"mean F1 ({scores[best]:.3f} against {top:.3f})")
    return {"levels": list(best), "reason": reason, "scores": {levels_key(p): s for p, s in scores.items()},
            "chosen": "auto"}
