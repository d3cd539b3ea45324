"""``split``: seeded, stratified, leakage-free train/val/test split.

Files that come from one source image (the tiles of one image, the object crops of one image)
form a *group*; a group never spans two splits, so no split sees pixels of an image another
split was made from. Two modes:

- ``segmentation``: ``data/images`` + ``data/masks`` paired by stem -> ``out/<split>/images``
  and ``out/<split>/masks`` (the StarDist layout). Groups come from ``data/tiles.csv``
  (written by ``preprocess``) or from the tile suffix ``_r<i>c<j>`` of the names.
- ``classification``: one sub-folder of ``data`` per class -> ``out/<split>/<class>/`` (the
  torchvision ImageFolder layout). Groups come from the crop names (QuPath or extract-objects).
  Whole groups are assigned so that every class is split close to the ratios.

Both write ``out/split.csv`` (file, group, class or mask, split) and ``out/run.json``.

For segmentation data cut from a few large images, ``groups="tiles"`` shares each source
image's tiles out over the splits in the ratios instead (each tile whole in one split, every
source image in every split): with four training images, validation then sees all four kinds
of organoid instead of one whole image. Its validation figures are optimistic (validation
tiles border training tiles of the same image), which is why it is not the default.
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import pandas as pd
from tqdm import tqdm

from ..common.classes import class_key, read_class_names, write_class_names
from ..common.params import check_seed
from ..common.errors import InputFileError, OptionError
from ..common.images import (
    IMAGE_SUFFIXES,
    image_stem,
    is_image_file,
    list_images,
    pair_by_stem,
    report_unmatched,
)
from ..common.outputs import copy_file, step_run, write_csv
from ..common.splits import assign_groups, validate_ratios  # noqa: F401 (part of this module's API)

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MODES = ("segmentation", "classification")
#: what a split keeps together: whole source images (no shared pixels), or single tiles
GROUPINGS = ("images", "tiles")

_TILE_SUFFIX = re.compile(r"_r\d+c\d+$")
# QuPath crop: "<imageName><object type> (<Class>)_<i>"; the class is the LAST parenthesised text.
_QUPATH_CROP = re.compile(r"^(?P<head>.*)\((?P<cls>[^()]*)\)_(?P<index>\d+)$")
_QUPATH_OBJECT_TYPES = ("Annotation", "Detection", "Cell", "Tile", "TMA core", "Object")
# The first image extension inside a name (longest alternatives first: "tiff" before "tif").
_IMAGE_EXTENSION_INSIDE = re.compile(
    r"^(?P<image>.+?)\.(?:" + "|".join(sorted((x.lstrip(".") for x in IMAGE_SUFFIXES), key=len, reverse=True))
    + r")", re.IGNORECASE)
# extract-objects crop: "<stem>_<label>"
_OBJECT_CROP = re.compile(r"^(?P<stem>.+)_(?P<label>\d+)$")


# --------------------------------------------------------------------------- validation

def validate_mode(mode: str) -> str:
    """'segmentation' or 'classification' (case and surrounding spaces ignored)."""
    value = str(mode).strip().lower()
    if value not in MODES:
        raise OptionError(f"--mode must be 'segmentation' or 'classification', got {mode!r}")
    return value


def validate_groups(groups: str, mode: str) -> str:
    """'images' or 'tiles' (case and surrounding spaces ignored); 'tiles' only for segmentation."""
    value = str(groups).strip().lower()
    if value not in GROUPINGS:
        raise OptionError(f"--groups must be 'images' or 'tiles', got {groups!r}")
    if value == "tiles" and mode != "segmentation":
        raise OptionError("--groups tiles is for --mode segmentation (the crops of a classification "
                          "split are objects, not tiles; their source images stay whole)")
    return value


# --------------------------------------------------------------------------- groups

def strip_tile_suffix(stem: str) -> str:
    """``plate1_r0c1`` -> ``plate1`` (the tile suffix written by ``preprocess``); else unchanged."""
    return _TILE_SUFFIX.sub("", stem)


def group_of_crop(name: str) -> str:
    """Source-image group of a per-object crop, inferred from its file name.

    - QuPath crop ``<imageName>Annotation (<Class>)_<i>.tif`` -> the image name without its
      image extension (``plate1_A3.jpgAnnotation (Cyst)_4.tif`` -> ``plate1_A3``);
    - extract-objects crop ``<stem>_<label>.tif`` -> ``<stem>``;
    - otherwise the file stem.

    A tile suffix ``_r<i>c<j>`` is removed too: tiles of one image are one group.
    """
    stem = image_stem(name)
    match = _QUPATH_CROP.match(stem)
    if match:
        head = match.group("head").rstrip()
        for object_type in _QUPATH_OBJECT_TYPES:
            if head.endswith(object_type) and len(head) > len(object_type):
                head = head[: -len(object_type)]
                break
        inside = _IMAGE_EXTENSION_INSIDE.match(head)
        if inside:  # a named annotation: "plate1.jpgMy name (Cyst)_1"
            head = inside.group("image")
        group = image_stem(head.rstrip()) or stem
    else:
        match = _OBJECT_CROP.match(stem)
        group = match.group("stem") if match else stem
    return strip_tile_suffix(group) or group


def read_tile_groups(tiles_csv: Path) -> dict[str, str]:
    """Map file stem -> group from a ``tiles.csv`` written by ``preprocess``."""
    try:
        table = pd.read_csv(tiles_csv, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise InputFileError(tiles_csv, f"cannot be read as CSV ({type(exc).__name__}: {exc})") from exc
    missing = {"file", "group"} - set(table.columns)
    if missing:
        raise InputFileError(tiles_csv, f"lacks the column(s) {', '.join(sorted(missing))}")
    return {image_stem(f): g for f, g in zip(table["file"], table["group"]) if f and g}


# --------------------------------------------------------------------------- assignment

# --------------------------------------------------------------------------- result

@dataclass
class SplitResult:
    """What :func:`split_dataset` did: counts per split (and per class), warnings."""

    out: Path
    mode: str
    seed: int
    ratios: dict[str, float]
    counts: dict[str, int] = field(default_factory=dict)
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    group_counts: dict[str, int] = field(default_factory=dict)
    groups: str = "images"
    unmatched: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_sources: int = 0

    def summary(self) -> str:
        n = sum(self.counts.values())
        n_groups = self.n_sources or sum(self.group_counts.values())
        kept = ", tiles shared out over the splits" if self.groups == "tiles" else ""
        lines = [f"split ({self.mode}, seed {self.seed}{kept}): {n} files from {n_groups} source "
                 f"images into {self.out}"]
        for split in SPLITS:
            if self.ratios.get(split, 0) <= 0:
                continue
            line = (f"  {split:<5} {self.counts.get(split, 0):>6} files, "
                    f"{self.group_counts.get(split, 0)} source images (target {self.ratios[split]:.0%})")
            if self.mode == "classification":
                per_class = self.class_counts.get(split, {})
                line += ": " + ", ".join(f"{c} {k}" for c, k in sorted(per_class.items()))
            lines.append(line)
        if self.unmatched:
            lines.append(f"  {len(self.unmatched)} files without a partner (not split):")
            lines += [f"    {u}" for u in self.unmatched]
        for warning in self.warnings:
            lines.append(f"  warning: {warning}")
        lines.append(f"  table: {self.out / 'split.csv'}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- collecting files

def _segmentation_items(data: Path) -> tuple[list[dict], list[str]]:
    """Rows (file, mask, group) of the image/mask pairs in ``data``, and unmatched messages."""
    images = list_images(data / "images", what="images")
    masks = list_images(data / "masks", what="masks")
    pairs, only_images, only_masks = pair_by_stem(images, masks)
    unmatched = report_unmatched(only_images, only_masks, first_what="image", second_what="mask")
    if not pairs:
        raise InputFileError(data, f"no image in {data / 'images'} has a mask of the same name in "
                                   f"{data / 'masks'} ({len(images)} images, {len(masks)} masks)")
    tiles_csv = data / "tiles.csv"
    known = read_tile_groups(tiles_csv) if tiles_csv.is_file() else {}
    if known:
        log.info("groups (source images) read from %s", tiles_csv)
    rows = []
    for stem, image, mask in pairs:
        group = known.get(stem)
        if group is None:
            group = strip_tile_suffix(stem)
            if known:
                log.info("%s: not in %s; group %r inferred from the name", image, tiles_csv, group)
        rows.append({"file": f"images/{image.name}", "mask": f"masks/{mask.name}", "group": group,
                     "class": ""})
    return rows, unmatched


def _classification_items(data: Path, warnings: list[str]) -> list[dict]:
    """Rows (file, class, group) of the images in the class folders directly under ``data``."""
    if not data.is_dir():
        raise InputFileError(data, "data folder does not exist or is not a folder")
    folders = sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise InputFileError(data, "contains no class folders (one sub-folder per class expected)")
    rows = []
    by_key: dict[str, list[str]] = defaultdict(list)
    shown = read_class_names(data)  # folder -> class as QuPath shows it (Tumor: Positive)
    real_folders: dict[Path, Path] = {}
    for folder in folders:
        real = folder.resolve()
        if real in real_folders:  # a symbolic link to a class folder already read
            msg = (f"{folder}: is a link to {real_folders[real].name!r}; its images are counted "
                   "once, under that folder")
            warnings.append(msg)
            log.warning(msg)
            continue
        real_folders[real] = folder
        broken = sorted(p.name for p in folder.iterdir() if p.is_symlink() and not p.exists())
        if broken:
            msg = (f"{folder}: {len(broken)} broken links left out ({', '.join(broken[:5])}"
                   + (", ..." if len(broken) > 5 else "") + ")")
            warnings.append(msg)
            log.warning(msg)
        files = list_images(folder, what="class")
        ignored = [p.name for p in folder.iterdir() if p.is_file() and not is_image_file(p)
                   and not p.name.startswith(".")]
        if ignored:
            log.info("%s: ignored %d non-image files (%s)", folder, len(ignored), ", ".join(ignored[:5]))
        if not files:
            msg = f"{folder}: class folder has no images; class {folder.name!r} is left out"
            warnings.append(msg)
            log.warning(msg)
            continue
        by_key[class_key(folder.name)].append(folder.name)
        for f in files:
            rows.append({"file": f"{folder.name}/{f.name}",
                         "class": shown.get(folder.name, folder.name), "folder": folder.name,
                         "group": group_of_crop(f.name), "mask": ""})
    for names in by_key.values():
        if len(names) > 1:
            msg = (f"class folders {', '.join(repr(n) for n in names)} in {data} look like one class "
                   "spelled differently; they are kept apart (merge them, or re-sort with a class map)")
            warnings.append(msg)
            log.warning(msg)
    if not rows:
        raise InputFileError(data, "the class folders contain no image files")
    return rows


def _class_warnings(rows: list[dict], ratios: Mapping[str, float], warnings: list[str],
                    data: Path) -> set[str]:
    """Warn about classes too small to appear in every split (before assignment).

    Returns the classes warned about.
    """
    warned: set[str] = set()
    nonzero = [s for s in SPLITS if ratios[s] > 0]
    counts = Counter(r["class"] for r in rows)
    groups = defaultdict(set)
    for r in rows:
        groups[r["class"]].add(r["group"])
    for cls, n in sorted(counts.items()):
        if n == 1:
            msg = (f"{data / cls}: class folder has only one image; it cannot be in more than one "
                   "split and training will refuse a class this small")
        elif n < len(nonzero):
            msg = (f"class {cls!r} has {n} images, fewer than the {len(nonzero)} splits "
                   f"({', '.join(nonzero)}); it cannot appear in every split")
        elif len(groups[cls]) < len(nonzero):
            msg = (f"class {cls!r}: its {n} images come from only {len(groups[cls])} source image(s); "
                   f"it cannot appear in every split ({', '.join(nonzero)}) without leakage")
        else:
            continue
        warned.add(cls)
        warnings.append(msg)
        log.warning(msg)
    return warned


def _tile_warnings(rows: list[dict], ratios: Mapping[str, float], warnings: list[str]) -> None:
    """What a split of single tiles (``groups="tiles"``) means for the figures, and the source
    images it could not share out (too few tiles for the splits)."""
    nonzero = [s for s in SPLITS if ratios[s] > 0]
    by_source: dict[str, set] = defaultdict(set)
    for r in rows:
        by_source[r["group"]].add(r["split"])
    whole = sorted(g for g, splits in by_source.items() if len(splits) < len(nonzero))
    shared = [s for s in nonzero if s != "train"]
    msg = (f"--groups tiles: the tiles of each source image are shared out over the splits, so the "
           f"{' and '.join(shared) or 'split'} tiles border training tiles of the same image and "
           "their figures are optimistic")
    warnings.append(msg)
    log.warning(msg)
    if whole:
        msg = (f"--groups tiles: {len(whole)} of {len(by_source)} source images have too few tiles to "
               f"be in every split ({', '.join(whole[:5])}{', ...' if len(whole) > 5 else ''}); "
               "preprocess --tiles cuts more")
        warnings.append(msg)
        log.warning(msg)


# --------------------------------------------------------------------------- the step

def split_dataset(data: Path, out: Path, *, mode: str, train: float = 0.7, val: float = 0.15,
                  test: float = 0.15, seed: int = 0, groups: str = "images",
                  overwrite: bool = False) -> SplitResult:
    """Copy ``data`` into ``out/train``, ``out/val``, ``out/test`` without leakage.

    ``mode`` 'segmentation' reads ``data/images`` + ``data/masks`` (paired by stem) and writes
    ``out/<split>/images`` + ``out/<split>/masks``; 'classification' reads one sub-folder of
    ``data`` per class and writes ``out/<split>/<class>/``. Fractions ``train``, ``val``,
    ``test`` are of files (each in [0, 1], summing to 1); all files of one source image go to
    the same split; classification is stratified per class. A split with fraction 0 gets no
    folder. Same ``seed`` -> same split. Writes ``out/split.csv`` and ``out/run.json``.

    ``groups="tiles"`` (segmentation only): each tile is assigned on its own, stratified by
    source image, so every source image's tiles are shared out over the splits in the ratios
    (4 tiles and ``val=0.25``: one tile of every image for validation). For a few large images
    that each show another kind of organoid; validation tiles border training tiles of the same
    image, so the validation figures are optimistic (logged as a warning).
    """
    data, out = Path(data), Path(out)
    mode = validate_mode(mode)
    seed = check_seed(seed)
    ratios = validate_ratios(train, val, test)
    groups = validate_groups(groups, mode)
    warnings: list[str] = []
    unmatched: list[str] = []
    warned: set[str] = set()
    if mode == "segmentation":
        rows, unmatched = _segmentation_items(data)
    else:
        rows = _classification_items(data, warnings)
        warned = _class_warnings(rows, ratios, warnings, data)

    # the units assigned whole and what the assignment stratifies by: source images by class, or
    # with groups="tiles" every tile on its own with its source image in the part of a class, so
    # that each image's tiles are shared out over the splits in the ratios
    unit, stratum = ("file", "group") if groups == "tiles" else ("group", "class")
    group_counts: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        group_counts[r[unit]][r[stratum]] += 1
    assignment = assign_groups(group_counts, ratios, seed)
    for r in rows:
        r["split"] = assignment[r[unit]]
    if groups == "tiles":
        _tile_warnings(rows, ratios, warnings)

    arguments = {"data": data, "out": out, "mode": mode, "train": ratios["train"], "val": ratios["val"],
                 "test": ratios["test"], "seed": seed, "groups": groups, "overwrite": overwrite}
    with step_run("split", out, arguments, overwrite=overwrite, inputs=[data]) as record:
        result = SplitResult(out=out, mode=mode, seed=seed, ratios=ratios, unmatched=unmatched,
                             warnings=warnings, groups=groups, n_sources=len({r["group"] for r in rows}))
        for r in tqdm(rows, desc="split", unit="image", disable=None):
            if mode == "segmentation":
                copy_file(data / r["file"], out / r["split"] / r["file"])
                copy_file(data / r["mask"], out / r["split"] / r["mask"])
            else:
                copy_file(data / r["file"], out / r["split"] / r["file"])

        nonzero = [s for s in SPLITS if ratios[s] > 0]
        per_split = Counter(r["split"] for r in rows)
        per_split_class = Counter((r["split"], r["class"]) for r in rows)
        sources_per_split = {s: len({r["group"] for r in rows if r["split"] == s}) for s in nonzero}
        result.counts = {s: per_split[s] for s in nonzero}
        result.group_counts = sources_per_split
        for s in nonzero:
            if result.counts[s] == 0:
                units = "tiles" if groups == "tiles" else "source images"
                msg = (f"split {s!r} is empty: {len(assignment)} {units} are too few for the "
                       f"fractions train={ratios['train']}, val={ratios['val']}, test={ratios['test']}")
                warnings.append(msg)
                log.warning(msg)
        if mode == "classification":
            classes = sorted({r["class"] for r in rows})
            result.class_counts = {s: {c: per_split_class[s, c] for c in classes} for s in nonzero}
            for c in classes:
                absent = [s for s in nonzero if result.class_counts[s][c] == 0]
                if absent and c not in warned:
                    msg = f"class {c!r} has no images in split(s) {', '.join(absent)}"
                    warnings.append(msg)
                    log.warning(msg)

        if mode == "classification":
            write_class_names(out, {r["class"]: r["folder"] for r in rows},
                              Counter(r["class"] for r in rows))
        label = "class" if mode == "classification" else "mask"
        table = pd.DataFrame([{"file": r["file"], "group": r["group"], label: r[label],
                               "split": r["split"]} for r in sorted(rows, key=lambda r: r["file"])],
                             columns=["file", "group", label, "split"])
        write_csv(out / "split.csv", table)
        record.results.update(counts=result.counts, groups=result.group_counts,
                              class_counts=result.class_counts, unmatched=unmatched,
                              warnings=warnings)
        log.info("read %d files (%d source images) from %s; copied them into %s",
                 len(rows), result.n_sources, data, ", ".join(str(out / s) for s in nonzero))
    return result
