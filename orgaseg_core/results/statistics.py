"""Per-condition results with their uncertainty (``conditions.csv``).

Replicates: organoids of one well (or, without wells, of one image) are not independent (they
share a well, a day, a focus), so the uncertainty that matters is between wells. Every interval
and test here resamples or permutes **replicate units** (wells when the design has a ``well``
column, else images), never single organoids:

* class fractions: the pooled fraction (organoids of the class / classified organoids) with two
  95% intervals: Wilson's score interval (organoids as if independent: the narrowest honest
  interval, shown for reference) and a cluster bootstrap over the replicate units (percentile
  interval of :data:`N_BOOTSTRAP` resamples), which is the one to read;
* sizes: median and quartiles of area and equivalent diameter (µm² / µm where every image has
  a pixel size, else px² / px; the ``unit`` column says which);
* against a ``control`` condition: the difference of each class fraction and of the median
  area (each replicate unit's median, averaged over the units of a condition), a bootstrap interval (replicates resampled within each condition) and a two-sided
  permutation test that shuffles whole replicate units between the two conditions (exact when
  there are few enough arrangements, else :data:`N_PERMUTATIONS` random ones). It assumes
  nothing about distributions and keeps each well's organoids together; with 2 wells per
  condition the smallest possible p is 1/3, which is the truth about such a design.

Everything random takes a ``seed``.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np
import pandas as pd

#: resamples of the cluster bootstrap, and random permutations when there are too many to list
N_BOOTSTRAP = 2000
N_PERMUTATIONS = 9999
MAX_EXACT = 20000
Z95 = 1.959963984540054


def wilson_interval(k: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval of a proportion ``k / n`` (NaN, NaN when n is 0)."""
    if n <= 0:
        return math.nan, math.nan
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _bootstrap_fractions(k: np.ndarray, n: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """(n_boot, C) pooled fractions of replicate units resampled with replacement; k (R, C)
    class counts, n (R,) classified organoids per unit."""
    r = n.size
    idx = rng.integers(0, r, size=(n_boot, r))
    kk = k[idx].sum(axis=1)
    nn = n[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return kk / nn[:, None]


def _percentile_interval(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(invalid="ignore"):
        return np.nanpercentile(values, 2.5, axis=0), np.nanpercentile(values, 97.5, axis=0)


def permutation_p(a: np.ndarray, b: np.ndarray, statistic, rng: np.random.Generator,
                  n_random: int = N_PERMUTATIONS) -> float:
    """Two-sided permutation p-value of ``statistic(units of a, units of b)`` (a difference),
    shuffling the replicate units (rows of ``a`` and ``b``) between the two groups: exact over
    all arrangements when there are at most :data:`MAX_EXACT`, else ``n_random`` random ones
    (p = (1 + as extreme) / (1 + n))."""
    pooled = np.concatenate([a, b])
    na, total = len(a), len(a) + len(b)
    observed = abs(statistic(a, b))
    if not math.isfinite(observed):
        return math.nan
    arrangements = math.comb(total, na)
    if arrangements <= MAX_EXACT:
        extreme = 0
        for chosen in itertools.combinations(range(total), na):
            mask = np.zeros(total, bool)
            mask[list(chosen)] = True
            extreme += abs(statistic(pooled[mask], pooled[~mask])) >= observed - 1e-12
        return extreme / arrangements
    extreme = 0
    for _ in range(n_random):
        mask = np.zeros(total, bool)
        mask[rng.choice(total, na, replace=False)] = True
        extreme += abs(statistic(pooled[mask], pooled[~mask])) >= observed - 1e-12
    return (1 + extreme) / (1 + n_random)


def _size_columns(objects: pd.DataFrame) -> tuple[str, str, str]:
    """(area column, diameter column, unit) : µm where every object has them, else px."""
    if "area_um2" in objects and len(objects) and objects["area_um2"].notna().all():
        return "area_um2", "equivalent_diameter_um", "µm"
    return "area_px", "equivalent_diameter", "px"


def condition_table(objects: pd.DataFrame, design: pd.DataFrame, class_names: Sequence[str], *,
                    by: Sequence[str], replicate: str | None = None, control: str | None = None,
                    seed: int = 0, n_boot: int = N_BOOTSTRAP) -> pd.DataFrame:
    """One row per group of ``by`` (design columns, e.g. ["condition"]).

    objects: classified organoids (stem, predicted_class, and area/diameter columns). design:
    one row per analysed image (stem and the design columns). replicate: the design column
    whose values are the replicate units (None: each image is one). control: a value of
    ``by[0]`` to compare the others with (see the module notes). Columns: the ``by`` values,
    images, replicates, organoids, organoids per image, per class count / fraction / Wilson
    and bootstrap 95% intervals, size medians and quartiles, and with ``control`` per class
    ``diff_<class>`` with its bootstrap interval and permutation p, the same for the median area
    (``diff_area_median``: the mean of the units' median areas, minus the control's).
    """
    rng = np.random.default_rng(seed)
    by = list(by)
    unit = replicate or "stem"
    design = design.copy()
    design["_unit"] = design[unit].astype("string").fillna("(none)") if unit in design else design["stem"]
    # the design comes from ``design`` (objects.csv of analyze carries a copy of it)
    own = objects.drop(columns=[c for c in set(by) | {"_unit"} if c in objects.columns])
    merged = own.merge(design[["stem", "_unit"] + by], on="stem", how="inner")
    area, diameter, size_unit = _size_columns(merged)
    rows, group_data = [], {}
    for key, images in design.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        mask = np.ones(len(merged), bool)
        for column, value in zip(by, key):
            mask &= (merged[column].isna() if pd.isna(value) else merged[column] == value).to_numpy()
        mine = merged[mask]
        units = sorted(images["_unit"].unique())
        k = np.array([[int(((mine["_unit"] == u) & (mine["predicted_class"] == c)).sum()) for c in class_names]
                      for u in units], np.float64).reshape(len(units), len(class_names))
        n = k.sum(axis=1)
        unit_areas = [mine.loc[mine["_unit"] == u, area].to_numpy(np.float64) for u in units]
        group_data[key] = (k, n, unit_areas)
        row = {c: (None if pd.isna(v) else v) for c, v in zip(by, key)}
        total = float(n.sum())
        row.update(images=int(len(images)), replicates=len(units), replicate_unit=replicate or "image",
                   organoids=int(total), organoids_per_image=round(total / max(len(images), 1), 3))
        boot = _bootstrap_fractions(k, n, rng, n_boot) if len(units) > 1 and total else None
        low_b, high_b = _percentile_interval(boot) if boot is not None else (None, None)
        for j, c in enumerate(class_names):
            kc = float(k[:, j].sum())
            row[f"count_{c}"] = int(kc)
            row[f"fraction_{c}"] = round(kc / total, 6) if total else math.nan
            lo, hi = wilson_interval(kc, total)
            row[f"fraction_{c}_wilson_low"], row[f"fraction_{c}_wilson_high"] = round(lo, 6), round(hi, 6)
            row[f"fraction_{c}_boot_low"] = round(float(low_b[j]), 6) if boot is not None else math.nan
            row[f"fraction_{c}_boot_high"] = round(float(high_b[j]), 6) if boot is not None else math.nan
        sizes = mine[area].to_numpy(np.float64)
        diameters = mine[diameter].to_numpy(np.float64)
        row["size_unit"] = size_unit
        for name, values in (("area", sizes), ("diameter", diameters)):
            q = np.percentile(values, (25, 50, 75)) if values.size else (math.nan,) * 3
            row[f"{name}_q1"], row[f"{name}_median"], row[f"{name}_q3"] = (round(float(v), 4) for v in q)
        rows.append(row)
    table = pd.DataFrame(rows)
    if control is not None and len(table):
        table = _against_control(table, group_data, by, class_names, control, rng, n_boot)
    return table


def _against_control(table: pd.DataFrame, data: dict, by: list[str], class_names: Sequence[str],
                     control: str, rng: np.random.Generator, n_boot: int) -> pd.DataFrame:
    first = by[0]
    table = table.copy()
    for j, c in enumerate(class_names):
        for suffix in ("", "_low", "_high", "_p"):
            table[f"diff_{c}{suffix}"] = math.nan
    for suffix in ("", "_low", "_high", "_p"):
        table[f"diff_area_median{suffix}"] = math.nan
    for i, row in table.iterrows():
        key = tuple(row[b] for b in by)
        ref_key = (control,) + key[1:]
        if row[first] == control or ref_key not in data:
            continue
        k1, n1, a1 = data[key]
        k0, n0, a0 = data[ref_key]
        if n1.sum() == 0 or n0.sum() == 0:
            continue
        f1, f0 = k1.sum(0) / n1.sum(), k0.sum(0) / n0.sum()
        boot = _bootstrap_fractions(k1, n1, rng, n_boot) - _bootstrap_fractions(k0, n0, rng, n_boot)
        low, high = _percentile_interval(boot)
        units1 = np.hstack([k1, n1[:, None]])
        units0 = np.hstack([k0, n0[:, None]])
        for j, c in enumerate(class_names):
            def stat(a, b, j=j):
                return a[:, j].sum() / max(a[:, -1].sum(), 1e-12) - b[:, j].sum() / max(b[:, -1].sum(), 1e-12)

            table.loc[i, f"diff_{c}"] = round(float(f1[j] - f0[j]), 6)
            table.loc[i, f"diff_{c}_low"] = round(float(low[j]), 6)
            table.loc[i, f"diff_{c}_high"] = round(float(high[j]), 6)
            table.loc[i, f"diff_{c}_p"] = round(permutation_p(units1, units0, stat, rng), 6)
        # the median area of each replicate unit (one value per well), averaged per condition
        m1 = np.array([np.median(a) for a in a1 if a.size])
        m0 = np.array([np.median(a) for a in a0 if a.size])
        if m1.size and m0.size:
            diff = float(np.mean(m1) - np.mean(m0))
            boots = (np.mean(m1[rng.integers(0, m1.size, (n_boot, m1.size))], axis=1)
                     - np.mean(m0[rng.integers(0, m0.size, (n_boot, m0.size))], axis=1))
            table.loc[i, "diff_area_median"] = round(diff, 4)
            table.loc[i, "diff_area_median_low"] = round(float(np.percentile(boots, 2.5)), 4)
            table.loc[i, "diff_area_median_high"] = round(float(np.percentile(boots, 97.5)), 4)
            table.loc[i, "diff_area_median_p"] = round(permutation_p(
                m1[:, None], m0[:, None], lambda a, b: float(np.mean(a) - np.mean(b)), rng), 6)
    return table
