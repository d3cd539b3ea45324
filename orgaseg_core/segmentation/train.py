"""``train-segmentation``: train a StarDist2D model on a ``split`` folder, report its quality.

Input (the layout ``orgaseg split --mode segmentation`` writes)::

    data/train/images/*.tif + data/train/masks/*.tif     paired by file-name stem
    data/val/images/*.tif   + data/val/masks/*.tif       validation (needed)

Everything is checked before the (long) training starts: each image has a mask and each mask
an image, shapes agree, masks hold integer labels, validation pairs exist, images are at least
the patch size (else the patch is reduced, with a warning in the report).

Per image: grey (RGB and 16-bit through :func:`orgaseg_core.common.images.to_grey`), percentile
normalisation (:func:`orgaseg_core.segmentation.model.normalize_image`); per mask: holes of each
object filled (StarDist's star-convex polygons cannot represent holes). Training uses StarDist's
own patch sampling with random flips, 90-degree rotations (square patches) and intensity jitter
(:class:`Augmenter`, seeded), TensorBoard logs in ``model_out/logs``. Afterwards the probability
and NMS thresholds are optimised on the validation images, the validation images are segmented
and ``report.json`` / ``report.csv`` give precision, recall, F1 and AP per IoU threshold
(:func:`orgaseg_core.segmentation.evaluation.segmentation_metrics`, the figures of ``evaluate-segmentation``).

The model folder is described in :mod:`orgaseg_core.segmentation.model`. TensorFlow is imported
only inside :func:`train_segmentation`.

Defaults: on the generated example data (``orgaseg example``: 190x252 px tiles at scale 0.5),
40 epochs x 25 steps of batch 4 on (176, 240) px patches train in about 5-6 minutes on 2 CPU
cores and reach F1 ~0.95 at IoU 0.5 on held-out full-size images (see the quality test). Real
data with more objects per image and more variety profits from more epochs (``--epochs 100``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..common.errors import InputFileError, OptionError, OrgasegError
from ..common.images import list_images, pair_by_stem, read_image, read_labels, to_grey
from ..common.labels import rescale_labels
from ..common.outputs import (
    RUN_RECORD_NAME,
    package_versions,
    step_run,
    write_csv,
    write_json,
)
from ..common.resample import output_length, rescale_image
from .augment import Augmenter
from .model import (
    DEFAULT_NORM_PERCENTILES,
    FORMAT_VERSION,
    MODEL_KIND,
    ORGASEG_MODEL_JSON,
    as_pair,
    check_init_compatible,
    check_percentiles,
    check_stardist_folder,
    import_stardist,
    normalize_image,
    quiet_stardist,
    read_json_file,
)
from .pyramid import PyramidChoice, choose_pyramid, describe_levels, levels_key, parse_pyramid
from .refine import REFINEMENTS, check_refinement, refine_labels
from .sizing import (
    MIN_DIAMETER,
    choose_patch,
    choose_resize,
    object_diameters,
    receptive_field,
)

log = logging.getLogger(__name__)

#: Largest patch side chosen automatically (pixels); StarDist's own default.
MAX_AUTO_PATCH = 256
#: Training budgets by name; values given explicitly win. "quick": the example data and CI's
#: models (40 x 25 steps, about 5-6 min on 2 CPU cores). "real": real images with more variety:
#: up to 400 x 50 steps, stopped when the validation loss has not improved for 20 epochs or
#: after 30 minutes of training (about 3,000 steps of 256 px patches on 2 CPU cores).
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"epochs": 40, "steps_per_epoch": 25, "early_stopping": 0, "max_minutes": None},
    "real": {"epochs": 400, "steps_per_epoch": 50, "early_stopping": 20, "max_minutes": 30.0},
}
#: Adam's initial learning rate when none is given (StarDist's own default)
DEFAULT_LEARNING_RATE = 3e-4
#: IoU thresholds whose figures go into report.json (report.csv has all of them).
REPORT_THRESHOLDS = (0.5, 0.7, 0.9)


# --------------------------------------------------------------------------- data checks

@dataclass
class SplitData:
    """Image/mask pairs of one split: names, grey images (normalised later) and label images."""

    split: str
    names: list[str] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    files: list[tuple[Path, Path]] = field(default_factory=list)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [m.shape for m in self.masks]

    @property
    def n_objects(self) -> int:
        return sum(count_objects(m) for m in self.masks)


def count_objects(labels: np.ndarray) -> int:
    """Number of distinct non-zero labels in a label image."""
    if labels.size == 0 or labels.max() == 0:
        return 0
    if labels.max() <= 4 * labels.size:
        return int(np.count_nonzero(np.bincount(labels.ravel())[1:]))
    return int(np.unique(labels[labels > 0]).size)


def split_pairs(data: Path, split: str) -> list[tuple[str, Path, Path]]:
    """The (stem, image, mask) pairs of ``data/<split>/images`` and ``data/<split>/masks``.

    Raises OrgasegError listing every image without a mask and every mask without an image,
    and InputFileError when the folders are missing or empty. A missing or empty ``val``
    split gets an error that says how to make one.
    """
    data = Path(data)
    images_dir, masks_dir = data / split / "images", data / split / "masks"
    if split == "val" and (not images_dir.is_dir() or not masks_dir.is_dir()):
        raise InputFileError(data, "has no validation data (val/images and val/masks); training "
                                   "needs it to choose the best weights and thresholds. Split with "
                                   "a validation fraction: orgaseg split --mode segmentation --val 0.15")
    if not images_dir.is_dir():
        raise InputFileError(images_dir, f"{split} images folder does not exist; give the folder "
                                         "written by orgaseg split --mode segmentation")
    if not masks_dir.is_dir():
        raise InputFileError(masks_dir, f"{split} masks folder does not exist; give the folder "
                                        "written by orgaseg split --mode segmentation")
    images = list_images(images_dir, what="images")
    masks = list_images(masks_dir, what="masks")
    if not images and not masks:
        if split == "val":
            raise InputFileError(images_dir, "contains no validation images; split with a "
                                             "validation fraction (orgaseg split --val 0.15)")
        raise InputFileError(images_dir, f"contains no {split} images (.tif, .tiff, .jpg, .jpeg, .png)")
    pairs, only_images, only_masks = pair_by_stem(images, masks)
    problems = [f"{p}: image has no mask of the same name in {masks_dir}" for p in only_images]
    problems += [f"{p}: mask has no image of the same name in {images_dir}" for p in only_masks]
    if problems:
        raise OrgasegError(f"{len(problems)} unpaired file(s) in {data / split}:\n  "
                           + "\n  ".join(problems))
    return pairs


def load_split(data: Path, split: str) -> SplitData:
    """Read every pair of a split: grey image (Y, X) and its label image, checked.

    Errors name the file: unreadable image, mask not integer labels, shapes that differ.
    Holes in objects are filled here (StarDist cannot represent them).
    """
    from stardist import fill_label_holes  # numba/scipy only, no TensorFlow

    result = SplitData(split=split)
    for stem, image_path, mask_path in split_pairs(data, split):
        grey = to_grey(read_image(image_path))
        labels = read_labels(mask_path)
        if labels.shape != grey.shape:
            raise InputFileError(mask_path, f"mask is {labels.shape[0]}x{labels.shape[1]} pixels but "
                                            f"its image {image_path} is {grey.shape[0]}x{grey.shape[1]}")
        top = int(labels.max()) if labels.size else 0
        if top > np.iinfo(np.int32).max:
            raise InputFileError(mask_path, "has label ids beyond 2^31; relabel the objects 1..N")
        labels = labels.astype(np.uint16 if top <= np.iinfo(np.uint16).max else np.int32, copy=False)
        labels = fill_label_holes(labels)
        result.names.append(stem)
        result.images.append(grey)
        result.masks.append(labels)
        result.files.append((image_path, mask_path))
    log.info("read %d %s image/mask pairs (%d objects) from %s", len(result.names), split,
             result.n_objects, Path(data) / split)
    return result


def patch_divisor(grid: tuple[int, int], *, unet_depth: int = 3, unet_pool: int = 2) -> tuple[int, int]:
    """Patch sides must be multiples of ``unet_pool ** unet_depth * grid`` (16 for grid 2)."""
    return tuple(unet_pool ** unet_depth * g for g in grid)  # type: ignore[return-value]


def fit_patch_size(requested: int | Sequence[int] | None, shapes: Sequence[tuple[int, int]],
                   names: Sequence[str], divisor: tuple[int, int]) -> tuple[tuple[int, int], str | None]:
    """The training patch size (rows, cols) that fits every image, and a warning or None.

    ``requested`` None: automatic, the largest multiple of ``divisor`` up to
    :data:`MAX_AUTO_PATCH` that fits the smallest image (no warning). A requested size that is
    not a multiple of ``divisor`` or larger than the smallest image is reduced to the largest
    fitting multiple, and the returned warning says so and names the smallest image. Raises
    OrgasegError when an image is smaller than ``divisor`` itself.
    """
    if not shapes:
        raise OrgasegError("no images to choose a patch size for")
    limits = []
    for axis in (0, 1):
        sizes = [s[axis] for s in shapes]
        i = int(np.argmin(sizes))
        fit = sizes[i] // divisor[axis] * divisor[axis]
        if fit < divisor[axis]:
            raise OrgasegError(f"image {names[i]} is {shapes[i][0]}x{shapes[i][1]} pixels: too small "
                               f"for StarDist with this grid (each side must be at least "
                               f"{divisor[axis]} pixels); preprocess with a larger scale or fewer tiles")
        limits.append((fit, names[i], shapes[i]))
    if requested is None:
        patch = tuple(min(MAX_AUTO_PATCH // d * d, lim[0]) for d, lim in zip(divisor, limits))
        return patch, None  # type: ignore[return-value]
    wanted = as_pair(requested, what="patch size")
    patch = tuple(min(w // d * d, lim[0]) for w, d, lim in zip(wanted, divisor, limits))
    if min(patch) < 1 or any(p < d for p, d in zip(patch, divisor)):
        raise OrgasegError(f"patch size {wanted} is smaller than the network's minimum "
                           f"{divisor[0]}x{divisor[1]} pixels")
    if patch == wanted:
        return patch, None  # type: ignore[return-value]
    reasons = []
    for axis, (w, p, d, lim) in enumerate(zip(wanted, patch, divisor, limits)):
        if w % d:
            reasons.append(f"{'height' if axis == 0 else 'width'} {w} is not a multiple of {d}")
        if w // d * d > lim[0]:
            reasons.append(f"the smallest image ({lim[1]}, {lim[2][0]}x{lim[2][1]} px) is "
                           f"{'lower' if axis == 0 else 'narrower'} than {w}")
    message = (f"patch size {wanted[0]}x{wanted[1]} reduced to {patch[0]}x{patch[1]} pixels: "
               + "; ".join(reasons))
    return patch, message  # type: ignore[return-value]


# --------------------------------------------------------------------------- provenance

def read_data_provenance(data: Path, *, max_hops: int = 4) -> dict[str, Any]:
    """Pixel scale and grey-level preprocessing of a ``split`` folder, from the run records.

    Follows ``data/run.json`` (split: its ``data`` argument) back to the ``preprocess`` run
    and reads its ``scale``, ``remove_vignette`` and ``flatten_background``; failing that, the
    ``scale`` column of a ``tiles.csv`` on the way. Returns {"scale": float or None,
    "preprocessing": dict, "source": path of the record used or None}.
    """
    found: dict[str, Any] = {"scale": None, "preprocessing": {}, "source": None}
    folder = Path(data)
    for _ in range(max_hops):
        tiles_csv = folder / "tiles.csv"
        record_path = folder / RUN_RECORD_NAME
        record = None
        if record_path.is_file():
            try:
                record = json.loads(record_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                log.warning("%s: cannot be read; pixel scale of the training data unknown", record_path)
        if isinstance(record, dict) and record.get("step") == "preprocess":
            args = record.get("arguments") or {}
            try:
                found["scale"] = float(args.get("scale", 1.0))
            except (TypeError, ValueError):
                found["scale"] = None
            found["preprocessing"] = {"remove_vignette": bool(args.get("remove_vignette", False)),
                                      "flatten_background": bool(args.get("flatten_background", False))}
            found["source"] = str(record_path)
            return found
        if tiles_csv.is_file():
            try:
                scales = pd.read_csv(tiles_csv, usecols=["scale"])["scale"].dropna().unique()
                if len(scales) == 1:
                    found["scale"] = float(scales[0])
                    found["source"] = str(tiles_csv)
                    return found
            except (OSError, ValueError, KeyError):
                pass
        if not isinstance(record, dict):
            break
        parent = (record.get("arguments") or {}).get("data")
        if not parent:
            break
        folder = Path(parent)
    return found


# --------------------------------------------------------------------------- result

@dataclass
class TrainSegmentationResult:
    """What :func:`train_segmentation` did: data, settings, choices, timings, validation metrics."""

    model_out: Path
    n_train: int = 0
    n_val: int = 0
    n_train_objects: int = 0
    n_val_objects: int = 0
    epochs: int = 0
    epochs_run: int = 0
    stopped: str = ""
    steps_per_epoch: int = 0
    patch_size: tuple[int, int] = (0, 0)
    scale: float = 1.0
    resize: dict[str, Any] = field(default_factory=dict)
    refinement: str = "none"
    refinement_scores: dict[str, float] = field(default_factory=dict)
    pyramid: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds_training: float = 0.0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"train-segmentation: model written to {self.model_out} ({self.seconds:.0f} s, "
                 f"training {self.seconds_training:.0f} s)",
                 f"  data: {self.n_train} training images ({self.n_train_objects} objects), "
                 f"{self.n_val} validation images ({self.n_val_objects} objects)",
                 f"  resize {self.resize.get('factor', 1.0):g} (model scale {self.scale:g}): "
                 f"{self.resize.get('reason', '')}",
                 f"  {self.epochs_run} of {self.epochs} epochs x {self.steps_per_epoch} steps"
                 f"{' (' + self.stopped + ')' if self.stopped else ''}, patch "
                 f"{self.patch_size[0]}x{self.patch_size[1]} px",
                 f"  weights: {self.weights.get('chosen', 'best')} epoch's (validation mean F1 over IoU "
                 "0.5-0.9: " + ", ".join(f"{k} {v:.3f}" for k, v in self.weights.get("scores", {}).items())
                 + ")",
                 f"  thresholds: probability {self.thresholds.get('prob', float('nan')):.3f}, "
                 f"NMS {self.thresholds.get('nms', float('nan')):.2f}",
                 f"  outlines: {self.refinement} (validation mean F1 over IoU 0.5-0.9: "
                 + ", ".join(f"{k} {v:.3f}" for k, v in self.refinement_scores.items()) + ")",
                 f"  pyramid: {describe_levels(self.pyramid.get('levels', [1.0]))} the model "
                 f"scale ({self.pyramid.get('reason', '')})",
                 "  validation:"]
        lines += validation_lines(self.metrics)
        lines.append(f"  report: {self.model_out / 'report.csv'}; TensorBoard: tensorboard --logdir "
                     f"{self.model_out / 'logs'}")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


# --------------------------------------------------------------------------- the step

def resolve_data_scale(data: Path, provenance: dict[str, Any], scale: float | None,
                       warnings_out: list[str]) -> float:
    """The pixel scale of the training data: ``scale`` when given (warning when the preprocess
    run record of ``data`` says otherwise), else the record's, else 1.0 (with a warning).
    Warnings are logged and appended to ``warnings_out``."""
    msg = None
    if scale is None:
        if provenance["scale"] is None:
            msg = (f"pixel scale of {data} unknown (no preprocess run record found); assuming the "
                   "images are at the original size (scale 1.0)")
        data_scale = float(provenance["scale"] or 1.0)
    else:
        data_scale = float(scale)
        if provenance["scale"] is not None and not math.isclose(provenance["scale"], data_scale):
            msg = (f"scale {data_scale:g} given, but {provenance['source']} says the data was made at "
                   f"scale {provenance['scale']:g}; using {data_scale:g}")
    if msg:
        log.warning(msg)
        warnings_out.append(msg)
    return data_scale


def validation_lines(metrics: dict[str, dict[str, float]]) -> list[str]:
    """The summary's lines of validation metrics, one per IoU threshold."""
    return [f"    IoU {key}: precision {m['precision']:.3f}  recall {m['recall']:.3f}  "
            f"F1 {m['f1']:.3f}  AP {m['ap']:.3f}  mean matched IoU "
            f"{(m.get('mean_matched_iou') or float('nan')):.3f}" for key, m in metrics.items()]


