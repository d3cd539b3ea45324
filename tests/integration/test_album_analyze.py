"""orgaseg:analyze through the real album CLI: install, run on new images with the models of the
session's example run (tests/conftest.py ``story``), with label images of another tool instead of
the model (--masks), a bad classifier, album test, uninstall."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile
from album_helpers import error_line
from digests import tree_digest

pytestmark = pytest.mark.integration

STEP = "orgaseg:analyze:0.21.0"


def test_analyze(album, story, tmp_path):
    demo, _ = story
    models = demo / "models"
    images = tmp_path / "new-images"
    shutil.copytree(demo / "new-images" / "images", images)
    before = tree_digest(images), tree_digest(models)
    result = album("install", STEP)
    assert "Installed analyze!" in result.output, result.output
    try:
        out = album.workdir / "analysis"
        run = album("run", STEP, "--segmentation_model", models / "segmentation",
                    "--classifier", models / "classifier", "--images", images,
                    "--out", out, "--min_area", "200", timeout=900)
        assert "analyze: 2 image(s)" in run.output
        assert (tree_digest(images), tree_digest(models)) == before  # inputs unchanged
        summary = pd.read_csv(out / "summary.csv", dtype={"stem": str})
        objects = pd.read_csv(out / "objects.csv", dtype={"stem": str})
        assert list(summary["image"]) == sorted(p.name for p in images.iterdir())
        assert (objects["area_px"] >= 200).all()
        classifier = json.loads((models / "classifier" / "classifier.json").read_text())
        # the review flag at the classifier's threshold, per object and per image
        assert list(objects["needs_review"]) == list(objects["confidence"] < classifier["review_below"])
        assert list(summary["needs_review"]) == [
            int(objects.loc[objects["stem"] == stem, "needs_review"].sum()) for stem in summary["stem"]]
        for row in summary.to_dict("records"):
            labels = tifffile.imread(out / "segmentation" / f"{row['stem']}.tif")
            ids = {int(i) for i in np.unique(labels) if i}
            areas = np.bincount(labels.ravel())
            small = {i for i in ids if areas[i] < 200}
            assert row["objects"] == len(ids) and row["excluded"] == len(small)
            features = json.loads((out / "qupath" / f"{row['stem']}.geojson").read_text())["features"]
            classified = {f["properties"]["measurements"]["Label"] for f in features
                          if "classification" in f["properties"]}
            assert classified == set(objects.loc[objects["stem"] == row["stem"], "label"])
            assert classified.isdisjoint(small)
            mine = objects[objects["stem"] == row["stem"]]
            flagged = set(mine.loc[mine["needs_review"], "label"])
            assert {f["properties"]["measurements"]["Label"]: f["properties"]["measurements"]["Needs review"]
                    for f in features if "classification" in f["properties"]} == \
                {label: int(label in flagged) for label in classified}
        record = json.loads((out / "run.json").read_text())
        assert record["status"] == "ok" and set(record["results"]["steps"]) == {
            "segment", "extract-objects", "classify"}
        # padding 'auto': the crops are cut as the classifier's training crops were
        assert record["arguments"]["padding"] == classifier["crop_padding"]
        assert record["arguments"]["context"] == classifier["crop_context"]

        # label images of another tool instead of the model: their objects, under their ids
        masks = demo / "evaluation" / "true-masks"
        masks_before = tree_digest(masks)
        out_masks = album.workdir / "analysis-masks"
        # with the pixel size and the experiment's design (options of 0.8.0)
        design = tmp_path / "design.csv"
        names = sorted(p.name for p in images.iterdir())
        design.write_text("image,well,condition\n" + "".join(
            f"{name},A{i + 1:02d},{'DMSO' if i % 2 == 0 else 'drug'}\n" for i, name in enumerate(names)))
        album("run", STEP, "--masks", masks, "--classifier", models / "classifier",
              "--images", images, "--out", out_masks, "--pixel_size", "0.5", "--metadata", design,
              timeout=600)
        assert tree_digest(masks) == masks_before
        record = json.loads((out_masks / "run.json").read_text())
        assert record["status"] == "ok" and set(record["results"]["steps"]) == {
            "masks", "extract-objects", "classify"}
        measured = pd.read_csv(out_masks / "objects.csv", dtype={"stem": str})
        assert np.allclose(measured["area_um2"], measured["area_px"] * 0.25)
        assert set(measured["condition"]) == {"DMSO", "drug"}
        assert set(pd.read_csv(out_masks / "conditions.csv")["condition"]) >= {"DMSO", "drug"}
        for row in pd.read_csv(out_masks / "summary.csv", dtype={"stem": str}).to_dict("records"):
            ids = {int(i) for i in np.unique(tifffile.imread(masks / f"{row['stem']}.tif")) if i}
            features = json.loads((out_masks / "qupath" / f"{row['stem']}.geojson").read_text())["features"]
            assert row["objects"] == len(ids) == row["classified"]
            assert {f["properties"]["measurements"]["Label"] for f in features} == ids
        # neither a model nor masks: one error line, nothing written
        neither = album("run", STEP, "--classifier", models / "classifier",
                        "--images", images, "--out", album.workdir / "never", expect=1)
        assert "--segmentation_model" in neither.output and "--masks" in neither.output
        assert "Traceback" not in neither.output and not (album.workdir / "never").exists()

        # a classifier file that is not ours: one error line naming it, nothing written
        bad = tmp_path / "not-a-model.pt"
        bad.write_bytes(b"\x00" * 100 + b"definitely not a checkpoint")
        failed = album("run", STEP, "--segmentation_model", models / "segmentation", "--classifier", bad,
                       "--images", images, "--out", album.workdir / "never", expect=1)
        error_line(failed.output, str(bad))
        assert "Traceback" not in failed.output
        assert not (album.workdir / "never").exists()

        album("test", STEP, timeout=900)
    finally:
        album("uninstall", STEP)
