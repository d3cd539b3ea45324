"""``sort-crops``: QuPath per-object crops into one folder per class.

QuPath's export names a crop ``<imageName><object>_<i>.tif`` where ``<object>`` is the
object's ``toString()``, e.g. ``plate1_A3.jpgAnnotation (Cyst)_4.tif``; the class is the text
in parentheses. Crops without a class are listed in ``skipped.csv``, never dropped silently.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from ..common.classes import ClassNames, class_folder_name, load_class_map, read_class_names
from ..common.errors import InputFileError, OrgasegError
from ..common.images import list_images
from ..common.classes import write_class_names
from ..common.outputs import copy_file, step_run, write_csv

log = logging.getLogger(__name__)

# QuPath object types as they appear in toString(); the class follows in parentheses.
_QUPATH_OBJECT = re.compile(r"(?:Annotation|Detection|Cell|Tile|TMA core|Object)\s*\(([^()]*)\)")
_ANY_PARENTHESES = re.compile(r"\(([^()]*)\)")


def class_from_crop_name(name: str) -> str | None:
    """The raw class text of a QuPath crop file name, or None when it names no class.

    The text after a QuPath object type (``Annotation (Cyst)``) wins; otherwise the LAST
    parenthesised text, because image names themselves may contain ``(1)``-style copies and the
    class always comes after the image name. Empty parentheses give ``""`` (an invalid class
    that :func:`plan_sorting` refuses), not None: they are a mistake, not an unclassified object.
    """
    stem = Path(name).stem
    match = _QUPATH_OBJECT.search(stem)
    text = match.group(1) if match else None
    if text is None:
        found = _ANY_PARENTHESES.findall(stem)
        text = found[-1] if found else None
    return text


@dataclass
class SortCropsResult:
    """What ``sort_crops`` did: files per class, skipped files, output folder."""

    out: Path
    moved: bool
    class_counts: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        verb = "moved" if self.moved else "copied"
        total = sum(self.class_counts.values())
        lines = [f"sort-crops: {verb} {total} crops into {len(self.class_counts)} class folders in {self.out}"]
        lines += [f"  {name}: {count}" for name, count in sorted(self.class_counts.items())]
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} files without a class (see {self.out / 'skipped.csv'})")
        return "\n".join(lines)


def _folder_of(name: str, path: Path) -> str:
    """:func:`class_folder_name` of ``name``; an unusable name is an error naming the crop."""
    try:
        return class_folder_name(name)
    except OrgasegError as exc:
        raise type(exc)(f"{path}: {exc}") from None


def plan_sorting(files: list[Path], class_map: dict[str, str] | None = None,
                 shown: dict[str, str] | None = None
                 ) -> tuple[list[tuple[Path, str, str]], list[tuple[str, str]]]:
    """Decide the class and class folder of every crop without touching any file.

    Class names are merged spelling-insensitively and keep the first spelling found (files in
    name order) or the class map's target (:class:`~orgaseg_core.common.classes.ClassNames`);
    a derived class ``Tumor: Positive`` goes to the folder ``Tumor - Positive``. ``shown``
    (text in crop names -> class as QuPath shows it, from the export script's ``classes.csv``)
    gives a crop named ``Annotation (Tumor - Positive)`` its class ``Tumor: Positive`` back.
    Returns (list of (file, class, class folder name), list of (file name, reason skipped)).
    Raises UnsafeClassNameError naming the file if a class cannot be a folder name, so
    nothing at all is written when one name is bad.
    """
    planned, skipped = [], []
    names = ClassNames(class_map)
    for path in files:
        raw = class_from_crop_name(path.name)
        if raw is None:
            skipped.append((path.name, "no class in parentheses in the file name"))
            continue
        # Validate the raw text too: mapping must not turn "../x" into something harmless-looking.
        _folder_of(raw, path)
        name = names.resolve((shown or {}).get(raw, raw))
        planned.append((path, name, _folder_of(name, path)))
    for line in names.describe_merges():
        log.info("%s", line)
    return planned, skipped


def sort_crops(crops: Path, out: Path, *, move: bool = False, class_map: Path | None = None,
               overwrite: bool = False) -> SortCropsResult:
    """Copy (or, with ``move``, move) QuPath crops from ``crops`` into ``out/<class>/``.

    Class names are merged spelling-insensitively (``Filled-in`` = ``filled in``; the first
    spelling found is kept) and mapped through the optional alias file ``class_map`` (JSON or
    CSV, see :func:`orgaseg_core.common.classes.load_class_map`). Writes ``out/sorted.csv``
    (file, class, destination), ``out/classes.csv`` (class as QuPath shows it, folder, count)
    and ``out/skipped.csv`` (file, reason).
    """
    crops, out = Path(crops), Path(out)
    files = list_images(crops, what="crops")
    if not files:
        raise InputFileError(crops, "contains no image files (.tif, .tiff, .jpg, .jpeg, .png)")
    mapping = load_class_map(class_map)
    planned, skipped = plan_sorting(files, mapping, read_class_names(crops))
    if not planned:
        raise InputFileError(crops, f"none of the {len(files)} image files names a class in "
                                    "parentheses, e.g. 'imageAnnotation (Cyst)_1.tif'")
    arguments = {"crops": crops, "out": out, "move": move, "class_map": class_map, "overwrite": overwrite}
    with step_run("sort-crops", out, arguments, overwrite=overwrite, inputs=[crops]) as record:
        result = SortCropsResult(out=out, moved=move, skipped=skipped)
        rows = []
        out_root = out.resolve()
        try:
            for path, name, folder in tqdm(planned, desc="sort-crops", unit="crop", disable=None):
                target = out / folder / path.name
                # Defence in depth: the destination must stay inside the output folder.
                if out_root not in target.resolve().parents:
                    raise OrgasegError(f"{path}: class {name!r} would write outside {out}")
                if move:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(path), str(target))
                else:
                    copy_file(path, target)
                rows.append({"file": path.name, "class": name,
                             "destination": str(target.relative_to(out))})
        except BaseException:
            # Stopped part-way (an error, Ctrl-C, SIGTERM): sorted.csv lists every file already
            # moved or copied, so a moved crop is never lost track of.
            write_csv(out / "sorted.csv", pd.DataFrame(rows, columns=["file", "class", "destination"]))
            log.error("sort-crops stopped after %d of %d crops; %s lists those %s", len(rows),
                      len(planned), out / "sorted.csv", "moved" if move else "copied")
            raise
        result.class_counts = dict(Counter(r["class"] for r in rows))
        write_csv(out / "sorted.csv", pd.DataFrame(rows, columns=["file", "class", "destination"]))
        write_class_names(out, {name: folder for _path, name, folder in planned},
                          result.class_counts)
        write_csv(out / "skipped.csv", pd.DataFrame(skipped, columns=["file", "reason"]))
        for name, reason in skipped:
            log.warning("%s: skipped, %s", crops / name, reason)
        log.info("read %d crops from %s; %s %d into %d class folders in %s; %d skipped",
                 len(files), crops, "moved" if move else "copied", len(rows),
                 len(result.class_counts), out, len(skipped))
        record.results.update(class_counts=result.class_counts, skipped=len(skipped))
    return result
