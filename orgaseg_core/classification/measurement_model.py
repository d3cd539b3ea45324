"""The measurement classifier: a random forest on per-object measurements and descriptors.

Input: the object table that ``extract-objects`` writes (``objects.csv``) or that training
builds from annotated images (:mod:`orgaseg_core.classification.objects`); the columns used are
:data:`MEASUREMENT_FEATURES`: shape (pixels) and intensities RELATIVE to the image background
(the absolute ``mean_intensity`` / ``std_intensity`` depend on the bit depth and the lamp and
are left out). A random forest (scikit-learn, balanced class weights, seeded) is robust with a
few dozen objects per class, needs no scaling of the features, and trains in about a second.

Stored as ``measurements.skops`` (skops format, loaded with the strict type check of
:func:`orgaseg_core.common.skops_io.read_random_forest`: never pickle).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..common.errors import InputFileError, OrgasegError
from ..common.skops_io import import_skops, read_random_forest, save_skops

log = logging.getLogger(__name__)

MEASUREMENTS_FILE = "measurements.skops"
#: Object-table columns the measurement classifier reads, in this order.
MEASUREMENT_FEATURES = [
    "area_px", "perimeter", "equivalent_diameter", "circularity", "eccentricity", "solidity",
    "major_axis_length", "minor_axis_length",
    "relative_mean_intensity", "relative_std_intensity", "relative_p10_intensity",
    "relative_p90_intensity", "relative_rim_intensity", "relative_core_intensity",
    "core_rim_ratio", "relative_gradient", "radius_cv", "n_concavities", "concavity_depth",
]
DEFAULT_N_TREES = 300
_PURPOSE, _EXTRA = "the measurement classifier", "classification"


def feature_matrix(table: pd.DataFrame, columns: Sequence[str] = MEASUREMENT_FEATURES, *,
                   source: str | Path = "object table") -> np.ndarray:
    """(N, F) float64 array of ``columns`` of ``table``; NaN stays NaN (the forest handles it).

    Raises InputFileError naming ``source`` when columns are missing or not numeric.
    """
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InputFileError(Path(source), f"lacks the measurement columns {', '.join(missing)} that "
                                           "the measurement classifier reads; cut the objects with "
                                           "extract-objects of orgaseg 0.6 or newer")
    try:
        values = table[list(columns)].apply(pd.to_numeric, errors="raise").to_numpy(dtype=np.float64, copy=True)
    except (TypeError, ValueError) as exc:
        raise InputFileError(Path(source), f"has non-numeric measurement values ({exc})") from exc
    values[np.isinf(values)] = np.nan
    return values


def fit_measurement_forest(features: np.ndarray, labels: Sequence[int], *, n_classes: int,
                           seed: int, n_trees: int = DEFAULT_N_TREES):
    """A fitted RandomForestClassifier (balanced class weights) on ``features`` (N, F).

    Every class 0..n_classes-1 must occur in ``labels`` (so ``predict_proba`` has one column
    per class in that order).
    """
    import_skops(_PURPOSE, _EXTRA)
    from sklearn.ensemble import RandomForestClassifier

    labels = np.asarray(labels, dtype=np.int64)
    absent = sorted(set(range(n_classes)) - set(labels.tolist()))
    if absent:
        raise OrgasegError(f"the measurement classifier needs training objects of every class; "
                           f"class indices {absent} have none")
    forest = RandomForestClassifier(n_estimators=int(n_trees), class_weight="balanced",
                                    min_samples_leaf=1, max_features="sqrt", random_state=int(seed),
                                    n_jobs=None)
    forest.fit(features, labels)
    return forest


def predict_measurements(forest, features: np.ndarray) -> np.ndarray:
    """(N, K) class probabilities (vote fractions) of the objects' ``features``."""
    if len(features) == 0:
        return np.zeros((0, len(forest.classes_)))
    return forest.predict_proba(features)


def save_measurement_forest(forest, path: Path) -> Path:
    """Write the forest in skops format, atomically."""
    return save_skops(forest, path, purpose=_PURPOSE, extra=_EXTRA)


def read_measurement_forest(path: Path, *, n_features: int, n_classes: int):
    """The forest of ``path``; refused (naming the file) unless it is exactly a random forest on
    ``n_features`` features with classes 0..n_classes-1."""
    return read_random_forest(path, n_features=n_features, classes=set(range(n_classes)),
                              what="an orgaseg measurement classifier", purpose=_PURPOSE, extra=_EXTRA)
