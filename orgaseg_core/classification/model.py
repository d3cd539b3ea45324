"""The classifier folder that ``train-classifier`` writes and ``classify`` / ``analyze`` load.

::

    model/classifier.json      kind "orgaseg-classifier", the family that won on validation,
                               class names, the files it uses, the calibration temperature,
                               the fusion weight, the measurement columns, crop padding,
                               the review threshold, metrics, arguments, versions
    model/model.pt             the CNN checkpoint (families "cnn" and "combined"; see
                               orgaseg_core.classification.networks)
    model/measurements.skops   the measurement forest (families "measurements" and "combined")

Families:

- ``measurements``: a random forest on the objects' measurements and descriptors
  (:mod:`orgaseg_core.classification.measurement_model`); needs the object table of
  ``extract-objects``, no pixels;
- ``cnn``: the torchvision network on the crops;
- ``combined``: ``w * p_cnn + (1 - w) * p_measurements``, ``w`` chosen on validation.

Whatever the family, the output probabilities are calibrated by one temperature fitted on the
validation split (:mod:`orgaseg_core.classification.calibration`). ``classifier.json`` is
written last, so an interrupted training leaves a folder that is refused. A bare ``model.pt``
of orgaseg 0.5 (or any folder holding only one) still loads, as an uncalibrated CNN.

:func:`load_classifier` accepts the folder, its ``classifier.json`` or its ``model.pt``.
torch is imported only when the CNN is used.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..common.errors import InputFileError, OptionError
from .calibration import apply_temperature, probabilities_to_logits
from .measurement_model import MEASUREMENTS_FILE

log = logging.getLogger(__name__)

CLASSIFIER_JSON = "classifier.json"
CLASSIFIER_KIND = "orgaseg-classifier"
CLASSIFIER_FORMAT_VERSION = 1
CNN_FILE = "model.pt"
FAMILIES = ("measurements", "cnn", "combined")
#: Objects whose calibrated confidence is below this are flagged for review (default).
DEFAULT_REVIEW_BELOW = 0.6


def uses(family: str) -> tuple[bool, bool]:
    """(uses the CNN, uses the measurement forest) of a family."""
    return family in ("cnn", "combined"), family in ("measurements", "combined")


@dataclass
class Classifier:
    """A loaded classifier of any family (see the module notes)."""

    path: Path
    family: str
    class_names: list[str]
    temperature: float = 1.0
    cnn_weight: float = 1.0
    measurement_columns: list[str] = field(default_factory=list)
    crop_padding: int | None = None
    crop_context: float = 0.0  # classifiers before 0.9 were trained on crops without it
    review_below: float = DEFAULT_REVIEW_BELOW
    checkpoint: Any = None  # networks.Checkpoint
    forest: Any = None  # sklearn RandomForestClassifier
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_crops(self) -> bool:
        return uses(self.family)[0]

    @property
    def needs_measurements(self) -> bool:
        return uses(self.family)[1]

    def describe(self) -> str:
        parts = [f"{self.family} classifier {self.path}", f"classes {', '.join(self.class_names)}"]
        if self.checkpoint is not None:
            parts.append(f"CNN {self.checkpoint.architecture} at {self.checkpoint.input_size} px")
        if self.forest is not None:
            parts.append(f"forest of {len(self.forest.estimators_)} trees on "
                         f"{len(self.measurement_columns)} measurements")
        if self.family == "combined":
            parts.append(f"CNN weight {self.cnn_weight:g}")
        parts.append(f"temperature {self.temperature:.3g}")
        return ", ".join(parts)

    def combine(self, cnn: np.ndarray | None, measurements: np.ndarray | None) -> np.ndarray:
        """Calibrated (N, K) probabilities from the family's raw probabilities."""
        if self.family == "cnn":
            raw = cnn
        elif self.family == "measurements":
            raw = measurements
        else:
            raw = self.cnn_weight * cnn + (1.0 - self.cnn_weight) * measurements
        return calibrated(raw, self.temperature)

    def info(self) -> dict[str, Any]:
        """Plain description (what ``classifier-info --json`` prints)."""
        info = {"path": str(self.path), "family": self.family, "class_names": list(self.class_names),
                "temperature": self.temperature, "needs_crops": self.needs_crops,
                "needs_measurements": self.needs_measurements, "crop_padding": self.crop_padding,
                "crop_context": self.crop_context, "review_below": self.review_below}
        if self.checkpoint is not None:
            info.update(architecture=self.checkpoint.architecture, input_size=self.checkpoint.input_size)
        if self.family == "combined":
            info["cnn_weight"] = self.cnn_weight
        return info


