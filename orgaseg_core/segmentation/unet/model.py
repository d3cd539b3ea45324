"""The U-Net model folder: what ``segment`` needs, checked before anything runs.

::

    model/unet.pt               the network's weights: a state dict of plain tensors, written
                                with torch.save, read with weights_only=True (no code runs)
    model/orgaseg_model.json    kind "orgaseg-unet", architecture, scale, normalisation,
                                grey-level preprocessing, region parameters chosen on the
                                validation images, training arguments and history, data, versions
    model/report.json, .csv     validation report
    model/run.json              how the folder was made

``orgaseg_model.json`` is written last, so an interrupted training leaves a folder that is
refused. :func:`check_unet_folder` needs no torch; :func:`load_unet` imports it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...common.errors import InputFileError, OrgasegError
from ..forest.regions import RegionParams
from ..model import ORGASEG_MODEL_JSON, check_percentiles, read_json_file

log = logging.getLogger(__name__)

UNET_KIND = "orgaseg-unet"
UNET_FORMAT_VERSION = 1
UNET_FILE = "unet.pt"
#: what an architecture may hold (bounded: a folder asking for more is not ours)
ARCHITECTURE_LIMITS = {"base": (4, 128), "depth": (1, 7), "n_classes": (3, 3), "in_channels": (1, 1)}


@dataclass
class UNetInfo:
    """What orgaseg knows about a U-Net folder (from ``orgaseg_model.json``).

    scale: pixel scale the network works at, relative to the original images.
    architecture: {"base", "depth", "n_classes", "in_channels"} of :class:`.network.UNet`.
    """

    folder: Path
    scale: float
    norm_percentiles: tuple[float, float]
    architecture: dict[str, int]
    regions: RegionParams
    preprocessing: dict[str, bool] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def thresholds(self) -> dict[str, float]:
        """The region parameters (reported where a StarDist model reports its thresholds)."""
        return self.regions.as_dict()

    @property
    def multiple(self) -> int:
        """The network's input sides must be multiples of this (px)."""
        return 2 ** int(self.architecture["depth"])

    def describe(self) -> str:
        a = self.architecture
        return (f"U-Net {self.folder}: depth {a['depth']}, {a['base']} channels, scale {self.scale:g}, "
                f"{self.regions.describe()}")


def check_architecture(values: Any) -> dict[str, int]:
    """The architecture entry, checked against :data:`ARCHITECTURE_LIMITS` (ValueError)."""
    if not isinstance(values, dict):
        raise ValueError(f"architecture must be an object, got {type(values).__name__}")
    out = {}
    for key, (low, high) in ARCHITECTURE_LIMITS.items():
        value = values.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"architecture {key} must be a whole number within {low}-{high}, got {value!r}")
        out[key] = value
    return out


def check_unet_folder(folder: Path) -> UNetInfo:
    """Check that ``folder`` is a complete U-Net model; clear errors naming the file."""
    folder = Path(folder)
    meta_path = folder / ORGASEG_MODEL_JSON
    meta = read_json_file(meta_path, what="orgaseg model description")
    if not isinstance(meta, dict) or meta.get("kind") != UNET_KIND:
        raise InputFileError(meta_path, f"does not describe a {UNET_KIND!r} model")
    version = meta.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= UNET_FORMAT_VERSION:
        raise InputFileError(meta_path, f"has format version {version!r}; this orgaseg reads "
                                        f"versions 1 to {UNET_FORMAT_VERSION} (update orgaseg)")
    if not (folder / UNET_FILE).is_file():
        raise InputFileError(folder, f"is not a usable U-Net model: {UNET_FILE} is missing")
    try:
        scale = float(meta["scale"])
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a positive number, got {scale}")
        architecture = check_architecture(meta["architecture"])
        regions = RegionParams.from_dict(meta["regions"])
        percentiles = check_percentiles(meta["norm_percentiles"])
        preprocessing = {k: bool(v) for k, v in (meta.get("preprocessing") or {}).items()}
    except (KeyError, TypeError, ValueError, OrgasegError) as exc:
        raise InputFileError(meta_path, f"has a missing or invalid entry: {exc}") from exc
    return UNetInfo(folder=folder, scale=scale, norm_percentiles=percentiles, architecture=architecture,
                    regions=regions, preprocessing=preprocessing, metadata=meta)


def import_torch():
    """torch, with a clear error when it is not installed."""
    try:
        import torch
    except ImportError as exc:
        raise OrgasegError("the U-Net backend needs PyTorch, which is not installed: "
                           "pip install 'orgaseg-core[classification]'") from exc
    return torch


@dataclass
class LoadedUNet:
    """A U-Net ready to predict (eval mode, on ``device``), with orgaseg's description of it."""

    network: Any  # .network.UNet
    info: UNetInfo
    device: str = "cpu"


def read_unet_weights(path: Path, architecture: dict[str, int]):
    """The network of ``architecture`` with the weights of ``path`` (a state dict of tensors,
    loaded without running code), refused by name when they do not fit it."""
    import_torch()
    from ...common.torch_io import torch_load
    from .network import UNet

    state = torch_load(path, what="U-Net weights file")
    if not isinstance(state, dict):
        raise InputFileError(path, f"is not a U-Net weights file (a {type(state).__name__}, not a state dict)")
    network = UNet(**architecture)
    try:
        network.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, KeyError) as exc:
        raise InputFileError(path, "does not fit the U-Net its orgaseg_model.json describes: "
                                   + str(exc).splitlines()[0][:300]) from exc
    return network


def load_unet(folder: Path, device: str | None = None) -> LoadedUNet:
    """Load a U-Net folder (checked by :func:`check_unet_folder`) onto ``device`` (None: a CUDA
    GPU when there is one, else the CPU), in eval mode."""
    info = check_unet_folder(folder)
    network = read_unet_weights(Path(folder) / UNET_FILE, info.architecture)
    from ...common.torch_io import resolve_device

    device = resolve_device(device)
    network.to(device).eval()
    log.info("loaded %s on %s", info.describe(), device)
    return LoadedUNet(network=network, info=info, device=device)
