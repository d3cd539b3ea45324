"""The HTML report of an analysis: ``report.html`` beside a ``report/`` folder of its pictures.

It opens from disk in any browser, without a server (every link is relative and every picture a
PNG or JPEG file; no script, no network). Sections:

1. **What was run**: inputs, models, the arguments, the package versions, the pixel size.
2. **Plots**: those of :mod:`.plots` written for this analysis.
3. **Conditions**: ``conditions.csv`` as a table (when the design has conditions).
4. **Images**: per image the counts per class and a thumbnail of its overlay, linking to the
   full-size overlay and naming its QuPath file.
5. **Review**: the objects of lowest classification confidence (``review_size``) with their
   crops, also written per image to ``qupath-review/<stem>.geojson`` where each carries the
   name "Review: <class> (<confidence>)" so it is easy to find in QuPath's object list.
"""

from __future__ import annotations

import html
import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..common.outputs import atomic_path, write_text

log = logging.getLogger(__name__)

REPORT_HTML = "report.html"
REPORT_DIR = "report"
REVIEW_QUPATH_DIR = "qupath-review"
THUMBNAIL_SIDE = 320  # px, longest side of an overlay thumbnail

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .25em .5em; text-align: right; vertical-align: middle; }
th { background: #f4f4f4; } td.text, th.text { text-align: left; }
.plots img { max-width: min(100%, 820px); border: 1px solid #eee; margin: .5em 0; }
.thumb { max-width: 240px; max-height: 180px; }
.crop { max-width: 96px; max-height: 96px; image-rendering: pixelated; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; }
dt { font-weight: 600; } dd { margin: 0; font-family: monospace; word-break: break-all; }
.note { color: #666; font-size: .9em; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{value:.3g}"
    return _e(value)


def _table(frame: pd.DataFrame, *, text_columns: Sequence[str] = (), raw_columns: Sequence[str] = ()) -> str:
    """An HTML table; ``raw_columns`` hold HTML already (images, links), others are escaped."""
    head = "".join(f'<th class="{"text" if c in text_columns or c in raw_columns else ""}">{_e(c)}</th>'
                   for c in frame.columns)
    rows = []
    for record in frame.itertuples(index=False):
        cells = []
        for column, value in zip(frame.columns, record):
            if column in raw_columns:
                cells.append(f'<td class="text">{value}</td>')
            else:
                cells.append(f'<td class="{"text" if column in text_columns else ""}">{_number(value)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _relative(path: Path, root: Path) -> str:
    """A link from ``root/report.html`` to ``path`` (URL-quoted, forward slashes)."""
    from urllib.parse import quote

    return quote(Path(path).resolve().relative_to(Path(root).resolve()).as_posix())


def write_thumbnail(source: Path, target: Path, side: int = THUMBNAIL_SIDE) -> Path:
    """A JPEG of ``source`` (an overlay, PNG or JPEG) whose longest side is ``side`` px."""
    from PIL import Image

    with Image.open(source) as image:
        image = image.convert("RGB")
        image.thumbnail((side, side))
        with atomic_path(target) as tmp:
            image.save(tmp, format="JPEG", quality=85)
    return target


def write_crop_png(source: Path, target: Path) -> Path:
    """A crop (any image file orgaseg reads, e.g. TIFF, which browsers do not show) as an 8-bit
    PNG with its contrast stretched."""
    from ..common.images import read_image
    from ..common.overlays import save_png, stretch_contrast

    image = read_image(source)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        rgb = np.stack([stretch_contrast(image[..., c]) for c in range(3)], axis=-1)
    else:
        grey = stretch_contrast(image if image.ndim == 2 else image[..., 0])
        rgb = np.stack([grey] * 3, axis=-1)
    return save_png(target, rgb)


def review_objects(objects: pd.DataFrame, n: int) -> pd.DataFrame:
    """The ``n`` classified objects of lowest confidence, lowest first (ties: image, label)."""
    if not len(objects):
        return objects
    return objects.sort_values(["confidence", "stem", "label"], kind="stable").head(int(n))


def write_review_geojson(review: pd.DataFrame, qupath_dir: Path, out_dir: Path) -> list[Path]:
    """Per image, its objects of ``review`` as QuPath detections named "Review: <class>
    (<confidence>)", taken with their geometry from ``qupath_dir/<stem>.geojson``."""
    from ..qupath.geojson import load_features, write_feature_collection

    written = []
    for stem, mine in review.groupby("stem", sort=True):
        source = Path(qupath_dir) / f"{stem}.geojson"
        if not source.is_file():
            continue
        wanted = {int(label): row for label, row in zip(mine["label"], mine.to_dict("records"))}
        features = []
        for feature in load_features(source):
            properties = dict(feature.get("properties") or {})
            label = int((properties.get("measurements") or {}).get("Label", -1))
            if label in wanted:
                row = wanted[label]
                properties["name"] = f"Review: {row['predicted_class']} ({float(row['confidence']):.2f})"
                features.append({**feature, "properties": properties})
        target = Path(out_dir) / f"{stem}.geojson"
        target.parent.mkdir(parents=True, exist_ok=True)
        write_feature_collection(target, features)
        written.append(target)
    return written


def write_report(out: Path, *, objects: pd.DataFrame, summary: pd.DataFrame, conditions: pd.DataFrame | None,
                 class_names: Sequence[str], run: dict[str, Any], plots: Sequence[Path] = (),
                 crops_root: Path | None = None, overlays_dir: Path | None = None,
                 qupath_dir: Path | None = None, review_size: int = 40) -> Path:
    """Write ``out/report.html`` and its pictures in ``out/report/`` (see the module notes).

    objects, summary, conditions: analyze's tables. run: what was run (``arguments``,
    ``versions``, ``pixel_size``, free-form ``inputs``). plots: PNG files of the plots. crops_root:
    the folder that objects' ``crop`` paths are relative to. overlays_dir / qupath_dir: the
    per-image overlays (``<stem>.png`` or ``.jpg``) and QuPath files. Returns the report's path.
    """
    out = Path(out)
    pictures = out / REPORT_DIR
    pictures.mkdir(parents=True, exist_ok=True)
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>orgaseg analysis: "
             f"{_e(out.name)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>orgaseg analysis <code>{_e(out.name)}</code></h1>",
             f"<p>{len(summary)} image(s), {int(summary['objects'].sum()) if len(summary) else 0} organoids found, "
             f"{len(objects)} classified into {_e(', '.join(class_names))}.</p>"]

    # 1. what was run
    parts.append("<h2>What was run</h2><dl>")
    for key, value in (run.get("inputs") or {}).items():
        parts.append(f"<dt>{_e(key)}</dt><dd>{_e(value)}</dd>")
    parts.append(f"<dt>pixel size</dt><dd>{_e(run.get('pixel_size') or 'unknown: measurements in pixels')}</dd>")
    arguments = {k: v for k, v in (run.get("arguments") or {}).items() if v not in (None, False, "")}
    parts.append(f"<dt>arguments</dt><dd>{_e(json.dumps(arguments, default=str))}</dd>")
    versions = run.get("versions") or {}
    parts.append(f"<dt>versions</dt><dd>{_e(', '.join(f'{k} {v}' for k, v in versions.items()))}</dd></dl>")

    # 2. plots
    if plots:
        parts.append("<h2>Plots</h2><div class='plots'>")
        for png in plots:
            svg = Path(png).with_suffix(".svg")
            link = _relative(svg if svg.is_file() else png, out)
            parts.append(f"<figure><a href='{link}'><img src='{_relative(png, out)}' alt='{_e(Path(png).stem)}'>"
                         f"</a><figcaption class='note'>{_e(Path(png).stem)} (click for the SVG)</figcaption></figure>")
        parts.append("</div>")

    # 3. conditions
    if conditions is not None and len(conditions):
        parts.append("<h2>Conditions</h2><p class='note'>Fractions with 95% intervals from a bootstrap over "
                     "wells (the replicates); see the README for the tests.</p>")
        keep = [c for c in conditions.columns if not c.endswith(("_wilson_low", "_wilson_high"))]
        parts.append(_table(conditions[keep], text_columns=[c for c in keep if conditions[c].dtype == object]))

    # 4. images
    if len(summary):
        parts.append("<h2>Images</h2><p class='note'>Click a thumbnail for the full-size overlay; the QuPath "
                     "file goes onto the same image in QuPath.</p>")
        from ..common.overlays import overlay_path

        rows = summary.copy()
        thumbs = []
        for stem in rows["stem"]:
            overlay = overlay_path(Path(overlays_dir or out / "overlays"), stem)
            if overlay is not None:
                thumb = write_thumbnail(overlay, pictures / "thumbnails" / f"{stem}.jpg")
                thumbs.append(f"<a href='{_relative(overlay, out)}'><img class='thumb' src='{_relative(thumb, out)}' "
                              f"alt='overlay of {_e(stem)}'></a>")
            else:
                thumbs.append("no overlay")
        rows.insert(0, "overlay", thumbs)
        shown = ["overlay", "image", "objects", "classified"] + [f"count_{c}" for c in class_names] + \
                [c for c in rows.columns if c not in summary.columns or c in ("mean_confidence", "needs_review")]
        shown = list(dict.fromkeys(c for c in shown if c in rows.columns))
        parts.append(_table(rows[shown], text_columns=["image"], raw_columns=["overlay"]))

    # 5. review
    review = review_objects(objects, review_size)
    if len(review):
        written = write_review_geojson(review, Path(qupath_dir or out / "qupath"), out / REVIEW_QUPATH_DIR)
        parts.append(f"<h2>Review</h2><p>The {len(review)} least confident classifications, lowest first. "
                     f"In QuPath they are named <code>Review: ...</code> in "
                     f"<code>{REVIEW_QUPATH_DIR}/&lt;image&gt;.geojson</code> ({len(written)} file(s)).</p>")
        crops = []
        for row in review.to_dict("records"):
            source = Path(crops_root or out / "objects") / str(row["crop"])
            target = pictures / "review" / f"{row['stem']}_{int(row['label'])}.png"
            try:
                write_crop_png(source, target)
                crops.append(f"<img class='crop' src='{_relative(target, out)}' alt='crop {_e(row['stem'])} "
                             f"{int(row['label'])}'>")
            except Exception as exc:  # noqa: BLE001 - the report says which crop it could not show
                log.warning("%s: crop not shown in the report: %s", source, exc)
                crops.append(f"unreadable crop {_e(source.name)}")
        table = review[["image", "label", "predicted_class", "confidence"]
                       + [f"prob_{c}" for c in class_names if f"prob_{c}" in review.columns]].copy()
        table.insert(0, "crop", crops)
        parts.append(_table(table, text_columns=["image", "predicted_class"], raw_columns=["crop"]))
    parts.append("<p class='note'>Written by orgaseg; every figure and table is also in the analysis folder "
                 "(summary.csv, objects.csv, conditions.csv, plots/).</p></body></html>")
    path = write_text(out / REPORT_HTML, "\n".join(parts) + "\n")
    log.info("wrote %s (open it in a browser; pictures in %s)", path, pictures)
    return path
