"""Label images of another tool: outlines traced from labels, segment-style outputs from them, and
``analyze --masks`` (extraction, classification and results on them).

No TensorFlow or torch in this process: ``analyze`` runs ``classify`` in a child.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from orgaseg_core import steps
from orgaseg_core.common.errors import InputFileError, OrgasegError
from orgaseg_core.data.masks import rasterize_objects
from orgaseg_core.segmentation.external import segmentation_from_masks
from orgaseg_core.segmentation.outlines import label_outlines


def shapes_image() -> np.ndarray:
    """A label image with the cases that matter: a disc, a ring (hole), an object in two parts,
    a one-pixel object, a thin line, an object at the border, ids not consecutive."""
    yy, xx = np.mgrid[:80, :120]
    labels = np.zeros((80, 120), np.uint16)
    labels[(yy - 20) ** 2 + (xx - 20) ** 2 < 12 ** 2] = 3                      # disc
    ring = ((yy - 50) ** 2 + (xx - 30) ** 2 < 15 ** 2) & ((yy - 50) ** 2 + (xx - 30) ** 2 >= 6 ** 2)
    labels[ring] = 7                                                          # ring with a hole
    labels[10:20, 60:70] = 9
    labels[30:35, 60:70] = 9                                                  # two parts, one id
    labels[60, 70] = 12                                                       # one pixel
    labels[70, 60:100] = 13                                                   # a line 1 px thick
    labels[0:15, 100:120] = 40                                                # at the border
    return labels


def test_outlines_rasterise_back_to_the_same_pixels():
    labels = shapes_image()
    outlines = label_outlines(labels)
    ids = sorted(int(i) for i in np.unique(labels) if i)
    assert sorted(outlines) == ids
    back, _ = rasterize_objects([outlines[i] for i in ids], labels.shape)
    for index, label in enumerate(ids, start=1):
        assert np.array_equal(back == index, labels == label), label
    # areas: the outline through the pixel-edge midpoints is close to the pixel count
    disc = outlines[3]
    assert abs(disc.area - (labels == 3).sum()) / (labels == 3).sum() < 0.05
    assert len(outlines[7].interiors) == 1, "the ring keeps its hole"
    assert outlines[9].geom_type == "MultiPolygon" and len(outlines[9].geoms) == 2
    assert all(g.is_valid for g in outlines.values())


def test_outlines_are_in_qupath_pixel_coordinates():
    labels = np.zeros((10, 10), np.uint8)
    labels[2:5, 6:8] = 1  # rows 2-4, columns 6-7: x in [6, 8), y in [2, 5)
    (box,) = label_outlines(labels).values()
    minx, miny, maxx, maxy = box.bounds
    assert (minx, miny, maxx, maxy) == pytest.approx((6.0, 2.0, 8.0, 5.0), abs=0.51)
    assert box.centroid.x == pytest.approx(7.0) and box.centroid.y == pytest.approx(3.5)


def _image_and_masks(tmp_path, labels: dict[str, np.ndarray]):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for stem, lab in labels.items():
        tifffile.imwrite(images / f"{stem}.tif", (120 + 40 * (lab > 0)).astype(np.uint8))
        tifffile.imwrite(masks / f"{stem}.tif", lab)
    return images, masks


def test_masks_become_segment_outputs_with_their_own_ids(tmp_path, unchanged):
    labels = shapes_image()
    images, masks = _image_and_masks(tmp_path, {"a": labels, "b": np.zeros((40, 50), np.int32)})
    tifffile.imwrite(masks / "extra.tif", labels)  # a mask without an image: listed, not used
    check_images, check_masks = unchanged(images), unchanged(masks)
    result = segmentation_from_masks(images, masks, tmp_path / "seg")
    check_images()
    check_masks()
    out = tmp_path / "seg"
    assert result.objects == {"a.tif": 6, "b.tif": 0} and result.failed == []
    assert result.unused_masks == ["extra.tif"]
    written = tifffile.imread(out / "a.tif")
    assert written.dtype == np.uint16 and np.array_equal(written, labels)
    table = pd.read_csv(out / "a_objects.csv")
    ids = sorted(int(i) for i in np.unique(labels) if i)
    assert list(table["label"]) == ids
    assert list(table["area_px"]) == [int((labels == i).sum()) for i in ids]
    assert table["probability"].isna().all()
    features = json.loads((out / "a.geojson").read_text())["features"]
    assert [f["properties"]["measurements"]["Label"] for f in features] == ids
    # no probability from another tool: "NaN", as QuPath writes a missing measurement
    assert all(f["properties"]["measurements"]["Probability"] == "NaN" for f in features)
    assert all(f["properties"]["objectType"] == "detection" for f in features)
    assert json.loads((out / "run.json").read_text())["results"]["unused_masks"] == ["extra.tif"]


def test_an_image_without_a_fitting_mask_is_reported_and_the_others_go_on(tmp_path):
    labels = shapes_image()
    images, masks = _image_and_masks(tmp_path, {"a": labels, "small": labels[:40, :40]})
    tifffile.imwrite(images / "lonely.tif", np.zeros((20, 20), np.uint8))
    tifffile.imwrite(masks / "small.tif", labels)  # 80x120 for a 40x40 image
    result = segmentation_from_masks(images, masks, tmp_path / "seg")
    assert list(result.objects) == ["a.tif"]
    assert len(result.failed) == 2
    assert any("lonely.tif" in f and "no label image" in f for f in result.failed)
    assert any("small.tif" in f and "80x120 px" in f and "40x40 px" in f for f in result.failed)
    assert not (tmp_path / "seg" / "small.tif").exists()


def test_masks_that_are_not_label_images_are_refused(tmp_path):
    images, masks = _image_and_masks(tmp_path, {"a": shapes_image()})
    tifffile.imwrite(masks / "a.tif", np.full((80, 120), 0.5, np.float32))
    result = segmentation_from_masks(images, masks, tmp_path / "seg")
    assert result.objects == {} and "non-negative integers" in result.failed[0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="no label images"):
        segmentation_from_masks(images, tmp_path / "empty", tmp_path / "seg2")


def test_analyze_needs_exactly_one_source_of_objects(tmp_path):
    images, masks = _image_and_masks(tmp_path, {"a": shapes_image()})
    with pytest.raises(OrgasegError, match="not neither"):
        steps.analyze(None, tmp_path / "model.pt", images, tmp_path / "out")
    with pytest.raises(OrgasegError, match="not both"):
        steps.analyze(tmp_path, tmp_path / "model.pt", images, tmp_path / "out", masks=masks)
    with pytest.raises(OrgasegError, match="do not apply to --masks"):
        steps.analyze(None, tmp_path / "model.pt", images, tmp_path / "out", masks=masks,
                      prob_thresh=0.5)
    assert not (tmp_path / "out").exists()


def test_analyze_classifies_the_objects_of_another_tools_masks(story, tmp_path, unchanged):
    """The masks of the story's new images (their annotations, as another tool's output) through
    the command line: every object of the masks is classified under its own id."""
    import subprocess
    import sys

    demo, _ = story
    images = demo / "new-images" / "images"
    masks = demo / "evaluation" / "true-masks"
    check = unchanged(masks)
    out = tmp_path / "analysis"
    done = subprocess.run([sys.executable, "-m", "orgaseg_core", "analyze", "--masks", str(masks),
                           "--classifier", str(demo / "models" / "classifier"),
                           "--images", str(images), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    check()
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "ok" and set(record["results"]["steps"]) == {"masks", "extract-objects",
                                                                           "classify"}
    objects = pd.read_csv(out / "objects.csv", dtype={"stem": str})
    summary = pd.read_csv(out / "summary.csv", dtype={"stem": str})
    assert len(summary) == len(list(images.iterdir()))
    for row in summary.to_dict("records"):
        truth = tifffile.imread(masks / f"{row['stem']}.tif")
        ids = {int(i) for i in np.unique(truth) if i}
        assert row["objects"] == len(ids)
        mine = objects[objects["stem"] == row["stem"]]
        assert set(mine["label"]) == ids and mine["predicted_class"].notna().all()
        areas = np.bincount(truth.ravel())
        assert all(areas[r.label] == r.area_px for r in mine.itertuples())
        features = json.loads((out / "qupath" / f"{row['stem']}.geojson").read_text())["features"]
        assert {f["properties"]["measurements"]["Label"] for f in features} == ids
        assert all("classification" in f["properties"] for f in features)
    assert objects["segmentation_probability"].isna().all()
