"""Tests of the synthetic example data (orgaseg demo-data)."""

import hashlib
import json
import re

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from shapely.geometry import shape

from orgaseg_core.cli import main
from orgaseg_core.common.errors import OrgasegError, OutputError
from orgaseg_core.common.images import read_image
from orgaseg_core.data.demo import (
    CLASSES,
    STYLES,
    capsule_radius,
    make_demo_data,
    radial_function,
    radial_polygon,
    rasterise_geometry,
    rasterise_parts,
    roi_pixel_bounds,
    synthesise_image,
)

SIZE = (380, 504)
CROP_NAME = re.compile(r"^(?P<image>demo_\d{3}\.(?:jpg|tif))Annotation(?: \((?P<cls>[^()]+)\))?_(?P<i>\d+)\.tif$")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "data"
    result = make_demo_data(out, n_images=4, seed=3, size=SIZE)
    return out, result


def _features(out, name):
    return json.loads((out / "geojsons" / f"{name}.geojson").read_text())["features"]


def _all_features(out):
    return {p.name[: -len(".geojson")]: json.loads(p.read_text())["features"]
            for p in sorted((out / "geojsons").glob("*.geojson"))}


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "run.json"}


def _grey(image):
    return image.mean(axis=2) if image.ndim == 3 else image.astype(float)


# ---------------------------------------------------------------------------------------------
# Pure functions


def test_capsule_radius_ends_and_sides():
    angles = np.array([0.0, np.pi / 2, -np.pi / 2, np.pi])
    r = capsule_radius(angles, length=20.0, half_width=5.0)
    np.testing.assert_allclose(r, [25.0, 5.0, 5.0, 5.0])
    # A ray at a steep angle leaves through the long side at half_width / sin(angle) ...
    assert capsule_radius(np.array([0.4]), 20.0, 5.0)[0] == pytest.approx(5.0 / np.sin(0.4))
    # ... a ray close to the axis through the round cap centred at (20, 0).
    r_cap = capsule_radius(np.array([0.2]), 20.0, 5.0)[0]
    assert np.hypot(r_cap * np.cos(0.2) - 20.0, r_cap * np.sin(0.2)) == pytest.approx(5.0)


def test_radial_polygon_is_a_valid_ring_with_branches():
    rng = np.random.default_rng(0)
    r = radial_function(rng, 20.0, capsules=[(0.0, 30.0, 4.0), (np.pi, 30.0, 4.0)])
    ring = radial_polygon(r, 100, centre=(50.0, 60.0))
    assert ring.shape == (100, 2)
    poly = shape({"type": "Polygon", "coordinates": [np.vstack([ring, ring[:1]]).tolist()]})
    assert poly.is_valid
    assert poly.exterior.is_ccw  # counter-clockwise in x/y, as RFC 7946 asks of exteriors
    # The two branches reach about 34 px from the centre along the x axis.
    assert ring[:, 0].max() == pytest.approx(50 + 34, abs=1.0)
    assert ring[:, 0].min() == pytest.approx(50 - 34, abs=1.0)


def test_rasterise_uses_pixel_centres_and_holes():
    square = np.array([[2.0, 1.0], [6.0, 1.0], [6.0, 5.0], [2.0, 5.0]])  # x 2..6, y 1..5
    hole = np.array([[3.0, 2.0], [3.0, 4.0], [5.0, 4.0], [5.0, 2.0]])
    mask = rasterise_parts([(square, [])], (0, 0), (8, 8))
    assert mask.sum() == 16 and mask[1:5, 2:6].all()  # pixel (row 1, col 2) covers [2,3)x[1,2)
    with_hole = rasterise_parts([(square, [hole])], (0, 0), (8, 8))
    assert with_hole.sum() == 12 and not with_hole[2:4, 3:5].any()
    # A box origin shifts the pixel grid.
    shifted = rasterise_parts([(square, [])], (2, 1), (4, 4))
    assert shifted.all()


