"""Tests of extract-objects and the per-object measurements."""

import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from scipy import ndimage
from skimage.measure import label as connected_components
from skimage.measure import regionprops_table
from skimage.morphology import convex_hull_image

from orgaseg_core.cli import main
from orgaseg_core.common.errors import InputFileError, OrgasegError, OutputError
from orgaseg_core.objects.extract import (
    DEFAULT_CONTEXT,
    OBJECT_TABLE_COLUMNS,
    background_median,
    crop_window,
    extract_objects,
    object_crop,
    skip_reasons,
)
from orgaseg_core.objects.measurements import MEASUREMENT_COLUMNS, convex_areas, measure_objects


def random_labels(shape, seed, threshold=0.53, sigma=2.0):
    """Blobby random instance labels (connected components of smoothed noise)."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.random(shape), sigma)
    return connected_components(smooth > threshold).astype(np.uint16)


# --------------------------------------------------------------------------- measurements

REGIONPROPS = {  # our column -> regionprops_table column
    "bbox_min_row": "bbox-0", "bbox_min_col": "bbox-1", "bbox_max_row": "bbox-2",
    "bbox_max_col": "bbox-3", "centroid_row": "centroid-0", "centroid_col": "centroid-1",
    "area_px": "area", "perimeter": "perimeter", "equivalent_diameter": "equivalent_diameter_area",
    "eccentricity": "eccentricity", "solidity": "solidity", "major_axis_length": "axis_major_length",
    "minor_axis_length": "axis_minor_length", "mean_intensity": "intensity_mean",
}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_measurements_equal_skimage_regionprops(seed):
    labels = random_labels((160, 200), seed)
    # Non-consecutive labels: measurements must follow the label values, not positions.
    labels[labels > 0] += 5 * labels[labels > 0]
    intensity = np.random.default_rng(seed).normal(100, 20, labels.shape)
    table = measure_objects(labels, intensity)
    ref = regionprops_table(labels, intensity, properties=[
        "label", "bbox", "centroid", "area", "perimeter", "equivalent_diameter_area",
        "eccentricity", "solidity", "axis_major_length", "axis_minor_length", "orientation",
        "intensity_mean"])
    assert len(table) == len(ref["label"]) > 20
    assert list(table.columns) == MEASUREMENT_COLUMNS
    np.testing.assert_array_equal(table["label"], ref["label"])
    for ours, theirs in REGIONPROPS.items():
        np.testing.assert_allclose(table[ours], ref[theirs], rtol=1e-9, atol=1e-9, err_msg=ours)
    # Orientation is an axis: +pi/2 and -pi/2 are the same one.
    diff = np.mod(table["orientation"].to_numpy() - ref["orientation"] + np.pi / 2, np.pi) - np.pi / 2
    np.testing.assert_allclose(diff, 0, atol=1e-9)
    for row in table.itertuples():
        values = intensity[labels == row.label]
        assert row.std_intensity == pytest.approx(values.std(), rel=1e-9)


def test_convex_areas_equal_skimage_convex_hull_image():
    rng = np.random.default_rng(5)
    masks = [ndimage.gaussian_filter(rng.random(tuple(rng.integers(1, 50, 2))), rng.uniform(0.5, 3))
             > rng.uniform(0.4, 0.6) for _ in range(200)]
    masks += [np.ones((1, 1), bool), np.ones((1, 9), bool), np.ones((9, 1), bool),
              np.eye(12, dtype=bool), np.zeros((3, 3), bool)]
    expected = [int(convex_hull_image(m).sum()) if m.any() else 0 for m in masks]
    np.testing.assert_array_equal(convex_areas(masks), expected)


def test_circularity_of_disk_near_one_and_of_line_small():
    yy, xx = np.mgrid[:120, :300]
    labels = np.zeros((120, 300), np.uint8)
    labels[(yy - 60) ** 2 + (xx - 60) ** 2 <= 40 ** 2] = 1
    labels[50:53, 150:290] = 2                        # a 3 px thin line
    table = measure_objects(labels).set_index("label")
    assert table.loc[1, "circularity"] == pytest.approx(1.0, abs=0.1)
    assert table.loc[2, "circularity"] < 0.15
    assert table.loc[1, "equivalent_diameter"] == pytest.approx(80, abs=1)
    assert table.loc[1, "eccentricity"] < 0.05 and table.loc[2, "eccentricity"] > 0.99
    # Ellipse of the same second moments: a uniform bar of length L has 4 sqrt(L^2 / 12).
    assert table.loc[2, "major_axis_length"] == pytest.approx(140 * 4 / math.sqrt(12), rel=0.01)
    assert table.loc[2, "orientation"] == pytest.approx(math.pi / 2)   # along the columns
    assert table.loc[1, "solidity"] > 0.98
    assert np.isnan(table["mean_intensity"]).all() and np.isnan(table["std_intensity"]).all()


def test_measurements_edge_cases():
    empty = measure_objects(np.zeros((5, 5), np.uint16))
    assert len(empty) == 0 and list(empty.columns) == MEASUREMENT_COLUMNS
    single = measure_objects(np.pad(np.ones((1, 1), np.uint8), 2))
    assert single.loc[0, "area_px"] == 1 and np.isnan(single.loc[0, "circularity"])
    # Huge sparse label values (ids from another tool) keep their values.
    labels = np.zeros((6, 6), np.uint32)
    labels[1:3, 1:3] = 4_000_000_000
    labels[4:6, 4:6] = 7
    table = measure_objects(labels)
    assert table["label"].tolist() == [7, 4_000_000_000]
    assert table["area_px"].tolist() == [4, 4]
    assert table["bbox_min_row"].tolist() == [4, 1]
    with pytest.raises(OrgasegError, match="integers"):
        measure_objects(np.zeros((3, 3), np.float32))
    with pytest.raises(OrgasegError, match="negative"):
        measure_objects(-np.ones((3, 3), np.int32))
    with pytest.raises(OrgasegError, match="shape"):
        measure_objects(np.zeros((3, 3), np.uint8), np.zeros((3, 4)))


# --------------------------------------------------------------------------- array functions

def test_crop_window_pads_and_clips():
    assert crop_window((10, 20, 30, 50), 5, (100, 100)) == (5, 15, 35, 55)
    assert crop_window((2, 3, 30, 98), 5, (100, 100)) == (0, 0, 35, 100)
    assert crop_window((2, 3, 4, 5), 0, (10, 10, 3)) == (2, 3, 4, 5)
    # context: a fraction of the box's longer side (here 20 px) on every side, on top of the padding
    assert crop_window((10, 20, 30, 30), 5, (100, 100), context=0.25) == (0, 10, 40, 40)
    assert crop_window((40, 40, 60, 50), 0, (100, 100), context=0.5) == (30, 30, 70, 60)


def test_context_shows_a_quarter_of_the_object_around_it(scene):
    """The classifier's crop holds thin branches a segmented outline left out (see the module notes)."""
    root, image, labels = scene
    extract_objects(root / "images", root / "masks", root / "out", padding=3, context=DEFAULT_CONTEXT)
    row = pd.read_csv(root / "out" / "objects.csv").set_index("label").loc[1]
    assert DEFAULT_CONTEXT == 0.25
    assert json.loads((root / "out" / "run.json").read_text())["arguments"]["context"] == 0.25
    # box rows 20-30, columns 30-45 (longer side 15): 3 px + round(0.25 * 15) = 7 px on each side
    assert (row.crop_min_row, row.crop_min_col, row.crop_max_row, row.crop_max_col) == (13, 23, 37, 52)
    np.testing.assert_array_equal(tifffile.imread(root / "out" / "crops" / "plate1_1.tif"), image[13:37, 23:52])
    with pytest.raises(OrgasegError, match="context must be within 0-2"):
        extract_objects(root / "images", root / "masks", root / "other", context=3)


