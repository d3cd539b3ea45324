"""Reading and writing QuPath GeoJSON.

Coordinates are QuPath's: x = column, y = row, in pixels of the full-resolution image, with the
top-left corner of the top-left pixel at (0, 0) (so the centre of pixel (row r, col c) is at
x = c + 0.5, y = r + 0.5).

Reading accepts every shape QuPath (0.2 to 0.6) reads and writes, checked against qupath-core's
``PathIO``, ``GsonTools`` and ``QuPathTypeAdapters``: a ``FeatureCollection``, a bare JSON list
of features, a single ``Feature``, QuPath's wrapper ``{"features": [...]}``, a bare geometry
(QuPath imports it as one annotation), each also gzip-compressed (``.geojson.gz``) or inside a
``.zip``; nested objects (``properties.childObjects``) are read with their parents.
:func:`parse_annotations` turns the features into polygonal :class:`AnnotationObject` s; what it
cannot use or was told to leave out (other object types, other z/t planes, QuPath's ignored
classes such as ``Ignore*``) is counted by reason (never dropped silently), and odd geometries
are logged with the file and the feature's index. Class names follow :mod:`.classes`.

Writing (:func:`make_feature`, :func:`write_feature_collection`) produces files QuPath imports
by drag and drop: features with ``properties.objectType``, ``properties.classification``
(``{"name", "color": [r, g, b]}``) and ``properties.measurements`` (``{name: number}``).
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
import uuid
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, mapping, shape

from ..common.classes import ClassNames, UnsafeClassNameError, class_colour, class_folder_name
from ..common.errors import InputFileError
from ..common.outputs import write_text
from .classes import MalformedClassification, classification_names, display_name, is_ignored_class

log = logging.getLogger(__name__)

#: File name endings read as GeoJSON (QuPath writes and reads the compressed forms too).
GEOJSON_SUFFIXES = (".geojson", ".json", ".geojson.gz", ".json.gz", ".zip")

#: Geometry types that are legitimately not objects (QuPath points and line annotations).
NON_AREA_TYPES = ("Point", "MultiPoint", "LineString", "MultiLineString")
_GEOMETRY_TYPES = NON_AREA_TYPES + ("Polygon", "MultiPolygon", "GeometryCollection")
#: Skip reasons that are expected in normal QuPath projects; every other reason means a feature
#: was broken or of an unknown kind (see :func:`is_problem_reason`).
EXPECTED_SKIP_REASONS = frozenset(NON_AREA_TYPES) | {"unclassified"}
#: Prefixes of expected reasons that carry a detail (the object type, the plane, the class).
_EXPECTED_PREFIXES = ("object type ", "other plane", "ignored class ")

#: QuPath's object types as ``properties.objectType`` names them (0.4+).
OBJECT_TYPES = ("annotation", "detection", "cell", "tile", "tmaCore")
# Older spellings: QuPath 0.2 wrote the Java class as the feature id; 0.3 wrote tma_core.
_OBJECT_TYPE_ALIASES = {
    "PathAnnotationObject": "annotation",
    "PathDetectionObject": "detection",
    "PathCellObject": "cell",
    "PathTileObject": "tile",
    "TMACoreObject": "tmaCore",
    "tma_core": "tmaCore",
    "unknown": "annotation",
}
_LEGACY_OBJECT_TYPES = {k: v for k, v in _OBJECT_TYPE_ALIASES.items() if k.startswith(("Path", "TMA"))}
_WRITABLE_OBJECT_TYPES = ("detection", "annotation")
# A nesting deeper than this (childObjects in childObjects ...) is refused, not recursed into.
_MAX_NESTING = 100


def is_problem_reason(reason: str) -> bool:
    """True when a skip reason means a broken or unknown feature (not a point, a line, an
    unclassified object or one left out on purpose: other object type, plane or ignored class)."""
    return reason not in EXPECTED_SKIP_REASONS and not reason.startswith(_EXPECTED_PREFIXES)


def parse_object_types(text: str | Iterable[str] | None) -> frozenset[str] | None:
    """``"annotation,detection"`` -> the set of QuPath object types; ``"all"`` or None -> None.

    Accepts QuPath's names (``annotation``, ``detection``, ``cell``, ``tile``, ``tmaCore``) in
    any case and the old aliases (``tma_core``). Raises ValueError naming the unknown ones.
    """
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    items = [str(i).strip() for i in items if str(i).strip()]
    if not items:
        raise ValueError("no object type given (use e.g. 'annotation' or 'all')")
    if any(i.lower() == "all" for i in items):
        return None
    by_lower = {t.lower(): t for t in OBJECT_TYPES} | {k.lower(): v for k, v in _OBJECT_TYPE_ALIASES.items()}
    unknown = [i for i in items if i.lower() not in by_lower]
    if unknown:
        raise ValueError(f"unknown object type(s) {', '.join(map(repr, unknown))}; choose from "
                         f"{', '.join(OBJECT_TYPES)} or all")
    return frozenset(by_lower[i.lower()] for i in items)


def parse_plane(text: str | tuple[int, int] | None) -> tuple[int, int]:
    """``"z,t"`` -> (z, t), 0-based; None -> (0, 0). Raises ValueError when not two integers >= 0."""
    if text is None:
        return (0, 0)
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        z, t = (int(str(p).strip()) for p in parts)
    except ValueError:
        raise ValueError(f"plane must be two integers 'z,t' (e.g. 0,0), got {text!r}") from None
    if z < 0 or t < 0:
        raise ValueError(f"plane indices must be 0 or more, got {text!r}")
    return (z, t)


# ----------------------------------------------------------------------------------------------
# Reading


def is_geojson_file(path: Path) -> bool:
    """True for a file whose name ends in one of :data:`GEOJSON_SUFFIXES` (any case)."""
    name = Path(path).name.lower()
    return not name.startswith(".") and name.endswith(GEOJSON_SUFFIXES)


# A decompressed GeoJSON larger than this is refused (a zip or gzip bomb, not a QuPath export).
_MAX_DECOMPRESSED = 2 ** 31


def _read_texts(path: Path) -> list[tuple[str, bytes]]:
    """(name, raw bytes) of the GeoJSON document(s) in ``path``: the file itself, its gzip
    content, or every ``.geojson``/``.json`` entry of a zip (QuPath's ``PathIO`` reads all)."""
    name = path.name.lower()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputFileError(path, f"cannot be read ({exc.strerror or exc})") from None
    if name.endswith(".gz"):
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
                data = stream.read(_MAX_DECOMPRESSED + 1)
        except (OSError, EOFError) as exc:
            raise InputFileError(path, f"is not a valid gzip file ({exc})") from exc
        if len(data) > _MAX_DECOMPRESSED:
            raise InputFileError(path, f"decompresses to more than {_MAX_DECOMPRESSED} bytes; refused")
        return [(path.name, data)]
    if name.endswith(".zip"):
        try:
            with zipfile.ZipFile(path) as archive:
                entries = [i for i in archive.infolist() if not i.is_dir()
                           and i.filename.lower().endswith((".geojson", ".json"))
                           and not Path(i.filename).name.startswith(".")]
                if not entries:
                    raise InputFileError(path, "zip file holds no .geojson or .json entry")
                if sum(i.file_size for i in entries) > _MAX_DECOMPRESSED:
                    raise InputFileError(path, f"zip entries hold more than {_MAX_DECOMPRESSED} "
                                               "bytes; refused")
                return [(f"{path.name}!{i.filename}", archive.read(i)) for i in entries]
        except (zipfile.BadZipFile, OSError) as exc:
            raise InputFileError(path, f"is not a valid zip file ({exc})") from exc
    return [(path.name, raw)]


def _features_of(path: Path, where: str, raw: bytes) -> list[dict]:
    if not raw:
        raise InputFileError(path, f"{where}GeoJSON file is empty (0 bytes)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputFileError(path, f"{where}GeoJSON file is not UTF-8 text (byte {exc.start})") from exc
    if not text.strip():
        raise InputFileError(path, f"{where}GeoJSON file is empty (only white space)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputFileError(path, f"{where}is not valid JSON: {exc.msg} at line {exc.lineno}, "
                                   f"column {exc.colno}") from exc
    except RecursionError:
        raise InputFileError(path, f"{where}JSON is nested too deeply to be a GeoJSON file") from None
    if isinstance(data, list):
        features = data
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, dict) and "features" in data:
        # A FeatureCollection, or QuPath's wrapper object that has no "type".
        features = data["features"]
        if not isinstance(features, list):
            raise InputFileError(path, f"{where}'features' must be a list, found "
                                       f"{_json_type(features)}")
    elif isinstance(data, dict) and data.get("type") in _GEOMETRY_TYPES:
        # A bare geometry: QuPath imports it as one (unclassified) annotation.
        features = [{"type": "Feature", "geometry": data,
                     "properties": {"objectType": "annotation"}}]
    else:
        found = (f"an object with type {data.get('type')!r}" if isinstance(data, dict)
                 else _json_type(data))
        raise InputFileError(path, f"{where}has no 'features': expected a GeoJSON FeatureCollection, "
                                   f"a list of features, a single Feature or a geometry, found {found}")
    for i, feature in enumerate(features):
        if not isinstance(feature, dict):
            raise InputFileError(path, f"{where}feature {i} is not a JSON object (found "
                                       f"{_json_type(feature)})")
    return features


def load_features(path: Path) -> list[dict]:
    """Read the features of a QuPath GeoJSON file as a list of dicts (one per top-level feature).

    Accepts a ``FeatureCollection``, a JSON list of features, a single ``Feature``, QuPath's
    ``{"features": [...]}`` wrapper without a ``type`` and a bare geometry (one unclassified
    annotation, as QuPath imports it); ``.gz`` files are decompressed and every GeoJSON entry
    of a ``.zip`` is read. Nested ``childObjects`` stay inside their parent (see
    :func:`iter_features`). Raises InputFileError naming the file when it is missing, empty,
    not UTF-8, not valid JSON (with line and column), holds none of those shapes, or holds
    features that are not JSON objects.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "GeoJSON file does not exist")
    features: list[dict] = []
    documents = _read_texts(path)
    for name, raw in documents:
        where = f"zip entry {name.split('!', 1)[1]}: " if "!" in name else ""
        features += _features_of(path, where, raw)
    return features


def iter_features(features: Iterable[Mapping[str, Any]]):
    """Every feature with its nested ``properties.childObjects`` (QuPath also reads
    ``children``), depth first, parents before their children: yields (feature, depth)."""
    stack = [(f, 0) for f in reversed(list(features))]
    while stack:
        feature, depth = stack.pop()
        yield feature, depth
        properties = feature.get("properties") if isinstance(feature, Mapping) else None
        if not isinstance(properties, Mapping):
            continue
        children = properties.get("childObjects", properties.get("children"))
        if isinstance(children, list) and children:
            if depth + 1 > _MAX_NESTING:
                raise ValueError(f"childObjects nested more than {_MAX_NESTING} levels deep")
            stack.extend((c, depth + 1) for c in reversed(children) if isinstance(c, Mapping))


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


@dataclass
class AnnotationObject:
    """One polygonal QuPath object.

    index: position of the feature in its file, counting nested ``childObjects`` right after
    their parent (0-based); id: the feature's ``id`` or None; name: ``properties.name`` or None;
    class_name: the class as QuPath shows it (``Tumor: Positive``; first spelling of the run,
    or the class map's target) or None (unclassified); geometry: valid shapely Polygon or
    MultiPolygon in pixels (x = column, y = row); object_type: QuPath object type
    (``annotation``, ``detection``, ``cell``, ``tile``, ``tmaCore``); plane: (z, t);
    repaired: True when the geometry was invalid (e.g. self-intersecting) and was repaired.
    """

    index: int
    id: str | None
    name: str | None
    class_name: str | None
    geometry: Polygon | MultiPolygon
    object_type: str = "annotation"
    repaired: bool = False
    plane: tuple[int, int] = (0, 0)


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
    """QuPath's reading order: ``objectType``, then ``object_type``, then ``type``; QuPath 0.2's
    Java class name in the feature ``id``; else an annotation (QuPath's default)."""
    for key in ("objectType", "object_type", "type"):
        kind = properties.get(key)
        if isinstance(kind, str) and kind:
            return _OBJECT_TYPE_ALIASES.get(kind, kind)
    legacy = _LEGACY_OBJECT_TYPES.get(str(feature.get("id")))
    return legacy or "annotation"


def _plane(geometry: Any) -> tuple[int, int]:
    """(z, t) of a geometry's ``plane`` (QuPath writes it only for objects off plane 0, 0)."""
    plane = geometry.get("plane") if isinstance(geometry, Mapping) else None
    if not isinstance(plane, Mapping):
        return (0, 0)
    try:
        return (int(plane.get("z", 0) or 0), int(plane.get("t", 0) or 0))
    except (TypeError, ValueError):
        return (-1, -1)  # reported as another plane, never silently put on plane 0


def parse_annotations(features: Iterable[Mapping[str, Any]], *, source: Path | str,
                      class_map: Mapping[str, str] | None = None,
                      class_names: ClassNames | None = None, keep_unclassified: bool = False,
                      unclassified_name: str = "Unclassified",
                      object_types: Iterable[str] | None = None,
                      plane: tuple[int, int] = (0, 0)
                      ) -> tuple[list[AnnotationObject], Counter]:
    """Polygonal objects of a list of QuPath features, and the count of skipped features by reason.

    ``source`` (the file the features came from) is used in log messages and errors. Nested
    ``childObjects`` are read after their parent. Class names: QuPath's display name of the
    classification (derived classes ``Tumor: Positive``, pre-0.4 parent chains, see
    :mod:`.classes`), merged spelling-insensitively by ``class_names`` (a
    :class:`~orgaseg_core.common.classes.ClassNames` shared by all files of a run; a new one
    from ``class_map`` when None), so the first spelling found is kept.

    Skipped with a counted reason: objects whose type is not in ``object_types`` (None = all;
    ``"object type cell"``), objects on another z/t plane than ``plane`` (``"other plane"``),
    QuPath's ignored classes, whose own name ends in ``*`` (``"ignored class 'Ignore*'"``),
    unclassified objects unless ``keep_unclassified`` (then their class is
    ``unclassified_name``), points and lines (their type is the reason). Unknown geometry
    types, missing or malformed geometries and malformed classifications are skipped too, and
    each is logged as a warning naming the file and the feature index (see
    :func:`is_problem_reason`).

    Raises InputFileError naming the file when a class name cannot be used as a folder name
    even after :func:`~orgaseg_core.common.classes.class_folder_name` (``../evil``, ``a/b``);
    the fix is to rename the class or to map it with a class map.
    """
    if class_names is None:
        class_names = ClassNames(class_map)
    wanted = None if object_types is None else frozenset(object_types)
    plane = tuple(plane)
    objects: list[AnnotationObject] = []
    skipped: Counter = Counter()
    planes: Counter = Counter()
    warned_string = False
    try:
        flat = list(iter_features(features))
    except ValueError as exc:
        raise InputFileError(source, str(exc)) from None
    for index, (feature, _depth) in enumerate(flat):
        properties = feature.get("properties")
        if not isinstance(properties, dict):
            properties = {}
        object_type = _object_type(feature, properties)
        if wanted is not None and object_type not in wanted:
            skipped[f"object type {object_type}"] += 1
            continue
        feature_plane = _plane(feature.get("geometry"))
        planes[feature_plane] += 1
        if feature_plane != plane:
            skipped["other plane"] += 1
            continue
        geometry, reason, repaired = parse_geometry(feature.get("geometry"))
        if geometry is None:
            skipped[reason] += 1
            if is_problem_reason(reason):
                log.warning("%s: feature %d skipped: %s", source, index, reason)
            continue
        try:
            names = classification_names(properties.get("classification"))
        except MalformedClassification as exc:
            reason = "malformed classification"
            skipped[reason] += 1
            log.warning("%s: feature %d skipped: %s (%s)", source, index, reason, exc)
            continue
        raw_value = properties.get("classification")
        if isinstance(raw_value, str) and raw_value.lstrip().startswith("{") and not warned_string:
            warned_string = True
            log.warning("%s: feature %d has the classification string %r, which looks like a "
                        "serialised object; read as QuPath reads a string (a class of that name)",
                        source, index, raw_value)
        if names is not None and is_ignored_class(names):
            skipped[f"ignored class {display_name(names)!r}"] += 1
            continue
        if names is None:
            if not keep_unclassified:
                skipped["unclassified"] += 1
                continue
            raw_class = unclassified_name
        else:
            raw_class = display_name(names)
        class_name = class_names.resolve(raw_class)
        try:
            class_folder_name(class_name)
        except UnsafeClassNameError as exc:
            shown = repr(raw_class) + (f" (mapped to {class_name!r})" if class_name != raw_class else "")
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
            object_type=object_type,
            repaired=repaired,
            plane=feature_plane,
        ))
    if len(planes) > 1:
        log.info("%s: objects on %d z/t planes (%s); reading plane z=%d, t=%d", source, len(planes),
                 ", ".join(f"z={z} t={t}: {n}" for (z, t), n in sorted(planes.items())), *plane)
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


def new_run_ids() -> uuid.UUID:
    """A fresh namespace for the object ids of one run (see :func:`object_id`).

    QuPath asks to "update IDs" when two imported files share object ids, so every run gets
    new ids; within one run the same (image, label) gets the same id in every file written.
    """
    return uuid.uuid4()


def object_id(run_ids: uuid.UUID, *parts: Any) -> str:
    """The object id of ``parts`` (e.g. image stem and label) in the run ``run_ids``: a UUID."""
    return str(uuid.uuid5(run_ids, "\x1f".join(str(p) for p in parts)))


def measurement_value(value: Any) -> float | int | str:
    """A measurement as QuPath's MeasurementListTypeAdapter writes it: a JSON number, or the
    strings "NaN", "Infinity", "-Infinity" that JSON numbers cannot hold."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def make_feature(geometry, *, object_type: str = "detection", class_name: str | None = None,
                 colour: tuple[int, int, int] | None = None,
                 measurements: Mapping[str, Any] | None = None, object_id: str | None = None,
                 name: str | None = None) -> dict:
    """One QuPath-importable GeoJSON feature (a dict ready for :func:`json.dumps`).

    geometry: shapely geometry in pixels (x = column, y = row). object_type: ``"detection"``
    or ``"annotation"``. class_name: written as ``classification {"name", "color": [r, g, b]}``
    with ``colour`` or the class's standard colour. measurements: ``{name: number}``; values
    that are not finite are written as QuPath writes them (``"NaN"``, ``"Infinity"``), because
    JSON numbers cannot hold them. object_id: the feature ``id``; a random UUID if None (use
    :func:`object_id` for ids shared by the files of one run).
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
        properties["measurements"] = {str(k): measurement_value(v) for k, v in measurements.items()}
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
