"""``classify``: class, confidence and class probabilities of every object crop.

Input ``objects`` is either

- an ``extract-objects`` output folder: ``objects.csv`` (one row per object: image, stem, label,
  crop = path relative to the folder, shape measurements) and ``crops/<stem>_<label>.tif``;
- a folder of crops (or a folder with a ``crops/`` sub-folder of crops but no ``objects.csv``):
  image and label are parsed from names like ``<stem>_<label>.tif`` (label left empty when the
  name has no trailing number).

The model folder says which family classifies (:mod:`orgaseg_core.classification.model`): the
measurement forest reads the measurement columns of ``objects.csv``; the CNN reads the crops.
Every crop is prepared exactly as in training (the checkpoint says how: grey, [0, 1] by dtype,
fitted and padded to the input size, normalised with the training mean/std; see
:mod:`orgaseg_core.classification.crops`) and classified in batches.

Outputs in ``out``: ``predictions.csv`` (image, label, crop, predicted_class, confidence = the
highest calibrated probability, needs_review = confidence below the review threshold,
``prob_<Class>`` per class of the model, then the remaining columns of
``objects.csv`` such as the measurements), ``unreadable.csv`` (crops that could not be read:
reported, skipped; if every crop fails the step fails) and ``run.json``.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..common.errors import InputFileError, OptionError, OrgasegError, OutputError
from ..common.images import image_stem, list_images
from ..common.kept_models import keep_loaded
from ..common.outputs import step_run, write_csv
from ..common.params import check_device

log = logging.getLogger(__name__)

OBJECTS_CSV = "objects.csv"
CROPS_FOLDER = "crops"
PREDICTIONS_CSV = "predictions.csv"
UNREADABLE_CSV = "unreadable.csv"
_CROP_NAME = re.compile(r"^(?P<stem>.+)_(?P<label>\d+)$")


def parse_crop_name(name: str | Path) -> tuple[str, int | None]:
    """(image stem, label) of a crop named ``<stem>_<label>.tif``; (stem, None) otherwise."""
    stem = image_stem(name)
    match = _CROP_NAME.match(stem)
    if match:
        return match.group("stem"), int(match.group("label"))
    return stem, None


def probability_columns(class_names: list[str]) -> list[str]:
    """``prob_<Class>`` column names, in the checkpoint's class order."""
    return [f"prob_{name}" for name in class_names]


def collect_crops(objects: Path) -> tuple[pd.DataFrame, list[Path], str]:
    """The object table (image, label, crop, other columns), the crop files and what was read.

    ``crop`` holds paths as written in ``objects.csv`` (relative to ``objects``) or, for a
    plain folder of crops, paths relative to ``objects``.
    """
    objects = Path(objects)
    if not objects.is_dir():
        raise InputFileError(objects, "objects folder does not exist or is not a folder")
    table_path = objects / OBJECTS_CSV
    if table_path.is_file():
        try:
            table = pd.read_csv(table_path, keep_default_na=False, na_values=[""])
        except Exception as exc:  # pandas raises several types for malformed CSV
            raise InputFileError(table_path, f"cannot be read as a CSV table ({exc})") from exc
        if "crop" not in table.columns:
            raise InputFileError(table_path, "has no 'crop' column (expected the objects.csv written "
                                             "by extract-objects)")
        if table["crop"].isna().any():
            row = int(np.flatnonzero(table["crop"].isna())[0]) + 2
            raise InputFileError(table_path, f"line {row}: empty 'crop' entry")
        if "image" not in table.columns or "label" not in table.columns:
            parsed = [parse_crop_name(c) for c in table["crop"]]
            if "image" not in table.columns:
                table.insert(0, "image", [s for s, _ in parsed])
            if "label" not in table.columns:
                table.insert(1, "label", pd.array([lab for _, lab in parsed], dtype="Int64"))
        files = [objects / str(c) for c in table["crop"]]
        root = objects.resolve()
        for row, path in enumerate(files, start=2):
            # a crop path must stay inside the objects folder (no "../../secret.tif", no "/etc/x")
            if root not in path.resolve().parents:
                raise InputFileError(table_path, f"line {row}: crop {table['crop'].iloc[row - 2]!r} "
                                                 f"points outside {objects}; refused")
        return table, files, str(table_path)
    folder = objects / CROPS_FOLDER if (objects / CROPS_FOLDER).is_dir() else objects
    files = list_images(folder, what="crops")
    if not files:
        raise InputFileError(folder, "contains no crops (.tif, .tiff, .png, .jpg) and no objects.csv")
    parsed = [parse_crop_name(f.name) for f in files]
    table = pd.DataFrame({
        "image": [s for s, _ in parsed],
        "label": pd.array([lab for _, lab in parsed], dtype="Int64"),
        "crop": [str(f.relative_to(objects)) for f in files],
    })
    return table, files, str(folder)


