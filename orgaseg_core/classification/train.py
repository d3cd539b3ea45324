"""``train-classifier``: candidate classifier families, chosen on the validation split.

Inputs, either

- class folders of crops (``split --mode classification``: ``data/train/<Class>/*.tif``,
  ``data/val/...``, ``data/test/...``; the class list comes from ``train``). Crops carry no
  outline, so only the CNN family is trained from them; or
- annotated images: the images and the ``annotations-to-masks`` folder (label images and
  class tables). Every object becomes what ``analyze`` later gives the classifier: its crop
  (cut as ``extract-objects`` cuts it) and its measurements and descriptors
  (:mod:`orgaseg_core.classification.objects`). The images are split into train/val/test as
  whole images (seeded, stratified by class); ``split.csv`` records the assignment.

Candidate families (:mod:`orgaseg_core.classification.model`):

- ``measurements``: a random forest on the measurements (trained also on eroded, dilated and
  smoothed outlines of the training objects, so that segmented outlines do not throw it);
- ``cnn``: a torchvision network on the crops: grid search over architecture x learning rate x
  batch size x weight decay (``grid_epochs`` each), then the chosen setting for up to
  ``epochs`` epochs, keeping the epoch with the best validation macro-F1 (early stopping after
  ``patience``). Stable from scratch: learning-rate warm-up then cosine decay, gradient
  clipping, label smoothing, BatchNorm statistics re-estimated on un-augmented training crops
  before every validation (:func:`recompute_batchnorm`); optionally ImageNet weights
  (``pretrained``) or a local weights file;
- ``combined``: ``w * p_cnn + (1 - w) * p_measurements``, ``w`` chosen on validation.

The family with the highest validation score is kept: the macro-F1 on the validation objects'
annotated outlines, averaged (annotated images) with the macro-F1 on stronger outline variants
of them (eroded/dilated by 4 px, smoothed; the crops cut around them), because ``analyze``
classifies segmented outlines, never annotated ones (ties: lower validation negative
log-likelihood, then the order above); its confidence is calibrated on the validation split by
temperature scaling (:mod:`orgaseg_core.classification.calibration`), and the TEST split is
evaluated once, at the end, for the report only: it never influences a choice.

Everything is seeded; on the CPU two runs with the same seed give identical models.

Outputs in ``model_out``: ``classifier.json`` (what classify and analyze load; written last),
``model.pt`` (the CNN, whenever it was trained) and/or ``measurements.skops`` (the forest),
``grid.csv`` (one row per family, then one per CNN grid setting), ``history.csv`` (the final
CNN run per epoch), ``report.json``, ``classification_report.csv`` and ``confusion_matrix.png``
(test split; the validation split when there is none), ``reliability.png`` (reliability
diagram before and after calibration), ``split.csv`` (annotated images), ``unreadable.csv``
(if any), ``tensorboard/<run>/`` and ``run.json``.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import random
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..common.classes import read_class_names
from ..common.params import check_device, check_seed
from ..common.errors import InputFileError, OptionError, OrgasegError, OutputError
from ..common.outputs import atomic_path, package_versions, step_run, write_csv, write_json
from ..objects.extract import DEFAULT_CONTEXT, check_context
from .measurement_model import DEFAULT_N_TREES
from .model import CLASSIFIER_JSON, DEFAULT_REVIEW_BELOW, FAMILIES, family_files

log = logging.getLogger(__name__)

#: Defaults (chosen so the demo-data quality test, ~430 training crops, trains in a few
#: minutes on 2 CPU cores and still reaches a validation macro-F1 near 1; see the report).
DEFAULT_ARCHITECTURES = ("resnet18",)
DEFAULT_LEARNING_RATES = (1e-3, 3e-4)
DEFAULT_BATCH_SIZES = (32,)
DEFAULT_WEIGHT_DECAYS = (1e-4,)
DEFAULT_GRID_EPOCHS = 3
DEFAULT_EPOCHS = 15
DEFAULT_PATIENCE = 5
#: Candidate families, in the order that breaks ties of equal validation scores.
DEFAULT_FAMILIES = ("measurements", "cnn", "combined")
#: Fractions of the annotated images that go to validation and test (the rest trains).
DEFAULT_VAL_FRACTION = 0.15
DEFAULT_TEST_FRACTION = 0.15
#: Pixels of context around an object's bounding box in its crop (as extract-objects cuts it).
DEFAULT_PADDING = 10
#: CNN weights tried for the combined family (the rest goes to the measurement forest).
FUSION_WEIGHTS = (0.25, 0.5, 0.75)

#: Fraction of a split's crops that may be unreadable (skipped, reported) before training refuses.
MAX_UNREADABLE_FRACTION = 0.1
SPLITS = ("train", "val", "test")
MODEL_FILE = "model.pt"
#: Final learning rate as a fraction of the initial one (cosine decay).
FINAL_LR_FRACTION = 0.01
#: Linear warm-up of the learning rate over this fraction of the steps (at least one epoch).
WARMUP_FRACTION = 0.1
#: Gradients are clipped to this norm.
GRAD_CLIP = 5.0
#: Label smoothing of the training loss.
LABEL_SMOOTHING = 0.05
#: Training crops used to re-estimate BatchNorm statistics before each validation.
PRECISE_BN_ITEMS = 512
#: Smallest F1 change that counts as an improvement.
F1_TOLERANCE = 1e-6


# ----------------------------------------------------------------------------------------------
# Metrics (pure numpy)


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 counts: row = true class, column = predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes
                       ).reshape(n_classes, n_classes)


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int],
                           class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision, recall, F1 and support.

    Macro averages run over the classes that occur in ``y_true`` or ``y_pred``: a class absent
    from a split and never predicted says nothing about the model (it is left out), one that is
    predicted but absent counts with F1 = 0. Precision (recall) of a class never predicted
    (absent) is 0. Returns plain Python values (JSON-ready).
    """
    k = len(class_names)
    cm = confusion_matrix(y_true, y_pred, k)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(k), where=denominator > 0)
    present = (support > 0) | (predicted > 0)
    n = int(cm.sum())
    per_class = {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                        "f1": float(f1[i]), "support": int(support[i])}
                 for i, name in enumerate(class_names)}
    weights = support / support.sum() if support.sum() else np.zeros(k)
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
        "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
        "weighted_f1": float((f1 * weights).sum()),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
    }


def report_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """classification_report.csv: one row per class, then ``macro avg`` and ``weighted avg``."""
    rows = [{"class": name, **values} for name, values in metrics["per_class"].items()]
    support = sum(r["support"] for r in rows)
    rows.append({"class": "macro avg", "precision": metrics["macro_precision"],
                 "recall": metrics["macro_recall"], "f1": metrics["macro_f1"], "support": support})
    weights = np.array([r["support"] for r in rows[:-1]], dtype=np.float64)
    weights = weights / weights.sum() if weights.sum() else weights
    rows.append({"class": "weighted avg",
                 "precision": float(sum(w * r["precision"] for w, r in zip(weights, rows))),
                 "recall": float(sum(w * r["recall"] for w, r in zip(weights, rows))),
                 "f1": metrics["weighted_f1"], "support": support})
    rows.append({"class": "accuracy", "precision": np.nan, "recall": np.nan,
                 "f1": metrics["accuracy"], "support": support})
    table = pd.DataFrame(rows, columns=["class", "precision", "recall", "f1", "support"])
    return table.round({"precision": 4, "recall": 4, "f1": 4})


