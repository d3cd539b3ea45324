"""PyTorch helpers shared by the torch steps (the classifier and the U-Net segmentation
backend): the device to use, and loading a file without ever running code from it.

Imports torch at module level: only modules that run under torch import this one (never a
process that has loaded TensorFlow).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import InputFileError, OptionError, OrgasegError


def resolve_device(device: str | None) -> str:
    """The torch device to use: ``device`` checked, or "cuda" when available else "cpu"."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise OptionError(f"device {device!r} is not a valid torch device (use 'cpu' or 'cuda')") from exc
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise OrgasegError(f"device {device!r} requested but no CUDA GPU is available; use 'cpu'")
    if parsed.type not in ("cpu", "cuda"):
        raise OptionError(f"device {device!r} is not supported; use 'cpu' or 'cuda'")
    return str(parsed)


def torch_load(path: Path, *, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file and say why."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, f"{what} does not exist")
    if not path.is_file():
        raise InputFileError(path, f"{what} is not a file")
    if path.stat().st_size == 0:
        raise InputFileError(path, f"{what} is empty (0 bytes)")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        # TorchScript archives hold code/ and constants.pkl next to data.pkl.
        if any(n.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for n in names):
            raise InputFileError(path, f"{what} is a TorchScript model, not a file of plain "
                                       "tensors as orgaseg writes them")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # e.g. "Unsupported operand": not a pickle at all
            raise InputFileError(path, f"{what} is corrupt or not a PyTorch file") from exc
        raise InputFileError(
            path, f"{what} is unsafe (contains code: Python objects that loading would "
                  "create), refused; only plain tensors and values are accepted, loading never "
                  "runs code from a file") from exc
    except Exception as exc:  # zip/pickle/storage errors: all mean a damaged or foreign file
        raise InputFileError(path, f"{what} is corrupt or not a PyTorch file "
                                   f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
