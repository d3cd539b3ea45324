"""``evaluate-segmentation``: instance segmentation quality of predicted against true label images.

Array functions (numpy, scipy and pandas only; no TensorFlow, no torch):

* :func:`match_objects` - areas of all objects and the IoU of every overlapping
  (true object, predicted object) pair, computed in one pass over the pixels.
* :func:`matched_pairs` - the one-to-one matching at an IoU threshold.
* :func:`image_metrics`, :func:`segmentation_metrics` (pooled over images),
  :func:`pooled_metrics` (from matchings already computed) - one row per IoU threshold.
* :func:`merge_split_counts` - under-segmentation (merges) and over-segmentation (splits).

:func:`evaluate_segmentation` walks two folders of label images, pairs them by file stem and
writes tables, a JSON summary, a plot and contour overlays.

Definitions (the same as StarDist's ``stardist.matching.matching`` and the Data Science Bowl
2018 average precision):

* IoU of a true object T and a predicted object P: ``|T & P| / |T | P|`` in pixels.
* Matching at threshold ``t``: a one-to-one assignment between true and predicted objects that
  uses only pairs with ``IoU >= t``, has as many pairs as possible and, among those, the largest
  total IoU. For ``t > 0.5`` every object has at most one candidate, so the matching is simply
  all pairs with ``IoU >= t``; for lower thresholds (and ties at exactly 0.5) the conflicting
  pairs are solved with ``scipy.optimize.linear_sum_assignment``, one connected group at a time.
* tp = matched pairs, fp = predicted objects without a match, fn = true objects without a match;
  precision = tp / n_pred, recall = tp / n_true, f1 = 2 tp / (n_true + n_pred),
  ap = tp / (tp + fp + fn), mean_matched_iou = mean IoU of the matched pairs (NaN if tp = 0).
* Empty images: when there is neither a true nor a predicted object the prediction is perfect
  and precision, recall, f1 and ap are all 1.0; when only one side is empty they are all 0.0.
  (StarDist reports 0.0 for an image without any object; pooled metrics are unaffected.)

Merges and splits (``min_fraction`` = 0.5 by default): object A lies *mostly inside* object B
when at least ``min_fraction`` of A's pixels are pixels of B. A predicted object is a **merge**
when at least two true objects lie mostly inside it (it swallowed them); a true object is
**split** when at least two predicted objects lie mostly inside it (it was cut into pieces).
With ``min_fraction > 0.5`` an object can lie mostly inside at most one other object.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..common.errors import InputFileError, OrgasegError
from ..common.images import (
    index_by_stem,
    list_images,
    pair_by_stem,
    read_image,
    read_labels,
    report_unmatched,
)
from ..common.outputs import atomic_path, step_run, write_csv, write_json

log = logging.getLogger(__name__)

#: IoU thresholds 0.5, 0.55, ..., 0.9 (rounded, so that they print and compare exactly).
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(9))
#: Thresholds whose figures go into summary.json whatever ``thresholds`` is.
KEY_THRESHOLDS: tuple[float, ...] = (0.5, 0.7, 0.9)
METRIC_COLUMNS = ["threshold", "n_true", "n_pred", "tp", "fp", "fn", "precision", "recall", "f1",
                  "ap", "mean_matched_iou"]
#: Suffixes of label image files (JPEG is lossy and never holds labels).
LABEL_SUFFIXES = (".tif", ".tiff", ".png")
MERGE_SPLIT_RULE = ("merge: a predicted object with at least 2 true objects having >= {f:.0%} of "
                    "their pixels inside it; split: a true object with at least 2 predicted "
                    "objects having >= {f:.0%} of their pixels inside it")

# Dense pair counting (one bincount over all pixels) is used up to this many (true x predicted)
# bins (64 MiB of counts); beyond it the overlapping pixels' pair keys are sorted instead.
_DENSE_PAIR_LIMIT = 1 << 23


# ----------------------------------------------------------------------------------------------
# Matching


@dataclass
class ObjectMatching:
    """Objects of a true and a predicted label image and the overlaps between them.

    truth_ids, truth_areas: ids (sorted, background 0 excluded) and areas in pixels of the
    true objects, shape (n_true,); pred_ids, pred_areas likewise, shape (n_pred,).
    The sparse pair list holds every pair that shares at least one pixel, shape (n_pairs,),
    sorted by true then predicted id: pair_truth, pair_pred (label ids), pair_truth_index,
    pair_pred_index (positions in truth_ids / pred_ids), intersection (pixels), iou (0-1].
    shape: the (common) image shape.
    """

    shape: tuple[int, ...]
    truth_ids: np.ndarray
    truth_areas: np.ndarray
    pred_ids: np.ndarray
    pred_areas: np.ndarray
    pair_truth_index: np.ndarray
    pair_pred_index: np.ndarray
    intersection: np.ndarray
    iou: np.ndarray

    @property
    def n_true(self) -> int:
        return int(self.truth_ids.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_ids.size)

    @property
    def pair_truth(self) -> np.ndarray:
        """True label id of each overlapping pair, shape (n_pairs,)."""
        return self.truth_ids[self.pair_truth_index]

    @property
    def pair_pred(self) -> np.ndarray:
        """Predicted label id of each overlapping pair, shape (n_pairs,)."""
        return self.pred_ids[self.pair_pred_index]

    def pairs(self) -> pd.DataFrame:
        """The overlapping pairs as a table: truth_id, pred_id, intersection, iou."""
        return pd.DataFrame({"truth_id": self.pair_truth, "pred_id": self.pair_pred,
                             "intersection": self.intersection, "iou": self.iou})


def _check_label_array(labels: np.ndarray, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must be an integer label image, got dtype {labels.dtype}")
    if np.issubdtype(labels.dtype, np.signedinteger) and labels.size and labels.min() < 0:
        raise ValueError(f"{name} has negative labels")
    return labels


def _compact(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map label ids to 1..n (0 stays background).

    Returns (index of every pixel, shape like ``flat``; sorted ids (n,); areas in pixels (n,)).
    Small ids use a lookup table, huge ids (uint32 up to 4e9) a hash table; both are linear.
    """
    max_id = int(flat.max()) if flat.size else 0
    if max_id <= max(1 << 16, flat.size // 4):
        counts = np.bincount(flat.astype(np.intp, copy=False), minlength=max_id + 1)
        ids = np.flatnonzero(counts[1:]) + 1
        # int32 indices halve the memory traffic of the pixel arrays (ids fit: n <= max_id + 1).
        lut = np.zeros(max_id + 1, dtype=np.int32 if ids.size < 2 ** 31 - 1 else np.int64)
        lut[ids] = np.arange(1, ids.size + 1)
        return lut[flat], ids, counts[ids].astype(np.int64)
    # Hash-based factorisation is linear, unlike np.unique's sort of every pixel.
    codes, uniques = pd.factorize(flat, sort=False)
    uniques = np.asarray(uniques).astype(np.int64)
    order = np.argsort(uniques)
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    counts = np.bincount(codes, minlength=uniques.size)[order]
    ids = uniques[order]
    index = rank[codes] + (0 if ids.size and ids[0] == 0 else 1)  # 0 must mean background
    if ids.size and ids[0] == 0:
        ids, counts = ids[1:], counts[1:]
    return index, ids, counts.astype(np.int64)


def match_objects(truth: np.ndarray, pred: np.ndarray) -> ObjectMatching:
    """Areas of all objects and the IoU of every overlapping (true, predicted) object pair.

    truth, pred: label images of the same shape (any number of dimensions), integer dtype
    (uint8/16/32/64, int), 0 = background; ids need not be consecutive. Intersections are
    counted in one pass over the pixels (a bincount of combined pair keys, or a sort of them
    when there are very many objects), never one object at a time. Raises ValueError for different shapes or non-integer / negative labels.
    """
    truth = _check_label_array(truth, "truth")
    pred = _check_label_array(pred, "pred")
    if truth.shape != pred.shape:
        raise ValueError(f"truth shape {truth.shape} and pred shape {pred.shape} differ")
    t_index, truth_ids, truth_areas = _compact(truth.ravel())
    p_index, pred_ids, pred_areas = _compact(pred.ravel())
    n_t, n_p = truth_ids.size, pred_ids.size
    width = n_p + 1
    if (n_t + 1) * width <= _DENSE_PAIR_LIMIT:
        counts = np.bincount(t_index.astype(np.intp) * width + p_index, minlength=(n_t + 1) * width)
        counts = counts.reshape(n_t + 1, width)[1:, 1:]
        ti, pi = np.nonzero(counts)
        inter = counts[ti, pi]
    else:
        both = (t_index > 0) & (p_index > 0)
        keys, inter = np.unique(t_index[both].astype(np.int64) * width + p_index[both], return_counts=True)
        ti, pi = keys // width - 1, keys % width - 1
    inter = inter.astype(np.int64)
    union = truth_areas[ti] + pred_areas[pi] - inter
    return ObjectMatching(shape=tuple(truth.shape), truth_ids=truth_ids, truth_areas=truth_areas,
                          pred_ids=pred_ids, pred_areas=pred_areas,
                          pair_truth_index=ti.astype(np.int64), pair_pred_index=pi.astype(np.int64),
                          intersection=inter, iou=inter / union)


def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"IoU threshold must lie in (0, 1], got {threshold}")
    return threshold


