"""Crops as classifier inputs: reading, input size and normalisation, augmentation, datasets.

A crop (grey or colour, 8/16-bit or float, any size) becomes one network input like this:

1. grey (:func:`orgaseg_core.common.images.to_grey`), scaled to [0, 1] by its dtype's range
   (:func:`to_unit`): uint8 / 255, uint16 / 65535, floats as they are when within [0, 1]
   (else / 255 or / 65535, whichever range holds them);
2. resized keeping its aspect ratio so that its longer side is ``input_size`` pixels
   (bilinear; smoothed first when shrinking, against aliasing) and centred on a square of
   ``input_size`` x ``input_size`` pixels whose remaining area is filled with the median of
   the crop's border pixels, i.e. with the crop's background (:func:`prepare_crop`).
   Padding with the background instead of black keeps the padded area from looking like an
   object, and every crop keeps its shape (no stretching);
3. normalised with the mean and standard deviation of the prepared training crops
   (:func:`normalisation_stats`), recorded in the checkpoint.

Training crops are also augmented (:func:`augment_params` / :func:`prepare_crop`): random
flips and 90-degree rotations (organoids have no preferred orientation), a random margin of
background (the border median) on each side, up to 30 % of the crop's longer side, a small
affine change (rotation +-15 degrees, scale 0.9-1.1, shift up to 5 % of the input size) and a
brightness/contrast jitter (+-15 %). The margins matter: QuPath's crops are the objects'
bounding boxes, while crops cut by ``extract-objects`` carry ``--padding`` pixels of context,
so at prediction time the same organoid fills less of its crop. Without them a model trained
on QuPath crops confuses classes that differ in how they fill their box (on the demo data
macro-F1 fell from 0.97 to 0.89 with a 10 px padding and to 0.61 with 20 px).

Every random choice comes from ``numpy.random.default_rng([seed, epoch, index])``, so an
item's augmentation depends only on the seed, the epoch and the item, never on the number of
DataLoader workers or their order.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

from ..common.errors import InputFileError, OrgasegError
from ..common.images import is_image_file, read_image, to_grey

log = logging.getLogger(__name__)

#: Learned input size: this percentile of the crops' longer sides ...
INPUT_SIZE_PERCENTILE = 50.0
#: ... rounded to the nearest multiple of this (the networks downsample by 32) ...
INPUT_SIZE_MULTIPLE = 32
#: ... and clipped to this range (pixels).
INPUT_SIZE_RANGE = (64, 224)

#: Augmentation ranges (training only).
ROTATION_DEGREES = 15.0
SCALE_RANGE = (0.9, 1.1)
MARGIN_FRACTION = 0.3
SHIFT_FRACTION = 0.05
BRIGHTNESS = 0.15
CONTRAST = 0.15


def preprocessing_description() -> dict:
    """How crops become inputs, as plain values (stored in the checkpoint and the report)."""
    return {
        "grey": "luminance 0.2125 R + 0.7154 G + 0.0721 B for colour crops",
        "scaling": "to [0, 1] by dtype range (uint8 / 255, uint16 / 65535)",
        "resize": "keep aspect ratio, longer side = input_size, bilinear (smoothed when shrinking)",
        "padding": "centred, filled with the median of the crop's border pixels",
        "normalisation": "(x - mean) / std of the prepared training crops",
        "augmentation": {"flips": True, "rot90": True, "margin_fraction": MARGIN_FRACTION,
                         "rotation_degrees": ROTATION_DEGREES,
                         "scale": list(SCALE_RANGE), "shift_fraction": SHIFT_FRACTION,
                         "brightness": BRIGHTNESS, "contrast": CONTRAST},
    }


# ----------------------------------------------------------------------------------------------
# Array functions


def to_unit(image: np.ndarray) -> np.ndarray:
    """Grey float32 (Y, X) in [0, 1] from a grey or colour crop, scaled by its dtype's range."""
    grey = to_grey(image)
    if grey.dtype == np.uint8:
        return grey.astype(np.float32) / 255.0
    if grey.dtype == np.uint16:
        return grey.astype(np.float32) / 65535.0
    if np.issubdtype(grey.dtype, np.integer):
        info = np.iinfo(grey.dtype)
        top = 255.0 if grey.max(initial=0) <= 255 else 65535.0 if grey.max(initial=0) <= 65535 else float(info.max)
        return np.clip(grey.astype(np.float32) / top, 0.0, 1.0)
    grey = grey.astype(np.float32, copy=False)
    finite = grey[np.isfinite(grey)]
    top = float(finite.max()) if finite.size else 1.0
    scale = 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else 65535.0
    return np.clip(np.nan_to_num(grey / scale), 0.0, 1.0).astype(np.float32)