def test_roi_pixel_bounds_floor_ceil_and_clip():
    assert roi_pixel_bounds((2.3, 1.7, 10.2, 8.0), (100, 100)) == (2, 1, 11, 8)
    assert roi_pixel_bounds((-3.0, 5.5, 120.1, 7.2), (50, 100)) == (0, 5, 100, 8)


def test_object_sizes_scale_with_image_size():
    def median_area(size, seed):
        image = synthesise_image(size, np.random.default_rng(seed), n_organoids=15)
        return np.median([shape(o.geometry()).area for o in image.objects if o.kind == "organoid"])

    small = np.mean([median_area((380, 504), s) for s in range(3)])
    large = np.mean([median_area((760, 1008), s) for s in range(3)])
    assert 2.5 < large / small < 6.0  # twice the size: about four times the area


# ---------------------------------------------------------------------------------------------
# The written data set


def test_layout_names_and_formats(demo):
    out, result = demo
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == ["demo_000.jpg", "demo_001.tif", "demo_002.jpg", "demo_003.tif"]
    assert [p.name for p in result.images] == names
    assert sorted(p.name for p in (out / "geojsons").iterdir()) == [f"{n}.geojson" for n in names]
    with Image.open(out / "images" / "demo_000.jpg") as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (SIZE[1], SIZE[0])
        rgb = np.asarray(im).astype(float)
    # Grey-looking: the channels differ by only a few grey levels.
    assert np.abs(rgb[..., 0] - rgb[..., 2]).mean() < 12
    grey8 = tifffile.imread(out / "images" / "demo_001.tif")
    grey16 = tifffile.imread(out / "images" / "demo_003.tif")
    assert grey8.dtype == np.uint8 and grey8.shape == SIZE
    assert grey16.dtype == np.uint16 and grey16.shape == SIZE and grey16.max() > 255 * 10
    for path in result.images:  # the project's reader opens them all
        assert read_image(path).shape[:2] == SIZE
    # Vignette: corners black, centre light grey.
    assert grey8[:8, :8].mean() < 30 and grey8[-8:, -8:].mean() < 30
    assert 120 < np.median(grey8[150:230, 200:300]) < 240
    assert (out / "objects.csv").is_file() and result.objects_csv == out / "objects.csv"


def test_run_json_and_summary(demo):
    out, result = demo
    record = json.loads((out / "run.json").read_text())
    assert record["step"] == "demo-data" and record["status"] == "ok"
    assert record["arguments"]["seed"] == 3 and record["arguments"]["size"] == list(SIZE)
    assert record["results"]["n_objects"] == result.n_objects
    assert record["results"]["class_counts"] == result.class_counts
    text = result.summary()
    assert str(out / "images") in text and str(out / "crops") in text and "objects.csv" in text


def test_geojson_is_qupath_like_with_all_special_cases(demo):
    out, result = demo
    features = [f for fs in _all_features(out).values() for f in fs]
    ids = [f["id"] for f in features]
    assert len(set(ids)) == len(ids)
    for f in features:
        assert f["type"] == "Feature" and f["properties"]["objectType"] == "annotation"
        assert f["properties"]["isLocked"] is False
        geom = f["geometry"]
        if geom["type"] != "LineString":
            assert shape(geom).is_valid
            rings = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
            for polygon in rings:
                for ring in polygon:
                    assert ring[0] == ring[-1]  # closed rings
                    assert 40 <= len(ring) - 1 <= 120
    classified = [f for f in features if "classification" in f["properties"]]
    names = {f["properties"]["classification"]["name"] for f in classified}
    assert {"Cyst", "Filled in", "Filled-in", "Early branching", "Branched", "Burned out"} <= names
    for f in classified:
        colour = f["properties"]["classification"]["color"]
        assert len(colour) == 3 and all(0 <= c <= 255 for c in colour)
    assert sum(f["geometry"]["type"] == "MultiPolygon" for f in features) >= 2
    holed = [f for f in features if f["geometry"]["type"] == "Polygon" and len(f["geometry"]["coordinates"]) > 1]
    assert len(holed) >= 2
    unclassified = [f for f in features if "classification" not in f["properties"]
                    and f["geometry"]["type"] == "Polygon"]
    assert len(unclassified) == 1
    assert sum(f["geometry"]["type"] == "LineString" for f in features) == 1


