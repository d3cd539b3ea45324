"""Synthetic brightfield organoid images laid out like a QuPath project export (``orgaseg demo-data``).

The generated folder looks like what the original QuPath export script leaves behind::

    out/images/demo_000.jpg, demo_001.tif, ...      the images (JPEG 8-bit RGB and TIFF 8/16-bit grey)
    out/geojsons/demo_000.jpg.geojson, ...          one FeatureCollection of annotations per image
    out/crops/demo_000.jpgAnnotation (Cyst)_1.tif   one crop per polygon annotation (ROI bounding box)
    out/objects.csv                                 ground truth: one row per annotation object
    out/run.json                                    how the data was made

Every organoid is generated as a polygon (a star-shaped radial function ``r(theta)`` with smooth
noise, buds and branches added as capsules), rasterised to paint the image and written, with the
very same vertices, to the GeoJSON, so annotations and pixels agree exactly. Coordinates follow
QuPath: ``x`` to the right, ``y`` down, in pixels; pixel ``(row, col)`` covers
``[col, col + 1) x [row, row + 1)``, so its centre is at ``(col + 0.5, row + 0.5)`` and a pixel
belongs to a polygon when its centre lies inside.

Two image styles (:data:`STYLES`, chosen with ``style``) draw the same five classes:

``default``
    The five classes look clearly different (so that a classifier and a StarDist model can learn
    them): ``Cyst`` (light lumen, thin dark wall), ``Filled in`` (uniformly dark), ``Early
    branching`` (body with 1-3 round buds), ``Branched`` (body with 5-9 long narrow branches),
    ``Burned out`` (very dark, rough outline, granular), 10-25 organoids per image at the reference
    size, in a round vignetted field of view (black corners).
``faint``
    Imitates another generator, with low contrast: cysts are *bright* (lumen slightly brighter than
    the background, thin wall only a little darker), ``Filled in``, ``Early branching`` and
    ``Branched`` are only moderately dark, ``Burned out`` stays very dark. Objects are smaller
    (radii about 0.6x) and more numerous (14-32 per image at the reference size), the field is
    flat (a gentle gradient of a few percent, no vignette, objects anywhere but near the border),
    with somewhat more camera noise and blur.

The first images of either style also hold the awkward cases of real exports: MultiPolygons,
polygons with holes, an unclassified annotation, a measurement line, the class spelled both
``Filled in`` and ``Filled-in``, and one slightly overlapping pair of organoids. The default
style's output is unchanged by the existence of other styles (same seed, same bytes).
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy import ndimage as ndi

from ..common.classes import canonical_class_name, class_colour
from ..common.errors import OptionError, OrgasegError
from ..common.images import check_pixel_budget
from ..common.outputs import atomic_path, step_run, write_csv, write_json, write_tiff

log = logging.getLogger(__name__)

#: The organoid classes drawn, in their canonical spelling.
CLASSES = ("Cyst", "Filled in", "Early branching", "Branched", "Burned out")
#: Image size (height, width) in pixels that the object sizes below refer to.
REFERENCE_SIZE = (760, 1008)
MIN_SIZE = 128

# Ranges at the reference size (pixels): mean body radius per class.
_RADIUS_RANGE = {
    "Cyst": (20.0, 58.0),
    "Filled in": (18.0, 50.0),
    "Early branching": (20.0, 44.0),
    "Branched": (16.0, 32.0),
    "Burned out": (18.0, 44.0),
}
_FINE_ANGLES = 2048  # samples of r(theta) used to place the polygon vertices by arc length
_TWO_PI = 2.0 * math.pi



@dataclass(frozen=True)
class Style:
    """How a synthetic image looks: the numbers that differ between :data:`STYLES`.

    Ranges are (low, high) for uniform draws; transmissions are fractions of the background light
    (1 = background); sizes in px refer to :data:`REFERENCE_SIZE`.
    """

    name: str
    radius_scale: float = 1.0  # organoid radii relative to _RADIUS_RANGE (and the special cases)
    n_organoids: tuple[int, int] = (10, 25)  # per image at the reference size (inclusive)
    vignette: bool = True  # round field of view with black corners; else a flat field
    background: tuple[float, float] = (175.0, 210.0)  # background grey level (0-255)
    gradient: float = 0.12  # largest linear illumination gradient (relative, per half diagonal)
    blur: float = 0.5  # optical blur sigma (px)
    noise: tuple[float, float] = (2.5, 4.5)  # camera noise sigma range (grey levels)
    max_transmission: float = 1.0  # objects brighter than the background need > 1
    cyst_wall: tuple[float, float] = (0.30, 0.46)
    cyst_lumen: tuple[float, float] = (0.78, 0.92)
    cyst_wall_px: tuple[float, float] = (0.10, 0.18)  # wall thickness / radius
    cyst_wall_min_px: float = 1.5  # thinnest wall (px)
    filled_elongation: tuple[float, float] | None = None  # None: the common 1.0-1.5
    filled_base: tuple[float, float] = (0.36, 0.52)
    filled_texture: float = 0.05
    filled_rim: float = 0.10
    budding_base: tuple[float, float] = (0.48, 0.64)  # Early branching and Branched
    budding_texture: float = 0.06
    budding_rim: float = 0.12
    burned_base: tuple[float, float] = (0.10, 0.24)


#: The image styles ``make_demo_data(style=...)`` knows.
STYLES = {
    "default": Style("default"),
    "faint": Style(
        "faint", radius_scale=0.6, n_organoids=(14, 32), vignette=False,
        background=(150.0, 190.0), gradient=0.03, blur=0.8, noise=(4.0, 7.0),
        max_transmission=1.25, cyst_wall=(0.80, 0.90), cyst_lumen=(1.03, 1.12),
        cyst_wall_px=(0.06, 0.10), cyst_wall_min_px=1.0, filled_elongation=(1.0, 1.15), filled_base=(0.55, 0.70),
        filled_texture=0.04, filled_rim=0.06, budding_base=(0.60, 0.75), budding_texture=0.04,
        budding_rim=0.07, burned_base=(0.08, 0.22)),
}


def get_style(style: str | Style) -> Style:
    """The :class:`Style` called ``style`` (a Style passes through); OrgasegError if unknown."""
    if isinstance(style, Style):
        return style
    if isinstance(style, str) and style in STYLES:
        return STYLES[style]
    raise OptionError(f"unknown demo style {style!r}; known styles: {', '.join(STYLES)}")


# Which special cases go into which image (index) when there are at least two images.
_SPECIALS = {
    0: ("overlap", "multipolygon", "hole"),
    1: ("multipolygon", "hole", "unclassified", "line"),
}


# ----------------------------------------------------------------------------------------------
# Data structures


@dataclass
class DemoObject:
    """One annotation of a synthetic image, in image pixel coordinates (x right, y down).

    ``parts`` holds one (exterior, holes) pair per polygon: ``exterior`` is an (N, 2) array of
    (x, y) vertices (ring not closed, counter-clockwise in x/y), ``holes`` a list of such arrays
    (clockwise). A Polygon has one part, a MultiPolygon several. ``line`` is set instead for a
    LineString (a measurement line, not painted). ``class_name`` is the spelling written to the
    GeoJSON (``Filled-in`` stays ``Filled-in``); None for an unclassified annotation.
    """

    kind: str  # "organoid", "debris" or "line"
    class_name: str | None
    parts: list[tuple[np.ndarray, list[np.ndarray]]] = field(default_factory=list)
    line: np.ndarray | None = None
    appearance: dict[str, Any] = field(default_factory=dict)
    feature_id: str = ""

    @property
    def geometry_type(self) -> str:
        if self.line is not None:
            return "LineString"
        return "Polygon" if len(self.parts) == 1 else "MultiPolygon"

    def geometry(self) -> dict[str, Any]:
        """The GeoJSON geometry (rings closed, coordinates as Python floats)."""
        if self.line is not None:
            return {"type": "LineString", "coordinates": self.line.tolist()}

        def ring(vertices: np.ndarray) -> list[list[float]]:
            return np.vstack([vertices, vertices[:1]]).tolist()

        polygons = [[ring(ext)] + [ring(h) for h in holes] for ext, holes in self.parts]
        if len(polygons) == 1:
            return {"type": "Polygon", "coordinates": polygons[0]}
        return {"type": "MultiPolygon", "coordinates": polygons}

    def bounds(self) -> tuple[float, float, float, float]:
        """(min x, min y, max x, max y) of all vertices, in pixels."""
        points = self.line if self.line is not None else np.vstack([ext for ext, _ in self.parts])
        return (float(points[:, 0].min()), float(points[:, 1].min()),
                float(points[:, 0].max()), float(points[:, 1].max()))

    def feature(self) -> dict[str, Any]:
        """The QuPath-style GeoJSON Feature of this annotation."""
        properties: dict[str, Any] = {"objectType": "annotation"}
        if self.kind == "line":
            properties["name"] = "Measurement line"
        if self.class_name is not None:
            properties["classification"] = {"name": self.class_name,
                                            "color": list(class_colour(self.class_name))}
        properties["isLocked"] = False
        return {"type": "Feature", "id": self.feature_id, "geometry": self.geometry(),
                "properties": properties}


@dataclass
class SyntheticImage:
    """A generated image before it is written to a file.

    ``intensity``: float32 array (height, width), grey values on a 0-255 scale.
    ``objects``: the annotations, in GeoJSON feature order (later organoids are painted on top).
    ``tint``: RGB factors used when the image is saved as a colour JPEG.
    """

    intensity: np.ndarray
    objects: list[DemoObject]
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass
class DemoDataResult:
    """What :func:`make_demo_data` wrote."""

    out: Path
    images: list[Path] = field(default_factory=list)
    geojsons: list[Path] = field(default_factory=list)
    crops: list[Path] = field(default_factory=list)
    objects_csv: Path | None = None
    n_objects: int = 0  # annotation objects of all kinds (rows of objects.csv)
    n_organoids: int = 0  # classified organoid annotations
    class_counts: dict[str, int] = field(default_factory=dict)  # canonical class -> organoids
    image_formats: dict[str, str] = field(default_factory=dict)  # image name -> "8-bit RGB", ...
    size: tuple[int, int] = REFERENCE_SIZE
    style: str = "default"  # name of the image style (see STYLES)

    def summary(self) -> str:
        formats: dict[str, int] = {}
        for kind in self.image_formats.values():
            formats[kind] = formats.get(kind, 0) + 1
        others = self.n_objects - self.n_organoids
        lines = [
            f"demo-data: {len(self.images)} images of {self.size[0]}x{self.size[1]} px "
            f"({', '.join(f'{n} {k}' for k, n in sorted(formats.items()))}) in {self.out / 'images'}",
            f"  style: {self.style}",
            f"  {len(self.geojsons)} QuPath GeoJSON files in {self.out / 'geojsons'}: "
            f"{self.n_objects} annotations ({self.n_organoids} classified organoids, {others} other)",
            "  classes: " + ", ".join(f"{name} {n}" for name, n in sorted(self.class_counts.items())),
            f"  {len(self.crops)} per-object crops in {self.out / 'crops'}",
            f"  ground truth table: {self.objects_csv}",
        ]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Pure geometry


def _wrap_angle(angle: np.ndarray) -> np.ndarray:
    """Angles wrapped to [-pi, pi)."""
    return (angle + math.pi) % _TWO_PI - math.pi


def capsule_radius(angle: np.ndarray, length: float, half_width: float) -> np.ndarray:
    """Radial function of a capsule seen from one of its end points.

    The capsule is the segment from the origin to ``length`` along angle 0, thickened by
    ``half_width`` (round ends). Returns, for every ray ``angle`` (radians, any shape), the
    distance (pixels) at which the ray leaves the capsule.
    """
    d = _wrap_angle(np.asarray(angle, dtype=float))
    s, c = np.abs(np.sin(d)), np.cos(d)
    with np.errstate(divide="ignore"):
        side = np.where(s > 1e-12, half_width / np.maximum(s, 1e-300), np.inf)
    # The ray leaves through a long side unless it gets past the cap centre first; then it
    # leaves through the round cap (there h*c > length*s, so the root below is real).
    disc = np.maximum(half_width ** 2 - (length * s) ** 2, 0.0)
    cap = length * c + np.sqrt(disc)
    out = np.where(side * c <= length, side, cap)
    return np.where(c <= 0, half_width, out)


def radial_function(rng: np.random.Generator, radius: float, *, elongation: float = 1.0,
                    angle: float = 0.0, noise: float = 0.04, k_max: int = 6,
                    noise_decay: float = 1.0,
                    capsules: Sequence[tuple[float, float, float]] = ()) -> Callable[[np.ndarray], np.ndarray]:
    """A random star-shaped outline ``r(theta)`` (pixels) around the origin.

    Body: an ellipse of mean radius ``radius`` (px), axis ratio ``elongation`` (>= 1), long axis
    at ``angle`` (radians), modulated by harmonics 2..``k_max`` of relative size ``noise``
    (amplitude of harmonic k ~ noise / k**noise_decay). ``capsules``: (direction, length,
    half_width) protrusions (buds, branches) joined to the body by taking the larger radius.
    """
    ks = np.arange(2, max(2, k_max) + 1, dtype=float)
    amplitudes = rng.normal(0.0, noise, ks.size) / ks ** noise_decay
    phases = rng.uniform(0.0, _TWO_PI, ks.size)
    ax, ay = math.sqrt(elongation), 1.0 / math.sqrt(elongation)

    def body(theta: np.ndarray) -> np.ndarray:
        theta = np.asarray(theta, dtype=float)
        t = theta - angle
        r = radius / np.sqrt((np.cos(t) / ax) ** 2 + (np.sin(t) / ay) ** 2)
        r = r * (1.0 + np.cos(np.multiply.outer(theta, ks) + phases) @ amplitudes)
        return np.maximum(r, 0.35 * radius)

    return add_capsules(body, capsules) if capsules else body


def add_capsules(r: Callable[[np.ndarray], np.ndarray],
                 capsules: Sequence[tuple[float, float, float]]) -> Callable[[np.ndarray], np.ndarray]:
    """The outline ``r`` joined with capsules (direction rad, length px, half_width px) from the origin.

    The union of shapes that are star-shaped around the origin has the larger radius of the two
    on every ray, so the result stays star-shaped (one boundary crossing per ray).
    """
    caps = [tuple(map(float, c)) for c in capsules]

    def joined(theta: np.ndarray) -> np.ndarray:
        out = r(theta)
        for direction, length, half_width in caps:
            out = np.maximum(out, capsule_radius(np.asarray(theta, dtype=float) - direction,
                                                 length, half_width))
        return out

    return joined


def radial_polygon(r: Callable[[np.ndarray], np.ndarray], n_vertices: int, *,
                   centre: tuple[float, float] = (0.0, 0.0), reverse: bool = False) -> np.ndarray:
    """Vertices (n, 2) of the outline ``r(theta)`` around ``centre``, evenly spaced by arc length.

    Spacing by arc length (not angle) puts enough vertices along the sides of thin branches.
    The ring is counter-clockwise in x/y (clockwise with ``reverse``) and not closed.
    """
    theta = np.linspace(0.0, _TWO_PI, _FINE_ANGLES, endpoint=False)
    radii = r(theta)
    points = np.column_stack([radii * np.cos(theta), radii * np.sin(theta)])
    closed = np.vstack([points, points[:1]])
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(closed, axis=0).T))])
    targets = np.linspace(0.0, arc[-1], n_vertices, endpoint=False)
    theta_v = np.interp(targets, arc, np.append(theta, _TWO_PI))
    radii_v = r(theta_v)
    vertices = np.column_stack([centre[0] + radii_v * np.cos(theta_v),
                                centre[1] + radii_v * np.sin(theta_v)])
    return vertices[::-1] if reverse else vertices


def _n_vertices(r: Callable[[np.ndarray], np.ndarray], scale: float) -> int:
    """40-120 vertices, about one per 4 px of outline at the reference size."""
    theta = np.linspace(0.0, _TWO_PI, 512, endpoint=False)
    radii = r(theta)
    pts = np.column_stack([radii * np.cos(theta), radii * np.sin(theta)])
    perimeter = float(np.hypot(*np.diff(np.vstack([pts, pts[:1]]), axis=0).T).sum())
    return int(np.clip(round(perimeter / scale / 4.0), 40, 120))


def rasterise_parts(parts: Sequence[tuple[np.ndarray, Sequence[np.ndarray]]], origin: tuple[int, int],
                    shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask (shape = (height, width)) of polygons whose pixel (0, 0) is image pixel ``origin``.

    ``origin`` = (x0, y0) in image pixels; ``parts`` as in :class:`DemoObject` (image x/y
    coordinates). A pixel is inside when its centre (col + 0.5, row + 0.5) is inside the
    exterior and outside every hole (QuPath's convention).
    """
    from skimage.draw import polygon as draw_polygon

    x0, y0 = origin
    mask = np.zeros(shape, dtype=bool)
    for exterior, holes in parts:
        part = np.zeros(shape, dtype=bool)
        rr, cc = draw_polygon(exterior[:, 1] - 0.5 - y0, exterior[:, 0] - 0.5 - x0, shape)
        part[rr, cc] = True
        for hole in holes:
            rr, cc = draw_polygon(hole[:, 1] - 0.5 - y0, hole[:, 0] - 0.5 - x0, shape)
            part[rr, cc] = False
        mask |= part
    return mask


