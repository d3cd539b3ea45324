"""QuPath fidelity (issue 12): every file shape and class form QuPath 0.4-0.6 reads and writes.

The project's own fixtures below cover each case; the real QuPath exports in
``../shared/realdata/qupath-geojson`` (not part of the repository: GPL-3.0 sources) are read
with the counts a QuPath user sees, and skipped when that folder is absent.
"""

from __future__ import annotations

import gzip
import json
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from orgaseg_core.common.classes import read_class_names
from orgaseg_core.common.errors import InputFileError
from orgaseg_core.data.masks import annotations_to_masks
from orgaseg_core.qupath.classes import classification_names, is_ignored_class
from orgaseg_core.qupath.geojson import load_features, parse_annotations, parse_object_types

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "qupath-geojson"


def rect(x0, y0, x1, y1, plane=None):
    geometry = {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}
    if plane is not None:
        geometry["plane"] = plane
    return geometry


def feat(geometry, classification=None, object_type="annotation", **extra):
    properties = {"objectType": object_type, **extra}
    if classification is not None:
        properties["classification"] = classification
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def names(objects):
    return [o.class_name for o in objects]


# --- classes ------------------------------------------------------------------------------------

def test_derived_classes_in_every_form_are_one_class_with_qupaths_display_name():
    features = [
        feat(rect(0, 0, 2, 2), {"names": ["Tumor", "Positive"], "color": [200, 50, 50]}),  # 0.4+
        feat(rect(0, 0, 2, 2), "Tumor: Positive"),                                        # string
        feat(rect(0, 0, 2, 2), {"name": "Tumor:Positive", "color": [1, 2, 3]}),            # proxy name
        # before 0.4: the parent chain; Stroma: Positive must stay apart from Tumor: Positive
        feat(rect(0, 0, 2, 2), {"name": "Positive", "colorRGB": -3394765,
                                "parentClass": {"name": "Tumor", "colorRGB": -3670016}}),
        feat(rect(0, 0, 2, 2), {"name": "Positive", "colorRGB": -3394765,
                                "parentClass": {"name": "Stroma", "colorRGB": -6895466}}),
    ]
    objects, skipped = parse_annotations(features, source="derived.geojson")
    assert names(objects) == ["Tumor: Positive"] * 4 + ["Stroma: Positive"]
    assert not skipped


def test_ignored_classes_are_skipped_with_a_counted_reason():
    features = [feat(rect(0, 0, 2, 2), {"name": "Ignore*", "color": [180, 180, 180]}),
                feat(rect(0, 0, 2, 2), {"name": "Region*", "color": [0, 0, 180]}),
                feat(rect(0, 0, 2, 2), {"names": ["Tumor", "Artefact*"], "color": [0, 0, 0]}),
                feat(rect(0, 0, 2, 2), {"name": "Cyst", "color": [0, 0, 0]})]
    objects, skipped = parse_annotations(features, source="x.geojson")
    assert names(objects) == ["Cyst"]
    assert skipped == {"ignored class 'Ignore*'": 1, "ignored class 'Region*'": 1,
                       "ignored class 'Tumor: Artefact*'": 1}
    assert is_ignored_class(["Ignore*"]) and not is_ignored_class(["Ignore*", "Positive"])


def test_first_spelling_is_kept_and_a_class_map_target_wins():
    features = [feat(rect(0, 0, 2, 2), {"name": "CD8 T cell"}),
                feat(rect(0, 0, 2, 2), {"name": "cd8 t-cell"}),
                feat(rect(0, 0, 2, 2), {"name": "Filled-in"}),
                feat(rect(0, 0, 2, 2), {"name": "filled in"})]
    objects, _ = parse_annotations(features, source="x.geojson")
    assert names(objects) == ["CD8 T cell", "CD8 T cell", "Filled-in", "Filled-in"]
    objects, _ = parse_annotations(features, source="x.geojson", class_map={"FILLED IN": "Solid"})
    assert names(objects)[2:] == ["Solid", "Solid"]