def test_special_polygons_are_painted(demo):
    """The hole of a ring cyst is background; a detached bud is a dark blob of its own."""
    out, _ = demo
    for image_name, features in _all_features(out).items():
        image = _grey(read_image(out / "images" / image_name))
        for f in features:
            geom = f["geometry"]
            if geom["type"] == "Polygon" and len(geom["coordinates"]) > 1:
                hole = {"type": "Polygon", "coordinates": [geom["coordinates"][1]]}
                wall = {"type": "Polygon", "coordinates": geom["coordinates"]}
                box = roi_pixel_bounds(shape(geom).bounds, image.shape)
                region = image[box[1]:box[3], box[0]:box[2]]
                hole_mask = rasterise_geometry(hole, box[:2], region.shape)
                wall_mask = rasterise_geometry(wall, box[:2], region.shape)
                assert region[hole_mask].mean() > region[wall_mask].mean() + 40
            if geom["type"] == "MultiPolygon":
                for polygon in geom["coordinates"]:
                    part = {"type": "Polygon", "coordinates": polygon}
                    box = roi_pixel_bounds(shape(part).bounds, image.shape)
                    region = image[box[1]:box[3], box[0]:box[2]]
                    inside = rasterise_geometry(part, box[:2], region.shape)
                    assert inside.sum() > 5
                    assert region[inside].mean() < 0.8 * np.median(image[100:280, 150:350])


def test_exactly_one_slight_overlap(demo):
    out, _ = demo
    overlaps = []
    for image_name, features in _all_features(out).items():
        geoms = [shape(f["geometry"]) for f in features if f["geometry"]["type"] != "LineString"]
        for i, a in enumerate(geoms):
            for b in geoms[i + 1:]:
                if a.intersection(b).area > 0:
                    overlaps.append((image_name, a.intersection(b).area / min(a.area, b.area)))
    assert len(overlaps) == 1
    assert overlaps[0][0] == "demo_000.jpg" and 0.0 < overlaps[0][1] < 0.15


def test_crops_are_roi_bounding_boxes(demo):
    out, result = demo
    crops = sorted(p.name for p in (out / "crops").iterdir())
    assert crops == sorted(p.name for p in result.crops)
    features = _all_features(out)
    n_polygons = sum(f["geometry"]["type"] != "LineString" for fs in features.values() for f in fs)
    assert len(crops) == n_polygons
    images = {name: read_image(out / "images" / name) for name in features}
    seen_unclassified = False
    for name in crops:
        match = CROP_NAME.match(name)
        assert match, name
        feature = features[match["image"]][int(match["i"]) - 1]  # i counts features from 1
        cls = feature["properties"].get("classification", {}).get("name")
        assert match["cls"] == cls
        seen_unclassified |= cls is None
        image = images[match["image"]]
        x0, y0, x1, y1 = roi_pixel_bounds(shape(feature["geometry"]).bounds, image.shape[:2])
        crop = tifffile.imread(out / "crops" / name)
        assert crop.dtype == image.dtype and crop.shape == image[y0:y1, x0:x1].shape
        np.testing.assert_array_equal(crop, image[y0:y1, x0:x1])
    assert seen_unclassified
    assert any("Annotation (Filled-in)_" in c for c in crops) and any("Annotation (Filled in)_" in c for c in crops)