def crop_mismatch(objects: Path, padding: int, context: float) -> str | None:
    """Why the crops of an extract-objects folder differ from a classifier's training crops, or
    None. Read from the folder's run.json (padding in px, context as a fraction of the object's
    size; folders of 0.8 and before record no context: 0); a folder without one: None."""
    import json

    record_path = Path(objects) / "run.json"
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("step") != "extract-objects":
        return None
    arguments = record.get("arguments") or {}
    try:
        cut = (int(arguments.get("padding", 10)), float(arguments.get("context") or 0.0))
    except (TypeError, ValueError):
        return None
    if cut == (int(padding), float(context)):
        return None
    return (f"{objects}: its crops were cut with padding {cut[0]} and context {cut[1]:g}, the classifier's "
            f"training crops with padding {int(padding)} and context {float(context):g}; its results are "
            f"best on crops cut like those (extract-objects --padding {int(padding)} --context {float(context):g})")


@dataclass
class ClassifyResult:
    """What :func:`classify` read and predicted."""

    out: Path
    model: Path
    class_names: list[str] = field(default_factory=list)
    n_crops: int = 0
    n_classified: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    mean_confidence: float = 0.0
    n_review: int = 0
    review_below: float = 0.0
    device: str = "cpu"
    seconds: float = 0.0

    @property
    def predictions_csv(self) -> Path:
        return self.out / PREDICTIONS_CSV

    def summary(self) -> str:
        rate = self.n_classified / self.seconds if self.seconds > 0 else 0.0
        lines = [f"classify: {self.n_classified} of {self.n_crops} crops classified with {self.model} "
                 f"({self.device}, {self.seconds:.1f} s, {rate:.0f} crops/s)",
                 "  predicted: " + ", ".join(f"{c} {self.class_counts.get(c, 0)}" for c in self.class_names),
                 f"  mean confidence {self.mean_confidence:.3f}; {self.n_review} below "
                 f"{self.review_below:.2f} flagged for review (needs_review)",
                 f"  table: {self.predictions_csv}"]
        if self.unreadable:
            lines.append(f"  {len(self.unreadable)} crops could not be read and were skipped "
                         f"({self.out / UNREADABLE_CSV}):")
            lines += [f"    {error}" for _crop, error in self.unreadable[:10]]
            if len(self.unreadable) > 10:
                lines.append(f"    ... ({len(self.unreadable) - 10} more)")
        return "\n".join(lines)


def predict_batch(model, units: list[np.ndarray], *, input_size: int, mean: float, std: float,
                  device: str) -> np.ndarray:
    """Class probabilities (N, classes) of crops given as float (Y, X) arrays in [0, 1]."""
    import torch

    from .crops import prepare_crop

    batch = np.stack([(prepare_crop(u, input_size) - mean) / std for u in units])[:, None]
    x = torch.from_numpy(batch.astype(np.float32, copy=False)).to(device)
    if device == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return torch.softmax(model(x).float(), dim=1).cpu().numpy()


