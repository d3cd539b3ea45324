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
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..common.classes import class_key
from ..common.errors import InputFileError, OrgasegError
from ..common.images import (
    IMAGE_SUFFIXES,
    image_stem,
    is_image_file,
    list_images,
    pair_by_stem,
    report_unmatched,
)
from ..common.outputs import copy_file, step_run, write_csv

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MODES = ("segmentation", "classification")

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

def validate_ratios(train: float, val: float, test: float) -> dict[str, float]:
    """Check the split fractions: each in [0, 1] and summing to 1 (within 1e-6)."""
    ratios = {"train": train, "val": val, "test": test}
    for name, value in ratios.items():
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise OrgasegError(f"--{name} must be a number, got {value!r}") from None
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise OrgasegError(f"--{name} must be between 0 and 1, got {value}")
        ratios[name] = value
    total = sum(ratios.values())
    if abs(total - 1.0) > 1e-6:
        raise OrgasegError(
            f"split fractions must add up to 1, got train={ratios['train']} + val={ratios['val']} "
            f"+ test={ratios['test']} = {total:g}")
    return ratios


def validate_mode(mode: str) -> str:
    """'segmentation' or 'classification' (case and surrounding spaces ignored)."""
    value = str(mode).strip().lower()
    if value not in MODES:
        raise OrgasegError(f"--mode must be 'segmentation' or 'classification', got {mode!r}")
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

def assign_groups(group_counts: Mapping[str, Mapping[str, int]], ratios: Mapping[str, float],
                  seed: int = 0, *, refine: bool = True) -> dict[str, str]:
    """Assign every group to a split, stratified by class, deterministic for ``seed``.

    ``group_counts`` maps group -> {class: number of files}; ``ratios`` maps split -> fraction.
    The quantity kept small is sum over splits and classes of w_k (assigned - target)^2 with
    w_k = 1 / (class total)^2, so rare classes count as much as common ones.

    Greedy: the groups are shuffled with ``seed`` (this decides between equal groups), then
    taken largest first; each goes to the split (with a non-zero ratio) where it increases that
    quantity least, i.e. the split with the largest deficit weighted by the group's class
    composition; ties are broken at random (seeded). With ``refine`` a local search then moves
    single groups to another split, or swaps two groups, while that strictly improves the
    balance (greedy alone can overshoot a class whose files sit in the largest groups).
    Returns group -> split name.
    """
    rng = np.random.default_rng(seed)
    splits = [s for s, r in ratios.items() if r > 0]
    if not splits:
        raise OrgasegError("at least one split fraction must be above 0")
    classes = sorted({c for counts in group_counts.values() for c in counts})
    index = {c: k for k, c in enumerate(classes)}
    names = sorted(group_counts)
    vectors = np.zeros((len(names), len(classes)))
    for g, name in enumerate(names):
        for c, n in group_counts[name].items():
            vectors[g, index[c]] = n
    totals = vectors.sum(axis=0)
    weights = 1.0 / np.maximum(totals, 1) ** 2
    target = np.array([[ratios[s] * t for t in totals] for s in splits])  # (splits, classes)
    assigned = np.zeros_like(target)
    split_of = np.zeros(len(names), dtype=np.int64)

    order = rng.permutation(len(names))
    sizes = vectors.sum(axis=1)
    order = order[np.argsort(-sizes[order], kind="stable")]  # largest first, shuffled among equals
    for g in order:
        c = vectors[g]
        deficit = target - assigned
        # Change of sum_k w_k (assigned_k - target_k)^2 when adding c: w_k c_k (c_k - 2 deficit_k).
        cost = (weights * c * (c - 2 * deficit)).sum(axis=1)
        best = np.flatnonzero(cost <= cost.min() + 1e-12)
        s = int(best[0] if len(best) == 1 else rng.choice(best))
        assigned[s] += c
        split_of[g] = s
    if refine and len(splits) > 1:
        _refine_assignment(vectors, split_of, assigned - target, weights, order)
    return {names[g]: splits[int(split_of[g])] for g in range(len(names))}