def test_objects_csv_matches_features(demo):
    out, result = demo
    table = pd.read_csv(out / "objects.csv", keep_default_na=False)
    features = _all_features(out)
    assert len(table) == sum(len(fs) for fs in features.values()) == result.n_objects
    assert set(table["class"]) - {""} == set(CLASSES)  # "Filled-in" canonicalised
    assert {"Filled in", "Filled-in"} <= set(table["class_as_annotated"])
    counts = table[table["kind"] == "organoid"]["class"].value_counts().to_dict()
    assert counts == result.class_counts
    by_id = {f["id"]: (name, f) for name, fs in features.items() for f in fs}
    for row in table.itertuples():
        name, feature = by_id[row.id]
        assert row.image == name and row.stem == name.rsplit(".", 1)[0]
        assert row.geometry == feature["geometry"]["type"]
        geom = shape(feature["geometry"])
        assert row.area == pytest.approx(geom.area, abs=0.01)
        assert row.centroid_x == pytest.approx(geom.centroid.x, abs=0.01)
        if row.geometry != "LineString":
            assert (out / "crops" / row.crop).is_file()
    # Class balance: every class has a fair share of the organoids.
    assert min(result.class_counts.values()) >= 0.1 * sum(result.class_counts.values())


def _class_stats(out, skip_holes=False):
    """Per class: mean object grey / local background median (``skip_holes``: without ring cysts)."""
    ratios: dict[str, list[float]] = {}
    for image_name, features in _all_features(out).items():
        image = _grey(read_image(out / "images" / image_name))
        if image.max() > 255:
            image = image / 257.0
        everything = np.zeros(image.shape, bool)
        boxes = []
        for f in features:
            if f["geometry"]["type"] == "LineString":
                continue
            box = roi_pixel_bounds(shape(f["geometry"]).bounds, image.shape)
            mask = rasterise_geometry(f["geometry"], box[:2], (box[3] - box[1], box[2] - box[0]))
            everything[box[1]:box[3], box[0]:box[2]] |= mask
            boxes.append((f, box, mask))
        for f, (x0, y0, x1, y1), mask in boxes:
            cls = f["properties"].get("classification", {}).get("name")
            if cls is None or (skip_holes and f["geometry"]["type"] == "Polygon"
                               and len(f["geometry"]["coordinates"]) > 1):
                continue
            # Local background: the box grown by 10 px, without any object.
            gy0, gx0 = max(y0 - 10, 0), max(x0 - 10, 0)
            grown = image[gy0:y1 + 10, gx0:x1 + 10]
            background = np.median(grown[~everything[gy0:y1 + 10, gx0:x1 + 10]])
            ratios.setdefault(cls.replace("-", " "), []).append(image[y0:y1, x0:x1][mask].mean() / background)
    return {cls: float(np.mean(v)) for cls, v in ratios.items()}


def test_organoids_darker_than_background_and_classes_differ(demo):
    out, _ = demo
    ratio = _class_stats(out)
    assert set(ratio) == set(CLASSES)
    for cls, value in ratio.items():
        assert value < 0.85, (cls, value)
    assert ratio["Burned out"] < 0.3
    assert ratio["Burned out"] < ratio["Filled in"] - 0.15
    assert ratio["Filled in"] < ratio["Cyst"] - 0.15
    assert ratio["Filled in"] < ratio["Early branching"]


def test_object_boundaries_match_pixels(demo):
    """Inside a filled/burned-out polygon nearly every pixel is dark; just outside, nearly none."""
    out, _ = demo
    from scipy import ndimage as ndi

    image_name = "demo_001.tif"
    image = read_image(out / "images" / image_name).astype(float)
    checked = 0
    for f in _features(out, image_name):
        cls = f["properties"].get("classification", {}).get("name", "")
        if cls not in ("Filled-in", "Burned out") or f["geometry"]["type"] != "Polygon":
            continue
        x0, y0, x1, y1 = roi_pixel_bounds(shape(f["geometry"]).bounds, image.shape)
        pad = 4
        box = (x0 - pad, y0 - pad)
        region = image[y0 - pad:y1 + pad, x0 - pad:x1 + pad]
        inside = rasterise_geometry(f["geometry"], box, region.shape)
        outside = ndi.binary_dilation(inside, iterations=3) & ~ndi.binary_dilation(inside, iterations=1)
        background = np.median(region[~ndi.binary_dilation(inside, iterations=2)])
        threshold = 0.8 * background
        assert (region[inside] < threshold).mean() > 0.95
        assert (region[outside] < threshold).mean() < 0.1
        checked += 1
    assert checked >= 2