def test_crops_cut_unlike_the_classifiers_are_named(scene):
    """classify warns when extract-objects cut the crops otherwise than the classifier's
    training crops (the default of both is the same: padding 10, context 0.25)."""
    from orgaseg_core.classification.predict import crop_mismatch

    root, _, _ = scene
    extract_objects(root / "images", root / "masks", root / "default")
    assert json.loads((root / "default" / "run.json").read_text())["arguments"]["context"] == DEFAULT_CONTEXT
    assert crop_mismatch(root / "default", 10, DEFAULT_CONTEXT) is None
    extract_objects(root / "images", root / "masks", root / "tight", context=0)
    why = crop_mismatch(root / "tight", 10, DEFAULT_CONTEXT)
    assert str(root / "tight") in why and "context 0," in why and "--context 0.25" in why
    assert crop_mismatch(root / "images", 10, DEFAULT_CONTEXT) is None  # no extract-objects record


def test_object_crop_masks_background_and_other_objects():
    image = np.arange(100, dtype=np.uint8).reshape(10, 10)
    labels = np.zeros((10, 10), np.uint8)
    labels[2:5, 2:5] = 1
    labels[4:7, 5:7] = 2
    crop = object_crop(image, labels, 1, (1, 1, 7, 7), background=np.uint8(255))
    window_labels = labels[1:7, 1:7]
    np.testing.assert_array_equal(crop[window_labels == 1], image[1:7, 1:7][window_labels == 1])
    assert (crop[window_labels != 1] == 255).all()
    plain = object_crop(image, labels, 1, (1, 1, 7, 7))
    np.testing.assert_array_equal(plain, image[1:7, 1:7])
    assert image[1, 1] == 11  # the image itself is never changed