def rasterise_geometry(geometry: dict[str, Any], origin: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of a GeoJSON Polygon/MultiPolygon, as :func:`rasterise_parts` (for checks)."""
    kind = geometry["type"]
    if kind not in ("Polygon", "MultiPolygon"):
        return np.zeros(shape, dtype=bool)
    polygons = [geometry["coordinates"]] if kind == "Polygon" else geometry["coordinates"]
    parts = [(np.asarray(p[0], float), [np.asarray(h, float) for h in p[1:]]) for p in polygons]
    return rasterise_parts(parts, origin, shape)


def roi_pixel_bounds(bounds: tuple[float, float, float, float], image_shape: tuple[int, int]
                     ) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1), x1/y1 exclusive, of a ROI's bounds, as QuPath crops it.

    QuPath's region for a ROI runs from floor(min) to ceil(max); it is clipped to the image.
    """
    minx, miny, maxx, maxy = bounds
    height, width = image_shape
    x0 = min(max(int(math.floor(minx)), 0), width)
    y0 = min(max(int(math.floor(miny)), 0), height)
    x1 = min(max(int(math.ceil(maxx)), x0), width)
    y1 = min(max(int(math.ceil(maxy)), y0), height)
    return x0, y0, x1, y1


# ----------------------------------------------------------------------------------------------
# Organoid shapes (centred on the origin)


@dataclass
class _Template:
    """An object's outline around the origin before it is placed (unrounded coordinates)."""

    kind: str
    class_name: str | None
    parts: list[tuple[np.ndarray, list[np.ndarray]]]
    appearance: dict[str, Any]
    radius: float  # mean body radius (px)

    @property
    def bound_radius(self) -> float:
        return float(max(np.hypot(*ext.T).max() for ext, _ in self.parts))

    def moved(self, dx: float, dy: float) -> "_Template":
        shift = np.array([dx, dy])
        return _Template(self.kind, self.class_name,
                         [(ext + shift, [h + shift for h in holes]) for ext, holes in self.parts],
                         self.appearance, self.radius)


def _spread_directions(rng: np.random.Generator, n: int, jitter: float = 0.3) -> np.ndarray:
    """``n`` directions (radians) roughly evenly spread around the circle, randomly rotated."""
    base = rng.uniform(0.0, _TWO_PI)
    step = _TWO_PI / n
    return base + step * np.arange(n) + rng.uniform(-jitter, jitter, n) * step


def organoid_template(class_name: str, rng: np.random.Generator, scale: float, *,
                      radius: float | None = None, hole: bool = False, detached_bud: bool = False,
                      spelling: str | None = None, style: str | Style = "default") -> _Template:
    """A random organoid of ``class_name`` (canonical spelling) centred on the origin.

    ``scale``: image size relative to :data:`REFERENCE_SIZE` (sizes in px are multiplied by it).
    ``radius``: mean body radius in px at this scale (random per class, times the style's
    ``radius_scale``, when None; a given radius is used as it is).
    ``style``: a :data:`STYLES` name or :class:`Style` (sizes and grey levels of the classes).
    ``hole``: the lumen is a hole of the polygon (background in the image; for ring-like cysts).
    ``detached_bud``: add a separate small bud as a second polygon (a MultiPolygon).
    ``spelling``: the class name written to the GeoJSON (default ``class_name``).
    """
    style = get_style(style)
    if radius is None:
        lo, hi = _RADIUS_RANGE[class_name]
        f = style.radius_scale
        radius = rng.uniform(lo * f, hi * f) * scale
    radius = max(float(radius), 5.0)
    elongation = rng.uniform(1.0, 1.5)
    angle = rng.uniform(0.0, math.pi)
    # Buds/branches: (count range, half width / radius, tip beyond the body surface / radius).
    protrusions: tuple[tuple[int, int], tuple[float, float], tuple[float, float]] | None = None
    noise, k_max, decay = 0.035, 6, 1.0
    appearance: dict[str, Any] = {}
    if class_name == "Cyst":
        elongation = rng.uniform(1.0, 1.35)
        appearance = {"wall": rng.uniform(*style.cyst_wall), "lumen": rng.uniform(*style.cyst_lumen),
                      "wall_px": max(style.cyst_wall_min_px, rng.uniform(*style.cyst_wall_px) * radius)}
    elif class_name == "Filled in":
        if style.filled_elongation is not None:
            elongation = rng.uniform(*style.filled_elongation)
        appearance = {"base": rng.uniform(*style.filled_base), "texture": style.filled_texture,
                      "rim": style.filled_rim}
    elif class_name == "Early branching":
        elongation = rng.uniform(1.0, 1.35)
        protrusions = ((1, 3), (0.30, 0.45), (0.30, 0.60))  # 1-3 short, round buds
        appearance = {"base": rng.uniform(*style.budding_base), "texture": style.budding_texture,
                      "rim": style.budding_rim}
    elif class_name == "Branched":
        elongation = rng.uniform(1.0, 1.3)
        protrusions = ((5, 9), (0.16, 0.26), (0.80, 1.30))  # 5-9 long, narrow branches
        appearance = {"base": rng.uniform(*style.budding_base), "texture": style.budding_texture,
                      "rim": style.budding_rim}
    elif class_name == "Burned out":
        noise, k_max, decay = 0.10, 24, 0.5  # rough, irregular outline
        appearance = {"base": rng.uniform(*style.burned_base), "grain": 0.08}
    elif class_name == "debris":
        noise, k_max, decay = 0.15, 12, 0.6
        appearance = {"base": rng.uniform(0.30, 0.40), "grain": 0.05}
    else:
        raise ValueError(f"unknown demo class {class_name!r}")
    appearance["class"] = class_name
    r = radial_function(rng, radius, elongation=elongation, angle=angle, noise=noise, k_max=k_max,
                        noise_decay=decay)
    capsules: list[tuple[float, float, float]] = []
    if protrusions is not None:
        (n_lo, n_hi), width, beyond = protrusions
        for direction in _spread_directions(rng, int(rng.integers(n_lo, n_hi + 1)), jitter=0.25):
            half_width = max(2.0, rng.uniform(*width) * radius)
            # Measured from the body surface, so buds stick out as far along a long axis too.
            tip = float(r(np.array([direction]))[0]) + rng.uniform(*beyond) * radius
            capsules.append((float(direction), tip - half_width, half_width))
        r = add_capsules(r, capsules)
    exterior = radial_polygon(r, _n_vertices(r, scale))
    holes: list[np.ndarray] = []
    if hole:
        keep = 1.0 - rng.uniform(0.24, 0.34)  # the wall is a third to a quarter of the radius
        r_hole = lambda t: keep * r(t)  # noqa: E731 - same outline, scaled: strictly inside
        holes.append(radial_polygon(r_hole, max(40, int(0.8 * len(exterior))), reverse=True))
        appearance["hole"] = True
    parts = [(exterior, holes)]
    if detached_bud:
        parts.append(_detached_bud(rng, r, capsules, radius, scale))
    kind = "debris" if class_name == "debris" else "organoid"
    name = None if kind == "debris" else (spelling or class_name)
    return _Template(kind, name, parts, appearance, radius)


def _detached_bud(rng: np.random.Generator, r: Callable[[np.ndarray], np.ndarray],
                  capsules: Sequence[tuple[float, float, float]], radius: float,
                  scale: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """A small separate bud beside an organoid outline ``r``, in the widest gap between its buds."""
    if capsules:
        directions = np.sort(np.mod([c[0] for c in capsules], _TWO_PI))
        gaps = np.diff(np.append(directions, directions[0] + _TWO_PI))
        direction = directions[int(np.argmax(gaps))] + gaps.max() / 2.0
    else:
        direction = rng.uniform(0.0, _TWO_PI)
    bud_radius = max(3.0, rng.uniform(0.24, 0.32) * radius)
    gap = max(3.0, 5.0 * scale)  # clear background between body and bud, even after blurring
    theta = direction + np.linspace(-0.6, 0.6, 61)
    body_reach = float(r(theta).max())
    distance = body_reach + gap + bud_radius
    centre = (distance * math.cos(direction), distance * math.sin(direction))
    bud_r = radial_function(rng, bud_radius, elongation=rng.uniform(1.0, 1.3),
                            angle=rng.uniform(0.0, math.pi), noise=0.03, k_max=4)
    return radial_polygon(bud_r, 40, centre=centre), []


def _overlapping_pair(rng: np.random.Generator, scale: float, filled_spelling: str,
                      style: Style = STYLES["default"]) -> list[_Template]:
    """A 'Filled in' organoid and a 'Cyst' whose polygons overlap slightly (2-8 % of the smaller)."""
    from shapely.geometry import Polygon

    f = style.radius_scale
    a = organoid_template("Filled in", rng, scale, radius=rng.uniform(28, 36) * f * scale,
                          spelling=filled_spelling, style=style)
    b = organoid_template("Cyst", rng, scale, radius=rng.uniform(24, 32) * f * scale, style=style)
    direction = rng.uniform(0.0, _TWO_PI)
    unit = np.array([math.cos(direction), math.sin(direction)])
    pa = Polygon(a.parts[0][0])
    pb0 = Polygon(b.parts[0][0])
    smaller = min(pa.area, pb0.area)
    # Walk B towards A from just touching until the overlap is a small fraction of the smaller.
    distance = a.bound_radius + b.bound_radius
    step = 0.5 * scale
    b_moved = b
    for _ in range(400):
        b_moved = b.moved(*(unit * distance))
        overlap = pa.intersection(Polygon(b_moved.parts[0][0])).area / smaller
        if overlap >= 0.02:
            break
        distance -= step
    shift = -0.5 * unit * distance  # centre the pair on the origin
    return [a.moved(*shift), b_moved.moved(*shift)]


# ----------------------------------------------------------------------------------------------
# Painting


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation (float32)."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    if sigma > 0.3:
        noise = ndi.gaussian_filter(noise, sigma)
    std = float(noise.std())
    return noise / std if std > 0 else noise


def _object_transmission(appearance: dict[str, Any], mask: np.ndarray, rng: np.random.Generator,
                         scale: float) -> np.ndarray:
    """Fraction of light an object lets through (float32, same shape as ``mask``; 1 = background).

    Brightfield organoids absorb and scatter light, so they are darker than the background, with
    a darker rim; cysts are a dark wall around a light lumen.
    """
    shape = mask.shape
    # Distance (px) of every object pixel to the nearest pixel outside the object (or its hole).
    dist = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1].astype(np.float32)
    kind = appearance["class"]
    if kind == "Cyst":
        wall = appearance["wall"] + 0.03 * _smooth_noise(rng, shape, 1.5 * scale)
        if appearance.get("hole"):
            return wall
        lumen = appearance["lumen"] + 0.03 * _smooth_noise(rng, shape, 2.5 * scale)
        wall_px = appearance["wall_px"]
        blend = np.clip((dist - wall_px) / max(1.0, 0.5 * wall_px), 0.0, 1.0)
        return wall + (lumen - wall) * blend
    if kind in ("Filled in", "Early branching", "Branched"):
        t = appearance["base"] + appearance["texture"] * _smooth_noise(rng, shape, 2.5 * scale)
        return t - appearance["rim"] * np.exp(-dist / max(1.0, 2.0 * scale))
    # Burned out and debris: dark and granular, with a few darker clumps.
    grain = appearance["grain"] * _smooth_noise(rng, shape, 0.7 * scale)
    clumps = _smooth_noise(rng, shape, 1.5 * scale) > 1.2
    return appearance["base"] + grain - 0.06 * clumps


def paint_object(transmission: np.ndarray, obj: DemoObject, rng: np.random.Generator,
                 scale: float, *, max_transmission: float = 1.0) -> int:
    """Paint one polygon object into ``transmission`` (float32 (H, W), in place); return its pixels.

    Works only inside the object's bounding box. Later objects cover earlier ones. Transmission
    is clipped to [0.03, ``max_transmission``] (above 1: brighter than the background).
    """
    x0, y0, x1, y1 = roi_pixel_bounds(obj.bounds(), transmission.shape)
    if x1 <= x0 or y1 <= y0:
        return 0
    mask = rasterise_parts(obj.parts, (x0, y0), (y1 - y0, x1 - x0))
    if not mask.any():
        return 0
    values = np.clip(_object_transmission(obj.appearance, mask, rng, scale), 0.03, max_transmission)
    box = transmission[y0:y1, x0:x1]
    box[mask] = values[mask]
    return int(mask.sum())


def _paint_specks(transmission: np.ndarray, rng: np.random.Generator, centres: np.ndarray,
                  scale: float) -> None:
    """Small soft dark dust specks at ``centres`` ((n, 2) x, y), not annotated."""
    height, width = transmission.shape
    for cx, cy in centres:
        sigma = max(0.6, rng.uniform(0.6, 2.0) * scale)
        depth = rng.uniform(0.15, 0.5)
        half = int(math.ceil(3 * sigma))
        x0, x1 = max(int(cx) - half, 0), min(int(cx) + half + 1, width)
        y0, y1 = max(int(cy) - half, 0), min(int(cy) + half + 1, height)
        yy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
        xx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
        transmission[y0:y1, x0:x1] *= 1.0 - depth * np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))


