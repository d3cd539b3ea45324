"""``preprocess``: grey conversion, vignette removal, background flattening, tiling, rescaling.

Images and their label images (masks) are processed together, paired by file-name stem.
Order of operations per image: grey -> vignette -> flatten -> tile -> rescale.
Arrays are (Y, X) grey or (Y, X, C) colour; sizes and coordinates are in pixels (row, column).

The pure array functions (:func:`to_grey`, :func:`remove_vignette`, :func:`flatten_background`,
:func:`tile_bounds`, :func:`split_tiles`, :func:`rescale_image`, :func:`rescale_labels`) take
and return numpy arrays; :func:`preprocess` walks the folders and writes the files.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm import tqdm

from .errors import InputFileError, OrgasegError
from .images import (index_by_stem, label_dtype, list_images, pair_by_stem, read_image,
                     read_labels, report_unmatched)
from .outputs import step_run, write_csv, write_tiff
from .params import parse_pair
from .resample import cast_like, nearest_indices, output_length, resize_2d

log = logging.getLogger(__name__)

#: Luminance weights (R, G, B) of ITU-R BT.709, as in scikit-image's ``rgb2gray``.
LUMINANCE_WEIGHTS = (0.2125, 0.7154, 0.0721)

TILES_CSV_COLUMNS = ["file", "source", "group", "tile_row", "tile_col", "y0", "x0", "y1", "x1",
                     "scale", "n_objects", "vanished_objects"]


# --------------------------------------------------------------------------- grey conversion

def to_grey(image: np.ndarray) -> np.ndarray:
    """Convert an image to one grey channel, shape (Y, X).

    - (Y, X): returned unchanged (floats as float32);
    - (Y, X, 1): the single channel;
    - (Y, X, 2) grey + alpha: the first channel;
    - (Y, X, 3) RGB or (Y, X, 4) RGBA: luminance 0.2125 R + 0.7154 G + 0.0721 B (alpha dropped).

    Integer inputs keep their dtype (uint8 stays uint8, uint16 stays uint16), rounded to the
    nearest value; float inputs give float32.
    """
    image = np.asarray(image)
    if image.dtype == np.bool_:
        image = image.astype(np.uint8)
    if image.ndim == 3 and image.shape[-1] in (1, 2):
        grey = image[..., 0]
    elif image.ndim == 3 and image.shape[-1] in (3, 4):
        # Accumulate channel by channel in float64: exact rounding, no (Y, X, 3) float copy.
        grey_f = image[..., 0].astype(np.float64)
        grey_f *= LUMINANCE_WEIGHTS[0]
        grey_f += LUMINANCE_WEIGHTS[1] * image[..., 1]
        grey_f += LUMINANCE_WEIGHTS[2] * image[..., 2]
        if np.issubdtype(image.dtype, np.integer):
            return cast_like(grey_f, image.dtype)
        return grey_f.astype(np.float32)
    elif image.ndim == 2:
        grey = image
    else:
        raise OrgasegError(f"cannot convert an array of shape {image.shape} to grey; "
                           "expected (Y, X) or (Y, X, C) with C in 1..4")
    if np.issubdtype(grey.dtype, np.floating):
        return grey.astype(np.float32, copy=False)
    return grey


# --------------------------------------------------------------------------- vignette

def _subsample(grey: np.ndarray, max_side: int = 1024) -> np.ndarray:
    """Every k-th pixel so the longer side is at most ``max_side`` (for robust statistics)."""
    step = max(1, int(np.ceil(max(grey.shape) / max_side)))
    return grey[::step, ::step]


def background_level(grey: np.ndarray) -> float:
    """Robust background grey level: the median of the central half of the image.

    The centre is used because a microscope vignette darkens the border; organoids cover a
    minority of the field, so the median is the background.
    """
    h, w = grey.shape
    centre = grey[h // 4: h - h // 4 or h, w // 4: w - w // 4 or w]
    return float(np.median(_subsample(centre)))


def vignette_mask(grey: np.ndarray, *, threshold: float = 0.4, min_area: float = 0.001,
                  smooth: int = 5) -> np.ndarray:
    """Boolean (Y, X) mask of the dark vignette: dark regions connected to the image border.

    A pixel is dark when its local mean (``smooth`` x ``smooth`` pixels, to ignore noise) is
    below ``threshold`` times the background level (:func:`background_level`). Dark connected
    regions (8-connectivity) that touch the border and cover at least ``min_area`` (fraction of
    the image) form the vignette; dark objects in the interior never touch the border and are
    kept, as are small dark specks at the border. Dark pixels within ``smooth // 2`` of the
    found vignette join it (the local mean shifts its edge). Limitation: a dark object that
    touches the border or the vignette is taken as part of the vignette.
    """
    if grey.ndim != 2:
        raise OrgasegError(f"vignette detection needs a grey (Y, X) image, got shape {grey.shape}")
    level = background_level(grey)
    if level <= 0:
        return np.zeros(grey.shape, dtype=bool)
    values = grey.astype(np.float32, copy=False)
    if smooth > 1:
        values = ndimage.uniform_filter(values, size=smooth, mode="nearest")
    dark = values < threshold * level
    if not dark.any():
        return dark
    labels, n = ndimage.label(dark, structure=np.ones((3, 3), dtype=bool))
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    border_ids = np.unique(border[border > 0])
    if border_ids.size == 0:
        return np.zeros(grey.shape, dtype=bool)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = border_ids[sizes[border_ids] >= min_area * grey.size]
    lut = np.zeros(n + 1, dtype=bool)
    lut[keep] = True
    mask = lut[labels]
    if smooth > 1 and mask.any():
        # The local mean blurs the vignette's edge by smooth // 2 pixels; take back the dark
        # pixels there so no thin dark line stays along the edge.
        grow = 2 * (smooth // 2) + 1
        near = ndimage.maximum_filter(mask.view(np.uint8), size=grow).view(bool)
        mask |= near & (grey < threshold * level)
    return mask


def remove_vignette(grey: np.ndarray, *, threshold: float = 0.4, min_area: float = 0.001,
                    return_mask: bool = False):
    """Replace the dark microscope vignette with the median of the remaining image.

    The vignette is found by :func:`vignette_mask` (dark regions touching the border, darker
    than ``threshold`` x background level). Returns the cleaned grey image (same shape and
    dtype as ``grey``), or ``(image, mask)`` with ``return_mask=True``.
    """
    mask = vignette_mask(grey, threshold=threshold, min_area=min_area)
    result = grey.copy()
    if mask.any() and not mask.all():
        rest = grey[~mask]
        fill = float(np.median(rest[:: max(1, rest.size // 1_000_000)]))
        result[mask] = cast_like(np.array(fill), grey.dtype)
        log.debug("vignette: %d pixels (%.1f %%) set to %.1f", mask.sum(), 100 * mask.mean(), fill)
    return (result, mask) if return_mask else result


# --------------------------------------------------------------------------- background

def estimate_background(grey: np.ndarray, *, sigma_fraction: float = 0.125,
                        work_side: int = 128) -> np.ndarray:
    """Smooth illumination estimate of a grey image, float64 (Y, X), without any mask.

    Works on a copy shrunk (area means) so its shorter side is about ``work_side`` pixels:
    a grey closing (window ``sigma_fraction`` of the shorter side) removes dark objects such as
    organoids, then a Gaussian (sigma = ``sigma_fraction`` of the shorter side) smooths; the
    result is enlarged back with linear interpolation. Cost: linear in the pixels, small constant.
    """
    h, w = grey.shape
    factor = min(1.0, work_side / min(h, w))
    small_shape = (output_length(h, factor), output_length(w, factor))
    small = resize_2d(grey, small_shape)
    size = max(3, int(round(sigma_fraction * min(small_shape))) | 1)
    # Organoids are darker than the background: a closing (max then min filter) fills them.
    small = ndimage.grey_closing(small, size=(size, size), mode="nearest")
    small = ndimage.gaussian_filter(small, sigma=sigma_fraction * min(small_shape), mode="nearest")
    return resize_2d(small, (h, w))


def flatten_background(grey: np.ndarray, *, sigma_fraction: float = 0.125) -> np.ndarray:
    """Even out uneven illumination: divide by a smooth background estimate, keep the level.

    ``grey / background * median(background)``: the background becomes flat at its original
    median level, objects keep their contrast relative to the local background. No mask is
    used (masks are not available at inference, and using them leaks annotations into the
    training images). Returns the same shape and dtype (integers rounded and clipped).
    """
    if grey.ndim != 2:
        raise OrgasegError(f"background flattening needs a grey (Y, X) image, got shape {grey.shape}")
    background = estimate_background(grey, sigma_fraction=sigma_fraction)
    level = float(np.median(background))
    # Guard against division by ~0 in a black image or an unremoved black vignette.
    floor = max(abs(level) * 1e-3, 1e-6)
    np.maximum(background, floor, out=background)
    flat = grey.astype(np.float64)
    flat /= background
    flat *= level
    return cast_like(flat, grey.dtype)


# --------------------------------------------------------------------------- tiles

class Tile(NamedTuple):
    """One tile: its grid position (row, col, from 0) and pixel bounds [y0, y1) x [x0, x1)."""

    row: int
    col: int
    y0: int
    x0: int
    y1: int
    x1: int


def tile_bounds(shape: tuple[int, ...], tiles: tuple[int, int]) -> list[Tile]:
    """Cut (height, width) into ``tiles`` = (rows, cols) near-equal tiles, row by row.

    Tile edges are at ``k * height // rows`` (and likewise for columns), so (2, 2) gives the
    four quadrants, and an image of 101 rows gives tiles of 50 and 51 rows.
    """
    rows, cols = parse_pair(tiles, what="tiles")
    height, width = int(shape[0]), int(shape[1])
    if rows > height or cols > width:
        raise OrgasegError(f"cannot cut an image of {height}x{width} pixels into {rows}x{cols} tiles")
    ys = [k * height // rows for k in range(rows + 1)]
    xs = [k * width // cols for k in range(cols + 1)]
    return [Tile(i, j, ys[i], xs[j], ys[i + 1], xs[j + 1]) for i in range(rows) for j in range(cols)]


def split_tiles(image: np.ndarray, tiles: tuple[int, int]) -> list[tuple[Tile, np.ndarray]]:
    """The tiles of ``image`` (views, no copy) with their bounds, see :func:`tile_bounds`."""
    return [(t, image[t.y0:t.y1, t.x0:t.x1]) for t in tile_bounds(image.shape, tiles)]


def tile_name(stem: str, tile: Tile, tiles: tuple[int, int]) -> str:
    """Output stem of a tile: ``<stem>_r<row>c<col>`` (from 0), or ``stem`` for a single tile."""
    if tuple(tiles) == (1, 1):
        return stem
    return f"{stem}_r{tile.row}c{tile.col}"


# --------------------------------------------------------------------------- rescaling

def rescale_image(image: np.ndarray, scale: float) -> np.ndarray:
    """Resize an image (Y, X) or (Y, X, C) by ``scale``; same dtype as the input.

    Shrinking: each output pixel is the exact mean of the input area it covers (area
    interpolation; a factor 0.5 gives 2x2 block means). Enlarging: linear interpolation.
    The output size is round(size * scale) per axis; integers are rounded to nearest.
    """
    image = np.asarray(image)
    shape = (output_length(image.shape[0], scale), output_length(image.shape[1], scale))
    if shape == image.shape[:2]:
        return image.copy()
    if image.ndim == 2:
        return cast_like(resize_2d(image, shape), image.dtype)
    channels = [cast_like(resize_2d(image[..., c], shape), image.dtype) for c in range(image.shape[-1])]
    return np.stack(channels, axis=-1)


@dataclass
class LabelRescaleReport:
    """What rescaling a label image did to its objects.

    ``id_map`` maps original id -> new id for the objects kept; ``vanished`` lists the original
    ids of objects present before and absent after rescaling (too small for the new size).
    """

    n_before: int
    n_after: int
    vanished: list[int] = field(default_factory=list)
    id_map: dict[int, int] = field(default_factory=dict)


def _present_ids(labels: np.ndarray) -> np.ndarray:
    """Sorted non-zero ids in ``labels`` (bincount when ids are small, else unique)."""
    if labels.size == 0:
        return np.zeros(0, dtype=np.int64)
    top = int(labels.max())
    if top == 0:
        return np.zeros(0, dtype=np.int64)
    if top <= 4 * labels.size + 1_000_000 and labels.dtype.itemsize < 8:
        counts = np.bincount(labels.ravel(), minlength=top + 1)
        return np.nonzero(counts[1:])[0] + 1
    ids = np.unique(labels)
    return ids[ids > 0].astype(np.int64)


def relabel_consecutive(labels: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """Renumber the ids of ``labels`` to 1..N in the order of the original ids (0 stays 0).

    Every original id keeps one new id, also when its pixels form several separate parts.
    dtype: uint16, or uint32 beyond 65,535 objects (:func:`orgaseg_core.images.label_dtype`).
    """
    ids = _present_ids(labels)
    dtype = label_dtype(len(ids))
    new_ids = np.arange(1, len(ids) + 1, dtype=dtype)
    if ids.size and int(ids[-1]) <= 4 * labels.size + 1_000_000:
        lut = np.zeros(int(ids[-1]) + 1, dtype=dtype)
        lut[ids] = new_ids
        out = lut[labels]
    else:
        out = np.zeros(labels.shape, dtype=dtype)
        nz = labels > 0
        out[nz] = new_ids[np.searchsorted(ids, labels[nz])]
    return out, {int(a): int(b) for a, b in zip(ids, new_ids)}


def rescale_labels(labels: np.ndarray, scale: float) -> tuple[np.ndarray, LabelRescaleReport]:
    """Resize a label image (Y, X) by ``scale`` with nearest neighbour, then relabel.

    Each output pixel takes the label under its centre. Ids are renumbered 1..N in order of
    the original ids (deterministic), each object keeping one id even if it falls apart into
    separate pieces. Objects that disappear at the new size are listed by original id in the
    report (and logged), never silently lost. Returns (labels, report); dtype uint16 (uint32
    beyond 65,535 objects).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise OrgasegError(f"a label image must be 2D, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise OrgasegError(f"a label image must hold integers, got {labels.dtype}")
    h, w = labels.shape
    shape = (output_length(h, scale), output_length(w, scale))
    if shape == (h, w):
        resized = labels
    else:
        resized = labels[nearest_indices(h, shape[0])][:, nearest_indices(w, shape[1])]
    before = _present_ids(labels)
    out, id_map = relabel_consecutive(resized)
    vanished = np.setdiff1d(before, np.fromiter(id_map.keys(), dtype=np.int64, count=len(id_map)))
    report = LabelRescaleReport(n_before=len(before), n_after=len(id_map),
                                vanished=[int(v) for v in vanished], id_map=id_map)
    if report.vanished:
        log.warning("rescaling labels by %g: %d of %d objects vanished (original ids %s)", scale,
                    len(report.vanished), report.n_before, _short_list(report.vanished))
    return out, report


def _short_list(values: list, limit: int = 20) -> str:
    text = ", ".join(str(v) for v in values[:limit])
    return text + (f", ... ({len(values) - limit} more)" if len(values) > limit else "")


# --------------------------------------------------------------------------- the step

def process_image(grey: np.ndarray, *, vignette: bool = False, flatten: bool = False) -> np.ndarray:
    """Apply the optional vignette removal, then background flattening, to a grey (Y, X) image."""
    if vignette:
        grey = remove_vignette(grey)
    if flatten:
        grey = flatten_background(grey)
    return grey


@dataclass
class PreprocessResult:
    """What :func:`preprocess` wrote: counts, unmatched files, vanished objects, time."""

    out: Path
    n_sources: int = 0
    n_written: int = 0
    with_masks: bool = False
    unmatched: list[str] = field(default_factory=list)
    vanished: dict[str, list[int]] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        what = "image/mask pairs" if self.with_masks else "images"
        lines = [f"preprocess: {self.n_sources} {what} -> {self.n_written} tiles in {self.out} "
                 f"({self.seconds:.1f} s)",
                 f"  images: {self.out / 'images'}"]
        if self.with_masks:
            lines.append(f"  masks:  {self.out / 'masks'}")
        lines.append(f"  table:  {self.out / 'tiles.csv'}")
        if self.unmatched:
            lines.append(f"  {len(self.unmatched)} files without a partner (not processed):")
            lines += [f"    {line}" for line in self.unmatched]
        if self.vanished:
            total = sum(len(v) for v in self.vanished.values())
            lines.append(f"  {total} objects too small for the new scale vanished "
                         f"(see vanished_objects in tiles.csv)")
        return "\n".join(lines)


def preprocess(images: Path, out: Path, *, masks: Path | None = None, scale: float = 1.0,
               tiles: tuple[int, int] = (1, 1), remove_vignette: bool = False,
               flatten_background: bool = False, overwrite: bool = False) -> PreprocessResult:
    """Preprocess a folder of images (and optionally their label images) for training.

    Per image: grey (:func:`to_grey`) -> optional vignette removal -> optional background
    flattening -> ``tiles`` = (rows, cols) tiles -> resize by ``scale`` (area means for the
    image, nearest neighbour + relabelling for the mask). Images and masks are paired by
    stem; unmatched files are reported by name and skipped. Writes ``out/images/<name>.tif``,
    ``out/masks/<name>.tif`` (with ``masks``), ``out/tiles.csv`` and ``out/run.json``;
    ``<name>`` is the image stem, or ``<stem>_r<row>c<col>`` when tiling.
    """
    images, out = Path(images), Path(out)
    masks = Path(masks) if masks is not None else None
    tiles = parse_pair(tiles, what="tiles")
    scale = float(scale)
    if not np.isfinite(scale) or scale <= 0:
        raise OrgasegError(f"scale must be a positive number, got {scale!r}")

    image_files = list_images(images, what="images")
    if not image_files:
        raise InputFileError(images, "contains no image files (.tif, .tiff, .jpg, .jpeg, .png)")
    unmatched: list[str] = []
    if masks is not None:
        pairs, only_images, only_masks = pair_by_stem(image_files, list_images(masks, what="masks"))
        unmatched = report_unmatched(only_images, only_masks, first_what="image", second_what="mask")
        if not pairs:
            raise OrgasegError(f"no image in {images} has a mask of the same name in {masks}")
        jobs: list[tuple[str, Path, Path | None]] = list(pairs)
    else:
        jobs = [(stem, path, None) for stem, path in sorted(index_by_stem(image_files).items())]

    arguments = {"images": images, "out": out, "masks": masks, "scale": scale, "tiles": list(tiles),
                 "remove_vignette": remove_vignette, "flatten_background": flatten_background,
                 "overwrite": overwrite}
    start = time.perf_counter()
    with step_run("preprocess", out, arguments, overwrite=overwrite, inputs=[images, masks]) as record:
        result = PreprocessResult(out=out, with_masks=masks is not None, unmatched=unmatched)
        rows = []
        for stem, image_path, mask_path in tqdm(jobs, desc="preprocess", unit="image", disable=None):
            image = read_image(image_path)
            labels = None
            if mask_path is not None:
                labels = read_labels(mask_path)
                if labels.shape != image.shape[:2]:
                    raise InputFileError(
                        mask_path, f"mask is {labels.shape[0]}x{labels.shape[1]} pixels but its image "
                                   f"{image_path} is {image.shape[0]}x{image.shape[1]} pixels")
            grey = process_image(to_grey(image), vignette=remove_vignette, flatten=flatten_background)
            for tile, grey_tile in split_tiles(grey, tiles):
                name = tile_name(stem, tile, tiles) + ".tif"
                write_tiff(out / "images" / name, rescale_image(grey_tile, scale))
                row = {"file": name, "source": image_path.name, "group": stem,
                       "tile_row": tile.row, "tile_col": tile.col, "y0": tile.y0, "x0": tile.x0,
                       "y1": tile.y1, "x1": tile.x1, "scale": scale, "n_objects": "",
                       "vanished_objects": ""}
                if labels is not None:
                    small, report = rescale_labels(labels[tile.y0:tile.y1, tile.x0:tile.x1], scale)
                    write_tiff(out / "masks" / name, small)
                    row["n_objects"] = report.n_after
                    row["vanished_objects"] = " ".join(str(v) for v in report.vanished)
                    if report.vanished:
                        result.vanished[name] = report.vanished
                        log.warning("%s (tile %s of %s): objects %s vanished at scale %g", mask_path,
                                    name, image_path.name, _short_list(report.vanished), scale)
                rows.append(row)
            log.info("read %s%s; wrote %d tile(s)", image_path.name,
                     f" and {mask_path.name}" if mask_path else "", len(tile_bounds(grey.shape, tiles)))
        write_csv(out / "tiles.csv", pd.DataFrame(rows, columns=TILES_CSV_COLUMNS))
        result.n_sources = len(jobs)
        result.n_written = len(rows)
        result.seconds = time.perf_counter() - start
        record.results.update(
            n_sources=result.n_sources, n_written=result.n_written, unmatched=unmatched,
            vanished_objects=result.vanished,
            n_vanished=sum(len(v) for v in result.vanished.values()),
            seconds=round(result.seconds, 3))
        log.info("wrote %d images%s to %s", len(rows), " and masks" if masks else "", out)
    return result
