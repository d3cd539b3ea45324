"""annotations-to-masks: exact rasterisation, overlap rule, the step on folders, bad inputs, CLI."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import shapely
import tifffile
from PIL import Image
from shapely.geometry import MultiPolygon, Polygon, box
from skimage.measure import regionprops

from orgaseg_core.cli import main as cli_main
from orgaseg_core.common.errors import InputFileError, OrgasegError, OutputError
from orgaseg_core.data.masks import (
    OBJECT_COLUMNS,
    annotations_to_masks,
    object_measurements,
    rasterize_objects,
)

# --- rasterize_objects -------------------------------------------------------------------------

def test_rectangle_exact_pixels():
    labels, report = rasterize_objects([Polygon([(10, 10), (20, 10), (20, 30), (10, 30)])], (50, 40))
    assert labels.dtype == np.uint16 and labels.shape == (50, 40)
    rows, cols = np.nonzero(labels)
    assert rows.size == 200 and set(labels[rows, cols]) == {1}
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (10, 29, 10, 19)
    assert report.pixel_counts.tolist() == [200] and not report.vanished and not report.overlaps


def test_pixel_centre_rule_for_fractional_vertices():
    # Centres at c + 0.5: x in [10.4, 12.6) holds centres 10.5, 11.5, 12.5; y in [3.5, 5.5) holds 3.5, 4.5.
    labels, _ = rasterize_objects([box(10.4, 3.5, 12.6, 5.5)], (10, 20))
    expected = np.zeros((10, 20), bool)
    expected[3:5, 10:13] = True
    np.testing.assert_array_equal(labels > 0, expected)


def test_shared_edge_gives_each_pixel_to_one_object():
    labels, report = rasterize_objects([box(0, 0, 5.5, 10), box(5.5, 0, 10, 10)], (10, 10))
    assert (labels > 0).all() and not report.overlaps
    assert report.pixel_counts.tolist() == [50, 50]  # centre 5.5 goes to the right-hand object


def test_hole_stays_background():
    ring = Polygon([(0, 0), (20, 0), (20, 20), (0, 20)], [[(5, 5), (15, 5), (15, 15), (5, 15)]])
    labels, report = rasterize_objects([ring], (30, 30))
    assert (labels[5:15, 5:15] == 0).all()
    assert (labels == 1).sum() == 400 - 100 == report.pixel_counts[0]


def test_object_in_a_hole_is_not_erased_even_when_drawn_first():
    # The thin ring (area 400 - 324 = 76) is smaller than the disc in its hole (area 144), so it
    # is drawn after the disc; its hole must not erase the disc.
    ring = Polygon([(0, 0), (20, 0), (20, 20), (0, 20)], [[(1, 1), (19, 1), (19, 19), (1, 19)]])
    inner = box(4, 4, 16, 16)
    labels, report = rasterize_objects([ring, inner], (25, 25))
    assert (labels == 2).sum() == 144 and (labels == 1).sum() == 76
    assert not report.overlaps


def test_multipolygon_parts_share_one_label():
    multi = MultiPolygon([box(0, 0, 4, 4), box(10, 10, 13, 12)])
    labels, report = rasterize_objects([box(20, 0, 22, 2), multi], (30, 30))
    assert (labels[0:4, 0:4] == 2).all() and (labels[10:12, 10:13] == 2).all()
    assert (labels == 2).sum() == 16 + 6 and (labels == 1).sum() == 4
    assert report.pixel_counts.tolist() == [4, 22]


def test_overlap_smaller_on_top_and_reported():
    big, small = box(0, 0, 20, 20), box(15, 15, 25, 25)  # overlap 5x5 = 25 px
    labels, report = rasterize_objects([small, big], (30, 30))  # order in the list must not matter
    assert (labels[15:20, 15:20] == 1).all()
    assert report.pixel_counts.tolist() == [100, 400 - 25]
    assert report.overlaps == [(2, 1, 25)]  # label 2 (big) lost 25 px to label 1 (small)
    assert "1 overlapping pairs (25 pixels" in report.describe()


def test_equal_areas_later_object_wins():
    labels, report = rasterize_objects([box(0, 0, 10, 10), box(5, 0, 15, 10)], (10, 20))
    assert (labels[:, 5:10] == 2).all()
    assert report.overlaps == [(1, 2, 50)] and report.pixel_counts.tolist() == [50, 100]


def test_vanished_objects_are_reported_by_cause():
    geoms = [box(0, 0, 10, 10),        # 1: drawn, then partly covered
             box(2, 2, 4, 4),          # 2: inside 1, drawn on top (smaller)
             box(2, 2, 4, 4),          # 3: same area as 2, drawn after it -> 2 is covered
             box(50, 50, 60, 60),      # 4: entirely outside the image
             box(5.6, 5.6, 5.9, 5.9),  # 5: covers no pixel centre
             box(-5, -5, 1, 1)]        # 6: partly outside: clipped to 1 pixel
    labels, report = rasterize_objects(geoms, (20, 20))
    assert report.covered == [2] and report.outside == [4] and report.too_small == [5]
    assert report.vanished == [2, 4, 5]
    assert report.pixel_counts.tolist() == [100 - 4 - 1, 0, 4, 0, 0, 1]
    assert labels[0, 0] == 6 and set(np.unique(labels)) == {0, 1, 3, 6}
    assert (1, 2, 4) in report.overlaps and (2, 3, 4) in report.overlaps and (1, 6, 1) in report.overlaps
    text = report.describe()
    assert "outside the image (labels 4)" in text and "completely covered" in text


def test_more_than_65535_objects_give_uint32():
    n, side = 65_536, 256
    rows, cols = np.divmod(np.arange(n), side)
    squares = list(shapely.box(cols, rows, cols + 1, rows + 1))
    labels, report = rasterize_objects(squares, (side, side))
    assert labels.dtype == np.uint32
    np.testing.assert_array_equal(labels.ravel(), np.arange(1, n + 1))
    assert not report.vanished
    small, _ = rasterize_objects(squares[:65_535], (side, side))
    assert small.dtype == np.uint16 and small.max() == 65_535


def test_empty_input_gives_empty_uint16_image():
    labels, report = rasterize_objects([], (7, 9))
    assert labels.shape == (7, 9) and labels.dtype == np.uint16 and not labels.any()
    assert report.n_objects == 0


def test_matches_brute_force_centre_test_on_random_polygons():
    rng = np.random.default_rng(42)
    height, width = 40, 50
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(60):
        outer = Polygon(rng.uniform(-5, 55, size=(rng.integers(3, 15), 2)))
        geom = shapely.make_valid(outer)
        polys = [p for p in getattr(geom, "geoms", [geom]) if p.geom_type == "Polygon" and p.area > 0]
        if not polys:
            continue
        geom = polys[0] if len(polys) == 1 else MultiPolygon(polys)
        labels, _ = rasterize_objects([geom], (height, width))
        inside = shapely.contains_xy(geom, xx + 0.5, yy + 0.5)
        np.testing.assert_array_equal(labels > 0, inside)


def test_object_measurements_match_regionprops():
    geoms = [box(3, 2, 9, 7), Polygon([(20, 5), (30, 25), (12, 28)]), box(50, 50, 51, 51)]
    labels, _ = rasterize_objects(geoms, (40, 40))
    table = object_measurements(labels, 3)
    props = {p.label: p for p in regionprops(labels)}
    for _, row in table.iloc[:2].iterrows():
        p = props[row["label"]]
        assert row["area_px"] == p.area
        assert (row["bbox_min_row"], row["bbox_min_col"], row["bbox_max_row"], row["bbox_max_col"]) == p.bbox
        assert row["centroid_row"] == pytest.approx(p.centroid[0])
        assert row["centroid_col"] == pytest.approx(p.centroid[1])
    assert table.loc[2, "area_px"] == 0 and pd.isna(table.loc[2, "bbox_min_row"])
    assert np.isnan(table.loc[2, "centroid_row"])


# --- the step on folders -----------------------------------------------------------------------

def rect(x0, y0, x1, y1):
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def feat(geometry, cls=None, fid=None, name=None):
    props = {"objectType": "annotation"}
    if cls is not None:
        props["classification"] = {"name": cls, "color": [255, 0, 0]}
    if name is not None:
        props["name"] = name
    return {"type": "Feature", "id": fid, "geometry": geometry, "properties": props}


def dump(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def project(tmp_path):
    """Annotations for a.jpg (QuPath-style name a.jpg.geojson) and b.tif, and an unannotated c.png."""
    ann, img = tmp_path / "geojsons", tmp_path / "images"
    ann.mkdir()
    img.mkdir()
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(img / "a.jpg")
    tifffile.imwrite(img / "b.tif", np.zeros((30, 20), np.uint16))
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(img / "c.png")
    dump(ann / "a.jpg.geojson", {"type": "FeatureCollection", "features": [
        feat(rect(10, 10, 20, 30), "Filled-in", "id-a1", "first"),
        feat(rect(30, 5, 40, 10), "filled in", "id-a2"),
        feat(rect(0, 0, 5, 5)),                                        # unclassified
        feat({"type": "LineString", "coordinates": [[0, 0], [9, 9]]}, "Cyst"),
        feat({"type": "Point", "coordinates": [3, 3]}, "Cyst"),
        feat({"type": "MultiPolygon", "coordinates": [rect(45, 20, 50, 22)["coordinates"],
                                                      rect(52, 30, 55, 32)["coordinates"]]}, "Cyst", "id-a3"),
    ]})
    dump(ann / "b.geojson", [feat(rect(0, 0, 20, 30), "Ring", "id-b1"),     # bare list of features
                             feat(rect(5, 5, 10, 10), "Cyst", "id-b2")])
    return tmp_path, ann, img


def test_step_writes_label_images_and_tables(project, unchanged):
    root, ann, img = project
    checks = [unchanged(ann), unchanged(img)]
    out = root / "masks"
    result = annotations_to_masks(ann, img, out)
    for check in checks:
        check()

    assert sorted(p.name for p in out.iterdir()) == [
        "a.tif", "a_objects.csv", "b.tif", "b_objects.csv", "classes.csv", "run.json"]
    a = tifffile.imread(out / "a.tif")
    assert a.shape == (40, 60) and a.dtype == np.uint16
    assert (a == 1).sum() == 200 and (a[10:30, 10:20] == 1).all()
    assert (a == 2).sum() == 50 and (a == 3).sum() == 10 + 6 and set(np.unique(a)) == {0, 1, 2, 3}

    table = pd.read_csv(out / "a_objects.csv")
    assert list(table.columns) == OBJECT_COLUMNS
    assert table["label"].tolist() == [1, 2, 3]
    # spellings merged, the first one found kept exactly (QuPath knows that class)
    assert table["class"].tolist() == ["Filled-in", "Filled-in", "Cyst"]
    assert table["feature_id"].tolist() == ["id-a1", "id-a2", "id-a3"]
    assert table["name"].iloc[0] == "first" and table["name"].isna().iloc[1:].all()
    assert table["area_px"].tolist() == [200, 50, 16]
    assert table["polygon_area"].tolist() == [200.0, 50.0, 16.0]
    first = table.iloc[0]
    assert (first.bbox_min_row, first.bbox_min_col, first.bbox_max_row, first.bbox_max_col) == (10, 10, 30, 20)
    assert (first.centroid_row, first.centroid_col) == (19.5, 14.5)
    assert (table["image"] == "a").all()

    b = tifffile.imread(out / "b.tif")
    assert b.shape == (30, 20)
    assert (b[5:10, 5:10] == 2).all() and (b == 1).sum() == 600 - 25  # small one on top

    classes = pd.read_csv(out / "classes.csv")
    assert dict(zip(classes["class"], classes["count"])) == {"Cyst": 2, "Filled-in": 2, "Ring": 1}
    assert dict(zip(classes["class"], classes["images"])) == {"Cyst": 2, "Filled-in": 1, "Ring": 1}
    assert dict(zip(classes["class"], classes["folder"])) == {"Cyst": "Cyst", "Filled-in": "Filled-in",
                                                              "Ring": "Ring"}

    assert result.class_counts == {"Cyst": 2, "Filled-in": 2, "Ring": 1} and result.n_objects == 5
    assert result.skipped == {"LineString": 1, "Point": 1, "unclassified": 1}
    assert result.images_without_annotations == ["c.png"] and not result.errors
    assert result.n_overlaps == 1
    summary = result.summary()
    assert "2 label images with 5 objects" in summary and "c.png" in summary
    assert "3 skipped: 1 LineString, 1 Point, 1 unclassified" in summary

    run = json.loads((out / "run.json").read_text())
    assert run["step"] == "annotations-to-masks" and run["status"] == "ok"
    assert run["results"]["skipped_features"] == {"LineString": 1, "Point": 1, "unclassified": 1}
    assert run["results"]["errors"] == []


def test_keep_unclassified_and_class_map(project, tmp_path):
    _, ann, img = project
    class_map = dump(tmp_path / "map.json", {"filled in": "Filled", "cyst": "Cystic"})
    result = annotations_to_masks(ann, img, tmp_path / "out", keep_unclassified=True, class_map=class_map)
    table = pd.read_csv(tmp_path / "out" / "a_objects.csv")
    assert table["class"].tolist() == ["Filled", "Filled", "Unclassified", "Cystic"]
    assert table["area_px"].tolist() == [200, 50, 25, 16]
    assert result.class_counts == {"Cystic": 2, "Filled": 2, "Ring": 1, "Unclassified": 1}


def test_output_folder_not_empty_is_refused(project):
    root, ann, img = project
    out = root / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not empty"):
        annotations_to_masks(ann, img, out)
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    annotations_to_masks(ann, img, out, overwrite=True)
    assert (out / "a.tif").is_file() and (out / "old.txt").read_text() == "keep me"


def test_missing_image_fails_that_file_and_the_run_but_writes_the_rest(project, unchanged):
    root, ann, img = project
    dump(ann / "zzz.geojson", [feat(rect(0, 0, 2, 2), "Cyst")])
    check = unchanged(ann)
    out = root / "out"
    with pytest.raises(OrgasegError) as info:
        annotations_to_masks(ann, img, out)
    check()
    message = str(info.value)
    assert "1 of 3 GeoJSON files failed" in message
    assert str(ann / "zzz.geojson") in message and "zzz.tif" in message and "zzz.jpg" in message
    assert (out / "a.tif").is_file() and (out / "b.tif").is_file() and not (out / "zzz.tif").exists()
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed"
    assert [e["file"] for e in run["results"]["errors"]] == ["zzz.geojson"]


@pytest.mark.parametrize("case, content, expected", [
    ("empty", "", "empty (0 bytes)"),
    ("not-features", '{"type": "Foo"}', "no 'features'"),
    ("bad-json", '{"features": [', "not valid JSON"),
    ("all-unknown", json.dumps([feat({"type": "Circle", "coordinates": [1, 1]}, "Cyst")]),
     "no usable object: every feature was skipped (1 skipped: 1 unknown geometry type 'Circle')"),
    ("unsafe-class", json.dumps([feat(rect(0, 0, 2, 2), "../evil")]), "class '../evil'"),
    ("unsafe-class-2", json.dumps([feat(rect(0, 0, 2, 2), "a/b")]), "class 'a/b' cannot be used"),
])
def test_bad_geojson_is_named_in_the_error(project, case, content, expected):
    root, ann, img = project
    bad = ann / f"{case}.geojson"
    bad.write_text(content, encoding="utf-8")
    tifffile.imwrite(img / f"{case}.tif", np.zeros((10, 10), np.uint8))
    out = root / "out"
    with pytest.raises(OrgasegError) as info:
        annotations_to_masks(ann, img, out)
    assert f"{bad}: " in str(info.value) and expected in str(info.value)
    assert not (out / f"{case}.tif").exists() and (out / "a.tif").is_file()
    assert not list(out.glob(".*"))  # no temporary files left


def test_corrupt_tiff_image_is_named(project):
    root, ann, img = project
    (img / "b.tif").write_bytes(b"this is not a tiff at all")
    with pytest.raises(OrgasegError) as info:
        annotations_to_masks(ann, img, root / "out")
    assert f"{img / 'b.tif'}: cannot be read as an image" in str(info.value)
    assert (root / "out" / "a.tif").is_file()


def test_mixed_file_with_unknown_geometry_warns_and_keeps_the_rest(project, caplog):
    root, ann, img = project
    dump(ann / "b.geojson", [feat({"type": "Circle", "coordinates": [1, 1]}, "Cyst"),
                             feat(rect(0, 0, 3, 3), "Cyst")])
    with caplog.at_level(logging.WARNING):
        result = annotations_to_masks(ann, img, root / "out")
    assert f"{ann / 'b.geojson'}: feature 0 skipped: unknown geometry type 'Circle'" in caplog.text
    assert result.skipped["unknown geometry type 'Circle'"] == 1
    assert (tifffile.imread(root / "out" / "b.tif") == 1).sum() == 9


def test_empty_collection_and_unclassified_only_write_empty_masks(project, caplog):
    root, ann, img = project
    dump(ann / "a.jpg.geojson", {"type": "FeatureCollection", "features": []})
    dump(ann / "b.geojson", [feat(rect(0, 0, 3, 3))])
    with caplog.at_level(logging.WARNING):
        result = annotations_to_masks(ann, img, root / "out")
    assert "no features at all" in caplog.text and "--keep-unclassified" in caplog.text
    for stem, shape in (("a", (40, 60)), ("b", (30, 20))):
        labels = tifffile.imread(root / "out" / f"{stem}.tif")
        assert labels.shape == shape and not labels.any()
        assert list(pd.read_csv(root / "out" / f"{stem}_objects.csv").columns) == OBJECT_COLUMNS
    assert result.n_objects == 0 and not result.errors
    assert list(pd.read_csv(root / "out" / "classes.csv").columns) == ["class", "folder", "count", "images"]


def test_missing_input_folders_create_no_output(tmp_path, project):
    _, ann, img = project
    with pytest.raises(InputFileError, match="does not exist"):
        annotations_to_masks(tmp_path / "nope", img, tmp_path / "out")
    with pytest.raises(InputFileError, match="does not exist"):
        annotations_to_masks(ann, tmp_path / "nope", tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputFileError, match="no GeoJSON files"):
        annotations_to_masks(empty, img, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_exit_codes(project, capsys):
    root, ann, img = project
    assert cli_main(["annotations-to-masks", "--annotations", str(ann), "--images", str(img),
                     "--out", str(root / "ok")]) == 0
    assert "2 label images with 5 objects" in capsys.readouterr().out
    assert tifffile.imread(root / "ok" / "a.tif").max() == 3

    assert cli_main(["annotations-to-masks", "--annotations", str(ann), "--images", str(img),
                     "--out", str(root / "ok")]) == 1  # not empty
    assert "not empty" in capsys.readouterr().err

    dump(ann / "lonely.geojson", [feat(rect(0, 0, 2, 2), "Cyst")])
    assert cli_main(["annotations-to-masks", "--annotations", str(ann), "--images", str(img),
                     "--out", str(root / "bad"), "--keep-unclassified"]) == 1
    err = capsys.readouterr().err
    assert "lonely.geojson" in err and "no image" in err
