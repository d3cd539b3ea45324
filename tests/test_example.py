"""End to end: the README's main job on small generated data.

``--data-only`` checks the data steps in detail; the whole story (both trainings in their own
processes, analyze, evaluation) runs once per module with tiny training budgets and the analysis
outputs are checked against each other and against the label images.
"""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from orgaseg_core.cli import main
from orgaseg_core.common.images import read_labels

DATA_ONLY = ["--n-images", "4", "--size", "380x504", "--data-only"]


def test_example_runs_every_data_step(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["example", "--out", str(out), *DATA_ONLY]) == 0
    printed = capsys.readouterr().out
    assert f"all results are in {out}" in printed
    for folder in ("data", "sorted-crops", "masks", "preprocessed", "split-segmentation", "split-classification"):
        assert (out / folder / "run.json").is_file(), folder
        assert json.loads((out / folder / "run.json").read_text())["status"] == "ok"

    # one label image per source image, with as many objects as classified polygon annotations
    truth = pd.read_csv(out / "data" / "objects.csv")
    organoids = truth[(truth["kind"] == "organoid") & truth["class"].notna()]
    for stem, rows in organoids.groupby("stem"):
        labels = read_labels(out / "masks" / f"{stem}.tif")
        assert len(np.unique(labels[labels > 0])) == len(rows), stem

    # 2x2 tiles at half size: four 95x126 tiles per image, images and masks with the same names
    tiles = sorted(p.name for p in (out / "preprocessed" / "images").iterdir())
    assert len(tiles) == 4 * 4
    assert tiles == sorted(p.name for p in (out / "preprocessed" / "masks").iterdir())
    assert read_labels(out / "preprocessed" / "masks" / tiles[0]).shape == (95, 126)

    # no source image in two splits, and every crop class sorted
    for name in ("split-segmentation", "split-classification"):
        table = pd.read_csv(out / name / "split.csv")
        assert (table.groupby("group")["split"].nunique() == 1).all(), name
    classes = {p.name for p in (out / "sorted-crops").iterdir() if p.is_dir()}
    assert classes == {"Branched", "Burned out", "Cyst", "Early branching", "Filled in"}

    # running again needs --overwrite, and then works
    assert main(["example", "--out", str(out), *DATA_ONLY]) == 1
    assert "not empty" in capsys.readouterr().err
    assert main(["example", "--out", str(out), *DATA_ONLY, "--overwrite"]) == 0
    assert not (out / "models").exists() and not (out / "analysis").exists()


# --------------------------------------------------------------------------- the whole story

CLASSES = {"Branched", "Burned out", "Cyst", "Early branching", "Filled in"}


def test_story_prints_where_everything_is(story):
    out, printed = story
    assert f"all results are in {out}" in printed
    assert "results on new images (never seen in training):" in printed
    assert f"open in QuPath: {out / 'analysis' / 'qupath'}" in printed
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "ok"
    for step in ("train-segmentation", "train-classifier", "analyze", "evaluate-segmentation"):
        assert step in record["results"]["seconds"], step
    # the segmentation model is train-segmentation's default, a U-Net (since 0.18)
    assert record["arguments"]["seg_backend"] == "unet"
    assert json.loads((out / "models" / "segmentation" / "orgaseg_model.json").read_text())["kind"] == "orgaseg-unet"
    assert (out / "models" / "classifier" / "classifier.json").is_file()
    assert "classifier (" in printed and "family, chosen on validation)" in printed
    assert (out / "evaluation" / "segmentation" / "metrics.csv").is_file()
    # the matched organoids' measurements against the annotated ones, one per match at IoU 0.5
    evaluated = json.loads((out / "evaluation" / "segmentation" / "summary.json").read_text())
    pairs = evaluated["shapes"]["pairs"]
    assert pairs == evaluated["at_iou"]["0.5"]["tp"] > 0
    assert f"shapes of the {pairs} organoids matched at IoU >= 0.5, median measured / annotated: area " in printed
    # the experiment of the new images, analysed with its design, ends with the report
    assert "planted treatment effect: Branched fraction treated - control +0.40 planted" in printed
    assert f"report: open {out / 'analysis' / 'report.html'} in a browser" in printed
    assert (out / "analysis" / "conditions.csv").is_file() and (out / "analysis" / "report.html").is_file()


def test_story_analysis_outputs_agree(story):
    out, _ = story
    analysis = out / "analysis"
    new_images = sorted((out / "new-images" / "images").iterdir())
    assert len(new_images) == 2
    summary = pd.read_csv(analysis / "summary.csv")
    objects = pd.read_csv(analysis / "objects.csv", dtype={"stem": str})
    skipped = pd.read_csv(analysis / "objects" / "skipped.csv")
    assert list(summary["image"]) == [p.name for p in new_images]
    assert set(objects["predicted_class"]) <= CLASSES
    prob = objects[[c for c in objects.columns if c.startswith("prob_")]]
    assert {c[len("prob_"):] for c in prob.columns} == CLASSES
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(objects["confidence"], prob.max(axis=1), atol=1e-6)
    assert objects["segmentation_probability"].between(0, 1).all()
    for row in summary.itertuples(index=False):
        labels = read_labels(analysis / "segmentation" / f"{row.stem}.tif")
        ids = set(int(i) for i in np.unique(labels) if i)
        assert row.objects == len(ids) > 0
        mine = objects[objects["stem"] == row.stem]
        assert set(mine["label"]) <= ids and row.classified == len(mine)
        assert row.classified + row.excluded + row.unreadable == row.objects
        counts = mine["predicted_class"].value_counts()
        for name in CLASSES:
            assert summary.loc[summary["stem"] == row.stem, f"count_{name}"].item() == counts.get(name, 0)
        fractions = [summary.loc[summary["stem"] == row.stem, f"fraction_{c}"].item() for c in CLASSES]
        assert sum(fractions) == pytest.approx(1.0, abs=1e-5)
        # the QuPath file: one detection per object, classified ones with their class and colour
        features = json.loads((analysis / "qupath" / f"{row.stem}.geojson").read_text())["features"]
        assert sorted(f["properties"]["measurements"]["Label"] for f in features) == sorted(ids)
        by_label = {f["properties"]["measurements"]["Label"]: f["properties"] for f in features}
        for obj in mine.itertuples(index=False):
            props = by_label[obj.label]
            assert props["objectType"] == "detection"
            assert props["classification"]["name"] == obj.predicted_class
            assert props["measurements"]["Class confidence"] == pytest.approx(obj.confidence, abs=1e-6)
            assert props["measurements"]["Area px"] == obj.area_px
        for label in set(skipped.loc[skipped["stem"] == row.stem, "label"]):
            assert "classification" not in by_label[label]
        overlay = analysis / "overlays" / f"{row.stem}.png"
        assert overlay.stat().st_size > 1000
    classes = pd.read_csv(out / "evaluation" / "classes.csv")
    assert len(classes) > 0 and classes["iou"].min() >= 0.5