def _assign(matching: ObjectMatching, threshold: float) -> np.ndarray:
    """Positions (into the pair list) of the pairs matched at ``threshold``, sorted."""
    threshold = _check_threshold(threshold)
    candidates = np.flatnonzero(matching.iou >= threshold)
    ti = matching.pair_truth_index[candidates]
    pi = matching.pair_pred_index[candidates]
    t_count = np.bincount(ti, minlength=matching.n_true)
    p_count = np.bincount(pi, minlength=matching.n_pred)
    alone = (t_count[ti] == 1) & (p_count[pi] == 1)
    chosen = [candidates[alone]]
    conflicted = candidates[~alone]
    if conflicted.size:
        # An object with several candidates: solve each connected group of conflicting pairs
        # separately (pairs of a group share no object with any other pair).
        from scipy.optimize import linear_sum_assignment
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        ti, pi = matching.pair_truth_index[conflicted], matching.pair_pred_index[conflicted]
        n_nodes = matching.n_true + matching.n_pred
        graph = coo_matrix((np.ones(conflicted.size), (ti, matching.n_true + pi)),
                           shape=(n_nodes, n_nodes))
        _, component = connected_components(graph, directed=False)
        group = component[ti]
        order = np.argsort(group, kind="stable")
        starts = np.flatnonzero(np.r_[True, group[order][1:] != group[order][:-1]])
        for members in np.split(order, starts[1:]):
            rows, r = np.unique(ti[members], return_inverse=True)
            cols, c = np.unique(pi[members], return_inverse=True)
            size = min(rows.size, cols.size)
            # Each match is worth 1 plus its IoU / (2 size): the IoU terms add up to at most
            # 1/2, so the most matches win and the total IoU decides among them (StarDist's rule).
            cost = np.zeros((rows.size, cols.size))
            cost[r, c] = -(1.0 + matching.iou[conflicted[members]] / (2 * size))
            pair = np.full((rows.size, cols.size), -1, dtype=np.int64)
            pair[r, c] = conflicted[members]
            rr, cc = linear_sum_assignment(cost)
            hit = pair[rr, cc]
            chosen.append(hit[hit >= 0])
    return np.sort(np.concatenate(chosen))