def test_same_seed_same_bytes_different_seed_different_data(demo, tmp_path):
    out, _ = demo
    again = make_demo_data(tmp_path / "again", n_images=4, seed=3, size=SIZE)
    assert _digest(tmp_path / "again") == _digest(out)
    assert {p.suffix for p in again.images} == {".jpg", ".tif"}
    make_demo_data(tmp_path / "other", n_images=4, seed=4, size=SIZE)
    a, b = _digest(out), _digest(tmp_path / "other")
    for name in ("images/demo_000.jpg", "images/demo_001.tif", "geojsons/demo_001.tif.geojson"):
        assert a[name] != b[name]


def test_image_does_not_depend_on_number_of_images(tmp_path):
    make_demo_data(tmp_path / "three", n_images=3, seed=1, size=(192, 256))
    make_demo_data(tmp_path / "four", n_images=4, seed=1, size=(192, 256))
    for name in ("images/demo_002.jpg", "geojsons/demo_002.jpg.geojson"):
        assert (tmp_path / "three" / name).read_bytes() == (tmp_path / "four" / name).read_bytes()


def test_single_image_holds_all_special_cases(tmp_path):
    result = make_demo_data(tmp_path / "one", n_images=1, seed=0, size=(380, 504))
    features = _features(tmp_path / "one", "demo_000.jpg")
    kinds = [f["geometry"]["type"] for f in features]
    assert "MultiPolygon" in kinds and "LineString" in kinds
    assert any(len(f["geometry"]["coordinates"]) > 1 for f in features if f["geometry"]["type"] == "Polygon")
    assert any("classification" not in f["properties"] and f["geometry"]["type"] == "Polygon" for f in features)
    assert result.n_objects == len(features)


def test_refuses_non_empty_output_without_overwrite(demo, tmp_path):
    out, _ = demo
    before = _digest(out)
    with pytest.raises(OutputError, match="not empty"):
        make_demo_data(out, n_images=1, size=SIZE)
    assert _digest(out) == before
    target = tmp_path / "target"
    target.mkdir()
    (target / "notes.txt").write_text("keep")
    make_demo_data(target, n_images=1, size=(128, 128), overwrite=True)
    assert (target / "notes.txt").read_text() == "keep" and (target / "images" / "demo_000.jpg").is_file()


