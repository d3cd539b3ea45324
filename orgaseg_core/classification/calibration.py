"""Calibrated confidence: temperature scaling fitted on the validation split, reliability diagrams.

A classifier's highest class probability is its "confidence". Trained networks and random
forests are often over- or under-confident: of the objects reported at 0.9, far fewer or more
than 90 % are right. Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural
Networks") divides the log-probabilities by one number T fitted to minimise the negative
log-likelihood of the validation labels; it never changes which class is predicted (the order
of the probabilities is kept), only how sure the model says it is.

For a random forest the log of its vote fractions (floored at :data:`PROBABILITY_FLOOR`) plays
the role of the logits. Pure numpy/scipy: no torch, no scikit-learn.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..common.errors import OrgasegError

#: Temperatures searched (log-uniformly bounded): 0.05 sharpens 20x, 20 flattens 20x.
TEMPERATURE_RANGE = (0.05, 20.0)
#: Probabilities are floored here before taking logs (a forest gives exact zeros).
PROBABILITY_FLOOR = 1e-4
#: Bins of the reliability diagram and of the expected calibration error.
N_BINS = 10


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of an (N, K) array (stable: the row maximum is subtracted first)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def probabilities_to_logits(probabilities: np.ndarray) -> np.ndarray:
    """log(max(p, floor)) of an (N, K) probability array: logits whose softmax is ~p."""
    return np.log(np.maximum(np.asarray(probabilities, dtype=np.float64), PROBABILITY_FLOOR))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated (N, K) probabilities softmax(logits / T)."""
    return softmax(np.asarray(logits, dtype=np.float64) / float(temperature))


def negative_log_likelihood(logits: np.ndarray, labels: Sequence[int], temperature: float = 1.0,
                            smoothing: float = 0.0) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits / T); with ``smoothing``
    e the targets are (1 - e) on the true class and e / K on every class."""
    p = apply_temperature(logits, temperature)
    labels = np.asarray(labels, dtype=np.int64)
    log_p = np.log(np.maximum(p, 1e-300))
    true = log_p[np.arange(len(labels)), labels]
    if smoothing:
        return float(-np.mean((1 - smoothing) * true + smoothing * log_p.mean(axis=1)))
    return float(-np.mean(true))


def fit_temperature(logits: np.ndarray, labels: Sequence[int]) -> float:
    """The temperature T in :data:`TEMPERATURE_RANGE` minimising the validation NLL.

    logits: (N, K) of the validation objects; labels: their true class indices. The NLL is
    convex in 1/T, so a bounded scalar search on log T finds the optimum. Returns 1.0 (no
    change) when there are no validation objects.

    The targets are smoothed by e = 1 / (N + 2) (the rule of succession): when every
    validation object is classified right the plain NLL falls forever as T shrinks, and the
    model would claim certainty from a few dozen objects; with the smoothing, N right out of
    N gives confidences near (N + 1) / (N + 2).
    """
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(labels) != len(logits):
        raise OrgasegError(f"temperature scaling needs (N, K) logits and N labels, got {logits.shape} "
                           f"and {labels.shape}")
    if len(labels) == 0:
        return 1.0
    lo, hi = (math.log(t) for t in TEMPERATURE_RANGE)
    smoothing = 1.0 / (len(labels) + 2)
    best = minimize_scalar(lambda log_t: negative_log_likelihood(logits, labels, math.exp(log_t), smoothing),
                           bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    return float(math.exp(best.x))


def reliability(probabilities: np.ndarray, labels: Sequence[int], n_bins: int = N_BINS) -> dict:
    """Reliability of the confidences: per bin of confidence, how often the prediction is right.

    Returns {"bins": [{"low", "high", "n", "confidence", "accuracy"}...], "ece": expected
    calibration error (the object-weighted mean |accuracy - confidence| over the bins),
    "mce": the largest gap of a non-empty bin, "n": objects}. Plain values (JSON-ready).
    """
    p = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    confidence = p.max(axis=1) if len(p) else np.zeros(0)
    correct = (p.argmax(axis=1) == labels) if len(p) else np.zeros(0, dtype=bool)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin i holds (edge i, edge i+1]; a confidence of exactly 0 (impossible) would go to bin 0.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    bins, ece, mce = [], 0.0, 0.0
    for i in range(n_bins):
        member = index == i
        n = int(member.sum())
        row = {"low": round(float(edges[i]), 4), "high": round(float(edges[i + 1]), 4), "n": n,
               "confidence": None, "accuracy": None}
        if n:
            conf, acc = float(confidence[member].mean()), float(correct[member].mean())
            row.update(confidence=round(conf, 6), accuracy=round(acc, 6))
            gap = abs(acc - conf)
            ece += n / len(labels) * gap
            mce = max(mce, gap)
        bins.append(row)
    return {"bins": bins, "ece": round(float(ece), 6), "mce": round(float(mce), 6), "n": int(len(labels))}


def reliability_figure(curves: dict[str, dict], title: str):
    """A matplotlib Figure: accuracy against confidence per bin, one line per curve, and the
    diagonal of perfect calibration; the legend gives each curve's ECE. ``curves``: name ->
    :func:`reliability` result."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for name, curve in curves.items():
        xs = [b["confidence"] for b in curve["bins"] if b["n"]]
        ys = [b["accuracy"] for b in curve["bins"] if b["n"]]
        sizes = [12 + 60 * b["n"] / max(curve["n"], 1) for b in curve["bins"] if b["n"]]
        line, = ax.plot(xs, ys, marker="", linewidth=1.5,
                        label=f"{name} (ECE {curve['ece']:.3f}, {curve['n']} objects)")
        ax.scatter(xs, ys, s=sizes, color=line.get_color(), zorder=3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (mean per bin)")
    ax.set_ylabel("fraction correct")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig
