"""Quality test of issue 3: default training on the example data segments unseen images well.

The example data (``orgaseg example`` settings: 36 generated 760x1008 images, masks, preprocess
with vignette removal, 2x2 tiles, scale 0.5, split) trains a StarDist model with StarDist's
default settings (``--backend stardist``, the default backend up to 0.17); held-out images generated with another seed (never seen in
training) are segmented at full resolution (image_scale 1.0, so ``segment`` rescales to the
model's scale 0.5 and back) and compared with their annotations.

TensorFlow runs in child processes (the orgaseg CLI), never in the pytest process.
Measured on 2 CPU cores: about 7 minutes in all on idle cores (33 minutes when the cores are
shared), F1 ~0.94-0.97 at IoU 0.5. Marked ``slow``: not part of CI's run (which must stay under
30 minutes), run it with ``pytest -m slow``; CI keeps the pixel forest's quality guard
(tests/test_forest.py) and the tiny StarDist training of tests/test_segmentation.py.

The same data trains the U-Net, the default backend since 0.18, with its default (``quick``)
budget in :func:`test_unet_default_training_segments_unseen_images` (also ``slow``; about 6
minutes on 2 idle CPU cores, F1 0.96 at IoU 0.5, mean matched IoU 0.93, branched organoids
0.81 with orgaseg-core 0.17.0, 0.80 with 0.19.0, whose smooth enlargement of the outlines rounds
the thinnest buds a little, 0.81 with 0.20.0's smaller blur and object-centred patches): issue
10's targets on generated images, for the backend that is far better on real ones. CI's guard for the U-Net is the tiny training of tests/test_unet.py.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time

import pandas as pd
import pytest

from orgaseg_core.common.images import read_labels
from orgaseg_core.data.demo import make_demo_data
from orgaseg_core.data.masks import annotations_to_masks
from orgaseg_core.pipelines.example import run_example
from orgaseg_core.segmentation.evaluation import recall_by_class, segmentation_metrics

N_SOURCE_IMAGES = 36  # 70 % for training: 25 source images, 100 tiles
N_HELD_OUT = 6
HELD_OUT_SEED = 20261124  # the training data uses seed 0


def run_cli(*args) -> subprocess.CompletedProcess:
    """``orgaseg ARGS`` in a child process: TensorFlow must not enter the pytest process
    (torch tests later in the same process would crash)."""
    return subprocess.run([sys.executable, "-m", "orgaseg_core.cli", *map(str, args)],
                          capture_output=True, text=True)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("stardist") is None
                    or importlib.util.find_spec("tensorflow") is None,
                    reason="the segmentation extra (stardist, tensorflow) is not installed")
def test_stardist_default_training_segments_unseen_images(tmp_path):
    t0 = time.perf_counter()
    example = run_example(tmp_path / "example", n_images=N_SOURCE_IMAGES, seed=0, data_only=True)
    split = example.folders["split (segmentation)"]
    table = pd.read_csv(split / "split.csv")
    assert table.loc[table.split == "train", "group"].nunique() >= 24
    t_data = time.perf_counter() - t0

    # StarDist's default settings: only data, output, backend and seed are given.
    done = run_cli("train-segmentation", "--data", split, "--model-out", tmp_path / "model", "--seed", 0,
                   "--backend", "stardist")
    assert done.returncode == 0, done.stderr[-5000:]
    t_train = time.perf_counter() - t0 - t_data
    print(done.stdout)
    meta = json.loads((tmp_path / "model" / "orgaseg_model.json").read_text())
    assert meta["scale"] == 0.5  # read from the preprocess run record
    assert meta["preprocessing"] == {"remove_vignette": True, "flatten_background": False}

    t1 = time.perf_counter()
    metrics, _ = held_out_scores(tmp_path, tmp_path / "model")
    t_segment = time.perf_counter() - t1  # with making and annotating the held-out images
    total = time.perf_counter() - t0
    print(f"quality test: data {t_data:.0f} s, training {t_train:.0f} s "
          f"(fit {meta['timings_s']['training']:.0f} s, {meta['timings_s']['per_epoch']:.1f} s per epoch), "
          f"making and segmenting {N_HELD_OUT} held-out images {t_segment:.0f} s, total {total:.0f} s")
    print(metrics[["n_true", "n_pred", "tp", "precision", "recall", "f1", "ap", "mean_matched_iou"]]
          .to_string(float_format=lambda v: f"{v:.3f}"))
    assert metrics.loc[0.5, "n_true"] > 50
    assert metrics.loc[0.5, "f1"] >= 0.8, metrics
    # outlines: 0.97 measured with the edges refinement that training chooses (0.78 without,
    # orgaseg 0.2.0); a fall below 0.85 means the refinement or its choice broke
    assert metrics.loc[0.5, "mean_matched_iou"] >= 0.85, metrics
    assert meta["refinement"] in ("none", "probability", "edges")


def held_out_scores(tmp_path, model):
    """Segment the held-out images (another seed) with ``model`` at full resolution and score
    them: (metrics by threshold, per-class table of recall at IoU 0.5 and mean matched IoU)."""
    held = make_demo_data(tmp_path / "held-out", n_images=N_HELD_OUT, seed=HELD_OUT_SEED)
    annotations_to_masks(tmp_path / "held-out" / "geojsons", tmp_path / "held-out" / "images",
                         tmp_path / "held-out-masks")
    done = run_cli("segment", "--model", model, "--images", tmp_path / "held-out" / "images",
                   "--out", tmp_path / "seg", "--image-scale", 1.0)
    assert done.returncode == 0, done.stderr[-5000:]
    truths, preds, classes = [], [], []
    for image in held.images:
        stem = image.name.split(".")[0]
        truth = read_labels(tmp_path / "held-out-masks" / f"{stem}.tif")
        pred = read_labels(tmp_path / "seg" / f"{stem}.tif")
        assert pred.shape == truth.shape  # back at full resolution
        truths.append(truth)
        preds.append(pred)
        classes.append(pd.read_csv(tmp_path / "held-out-masks" / f"{stem}_objects.csv")
                       .set_index("label")["class"].to_dict())
    metrics = segmentation_metrics(truths, preds, thresholds=(0.5, 0.7, 0.9)).set_index("threshold")
    return metrics, recall_by_class(truths, preds, classes).set_index("class")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="the U-Net needs torch (the classification or analysis extra)")
def test_unet_default_training_segments_unseen_images(tmp_path):
    example = run_example(tmp_path / "example", n_images=N_SOURCE_IMAGES, seed=0, data_only=True)
    split = example.folders["split (segmentation)"]
    done = run_cli("train-segmentation", "--data", split, "--model-out", tmp_path / "model", "--seed", 0,
                   "--backend", "unet")
    assert done.returncode == 0, done.stderr[-5000:]
    print(done.stdout)
    meta = json.loads((tmp_path / "model" / "orgaseg_model.json").read_text())
    assert meta["backend"] == "unet" and meta["scale"] == 0.5 and meta["budget"]["preset"] == "quick"

    metrics, per_class = held_out_scores(tmp_path, tmp_path / "model")
    print(metrics[["n_true", "n_pred", "tp", "precision", "recall", "f1", "ap", "mean_matched_iou"]]
          .to_string(float_format=lambda v: f"{v:.3f}"))
    print(per_class.to_string(float_format=lambda v: f"{v:.3f}"))
    assert metrics.loc[0.5, "n_true"] > 50
    # measured 0.960 and 0.930 (orgaseg-core 0.17.0), 0.960 and 0.933 (0.19.0), 0.960 and
    # 0.937 (0.20.0); issue 10's target for the outlines is 0.88
    assert metrics.loc[0.5, "f1"] >= 0.9, metrics
    assert metrics.loc[0.5, "mean_matched_iou"] >= 0.88, metrics
    # no class missed systematically; the buds of branched organoids are what the outlines
    # lose first (0.810 measured with 0.17.0, 0.801 with 0.19.0's smooth enlargement, 0.811
    # with 0.20.0's 0.8 px blur and object-centred patches; target 0.80; a little margin for
    # differences between machines)
    assert (per_class["recall"] >= 0.8).all(), per_class
    assert per_class.loc["Branched", "mean_matched_iou"] >= 0.78, per_class
