"""End to end: the README's main job on small generated data."""

import json

import numpy as np
import pandas as pd
import pytest

from orgaseg_core.cli import main
from orgaseg_core.images import read_labels


def test_example_runs_every_data_step(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["example", "--out", str(out), "--n-images", "4", "--size", "380x504"]) == 0
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
    assert main(["example", "--out", str(out), "--n-images", "4", "--size", "380x504"]) == 1
    assert "not empty" in capsys.readouterr().err
    assert main(["example", "--out", str(out), "--n-images", "4", "--size", "380x504", "--overwrite"]) == 0