def calibrated(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): probabilities with the calibration temperature applied."""
    return apply_temperature(probabilities_to_logits(probabilities), temperature)


def _context(value, path: Path) -> float:
    """The crop context a classifier was trained with (0 when not recorded: before 0.9)."""
    from ..objects.extract import check_context

    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputFileError(path, f"crop_context must be a number within 0-2, got {value!r}")
    try:
        return check_context(value)  # the same range as --context
    except OptionError as exc:
        raise InputFileError(path, f"crop_context: {exc}") from None


def _positive_float(value: Any, what: str, path: Path, *, upper: float | None = None) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputFileError(path, f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number <= 0 or (upper is not None and number > upper):
        raise InputFileError(path, f"{what} {number!r} is out of range")
    return number


def read_description(path: Path) -> dict[str, Any]:
    """classifier.json, checked (InputFileError naming the file)."""
    try:
        description = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputFileError(path, f"cannot be read as JSON ({exc})") from exc
    if not isinstance(description, dict) or description.get("kind") != CLASSIFIER_KIND:
        raise InputFileError(path, f"does not describe an {CLASSIFIER_KIND!r}")
    version = description.get("format_version")
    if version != CLASSIFIER_FORMAT_VERSION:
        raise InputFileError(path, f"has format version {version!r}; this orgaseg reads version "
                                   f"{CLASSIFIER_FORMAT_VERSION} (update orgaseg-core, or retrain)")
    if description.get("family") not in FAMILIES:
        raise InputFileError(path, f"names the family {description.get('family')!r}; known: "
                                   f"{', '.join(FAMILIES)}")
    names = description.get("class_names")
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) and n for n in names) \
            or len(set(names)) != len(names):
        raise InputFileError(path, "class_names must list at least 2 distinct names")
    return description


def resolve_model_path(model: Path) -> tuple[Path, Path | None]:
    """(folder, classifier.json or None) for a folder, its classifier.json or its model.pt."""
    model = Path(model)
    if not model.exists():
        raise InputFileError(model, "classifier model does not exist")
    folder = model if model.is_dir() else model.parent
    description = folder / CLASSIFIER_JSON
    if model.is_file() and model.name != CLASSIFIER_JSON and model.suffix != ".pt":
        raise InputFileError(model, f"is not a classifier model (give the folder written by "
                                    f"train-classifier, its {CLASSIFIER_JSON} or its {CNN_FILE})")
    if description.is_file():
        return folder, description
    if model.is_dir() and not (folder / CNN_FILE).is_file():
        raise InputFileError(model, f"is not a classifier folder: it holds neither {CLASSIFIER_JSON} nor "
                                    f"{CNN_FILE} (an interrupted training leaves no {CLASSIFIER_JSON})")
    return folder, None


def load_classifier(model: Path, family: str | None = None) -> Classifier:
    """Load a classifier folder (or its classifier.json / model.pt); see the module notes.

    family: use this trained candidate instead of the one chosen on validation (its own
    calibration temperature and CNN weight are in classifier.json); None: the chosen one.
    """
    model = Path(model)
    folder, description_path = resolve_model_path(model)
    if description_path is None:  # a CNN checkpoint alone (orgaseg 0.5 or a bare model.pt)
        from .networks import load_checkpoint

        if family not in (None, "cnn"):
            raise InputFileError(model, f"holds a CNN only; it has no {family!r} classifier")
        checkpoint = load_checkpoint(model if model.is_file() else folder / CNN_FILE)
        return Classifier(path=checkpoint.path, family="cnn", class_names=list(checkpoint.class_names),
                          checkpoint=checkpoint)
    if model.is_file() and model.name != CLASSIFIER_JSON:
        log.info("%s: using the whole classifier described by %s", model, description_path)
    d = read_description(description_path)
    if family is not None and family != d["family"]:
        candidates = d.get("candidates") or {}
        if family not in candidates:
            raise InputFileError(description_path, f"has no trained {family!r} candidate (trained: "
                                                   f"{', '.join(candidates) or d['family']})")
        log.info("%s: using the %s candidate instead of the chosen %s", description_path, family,
                 d["family"])
        d = {**d, "family": family, "temperature": candidates[family].get("temperature", 1.0),
             "cnn_weight": candidates[family].get("cnn_weight", 1.0)}
    family = d["family"]
    use_cnn, use_forest = uses(family)
    classifier = Classifier(
        path=folder, family=family, class_names=list(d["class_names"]),
        temperature=_positive_float(d.get("temperature", 1.0), "temperature", description_path, upper=1e3),
        cnn_weight=float(d.get("cnn_weight", 1.0)),
        measurement_columns=[str(c) for c in d.get("measurement_columns") or []],
        crop_padding=None if d.get("crop_padding") is None else int(d["crop_padding"]),
        crop_context=_context(d.get("crop_context"), description_path),
        review_below=float(d.get("review_below", DEFAULT_REVIEW_BELOW)), description=d)
    if not 0.0 <= classifier.cnn_weight <= 1.0 or not 0.0 <= classifier.review_below <= 1.0:
        raise InputFileError(description_path, "cnn_weight and review_below must lie within 0-1")
    if use_cnn:
        from .networks import load_checkpoint

        classifier.checkpoint = load_checkpoint(folder / CNN_FILE)
        if list(classifier.checkpoint.class_names) != classifier.class_names:
            raise InputFileError(folder / CNN_FILE, f"classes {classifier.checkpoint.class_names} differ "
                                                    f"from {description_path}'s {classifier.class_names}")
    if use_forest:
        from .measurement_model import read_measurement_forest

        if not classifier.measurement_columns:
            raise InputFileError(description_path, "names no measurement_columns for its forest")
        classifier.forest = read_measurement_forest(folder / MEASUREMENTS_FILE,
                                                    n_features=len(classifier.measurement_columns),
                                                    n_classes=len(classifier.class_names))
    log.info("loaded the %s", classifier.describe())
    return classifier


def predict_probabilities(classifier: Classifier, table: pd.DataFrame, *, source: str | Path,
                          crop_probabilities: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(calibrated (N, K) probabilities, (N,) bool: object classified) of the table's objects.

    table: the object table (its measurement columns are read when the family needs them;
    errors name ``source``). crop_probabilities: called when the family needs the CNN; returns
    the raw CNN probabilities (N, K) and which crops could be read (N,).
    """
    n = len(table)
    cnn = measurements = None
    ok = np.ones(n, dtype=bool)
    if classifier.needs_crops:
        if crop_probabilities is None:
            raise ValueError("this classifier needs the crops")
        cnn, ok = crop_probabilities()
    if classifier.needs_measurements:
        from .measurement_model import feature_matrix, predict_measurements

        measurements = predict_measurements(classifier.forest,
                                            feature_matrix(table, classifier.measurement_columns, source=source))
    probabilities = np.full((n, len(classifier.class_names)), np.nan)
    if ok.any():
        probabilities[ok] = classifier.combine(None if cnn is None else cnn[ok],
                                               None if measurements is None else measurements[ok])
    return probabilities, ok


def write_description(path: Path, description: dict[str, Any]) -> Path:
    """Write classifier.json atomically (the last file of a training)."""
    from ..common.outputs import write_json

    return write_json(path, {"kind": CLASSIFIER_KIND, "format_version": CLASSIFIER_FORMAT_VERSION,
                             **description})


def family_files(family: str) -> list[str]:
    """Files of the folder a family uses."""
    use_cnn, use_forest = uses(family)
    return [f for f, used in ((CNN_FILE, use_cnn), (MEASUREMENTS_FILE, use_forest)) if used]