def test_background_median_per_channel_and_dtype():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (31, 20))
    for dtype, top in ((np.uint8, 256), (np.uint16, 65536), (np.float32, 1.0)):
        image = (rng.random((31, 20, 3)) * top).astype(dtype)
        expected = np.median(image[labels == 0], axis=0)
        if dtype != np.float32:
            expected = np.rint(expected)
        got = background_median(image, labels)
        assert got.dtype == dtype and got.shape == (3,)
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        assert background_median(image[..., 1], labels) == pytest.approx(expected[1], rel=1e-6)


def test_skip_reasons():
    labels = np.zeros((20, 20), np.uint8)
    labels[0:3, 5:9] = 1          # border, 12 px
    labels[8:10, 8:10] = 2        # small, 4 px
    labels[12:17, 12:17] = 3      # kept, 25 px
    labels[18:20, 0:2] = 4        # small and border
    table = measure_objects(labels)
    reasons = skip_reasons(table, labels.shape, min_area=10, exclude_border=True)
    assert reasons.tolist() == ["touches the image border", "smaller than min_area", "",
                                "smaller than min_area; touches the image border"]
    assert skip_reasons(table, labels.shape).tolist() == ["", "", "", ""]


# --------------------------------------------------------------------------- the step

@pytest.fixture
def scene(tmp_path):
    """images/ + masks/ with known objects: rectangles 1 (inside), 2 (at the corner), 5 (tiny)."""
    rng = np.random.default_rng(1)
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    image = rng.integers(0, 200, (60, 80), dtype=np.uint8)
    labels = np.zeros((60, 80), np.uint16)
    labels[20:30, 30:45] = 1
    labels[0:6, 0:4] = 2
    labels[50:52, 70:71] = 5
    tifffile.imwrite(images / "plate1.tif", image)
    tifffile.imwrite(masks / "plate1.tif", labels)
    return tmp_path, image, labels


