"""Shape agreement: how the measurements of segmented organoids compare with the true ones.

F1 and IoU say whether an organoid was found and how well its outline overlaps the annotated
one; a biologist reads the measurements (area, perimeter, circularity, solidity), and an
outline with a high IoU can still measure wrongly: a jagged or stepped outline has a perimeter
10 % too long and a circularity 20 % too low at an IoU above 0.95. So every pair matched at IoU
>= 0.5 is measured on both sides with the same function ``extract-objects`` uses
(:func:`orgaseg_core.objects.measurements.measure_objects`) and the ratios measured / true are
summarised by their median (bias) and the median of their absolute deviation from 1 (error).

numpy and pandas only (no framework).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

#: the measurements compared (columns of :func:`~orgaseg_core.objects.measurements.measure_objects`)
SHAPE_MEASURES = ("area_px", "perimeter", "circularity", "solidity")
#: pairs matched at this IoU are compared
SHAPE_IOU = 0.5


def shape_pairs(truth: np.ndarray, pred: np.ndarray, pairs: Sequence[tuple[int, int, float]]) -> pd.DataFrame:
    """One row per matched pair: ``true_label``, ``pred_label``, ``iou`` and, for each of
    :data:`SHAPE_MEASURES`, ``true_<m>`` and ``pred_<m>`` (pixels; circularity and solidity
    unitless). truth, pred: label images (Y, X); pairs: (true id, predicted id, IoU), e.g. from
    :func:`..evaluation.matched_pairs`."""
    from ..objects.measurements import measure_objects

    columns = ["true_label", "pred_label", "iou"] + [f"{side}_{m}" for m in SHAPE_MEASURES for side in ("true", "pred")]
    if not len(pairs):
        return pd.DataFrame(columns=columns)
    true_ids = np.array([p[0] for p in pairs], dtype=np.int64)
    pred_ids = np.array([p[1] for p in pairs], dtype=np.int64)
    # measure only the matched objects (the others are set to background in a copy)
    true_table = measure_objects(np.where(np.isin(truth, true_ids), truth, 0)).set_index("label")
    pred_table = measure_objects(np.where(np.isin(pred, pred_ids), pred, 0)).set_index("label")
    table = pd.DataFrame({"true_label": true_ids, "pred_label": pred_ids,
                          "iou": np.array([p[2] for p in pairs], dtype=np.float64)})
    for m in SHAPE_MEASURES:
        table[f"true_{m}"] = true_table.loc[true_ids, m].to_numpy(dtype=np.float64)
        table[f"pred_{m}"] = pred_table.loc[pred_ids, m].to_numpy(dtype=np.float64)
    return table[columns]


def shape_summary(table: pd.DataFrame) -> dict:
    """Per measure of a :func:`shape_pairs` table (one or several images): ``median_ratio``
    (median of measured / true: above 1 = measured too large) and ``median_error`` (median of
    |measured / true - 1|), over the pairs where both values are finite and the true one is
    not 0; plus ``pairs``. Values rounded to 4 decimals; None when no pair has the measure."""
    summary: dict = {"pairs": int(len(table))}
    for m in SHAPE_MEASURES:
        true, pred = table[f"true_{m}"].to_numpy(dtype=np.float64), table[f"pred_{m}"].to_numpy(dtype=np.float64)
        ok = np.isfinite(true) & np.isfinite(pred) & (true != 0)
        ratio = pred[ok] / true[ok]
        summary[m] = ({"median_ratio": round(float(np.median(ratio)), 4),
                       "median_error": round(float(np.median(np.abs(ratio - 1))), 4)}
                      if ratio.size else {"median_ratio": None, "median_error": None})
    return summary


def shape_line(summary: dict, reference: str = "true") -> str:
    """One line for a log or a summary: the median ratio measured / ``reference`` (the word for
    the outlines compared with, e.g. "annotated") of each measure."""
    def text(m):
        value = summary.get(m, {}).get("median_ratio")
        return f"{m.replace('_px', '')} {'-' if value is None or math.isnan(value) else f'{value:.3f}'}"

    return (f"shapes of the {summary.get('pairs', 0)} organoids matched at IoU >= {SHAPE_IOU:g}, median "
            f"measured / {reference}: " + ", ".join(text(m) for m in SHAPE_MEASURES))