def border_median(grey: np.ndarray) -> float:
    """Median of the outermost row/column pixels of a (Y, X) crop: its background level."""
    if grey.shape[0] <= 2 or grey.shape[1] <= 2:
        return float(np.median(grey))
    border = np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])
    return float(np.median(border))


@dataclass(frozen=True)
class Augmentation:
    """One random draw of the training augmentation (identity by default)."""

    flip: bool = False           # mirror left-right (before the rotation)
    rot90: int = 0               # quarter turns, 0-3
    margins: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # top, bottom, left, right
    angle: float = 0.0           # degrees, counter-clockwise
    scale: float = 1.0           # on top of the fit to the input size
    shift: tuple[float, float] = (0.0, 0.0)  # (rows, columns) in pixels of the input
    brightness: float = 1.0      # multiplies the grey values
    contrast: float = 1.0        # scales deviations from the crop's mean


def augment_params(rng: np.random.Generator, input_size: int) -> Augmentation:
    """Draw one training augmentation for an input of ``input_size`` pixels."""
    shift = SHIFT_FRACTION * input_size
    return Augmentation(
        flip=bool(rng.integers(2)), rot90=int(rng.integers(4)),
        margins=tuple(float(v) for v in rng.uniform(0.0, MARGIN_FRACTION, size=4)),
        angle=float(rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES)),
        scale=float(rng.uniform(*SCALE_RANGE)),
        shift=(float(rng.uniform(-shift, shift)), float(rng.uniform(-shift, shift))),
        brightness=float(rng.uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS)),
        contrast=float(rng.uniform(1 - CONTRAST, 1 + CONTRAST)),
    )


def prepare_crop(unit: np.ndarray, input_size: int, augmentation: Augmentation | None = None
                 ) -> np.ndarray:
    """A crop (float (Y, X) in [0, 1], see :func:`to_unit`) as an (S, S) float32 input, S = input_size.

    The crop is fitted into the square keeping its aspect ratio (longer side = S) and centred;
    the rest is filled with the crop's border median. With ``augmentation`` the flip/rotations
    come first, then one affine resampling applies fit, rotation, scale and shift together (one
    interpolation only), then brightness and contrast. Values are not normalised here.
    """
    crop = np.asarray(unit, dtype=np.float32)
    if crop.ndim != 2 or crop.size == 0:
        raise OrgasegError(f"a crop must be a non-empty (Y, X) array, got shape {crop.shape}")
    aug = augmentation or Augmentation()
    if aug.flip:
        crop = crop[:, ::-1]
    if aug.rot90:
        crop = np.rot90(crop, aug.rot90)
    fill = border_median(crop)
    if any(aug.margins):
        longer = max(crop.shape)
        top, bottom, left, right = (int(round(f * longer)) for f in aug.margins)
        crop = np.pad(crop, ((top, bottom), (left, right)), mode="constant", constant_values=fill)
    scale = input_size / max(crop.shape) * aug.scale  # output pixels per crop pixel
    if scale < 1.0:
        # Gaussian smoothing before shrinking (as skimage.transform.resize's anti_aliasing).
        crop = ndimage.gaussian_filter(crop, sigma=(1.0 / scale - 1.0) / 2.0, mode="nearest")
    theta = math.radians(aug.angle)
    cos, sin = math.cos(theta), math.sin(theta)
    # Output pixel o (row, col) samples crop position  R(-theta) (o - c_out - shift) / scale + c_in.
    matrix = np.array([[cos, sin], [-sin, cos]]) / scale
    c_in = (np.array(crop.shape, dtype=np.float64) - 1.0) / 2.0
    c_out = np.full(2, (input_size - 1.0) / 2.0) + np.asarray(aug.shift)
    offset = c_in - matrix @ c_out
    out = ndimage.affine_transform(np.ascontiguousarray(crop), matrix, offset=offset,
                                   output_shape=(input_size, input_size), order=1,
                                   mode="constant", cval=fill, prefilter=False)
    if aug.brightness != 1.0 or aug.contrast != 1.0:
        out *= aug.brightness
        mean = float(out.mean())
        out = (out - mean) * aug.contrast + mean
        np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32, copy=False)


def learn_input_size(longer_sides: Sequence[int], *, percentile: float = INPUT_SIZE_PERCENTILE,
                     multiple: int = INPUT_SIZE_MULTIPLE, size_range: tuple[int, int] = INPUT_SIZE_RANGE
                     ) -> int:
    """Input size (pixels) from the training crops' longer sides.

    The ``percentile`` (default: the median) of the longer sides, rounded to the nearest
    ``multiple`` of 32 and clipped to ``size_range``. The median crop then keeps about its
    own resolution: larger crops are shrunk a little, smaller ones enlarged, and the cost of
    training (which grows with the square of the size) stays tied to the typical object.
    """
    if len(longer_sides) == 0:
        raise OrgasegError("cannot learn an input size without training crops")
    value = float(np.percentile(np.asarray(longer_sides, dtype=np.float64), percentile))
    rounded = int(multiple * max(1, round(value / multiple)))
    return int(np.clip(rounded, *size_range))