def test_exact_crops_names_and_table(scene):
    root, image, labels = scene
    result = extract_objects(root / "images", root / "masks", root / "out", padding=3, context=0)
    out = root / "out"
    assert result.n_crops == 3 and result.n_pairs == 1 and result.n_objects == 3
    crop1 = tifffile.imread(out / "crops" / "plate1_1.tif")
    assert crop1.shape == (10 + 6, 15 + 6)
    np.testing.assert_array_equal(crop1, image[17:33, 27:48])
    crop2 = tifffile.imread(out / "crops" / "plate1_2.tif")   # clipped at the corner
    assert crop2.shape == (6 + 3, 4 + 3)
    np.testing.assert_array_equal(crop2, image[0:9, 0:7])
    assert sorted(p.name for p in (out / "crops").iterdir()) == ["plate1_1.tif", "plate1_2.tif",
                                                                 "plate1_5.tif"]

    table = pd.read_csv(out / "objects.csv")
    # no pixel size in these images: the table is in pixels only (see test_pixel_size.py)
    physical = {"pixel_size_um", "area_um2", "perimeter_um", "equivalent_diameter_um",
                "major_axis_length_um", "minor_axis_length_um"}
    assert list(table.columns) == [c for c in OBJECT_TABLE_COLUMNS if c not in physical]
    assert table["label"].tolist() == [1, 2, 5]
    assert (table["image"] == "plate1.tif").all() and (table["stem"] == "plate1").all()
    for row in table.itertuples():
        assert (out / row.crop).is_file()                      # maps back to the crop file
        assert row.area_px == (labels == row.label).sum()
        assert row.padding == 3
    row1 = table.set_index("label").loc[1]
    assert (row1.bbox_min_row, row1.bbox_min_col, row1.bbox_max_row, row1.bbox_max_col) == (20, 30, 30, 45)
    assert (row1.crop_min_row, row1.crop_min_col, row1.crop_max_row, row1.crop_max_col) == (17, 27, 33, 48)
    assert row1.centroid_row == pytest.approx(24.5) and row1.centroid_col == pytest.approx(37)
    assert row1.mean_intensity == pytest.approx(image[20:30, 30:45].mean(), abs=1e-4)

    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "ok" and record["step"] == "extract-objects"
    assert record["results"]["images"] == [{"image": "plate1.tif", "mask": "plate1.tif", "objects": 3,
                                            "crops": 3, "too_small": 0, "touching_border": 0,
                                            "pixel_size": {"pixel_size_um": None, "source": "none"}}]
    assert pd.read_csv(out / "skipped.csv").empty


def test_mask_background_keeps_object_and_sets_the_rest_to_median(scene):
    root, image, labels = scene
    extract_objects(root / "images", root / "masks", root / "out", padding=30, context=0, mask_background=True)
    crop = tifffile.imread(root / "out" / "crops" / "plate1_1.tif")
    window = labels[0:60, 0:75]   # rows 20-30 +- 30 clip to 0..60, cols 30-45 +- 30 -> 0..75
    assert crop.shape == window.shape
    median = np.rint(np.median(image[labels == 0]))
    np.testing.assert_array_equal(crop[window == 1], image[0:60, 0:75][window == 1])
    assert (crop[window != 1] == median).all()
    assert (window == 2).any()    # the other object is inside this window and was masked too


def test_min_area_and_exclude_border_drop_and_list(scene):
    root, _image, _labels = scene
    result = extract_objects(root / "images", root / "masks", root / "out", min_area=5,
                             exclude_border=True)
    assert result.n_crops == 1 and result.n_skipped == 2
    assert result.n_too_small == 1 and result.n_touching_border == 1
    assert [p.name for p in (root / "out" / "crops").iterdir()] == ["plate1_1.tif"]
    skipped = pd.read_csv(root / "out" / "skipped.csv")
    assert dict(zip(skipped["label"], skipped["reason"])) == {2: "touches the image border",
                                                              5: "smaller than min_area"}
    assert pd.read_csv(root / "out" / "objects.csv")["label"].tolist() == [1]
    assert "skipped 2 objects" in result.summary()