@dataclass
class _Field:
    """The microscope's field of view: where objects may go."""

    height: int
    width: int
    centre: tuple[float, float]  # vignette circle centre (x, y), px
    radius: float  # vignette circle radius, px (infinite without vignette)
    edge: float  # width of its soft edge, px


def illumination(height: int, width: int, rng: np.random.Generator,
                 style: str | Style = "default") -> tuple[np.ndarray, _Field]:
    """Background grey level (float32 (H, W), 0-255 scale) with uneven illumination and vignette.

    With a vignetting ``style`` (the default): a light grey level with a smooth gradient and a
    broad bright or dim patch, falling off towards the edge of the field, and black outside a
    circle that cuts off the corners. Otherwise a flat field with a gentle linear gradient.
    """
    style = get_style(style)
    half_diag = 0.5 * math.hypot(height, width)
    x = np.arange(width, dtype=np.float32) + 0.5
    y = (np.arange(height, dtype=np.float32) + 0.5)[:, None]
    if not style.vignette:
        level = rng.uniform(*style.background)
        gx, gy = rng.uniform(-style.gradient, style.gradient, 2)
        xn, yn = (x - width / 2) / half_diag, (y - height / 2) / half_diag
        field_ = level * (1.0 + gx * xn + gy * yn)
        return field_.astype(np.float32), _Field(height, width, (width / 2, height / 2), math.inf, 0.0)
    cx = width / 2 + rng.uniform(-0.02, 0.02) * width
    cy = height / 2 + rng.uniform(-0.02, 0.02) * height
    radius = half_diag * rng.uniform(0.86, 0.92)
    edge = 0.03 * half_diag
    level = rng.uniform(*style.background)
    gx, gy = rng.uniform(-style.gradient, style.gradient, 2)
    bx, by = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
    amp, spread = rng.uniform(-0.05, 0.08), rng.uniform(0.3, 0.6) * half_diag
    xn, yn = (x - cx) / half_diag, (y - cy) / half_diag
    r2 = ((x - cx) ** 2 + (y - cy) ** 2)  # (H, W)
    field_ = level * (1.0 + gx * xn + gy * yn
                      + amp * np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * spread ** 2))
                      - 0.10 * r2 / radius ** 2)
    dist = np.sqrt(r2)
    inside = np.clip((radius - dist) / edge, 0.0, 1.0)
    inside = inside * inside * (3 - 2 * inside)  # smooth step
    field_ *= 0.04 + 0.96 * inside
    return field_.astype(np.float32), _Field(height, width, (cx, cy), radius, edge)


