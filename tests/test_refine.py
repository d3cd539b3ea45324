"""Outline refinement: StarDist's star-convex objects grown into buds, ids and objects kept."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from orgaseg_core.segmentation.evaluation import segmentation_metrics
from orgaseg_core.segmentation.refine import (
    REFINEMENTS,
    check_refinement,
    edge_seeds,
    refine_by_edges,
    refine_by_probability,
    refine_labels,
)


def budded(shape=(160, 200)):
    """Two organoids: a disc with two buds, a plain disc; their true labels, a StarDist-like
    guess (rounder and smaller: the buds cut at 44 px from the centre, 3 px inside the true
    outline), and a brightfield-like image."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    body = (yy - 80) ** 2 + (xx - 70) ** 2 <= 30 ** 2
    bud1 = (yy - 80) ** 2 + (xx - 112) ** 2 <= 13 ** 2
    bud2 = (yy - 38) ** 2 + (xx - 70) ** 2 <= 11 ** 2
    other = (yy - 80) ** 2 + (xx - 165) ** 2 <= 18 ** 2
    truth = np.zeros(shape, np.uint16)
    truth[body | bud1 | bud2] = 1
    truth[other] = 2
    guess = np.zeros(shape, np.uint16)
    near = (yy - 80) ** 2 + (xx - 70) ** 2 <= 44 ** 2
    guess[ndimage.binary_erosion((truth == 1) & near, iterations=3)] = 1
    guess[ndimage.binary_erosion(truth == 2, iterations=3)] = 2
    rng = np.random.default_rng(0)
    # brightfield-like: a dark rim just inside the outline, lighter inside, noisy background
    rim = (truth > 0) & ~ndimage.binary_erosion(truth > 0, iterations=3)
    grey = np.where(truth > 0, 0.55, 0.85) - 0.35 * rim + rng.normal(0, 0.03, shape)
    return truth, guess, grey.astype(np.float32)


def iou(a, b):
    return np.count_nonzero(a & b) / np.count_nonzero(a | b)


def test_edges_refinement_takes_in_the_buds():
    truth, guess, grey = budded()
    refined = refine_by_edges(guess, grey)
    assert refined.dtype == guess.dtype and refined.shape == guess.shape
    assert set(np.unique(refined)) == {0, 1, 2}  # same ids, none lost
    before = iou(guess == 1, truth == 1)
    after = iou(refined == 1, truth == 1)
    assert before < 0.75 and after > 0.9, (before, after)
    assert iou(refined == 2, truth == 2) > 0.9
    # the metrics say the same: mean matched IoU goes up
    m_before = segmentation_metrics([truth], [guess], thresholds=(0.5,)).iloc[0]
    m_after = segmentation_metrics([truth], [refined], thresholds=(0.5,)).iloc[0]
    assert m_after["mean_matched_iou"] > m_before["mean_matched_iou"] + 0.15


def test_probability_refinement_follows_the_map():
    truth, guess, _ = budded()
    # a StarDist-like probability on a 2x2 grid: normalised distance inside the true objects
    dist = ndimage.distance_transform_edt(truth > 0)
    prob = np.zeros_like(dist)
    for k in (1, 2):
        inside = truth == k
        prob[inside] = dist[inside] / dist[inside].max()
    small = prob[::2, ::2]
    refined = refine_by_probability(guess, small, threshold=0.05)
    assert set(np.unique(refined)) == {0, 1, 2}
    assert iou(refined == 1, truth == 1) > 0.85 > iou(guess == 1, truth == 1)
    # nothing is found where the map is empty: an object there keeps its own pixels
    lonely = guess.copy()
    lonely[5:12, 5:12] = 3
    kept = refine_by_probability(lonely, small, threshold=0.05)
    assert np.count_nonzero(kept == 3) == 49


def test_refine_labels_dispatch_and_errors():
    truth, guess, grey = budded()
    assert refine_labels("none", guess) is guess
    assert np.array_equal(refine_labels("edges", guess, grey=grey), refine_by_edges(guess, grey))
    with pytest.raises(ValueError, match="probability map"):
        refine_labels("probability", guess)
    with pytest.raises(ValueError, match="grey image"):
        refine_labels("edges", guess)
    with pytest.raises(ValueError, match="none, probability, edges"):
        check_refinement("snake")
    assert check_refinement(" Edges ") == "edges" and REFINEMENTS[0] == "none"
    empty = np.zeros((20, 20), np.uint16)
    assert not refine_by_edges(empty, np.zeros((20, 20))).any()


def test_edges_refinement_is_local():
    """Objects far apart do not influence each other and the background stays background."""
    truth, guess, grey = budded()
    refined = refine_by_edges(guess, grey)
    far = ndimage.distance_transform_edt(guess == 0) > 40
    assert not refined[far].any()


@pytest.mark.parametrize("smooth", [1.0, 0.0, 2.5])
def test_edges_flood_of_the_band_equals_a_flood_of_the_whole_image(smooth):
    """The watershed runs only on the band between the seeds, one connected part at a time in
    its own box with the edge map of that box (the speed of large images): the outlines are
    those of a watershed over every pixel of the whole image's edge map from the same seeds."""
    truth, guess, grey = budded()
    rng = np.random.default_rng(4)
    # more objects, some touching, on a larger noisy image
    tiled_guess = np.block([[guess, np.where(guess > 0, guess + 2, 0)], [np.where(guess > 0, guess + 4, 0), np.where(guess > 0, guess + 6, 0)[:, ::-1]]])
    tiled_grey = np.block([[grey, grey], [grey, grey[:, ::-1]]]) + rng.normal(0, 0.05, (320, 400)).astype(np.float32)
    tiled_guess = tiled_guess.astype(np.uint16)
    refined = refine_by_edges(tiled_guess, tiled_grey, smooth=smooth)
    seeds = edge_seeds(tiled_guess)
    assert set(np.unique(seeds)) == set(range(int(tiled_guess.max()) + 2))
    np.testing.assert_array_equal(refined, _whole_image_flood(tiled_guess, tiled_grey, smooth, seeds))


