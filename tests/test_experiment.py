"""The example's generated experiment: wells of a control and a treatment with planted effects."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from orgaseg_core.common.pixel_size import read_pixel_size
from orgaseg_core.data.experiment import EXAMPLE_CONDITIONS, make_demo_experiment, well_names
from orgaseg_core.pipelines.example import planted_effect


def test_the_experiment_plants_its_effects_and_writes_its_design(tmp_path):
    result = make_demo_experiment(tmp_path / "exp", wells_per_condition=3, seed=4, size=(380, 504))
    design = pd.read_csv(result.design_csv)
    assert list(design["well"]) == ["A01", "A02", "A03", "A04", "A05", "A06"]
    assert list(design["condition"]) == ["control"] * 3 + ["treated"] * 3
    assert sorted(p.name for p in (tmp_path / "exp" / "images").iterdir()) == sorted(design["image"])
    assert abs(read_pixel_size(result.images[0]).um - 0.65) < 1e-6
    planted = json.loads(result.planted_json.read_text())
    assert planted["treated"]["class_chance"]["Branched"] == 0.6 and planted["control"]["class_chance"]["Branched"] == 0.2
    # the generated images follow what was planted: more cysts, larger organoids under treatment
    counts = {name: sum(planted[name]["generated_counts"].values()) for name in planted}
    for name in planted:
        n_annotated = sum(len(json.loads(p.read_text())["features"])
                          for p in (tmp_path / "exp" / "geojsons").glob(f"*_{name}.tif.geojson"))
        assert n_annotated == counts[name]
    fractions = {name: planted[name]["generated_fractions"]["Branched"] for name in planted}
    assert fractions["treated"] > fractions["control"] + 0.1
    assert planted["treated"]["generated_median_area_um2"] > 1.1 * planted["control"]["generated_median_area_um2"]
    again = make_demo_experiment(tmp_path / "again", wells_per_condition=3, seed=4, size=(380, 504))
    assert again.images[3].read_bytes() == result.images[3].read_bytes()


def test_planted_effect_reads_the_measured_difference(tmp_path):
    (tmp_path / "planted.json").write_text(json.dumps({
        name: {"class_chance": {"Branched": c.class_weights["Branched"] / sum(c.class_weights.values())},
               "generated_fractions": {"Branched": f}, "generated_median_area_um2": a}
        for (name, c), f, a in zip(EXAMPLE_CONDITIONS.items(), (0.2, 0.55), (100.0, 170.0))}))
    pd.DataFrame({"grouping": ["condition", "condition", "well"], "condition": ["control", "treated", "treated"],
                  "diff_Branched": [np.nan, 0.3, np.nan], "diff_Branched_low": [np.nan, 0.2, np.nan],
                  "diff_Branched_high": [np.nan, 0.45, np.nan], "area_median": [120.0, 180.0, 1.0]}
                 ).to_csv(tmp_path / "conditions.csv", index=False)
    effect = planted_effect(tmp_path / "conditions.csv", tmp_path / "planted.json")
    assert effect == {"effect_class": "Branched", "planted_diff": 0.4, "generated_diff": 0.35, "measured_diff": 0.3,
                      "measured_diff_low": 0.2, "measured_diff_high": 0.45, "planted_area_ratio": 1.7,
                      "measured_area_ratio": 1.5}


def test_well_names_run_along_the_rows_of_a_96_well_plate():
    assert well_names(3, start=11) == ["A12", "B01", "B02"]