def matched_pairs(matching: ObjectMatching, threshold: float) -> list[tuple[int, int, float]]:
    """One-to-one matches at IoU ``threshold`` as (truth_id, pred_id, iou), sorted by truth id.

    The matching has the most pairs with IoU >= threshold and, among those, the largest total
    IoU (see the module notes).
    """
    chosen = _assign(matching, threshold)
    return [(int(t), int(p), float(i)) for t, p, i in
            zip(matching.pair_truth[chosen], matching.pair_pred[chosen], matching.iou[chosen])]


# ----------------------------------------------------------------------------------------------
# Metrics


def recall_by_class(truths: Sequence[np.ndarray], preds: Sequence[np.ndarray],
                    classes: Sequence[dict], threshold: float = 0.5) -> pd.DataFrame:
    """Per annotated class: how many true objects, the fraction matched at IoU ``threshold``
    (recall) and the mean IoU of those matches; a class the segmentation misses is invisible
    to every table after it.

    truths, preds: label images (Y, X) in pairs; classes: per pair {true label: class name}
    (e.g. from ``annotations-to-masks``' ``<stem>_objects.csv``). Returns columns ``class``,
    ``objects``, ``recall``, ``mean_matched_iou`` (NaN where none matched), one row per class.
    """
    rows = []
    for truth, pred, names in zip(truths, preds, classes, strict=True):
        found = {t: iou for t, _, iou in matched_pairs(match_objects(truth, pred), threshold)}
        rows += [{"class": name, "found": label in found, "iou": found.get(label, np.nan)}
                 for label, name in names.items()]
    table = pd.DataFrame(rows, columns=["class", "found", "iou"])
    return (table.groupby("class").agg(objects=("found", "size"), recall=("found", "mean"),
                                       mean_matched_iou=("iou", "mean")).reset_index())


