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
from tqdm import tqdm

from ..common.errors import InputFileError, OptionError, OrgasegError
from ..common.illumination import process_image
from ..common.images import (
    index_by_stem,
    list_images,
    pair_by_stem,
    read_image,
    read_labels,
    report_unmatched,
    to_grey,
)
from ..common.labels import rescale_labels, short_list
from ..common.outputs import step_run, whole_or_absent, write_csv, write_tiff
from ..common.params import parse_pair
from ..common.resample import rescale_image

log = logging.getLogger(__name__)


TILES_CSV_COLUMNS = ["file", "source", "group", "tile_row", "tile_col", "y0", "x0", "y1", "x1",
                     "scale", "n_objects", "vanished_objects"]


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


# --------------------------------------------------------------------------- the step


@dataclass
class PreprocessResult:
    """What :func:`preprocess` wrote: counts, unmatched files, vanished objects, time."""

    out: Path
    n_sources: int = 0
    n_written: int = 0
    with_masks: bool = False
    unmatched: list[str] = field(default_factory=list)
    vanished: dict[str, list[int]] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)
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
        if self.failed:
            lines.append(f"  {len(self.failed)} images FAILED (listed in {self.out / FAILED_CSV}):")
            lines += [f"    {error}" for _name, error in self.failed]
        return "\n".join(lines)


#: The images (or pairs) that could not be preprocessed, with the reason.
FAILED_CSV = "failed.csv"


class PreprocessFailed(OrgasegError):
    """Some images could not be preprocessed; the others were written (``result``)."""

    def __init__(self, result: PreprocessResult):
        self.result = result
        super().__init__(f"preprocess: {len(result.failed)} of {result.n_sources} image(s) could not "
                         f"be preprocessed (the others were written to {result.out}): "
                         + "; ".join(error for _name, error in result.failed))


def _preprocess_one(stem: str, image_path: Path, mask_path: Path | None, out: Path, *,
                    scale: float, tiles: tuple[int, int], remove_vignette: bool,
                    flatten_background: bool, result: PreprocessResult) -> list[dict]:
    """The tiles of one image (and mask): rows of tiles.csv. Raises InputFileError naming the
    file at fault; then none of this image's tiles is left behind."""
    image = read_image(image_path)
    labels = None
    if mask_path is not None:
        labels = read_labels(mask_path)
        if labels.shape != image.shape[:2]:
            raise InputFileError(
                mask_path, f"mask is {labels.shape[0]}x{labels.shape[1]} pixels but its image "
                           f"{image_path} is {image.shape[0]}x{image.shape[1]} pixels")
    grey = process_image(to_grey(image), vignette=remove_vignette, flatten=flatten_background)
    pieces = split_tiles(grey, tiles)
    names = [tile_name(stem, tile, tiles) + ".tif" for tile, _ in pieces]
    written = [out / "images" / n for n in names] + ([out / "masks" / n for n in names]
                                                     if labels is not None else [])
    rows, vanished = [], {}
    with whole_or_absent(*written):
        for (tile, grey_tile), name in zip(pieces, names):
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
                    vanished[name] = report.vanished
                    log.warning("%s (tile %s of %s): objects %s vanished at scale %g", mask_path,
                                name, image_path.name, short_list(report.vanished), scale)
            rows.append(row)
    result.vanished.update(vanished)
    log.info("read %s%s; wrote %d tile(s)", image_path.name,
             f" and {mask_path.name}" if mask_path else "", len(rows))
    return rows


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
        raise OptionError(f"scale must be a positive number, got {scale!r}")

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
            try:
                rows += _preprocess_one(stem, image_path, mask_path, out, scale=scale, tiles=tiles,
                                        remove_vignette=remove_vignette,
                                        flatten_background=flatten_background, result=result)
            except Exception as exc:  # one bad file must not stop the others; reported below
                message = (str(exc) if isinstance(exc, OrgasegError)
                           else f"{image_path}: {type(exc).__name__}: {exc}")
                if isinstance(exc, OrgasegError) and str(image_path) not in message \
                        and (mask_path is None or str(mask_path) not in message):
                    message = f"{image_path}: {message}"
                log.error("skipped %s", message)
                log.debug("traceback of %s", image_path, exc_info=True)
                result.failed.append((image_path.name, message))
        write_csv(out / "tiles.csv", pd.DataFrame(rows, columns=TILES_CSV_COLUMNS))
        write_csv(out / FAILED_CSV, pd.DataFrame(result.failed, columns=["file", "error"]))
        result.n_sources = len(jobs)
        result.n_written = len(rows)
        result.seconds = time.perf_counter() - start
        record.results.update(
            n_sources=result.n_sources, n_written=result.n_written, unmatched=unmatched,
            failed=[{"file": name, "error": error} for name, error in result.failed],
            vanished_objects=result.vanished,
            n_vanished=sum(len(v) for v in result.vanished.values()),
            seconds=round(result.seconds, 3))
        log.info("wrote %d images%s to %s", len(rows), " and masks" if masks else "", out)
        if result.failed:
            log.warning("%s", result.summary())
            raise PreprocessFailed(result)
    return result
