"""QuPath GeoJSON reading (all file shapes, every malformed input) and writing."""

from __future__ import annotations

import json
import logging
import math

import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from orgaseg_core.common.errors import InputFileError
from orgaseg_core.qupath.geojson import (
    AnnotationObject,
    describe_skipped,
    feature_collection,
    is_problem_reason,
    load_features,
    make_feature,
    objects_to_features,
    parse_annotations,
    parse_geometry,
    new_run_ids,
    object_id,
    write_feature_collection,
)


def rect(x0, y0, x1, y1):
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def feature(geometry, classification=None, **properties):
    props = {"objectType": "annotation", **properties}
    if classification is not None:
        props["classification"] = classification
    return {"type": "Feature", "id": "id-%d" % len(json.dumps(geometry)), "geometry": geometry,
            "properties": props}


FEATURES = [feature(rect(0, 0, 10, 10), {"name": "Cyst", "color": [1, 2, 3]}),
            feature(rect(20, 20, 30, 40), {"name": "Ring", "colorRGB": -16776961})]


def write(path, data):
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


# --- load_features -----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", ["collection", "list", "wrapper", "single"])
def test_load_features_accepts_every_shape(tmp_path, shape):
    data = {"collection": {"type": "FeatureCollection", "features": FEATURES},
            "list": FEATURES,
            "wrapper": {"features": FEATURES},
            "single": FEATURES[0]}[shape]
    features = load_features(write(tmp_path / "a.geojson", data))
    expected = FEATURES[:1] if shape == "single" else FEATURES
    assert features == expected


def test_load_features_accepts_utf8_bom(tmp_path):
    path = tmp_path / "a.geojson"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(FEATURES).encode())
    assert len(load_features(path)) == 2


@pytest.mark.parametrize("content, message", [
    ("", "empty (0 bytes)"),
    ("  \n\t ", "only white space"),
    ('{"type": "FeatureCollection",\n "features": [1,]}', "line 2, column"),
    ('{"type": "Foo"}', "no 'features'"),
    ('"just a string"', "no 'features'"),
    ('{"type": "FeatureCollection", "features": 3}', "'features' must be a list"),
    ('[{"type": "Feature"}, 5]', "feature 1 is not a JSON object"),
])
def test_load_features_errors_name_the_file(tmp_path, content, message):
    path = write(tmp_path / "bad.geojson", content)
    with pytest.raises(InputFileError) as info:
        load_features(path)
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)


def test_load_features_missing_and_binary(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        load_features(tmp_path / "nope.geojson")
    path = tmp_path / "bin.geojson"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputFileError, match="not UTF-8"):
        load_features(path)


# --- parse_annotations ---------------------------------------------------------------------------

def test_classification_forms_and_alias_merging():
    features = [
        feature(rect(0, 0, 2, 2), {"name": "Filled-in", "color": [1, 2, 3]}),      # QuPath 0.3+
        feature(rect(0, 0, 2, 2), {"name": "filled  in", "colorRGB": -65536}),     # QuPath 0.2
        feature(rect(0, 0, 2, 2), "Filled_in"),                                    # plain string
        feature(rect(0, 0, 2, 2), {"name": "apoptotic"}),
        feature(rect(0, 0, 2, 2), {"names": ["Cyst"]}),
    ]
    objects, skipped = parse_annotations(features, source="x.geojson")
    # merged on a spelling-insensitive key; the FIRST spelling found is the name (never re-cased)
    assert [o.class_name for o in objects] == ["Filled-in"] * 3 + ["apoptotic", "Cyst"]
    assert not skipped


def test_class_map_applies_before_validation():
    features = [feature(rect(0, 0, 2, 2), {"name": "Tumor: Positive"}),
                feature(rect(0, 0, 2, 2), {"name": "burnt out"})]
    class_map = {"tumor: positive": "Tumour", "burnt out": "Burned out"}
    objects, _ = parse_annotations(features, source="x.geojson", class_map=class_map)
    assert [o.class_name for o in objects] == ["Tumour", "Burned out"]


def test_unclassified_skipped_or_kept():
    features = [feature(rect(0, 0, 2, 2)),                                   # no classification
                feature(rect(0, 0, 2, 2), {"name": None}),
                feature(rect(0, 0, 2, 2), {"name": "  "}),
                feature(rect(0, 0, 2, 2), {"name": "Cyst"})]
    objects, skipped = parse_annotations(features, source="x.geojson")
    assert [o.index for o in objects] == [3]
    assert skipped == {"unclassified": 3}
    objects, skipped = parse_annotations(features, source="x.geojson", keep_unclassified=True)
    assert [o.class_name for o in objects] == ["Unclassified"] * 3 + ["Cyst"]
    assert not skipped