def _validate_thresholds(thresholds: Sequence[float]) -> list[float]:
    values = [_check_threshold(t) for t in np.atleast_1d(np.asarray(thresholds, dtype=float))]
    if not values:
        raise ValueError("no IoU thresholds given")
    return values


def _metrics_row(threshold: float, n_true: int, n_pred: int, tp: int, iou_sum: float) -> dict:
    fp, fn = n_pred - tp, n_true - tp
    if n_true == 0 and n_pred == 0:
        precision = recall = f1 = ap = 1.0  # nothing to find and nothing found: perfect
    else:
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_true if n_true else 0.0
        f1 = 2 * tp / (n_true + n_pred)
        ap = tp / (tp + fp + fn)
    return {"threshold": threshold, "n_true": n_true, "n_pred": n_pred, "tp": tp, "fp": fp,
            "fn": fn, "precision": precision, "recall": recall, "f1": f1, "ap": ap,
            "mean_matched_iou": iou_sum / tp if tp else math.nan}


def pooled_metrics(matchings: Sequence[ObjectMatching],
                   thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> pd.DataFrame:
    """Metrics pooled over several images' matchings: tp, fp, fn and IoUs summed, then divided.

    Returns one row per threshold with :data:`METRIC_COLUMNS`.
    """
    thresholds = _validate_thresholds(thresholds)
    n_true = sum(m.n_true for m in matchings)
    n_pred = sum(m.n_pred for m in matchings)
    rows = []
    for threshold in thresholds:
        tp, iou_sum = 0, 0.0
        for m in matchings:
            chosen = _assign(m, threshold)
            tp += int(chosen.size)
            iou_sum += float(m.iou[chosen].sum())
        rows.append(_metrics_row(threshold, n_true, n_pred, tp, iou_sum))
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)


