"""Class names: normalising spelling variants, user alias maps, safe folder names, colours.

QuPath users spell one class several ways (``Filled in``, ``Filled-in``, ``filled  in``).
All steps merge them with :class:`ClassNames` on :func:`class_key`, keeping the first spelling
found (or a class map's target), so the name written back is one QuPath already knows.
"""

from __future__ import annotations

import csv
import json
import re
import unicodedata
from pathlib import Path
from typing import Mapping

from .errors import InputFileError, OrgasegError

# Characters that are unsafe in a folder name on some file system (Windows is the strictest).
_UNSAFE_CHARS = set('/\\:*?"<>|')
_SEPARATORS = re.compile(r"[\s_\-]+")

# Colours (RGB 0-255) for the classes seen in the real data; others get a stable palette colour.
KNOWN_CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "Cyst": (31, 119, 180),
    "Filled in": (214, 39, 40),
    "Early branching": (44, 160, 44),
    "Branched": (255, 127, 14),
    "Burned out": (230, 50, 230),  # bright: these organoids are dark, grey outlines vanish on them
    "Ring": (148, 103, 189),
    "Unsure": (188, 189, 34),
    "Apoptotic": (140, 86, 75),
}
_PALETTE = [(23, 190, 207), (227, 119, 194), (127, 127, 127), (174, 199, 232),
            (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213)]


class UnsafeClassNameError(OrgasegError):
    """A class name that cannot be used as a folder name."""


def class_key(name: str) -> str:
    """Comparison key: Unicode-normalised, lower case, runs of space/``-``/``_`` as one space.

    The parts of a derived QuPath class (``Tumor: Positive``) are keyed one by one, so
    ``tumor:positive`` is the same class and ``Tumor - Positive`` (its folder name) is not.
    """
    text = unicodedata.normalize("NFKC", str(name))
    return ":".join(_SEPARATORS.sub(" ", part).strip().casefold() for part in text.split(":"))


def canonical_class_name(name: str) -> str:
    """Display form of a class: the key with its first letter upper case (``Filled in``)."""
    key = class_key(name)
    return key[:1].upper() + key[1:]


def class_folder_name(name: str) -> str:
    """The folder name of a class: its display name with QuPath's derived-class delimiter
    ``":"`` written as ``" - "`` (``Tumor: Positive`` -> ``Tumor - Positive``), because ``:`` is
    not allowed in Windows (and old macOS) file names. Other names are returned unchanged.
    Raises UnsafeClassNameError when the result still cannot be a folder name.
    """
    folder = " - ".join(part.strip() for part in str(name).split(":"))
    return validate_class_name(folder)


class ClassNames:
    """Spelling-insensitive class names that keep the spelling of the data.

    Names are merged on :func:`class_key` (case, spaces, hyphens, underscores), but the name
    given back is the target of the alias ``class_map`` when it has the key, else the FIRST
    spelling :meth:`resolve` saw, unchanged: a QuPath project's ``CD8 T cell`` or ``Filled-in``
    comes back exactly so, and QuPath does not create a second class on import.
    One instance is used for all files of one run, so every file agrees.
    """

    def __init__(self, class_map: Mapping[str, str] | None = None):
        self._map = {class_key(k): v for k, v in (class_map or {}).items()}
        self._first: dict[str, str] = {}
        #: name given back -> the other spellings merged into it (for the log)
        self.merged: dict[str, set[str]] = {}

    def resolve(self, raw: str) -> str:
        """The class name to use for ``raw`` (a display name as found in the data)."""
        raw = str(raw).strip()
        key = class_key(raw)
        name = self._map.get(key)
        if name is None:
            name = self._first.setdefault(key, raw)
        if raw != name:
            self.merged.setdefault(name, set()).add(raw)
        return name

    def describe_merges(self) -> list[str]:
        """One line per class that was found under other spellings too."""
        return [f"class {name!r} also spelled " + ", ".join(repr(s) for s in sorted(others))
                for name, others in sorted(self.merged.items())]


#: The table, beside class folders, of each class's name as QuPath shows it and its folder.
CLASS_NAMES_FILE = "classes.csv"


def write_class_names(folder: Path, folders: Mapping[str, str],
                      counts: Mapping[str, int] | None = None) -> Path:
    """Write ``folder/classes.csv``: class (as QuPath shows it), folder (its folder name) and,
    when given, count; one row per class, sorted by class."""
    from .outputs import write_text

    rows = ["class,folder" + (",count" if counts is not None else "")]
    for name in sorted(folders):
        cells = [name, folders[name]] + ([str(int(counts.get(name, 0)))] if counts is not None else [])
        rows.append(",".join(_csv_cell(c) for c in cells))
    return write_text(Path(folder) / CLASS_NAMES_FILE, "\n".join(rows) + "\n")


