"""``annotations-to-masks``: QuPath GeoJSON annotations into instance label images.

:func:`rasterize_objects` is the pure array function (polygons -> label image);
:func:`annotations_to_masks` walks the folders, pairs every GeoJSON with its image by stem and
writes, per image, ``<stem>.tif`` (label image, 0 = background, object i of the table has
label i) and ``<stem>_objects.csv`` (one row per object: class, QuPath id and name, areas,
bounding box, centroid), plus ``classes.csv`` (objects per class over all images) and
``run.json``.

Pixel convention (QuPath's): pixel (row r, column c) covers x in [c, c+1), y in [r, r+1); it
belongs to a polygon when its centre (x = c + 0.5, y = r + 0.5) is inside. A centre exactly on
an edge goes to the polygon on its right/below (top-left rule), so two polygons sharing an edge
never both claim a pixel and a rectangle from (10, 10) to (20, 30) covers exactly 10 x 20 pixels.

Overlap rule: objects are painted in order of decreasing polygon area (equal areas in file
order), each over the earlier ones. So a small object drawn on top of (or inside) a larger one
stays visible and the larger one keeps the rest of its pixels; among equal areas the later
object in the file wins. Holes are never painted, so an object lying in another object's hole
is kept whatever the order. Pixels taken from one object by another and objects left with no
pixels are reported and logged.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import shapely
from scipy import ndimage
from tqdm import tqdm

from ..common.classes import ClassNames, class_folder_name, load_class_map
from ..common.errors import InputFileError, OrgasegError
from ..common.images import (
    IMAGE_SUFFIXES,
    image_stem,
    index_by_stem,
    label_dtype,
    list_images,
    read_image_shape,
)
from ..common.outputs import step_run, write_csv, write_tiff
from ..qupath.geojson import (
    describe_skipped,
    is_geojson_file,
    is_problem_reason,
    load_features,
    parse_annotations,
    parse_object_types,
    parse_plane,
)

log = logging.getLogger(__name__)

OBJECT_COLUMNS = ["image", "label", "class", "object_type", "feature_id", "name", "area_px",
                  "polygon_area", "bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col",
                  "centroid_row", "centroid_col"]


# ----------------------------------------------------------------------------------------------
# Array function


@dataclass
class RasterReport:
    """What :func:`rasterize_objects` did with each object (labels are 1-based: object i -> i+1).

    pixel_counts: pixels per object in the final label image, shape (n,), index = label - 1.
    overlaps: (label a, label b, pixels) - ``pixels`` of object a were painted over by object b
    (b is drawn later: smaller, or equal area and later in the list).
    outside: labels of objects lying entirely outside the image.
    too_small: labels of objects inside the image that cover no pixel centre (thin or tiny).
    covered: labels of objects whose every pixel was taken by objects drawn over them.
    """

    shape: tuple[int, int]
    pixel_counts: np.ndarray
    overlaps: list[tuple[int, int, int]] = field(default_factory=list)
    outside: list[int] = field(default_factory=list)
    too_small: list[int] = field(default_factory=list)
    covered: list[int] = field(default_factory=list)

    @property
    def n_objects(self) -> int:
        return int(self.pixel_counts.shape[0])

    @property
    def vanished(self) -> list[int]:
        """Labels of all objects that have no pixel in the label image, sorted."""
        return sorted(self.outside + self.too_small + self.covered)

    def describe(self) -> str:
        """One line: objects drawn, overlaps, vanished objects by cause."""
        text = f"{self.n_objects - len(self.vanished)} of {self.n_objects} objects drawn"
        if self.overlaps:
            pixels = sum(p for _a, _b, p in self.overlaps)
            text += f"; {len(self.overlaps)} overlapping pairs ({pixels} pixels given to the object on top)"
        for what, labels in (("outside the image", self.outside),
                             ("too small to cover a pixel centre", self.too_small),
                             ("completely covered by other objects", self.covered)):
            if labels:
                text += f"; {len(labels)} {what} (labels {_short_list(labels)})"
        return text


def _short_list(values: Sequence, limit: int = 10) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values) - limit} more)" if len(values) > limit else "")


def _edges(geometries: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """All ring edges of all polygons: (edge array (m, 4) of x0, y0, x1, y1; object index (m,))."""
    parts = np.asarray(geometries, dtype=object)
    part_owner = np.arange(parts.size)
    # Explode multi-part geometries (and collections of them) down to single parts.
    while True:
        multi = np.isin(shapely.get_type_id(parts), (4, 5, 6, 7))
        if not multi.any():
            break
        parts, index = shapely.get_parts(parts, return_index=True)
        part_owner = part_owner[index]
    polygons = shapely.get_type_id(parts) == 3  # anything else (lines, points) has no area
    parts, part_owner = parts[polygons], part_owner[polygons]
    rings, ring_part = shapely.get_rings(parts, return_index=True)
    coords, coord_ring = shapely.get_coordinates(rings, return_index=True)
    # Consecutive coordinates of one ring form an edge (rings are closed: last == first).
    same_ring = coord_ring[:-1] == coord_ring[1:]
    edges = np.hstack([coords[:-1][same_ring], coords[1:][same_ring]])
    owner = part_owner[ring_part[coord_ring[:-1][same_ring]]]
    return edges, owner


def _spans(edges: np.ndarray, owner: np.ndarray, rank: np.ndarray, shape: tuple[int, int]):
    """Horizontal pixel runs inside the polygons (even-odd rule over all rings of an object).

    For each edge and each pixel row whose centre line y = r + 0.5 it crosses (half-open in y,
    so a vertex is counted once), the crossing's x is computed; crossings of one object on one
    row, sorted by x, pair up into runs [x_a, x_b), and the run covers the columns whose centre
    c + 0.5 lies in it. Holes and MultiPolygon parts need no special case with the even-odd rule.
    Returns (object index, row, first column, end column (exclusive)) arrays, sorted by draw
    rank, then row, then column; columns are clipped to the image.
    """
    height, width = shape
    x0, y0, x1, y1 = edges.T
    ylo, yhi = np.minimum(y0, y1), np.maximum(y0, y1)
    # Rows r with ylo <= r + 0.5 < yhi, clipped to the image.
    first = np.clip(np.ceil(ylo - 0.5), 0, height).astype(np.int64)
    stop = np.clip(np.ceil(yhi - 0.5), 0, height).astype(np.int64)
    n_rows = np.maximum(stop - first, 0)
    keep = n_rows > 0
    x0, y0, x1, y1 = x0[keep], y0[keep], x1[keep], y1[keep]
    first, n_rows, owner = first[keep], n_rows[keep], owner[keep]
    total = int(n_rows.sum())
    if total == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, empty
    edge_of = np.repeat(np.arange(n_rows.size), n_rows)
    offsets = np.cumsum(n_rows) - n_rows
    rows = first[edge_of] + (np.arange(total) - offsets[edge_of])
    yc = rows + 0.5
    slope = (x1 - x0) / (y1 - y0)  # never 0/0: horizontal edges cross no row centre
    xs = x0[edge_of] + (yc - y0[edge_of]) * slope[edge_of]
    objs = owner[edge_of]
    order = np.lexsort((xs, rows, rank[objs]))
    xs, rows, objs = xs[order], rows[order], objs[order]
    # Each closed ring crosses a row line an even number of times, so pairs never straddle
    # two (object, row) groups.
    start = np.clip(np.ceil(xs[0::2] - 0.5), 0, width).astype(np.int64)
    end = np.clip(np.ceil(xs[1::2] - 0.5), 0, width).astype(np.int64)
    rows, objs = rows[0::2], objs[0::2]
    nonempty = end > start
    return objs[nonempty], rows[nonempty], start[nonempty], end[nonempty]


def rasterize_objects(geometries: Sequence, shape: tuple[int, int]
                      ) -> tuple[np.ndarray, RasterReport]:
    """Instance label image of polygons: object i (0-based) gets label i + 1, background 0.

    geometries: shapely Polygons / MultiPolygons (or collections; non-polygonal parts are
    ignored) in pixel coordinates, x = column, y = row. shape: (height, width) in pixels.
    A pixel belongs to an object when its centre is inside (see the module notes); all parts of
    a MultiPolygon get the same label; holes stay 0 but never erase another object lying in
    them. Overlaps: larger objects first, smaller ones painted over them; equal areas in list
    order. Parts outside the image are clipped.

    Returns (labels (height, width) uint16, or uint32 past 65,535 objects; :class:`RasterReport`).
    Cost: linear in the number of polygon edges plus the pixels of each object's bounding box.
    """
    height, width = (int(shape[0]), int(shape[1]))
    n = len(geometries)
    labels = np.zeros((height, width), dtype=label_dtype(n))
    counts = np.zeros(n, dtype=np.int64)
    report = RasterReport(shape=(height, width), pixel_counts=counts)
    if n == 0:
        return labels, report
    geoms = np.asarray(geometries, dtype=object)
    areas = shapely.area(geoms)
    # Draw rank: decreasing area, ties in list order (lexsort: last key is the primary one).
    draw_order = np.lexsort((np.arange(n), -areas))
    rank = np.empty(n, dtype=np.int64)
    rank[draw_order] = np.arange(n)

    edges, owner = _edges(geoms)
    objs, rows, start, end = _spans(edges, owner, rank, (height, width))
    # Spans are grouped by object in draw order; find each object's group.
    span_rank = rank[objs]
    bounds = np.searchsorted(span_rank, np.arange(n + 1))
    taken: dict[tuple[int, int], int] = {}
    lost_all: set[int] = set()
    for r in range(n):
        lo, hi = bounds[r], bounds[r + 1]
        if lo == hi:
            continue
        obj = int(draw_order[r])
        label = obj + 1
        o_rows, o_start, o_end = rows[lo:hi], start[lo:hi], end[lo:hi]
        r0, r1 = int(o_rows[0]), int(o_rows[-1]) + 1  # spans are sorted by row
        c0, c1 = int(o_start.min()), int(o_end.max())
        # Mark run starts (+1) and ends (-1) in the bounding box; a running sum along each row
        # is 1 inside a run. Runs of one row are disjoint, so int8 cannot overflow.
        diff = np.zeros((r1 - r0, c1 - c0 + 1), dtype=np.int8)
        np.add.at(diff, (o_rows - r0, o_start - c0), 1)
        np.add.at(diff, (o_rows - r0, o_end - c0), -1)
        mask = np.cumsum(diff[:, :-1], axis=1, dtype=np.int8).astype(bool)
        window = labels[r0:r1, c0:c1]
        previous = window[mask]
        if previous.any():
            under, pixels = np.unique(previous[previous > 0], return_counts=True)
            for other, count in zip(under.tolist(), pixels.tolist()):
                taken[(other, label)] = taken.get((other, label), 0) + count
                counts[other - 1] -= count
                if counts[other - 1] == 0:
                    lost_all.add(other)
        window[mask] = label
        counts[obj] = previous.size

    report.overlaps = sorted((a, b, p) for (a, b), p in taken.items())
    report.covered = sorted(lost_all)
    bounds_xy = shapely.bounds(geoms)  # minx, miny, maxx, maxy
    outside = ((bounds_xy[:, 2] <= 0) | (bounds_xy[:, 3] <= 0) | (bounds_xy[:, 0] >= width)
               | (bounds_xy[:, 1] >= height) | np.isnan(bounds_xy[:, 0]))
    for i in np.flatnonzero(counts == 0).tolist():
        if i + 1 in lost_all:
            continue
        (report.outside if outside[i] else report.too_small).append(i + 1)
    return labels, report


def object_measurements(labels: np.ndarray, n_objects: int) -> pd.DataFrame:
    """Pixel area, bounding box and centroid of labels 1..n_objects from a label image.

    One pass over the image (:func:`scipy.ndimage.find_objects`), then work inside each
    object's bounding box only. The bounding box is half-open like scikit-image's regionprops
    (``bbox_max_row`` is one past the last row); the centroid is the mean (row, column) index
    of the object's pixels. Labels without pixels get area 0 and empty (NA) box and centroid.
    """
    slices = ndimage.find_objects(labels, max_label=n_objects) if n_objects else []
    area = np.zeros(n_objects, dtype=np.int64)
    box = np.full((n_objects, 4), -1, dtype=np.int64)
    centroid = np.full((n_objects, 2), np.nan)
    for i, sl in enumerate(slices):
        if sl is None:
            continue
        mask = labels[sl] == i + 1
        rows_count = mask.sum(axis=1)
        cols_count = mask.sum(axis=0)
        a = int(rows_count.sum())
        area[i] = a
        box[i] = (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)
        centroid[i, 0] = sl[0].start + float(rows_count @ np.arange(rows_count.size)) / a
        centroid[i, 1] = sl[1].start + float(cols_count @ np.arange(cols_count.size)) / a
    table = pd.DataFrame({"label": np.arange(1, n_objects + 1), "area_px": area})
    for j, name in enumerate(("bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col")):
        # Nullable integers: objects without pixels have no box (an empty CSV field).
        table[name] = pd.arrays.IntegerArray(box[:, j].copy(), area == 0)
    table["centroid_row"] = centroid[:, 0]
    table["centroid_col"] = centroid[:, 1]
    return table


# ----------------------------------------------------------------------------------------------
# Step function


@dataclass
class MasksResult:
    """What :func:`annotations_to_masks` wrote and what it had to skip."""

    out: Path
    masks: list[Path] = field(default_factory=list)
    class_counts: dict[str, int] = field(default_factory=dict)
    n_objects: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    n_overlaps: int = 0
    n_vanished: int = 0
    images_without_annotations: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"annotations-to-masks: {len(self.masks)} label images with {self.n_objects} "
                 f"objects in {len(self.class_counts)} classes written to {self.out} "
                 f"({self.seconds:.1f} s)"]
        lines += [f"  {name}: {count}" for name, count in sorted(self.class_counts.items())]
        if self.skipped:
            lines.append(f"  features {describe_skipped(self.skipped)}")
        if self.n_overlaps:
            lines.append(f"  {self.n_overlaps} overlapping object pairs (smaller objects drawn on top)")
        if self.n_vanished:
            lines.append(f"  {self.n_vanished} objects have no pixels in their label image "
                         "(area_px = 0 in the object tables)")
        if self.images_without_annotations:
            lines.append(f"  {len(self.images_without_annotations)} images without a GeoJSON: "
                         + _short_list(self.images_without_annotations))
        if self.errors:
            lines.append(f"  {len(self.errors)} GeoJSON files FAILED:")
            lines += [f"    {error}" for _name, error in self.errors]
        return "\n".join(lines)


def _geojson_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_geojson_file(p))


@dataclass
class _FileResult:
    stem: str
    table: pd.DataFrame
    skipped: Counter
    report: RasterReport


def _convert_one(geojson: Path, image: Path, out: Path, *, class_names: ClassNames,
                 keep_unclassified: bool, object_types: frozenset[str] | None,
                 plane: tuple[int, int]) -> _FileResult:
    """Rasterise one GeoJSON onto the grid of its image and write the label image and table."""
    stem = image_stem(geojson)
    height, width = read_image_shape(image)
    features = load_features(geojson)
    objects, skipped = parse_annotations(features, source=geojson, class_names=class_names,
                                         keep_unclassified=keep_unclassified,
                                         object_types=object_types, plane=plane)
    log.info("%s: %d features, %d objects, %s", geojson.name, len(features), len(objects),
             describe_skipped(skipped))
    if not features:
        log.warning("%s: no features at all; writing an empty label image", geojson)
    elif not objects:
        problems = {r: n for r, n in skipped.items() if is_problem_reason(r)}
        if problems:
            raise InputFileError(geojson, "no usable object: every feature was skipped ("
                                 + describe_skipped(skipped) + ")")
        hint = ("; pass --keep-unclassified to draw unclassified annotations"
                if skipped.get("unclassified") else "")
        log.warning("%s: none of the %d features is a classified polygon (%s); writing an "
                    "empty label image%s", geojson, len(features), describe_skipped(skipped), hint)

    labels, report = rasterize_objects([o.geometry for o in objects], (height, width))
    if report.overlaps or report.vanished:
        log.warning("%s: %s", geojson.name, report.describe())
    for a, b, pixels in report.overlaps:
        log.debug("%s: label %d lost %d pixels to label %d", geojson.name, a, pixels, b)

    table = object_measurements(labels, len(objects))
    table.insert(0, "image", stem)
    table.insert(2, "class", [o.class_name for o in objects])
    table.insert(3, "object_type", [o.object_type for o in objects])
    table.insert(4, "feature_id", [o.id for o in objects])
    table.insert(5, "name", [o.name for o in objects])
    table.insert(7, "polygon_area", [round(float(o.geometry.area), 3) for o in objects])
    table = table[OBJECT_COLUMNS].round({"centroid_row": 3, "centroid_col": 3})
    write_tiff(out / f"{stem}.tif", labels)
    write_csv(out / f"{stem}_objects.csv", table)
    log.info("wrote %s (%dx%d, %s) and %s", f"{stem}.tif", height, width, labels.dtype,
             f"{stem}_objects.csv")
    return _FileResult(stem, table, skipped, report)


#: QuPath object types drawn by default: annotations (what people draw by hand). A parent
#: rectangle annotation with cells inside then never becomes a label under its cells.
DEFAULT_OBJECT_TYPES = "annotation"


def annotations_to_masks(annotations: Path, images: Path, out: Path, *,
                         keep_unclassified: bool = False, class_map: Path | None = None,
                         object_types: str | Sequence[str] | None = DEFAULT_OBJECT_TYPES,
                         plane: str | tuple[int, int] = (0, 0),
                         overwrite: bool = False) -> MasksResult:
    """Turn QuPath GeoJSON annotations into instance label images and per-object class tables.

    annotations: folder of ``*.geojson`` / ``*.json`` files, one per image, named after the
    image (``a.geojson`` or QuPath's ``a.jpg.geojson`` for ``a.jpg``). images: folder of the
    annotated images (only their size in pixels is read). out: new or empty folder (or
    ``overwrite``). keep_unclassified: also draw annotations without a class, as
    ``Unclassified``. class_map: JSON/CSV alias map of class names. object_types: the QuPath
    object types to draw (``"annotation"``, ``"annotation,detection"`` - e.g. a corrected
    ``analyze`` result -, ``"cell"``, ``"tile"``, ``"tmaCore"`` or ``"all"``); the others are
    counted as skipped. plane: ``(z, t)`` or ``"z,t"``; objects of other planes are skipped.
    GeoJSON files may be ``.geojson``, ``.json``, ``.geojson.gz`` or QuPath ``.zip`` exports.
    Class names keep the first spelling found (files in name order), see
    :class:`~orgaseg_core.common.classes.ClassNames`; derived classes keep QuPath's display
    name (``Tumor: Positive``) in every table.

    Writes ``<stem>.tif``, ``<stem>_objects.csv`` per image, ``classes.csv`` (objects with
    pixels per class, over all images) and ``run.json``. A GeoJSON whose image is missing or
    unreadable, or that is malformed, is reported and the others are still converted; at the
    end an OrgasegError lists the failed files (so the command exits non-zero). Images without
    a GeoJSON are only listed.
    """
    annotations, images, out = Path(annotations), Path(images), Path(out)
    # Check the inputs before creating anything, so a typo leaves no output folder behind.
    if not annotations.is_dir():
        raise InputFileError(annotations, "annotations folder does not exist or is not a folder")
    image_files = list_images(images)
    alias_map = load_class_map(class_map)
    try:
        wanted_types = parse_object_types(object_types)
        wanted_plane = parse_plane(plane)
    except ValueError as exc:
        raise OrgasegError(f"annotations-to-masks: {exc}") from None
    class_names = ClassNames(alias_map)
    geojsons = _geojson_files(annotations)
    if not geojsons:
        raise InputFileError(annotations, "no GeoJSON files (*.geojson, *.json, *.geojson.gz, "
                                          "*.zip) in this folder")
    geojson_by_stem = index_by_stem(geojsons, what="GeoJSON files")
    image_by_stem = index_by_stem(image_files, what="images")

    arguments = {"annotations": annotations, "images": images, "out": out,
                 "keep_unclassified": keep_unclassified, "class_map": class_map,
                 "object_types": "all" if wanted_types is None else sorted(wanted_types),
                 "plane": list(wanted_plane), "overwrite": overwrite}
    with step_run("annotations-to-masks", out, arguments, overwrite=overwrite,
                  inputs=[annotations, images, class_map]) as record:
        t0 = time.perf_counter()
        result = MasksResult(out=out)
        skipped: Counter = Counter()
        classes: Counter = Counter()
        class_images: dict[str, set[str]] = {}
        for stem, geojson in tqdm(sorted(geojson_by_stem.items()), desc="annotations-to-masks",
                                  unit="image", disable=None):
            image = image_by_stem.get(stem)
            try:
                if image is None:
                    looked_for = ", ".join(stem + s for s in IMAGE_SUFFIXES)
                    raise InputFileError(geojson, f"no image for this GeoJSON in {images} "
                                                  f"(looked for {looked_for}, any case)")
                done = _convert_one(geojson, image, out, class_names=class_names,
                                    keep_unclassified=keep_unclassified,
                                    object_types=wanted_types, plane=wanted_plane)
            except OrgasegError as exc:
                log.error("%s", exc)
                result.errors.append((geojson.name, str(exc)))
                continue
            result.masks.append(out / f"{stem}.tif")
            skipped.update(done.skipped)
            drawn = done.table[done.table["area_px"] > 0]
            result.n_objects += len(drawn)
            for name, count in drawn["class"].value_counts().items():
                classes[name] += int(count)
                class_images.setdefault(name, set()).add(stem)
            result.n_overlaps += len(done.report.overlaps)
            result.n_vanished += len(done.report.vanished)

        result.images_without_annotations = sorted(
            image_by_stem[s].name for s in image_by_stem.keys() - geojson_by_stem.keys())
        for name in result.images_without_annotations:
            log.info("%s: image has no GeoJSON in %s; no label image made", name, annotations)
        result.class_counts = dict(sorted(classes.items()))
        result.skipped = dict(sorted(skipped.items()))
        for line in class_names.describe_merges():
            log.info("%s", line)
        class_table = pd.DataFrame(
            {"class": list(result.class_counts),
             "folder": [class_folder_name(c) for c in result.class_counts],
             "count": list(result.class_counts.values()),
             "images": [len(class_images[c]) for c in result.class_counts]},
            columns=["class", "folder", "count", "images"])
        write_csv(out / "classes.csv", class_table)
        result.seconds = time.perf_counter() - t0
        record.results.update({
            "geojson_files": len(geojsons),
            "label_images": len(result.masks),
            "objects": result.n_objects,
            "classes": result.class_counts,
            "skipped_features": result.skipped,
            "overlapping_pairs": result.n_overlaps,
            "objects_without_pixels": result.n_vanished,
            "images_without_annotations": result.images_without_annotations,
            "errors": [{"file": name, "error": error} for name, error in result.errors],
            "seconds": round(result.seconds, 3),
        })
        if result.errors:
            log.warning("%s", result.summary())  # what was done despite the failures
            failed = "; ".join(error for _name, error in result.errors)
            raise OrgasegError(
                f"annotations-to-masks: {len(result.errors)} of {len(geojsons)} GeoJSON files "
                f"failed (the other {len(result.masks)} were written to {out}): {failed}")
    return result