@pytest.mark.parametrize("value", [5, ["Cyst"], {"name": 3}, {"names": "Cyst"},
                                   {"names": ["Tumor", ""]}])
def test_malformed_classifications_raise_in_the_reader(value):
    with pytest.raises(ValueError):
        classification_names(value)


# --- objects ------------------------------------------------------------------------------------

def test_object_types_type_alias_and_nested_child_objects():
    parent = feat(rect(0, 0, 100, 100), {"name": "Region"}, childObjects=[
        feat(rect(10, 10, 20, 20), {"name": "Cyst"}, object_type="cell"),
        {"type": "Feature", "geometry": rect(30, 30, 40, 40),
         "properties": {"type": "detection", "classification": {"name": "Cyst"},
                        "childObjects": [feat(rect(32, 32, 34, 34), {"name": "Ring"}, "detection")]}},
    ])
    features = [parent, feat(rect(50, 50, 60, 60), {"name": "Cyst"}, "tile")]
    objects, skipped = parse_annotations(features, source="x.geojson")  # all types
    assert [(o.index, o.object_type, o.class_name) for o in objects] == [
        (0, "annotation", "Region"), (1, "cell", "Cyst"), (2, "detection", "Cyst"),
        (3, "detection", "Ring"), (4, "tile", "Cyst")]
    objects, skipped = parse_annotations(features, source="x.geojson",
                                         object_types=parse_object_types("detection,cell"))
    assert [o.index for o in objects] == [1, 2, 3]
    assert skipped == {"object type annotation": 1, "object type tile": 1}
    assert parse_object_types("all") is None
    assert parse_object_types("TMA_core,Annotation") == {"tmaCore", "annotation"}
    with pytest.raises(ValueError, match="'cells'"):
        parse_object_types("cells")


def test_planes_other_than_the_one_asked_for_are_counted(caplog):
    features = [feat(rect(0, 0, 2, 2), {"name": "Cyst"}),
                feat(rect(0, 0, 2, 2, plane={"c": -1, "z": 1, "t": 0}), {"name": "Cyst"}),
                feat(rect(0, 0, 2, 2, plane={"c": -1, "z": 1, "t": 0}), {"name": "Ring"}),
                feat(rect(0, 0, 2, 2, plane={"c": -1, "z": 0, "t": 2}), {"name": "Cyst"})]
    caplog.set_level("INFO")
    objects, skipped = parse_annotations(features, source="z.geojson")
    assert len(objects) == 1 and skipped == {"other plane": 3}
    assert any("objects on 3 z/t planes" in r.getMessage() for r in caplog.records)
    objects, skipped = parse_annotations(features, source="z.geojson", plane=(1, 0))
    assert names(objects) == ["Cyst", "Ring"] and skipped == {"other plane": 2}


# --- files --------------------------------------------------------------------------------------

def test_bare_geometry_gzip_and_zip_files(tmp_path):
    bare = tmp_path / "bare.geojson"
    bare.write_text(json.dumps({"type": "MultiPolygon", "coordinates": [rect(0, 0, 4, 4)["coordinates"]]}))
    features = load_features(bare)
    assert len(features) == 1 and features[0]["properties"]["objectType"] == "annotation"
    objects, skipped = parse_annotations(features, source=bare, keep_unclassified=True)
    assert len(objects) == 1 and objects[0].geometry.area == 16 and objects[0].class_name == "Unclassified"

    collection = {"type": "FeatureCollection",
                  "features": [feat(rect(0, 0, 2, 2), {"name": "Cyst", "color": [1, 2, 3]})]}
    gz = tmp_path / "a.jpg.geojson.gz"
    gz.write_bytes(gzip.compress(json.dumps(collection).encode()))
    assert load_features(gz) == collection["features"]

    archive = tmp_path / "b.zip"  # what QuPath's PathIO writes: one entry <name>.geojson
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("b.geojson", json.dumps(collection))
        z.writestr("notes.txt", "not read")
    assert load_features(archive) == collection["features"]

    (tmp_path / "bad.geojson.gz").write_bytes(b"not gzip")
    with pytest.raises(InputFileError, match="bad.geojson.gz: is not a valid gzip file"):
        load_features(tmp_path / "bad.geojson.gz")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as z:
        z.writestr("readme.txt", "x")
    with pytest.raises(InputFileError, match="no .geojson or .json entry"):
        load_features(tmp_path / "empty.zip")