def _csv_cell(text: str) -> str:
    if any(c in text for c in ',"\n\r') or text != text.strip():
        return '"' + text.replace('"', '""') + '"'
    return text


def read_class_names(folder: Path) -> dict[str, str]:
    """Folder name -> class name as QuPath shows it, from ``folder/classes.csv`` (written by
    sort-crops, annotations-to-masks and split); {} when there is no such table, so plain class
    folders keep their folder names as class names."""
    path = Path(folder) / CLASS_NAMES_FILE
    if not path.is_file():
        return {}
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputFileError(path, f"cannot be read as a class table ({exc})") from exc
    if rows and not {"class", "folder"} <= set(rows[0]):
        return {}  # an older table without folder names
    return {r["folder"]: r["class"] for r in rows if r.get("folder") and r.get("class")}


def read_class_table(path: Path) -> dict[int, str]:
    """Label -> class of a per-image class table (``<stem>_objects.csv`` of
    annotations-to-masks: columns ``label`` and ``class``); objects without a class are left out.
    Class names are read as written (a class called ``NA`` stays ``NA``)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "class table is missing (annotations-to-masks writes "
                                   "<stem>_objects.csv beside every label image)")
    try:
        table = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"class": str})
    except Exception as exc:  # pandas raises several types for malformed CSV
        raise InputFileError(path, f"cannot be read as a CSV table ({exc})") from exc
    if not {"label", "class"} <= set(table.columns):
        raise InputFileError(path, "has no 'label' and 'class' columns (expected the table of "
                                   "annotations-to-masks)")
    return {int(lab): str(c) for lab, c in zip(table["label"], table["class"]) if isinstance(c, str) and c}


def validate_class_name(name: str, *, source: Path | str | None = None) -> str:
    """Return ``name`` if it is safe as a single folder name, else raise UnsafeClassNameError.

    Refused: empty, ``.``/``..``, path separators, characters Windows forbids, control characters.
    """
    where = f"{source}: " if source else ""
    if not name or not name.strip():
        raise UnsafeClassNameError(f"{where}class name is empty")
    if name.strip() in (".", ".."):
        raise UnsafeClassNameError(f"{where}class name {name!r} is not a valid folder name")
    bad = sorted({c for c in name if c in _UNSAFE_CHARS or unicodedata.category(c).startswith("C")})
    if bad:
        raise UnsafeClassNameError(
            f"{where}class name {name!r} contains characters that cannot be in a folder name: "
            + ", ".join(repr(c) for c in bad))
    if len(name.encode("utf-8")) > MAX_CLASS_NAME_BYTES:
        raise UnsafeClassNameError(
            f"{where}class name {name[:40]!r}... is {len(name.encode('utf-8'))} bytes long; a folder "
            f"name can have at most {MAX_CLASS_NAME_BYTES}")
    return name


#: File systems allow 255 bytes per name; crops inside a class folder need their own too.
MAX_CLASS_NAME_BYTES = 200


def load_class_map(path: Path | None) -> dict[str, str]:
    """Read an alias map (alias -> class name) from JSON (object) or CSV/TSV (two columns).

    Keys are stored by :func:`class_key`, so the map itself is spelling-insensitive.
    """
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "class map file does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputFileError(path, f"class map is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise InputFileError(path, f"class map cannot be read ({exc.strerror or exc})") from None
    pairs: list[tuple[str, str]] = []
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputFileError(path, f"class map is not valid JSON ({exc})") from exc
        except RecursionError:
            raise InputFileError(path, "class map JSON is nested too deeply") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise InputFileError(path, 'class map JSON must be an object {"alias": "class name", ...}')
        pairs = list(data.items())
    else:
        dialect = "excel-tab" if path.suffix.lower() in (".tsv", ".tab") else "excel"
        for i, row in enumerate(csv.reader(text.splitlines(), dialect=dialect), start=1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if len(row) != 2:
                raise InputFileError(path, f"line {i}: expected two columns (alias, class name), got {len(row)}")
            if i == 1 and class_key(row[0]) in ("alias", "from", "source"):
                continue  # header
            pairs.append((row[0], row[1]))
    mapping = {}
    for alias, target in pairs:
        validate_class_name(target.strip(), source=path)
        mapping[class_key(alias)] = target.strip()
    return mapping


def class_colour(name: str) -> tuple[int, int, int]:
    """A stable RGB colour for a class name (known classes have fixed colours)."""
    canonical = canonical_class_name(name)
    if canonical in KNOWN_CLASS_COLOURS:
        return KNOWN_CLASS_COLOURS[canonical]
    # Stable across runs and machines (no Python hash randomisation).
    index = sum(ord(c) * (i + 1) for i, c in enumerate(class_key(name))) % len(_PALETTE)
    return _PALETTE[index]
