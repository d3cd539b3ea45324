"""The image pyramid: organoids of very different sizes found each at the scale that suits it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orgaseg_core.segmentation.predict import predict_pyramid
from orgaseg_core.segmentation.pyramid import (
    LevelObjects,
    choose_pyramid,
    level_bands,
    merge_levels,
    parse_pyramid,
)
from orgaseg_core.segmentation.sizing import equivalent_diameters


def test_parse_pyramid():
    assert parse_pyramid("auto") is None and parse_pyramid(None) is None
    assert parse_pyramid("none") == (1.0,) and parse_pyramid("1") == (1.0,)
    assert parse_pyramid("1,2,4") == (1.0, 2.0, 4.0) and parse_pyramid([1, 3]) == (1.0, 3.0)
    for bad in ("2,4", "1,1", "1,4,2", "1,x", "1,2,4,8,16,32", "1,nan"):
        with pytest.raises(ValueError, match="pyramid"):
            parse_pyramid(bad)


def test_choose_pyramid_from_the_small_objects():
    small = np.r_[np.full(20, 10.0), np.full(80, 200.0)]  # 5th percentile 10 px
    # at resize 0.3 the small ones are 3 px: 2x and 4x (12 px), capped at 3 levels
    choice = choose_pyramid(small, 0.3)
    assert choice.levels == (1.0, 2.0, 4.0) and "under 16 px" in choice.reason
    assert choice.as_dict()["level_diameters_px"] == {"min": 8.0, "max_fine": 32.0}
    # at resize 1 they are 10 px: one more level makes 20 px, but 2x the data's resolution
    # is the limit, so 1, 2 only
    assert choose_pyramid(small, 1.0).levels == (1.0, 2.0)
    assert choose_pyramid(small, 1.5).levels == (1.0,)  # 3x would exceed 2x the data
    assert "adds no detail" in choose_pyramid(small, 1.5).reason
    assert choose_pyramid(np.full(50, 40.0), 0.5).levels == (1.0,)  # 20 px: one level
    with pytest.raises(ValueError):
        choose_pyramid(np.zeros(0), 1.0)


def test_level_bands_cover_every_size():
    bands = level_bands(3, 8.0, 32.0)
    assert bands == [(8.0, math.inf), (8.0, 32.0), (0.0, 32.0)]
    # an object D px across at the first level is D*2 at the second, D*4 at the third: every
    # size counts at one level at least (where two levels find it, the coarser one's copy wins)
    for d in (0.5, 1.0, 3.9, 4.0, 7.9, 8.0, 15.9, 16.0, 300.0):
        accepted = [lo <= d * m < hi for m, (lo, hi) in zip((1, 2, 4), bands)]
        assert any(accepted), d
    assert [lo <= 300 * m < hi for m, (lo, hi) in zip((1, 2, 4), bands)] == [True, False, False]
    assert [lo <= 2 * m < hi for m, (lo, hi) in zip((1, 2, 4), bands)] == [False, False, True]


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_merge_keeps_each_object_once_from_its_level():
    shape = (200, 200)
    big, tiny = _disc(shape, 80, 80, 40), _disc(shape, 170, 170, 5)
    # level 1x (its own resolution is half the output's): the big one 40 px across, the tiny one
    # 5 px (under 8: left to the finer level)
    coarse = np.zeros(shape, np.uint16)
    coarse[big], coarse[tiny] = 1, 2
    coarse_objects = LevelObjects(coarse, np.array([0.9, 0.6]), np.array([40.0, 5.0]))
    # level 2x: the tiny one 10 px; the big one cut into two fragments of 40 px each
    fine = np.zeros(shape, np.uint16)
    fine[big & (np.mgrid[:200, :200][1] < 80)] = 1
    fine[big & (np.mgrid[:200, :200][1] >= 80)] = 2
    fine[tiny] = 3
    fine_objects = LevelObjects(fine, np.array([0.95, 0.95, 0.7]), np.array([40.0, 40.0, 10.0]))
    labels, origin = merge_levels([coarse_objects, fine_objects], (1.0, 2.0))
    # the big one from 1x, the tiny one from 2x; the fragments (40 px at 2x) do not count
    assert origin == [(0, 1), (1, 3)]
    assert labels.dtype == np.uint32 and labels.max() == 2
    assert np.array_equal(labels == 1, big) and np.array_equal(labels == 2, tiny)


def test_merge_drops_duplicates_and_keeps_the_more_probable():
    shape = (100, 100)
    a = np.zeros(shape, np.uint16)
    a[_disc(shape, 50, 50, 12)] = 1
    b = np.zeros(shape, np.uint16)
    b[_disc(shape, 51, 50, 12)] = 1  # the same organoid, a band edge apart
    b[_disc(shape, 15, 15, 6)] = 2
    found = [LevelObjects(a, np.array([0.7]), np.array([17.0])),
             LevelObjects(b, np.array([0.8, 0.5]), np.array([30.0, 14.0]))]
    labels, origin = merge_levels(found, (1.0, 2.0))
    assert origin == [(0, 1), (1, 2)]  # the 2x copy lost most of its pixels to the 1x one: dropped
    assert labels.max() == 2 and np.array_equal(labels == 1, a == 1) and np.array_equal(labels == 2, b == 2)
    # a small structure found at 2x inside a large organoid found at 1x is not a second organoid,
    # even when the network is surer of it; a small organoid touching the large one keeps its
    # pixels
    big = np.zeros(shape, np.uint16)
    big[_disc(shape, 50, 50, 30)] = 1
    inner = np.zeros(shape, np.uint16)
    inner[_disc(shape, 50, 50, 8)] = 1
    inner[_disc(shape, 50, 86, 8)] = 2  # overlaps the large one by a sliver
    found = [LevelObjects(big, np.array([0.5]), np.array([60.0])),
             LevelObjects(inner, np.array([0.99, 0.9]), np.array([16.0, 16.0]))]
    labels, origin = merge_levels(found, (1.0, 2.0))
    assert origin == [(0, 1), (1, 2)]
    assert np.array_equal(labels == 1, big == 1)
    assert np.array_equal(labels == 2, (inner == 2) & (big == 0))
    with pytest.raises(ValueError):
        merge_levels(found[:1], (1.0, 2.0))


def test_equivalent_diameters():
    labels = np.zeros((50, 50), np.uint16)
    labels[:10, :10] = 1
    labels[20:25, 20:25] = 3
    d = equivalent_diameters(labels, 3)
    assert d == pytest.approx([2 * math.sqrt(100 / math.pi), 0.0, 2 * math.sqrt(25 / math.pi)])


class _ThresholdStarDist:
    """Stands in for StarDist2D: every dark connected region of the (normalised) input is an
    object, reported with a circular polygon of its equivalent radius. Finds objects of any
    size, so only the pyramid's rules decide which level keeps which."""

    def __init__(self):
        self.shapes = []

    def _labels(self, x):
        from skimage.measure import label

        return label(x < 0.5).astype(np.int32)

    def predict_instances(self, x, n_tiles=None, prob_thresh=None, nms_thresh=None,
                          show_tile_progress=False):
        from skimage.measure import regionprops

        self.shapes.append(x.shape)
        labels = self._labels(x)
        coords, probs = [], []
        angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        for region in regionprops(labels):
            cy, cx = region.centroid
            r = region.equivalent_diameter_area / 2
            coords.append(np.stack([cy + r * np.sin(angles), cx + r * np.cos(angles)]))
            probs.append(0.9)
        return labels, {"coord": np.array(coords).reshape(-1, 2, 16), "prob": np.array(probs)}

    def predict(self, x, n_tiles=None, show_tile_progress=False):
        """(probability map, distances) like StarDist2D.predict (grid 1)."""
        return np.where(self._labels(x) > 0, 0.9, 0.0).astype(np.float32), None