def test_rgb_and_16_bit_images_keep_dtype_and_channels(tmp_path):
    rng = np.random.default_rng(2)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rgb = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    grey16 = rng.integers(0, 65535, (40, 50), dtype=np.uint16)
    labels = np.zeros((40, 50), np.uint16)
    labels[10:20, 10:25] = 3
    Image.fromarray(rgb).save(tmp_path / "images" / "colour.png")
    tifffile.imwrite(tmp_path / "images" / "deep.tif", grey16)
    tifffile.imwrite(tmp_path / "masks" / "colour.tif", labels)
    tifffile.imwrite(tmp_path / "masks" / "deep.tif", labels)
    extract_objects(tmp_path / "images", tmp_path / "masks", tmp_path / "out", padding=2, context=0,
                    mask_background=True)
    colour = tifffile.imread(tmp_path / "out" / "crops" / "colour_3.tif")
    assert colour.dtype == np.uint8 and colour.shape == (14, 19, 3)
    np.testing.assert_array_equal(colour[2:-2, 2:-2], rgb[10:20, 10:25])
    expected_bg = np.rint(np.median(rgb[labels == 0], axis=0))
    np.testing.assert_array_equal(colour[0, 0], expected_bg)
    deep = tifffile.imread(tmp_path / "out" / "crops" / "deep_3.tif")
    assert deep.dtype == np.uint16 and deep.shape == (14, 19)
    np.testing.assert_array_equal(deep[2:-2, 2:-2], grey16[10:20, 10:25])
    table = pd.read_csv(tmp_path / "out" / "objects.csv").set_index("stem")
    # Intensities are measured on the grey image (luminance of the RGB one).
    assert table.loc["deep", "mean_intensity"] == pytest.approx(grey16[10:20, 10:25].mean(), abs=1e-3)
    grey = np.rint(rgb[10:20, 10:25].astype(float) @ [0.2125, 0.7154, 0.0721])
    assert table.loc["colour", "mean_intensity"] == pytest.approx(grey.mean(), abs=1e-3)


def test_pairs_by_stem_and_reports_unmatched_by_name(tmp_path, unchanged):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    labels = np.zeros((30, 30), np.uint16)
    labels[5:10, 5:10] = 1
    # A JPEG image pairs with its TIFF mask by stem; b has no mask, c has no image.
    Image.fromarray(np.full((30, 30, 3), 90, np.uint8)).save(tmp_path / "images" / "a.jpg")
    tifffile.imwrite(tmp_path / "images" / "b.tif", np.zeros((30, 30), np.uint8))
    tifffile.imwrite(tmp_path / "masks" / "a.tif", labels)
    tifffile.imwrite(tmp_path / "masks" / "c.tif", labels)
    check_images, check_masks = unchanged(tmp_path / "images"), unchanged(tmp_path / "masks")
    result = extract_objects(tmp_path / "images", tmp_path / "masks", tmp_path / "out")
    check_images()
    check_masks()
    assert result.n_pairs == 1 and result.n_crops == 1
    assert (tmp_path / "out" / "crops" / "a_1.tif").is_file()
    assert any("b.tif" in line and "no matching mask" in line for line in result.unmatched)
    assert any("c.tif" in line and "no matching image" in line for line in result.unmatched)
    assert "b.tif" in result.summary() and "c.tif" in result.summary()
    assert pd.read_csv(tmp_path / "out" / "objects.csv")["image"].tolist() == ["a.jpg"]