def _check_tensorboard() -> None:
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise OrgasegError("tensorboard is not installed; StarDist writes its training logs with it. "
                           "Install the segmentation extra: pip install 'orgaseg-core[segmentation]'")


def _metrics_at(table: pd.DataFrame, thresholds: Sequence[float]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for t in thresholds:
        row = table.loc[np.isclose(table["threshold"], t)]
        if len(row):
            r = row.iloc[0]
            out[f"{t:g}"] = {k: (None if isinstance(r[k], float) and math.isnan(r[k]) else
                                 (int(r[k]) if k in ("n_true", "n_pred", "tp", "fp", "fn") else float(r[k])))
                             for k in ("n_true", "n_pred", "tp", "fp", "fn", "precision", "recall",
                                       "f1", "ap", "mean_matched_iou")}
    return out


def _epoch_logger(history: list[dict], epochs: int):
    """A Keras callback that logs one line per epoch (losses, seconds) and keeps them."""
    import keras

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            row = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - self._start, 3)}
            for key in ("loss", "val_loss", "val_prob_loss", "val_dist_loss", "learning_rate"):
                if key in logs:
                    row[key] = float(logs[key])
            history.append(row)
            log.info("epoch %d/%d: loss %.4f, val_loss %.4f (%.1f s)", epoch + 1, epochs,
                     row.get("loss", float("nan")), row.get("val_loss", float("nan")), row["seconds"])

    return EpochLogger()


