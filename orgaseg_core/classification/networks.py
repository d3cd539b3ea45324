"""Classifier networks (torchvision architectures) and orgaseg's self-describing checkpoint.

Networks see ONE grey channel: the first convolution of each torchvision architecture is
replaced by a 1-channel one (a third of its cost on a grey image repeated three times, with
the same result: ImageNet weights given as ``weights`` are summed over their three colour
channels, which is exactly what a grey image repeated to RGB would see). Inputs are tensors
shaped (N, 1, S, S), S = the checkpoint's ``input_size`` in pixels.

Checkpoint (``model.pt``, written with :func:`torch.save`, read with
``torch.load(weights_only=True)`` so that loading a file never runs code from it)::

    {"format": "orgaseg-classifier", "format_version": 1,
     "architecture": "resnet18", "class_names": ["Branched", ...], "input_size": 96,
     "in_channels": 1, "normalisation": {"mean": 0.71, "std": 0.17},
     "preprocessing": {...how crops become inputs...}, "state_dict": {...tensors...},
     "metrics": {...}, "arguments": {...}, "versions": {...}}

Only tensors, str, int, float, bool, None, lists and dicts are inside, so prediction needs
nothing but this file (no training folder, no class list, no normalisation file).

torch is imported here at module level: this module is only imported by the torch steps
(train-classifier, classify) and must never be imported together with TensorFlow.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..common.errors import InputFileError, OrgasegError
from ..common.outputs import atomic_path
from ..common.torch_io import resolve_device, torch_load  # noqa: F401 (resolve_device: public here too)

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "orgaseg-classifier"
CHECKPOINT_VERSION = 1
IN_CHANNELS = 1

#: Supported architectures -> smallest input size (pixels) they are allowed to run at.
#: Every one of them ends in an adaptive pooling layer, so any size from 32 px on gives a
#: valid forward pass (the deepest feature map is then 1x1); below that the strided stems
#: and downsampling stages leave nothing to pool. 32 px is the floor for all of them.
ARCHITECTURES: dict[str, int] = {
    "resnet18": 32,
    "resnet50": 32,
    "resnext50_32x4d": 32,
    "wide_resnet50_2": 32,
    "densenet121": 32,
    "efficientnet_b0": 32,
    "mobilenet_v3_small": 32,
    "convnext_tiny": 32,
}

#: Keys every checkpoint must have.
CHECKPOINT_KEYS = ("format", "format_version", "architecture", "class_names", "input_size",
                   "normalisation", "in_channels", "state_dict", "metrics", "arguments", "versions")


def validate_architecture(name: str) -> str:
    """Return ``name`` if it is a supported architecture, else raise OrgasegError listing them."""
    if name not in ARCHITECTURES:
        raise OrgasegError(f"unknown architecture {name!r}; supported: {', '.join(ARCHITECTURES)}")
    return name


def min_input_size(architecture: str) -> int:
    """Smallest input size (pixels) ``architecture`` accepts."""
    return ARCHITECTURES[validate_architecture(architecture)]


#: Crops are resized to at most this side; a checkpoint asking for more is not one of ours.
MAX_INPUT_SIZE = 2048


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise OrgasegError(f"{type(model).__name__} has no convolution to adapt")  # pragma: no cover


def _last_linear(model: nn.Module) -> str:
    """Name of the network's final Linear layer (its classification head)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return names[-1]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def build_model(architecture: str, num_classes: int, *, in_channels: int = IN_CHANNELS) -> nn.Module:
    """A randomly initialised torchvision ``architecture`` for ``num_classes`` classes.

    The first convolution takes ``in_channels`` channels (1 = grey). No weights are ever
    downloaded (``weights=None``); use :func:`load_weights` for a local file.
    """
    import torchvision

    validate_architecture(architecture)
    if num_classes < 2:
        raise OrgasegError(f"a classifier needs at least 2 classes, got {num_classes}")
    model = torchvision.models.get_model(architecture, weights=None, num_classes=int(num_classes))
    name, conv = _first_conv(model)
    if conv.in_channels != in_channels:
        new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                        conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                        conv.padding_mode)
        _set_submodule(model, name, new)
    return model


def load_weights(model: nn.Module, path: Path) -> dict[str, Any]:
    """Initialise ``model`` from a local weights file (no downloads).

    ``path``: a torchvision ``state_dict`` of the same architecture (e.g. ImageNet weights
    saved with ``torch.save(model.state_dict(), path)``) or an orgaseg checkpoint. RGB weights
    of the first convolution are summed over their colour channels for the grey input; the
    classification head is kept random when its shape differs (another number of classes).
    Any other missing or mismatching tensor is an error naming the file. Returns a summary
    (tensors loaded, head kept random, first convolution adapted).
    """
    path = Path(path)
    state = torch_load(path, what="weights file")
    if isinstance(state, Mapping) and state.get("format") == CHECKPOINT_FORMAT:
        state = state.get("state_dict")
    return load_state(model, state, source=path)