def confusion_figure(cm: Sequence[Sequence[int]], class_names: Sequence[str], title: str):
    """A matplotlib Figure of a confusion matrix: counts, colours normalised per true class."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    k = len(class_names)
    rows = cm.sum(axis=1, keepdims=True)
    fractions = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    side = 1.6 + 0.75 * k
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center",
                    color="white" if fractions[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(k), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(k), labels=list(class_names))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _save_figure(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path


# ----------------------------------------------------------------------------------------------
# Result


@dataclass
class TrainClassifierResult:
    """What :func:`train_classifier` did and how good the chosen model is."""

    model_out: Path
    class_names: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> objects
    source: str = "crops"  # "crops" (class folders) or "annotated images"
    family: str = ""  # the family chosen on validation
    candidates: list[dict[str, Any]] = field(default_factory=list)  # one row per family
    temperature: float = 1.0
    calibration: dict[str, Any] = field(default_factory=dict)
    input_size: int = 0
    mean: float = 0.0
    std: float = 1.0
    grid: list[dict[str, Any]] = field(default_factory=list)  # CNN grid search
    class_weights: dict[str, float] = field(default_factory=dict)  # CNN loss weights
    chosen: dict[str, Any] = field(default_factory=dict)  # CNN setting
    best_epoch: int = 0
    epochs_trained: int = 0
    val: dict[str, Any] = field(default_factory=dict)
    test: dict[str, Any] | None = None
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    device: str = "cpu"
    seconds: float = 0.0

    @property
    def model(self) -> Path:
        """The model to give classify / analyze: the folder (its classifier.json says the rest)."""
        return self.model_out

    @property
    def checkpoint(self) -> Path:
        """The CNN checkpoint (written whenever the CNN was trained)."""
        return self.model_out / MODEL_FILE

    def summary(self) -> str:
        what = "objects" if self.source == "annotated images" else "crops"
        lines = [
            f"train-classifier: {len(self.class_names)} classes ({', '.join(self.class_names)}) from "
            f"{self.source}, {self.device}, {self.seconds:.0f} s",
            f"  {what}: " + "; ".join(f"{s} {sum(c.values())}" for s, c in self.counts.items()),
        ]
        if self.candidates:
            outlines = any(row.get("val_outlines_macro_f1") is not None for row in self.candidates)
            lines.append("  candidates (validation macro-F1 on the annotated outlines"
                         + (" / on stronger outline variants; chosen on their mean):" if outlines
                            else "; chosen on it):"))
            for row in self.candidates:
                extra = f", CNN weight {row['cnn_weight']:g}" if row.get("cnn_weight") is not None else ""
                second = (f" / {row['val_outlines_macro_f1']:.3f}"
                          if row.get("val_outlines_macro_f1") is not None else "")
                lines.append(f"    {row['family']:<13} {row['val_macro_f1']:.3f}{second}{extra}"
                             f"{'   <- chosen' if row.get('chosen') else ''}")
        if self.chosen and self.family in ("cnn", "combined"):
            setting = self.chosen
            lines.append(f"  CNN: {setting['architecture']}, input {self.input_size} px, learning rate "
                         f"{setting['learning_rate']:g}, batch size {setting['batch_size']}, weight decay "
                         f"{setting['weight_decay']:g}; best epoch {self.best_epoch} of {self.epochs_trained}")
        if self.calibration:
            c = self.calibration
            lines.append(f"  confidence calibrated on validation: temperature {self.temperature:.3g}, "
                         f"expected calibration error {c['val_before']['ece']:.3f} -> {c['val_after']['ece']:.3f}")
        if self.val:
            lines.append(f"  validation: macro-F1 {self.val['macro_f1']:.3f}, accuracy {self.val['accuracy']:.3f} "
                         f"({self.val['n']} {what})")
        if self.test:
            lines.append(f"  test:       macro-F1 {self.test['macro_f1']:.3f}, accuracy {self.test['accuracy']:.3f} "
                         f"({self.test['n']} {what}; evaluated once, not used for any choice)")
        else:
            lines.append("  test:       no test split; the report describes the validation split")
        if self.unreadable:
            lines.append(f"  {len(self.unreadable)} unreadable crops skipped (unreadable.csv)")
        for warning in self.warnings:
            lines.append(f"  warning: {warning}")
        lines.append(f"  model: {self.model_out} ({self.family}; classify and analyze take this folder)")
        if (self.model_out / "tensorboard").is_dir():
            lines.append(f"  TensorBoard: tensorboard --logdir {self.model_out / 'tensorboard'}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Checks of the inputs


def _positive_list(values, what: str, kind=float, minimum=0.0, strict=True) -> list:
    try:
        items = [kind(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise OptionError(f"{what}: expected a list of numbers, got {values!r}") from exc
    if not items:
        raise OptionError(f"{what}: give at least one value")
    for v in items:
        if not math.isfinite(v) or (v <= minimum if strict else v < minimum):
            raise OptionError(f"{what}: {v!r} must be {'>' if strict else '>='} {minimum}")
    return list(dict.fromkeys(items))


def _scan_split(data: Path, split: str, class_names: list[str] | None, warnings: list[str]
                ) -> tuple[list[str], list[Path], list[int]]:
    """(class names, files, class indices) of one split folder; checks for ``train``."""
    from .crops import class_folders, list_class_images

    folder = data / split
    if not folder.is_dir():
        return (class_names or []), [], []
    folders = class_folders(folder)
    # Class names as QuPath shows them (split's classes.csv: folder "Tumor - Positive" holds
    # class "Tumor: Positive"); plain class folders are named by their folder.
    shown = read_class_names(data)
    files: list[Path] = []
    labels: list[int] = []
    if class_names is None:  # training split: it defines the classes
        names = []
        per_class = []
        for sub in folders:
            images = list_class_images(sub)
            if not images:
                msg = f"{sub}: class folder has no images; class {sub.name!r} is left out"
                warnings.append(msg)
                log.warning(msg)
                continue
            if len(images) == 1:
                raise InputFileError(sub, f"class folder holds only one image ({images[0].name}); a "
                                          "class needs at least 2 training crops to be learned (many "
                                          "more to be learned well): add crops of this class or "
                                          "remove the folder")
            names.append(shown.get(sub.name, sub.name))
            per_class.append(images)
        if len(names) < 2:
            raise InputFileError(folder, f"needs at least 2 class folders with images (found "
                                         f"{len(names)}{': ' + names[0] if names else ''}); the "
                                         "layout is train/<class>/*.tif as written by "
                                         "'orgaseg split --mode classification'")
        for index, images in enumerate(per_class):
            files += images
            labels += [index] * len(images)
        return names, files, labels
    index_of = {name: i for i, name in enumerate(class_names)}
    for sub in folders:
        images = list_class_images(sub)
        name = shown.get(sub.name, sub.name)
        if name not in index_of:
            if images:
                msg = (f"{sub}: class {name!r} is not among the training classes; its "
                       f"{len(images)} crops are left out of the {split} split")
                warnings.append(msg)
                log.warning(msg)
            continue
        files += images
        labels += [index_of[name]] * len(images)
    return class_names, files, labels


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (and make cuDNN deterministic)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


# ----------------------------------------------------------------------------------------------
# TensorBoard


def _summary_writer(logdir: Path):
    """A TensorBoard SummaryWriter for ``logdir``, or None (with a warning) without tensorboard.

    tensorboard imports TensorFlow when it is installed, and TensorFlow and torch in one
    process crash. Registering ``tensorboard.compat.notf`` (tensorboard's own switch) makes it
    use its TensorFlow-free stub, which writes the same event files.
    """
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        log.warning("TensorBoard logs are not written: %s (pip install tensorboard)", exc)
        return None
    return SummaryWriter(log_dir=str(logdir))


# ----------------------------------------------------------------------------------------------
# Training loops


def evaluate(model, loader, device: str, loss_fn=None
             ) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """(true labels, predicted labels, mean loss, (N, K) softmax probabilities) of ``model`` on
    ``loader``, in evaluation mode."""
    import torch

    model.eval()
    truths, preds, probs = [], [], []
    total_loss, n = 0.0, 0
    with torch.inference_mode():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x).float()
            if loss_fn is not None:
                total_loss += float(loss_fn(logits, y)) * len(y)
            n += len(y)
            truths.append(y.cpu().numpy())
            preds.append(logits.argmax(dim=1).cpu().numpy())
            probs.append(torch.softmax(logits, dim=1).cpu().numpy())
    loss = total_loss / n if n and loss_fn is not None else float("nan")
    return np.concatenate(truths), np.concatenate(preds), loss, np.concatenate(probs).astype(np.float64)


def recompute_batchnorm(model, dataset, *, device: str, batch_size: int, seed: int,
                        max_items: int = PRECISE_BN_ITEMS) -> bool:
    """Re-estimate every BatchNorm layer's running mean and variance on un-augmented training
    crops with the current weights ("precise BN", Wu & Johnson 2021).

    During training the running statistics are an exponential average over batches of
    augmented crops taken while the weights moved; evaluated with them, a network trained from
    scratch on a few hundred crops can be far off (the validation loss jumped between 0.7 and
    97 from one epoch to the next). Re-estimating them with fixed weights on the crops as the
    network sees them at prediction time removes that mismatch. Uses up to ``max_items``
    training crops (a seeded choice). Returns False when the model has no BatchNorm.
    """
    import torch

    from .crops import make_loader

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return False
    subset = dataset
    if len(dataset) > max_items:
        rng = np.random.default_rng(seed)
        subset = torch.utils.data.Subset(dataset, sorted(rng.choice(len(dataset), max_items, replace=False).tolist()))
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    loader = make_loader(subset, batch_size=batch_size, shuffle=False, seed=seed)
    with torch.no_grad():
        for x, _y in loader:
            x = x.to(device)
            if device == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            model(x)
    for m, (momentum, _training) in zip(norms, saved):
        m.momentum = momentum
    model.eval()
    return True


def warmup_steps(total_steps: int, steps_per_epoch: int) -> int:
    """Warm-up steps: :data:`WARMUP_FRACTION` of the run, at least one epoch, at most half."""
    return int(min(max(round(WARMUP_FRACTION * total_steps), steps_per_epoch), total_steps // 2))


def lr_factor(step: int, total_steps: int, warmup: int) -> float:
    """Learning rate over the base rate at ``step`` (0-based): linear warm-up from 1/(warmup+1)
    to 1, then cosine decay to :data:`FINAL_LR_FRACTION` at the last step."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    span = max(total_steps - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class _RunOutcome:
    best_f1: float = -1.0
    best_loss: float = math.inf
    best_epoch: int = 0
    epochs: int = 0
    best_state: dict | None = None
    best_confusion: list | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _improves(f1: float, loss: float, outcome: _RunOutcome) -> bool:
    if f1 > outcome.best_f1 + F1_TOLERANCE:
        return True
    return abs(f1 - outcome.best_f1) <= F1_TOLERANCE and loss < outcome.best_loss


def train_run(setting: dict[str, Any], *, train_set, val_set, class_names: list[str],
              weights_per_class: np.ndarray, epochs: int, patience: int | None, seed: int,
              device: str, num_workers: int, init_weights: Path | None, pretrained: bool = False,
              plain_train_set=None, writer=None, keep_best: bool = True,
              desc: str = "training") -> _RunOutcome:
    """Train one setting from scratch; score every epoch on the validation set.

    Returns the best validation macro-F1 (ties: lower validation loss), its epoch, the history
    and (``keep_best``) a copy of the best epoch's weights. ``patience``: stop after that many
    epochs without improvement (None: run all ``epochs``). ``plain_train_set``: the training
    crops without augmentation, on which the BatchNorm statistics are re-estimated before
    every validation (:func:`recompute_batchnorm`). ``pretrained``: start from torchvision's
    ImageNet weights (:func:`~orgaseg_core.classification.networks.pretrained_state`).

    Stability (training from scratch on a few hundred crops): linear learning-rate warm-up over
    :data:`WARMUP_FRACTION` of the steps (at least one epoch) then cosine decay, gradient
    norm clipped at :data:`GRAD_CLIP`, label smoothing :data:`LABEL_SMOOTHING` in the training
    loss (the validation loss is the plain cross-entropy), precise BatchNorm statistics.
    """
    import torch

    from .crops import make_loader
    from .networks import build_model, load_state, load_weights, pretrained_state

    seed_everything(seed)
    model = build_model(setting["architecture"], len(class_names))
    if init_weights is not None:
        load_weights(model, init_weights)
    elif pretrained:
        state, name = pretrained_state(setting["architecture"])
        load_state(model, state, source=name)
    model = model.to(device)
    if device == "cpu":
        # NHWC is ~10-40 % faster for convolutions on CPUs (oneDNN); results are unchanged.
        model = model.to(memory_format=torch.channels_last)
    batch_size = int(setting["batch_size"])
    # BatchNorm cannot train on a batch of one: drop a last batch of a single crop.
    drop_last = len(train_set) % batch_size == 1
    train_loader = make_loader(train_set, batch_size=batch_size, shuffle=True, seed=seed,
                               num_workers=num_workers, drop_last=drop_last)
    val_loader = make_loader(val_set, batch_size=max(batch_size, 64), shuffle=False, seed=seed,
                             num_workers=num_workers)
    class_weight = torch.as_tensor(weights_per_class, dtype=torch.float32, device=device)
    train_loss_fn = torch.nn.CrossEntropyLoss(weight=class_weight, label_smoothing=LABEL_SMOOTHING)
    loss_fn = torch.nn.CrossEntropyLoss(weight=class_weight)
    optimiser = torch.optim.AdamW(model.parameters(), lr=setting["learning_rate"],
                                  weight_decay=setting["weight_decay"])
    steps = max(1, epochs * len(train_loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: lr_factor(step, steps, warmup_steps(steps, len(train_loader))))

    outcome = _RunOutcome()
    start = time.perf_counter()
    stale = 0
    bar = tqdm(range(1, epochs + 1), desc=desc, unit="epoch", disable=None, leave=False)
    for epoch in bar:
        train_set.set_epoch(epoch)
        model.train()
        total, n = 0.0, 0
        lr = optimiser.param_groups[0]["lr"]
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            if device == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            optimiser.zero_grad(set_to_none=True)
            loss = train_loss_fn(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            optimiser.step()
            scheduler.step()
            total += float(loss.detach()) * len(y)
            n += len(y)
        train_loss = total / max(n, 1)
        if plain_train_set is not None:
            recompute_batchnorm(model, plain_train_set, device=device, batch_size=max(batch_size, 64),
                                seed=seed)
        truth, pred, val_loss, _probs = evaluate(model, val_loader, device, loss_fn)
        metrics = classification_metrics(truth, pred, class_names)
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
               "val_macro_f1": metrics["macro_f1"], "val_accuracy": metrics["accuracy"],
               "learning_rate": lr, "seconds": time.perf_counter() - start}
        outcome.history.append(row)
        outcome.epochs = epoch
        if writer is not None:
            writer.add_scalar("loss/train", train_loss, epoch)
            writer.add_scalar("loss/val", val_loss, epoch)
            writer.add_scalar("val/macro_f1", metrics["macro_f1"], epoch)
            writer.add_scalar("val/accuracy", metrics["accuracy"], epoch)
            writer.add_scalar("learning_rate", lr, epoch)
        improved = _improves(metrics["macro_f1"], val_loss, outcome)
        if improved:
            outcome.best_f1, outcome.best_loss, outcome.best_epoch = metrics["macro_f1"], val_loss, epoch
            outcome.best_confusion = metrics["confusion_matrix"]
            if keep_best:
                outcome.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            stale = 0
        else:
            stale += 1
        bar.set_postfix(val_f1=f"{metrics['macro_f1']:.3f}", best=f"{outcome.best_f1:.3f}")
        log.info("%s epoch %d/%d: train loss %.4f, val loss %.4f, val macro-F1 %.4f, accuracy %.4f%s",
                 desc, epoch, epochs, train_loss, val_loss, metrics["macro_f1"], metrics["accuracy"],
                 " (best)" if improved else "")
        if patience is not None and stale >= patience:
            log.info("%s: no improvement of the validation macro-F1 for %d epochs; stopping after "
                     "epoch %d (best epoch %d)", desc, patience, epoch, outcome.best_epoch)
            break
    bar.close()
    outcome.seconds = time.perf_counter() - start
    if writer is not None:
        writer.add_figure("val/confusion_matrix_best_epoch",
                          confusion_figure(outcome.best_confusion, class_names,
                                           f"validation, epoch {outcome.best_epoch}"),
                          outcome.best_epoch)
        hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in setting.items()}
        writer.add_hparams(hparams, {"hparam/best_val_macro_f1": outcome.best_f1,
                                     "hparam/best_epoch": outcome.best_epoch}, run_name=".")
        writer.flush()
    return outcome


def _run_name(prefix: str, setting: dict[str, Any]) -> str:
    return (f"{prefix}_{setting['architecture']}_lr{setting['learning_rate']:g}"
            f"_bs{setting['batch_size']}_wd{setting['weight_decay']:g}")


# ----------------------------------------------------------------------------------------------
# The step


def train_classifier(data: Path | None, model_out: Path, *, images: Path | None = None,
                     masks: Path | None = None, families: Sequence[str] = DEFAULT_FAMILIES,
                     val_fraction: float = DEFAULT_VAL_FRACTION,
                     test_fraction: float = DEFAULT_TEST_FRACTION, padding: int = DEFAULT_PADDING,
                     context: float = DEFAULT_CONTEXT,
                     n_trees: int = DEFAULT_N_TREES, outline_augmentation: bool = True,
                     architectures: Sequence[str] = DEFAULT_ARCHITECTURES,
                     learning_rates: Sequence[float] = DEFAULT_LEARNING_RATES,
                     batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
                     weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
                     grid_epochs: int = DEFAULT_GRID_EPOCHS, epochs: int = DEFAULT_EPOCHS,
                     patience: int = DEFAULT_PATIENCE, input_size: int | None = None,
                     weights: Path | None = None, pretrained: bool = False,
                     review_below: float = DEFAULT_REVIEW_BELOW, seed: int = 0,
                     num_workers: int = 0, device: str | None = None,
                     overwrite: bool = False) -> TrainClassifierResult:
    """Train the candidate classifier families, choose one on the validation split, calibrate its
    confidence there, report on the test split once, and write one model folder to ``model_out``.

    Inputs, either
      - ``data``: folder written by ``orgaseg split --mode classification`` (``train/<Class>/``,
        ``val/<Class>/``, optional ``test/<Class>/``; crops are TIFF/PNG/JPEG, grey or colour).
        Crops carry no outline, so only the CNN family can be trained from them; or
      - ``images`` + ``masks``: images and the ``annotations-to-masks`` folder of their label
        images and class tables. Every object becomes a crop (cut with ``padding`` pixels plus
        ``context`` times its longer side around its bounding box, as
        ``extract-objects`` cuts it) and a row of measurements; the images are split into
        train/val/test by ``val_fraction``/``test_fraction`` (seeded, stratified, whole images).
    families: candidates among "measurements" (random forest of ``n_trees`` trees on the
    measurements), "cnn" (the torchvision network) and "combined" (their weighted mean).
    outline_augmentation: the forest also trains on eroded, dilated and smoothed outlines of the
    training objects (:func:`~orgaseg_core.classification.objects.outline_variants`), so that
    segmented outlines do not throw it.
    architectures, learning_rates, batch_sizes, weight_decays: the CNN grid (every
    combination); grid_epochs: epochs per grid point; epochs: the most epochs of the final CNN
    run; patience: epochs without validation improvement before it stops. input_size: network
    input in pixels (None: learned from the training crops). weights: local state_dict (or
    orgaseg checkpoint) to start the CNN from; pretrained: start from torchvision's ImageNet
    weights (from its cache, downloaded when online); one architecture only with either.
    review_below: objects whose calibrated confidence is below this are flagged by classify.
    seed: seeds everything. num_workers: DataLoader worker processes. device: "cpu", "cuda"
    (None: cuda when available). See the module notes for the files written.
    """
    from .networks import (
        ARCHITECTURES,
        build_model,
        load_weights,
        min_input_size,
        resolve_device,
        validate_architecture,
    )

    model_out = Path(model_out)
    weights = Path(weights) if weights is not None else None
    from_images = images is not None or masks is not None
    if from_images and data is not None:
        raise OrgasegError("give either data (class folders of crops) or images and masks "
                           "(annotated images), not both")
    if from_images and (images is None or masks is None):
        raise OrgasegError("training from annotated images needs both images and masks "
                           "(the annotations-to-masks folder)")
    if not from_images and data is None:
        raise OrgasegError("give data (class folders of crops from 'split --mode classification') or "
                           "images and masks (annotated images)")
    families = _check_families(families, from_images)
    use_cnn = any(f in ("cnn", "combined") for f in families)
    use_forest = any(f in ("measurements", "combined") for f in families)
    architectures = [validate_architecture(a) for a in dict.fromkeys(architectures)]
    if not architectures:
        raise OrgasegError(f"give at least one architecture ({', '.join(ARCHITECTURES)})")
    learning_rates = _positive_list(learning_rates, "learning rates")
    batch_sizes = [int(b) for b in _positive_list(batch_sizes, "batch sizes", kind=int, minimum=1,
                                                  strict=False)]
    weight_decays = _positive_list(weight_decays, "weight decays", strict=False)
    for name, value in (("grid_epochs", grid_epochs), ("epochs", epochs), ("patience", patience),
                        ("n_trees", n_trees)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise OptionError(f"{name} must be a whole number >= 1, got {value!r}")
    if isinstance(padding, bool) or int(padding) != padding or padding < 0:
        raise OptionError(f"padding must be a whole number of pixels >= 0, got {padding!r}")
    context = check_context(context)
    if not (isinstance(review_below, (int, float)) and 0.0 <= float(review_below) <= 1.0):
        raise OptionError(f"review_below must be a confidence between 0 and 1, got {review_below!r}")
    check_device(device)
    check_seed(seed)
    if int(num_workers) < 0:
        raise OrgasegError(f"num_workers must be >= 0, got {num_workers}")
    if input_size is not None:
        smallest = max(min_input_size(a) for a in architectures)
        if int(input_size) != input_size or not smallest <= int(input_size) <= 1024:
            raise OrgasegError(f"input size must be a whole number of pixels from {smallest} to 1024, "
                               f"got {input_size!r}")
        input_size = int(input_size)
    if weights is not None and pretrained:
        raise OrgasegError("give either --weights (a local file) or --pretrained (torchvision's "
                           "weights), not both")
    if (weights is not None or pretrained) and len(architectures) > 1:
        raise OrgasegError(f"{'--weights' if weights is not None else '--pretrained'} fit one "
                           "architecture only; give a single architecture with them")
    if weights is not None:
        if not weights.is_file():
            raise InputFileError(weights, "weights file does not exist")
        # Check now that they fit, so a wrong file fails before anything is written.
        load_weights(build_model(architectures[0], 2), weights)
    device = resolve_device(device)
    ratios = None
    if from_images:
        from ..common.splits import validate_ratios

        ratios = validate_ratios(1.0 - float(val_fraction) - float(test_fraction), float(val_fraction),
                                 float(test_fraction))
        if ratios["val"] <= 0:
            raise OrgasegError("val_fraction must be above 0: the validation split chooses the model")
        for folder, what in ((Path(images), "images"), (Path(masks), "masks")):
            if not folder.is_dir():
                raise InputFileError(folder, f"{what} folder does not exist or is not a folder")

    warnings: list[str] = []
    source: dict[str, Any]
    if from_images:
        source = {"kind": "annotated images", "images": Path(images), "masks": Path(masks)}
        inputs = [Path(images), Path(masks)]
    else:
        data = Path(data)
        # Folder checks before the output folder is created, so a typo leaves nothing behind.
        if not data.is_dir():
            raise InputFileError(data, "data folder does not exist or is not a folder")
        if not (data / "train").is_dir():
            raise InputFileError(data / "train", "no training folder; expected the layout train/<class>/, "
                                                 "val/<class>/, test/<class>/ of 'orgaseg split --mode "
                                                 "classification'")
        class_names, train_files, train_labels = _scan_split(data, "train", None, warnings)
        _, val_files, val_labels = _scan_split(data, "val", class_names, warnings)
        _, test_files, test_labels = _scan_split(data, "test", class_names, warnings)
        if not val_files:
            raise InputFileError(data / "val", "no validation crops (folder missing or empty): the "
                                               "validation split chooses the settings and the epoch and "
                                               "the test split may not; split the data with a validation "
                                               "fraction, e.g. 'orgaseg split --mode classification --val 0.15'")
        source = {"kind": "crops", "data": data, "class_names": class_names,
                  "files": {"train": train_files, "val": val_files, "test": test_files},
                  "labels": {"train": train_labels, "val": val_labels, "test": test_labels}}
        inputs = [data]

    settings = [{"architecture": a, "learning_rate": lr, "batch_size": bs, "weight_decay": wd}
                for a, lr, bs, wd in itertools.product(architectures, learning_rates, batch_sizes,
                                                       weight_decays)]
    arguments = {"data": data, "images": images, "masks": masks, "model_out": model_out,
                 "families": list(families), "val_fraction": float(val_fraction),
                 "test_fraction": float(test_fraction), "padding": int(padding),
                 "context": context, "n_trees": int(n_trees), "outline_augmentation": bool(outline_augmentation),
                 "architectures": architectures,
                 "learning_rates": learning_rates, "batch_sizes": batch_sizes,
                 "weight_decays": weight_decays, "grid_epochs": int(grid_epochs),
                 "epochs": int(epochs), "patience": int(patience), "input_size": input_size,
                 "weights": weights, "pretrained": bool(pretrained),
                 "review_below": float(review_below), "seed": int(seed),
                 "num_workers": int(num_workers), "device": device, "overwrite": overwrite}
    if weights is not None and model_out.resolve() in weights.resolve().parents:
        raise OutputError(f"{model_out}: holds the weights file {weights}, which training could "
                          "replace; write the new model to another folder")
    with step_run("train-classifier", model_out, arguments, overwrite=overwrite,
                  inputs=inputs) as record:
        result = _train(model_out, record, source=source, families=families, use_cnn=use_cnn,
                        use_forest=use_forest, ratios=ratios, padding=int(padding), context=context,
                        outline_augmentation=bool(outline_augmentation),
                        n_trees=int(n_trees), settings=settings, grid_epochs=int(grid_epochs),
                        epochs=int(epochs), patience=int(patience), input_size=input_size,
                        weights=weights, pretrained=bool(pretrained),
                        review_below=float(review_below), seed=int(seed),
                        num_workers=int(num_workers), device=device, warnings=warnings,
                        arguments=arguments)
    return result


def _check_families(families: Sequence[str] | str, from_images: bool) -> tuple[str, ...]:
    if isinstance(families, str):
        families = [f.strip() for f in families.split(",") if f.strip()]
    families = tuple(dict.fromkeys(str(f) for f in families))
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise OrgasegError(f"unknown classifier families {unknown or families!r}; choose among "
                           f"{', '.join(FAMILIES)}")
    if not from_images:
        needs_outlines = [f for f in families if f != "cnn"]
        if needs_outlines and families != DEFAULT_FAMILIES:
            raise OrgasegError(f"the {', '.join(needs_outlines)} families need object outlines: train "
                               "from images and masks (annotations-to-masks) instead of crops, or "
                               "choose the cnn family")
        if needs_outlines:
            log.info("crops carry no outline: only the cnn family is trained (train from images "
                     "and masks for the measurement and combined families)")
        families = ("cnn",)
    return families


def _read_crop_folders(source: dict[str, Any], result: TrainClassifierResult):
    """Grey crops and class indices per split from class folders (unreadable ones skipped)."""
    from .crops import read_crops

    data, class_names = source["data"], source["class_names"]
    greys: dict[str, list[np.ndarray]] = {}
    labels: dict[str, list[int]] = {}
    for split in SPLITS:
        files = source["files"][split]
        if not files:
            continue
        read, errors = read_crops(tqdm(files, desc=f"reading {split} crops", unit="image",
                                       disable=None, leave=False))
        result.unreadable += [(str(p), e) for p, e in errors]
        if errors and len(errors) > MAX_UNREADABLE_FRACTION * len(files):
            raise OrgasegError(f"{data / split}: {len(errors)} of {len(files)} crops cannot be "
                               f"read (more than {MAX_UNREADABLE_FRACTION:.0%}); first: {errors[0][1]}")
        greys[split] = [g for g in read if g is not None]
        labels[split] = [lab for g, lab in zip(read, source["labels"][split]) if g is not None]
    small = [name for i, name in enumerate(class_names) if labels["train"].count(i) < 2]
    if small:
        raise InputFileError(data / "train" / small[0], "fewer than 2 readable training crops in this "
                                                        "class folder; a class needs at least 2")
    if not greys.get("val"):
        raise InputFileError(data / "val", "no readable validation crops")
    return class_names, greys, labels, {}


def _read_annotated(source: dict[str, Any], ratios, padding: int, context: float, seed: int, model_out: Path,
                    warnings: list[str], outline_augmentation: bool):
    """Objects of annotated images, split by image: class names, crops, labels and tables per split."""
    from .objects import read_annotated_objects, split_by_image

    objects = read_annotated_objects(source["images"], source["masks"], padding=padding, context=context,
                                     outline_augmentation=outline_augmentation, stress_variants=True)
    for reason, n in objects.skipped.items():
        msg = f"{n} objects left out: {reason}"
        warnings.append(msg)
        log.warning(msg)
    warnings += objects.unmatched
    split_by_image(objects, ratios, seed)
    write_csv(model_out / "split.csv", objects.table[["image", "stem", "label", "class", "split"]])
    train_table = objects.table[objects.table["split"] == "train"]
    class_names = sorted(set(train_table["class"]))
    counts = train_table["class"].value_counts()
    if len(class_names) < 2:
        raise InputFileError(source["masks"], f"the training images hold objects of {len(class_names)} "
                                              "class; a classifier needs at least 2")
    small = [c for c in class_names if counts[c] < 2]
    if small:
        raise InputFileError(source["masks"], f"class {small[0]!r} has fewer than 2 objects in the training "
                                              "images; annotate more or change the split fractions")
    absent = sorted(set(objects.table["class"]) - set(class_names))
    if absent:
        msg = (f"classes {', '.join(absent)} occur only in validation/test images and are left out "
               "(the training images hold none)")
        warnings.append(msg)
        log.warning(msg)
    index = {c: i for i, c in enumerate(class_names)}
    greys, labels, tables = {}, {}, {}
    for split in SPLITS:
        table, crops = objects.subset(split)
        keep = table["class"].isin(class_names).to_numpy()
        if not keep.any():
            continue
        tables[split] = table[keep].reset_index(drop=True)
        greys[split] = [c for c, k in zip(crops, keep) if k]
        labels[split] = [index[c] for c in tables[split]["class"]]
    if "val" not in greys:
        raise InputFileError(source["masks"], "no validation object of a training class; annotate more images")
    stress = objects.stress
    if stress is not None and len(stress):
        keep = ((stress["split"] == "val") & stress["class"].isin(class_names)).to_numpy()
        tables["val_outlines"] = stress[keep].reset_index(drop=True)
        greys["val_outlines"] = [c for c, k in zip(objects.stress_crops, keep) if k]
        labels["val_outlines"] = [index[c] for c in tables["val_outlines"]["class"]]
    variants = objects.variants
    if variants is not None and len(variants):
        extra = variants[(variants["split"] == "train") & variants["class"].isin(class_names)]
        tables["train_augmented"] = pd.concat([tables["train"], extra], ignore_index=True)
        log.info("measurement forest: %d training objects plus %d outline variants (eroded, dilated, "
                 "smoothed)", len(tables["train"]), len(extra))
    return class_names, greys, labels, tables


def _train_cnn(result, *, class_names, greys, labels, settings, grid_epochs, epochs, patience,
               input_size, weights, pretrained, seed, num_workers, device, model_out):
    """Grid search and final CNN run; returns (model, outcome, raw probabilities per split)."""
    from .crops import CropDataset, class_weights, learn_input_size, make_loader, normalisation_stats, to_unit
    from .networks import build_model, min_input_size

    train_units = [to_unit(g) for g in greys["train"]]
    learned = input_size is None
    if learned:
        input_size = max(learn_input_size([max(g.shape) for g in greys["train"]]),
                         max(min_input_size(s["architecture"]) for s in settings))
    mean, std = normalisation_stats(train_units, input_size)
    del train_units
    result.input_size, result.mean, result.std = input_size, mean, std
    weights_per_class = class_weights([labels["train"].count(i) for i in range(len(class_names))])
    result.class_weights = {c: float(w) for c, w in zip(class_names, weights_per_class)}
    log.info("CNN input size %d px (%s); normalisation mean %.4f, std %.4f; class weights %s",
             input_size, "learned from the training crops" if learned else "given", mean, std,
             ", ".join(f"{c} {w:.3f}" for c, w in zip(class_names, weights_per_class)))

    def dataset(split: str, augment: bool) -> CropDataset:
        return CropDataset(greys[split], labels[split], input_size=input_size, mean=mean,
                           std=std, augment=augment, seed=seed)

    tb_root = model_out / "tensorboard"
    common = dict(train_set=dataset("train", True), val_set=dataset("val", False),
                  plain_train_set=dataset("train", False), class_names=list(class_names),
                  weights_per_class=weights_per_class, seed=seed, device=device,
                  num_workers=num_workers, init_weights=weights, pretrained=pretrained)
    grid_rows: list[dict[str, Any]] = []
    if len(settings) > 1:
        for i, setting in enumerate(tqdm(settings, desc="CNN grid search", unit="setting", disable=None), 1):
            name = _run_name(f"grid{i:02d}", setting)
            writer = _summary_writer(tb_root / name)
            try:
                outcome = train_run(setting, epochs=grid_epochs, patience=None, writer=writer,
                                    keep_best=False, desc=name, **common)
            finally:
                if writer is not None:
                    writer.close()
            grid_rows.append({"run": name, **setting, "best_val_macro_f1": round(outcome.best_f1, 6),
                              "best_val_loss": round(outcome.best_loss, 6),
                              "best_epoch": outcome.best_epoch, "epochs": outcome.epochs,
                              "seconds": round(outcome.seconds, 2)})
            log.info("CNN grid %d/%d %s: best validation macro-F1 %.4f (epoch %d)", i, len(settings),
                     name, outcome.best_f1, outcome.best_epoch)
        best = min(range(len(grid_rows)), key=lambda j: (-grid_rows[j]["best_val_macro_f1"],
                                                         grid_rows[j]["best_val_loss"], j))
        for j, row in enumerate(grid_rows):
            row["chosen"] = j == best
        chosen = settings[best]
    else:
        chosen = settings[0]
        log.info("one CNN setting only: no grid search")
    result.grid, result.chosen = grid_rows, dict(chosen)

    name = _run_name("final", chosen)
    writer = _summary_writer(tb_root / name)
    try:
        outcome = train_run(chosen, epochs=epochs, patience=patience, writer=writer, keep_best=True,
                            desc=name, **common)
    finally:
        if writer is not None:
            writer.close()
    model = build_model(chosen["architecture"], len(class_names)).to(device)
    model.load_state_dict(outcome.best_state)
    model.eval()
    result.best_epoch, result.epochs_trained = outcome.best_epoch, outcome.epochs
    write_csv(model_out / "history.csv", pd.DataFrame(outcome.history).round(6))
    probabilities = {}
    for split in greys:
        if split == "train":
            continue
        loader = make_loader(dataset(split, False), batch_size=64, shuffle=False, seed=seed,
                             num_workers=num_workers)
        probabilities[split] = evaluate(model, loader, device)[3]
    return model, outcome, probabilities


def _train_forest(*, class_names, tables, labels, n_trees, seed, source_name):
    """The measurement forest and its raw probabilities on val/test."""
    from .measurement_model import MEASUREMENT_FEATURES, feature_matrix, fit_measurement_forest, predict_measurements

    start = time.perf_counter()
    train = tables.get("train_augmented", tables["train"])
    index = {c: i for i, c in enumerate(class_names)}
    forest = fit_measurement_forest(feature_matrix(train, source=source_name),
                                    [index[c] for c in train["class"]], n_classes=len(class_names),
                                    seed=seed, n_trees=n_trees)
    probabilities = {split: predict_measurements(forest, feature_matrix(tables[split], source=source_name))
                     for split in ("val", "val_outlines", "test") if split in tables}
    log.info("measurement forest: %d trees on %d measurements of %d training rows (%.1f s)",
             n_trees, len(MEASUREMENT_FEATURES), len(train), time.perf_counter() - start)
    return forest, probabilities


def _candidates(families, cnn: dict | None, forest: dict | None, val_labels, class_names,
                outline_labels=None):
    """One row per family with its validation scores and raw probabilities per split.

    The score that chooses is the validation macro-F1 on the annotated outlines and, when given
    (``outline_labels``, split "val_outlines"), the mean of it and the macro-F1 on the stronger
    outline variants of the validation objects (eroded/dilated by 4 px, smoothed): a segmented
    outline is never the annotated one, and a family that only holds on annotated outlines
    (the measurement forest can reach 1.00 there and 0.85 on segmented ones) must not win over
    one that holds on both. The combined family's CNN weight is chosen the same way.
    """
    from .calibration import negative_log_likelihood, probabilities_to_logits

    def score(probabilities):
        predicted = probabilities["val"].argmax(axis=1)
        metrics = classification_metrics(val_labels, predicted, class_names)
        nll = negative_log_likelihood(probabilities_to_logits(probabilities["val"]), val_labels)
        outline_f1 = None
        if outline_labels is not None and "val_outlines" in probabilities:
            outline_f1 = classification_metrics(outline_labels, probabilities["val_outlines"].argmax(axis=1),
                                                class_names)["macro_f1"]
        selection = metrics["macro_f1"] if outline_f1 is None else (metrics["macro_f1"] + outline_f1) / 2
        return selection, metrics["macro_f1"], outline_f1, metrics["accuracy"], nll

    rows = []
    for family in families:
        if family == "combined":
            options = [(w, {s: w * cnn[s] + (1 - w) * forest[s] for s in cnn}) for w in FUSION_WEIGHTS]
        else:
            options = [(None, cnn if family == "cnn" else forest)]
        scored = []
        for weight, probabilities in options:
            selection, f1, outline_f1, accuracy, nll = score(probabilities)
            scored.append((-round(selection, 6), nll, weight, selection, f1, outline_f1, accuracy, probabilities))
        _, nll, weight, selection, f1, outline_f1, accuracy, probabilities = min(scored, key=lambda t: (t[0], t[1]))
        rows.append({"family": family, "cnn_weight": weight, "score": round(selection, 6),
                     "val_macro_f1": round(f1, 6),
                     "val_outlines_macro_f1": None if outline_f1 is None else round(outline_f1, 6),
                     "val_accuracy": round(accuracy, 6), "val_nll": round(nll, 6),
                     "probabilities": probabilities})
    # Highest score; ties: lower validation NLL, then the order of FAMILIES.
    best = min(range(len(rows)), key=lambda j: (-rows[j]["score"], rows[j]["val_nll"],
                                                FAMILIES.index(rows[j]["family"])))
    for j, row in enumerate(rows):
        row["chosen"] = j == best
    return rows, rows[best]


def _cnn_weight(candidate: dict[str, Any]) -> float:
    """The weight of the CNN's probabilities in a candidate's output (1 cnn, 0 measurements)."""
    if candidate["family"] == "combined":
        return float(candidate["cnn_weight"])
    return 1.0 if candidate["family"] == "cnn" else 0.0


def _train(model_out: Path, record, *, source, families, use_cnn, use_forest, ratios, padding, context,
           outline_augmentation, n_trees, settings, grid_epochs, epochs, patience, input_size, weights, pretrained,
           review_below, seed, num_workers, device, warnings, arguments) -> TrainClassifierResult:
    from .calibration import fit_temperature, probabilities_to_logits, reliability, reliability_figure
    from .crops import preprocessing_description
    from .measurement_model import MEASUREMENT_FEATURES, MEASUREMENTS_FILE, save_measurement_forest
    from .model import calibrated, write_description
    from .networks import plain, save_checkpoint

    start = time.perf_counter()
    result = TrainClassifierResult(model_out=model_out, warnings=warnings, device=device,
                                   source=source["kind"])
    if source["kind"] == "crops":
        class_names, greys, labels, tables = _read_crop_folders(source, result)
        source_name = source["data"]
    else:
        seed_everything(seed)
        class_names, greys, labels, tables = _read_annotated(source, ratios, padding, context, seed, model_out,
                                                             warnings, use_forest and outline_augmentation)
        source_name = source["masks"]
    result.class_names = list(class_names)
    for split in (s for s in SPLITS if s in greys):
        counts = np.bincount(labels[split], minlength=len(class_names))
        result.counts[split] = {name: int(c) for name, c in zip(class_names, counts)}
        log.info("%s split: %d objects (%s)", split, len(labels[split]),
                 ", ".join(f"{n} {c}" for n, c in result.counts[split].items()))
    if result.unreadable:
        write_csv(model_out / "unreadable.csv", pd.DataFrame(result.unreadable, columns=["file", "error"]))
    if "test" not in greys:
        msg = ("no test objects; the final report describes the validation split, which was also "
               "used to choose the model (an optimistic estimate)")
        warnings.append(msg)
        log.warning(msg)

    cnn_model = cnn_probs = forest = forest_probs = None
    if use_forest:
        forest, forest_probs = _train_forest(class_names=class_names, tables=tables, labels=labels,
                                             n_trees=n_trees, seed=seed, source_name=source_name)
        save_measurement_forest(forest, model_out / MEASUREMENTS_FILE)
    if use_cnn:
        cnn_model, outcome, cnn_probs = _train_cnn(
            result, class_names=class_names, greys=greys, labels=labels, settings=settings,
            grid_epochs=grid_epochs, epochs=epochs, patience=patience, input_size=input_size,
            weights=weights, pretrained=pretrained, seed=seed, num_workers=num_workers,
            device=device, model_out=model_out)
    val_labels = np.asarray(labels["val"])
    candidates, winner = _candidates(families, cnn_probs, forest_probs, val_labels, class_names,
                                     np.asarray(labels["val_outlines"]) if "val_outlines" in labels else None)
    family = winner["family"]
    result.family = family
    for row in candidates:
        log.info("candidate %s: validation macro-F1 %.4f on the annotated outlines, %s on stronger "
                 "outline variants, accuracy %.4f%s%s", row["family"], row["val_macro_f1"],
                 "-" if row["val_outlines_macro_f1"] is None else f"{row['val_outlines_macro_f1']:.4f}",
                 row["val_accuracy"],
                 f", CNN weight {row['cnn_weight']:g}" if row["cnn_weight"] is not None else "",
                 " (chosen)" if row["chosen"] else "")

    # ---- calibration on validation (every candidate, so each can be used later with
    # --family), then the test split once, for the chosen one
    for row in candidates:
        row["temperature"] = round(fit_temperature(probabilities_to_logits(row["probabilities"]["val"]),
                                                   val_labels), 6)
    raw = winner["probabilities"]
    temperature = winner["temperature"]
    result.temperature = temperature
    val_probs = calibrated(raw["val"], temperature)
    result.val = classification_metrics(val_labels, val_probs.argmax(axis=1), class_names)
    curves = {"validation, raw": reliability(raw["val"], val_labels),
              "validation, calibrated": reliability(val_probs, val_labels)}
    if "test" in raw:
        test_labels = np.asarray(labels["test"])
        test_probs = calibrated(raw["test"], temperature)
        result.test = classification_metrics(test_labels, test_probs.argmax(axis=1), class_names)
        curves["test, calibrated"] = reliability(test_probs, test_labels)
        log.info("test split (evaluated once, after all choices): macro-F1 %.4f, accuracy %.4f",
                 result.test["macro_f1"], result.test["accuracy"])
    result.calibration = {"method": "temperature scaling on the validation split",
                          "temperature": temperature, "val_before": curves["validation, raw"],
                          "val_after": curves["validation, calibrated"],
                          "test_after": curves.get("test, calibrated")}
    log.info("confidence calibrated on validation: temperature %.3f, ECE %.3f -> %.3f", temperature,
             curves["validation, raw"]["ece"], curves["validation, calibrated"]["ece"])
    _save_figure(reliability_figure(curves, f"{family} classifier: reliability"),
                 model_out / "reliability.png")

    report_split = "test" if result.test else "val"
    report_metrics = result.test or result.val
    _save_figure(confusion_figure(report_metrics["confusion_matrix"], class_names,
                                  f"{family}, {report_split} split ({report_metrics['n']} objects), "
                                  f"macro-F1 {report_metrics['macro_f1']:.3f}"),
                 model_out / "confusion_matrix.png")
    write_csv(model_out / "classification_report.csv", report_table(report_metrics))
    cnn_grid = [{"stage": "cnn grid", "family": "cnn", **row} for row in result.grid]
    candidate_rows = [{k: v for k, v in row.items() if k != "probabilities"} for row in candidates]
    result.candidates = candidate_rows
    write_csv(model_out / "grid.csv", pd.DataFrame(
        [{"stage": "family", **row} for row in candidate_rows] + cnn_grid))

    result.seconds = time.perf_counter() - start
    metrics = {"val": result.val, "test": result.test, "family": family, "chosen_on": "val",
               "candidates": candidate_rows}
    if use_cnn:
        save_checkpoint(model_out / MODEL_FILE, cnn_model, architecture=result.chosen["architecture"],
                        class_names=list(class_names), input_size=result.input_size, mean=result.mean,
                        std=result.std, preprocessing=preprocessing_description(),
                        metrics={**metrics, "best_epoch": result.best_epoch,
                                 "epochs_trained": result.epochs_trained, "chosen": result.chosen},
                        arguments=plain(arguments), versions=package_versions())
    report = {
        "class_names": list(class_names),
        "source": source["kind"],
        "counts": result.counts,
        "family": family,
        "candidates": candidate_rows,
        "chosen_on": "val",
        "selection": ("family (and the combined family's CNN weight), CNN grid setting and epoch "
                      "chosen on the validation macro-F1; confidence calibrated on validation; the "
                      "test split was evaluated once, after all choices, for this report only"),
        "calibration": result.calibration,
        "review_below": review_below,
        "measurement_features": MEASUREMENT_FEATURES if use_forest else [],
        "cnn": ({"input_size": result.input_size, "normalisation": {"mean": result.mean, "std": result.std},
                 "class_weights": result.class_weights,
                 "chosen": result.chosen, "grid": result.grid, "best_epoch": result.best_epoch,
                 "epochs_trained": result.epochs_trained,
                 "early_stopping": {"metric": "val macro_f1", "patience": patience}}
                if use_cnn else None),
        "val": result.val,
        "test": result.test,
        "report_split": report_split,
        "device": device,
        "seconds": round(result.seconds, 2),
        "unreadable": [{"file": f, "error": e} for f, e in result.unreadable],
        "warnings": warnings,
    }
    write_json(model_out / "report.json", report)
    write_description(model_out / CLASSIFIER_JSON, plain({
        "family": family, "class_names": list(class_names), "temperature": temperature,
        "cnn_weight": _cnn_weight(winner),
        "measurement_columns": MEASUREMENT_FEATURES if use_forest else [],
        "crop_padding": padding if source["kind"] != "crops" else None,
        # crops of QuPath carry no context of ours; the margins of the augmentation (up to 30 %
        # of the crop's side) train the CNN for the default context at prediction
        "crop_context": context if source["kind"] != "crops" else DEFAULT_CONTEXT,
        "review_below": review_below, "files": family_files(family),
        # every trained candidate, usable instead of the chosen one (classify --family)
        "candidates": {row["family"]: {"temperature": row["temperature"], "cnn_weight": _cnn_weight(row),
                                       "val_macro_f1": row["val_macro_f1"],
                                       "val_outlines_macro_f1": row["val_outlines_macro_f1"],
                                       "score": row["score"], "files": family_files(row["family"])}
                       for row in candidates},
        "metrics": metrics, "source": source["kind"], "arguments": arguments,
        "versions": package_versions(),
    }))
    record.results.update({
        "class_names": list(class_names), "counts": result.counts, "family": family,
        "candidates": candidate_rows, "temperature": round(temperature, 6),
        "val_macro_f1": result.val["macro_f1"],
        "test_macro_f1": result.test["macro_f1"] if result.test else None,
        "unreadable": [{"file": f, "error": e} for f, e in result.unreadable],
        "warnings": warnings, "seconds": round(result.seconds, 2),
    })
    log.info("wrote the %s classifier to %s (%s, classifier.json, report.json, grid.csv, "
             "classification_report.csv, confusion_matrix.png, reliability.png)", family, model_out,
             ", ".join(family_files(family)))
    return result