def _stop_callbacks(early_stopping: int, max_minutes: float | None, stopped: list[str]):
    """Keras callbacks that end training early: no better validation loss for
    ``early_stopping`` epochs (0: never), or ``max_minutes`` of training (None: no limit).
    The reason is appended to ``stopped``. StarDist then loads the best weights it saved."""
    import keras

    callbacks = []
    if early_stopping > 0:
        class EarlyStop(keras.callbacks.EarlyStopping):
            def on_train_end(self, logs=None):
                super().on_train_end(logs)
                if self.stopped_epoch > 0:
                    stopped.append(f"early stopping: no better validation loss for {self.patience} "
                                   f"epochs after epoch {self.stopped_epoch + 1 - self.patience}")
                    log.info("stopped at epoch %d: %s", self.stopped_epoch + 1, stopped[-1])

        callbacks.append(EarlyStop(monitor="val_loss", mode="min", patience=int(early_stopping),
                                   min_delta=0.0, verbose=0))
    if max_minutes is not None:
        class TimeLimit(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self._start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                minutes = (time.perf_counter() - self._start) / 60.0
                if minutes >= max_minutes:
                    self.model.stop_training = True
                    stopped.append(f"time budget of {max_minutes:g} min reached after epoch {epoch + 1}")
                    log.info("stopped: %s", stopped[-1])

        callbacks.append(TimeLimit())
    return callbacks


def resolve_budget(preset: str, *, epochs: int | None, steps_per_epoch: int | None,
                   early_stopping: int | None, max_minutes: float | None) -> dict[str, Any]:
    """The training budget: the values given, the rest from ``PRESETS[preset]``."""
    key = str(preset).strip().lower()
    if key not in PRESETS:
        raise OrgasegError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    budget = dict(PRESETS[key])
    for name, value in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch),
                        ("early_stopping", early_stopping), ("max_minutes", max_minutes)):
        if value is not None:
            budget[name] = value
    for name in ("epochs", "steps_per_epoch"):
        if int(budget[name]) < 1:
            raise OrgasegError(f"{name} must be at least 1, got {budget[name]}")
        budget[name] = int(budget[name])
    if int(budget["early_stopping"]) < 0:
        raise OrgasegError(f"early_stopping must be 0 (off) or a number of epochs, got {budget['early_stopping']}")
    budget["early_stopping"] = int(budget["early_stopping"])
    if budget["max_minutes"] is not None:
        value = float(budget["max_minutes"])
        if not (math.isfinite(value) and value > 0):
            raise OrgasegError(f"max_minutes must be a positive number, got {budget['max_minutes']}")
        budget["max_minutes"] = value
    budget["preset"] = key
    return budget