# ----------------------------------------------------------------------------------------------
# One image


class _Placer:
    """Rejection sampling of bounding circles inside the field of view, without overlaps."""

    def __init__(self, fov: _Field, scale: float):
        self.fov = fov
        self.margin = max(3.0, 8.0 * scale)
        self.gap = max(3.0, 6.0 * scale)
        self.circles = np.zeros((0, 3))  # x, y, radius

    def place(self, rng: np.random.Generator, radius: float, attempts: int = 300) -> tuple[float, float] | None:
        fov, m = self.fov, self.margin
        lo_x, hi_x = radius + m, fov.width - radius - m
        lo_y, hi_y = radius + m, fov.height - radius - m
        if hi_x <= lo_x or hi_y <= lo_y:
            return None
        for _ in range(attempts):
            x, y = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
            if math.hypot(x - fov.centre[0], y - fov.centre[1]) + radius + m + fov.edge > fov.radius:
                continue
            c = self.circles
            if len(c) and np.any(np.hypot(c[:, 0] - x, c[:, 1] - y) < c[:, 2] + radius + self.gap):
                continue
            self.add(x, y, radius)
            return x, y
        return None

    def add(self, x: float, y: float, radius: float) -> None:
        self.circles = np.vstack([self.circles, [x, y, radius]])


