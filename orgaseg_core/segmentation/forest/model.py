"""The pixel-forest model folder: what ``segment`` needs, checked before anything runs.

::

    model/forest.skops          the scikit-learn random forest (skops format: loading it runs
                                no stored code; only sklearn's Tree type is trusted)
    model/orgaseg_model.json    kind "orgaseg-pixel-forest", scale, normalisation, grey-level
                                preprocessing, features, region parameters chosen on the
                                validation images, training arguments, data, versions
    model/report.json, .csv     validation report
    model/run.json              how the folder was made

``orgaseg_model.json`` is written last, so an interrupted training leaves a folder that is
refused. Needs scikit-learn and skops only when the forest is loaded.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from ...common.errors import InputFileError, OrgasegError
from ...common.skops_io import import_skops, read_random_forest, save_skops
from ..model import ORGASEG_MODEL_JSON, check_percentiles, read_json_file
from .features import FeatureSpec
from .regions import RegionParams

log = logging.getLogger(__name__)

FOREST_KIND = "orgaseg-pixel-forest"
FOREST_FORMAT_VERSION = 1
FOREST_FILE = "forest.skops"


@dataclass
class ForestInfo:
    """What orgaseg knows about a pixel-forest folder (from ``orgaseg_model.json``).

    scale: pixel scale the forest works at, relative to the original images.
    """

    folder: Path
    scale: float
    norm_percentiles: tuple[float, float]
    features: FeatureSpec
    regions: RegionParams
    preprocessing: dict[str, bool] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def thresholds(self) -> dict[str, float]:
        """The region parameters (reported where a StarDist model reports its thresholds)."""
        return self.regions.as_dict()

    def describe(self) -> str:
        return (f"pixel forest {self.folder}: scale {self.scale:g}, features sigma "
                f"{self.features.sigma_min:g}-{self.features.sigma_max:g} px ({self.features.num_sigma} "
                f"scales), {self.regions.describe()}")


def check_forest_folder(folder: Path) -> ForestInfo:
    """Check that ``folder`` is a complete pixel-forest model; clear errors naming the file."""
    folder = Path(folder)
    meta_path = folder / ORGASEG_MODEL_JSON
    meta = read_json_file(meta_path, what="orgaseg model description")
    if not isinstance(meta, dict) or meta.get("kind") != FOREST_KIND:
        raise InputFileError(meta_path, f"does not describe a {FOREST_KIND!r} model")
    version = meta.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FOREST_FORMAT_VERSION:
        raise InputFileError(meta_path, f"has format version {version!r}; this orgaseg reads "
                                        f"versions 1 to {FOREST_FORMAT_VERSION} (update orgaseg)")
    if not (folder / FOREST_FILE).is_file():
        raise InputFileError(folder, f"is not a usable pixel-forest model: {FOREST_FILE} is missing")
    try:
        scale = float(meta["scale"])
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a positive number, got {scale}")
        features = FeatureSpec(**{k: meta["features"][k] for k in ("sigma_min", "sigma_max", "num_sigma")})
        regions = RegionParams.from_dict(meta["regions"])
        percentiles = check_percentiles(meta["norm_percentiles"])
        preprocessing = {k: bool(v) for k, v in (meta.get("preprocessing") or {}).items()}
    except (KeyError, TypeError, ValueError, OrgasegError) as exc:
        raise InputFileError(meta_path, f"has a missing or invalid entry: {exc}") from exc
    return ForestInfo(folder=folder, scale=scale, norm_percentiles=percentiles, features=features,
                      regions=regions, preprocessing=preprocessing, metadata=meta)


def import_sklearn():
    """scikit-learn and skops, with a clear error when they are not installed."""
    return import_skops("the pixel forest", "segmentation")


def save_forest(forest, path: Path) -> None:
    """Write a fitted forest in skops format (atomically: a temporary file, then renamed)."""
    save_skops(forest, path, purpose="the pixel forest", extra="segmentation")


def read_forest_file(path: Path, n_features: int):
    """The random forest in the skops file ``path``, refused (InputFileError naming the file)
    unless it is a scikit-learn RandomForestClassifier of decision trees on ``n_features``
    features with classes within 0-2 (background, interior, boundary); see
    :func:`orgaseg_core.common.skops_io.read_random_forest`."""
    return read_random_forest(path, n_features=n_features, classes={0, 1, 2},
                              what="an orgaseg pixel forest", purpose="the pixel forest",
                              extra="segmentation")


@dataclass
class LoadedForest:
    """A pixel forest ready to predict, with orgaseg's description of it."""

    forest: Any  # sklearn.ensemble.RandomForestClassifier
    info: ForestInfo


def load_forest(folder: Path) -> LoadedForest:
    """Load a pixel-forest folder (checked by :func:`check_forest_folder`; the forest by
    :func:`read_forest_file`)."""
    info = check_forest_folder(folder)
    forest = read_forest_file(Path(folder) / FOREST_FILE, info.features.n_features)
    log.info("loaded %s", info.describe())
    return LoadedForest(forest=forest, info=info)
