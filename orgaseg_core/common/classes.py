"""Class names: normalising spelling variants, user alias maps, safe folder names, colours.

QuPath users spell one class several ways (``Filled in``, ``Filled-in``, ``filled  in``).
All steps pass class names through :func:`normalise_class_name` so they agree.
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
    """Comparison key: Unicode-normalised, lower case, runs of space/``-``/``_`` as one space."""
    text = unicodedata.normalize("NFKC", str(name))
    return _SEPARATORS.sub(" ", text).strip().casefold()


def canonical_class_name(name: str) -> str:
    """Display form of a class: the key with its first letter upper case (``Filled in``)."""
    key = class_key(name)
    return key[:1].upper() + key[1:]


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
    return name


def load_class_map(path: Path | None) -> dict[str, str]:
    """Read an alias map (alias -> class name) from JSON (object) or CSV/TSV (two columns).

    Keys are stored by :func:`class_key`, so the map itself is spelling-insensitive.
    """
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "class map file does not exist")
    text = path.read_text(encoding="utf-8-sig")
    pairs: list[tuple[str, str]] = []
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputFileError(path, f"class map is not valid JSON ({exc})") from exc
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


def normalise_class_name(name: str, class_map: Mapping[str, str] | None = None) -> str:
    """Canonical class name: alias map first (spelling-insensitive), else :func:`canonical_class_name`."""
    key = class_key(name)
    if class_map and key in class_map:
        return class_map[key]
    return canonical_class_name(name)


def class_colour(name: str) -> tuple[int, int, int]:
    """A stable RGB colour for a class name (known classes have fixed colours)."""
    canonical = canonical_class_name(name)
    if canonical in KNOWN_CLASS_COLOURS:
        return KNOWN_CLASS_COLOURS[canonical]
    # Stable across runs and machines (no Python hash randomisation).
    index = sum(ord(c) * (i + 1) for i, c in enumerate(class_key(name))) % len(_PALETTE)
    return _PALETTE[index]
