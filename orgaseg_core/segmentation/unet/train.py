"""``train-segmentation --backend unet``: train a U-Net from scratch on a ``split`` folder.

1. The scale (``resize="auto"``): the data is shrunk until its large organoids (95th percentile
   of the equivalent diameters) are at most half a training patch across, so that a patch holds
   them with their surroundings, but never so far that the typical organoid (the median) falls
   under :data:`MEDIAN_DIAMETER` px; never enlarged.
2. Training: batches of random patches (``patch_size`` px at the model's scale) of the training
   images, changed as brightfield images vary (:class:`..augment.Augmenter`: flips, rotations,
   scale jitter, gamma, contrast, brightness, blur, noise); per pixel background, interior or
   boundary (:func:`..forest.features.pixel_targets`, boundaries :data:`BOUNDARY_WIDTH` px wide),
   class-weighted cross-entropy (weights ``1/sqrt(frequency)``: the thin boundary class is
   rare). AdamW; the learning rate rises linearly over the first :data:`WARMUP_STEPS` steps,
   then falls along a cosine to 0 at the last step. The budget is ``epochs`` x
   ``steps_per_epoch``; with ``max_minutes`` the number of steps is fitted after every epoch
   to what fits in the time left at the speed of the epochs after the first (the cosine
   follows), and ``early_stopping`` stops after so many epochs without a lower validation
   loss.
3. After each epoch the validation loss (whole validation images); the network of the lowest
   validation loss and the last one are kept.
4. On the validation images, for both networks and for the class probabilities of 1 and of 8
   test-time views (:mod:`..views`: flipped/turned copies averaged), every :data:`REGION_GRID`
   setting (basin depth, smoothing, foreground threshold, growing) of
   :func:`..forest.regions.regions_from_probabilities`; per number of views the network and
   setting with the best mean F1 over IoU 0.5-0.9 (at the validation images' own size), then
   the most views within :data:`..views.VIEWS_TOLERANCE` of the best (or ``tta`` as given) are
   kept and reported: averaged probabilities are smoother, and the smoothing and basin depth
   that suit them differ.
5. The pyramid (:mod:`..forest.levels`): when the training organoids' small ones are under
   16 px at the model's scale, the validation images are also segmented at 2x (and 4x) the
   scale (with the kept views), each organoid kept from the level where it is well seen; the
   most levels whose mean F1 is within :data:`..forest.levels.PYRAMID_TOLERANCE` of the best
   are stored (or the levels given as ``pyramid``), and ``segment`` predicts at them.
6. ``refit`` (off by default): a new network is trained on the training *and* validation
   images for as many steps as the kept network had (same seed and peak learning rate, the
   warm-up and cosine ending at the last of those steps; no validation), and stored with the
   choices of steps 4-5 in its place. With a few images of different tissues the validation
   image is a quarter of the data; the refit network
   learns from it too, at twice the training time. Its validation figures are those of the
   network the choices were made with (the refit one has seen the validation images), kept
   beside it as :data:`VALIDATED_UNET_FILE`.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from ...common.errors import InputFileError, OptionError, OrgasegError
from ...common.images import read_labels
from ...common.outputs import atomic_path, package_versions, step_run, write_csv, write_json
from ...common.resample import output_length, rescale_image
from ..augment import Augmenter
from ..model import DEFAULT_NORM_PERCENTILES, ORGASEG_MODEL_JSON, check_percentiles, normalize_image
from ..predict import upscale_labels
from ..sizing import object_diameters
from ..forest.features import CLASS_NAMES, pixel_targets
from ..forest.regions import MAX_AREA_FACTOR, RegionParams, max_object_area, regions_from_probabilities
from ..train import (
    REPORT_THRESHOLDS,
    _metrics_at,
    load_split,
    mean_f1,
    parse_resize,
    read_data_provenance,
    resize_split,
    resolve_budget,
    resolve_data_scale,
    validation_lines,
)
from ..forest.levels import choose_region_pyramid
from ..pyramid import describe_levels, parse_pyramid
from ..views import choose_views, mean_over_views, parse_views, with_views
from .model import UNET_FILE, UNET_FORMAT_VERSION, UNET_KIND, LoadedUNet, UNetInfo, check_architecture, import_torch

log = logging.getLogger(__name__)

#: training budgets (``preset``): "quick" for small data and tests, "real" for real images
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"epochs": 20, "steps_per_epoch": 25, "early_stopping": 0, "max_minutes": None},
    "real": {"epochs": 200, "steps_per_epoch": 50, "early_stopping": 30, "max_minutes": 30.0},
}
DEFAULT_LEARNING_RATE = 2e-3
WARMUP_STEPS = 20
BOUNDARY_WIDTH = 2
#: probability that each organoid of a training patch is shown out of focus (:class:`..augment.Augmenter`);
#: off: 0.3 lowered GOAT's pooled F1 at IoU 0.5 from 0.522 to 0.488 (README, all five folds)
DEFOCUS_PROBABILITY = 0.0
#: fraction of training patches centred on an organoid drawn uniformly (:class:`PatchSampler`);
#: the rest anywhere. 0.5 (0.20; before: 0, every patch anywhere): GOAT's default U-Nets, five
#: held-out images, pooled F1 at IoU 0.5 0.457 -> 0.456 (three folds up, two down), mean matched
#: IoU 0.769 -> 0.790, F1 at IoU 0.75 0.259 -> 0.278 (closer outlines; README)
OBJECT_PATCH_FRACTION = 0.5
#: the typical (median) organoid stays at least this many px across when the data is shrunk
MEDIAN_DIAMETER = 16.0
#: never shrink the data more than this automatically
MIN_FACTOR = 0.1
#: how class probabilities become organoids, tried on the validation images
#: (growing by half the boundary class's width: the watershed's lines lie along its middle,
#: inside the organoids, see :mod:`..forest.regions`)
REGION_GRID = {"h_minima": (0.05, 0.1, 0.2), "smoothing": (1.0, 2.0, 4.0), "min_foreground": (0.5, 0.65),
               "grow": (0.0, BOUNDARY_WIDTH / 2)}
#: with ``refit``: the weights of the network the choices were made with (the stored one is refit)
VALIDATED_UNET_FILE = "unet_validated.pt"
DEFAULT_ARCHITECTURE = {"base": 16, "depth": 5, "n_classes": 3, "in_channels": 1}


@dataclass
class TrainUNetResult:
    """What :func:`train_unet` did: data, scale, budget, history, choices, validation metrics."""

    model_out: Path
    n_train: int = 0
    n_val: int = 0
    n_train_objects: int = 0
    n_val_objects: int = 0
    scale: float = 1.0
    resize: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    stopped: str = ""
    device: str = "cpu"
    weights: str = "last"
    regions: dict[str, float] = field(default_factory=dict)
    region_scores: dict[str, float] = field(default_factory=dict)
    pyramid: dict[str, Any] = field(default_factory=dict)
    views: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds_training: float = 0.0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def backend(self) -> str:
        return "unet"

    def summary(self) -> str:
        best = max(self.region_scores.values()) if self.region_scores else float("nan")
        lines = [f"train-segmentation (U-Net): model written to {self.model_out} "
                 f"({self.seconds / 60:.1f} min, training {self.seconds_training / 60:.1f} min on {self.device})",
                 f"  data: {self.n_train} training images ({self.n_train_objects} objects), "
                 f"{self.n_val} validation images ({self.n_val_objects} objects)",
                 f"  resize {self.resize.get('factor', 1.0):g} (model scale {self.scale:g}): "
                 f"{self.resize.get('reason', '')}",
                 f"  training: {self.steps} steps ({self.stopped}); kept the "
                 f"{self.weights if self.weights.startswith('network') else self.weights + ' network'}",
                 f"  regions: {RegionParams.from_dict(self.regions).describe() if self.regions else '-'} "
                 f"(best of {len(self.region_scores)} on the validation images, mean F1 over IoU "
                 f"0.5-0.9 {best:.3f})",
                 f"  pyramid: {describe_levels(self.pyramid.get('levels', [1.0]))} the model "
                 f"scale ({self.pyramid.get('reason', '')})",
                 f"  test-time views: {self.views.get('views', 1)} ({self.views.get('reason', '')})",
                 "  validation:"]
        lines += validation_lines(self.metrics)
        lines.append(f"  report: {self.model_out / 'report.csv'}")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def choose_unet_resize(diameters: np.ndarray, patch: int) -> dict[str, Any]:
    """The factor for data whose objects have these ``diameters`` (px), trained on patches of
    ``patch`` px: the 95th percentile at most ``patch / 2`` across, the median at least
    :data:`MEDIAN_DIAMETER` px, at most 1; rounded to 2 significant digits (within 0.1 of 1: 1)."""
    d = np.asarray(diameters, dtype=np.float64)
    if d.size == 0:
        raise ValueError("no objects to choose a resize factor from")
    p5, median, p95 = (float(v) for v in np.percentile(d, (5, 50, 95)))
    fit = (patch / 2) / max(p95, 1e-6)
    keep = MEDIAN_DIAMETER / max(median, 1e-6)
    factor = min(1.0, fit)
    if factor < keep:
        factor = min(1.0, keep)
        reason = (f"the large objects (95th percentile {p95:.0f} px across) would need {fit:.2g} to fit half "
                  f"a {patch} px patch, but the median object ({median:.0f} px) must stay "
                  f"{MEDIAN_DIAMETER:g} px across")
    else:
        reason = (f"the large objects (95th percentile {p95:.0f} px across) fit half a {patch} px patch "
                  f"(median {median:.0f} px, 5th percentile {p5:.1f} px)")
    factor = float(f"{max(factor, MIN_FACTOR):.2g}")
    if factor >= 0.9:
        factor = 1.0
        reason += ": kept as given"
    else:
        reason += f": shrunk to {factor:g}"
    return {"factor": factor, "reason": reason, "n_objects": int(d.size),
            "diameter_px": {"p5": round(p5, 1), "median": round(median, 1), "p95": round(p95, 1)}}


def class_weights(targets: list[np.ndarray]) -> np.ndarray:
    """Cross-entropy weights (3,) of background, interior, boundary: ``1/sqrt(frequency)`` over
    the training targets, mean 1 (a class absent from them gets the largest weight)."""
    counts = np.zeros(3, np.float64)
    for t in targets:
        counts += np.bincount(t.ravel(), minlength=3)[:3]
    freq = counts / max(counts.sum(), 1.0)
    weights = 1.0 / np.sqrt(np.maximum(freq, 1e-4))
    return (weights / weights.mean()).astype(np.float32)


class PatchSampler:
    """Random training patches (``patch`` px square) of the images and their pixel classes,
    augmented; an image is drawn with probability proportional to its area. With probability
    ``object_fraction`` a patch is centred on one of the image's organoids drawn uniformly
    (small ones as often as large ones), else placed anywhere."""

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray], patch: int, *, seed: int,
                 augment: bool, object_fraction: float | None = None):
        from scipy import ndimage

        self.images, self.masks, self.patch = images, masks, patch
        areas = np.array([g.size for g in images], np.float64)
        self.p = areas / areas.sum()
        self.rng = np.random.default_rng(seed)
        self.augmenter = Augmenter(seed, zoom=(0.7, 1.4), p_defocus=DEFOCUS_PROBABILITY) if augment else None
        self.object_fraction = OBJECT_PATCH_FRACTION if object_fraction is None else float(object_fraction)
        # each organoid's box centre (row, col) per image
        self.centres = [np.array([((b[0].start + b[0].stop) // 2, (b[1].start + b[1].stop) // 2)
                                  for b in ndimage.find_objects(m) if b is not None], np.int64).reshape(-1, 2)
                        for m in masks] if self.object_fraction > 0 else []

    def _corner(self, k: int) -> tuple[int, int]:
        g = self.images[k]
        if self.object_fraction > 0 and len(self.centres[k]) and self.rng.random() < self.object_fraction:
            r, c = self.centres[k][int(self.rng.integers(len(self.centres[k])))]
            return (int(np.clip(r - self.patch // 2, 0, g.shape[0] - self.patch)),
                    int(np.clip(c - self.patch // 2, 0, g.shape[1] - self.patch)))
        return int(self.rng.integers(g.shape[0] - self.patch + 1)), int(self.rng.integers(g.shape[1] - self.patch + 1))

    def __call__(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for _ in range(n):
            k = int(self.rng.choice(len(self.images), p=self.p))
            g, m = self.images[k], self.masks[k]
            r0, c0 = self._corner(k)
            x = g[r0:r0 + self.patch, c0:c0 + self.patch]
            y = m[r0:r0 + self.patch, c0:c0 + self.patch]
            if self.augmenter is not None:
                x, y = self.augmenter(x, y)
            xs.append(np.ascontiguousarray(x, np.float32))
            ys.append(pixel_targets(np.ascontiguousarray(y), BOUNDARY_WIDTH))
        return np.stack(xs)[:, None], np.stack(ys).astype(np.int64)


def learning_rate_at(step: int, total: int, peak: float) -> float:
    """Linear warm-up over :data:`WARMUP_STEPS` steps, then a cosine from ``peak`` to 0 at ``total``."""
    warm = min(1.0, (step + 1) / WARMUP_STEPS)
    progress = min(1.0, step / max(total, 1))
    return peak * warm * 0.5 * (1.0 + math.cos(math.pi * progress))


def seconds_per_step(epoch_times: list[tuple[int, float]]) -> float:
    """Seconds per training step (validation included) from ``(steps, seconds)`` per epoch: over
    the epochs after the first once there are any (the first is slower while memory and caches
    warm up), else the first."""
    timed = epoch_times[1:] or epoch_times
    steps = sum(n for n, _ in timed)
    return sum(s for _, s in timed) / max(steps, 1)


def steps_within(limit_s: float, elapsed_s: float, step: int, epoch_times: list[tuple[int, float]],
                 cap: int) -> int:
    """The total number of steps that ends training at ``limit_s`` seconds: the ``step`` steps
    done in ``elapsed_s`` plus what the time left holds at :func:`seconds_per_step`, at most
    ``cap`` (the preset's epochs x steps); ``step`` (stop now) when the time is up."""
    left = max(0.0, limit_s - elapsed_s)
    more = int(left / max(seconds_per_step(epoch_times), 1e-9))
    return max(step, min(cap, step + more))


def _patch_size(value: int | None, images: list[np.ndarray], multiple: int, warnings_out: list[str]) -> int:
    """The training patch side: ``value`` (default 256), a multiple of ``multiple``, reduced to
    fit the smallest training image."""
    wanted = 256 if value is None else int(value)
    if wanted < multiple or wanted % multiple:
        raise OptionError(f"--patch-size for the U-Net must be a multiple of {multiple} px, got {wanted}")
    smallest = min(min(g.shape) for g in images)
    fits = (smallest // multiple) * multiple
    if fits < multiple:
        raise OrgasegError(f"the smallest training image is {smallest} px on a side at the chosen scale; "
                           f"the U-Net needs at least {multiple} px (give a larger --resize)")
    if fits < wanted:
        msg = f"patch size {wanted} px reduced to {fits} px to fit the smallest training image"
        log.warning(msg)
        warnings_out.append(msg)
        return fits
    return wanted


def train_unet(data: Path, model_out: Path, *, preset: str = "quick", epochs: int | None = None,
               steps_per_epoch: int | None = None, early_stopping: int | None = None,
               max_minutes: float | None = None, batch_size: int = 4, patch_size: int | None = None,
               resize: float | str | None = "auto", learning_rate: float = DEFAULT_LEARNING_RATE,
               augment: bool = True, architecture: dict[str, int] | None = None,
               norm_percentiles: tuple[float, float] = DEFAULT_NORM_PERCENTILES, seed: int = 0,
               scale: float | None = None, device: str | None = None,
               pyramid: str | Sequence[float] | None = "auto", tta: str | int | None = "auto",
               refit: bool = False, overwrite: bool = False) -> TrainUNetResult:
    """Train a U-Net on ``data`` (a ``split`` folder: ``train/`` and ``val/`` with ``images/``
    and ``masks/``) and write the model folder ``model_out`` (see :mod:`.model`).

    preset: "quick" or "real" (:data:`PRESETS`); epochs, steps_per_epoch, early_stopping
    (epochs, 0 = off), max_minutes override it. batch_size: patches per step. patch_size: px at
    the model's scale, a multiple of 2**depth (None: 256, reduced to fit). resize: factor
    applied to the data ("auto": :func:`choose_unet_resize`). learning_rate: the peak of the
    schedule. augment: brightfield augmentations. architecture: {"base", "depth"} of the U-Net
    (None: 16 channels, depth 5). norm_percentiles: per-image normalisation. seed: patches,
    augmentation and the network's initial weights. scale: pixel scale of the data relative to
    the originals (None: from the preprocess run record, else 1). device: "cpu", "cuda" (None:
    a CUDA GPU when there is one). pyramid: the levels ``segment`` predicts at ("auto": chosen
    on the validation images, step 5; "none"; or factors like "1,2"). tta: the test-time views
    ``segment`` averages (:mod:`..views`; "auto": 1 or 8 chosen on the validation images, step
    4; or 1, 2, 4, 8). refit: train the stored network again on the training and validation
    images once the choices are made (step 6).
    """
    start = time.perf_counter()
    data, model_out = Path(data), Path(model_out)
    budget = resolve_budget_unet(preset, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                 early_stopping=early_stopping, max_minutes=max_minutes)
    percentiles = check_percentiles(norm_percentiles)
    factor = parse_resize(resize)
    try:
        pyramid_given = parse_pyramid(pyramid)
        views_given = parse_views(tta)
    except ValueError as exc:
        raise OptionError(str(exc)) from None
    arch = dict(DEFAULT_ARCHITECTURE, **(architecture or {}))
    try:
        arch = check_architecture(arch)
    except ValueError as exc:
        raise OptionError(str(exc)) from None
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise OptionError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if not (math.isfinite(float(learning_rate)) and float(learning_rate) > 0):
        raise OptionError(f"learning_rate must be a positive number, got {learning_rate}")
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise OptionError(f"scale must be a positive number, got {scale}")
    if not data.is_dir():
        raise InputFileError(data, "data folder does not exist or is not a folder")
    torch = import_torch()  # a clear error before anything is read or written
    from ...common.torch_io import resolve_device
    from .network import UNet
    from .predict import class_probabilities

    device = resolve_device(device)
    train = load_split(data, "train")
    val = load_split(data, "val")
    if train.n_objects == 0:
        raise InputFileError(data / "train" / "masks", "the training masks hold no objects at all")
    multiple = 2 ** arch["depth"]
    train_diameters = object_diameters(train.masks)
    choice = choose_unet_resize(train_diameters, 256 if patch_size is None else int(patch_size))
    if factor is None:
        factor = choice["factor"]
        choice["chosen"] = "auto"
    else:
        choice.update(factor=factor, reason=f"given (auto would be {choice['factor']:g})", chosen="given")
    log.info("training objects: %d, %.1f-%.0f px across (5th-95th percentile, median %.0f); resize %g: %s",
             choice["n_objects"], choice["diameter_px"]["p5"], choice["diameter_px"]["p95"],
             choice["diameter_px"]["median"], factor, choice["reason"])
    for split_data in (train, val):
        for (image_path, _), shape in zip(split_data.files, split_data.shapes):
            small = (output_length(shape[0], factor), output_length(shape[1], factor))
            if min(small) < multiple:
                raise InputFileError(image_path, f"is {small[0]}x{small[1]} px at resize {factor:g}; the U-Net "
                                                 f"needs at least {multiple} px on each side (give a larger --resize)")
    provenance = read_data_provenance(data)
    warnings_out: list[str] = []
    data_scale = resolve_data_scale(data, provenance, scale, warnings_out)
    model_scale = data_scale * factor
    train_images, train_masks = resize_split(train, factor)
    patch = _patch_size(patch_size, train_images, multiple, warnings_out)
    arguments = {"data": data, "model_out": model_out, "backend": "unet", "preset": budget["preset"],
                 "epochs": budget["epochs"], "steps_per_epoch": budget["steps_per_epoch"],
                 "early_stopping": budget["early_stopping"], "max_minutes": budget["max_minutes"],
                 "batch_size": int(batch_size), "patch_size": patch, "resize": resize,
                 "learning_rate": float(learning_rate), "augment": bool(augment), "architecture": arch,
                 "norm_percentiles": list(percentiles), "seed": int(seed), "scale": scale,
                 "device": device, "pyramid": "auto" if pyramid_given is None else list(pyramid_given),
                 "tta": views_given or "auto", "refit": bool(refit),
                 "overwrite": overwrite}
    with step_run("train-segmentation", model_out, arguments, overwrite=overwrite, inputs=[data]) as record:
        result = TrainUNetResult(model_out=model_out, n_train=len(train.names), n_val=len(val.names),
                                 n_train_objects=train.n_objects, n_val_objects=val.n_objects,
                                 scale=model_scale, resize=choice, budget=budget, device=device,
                                 warnings=warnings_out)
        stale = model_out / ORGASEG_MODEL_JSON
        if stale.exists():
            stale.unlink()  # until this run completes the folder must not pass for a model
        torch.manual_seed(int(seed))
        normalised = [normalize_image(g, percentiles) for g in train_images]
        weights = class_weights([pixel_targets(m, BOUNDARY_WIDTH) for m in train_masks])
        log.info("pixel classes weighted %s (background, interior, boundary: 1/sqrt(frequency))",
                 ", ".join(f"{w:.2f}" for w in weights))
        sampler = PatchSampler(normalised, train_masks, patch, seed=int(seed), augment=bool(augment))
        # the validation loss on the validation images at the model's scale; F1 at their own size
        val_small = validation_inputs(val.images, factor, percentiles)
        val_masks = resize_split(val, factor)[1]  # at the model's scale, also the refit's
        val_targets = [pixel_targets(m, BOUNDARY_WIDTH) for m in val_masks]
        network = UNet(**arch).to(device)
        optimiser = torch.optim.AdamW(network.parameters(), lr=float(learning_rate), weight_decay=1e-4)
        loss_fn = torch.nn.CrossEntropyLoss(weight=torch.from_numpy(weights).to(device))
        loaded = LoadedUNet(network=network, device=device, info=UNetInfo(
            folder=model_out, scale=model_scale, norm_percentiles=percentiles, architecture=arch,
            regions=RegionParams()))

        def validation_loss() -> float:
            network.eval()
            total, n = 0.0, 0
            with torch.inference_mode():
                for g, t in zip(val_small, val_targets):
                    prob = class_probabilities(loaded, g)
                    picked = np.take_along_axis(prob, t[..., None].astype(np.int64), axis=2)[..., 0]
                    w = weights[t]
                    total += float(-(w * np.log(np.maximum(picked, 1e-7))).sum())
                    n += float(w.sum())
            network.train()
            return total / max(n, 1e-9)

        max_steps = budget["epochs"] * budget["steps_per_epoch"]  # the preset's budget
        total_steps = max_steps  # where the schedule ends: fitted to max_minutes below
        log.info("training a U-Net (depth %d, %d channels) on %d images (%d objects), validating on %d "
                 "images (%d objects): up to %d epochs x %d steps (preset %s, early stopping %s, time "
                 "limit %s), batch %d, patch %d px (%d %% centred on an organoid drawn uniformly, "
                 "the rest anywhere), resize %g, on %s",
                 arch["depth"], arch["base"], result.n_train, result.n_train_objects, result.n_val,
                 result.n_val_objects, budget["epochs"], budget["steps_per_epoch"], budget["preset"],
                 budget["early_stopping"] or "off",
                 f"{budget['max_minutes']:g} min" if budget["max_minutes"] else "none", int(batch_size),
                 patch, round(100 * sampler.object_fraction), factor, device)
        history: list[dict[str, float]] = []
        best_state, best_loss, best_epoch, since_best = None, math.inf, 0, 0
        step, t_train = 0, time.perf_counter()
        epoch_times: list[tuple[int, float]] = []  # (steps, seconds with the validation) per epoch
        stopped = f"{budget['epochs']} epochs"
        network.train()
        bar = tqdm(range(budget["epochs"]), desc="train-segmentation", unit="epoch", disable=None)
        for epoch in bar:
            t_epoch, losses, steps_before = time.perf_counter(), [], step
            for _ in range(budget["steps_per_epoch"]):
                if step >= total_steps:
                    break
                for group in optimiser.param_groups:
                    group["lr"] = learning_rate_at(step, total_steps, float(learning_rate))
                losses.append(training_step(network, optimiser, loss_fn, sampler(int(batch_size)), device))
                step += 1
            if not losses:
                break
            v = validation_loss()
            seconds = time.perf_counter() - t_epoch
            history.append({"epoch": epoch + 1, "steps": step, "loss": round(float(np.mean(losses)), 5),
                            "val_loss": round(v, 5), "seconds": round(seconds, 2)})
            log.info("epoch %d/%d: loss %.4f, val_loss %.4f (%.1f s)", epoch + 1, budget["epochs"],
                     np.mean(losses), v, seconds)
            bar.set_postfix(loss=f"{np.mean(losses):.3f}", val_loss=f"{v:.3f}")
            if v < best_loss:
                best_loss, best_epoch, since_best = v, epoch + 1, 0
                best_state = copy.deepcopy(network.state_dict())
            else:
                since_best += 1
            if budget["max_minutes"]:
                # fit the schedule into the time after every epoch, from the speed of the epochs
                # after the first (its first steps are slower: allocation, caches), so that the
                # cosine ends where the time does
                epoch_times.append((step - steps_before, time.perf_counter() - t_epoch))
                fitted = steps_within(budget["max_minutes"] * 60, time.perf_counter() - t_train, step,
                                      epoch_times, max_steps)
                if fitted != total_steps and (epoch == 0 or abs(fitted - total_steps) > 0.02 * total_steps):
                    log.info("%.2f s per step: %d steps fit in %g minutes; the learning rate schedule "
                             "ends there", seconds_per_step(epoch_times), fitted, budget["max_minutes"])
                total_steps = fitted
            if step >= total_steps:
                stopped = f"the time limit of {budget['max_minutes']:g} min" \
                    if total_steps < max_steps else stopped
                break
            if budget["early_stopping"] and since_best >= budget["early_stopping"]:
                stopped = f"early stopping after epoch {epoch + 1}: no lower validation loss for " \
                          f"{budget['early_stopping']} epochs"
                break
        bar.close()
        result.steps, result.stopped = step, stopped
        result.seconds_training = time.perf_counter() - t_train
        log.info("trained %d steps in %.1f min (%s); lowest validation loss %.4f after epoch %d",
                 step, result.seconds_training / 60, stopped, best_loss, best_epoch)

        truths = [read_labels(mask_path) for _, mask_path in val.files]
        candidates = {"last": copy.deepcopy(network.state_dict())}
        if best_state is not None and best_epoch != len(history):
            candidates["lowest validation loss"] = best_state
        network.eval()
        max_area = max_object_area(train_diameters, factor)
        log.info("regions over %.0f px at the model's scale are not organoids (%g x the largest training organoid)",
                 max_area, MAX_AREA_FACTOR)

        def predict(small: np.ndarray) -> np.ndarray:  # the network loaded now
            return class_probabilities(loaded, small)

        def validation_probabilities(name: str, n_views: int) -> list[np.ndarray]:
            network.load_state_dict(candidates[name])
            return [mean_over_views(predict, g, n_views).astype(np.float16) for g in val_small]

        choice_made = choose_regions_and_views(validation_probabilities, list(candidates), truths, max_area,
                                               views_given=views_given)
        chosen, views, params, table, scores = (choice_made.network, choice_made.views, choice_made.params,
                                                choice_made.table, choice_made.scores)
        best = choice_made.key
        log.info("kept the %s network, %d test-time view(s) and %s (validation mean F1 over IoU 0.5-0.9 "
                 "%.3f of %d settings)", chosen, views["views"], params.describe(), scores[best], len(scores))
        log.info("test-time views %d: %s", views["views"], views["reason"])
        network.load_state_dict(candidates[chosen])
        # the pyramid (the image enlarged 2x, 4x as well: small organoids), on the same images
        pyramid = choose_region_pyramid(
            [g.astype(np.float32) for g in val.images], truths, factor,
            with_views(predict, views["views"]), params,
            percentiles, train_diameters, given=pyramid_given)
        log.info("pyramid %s: %s", describe_levels(pyramid["levels"]), pyramid["reason"])
        refit_record = None
        if refit:
            refit_steps = step if chosen == "last" else int(history[best_epoch - 1]["steps"])
            # the network the choices and the report's validation figures were made with
            save_weights(network, model_out / VALIDATED_UNET_FILE)
            t_refit = time.perf_counter()
            torch.manual_seed(int(seed))
            network = UNet(**arch).to(device)
            log.info("refit: a new network trained on the %d training and %d validation images for %d steps "
                     "(as many as the %s network had), stored with the choices above",
                     result.n_train, result.n_val, refit_steps, chosen)
            refit_losses = train_steps(
                network, PatchSampler(normalised + val_small, train_masks + val_masks, patch, seed=int(seed),
                                      augment=bool(augment)),
                loss_fn, steps=refit_steps, batch_size=int(batch_size), learning_rate=float(learning_rate),
                device=device, desc="refit")
            network.eval()
            refit_record = {"steps": refit_steps, "of": chosen, "validated_network": VALIDATED_UNET_FILE,
                            "images": list(train.names) + list(val.names),
                            "final_loss": round(float(np.mean(refit_losses[-50:])), 5) if refit_losses else None,
                            "seconds": round(time.perf_counter() - t_refit, 2)}
            result.seconds_training += refit_record["seconds"]
            chosen = f"network refit on the training and validation images ({refit_steps} steps; the choices " \
                     f"made with the {chosen} network)"
        result.pyramid = pyramid
        result.views = views
        result.weights = chosen
        result.regions, result.region_scores = params.as_dict(), scores
        result.metrics = _metrics_at(table, REPORT_THRESHOLDS)
        save_weights(network, model_out / UNET_FILE)
        write_csv(model_out / "report.csv", table)
        write_csv(model_out / "history.csv", pd.DataFrame(history, columns=["epoch", "steps", "loss", "val_loss", "seconds"]))
        write_json(model_out / "report.json", {
            "backend": "unet", "n_images": len(val.names), "images": val.names,
            "n_objects": result.n_val_objects,
            "regions": {"chosen": params.as_dict(), "network": chosen,
                        "criterion": "mean F1 over IoU 0.5-0.9", "scores": scores},
            "metrics": result.metrics, "resize": choice, "pyramid": pyramid,
            "test_time_views": views, "definition": "pooled over the validation images at their size in the split; "
                          "ap = tp / (tp + fp + fn), see orgaseg_core.segmentation.evaluation"})
        for key, m in result.metrics.items():
            log.info("validation at IoU %s: precision %.3f, recall %.3f, F1 %.3f, AP %.3f", key,
                     m["precision"], m["recall"], m["f1"], m["ap"])
        result.seconds = time.perf_counter() - start
        meta = {"kind": UNET_KIND, "format_version": UNET_FORMAT_VERSION, "created": record.started,
                "backend": "unet", "architecture": arch, "norm_percentiles": list(percentiles),
                "scale": model_scale, "data_scale": data_scale, "resize": choice,
                "preprocessing": provenance["preprocessing"], "classes": list(CLASS_NAMES),
                "boundary_width": BOUNDARY_WIDTH, "class_weights": [round(float(w), 4) for w in weights],
                "object_patch_fraction": sampler.object_fraction,
                "regions": params.as_dict(), "region_scores": scores, "pyramid": pyramid,
                "test_time_views": views, "weights": {"chosen": chosen, "lowest_val_loss": round(best_loss, 5),
                            "lowest_val_loss_epoch": best_epoch, "epochs": len(history),
                            "refit": refit_record},
                "budget": budget, "steps": step, "stopped": stopped, "history": history,
                "training": {k: (str(v) if isinstance(v, Path) else v) for k, v in arguments.items()},
                "data": {"folder": str(data), "provenance": provenance["source"],
                         "n_train_images": result.n_train, "n_val_images": result.n_val,
                         "n_train_objects": result.n_train_objects, "n_val_objects": result.n_val_objects,
                         "train_images": train.names, "val_images": val.names},
                "versions": package_versions(), "validation": result.metrics,
                "timings_s": {"training": round(result.seconds_training, 2), "total": round(result.seconds, 2)},
                "warnings": warnings_out}
        write_json(model_out / ORGASEG_MODEL_JSON, meta)  # last: marks a complete folder
        record.results.update(backend="unet", n_train=result.n_train, n_val=result.n_val,
                              scale=model_scale, resize=choice, steps=step, stopped=stopped,
                              weights=chosen, regions=params.as_dict(), pyramid=pyramid,
                              test_time_views=views,
                              validation=result.metrics,
                              timings_s=meta["timings_s"], warnings=warnings_out)
    return result


def save_weights(network, path: Path) -> None:
    """``network``'s weights as a plain state dict of CPU tensors at ``path``, written atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, tmp)


def train_steps(network, sampler: "PatchSampler", loss_fn, *, steps: int, batch_size: int,
                learning_rate: float, device: str, desc: str = "train") -> list[float]:
    """Train ``network`` for exactly ``steps`` steps of ``batch_size`` patches from ``sampler``
    with AdamW and :func:`learning_rate_at`'s schedule ending at ``steps``; no validation.
    Returns the loss of every step."""
    import torch

    optimiser = torch.optim.AdamW(network.parameters(), lr=float(learning_rate), weight_decay=1e-4)
    network.train()
    losses: list[float] = []
    every = max(1, int(steps) // 10)  # a log line per tenth (the bar is off in a log file)
    t0 = time.perf_counter()
    for step in tqdm(range(int(steps)), desc=desc, unit="step", disable=None):
        for group in optimiser.param_groups:
            group["lr"] = learning_rate_at(step, int(steps), float(learning_rate))
        losses.append(training_step(network, optimiser, loss_fn, sampler(int(batch_size)), device))
        if (step + 1) % every == 0 or step + 1 == int(steps):
            log.info("%s: step %d/%d, loss %.4f (mean of the last %d), %.1f min", desc, step + 1, int(steps),
                     float(np.mean(losses[-every:])), min(every, len(losses)), (time.perf_counter() - t0) / 60)
    return losses


def training_step(network, optimiser, loss_fn, batch: tuple[np.ndarray, np.ndarray], device: str) -> float:
    """One optimiser step on ``batch`` (patches (B, 1, Y, X) float32, pixel classes (B, Y, X)
    int64, as :class:`PatchSampler` gives them); the batch's loss."""
    import torch

    x, y = batch
    optimiser.zero_grad(set_to_none=True)
    loss = loss_fn(network(torch.from_numpy(x).to(device)), torch.from_numpy(y).to(device))
    loss.backward()
    optimiser.step()
    return float(loss.detach())


def validation_inputs(images: Sequence[np.ndarray], factor: float, percentiles: Sequence[float]) -> list[np.ndarray]:
    """The validation images (Y, X) as the network sees them in training: resized by ``factor``
    (as float32, so that shrinking averages without rounding) and normalised with
    ``percentiles``. What the validation loss and the choice of regions and views predict on."""
    return [normalize_image(g if factor == 1.0 else rescale_image(g.astype(np.float32), factor), percentiles)
            for g in images]


@dataclass
class RegionChoice:
    """What :func:`choose_regions_and_views` kept: the network's name, the test-time views
    (:func:`..views.choose_views`'s dict), the region parameters, their validation metrics
    table, the key of that setting in ``scores`` (setting -> mean F1 over IoU 0.5-0.9)."""

    network: str
    views: dict[str, Any]
    params: RegionParams
    table: pd.DataFrame
    key: str
    scores: dict[str, float]


def choose_regions_and_views(probabilities: Callable[[str, int], list[np.ndarray]], networks: Sequence[str],
                             truths: Sequence[np.ndarray], max_area: float, *,
                             views_given: int | None = None) -> RegionChoice:
    """The network, test-time views and :data:`REGION_GRID` setting a U-Net keeps, chosen on
    its validation images.

    probabilities(network, views): the class probabilities (Y, X, 3) of every validation image
    at the model's scale, from that network averaged over that many views. truths: the
    validation label images at their own size (the labels are resized to them). Per number of
    views the best network and setting by mean F1 over IoU 0.5-0.9 (ties go to the first in
    the grid's order: the first network, shallowest basins first), then the views (the most
    within :data:`..views.VIEWS_TOLERANCE`, or ``views_given``).
    """
    from ..evaluation import DEFAULT_THRESHOLDS, segmentation_metrics

    view_counts = (1, 8) if views_given is None else (views_given,)
    tables, scores = {}, {}
    for name in networks:
        for n_views in view_counts:
            probs = probabilities(name, n_views)
            for h, smoothing, fg, grow in itertools.product(*REGION_GRID.values()):
                params = RegionParams(h_minima=h, smoothing=smoothing, min_foreground=fg, max_area=max_area,
                                      grow=grow)
                preds = [upscale_labels(regions_from_probabilities(p.astype(np.float32), params)[0], t.shape)
                         for p, t in zip(probs, truths)]
                key = f"{name}, {n_views} view{'s' if n_views > 1 else ''}: {params.describe()}"
                tables[key] = (name, n_views, params, segmentation_metrics(list(truths), preds,
                                                                          thresholds=DEFAULT_THRESHOLDS))
                scores[key] = round(mean_f1(tables[key][3]), 4)
                log.debug("%s: validation mean F1 over IoU 0.5-0.9 %.3f", key, scores[key])
    order = list(scores)
    best_at = {v: max((k for k in scores if tables[k][1] == v), key=lambda k: (scores[k], -order.index(k)))
               for v in view_counts}
    views = choose_views(lambda v: scores[best_at[v]], candidates=view_counts, given=views_given)
    best = best_at[views["views"]]
    name, _, params, table = tables[best]
    return RegionChoice(network=name, views=views, params=params, table=table, key=best, scores=scores)


def resolve_budget_unet(preset: str, **given) -> dict[str, Any]:
    """The U-Net's training budget: the values ``given``, the rest from :data:`PRESETS`."""
    key = str(preset).strip().lower()
    if key not in PRESETS:
        raise OptionError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    budget = resolve_budget("quick", **{k: (v if v is not None else PRESETS[key][k]) for k, v in given.items()})
    budget["preset"] = key
    return budget