def _finalise(template: _Template, x: float, y: float) -> DemoObject:
    """Move a template to (x, y) and round vertices to 1/100 px (what the GeoJSON holds)."""
    shift = np.array([x, y])
    parts = [(np.round(ext + shift, 2), [np.round(h + shift, 2) for h in holes])
             for ext, holes in template.parts]
    return DemoObject(template.kind, template.class_name, parts, appearance=template.appearance)


def synthesise_image(size: tuple[int, int], rng: np.random.Generator, *,
                     specials: Sequence[str] = (), filled_spelling: str = "Filled in",
                     n_organoids: int | None = None, style: str | Style = "default",
                     class_weights: Mapping[str, float] | None = None) -> SyntheticImage:
    """Generate one brightfield image and its annotations.

    ``size``: (height, width) px. ``specials``: any of ``overlap`` (one slightly overlapping
    Filled in/Cyst pair), ``multipolygon`` (an organoid with a detached bud), ``hole`` (a cyst
    whose lumen is a hole), ``unclassified`` (a debris clump annotated without class), ``line``
    (a measurement line). ``filled_spelling``: how the Filled in class is written.
    ``n_organoids``: total organoids wanted (random per style, 10-25 for ``default``, at the
    reference field of view). ``style``: a :data:`STYLES` name or :class:`Style`.
    ``class_weights``: the chance of each class for the ordinary organoids (class name -> weight,
    normalised; default: every class equally often, balanced within the image).
    Returns intensities on a 0-255 scale (float32, (H, W)) and the objects in feature order.
    """
    style = get_style(style)
    height, width = size
    scale = min(height / REFERENCE_SIZE[0], width / REFERENCE_SIZE[1])
    # More objects where the aspect ratio gives more field than the reference shape at this scale.
    area_factor = min(4.0, height * width / (scale ** 2 * REFERENCE_SIZE[0] * REFERENCE_SIZE[1]))
    intensity, fov = illumination(height, width, rng, style)
    placer = _Placer(fov, scale)

    # Special objects first, so they find room; then a class-balanced set of ordinary organoids.
    groups: list[list[_Template]] = []
    if "overlap" in specials:
        groups.append(_overlapping_pair(rng, scale, filled_spelling, style))
    if "multipolygon" in specials:
        cls = "Branched" if "overlap" in specials else "Early branching"
        groups.append([organoid_template(cls, rng, scale, detached_bud=True, style=style)])
    if "hole" in specials:
        groups.append([organoid_template("Cyst", rng, scale, hole=True, style=style,
                                         radius=rng.uniform(30, 50) * style.radius_scale * scale)])
    if "unclassified" in specials:
        groups.append([organoid_template("debris", rng, scale, radius=rng.uniform(9, 13) * scale)])
    n_special = sum(len(g) for g in groups if g[0].kind == "organoid")
    if n_organoids is None:
        lo, hi = style.n_organoids
        n_organoids = int(round(rng.integers(lo, hi + 1) * area_factor))
    n_regular = max(0, n_organoids - n_special)
    if class_weights is None:
        classes = np.resize(rng.permutation(len(CLASSES)), n_regular)
        classes = [CLASSES[i] for i in rng.permutation(classes)]
    else:
        weights = np.array([max(0.0, float(class_weights.get(c, 0.0))) for c in CLASSES])
        if weights.sum() <= 0:
            raise OrgasegError(f"class weights must give some class a positive weight, got {dict(class_weights)}")
        classes = [CLASSES[i] for i in rng.choice(len(CLASSES), size=n_regular, p=weights / weights.sum())]
    regular = [organoid_template(c, rng, scale, spelling=filled_spelling if c == "Filled in" else None,
                                 style=style)
               for c in classes]
    # Large objects first: they are the hardest to fit.
    regular.sort(key=lambda t: -t.bound_radius)
    groups += [[t] for t in regular]

    objects: list[DemoObject] = []
    skipped = 0
    for group in groups:
        bound = max(float(np.hypot(*np.vstack([ext for t in group for ext, _ in t.parts]).T).max()), 1.0)
        spot = placer.place(rng, bound)
        if spot is None:
            skipped += 1
            continue
        objects += [_finalise(t, *spot) for t in group]
    if skipped:
        log.debug("%d objects did not fit into a %dx%d image", skipped, height, width)

    transmission = np.ones((height, width), dtype=np.float32)
    for obj in objects:
        paint_object(transmission, obj, rng, scale, max_transmission=style.max_transmission)

    # Dust specks between the objects (not annotated).
    n_specks = int(rng.integers(15, 40) * area_factor)
    specks = []
    for _ in range(n_specks):
        spot = placer.place(rng, max(2.0, 3.0 * scale), attempts=20)
        if spot is not None:
            specks.append(spot)
    _paint_specks(transmission, rng, np.asarray(specks).reshape(-1, 2), scale)

    intensity *= transmission
    # A little optical blur, then camera noise.
    blur = style.blur * scale
    if blur >= 0.3:
        intensity = ndi.gaussian_filter(intensity, blur)
    noise_sigma = rng.uniform(*style.noise)
    intensity += noise_sigma * rng.standard_normal(intensity.shape, dtype=np.float32)
    np.clip(intensity, 0.0, 255.0, out=intensity)

    if "line" in specials:
        # A horizontal measurement line near the bottom of the field of view (QuPath overlay only).
        length = 100.0 * scale
        y = fov.centre[1] + 0.55 * min(fov.radius, height / 2)
        y = min(y, height - 2.0)
        x = fov.centre[0] - length / 2
        line = np.round(np.array([[x, y], [x + length, y]]), 2)
        objects.append(DemoObject("line", None, line=line))

    for obj in objects:
        obj.feature_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    tint = (1.0 + rng.uniform(0.0, 0.02), 1.0, 1.0 - rng.uniform(0.02, 0.05))
    return SyntheticImage(intensity, objects, tint)


