"""Plots of an analysis, each written as PNG and SVG and readable on its own (title, axes with
units, legend): class fractions per condition, sizes per class and condition, organoids per
well on the plate, the classifier's confidence, and a gallery of example crops per class.

matplotlib's object API on an Agg canvas (no display, no global state); every function takes
tables and paths and returns the paths it wrote.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..common.outputs import atomic_path

_WELL = re.compile(r"^([A-Pa-p])0*(\d{1,2})$")


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path_stem: Path) -> list[Path]:
    """``path_stem``.png and .svg (the SVG keeps its text as text: editable, searchable)."""
    import matplotlib

    written = []
    Path(path_stem).parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        for suffix in (".png", ".svg"):
            path = Path(path_stem).with_suffix(suffix)
            with atomic_path(path) as tmp:
                figure.savefig(tmp, format=suffix[1:])
            written.append(path)
    return written


def class_colours(class_names: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """The colour of each class: the one QuPath gets (:func:`orgaseg_core.common.classes.class_colour`)."""
    from ..common.classes import class_colour

    return {c: tuple(v / 255 for v in class_colour(c)) for c in class_names}


def plot_class_fractions(conditions: pd.DataFrame, class_names: Sequence[str], path_stem: Path,
                         *, by: str = "condition") -> list[Path]:
    """Stacked bars of the class fractions per condition (rows of ``conditions.csv`` grouped by
    ``by``), each class with its 95% interval (bootstrap over wells, else Wilson) drawn at the
    top of its segment."""
    rows = conditions[conditions["grouping"] == by] if "grouping" in conditions else conditions
    labels = [str(v) for v in rows[by]]
    colours = class_colours(class_names)
    figure = _figure(max(4.0, 1.2 * len(labels) + 2.5), 4.0)
    ax = figure.add_subplot()
    x = np.arange(len(labels))
    base = np.zeros(len(labels))
    for c in class_names:
        values = rows[f"fraction_{c}"].to_numpy(np.float64)
        low = rows.get(f"fraction_{c}_boot_low", rows[f"fraction_{c}_wilson_low"]).to_numpy(np.float64)
        high = rows.get(f"fraction_{c}_boot_high", rows[f"fraction_{c}_wilson_high"]).to_numpy(np.float64)
        use_wilson = np.isnan(low)
        low = np.where(use_wilson, rows[f"fraction_{c}_wilson_low"], low)
        high = np.where(use_wilson, rows[f"fraction_{c}_wilson_high"], high)
        ax.bar(x, np.nan_to_num(values), bottom=base, color=colours[c], label=c, width=0.6, edgecolor="white")
        top = base + np.nan_to_num(values)
        ax.errorbar(x, top, yerr=[np.clip(values - low, 0, None), np.clip(high - values, 0, None)],
                    fmt="none", ecolor="black", capsize=3, linewidth=1)
        base = top
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction of classified organoids")
    ax.set_xlabel(by)
    ax.set_title(f"Organoid classes per {by}\n(95% intervals over wells)", fontsize=10)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return _save(figure, path_stem)


def plot_sizes(objects: pd.DataFrame, class_names: Sequence[str], path_stem: Path, *,
               by: str | None = "condition") -> list[Path]:
    """Box plots of the organoid area per class (and per ``by`` value side by side), in µm²
    when every object has it, else px²; log scale (organoid areas span decades)."""
    column, unit = ("area_um2", "µm²") if "area_um2" in objects and objects["area_um2"].notna().all() \
        and len(objects) else ("area_px", "px²")
    groups = [None] if by is None or by not in objects else sorted(objects[by].dropna().astype(str).unique())
    figure = _figure(max(5.0, 1.1 * len(class_names) * max(1, len(groups)) + 2), 4.0)
    ax = figure.add_subplot()
    colours = class_colours(class_names)
    width = 0.8 / max(1, len(groups))
    handles = []
    for g, group in enumerate(groups):
        mine = objects if group is None else objects[objects[by].astype(str) == group]
        data = [mine.loc[mine["predicted_class"] == c, column].dropna().to_numpy(np.float64) for c in class_names]
        positions = np.arange(len(class_names)) + (g - (len(groups) - 1) / 2) * width
        keep = [i for i, d in enumerate(data) if d.size]
        if not keep:
            continue
        parts = ax.boxplot([data[i] for i in keep], positions=positions[keep], widths=width * 0.9,
                           patch_artist=True, manage_ticks=False, showfliers=True)
        shade = 0.35 + 0.65 * (g + 1) / max(1, len(groups))
        for box, i in zip(parts["boxes"], keep):
            r, gr, b = colours[class_names[i]]
            box.set_facecolor((r, gr, b, shade))
        handles.append((parts["boxes"][0], str(group)))
    ax.set_xticks(np.arange(len(class_names)), list(class_names))
    ax.set_yscale("log")
    ax.set_ylabel(f"area ({unit})")
    ax.set_title("Organoid sizes per class" + (f" and {by}" if groups != [None] else ""))
    if groups != [None] and handles:
        ax.legend([h for h, _ in handles], [name for _, name in handles], title=by, frameon=False)
    return _save(figure, path_stem)


def well_position(well: str) -> tuple[int, int] | None:
    """(row, column) from 0 of a well name like ``B07`` or ``b7``; None if it is not one."""
    found = _WELL.match(str(well).strip())
    if not found:
        return None
    return ord(found[1].upper()) - ord("A"), int(found[2]) - 1


def plot_plate(counts: pd.DataFrame, path_stem: Path) -> list[Path] | None:
    """A plate heat map of ``counts`` (columns ``well``, ``organoids``): 96 wells (8 x 12), or
    384 (16 x 24) when a well lies outside; None when no well name is a plate position."""
    positions = {w: well_position(w) for w in counts["well"].astype(str)}
    known = {w: p for w, p in positions.items() if p is not None}
    if not known:
        return None
    rows, cols = (8, 12) if all(r < 8 and c < 12 for r, c in known.values()) else (16, 24)
    grid = np.full((rows, cols), np.nan)
    for well, n in zip(counts["well"].astype(str), counts["organoids"]):
        if well in known:
            grid[known[well]] = n
    figure = _figure(cols * 0.5 + 2, rows * 0.5 + 1.2)
    ax = figure.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis")
    ax.set_xticks(range(cols), [str(c + 1) for c in range(cols)])
    ax.set_yticks(range(rows), [chr(ord("A") + r) for r in range(rows)])
    for (r, c), n in np.ndenumerate(grid):
        if not math.isnan(n):
            ax.text(c, r, f"{int(n)}", ha="center", va="center", fontsize=7, color="white")
    ax.set_title("Classified organoids per well (empty: not imaged)")
    figure.colorbar(image, ax=ax, label="organoids")
    return _save(figure, path_stem)


def plot_confidence(objects: pd.DataFrame, path_stem: Path, *, review_below: float | None = None) -> list[Path]:
    """Histogram of the classifier's confidence, with the review threshold marked."""
    figure = _figure(5.0, 3.5)
    ax = figure.add_subplot()
    values = objects["confidence"].dropna().to_numpy(np.float64) if len(objects) else np.zeros(0)
    ax.hist(values, bins=np.linspace(0, 1, 21), color="#4c72b0", edgecolor="white")
    if review_below is not None:
        ax.axvline(review_below, color="#c44e52", linestyle="--", label=f"review below {review_below:g}")
        ax.legend(frameon=False)
    ax.set_xlabel("classifier confidence (calibrated probability of the predicted class)")
    ax.set_ylabel("organoids")
    ax.set_title(f"Confidence of {values.size} classified organoids")
    return _save(figure, path_stem)