def classify(model: Path, objects: Path, out: Path, *, batch_size: int = 64, device: str | None = None,
             review_below: float | None = None, family: str | None = None,
             overwrite: bool = False) -> ClassifyResult:
    """Classify every object of ``objects`` with a classifier of train-classifier; write
    ``out/predictions.csv``.

    model: the folder written by train-classifier (or its classifier.json or model.pt; all it
    needs is inside, whatever family won). objects: an extract-objects output folder or a
    folder of crops (see the module notes); the measurement and combined families need the
    measurements of ``objects.csv``. out: new or empty folder (or ``overwrite``), not the
    model's folder. batch_size: crops per forward pass. device: "cpu" or "cuda" (None: cuda
    when available). review_below: objects whose confidence is below it get ``needs_review``
    (None: the model's own threshold). family: use this trained candidate of the folder instead
    of the one chosen on validation (None: the chosen one).
    """
    from ..common.images import read_image
    from .crops import to_unit
    from .model import load_classifier, predict_probabilities

    model, objects, out = Path(model), Path(objects), Path(out)
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise OptionError(f"batch size must be a whole number >= 1, got {batch_size!r}")
    if review_below is not None and not (isinstance(review_below, (int, float))
                                         and 0.0 <= float(review_below) <= 1.0):
        raise OptionError(f"review_below must be a confidence between 0 and 1, got {review_below!r}")
    device = check_device(device)  # before the model is loaded
    batch_size = int(batch_size)
    classifier = keep_loaded("classifier", model, lambda: load_classifier(model, family), family)
    review = classifier.review_below if review_below is None else float(review_below)
    if classifier.needs_crops:
        from .networks import resolve_device

        device = resolve_device(device)
    else:
        device = "cpu"
    if out.resolve() == (model if model.is_dir() else model.parent).resolve():
        raise OutputError(f"{out}: is the model's folder; write the predictions to another folder")
    table, files, source = collect_crops(objects)
    log.info("read %s: %d objects to classify with the %s", source, len(files), classifier.describe())
    mismatch = (crop_mismatch(objects, classifier.crop_padding, classifier.crop_context)
                if classifier.needs_crops and classifier.crop_padding is not None else None)
    if mismatch:
        log.warning("%s", mismatch)
    if classifier.needs_measurements:
        from .measurement_model import feature_matrix

        feature_matrix(table, classifier.measurement_columns, source=source)  # fail before writing

    arguments = {"model": model, "objects": objects, "out": out, "batch_size": batch_size,
                 "device": device, "review_below": review, "family": family, "overwrite": overwrite}
    with step_run("classify", out, arguments, overwrite=overwrite, inputs=[objects]) as record:
        start = time.perf_counter()
        result = ClassifyResult(out=out, model=model, class_names=list(classifier.class_names),
                                n_crops=len(files), device=device)

        def crop_probabilities() -> tuple[np.ndarray, np.ndarray]:
            import torch

            checkpoint = classifier.checkpoint
            net = checkpoint.build(device)
            if device == "cpu":
                net = net.to(memory_format=torch.channels_last)
            probabilities = np.full((len(files), len(classifier.class_names)), np.nan, dtype=np.float64)
            ok = np.zeros(len(files), dtype=bool)
            bar = tqdm(total=len(files), desc="classify", unit="crop", disable=None)
            for begin in range(0, len(files), batch_size):
                indices, units = [], []
                for i in range(begin, min(begin + batch_size, len(files))):
                    try:
                        units.append(to_unit(read_image(files[i])))
                        indices.append(i)
                    except OrgasegError as exc:
                        log.warning("%s (skipped)", exc)
                        result.unreadable.append((str(table["crop"].iloc[i]), str(exc)))
                if units:
                    probabilities[indices] = predict_batch(
                        net, units, input_size=checkpoint.input_size, mean=checkpoint.mean,
                        std=checkpoint.std, device=device)
                    ok[indices] = True
                bar.update(min(begin + batch_size, len(files)) - begin)
            bar.close()
            return probabilities, ok

        probabilities, ok = predict_probabilities(classifier, table, source=source,
                                                  crop_probabilities=crop_probabilities)
        if result.unreadable:
            write_csv(out / UNREADABLE_CSV, pd.DataFrame(result.unreadable, columns=["crop", "error"]))
        record.results["unreadable"] = [{"crop": c, "error": e} for c, e in result.unreadable]
        record.results["crop_mismatch"] = mismatch
        if not ok.any():
            raise OrgasegError(f"{source}: none of the {len(files)} crops could be read (see "
                               f"{out / UNREADABLE_CSV}); first: {result.unreadable[0][1]}")

        kept = table[ok].reset_index(drop=True)
        probs = probabilities[ok]
        names = np.asarray(classifier.class_names, dtype=object)
        confidence = probs.max(axis=1)
        predictions = pd.DataFrame({
            "image": kept["image"], "label": kept["label"], "crop": kept["crop"],
            "predicted_class": names[probs.argmax(axis=1)],
            "confidence": confidence.round(6),
            "needs_review": confidence < review,
        })
        for column, values in zip(probability_columns(classifier.class_names), probs.T):
            predictions[column] = values.round(6)
        extra = [c for c in kept.columns if c not in ("image", "label", "crop")]
        clashes = [c for c in extra if c in predictions.columns]
        if clashes:  # e.g. a predictions.csv given as objects table: keep the new values
            log.warning("%s: columns %s are replaced by this run's predictions", source,
                        ", ".join(clashes))
            extra = [c for c in extra if c not in clashes]
        predictions = pd.concat([predictions, kept[extra]], axis=1)
        write_csv(out / PREDICTIONS_CSV, predictions)

        result.n_classified = int(ok.sum())
        result.n_review = int(predictions["needs_review"].sum())
        result.review_below = review
        result.class_counts = dict(Counter(predictions["predicted_class"]))
        result.mean_confidence = float(predictions["confidence"].mean())
        result.seconds = time.perf_counter() - start
        record.results.update({
            "model": str(model), "family": classifier.family,
            "architecture": classifier.checkpoint.architecture if classifier.checkpoint else None,
            "class_names": list(classifier.class_names), "crops": result.n_crops,
            "classified": result.n_classified,
            "class_counts": {c: result.class_counts.get(c, 0) for c in classifier.class_names},
            "mean_confidence": round(result.mean_confidence, 4), "review_below": review,
            "needs_review": result.n_review, "seconds": round(result.seconds, 3),
        })
        log.info("wrote %s (%d objects, %d below confidence %.2f flagged for review)%s",
                 out / PREDICTIONS_CSV, result.n_classified, result.n_review, review,
                 f" and {UNREADABLE_CSV} ({len(result.unreadable)} crops)" if result.unreadable else "")
    return result
