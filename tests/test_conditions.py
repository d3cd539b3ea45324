"""The experiment's design (metadata tables, name patterns) and the per-condition statistics
(Wilson and cluster-bootstrap intervals, permutation tests over wells) on planted effects."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from orgaseg_core.common.errors import InputFileError, OptionError
from orgaseg_core.results.conditions import check_control, conditions_table, groupings
from orgaseg_core.results.design import attach_design
from orgaseg_core.results.statistics import condition_table, permutation_p, wilson_interval

IMAGES = ["A01_control_d1.tif", "A02_control_d1.tif", "B01_drug_d1.tif", "B02_drug_d1.tif", "stray.png"]
PATTERN = r"(?P<well>[A-H]\d{2})_(?P<condition>[a-z]+)_d(?P<timepoint>\d+)"


def test_wilson_interval_known_values():
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    assert all(np.isnan(wilson_interval(0, 0)))


def test_exact_permutation_over_replicate_units():
    rng = np.random.default_rng(0)
    a, b = np.array([[1.0], [2.0]]), np.array([[10.0], [11.0]])
    # 6 ways to choose 2 of 4 units; only the observed split and its mirror are as extreme
    assert permutation_p(a, b, lambda x, y: x.mean() - y.mean(), rng) == pytest.approx(1 / 3)


def test_design_from_a_name_pattern_and_a_metadata_table(tmp_path):
    design = attach_design(IMAGES, name_pattern=PATTERN)
    table = design.table.set_index("image")
    assert design.columns == ["well", "condition", "timepoint"]
    assert table.loc["B02_drug_d1.tif", "condition"] == "drug" and table.loc["A01_control_d1.tif", "well"] == "A01"
    assert design.unmatched == ["stray.png"] and pd.isna(table.loc["stray.png", "condition"])
    meta = tmp_path / "plate.csv"
    pd.DataFrame({"Image": ["A01_control_d1", "stray.png"], "treatment": ["none", "x"],
                  "condition": ["vehicle", "drug"]}).to_csv(meta, index=False)
    both = attach_design(IMAGES, metadata=meta, name_pattern=PATTERN).table.set_index("image")
    # the table wins over the pattern for the same column, and describes the stray image
    assert both.loc["A01_control_d1.tif", "condition"] == "vehicle"
    assert both.loc["stray.png", "treatment"] == "x"
    xlsx = tmp_path / "plate.xlsx"
    pd.DataFrame({"image": IMAGES, "condition": ["c", "c", "d", "d", "d"]}).to_excel(xlsx, index=False)
    excel = attach_design(IMAGES, metadata=xlsx)
    assert excel.unmatched == [] and list(excel.table["condition"]) == ["c", "c", "d", "d", "d"]


def test_bad_designs_are_refused_by_name(tmp_path):
    with pytest.raises(OptionError, match="not a valid regular expression"):
        attach_design(IMAGES, name_pattern="(?P<well>[A-H")
    with pytest.raises(OptionError, match="no named group"):
        attach_design(IMAGES, name_pattern=r"[A-H]\d\d")
    no_image = tmp_path / "no-image.csv"
    no_image.write_text("file,condition\na.tif,x\n")
    with pytest.raises(InputFileError, match="no-image.csv: has no 'image' column"):
        attach_design(IMAGES, metadata=no_image)
    twice = tmp_path / "twice.csv"
    twice.write_text("image,condition\na.tif,x\na,y\n")
    with pytest.raises(InputFileError, match="more than once"):
        attach_design(IMAGES, metadata=twice)
    design = attach_design(IMAGES, name_pattern=PATTERN)
    with pytest.raises(OptionError, match="not a condition"):
        check_control(design, "placebo")
    assert check_control(design, "control") == "control"


def _planted(seed=0, wells=4, per_image=50, images_per_well=2):
    """Control: 20% Cyst and areas about 1000; drug: 60% Cyst and areas about 1500."""
    rng = np.random.default_rng(seed)
    design, objects = [], []
    for condition, cyst, area in (("control", 0.2, 1000.0), ("drug", 0.6, 1500.0)):
        for w in range(wells):
            well = f"{condition[0].upper()}{w + 1:02d}"
            for i in range(images_per_well):
                stem = f"{well}_{condition}_{i}"
                design.append({"image": f"{stem}.tif", "stem": stem, "well": well, "condition": condition})
                n_cyst = int(round(cyst * per_image))
                classes = ["Cyst"] * n_cyst + ["Branched"] * (per_image - n_cyst)
                for c in classes:
                    a = rng.normal(area, 100)
                    objects.append({"stem": stem, "predicted_class": c, "area_px": a,
                                    "equivalent_diameter": 2 * np.sqrt(a / np.pi),
                                    "area_um2": a * 0.25, "equivalent_diameter_um": np.sqrt(a / np.pi)})
    return pd.DataFrame(objects), pd.DataFrame(design).astype({"well": "string", "condition": "string"})


def test_the_planted_effect_is_found_with_intervals_over_wells():
    objects, design = _planted()
    table = condition_table(objects, design, ["Branched", "Cyst"], by=["condition"], replicate="well",
                            control="control", seed=1).set_index("condition")
    assert table.loc["control", "replicates"] == 4 and table.loc["control", "images"] == 8
    assert table.loc["control", "organoids"] == 400 and table.loc["drug", "organoids_per_image"] == 50
    assert table.loc["control", "fraction_Cyst"] == pytest.approx(0.2)
    assert table.loc["drug", "fraction_Cyst"] == pytest.approx(0.6)
    assert table.loc["drug", "size_unit"] == "µm"
    assert table.loc["drug", "area_median"] == pytest.approx(1500 * 0.25, rel=0.03)
    drug = table.loc["drug"]
    assert drug["diff_Cyst"] == pytest.approx(0.4)
    # every well has exactly the planted mix: the bootstrap over wells is tight around it
    assert drug["diff_Cyst_low"] <= 0.4 <= drug["diff_Cyst_high"]
    # 70 ways to split 8 wells 4/4: the smallest two-sided p is 2/70
    assert drug["diff_Cyst_p"] == pytest.approx(2 / 70, abs=1e-6)
    assert drug["diff_area_median"] == pytest.approx(500 * 0.25, rel=0.1)
    assert drug["diff_area_median_low"] > 0 and drug["diff_area_median_p"] == pytest.approx(2 / 70, abs=1e-6)
    assert np.isnan(table.loc["control", "diff_Cyst"])
    # Wilson's interval treats organoids as independent; it covers the planted fraction too
    assert drug["fraction_Cyst_wilson_low"] < 0.6 < drug["fraction_Cyst_wilson_high"]


def test_wells_not_organoids_are_the_replicates():
    """Two wells per condition that disagree: the organoid-level Wilson interval is narrow, the
    interval over wells is wide, and no permutation test can go below 1/3."""
    objects, design = _planted(wells=2, per_image=200)
    flip = objects["stem"].str.startswith("D02")  # one drug well looks like the control
    objects.loc[flip, "predicted_class"] = np.where(np.arange(flip.sum()) % 5 == 0, "Cyst", "Branched")
    table = condition_table(objects, design, ["Branched", "Cyst"], by=["condition"], replicate="well",
                            control="control", seed=1).set_index("condition")
    drug = table.loc["drug"]
    wilson = drug["fraction_Cyst_wilson_high"] - drug["fraction_Cyst_wilson_low"]
    boot = drug["fraction_Cyst_boot_high"] - drug["fraction_Cyst_boot_low"]
    assert boot > 3 * wilson
    assert drug["diff_Cyst_p"] >= 1 / 3


def test_conditions_table_has_every_grouping():
    objects, design = _planted()
    design["timepoint"] = pd.array(["1"] * len(design), dtype="string")
    from orgaseg_core.results.design import Design

    d = Design(table=design, columns=["well", "condition", "timepoint"])
    assert groupings(d.columns) == [["condition"], ["condition", "timepoint"], ["well"]]
    table = conditions_table(objects, d, ["Branched", "Cyst"], control="control", seed=0)
    assert list(table["grouping"].unique()) == ["condition", "condition+timepoint", "well"]
    assert (table.loc[table["grouping"] == "well", "organoids"] == 100).all()
    by_time = table[table["grouping"] == "condition+timepoint"].set_index("condition")
    assert by_time.loc["drug", "diff_Cyst"] == pytest.approx(0.4)