def _refine_assignment(vectors: np.ndarray, split_of: np.ndarray, excess: np.ndarray,
                       weights: np.ndarray, order: np.ndarray, *, max_passes: int = 20,
                       max_swap_groups: int = 3000) -> None:
    """Improve a group assignment in place by single moves and pairwise swaps.

    ``excess`` (splits, classes) is assigned minus target counts and is updated in place.
    Only strict improvements are taken, so the search ends; groups are visited in ``order``
    (the seeded order), which keeps the result deterministic for a seed. Swaps are tried for
    up to ``max_swap_groups`` groups (their cost grows with the square of the group count).
    """
    eps = 1e-12
    for _ in range(max_passes):
        improved = False
        for g in order:
            c, s = vectors[g], int(split_of[g])
            # Moving g from s to t changes the objective by sum_k w_k (2c^2 - 2c E_s + 2c E_t).
            delta = (weights * (2 * c * c - 2 * c * excess[s] + 2 * c * excess)).sum(axis=1)
            delta[s] = 0.0
            t = int(np.argmin(delta))
            if delta[t] < -eps:
                excess[s] -= c
                excess[t] += c
                split_of[g] = t
                improved = True
                continue
            if len(order) > max_swap_groups:
                continue
            # Swapping g (in s) with h (in t != s): d = c_h - c_g moves into s, out of t;
            # change = sum_k w_k (2 d^2 + 2 d (E_s - E_t)).
            others = np.flatnonzero(split_of != s)
            if others.size == 0:
                continue
            d = vectors[others] - c
            e_t = excess[split_of[others]]
            swap = (weights * (2 * d * d + 2 * d * (excess[s] - e_t))).sum(axis=1)
            k = int(np.argmin(swap))
            if swap[k] < -eps:
                h = int(others[k])
                t = int(split_of[h])
                excess[s] += d[k]
                excess[t] -= d[k]
                split_of[g], split_of[h] = t, s
                improved = True
        if not improved:
            break


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
    unmatched: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        n = sum(self.counts.values())
        n_groups = sum(self.group_counts.values())
        lines = [f"split ({self.mode}, seed {self.seed}): {n} files from {n_groups} source images "
                 f"into {self.out}"]
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
    for folder in folders:
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
            rows.append({"file": f"{folder.name}/{f.name}", "class": folder.name,
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


# --------------------------------------------------------------------------- the step

def split_dataset(data: Path, out: Path, *, mode: str, train: float = 0.7, val: float = 0.15,
                  test: float = 0.15, seed: int = 0, overwrite: bool = False) -> SplitResult:
    """Copy ``data`` into ``out/train``, ``out/val``, ``out/test`` without leakage.

    ``mode`` 'segmentation' reads ``data/images`` + ``data/masks`` (paired by stem) and writes
    ``out/<split>/images`` + ``out/<split>/masks``; 'classification' reads one sub-folder of
    ``data`` per class and writes ``out/<split>/<class>/``. Fractions ``train``, ``val``,
    ``test`` are of files (each in [0, 1], summing to 1); all files of one source image go to
    the same split; classification is stratified per class. A split with fraction 0 gets no
    folder. Same ``seed`` -> same split. Writes ``out/split.csv`` and ``out/run.json``.
    """
    data, out = Path(data), Path(out)
    mode = validate_mode(mode)
    ratios = validate_ratios(train, val, test)
    warnings: list[str] = []
    unmatched: list[str] = []
    warned: set[str] = set()
    if mode == "segmentation":
        rows, unmatched = _segmentation_items(data)
    else:
        rows = _classification_items(data, warnings)
        warned = _class_warnings(rows, ratios, warnings, data)

    group_counts: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        group_counts[r["group"]][r["class"]] += 1
    assignment = assign_groups(group_counts, ratios, seed)
    for r in rows:
        r["split"] = assignment[r["group"]]

    arguments = {"data": data, "out": out, "mode": mode, "train": ratios["train"], "val": ratios["val"],
                 "test": ratios["test"], "seed": seed, "overwrite": overwrite}
    with step_run("split", out, arguments, overwrite=overwrite, inputs=[data]) as record:
        result = SplitResult(out=out, mode=mode, seed=seed, ratios=ratios, unmatched=unmatched,
                             warnings=warnings)
        for r in tqdm(rows, desc="split", unit="image", disable=None):
            if mode == "segmentation":
                copy_file(data / r["file"], out / r["split"] / r["file"])
                copy_file(data / r["mask"], out / r["split"] / r["mask"])
            else:
                copy_file(data / r["file"], out / r["split"] / r["file"])

        nonzero = [s for s in SPLITS if ratios[s] > 0]
        per_split = Counter(r["split"] for r in rows)
        per_split_class = Counter((r["split"], r["class"]) for r in rows)
        groups_per_split = Counter(assignment.values())
        result.counts = {s: per_split[s] for s in nonzero}
        result.group_counts = {s: groups_per_split[s] for s in nonzero}
        for s in nonzero:
            if result.counts[s] == 0:
                msg = (f"split {s!r} is empty: {len(assignment)} source images are too few for the "
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

        label = "class" if mode == "classification" else "mask"
        table = pd.DataFrame([{"file": r["file"], "group": r["group"], label: r[label],
                               "split": r["split"]} for r in sorted(rows, key=lambda r: r["file"])],
                             columns=["file", "group", label, "split"])
        write_csv(out / "split.csv", table)
        record.results.update(counts=result.counts, groups=result.group_counts,
                              class_counts=result.class_counts, unmatched=unmatched,
                              warnings=warnings)
        log.info("read %d files (%d source images) from %s; copied them into %s",
                 len(rows), len(assignment), data, ", ".join(str(out / s) for s in nonzero))
    return result
