"""Tests of the preprocess step: grey, vignette, background, tiles, rescaling, the file step."""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from orgaseg_core.common.errors import OrgasegError, OutputError
from orgaseg_core.common.illumination import flatten_background, remove_vignette, vignette_mask
from orgaseg_core.common.images import to_grey
from orgaseg_core.common.labels import rescale_labels
from orgaseg_core.common.resample import area_matrix, linear_matrix, rescale_image
from orgaseg_core.data.preprocess import preprocess, split_tiles, tile_bounds, tile_name

# --------------------------------------------------------------------------- to_grey

def test_to_grey_rgb_uint8_exact_values():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
                    [[255, 255, 255], [10, 20, 30], [0, 0, 0]]], dtype=np.uint8)
    grey = to_grey(rgb)
    assert grey.dtype == np.uint8 and grey.shape == (2, 3)
    # 0.2125*255 = 54.19, 0.7154*255 = 182.43, 0.0721*255 = 18.39, 10*.2125+20*.7154+30*.0721 = 18.59
    np.testing.assert_array_equal(grey, [[54, 182, 18], [255, 19, 0]])


def test_to_grey_rgba_drops_alpha_and_uint16_keeps_range():
    rgba = np.zeros((1, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (100, 100, 100, 0)    # fully transparent: alpha must not matter
    rgba[0, 1] = (0, 200, 0, 255)
    np.testing.assert_array_equal(to_grey(rgba), [[100, 143]])  # 0.7154*200 = 143.08

    rgb16 = np.array([[[65535, 65535, 65535], [1000, 2000, 3000]]], dtype=np.uint16)
    grey16 = to_grey(rgb16)
    assert grey16.dtype == np.uint16
    # 1000*.2125 + 2000*.7154 + 3000*.0721 = 212.5 + 1430.8 + 216.3 = 1859.6
    np.testing.assert_array_equal(grey16, [[65535, 1860]])


def test_to_grey_grey_alpha_grey_and_float():
    ga = np.dstack([np.full((2, 2), 7, np.uint8), np.full((2, 2), 255, np.uint8)])
    np.testing.assert_array_equal(to_grey(ga), np.full((2, 2), 7))
    grey = np.arange(6, dtype=np.uint16).reshape(2, 3) * 1000
    out = to_grey(grey)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, grey)
    rgb_f = np.ones((2, 2, 3), dtype=np.float64) * [1.0, 0.0, 0.0]
    out_f = to_grey(rgb_f)
    assert out_f.dtype == np.float32
    np.testing.assert_allclose(out_f, 0.2125, rtol=1e-6)


# --------------------------------------------------------------------------- vignette

def _vignetted(h=120, w=160, level=200, seed=0):
    """Bright field with a black disc-shaped vignette around it and a dark organoid inside."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    image = rng.normal(level, 3, (h, w))
    outside = np.hypot(yy - h / 2, xx - w / 2) > 0.45 * w
    image[outside] = rng.normal(8, 2, outside.sum())
    organoid = np.hypot(yy - 60, xx - 80) < 12
    image[organoid] = 40  # far darker than the vignette threshold, but not touching the border
    return np.clip(image, 0, 255).astype(np.uint8), outside, organoid


def test_remove_vignette_keeps_interior_dark_object():
    image, outside, organoid = _vignetted()
    cleaned, mask = remove_vignette(image, return_mask=True)
    assert cleaned.dtype == np.uint8 and cleaned.shape == image.shape
    # Most of the vignette is found (the smoothing may shift its edge by a pixel or two).
    assert mask[outside].mean() > 0.95
    assert not mask[organoid].any()
    # The vignette is filled with the background median; the organoid keeps its pixels.
    assert abs(int(np.median(cleaned[outside])) - 200) <= 3
    np.testing.assert_array_equal(cleaned[organoid], image[organoid])
    np.testing.assert_array_equal(cleaned[~mask], image[~mask])
    # The input array is not modified in place.
    assert image[outside].mean() < 20


def test_vignette_mask_empty_without_vignette():
    image, _, organoid = _vignetted()
    image[image < 30] = 200  # remove the vignette, keep the organoid (40)
    mask = vignette_mask(image)
    assert not mask.any()
    np.testing.assert_array_equal(remove_vignette(image), image)


# --------------------------------------------------------------------------- background

def test_flatten_background_reduces_gradient_keeps_objects_dark():
    h, w = 200, 300
    yy, xx = np.mgrid[:h, :w]
    illumination = 120 + 100 * xx / w               # 120 on the left, 220 on the right
    objects = np.zeros((h, w), bool)
    for cy, cx in [(50, 50), (150, 150), (60, 250), (140, 260)]:
        objects |= np.hypot(yy - cy, xx - cx) < 12
    image = illumination * np.where(objects, 0.5, 1.0)
    image = np.clip(image + np.random.default_rng(1).normal(0, 2, (h, w)), 0, 255).astype(np.uint8)
    flat = flatten_background(image)
    assert flat.dtype == np.uint8 and flat.shape == image.shape
    bg = ~objects
    assert flat[bg].std() < 0.3 * image[bg].std()
    # The level stays that of the original background and objects stay darker than their
    # surroundings (at least 25 % darker than the background everywhere).
    assert abs(np.median(flat[bg]) - np.median(image[bg])) < 15
    assert flat[objects].mean() < 0.75 * flat[bg].mean()
    for cy, cx in [(50, 50), (150, 150), (60, 250), (140, 260)]:
        assert flat[cy, cx] < 0.75 * np.median(flat[bg])


def test_flatten_background_float_keeps_dtype():
    image = np.linspace(0.5, 1.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    flat = flatten_background(image)
    assert flat.dtype == np.float32
    assert flat.std() < image.std()


# --------------------------------------------------------------------------- tiles

def test_tiles_2x2_concatenate_to_input():
    image = np.arange(100 * 120).reshape(100, 120)
    parts = split_tiles(image, (2, 2))
    assert [p.shape for _, p in parts] == [(50, 60)] * 4
    assert [(t.row, t.col) for t, _ in parts] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    rebuilt = np.block([[parts[0][1], parts[1][1]], [parts[2][1], parts[3][1]]])
    np.testing.assert_array_equal(rebuilt, image)
    assert tile_name("img", parts[3][0], (2, 2)) == "img_r1c1"
    assert tile_name("img", parts[0][0], (1, 1)) == "img"


def test_tile_bounds_uneven_and_too_many():
    bounds = tile_bounds((101, 10), (2, 3))
    assert [(t.y0, t.y1) for t in bounds if t.col == 0] == [(0, 50), (50, 101)]
    assert [(t.x0, t.x1) for t in bounds if t.row == 0] == [(0, 3), (3, 6), (6, 10)]
    with pytest.raises(OrgasegError, match="cannot cut"):
        tile_bounds((4, 4), (5, 1))


# --------------------------------------------------------------------------- rescale images

def test_area_downscale_half_is_block_mean():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60)).astype(np.uint8)
    blocks = image.reshape(20, 2, 30, 2).astype(np.float64).mean(axis=(1, 3))
    small = rescale_image(image, 0.5)
    assert small.dtype == np.uint8 and small.shape == (20, 30)
    np.testing.assert_array_equal(small, np.rint(blocks))
    as_float = rescale_image(image.astype(np.float32), 0.5)
    np.testing.assert_allclose(as_float, blocks, rtol=0, atol=1e-5)


def test_area_weights_non_integer_factor_preserve_mean():
    weights = area_matrix(10, 4)  # each output pixel covers 2.5 input pixels
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    np.testing.assert_allclose(weights.toarray()[0], [0.4, 0.4, 0.2, 0, 0, 0, 0, 0, 0, 0])
    rng = np.random.default_rng(3)
    image = rng.random((30, 50))
    small = rescale_image(image, 0.3)
    assert small.shape == (9, 15)
    assert small.mean() == pytest.approx(image.mean(), rel=1e-12)


def test_upscale_is_linear_and_keeps_dtype():
    np.testing.assert_allclose(linear_matrix(2, 4).toarray(),
                               [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    image = np.array([[0, 100], [100, 200]], dtype=np.uint16)
    big = rescale_image(image, 2)
    assert big.dtype == np.uint16 and big.shape == (4, 4)
    np.testing.assert_array_equal(big[0], [0, 25, 75, 100])
    np.testing.assert_array_equal(rescale_image(image, 1.0), image)


# --------------------------------------------------------------------------- rescale labels

def test_rescale_labels_moderate_scale_keeps_all_objects():
    labels = np.zeros((60, 80), np.uint32)
    labels[2:10, 2:10] = 7
    labels[20:30, 40:52] = 300
    labels[40:56, 10:20] = 70000           # ids need not be small or consecutive
    small, report = rescale_labels(labels, 0.5)
    assert small.shape == (30, 40) and small.dtype == np.uint16
    assert report.vanished == [] and report.n_before == report.n_after == 3
    assert sorted(np.unique(small)) == [0, 1, 2, 3]           # consecutive, by original id order
    assert report.id_map == {7: 1, 300: 2, 70000: 3}
    assert (small == 2).sum() == 5 * 6


def test_rescale_labels_reports_vanished_object():
    labels = np.zeros((40, 40), np.uint16)
    labels[4:20, 4:20] = 5
    labels[30, 33] = 9          # one pixel, not under any output pixel centre at 0.25
    labels[24:40, 24:30] = 12
    small, report = rescale_labels(labels, 0.25)
    assert small.shape == (10, 10)
    assert report.vanished == [9]
    assert report.n_before == 3 and report.n_after == 2
    assert sorted(np.unique(small)) == [0, 1, 2]


def test_rescale_labels_split_object_keeps_one_id():
    labels = np.zeros((20, 20), np.uint16)
    labels[2:6, 2:18] = 4
    labels[2:18, 8:10] = 4   # thin bridge: vanishes at 0.25, leaving two separate parts
    labels[12:18, 2:6] = 4
    small, report = rescale_labels(labels, 0.25)
    assert set(np.unique(small)) == {0, 1}
    assert report.vanished == []


# --------------------------------------------------------------------------- the step

def _write_pair(images, masks, stem, image, labels, image_suffix=".tif"):
    if image_suffix == ".tif":
        tifffile.imwrite(images / f"{stem}.tif", image)
    else:
        Image.fromarray(image).save(images / f"{stem}{image_suffix}")
    if labels is not None:
        tifffile.imwrite(masks / f"{stem}.tif", labels)


@pytest.fixture
def pair_folders(tmp_path):
    images, masks = tmp_path / "in" / "images", tmp_path / "in" / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    rng = np.random.default_rng(0)
    rgb = rng.integers(100, 200, (40, 60, 3)).astype(np.uint8)
    labels = np.zeros((40, 60), np.uint16)
    labels[2:18, 2:20] = 3
    labels[22:38, 32:58] = 8
    labels[25, 6] = 11          # one pixel: vanishes at 0.5 (even columns are not sampled)
    _write_pair(images, masks, "rgb", rgb, labels)
    grey16 = rng.integers(1000, 60000, (40, 60)).astype(np.uint16)
    _write_pair(images, masks, "deep", grey16, labels)
    _write_pair(images, masks, "png", rgb, labels, image_suffix=".png")
    _write_pair(images, masks, "nomask", rgb, None)
    tifffile.imwrite(masks / "orphan.tif", labels)
    return images, masks, rgb, grey16, labels


def test_preprocess_pairs_tiles_and_table(tmp_path, pair_folders, unchanged):
    images, masks, rgb, grey16, labels = pair_folders
    check_images, check_masks = unchanged(images), unchanged(masks)
    out = tmp_path / "out"
    result = preprocess(images, out, masks=masks, scale=0.5, tiles=(2, 2))
    check_images()
    check_masks()

    names = sorted(f"{s}_r{i}c{j}.tif" for s in ("deep", "png", "rgb") for i in (0, 1) for j in (0, 1))
    assert sorted(p.name for p in (out / "images").iterdir()) == names
    assert sorted(p.name for p in (out / "masks").iterdir()) == names
    assert result.n_sources == 3 and result.n_written == 12
    assert any("nomask.tif" in u for u in result.unmatched)
    assert any("orphan.tif" in u for u in result.unmatched)
    assert "nomask.tif" in result.summary()

    # RGB -> grey uint8, 16-bit grey stays 16-bit; tile (0, 1) of deep = right top quadrant.
    tile = tifffile.imread(out / "images" / "rgb_r0c0.tif")
    assert tile.dtype == np.uint8 and tile.shape == (10, 15)
    expected = rescale_image(to_grey(rgb)[:20, :30], 0.5)
    np.testing.assert_array_equal(tile, expected)
    deep = tifffile.imread(out / "images" / "deep_r0c1.tif")
    assert deep.dtype == np.uint16
    np.testing.assert_array_equal(deep, rescale_image(grey16[:20, 30:], 0.5))
    # The PNG made of the same pixels gives the same tiles as the TIFF.
    np.testing.assert_array_equal(tifffile.imread(out / "images" / "png_r0c0.tif"), tile)

    mask = tifffile.imread(out / "masks" / "rgb_r0c0.tif")
    assert mask.dtype == np.uint16 and mask.shape == (10, 15)
    assert sorted(np.unique(mask)) == [0, 1]            # object 3, renumbered to 1

    table = pd.read_csv(out / "tiles.csv", keep_default_na=False)
    assert list(table.columns) == ["file", "source", "group", "tile_row", "tile_col", "y0", "x0",
                                   "y1", "x1", "scale", "n_objects", "vanished_objects"]
    row = table.set_index("file").loc["deep_r0c1.tif"]
    assert (row.source, row.group, row.tile_row, row.tile_col) == ("deep.tif", "deep", 0, 1)
    assert (row.y0, row.x0, row.y1, row.x1, row.scale) == (0, 30, 20, 60, 0.5)
    assert row.n_objects == 0
    assert table.set_index("file").loc["deep_r1c1.tif"].n_objects == 1   # object 8
    vanished = table.set_index("file").loc["rgb_r1c0.tif"]
    assert str(vanished.vanished_objects) == "11" and vanished.n_objects == 0
    assert set(table.group) == {"deep", "png", "rgb"}

    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "ok" and record["step"] == "preprocess"
    assert any("orphan.tif" in u for u in record["results"]["unmatched"])
    assert record["results"]["n_vanished"] == 3


def test_preprocess_without_masks_and_options(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    image, outside, organoid = _vignetted()
    tifffile.imwrite(images / "a.tif", np.dstack([image] * 3))
    out = tmp_path / "out"
    result = preprocess(images, out, remove_vignette=True, flatten_background=True)
    assert not (out / "masks").exists()
    assert [p.name for p in (out / "images").iterdir()] == ["a.tif"]
    written = tifffile.imread(out / "images" / "a.tif")
    assert written.shape == image.shape and written.dtype == np.uint8
    assert written[outside].mean() > 150              # vignette gone
    assert written[organoid].mean() < 80              # organoid still dark
    assert result.n_written == 1
    table = pd.read_csv(out / "tiles.csv", keep_default_na=False)
    assert table.file.tolist() == ["a.tif"] and table.n_objects.tolist() == [""]


def test_preprocess_shape_mismatch_names_both_files(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    tifffile.imwrite(images / "a.tif", np.zeros((20, 30), np.uint8))
    tifffile.imwrite(masks / "a.tif", np.zeros((30, 20), np.uint16))
    with pytest.raises(OrgasegError) as info:  # PreprocessFailed, after the other images
        preprocess(images, tmp_path / "out", masks=masks)
    message = str(info.value)
    assert str(masks / "a.tif") in message and str(images / "a.tif") in message
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "failed"


def test_preprocess_refuses_unsafe_outputs(tmp_path, pair_folders):
    images, masks, *_ = pair_folders
    with pytest.raises(OutputError, match="must not be"):
        preprocess(images, images / "out", masks=masks)
    assert not (images / "out").exists()
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("earlier results")
    with pytest.raises(OutputError, match="not empty"):
        preprocess(images, out, masks=masks)
    result = preprocess(images, out, masks=masks, overwrite=True)
    assert result.n_written == 3
    with pytest.raises(OrgasegError, match="scale"):
        preprocess(images, tmp_path / "other", scale=0)