def test_points_and_lines_are_counted_not_warned(caplog):
    cls = {"name": "Cyst"}
    features = [feature({"type": "Point", "coordinates": [1, 2]}, cls),
                feature({"type": "MultiPoint", "coordinates": [[1, 2], [3, 4]]}, cls),
                feature({"type": "LineString", "coordinates": [[1, 2], [3, 4]]}, cls),
                feature({"type": "LineString", "coordinates": [[1, 2], [3, 4]]}, cls),
                feature({"type": "MultiLineString", "coordinates": [[[1, 2], [3, 4]]]}, cls),
                feature(rect(0, 0, 5, 5), cls)]
    with caplog.at_level(logging.WARNING):
        objects, skipped = parse_annotations(features, source="x.geojson")
    assert len(objects) == 1 and objects[0].index == 5
    assert skipped == {"Point": 1, "MultiPoint": 1, "LineString": 2, "MultiLineString": 1}
    assert not caplog.records
    assert not any(is_problem_reason(r) for r in skipped)
    assert describe_skipped(skipped) == "5 skipped: 2 LineString, 1 MultiLineString, 1 MultiPoint, 1 Point"


def test_unknown_and_malformed_geometries_are_skipped_with_a_warning(caplog):
    cls = {"name": "Cyst"}
    features = [feature({"type": "Circle", "coordinates": [1, 2], "radius": 3}, cls),
                {"type": "Feature", "properties": {"classification": cls}},          # no geometry
                feature({"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}, cls),  # too short
                feature({"type": "Polygon", "coordinates": "abc"}, cls),
                feature({"type": "Polygon"}, cls),
                feature({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, float("nan")], [0, 0]]]}, cls),
                feature({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [2, 2], [0, 0]]]}, cls),  # no area
                feature(rect(0, 0, 4, 4), 7),                                      # bad classification
                feature(rect(0, 0, 4, 4), cls)]
    with caplog.at_level(logging.WARNING, logger="orgaseg_core.qupath.geojson"):
        objects, skipped = parse_annotations(features, source="mixed.geojson")
    assert [o.index for o in objects] == [8]
    assert skipped["unknown geometry type 'Circle'"] == 1
    assert skipped["no geometry"] == 1
    assert skipped["malformed Polygon coordinates"] == 3
    assert skipped["malformed Polygon coordinates (not finite)"] == 1
    assert skipped["zero-area Polygon"] == 1
    assert skipped["malformed classification"] == 1
    assert sum(skipped.values()) == 8
    assert all(is_problem_reason(r) for r in skipped)
    messages = [r.getMessage() for r in caplog.records]
    assert "mixed.geojson: feature 0 skipped: unknown geometry type 'Circle'" in messages
    assert len(messages) == 8 and all(m.startswith("mixed.geojson: feature ") for m in messages)


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", "a\\b", "x:../y"])
def test_unsafe_class_names_raise_naming_the_file(name):
    with pytest.raises(InputFileError) as info:
        parse_annotations([feature(rect(0, 0, 2, 2), {"name": name})], source="bad.geojson")
    assert str(info.value).startswith("bad.geojson: feature 0")
    assert "class map" in str(info.value)


def test_geometry_repair_collections_multipolygons_and_3d():
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [2, 2], [2, 0], [0, 2], [0, 0]]]}
    geom, reason, repaired = parse_geometry(bowtie)
    assert reason is None and repaired and geom.is_valid
    assert isinstance(geom, MultiPolygon) and math.isclose(geom.area, 2.0)

    multi = {"type": "MultiPolygon", "coordinates": [rect(0, 0, 2, 2)["coordinates"],
                                                     rect(5, 5, 6, 6)["coordinates"]]}
    geom, reason, repaired = parse_geometry(multi)
    assert isinstance(geom, MultiPolygon) and geom.area == 5 and not repaired

    collection = {"type": "GeometryCollection", "geometries": [
        rect(0, 0, 2, 2), {"type": "LineString", "coordinates": [[0, 0], [9, 9]]}, rect(1, 0, 3, 2)]}
    geom, reason, _ = parse_geometry(collection)
    assert isinstance(geom, Polygon) and geom.area == 6  # overlapping parts are merged

    lines_only = {"type": "GeometryCollection", "geometries": [
        {"type": "LineString", "coordinates": [[0, 0], [9, 9]]}]}
    assert parse_geometry(lines_only)[:2] == (None, "GeometryCollection without polygons")

    z = {"type": "Polygon", "coordinates": [[[0, 0, 5], [3, 0, 5], [3, 3, 5], [0, 0, 5]]]}
    geom, reason, _ = parse_geometry(z)
    assert not geom.has_z and geom.area == 4.5


