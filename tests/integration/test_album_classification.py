"""The classification side through the real album CLI: extract-objects, train-classifier, classify.

Each solution is installed from the orgaseg catalog, run with real arguments on generated data,
checked on its outputs, given one bad input (exit status 1 and an ERROR line naming the file),
tested with ``album test`` and uninstalled. torch runs only inside the solution environments
album creates: this process generates and checks data with the torch-free parts of
orgaseg_core (and reads model.pt only as a file).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from album_helpers import error_line
from digests import tree_digest

pytestmark = pytest.mark.integration

VERSION = "0.21.0"
# the columns of objects.csv that a user reads first (the rest are crop window and intensities)
MEASUREMENTS = ["image", "stem", "label", "crop", "bbox_min_row", "bbox_min_col", "bbox_max_row",
                "bbox_max_col", "centroid_row", "centroid_col", "area_px", "perimeter",
                "equivalent_diameter", "circularity", "eccentricity", "solidity",
                "major_axis_length", "minor_axis_length", "orientation", "mean_intensity"]


# Local copies of the small helpers of test_album_solutions.py (importing that module here would
# also import its fixtures and collect its tests twice).
def coordinates(step: str) -> str:
    return f"orgaseg:{step}:{VERSION}"


@contextlib.contextmanager
def installed(album, step: str):
    """``album install`` the solution from the orgaseg catalog; ``album uninstall`` it afterwards."""
    result = album("install", coordinates(step))
    assert f"Installed {step}!" in result.output, result.output
    assert f"orgaseg:{coordinates(step)}" in album.installed()
    try:
        yield
    finally:
        album("uninstall", coordinates(step))
        assert f"orgaseg:{coordinates(step)}" not in album.installed()


@pytest.fixture(scope="module")
def demo(album, tmp_path_factory) -> Path:
    """Four small generated images with QuPath annotations, crops and label images (``masks/``).

    Four images, because the classification split is made per source image: with fewer, a class
    can end up with a single training crop.
    """
    from orgaseg_core.data.demo import make_demo_data
    from orgaseg_core.data.masks import annotations_to_masks

    out = tmp_path_factory.mktemp("classification-inputs") / "demo"
    make_demo_data(out, n_images=4, seed=7, size=(240, 320))
    annotations_to_masks(out / "geojsons", out / "images", out / "masks")
    return out


def test_extract_objects(album, demo, tmp_path):
    step = coordinates("extract-objects")
    images = demo / "images"
    # the generated organoids keep off the image border: add one in a corner of demo_001's mask
    masks = tmp_path / "masks"
    shutil.copytree(demo / "masks", masks)
    corner = tifffile.imread(masks / "demo_001.tif")
    corner_label = int(corner.max()) + 1
    corner[:20, :20] = corner_label
    tifffile.imwrite(masks / "demo_001.tif", corner)
    with installed(album, "extract-objects"):
        before = tree_digest(images), tree_digest(masks)
        out = album.workdir / "objects"
        run = album("run", step, "--images", images, "--masks", masks, "--out", out,
                    "--padding", "4", "--context", "0.5", "--min_area", "150", "--exclude_border", "True")
        assert "extract-objects: 4 image/mask pairs" in run.output
        objects = pd.read_csv(out / "objects.csv")
        skipped = pd.read_csv(out / "skipped.csv")
        assert list(objects.columns[:len(MEASUREMENTS)]) == MEASUREMENTS
        expected_crops, expected_skipped = set(), set()
        for image in sorted(images.iterdir()):
            stem = image.name.split(".")[0]
            labels = tifffile.imread(masks / f"{stem}.tif")
            ids, counts = np.unique(labels[labels > 0], return_counts=True)
            area = dict(zip(ids.tolist(), counts.tolist()))
            at_border = {int(i) for i in np.unique(np.concatenate(
                [labels[0], labels[-1], labels[:, 0], labels[:, -1]])) if i}
            for label in ids.tolist():
                reasons = [r for r, dropped in (("smaller than min_area", area[label] < 150),
                                                ("touches the image border", label in at_border))
                           if dropped]
                if reasons:
                    expected_skipped.add((stem, label, "; ".join(reasons)))
            rows = objects[objects["stem"] == stem]
            # every object of the mask is cropped or skipped, under its own label id
            assert sorted(rows["label"].tolist() + skipped.loc[skipped["stem"] == stem, "label"].tolist()) \
                == ids.tolist(), stem
            assert (rows["image"] == image.name).all()
            assert [area[label] for label in rows["label"]] == rows["area_px"].tolist()
            for row in rows.itertuples():
                assert row.crop == f"crops/{stem}_{row.label}.tif"
                # the bounding box grown by 4 px plus half its longer side on every side,
                # clipped to the image
                grow = 4 + round(0.5 * max(row.bbox_max_row - row.bbox_min_row, row.bbox_max_col - row.bbox_min_col))
                window = (max(row.bbox_min_row - grow, 0), max(row.bbox_min_col - grow, 0),
                          min(row.bbox_max_row + grow, labels.shape[0]),
                          min(row.bbox_max_col + grow, labels.shape[1]))
                assert (row.crop_min_row, row.crop_min_col, row.crop_max_row, row.crop_max_col) == window
                crop = tifffile.imread(out / row.crop)
                assert crop.shape[:2] == (window[2] - window[0], window[3] - window[1])
                expected_crops.add(f"{stem}_{row.label}.tif")
        assert set(zip(skipped["stem"], skipped["label"], skipped["reason"])) == expected_skipped
        assert ("demo_001", corner_label, "touches the image border") in expected_skipped
        assert any(r == "smaller than min_area" for _s, _l, r in expected_skipped)
        assert {p.name for p in (out / "crops").iterdir()} == expected_crops and len(expected_crops) > 50
        record = json.loads((out / "run.json").read_text())
        assert record["arguments"]["exclude_border"] is True and record["arguments"]["min_area"] == 150
        assert record["arguments"]["context"] == 0.5
        assert (tree_digest(images), tree_digest(masks)) == before

        # masks whose names match no image: one ERROR line naming the folders, nothing written
        unmatched = tmp_path / "unmatched-masks"
        unmatched.mkdir()
        for mask in sorted(masks.glob("*.tif")):
            shutil.copy(mask, unmatched / f"other_{mask.name}")
        bad = album("run", step, "--images", images, "--masks", unmatched,
                    "--out", album.workdir / "never", expect=1)
        error_line(bad.output, str(unmatched), "has a mask of the same name")
        assert "Traceback" not in bad.output
        assert not (album.workdir / "never").exists()

        album("test", step)


def test_train_classifier_then_classify(album, demo, tmp_path):
    """The torch pair: a tiny classifier trained through album from the annotated images (all
    three families), then used through album."""
    from orgaseg_core.data.sort_crops import sort_crops
    from orgaseg_core.data.split import split_dataset
    from orgaseg_core.objects.extract import extract_objects

    classes = sorted({c for table in (demo / "masks").glob("*_objects.csv")
                      for c in pd.read_csv(table, keep_default_na=False)["class"] if c})
    assert len(classes) == 5
    families = ["measurements", "cnn", "combined"]
    model = album.workdir / "classifier"
    with installed(album, "train-classifier"):
        step = coordinates("train-classifier")
        before = tree_digest(demo)
        run = album("run", step, "--images", demo / "images", "--masks", demo / "masks",
                    "--model_out", model, "--val_fraction", "0.25", "--test_fraction", "0.25",
                    "--n_trees", "30", "--architectures", "resnet18", "--learning_rates", "0.001,0.0003",
                    "--batch_sizes", "16", "--grid_epochs", "1", "--epochs", "2", "--patience", "1",
                    "--input_size", "32", "--review_below", "0.7", "--seed", "3", "--device", "cpu",
                    timeout=600)
        assert (f"train-classifier: 5 classes ({', '.join(classes)}) from annotated images, cpu"
                in run.output), run.output
        description = json.loads((model / "classifier.json").read_text())
        family = description["family"]
        assert family in families and description["class_names"] == classes
        assert description["review_below"] == 0.7 and description["crop_padding"] == 10
        assert description["crop_context"] == 0.25  # the default: a quarter of the object's size
        assert set(description["candidates"]) == set(families)
        if family in ("cnn", "combined"):
            assert zipfile.is_zipfile(model / "model.pt")  # torch's format (not loaded here)
        if family in ("measurements", "combined"):
            assert (model / "measurements.skops").is_file()
        grid = pd.read_csv(model / "grid.csv")
        rows = grid[grid["stage"] == "family"]
        assert list(rows["family"]) == families and rows["chosen"].sum() == 1
        assert rows.loc[rows["chosen"], "family"].item() == family
        cnn_grid = grid[grid["stage"] == "cnn grid"]
        assert sorted(cnn_grid["learning_rate"]) == [0.0003, 0.001] and cnn_grid["chosen"].sum() == 1
        assert set(cnn_grid["architecture"]) == {"resnet18"} and set(cnn_grid["batch_size"]) == {16}
        report = json.loads((model / "report.json").read_text())
        assert report["class_names"] == classes and report["family"] == family
        assert [row["family"] for row in report["candidates"]] == families
        split = pd.read_csv(model / "split.csv", dtype={"stem": str})
        assert set(split["split"]) == {"train", "val", "test"}
        # no image in two splits
        assert split.groupby("image")["split"].nunique().max() == 1
        n_test = int((split["split"] == "test").sum())
        assert report["report_split"] == "test" and report["test"]["n"] == n_test > 0
        assert report["chosen_on"] == "val"
        table = pd.read_csv(model / "classification_report.csv")
        assert list(table["class"]) == classes + ["macro avg", "weighted avg", "accuracy"]
        assert table["support"].iloc[:5].sum() == n_test
        for name in ("confusion_matrix.png", "reliability.png"):
            assert (model / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        arguments = json.loads((model / "run.json").read_text())["arguments"]
        assert arguments["learning_rates"] == [0.001, 0.0003] and arguments["batch_sizes"] == [16]
        assert arguments["architectures"] == ["resnet18"] and arguments["seed"] == 3
        assert arguments["families"] == families and arguments["n_trees"] == 30
        assert tree_digest(demo) == before

        # class folders of crops (split --mode classification) with a single training crop in a
        # class: refused before anything is written
        sort_crops(demo / "crops", tmp_path / "sorted")
        split_crops = tmp_path / "split"
        split_dataset(tmp_path / "sorted", split_crops, mode="classification", train=0.5, val=0.25,
                      test=0.25, seed=0)
        one = tmp_path / "one-crop"
        shutil.copytree(split_crops, one)
        lonely = one / "train" / classes[0]
        for crop in sorted(lonely.iterdir())[1:]:
            crop.unlink()
        bad = album("run", step, "--data", one, "--model_out", album.workdir / "never", expect=1)
        error_line(bad.output, str(lonely), "only one image")
        # a grid value that is not a number: one ERROR line, no traceback
        bad = album("run", step, "--images", demo / "images", "--masks", demo / "masks",
                    "--model_out", album.workdir / "never", "--learning_rates", "0.001,fast", expect=2)  # a usage error
        error_line(bad.output, "--learning_rates", "'fast' is not a number")
        assert "Traceback" not in bad.output
        assert not (album.workdir / "never").exists()

        album("test", step, timeout=600)

    extract_objects(demo / "images", demo / "masks", tmp_path / "objects")
    objects = pd.read_csv(tmp_path / "objects" / "objects.csv")
    with installed(album, "classify"):
        step = coordinates("classify")
        before = tree_digest(tmp_path / "objects"), tree_digest(model)
        for chosen in ("auto", "combined"):
            out = album.workdir / f"classified-{chosen}"
            options = ["--family", chosen] if chosen != "auto" else []
            run = album("run", step, "--model", model, "--objects", tmp_path / "objects",
                        "--out", out, "--batch_size", "7", "--device", "cpu", *options)
            assert f"classify: {len(objects)} of {len(objects)} crops classified" in run.output
            assert "0.70 flagged for review" in run.output  # the classifier's threshold
            predictions = pd.read_csv(out / "predictions.csv")
            # one row per object, in the order of objects.csv, its measurements carried over
            assert list(predictions["crop"]) == list(objects["crop"])
            assert list(predictions["label"]) == list(objects["label"])
            assert list(predictions["area_px"]) == list(objects["area_px"])
            prob_columns = [f"prob_{name}" for name in classes]
            assert list(predictions.columns[:11]) == ["image", "label", "crop", "predicted_class",
                                                      "confidence", "needs_review"] + prob_columns
            probs = predictions[prob_columns].to_numpy()
            assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4) and (probs >= 0).all()
            assert set(predictions["predicted_class"]) <= set(classes)
            assert list(predictions["predicted_class"]) == [classes[i] for i in probs.argmax(axis=1)]
            assert np.allclose(predictions["confidence"], probs.max(axis=1))
            assert list(predictions["needs_review"]) == list(predictions["confidence"] < 0.7)
            results = json.loads((out / "run.json").read_text())["results"]
            assert results["family"] == (description["family"] if chosen == "auto" else chosen)
        # review-below given: every object below it is flagged
        out = album.workdir / "classified-review"
        album("run", step, "--model", model, "--objects", tmp_path / "objects", "--out", out,
              "--review_below", "0.95", "--device", "cpu")
        predictions = pd.read_csv(out / "predictions.csv")
        assert list(predictions["needs_review"]) == list(predictions["confidence"] < 0.95)
        assert (tree_digest(tmp_path / "objects"), tree_digest(model)) == before

        # a file that is not an orgaseg checkpoint: refused, named, nothing written
        foreign = tmp_path / "foreign.pt"
        foreign.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        bad = album("run", step, "--model", foreign, "--objects", tmp_path / "objects",
                    "--out", album.workdir / "never", expect=1)
        error_line(bad.output, str(foreign), "not a PyTorch file")
        assert "Traceback" not in bad.output
        assert not (album.workdir / "never").exists()

        album("test", step, timeout=600)