def test_no_pairs_is_an_error_and_writes_nothing(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    tifffile.imwrite(tmp_path / "images" / "a.tif", np.zeros((5, 5), np.uint8))
    tifffile.imwrite(tmp_path / "masks" / "b.tif", np.zeros((5, 5), np.uint8))
    with pytest.raises(OrgasegError, match="no image .* has a mask of the same name"):
        extract_objects(tmp_path / "images", tmp_path / "masks", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(OrgasegError, match="different folders"):
        extract_objects(tmp_path / "images", tmp_path / "images", tmp_path / "out")
    with pytest.raises(InputFileError, match="does not exist"):
        extract_objects(tmp_path / "nope", tmp_path / "masks", tmp_path / "out")


def test_bad_pairs_are_reported_naming_both_files_and_others_still_done(scene):
    root, image, labels = scene
    tifffile.imwrite(root / "images" / "wide.tif", np.zeros((60, 81), np.uint8))
    tifffile.imwrite(root / "masks" / "wide.tif", labels)
    tifffile.imwrite(root / "images" / "floaty.tif", image)
    tifffile.imwrite(root / "masks" / "floaty.tif", labels.astype(np.float32) + 0.5)
    with pytest.raises(OrgasegError) as info:
        extract_objects(root / "images", root / "masks", root / "out")
    message = str(info.value)
    assert "2 of 3 image/mask pairs failed" in message
    assert str(root / "masks" / "wide.tif") in message
    assert str(root / "images" / "wide.tif") in message and "60x81" in message
    assert str(root / "masks" / "floaty.tif") in message and "integers" in message
    # The good pair was still processed and the run record says what happened.
    assert (root / "out" / "crops" / "plate1_1.tif").is_file()
    record = json.loads((root / "out" / "run.json").read_text())
    assert record["status"] == "failed"
    assert {e["file"] for e in record["results"]["errors"]} == {"wide.tif", "floaty.tif"}
    # Nothing under the input folders changed (out is beside them).
    for folder in ("images", "masks"):
        assert sorted(p.name for p in (root / folder).iterdir()) == ["floaty.tif", "plate1.tif", "wide.tif"]


def test_inputs_unchanged(scene, unchanged):
    root, _image, _labels = scene
    check_images, check_masks = unchanged(root / "images"), unchanged(root / "masks")
    extract_objects(root / "images", root / "masks", root / "out", mask_background=True,
                    min_area=5, exclude_border=True)
    check_images()
    check_masks()


def test_empty_mask_warns_and_is_listed(scene, caplog):
    root, image, labels = scene
    tifffile.imwrite(root / "images" / "blank.tif", image)
    tifffile.imwrite(root / "masks" / "blank.tif", np.zeros_like(labels))
    with caplog.at_level(logging.WARNING):
        result = extract_objects(root / "images", root / "masks", root / "out")
    assert result.empty_masks == ["blank.tif"]
    assert any("blank.tif" in r.getMessage() and "no objects" in r.getMessage() for r in caplog.records)
    assert not any(p.name.startswith("blank") for p in (root / "out" / "crops").iterdir())
    assert "masks without objects" in result.summary()
    record = json.loads((root / "out" / "run.json").read_text())
    assert record["status"] == "ok" and record["results"]["empty_masks"] == ["blank.tif"]


def test_non_empty_output_refused_unless_overwrite(scene):
    root, _image, _labels = scene
    (root / "out").mkdir()
    (root / "out" / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="not empty"):
        extract_objects(root / "images", root / "masks", root / "out")
    result = extract_objects(root / "images", root / "masks", root / "out", overwrite=True)
    assert result.n_crops == 3 and (root / "out" / "keep.txt").is_file()
    with pytest.raises(OutputError):
        extract_objects(root / "images", root / "masks", root / "images" / "out")
    with pytest.raises(OrgasegError, match="padding"):
        extract_objects(root / "images", root / "masks", root / "other", padding=-1)


def test_cli_exit_codes(scene, capsys):
    root, _image, _labels = scene
    args = ["extract-objects", "--images", str(root / "images"), "--masks", str(root / "masks")]
    assert main(args + ["--out", str(root / "out"), "--padding", "2", "--mask-background",
                        "--min-area", "5", "--exclude-border"]) == 0
    assert "extract-objects: 1 image/mask pairs, 3 objects -> 1 crops" in capsys.readouterr().out
    assert main(args + ["--out", str(root / "out")]) == 1                      # not empty
    assert "not empty" in capsys.readouterr().err
    assert main(args + ["--out", str(root / "out"), "--overwrite"]) == 0
    assert main(args + ["--out", str(root / "o2"), "--padding", "-1"]) == 2    # bad option value
    assert main(["extract-objects", "--images", str(root / "nope"), "--masks", str(root / "masks"),
                 "--out", str(root / "o3")]) == 1


def test_demo_data_gives_one_crop_per_labelled_object(tmp_path):
    from orgaseg_core.data.demo import make_demo_data
    from orgaseg_core.data.masks import annotations_to_masks

    demo = make_demo_data(tmp_path / "demo", n_images=2, seed=0, size=(256, 320))
    annotations_to_masks(tmp_path / "demo" / "geojsons", tmp_path / "demo" / "images", tmp_path / "masks")
    result = extract_objects(tmp_path / "demo" / "images", tmp_path / "masks", tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "objects.csv")
    assert result.n_pairs == len(demo.images) == 2
    expected = 0
    for image_path in demo.images:
        stem = image_path.name.rsplit(".", 1)[0]
        truth = pd.read_csv(tmp_path / "masks" / f"{stem}_objects.csv")
        truth = truth[truth["area_px"] > 0]
        ours = table[table["stem"] == stem].set_index("label")
        assert sorted(ours.index) == sorted(truth["label"])
        for row in truth.itertuples():
            assert ours.loc[row.label, "area_px"] == row.area_px
            assert (ours.loc[row.label, "bbox_min_row"], ours.loc[row.label, "bbox_max_col"]) == \
                (row.bbox_min_row, row.bbox_max_col)
        expected += len(truth)
    assert result.n_crops == expected == len(list((tmp_path / "out" / "crops").iterdir())) > 5
    for row in table.itertuples():
        crop = tifffile.imread(tmp_path / "out" / row.crop)
        assert crop.shape[:2] == (row.crop_max_row - row.crop_min_row, row.crop_max_col - row.crop_min_col)


def test_class_folders_from_the_class_tables_of_annotations_to_masks(tmp_path):
    """Crops sorted by the class table beside each mask; a derived class goes to a safe folder and
    keeps its name in classes.csv; an object the table does not classify is skipped, not lost."""
    from orgaseg_core.common.classes import read_class_names

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    labels = np.zeros((60, 80), np.uint16)
    labels[5:15, 5:15], labels[20:35, 30:45], labels[40:50, 60:75] = 1, 2, 3
    tifffile.imwrite(images / "a.tif", np.full((60, 80), 120, np.uint8))
    tifffile.imwrite(masks / "a.tif", labels)
    pd.DataFrame({"label": [1, 2, 3], "class": ["Tumor: Positive", "Filled-in", ""]}).to_csv(
        masks / "a_objects.csv", index=False)
    result = extract_objects(images, masks, tmp_path / "out", class_folders=True)
    out = tmp_path / "out"
    assert result.n_crops == 2
    assert (out / "crops" / "Tumor - Positive" / "a_1.tif").is_file()
    assert (out / "crops" / "Filled-in" / "a_2.tif").is_file()
    table = pd.read_csv(out / "objects.csv")
    assert table["class"].tolist() == ["Tumor: Positive", "Filled-in"]
    assert table["crop"].tolist() == ["crops/Tumor - Positive/a_1.tif", "crops/Filled-in/a_2.tif"]
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped[["label", "reason"]].values.tolist() == [[3, "no class in the class table"]]
    assert read_class_names(out / "crops") == {"Tumor - Positive": "Tumor: Positive",
                                               "Filled-in": "Filled-in"}
    # without a class table next to the mask: the pair fails with a message naming the table
    (masks / "a_objects.csv").unlink()
    with pytest.raises(OrgasegError, match="a_objects.csv: class table is missing"):
        extract_objects(images, masks, tmp_path / "out2", class_folders=True)
