"""The correction loop (issue 12): analyze -> corrected in QuPath -> training data -> retrained models.

A person opens ``analyze``'s QuPath file, reclassifies objects, deletes one and draws one, and
exports the objects again (simulated here by editing the GeoJSON as QuPath would write it: the
same detections with new classifications, a new annotation with a UUID). That file goes back
into training as it is: ``annotations-to-masks --object-types detection,annotation`` gives label
images and class tables, ``extract-objects --class-folders`` gives class folders of crops, and
both models retrain for a step. Every edit must be in the new training data.

Steps that may import TensorFlow or torch run as child processes (the orgaseg CLI); the
classifier is the measurements family and the segmentation model the pixel forest, so the test
needs neither framework and stays in the fast suite (about a minute on 2 cores).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import numpy as np
import pandas as pd
import pytest
import tifffile

from orgaseg_core import steps
from orgaseg_core.common.classes import read_class_names

pytest.importorskip("skops", reason="the measurement classifier needs scikit-learn and skops")


def orgaseg(*args) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "orgaseg_core", *map(str, args)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"orgaseg {' '.join(map(str, args[:1]))} failed:\n{done.stderr[-3000:]}"
    return done


def test_corrected_analyze_result_becomes_training_data(tmp_path):
    data = tmp_path / "data"
    steps.demo_data(data, n_images=6, seed=5, size=(240, 320))
    # The project's own spellings: "CD8 T cell" first, then variants of it in later files.
    # analyze must give back exactly the first spelling (never a re-cased "Cd8 t cell").
    annotated = tmp_path / "annotated"
    annotated.mkdir()
    for i, path in enumerate(sorted((data / "geojsons").glob("*.geojson"))):
        text = path.read_text().replace('"Cyst"', '"CD8 T cell"' if i == 0 else '"cd8 t-cell"')
        (annotated / path.name).write_text(text)
    steps.annotations_to_masks(annotated, data / "images", tmp_path / "masks")
    orgaseg("train-classifier", "--images", data / "images", "--masks", tmp_path / "masks",
            "--model-out", tmp_path / "classifier", "--families", "measurements", "--n-trees", 20)
    orgaseg("analyze", "--masks", tmp_path / "masks", "--classifier", tmp_path / "classifier",
            "--images", data / "images", "--out", tmp_path / "analysis")

    written = {f["properties"]["classification"]["name"]
               for path in (tmp_path / "analysis" / "qupath").glob("*.geojson")
               for f in json.loads(path.read_text())["features"] if "classification" in f["properties"]}
    assert "CD8 T cell" in written and not {"cd8 t-cell", "Cd8 t cell"} & written

    # --- the person's corrections, on the first image ----------------------------------------
    corrected = tmp_path / "corrected"
    corrected.mkdir()
    files = sorted((tmp_path / "analysis" / "qupath").glob("*.geojson"))
    assert len(files) == 6
    stem = files[0].name[: -len(".geojson")]
    collection = json.loads(files[0].read_text())
    classified = [f for f in collection["features"] if "classification" in f["properties"]]
    assert len(classified) >= 4
    classes = sorted({f["properties"]["classification"]["name"] for f in classified})
    relabelled = {}
    for feature in classified[:2]:  # reclassify two objects to another class
        old = feature["properties"]["classification"]["name"]
        new = next(c for c in classes if c != old)
        feature["properties"]["classification"] = {"name": new, "color": [10, 20, 30]}
        relabelled[feature["id"]] = new
    deleted = classified[2]["id"]
    collection["features"] = [f for f in collection["features"] if f["id"] != deleted]
    added = str(uuid.uuid4())  # a new annotation drawn in QuPath, in a corner
    collection["features"].append({
        "type": "Feature", "id": added,
        "geometry": {"type": "Polygon", "coordinates": [[[2, 2], [30, 2], [30, 24], [2, 24], [2, 2]]]},
        "properties": {"objectType": "annotation", "classification": {"name": classes[0], "color": [1, 2, 3]}}})
    (corrected / f"{stem}.geojson").write_text(json.dumps(collection))
    for other in files[1:]:
        (corrected / other.name).write_text(other.read_text())

    # --- back into training data ----------------------------------------------------------------
    steps.annotations_to_masks(corrected, data / "images", tmp_path / "masks2",
                                        object_types="detection,annotation")
    table = pd.read_csv(tmp_path / "masks2" / f"{stem}_objects.csv")
    by_id = dict(zip(table["feature_id"], table["class"]))
    assert deleted not in by_id
    assert by_id[added] == classes[0]
    for feature_id, new in relabelled.items():
        assert by_id[feature_id] == new
    assert len(table) == len(classified)  # one deleted, one added
    labels = tifffile.imread(tmp_path / "masks2" / f"{stem}.tif")
    added_label = int(table.loc[table["feature_id"] == added, "label"].iloc[0])
    assert (labels == added_label).sum() > 0.8 * 28 * 22

    crops = steps.extract_objects(data / "images", tmp_path / "masks2", tmp_path / "crops2",
                                  class_folders=True)
    assert crops.n_crops == int((pd.read_csv(tmp_path / "masks2" / "classes.csv")["count"]).sum())
    folders = read_class_names(tmp_path / "crops2" / "crops")
    for feature_id, new in relabelled.items():
        label = int(table.loc[table["feature_id"] == feature_id, "label"].iloc[0])
        folder = next(f for f, c in folders.items() if c == new)
        assert (tmp_path / "crops2" / "crops" / folder / f"{stem}_{label}.tif").is_file()
    assert (tmp_path / "crops2" / "crops" / next(f for f, c in folders.items() if c == classes[0])
            / f"{stem}_{added_label}.tif").is_file()
    steps.split(tmp_path / "crops2" / "crops", tmp_path / "split-cls", mode="classification", seed=0)

    # --- both models retrain on it ----------------------------------------------------------------
    steps.preprocess(data / "images", tmp_path / "pre", masks=tmp_path / "masks2")
    steps.split(tmp_path / "pre", tmp_path / "split-seg", mode="segmentation", seed=0)
    orgaseg("train-segmentation", "--data", tmp_path / "split-seg", "--model-out", tmp_path / "forest",
            "--backend", "forest", "--n-trees", 10)
    orgaseg("train-classifier", "--images", data / "images", "--masks", tmp_path / "masks2",
            "--model-out", tmp_path / "classifier2", "--families", "measurements", "--n-trees", 20)
    assert (tmp_path / "forest" / "orgaseg_model.json").is_file()
    report = json.loads((tmp_path / "classifier2" / "report.json").read_text())
    assert sorted(report["class_names"]) == classes
    # the edited image's objects (with the corrections) are part of what the models learned from
    seg_split = pd.read_csv(tmp_path / "split-seg" / "split.csv")
    assert seg_split["file"].str.contains(stem, regex=False).any()
    tile_masks = [tifffile.imread(p) for p in (tmp_path / "pre" / "masks").glob(f"{stem}*.tif")]
    assert sum(int(np.isin(m, [added_label]).sum()) for m in tile_masks) > 0