# ----------------------------------------------------------------------------------------------
# Files


def image_format(index: int) -> tuple[str, str]:
    """(suffix, description) of demo image ``index``: JPEGs and TIFFs alternate; image 3 is 16-bit."""
    if index % 2 == 0:
        return ".jpg", "8-bit RGB JPEG"
    if index == 3:
        return ".tif", "16-bit grey TIFF"
    return ".tif", "8-bit grey TIFF"


def encode_pixels(intensity: np.ndarray, description: str, tint: Sequence[float]) -> np.ndarray:
    """Pixels to store for an image of ``description`` (see :func:`image_format`)."""
    if description.startswith("16-bit"):
        return np.round(intensity * 257.0).astype(np.uint16)
    if "RGB" in description:
        rgb = intensity[..., None] * np.asarray(tint, dtype=np.float32)
        return np.round(np.clip(rgb, 0, 255)).astype(np.uint8)
    return np.round(intensity).astype(np.uint8)


def _write_jpeg(path: Path, rgb: np.ndarray) -> np.ndarray:
    """Write an RGB JPEG (quality 95) atomically; return the decoded pixels (what readers see)."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(rgb, mode="RGB").save(tmp, format="JPEG", quality=95)
        with Image.open(tmp) as im:
            decoded = np.asarray(im.convert("RGB"))
    return decoded


def _crop_name(image_name: str, obj: DemoObject, index: int) -> str:
    """QuPath's crop name: image name (with extension) + the object's toString() + _index."""
    label = "Annotation" if obj.class_name is None else f"Annotation ({obj.class_name})"
    return f"{image_name}{label}_{index}.tif"


def _object_row(image_name: str, obj: DemoObject, image_shape: tuple[int, int],
                crop: str) -> dict[str, Any]:
    from shapely.geometry import shape as to_shape

    geom = to_shape(obj.geometry())
    centroid = geom.centroid
    x0, y0, x1, y1 = roi_pixel_bounds(obj.bounds(), image_shape)
    n_holes = sum(len(h) for _, h in obj.parts)
    return {
        "image": image_name,
        "stem": Path(image_name).stem,
        "id": obj.feature_id,
        "class": canonical_class_name(obj.class_name) if obj.class_name else "",
        "class_as_annotated": obj.class_name or "",
        "kind": obj.kind,
        "geometry": obj.geometry_type,
        "n_parts": len(obj.parts) if obj.parts else 1,
        "n_holes": n_holes,
        "centroid_x": round(centroid.x, 3),
        "centroid_y": round(centroid.y, 3),
        "area": round(geom.area, 3),
        "bbox_x0": x0, "bbox_y0": y0, "bbox_x1": x1, "bbox_y1": y1,
        "crop": crop,
    }


#: Columns of ``objects.csv`` (bbox: QuPath's crop box in px, x1/y1 exclusive).
OBJECT_COLUMNS = ["image", "stem", "id", "class", "class_as_annotated", "kind", "geometry", "n_parts",
                  "n_holes", "centroid_x", "centroid_y", "area", "bbox_x0", "bbox_y0", "bbox_x1",
                  "bbox_y1", "crop"]


def _check_arguments(n_images: int, seed: int, size: Sequence[int]) -> tuple[int, int]:
    if isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)) or n_images < 1:
        raise OptionError(f"n_images must be a whole number >= 1, got {n_images!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise OptionError(f"seed must be a whole number >= 0, got {seed!r}")
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError) as exc:
        raise OrgasegError(f"size must be (height, width) in pixels, got {size!r}") from exc
    if min(height, width) < MIN_SIZE:
        raise OptionError(f"size must be at least {MIN_SIZE}x{MIN_SIZE} px, got {height}x{width}")
    check_pixel_budget(height * width, f"--size {height}x{width}")
    return height, width


def make_demo_data(out: Path, *, n_images: int = 8, seed: int = 0,
                   size: tuple[int, int] = REFERENCE_SIZE, overwrite: bool = False,
                   style: str | Style = "default") -> DemoDataResult:
    """Write synthetic brightfield organoid images and their QuPath-style annotations to ``out``.

    ``n_images`` images of ``size`` = (height, width) px: even-numbered ones as 8-bit RGB JPEG
    (``demo_000.jpg``), odd-numbered ones as 8-bit grey TIFF, ``demo_003.tif`` as 16-bit grey
    TIFF (values = 257 x the 8-bit scale). Writes ``images/``, ``geojsons/`` (one
    ``<image name>.geojson`` FeatureCollection per image), ``crops/`` (QuPath-named ROI crops of
    every polygon annotation), ``objects.csv`` (ground truth) and ``run.json``. The same
    ``seed`` and arguments give byte-identical files; image k does not depend on ``n_images``
    (except that with one image, all special cases go into it). ``style``: how the images look,
    a name in :data:`STYLES` (``default`` or ``faint``, see the module docstring).
    """
    import pandas as pd
    from tqdm import tqdm

    height, width = _check_arguments(n_images, seed, size)
    image_style = get_style(style)
    out = Path(out)
    arguments = {"out": out, "n_images": int(n_images), "seed": int(seed), "size": [height, width],
                 "style": image_style.name, "overwrite": overwrite}
    with step_run("demo-data", out, arguments, overwrite=overwrite) as record:
        result = DemoDataResult(out=out, size=(height, width), style=image_style.name)
        rows: list[dict[str, Any]] = []
        for index in tqdm(range(n_images), desc="demo images", unit="image", disable=None):
            rng = np.random.default_rng([int(seed), index])
            if n_images == 1:
                specials = tuple(dict.fromkeys(_SPECIALS[0] + _SPECIALS[1]))
            else:
                specials = _SPECIALS.get(index, ())
            spelling = "Filled in" if index % 2 == 0 else "Filled-in"
            image = synthesise_image((height, width), rng, specials=specials, filled_spelling=spelling,
                                     style=image_style)
            suffix, description = image_format(index)
            name = f"demo_{index:03d}{suffix}"
            path = out / "images" / name
            pixels = encode_pixels(image.intensity, description, image.tint)
            if suffix == ".jpg":
                pixels = _write_jpeg(path, pixels)
            else:
                write_tiff(path, pixels)
            result.images.append(path)
            result.image_formats[name] = description

            features = []
            for number, obj in enumerate(image.objects, start=1):
                features.append(obj.feature())
                crop_name = ""
                if obj.line is None:
                    x0, y0, x1, y1 = roi_pixel_bounds(obj.bounds(), (height, width))
                    crop_name = _crop_name(name, obj, number)
                    result.crops.append(write_tiff(out / "crops" / crop_name, pixels[y0:y1, x0:x1]))
                rows.append(_object_row(name, obj, (height, width), crop_name))
                if obj.kind == "organoid" and obj.class_name:
                    canonical = canonical_class_name(obj.class_name)
                    result.class_counts[canonical] = result.class_counts.get(canonical, 0) + 1
            geojson = out / "geojsons" / f"{name}.geojson"
            write_json(geojson, {"type": "FeatureCollection", "features": features})
            result.geojsons.append(geojson)
            log.info("wrote %s (%s) with %d annotations to %s", path, description, len(features), geojson)

        result.objects_csv = write_csv(out / "objects.csv", pd.DataFrame(rows, columns=OBJECT_COLUMNS))
        result.n_objects = len(rows)
        result.n_organoids = sum(result.class_counts.values())
        record.results.update({
            "n_images": len(result.images), "n_objects": result.n_objects,
            "n_organoids": result.n_organoids, "n_crops": len(result.crops),
            "class_counts": dict(sorted(result.class_counts.items())),
            "image_formats": result.image_formats,
        })
        log.info("wrote %d crops to %s and the object table %s", len(result.crops), out / "crops",
                 result.objects_csv)
    return result