def normalisation_stats(units: Sequence[np.ndarray], input_size: int) -> tuple[float, float]:
    """(mean, std) of the prepared, not augmented training inputs (values in [0, 1]).

    Computed over all pixels of all crops as the network sees them (fitted and padded), so the
    padding is counted as it will appear. A std below 1e-6 (blank crops) becomes 1.
    """
    if len(units) == 0:
        raise OrgasegError("cannot compute the normalisation without training crops")
    total = total_sq = 0.0
    count = 0
    for unit in units:
        x = prepare_crop(unit, input_size).astype(np.float64)
        total += float(x.sum())
        total_sq += float(np.square(x).sum())
        count += x.size
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 0.0))
    return float(mean), float(std if std > 1e-6 else 1.0)


def class_weights(counts: Sequence[int]) -> np.ndarray:
    """Inverse-frequency class weights ``N / (K * n_c)`` for the cross-entropy loss.

    ``counts``: training crops per class (all > 0). A balanced set gets weights 1; a class
    with half the average count gets 2. The weighted mean over the training crops is 1, so the
    loss scale (and the learning rate's meaning) does not change with the imbalance.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.size == 0 or np.any(counts <= 0):
        raise OrgasegError(f"every class needs training crops to weight it, got counts {counts.tolist()}")
    return counts.sum() / (counts.size * counts)


# ----------------------------------------------------------------------------------------------
# Folders


def class_folders(folder: Path) -> list[Path]:
    """Visible sub-folders of ``folder``, sorted by name (ImageFolder order)."""
    return sorted(p for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith("."))


def list_class_images(folder: Path) -> list[Path]:
    """Image files (TIFF, PNG, JPEG) directly in a class folder, sorted."""
    return sorted(p for p in Path(folder).iterdir() if is_image_file(p))


def read_crops(files: Sequence[Path]) -> tuple[list[np.ndarray | None], list[tuple[Path, str]]]:
    """Read crops as grey arrays (native dtype). Unreadable ones give None and an (path, error)."""
    greys: list[np.ndarray | None] = []
    errors: list[tuple[Path, str]] = []
    for path in files:
        try:
            grey = to_grey(read_image(path))
            if grey.size == 0:
                raise InputFileError(path, "image has no pixels")
        except (InputFileError, OrgasegError) as exc:
            log.warning("%s", exc)
            errors.append((Path(path), str(exc)))
            greys.append(None)
            continue
        greys.append(grey)
    return greys, errors


# ----------------------------------------------------------------------------------------------
# torch dataset


class CropDataset(torch.utils.data.Dataset):
    """Grey crops and class indices as normalised (1, S, S) float32 tensors and int labels.

    ``greys``: grey crops in their own dtype (converted with :func:`to_unit` per item, which
    keeps 8-bit data small in memory). ``augment``: random training augmentation drawn from
    ``default_rng([seed, epoch, index])``; call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, greys: Sequence[np.ndarray], labels: Sequence[int], *, input_size: int,
                 mean: float, std: float, augment: bool = False, seed: int = 0):
        if len(greys) != len(labels):
            raise ValueError("greys and labels differ in length")
        self.greys = list(greys)
        self.labels = [int(v) for v in labels]
        self.input_size = int(input_size)
        self.mean = float(mean)
        self.std = float(std)
        self.augment = bool(augment)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.greys)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        aug = None
        if self.augment:
            aug = augment_params(np.random.default_rng([self.seed, self.epoch, int(index)]),
                                 self.input_size)
        x = prepare_crop(to_unit(self.greys[index]), self.input_size, aug)
        x = (x - self.mean) / self.std
        return torch.from_numpy(x[None].astype(np.float32, copy=False)), self.labels[index]


def _seed_worker(worker_id: int) -> None:
    # Items draw their own generators; this only pins numpy's and random's global state
    # (for any third-party code in the worker) to torch's per-worker seed.
    import random

    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: CropDataset, *, batch_size: int, shuffle: bool, seed: int,
                num_workers: int = 0, drop_last: bool = False) -> torch.utils.data.DataLoader:
    """A seeded DataLoader: the shuffling order depends only on ``seed`` and the epoch."""
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return torch.utils.data.DataLoader(
        dataset, batch_size=int(batch_size), shuffle=shuffle, num_workers=int(num_workers),
        drop_last=drop_last, generator=generator, worker_init_fn=_seed_worker,
        persistent_workers=False)
