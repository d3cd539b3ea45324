"""The experiment's design: which condition, well, timepoint ... each image belongs to.

Two sources, usable together (a metadata column wins over a name-pattern group of the same name):

* a metadata table (CSV, TSV or Excel) with an ``image`` column (the file name, with or without
  its extension, or a path ending in it) and any other columns (well, condition, treatment,
  concentration, timepoint, replicate ...);
* a regular expression with named groups matched against each image's file name
  (``re.search``), e.g. ``(?P<well>[A-H]\\d{2})_(?P<condition>\\w+)``.

Images that neither source describes are listed, never dropped: they keep empty design columns
and are reported (log and run.json).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..common.errors import InputFileError, OptionError
from ..common.images import image_stem

log = logging.getLogger(__name__)

#: the column of a metadata table that names the image
IMAGE_COLUMN = "image"
#: columns orgaseg writes itself: a design column of the same name would be ambiguous
RESERVED = {"image", "stem", "label", "objects", "classified", "excluded", "unreadable"}


@dataclass
class Design:
    """Per image (rows in the order given): ``image``, ``stem`` and the design columns
    (``columns``, text); ``unmatched``: images no source described; ``sources``: what was used."""

    table: pd.DataFrame
    columns: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)

    def as_record(self) -> dict:
        return {"columns": self.columns, "unmatched": self.unmatched, "sources": self.sources}


def read_metadata(path: Path) -> pd.DataFrame:
    """The metadata table ``path`` (.csv, .tsv/.txt, .xlsx/.xls: its first sheet) as text,
    one row per image; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "metadata file does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in (".xlsx", ".xlsm", ".xls"):
            table = pd.read_excel(path, dtype=str)
        elif suffix in (".csv", ".tsv", ".txt"):
            table = pd.read_csv(path, dtype=str, sep=None, engine="python", encoding="utf-8-sig")
        else:
            raise InputFileError(path, "metadata must be a .csv, .tsv or .xlsx file")
    except InputFileError:
        raise
    except Exception as exc:
        raise InputFileError(path, f"cannot be read as a table ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from exc
    table.columns = [str(c).strip() for c in table.columns]
    lowered = {c.lower(): c for c in table.columns}
    if IMAGE_COLUMN not in lowered:
        raise InputFileError(path, f"has no '{IMAGE_COLUMN}' column (columns: {', '.join(table.columns)})")
    table = table.rename(columns={lowered[IMAGE_COLUMN]: IMAGE_COLUMN})
    table = table.dropna(subset=[IMAGE_COLUMN])
    table[IMAGE_COLUMN] = table[IMAGE_COLUMN].str.strip()
    clash = sorted(set(table.columns) & RESERVED - {IMAGE_COLUMN})
    if clash:
        raise InputFileError(path, f"has columns orgaseg writes itself: {', '.join(clash)}; rename them")
    keys = table[IMAGE_COLUMN].map(_key)
    duplicated = sorted(set(table.loc[keys.duplicated(), IMAGE_COLUMN]))
    if duplicated:
        raise InputFileError(path, f"lists an image more than once: {', '.join(duplicated[:5])}")
    return table.reset_index(drop=True)


def _key(name: str) -> str:
    """An image's key: its stem without folders (``plate1/A01_x.tif`` -> ``A01_x``)."""
    return image_stem(Path(str(name).replace("\\", "/")).name)


def compile_pattern(pattern: str | None) -> re.Pattern | None:
    """A name pattern, checked: a valid regular expression with at least one named group."""
    if pattern is None or not str(pattern).strip():
        return None
    try:
        compiled = re.compile(str(pattern))
    except re.error as exc:
        raise OptionError(f"--name-pattern {pattern!r} is not a valid regular expression: {exc}") from None
    if not compiled.groupindex:
        raise OptionError(f"--name-pattern {pattern!r} has no named group, e.g. (?P<well>[A-H]\\d{{2}})")
    clash = sorted(set(compiled.groupindex) & RESERVED)
    if clash:
        raise OptionError(f"--name-pattern names groups orgaseg writes itself: {', '.join(clash)}")
    return compiled


def attach_design(images: Sequence[str], *, metadata: Path | None = None,
                  name_pattern: str | None = None) -> Design:
    """The design of each image file name in ``images`` (see the module notes)."""
    compiled = compile_pattern(name_pattern)
    table = read_metadata(metadata) if metadata is not None else None
    rows = [{"image": name, "stem": image_stem(name)} for name in images]
    columns: list[str] = []
    sources: dict[str, str] = {}
    described = [False] * len(rows)
    if compiled is not None:
        sources["name_pattern"] = compiled.pattern
        columns += list(compiled.groupindex)
        for i, row in enumerate(rows):
            found = compiled.search(row["image"])
            if found:
                described[i] = True
                row.update({k: v for k, v in found.groupdict().items() if v is not None})
    if table is not None:
        sources["metadata"] = str(metadata)
        extra = [c for c in table.columns if c != IMAGE_COLUMN]
        columns += [c for c in extra if c not in columns]
        by_key = {_key(r[IMAGE_COLUMN]): r for r in table.to_dict("records")}
        used = set()
        for i, row in enumerate(rows):
            entry = by_key.get(_key(row["image"]))
            if entry is not None:
                described[i] = True
                used.add(_key(row["image"]))
                row.update({c: entry[c] for c in extra if isinstance(entry[c], str) and entry[c] != ""})
        unused = sorted(set(by_key) - used)
        if unused:
            log.warning("%s lists %d image(s) that are not among the images: %s", metadata, len(unused),
                        ", ".join(unused[:5]) + (" ..." if len(unused) > 5 else ""))
    unmatched = [row["image"] for row, ok in zip(rows, described) if not ok] if sources else []
    if unmatched:
        log.warning("%d image(s) have no design (neither %s describes them); they are kept, with "
                    "empty design columns: %s", len(unmatched), " nor ".join(sources) or "source",
                    ", ".join(unmatched[:5]) + (" ..." if len(unmatched) > 5 else ""))
    frame = pd.DataFrame(rows, columns=["image", "stem"] + columns)
    for column in columns:
        frame[column] = frame[column].astype("string")
    if columns:
        log.info("design: %s for %d of %d images", ", ".join(columns), len(rows) - len(unmatched), len(rows))
    return Design(table=frame, columns=columns, unmatched=unmatched, sources=sources)