def test_object_fields_and_legacy_object_type():
    features = [
        {"type": "Feature", "id": "PathDetectionObject", "geometry": rect(0, 0, 2, 2),
         "properties": {"classification": {"name": "Cyst", "colorRGB": -1}}},
        {"type": "Feature", "id": "7c0c-uuid", "geometry": rect(0, 0, 2, 2),
         "properties": {"objectType": "annotation", "name": "org 1", "classification": "Ring"}},
    ]
    objects, _ = parse_annotations(features, source="x.geojson")
    assert objects[0].object_type == "detection" and objects[0].name is None
    assert (objects[1].id, objects[1].name, objects[1].class_name, objects[1].object_type) == \
        ("7c0c-uuid", "org 1", "Ring", "annotation")


# --- writing -------------------------------------------------------------------------------------

def test_make_feature_qupath_format():
    f = make_feature(box(1, 2, 4, 6), class_name="Filled in",
                     measurements={"Area px": 12, "Circularity": 0.5, "bad": float("nan"),
                                   "big": float("inf")},
                     object_id="abc", name="n1")
    assert f["type"] == "Feature" and f["id"] == "abc"
    assert f["properties"]["objectType"] == "detection"
    assert f["properties"]["classification"] == {"name": "Filled in", "color": [214, 39, 40]}
    # not-finite values as QuPath writes them (MeasurementListTypeAdapter), not dropped
    assert f["properties"]["measurements"] == {"Area px": 12, "Circularity": 0.5, "bad": "NaN",
                                               "big": "Infinity"}
    assert f["properties"]["name"] == "n1"
    assert f["geometry"]["type"] == "Polygon"
    assert shapely.geometry.shape(f["geometry"]).equals(box(1, 2, 4, 6))

    plain = make_feature(box(0, 0, 1, 1), object_type="annotation", colour=(9, 8, 7), class_name="X")
    assert plain["properties"]["classification"]["color"] == [9, 8, 7]
    import uuid
    uuid.UUID(plain["id"])  # a random UUID by default
    with pytest.raises(ValueError):
        make_feature(box(0, 0, 1, 1), object_type="cell")


def test_object_ids_are_stable_within_a_run_and_new_for_every_run():
    run, other = new_run_ids(), new_run_ids()
    assert object_id(run, "img", 3) == object_id(run, "img", 3)
    assert object_id(run, "img", 3) != object_id(run, "img", 4)
    assert object_id(run, "img", 3) != object_id(other, "img", 3)


def test_write_round_trip(tmp_path):
    run = new_run_ids()
    geoms = [box(0, 0, 10, 20), MultiPolygon([box(30, 30, 31, 31), box(40, 40, 42, 42)]),
             Polygon([(50, 50), (60, 50), (60, 60), (50, 60)], [[(52, 52), (54, 52), (54, 54), (52, 54)]])]
    features = [make_feature(g, object_type="annotation", class_name=c,
                             object_id=object_id(run, "a", i), measurements={"i": i})
                for i, (g, c) in enumerate(zip(geoms, ["Cyst", "Ring", "Branched"]))]
    path = write_feature_collection(tmp_path / "out.geojson", features)
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 3
    objects, skipped = parse_annotations(load_features(path), source=path)
    assert not skipped
    assert [o.class_name for o in objects] == ["Cyst", "Ring", "Branched"]
    assert all(o.geometry.equals(g) for o, g in zip(objects, geoms))
    assert objects[2].geometry.area == 96
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind

    again = objects_to_features(objects)
    assert [f["id"] for f in again] == [f["id"] for f in features]
    assert feature_collection(again)["features"][1]["properties"]["classification"]["name"] == "Ring"


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_write_refuses_nan_geometry(tmp_path):
    with pytest.raises(ValueError):
        write_feature_collection(tmp_path / "x.geojson",
                                 [make_feature(Polygon([(0, 0), (1, float("nan")), (1, 1)]))])
    assert not (tmp_path / "x.geojson").exists()


def test_annotation_object_is_a_dataclass():
    o = AnnotationObject(index=0, id=None, name=None, class_name="Cyst", geometry=box(0, 0, 1, 1))
    assert o.object_type == "annotation" and not o.repaired
