"""``train-classifier``: a torchvision classifier of organoid crops, chosen on the validation split.

Input: the ``split --mode classification`` layout, ``data/train/<Class>/*.tif``, ``data/val/...``,
``data/test/...`` (the class list comes from ``train``; a class may be missing from val/test).

What happens, in order:

1. Checks (before anything is written): a ``train`` folder with at least 2 class folders that
   hold images, no training class with a single crop, validation crops present.
2. Crops are read (unreadable ones are reported by file and skipped; more than
   :data:`MAX_UNREADABLE_FRACTION` of a split unreadable is an error). The input size (unless
   given) and the normalisation come from the training crops only
   (:mod:`orgaseg_core.classification.crops`).
3. Grid search: every architecture x learning rate x batch size x weight decay is trained for
   ``grid_epochs`` epochs from the same seed and scored by its best VALIDATION macro-F1. A grid
   of one setting skips this.
4. The chosen setting is trained from scratch for up to ``epochs`` epochs; after every epoch it
   is scored on the validation split and the best epoch's weights are kept (early stopping
   after ``patience`` epochs without improvement).
5. The TEST split is evaluated once, with the kept weights, for the report only: it never
   influences a choice.

Training details: AdamW, cosine learning-rate decay to 1 % over the run, cross-entropy with
inverse-frequency class weights (:func:`orgaseg_core.classification.crops.class_weights`; chosen
over a weighted sampler because every crop is then seen once per epoch and the epochs stay
comparable). An epoch "improves" when the validation macro-F1 rises, or stays equal while the
validation loss falls (small validation sets often reach the same F1 in several epochs).
Everything is seeded; on the CPU two runs with the same seed give identical weights.

Outputs in ``model_out``: ``model.pt`` (self-describing checkpoint, see
:mod:`orgaseg_core.classification.networks`), ``grid.csv``, ``history.csv`` (the final run per
epoch), ``report.json``, ``classification_report.csv`` and ``confusion_matrix.png`` (test
split; the validation split when there is no test split), ``unreadable.csv`` (if any),
``tensorboard/<run>/`` (one TensorBoard run per grid point and for the final run) and
``run.json``.
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

from ..common.errors import InputFileError, OrgasegError, OutputError
from ..common.outputs import atomic_path, package_versions, step_run, write_csv, write_json

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

#: Fraction of a split's crops that may be unreadable (skipped, reported) before training refuses.
MAX_UNREADABLE_FRACTION = 0.1
SPLITS = ("train", "val", "test")
MODEL_FILE = "model.pt"
#: Final learning rate as a fraction of the initial one (cosine decay).
FINAL_LR_FRACTION = 0.01
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
    """What :func:`train_classifier` did and how good the model is."""

    model_out: Path
    class_names: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> crops
    input_size: int = 0
    mean: float = 0.0
    std: float = 1.0
    grid: list[dict[str, Any]] = field(default_factory=list)
    chosen: dict[str, Any] = field(default_factory=dict)
    best_epoch: int = 0
    epochs_trained: int = 0
    val: dict[str, Any] = field(default_factory=dict)
    test: dict[str, Any] | None = None
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    device: str = "cpu"
    seconds: float = 0.0

    @property
    def checkpoint(self) -> Path:
        return self.model_out / MODEL_FILE

    def summary(self) -> str:
        setting = self.chosen
        lines = [
            f"train-classifier: {len(self.class_names)} classes ({', '.join(self.class_names)}), "
            f"input {self.input_size} px, {self.device}, {self.seconds:.0f} s",
            "  crops: " + "; ".join(f"{s} {sum(c.values())}" for s, c in self.counts.items()),
        ]
        if len(self.grid) > 1:
            lines.append(f"  grid search: {len(self.grid)} settings, chosen on validation macro-F1:")
        if setting:
            lines.append(f"  chosen: {setting['architecture']}, learning rate {setting['learning_rate']:g}, "
                         f"batch size {setting['batch_size']}, weight decay {setting['weight_decay']:g}")
        lines.append(f"  final run: best epoch {self.best_epoch} of {self.epochs_trained}")
        if self.val:
            lines.append(f"  validation: macro-F1 {self.val['macro_f1']:.3f}, accuracy {self.val['accuracy']:.3f} "
                         f"({self.val['n']} crops)")
        if self.test:
            lines.append(f"  test:       macro-F1 {self.test['macro_f1']:.3f}, accuracy {self.test['accuracy']:.3f} "
                         f"({self.test['n']} crops; evaluated once, not used for any choice)")
        else:
            lines.append("  test:       no test split; the report describes the validation split")
        if self.unreadable:
            lines.append(f"  {len(self.unreadable)} unreadable crops skipped (unreadable.csv)")
        for warning in self.warnings:
            lines.append(f"  warning: {warning}")
        lines.append(f"  model: {self.checkpoint}")
        lines.append(f"  TensorBoard: tensorboard --logdir {self.model_out / 'tensorboard'}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Checks of the inputs


def _positive_list(values, what: str, kind=float, minimum=0.0, strict=True) -> list:
    try:
        items = [kind(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise OrgasegError(f"{what}: expected a list of numbers, got {values!r}") from exc
    if not items:
        raise OrgasegError(f"{what}: give at least one value")
    for v in items:
        if not math.isfinite(v) or (v <= minimum if strict else v < minimum):
            raise OrgasegError(f"{what}: {v!r} must be {'>' if strict else '>='} {minimum}")
    return list(dict.fromkeys(items))


def _scan_split(data: Path, split: str, class_names: list[str] | None, warnings: list[str]
                ) -> tuple[list[str], list[Path], list[int]]:
    """(class names, files, class indices) of one split folder; checks for ``train``."""
    from .crops import class_folders, list_class_images

    folder = data / split
    if not folder.is_dir():
        return (class_names or []), [], []
    folders = class_folders(folder)
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
            names.append(sub.name)
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
        if sub.name not in index_of:
            if images:
                msg = (f"{sub}: class {sub.name!r} is not among the training classes; its "
                       f"{len(images)} crops are left out of the {split} split")
                warnings.append(msg)
                log.warning(msg)
            continue
        files += images
        labels += [index_of[sub.name]] * len(images)
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


def evaluate(model, loader, device: str, loss_fn=None) -> tuple[np.ndarray, np.ndarray, float]:
    """(true labels, predicted labels, mean loss) of ``model`` on ``loader``."""
    import torch

    model.eval()
    truths, preds = [], []
    total_loss, n = 0.0, 0
    with torch.inference_mode():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            if loss_fn is not None:
                total_loss += float(loss_fn(logits, y)) * len(y)
            n += len(y)
            truths.append(y.cpu().numpy())
            preds.append(logits.argmax(dim=1).cpu().numpy())
    loss = total_loss / n if n and loss_fn is not None else float("nan")
    return np.concatenate(truths), np.concatenate(preds), loss


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
              device: str, num_workers: int, init_weights: Path | None, writer=None,
              keep_best: bool = True, desc: str = "training") -> _RunOutcome:
    """Train one setting from scratch; score every epoch on the validation set.

    Returns the best validation macro-F1 (ties: lower validation loss), its epoch, the history
    and (``keep_best``) a copy of the best epoch's weights. ``patience``: stop after that many
    epochs without improvement (None: run all ``epochs``).
    """
    import torch

    from .crops import make_loader
    from .networks import build_model, load_weights

    seed_everything(seed)
    model = build_model(setting["architecture"], len(class_names))
    if init_weights is not None:
        load_weights(model, init_weights)
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
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.as_tensor(weights_per_class, dtype=torch.float32,
                                                               device=device))
    optimiser = torch.optim.AdamW(model.parameters(), lr=setting["learning_rate"],
                                  weight_decay=setting["weight_decay"])
    steps = max(1, epochs * len(train_loader))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimiser, T_max=steps, eta_min=setting["learning_rate"] * FINAL_LR_FRACTION)

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
            loss = loss_fn(model(x), y)
            loss.backward()
            optimiser.step()
            scheduler.step()
            total += float(loss.detach()) * len(y)
            n += len(y)
        train_loss = total / max(n, 1)
        truth, pred, val_loss = evaluate(model, val_loader, device, loss_fn)
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


def train_classifier(data: Path, model_out: Path, *,
                     architectures: Sequence[str] = DEFAULT_ARCHITECTURES,
                     learning_rates: Sequence[float] = DEFAULT_LEARNING_RATES,
                     batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
                     weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
                     grid_epochs: int = DEFAULT_GRID_EPOCHS, epochs: int = DEFAULT_EPOCHS,
                     patience: int = DEFAULT_PATIENCE, input_size: int | None = None,
                     weights: Path | None = None, seed: int = 0, num_workers: int = 0,
                     device: str | None = None, overwrite: bool = False) -> TrainClassifierResult:
    """Train a crop classifier on ``data/train``, choose settings and epoch on ``data/val``,
    report on ``data/test``, and write everything to ``model_out``.

    data: folder written by ``orgaseg split --mode classification`` (``train/<Class>/``,
    ``val/<Class>/``, optional ``test/<Class>/``; crops are TIFF/PNG/JPEG, grey or colour).
    architectures, learning_rates, batch_sizes, weight_decays: the grid (every combination).
    grid_epochs: epochs per grid point; epochs: the most epochs of the final run; patience:
    epochs without validation improvement before it stops. input_size: network input in
    pixels (None: learned from the training crops, see
    :func:`orgaseg_core.classification.crops.learn_input_size`). weights: local state_dict (or
    orgaseg checkpoint) to start from, only with one architecture; nothing is ever downloaded.
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

    data, model_out = Path(data), Path(model_out)
    weights = Path(weights) if weights is not None else None
    architectures = [validate_architecture(a) for a in dict.fromkeys(architectures)]
    if not architectures:
        raise OrgasegError(f"give at least one architecture ({', '.join(ARCHITECTURES)})")
    learning_rates = _positive_list(learning_rates, "learning rates")
    batch_sizes = [int(b) for b in _positive_list(batch_sizes, "batch sizes", kind=int, minimum=1,
                                                  strict=False)]
    weight_decays = _positive_list(weight_decays, "weight decays", strict=False)
    for name, value in (("grid_epochs", grid_epochs), ("epochs", epochs), ("patience", patience)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise OrgasegError(f"{name} must be a whole number >= 1, got {value!r}")
    if int(num_workers) < 0:
        raise OrgasegError(f"num_workers must be >= 0, got {num_workers}")
    if input_size is not None:
        smallest = max(min_input_size(a) for a in architectures)
        if int(input_size) != input_size or not smallest <= int(input_size) <= 1024:
            raise OrgasegError(f"input size must be a whole number of pixels from {smallest} to 1024, "
                               f"got {input_size!r}")
        input_size = int(input_size)
    if weights is not None:
        if len(architectures) > 1:
            raise OrgasegError("--weights fit one architecture only; give a single architecture with them")
        if not weights.is_file():
            raise InputFileError(weights, "weights file does not exist")
        # Check now that they fit, so a wrong file fails before anything is written.
        load_weights(build_model(architectures[0], 2), weights)
    device = resolve_device(device)

    # Folder checks before the output folder is created, so a typo leaves nothing behind.
    if not data.is_dir():
        raise InputFileError(data, "data folder does not exist or is not a folder")
    if not (data / "train").is_dir():
        raise InputFileError(data / "train", "no training folder; expected the layout train/<class>/, "
                                             "val/<class>/, test/<class>/ of 'orgaseg split --mode "
                                             "classification'")
    warnings: list[str] = []
    class_names, train_files, train_labels = _scan_split(data, "train", None, warnings)
    _, val_files, val_labels = _scan_split(data, "val", class_names, warnings)
    _, test_files, test_labels = _scan_split(data, "test", class_names, warnings)
    if not val_files:
        raise InputFileError(data / "val", "no validation crops (folder missing or empty): the "
                                           "validation split chooses the settings and the epoch and "
                                           "the test split may not; split the data with a validation "
                                           "fraction, e.g. 'orgaseg split --mode classification --val 0.15'")
    if not test_files:
        msg = (f"{data / 'test'}: no test crops; the final report describes the validation split, "
               "which was also used to choose the model (an optimistic estimate)")
        warnings.append(msg)
        log.warning(msg)

    settings = [{"architecture": a, "learning_rate": lr, "batch_size": bs, "weight_decay": wd}
                for a, lr, bs, wd in itertools.product(architectures, learning_rates, batch_sizes,
                                                       weight_decays)]
    arguments = {"data": data, "model_out": model_out, "architectures": architectures,
                 "learning_rates": learning_rates, "batch_sizes": batch_sizes,
                 "weight_decays": weight_decays, "grid_epochs": int(grid_epochs),
                 "epochs": int(epochs), "patience": int(patience), "input_size": input_size,
                 "weights": weights, "seed": int(seed), "num_workers": int(num_workers),
                 "device": device, "overwrite": overwrite}
    if weights is not None and model_out.resolve() in weights.resolve().parents:
        raise OutputError(f"{model_out}: holds the weights file {weights}, which training could "
                          "replace; write the new model to another folder")
    with step_run("train-classifier", model_out, arguments, overwrite=overwrite,
                  inputs=[data]) as record:
        result = _train(data, model_out, record, class_names=class_names,
                        files={"train": train_files, "val": val_files, "test": test_files},
                        labels={"train": train_labels, "val": val_labels, "test": test_labels},
                        settings=settings, grid_epochs=int(grid_epochs), epochs=int(epochs),
                        patience=int(patience), input_size=input_size, weights=weights,
                        seed=int(seed), num_workers=int(num_workers), device=device,
                        warnings=warnings, arguments=arguments)
    return result


def _train(data: Path, model_out: Path, record, *, class_names, files, labels, settings,
           grid_epochs, epochs, patience, input_size, weights, seed, num_workers, device,
           warnings, arguments) -> TrainClassifierResult:
    from .crops import (
        CropDataset,
        class_weights,
        learn_input_size,
        make_loader,
        normalisation_stats,
        preprocessing_description,
        read_crops,
        to_unit,
    )
    from .networks import min_input_size, plain, save_checkpoint

    start = time.perf_counter()
    result = TrainClassifierResult(model_out=model_out, class_names=list(class_names),
                                   warnings=warnings, device=device)

    # ---- read the crops (unreadable ones are reported and skipped)
    greys: dict[str, list[np.ndarray]] = {}
    kept_labels: dict[str, list[int]] = {}
    for split in SPLITS:
        if not files[split]:
            continue
        read, errors = read_crops(tqdm(files[split], desc=f"reading {split} crops", unit="image",
                                       disable=None, leave=False))
        result.unreadable += [(str(p), e) for p, e in errors]
        if errors and len(errors) > MAX_UNREADABLE_FRACTION * len(files[split]):
            raise OrgasegError(f"{data / split}: {len(errors)} of {len(files[split])} crops cannot be "
                               f"read (more than {MAX_UNREADABLE_FRACTION:.0%}); first: {errors[0][1]}")
        greys[split] = [g for g in read if g is not None]
        kept_labels[split] = [lab for g, lab in zip(read, labels[split]) if g is not None]
        counts = np.bincount(kept_labels[split], minlength=len(class_names))
        result.counts[split] = {name: int(c) for name, c in zip(class_names, counts)}
        log.info("read %d %s crops from %s (%s)", len(greys[split]), split, data / split,
                 ", ".join(f"{n} {c}" for n, c in result.counts[split].items()))
    if result.unreadable:
        write_csv(model_out / "unreadable.csv",
                  pd.DataFrame(result.unreadable, columns=["file", "error"]))
    small = [name for name, c in result.counts["train"].items() if c < 2]
    if small:
        raise InputFileError(data / "train" / small[0], "fewer than 2 readable training crops in this "
                                                        "class folder; a class needs at least 2")
    if not greys.get("val"):
        raise InputFileError(data / "val", "no readable validation crops")

    # ---- input size and normalisation from the training crops only
    train_units = [to_unit(g) for g in greys["train"]]
    learned = input_size is None
    if learned:
        input_size = max(learn_input_size([max(g.shape) for g in greys["train"]]),
                         max(min_input_size(s["architecture"]) for s in settings))
    mean, std = normalisation_stats(train_units, input_size)
    del train_units
    result.input_size, result.mean, result.std = input_size, mean, std
    weights_per_class = class_weights([result.counts["train"][c] for c in class_names])
    log.info("input size %d px (%s); normalisation mean %.4f, std %.4f; class weights %s",
             input_size, "learned from the training crops" if learned else "given", mean, std,
             ", ".join(f"{c} {w:.3f}" for c, w in zip(class_names, weights_per_class)))

    def dataset(split: str, augment: bool) -> CropDataset:
        return CropDataset(greys[split], kept_labels[split], input_size=input_size, mean=mean,
                           std=std, augment=augment, seed=seed)

    train_set, val_set = dataset("train", True), dataset("val", False)
    tb_root = model_out / "tensorboard"
    common = dict(train_set=train_set, val_set=val_set, class_names=list(class_names),
                  weights_per_class=weights_per_class, seed=seed, device=device,
                  num_workers=num_workers, init_weights=weights)

    # ---- grid search on the validation split
    grid_rows: list[dict[str, Any]] = []
    if len(settings) > 1:
        for i, setting in enumerate(tqdm(settings, desc="grid search", unit="setting", disable=None), 1):
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
            log.info("grid %d/%d %s: best validation macro-F1 %.4f (epoch %d)", i, len(settings),
                     name, outcome.best_f1, outcome.best_epoch)
        # Highest validation F1; ties: lower validation loss, then grid order.
        best = min(range(len(grid_rows)), key=lambda j: (-grid_rows[j]["best_val_macro_f1"],
                                                         grid_rows[j]["best_val_loss"], j))
        for j, row in enumerate(grid_rows):
            row["chosen"] = j == best
        chosen = settings[best]
    else:
        chosen = settings[0]
        log.info("one setting only: no grid search")
    result.grid = grid_rows
    result.chosen = dict(chosen)
    if grid_rows:
        write_csv(model_out / "grid.csv", pd.DataFrame(grid_rows))

    # ---- final run with early stopping on the validation macro-F1
    name = _run_name("final", chosen)
    writer = _summary_writer(tb_root / name)
    try:
        outcome = train_run(chosen, epochs=epochs, patience=patience, writer=writer, keep_best=True,
                            desc=name, **common)
        from .networks import build_model

        model = build_model(chosen["architecture"], len(class_names)).to(device)
        model.load_state_dict(outcome.best_state)
        result.best_epoch, result.epochs_trained = outcome.best_epoch, outcome.epochs
        write_csv(model_out / "history.csv", pd.DataFrame(outcome.history).round(6))

        # ---- evaluation: validation (used for choices) and test (used once, here)
        loader = lambda split: make_loader(dataset(split, False), batch_size=64, shuffle=False,  # noqa: E731
                                           seed=seed, num_workers=num_workers)
        truth, pred, _ = evaluate(model, loader("val"), device)
        result.val = classification_metrics(truth, pred, class_names)
        if greys.get("test"):
            truth, pred, _ = evaluate(model, loader("test"), device)
            result.test = classification_metrics(truth, pred, class_names)
            log.info("test split (evaluated once, after all choices): macro-F1 %.4f, accuracy %.4f",
                     result.test["macro_f1"], result.test["accuracy"])
        report_split = "test" if result.test else "val"
        report_metrics = result.test or result.val
        fig = confusion_figure(report_metrics["confusion_matrix"], class_names,
                               f"{report_split} split ({report_metrics['n']} crops), "
                               f"macro-F1 {report_metrics['macro_f1']:.3f}")
        _save_figure(fig, model_out / "confusion_matrix.png")
        if writer is not None:
            writer.add_figure(f"{report_split}/confusion_matrix", fig, outcome.best_epoch)
            writer.add_scalar(f"{report_split}/macro_f1", report_metrics["macro_f1"], outcome.best_epoch)
    finally:
        if writer is not None:
            writer.close()
    write_csv(model_out / "classification_report.csv", report_table(report_metrics))

    result.seconds = time.perf_counter() - start
    selection = ("grid setting and epoch chosen on the validation macro-F1; the test split was "
                 "evaluated once, after training, for this report only")
    report = {
        "class_names": list(class_names),
        "counts": result.counts,
        "input_size": input_size,
        "input_size_learned": learned,
        "normalisation": {"mean": mean, "std": std},
        "class_weights": {c: float(w) for c, w in zip(class_names, weights_per_class)},
        "chosen": dict(chosen),
        "chosen_on": "val",
        "selection": selection,
        "grid": grid_rows,
        "best_epoch": outcome.best_epoch,
        "epochs_trained": outcome.epochs,
        "early_stopping": {"metric": "val macro_f1", "patience": patience},
        "val": result.val,
        "test": result.test,
        "report_split": report_split,
        "device": device,
        "seconds": round(result.seconds, 2),
        "unreadable": [{"file": f, "error": e} for f, e in result.unreadable],
        "warnings": warnings,
    }
    write_json(model_out / "report.json", report)
    metrics = {"val": result.val, "test": result.test, "best_epoch": outcome.best_epoch,
               "epochs_trained": outcome.epochs, "chosen": dict(chosen), "chosen_on": "val"}
    save_checkpoint(model_out / MODEL_FILE, model, architecture=chosen["architecture"],
                    class_names=list(class_names), input_size=input_size, mean=mean, std=std,
                    preprocessing=preprocessing_description(), metrics=metrics,
                    arguments=plain(arguments), versions=package_versions())
    record.results.update({
        "class_names": list(class_names), "counts": result.counts, "input_size": input_size,
        "chosen": dict(chosen), "best_epoch": outcome.best_epoch, "epochs_trained": outcome.epochs,
        "val_macro_f1": result.val["macro_f1"],
        "test_macro_f1": result.test["macro_f1"] if result.test else None,
        "unreadable": [{"file": f, "error": e} for f, e in result.unreadable],
        "warnings": warnings, "seconds": round(result.seconds, 2),
    })
    log.info("wrote %s, report.json, classification_report.csv, confusion_matrix.png%s and "
             "TensorBoard logs to %s", MODEL_FILE, ", grid.csv" if grid_rows else "", model_out)
    return result
