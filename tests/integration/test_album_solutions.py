"""Every solution through the real album CLI: install from the catalog, run, album test, uninstall.

Inputs are generated with orgaseg_core in this process; the runs themselves happen in the
solution environments album creates (venvs with the orgaseg-core wheel of the checkout, see
conftest.py and tests/album_support/micromamba_standin.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from album_helpers import error_line
from digests import tree_digest

pytestmark = pytest.mark.integration

VERSION = "0.21.0"
STEPS = ("demo-data", "sort-crops", "annotations-to-masks", "preprocess", "split", "evaluate-segmentation",
         "train-segmentation", "segment", "extract-objects", "train-classifier", "classify", "analyze")
CLASSES = {"Cyst", "Filled in", "Early branching", "Branched", "Burned out"}


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
def sort_crops_solution(album):
    """orgaseg:sort-crops installed once for the tests that run it (album run, run-distributed)."""
    with installed(album, "sort-crops"):
        yield coordinates("sort-crops")


@pytest.fixture(scope="module")
def demo(album, tmp_path_factory) -> Path:
    """Two small generated images with QuPath-style annotations and crops (made in this process)."""
    from orgaseg_core.data.demo import make_demo_data

    out = tmp_path_factory.mktemp("inputs") / "demo"
    make_demo_data(out, n_images=2, seed=11, size=(240, 320))
    return out


def test_catalog_offers_every_solution(album):
    out = album("index", "--json").output
    index = json.loads(out[out.index("{"):])
    catalog = next(c for c in index["catalogs"] if c["name"] == "orgaseg")
    assert catalog["src"] == str(album.catalog_repo)
    offered = {s["setup"]["name"]: s["setup"] for s in catalog["solutions"]}
    assert set(offered) == set(STEPS)
    for step, setup in offered.items():
        assert setup["version"] == VERSION and setup["group"] == "orgaseg"
        assert all(arg["type"] and arg["description"] for arg in setup["args"]), step


def test_demo_data(album):
    step = coordinates("demo-data")
    with installed(album, "demo-data"):
        out = album.workdir / "demo-data"
        run = album("run", step, "--out", out, "--n_images", "2", "--seed", "3", "--size", "240x320")
        assert "demo-data: 2 images of 240x320 px" in run.output
        images = sorted((out / "images").iterdir())
        assert [p.name for p in images] == ["demo_000.jpg", "demo_001.tif"]
        assert tifffile.imread(images[1]).shape == (240, 320)
        objects = pd.read_csv(out / "objects.csv", keep_default_na=False)
        for image in images:
            features = json.loads((out / "geojsons" / f"{image.name}.geojson").read_text())["features"]
            assert len(features) == (objects["image"] == image.name).sum() > 5
        assert set(objects.loc[objects["class"] != "", "class"]) <= CLASSES
        assert len(list((out / "crops").iterdir())) == (objects["crop"] != "").sum()
        record = json.loads((out / "run.json").read_text())
        assert record["arguments"]["n_images"] == 2 and record["arguments"]["size"] == [240, 320]
        assert record["arguments"]["style"] == "default"

        # album's argument parser rejects a value of the wrong type before anything runs
        bad = album("run", step, "--out", album.workdir / "never", "--n_images", "abc", expect=2)
        assert "argument --n_images: invalid int value: 'abc'" in bad.output
        # the hyphenated names of 0.7.0 are the command line's, not the solution's (since 0.8.0)
        bad = album("run", step, "--out", album.workdir / "never", "--n-images", "2", expect=2)
        assert "unrecognized arguments: --n-images" in bad.output
        # values the solution checks end the run with one ERROR line and exit status 1
        bad = album("run", step, "--out", album.workdir / "never", "--size", "big", expect=2)  # a usage error
        error_line(bad.output, "--size must look like 2x3")
        bad = album("run", step, "--out", album.workdir / "never", "--style", "sketch", expect=2)  # a usage error
        error_line(bad.output, "unknown demo style 'sketch'", "default, faint")
        assert "Traceback" not in bad.output
        assert not (album.workdir / "never").exists()
        # the output folder of the first run is refused without overwrite
        again = album("run", step, "--out", out, "--n_images", "2", "--size", "240x320", expect=1)
        error_line(again.output, str(out))

        album("test", step)


def test_sort_crops(album, demo, sort_crops_solution):
    step = sort_crops_solution
    crops = demo / "crops"
    truth = pd.read_csv(demo / "objects.csv", keep_default_na=False)
    classified = truth[truth["class"] != ""]
    if True:  # the solution is installed by the fixture (shared with test_run_distributed)
        before = tree_digest(crops)
        out = album.workdir / "sorted-copy"
        run = album("run", step, "--crops", crops, "--out", out, "--move", "False")
        n_classes = classified["class"].nunique()
        assert f"copied {len(classified)} crops into {n_classes} class folders" in run.output
        # "--move False" is False: the crops are copied, the input folder is untouched
        assert tree_digest(crops) == before
        for crop, cls in zip(classified["crop"], classified["class"]):
            assert (out / cls / crop).read_bytes() == (crops / crop).read_bytes()
        assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(set(classified["class"]))
        assert list(pd.read_csv(out / "skipped.csv")["file"]) == \
            list(truth.loc[(truth["class"] == "") & (truth["crop"] != ""), "crop"])

        # "--move True" is True: the classified crops leave their folder
        scratch = album.workdir / "crops-to-move"
        shutil.copytree(crops, scratch)
        moved_out = album.workdir / "sorted-moved"
        album("run", step, "--crops", scratch, "--out", moved_out, "--move", "True")
        assert sorted(p.name for p in scratch.iterdir()) == \
            sorted(truth.loc[(truth["class"] == "") & (truth["crop"] != ""), "crop"])
        moved = {f"{c}/{n}" for n, c in zip(classified["crop"], classified["class"])}
        assert moved <= tree_digest(moved_out).keys()

        # a boolean that is neither true nor false is refused by the parser
        bad = album("run", step, "--crops", crops, "--out", album.workdir / "never", "--move", "maybe",
                    expect=2)
        assert "argument --move" in bad.output
        # a missing input folder: exit status 1, the folder named in an ERROR line, no output
        missing = album.workdir / "no-such-crops"
        bad = album("run", step, "--crops", missing, "--out", album.workdir / "never", expect=1)
        error_line(bad.output, str(missing), "does not exist")
        assert not (album.workdir / "never").exists()

        album("test", step)


@pytest.mark.skipif(importlib.util.find_spec("album.distributed") is None,
                    reason="album-distributed is not installed (the dev extra installs it on Python 3.11+)")
def test_run_distributed(album, demo, sort_crops_solution):
    """``album run-distributed`` (album-distributed 0.3.0) runs one task per input folder: the
    first pattern (--crops) defines the tasks, --class_map (a snake_case path argument: expanded
    since 0.8.0, hyphenated names never were) is paired with it by name, --out is derived."""
    base = album.workdir / "plates"
    truth = pd.read_csv(demo / "objects.csv", keep_default_na=False)
    truth = truth[truth["crop"] != ""].reset_index(drop=True)
    plates = ("plate_a", "plate_b", "plate_c")
    crops_of = {plate: truth.iloc[i::len(plates)] for i, plate in enumerate(plates)}
    for plate, rows in crops_of.items():
        (base / "exports" / plate).mkdir(parents=True)
        for crop in rows["crop"]:
            shutil.copy2(demo / "crops" / crop, base / "exports" / plate / crop)
        (base / "maps").mkdir(exist_ok=True)
        # every plate its own class names: which map a task got shows in its folders
        (base / "maps" / f"{plate}.csv").write_text(
            "".join(f"{c},{c} {plate[-1].upper()}\n" for c in sorted(set(truth["class"]) - {""})),
            encoding="utf-8")
    before = tree_digest(base / "exports")

    run = album("run-distributed", sort_crops_solution, "--crops", f"{base}/exports/*",
                "--out", f"{base}/sorted/*", "--class_map", f"{base}/maps/*.csv", "--move", "False",
                timeout=300)
    assert "3 of 3 task(s) succeeded" in run.output, run.output
    assert sorted(p.name for p in (base / "sorted").iterdir()) == list(plates)
    for plate, rows in crops_of.items():
        out = base / "sorted" / plate
        classified = rows[rows["class"] != ""]
        suffix = plate[-1].upper()
        assert sorted(p.name for p in out.iterdir() if p.is_dir()) == \
            sorted(f"{c} {suffix}" for c in set(classified["class"])), plate
        for crop, cls in zip(classified["crop"], classified["class"]):
            assert (out / f"{cls} {suffix}" / crop).read_bytes() == (demo / "crops" / crop).read_bytes()
        record = json.loads((out / "run.json").read_text())
        assert record["arguments"]["class_map"] == str(base / "maps" / f"{plate}.csv")
        assert record["arguments"]["crops"] == str(base / "exports" / plate)
    assert tree_digest(base / "exports") == before  # copied, not moved


def test_annotations_to_masks(album, demo):
    step = coordinates("annotations-to-masks")
    truth = pd.read_csv(demo / "objects.csv", keep_default_na=False)
    organoids = truth[(truth["kind"] == "organoid") & (truth["class"] != "")]
    with installed(album, "annotations-to-masks"):
        before = tree_digest(demo)
        out = album.workdir / "masks"
        run = album("run", step, "--annotations", demo / "geojsons", "--images", demo / "images",
                    "--out", out)
        assert f"2 label images with {len(organoids)} objects" in run.output
        for image in sorted((demo / "images").iterdir()):
            labels = tifffile.imread(out / f"{image.stem}.tif")
            table = pd.read_csv(out / f"{image.stem}_objects.csv")
            expected = organoids[organoids["image"] == image.name]
            assert labels.dtype == np.uint16 and labels.shape == (240, 320)
            assert sorted(table["class"]) == sorted(expected["class"])
            ids, counts = np.unique(labels[labels > 0], return_counts=True)
            drawn = table[table["area_px"] > 0]
            assert list(ids) == list(drawn["label"]) and list(counts) == list(drawn["area_px"])
        assert tree_digest(demo) == before

        # "--keep_unclassified True" also draws the annotation without a class
        kept = album.workdir / "masks-unclassified"
        album("run", step, "--annotations", demo / "geojsons", "--images", demo / "images",
              "--out", kept, "--keep_unclassified", "True")
        unclassified = truth[(truth["class"] == "") & (truth["geometry"] != "LineString")]
        assert len(unclassified) >= 1
        for image in sorted((demo / "images").iterdir()):
            table = pd.read_csv(kept / f"{image.stem}_objects.csv")
            extra = (unclassified["image"] == image.name).sum()
            assert (table["class"] == "Unclassified").sum() == extra
            assert tifffile.imread(kept / f"{image.stem}.tif").max() == \
                (organoids["image"] == image.name).sum() + extra

        album("test", step)


def test_preprocess(album, demo, tmp_path):
    from orgaseg_core.data.masks import annotations_to_masks

    step = coordinates("preprocess")
    masks = tmp_path / "masks"
    annotations_to_masks(demo / "geojsons", demo / "images", masks)
    with installed(album, "preprocess"):
        out = album.workdir / "preprocessed"
        album("run", step, "--images", demo / "images", "--masks", masks, "--out", out,
              "--tiles", "2x2", "--scale", "0.5", "--remove_vignette", "True",
              "--flatten_background", "False")
        names = sorted(f"{s}_r{r}c{c}.tif" for s in ("demo_000", "demo_001") for r in (0, 1) for c in (0, 1))
        assert sorted(p.name for p in (out / "images").iterdir()) == names
        assert sorted(p.name for p in (out / "masks").iterdir()) == names
        tiles = pd.read_csv(out / "tiles.csv", dtype={"vanished_objects": str}, keep_default_na=False)
        for row in tiles.itertuples():
            image = tifffile.imread(out / "images" / row.file)
            mask = tifffile.imread(out / "masks" / row.file)
            assert image.shape == mask.shape == (60, 80) and image.ndim == 2
            n = len(np.unique(mask[mask > 0]))
            assert n == row.n_objects and mask.max() == n  # renumbered 1..n per tile
        record = json.loads((out / "run.json").read_text())
        assert record["arguments"]["remove_vignette"] is True
        assert record["arguments"]["flatten_background"] is False
        assert record["arguments"]["tiles"] == [2, 2] and record["arguments"]["scale"] == 0.5

        bad = album("run", step, "--images", demo / "images", "--out", album.workdir / "never",
                    "--tiles", "2by2", expect=2)  # a usage error
        error_line(bad.output, "--tiles must look like 2x3")
        bad = album("run", step, "--images", demo / "images", "--out", album.workdir / "never",
                    "--scale", "half", expect=2)
        assert "argument --scale: invalid float value: 'half'" in bad.output

        album("test", step)


def test_split(album, demo, tmp_path):
    from orgaseg_core.data.sort_crops import sort_crops

    step = coordinates("split")
    sorted_crops = tmp_path / "sorted"
    sort_crops(demo / "crops", sorted_crops)
    with installed(album, "split"):
        out = album.workdir / "split-classification"
        album("run", step, "--data", sorted_crops, "--out", out, "--mode", "classification",
              "--train", "0.5", "--val", "0", "--test", "0.5", "--seed", "1")
        table = pd.read_csv(out / "split.csv")
        crops = sorted(p.relative_to(sorted_crops).as_posix() for p in sorted_crops.glob("*/*.tif"))
        assert sorted(table["file"]) == crops  # every crop once, as <Class>/<file>
        # the crops of one source image never end up in two splits: two images, two splits
        assert table.groupby("group")["split"].nunique().max() == 1
        assert set(table["group"]) == {"demo_000", "demo_001"}
        assert set(table["split"]) == {"train", "test"} and not (out / "val").exists()
        for row in table.itertuples():
            assert (out / row.split / row.file).read_bytes() == (sorted_crops / row.file).read_bytes()

        bad = album("run", step, "--data", sorted_crops, "--out", album.workdir / "never",
                    "--mode", "classification", "--train", "0.8", "--val", "0.3", "--test", "0.2", expect=2)  # a usage error
        error_line(bad.output, "must add up to 1")
        bad = album("run", step, "--data", sorted_crops, "--out", album.workdir / "never",
                    "--mode", "clustering", expect=2)  # a usage error
        error_line(bad.output, "--mode must be 'segmentation' or 'classification'")
        assert not (album.workdir / "never").exists()

        album("test", step)


def test_evaluate_segmentation(album, demo, tmp_path):
    from orgaseg_core.data.masks import annotations_to_masks

    step = coordinates("evaluate-segmentation")
    truth = tmp_path / "truth"
    annotations_to_masks(demo / "geojsons", demo / "images", truth)
    # prediction: the truth with other label ids (ids must not matter) and one object removed
    pred = tmp_path / "pred"
    pred.mkdir()
    n_true = 0
    for path in sorted(truth.glob("*.tif")):
        labels = tifffile.imread(path).astype(np.uint32)
        n_true += len(np.unique(labels[labels > 0]))
        renamed = np.where(labels > 0, labels * 7 + 1000, 0).astype(np.uint32)
        if path.stem == "demo_000":
            renamed[labels == labels.max()] = 0
        tifffile.imwrite(pred / path.name, renamed)
    with installed(album, "evaluate-segmentation"):
        before = tree_digest(truth), tree_digest(pred)
        out = album.workdir / "evaluation"
        album("run", step, "--truth", truth, "--pred", pred, "--out", out, "--images", demo / "images")
        metrics = pd.read_csv(out / "metrics.csv").set_index("threshold")
        # every other object is identical (IoU 1), so the counts are the same at every threshold
        for threshold in (0.5, 0.7, 0.9):
            row = metrics.loc[threshold]
            assert (row["tp"], row["fn"], row["fp"]) == (n_true - 1, 1, 0), threshold
            assert row["precision"] == 1.0 and row["mean_matched_iou"] == 1.0
        assert sorted(p.name for p in (out / "overlays").iterdir()) == ["demo_000.png", "demo_001.png"]
        assert (out / "ap_vs_iou.png").stat().st_size > 1000
        assert (tree_digest(truth), tree_digest(pred)) == before

        bad = album("run", step, "--truth", truth, "--pred", album.workdir / "missing",
                    "--out", album.workdir / "never", expect=1)
        error_line(bad.output, "missing")
        assert not (album.workdir / "never").exists()

        album("test", step)


def test_train_segmentation_then_segment(album, demo, tmp_path):
    """The default pair (since 0.18.0 a U-Net, torch): a tiny model trained through album, then
    used through album; the same for a tiny StarDist model (TensorFlow, in the same environment:
    never in one process with torch)."""
    from orgaseg_core.data.masks import annotations_to_masks
    from orgaseg_core.data.preprocess import preprocess
    from orgaseg_core.data.split import split_dataset

    annotations_to_masks(demo / "geojsons", demo / "images", tmp_path / "masks")
    preprocess(demo / "images", tmp_path / "pre", masks=tmp_path / "masks")
    split_dataset(tmp_path / "pre", tmp_path / "split", mode="segmentation", train=0.5, val=0.5, test=0.0)
    model = album.workdir / "model"
    with installed(album, "train-segmentation"):
        step = coordinates("train-segmentation")
        before = tree_digest(tmp_path / "split")
        # the default backend: a U-Net
        unet = album.workdir / "unet"
        album("run", step, "--data", tmp_path / "split", "--model_out", unet,
              "--epochs", "1", "--steps_per_epoch", "2", "--batch_size", "2", "--patch_size", "64",
              "--device", "cpu")
        meta = json.loads((unet / "orgaseg_model.json").read_text())
        assert meta["kind"] == "orgaseg-unet" and (unet / "unet.pt").is_file()
        assert json.loads((unet / "run.json").read_text())["arguments"]["device"] == "cpu"
        assert tree_digest(tmp_path / "split") == before
        # StarDist's options without backend 'stardist': refused by their album names
        bad = album("run", step, "--data", tmp_path / "split", "--model_out", album.workdir / "never",
                    "--n_rays", "64", expect=1)
        error_line(bad.output, "n_rays", "--backend stardist")
        assert not (album.workdir / "never").exists()
        # no validation data: refused with the reason, before any training
        no_val = tmp_path / "no-val"
        shutil.copytree(tmp_path / "split" / "train", no_val / "train")
        bad = album("run", step, "--data", no_val, "--model_out", album.workdir / "never", expect=1)
        error_line(bad.output, "val")
        assert not (album.workdir / "never").exists()
        # StarDist (the default up to 0.17.0)
        album("run", step, "--data", tmp_path / "split", "--model_out", model, "--backend", "stardist",
              "--epochs", "1", "--steps_per_epoch", "2", "--batch_size", "2", "--patch_size", "64",
              "--augment", "False")
        meta = json.loads((model / "orgaseg_model.json").read_text())
        assert meta["kind"] == "orgaseg-stardist2d" and (model / "thresholds.json").is_file()
        assert set(pd.read_csv(model / "report.csv")["threshold"].round(2)) >= {0.5, 0.7, 0.9}
        assert tree_digest(tmp_path / "split") == before
        album("test", step)

    with installed(album, "segment"):
        step = coordinates("segment")
        out = album.workdir / "segmented"
        album("run", step, "--model", model, "--images", demo / "images", "--out", out)
        for image in sorted((demo / "images").iterdir()):
            labels = tifffile.imread(out / f"{image.stem}.tif")
            assert labels.shape == (240, 320)
            ids = sorted(int(i) for i in np.unique(labels) if i)
            assert sorted(pd.read_csv(out / f"{image.stem}_objects.csv")["label"]) == ids
            features = json.loads((out / f"{image.stem}.geojson").read_text())["features"]
            assert len(features) == len(ids)
        # the U-Net model: labels at the images' size (torch in this environment, no TensorFlow)
        out_unet = album.workdir / "segmented-unet"
        album("run", step, "--model", unet, "--images", demo / "images", "--out", out_unet)
        for image in sorted((demo / "images").iterdir()):
            labels = tifffile.imread(out_unet / f"{image.stem}.tif")
            assert labels.shape == (240, 320)
            ids = sorted(int(i) for i in np.unique(labels) if i)
            assert sorted(pd.read_csv(out_unet / f"{image.stem}_objects.csv")["label"]) == ids
        # a folder that is not a model: one error line naming it, nothing written
        bad = album("run", step, "--model", demo / "images", "--images", demo / "images",
                    "--out", album.workdir / "never", expect=1)
        error_line(bad.output, str(demo / "images"))
        assert not (album.workdir / "never").exists()
        album("test", step)


def test_install_from_solution_folder(album, demo):
    """``album install solutions/<step>``: a solution installs from its source folder too."""
    folder = album.catalog_repo / "solutions" / "sort-crops"
    result = album("install", folder)
    assert "Installed sort-crops!" in result.output
    assert f"cache_catalog:{coordinates('sort-crops')}" in album.installed()
    try:
        out = album.workdir / "sorted-from-folder"
        album("run", folder, "--crops", demo / "crops", "--out", out)
        assert (out / "sorted.csv").is_file() and (out / "Cyst").is_dir()
    finally:
        album("uninstall", folder)
    assert f"cache_catalog:{coordinates('sort-crops')}" not in album.installed()
