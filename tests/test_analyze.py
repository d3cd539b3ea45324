"""analyze: the result tables, the classified QuPath features, the class overlay, and the checks
made before any long step starts. The whole pipeline on generated data runs in test_example.py.

Nothing here imports TensorFlow or torch in the test process: analyze starts them in children.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import tifffile

from orgaseg_core.common.classes import class_colour
from orgaseg_core.common.errors import InputFileError, OrgasegError
from orgaseg_core.common.overlays import OTHER_COLOUR, class_overlay, label_boundaries
from orgaseg_core.pipelines.analyze import _objects_table, analyze, classified_features, summary_table

CLASSES = ["Cyst", "Filled in"]


def prediction_rows():
    return pd.DataFrame({
        "image": ["a.tif", "a.tif", "a.tif", "b.jpg"],
        "stem": ["a", "a", "a", "b"],
        "label": [1, 2, 4, 1],
        "crop": ["crops/a_1.tif", "crops/a_2.tif", "crops/a_4.tif", "crops/b_1.tif"],
        "predicted_class": ["Cyst", "Filled in", "Cyst", "Filled in"],
        "confidence": [0.9, 0.8, 0.7, 0.6],
        "prob_Cyst": [0.9, 0.2, 0.7, 0.4],
        "prob_Filled in": [0.1, 0.8, 0.3, 0.6],
        "area_px": [100, 50, 30, 80],
        "circularity": [0.9, 0.8, float("nan"), 0.7],
    })


def test_summary_counts_and_fractions_per_image():
    objects = prediction_rows()
    per_image = pd.DataFrame({"image": ["a.tif", "b.jpg", "c.png"], "stem": ["a", "b", "c"],
                              "objects": [5, 1, 0], "excluded": [1, 0, 0], "unreadable": [1, 0, 0]})
    table = summary_table(objects, per_image, CLASSES)
    a, b, c = (table.iloc[i] for i in range(3))
    assert list(table["image"]) == ["a.tif", "b.jpg", "c.png"]
    assert (a["objects"], a["classified"], a["excluded"], a["unreadable"]) == (5, 3, 1, 1)
    assert (a["count_Cyst"], a["count_Filled in"]) == (2, 1)
    assert a["fraction_Cyst"] == pytest.approx(2 / 3) and a["fraction_Filled in"] == pytest.approx(1 / 3)
    assert a["mean_confidence"] == pytest.approx(0.8)
    assert (b["count_Cyst"], b["count_Filled in"], b["fraction_Filled in"]) == (0, 1, 1.0)
    # an image without classified objects: counts 0, fractions undefined (empty), not 0
    assert c["classified"] == 0 and c["count_Cyst"] == 0 and math.isnan(c["fraction_Cyst"])


def feature(label, probability=0.8):
    return {"type": "Feature", "id": f"id-{label}",
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]]]},
            "properties": {"objectType": "detection", "name": f"a object {label}",
                           "measurements": {"Label": label, "Probability": probability, "Area px": 16}}}


def test_features_get_class_colour_probabilities_and_measurements():
    features = [feature(1), feature(2), feature(3), feature(4)]
    before = json.dumps(features)
    objects = prediction_rows()
    out = classified_features(features, objects[objects["stem"] == "a"], {3: "smaller than min_area"},
                              CLASSES)
    assert json.dumps(features) == before  # the inputs are not changed
    assert [f["id"] for f in out] == ["id-1", "id-2", "id-3", "id-4"]
    assert all(f["geometry"] == features[0]["geometry"] for f in out)
    first = out[0]["properties"]
    assert first["classification"] == {"name": "Cyst", "color": list(class_colour("Cyst"))}
    m = first["measurements"]
    assert m["Class confidence"] == 0.9 and m["Probability Cyst"] == 0.9 and m["Probability Filled in"] == 0.1
    assert m["Segmentation probability"] == 0.8 and "Probability" not in m
    assert m["Area px"] == 100 and m["Circularity"] == 0.9 and m["Label"] == 1
    assert out[1]["properties"]["classification"]["name"] == "Filled in"
    assert out[3]["properties"]["measurements"]["Circularity"] == "NaN"  # as QuPath writes NaN
    # the excluded object stays a detection, without a class, named with the reason
    excluded = out[2]["properties"]
    assert "classification" not in excluded
    assert excluded["name"] == "a object 3 (smaller than min_area)"


def test_objects_table_joins_segmentation_probability(tmp_path):
    seg = tmp_path / "segmentation"
    seg.mkdir()
    pd.DataFrame({"image": "a.tif", "label": [1, 2, 3, 4], "probability": [0.91, 0.92, 0.93, 0.94]}
                 ).to_csv(seg / "a_objects.csv", index=False)
    pd.DataFrame({"image": "b.jpg", "label": [1], "probability": [0.5]}).to_csv(seg / "b_objects.csv",
                                                                               index=False)
    table = _objects_table(prediction_rows(), seg, CLASSES)
    assert list(table.columns[:9]) == ["image", "stem", "label", "predicted_class", "confidence",
                                       "prob_Cyst", "prob_Filled in", "segmentation_probability",
                                       "area_px"]
    assert table.columns[-1] == "crop"
    assert list(table["segmentation_probability"]) == [0.91, 0.92, 0.94, 0.5]


def test_class_overlay_colours_outlines_by_class():
    labels = np.zeros((40, 60), np.uint16)
    labels[5:15, 5:15] = 1
    labels[20:35, 30:50] = 2
    labels[25:30, 5:10] = 3  # no class: grey
    image = np.full((40, 60), 120, np.uint8)
    rgb = class_overlay(image, labels, {1: "Cyst", 2: "Filled in"}, class_names=CLASSES, legend=False)
    edge = label_boundaries(labels)
    for label, colour in ((1, class_colour("Cyst")), (2, class_colour("Filled in")), (3, OTHER_COLOUR)):
        pixels = rgb[edge & (labels == label)]
        assert len(pixels) > 0 and (pixels == colour).all(), label
    # a flat image stays one grey inside and outside the objects: only outlines are coloured
    assert len(np.unique(rgb[~edge], axis=0)) == 1 and len(set(rgb[~edge][0])) == 1
    # the legend needs room: drawn on a larger image, with the class colours in it
    big = np.zeros((400, 600), np.uint16)
    big[100:300, 200:500] = 1
    legend = class_overlay(np.full((400, 600), 120, np.uint8), big, {1: "Cyst"}, class_names=CLASSES)
    plain = class_overlay(np.full((400, 600), 120, np.uint8), big, {1: "Cyst"}, class_names=CLASSES,
                          legend=False)
    corner = legend[:80, :200]
    assert not np.array_equal(corner, plain[:80, :200])
    assert (corner == class_colour("Cyst")).all(axis=2).any()
    assert (corner == class_colour("Filled in")).all(axis=2).any()  # listed, with 0 objects


# --------------------------------------------------------------------------- checks before work

@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", np.full((64, 64), 100, np.uint8))
    return folder


def test_a_folder_that_is_not_a_segmentation_model_is_refused(tmp_path, images):
    (tmp_path / "clf.pt").write_bytes(b"x")
    with pytest.raises(OrgasegError, match="not-a-model"):
        analyze(tmp_path / "not-a-model", tmp_path / "clf.pt", images, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_or_empty_images_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="empty.*contains no image files"):
        analyze(tmp_path / "model", tmp_path / "clf.pt", tmp_path / "empty", tmp_path / "out")
    with pytest.raises(InputFileError, match="missing.*does not exist"):
        analyze(tmp_path / "model", tmp_path / "clf.pt", tmp_path / "missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_that_is_not_ours_is_refused_before_segmentation(tmp_path, images, monkeypatch):
    import orgaseg_core.segmentation.model as stardist_model

    # Any segmentation model passes here: the point is that the classifier is checked (in a
    # torch child process) before the long segmentation starts, and nothing is written.
    monkeypatch.setattr(stardist_model, "check_model_folder", lambda folder: None)
    bad = tmp_path / "random.pt"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InputFileError, match=r"random\.pt.*(corrupt|not a PyTorch file)"):
        analyze(tmp_path / "model", bad, images, tmp_path / "out")
    assert not (tmp_path / "out").exists()