def plot_gallery(objects: pd.DataFrame, crops_root: Path, class_names: Sequence[str], path_stem: Path,
                 *, per_class: int = 4) -> list[Path]:
    """Per class a row of the ``per_class`` most confident crops and a row of the least
    confident of the others (``crop`` paths relative to ``crops_root``), each titled with its
    confidence."""
    from ..common.images import read_image, to_grey

    rows = [(c, kind) for c in class_names for kind in ("most", "least")]
    figure = _figure(per_class * 1.6 + 1.5, len(rows) * 1.6 + 0.6)
    axes = figure.subplots(len(rows), per_class, squeeze=False)
    for r, (c, kind) in enumerate(rows):
        mine = objects[objects["predicted_class"] == c].sort_values("confidence", ascending=False, kind="stable")
        # the least confident are taken from those not already shown as the most confident
        picked = mine.head(per_class) if kind == "most" else mine.iloc[per_class:].iloc[::-1].head(per_class)
        for j in range(per_class):
            ax = axes[r][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"{c}\n({kind} confident)", fontsize=8)
            if j >= len(picked):
                ax.set_frame_on(False)
                continue
            row = picked.iloc[j]
            try:
                crop = to_grey(read_image(Path(crops_root) / str(row["crop"])))
            except Exception:  # a crop that cannot be read shows as empty, named in its title
                ax.set_title("unreadable", fontsize=7)
                continue
            ax.imshow(crop, cmap="gray")
            ax.set_title(f"{row['confidence']:.2f}", fontsize=7)
    figure.suptitle("Example organoids per class: most and least confident")
    return _save(figure, path_stem)