def test_annotations_to_masks_reads_compressed_files_and_selects_object_types(tmp_path):
    """A parent rectangle annotation with cells inside: cells drawn without the rectangle under them."""
    ann, img = tmp_path / "ann", tmp_path / "img"
    ann.mkdir()
    img.mkdir()
    for stem in ("a", "b"):
        tifffile.imwrite(img / f"{stem}.tif", np.zeros((50, 50), np.uint8))
    cells = [feat(rect(5 + 10 * i, 5, 10 + 10 * i, 10), {"names": ["Tumor", "Positive"], "color": [1, 2, 3]},
                  object_type="cell") for i in range(3)]
    parent = feat(rect(0, 0, 45, 45), {"name": "Region annotation", "color": [4, 5, 6]})
    (ann / "a.jpg.geojson.gz").write_bytes(gzip.compress(json.dumps([parent] + cells).encode()))
    with zipfile.ZipFile(ann / "b.zip", "w") as z:
        z.writestr("b.geojson", json.dumps({"type": "FeatureCollection", "features": [
            feat(rect(1, 1, 5, 5), {"name": "Ignore*"}), feat(rect(20, 20, 30, 30), "tumor:positive")]}))

    out = annotations_to_masks(ann, img, tmp_path / "cells", object_types="cell,annotation")
    a = tifffile.imread(tmp_path / "cells" / "a.tif")
    assert set(np.unique(a)) == {0, 1, 2, 3, 4}  # rectangle + 3 cells on top
    out = annotations_to_masks(ann, img, tmp_path / "only-cells", object_types="cell")
    a = tifffile.imread(tmp_path / "only-cells" / "a.tif")
    assert set(np.unique(a)) == {0, 1, 2, 3} and (a > 0).sum() == 3 * 25  # no label under the cells
    assert out.skipped == {"object type annotation": 3}  # the rectangle and both of b
    table = pd.read_csv(tmp_path / "only-cells" / "a_objects.csv")
    assert table["class"].tolist() == ["Tumor: Positive"] * 3  # QuPath's display name, kept
    # b.zip holds an annotation only: nothing drawn when cells are asked for
    assert tifffile.imread(tmp_path / "only-cells" / "b.tif").max() == 0
    assert read_class_names(tmp_path / "only-cells") == {"Tumor - Positive": "Tumor: Positive"}

    # default: annotations only (a's cells are left out); b's string class reads as QuPath
    # shows it, its spelling kept
    out = annotations_to_masks(ann, img, tmp_path / "default")
    assert out.class_counts == {"Region annotation": 1, "tumor: positive": 1}
    assert out.skipped == {"ignored class 'Ignore*'": 1, "object type cell": 3}


# --- real QuPath exports (outside the repository) ------------------------------------------------