def parse_resize(value: float | str | None) -> float | None:
    """``"auto"``/None -> None (choose from the object sizes); a number -> that factor (> 0)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    try:
        factor = float(value)
    except (TypeError, ValueError):
        raise OrgasegError(f"resize must be 'auto' or a positive number, got {value!r}") from None
    if not (math.isfinite(factor) and factor > 0):
        raise OrgasegError(f"resize must be 'auto' or a positive number, got {value!r}")
    return factor


def resize_split(split: SplitData, factor: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The split's grey images and masks resized by ``factor`` (area/linear; nearest for labels)."""
    if factor == 1.0:
        return list(split.images), list(split.masks)
    images = [rescale_image(g.astype(np.float32), factor) for g in split.images]
    masks = []
    for name, m in zip(split.names, split.masks):
        resized, report = rescale_labels(m, factor)
        if report.vanished:
            log.info("%s/%s: %d of %d objects are too small to keep at resize %g", split.split,
                     name, len(report.vanished), report.n_before, factor)
        masks.append(resized)
    return images, masks


def mean_f1(table: pd.DataFrame) -> float:
    """Mean F1 over the IoU thresholds 0.5-0.9 of a segmentation_metrics table: one figure that
    rewards finding the objects and outlining them well."""
    rows = table.loc[(table["threshold"] >= 0.5 - 1e-9) & (table["threshold"] <= 0.9 + 1e-9)]
    return float(rows["f1"].fillna(0.0).mean()) if len(rows) else 0.0


def _quiet_progress(keras_model) -> None:
    """Keras's per-step progress bar floods log files: outside a terminal, switch it off.

    The epoch logger then reports one log line per epoch; in a terminal Keras's bar stays.
    """
    if sys.stdout.isatty():
        return
    fit = keras_model.fit

    def fit_quietly(*args, **kwargs):
        kwargs["verbose"] = 0
        return fit(*args, **kwargs)

    keras_model.fit = fit_quietly


def validation_segmentations(model, greys: Sequence[np.ndarray], factor: float,
                             pyramids: Sequence[tuple[float, ...]], methods: Sequence[str],
                             percentiles: Sequence[float]) -> dict[tuple, list[np.ndarray]]:
    """The validation images segmented with each pyramid and outline refinement.

    greys: the validation grey images at the size of their masks (not normalised); factor: the
    model's input size relative to them (the resize). Returns (pyramid, method) -> label images
    at the masks' size, predicted the way ``segment`` does (:func:`~.predict.predict_pyramid`).
    One network prediction per image and pyramid serves every method.
    """
    from .predict import predict_pyramid

    out: dict[tuple, list[np.ndarray]] = {(p, m): [] for p in pyramids for m in methods}
    for grey in greys:
        grey = np.asarray(grey, dtype=np.float32)
        normalised = normalize_image(grey, percentiles) if "edges" in methods else None
        for levels in pyramids:
            found = predict_pyramid(model, grey, factor, levels, percentiles, grey.shape,
                                    want_prob="probability" in methods)
            for method in methods:
                out[(levels, method)].append(
                    refine_labels(method, found.labels, grey=normalised, prob=found.prob))
    return out


