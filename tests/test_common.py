"""Tests of the shared modules: image IO and pairing, class names, safe outputs, parameters."""

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from orgaseg_core.common.classes import (
    UnsafeClassNameError,
    canonical_class_name,
    class_colour,
    load_class_map,
    ClassNames,
    class_folder_name,
    validate_class_name,
)
from orgaseg_core.common.errors import InputFileError, OrgasegError, OutputError
from orgaseg_core.common.images import (
    image_stem,
    index_by_stem,
    label_dtype,
    pair_by_stem,
    read_image,
    read_image_shape,
    read_labels,
)
from orgaseg_core.common.outputs import atomic_path, prepare_output_dir, step_run
from orgaseg_core.common.params import parse_pair


@pytest.mark.parametrize("name, stem", [
    ("a.tif", "a"), ("a.jpg.geojson", "a"), ("a.JPG", "a"), ("plate.1.tiff", "plate.1"),
    ("a_r0c1.tif", "a_r0c1"), ("a.geojson", "a"), ("noext", "noext"),
])
def test_image_stem(name, stem):
    assert image_stem(name) == stem


def test_pair_by_stem_never_by_position(tmp_path):
    images = [tmp_path / n for n in ("a.jpg", "b.tif", "c.png")]
    masks = [tmp_path / n for n in ("b.tif", "c.tif", "d.tif")]
    pairs, only_images, only_masks = pair_by_stem(images, masks)
    assert [(s, i.name, m.name) for s, i, m in pairs] == [("b", "b.tif", "b.tif"), ("c", "c.png", "c.tif")]
    assert [p.name for p in only_images] == ["a.jpg"]
    assert [p.name for p in only_masks] == ["d.tif"]


def test_index_by_stem_prefers_tiff_and_refuses_ambiguity(tmp_path):
    assert index_by_stem([tmp_path / "a.jpg", tmp_path / "a.tif"])["a"].name == "a.tif"
    with pytest.raises(InputFileError, match="same name stem"):
        index_by_stem([tmp_path / "a.jpg", tmp_path / "a.png"])


def test_read_image_formats_and_errors(tmp_path):
    grey = (np.arange(12 * 10) % 251).astype(np.uint8).reshape(12, 10)
    tifffile.imwrite(tmp_path / "g.tif", grey)
    Image.fromarray(np.dstack([grey] * 3)).save(tmp_path / "c.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.tif"), grey)
    assert read_image(tmp_path / "c.png").shape == (12, 10, 3)
    assert read_image_shape(tmp_path / "g.tif") == (12, 10)
    assert read_image_shape(tmp_path / "c.png") == (12, 10)
    (tmp_path / "bad.tif").write_bytes(b"this is not a tiff")
    with pytest.raises(InputFileError, match=r"bad\.tif: cannot be read as an image"):
        read_image(tmp_path / "bad.tif")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InputFileError, match=r"empty\.jpg: file is empty"):
        read_image(tmp_path / "empty.jpg")
    with pytest.raises(InputFileError, match="does not exist"):
        read_image(tmp_path / "missing.tif")


def test_read_labels_checks_integers(tmp_path):
    tifffile.imwrite(tmp_path / "f.tif", np.full((4, 4), 0.5, np.float32))
    with pytest.raises(InputFileError, match="non-negative integers"):
        read_labels(tmp_path / "f.tif")
    tifffile.imwrite(tmp_path / "i.tif", np.arange(16, dtype=np.uint16).reshape(4, 4))
    assert read_labels(tmp_path / "i.tif").max() == 15


def test_label_dtype():
    assert label_dtype(65535) == np.uint16
    assert label_dtype(65536) == np.uint32