def test_predict_pyramid_finds_large_and_small_organoids_once():
    shape = (400, 400)
    grey = np.full(shape, 200.0, np.float32)
    truth = np.zeros(shape, np.uint16)
    objects = [(150, 150, 90), (330, 60, 6), (60, 340, 5), (340, 330, 7)]
    for k, (cy, cx, r) in enumerate(objects, start=1):
        disc = _disc(shape, cy, cx, r)
        grey[disc], truth[disc] = 40.0, k
    model = _ThresholdStarDist()
    # model scale 0.25: the large organoid is 45 px there, the small ones 2.5-3.5 px
    single = predict_pyramid(model, grey, 0.25, (1.0,), (1.0, 99.8), shape)
    pyramid = predict_pyramid(model, grey, 0.25, (1.0, 2.0, 4.0), (1.0, 99.8), shape, want_prob=True)
    assert model.shapes[0] == (100, 100) and model.shapes[-1] == (400, 400)
    assert pyramid.labels.shape == shape and pyramid.prob.shape == shape
    assert pyramid.labels.max() == 4 and len(pyramid.polygons) == 4 and len(pyramid.probabilities) == 4
    from orgaseg_core.segmentation.evaluation import image_metrics

    m = image_metrics(truth, pyramid.labels, thresholds=[0.5]).iloc[0]
    assert m["tp"] == 4 and m["fp"] == 0 and m["mean_matched_iou"] > 0.8
    # one level keeps the tiny organoids at 2-3 px, where a real network would not see them;
    # the pyramid takes them from 4x, where they are 20-28 px across
    assert len(single.polygons) == 4
    ys = sorted(float(p[:, 1].mean()) for p in pyramid.polygons)
    assert ys == pytest.approx(sorted(float(cy) + 0.5 for cy, _, _ in objects), abs=2.0)
