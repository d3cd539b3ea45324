"""Regions that are background, not organoids (:func:`orgaseg_core.segmentation.forest.regions.background_regions`):
the background flooded as one region because its foreground probability is above the threshold
(GOAT's faint organoids teach the network a foreground of 0.5-0.6 there), dropped when it
encloses two or more organoids or is larger than ``max_area``. No framework imported."""

from __future__ import annotations

import numpy as np
import pytest

from orgaseg_core.segmentation.forest.features import BACKGROUND, INTERIOR
from orgaseg_core.segmentation.forest.levels import labels_at_levels
from orgaseg_core.segmentation.forest.regions import (
    MAX_AREA_FACTOR,
    RegionParams,
    background_regions,
    max_object_area,
    regions_from_probabilities,
)

CENTRES = ((30, 30), (30, 90), (70, 60))


def _discs_on_grey_background(background_fg: float = 0.6) -> np.ndarray:
    """Class probabilities (100, 120, 3): three discs (interior, boundary ring) on a background
    whose foreground probability is ``background_fg``."""
    yy, xx = np.mgrid[:100, :120]
    prob = np.zeros((100, 120, 3), np.float32)
    prob[..., BACKGROUND], prob[..., INTERIOR] = 1 - background_fg, background_fg
    for cy, cx in CENTRES:
        r = np.hypot(yy - cy, xx - cx)
        prob[r < 12] = (0.0, 1.0, 0.0)
        prob[(r >= 12) & (r < 15)] = (0.0, 0.1, 0.9)
    return prob


def test_background_enclosing_organoids_is_dropped():
    prob = _discs_on_grey_background()
    params = RegionParams(h_minima=0.2, smoothing=1.0, min_foreground=0.5)
    labels, confidence = regions_from_probabilities(prob, params)
    # the three discs, and nothing where the background is (its foreground 0.6 passes 0.5)
    assert labels.max() == 3 and confidence.shape == (3,)
    assert labels[2, 2] == 0 and labels[50, 5] == 0 and labels[98, 118] == 0
    assert len({labels[c] for c in CENTRES}) == 3 and all(labels[c] > 0 for c in CENTRES)
    assert np.all(confidence > 0.9)  # the discs' own foreground, not the background's


def test_background_around_one_organoid_is_dropped_by_area_only():
    prob = _discs_on_grey_background()
    prob[:, 50:] = (0.4, 0.6, 0.0)  # leaves the first disc alone: the background encloses one
    params = RegionParams(h_minima=0.2, smoothing=1.0, min_foreground=0.5)
    labels, _ = regions_from_probabilities(prob, params)
    assert labels[2, 2] > 0  # one hole is allowed (an organoid with a lumen region)
    disc_area = int(np.count_nonzero(labels == labels[30, 30]))
    limited, _ = regions_from_probabilities(prob, RegionParams(h_minima=0.2, smoothing=1.0, min_foreground=0.5,
                                                               max_area=4 * disc_area))
    assert limited[2, 2] == 0 and limited[30, 30] > 0 and limited.max() == 1


def test_background_regions_counts_only_kept_regions_inside():
    regions = np.ones((20, 20), np.int32)
    regions[3:6, 3:6], regions[10:13, 10:13], regions[15:17, 3:5] = 2, 3, 4
    area = np.bincount(regions.ravel())
    keep = np.array([False, True, True, True, False])
    assert background_regions(regions, keep, area).tolist() == [False, True, False, False, False]
    keep[3] = False  # one kept region inside (an organoid around its lumen, segmented apart): kept
    assert not background_regions(regions, keep, area).any()
    keep[3] = True
    assert background_regions(regions, keep, area, max_area=8).tolist() == [False, True, True, True, False]


def test_max_area_from_training_sizes_and_levels():
    assert max_object_area(np.array([10.0, 40.0]), 0.5) == pytest.approx(MAX_AREA_FACTOR * np.pi / 4 * 20 ** 2, abs=0.1)
    assert max_object_area(np.zeros(0)) == 0.0
    params = RegionParams(max_area=100.0)
    assert params.at_level(2).max_area == 400.0 and params.at_level(1) is params
    assert RegionParams().at_level(4).max_area == 0.0
    assert RegionParams.from_dict(params.as_dict()) == params
    old = {k: v for k, v in params.as_dict().items() if k != "max_area"}  # folders before 0.12
    assert RegionParams.from_dict(old).max_area == 0.0
    with pytest.raises(ValueError):
        RegionParams(max_area=-1.0)


def test_pyramid_levels_scale_max_area():
    """At level 2 the image is enlarged 2x: an organoid of 4x the px must pass a max_area set at level 1."""
    prob = _discs_on_grey_background(background_fg=0.1)
    disc = int(np.count_nonzero(regions_from_probabilities(prob, RegionParams(h_minima=0.2, smoothing=1.0))[0] == 1))

    def probabilities(image):  # the test's probabilities at whatever size the level asks for
        from skimage.transform import resize
        return resize(prob, image.shape + (3,), order=1).astype(np.float32)

    grey = np.zeros((100, 120), np.float32)
    params = RegionParams(h_minima=0.2, smoothing=1.0, max_area=1.5 * disc)
    labels, _ = labels_at_levels(grey, 1.0, (2.0,), probabilities, params, (1.0, 99.8), (100, 120))
    assert labels.max() == 3
