"""Reading and writing QuPath GeoJSON.

Coordinates are QuPath's: x = column, y = row, in pixels of the full-resolution image, with the
top-left corner of the top-left pixel at (0, 0) (so the centre of pixel (row r, col c) is at
x = c + 0.5, y = r + 0.5).

Reading accepts every shape QuPath (0.2 to 0.5) and hand-made files use: a ``FeatureCollection``,
a bare JSON list of features, a single ``Feature``, or QuPath's wrapper ``{"features": [...]}``.
:func:`parse_annotations` turns the features into polygonal :class:`AnnotationObject` s; what it
cannot use is counted by reason (never dropped silently), and odd geometries are logged with the
file and the feature's index.

Writing (:func:`make_feature`, :func:`write_feature_collection`) produces files QuPath imports
by drag and drop: features with ``properties.objectType``, ``properties.classification``
(``{"name", "color": [r, g, b]}``) and ``properties.measurements`` (``{name: number}``).
"""

from __future__ import annotations

import json
import logging
import math
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, mapping, shape

from ..common.classes import UnsafeClassNameError, class_colour, normalise_class_name, validate_class_name
from ..common.errors import InputFileError
from ..common.outputs import write_text

log = logging.getLogger(__name__)

GEOJSON_SUFFIXES = (".geojson", ".json")

#: Geometry types that are legitimately not objects (QuPath points and line annotations).
NON_AREA_TYPES = ("Point", "MultiPoint", "LineString", "MultiLineString")
#: Skip reasons that are expected in normal QuPath projects; every other reason means a feature
#: was broken or of an unknown kind (see :func:`is_problem_reason`).
EXPECTED_SKIP_REASONS = frozenset(NON_AREA_TYPES) | {"unclassified"}

# QuPath 0.2 wrote no objectType but an id naming the Java class.
_LEGACY_OBJECT_TYPES = {
    "PathAnnotationObject": "annotation",
    "PathDetectionObject": "detection",
    "PathCellObject": "cell",
    "PathTileObject": "tile",
    "TMACoreObject": "tma_core",
}
_WRITABLE_OBJECT_TYPES = ("detection", "annotation")
# Namespace for reproducible object ids (uuid5), see stable_object_id().
_ORGASEG_NAMESPACE = uuid.UUID("5b0f6d0e-3c1a-4f4e-9a53-6f7267617365")


def is_problem_reason(reason: str) -> bool:
    """True when a skip reason means a broken or unknown feature (not a point, line or unclassified)."""
    return reason not in EXPECTED_SKIP_REASONS


# ----------------------------------------------------------------------------------------------
# Reading