@pytest.mark.parametrize("kwargs, message", [
    ({"n_images": 0}, "n_images"),
    ({"size": (100, 500)}, "at least 128"),
    ({"size": (500,)}, "size"),
    ({"seed": -1}, "seed"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(OrgasegError, match=message):
        make_demo_data(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["demo-data", "--out", str(out), "--n-images", "2", "--size", "192x256", "--seed", "5"]) == 0
    assert "2 images of 192x256 px" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "images").iterdir()) == ["demo_000.jpg", "demo_001.tif"]
    assert read_image(out / "images" / "demo_001.tif").shape == (192, 256)
    assert main(["demo-data", "--out", str(out), "--n-images", "2"]) == 1  # not empty
    assert main(["demo-data", "--out", str(tmp_path / "bad"), "--size", "100x100"]) == 2  # an out-of-range value is a usage error


# ---------------------------------------------------------------------------------------------
# The faint style


@pytest.fixture(scope="module")
def faint(tmp_path_factory):
    """The faint style and the default style, same seed and size."""
    base = tmp_path_factory.mktemp("styles")
    faint_result = make_demo_data(base / "faint", n_images=3, seed=7, size=SIZE, style="faint")
    default_result = make_demo_data(base / "default", n_images=3, seed=7, size=SIZE)
    return base, faint_result, default_result


def test_faint_style_is_reproducible_and_differs_from_default(faint, tmp_path):
    base, result, default = faint
    assert result.style == "faint" and default.style == "default" and set(STYLES) == {"default", "faint"}
    assert json.loads((base / "faint" / "run.json").read_text())["arguments"]["style"] == "faint"
    assert json.loads((base / "default" / "run.json").read_text())["arguments"]["style"] == "default"
    assert "style: faint" in result.summary()
    make_demo_data(tmp_path / "again", n_images=3, seed=7, size=SIZE, style="faint")
    a, b = _digest(base / "faint"), _digest(tmp_path / "again")
    assert a == b
    other = _digest(base / "default")
    for name in ("images/demo_000.jpg", "images/demo_001.tif", "geojsons/demo_002.jpg.geojson"):
        assert a[name] != other[name]


def test_faint_style_keeps_the_special_cases(faint):
    base, result, _ = faint
    table = pd.read_csv(base / "faint" / "objects.csv", keep_default_na=False)
    assert set(table["class"]) - {""} == set(CLASSES)
    assert {"Filled in", "Filled-in"} <= set(table["class_as_annotated"])
    assert (table["geometry"] == "MultiPolygon").sum() >= 2 and (table["n_holes"] > 0).sum() >= 2
    assert (table["geometry"] == "LineString").sum() == 1
    assert ((table["class"] == "") & (table["geometry"] == "Polygon")).sum() == 1
    assert len(result.crops) == (table["geometry"] != "LineString").sum()


def test_faint_cysts_brighter_than_background_others_darker(faint):
    base, _, _ = faint
    ratio = _class_stats(base / "faint", skip_holes=True)
    assert set(ratio) == set(CLASSES)
    assert ratio["Cyst"] > 1.0, ratio  # bright lumen, thin wall barely darker than the background
    assert ratio["Cyst"] < 1.15
    assert ratio["Burned out"] < 0.35
    for cls in ("Filled in", "Early branching", "Branched"):
        assert 0.45 < ratio[cls] < 0.9, (cls, ratio)  # moderately dark: lower contrast than default
    default = _class_stats(base / "default", skip_holes=True)
    assert default["Cyst"] < 0.95 and default["Filled in"] < ratio["Filled in"] - 0.1


def test_faint_objects_smaller_than_default(faint):
    base, _, _ = faint
    areas = {}
    for style in ("faint", "default"):
        table = pd.read_csv(base / style / "objects.csv", keep_default_na=False)
        areas[style] = table[table["kind"] == "organoid"]["area"].mean()
    assert areas["faint"] < 0.65 * areas["default"]  # radii about 0.6x: areas about 0.36x


def test_faint_field_is_flat_without_vignette(faint):
    base, result, _ = faint
    for path in result.images:
        image = _grey(read_image(path))
        if image.max() > 255:
            image = image / 257.0
        background = np.median(image)
        assert 140 < background < 200
        corners = [image[:6, :6], image[:6, -6:], image[-6:, :6], image[-6:, -6:]]
        for corner in corners:
            assert abs(np.median(corner) / background - 1.0) < 0.1


def test_unknown_style_is_an_error(tmp_path, capsys):
    with pytest.raises(OrgasegError, match="known styles: default, faint") as info:
        make_demo_data(tmp_path / "out", n_images=1, size=(128, 128), style="bright")
    assert "\n" not in str(info.value) and "'bright'" in str(info.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(OrgasegError, match="unknown demo style"):
        synthesise_image((128, 128), np.random.default_rng(0), style="Faint")
    out = tmp_path / "cli"
    assert main(["demo-data", "--out", str(out), "--size", "128x160", "--n-images", "1", "--style", "nope"]) == 2
    assert "known styles" in capsys.readouterr().err
    assert main(["demo-data", "--out", str(out), "--size", "128x160", "--n-images", "1", "--style", "faint"]) == 0
    assert json.loads((out / "run.json").read_text())["arguments"]["style"] == "faint"