def test_analyze_skips_a_broken_image_and_says_so(story, tmp_path):
    """One unreadable file among the new images: the others are analysed, exit status 1."""
    import subprocess
    import sys

    out, _ = story
    images = tmp_path / "images"
    shutil.copytree(out / "new-images" / "images", images)
    (images / "broken.tif").write_bytes(b"not a tiff at all")
    done = subprocess.run(
        [sys.executable, "-m", "orgaseg_core", "analyze", "--segmentation-model",
         str(out / "models" / "segmentation"), "--classifier", str(out / "models" / "classifier"),
         "--images", str(images), "--out", str(tmp_path / "analysis"), "--exclude-border",
         "--name-pattern", r"(?P<well>[A-H]\d{2})_(?P<condition>[a-z]+)", "--control", "control",
         "--pixel-size", "0.5"],
        capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "broken.tif" in done.stderr and "could not be analysed" in done.stderr
    summary = pd.read_csv(tmp_path / "analysis" / "summary.csv", dtype={"condition": str})
    assert len(summary) == 2 and "broken.tif" not in set(summary["image"])
    # the design read from the file names, in every table, and per condition in conditions.csv
    assert list(summary["condition"]) == ["control", "treated"] and list(summary["well"]) == ["A01", "A02"]
    assert "0.65" in done.stderr  # the files' own pixel size, overridden by --pixel-size and reported
    objects = pd.read_csv(tmp_path / "analysis" / "objects.csv", dtype={"condition": str, "stem": str})
    assert (objects["condition"] == objects["stem"].str.split("_").str[1]).all()
    np.testing.assert_allclose(objects["area_um2"], objects["area_px"] * 0.25)
    conditions = pd.read_csv(tmp_path / "analysis" / "conditions.csv", dtype={"condition": str})
    by = conditions[conditions["grouping"] == "condition"].set_index("condition")
    for row in summary.to_dict("records"):
        assert by.loc[row["condition"], "organoids"] == row["classified"]
        for name in CLASSES:
            assert by.loc[row["condition"], f"count_{name}"] == row[f"count_{name}"]
    assert by.loc["control", "size_unit"] == "µm" and np.isnan(by.loc["control", "diff_Cyst"])
    one = by.loc["treated"]
    for name in CLASSES:
        assert one[f"diff_{name}"] == pytest.approx(one[f"fraction_{name}"] - by.loc["control", f"fraction_{name}"], abs=1e-5)
    record = json.loads((tmp_path / "analysis" / "run.json").read_text())
    assert record["results"]["design"]["columns"] == ["well", "condition"]
    assert "broken.tif" in record["results"]["design"]["unmatched"]
    # the plots, each as PNG and SVG, and the report
    plots = {p.name for p in (tmp_path / "analysis" / "plots").iterdir()}
    assert plots == {f"{name}.{ext}" for name in ("class_fractions", "confidence", "gallery", "sizes", "plate")
                     for ext in ("png", "svg")}
    assert (tmp_path / "analysis" / "report.html").is_file()
    assert (tmp_path / "analysis" / "objects.csv").is_file()
    assert json.loads((tmp_path / "analysis" / "run.json").read_text())["status"] == "failed"
    assert (images / "broken.tif").read_bytes() == b"not a tiff at all"


def test_analyze_takes_the_test_time_views(story, tmp_path):
    """``analyze --tta N`` segments with N views of the story's U-Net (the fast pass for many
    images is 1); a value that is not a number of views is refused before any work."""
    import subprocess
    import sys

    out, _ = story
    base = [sys.executable, "-m", "orgaseg_core", "analyze", "--segmentation-model", str(out / "models" / "segmentation"),
            "--classifier", str(out / "models" / "classifier"), "--images", str(out / "new-images" / "images")]
    done = subprocess.run([*base, "--out", str(tmp_path / "two"), "--tta", "2"], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "two" / "run.json").read_text())
    assert record["arguments"]["tta"] == 2
    # each chunk's segment record: the views of every image it segmented
    views = [image["views"] for run in record["results"]["steps"]["segment"]
             for image in run["results"]["images"].values()]
    assert len(views) == len(list((out / "new-images" / "images").iterdir())) and set(views) == {2}
    assert len(pd.read_csv(tmp_path / "two" / "objects.csv")) > 0
    bad = subprocess.run([*base, "--out", str(tmp_path / "never"), "--tta", "3"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and "--tta: test-time views must be auto or one of 1, 2, 4, 8" in bad.stderr
    assert not (tmp_path / "never").exists()