def load_state(model: nn.Module, state: Any, *, source: Path | str) -> dict[str, Any]:
    """Initialise ``model`` from a state_dict ``state`` (read from ``source``, named in errors);
    the rules of :func:`load_weights`."""
    path = Path(source)
    if not isinstance(state, Mapping) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise InputFileError(path, "is not a state_dict (a dictionary of named tensors) or an "
                                   "orgaseg classifier checkpoint")
    own = model.state_dict()
    conv_name, _ = _first_conv(model)
    head = _last_linear(model)
    adapted, loaded, skipped_head, problems = False, {}, [], []
    for key, target in own.items():
        found = state.get(key)
        if found is not None and found.shape == target.shape:
            loaded[key] = found.to(target.dtype)
        elif (found is not None and key == f"{conv_name}.weight" and found.ndim == 4
              and target.shape[1] == 1 and found.shape[0] == target.shape[0]
              and found.shape[2:] == target.shape[2:]):
            # A grey image repeated to C channels gives sum over C of w_c * x: sum the weights.
            loaded[key] = found.sum(dim=1, keepdim=True).to(target.dtype)
            adapted = True
        elif key.startswith(head + "."):
            skipped_head.append(key)
        elif key.endswith("num_batches_tracked"):
            continue
        else:
            problems.append(key if found is None else
                            f"{key} (file {tuple(found.shape)}, model {tuple(target.shape)})")
    if problems:
        shown = ", ".join(problems[:5]) + (f", ... ({len(problems) - 5} more)" if len(problems) > 5 else "")
        raise InputFileError(path, f"weights do not fit the {type(model).__name__} architecture: "
                                   f"{len(problems)} tensors missing or of another shape ({shown})")
    model.load_state_dict(loaded, strict=False)
    log.info("read %d weight tensors from %s%s%s", len(loaded), path,
             "; first convolution summed to 1 grey channel" if adapted else "",
             f"; classification head ({head}) left random" if skipped_head else "")
    return {"tensors": len(loaded), "head_random": bool(skipped_head), "first_conv_adapted": adapted}


def pretrained_state(architecture: str) -> tuple[dict[str, Any], str]:
    """torchvision's default pretrained weights of ``architecture`` (ImageNet) and their name.

    torchvision downloads them once into its cache (``$TORCH_HOME/hub/checkpoints/``, by
    default ``~/.cache/torch``) and reads them from there afterwards, so this works offline
    when the cache holds the file. Loaded with ``weights_only=True`` (no code from the file).
    Raises OrgasegError saying where the file is expected when it is neither cached nor
    downloadable.
    """
    import torch.hub
    from torchvision.models import get_model_weights

    weights = get_model_weights(validate_architecture(architecture)).DEFAULT
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        state = weights.get_state_dict(progress=True, weights_only=True, map_location="cpu")
    except Exception as exc:  # URLError, HTTPError, OSError, unpickling errors ...
        raise OrgasegError(f"pretrained weights {weights} of {architecture} are not in the torchvision "
                           f"cache ({target}) and could not be downloaded ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); put the file "
                           f"there, or give a local file with --weights") from exc
    return state, f"{weights} ({target})"


# ----------------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class Checkpoint:
    """A loaded orgaseg classifier checkpoint (see the module notes for the file layout)."""

    path: Path
    architecture: str
    class_names: list[str]
    input_size: int
    mean: float
    std: float
    in_channels: int
    state_dict: dict[str, torch.Tensor]
    format_version: int = CHECKPOINT_VERSION
    preprocessing: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    arguments: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)

    def build(self, device: str | torch.device = "cpu") -> nn.Module:
        """The network with the checkpoint's weights, in evaluation mode, on ``device``."""
        model = build_model(self.architecture, len(self.class_names), in_channels=self.in_channels)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            raise InputFileError(self.path, f"weights do not fit a {self.architecture} with "
                                            f"{len(self.class_names)} classes ({exc})") from exc
        return model.to(device).eval()


def plain(value: Any) -> Any:
    """``value`` converted to the plain types ``torch.load(weights_only=True)`` accepts.

    numpy scalars/arrays -> Python numbers/lists, tuples -> lists, Paths -> str, dict keys -> str.
    """
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    if value is None or isinstance(value, (str, int, float, bool, torch.Tensor)):
        return value
    return str(value)


