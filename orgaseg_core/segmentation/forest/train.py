"""``train-segmentation --backend forest``: fit a pixel forest on a ``split`` folder.

1. The scale: organoids need a few pixels across to be found, so the data is shrunk until its
   small objects (5th percentile of the equivalent diameters) are :data:`SMALL_DIAMETER` px
   across, never enlarged (features of resampled pixels add nothing) (``resize="auto"``).
2. Up to ``samples_per_class`` random pixels of each class (background, interior, boundary;
   :func:`~.features.pixel_targets`) per training image, fewer when there are so many images
   that the total would pass :data:`MAX_PIXELS_PER_CLASS`; features computed tile by tile.
3. A random forest (scikit-learn) on them, with balanced class weights.
4. On the validation images: class probabilities once, then every :data:`REGION_GRID`
   combination of boundary threshold and smoothing; the one with the best mean F1 over IoU
   0.5-0.9 (at the validation images' own size) is kept and reported. No growing
   (:class:`.regions.RegionParams` ``grow``, which the U-Net's choice includes): the forest's
   boundary class is 1 px wide, so its regions end half a pixel inside the organoids, less than
   the 1 px step; chosen on validation it lowered the pooled F1 at IoU 0.5 of GOAT's held-out
   images from 0.389 to 0.376 (the lung image's small organoids 0.361 -> 0.264).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ...common.errors import InputFileError, OptionError, OrgasegError
from ...common.images import read_labels
from ...common.outputs import package_versions, step_run, write_csv, write_json
from ...common.resample import output_length, rescale_image
from ..model import DEFAULT_NORM_PERCENTILES, ORGASEG_MODEL_JSON, check_percentiles, normalize_image
from ..predict import upscale_labels
from ..sizing import object_diameters
from ..train import (
    REPORT_THRESHOLDS,
    _metrics_at,
    load_split,
    mean_f1,
    parse_resize,
    read_data_provenance,
    resize_split,
    resolve_data_scale,
    validation_lines,
)
from .features import CLASS_NAMES, MIN_SIDE, FeatureSpec, features_at, pixel_targets, sample_pixels
from .model import FOREST_FILE, FOREST_FORMAT_VERSION, FOREST_KIND, import_sklearn, save_forest
from .regions import MAX_AREA_FACTOR, RegionParams, max_object_area, regions_from_probabilities

log = logging.getLogger(__name__)

#: most pixels of one class sampled over all training images together: beyond that a forest
#: learns little more, and its fitting time grows (many tiles share the budget)
MAX_PIXELS_PER_CLASS = 200_000
#: the small objects' diameter (px) the automatic scale aims at
SMALL_DIAMETER = 16.0
#: never shrink the data more than this automatically
MIN_FACTOR = 0.1
#: boundary thresholds and smoothings (px at model scale) tried on the validation images
REGION_GRID = {"boundary_threshold": (0.25, 0.35, 0.5), "smoothing": (0.0, 1.0, 2.0, 4.0)}


@dataclass
class TrainForestResult:
    """What :func:`train_forest` did: data, scale, forest, region choice, validation metrics."""

    model_out: Path
    n_train: int = 0
    n_val: int = 0
    n_train_objects: int = 0
    n_val_objects: int = 0
    n_pixels: int = 0
    scale: float = 1.0
    resize: dict[str, Any] = field(default_factory=dict)
    regions: dict[str, float] = field(default_factory=dict)
    region_scores: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds_training: float = 0.0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def backend(self) -> str:
        return "forest"

    def summary(self) -> str:
        best = max(self.region_scores.values()) if self.region_scores else float("nan")
        lines = [f"train-segmentation (pixel forest): model written to {self.model_out} "
                 f"({self.seconds:.0f} s, fitting {self.seconds_training:.0f} s)",
                 f"  data: {self.n_train} training images ({self.n_train_objects} objects), "
                 f"{self.n_val} validation images ({self.n_val_objects} objects); {self.n_pixels} "
                 "training pixels",
                 f"  resize {self.resize.get('factor', 1.0):g} (model scale {self.scale:g}): "
                 f"{self.resize.get('reason', '')}",
                 f"  regions: {RegionParams.from_dict(self.regions).describe() if self.regions else '-'} "
                 f"(best of {len(self.region_scores)} on the validation images, mean F1 over IoU 0.5-0.9 "
                 f"{best:.3f})",
                 "  validation:"]
        lines += validation_lines(self.metrics)
        lines.append(f"  report: {self.model_out / 'report.csv'}")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def choose_forest_resize(diameters: np.ndarray, small: float = SMALL_DIAMETER) -> dict[str, Any]:
    """The factor for data whose objects have these ``diameters`` (px): ``small / p5``, at most
    1, rounded to 2 significant digits (within 0.1 of 1: 1), and why."""
    d = np.asarray(diameters, dtype=np.float64)
    if d.size == 0:
        raise ValueError("no objects to choose a resize factor from")
    p5, median, p95 = (float(v) for v in np.percentile(d, (5, 50, 95)))
    factor = float(f"{min(1.0, small / max(p5, 1e-6)):.2g}")
    if factor >= 0.9:
        factor = 1.0
        reason = f"the small objects (5th percentile {p5:.1f} px across) need every pixel: kept as given"
    elif factor < MIN_FACTOR:
        factor = MIN_FACTOR
        reason = (f"the small objects (5th percentile {p5:.1f} px across) would allow more, but the "
                  f"images are shrunk at most to {MIN_FACTOR:g} (their texture and edges matter too)")
    else:
        reason = (f"the small objects (5th percentile {p5:.1f} px across) stay {small:g} px across: "
                  "shrunk to save time and memory")
    return {"factor": factor, "reason": reason, "n_objects": int(d.size),
            "diameter_px": {"p5": round(p5, 1), "median": round(median, 1), "p95": round(p95, 1)}}


def train_forest(data: Path, model_out: Path, *, resize: float | str | None = "auto",
                 n_trees: int = 100, max_depth: int = 16, samples_per_class: int = 20000,
                 features: FeatureSpec | None = None,
                 norm_percentiles: tuple[float, float] = DEFAULT_NORM_PERCENTILES, seed: int = 0,
                 scale: float | None = None, overwrite: bool = False) -> TrainForestResult:
    """Train a pixel forest on ``data`` (a ``split`` folder: ``train/`` and ``val/`` with
    ``images/`` and ``masks/``) and write the model folder ``model_out``.

    resize: factor applied to the data ("auto": :func:`choose_forest_resize`). n_trees,
    max_depth: the random forest's. samples_per_class: pixels per class per training image
    (fewer with many images, see :data:`MAX_PIXELS_PER_CLASS`).
    features: :class:`~.features.FeatureSpec` (None: the default, sigma 1-32 px in 6 scales).
    norm_percentiles: per-image normalisation. seed: pixel sampling and the forest. scale: pixel
    scale of the data relative to the originals (None: from the preprocess run record, else 1).
    """
    start = time.perf_counter()
    data, model_out = Path(data), Path(model_out)
    spec = features or FeatureSpec()
    percentiles = check_percentiles(norm_percentiles)
    factor = parse_resize(resize)
    for name, value in (("n_trees", n_trees), ("max_depth", max_depth), ("samples_per_class", samples_per_class)):
        if isinstance(value, bool) or int(value) < 1:
            raise OrgasegError(f"{name} must be a whole number >= 1, got {value!r}")
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise OptionError(f"scale must be a positive number, got {scale}")
    if not data.is_dir():
        raise InputFileError(data, "data folder does not exist or is not a folder")
    import_sklearn()  # a clear error before anything is read or written
    from sklearn.ensemble import RandomForestClassifier

    train = load_split(data, "train")
    val = load_split(data, "val")
    if train.n_objects == 0:
        raise InputFileError(data / "train" / "masks", "the training masks hold no objects at all")
    train_diameters = object_diameters(train.masks)
    choice = choose_forest_resize(train_diameters)
    if factor is None:
        factor = choice["factor"]
        choice["chosen"] = "auto"
    else:
        choice.update(factor=factor, reason=f"given (auto would be {choice['factor']:g})", chosen="given")
    log.info("training objects: %d, %.1f-%.0f px across (5th-95th percentile); resize %g: %s",
             choice["n_objects"], choice["diameter_px"]["p5"], choice["diameter_px"]["p95"], factor,
             choice["reason"])
    for split_data in (train, val):
        for (image_path, _), shape in zip(split_data.files, split_data.shapes):
            small = (output_length(shape[0], factor), output_length(shape[1], factor))
            if min(small) < MIN_SIDE:
                raise InputFileError(image_path,
                                     f"is {small[0]}x{small[1]} px at resize {factor:g}; the pixel forest "
                                     f"needs at least {MIN_SIDE} px on each side (give a larger --resize)")
    provenance = read_data_provenance(data)
    warnings_out: list[str] = []
    data_scale = resolve_data_scale(data, provenance, scale, warnings_out)
    model_scale = data_scale * factor
    arguments = {"data": data, "model_out": model_out, "backend": "forest", "resize": resize,
                 "n_trees": int(n_trees), "max_depth": int(max_depth),
                 "samples_per_class": int(samples_per_class), "features": spec.as_dict(),
                 "norm_percentiles": list(percentiles), "seed": int(seed), "scale": scale,
                 "overwrite": overwrite}
    with step_run("train-segmentation", model_out, arguments, overwrite=overwrite, inputs=[data]) as record:
        result = TrainForestResult(model_out=model_out, n_train=len(train.names), n_val=len(val.names),
                                   n_train_objects=train.n_objects, n_val_objects=val.n_objects,
                                   scale=model_scale, resize=choice, warnings=warnings_out)
        stale = model_out / ORGASEG_MODEL_JSON
        if stale.exists():
            stale.unlink()  # until this run completes the folder must not pass for a model
        train_images, train_masks = resize_split(train, factor)
        # the validation masks are compared at their own size: only the images are resized
        val_images = [g if factor == 1.0 else rescale_image(g.astype(np.float32), factor) for g in val.images]
        rng = np.random.default_rng(seed)
        per_image = min(int(samples_per_class), max(1, -(-MAX_PIXELS_PER_CLASS // len(train_images))))
        if per_image < int(samples_per_class):
            log.info("%d training images: %d pixels per class from each (at most %d per class in all)",
                     len(train_images), per_image, MAX_PIXELS_PER_CLASS)
        X, y = [], []
        for name, grey, mask in tqdm(list(zip(train.names, train_images, train_masks)),
                                     desc="pixel features", unit="image", disable=None):
            targets = pixel_targets(mask)
            idx = sample_pixels(targets, per_image, rng)
            X.append(features_at(normalize_image(grey, percentiles), spec, idx))
            y.append(targets.ravel()[idx])
            log.info("train/%s: %s pixels sampled", name, ", ".join(
                f"{int(np.count_nonzero(y[-1] == c))} {n}" for c, n in enumerate(CLASS_NAMES)))
        X, y = np.concatenate(X), np.concatenate(y)
        result.n_pixels = int(y.size)
        t0 = time.perf_counter()
        forest = RandomForestClassifier(n_estimators=int(n_trees), max_depth=int(max_depth),
                                        class_weight="balanced", n_jobs=-1, random_state=int(seed))
        forest.fit(X, y)
        result.seconds_training = time.perf_counter() - t0
        log.info("random forest of %d trees (depth <= %d) fitted on %d pixels x %d features in %.1f s",
                 n_trees, max_depth, y.size, X.shape[1], result.seconds_training)
        save_forest(forest, model_out / FOREST_FILE)

        from ..evaluation import DEFAULT_THRESHOLDS, segmentation_metrics
        from .predict import class_probabilities

        truths = [read_labels(mask_path) for _, mask_path in val.files]
        # float16 halves what is kept of every validation image for the 12 region settings
        probs = [class_probabilities(forest, normalize_image(g, percentiles), spec).astype(np.float16)
                 for g in tqdm(val_images, desc="validation", unit="image", disable=None)]
        tables, scores = {}, {}
        max_area = max_object_area(train_diameters, factor)
        log.info("regions over %.0f px at the model's scale are not organoids (%g x the largest training organoid)",
                 max_area, MAX_AREA_FACTOR)
        for threshold, smoothing in itertools.product(*REGION_GRID.values()):
            params = RegionParams(boundary_threshold=threshold, smoothing=smoothing, max_area=max_area)
            preds = [upscale_labels(regions_from_probabilities(p, params)[0], t.shape) for p, t in zip(probs, truths)]
            key = f"boundary {threshold:g}, smoothing {smoothing:g}"
            tables[key] = (params, segmentation_metrics(truths, preds, thresholds=DEFAULT_THRESHOLDS))
            scores[key] = round(mean_f1(tables[key][1]), 4)
            log.info("regions %s: validation mean F1 over IoU 0.5-0.9 %.3f", key, scores[key])
        # ties go to the first (lowest threshold, least smoothing) in the grid's order
        best = max(scores, key=lambda k: (scores[k], -list(scores).index(k)))
        params, table = tables[best]
        result.regions, result.region_scores = params.as_dict(), scores
        result.metrics = _metrics_at(table, REPORT_THRESHOLDS)
        write_csv(model_out / "report.csv", table)
        write_json(model_out / "report.json", {
            "backend": "forest", "n_images": len(val.names), "images": val.names,
            "n_objects": result.n_val_objects, "regions": {"chosen": params.as_dict(),
                                                           "criterion": "mean F1 over IoU 0.5-0.9",
                                                           "scores": scores},
            "metrics": result.metrics, "resize": choice,
            "definition": "pooled over the validation images at their size in the split; "
                          "ap = tp / (tp + fp + fn), see orgaseg_core.segmentation.evaluation"})
        for key, m in result.metrics.items():
            log.info("validation at IoU %s: precision %.3f, recall %.3f, F1 %.3f, AP %.3f", key,
                     m["precision"], m["recall"], m["f1"], m["ap"])
        result.seconds = time.perf_counter() - start
        meta = {"kind": FOREST_KIND, "format_version": FOREST_FORMAT_VERSION, "created": record.started,
                "backend": "forest", "norm_percentiles": list(percentiles), "scale": model_scale,
                "data_scale": data_scale, "resize": choice, "preprocessing": provenance["preprocessing"],
                "features": spec.as_dict(), "classes": list(CLASS_NAMES), "regions": params.as_dict(),
                "region_scores": scores,
                "forest": {"n_trees": int(n_trees), "max_depth": int(max_depth),
                           "n_pixels": result.n_pixels, "samples_per_class": int(samples_per_class),
                           "pixels_per_class_per_image": per_image},
                "training": {k: (str(v) if isinstance(v, Path) else v) for k, v in arguments.items()},
                "data": {"folder": str(data), "provenance": provenance["source"],
                         "n_train_images": result.n_train, "n_val_images": result.n_val,
                         "n_train_objects": result.n_train_objects, "n_val_objects": result.n_val_objects,
                         "train_images": train.names, "val_images": val.names},
                "versions": package_versions(), "validation": result.metrics,
                "timings_s": {"fitting": round(result.seconds_training, 2), "total": round(result.seconds, 2)},
                "warnings": warnings_out}
        write_json(model_out / ORGASEG_MODEL_JSON, meta)  # last: marks a complete folder
        record.results.update(backend="forest", n_train=result.n_train, n_val=result.n_val,
                              scale=model_scale, resize=choice, regions=params.as_dict(),
                              region_scores=scores, validation=result.metrics,
                              timings_s=meta["timings_s"], warnings=warnings_out)
    return result