# file: (objects as annotations, objects of every type, skip reasons of the default reading)
REAL_COUNTS = {
    "MannLabs-py-lmd/annotated_regions_Qupath.geojson": (0, 0, {"Point": 3, "unclassified": 2}),
    "cosciaLab-Qupath_to_LMD/demo_Qupath_project_Single_cells.geojson":
        (7, 128, {"Point": 3, "object type cell": 121}),
    "cosciaLab-Qupath_to_LMD/demo_Qupath_project_TD_01_verysmall_mIF.geojson": (6, 6, {"Point": 3}),
    "cosciaLab-Qupath_to_LMD/demo_Qupath_project_tmp_20251117_P09_Liposarcoma_HE_membraneslide2_1_4041-25_ScanRegion2.geojson":
        (35, 35, {"Point": 3}),
    "cosciaLab-Qupath_to_LMD/tests_data_test.geojson": (2, 2, {"Point": 3}),
    "cosciaLab-Qupath_to_LMD/tests_data_test.group_labelled_shapes.geojson": (2, 2, {}),
    "cosciaLab-Qupath_to_LMD/tests_data_test_low_intersection.geojson": (1, 1, {"Point": 3}),
    "cosciaLab-Qupath_to_LMD/tests_data_test_missing_classification.geojson": (1, 1, {"unclassified": 1}),
    "cosciaLab-Qupath_to_LMD/tests_data_test_multipolygon.geojson": (2, 2, {}),
    "cosciaLab-Qupath_to_LMD/tests_data_test_point.geojson": (1, 1, {"Point": 1}),
    "qupath-core/polygon.geojson": (0, 0, {"unclassified": 1}),
}


@pytest.mark.skipif(not REALDATA.is_dir(), reason=f"real QuPath files not present ({REALDATA}); "
                                                   "the fixtures above cover the same cases")
@pytest.mark.parametrize("name", sorted(REAL_COUNTS))
def test_real_qupath_exports_are_read_with_the_expected_counts(name):
    path = REALDATA / name
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    annotations, every_type, skipped = REAL_COUNTS[name]
    features = load_features(path)
    objects, got = parse_annotations(features, source=path, object_types={"annotation"})
    assert (len(objects), dict(got)) == (annotations, skipped)
    objects, _ = parse_annotations(features, source=path, object_types=None)
    assert len(objects) == every_type
    if name.endswith("Single_cells.geojson"):
        cells, _ = parse_annotations(features, source=path, object_types={"cell"})
        assert Counter(names(cells)) == {"single_cells_demo": 121}
    if name == "qupath-core/polygon.geojson":  # a bare MultiPolygon: one annotation when kept
        kept, _ = parse_annotations(features, source=path, keep_unclassified=True)
        assert len(kept) == 1 and kept[0].geometry.area > 0


# --- the Groovy export script ------------------------------------------------------------------

GROOVY_SCRIPT = Path(__file__).resolve().parents[1] / "catalog" / "qupath" / "export_annotations_and_crops.groovy"
_PARSE_ONLY = """
import org.codehaus.groovy.control.*
def unit = new CompilationUnit()
unit.addSource(new File(args[0]))
unit.compile(Phases.CONVERSION)  // syntax only: QuPath's classes are not on this machine
println "parsed"
"""


@pytest.mark.skipif(__import__("shutil").which("groovy") is None,
                    reason="groovy is not installed (apt-get install groovy default-jre-headless); "
                           "QuPath itself cannot run here")
def test_the_groovy_export_script_parses(tmp_path):
    import subprocess

    checker = tmp_path / "parse.groovy"
    checker.write_text(_PARSE_ONLY)
    done = subprocess.run(["groovy", str(checker), str(GROOVY_SCRIPT)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "parsed" in done.stdout, done.stderr[-2000:]


def test_a_geojson_nested_100000_levels_deep_is_one_clear_error(tmp_path):
    deep = tmp_path / "deep.geojson"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputFileError, match="deep.geojson: JSON is nested too deeply"):
        load_features(deep)
    # nested childObjects beyond QuPath's depths are refused, not recursed into
    node = feat(rect(0, 0, 2, 2), {"name": "Cyst"})
    for _ in range(150):
        node = feat(rect(0, 0, 2, 2), {"name": "Cyst"}, childObjects=[node])
    with pytest.raises(InputFileError, match="x.geojson: childObjects nested more than 100 levels"):
        parse_annotations([node], source="x.geojson")