#: Where StarDist keeps the weights of the lowest validation loss, and of the last epoch.
BEST_WEIGHTS, LAST_WEIGHTS = "weights_best.h5", "weights_last.h5"
#: The lowest-validation-loss weights, when the last epoch's were chosen instead.
LOWEST_LOSS_WEIGHTS = "weights_lowest_val_loss.h5"


def choose_weights(model, model_out: Path, Xv: Sequence[np.ndarray], Yv: Sequence[np.ndarray],
                   val_greys: Sequence[np.ndarray], truths: Sequence[np.ndarray], factor: float,
                   percentiles: Sequence[float]) -> dict[str, Any]:
    """Keep the lowest-validation-loss weights or the last epoch's, whichever segments the
    validation images better; optimise the thresholds for it and write ``thresholds.json``.

    StarDist keeps the weights of the lowest validation loss. On a few validation images of
    another kind of organoid that can be the network of the first epoch, which predicts almost
    nothing (a GOAT fold: validation loss 1.18 after epoch 1, 1.86 after 15; F1 0.00 against
    0.33). Each candidate gets its own thresholds (on Xv, Yv: network inputs and masks at the
    model's scale) and is scored by the mean F1 over IoU 0.5-0.9 of one-scale StarDist
    outlines on ``val_greys`` against ``truths``. When the last epoch's weights win they become
    ``weights_best.h5`` (what ``segment`` loads) and the others ``weights_lowest_val_loss.h5``.
    Returns {"chosen", "criterion", "scores", "thresholds"}; ties keep the lowest-loss weights.
    """
    from .evaluation import DEFAULT_THRESHOLDS, segmentation_metrics

    model_out = Path(model_out)
    candidates = ["best"] + (["last"] if (model_out / LAST_WEIGHTS).is_file() else [])
    scores, thresholds = {}, {}
    for name in candidates:
        if name == "last":
            model.load_weights(LAST_WEIGHTS)
        with quiet_stardist():
            found = model.optimize_thresholds(Xv, Yv, save_to_json=False)
        thresholds[name] = {"prob": float(found["prob"]), "nms": float(found["nms"])}
        preds = validation_segmentations(model, val_greys, factor, [(1.0,)], ["none"], percentiles)
        table = segmentation_metrics(truths, preds[((1.0,), "none")], thresholds=DEFAULT_THRESHOLDS)
        scores[name] = round(mean_f1(table), 4)
        log.info("weights of the %s: validation mean F1 over IoU 0.5-0.9 %.3f (thresholds %s)",
                 "lowest validation loss" if name == "best" else "last epoch", scores[name],
                 thresholds[name])
    chosen = max(candidates, key=lambda k: (scores[k], k == "best"))
    if chosen == "best":
        if "last" in candidates:
            model.load_weights(BEST_WEIGHTS)
    else:
        os.replace(model_out / BEST_WEIGHTS, model_out / LOWEST_LOSS_WEIGHTS)
        shutil.copy2(model_out / LAST_WEIGHTS, model_out / BEST_WEIGHTS)
        log.info("the last epoch's weights segment the validation images better: kept as %s "
                 "(the lowest-loss ones are now %s)", BEST_WEIGHTS, LOWEST_LOSS_WEIGHTS)
    model.thresholds = thresholds[chosen]
    write_json(model_out / "thresholds.json", thresholds[chosen])
    return {"chosen": chosen, "criterion": "validation mean F1 over IoU 0.5-0.9, one scale, "
            "StarDist outlines", "scores": scores, "thresholds": thresholds}