def image_metrics(truth: np.ndarray, pred: np.ndarray,
                  thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> pd.DataFrame:
    """Metrics of one predicted label image against its true label image, one row per threshold.

    Columns :data:`METRIC_COLUMNS`: threshold, n_true, n_pred, tp, fp, fn, precision, recall,
    f1, ap (tp / (tp + fp + fn)), mean_matched_iou (NaN without matches).
    """
    return pooled_metrics([match_objects(truth, pred)], thresholds)


def segmentation_metrics(truths: Sequence[np.ndarray], preds: Sequence[np.ndarray],
                         thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> pd.DataFrame:
    """Metrics pooled over image pairs (``truths[i]`` with ``preds[i]``), one row per threshold.

    Counts are summed over the images before dividing, so every object weighs the same
    (StarDist's ``matching_dataset(..., by_image=False)``). Same columns as :func:`image_metrics`.
    """
    if len(truths) != len(preds):
        raise ValueError(f"{len(truths)} true label images but {len(preds)} predicted ones")
    return pooled_metrics([match_objects(t, p) for t, p in zip(truths, preds)], thresholds)


# ----------------------------------------------------------------------------------------------
# Merges and splits


@dataclass
class MergeSplit:
    """Merges and splits of one image (or summed over images); see the module notes.

    merges: predicted objects covering >= 2 true objects; merged_truth: true objects inside
    those. splits: true objects cut into >= 2 predicted objects; split_pieces: those pieces.
    merge_pred_ids / split_truth_ids: the label ids (empty after adding results of images).
    """

    merges: int = 0
    merged_truth: int = 0
    splits: int = 0
    split_pieces: int = 0
    merge_pred_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    split_truth_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __add__(self, other: "MergeSplit") -> "MergeSplit":
        return MergeSplit(self.merges + other.merges, self.merged_truth + other.merged_truth,
                          self.splits + other.splits, self.split_pieces + other.split_pieces)


def merge_split_counts(matching: ObjectMatching, min_fraction: float = 0.5) -> MergeSplit:
    """Count merged predictions and split true objects.

    A predicted object is a merge when at least two true objects each have at least
    ``min_fraction`` of their area (pixels) inside it; a true object is split when at least
    two predicted objects each have at least ``min_fraction`` of their area inside it.
    """
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError(f"min_fraction must lie in (0, 1], got {min_fraction}")
    ti, pi, inter = matching.pair_truth_index, matching.pair_pred_index, matching.intersection
    truth_inside = inter >= min_fraction * matching.truth_areas[ti]
    per_pred = np.bincount(pi[truth_inside], minlength=matching.n_pred)
    merged = np.flatnonzero(per_pred >= 2)
    pred_inside = inter >= min_fraction * matching.pred_areas[pi]
    per_truth = np.bincount(ti[pred_inside], minlength=matching.n_true)
    split = np.flatnonzero(per_truth >= 2)
    return MergeSplit(merges=int(merged.size), merged_truth=int(per_pred[merged].sum()),
                      splits=int(split.size), split_pieces=int(per_truth[split].sum()),
                      merge_pred_ids=matching.pred_ids[merged],
                      split_truth_ids=matching.truth_ids[split])


# ----------------------------------------------------------------------------------------------
# Step function


@dataclass
class EvaluationResult:
    """What :func:`evaluate_segmentation` measured and wrote."""

    out: Path
    metrics: pd.DataFrame
    per_image: pd.DataFrame
    key_figures: dict
    n_images: int = 0
    n_true: int = 0
    n_pred: int = 0
    merge_split: MergeSplit = field(default_factory=MergeSplit)
    unmatched: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    shapes: pd.DataFrame | None = None  # matched pairs' measurements (:mod:`.shapes`)

    def summary(self) -> str:
        lines = [f"evaluate-segmentation: {self.n_images} image pairs, {self.n_true} true and "
                 f"{self.n_pred} predicted objects ({self.seconds:.1f} s); results in {self.out}"]
        lines.append("  IoU   precision  recall   F1      AP      mean IoU of matches")
        for row in self.metrics.itertuples():
            miou = "-" if math.isnan(row.mean_matched_iou) else f"{row.mean_matched_iou:.3f}"
            lines.append(f"  {row.threshold:<5.2f} {row.precision:<10.3f} {row.recall:<8.3f} "
                         f"{row.f1:<7.3f} {row.ap:<7.3f} {miou}")
        ms = self.merge_split
        lines.append(f"  merges: {ms.merges} (predicted objects covering {ms.merged_truth} true objects); "
                     f"splits: {ms.splits} (true objects cut into {ms.split_pieces} pieces)")
        if self.key_figures.get("shapes"):
            from .shapes import shape_line

            lines.append("  " + shape_line(self.key_figures["shapes"]))
        if self.unmatched:
            lines.append(f"  {len(self.unmatched)} files without a partner (not evaluated):")
            lines += [f"    {u}" for u in self.unmatched]
        lines += [f"  warning: {w}" for w in self.warnings]
        if self.errors:
            lines.append(f"  {len(self.errors)} image pairs FAILED:")
            lines += [f"    {e}" for e in self.errors]
        return "\n".join(lines)


def _label_files(folder: Path, what: str) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError(folder, f"{what} folder does not exist or is not a folder")
    files, ignored = [], []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        (files if p.suffix.lower() in LABEL_SUFFIXES else ignored).append(p)
    for p in ignored:
        log.debug("%s: not a label image (%s), ignored", p, "/".join(LABEL_SUFFIXES))
    if not files:
        raise InputFileError(folder, f"no {what} ({', '.join('*' + s for s in LABEL_SUFFIXES)}) "
                                     "in this folder")
    return files


def _none_if_nan(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def _key_figures(table: pd.DataFrame, merge_split: MergeSplit, min_fraction: float) -> dict:
    figures: dict = {"at_iou": {}}
    for row in table.to_dict("records"):
        figures["at_iou"][f"{row['threshold']:g}"] = {
            k: _none_if_nan(row[k]) for k in ("precision", "recall", "f1", "ap", "tp", "fp", "fn",
                                               "mean_matched_iou")}
    first = table.iloc[0]
    figures["mean_matched_iou_at_0.5"] = _none_if_nan(float(first["mean_matched_iou"]))
    figures.update({"merges": merge_split.merges, "merged_true_objects": merge_split.merged_truth,
                    "splits": merge_split.splits, "split_pieces": merge_split.split_pieces,
                    "merge_split_rule": MERGE_SPLIT_RULE.format(f=min_fraction)})
    return figures


def _plot_metrics(table: pd.DataFrame, path: Path, title: str) -> None:
    """AP, precision, recall and F1 against the IoU threshold, as a PNG (Agg, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for column, label, style in (("ap", "AP = TP / (TP + FP + FN)", "o-"), ("precision", "precision", "s--"),
                                 ("recall", "recall", "^--"), ("f1", "F1", "d-")):
        ax.plot(table["threshold"], table[column], style, label=label, markersize=4)
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("score")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def evaluate_segmentation(truth: Path, pred: Path, out: Path, *, images: Path | None = None,
                          thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                          overwrite: bool = False, min_fraction: float = 0.5,
                          max_overlay_side: int = 2048) -> EvaluationResult:
    """Compare predicted label images with true ones, paired by file stem.

    truth, pred: folders of label images (``*.tif``, ``*.tiff``, ``*.png``; 0 = background;
    other files such as ``*_objects.csv`` are ignored). images: optional folder of the images
    (same stems) drawn under the overlays. thresholds: IoU thresholds in (0, 1].
    min_fraction: the merge/split rule (module notes). max_overlay_side: overlays of larger
    images are shrunk to this longest side (pixels).

    Writes to ``out``: ``metrics_per_image.csv`` (image, threshold, metrics, merges, splits),
    ``metrics.csv`` (pooled over all images), ``shapes.csv`` (every pair matched at IoU 0.5:
    area, perimeter, circularity and solidity of the true and the predicted object,
    :mod:`.shapes`), ``summary.json`` (key figures at IoU 0.5, 0.7, 0.9 and ``shapes``: the
    median ratio measured / true of each measurement and its median error), ``ap_vs_iou.png``,
    ``overlays/<stem>.png`` (true contours green, predicted magenta, both white) and
    ``run.json``. Files without a partner are listed and skipped; a pair that
    cannot be read (or whose shapes differ) is reported and the others evaluated, then an
    OrgasegError lists the failures (so the command exits non-zero).
    """
    from ..common.overlays import save_png, segmentation_overlay
    from .shapes import SHAPE_IOU, shape_line, shape_pairs, shape_summary

    truth, pred, out = Path(truth), Path(pred), Path(out)
    images = Path(images) if images is not None else None
    try:
        thresholds = sorted(set(_validate_thresholds(thresholds)))
    except ValueError as exc:
        raise OrgasegError(f"evaluate-segmentation: {exc}") from exc
    if not 0.0 < min_fraction <= 1.0:
        raise OrgasegError(f"evaluate-segmentation: min_fraction must lie in (0, 1], got {min_fraction}")
    # Check the inputs before creating anything, so a typo leaves no output folder behind.
    truth_files = _label_files(truth, "ground-truth label images")
    pred_files = _label_files(pred, "predicted label images")
    image_by_stem = index_by_stem(list_images(images), what="images") if images is not None else {}
    pairs, only_truth, only_pred = pair_by_stem(truth_files, pred_files,
                                                first_what="ground-truth label image",
                                                second_what="predicted label image")
    if not pairs:
        def names(files):
            return ", ".join(p.name for p in files[:5]) + (", ..." if len(files) > 5 else "")
        raise OrgasegError(f"no file in {truth} has a partner of the same name stem in {pred} "
                           f"(ground truth: {names(truth_files)}; predictions: {names(pred_files)})")
    unmatched = report_unmatched(only_truth, only_pred, first_what="ground-truth label image",
                                 second_what="predicted label image")

    arguments = {"truth": truth, "pred": pred, "out": out, "images": images,
                 "thresholds": thresholds, "min_fraction": min_fraction,
                 "max_overlay_side": max_overlay_side, "overwrite": overwrite}
    with step_run("evaluate-segmentation", out, arguments, overwrite=overwrite,
                  inputs=[truth, pred, images]) as record:
        t0 = time.perf_counter()
        matchings: list[ObjectMatching] = []
        rows: list[pd.DataFrame] = []
        shape_rows: list[pd.DataFrame] = []
        total = MergeSplit()
        warnings: list[str] = []
        errors: list[str] = []
        for stem, truth_file, pred_file in tqdm(pairs, desc="evaluate-segmentation", unit="image",
                                                disable=None):
            try:
                t_labels = read_labels(truth_file)
                p_labels = read_labels(pred_file)
                if t_labels.shape != p_labels.shape:
                    raise InputFileError(pred_file, f"size {p_labels.shape[1]}x{p_labels.shape[0]} "
                                         f"(width x height) differs from the ground truth "
                                         f"{truth_file} ({t_labels.shape[1]}x{t_labels.shape[0]})")
            except OrgasegError as exc:
                log.error("%s", exc)
                errors.append(str(exc))
                continue
            matching = match_objects(t_labels, p_labels)
            merge_split = merge_split_counts(matching, min_fraction)
            table = pooled_metrics([matching], thresholds)
            table.insert(0, "image", stem)
            table["merges"] = merge_split.merges
            table["splits"] = merge_split.splits
            rows.append(table)
            shapes = shape_pairs(t_labels, p_labels, matched_pairs(matching, SHAPE_IOU))
            shapes.insert(0, "image", stem)
            shape_rows.append(shapes)
            matchings.append(matching)
            total = total + merge_split
            log.info("%s: %d true objects (%s), %d predicted (%s); AP at IoU %g: %.3f; "
                     "%d merges, %d splits", stem, matching.n_true, truth_file.name, matching.n_pred,
                     pred_file.name, thresholds[0], table["ap"].iloc[0], merge_split.merges,
                     merge_split.splits)

            background = None
            image_file = image_by_stem.get(stem)
            if images is not None and image_file is None:
                warnings.append(f"{stem}: no image in {images}; overlay drawn on a blank background")
            elif image_file is not None:
                try:
                    background = read_image(image_file)
                except OrgasegError as exc:
                    warnings.append(f"{exc}; overlay drawn on a blank background")
                else:
                    if background.shape[:2] != t_labels.shape:
                        warnings.append(f"{image_file}: size {background.shape[1]}x{background.shape[0]} "
                                        f"differs from the label images ({t_labels.shape[1]}x"
                                        f"{t_labels.shape[0]}); overlay drawn on a blank background")
                        background = None
            overlay = segmentation_overlay(background, t_labels, p_labels, max_side=max_overlay_side)
            save_png(out / "overlays" / f"{stem}.png", overlay)
            log.info("wrote overlays/%s.png (%dx%d)", stem, overlay.shape[1], overlay.shape[0])
        for w in warnings:
            log.warning("%s", w)

        result = EvaluationResult(out=out, metrics=pd.DataFrame(columns=METRIC_COLUMNS),
                                  per_image=pd.DataFrame(), key_figures={},
                                  n_images=len(matchings), unmatched=unmatched,
                                  warnings=warnings, errors=errors, merge_split=total)
        if matchings:
            result.n_true = sum(m.n_true for m in matchings)
            result.n_pred = sum(m.n_pred for m in matchings)
            result.per_image = pd.concat(rows, ignore_index=True)
            result.metrics = pooled_metrics(matchings, thresholds)
            result.metrics["merges"] = total.merges
            result.metrics["splits"] = total.splits
            write_csv(out / "metrics_per_image.csv", result.per_image)
            write_csv(out / "metrics.csv", result.metrics)
            result.shapes = pd.concat(shape_rows, ignore_index=True)
            write_csv(out / "shapes.csv", result.shapes)
            result.key_figures = {
                "images": result.n_images, "n_true": result.n_true, "n_pred": result.n_pred,
                **_key_figures(pooled_metrics(matchings, KEY_THRESHOLDS), total, min_fraction),
                "mean_ap": float(result.metrics["ap"].mean()),
                "shapes": shape_summary(result.shapes),
                "thresholds": thresholds,
                "unmatched_files": unmatched,
                "failed_files": errors,
            }
            write_json(out / "summary.json", result.key_figures)
            title = (f"{result.n_images} image{'s' if result.n_images != 1 else ''}: "
                     f"{result.n_true} true, {result.n_pred} predicted objects")
            _plot_metrics(result.metrics, out / "ap_vs_iou.png", title)
            log.info("%s", shape_line(result.key_figures["shapes"]))
            log.info("wrote metrics_per_image.csv, metrics.csv, shapes.csv, summary.json, ap_vs_iou.png to %s", out)
        result.seconds = time.perf_counter() - t0
        record.results.update({k: v for k, v in result.key_figures.items()
                               if k not in ("thresholds",)})
        record.results.update({"images": result.n_images, "errors": errors, "warnings": warnings,
                               "seconds": round(result.seconds, 3)})
        if errors:
            log.warning("%s", result.summary())
            raise OrgasegError(f"evaluate-segmentation: {len(errors)} of {len(pairs)} image pairs "
                               f"failed (the other {result.n_images} were evaluated into {out}): "
                               + "; ".join(errors))
    return result
