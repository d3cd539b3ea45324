"""Resize and patch chosen from the object sizes, training budgets, brightfield augmentation."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from orgaseg_core.common.errors import OrgasegError
from orgaseg_core.segmentation.augment import Augmenter
from orgaseg_core.segmentation.sizing import (
    FIT_FRACTION,
    choose_patch,
    choose_resize,
    object_diameters,
    receptive_field,
)
from orgaseg_core.segmentation.train import PRESETS, parse_resize, resolve_budget


def _discs(shape, centres_radii):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint16)
    for i, (cy, cx, r) in enumerate(centres_radii, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    return labels


def test_object_diameters_are_equivalent_diameters():
    labels = _discs((200, 200), [(50, 50, 20), (150, 150, 10)])
    d = object_diameters([labels, np.zeros((5, 5), np.uint16)])
    assert d.shape == (2,)
    assert d == pytest.approx([40.0, 20.0], rel=0.03)
    assert object_diameters([]).size == 0


def test_choose_resize_shrinks_large_objects_into_the_field():
    field = 200
    big = np.full(100, 400.0)  # much wider than half the field
    choice = choose_resize(big, field)
    assert choice.factor == pytest.approx(FIT_FRACTION * field / 400, rel=0.02)
    assert 400 * choice.factor <= FIT_FRACTION * field * 1.02
    assert "wider" in choice.reason
    as_dict = choice.as_dict()
    assert as_dict["factor"] == choice.factor and as_dict["receptive_field_px"] == field


def test_choose_resize_keeps_or_enlarges():
    field = 200
    assert choose_resize(np.linspace(20, 60, 50), field).factor == 1.0
    small = choose_resize(np.full(30, 4.0), field)  # tiny objects, plenty of room
    assert small.factor == 2.0  # MIN_DIAMETER / 4, capped at MAX_ENLARGE
    assert small.n_too_small == 0
    # within 10 % of 1: not worth resampling
    near = choose_resize(np.full(10, FIT_FRACTION * field / 0.95), field)
    assert near.factor == 1.0
    # a 100x range of areas: the large ones decide, the small ones are counted
    mixed = np.concatenate([np.full(50, 6.0), np.full(50, 300.0)])
    choice = choose_resize(mixed, field)
    assert choice.factor < 1 and choice.n_too_small == 50
    with pytest.raises(ValueError):
        choose_resize(np.zeros(0), field)


def test_choose_patch():
    # 256 by default, fitting the smallest image, in multiples of the divisor
    assert choose_patch([(1000, 1000)], (16, 16), 40) == (256, 256)
    assert choose_patch([(190, 252), (400, 400)], (16, 16), 40) == (176, 240)
    # twice the large objects, at most 512
    assert choose_patch([(2000, 2000)], (16, 16), 180) == (368, 368)
    assert choose_patch([(2000, 2000)], (16, 16), 900) == (512, 512)


def test_receptive_field_grows_with_grid():
    assert receptive_field((1, 1)) < receptive_field((2, 2)) < receptive_field((4, 4))
    assert receptive_field((2, 2), unet_depth=2) < receptive_field((2, 2))


@pytest.mark.skipif(importlib.util.find_spec("stardist") is None, reason="stardist not installed")
def test_receptive_field_matches_stardist(tmp_path):
    """Our formula against StarDist's own measurement (gradient extent) of its network."""
    from orgaseg_core.segmentation.model import import_stardist, quiet_stardist

    models = import_stardist()
    for grid in ((1, 1), (2, 2)):
        with quiet_stardist():
            model = models.StarDist2D(models.Config2D(n_rays=8, grid=grid, n_channel_in=1),
                                      name=f"rf{grid[0]}", basedir=str(tmp_path))
            measured = model._compute_receptive_field()
        side = max(lo + hi + 1 for lo, hi in measured)
        assert side <= receptive_field(grid) <= 1.1 * side, (grid, side)


def test_resolve_budget_and_resize_values():
    quick = resolve_budget("quick", epochs=None, steps_per_epoch=None, early_stopping=None, max_minutes=None)
    assert quick == {**PRESETS["quick"], "preset": "quick"}
    real = resolve_budget("Real", epochs=5, steps_per_epoch=None, early_stopping=None, max_minutes=2)
    assert real["epochs"] == 5 and real["steps_per_epoch"] == PRESETS["real"]["steps_per_epoch"]
    assert real["early_stopping"] == PRESETS["real"]["early_stopping"] and real["max_minutes"] == 2.0
    with pytest.raises(OrgasegError, match="unknown preset 'fast'"):
        resolve_budget("fast", epochs=None, steps_per_epoch=None, early_stopping=None, max_minutes=None)
    with pytest.raises(OrgasegError, match="max_minutes"):
        resolve_budget("quick", epochs=None, steps_per_epoch=None, early_stopping=None, max_minutes=0)
    with pytest.raises(OrgasegError, match="epochs"):
        resolve_budget("quick", epochs=0, steps_per_epoch=None, early_stopping=None, max_minutes=None)
    assert parse_resize("auto") is None and parse_resize(None) is None
    assert parse_resize("0.5") == 0.5
    for bad in ("big", "0", -1):
        with pytest.raises(OrgasegError, match="resize"):
            parse_resize(bad)


def test_brightfield_augmenter_keeps_objects_on_their_pixels():
    labels = _discs((64, 64), [(20, 20, 8), (44, 40, 10)])
    image = np.where(labels > 0, 0.2, 0.8).astype(np.float32)
    runs = [Augmenter(seed=5)(image, labels) for _ in range(2)]
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])
    aug = Augmenter(seed=2)
    areas, blurred = set(), 0
    for _ in range(40):
        xa, ya = aug(image, labels)
        assert xa.shape == image.shape == ya.shape and xa.dtype == np.float32
        assert set(np.unique(ya)) <= {0, 1, 2}
        inside, outside = xa[ya > 0], xa[ya == 0]
        # labels moved with the pixels: the objects stay the darker part
        assert inside.mean() < outside.mean() - 0.1
        areas.add(int(np.count_nonzero(ya)))
        blurred += int(len(np.unique(np.round(xa, 3))) > 4)
    assert len(areas) > 5  # scale jitter changed the object sizes
    assert blurred > 5  # blur / noise made more than two grey levels


def test_plain_augmenter_is_affine():
    labels = _discs((32, 32), [(16, 16, 6)])
    x = labels.astype(np.float32)
    xa, ya = Augmenter(seed=1, brightfield=False)(x, labels)
    a, b = np.polyfit(ya.ravel().astype(float), xa.ravel().astype(float), 1)
    assert np.allclose(xa, a * ya + b, atol=1e-4)

