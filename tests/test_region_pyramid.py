"""Region models (pixel forest, U-Net) at several scales: :mod:`orgaseg_core.segmentation.forest.levels`.

A stand-in for the model's class probabilities (foreground where the normalised image is
bright, a one-pixel boundary around it) makes the pyramid's logic testable without a network:
shrunk to the coarse level, organoids 6 px across blur below the threshold and vanish; the
finer levels bring them back, and the large organoid is still counted once.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import disk

from orgaseg_core.segmentation.evaluation import segmentation_metrics
from orgaseg_core.segmentation.forest.levels import PYRAMID_TOLERANCE, choose_region_pyramid, labels_at_levels
from orgaseg_core.segmentation.forest.regions import RegionParams

PARAMS = RegionParams(boundary_threshold=0.35, smoothing=0.0, min_foreground=0.5, min_area=4)
PERCENTILES = (1.0, 99.8)
SMALL = [(40, 200), (60, 230), (200, 40), (220, 200), (230, 120)]


def threshold_probabilities(x: np.ndarray) -> np.ndarray:
    """(Y, X, 3) background, interior, boundary of a normalised image: bright is organoid."""
    fg = x > 0.5
    edge = fg & ~ndimage.binary_erosion(fg)
    prob = np.zeros(x.shape + (3,), np.float32)
    prob[..., 0], prob[..., 1], prob[..., 2] = ~fg, fg & ~edge, edge
    return prob


@pytest.fixture(scope="module")
def scene():
    """A 256 px image: one organoid 80 px across, five 6 px across; and its true labels."""
    grey = np.zeros((256, 256), np.float32)
    truth = np.zeros((256, 256), np.int32)
    grey[disk((120, 110), 40)] = 1.0
    truth[disk((120, 110), 40)] = 1
    for k, centre in enumerate(SMALL, start=2):
        grey[disk(centre, 3)] = 1.0
        truth[disk(centre, 3)] = k
    return grey, truth


def test_one_level_misses_the_small_organoids_and_the_pyramid_finds_them_once(scene):
    grey, truth = scene
    one, conf_one = labels_at_levels(grey, 0.25, (1.0,), threshold_probabilities, PARAMS, PERCENTILES, grey.shape)
    assert one.shape == grey.shape and one.max() == 1 == conf_one.size  # the large organoid only
    levels, conf = labels_at_levels(grey, 0.25, (1.0, 2.0, 4.0), threshold_probabilities, PARAMS, PERCENTILES,
                                    grey.shape)
    assert levels.max() == 1 + len(SMALL) == conf.size
    assert sorted(np.unique(levels).tolist()) == list(range(len(SMALL) + 2))  # ids 1..N, no gaps
    table = segmentation_metrics([truth], [levels], thresholds=(0.5,))
    assert table.iloc[0]["tp"] == 1 + len(SMALL) and table.iloc[0]["fp"] == 0
    # the large organoid is taken from the coarse level: no finer level adds a second object in it
    assert len(np.unique(levels[truth == 1]).tolist()) - (0 in levels[truth == 1]) == 1


def test_the_validation_images_choose_the_levels(scene):
    grey, truth = scene
    diameters = np.array([80.0] + [6.0] * len(SMALL))
    chosen = choose_region_pyramid([grey], [truth], 0.25, threshold_probabilities, PARAMS, PERCENTILES, diameters)
    assert chosen["levels"] == [1.0, 2.0, 4.0]
    assert set(chosen["scores"]) == {"1", "1,2", "1,2,4"} and chosen["scores"]["1"] < chosen["scores"]["1,2,4"]
    # organoids already well seen at one scale: no level is proposed beyond it
    large = choose_region_pyramid([grey], [truth], 1.0, threshold_probabilities, PARAMS, PERCENTILES,
                                  np.array([80.0, 40.0, 30.0]))
    assert large["levels"] == [1.0] and list(large["scores"]) == ["1"]


def test_ties_go_to_more_levels():
    """A validation image without small organoids cannot show what the finer levels add."""
    grey = np.zeros((256, 256), np.float32)
    truth = np.zeros((256, 256), np.int32)
    grey[disk((128, 128), 40)] = 1.0
    truth[disk((128, 128), 40)] = 1
    chosen = choose_region_pyramid([grey], [truth], 0.25, threshold_probabilities, PARAMS, PERCENTILES,
                                   np.array([80.0, 6.0, 6.0, 6.0]))
    assert len(set(chosen["scores"].values())) == 1 and chosen["levels"] == [1.0, 2.0, 4.0]


def test_a_small_validation_loss_keeps_the_finer_levels_and_a_clear_one_does_not(scene):
    """The finer levels are proposed from the training organoids' sizes: a validation score a
    little lower (under PYRAMID_TOLERANCE) keeps them, a clearly lower one drops them."""
    grey, truth = scene
    diameters = np.array([80.0] + [6.0] * len(SMALL))
    both = choose_region_pyramid([grey], [truth], 0.25, threshold_probabilities, PARAMS, PERCENTILES, diameters)
    scores = both["scores"]
    # with the small organoids left out of the truth, every finer level only adds false objects
    large_only = np.where(truth == 1, 1, 0).astype(truth.dtype)
    worse = choose_region_pyramid([grey], [large_only], 0.25, threshold_probabilities, PARAMS, PERCENTILES,
                                  diameters)
    # (at 2x they are still under the smallest area kept: 1,2 ties with 1 and is kept; at 4x
    # they are found, and 1,2,4 loses clearly)
    assert worse["scores"]["1,2"] == worse["scores"]["1"] > worse["scores"]["1,2,4"] + PYRAMID_TOLERANCE
    assert worse["levels"] == [1.0, 2.0]
    # a tolerance as large as the loss keeps them
    lenient = choose_region_pyramid([grey], [large_only], 0.25, threshold_probabilities, PARAMS, PERCENTILES,
                                    diameters, tolerance=1.0)
    assert lenient["levels"] == [1.0, 2.0, 4.0] and "within 1" in lenient["reason"]
    assert both["levels"] == [1.0, 2.0, 4.0] and scores["1,2,4"] == max(scores.values())


def test_given_levels_are_kept_and_scored(scene):
    grey, truth = scene
    given = choose_region_pyramid([grey], [truth], 0.25, threshold_probabilities, PARAMS, PERCENTILES,
                                  np.array([80.0, 40.0]), given=(1.0, 2.0))
    assert given["levels"] == [1.0, 2.0] and given["chosen"] == "given" and list(given["scores"]) == ["1,2"]

