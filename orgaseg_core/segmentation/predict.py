"""``segment``: StarDist prediction for one image or a folder of images, any size.

For each input image ``<stem>.<ext>`` it writes into ``out``:

* ``<stem>.tif`` - instance label image, same height and width as the input, 0 = background,
  objects 1..N (uint16, uint32 beyond 65,535 objects), zlib-compressed TIFF;
* ``<stem>.geojson`` - a QuPath FeatureCollection with one ``detection`` per object (StarDist's
  polygon, in input-image pixels), measurements ``Label``, ``Probability``, ``Area px``;
  drag it onto the image in QuPath;
* ``<stem>_objects.csv`` - one row per object: image, label, bounding box (min inclusive, max
  exclusive, like scikit-image), centroid (row, col), area in pixels, probability;

and ``run.json``. Per image: grey (:func:`orgaseg_core.common.images.to_grey`) -> the grey-level
preprocessing the model was trained with (vignette removal, background flattening; from the
model folder) -> rescale by ``model scale / image_scale`` to the model's pixel scale ->
percentile normalisation with the model's percentiles -> StarDist in tiles -> labels back to
the input size (smooth outlines, :func:`upscale_labels`), polygons scaled back -> the outline
refinement the model chose on its validation images, or the one asked for
(:mod:`orgaseg_core.segmentation.refine`:
objects grown into StarDist's probability map or onto the image's edges at the input's
resolution; the outlines written are then traced from the refined labels).

A pixel-forest model (``train-segmentation --backend forest``, :mod:`.forest`) is segmented by
:func:`~.forest.predict.segment_forest_array` instead (grey -> preprocessing -> model scale ->
class probabilities in tiles -> regions), and the same files are written; its ``probability``
is each object's mean foreground probability.

Unreadable files are reported and skipped; the others are still written, and the step fails at
the end naming them.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm import tqdm

from ..common.errors import InputFileError, OptionError, OrgasegError
from ..common.illumination import process_image
from ..common.images import (
    check_pixel_budget,
    input_images,
    label_dtype,
    read_image,
    to_grey,
)
from ..common.kept_models import keep_loaded
from ..common.labels import relabel_consecutive
from ..common.outputs import step_run, whole_or_absent, write_csv, write_tiff
from ..common.params import parse_pair
from ..common.resample import nearest_indices, output_length, rescale_image
from ..qupath.geojson import make_feature, new_run_ids, object_id, write_feature_collection
from .model import (
    LoadedModel,
    auto_n_tiles,
    check_segmentation_model,
    load_model,
    model_kind,
    normalize_image,
    quiet_stardist,
)

log = logging.getLogger(__name__)

OBJECT_COLUMNS = ["image", "label", "bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col",
                  "centroid_row", "centroid_col", "area_px", "probability"]


# --------------------------------------------------------------------------- array functions

@dataclass
class Segmentation:
    """The objects found in one image, at the input image's resolution.

    labels: (Y, X) uint16/uint32, objects 1..N. polygons[i]: (n_rays, 2) float array of (x, y)
    vertices of object i + 1 in QuPath pixel coordinates of the input image (pixel (r, c)
    covers [c, c + 1) x [r, r + 1)). probabilities[i]: StarDist's object probability of
    object i + 1. model_shape: (Y, X) of the image the network saw; n_tiles: its tiling.
    refinement: the outline refinement applied; geometries: then the refined outlines by label
    (the polygons stay StarDist's).
    """

    labels: np.ndarray
    polygons: list[np.ndarray]
    probabilities: np.ndarray
    model_shape: tuple[int, int]
    n_tiles: tuple[int, int]
    refinement: str = "none"
    #: label -> shapely outline traced from refined labels (None: StarDist's ``polygons``)
    geometries: dict | None = None
    #: the pyramid levels predicted at (factors of the model's scale)
    pyramid: tuple[float, ...] = (1.0,)
    #: the test-time views averaged (:mod:`.views`; U-Net and pixel forest)
    views: int = 1

    @property
    def n_objects(self) -> int:
        return len(self.probabilities)


def preprocessed_grey(image: np.ndarray, loaded: LoadedModel, *, preprocessing: bool = True) -> np.ndarray:
    """``image`` as grey with the model's training clean-up (vignette, background), at its own
    resolution."""
    info = loaded.info
    grey = to_grey(image)
    if preprocessing and any(info.preprocessing.values()):
        grey = process_image(grey, vignette=info.preprocessing.get("remove_vignette", False),
                             flatten=info.preprocessing.get("flatten_background", False))
    return grey


def network_input(grey: np.ndarray, factor: float, percentiles: Sequence[float]) -> np.ndarray:
    """A preprocessed grey image (Y, X) resized by ``factor`` and normalised with the model's
    ``percentiles``: what the network is given (float32). Raises OrgasegError when nothing of
    the image is left at that size."""
    small_shape = (output_length(grey.shape[0], factor), output_length(grey.shape[1], factor))
    height, width = grey.shape
    check_pixel_budget(float(small_shape[0]) * small_shape[1],
                       f"an image of {height}x{width} px resized by {factor:g} for the model "
                       "(--image-scale too small?)")
    if small_shape != grey.shape:
        grey = rescale_image(grey, factor)
    if min(grey.shape) < 1:
        raise OrgasegError(f"image of {height}x{width} px is empty at the model's scale")
    return normalize_image(grey, percentiles)


def upscale_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a label image (Y, X) to ``shape``: enlarged with smooth outlines
    (:func:`orgaseg_core.common.labels.enlarge_labels`, each object's mask interpolated
    linearly), shrunk with nearest neighbour (the label under each centre)."""
    if labels.shape == tuple(shape):
        return labels
    if shape[0] >= labels.shape[0] and shape[1] >= labels.shape[1]:
        from ..common.labels import enlarge_labels

        return enlarge_labels(labels, shape)
    rows = nearest_indices(labels.shape[0], shape[0])
    cols = nearest_indices(labels.shape[1], shape[1])
    return labels[rows][:, cols]


def model_refinement(loaded: LoadedModel) -> str:
    """The outline refinement a model chose on validation ("none" for models before 0.3)."""
    from .refine import check_refinement

    return check_refinement(loaded.info.metadata.get("refinement") or "none")


def model_pyramid(loaded: LoadedModel) -> tuple[float, ...]:
    """The pyramid levels a model chose on validation ((1,) for models before 0.4)."""
    from .pyramid import parse_pyramid

    stored = loaded.info.metadata.get("pyramid") or {}
    levels = stored.get("levels") if isinstance(stored, dict) else None
    return parse_pyramid(levels) if levels else (1.0,)


@dataclass
class PyramidPrediction:
    """StarDist's objects at the output resolution, from one or more levels (see :mod:`.pyramid`).

    labels: (Y, X) ids 1..N; polygons[i], probabilities[i]: object i + 1's (x, y) vertices in
    QuPath pixel coordinates of the output and its probability; model_shape, n_tiles: the
    network input and tiling of the first level; prob: StarDist's probability map at the
    output resolution (the largest over the levels) when asked for, else None.
    """

    labels: np.ndarray
    polygons: list[np.ndarray]
    probabilities: np.ndarray
    model_shape: tuple[int, int]
    n_tiles: tuple[int, int]
    prob: np.ndarray | None = None


def _polygons_at(coord: np.ndarray, ids: np.ndarray, small_shape: tuple[int, int],
                 shape: tuple[int, int]) -> list[np.ndarray]:
    """StarDist's polygons ``coord[id - 1]`` (rows, cols at the network input) as (x, y) vertices in
    QuPath pixel coordinates of an output of ``shape``; one vectorised pass."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        return []
    height, width = shape
    # Exact per-axis size ratios (the network input was rounded to whole pixels).
    sy, sx = height / small_shape[0], width / small_shape[1]
    yx = coord[ids - 1]  # (n, 2, n_rays): rows, cols in pixel indices at model scale
    # Pixel index i has its centre at i + 0.5 in corner-aligned coordinates.
    xy = np.stack([np.clip((yx[:, 1] + 0.5) * sx, 0.0, width),
                   np.clip((yx[:, 0] + 0.5) * sy, 0.0, height)], axis=2)
    return list(xy)


def predict_pyramid(model, grey: np.ndarray, factor: float, levels: Sequence[float],
                    percentiles: Sequence[float], shape: tuple[int, int], *,
                    n_tiles: tuple[int, int] | None = None, prob_thresh: float | None = None,
                    nms_thresh: float | None = None, want_prob: bool = False) -> PyramidPrediction:
    """StarDist's objects in ``grey`` at every pyramid level, merged, at the output ``shape``.

    model: a StarDist2D model. grey: (Y, X) preprocessed grey image, not normalised. factor:
    size of the model's input relative to ``grey`` at the first level; level ``m`` predicts at
    ``factor * m``. percentiles: the model's normalisation. n_tiles: tiles of the first level
    (None: automatic; finer levels always choose their own). Thresholds: None = the model's.
    One level reproduces a plain StarDist prediction; several are merged by
    :func:`.pyramid.merge_levels`.
    """
    from .pyramid import LevelObjects, merge_levels
    from .refine import _resize_to
    from .sizing import equivalent_diameters

    height, width = shape
    runs = []
    for index, m in enumerate(levels):
        x = network_input(grey, float(factor) * float(m), percentiles)
        tiles = tuple(n_tiles) if (n_tiles is not None and index == 0) else auto_n_tiles(x.shape)
        with quiet_stardist():
            small, details = model.predict_instances(x, n_tiles=tiles, prob_thresh=prob_thresh,
                                                     nms_thresh=nms_thresh, show_tile_progress=False)
            # The map comes from a second pass of the network: predict_instances returns it
            # only in its dense mode, whose non-maximum suppression over every pixel takes
            # minutes on a large image.
            prob = model.predict(x, n_tiles=tiles, show_tile_progress=False)[0] if want_prob else None
        # StarDist's label k is entry k - 1 of coord (n, 2, n_rays) and prob (n,)
        coord = np.asarray(details.get("coord", np.zeros((0, 2, 0))), dtype=np.float64)
        object_prob = np.asarray(details.get("prob", np.zeros(0)), dtype=np.float64)
        runs.append((x.shape, tiles, small, coord, object_prob, prob))
    first_shape, first_tiles = runs[0][0], runs[0][1]
    prob_out = None
    if want_prob:
        prob_out = np.maximum.reduce([_resize_to(np.asarray(r[5]), (height, width)) for r in runs])

    if len(runs) == 1:
        _, _, small, coord, object_prob, _ = runs[0]
        # Renumber on the smaller of the two label images: enlarging keeps every object,
        # shrinking back (factor > 1) can lose tiny ones, so then renumber after resizing.
        if small.size <= height * width:
            labels, id_map = relabel_consecutive(small)
            labels = upscale_labels(labels, (height, width))
        else:
            labels, id_map = relabel_consecutive(upscale_labels(small, (height, width)))
        # Objects hidden by others or lost when shrinking back have no pixels and are dropped
        # with their polygons (id_map lists the survivors).
        old_ids = np.array(sorted(id_map, key=id_map.get), dtype=np.int64)
        polygons = _polygons_at(coord, old_ids, small.shape, (height, width))
        probabilities = object_prob[old_ids - 1] if old_ids.size else np.zeros(0)
        return PyramidPrediction(labels, polygons, probabilities, first_shape, first_tiles, prob_out)

    found_levels = [LevelObjects(labels=upscale_labels(small, (height, width)), probabilities=object_prob,
                                 diameters=equivalent_diameters(small, len(object_prob)))
                    for _, _, small, _, object_prob, _ in runs]
    labels, origin = merge_levels(found_levels, levels)
    polygons = []  # per level: its id -> polygon, for the ids kept (one vectorised pass each)
    for index, (_, _, small, coord, _, _) in enumerate(runs):
        ids = np.array([old for i, old in origin if i == index], dtype=np.int64)
        polygons.append(dict(zip(ids.tolist(), _polygons_at(coord, ids, small.shape, (height, width)))))
    polygons_out = [polygons[index][old] for index, old in origin]
    probabilities_out = np.array([runs[index][4][old - 1] for index, old in origin], dtype=np.float64)
    log.debug("pyramid %s: %s objects per level kept", list(levels),
              [sum(1 for i, _ in origin if i == k) for k in range(len(levels))])
    return PyramidPrediction(labels, polygons_out, probabilities_out, first_shape, first_tiles, prob_out)


def is_blank(image: np.ndarray) -> bool:
    """True when every pixel of ``image`` has the same value (an all-black frame, a failed
    acquisition): nothing can be segmented in it."""
    flat = np.asarray(image).reshape(-1, *np.asarray(image).shape[2:])
    return bool(flat.size) and bool(np.all(flat == flat[0]))


def blank_segmentation(image: np.ndarray, **fields) -> Segmentation:
    """The result for a blank image (:func:`is_blank`): no objects, and a warning. Percentile
    normalisation would blow a constant image's rounding noise up into texture, and a model
    would "find" dozens of objects in it. ``fields``: the other :class:`Segmentation` fields."""
    log.warning("image is blank (all pixels %s): no objects", np.ravel(image)[:1].tolist())
    return Segmentation(labels=np.zeros(image.shape[:2], np.uint16), polygons=[],
                        probabilities=np.zeros(0), geometries={}, **fields)


def segment_array(image: np.ndarray, loaded: LoadedModel, *, image_scale: float = 1.0,
                  n_tiles: tuple[int, int] | None = None, prob_thresh: float | None = None,
                  nms_thresh: float | None = None, preprocessing: bool = True,
                  refine: str | None = None, pyramid: Sequence[float] | None = None) -> Segmentation:
    """Segment one image (Y, X) or (Y, X, C) with a loaded model; see :class:`Segmentation`.

    image_scale: the input's pixel scale relative to the original images (1.0 = full size);
    the image is rescaled to the model's scale for prediction and the results brought back.
    n_tiles: (rows, cols) tiles at model scale, None = at most 1024 px per tile side.
    prob_thresh / nms_thresh: None = the model's optimised thresholds. preprocessing: repeat
    the vignette removal / background flattening the model was trained with. refine: outline
    refinement (:data:`~.refine.REFINEMENTS`; None = the model's choice). pyramid: factors of
    the model's scale to predict at (:mod:`.pyramid`; None = the model's choice, (1,) = one).
    """
    from .refine import check_refinement, refine_labels

    method = model_refinement(loaded) if refine is None else check_refinement(refine)
    levels = model_pyramid(loaded) if pyramid is None else tuple(pyramid)
    grey = preprocessed_grey(image, loaded, preprocessing=preprocessing)
    factor = loaded.info.scale / float(image_scale)
    height, width = image.shape[:2]
    if is_blank(image):
        return blank_segmentation(image, model_shape=(0, 0), n_tiles=(1, 1), refinement=method,
                                  pyramid=levels)
    # the probability map is only needed (and only returned densely) for that refinement
    found = predict_pyramid(loaded.model, grey, factor, levels, loaded.info.norm_percentiles,
                            (height, width), n_tiles=n_tiles, prob_thresh=prob_thresh,
                            nms_thresh=nms_thresh, want_prob=method == "probability")
    labels = found.labels
    geometries = None
    if method != "none" and len(found.polygons):
        from .outlines import label_outlines

        # "edges" works on the input's own grey levels, at its resolution
        full = normalize_image(grey, loaded.info.norm_percentiles) if method == "edges" else None
        labels = refine_labels(method, labels, grey=full, prob=found.prob).astype(labels.dtype, copy=False)
        geometries = label_outlines(labels)
    return Segmentation(labels=labels, polygons=found.polygons, probabilities=found.probabilities,
                        model_shape=found.model_shape, n_tiles=found.n_tiles, refinement=method,
                        geometries=geometries, pyramid=levels)


def object_table(labels: np.ndarray, probabilities: Sequence[float], image: str) -> pd.DataFrame:
    """One row per object of ``labels`` (ids 1..N): :data:`OBJECT_COLUMNS`.

    One :func:`scipy.ndimage.find_objects` pass, then each object is measured inside its own
    bounding box (never a full-image scan per object). ``probabilities[i]`` belongs to label
    i + 1; bbox max row/col are exclusive.
    """
    rows = []
    for index, box in enumerate(ndimage.find_objects(labels)):
        if box is None:
            continue
        label = index + 1
        rr, cc = np.nonzero(labels[box] == label)
        rows.append({"image": image, "label": label,
                     "bbox_min_row": box[0].start, "bbox_min_col": box[1].start,
                     "bbox_max_row": box[0].stop, "bbox_max_col": box[1].stop,
                     "centroid_row": box[0].start + rr.mean(), "centroid_col": box[1].start + cc.mean(),
                     "area_px": int(rr.size),
                     "probability": float(probabilities[index]) if index < len(probabilities) else math.nan})
    return pd.DataFrame(rows, columns=OBJECT_COLUMNS)


def _polygonal_part(geometry):
    """The polygonal part of a geometry that make_valid returned (None if there is none)."""
    from shapely.geometry import MultiPolygon, Polygon

    parts = [g for g in getattr(geometry, "geoms", [geometry]) if isinstance(g, (Polygon, MultiPolygon))]
    polys = [p for g in parts for p in getattr(g, "geoms", [g]) if not p.is_empty]
    if not polys:
        return None
    return polys[0] if len(polys) == 1 else MultiPolygon(polys)


def polygons_of(seg: Segmentation) -> list:
    """Valid shapely geometries of all objects (None where a polygon is degenerate).

    Built and checked in one vectorised call; only the few invalid polygons (StarDist's rays can
    make a polygon touch itself) are repaired one by one.
    """
    import shapely

    if not seg.polygons:
        return []
    coords = np.round(np.stack(seg.polygons), 2)  # (n, n_rays, 2)
    polys = shapely.polygons(coords)
    bad = np.nonzero(~shapely.is_valid(polys) | shapely.is_empty(polys))[0]
    out = list(polys)
    if bad.size:
        for i, fixed in zip(bad, shapely.make_valid(polys[bad])):
            out[i] = _polygonal_part(fixed)
    return out


def detection_features(seg: Segmentation, table: pd.DataFrame, stem: str, run_ids) -> list[dict]:
    """QuPath ``detection`` features, one per object row of ``table`` (see :func:`object_table`);
    ``run_ids`` is the run's id namespace (:func:`orgaseg_core.qupath.geojson.new_run_ids`)."""
    if seg.geometries is not None:
        return features_of_objects(seg.geometries, table, stem, run_ids)
    return features_of_objects(dict(enumerate(polygons_of(seg), start=1)), table, stem, run_ids)


def features_of_objects(geometries: Mapping[int, Any], table: pd.DataFrame, stem: str,
                        run_ids) -> list[dict]:
    """QuPath ``detection`` features, one per object row of ``table`` (:func:`object_table`), with
    the outline ``geometries[label]`` (shapely, QuPath pixel coordinates; None or missing: the
    object's bounding box), measurements Label, Probability ("NaN" when unknown, as QuPath
    writes it) and Area px, and an id that is new for every run (``run_ids``, see
    :func:`orgaseg_core.qupath.geojson.new_run_ids`) and the same in all files of that run."""
    features = []
    for row in table.itertuples(index=False):
        geometry = geometries.get(int(row.label))
        if geometry is None:
            # A polygon without area (all rays ~0) still has pixels in the label image: keep
            # the object, outlined by its bounding box, so GeoJSON, labels and table agree.
            from shapely.geometry import box

            geometry = box(row.bbox_min_col, row.bbox_min_row, row.bbox_max_col, row.bbox_max_row)
            log.debug("%s: object %d has a degenerate polygon; its bounding box is written", stem,
                      row.label)
        features.append(make_feature(
            geometry, object_type="detection", name=f"{stem} object {row.label}",
            measurements={"Label": int(row.label), "Probability": float(row.probability),
                          "Area px": int(row.area_px)},
            object_id=object_id(run_ids, stem, int(row.label))))
    return features


# --------------------------------------------------------------------------- the step

@dataclass
class SegmentResult:
    """What :func:`segment` wrote: objects per image, failed files, thresholds, time."""

    out: Path
    model: Path
    objects: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    kind: str = "StarDist"

    @property
    def n_images(self) -> int:
        return len(self.objects)

    @property
    def n_objects(self) -> int:
        return sum(self.objects.values())

    def summary(self) -> str:
        lines = [f"segment: {self.n_images} image(s), {self.n_objects} objects, written to {self.out} "
                 f"({self.seconds:.1f} s)",
                 (f"  model {self.model}: probability threshold {self.thresholds['prob']:.3f}, "
                  f"NMS threshold {self.thresholds['nms']:.2f}" if "prob" in self.thresholds else
                  f"  model {self.model} ({self.kind}): " + ", ".join(
                      f"{k.replace('_', ' ')} {v:g}" if v or k != "max_area" else "max area none"
                      for k, v in self.thresholds.items())),
                 "  per image: <stem>.tif (labels), <stem>.geojson (QuPath detections), "
                 "<stem>_objects.csv"]
        if self.failed:
            lines.append(f"  {len(self.failed)} file(s) failed and were skipped:")
            lines += [f"    {f}" for f in self.failed]
        return "\n".join(lines)


class SegmentFailed(OrgasegError):
    """Some input files could not be segmented; the others were written (``result``)."""

    def __init__(self, result: SegmentResult):
        self.result = result
        super().__init__(f"{len(result.failed)} of {len(result.failed) + result.n_images} image(s) "
                         f"could not be segmented (the others were written to {result.out}):\n  "
                         + "\n  ".join(result.failed))


def _check_threshold(value: float | None, name: str) -> float | None:
    if value is not None and not (0.0 < float(value) < 1.0):
        raise OptionError(f"{name} must be between 0 and 1 (exclusive), got {value}")
    return None if value is None else float(value)


def segment(model: Path, images: Path, out: Path, *, n_tiles: tuple[int, int] | None = None,
            prob_thresh: float | None = None, nms_thresh: float | None = None,
            image_scale: float = 1.0, preprocessing: bool = True, refine: str | None = "auto",
            pyramid: str | Sequence[float] | None = "auto", tta: str | int | None = "auto",
            overwrite: bool = False) -> SegmentResult:
    """Segment an image file or every image in a folder with a trained orgaseg model.

    model: folder written by ``train-segmentation`` (StarDist, or a pixel forest: then
    n_tiles, prob_thresh, nms_thresh, refine and pyramid must be left unset/"auto"). images: a file or a folder (not searched
    recursively). out: output folder (see the module notes for what is written). n_tiles:
    (rows, cols) tiles at model scale, None = automatic (tiles of at most 1024 px). prob_thresh,
    nms_thresh: None = the model's optimised thresholds. image_scale: pixel scale of the inputs
    relative to the original images (e.g. 0.5 for images already preprocessed at scale 0.5).
    preprocessing: repeat the model's training preprocessing (vignette removal, background
    flattening). refine: outline refinement, one of :data:`~.refine.REFINEMENTS` (None or
    "auto": the one the model chose on its validation images). pyramid: factors of the model's
    scale to predict at and merge (:mod:`.pyramid`), e.g. "1,2,4"; "none" = one level; None
    or "auto": the model's choice. tta: test-time views of a U-Net or pixel forest (:mod:`.views`:
    the probabilities averaged over 1, 2, 4 or 8 flipped/turned copies; None or "auto": the
    model's choice). Files that cannot be read are skipped and named in the
    summary; the step raises :class:`SegmentFailed` at the end if there were any.
    """
    start = time.perf_counter()
    model, images, out = Path(model), Path(images), Path(out)
    if n_tiles is not None:
        n_tiles = parse_pair(n_tiles, what="n_tiles")
    prob_thresh = _check_threshold(prob_thresh, "prob_thresh")
    nms_thresh = _check_threshold(nms_thresh, "nms_thresh")
    if not (math.isfinite(image_scale) and image_scale > 0):
        raise OptionError(f"image_scale must be a positive number, got {image_scale}")
    if refine is not None and str(refine).strip().lower() in ("", "auto"):
        refine = None
    if refine is not None:
        from .refine import check_refinement

        try:
            refine = check_refinement(refine)
        except ValueError as exc:
            raise OptionError(f"{exc} (or auto)") from None
    from .pyramid import parse_pyramid

    try:
        levels = parse_pyramid(pyramid)
    except ValueError as exc:
        raise OptionError(str(exc)) from None
    from .views import parse_views

    try:
        views = parse_views(tta)
    except ValueError as exc:
        raise OptionError(str(exc)) from None
    stems, input_folder = input_images(images)
    jobs = list(stems.items())
    from .forest.model import FOREST_KIND
    from .unet.model import UNET_KIND

    kind = model_kind(model)
    forest, unet = kind == FOREST_KIND, kind == UNET_KIND
    if forest or unet:
        given = [name for name, value in (("prob_thresh", prob_thresh), ("nms_thresh", nms_thresh),
                                          ("n_tiles", n_tiles), ("refine", refine))
                 if value is not None]
        if given:
            raise OrgasegError(f"{model} is a {'pixel-forest' if forest else 'U-Net'} model: "
                               f"{', '.join(given)} set(s) how a StarDist model segments and does not apply to it")
    elif views is not None:
        raise OrgasegError(f"{model} is a StarDist model: --tta (test-time views) applies to U-Net and "
                           "pixel-forest models")
    # before anything is written; no TensorFlow yet
    info = check_segmentation_model(model)
    if forest or unet:
        thresholds = dict(info.thresholds)
    else:
        thresholds = {"prob": prob_thresh if prob_thresh is not None else info.thresholds["prob"],
                      "nms": nms_thresh if nms_thresh is not None else info.thresholds["nms"]}
    arguments = {"model": model, "images": images, "out": out,
                 "n_tiles": list(n_tiles) if n_tiles else None, "prob_thresh": prob_thresh,
                 "nms_thresh": nms_thresh, "image_scale": float(image_scale),
                 "preprocessing": bool(preprocessing), "refine": refine,
                 "pyramid": list(levels) if levels else "auto", "tta": views or "auto",
                 "overwrite": overwrite}
    if forest:  # cheap, so a forest that cannot be used is refused before anything is written
        from .forest.model import load_forest
        from .forest.predict import segment_forest_array

        loaded = keep_loaded("pixel forest", model, lambda: load_forest(model))
    if unet:  # torch only, never TensorFlow, in this process
        from .unet.model import load_unet
        from .unet.predict import segment_unet_array

        loaded = keep_loaded("U-Net", model, lambda: load_unet(model))
    with step_run("segment", out, arguments, overwrite=overwrite, inputs=[input_folder, model]) as record:
        result = SegmentResult(out=out, model=model, thresholds=thresholds,
                               kind="pixel forest" if forest else "U-Net" if unet else "StarDist")
        if not (forest or unet):
            # once for all images (and kept for the next run in a warm step process)
            loaded = keep_loaded("StarDist model", model, lambda: load_model(model))
        per_image = {}
        run_ids = new_run_ids()  # object ids: new for this run, shared by all its files
        for stem, path in tqdm(jobs, desc="segment", unit="image", disable=None):
            t0 = time.perf_counter()
            try:
                image = read_image(path)
                if forest:
                    seg = segment_forest_array(image, loaded, image_scale=image_scale,
                                               preprocessing=preprocessing, levels=levels, views=views)
                elif unet:
                    seg = segment_unet_array(image, loaded, image_scale=image_scale,
                                             preprocessing=preprocessing, levels=levels, views=views)
                else:
                    seg = segment_array(image, loaded, image_scale=image_scale, n_tiles=n_tiles,
                                        prob_thresh=thresholds["prob"], nms_thresh=thresholds["nms"],
                                        preprocessing=preprocessing, refine=refine, pyramid=levels)
            except Exception as exc:  # one bad file must not stop the others; reported below
                message = str(exc) if isinstance(exc, InputFileError) else f"{path}: {type(exc).__name__}: {exc}"
                log.error("skipped %s", message)
                log.debug("traceback of %s", path, exc_info=True)
                result.failed.append(message)
                continue
            labels = seg.labels.astype(label_dtype(seg.n_objects), copy=False)
            table = object_table(labels, seg.probabilities, path.name)
            outputs = (out / f"{stem}.tif", out / f"{stem}.geojson", out / f"{stem}_objects.csv")
            with whole_or_absent(*outputs):
                write_tiff(outputs[0], labels)
                write_feature_collection(outputs[1], detection_features(seg, table, stem, run_ids))
                write_csv(outputs[2], table)
            seconds = time.perf_counter() - t0
            result.objects[path.name] = seg.n_objects
            per_image[path.name] = {"objects": seg.n_objects, "shape": list(labels.shape),
                                    "model_shape": list(seg.model_shape), "n_tiles": list(seg.n_tiles),
                                    "refinement": seg.refinement, "pyramid": list(seg.pyramid),
                                    "views": seg.views,
                                    "seconds": round(seconds, 3)}
            log.info("%s: %d objects (%dx%d px, network input %dx%d in %dx%d tiles, %.1f s) -> %s",
                     path, seg.n_objects, labels.shape[0], labels.shape[1], seg.model_shape[0],
                     seg.model_shape[1], seg.n_tiles[0], seg.n_tiles[1], seconds, out / f"{stem}.tif")
        result.seconds = time.perf_counter() - start
        record.results.update(n_images=result.n_images, n_objects=result.n_objects,
                              thresholds=thresholds, model_scale=loaded.info.scale,
                              images=per_image, failed=result.failed,
                              seconds=round(result.seconds, 3))
        if result.failed:
            raise SegmentFailed(result)
    return result
