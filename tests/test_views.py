"""Test-time views (:mod:`orgaseg_core.segmentation.views`): every view is turned back onto the
image, the mean is taken over the right views, the choice keeps the most views within the
tolerance, and what users give is checked. Pure numpy: no framework."""

from __future__ import annotations

import numpy as np
import pytest

from orgaseg_core.segmentation.views import (
    VIEW_COUNTS,
    VIEWS_TOLERANCE,
    choose_views,
    mean_over_views,
    parse_views,
    stored_views,
    with_views,
)


def pixelwise(x: np.ndarray) -> np.ndarray:
    """(Y, X, 3) probabilities that depend on each pixel alone: the same in every view."""
    return np.stack([1 - x, x * 0.6, x * 0.4], axis=-1).astype(np.float32)


def shifted_right(x: np.ndarray) -> np.ndarray:
    """A 'network' with a bias: its output is the image moved 2 columns right (cyclic)."""
    return pixelwise(np.roll(x, 2, axis=1))


@pytest.fixture
def image():
    return np.random.default_rng(3).random((12, 20)).astype(np.float32)  # not square


@pytest.mark.parametrize("views", VIEW_COUNTS)
def test_every_view_is_turned_back_onto_the_image(image, views):
    # a prediction that does not depend on orientation comes back unchanged from any view
    mean = mean_over_views(pixelwise, image, views)
    assert mean.shape == (12, 20, 3) and mean.dtype == np.float32
    np.testing.assert_allclose(mean, pixelwise(image), atol=1e-6)


def test_the_views_average_a_bias_of_direction_away(image):
    right, left = pixelwise(np.roll(image, 2, axis=1)), pixelwise(np.roll(image, -2, axis=1))
    down, up = pixelwise(np.roll(image, 2, axis=0)), pixelwise(np.roll(image, -2, axis=0))
    np.testing.assert_allclose(mean_over_views(shifted_right, image, 1), right)
    # flipped left-right, the shift comes back as a shift to the left
    np.testing.assert_allclose(mean_over_views(shifted_right, image, 2), (right + left) / 2, atol=1e-6)
    # up-down flips do not change a sideways shift
    np.testing.assert_allclose(mean_over_views(shifted_right, image, 4), (right + left) / 2, atol=1e-6)
    # transposed, it comes back as a shift up or down
    np.testing.assert_allclose(mean_over_views(shifted_right, image, 8), (right + left + down + up) / 4,
                               atol=1e-6)
    assert with_views(shifted_right, 1) is shifted_right


@pytest.mark.parametrize("given, expected", [(None, None), ("auto", None), (" AUTO ", None), ("", None),
                                             ("1", 1), (2, 2), ("4", 4), (8, 8), (8.0, 8)])
def test_views_as_given(given, expected):
    assert parse_views(given) == expected


@pytest.mark.parametrize("given", ["3", 16, 0, -8, "eight", 2.5, True])
def test_other_views_are_refused_naming_the_choices(given):
    with pytest.raises(ValueError, match=r"test-time views must be auto or one of 1, 2, 4, 8, got"):
        parse_views(given)
    with pytest.raises(ValueError):
        mean_over_views(pixelwise, np.zeros((4, 4)), 3)


def test_the_most_views_within_the_tolerance_are_kept():
    tie = choose_views({1: 0.300, 8: 0.300 - VIEWS_TOLERANCE / 2}.__getitem__)
    assert tie["views"] == 8 and tie["chosen"] == "auto" and tie["scores"] == {"1": 0.3, "8": 0.295}
    assert "within 0.01 of the best" in tie["reason"]
    better = choose_views({1: 0.30, 8: 0.36}.__getitem__)
    assert better["views"] == 8
    loss = choose_views({1: 0.30, 8: 0.28}.__getitem__)
    assert loss["views"] == 1
    wider = choose_views({1: 0.30, 8: 0.28}.__getitem__, tolerance=0.05)
    assert wider["views"] == 8


def test_given_views_are_kept_and_scored_alone():
    asked = []
    given = choose_views(lambda v: asked.append(v) or 0.25, given=2)
    assert given == {"views": 2, "reason": "given", "scores": {"2": 0.25}, "chosen": "given"}
    assert asked == [2]


def test_models_without_a_choice_use_one_view():
    assert stored_views({}) == 1  # models before 0.10
    assert stored_views({"test_time_views": {"views": 8}}) == 8
    assert stored_views({"test_time_views": {"views": 5}}) == 1
