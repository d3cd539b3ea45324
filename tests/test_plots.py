"""The plots of an analysis (issue 15): PNG and SVG of each, readable on their own."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

pytest.importorskip("matplotlib", reason="plots need matplotlib (evaluation, segmentation or classification extra)")

from orgaseg_core.results.conditions import conditions_table  # noqa: E402
from orgaseg_core.results.design import Design  # noqa: E402
from orgaseg_core.results.plots import (  # noqa: E402
    plot_class_fractions,
    plot_confidence,
    plot_gallery,
    plot_plate,
    plot_sizes,
    well_position,
)

CLASSES = ["Branched", "Cyst"]


def _experiment():
    rng = np.random.default_rng(0)
    design, objects = [], []
    for condition, cyst in (("control", 0.2), ("drug", 0.6)):
        for w in range(3):
            well = f"{'B' if condition == 'control' else 'C'}{w + 1:02d}"
            stem = f"{well}_{condition}"
            design.append({"image": f"{stem}.tif", "stem": stem, "well": well, "condition": condition})
            for i in range(20):
                c = "Cyst" if i < cyst * 20 else "Branched"
                a = rng.lognormal(7, 0.3)
                objects.append({"stem": stem, "label": i + 1, "predicted_class": c, "confidence": rng.uniform(0.4, 1),
                                "area_px": a, "area_um2": a / 4, "equivalent_diameter": 2 * np.sqrt(a / np.pi),
                                "equivalent_diameter_um": np.sqrt(a / np.pi), "condition": condition,
                                "crop": f"crops/{stem}_{i + 1}.tif"})
    table = pd.DataFrame(design).astype({"well": "string", "condition": "string"})
    return pd.DataFrame(objects), Design(table=table, columns=["well", "condition"])


def _check(paths, words):
    png, svg = paths
    image = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    assert image.shape[0] > 200 and image.std() > 10  # drawn, not blank
    text = svg.read_text(encoding="utf-8")
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    for word in words:  # titles, axes and legends are text in the SVG
        assert word in text, word


def test_every_plot_is_written_as_png_and_svg(tmp_path):
    objects, design = _experiment()
    conditions = conditions_table(objects, design, CLASSES, control="control", seed=0)
    _check(plot_class_fractions(conditions, CLASSES, tmp_path / "fractions"),
           ["control", "drug", "Cyst", "Branched", "fraction of classified organoids"])
    _check(plot_sizes(objects, CLASSES, tmp_path / "sizes"), ["area (µm²)", "Cyst", "drug"])
    wells = conditions[conditions["grouping"] == "well"]
    _check(plot_plate(wells, tmp_path / "plate"), ["organoids per well", ">20<"])
    _check(plot_confidence(objects, tmp_path / "confidence", review_below=0.6), ["review below 0.6"])
    crops = tmp_path / "objects"
    (crops / "crops").mkdir(parents=True)
    for row in objects.itertuples():
        tifffile.imwrite(crops / row.crop, np.full((24, 24), row.label * 10 % 255, np.uint8))
    _check(plot_gallery(objects, crops, CLASSES, tmp_path / "gallery"), ["most confident", "least confident"])


def test_plate_positions():
    assert well_position("B07") == (1, 6) and well_position("h12") == (7, 11) and well_position("P24") == (15, 23)
    assert well_position("well-3") is None
    assert plot_plate(pd.DataFrame({"well": ["x1y"], "organoids": [3]}), __import__("pathlib").Path("/nonexistent/p")) is None