def test_class_names():
    assert canonical_class_name("Filled-in") == canonical_class_name("filled  IN") == "Filled in"
    names = ClassNames({"filled in": "Solid"})
    assert names.resolve("Filled-in") == names.resolve("filled_in") == "Solid"
    assert names.resolve("CD8 T cell") == names.resolve("cd8  t-cell") == "CD8 T cell"
    assert names.resolve("Tumor:positive") == names.resolve("tumor: Positive") == "Tumor:positive"
    assert names.describe_merges()[0].startswith("class 'CD8 T cell' also spelled 'cd8  t-cell'")
    assert class_folder_name("Tumor: Positive") == "Tumor - Positive"
    assert class_folder_name("Filled-in") == "Filled-in"
    assert class_colour("Cyst") == class_colour("cyst")
    assert class_colour("Something new") == class_colour("something-new")
    for bad in ("..", ".", "", "a/b", "a\\b", "a\x00b", "nul\n"):
        with pytest.raises(UnsafeClassNameError):
            validate_class_name(bad)
    assert validate_class_name("Early branching") == "Early branching"


def test_load_class_map_errors(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text("[1, 2]")
    with pytest.raises(InputFileError, match=r"m\.json"):
        load_class_map(bad)
    unsafe = tmp_path / "u.json"
    unsafe.write_text(json.dumps({"Cyst": "../up"}))
    with pytest.raises(UnsafeClassNameError, match=r"u\.json"):
        load_class_map(unsafe)
    three = tmp_path / "t.csv"
    three.write_text("a,b,c\n")
    with pytest.raises(InputFileError, match="two columns"):
        load_class_map(three)


def test_prepare_output_dir(tmp_path):
    out = prepare_output_dir(tmp_path / "new" / "deep")
    assert out.is_dir()
    (out / "x").write_text("1")
    with pytest.raises(OutputError, match="not empty"):
        prepare_output_dir(out)
    prepare_output_dir(out, overwrite=True)
    inp = tmp_path / "in"
    inp.mkdir()
    with pytest.raises(OutputError):
        prepare_output_dir(inp / "sub", inputs=[inp])
    with pytest.raises(OutputError):
        prepare_output_dir(tmp_path, inputs=[inp], overwrite=True)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "t.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and list(tmp_path.iterdir()) == [target]


def test_step_run_records_failure(tmp_path):
    with pytest.raises(ValueError):
        with step_run("x", tmp_path / "o", {"a": 1}) as record:
            record.results["n"] = 3
            raise ValueError("boom")
    record = json.loads((tmp_path / "o" / "run.json").read_text())
    assert record["status"] == "failed" and "boom" in record["error"]
    assert record["arguments"] == {"a": 1} and "numpy" in record["versions"]


def test_parse_pair():
    assert parse_pair("2x3") == (2, 3) and parse_pair("4032X3040") == (4032, 3040)
    for bad in ("2", "0x2", "axb", "2x-1"):
        with pytest.raises(OrgasegError):
            parse_pair(bad)


def test_parse_optional_size():
    from orgaseg_core.common.params import parse_optional_size

    assert parse_optional_size(None) is None and parse_optional_size("auto") is None
    assert parse_optional_size("") is None
    assert parse_optional_size("256") == 256 and parse_optional_size("128x64") == (128, 64)
    for bad in ("0", "12x", "big"):
        with pytest.raises(OrgasegError):
            parse_optional_size(bad)


def test_number_lists_for_grid_searches():
    from orgaseg_core.common.params import (
        parse_number_list,
        parse_optional_int,
        parse_optional_text,
        split_list,
    )

    assert split_list(" resnet18, ,resnet50 ") == ["resnet18", "resnet50"]
    assert split_list(("a ", "", " b")) == ["a", "b"] and split_list(None) == []
    assert parse_number_list("1e-3, 3e-4", what="--learning-rates") == [0.001, 0.0003]
    assert parse_number_list("32,64", int, what="--batch-sizes", minimum=1, strict=False) == [32, 64]
    assert parse_number_list("0", what="--weight-decays", strict=False) == [0.0]
    for text, kind, message in (("0.001,fast", float, "'fast' is not a number"),
                                ("1.5", int, "'1.5' is not a whole number"),
                                ("nan", float, "not a finite number"),
                                ("0", float, "'0' must be > 0"),
                                (" , ", float, "at least one value")):
        with pytest.raises(OrgasegError, match=message):
            parse_number_list(text, kind, what="--x")
    assert parse_optional_int("auto") is None and parse_optional_int(" 64 ") == 64
    with pytest.raises(OrgasegError, match="whole number or 'auto'"):
        parse_optional_int("big")
    assert parse_optional_text(" Auto ") is None and parse_optional_text(" cuda ") == "cuda"


def _circularity(labels: np.ndarray, label: int = 1) -> float:
    from skimage.measure import regionprops

    region = next(r for r in regionprops(labels) if r.label == label)
    return 4 * np.pi * region.area / region.perimeter ** 2


@pytest.mark.parametrize("factor", [2, 4])
def test_enlarged_labels_keep_round_outlines_round(factor):
    """A disk enlarged by a model's scale factor measures as round as a disk drawn at that size
    (nearest neighbour turns its outline into steps: circularity 0.76 instead of 0.91 at 2x)."""
    from skimage.draw import disk

    from orgaseg_core.common.labels import enlarge_labels

    small = np.zeros((100, 100), np.uint16)
    small[disk((50, 50), 30)] = 1
    big = enlarge_labels(small, (100 * factor, 100 * factor))
    drawn = np.zeros_like(big)
    drawn[disk((50.5 * factor - 0.5, 50.5 * factor - 0.5), 30 * factor)] = 1
    assert big.dtype == small.dtype and big.shape == drawn.shape
    assert abs(_circularity(big) - _circularity(drawn)) < 0.03
    assert abs(int((big == 1).sum()) / (drawn == 1).sum() - 1) < 0.02
    # same pixels as nearest neighbour away from the outline
    rows = np.minimum((np.arange(100 * factor) + 0.5) / factor, 99).astype(int)
    nearest = small[rows][:, rows]
    assert np.mean(big != nearest) < 0.01


def test_enlarged_labels_lose_no_object_and_no_contact():
    from skimage.draw import disk

    from orgaseg_core.common.labels import enlarge_labels

    small = np.zeros((60, 80), np.uint16)
    small[disk((30, 20), 12)] = 1
    small[disk((30, 43), 12)] = 2  # touches 1 (overlap drawn over it)
    small[10, 70] = 3  # a single pixel
    small[50, 60], small[50, 61], small[50, 62] = 4, 5, 4  # one pixel squeezed between another
    small[59, 79] = 6  # in the corner
    big = enlarge_labels(small, (150, 200))  # 2.5x
    assert set(np.unique(big).tolist()) == set(range(7))
    # 1 and 2 still touch along their common edge (9 px at the small size, 22 px enlarged with
    # nearest neighbour; the ends of the contact round off like any corner)
    touching = (big[:, :-1] == 1) & (big[:, 1:] == 2)
    assert touching.sum() >= 16
    assert big[-1, -1] == 6
    with pytest.raises(OrgasegError, match="cannot be enlarged"):
        enlarge_labels(small, (50, 200))
    assert enlarge_labels(small, small.shape) is small


def test_stretch_contrast_maps_the_percentiles_to_black_and_white():
    """The overlays' grey: the 0.5th and 99.5th percentiles of the finite pixels map to 0 and
    255 (rounded, clipped), NaN pixels to black, a flat image to mid-grey."""
    from orgaseg_core.common.overlays import stretch_contrast

    grey = np.arange(1000, dtype=np.float32).reshape(20, 50)  # percentiles 4.995 and 994.005
    out = stretch_contrast(grey)
    assert out.dtype == np.uint8 and out.shape == grey.shape
    expected = np.clip(np.rint((grey - 4.995) * 255 / (994.005 - 4.995)), 0, 255)
    assert np.array_equal(out, expected.astype(np.uint8))
    grey[0, :3] = np.nan
    grey[1, 0] = np.inf
    out = stretch_contrast(grey)
    assert (out[0, :3] == 0).all() and out[1, 0] == 255 and out[-1, -1] == 255
    assert (stretch_contrast(np.full((4, 4), 7.0)) == 128).all()
    assert (stretch_contrast(np.full((4, 4), np.nan)) == 0).all()