def train_segmentation(data: Path, model_out: Path, *, preset: str = "quick", epochs: int | None = None,
                       steps_per_epoch: int | None = None, early_stopping: int | None = None,
                       max_minutes: float | None = None, batch_size: int = 4,
                       patch_size: int | tuple[int, int] | None = None, resize: float | str | None = "auto",
                       n_rays: int = 32, grid: tuple[int, int] = (2, 2), learning_rate: float | None = None,
                       augment: bool = True, refine: str = "auto", pyramid: str | Sequence[float] = "auto",
                       norm_percentiles: tuple[float, float] = DEFAULT_NORM_PERCENTILES,
                       seed: int = 0, init_model: Path | None = None, scale: float | None = None,
                       overwrite: bool = False) -> TrainSegmentationResult:
    """Train a StarDist2D model on ``data`` (a ``split`` folder) and write it to ``model_out``.

    data: folder with ``train/images``, ``train/masks``, ``val/images``, ``val/masks`` (paired
    by stem). Budget: ``preset`` (:data:`PRESETS`: "quick" or "real") gives epochs,
    steps_per_epoch, early_stopping (epochs without a better validation loss before stopping,
    0 = never) and max_minutes (training time limit, None = none); any of them given here wins.
    Each step is a batch of ``batch_size`` random patches of ``patch_size`` = (rows, cols) px
    (None: automatic, 256 px or twice the large objects, fitting the smallest image).
    resize: factor applied to the training and validation images before training ("auto":
    chosen from the object sizes in the training masks, :func:`~.sizing.choose_resize`; 1: as
    given); the model's scale is the data's scale times this factor, so ``segment`` resizes new
    images the same way. n_rays: polygon rays per object; grid: output subsampling (rows, cols).
    learning_rate: Adam's (None: 3e-4); halved when the validation loss stalls (epochs // 4 epochs, at most
    10). augment: flips, rotations, scale jitter, brightness, contrast, gamma, blur, noise
    (:class:`~.augment.Augmenter`). refine: outline refinement stored in the model ("auto": the
    best of :data:`~.refine.REFINEMENTS` by validation mean F1 over IoU 0.5-0.9). pyramid:
    factors of the model's scale that ``segment`` predicts at (:mod:`.pyramid`; the network is
    trained at one scale, whose objects already span the sizes each level keeps; "auto":
    chosen from the small objects' size, then kept only if it beats one level on the
    validation images; "none": one level; e.g. "1,2,4": these).
    norm_percentiles: (low, high) of the per-image normalisation. seed: numpy, random,
    TensorFlow and augmentation. init_model: a local model folder (StarDist config + weights)
    to start from (same n_rays, grid and channels; never downloaded). scale: pixel scale of the
    training images relative to the originals (None: read from the preprocess run record of
    ``data``, else 1.0). Returns a :class:`TrainSegmentationResult`; writes the model folder,
    its ``orgaseg_model.json``, ``report.json``, ``report.csv`` and ``run.json``.
    """
    start = time.perf_counter()
    data, model_out = Path(data), Path(model_out)
    init_model = Path(init_model) if init_model is not None else None
    grid = as_pair(grid, what="grid")
    percentiles = check_percentiles(norm_percentiles)
    budget = resolve_budget(preset, epochs=epochs, steps_per_epoch=steps_per_epoch,
                            early_stopping=early_stopping, max_minutes=max_minutes)
    epochs, steps_per_epoch = budget["epochs"], budget["steps_per_epoch"]
    if int(batch_size) < 1:
        raise OrgasegError(f"batch_size must be at least 1, got {batch_size}")
    if int(n_rays) < 3:
        raise OrgasegError(f"n_rays must be at least 3, got {n_rays}")
    if learning_rate is None:
        learning_rate = DEFAULT_LEARNING_RATE
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise OrgasegError(f"learning_rate must be a positive number, got {learning_rate}")
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise OptionError(f"scale must be a positive number, got {scale}")
    resize_factor = parse_resize(resize)
    refine_key = str(refine).strip().lower()
    if refine_key != "auto":
        try:
            refine_key = check_refinement(refine_key)
        except ValueError as exc:
            raise OrgasegError(f"{exc} (or auto)") from None
    try:
        pyramid_given = parse_pyramid(pyramid)
    except ValueError as exc:
        raise OrgasegError(str(exc)) from None
    if not data.is_dir():
        raise InputFileError(data, "data folder does not exist or is not a folder")

    warnings_out: list[str] = []
    init_config = None
    init_scale = None
    if init_model is not None:
        init_config, init_weights = check_stardist_folder(init_model)
        check_init_compatible(init_config, {"n_rays": int(n_rays), "grid": list(grid), "n_channel_in": 1},
                              folder=init_model)
        init_meta_path = init_model / ORGASEG_MODEL_JSON
        if init_meta_path.is_file():
            init_meta = read_json_file(init_meta_path, what="orgaseg model description")
            init_scale = init_meta.get("scale") if isinstance(init_meta, dict) else None

    # Every check on the data happens before anything is written or TensorFlow is started.
    train = load_split(data, "train")
    val = load_split(data, "val")
    if train.n_objects == 0:
        raise InputFileError(data / "train" / "masks", "the training masks hold no objects at all")
    unet_depth = int(init_config.get("unet_n_depth", 3)) if init_config else 3
    unet_pool = int(as_pair(init_config.get("unet_pool", 2), what="unet_pool")[0]) if init_config else 2
    divisor = patch_divisor(grid, unet_depth=unet_depth, unet_pool=unet_pool)

    # The objects' sizes decide the resize (auto) and the patch (auto).
    field_px = receptive_field(grid, unet_depth=unet_depth, pool=unet_pool)
    diameters = object_diameters(train.masks)
    choice = choose_resize(diameters, field_px)
    resize_chosen = resize_factor is None
    if resize_factor is None:
        resize_factor = choice.factor
        resize_reason = choice.reason
    else:
        resize_reason = f"given (the object sizes would suggest {choice.factor:g}: {choice.reason})"
    resize_info = choice.as_dict()
    resize_info.update(factor=resize_factor, reason=resize_reason,
                       chosen="auto" if resize_chosen else "given")
    if not resize_chosen:  # choose_resize counted them at its own factor
        resize_info["n_below_min_diameter_after"] = int(np.count_nonzero(diameters * resize_factor
                                                                         < MIN_DIAMETER))
    log.info("training objects: %d, %.1f-%.0f px across (5th-95th percentile, median %.0f); "
             "resize %g: %s", choice.n_objects, choice.p5, choice.p95, choice.median, resize_factor,
             resize_reason)
    if resize_info["n_below_min_diameter_after"]:
        msg = (f"{resize_info['n_below_min_diameter_after']} of {choice.n_objects} training objects are "
               f"under {MIN_DIAMETER:g} px across at resize {resize_factor:g}: the smallest organoids will be hard to find")
        log.warning(msg)
        warnings_out.append(msg)
    if pyramid_given is None:
        pyramid_choice = choose_pyramid(diameters, resize_factor)
        pyramid_info = pyramid_choice.as_dict()
        pyramid_info["chosen"] = "auto"
    else:
        pyramid_info = PyramidChoice(pyramid_given, "given").as_dict()
        pyramid_info["chosen"] = "given"
    levels = tuple(pyramid_info["levels"])
    log.info("pyramid %s: %s", describe_levels(levels), pyramid_info["reason"])
    # the sizes resize_split will give (rescale_image's rounding)
    resized_shapes = [(output_length(h, resize_factor), output_length(w, resize_factor))
                      for h, w in train.shapes + val.shapes]
    names = train.names + [f"val/{n}" for n in val.names]
    if patch_size is None:
        # fit_patch_size raises the clear error for images smaller than the network minimum
        fit_patch_size(None, resized_shapes, names, divisor)
        patch = choose_patch(resized_shapes, divisor, choice.p95 * resize_factor)
        patch_warning = None
    else:
        patch, patch_warning = fit_patch_size(patch_size, resized_shapes, names, divisor)
    if patch_warning:
        log.warning(patch_warning)
        warnings_out.append(patch_warning)
    provenance = read_data_provenance(data)
    data_scale = resolve_data_scale(data, provenance, scale, warnings_out)
    model_scale = data_scale * resize_factor
    if init_scale is not None and not math.isclose(float(init_scale), model_scale):
        msg = (f"the initial model {init_model} was trained at scale {float(init_scale):g}, this "
               f"data is at scale {model_scale:g}: its objects will look a different size to it")
        log.warning(msg)
        warnings_out.append(msg)
    _check_tensorboard()

    arguments = {"data": data, "model_out": model_out, "preset": budget["preset"],
                 "epochs": epochs, "steps_per_epoch": steps_per_epoch,
                 "early_stopping": budget["early_stopping"], "max_minutes": budget["max_minutes"],
                 "batch_size": int(batch_size),
                 "patch_size": list(patch_size) if isinstance(patch_size, (tuple, list)) else patch_size,
                 "resize": resize, "n_rays": int(n_rays), "grid": list(grid),
                 "learning_rate": float(learning_rate), "augment": bool(augment), "refine": refine_key,
                 "pyramid": list(pyramid_given) if pyramid_given else "auto",
                 "norm_percentiles": list(percentiles), "seed": int(seed),
                 "init_model": init_model, "scale": scale, "overwrite": overwrite}
    with step_run("train-segmentation", model_out, arguments, overwrite=overwrite,
                  inputs=[data, init_model]) as record:
        result = TrainSegmentationResult(model_out=model_out, n_train=len(train.names),
                                         n_val=len(val.names), n_train_objects=train.n_objects,
                                         n_val_objects=val.n_objects, epochs=epochs,
                                         steps_per_epoch=steps_per_epoch, patch_size=patch,
                                         scale=model_scale, resize=resize_info, warnings=warnings_out)
        stale = model_out / ORGASEG_MODEL_JSON
        if stale.exists():
            # --overwrite of an earlier model: until this run completes the folder must not pass
            # for a finished model (weights of this run next to the old description).
            stale.unlink()
        train_images, Y = resize_split(train, resize_factor)
        val_images, Yv = resize_split(val, resize_factor)
        X = [normalize_image(g, percentiles) for g in train_images]
        Xv = [normalize_image(g, percentiles) for g in val_images]

        models = import_stardist()
        import tensorflow as tf

        random.seed(seed)
        np.random.seed(seed)
        tf.keras.utils.set_random_seed(int(seed))
        config_kwargs: dict[str, Any] = {}
        if init_config:
            config_kwargs = {k: init_config[k] for k in
                             ("unet_n_depth", "unet_kernel_size", "unet_n_filter_base",
                              "unet_n_conv_per_depth", "unet_pool", "unet_batch_norm", "unet_expansion",
                              "unet_activation", "unet_last_activation", "net_conv_after_unet")
                             if k in init_config}
        config = models.Config2D(
            n_rays=int(n_rays), grid=grid, n_channel_in=1, train_patch_size=patch,
            train_batch_size=int(batch_size), train_learning_rate=float(learning_rate),
            train_epochs=epochs, train_steps_per_epoch=steps_per_epoch,
            train_tensorboard=True,
            # StarDist's patience of 40 epochs is meant for 400 epochs; scale it to the run.
            train_reduce_lr={"factor": 0.5, "patience": min(10, max(3, epochs // 4)), "min_delta": 0},
            **config_kwargs)
        folder = model_out.resolve()
        with quiet_stardist(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="output path for model already exists")
            model = models.StarDist2D(config, name=folder.name, basedir=str(folder.parent))
        if init_model is not None:
            try:
                model.keras_model.load_weights(str(Path(init_weights[0]).resolve()))
            except (ValueError, OSError, KeyError) as exc:
                raise InputFileError(init_weights[0], f"weights do not fit the network ({exc})") from exc
            log.info("starting from the weights of %s", init_weights[0])

        history: list[dict] = []
        stopped: list[str] = []
        model.prepare_for_training()
        model.callbacks.append(_epoch_logger(history, epochs))
        model.callbacks.extend(_stop_callbacks(budget["early_stopping"], budget["max_minutes"], stopped))
        _quiet_progress(model.keras_model)
        augmenter = Augmenter(seed) if augment else None
        log.info("training on %d images (%d objects), validating on %d images (%d objects): up to %d "
                 "epochs x %d steps (preset %s, early stopping %s, time limit %s), batch %d, patch "
                 "%dx%d, grid %dx%d, %d rays, resize %g", len(X), result.n_train_objects, len(Xv),
                 result.n_val_objects, epochs, steps_per_epoch, budget["preset"],
                 f"{budget['early_stopping']} epochs" if budget["early_stopping"] else "off",
                 f"{budget['max_minutes']:g} min" if budget["max_minutes"] else "none",
                 batch_size, patch[0], patch[1], grid[0], grid[1], n_rays, resize_factor)
        t0 = time.perf_counter()
        # In a terminal Keras shows its progress bar on stdout; elsewhere StarDist's prints go
        # to the debug log.
        with contextlib.nullcontext() if sys.stdout.isatty() else quiet_stardist():
            model.train(X, Y, validation_data=(Xv, Yv), augmenter=augmenter, seed=int(seed),
                        epochs=epochs, steps_per_epoch=steps_per_epoch)
        result.seconds_training = time.perf_counter() - t0
        result.epochs_run = len(history)
        result.stopped = "; ".join(stopped)
        log.info("training took %.1f s (%d epochs, %.2f s per epoch)", result.seconds_training,
                 result.epochs_run, result.seconds_training / max(1, result.epochs_run))

        from .evaluation import DEFAULT_THRESHOLDS, segmentation_metrics

        # The masks as annotated, at the data's size (holes are not filled here): the report
        # measures what users see, the way segment returns it.
        truths = [read_labels(mask_path) for _, mask_path in val.files]
        t1 = time.perf_counter()
        result.weights = choose_weights(model, model_out, Xv, Yv, list(val.images), truths,
                                        resize_factor, percentiles)
        result.thresholds = dict(result.weights["thresholds"][result.weights["chosen"]])
        seconds_thresholds = time.perf_counter() - t1
        log.info("optimised thresholds on the validation images: %s (%.1f s)", result.thresholds,
                 seconds_thresholds)

        t2 = time.perf_counter()
        methods = list(REFINEMENTS) if refine_key == "auto" else [refine_key]
        # "auto" compares the pyramid with one level; a given pyramid is used as it is
        pyramids = [(1.0,), levels] if (pyramid_given is None and len(levels) > 1) else [levels]
        preds = validation_segmentations(model, list(val.images), resize_factor, pyramids, methods,
                                         percentiles)
        all_tables = {key: segmentation_metrics(truths, found, thresholds=DEFAULT_THRESHOLDS)
                      for key, found in preds.items()}
        scores = {key: round(mean_f1(table), 4) for key, table in all_tables.items()}
        # ties go to one level, then to the simpler method (REFINEMENTS: simple to elaborate)
        best_levels, result.refinement = max(
            scores, key=lambda k: (scores[k], -pyramids.index(k[0]), -methods.index(k[1])))
        tables = {m: all_tables[(best_levels, m)] for m in methods}
        result.refinement_scores = {m: scores[(best_levels, m)] for m in methods}
        pyramid_info["levels"] = list(best_levels)
        pyramid_info["scores"] = {levels_key(p): max(scores[(p, m)] for m in methods)
                                  for p in pyramids}
        if len(pyramids) > 1:
            pyramid_info["reason"] += ("; kept: it beat one level on the validation images"
                                       if len(best_levels) > 1 else
                                       "; dropped: one level was as good on the validation images")
        result.pyramid = pyramid_info
        for (p, m), score in scores.items():
            log.info("pyramid %s, outlines %s: validation mean F1 over IoU 0.5-0.9 %.3f%s",
                     levels_key(p), m, score,
                     " (chosen)" if (p, m) == (best_levels, result.refinement) else "")
        table = tables[result.refinement]
        seconds_validation = time.perf_counter() - t2
        result.metrics = _metrics_at(table, REPORT_THRESHOLDS)
        write_csv(model_out / "report.csv", table)
        report = {"n_images": len(Xv), "images": val.names, "n_objects": result.n_val_objects,
                  "thresholds": result.thresholds, "metrics": result.metrics,
                  "refinement": {"chosen": result.refinement, "criterion": "mean F1 over IoU 0.5-0.9",
                                 "scores": result.refinement_scores,
                                 "metrics": {m: _metrics_at(tables[m], REPORT_THRESHOLDS) for m in methods}},
                  "resize": resize_info,
                  "pyramid": pyramid_info,
                  "weights": result.weights,
                  "training": {"epochs_run": result.epochs_run, "stopped": result.stopped or None,
                               "seconds": round(result.seconds_training, 1)},
                  "definition": "pooled over the validation images at their size in the split; "
                                "ap = tp / (tp + fp + fn), see orgaseg_core.segmentation.evaluation"}
        write_json(model_out / "report.json", report)
        for key, m in result.metrics.items():
            log.info("validation at IoU %s: precision %.3f, recall %.3f, F1 %.3f, AP %.3f", key,
                     m["precision"], m["recall"], m["f1"], m["ap"])

        result.seconds = time.perf_counter() - start
        timings = {"training": round(result.seconds_training, 2),
                   "per_epoch": round(result.seconds_training / max(1, result.epochs_run), 3),
                   "thresholds": round(seconds_thresholds, 2),
                   "validation": round(seconds_validation, 2), "total": round(result.seconds, 2)}
        meta = {
            "kind": MODEL_KIND,
            "format_version": FORMAT_VERSION,
            "created": record.started,
            "norm_percentiles": list(percentiles),
            "scale": model_scale,
            "data_scale": data_scale,
            "resize": resize_info,
            "preprocessing": provenance["preprocessing"],
            "patch_size": list(patch),
            "n_rays": int(n_rays),
            "grid": list(grid),
            "n_channel_in": 1,
            "thresholds": result.thresholds,
            "refinement": result.refinement,
            "refinement_scores": result.refinement_scores,
            "pyramid": pyramid_info,
            "weights": result.weights,
            "training": {k: (str(v) if isinstance(v, Path) else v) for k, v in arguments.items()},
            "budget": budget,
            "epochs_run": result.epochs_run,
            "stopped": result.stopped or None,
            "data": {"folder": str(data), "provenance": provenance["source"],
                     "n_train_images": result.n_train, "n_val_images": result.n_val,
                     "n_train_objects": result.n_train_objects, "n_val_objects": result.n_val_objects,
                     "train_images": train.names, "val_images": val.names},
            "versions": package_versions(),
            "validation": result.metrics,
            "timings_s": timings,
            "history": history,
            "warnings": warnings_out,
        }
        # Written last: its presence marks a complete model folder (see stardist_model).
        write_json(model_out / ORGASEG_MODEL_JSON, meta)
        record.results.update(n_train=result.n_train, n_val=result.n_val,
                              n_train_objects=result.n_train_objects,
                              n_val_objects=result.n_val_objects, patch_size=list(patch),
                              scale=model_scale, resize=resize_info, epochs_run=result.epochs_run,
                              stopped=result.stopped or None, refinement=result.refinement,
                              refinement_scores=result.refinement_scores, pyramid=pyramid_info,
                              thresholds=result.thresholds, validation=result.metrics,
                              timings_s=timings, warnings=warnings_out)
    return result
