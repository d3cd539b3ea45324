"""``conditions.csv``: :func:`.statistics.condition_table` for each grouping the design offers."""

from __future__ import annotations

import logging
from typing import Sequence

import pandas as pd

from ..common.errors import OptionError
from .design import Design
from .statistics import condition_table

log = logging.getLogger(__name__)


def groupings(columns: Sequence[str]) -> list[list[str]]:
    """The groupings of a design with these columns: by condition (the ``condition`` column,
    else the first design column that is not the well, timepoint or replicate), by condition and
    timepoint, and by well."""
    columns = list(columns)
    main = "condition" if "condition" in columns else next(
        (c for c in columns if c not in ("well", "timepoint", "replicate")), None)
    out = []
    if main:
        out.append([main])
        if "timepoint" in columns and main != "timepoint":
            out.append([main, "timepoint"])
    if "well" in columns:
        out.append(["well"])
    return out


def check_control(design: Design, control: str | None) -> str | None:
    """``control`` checked against the design: a value of its condition column."""
    if control is None or not str(control).strip():
        return None
    groups = groupings(design.columns)
    if not groups:
        raise OptionError("--control needs conditions: give --metadata or --name-pattern")
    main = groups[0][0]
    values = set(design.table[main].dropna())
    if control not in values:
        raise OptionError(f"--control {control!r} is not a {main} of these images "
                          f"({', '.join(sorted(values)) or 'none'})")
    return str(control)


def conditions_table(objects: pd.DataFrame, design: Design, class_names: Sequence[str], *,
                     control: str | None = None, seed: int = 0) -> pd.DataFrame:
    """Every grouping of :func:`groupings` in one table, with a ``grouping`` column (e.g.
    "condition", "condition+timepoint", "well"); wells are the replicates when known."""
    replicate = "well" if "well" in design.columns else None
    tables = []
    for by in groupings(design.columns):
        table = condition_table(objects, design.table, class_names, by=by,
                                replicate=replicate if by != ["well"] else None,
                                control=control if by[0] != "well" else None, seed=seed)
        table.insert(0, "grouping", "+".join(by))
        tables.append(table)
        log.info("conditions: %d group(s) by %s", len(table), " and ".join(by))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
