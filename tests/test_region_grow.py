"""Growing each region into the background (``RegionParams.grow``): the watershed's lines lie in
the middle of the boundary class, which the training targets put on the inner px of every
organoid, so regions end inside the true outline. No framework imported."""

from __future__ import annotations

import numpy as np
import pytest

from orgaseg_core.segmentation.evaluation import match_objects, matched_pairs
from orgaseg_core.segmentation.forest.features import pixel_targets
from orgaseg_core.segmentation.forest.levels import labels_at_levels
from orgaseg_core.segmentation.forest.regions import RegionParams, regions_from_probabilities

BAND = 2  # the U-Net's boundary width


def _truth() -> np.ndarray:
    """Label image (90, 140): two discs that touch along a line, one alone, an ellipse."""
    yy, xx = np.mgrid[:90, :140]
    truth = np.zeros((90, 140), np.int32)
    truth[np.hypot(yy - 30, xx - 30) <= 16] = 1
    truth[(np.hypot(yy - 30, xx - 62) <= 17) & (truth == 0)] = 2  # overlaps disc 1: they touch
    truth[np.hypot(yy - 65, xx - 105) <= 13] = 3
    truth[((yy - 70) / 10.0) ** 2 + ((xx - 40) / 22.0) ** 2 <= 1] = 4
    return truth


def _probabilities(truth: np.ndarray) -> np.ndarray:
    """What a well-trained network gives: one-hot of the training targets (boundary on the inner
    ``BAND`` px of each object), softened a little."""
    from scipy import ndimage

    targets = pixel_targets(truth, BAND)
    prob = np.stack([targets == k for k in range(3)], axis=-1).astype(np.float32)
    prob = ndimage.uniform_filter(prob, size=(3, 3, 1))
    return prob / prob.sum(axis=-1, keepdims=True)


def _mean_iou(truth, labels):
    pairs = matched_pairs(match_objects(truth, labels), 0.5)
    assert len(pairs) == truth.max()  # every object found
    return float(np.mean([iou for _, _, iou in pairs]))


def test_growing_one_pixel_puts_the_outline_back_on_the_object():
    truth = _truth()
    prob = _probabilities(truth)
    plain, conf = regions_from_probabilities(prob, RegionParams(h_minima=0.2, smoothing=1.0))
    grown, conf_grown = regions_from_probabilities(prob, RegionParams(h_minima=0.2, smoothing=1.0, grow=1.0))
    assert plain.max() == grown.max() == 4
    # without growing the regions end inside their objects: the lone ones are smaller than the
    # truth (the touching pair's dividing line may sit a pixel off to either side)
    areas_true = np.bincount(truth.ravel())[1:]
    areas_plain = np.bincount(plain.ravel(), minlength=5)[1:]
    assert np.all(areas_plain[2:] < 0.9 * areas_true[2:]) and areas_plain.sum() < 0.92 * areas_true.sum()
    before, after = _mean_iou(truth, plain), _mean_iou(truth, grown)
    assert before < 0.9 and after > 0.95 and after > before + 0.05
    # growing only takes background: no pixel changes hands between objects, the touching
    # pair keeps its dividing line, and the confidence is the region's own
    assert np.array_equal(grown[plain > 0], plain[plain > 0])
    assert np.array_equal(conf, conf_grown)
    assert np.count_nonzero(grown) > np.count_nonzero(plain)


def test_grow_applies_at_the_first_pyramid_level_only():
    truth = _truth()
    prob = _probabilities(truth)
    params = RegionParams(h_minima=0.2, smoothing=1.0, grow=1.0, max_area=5000.0)
    assert params.at_level(1) is params
    assert params.at_level(2).grow == 0.0 and params.at_level(2).max_area == 20000.0

    def probabilities(image):  # the same probabilities at whatever size a level asks for
        from skimage.transform import resize
        return resize(prob, image.shape + (3,), order=1).astype(np.float32)

    grey = np.zeros(truth.shape, np.float32)
    first, _ = labels_at_levels(grey, 1.0, (1.0,), probabilities, params, (1.0, 99.8), truth.shape)
    plain, _ = labels_at_levels(grey, 1.0, (1.0,), probabilities,
                                RegionParams(h_minima=0.2, smoothing=1.0, max_area=5000.0), (1.0, 99.8), truth.shape)
    assert first.max() == plain.max() == 4 and np.count_nonzero(first) > np.count_nonzero(plain)
    # a level that is not the first: the image enlarged, the regions not grown
    finer, _ = labels_at_levels(grey, 0.5, (2.0,), probabilities, params, (1.0, 99.8), truth.shape)
    finer_plain, _ = labels_at_levels(grey, 0.5, (2.0,), probabilities,
                                      RegionParams(h_minima=0.2, smoothing=1.0, max_area=5000.0), (1.0, 99.8),
                                      truth.shape)
    assert finer.max() == 4 and np.array_equal(finer, finer_plain)


def test_grow_is_stored_described_and_checked():
    params = RegionParams(h_minima=0.2, grow=1.0)
    assert RegionParams.from_dict(params.as_dict()) == params
    old = {k: v for k, v in params.as_dict().items() if k != "grow"}  # model folders before 0.15
    assert RegionParams.from_dict(old).grow == 0.0
    assert "grown 1 px" in params.describe() and "grown" not in RegionParams().describe()
    with pytest.raises(ValueError, match="grow"):
        RegionParams(grow=-1.0)
    with pytest.raises(ValueError):
        RegionParams(grow=float("nan"))


def test_the_unet_choice_scores_growing_and_keeps_it_where_it_fits_better():
    """``choose_regions_and_views`` (what U-Net training keeps): on probabilities shaped like the
    U-Net's training targets, the kept setting grows 1 px; every setting is scored with and
    without growing, for each network and number of views."""
    from orgaseg_core.segmentation.unet.train import REGION_GRID, choose_regions_and_views

    truth = _truth()
    prob = _probabilities(truth).astype(np.float16)
    asked = []

    def probabilities(network, views):
        asked.append((network, views))
        return [prob]

    choice = choose_regions_and_views(probabilities, ["last", "lowest validation loss"], [truth], 0.0)
    n_settings = int(np.prod([len(v) for v in REGION_GRID.values()]))
    assert REGION_GRID["grow"] == (0.0, 1.0)
    assert asked == [("last", 1), ("last", 8), ("lowest validation loss", 1), ("lowest validation loss", 8)]
    assert len(choice.scores) == 4 * n_settings
    assert choice.params.grow == 1.0 and choice.network == "last"  # a tie between the networks: the first
    assert choice.views["views"] == 8  # the same probabilities: a tie keeps the views
    plain = {k: v for k, v in choice.scores.items() if "grown" not in k}
    assert len(plain) == 2 * n_settings and choice.scores[choice.key] > max(plain.values())
    assert choice.table.set_index("threshold").loc[0.5, "f1"] == 1.0