def _whole_image_seeds(labels, core_fraction=0.4, band_fraction=0.75, min_band=3.0):
    """edge_seeds as one distance transform over the whole image gives them (the reference)."""
    from skimage.segmentation import find_boundaries

    n = int(labels.max())
    radius = np.sqrt(np.bincount(labels.ravel(), minlength=n + 1) / np.pi)
    foreground = labels > 0
    depth = ndimage.distance_transform_edt(foreground & ~find_boundaries(labels, mode="inner"))
    deepest = np.zeros(n + 1)
    np.maximum.at(deepest, labels[foreground], depth[foreground])
    core = foreground & (depth >= np.maximum(1.0, core_fraction * deepest[labels]))
    outside, (ri, ci) = ndimage.distance_transform_edt(~foreground, return_indices=True)
    markers = np.where(core, labels, 0).astype(np.int64)
    markers[~foreground & (outside > np.maximum(min_band, band_fraction * radius[labels[ri, ci]]))] = n + 1
    return markers


def _whole_image_flood(labels, grey, smooth, seeds=None):
    """The outlines of one watershed over every pixel of the whole image's edge map (Gaussian
    of ``smooth`` px, Sobel) from ``seeds`` (None: :func:`_whole_image_seeds`): the reference."""
    from skimage.filters import sobel
    from skimage.segmentation import watershed

    seeds = _whole_image_seeds(labels) if seeds is None else seeds
    whole = watershed(sobel(ndimage.gaussian_filter(grey, smooth) if smooth else grey), markers=seeds)
    whole[whole == labels.max() + 1] = 0
    return whole


def random_blobs(seed, shape=(240, 300)):
    """25 random discs and crescents, later ones covering earlier ones (touching objects with
    shared edges, concave objects, objects cut by the image's border, two ids with no pixels
    left), and a noisy grey image with darker objects."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint16)
    for k in range(1, 26):
        cy, cx = rng.integers(-10, shape[0] + 10), rng.integers(-10, shape[1] + 10)
        r = rng.uniform(3, 30)
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
        if k % 3 == 0:  # a crescent: concave, its depth not at its centre
            blob &= (yy - cy - r / 2) ** 2 + (xx - cx) ** 2 > (r / 1.5) ** 2
        labels[blob] = k
    labels[np.isin(labels, [4, 11])] = 0
    grey = (0.8 - 0.3 * (labels > 0) + rng.normal(0, 0.1, shape)).astype(np.float32)
    return labels, grey


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_edge_seeds_in_object_boxes_equal_a_transform_of_the_whole_image(seed):
    """Each object's depth is taken in its own box (the speed of large images): the seeds are
    those of one distance transform over the whole image."""
    labels, _ = random_blobs(seed)
    np.testing.assert_array_equal(edge_seeds(labels), _whole_image_seeds(labels))
    np.testing.assert_array_equal(edge_seeds(labels, core_fraction=0.7, band_fraction=0.3, min_band=5.0),
                                  _whole_image_seeds(labels, 0.7, 0.3, 5.0))


@pytest.mark.parametrize("seed", [3, 4, 5])
@pytest.mark.parametrize("smooth", [1.0, 0.0, 2.5])
def test_edges_flood_in_parts_equals_a_flood_of_the_whole_image(seed, smooth):
    """The same as the budded image's test on noisy random objects, where an edge map cut at a
    part's box without the filters' margin would move outlines. These seeds' bands are flooded
    part by part (other seeds' parts nest and take the whole-band path, which checks nothing of
    the parts' boxes)."""
    from orgaseg_core.segmentation.refine import _pieces

    labels, grey = random_blobs(seed)
    parts, n_parts = ndimage.label(ndimage.binary_dilation(edge_seeds(labels) == 0))
    assert n_parts > 1 and len(_pieces(parts)) == n_parts
    np.testing.assert_array_equal(refine_by_edges(labels, grey, smooth=smooth),
                                  _whole_image_flood(labels, grey, smooth))


@pytest.mark.parametrize("smooth", [1.0, 0.0])
def test_nested_boxes_are_done_at_once_with_the_same_outlines(smooth):
    """A ring-shaped organoid whose box holds the others (the boxes together larger than the
    image): its depth and the flood are taken over the whole image at once, with the outlines
    and seeds of the whole-image computation."""
    from orgaseg_core.segmentation.refine import _pieces

    labels, grey = random_blobs(5)
    ring = np.zeros(labels.shape, bool)
    ring[4:-4, 4:-4] = True
    ring[14:-14, 14:-14] = False
    labels[ring] = labels.max() + 1
    assert _pieces(labels) == [(None, (slice(0, 240), slice(0, 300)))]
    np.testing.assert_array_equal(edge_seeds(labels), _whole_image_seeds(labels))
    np.testing.assert_array_equal(refine_by_edges(labels, grey, smooth=smooth),
                                  _whole_image_flood(labels, grey, smooth))