def load_features(path: Path) -> list[dict]:
    """Read the features of a QuPath GeoJSON file as a list of dicts (one per feature).

    Accepts a ``FeatureCollection``, a JSON list of features, a single ``Feature`` and QuPath's
    ``{"features": [...]}`` wrapper without a ``type``. Raises InputFileError naming the file
    when it is missing, empty, not UTF-8, not valid JSON (with line and column), holds none of
    those shapes, or holds features that are not JSON objects.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "GeoJSON file does not exist")
    raw = path.read_bytes()
    if not raw:
        raise InputFileError(path, "GeoJSON file is empty (0 bytes)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputFileError(path, f"GeoJSON file is not UTF-8 text (byte {exc.start})") from exc
    if not text.strip():
        raise InputFileError(path, "GeoJSON file is empty (only white space)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputFileError(path, f"is not valid JSON: {exc.msg} at line {exc.lineno}, "
                                   f"column {exc.colno}") from exc
    if isinstance(data, list):
        features = data
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, dict) and "features" in data:
        # A FeatureCollection, or QuPath's wrapper object that has no "type".
        features = data["features"]
        if not isinstance(features, list):
            raise InputFileError(path, f"'features' must be a list, found "
                                       f"{_json_type(features)}")
    else:
        found = (f"an object with type {data.get('type')!r}" if isinstance(data, dict)
                 else _json_type(data))
        raise InputFileError(path, "has no 'features': expected a GeoJSON FeatureCollection, a "
                                   f"list of features or a single Feature, found {found}")
    for i, feature in enumerate(features):
        if not isinstance(feature, dict):
            raise InputFileError(path, f"feature {i} is not a JSON object (found "
                                       f"{_json_type(feature)})")
    return features


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


@dataclass
class AnnotationObject:
    """One polygonal QuPath object.

    index: position of the feature in its file (0-based); id: the feature's ``id`` or None;
    name: ``properties.name`` or None; class_name: normalised class or None (unclassified);
    geometry: valid shapely Polygon or MultiPolygon in pixels (x = column, y = row);
    object_type: QuPath object type (``annotation``, ``detection``, ``cell``, ...);
    repaired: True when the geometry was invalid (e.g. self-intersecting) and was repaired.
    """

    index: int
    id: str | None
    name: str | None
    class_name: str | None
    geometry: Polygon | MultiPolygon
    object_type: str = "annotation"
    repaired: bool = False


def _polygons_of(geometry) -> list[Polygon]:
    """The non-empty polygons inside any shapely geometry (collections are flattened)."""
    if geometry is None or geometry.is_empty:
        return []
    if isinstance(geometry, Polygon):
        return [geometry]
    if isinstance(geometry, MultiPolygon):
        return [p for p in geometry.geoms if not p.is_empty]
    if hasattr(geometry, "geoms"):
        return [p for part in geometry.geoms for p in _polygons_of(part)]
    return []


def _polygonal(polygons: list[Polygon]):
    if not polygons:
        return None
    return polygons[0] if len(polygons) == 1 else MultiPolygon(polygons)


def parse_geometry(geometry: Any) -> tuple[Polygon | MultiPolygon | None, str | None, bool]:
    """Turn a GeoJSON geometry dict into a valid polygonal shapely geometry.

    Returns (geometry, None, repaired) on success and (None, reason, False) when the geometry is
    not an area: a point or line type (reason = the type), missing, malformed coordinates or an
    unknown type (reason says which). Invalid polygons (self-intersections, ...) are repaired
    with :func:`shapely.make_valid` keeping only the polygonal parts; a GeometryCollection gives
    the union of its polygonal parts.
    """
    if not isinstance(geometry, dict):
        return None, "no geometry", False
    gtype = geometry.get("type")
    if gtype in NON_AREA_TYPES:
        return None, gtype, False
    if gtype == "GeometryCollection":
        parts = geometry.get("geometries")
        if not isinstance(parts, list):
            return None, "malformed GeometryCollection", False
        polygons, repaired = [], False
        for part in parts:
            geom, _reason, part_repaired = parse_geometry(part)
            polygons += _polygons_of(geom)
            repaired |= part_repaired
        if not polygons:
            return None, "GeometryCollection without polygons", False
        if len(polygons) == 1:
            return polygons[0], None, repaired
        # Parts of a collection may overlap each other: their union is the object.
        return _polygonal(_polygons_of(shapely.union_all(polygons))), None, repaired
    if gtype not in ("Polygon", "MultiPolygon"):
        return None, f"unknown geometry type {gtype!r}", False
    try:
        with warnings.catch_warnings():
            # NaN coordinates make shapely warn; they are reported as malformed just below.
            warnings.simplefilter("ignore", RuntimeWarning)
            geom = shape(geometry)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError,
            shapely.errors.ShapelyError) as exc:
        log.debug("malformed %s: %s", gtype, exc)
        return None, f"malformed {gtype} coordinates", False
    if geom.is_empty:
        return None, f"empty {gtype}", False
    coords = shapely.get_coordinates(geom)
    if not np.all(np.isfinite(coords)):
        return None, f"malformed {gtype} coordinates (not finite)", False
    if shapely.get_coordinate_dimension(geom) > 2:
        geom = shapely.force_2d(geom)
    repaired = False
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
        repaired = True
    geom = _polygonal(_polygons_of(geom))
    if geom is None or geom.area <= 0:
        return None, f"zero-area {gtype}", False
    return geom, None, repaired


def _object_type(feature: Mapping[str, Any], properties: Mapping[str, Any]) -> str:
    kind = properties.get("objectType") or properties.get("object_type")
    if isinstance(kind, str) and kind:
        return kind
    legacy = _LEGACY_OBJECT_TYPES.get(str(feature.get("id")))
    return legacy or "annotation"


def _raw_class_name(classification: Any) -> tuple[str | None, bool]:
    """(class name or None, well-formed?) of a ``properties.classification`` value.

    QuPath writes ``{"name": ..., "color": [r, g, b]}`` (0.3+) or ``{"name": ..., "colorRGB": int}``
    (0.2); derived classes may come as ``{"names": [...]}``; hand-made files use a plain string.
    """
    if classification is None:
        return None, True
    if isinstance(classification, str):
        return (classification if classification.strip() else None), True
    if isinstance(classification, dict):
        name = classification.get("name")
        if name is None and isinstance(classification.get("names"), list):
            name = ": ".join(str(n) for n in classification["names"])
        if name is None:
            return None, True
        if not isinstance(name, str):
            return None, False
        return (name if name.strip() else None), True
    return None, False


def parse_annotations(features: Iterable[Mapping[str, Any]], *, source: Path | str,
                      class_map: Mapping[str, str] | None = None, keep_unclassified: bool = False,
                      unclassified_name: str = "Unclassified"
                      ) -> tuple[list[AnnotationObject], Counter]:
    """Polygonal objects of a list of QuPath features, and the count of skipped features by reason.

    ``source`` (the file the features came from) is used in log messages and errors.
    ``class_map`` is an alias map as returned by :func:`orgaseg_core.common.classes.load_class_map`;
    class names pass :func:`~orgaseg_core.common.classes.normalise_class_name` so ``Filled-in`` and
    ``filled in`` are the same class. Unclassified features are skipped (reason
    ``"unclassified"``) unless ``keep_unclassified``; then their class is ``unclassified_name``.

    Points and lines are skipped with their type as the reason. Unknown geometry types,
    missing or malformed geometries and malformed classifications are skipped too, and each
    is logged as a warning naming the file and the feature index (see :func:`is_problem_reason`).

    Raises InputFileError naming the file when a class name cannot be used as a folder name
    (``../evil``, ``a/b``); the fix is to rename the class or to map it with a class map.
    """
    objects: list[AnnotationObject] = []
    skipped: Counter = Counter()
    for index, feature in enumerate(features):
        properties = feature.get("properties")
        if not isinstance(properties, dict):
            properties = {}
        geometry, reason, repaired = parse_geometry(feature.get("geometry"))
        if geometry is None:
            skipped[reason] += 1
            if is_problem_reason(reason):
                log.warning("%s: feature %d skipped: %s", source, index, reason)
            continue
        raw_class, well_formed = _raw_class_name(properties.get("classification"))
        if not well_formed:
            reason = "malformed classification"
            skipped[reason] += 1
            log.warning("%s: feature %d skipped: %s %r", source, index, reason,
                        properties.get("classification"))
            continue
        if raw_class is None:
            if not keep_unclassified:
                skipped["unclassified"] += 1
                continue
            raw_class = unclassified_name
        class_name = normalise_class_name(raw_class, class_map)
        try:
            validate_class_name(class_name)
        except UnsafeClassNameError as exc:
            shown = repr(raw_class) + (f" (normalised to {class_name!r})" if class_name != raw_class else "")
            raise InputFileError(source, f"feature {index}: class {shown} cannot be used: {exc}; "
                                         "rename the class in QuPath or map it to a safe name "
                                         "with a class map") from exc
        if repaired:
            log.info("%s: feature %d had an invalid polygon (e.g. self-intersecting); repaired",
                     source, index)
        feature_id = feature.get("id")
        name = properties.get("name")
        objects.append(AnnotationObject(
            index=index,
            id=None if feature_id is None else str(feature_id),
            name=None if name is None else str(name),
            class_name=class_name,
            geometry=geometry,
            object_type=_object_type(feature, properties),
            repaired=repaired,
        ))
    return objects, skipped


def describe_skipped(skipped: Mapping[str, int]) -> str:
    """``"3 skipped: 1 LineString, 2 unclassified"`` (or ``"none skipped"``)."""
    total = sum(skipped.values())
    if not total:
        return "none skipped"
    parts = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
    return f"{total} skipped: {parts}"


# ----------------------------------------------------------------------------------------------
# Writing


def stable_object_id(*parts: Any) -> str:
    """A reproducible UUID string from ``parts`` (e.g. image stem and label), for object ids."""
    return str(uuid.uuid5(_ORGASEG_NAMESPACE, "\x1f".join(str(p) for p in parts)))


def _number(value: Any) -> float | int | None:
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


def make_feature(geometry, *, object_type: str = "detection", class_name: str | None = None,
                 colour: tuple[int, int, int] | None = None,
                 measurements: Mapping[str, Any] | None = None, object_id: str | None = None,
                 name: str | None = None) -> dict:
    """One QuPath-importable GeoJSON feature (a dict ready for :func:`json.dumps`).

    geometry: shapely geometry in pixels (x = column, y = row). object_type: ``"detection"``
    or ``"annotation"``. class_name: written as ``classification {"name", "color": [r, g, b]}``
    with ``colour`` or the class's standard colour. measurements: ``{name: number}``; values
    that are not finite (NaN, inf) are left out because JSON cannot hold them. object_id: the
    feature ``id``; a random UUID if None (use :func:`stable_object_id` for reproducible files).
    """
    if object_type not in _WRITABLE_OBJECT_TYPES:
        raise ValueError(f"object_type must be one of {_WRITABLE_OBJECT_TYPES}, got {object_type!r}")
    properties: dict[str, Any] = {"objectType": object_type}
    if name is not None:
        properties["name"] = str(name)
    if class_name is not None:
        r, g, b = colour if colour is not None else class_colour(class_name)
        properties["classification"] = {"name": str(class_name), "color": [int(r), int(g), int(b)]}
    if measurements:
        values = {str(k): _number(v) for k, v in measurements.items()}
        properties["measurements"] = {k: v for k, v in values.items() if v is not None}
    return {
        "type": "Feature",
        "id": str(object_id) if object_id is not None else str(uuid.uuid4()),
        "geometry": _geometry_json(geometry),
        "properties": properties,
    }


def _geometry_json(geometry) -> dict:
    """GeoJSON dict of a shapely geometry with plain lists (integral coordinates as ints)."""
    def convert(value):
        if isinstance(value, (tuple, list)):
            return [convert(v) for v in value]
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    data = mapping(geometry)
    return {key: convert(value) if key == "coordinates" else value for key, value in data.items()}


def objects_to_features(objects: Iterable[AnnotationObject], *, object_type: str = "annotation"
                        ) -> list[dict]:
    """Features for parsed objects (keeps their ids and names), e.g. to write repaired files."""
    return [make_feature(o.geometry, object_type=object_type, class_name=o.class_name,
                         object_id=o.id, name=o.name) for o in objects]


def feature_collection(features: Iterable[Mapping[str, Any]]) -> dict:
    """A GeoJSON FeatureCollection dict of ``features``."""
    return {"type": "FeatureCollection", "features": list(features)}


def write_feature_collection(path: Path, features: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``features`` as a FeatureCollection to ``path`` (atomically; strict JSON, no NaN)."""
    text = json.dumps(feature_collection(features), allow_nan=False, separators=(",", ":"),
                      default=_json_default)
    log.debug("writing %s", path)
    return write_text(Path(path), text + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