def save_checkpoint(path: Path, model: nn.Module, *, architecture: str, class_names: list[str],
                    input_size: int, mean: float, std: float, preprocessing: Mapping[str, Any],
                    metrics: Mapping[str, Any], arguments: Mapping[str, Any],
                    versions: Mapping[str, Any]) -> Path:
    """Write a self-describing checkpoint atomically (weights moved to the CPU)."""
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "architecture": str(architecture),
        "class_names": [str(c) for c in class_names],
        "input_size": int(input_size),
        "normalisation": {"mean": float(mean), "std": float(std)},
        "in_channels": int(_first_conv(model)[1].in_channels),
        "preprocessing": plain(preprocessing),
        "state_dict": state,
        "metrics": plain(metrics),
        "arguments": plain(arguments),
        "versions": plain(versions),
    }
    with atomic_path(Path(path)) as tmp:
        torch.save(checkpoint, tmp)
    log.info("wrote the checkpoint %s (%s, %d classes, input %d px)", path, architecture,
             len(class_names), input_size)
    return Path(path)


def load_checkpoint(path: Path) -> Checkpoint:
    """Read and check an orgaseg classifier checkpoint (``model.pt`` of train-classifier).

    Raises InputFileError naming the file when it is missing, empty, corrupt, not ours (a plain
    state_dict, a TorchScript model, a pickle of Python objects), of an unknown format version,
    or lacks keys.
    """
    path = Path(path)
    data = torch_load(path, what="model file")
    if not isinstance(data, Mapping):
        raise InputFileError(path, f"is not an orgaseg classifier checkpoint (it holds a "
                                   f"{type(data).__name__}, not a dictionary)")
    if data.get("format") != CHECKPOINT_FORMAT:
        if data and all(isinstance(v, torch.Tensor) for v in data.values()):
            raise InputFileError(path, "is a plain state_dict (weights only), not an orgaseg classifier "
                                       "checkpoint: it does not say its architecture, classes, input "
                                       "size or normalisation; use the model.pt written by "
                                       "train-classifier (a state_dict can be given to it as --weights)")
        raise InputFileError(path, "is not an orgaseg classifier checkpoint (no "
                                   f"'format': '{CHECKPOINT_FORMAT}' entry)")
    version = data.get("format_version")
    if version != CHECKPOINT_VERSION:
        raise InputFileError(path, f"has checkpoint format version {version!r}; this orgaseg reads "
                                   f"version {CHECKPOINT_VERSION} (update orgaseg-core, or retrain)")
    missing = [k for k in CHECKPOINT_KEYS if k not in data]
    if missing:
        raise InputFileError(path, f"checkpoint lacks the entries {', '.join(missing)}")
    try:
        architecture = validate_architecture(data["architecture"])
        class_names = [str(c) for c in data["class_names"]]
        input_size = int(data["input_size"])
        mean = float(data["normalisation"]["mean"])
        std = float(data["normalisation"]["std"])
        in_channels = int(data["in_channels"])
    except (OrgasegError, KeyError, TypeError, ValueError) as exc:
        raise InputFileError(path, f"checkpoint has an invalid description ({exc})") from exc
    if len(class_names) < 2 or not std > 0 or input_size < min_input_size(architecture):
        raise InputFileError(path, f"checkpoint has an invalid description ({len(class_names)} "
                                   f"classes, input size {input_size}, std {std})")
    if not (math.isfinite(mean) and math.isfinite(std)):
        raise InputFileError(path, f"checkpoint has an invalid normalisation (mean {mean}, std {std})")
    if len(set(class_names)) != len(class_names):
        doubles = sorted({c for c in class_names if class_names.count(c) > 1})
        raise InputFileError(path, f"checkpoint names a class more than once ({', '.join(doubles)})")
    if input_size > MAX_INPUT_SIZE:
        raise InputFileError(path, f"checkpoint's input size {input_size} px is beyond "
                                   f"{MAX_INPUT_SIZE} px; refused (it would need huge tensors)")
    if not isinstance(data["state_dict"], dict):
        raise InputFileError(path, "checkpoint's state_dict is not a dictionary of tensors")
    return Checkpoint(path=path, architecture=architecture, class_names=class_names,
                      input_size=input_size, mean=mean, std=std, in_channels=in_channels,
                      state_dict=dict(data["state_dict"]), format_version=version,
                      preprocessing=dict(data.get("preprocessing") or {}),
                      metrics=dict(data["metrics"]), arguments=dict(data["arguments"]),
                      versions=dict(data["versions"]))
