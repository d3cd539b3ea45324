"""The public Python API of orgaseg: one function per pipeline step.

Every step of the ``orgaseg`` command line and of the album catalog is one function here, with
the command line's parameter names (``--n-images`` is ``n_images``, ``--model-out`` is
``model_out``). The CLI, the album solutions and scripts call these functions; the modules
behind them (``orgaseg_core.data``, ``.segmentation``, ...) may move between releases, these
names and parameters do not.

Values can be given as Python values or as the text the command line takes: ``size=(760, 1008)``
or ``size="760x1008"``, ``n_tiles=(4, 4)``, ``"4x4"`` or ``"auto"``, ``learning_rates=[1e-3]`` or
``"1e-3,3e-4"``. Paths are ``str`` or :class:`pathlib.Path`. Every function returns a result
object whose ``summary()`` is the text the command prints, writes a ``run.json`` (step,
arguments, versions, start and end time) into its output folder, and raises
:class:`~orgaseg_core.common.errors.OrgasegError` (one line naming the file and the problem)
for input the user can fix.

Importing this module imports neither TensorFlow nor torch (nor pandas): each function imports
its implementation when it is called. TensorFlow (``train_segmentation``, ``segment``) and
torch (``train_classifier``, ``classify``) crash when used in one process, so a script that
needs both runs them in separate processes, as :func:`analyze` and :func:`example` do.

Units: pixels of the images as given, unless a parameter says otherwise; scales are factors
relative to the original microscope images (1 = full size, 0.5 = half size).

Example::

    from orgaseg_core import steps

    steps.demo_data(out="data", n_images=8, seed=0)
    steps.annotations_to_masks(annotations="data/geojsons", images="data/images", out="masks")
    steps.preprocess(images="data/images", masks="masks", out="pre", tiles="2x2", scale=0.5,
                     remove_vignette=True)
    steps.split(data="pre", out="split", mode="segmentation", seed=0)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, Union

PathLike = Union[str, Path]
#: ``(rows, columns)``, or the text ``"2x3"``.
Pair = Union[tuple[int, int], str]

__all__ = [
    "demo_data", "sort_crops", "annotations_to_masks", "preprocess", "split",
    "train_segmentation", "segment", "evaluate_segmentation", "extract_objects",
    "train_classifier", "classify", "analyze", "example",
]


def _path(value: PathLike | None) -> Path | None:
    return None if value is None or str(value) == "" else Path(value)


def _pair(value: Pair, what: str) -> tuple[int, int]:
    from .common.params import parse_pair

    return parse_pair(value, what=what)


def _optional_size(value: Pair | int | None, what: str) -> int | tuple[int, int] | None:
    """``None``/``"auto"`` -> None; ``4`` or ``"4"`` -> 4; ``"4x3"`` or ``(4, 3)`` -> (4, 3)."""
    from .common.params import parse_optional_size, parse_pair

    if isinstance(value, (tuple, list)):
        return parse_pair(value, what=what)
    return parse_optional_size(value, what=what)


def _optional_pair(value: Pair | int | None, what: str) -> tuple[int, int] | None:
    """As :func:`_optional_size`, a single number meaning that many tiles on both axes."""
    size = _optional_size(value, what)
    return (size, size) if isinstance(size, int) else size


def _optional_float(value: float | str | None, what: str) -> float | None:
    from .common.params import parse_optional_float

    return parse_optional_float(value, what=what)


# ------------------------------------------------------------------------------ data steps

def demo_data(out: PathLike, *, n_images: int = 8, seed: int = 0, size: Pair = (760, 1008),
              overwrite: bool = False, style: str = "default"):
    """Generate synthetic brightfield organoid images laid out like a QuPath project export.

    ``n_images`` images of ``size`` = (height, width) px in ``out/images/`` (8-bit RGB JPEG,
    8-bit and 16-bit grey TIFF), ``out/geojsons/<image name>.geojson`` (QuPath annotations with
    classes), ``out/crops/<image name>Annotation (<Class>)_<i>.tif`` (per-object crops, named as
    QuPath exports them) and ``out/objects.csv`` (the ground truth). The same ``seed`` gives
    byte-identical files. ``style``: ``default`` (clearly different classes: light cysts with a
    dark wall, dark filled/branching organoids, round vignetted field of view) or ``faint``
    (another generator's look: bright low-contrast cysts, paler organoids, smaller and more
    numerous objects, flat field without vignette, more noise and blur). Returns a
    ``DemoDataResult``.
    """
    from .data.demo import make_demo_data

    return make_demo_data(Path(out), n_images=n_images, seed=seed, size=_pair(size, "--size"),
                          overwrite=overwrite, style=style)


def sort_crops(crops: PathLike, out: PathLike, *, move: bool = False,
               class_map: PathLike | None = None, overwrite: bool = False):
    """Sort QuPath per-object crops (class in parentheses in the file name) into class folders.

    ``crops``: folder of files like ``imgAnnotation (Cyst)_1.tif``; ``out/<Class>/`` receives
    copies (``move=True`` moves them instead), ``out/sorted.csv`` lists every file and
    ``out/skipped.csv`` the files without a usable class. ``class_map``: JSON or two-column CSV
    of alias -> class. Returns a ``SortCropsResult`` (files per class).
    """
    from .data.sort_crops import sort_crops as run

    return run(Path(crops), Path(out), move=move, class_map=_path(class_map), overwrite=overwrite)


def annotations_to_masks(annotations: PathLike, images: PathLike, out: PathLike, *,
                         keep_unclassified: bool = False, class_map: PathLike | None = None,
                         object_types: str = "annotation", plane: str | tuple[int, int] = (0, 0),
                         overwrite: bool = False):
    """Turn QuPath GeoJSON annotations into instance label images and per-object class tables.

    ``annotations``: one GeoJSON file per image (``a.jpg.geojson``, ``a.geojson``,
    ``a.geojson.gz`` or a QuPath ``a.zip``), paired with the images of ``images`` by stem (the
    images give the size). ``object_types``: QuPath object types drawn, comma-separated
    (``annotation``, ``detection``, ``cell``, ``tile``, ``tmaCore``, ``all``). ``plane``: the
    (z, t) plane drawn. Writes ``out/<stem>.tif`` (uint16 labels, uint32 beyond 65,535 objects;
    0 = background; a pixel belongs to a polygon when its centre is inside),
    ``out/<stem>_objects.csv`` (label, class as QuPath shows it, area px, bounding box,
    centroid) and ``out/classes.csv`` (class, folder name, counts). Returns a ``MasksResult``.
    """
    from .data.masks import annotations_to_masks as run

    return run(Path(annotations), Path(images), Path(out), keep_unclassified=keep_unclassified,
               class_map=_path(class_map), object_types=object_types, plane=plane,
               overwrite=overwrite)


def preprocess(images: PathLike, out: PathLike, *, masks: PathLike | None = None,
               scale: float = 1.0, tiles: Pair = (1, 1), remove_vignette: bool = False,
               flatten_background: bool = False, overwrite: bool = False):
    """Convert to grey, clean up, tile and rescale images and (optionally) their label images.

    Per image: grey -> vignette removal -> background flattening -> ``tiles`` (rows, columns)
    -> resize by ``scale`` (area means; labels nearest-neighbour and renumbered, vanished
    objects reported). Writes ``out/images/`` and ``out/masks/`` with matching names
    (``<stem>_r<row>c<col>.tif`` when tiled) and ``out/tiles.csv``. Returns a
    ``PreprocessResult``.
    """
    from .data.preprocess import preprocess as run

    return run(Path(images), Path(out), masks=_path(masks), scale=scale,
               tiles=_pair(tiles, "--tiles"), remove_vignette=remove_vignette,
               flatten_background=flatten_background, overwrite=overwrite)


def split(data: PathLike, out: PathLike, *, mode: str, train: float = 0.7, val: float = 0.15,
          test: float = 0.15, seed: int = 0, groups: str = "images", overwrite: bool = False):
    """Split data into train/val/test: seeded, stratified by class, no leakage between splits.

    ``mode="segmentation"``: ``data/images/`` + ``data/masks/`` -> ``out/{train,val,test}/
    {images,masks}/`` (the StarDist layout); ``mode="classification"``: one folder per class ->
    ``out/{train,val,test}/<Class>/`` (the torchvision ImageFolder layout). Tiles and crops of
    one source image stay in one split. ``train``/``val``/``test`` are fractions of the source
    images (summing to 1). ``groups="tiles"`` (segmentation) shares each source image's tiles out
    over the splits instead, for a few large images (validation then optimistic). Writes
    ``out/split.csv``. Returns a ``SplitResult``.
    """
    from .data.split import split_dataset

    return split_dataset(Path(data), Path(out), mode=mode, train=train, val=val, test=test,
                         seed=seed, groups=groups, overwrite=overwrite)


# ------------------------------------------------------------------------------ segmentation

def train_segmentation(data: PathLike, model_out: PathLike, *, preset: str = "quick",
                       epochs: int | str | None = None, steps_per_epoch: int | str | None = None,
                       early_stopping: int | str | None = None, max_minutes: float | str | None = None,
                       batch_size: int = 4, patch_size: int | Pair | None = None,
                       resize: float | str | None = "auto", n_rays: int = 32, grid: Pair = (2, 2),
                       learning_rate: float | str | None = None, augment: bool = True, refine: str = "auto",
                       pyramid: str = "auto", tta: str | int | None = "auto",
                       norm_low: float = 1.0, norm_high: float = 99.8, seed: int = 0,
                       init_model: PathLike | None = None, scale: float | str | None = None,
                       backend: str = "unet", n_trees: int = 100, device: str | None = None,
                       refit: bool = False, overwrite: bool = False):
    """Train a segmentation model on the split made by :func:`split` (mode segmentation):
    ``backend`` "unet" (the default since 0.18: a U-Net trained from scratch with PyTorch,
    boundary regions, :mod:`orgaseg_core.segmentation.unet`; outlines that need not be
    star-convex; takes the budget options, ``batch_size``, ``patch_size`` (a multiple of 32),
    ``resize``, ``learning_rate``, ``augment``, normalisation, ``seed``, ``scale``, ``device``,
    ``pyramid``, ``tta`` and ``refit``; its presets are "quick" (20 x 25 steps) and "real" (up
    to 200 x 50 steps, early stopping after 30 epochs, at most 30 minutes)), "stardist" (a
    StarDist2D network, TensorFlow; the options below, ``n_rays``, ``grid``, ``refine`` and
    ``init_model`` only with it) or "forest" (a pixel random forest with boundary regions,
    :mod:`orgaseg_core.segmentation.forest`; seconds to minutes on CPU; takes ``resize``,
    ``norm_low``/``norm_high``, ``seed``, ``scale``, ``n_trees``, and refuses the network's
    options). The U-Net is the default because on real brightfield organoids (GOAT, leave one
    image out) it finds far more of them than StarDist (README, "Segmentation quality on real
    images"), and it meets the generated data's targets in half StarDist's time.
    ``learning_rate``: None/"auto" = the backend's (3e-4 StarDist, 2e-3 U-Net). ``device``:
    the U-Net's ("cpu", "cuda"; None/"auto": a CUDA GPU when there is one).

    ``data``: ``train/`` and ``val/`` with ``images/`` and ``masks/``. ``preset``: the training
    budget, "quick" (StarDist 40 x 25 steps, the U-Net's as above) or "real" (StarDist up to
    400 x 50 steps, early stopping after 20 epochs without a better validation loss, at most 30
    minutes);
    ``epochs``, ``steps_per_epoch``, ``early_stopping`` (epochs, 0 = off) and ``max_minutes``
    override it. ``patch_size``: px, one number or (height, width), multiples of 16
    (None/"auto": 256 or twice the large objects, fitting the smallest image). ``resize``:
    factor applied to the images before training ("auto": from the object sizes, so the large
    organoids fit the network's field of view; 1: as given). ``grid``: StarDist output
    subsampling. ``augment``: flips, rotations, scale jitter, brightness, contrast, gamma,
    blur, noise. ``refine``: outline refinement ("auto": the best of none, probability, edges
    on the validation images). ``pyramid``: scales to predict at (the network trains at one), as factors of the
    model's scale ("auto": 1,2,4... when the small organoids are too small at the model's scale,
    kept only if better on the validation images (the U-Net keeps the most levels within 0.01 of
    the best); "none": one; "1,2,4": these). ``tta``: the U-Net's test-time views, its
    probabilities averaged over 1, 2, 4 or 8 flipped/turned copies of each image ("auto": 1 or
    8, the most within 0.01 of the best validation mean F1). ``refit`` (U-Net only): once
    everything is chosen on the validation images, train the stored network again on the
    training and validation images together (twice the training time).
    ``norm_low``/``norm_high``: percentiles of the per-image
    intensity normalisation. ``scale``: pixel scale of the training images relative to the
    originals (None/"auto": read from the preprocess run, else 1). ``init_model``: a local
    StarDist model folder to continue from. Writes the self-contained model folder ``model_out``
    (weights, ``orgaseg_model.json``, ``report.json``/``report.csv`` with validation
    precision, recall, F1 and AP at IoU 0.5-0.9, logs; StarDist's ``config.json`` and
    ``thresholds.json``). Imports torch (U-Net) or TensorFlow (StarDist), never both. Returns
    the backend's training result (``summary()`` says what was chosen).
    """
    from .common.errors import OrgasegError
    from .common.params import parse_optional_int

    from .common.params import check_device

    backend = str(backend).strip().lower()
    if backend not in ("stardist", "forest", "unet"):
        raise OrgasegError(f"backend must be 'stardist', 'forest' or 'unet', got {backend!r}")
    learning_rate = _optional_float(learning_rate, "--learning-rate")
    device = check_device(device)
    if device is not None and backend != "unet":
        raise OrgasegError("--device applies to --backend unet only (StarDist uses TensorFlow's device)")
    auto = {None, "", "auto"}
    if n_trees != 100 and backend != "forest":
        raise OrgasegError("--n-trees applies to --backend forest only")
    if backend == "unet":
        stardist_only = {"n_rays": (n_rays, 32),
                         "refine": ("auto" if str(refine).strip().lower() in auto else refine, "auto"),
                         "init_model": (_path(init_model), None)}
        given = [k for k, (value, default) in stardist_only.items() if value != default]
        if _pair(grid, "--grid") != (2, 2):
            given.append("grid")
        if given:
            # the U-Net is the default since 0.18: a StarDist user's options name the way back
            raise OrgasegError("--backend unet (the default): " + ", ".join(given) + " do(es) not apply"
                               " to it; StarDist's options need --backend stardist")
        size = _optional_size(patch_size, "--patch-size")
        if isinstance(size, tuple):
            if size[0] != size[1]:
                raise OrgasegError(f"--backend unet trains on square patches, got {size[0]}x{size[1]}")
            size = size[0]
        from .segmentation.unet.train import DEFAULT_LEARNING_RATE, train_unet

        return train_unet(Path(data), Path(model_out), preset=preset,
                          epochs=parse_optional_int(epochs, what="--epochs"),
                          steps_per_epoch=parse_optional_int(steps_per_epoch, what="--steps-per-epoch"),
                          early_stopping=parse_optional_int(early_stopping, what="--early-stopping"),
                          max_minutes=_optional_float(max_minutes, "--max-minutes"), batch_size=batch_size,
                          patch_size=size, resize=resize,
                          learning_rate=DEFAULT_LEARNING_RATE if learning_rate is None else learning_rate,
                          augment=augment, norm_percentiles=(norm_low, norm_high), seed=seed,
                          scale=_optional_float(scale, "--scale"), device=device,
                          pyramid=pyramid, tta=tta, refit=bool(refit), overwrite=overwrite)
    if refit:
        raise OrgasegError(f"--refit applies to --backend unet only (got --backend {backend})")
    tta_given = "auto" if tta is None or str(tta).strip().lower() in auto else tta
    if tta_given != "auto":
        raise OrgasegError(f"--tta applies to --backend unet only (got --backend {backend}); "
                           "segment --tta averages views for any U-Net or pixel forest")
    if backend == "forest":
        # compared after parsing, so "auto" (album, the CLI) counts as not given
        network = {"preset": (str(preset).strip().lower(), "quick"),
                   "epochs": (parse_optional_int(epochs, what="--epochs"), None),
                   "steps_per_epoch": (parse_optional_int(steps_per_epoch, what="--steps-per-epoch"), None),
                   "early_stopping": (parse_optional_int(early_stopping, what="--early-stopping"), None),
                   "max_minutes": (_optional_float(max_minutes, "--max-minutes"), None),
                   "batch_size": (batch_size, 4),
                   "patch_size": (_optional_size(patch_size, "--patch-size"), None), "n_rays": (n_rays, 32),
                   # 3e-4 was the default before 0.8 (album solutions up to 0.7.0 pass it)
                   "learning_rate": (None if learning_rate == 3e-4 else learning_rate, None),
                   "augment": (augment, True),
                   "refine": ("auto" if str(refine).strip().lower() in auto else refine, "auto"),
                   "pyramid": ("auto" if str(pyramid).strip().lower() in auto else pyramid, "auto"),
                   "init_model": (_path(init_model), None)}
        given = [k for k, (value, default) in network.items() if value != default]
        if _pair(grid, "--grid") != (2, 2):
            given.append("grid")
        if given:
            raise OrgasegError("--backend forest trains no network: " + ", ".join(given)
                               + " do(es) not apply to it")
        from .segmentation.forest.train import train_forest

        return train_forest(Path(data), Path(model_out), resize=resize, n_trees=n_trees,
                            norm_percentiles=(norm_low, norm_high), seed=seed,
                            scale=_optional_float(scale, "--scale"), overwrite=overwrite)
    from .segmentation.train import train_segmentation as run

    return run(Path(data), Path(model_out), preset=preset,
               epochs=parse_optional_int(epochs, what="--epochs"),
               steps_per_epoch=parse_optional_int(steps_per_epoch, what="--steps-per-epoch"),
               early_stopping=parse_optional_int(early_stopping, what="--early-stopping"),
               max_minutes=_optional_float(max_minutes, "--max-minutes"), batch_size=batch_size,
               patch_size=_optional_size(patch_size, "--patch-size"), resize=resize,
               n_rays=n_rays, grid=_pair(grid, "--grid"),
               learning_rate=learning_rate,
               augment=augment, refine=refine, pyramid=pyramid, norm_percentiles=(norm_low, norm_high), seed=seed,
               init_model=_path(init_model), scale=_optional_float(scale, "--scale"),
               overwrite=overwrite)


def segment(model: PathLike, images: PathLike, out: PathLike, *,
            n_tiles: Pair | int | None = None, prob_thresh: float | str | None = None,
            nms_thresh: float | str | None = None, image_scale: float = 1.0,
            preprocessing: bool = True, refine: str | None = "auto", pyramid: str | None = "auto",
            tta: str | int | None = "auto", overwrite: bool = False):
    """Segment an image file or a folder of images of any size with a trained model (StarDist, or a
    pixel forest from ``train_segmentation(backend="forest")``: then leave ``n_tiles``,
    ``prob_thresh``, ``nms_thresh``, ``refine`` and ``pyramid`` at their defaults).

    ``n_tiles``: predict in (rows, columns) tiles (None/"auto": tiles of at most 1024 px).
    ``prob_thresh``/``nms_thresh``: 0-1 (None/"auto": the values tuned in training).
    ``image_scale``: pixel scale of these images relative to the original images; they are
    resized to the model's training scale and the labels returned at their own size.
    ``preprocessing``: repeat the model's training clean-up (vignette, background).
    ``refine``: outline refinement, "none" (StarDist's polygons), "probability" (grown into
    StarDist's probability map), "edges" (onto the image's edges) or "auto" (the model's choice
    on its validation images). ``pyramid``: predict at these factors of the model's scale and
    keep each organoid from the level where it is best seen ("1,2,4"; "none": one level;
    "auto": the model's choice). ``tta``: test-time views of a U-Net or pixel forest, the
    probabilities averaged over 1, 2, 4 or 8 flipped/turned copies of the image ("auto": the
    model's choice). Writes per
    image ``out/<stem>.tif`` (uint16 labels), ``out/<stem>.geojson`` (QuPath detections with
    label and probability) and ``out/<stem>_objects.csv``. Unreadable images are reported and
    skipped, then ``SegmentFailed`` is raised. Imports TensorFlow. Returns a ``SegmentResult``.
    """
    from .segmentation.predict import segment as run

    return run(Path(model), Path(images), Path(out), n_tiles=_optional_pair(n_tiles, "--n-tiles"),
               prob_thresh=_optional_float(prob_thresh, "--prob-thresh"),
               nms_thresh=_optional_float(nms_thresh, "--nms-thresh"), image_scale=image_scale,
               preprocessing=preprocessing, refine=refine, pyramid=pyramid, tta=tta, overwrite=overwrite)


def evaluate_segmentation(truth: PathLike, pred: PathLike, out: PathLike, *,
                          images: PathLike | None = None,
                          thresholds: Sequence[float] = tuple(round(0.5 + 0.05 * i, 2) for i in range(9)),
                          min_fraction: float = 0.5, max_overlay_side: int = 2048,
                          overwrite: bool = False):
    """Compare predicted with true label images (paired by stem).

    Objects are matched one to one by IoU; per IoU threshold (``thresholds``, default
    0.5-0.9) precision, recall, F1 and AP, plus merges and splits (an object covering at least
    ``min_fraction`` of another). Writes ``out/metrics.csv``, ``out/metrics_per_image.csv``,
    ``out/summary.json``, the plot ``out/ap_vs_iou.png`` and outline overlays
    ``out/overlays/<stem>.png`` (``images`` under them; longest side at most
    ``max_overlay_side`` px). Needs neither TensorFlow nor torch. Returns an
    ``EvaluationResult``.
    """
    from .segmentation.evaluation import evaluate_segmentation as run

    return run(Path(truth), Path(pred), Path(out), images=_path(images),
               thresholds=tuple(thresholds), overwrite=overwrite, min_fraction=min_fraction,
               max_overlay_side=max_overlay_side)


# ------------------------------------------------------------------------------ objects

def extract_objects(images: PathLike, masks: PathLike, out: PathLike, *, padding: int = 10,
                    context: float | str = 0.25, mask_background: bool = False, min_area: int = 0,
                    exclude_border: bool = False,
                    class_folders: bool = False, pixel_size: float | str | None = None,
                    overwrite: bool = False):
    """Cut one crop per object out of each image and measure every object.

    Images and label images are paired by stem. ``padding``: px of context around each
    bounding box, plus ``context`` times its longer side (each side; a segmented outline that
    misses an organoid's branches still gets a crop that shows them); ``mask_background``: set crop pixels outside the object to the image's
    background level; ``min_area`` (px) and ``exclude_border`` drop objects (listed in
    ``out/skipped.csv``). Writes ``out/crops/<stem>_<label>.tif`` and ``out/objects.csv``
    (bounding box, centroid, area, perimeter, equivalent diameter, circularity,
    eccentricity, solidity, axes, orientation, mean/std intensity; lengths in px, areas in
    px²; and the descriptors the measurement classifier reads: intensities relative to the
    background, rim/core, gradient, radius CV, concavities). ``class_folders``: classes from
    the ``<stem>_objects.csv`` tables of annotations-to-masks in ``masks``; crops go to
    ``out/crops/<class>/`` (classification training data from images + GeoJSON alone; objects
    without a class are skipped). ``pixel_size``: µm per pixel (None/"auto": each image file's
    own, from OME-XML, ImageJ metadata or TIFF resolution tags); ``pixel_size_um`` and µm / µm²
    columns (area, perimeter, equivalent diameter, axes) beside the pixel ones, NaN where it is
    unknown; where it came from is in run.json. Returns an ``ExtractResult``.
    """
    from .objects.extract import extract_objects as run

    return run(Path(images), Path(masks), Path(out), padding=padding, context=context,
               mask_background=mask_background, min_area=min_area, exclude_border=exclude_border,
               class_folders=class_folders, pixel_size=pixel_size, overwrite=overwrite)


# ------------------------------------------------------------------------------ classification

def train_classifier(data: PathLike | None, model_out: PathLike, *, images: PathLike | None = None,
                     masks: PathLike | None = None,
                     families: Sequence[str] | str = ("measurements", "cnn", "combined"),
                     val_fraction: float = 0.15, test_fraction: float = 0.15, padding: int = 10,
                     context: float | str = 0.25, n_trees: int = 300, outline_augmentation: bool = True,
                     architectures: Sequence[str] | str = ("resnet18",),
                     learning_rates: Sequence[float] | str = (1e-3, 3e-4),
                     batch_sizes: Sequence[int] | str = (32,),
                     weight_decays: Sequence[float] | str = (1e-4,), grid_epochs: int = 3,
                     epochs: int = 15, patience: int = 5, input_size: int | str | None = None,
                     weights: PathLike | None = None, pretrained: bool = False,
                     review_below: float = 0.6, seed: int = 0, num_workers: int = 0,
                     device: str | None = None, overwrite: bool = False):
    """Train the classifier families, choose one on validation, calibrate it, report on test.

    Inputs: ``data``, the class folders of :func:`split` (classification; crops only: the CNN
    family), or ``images`` + ``masks`` (the annotations-to-masks folder: every object's crop
    and measurements, cut with ``padding`` px plus ``context`` times the object's size around it,
    as extract-objects cuts them; the images are split by ``val_fraction``/``test_fraction``). Candidate
    ``families`` (list or comma-separated): "measurements" (random forest of ``n_trees`` on
    the object measurements; with ``outline_augmentation`` also on eroded, dilated and smoothed
    outlines), "cnn" (torchvision network: grid over ``architectures`` x
    ``learning_rates`` x ``batch_sizes`` x ``weight_decays``, ``grid_epochs`` each, then up to
    ``epochs`` with early stopping after ``patience``), "combined" (their weighted mean). The
    family with the best validation macro-F1 wins; its confidence is calibrated on validation
    (temperature scaling); the test split is evaluated once. ``input_size``: px (None/"auto":
    learned). ``weights``: a local state_dict to start the CNN from; ``pretrained``:
    torchvision's ImageNet weights (cached by torchvision). ``review_below``: the confidence
    under which classify flags objects. Writes ``model_out/classifier.json`` (what classify
    and analyze load), ``model.pt`` and/or ``measurements.skops``, ``grid.csv``,
    ``report.json``, ``classification_report.csv``, ``confusion_matrix.png``,
    ``reliability.png``. Imports torch. Returns a ``TrainClassifierResult``.
    """
    from .common.params import parse_number_list, parse_optional_int, parse_optional_text, split_list
    from .classification.train import train_classifier as run

    return run(_path(data), Path(model_out), images=_path(images), masks=_path(masks),
               families=split_list(families), val_fraction=float(val_fraction),
               test_fraction=float(test_fraction), padding=padding, context=context, n_trees=n_trees,
               outline_augmentation=bool(outline_augmentation),
               architectures=split_list(architectures),
               learning_rates=parse_number_list(learning_rates, float, what="--learning-rates"),
               batch_sizes=parse_number_list(batch_sizes, int, what="--batch-sizes", minimum=1,
                                             strict=False),
               weight_decays=parse_number_list(weight_decays, float, what="--weight-decays",
                                               strict=False),
               grid_epochs=grid_epochs, epochs=epochs, patience=patience,
               input_size=parse_optional_int(input_size, what="--input-size"),
               weights=_path(weights), pretrained=bool(pretrained), review_below=float(review_below),
               seed=seed, num_workers=num_workers, device=parse_optional_text(device),
               overwrite=overwrite)


def classify(model: PathLike, objects: PathLike, out: PathLike, *, batch_size: int = 64,
             device: str | None = None, review_below: float | str | None = None,
             family: str | None = None, overwrite: bool = False):
    """Classify every object with a classifier of :func:`train_classifier` (its folder, or its
    classifier.json / model.pt).

    ``objects``: a folder of :func:`extract_objects` (``objects.csv`` + ``crops/``) or a
    folder of crops (CNN only). Writes ``out/predictions.csv``: image, label, crop, predicted
    class, calibrated confidence (0-1), ``needs_review`` (confidence below ``review_below``;
    None/"auto": the model's threshold) and one ``prob_<Class>`` column per class, joined with
    the measurements; unreadable crops go to ``out/unreadable.csv``. ``family``: another
    trained candidate of the folder (None/"auto": the one chosen on validation). Returns a
    ``ClassifyResult``.
    """
    from .classification.predict import classify as run
    from .common.params import parse_optional_text

    return run(Path(model), Path(objects), Path(out), batch_size=batch_size,
               device=parse_optional_text(device),
               review_below=_optional_float(review_below, "--review-below"),
               family=parse_optional_text(family), overwrite=overwrite)


# ------------------------------------------------------------------------------ pipelines

def analyze(segmentation_model: PathLike | None, classifier: PathLike, images: PathLike,
            out: PathLike, *, masks: PathLike | None = None, n_tiles: Pair | int | None = None, prob_thresh: float | str | None = None,
            nms_thresh: float | str | None = None, image_scale: float = 1.0,
            preprocessing: bool = True, padding: int | str | None = None,
            context: float | str | None = None,
            mask_background: bool = False, min_area: int = 0, exclude_border: bool = False,
            batch_size: int = 64, device: str | None = None,
            review_below: float | str | None = None, family: str | None = None,
            pixel_size: float | str | None = None, metadata: PathLike | None = None,
            name_pattern: str | None = None, control: str | None = None, seed: int = 0,
            workers: int | str = "auto", scheduler: Any = None, chunk_size: int | str | None = None,
            threads_per_worker: int | str | None = None, chunks_per_worker: int | str | None = None,
            overlays: str = "png", tta: str | int | None = "auto", overwrite: bool = False):
    """Segment, measure and classify every organoid of an image file or a folder of images.

    Runs :func:`segment` and :func:`classify` in child processes (TensorFlow and torch never
    share one) and :func:`extract_objects` in this one; the parameters are theirs. Instead of
    a segmentation model (``segmentation_model=None``), ``masks`` takes a folder of label
    images of the same stems from any other tool (Cellpose, QuPath, ...: 2D, non-negative
    integers, the images' height and width; ids are kept); an image without one is reported
    and the others are analysed. Writes
    ``out/qupath/<image>.geojson`` (classified detections for QuPath),
    ``out/overlays/<image>.png`` (``overlays``: "png", "jpeg" for ``.jpg`` files, faster to
    write and smaller, or "none"), ``out/objects.csv`` (one row per classified object),
    ``out/summary.csv`` (per image: objects found, classified, excluded, count and fraction
    per class) and each step's own folder. ``pixel_size``: µm per pixel (None/"auto": each image
    file's own): µm / µm² columns and QuPath measurements where it is known. ``metadata`` (a
    CSV or Excel table with an ``image`` column and any design columns: well, condition,
    timepoint ...) and/or ``name_pattern`` (a regular expression with named groups matched
    against the file names) attach the experiment's design to every image and object, and
    ``out/conditions.csv`` gets counts, class fractions with 95% intervals (Wilson, and a
    bootstrap over wells) and sizes per condition, timepoint and well; ``control`` (a
    condition) adds differences with bootstrap intervals and permutation tests over wells;
    ``seed`` fixes their random numbers. The images run in chunks (``chunk_size`` images,
    default: shared out over the workers, at most 64) on Dask workers: a local cluster of
    ``workers`` processes (default one per 2 cores) or the workers of ``scheduler`` (an address
    ``tcp://host:8786``, a ``distributed.Client`` or a cluster object such as dask-jobqueue's
    ``SLURMCluster``); ``threads_per_worker`` sets the threads of each chunk's steps;
    ``chunks_per_worker`` the chunks each local worker runs at once (default 2: the next
    chunk segments while the one before is cut out, classified and written). ``tta``:
    test-time views of a U-Net or pixel-forest model (1, 2, 4, 8; "auto": the model's choice;
    each view is one more prediction per image). The same
    call into the same ``out`` after a crash or an interrupt resumes the run. Raises
    ``AnalyzeFailed`` after the others when an image cannot be analysed. Returns an
    ``AnalyzeResult``.
    """
    from .common.params import parse_optional_int, parse_optional_text
    from .pipelines.analyze import analyze as run

    return run(_path(segmentation_model), Path(classifier), Path(images), Path(out),
               masks=_path(masks), n_tiles=_optional_pair(n_tiles, "--n-tiles"),
               prob_thresh=_optional_float(prob_thresh, "--prob-thresh"),
               nms_thresh=_optional_float(nms_thresh, "--nms-thresh"), image_scale=image_scale,
               preprocessing=preprocessing,
               padding=parse_optional_int(padding, what="--padding"),
               context=None if context is None or str(context).strip().lower() in ("", "auto") else context,
               mask_background=mask_background,
               min_area=min_area, exclude_border=exclude_border, batch_size=batch_size,
               device=parse_optional_text(device),
               review_below=_optional_float(review_below, "--review-below"),
               family=parse_optional_text(family), pixel_size=pixel_size, metadata=_path(metadata),
               name_pattern=parse_optional_text(name_pattern), control=parse_optional_text(control),
               seed=seed, workers=workers, scheduler=parse_optional_text(scheduler) if isinstance(scheduler, str)
               else scheduler, chunk_size=parse_optional_int(chunk_size, what="--chunk-size"),
               threads_per_worker=parse_optional_int(threads_per_worker, what="--threads-per-worker"),
               chunks_per_worker=parse_optional_int(chunks_per_worker, what="--chunks-per-worker"),
               overlays=overlays, tta=tta, overwrite=overwrite)


def example(out: PathLike = "orgaseg-demo", *, n_images: int = 24, seed: int = 0,
            size: Pair = (760, 1008), n_new_images: int = 6, seg_backend: str = "unet",
            seg_epochs: int | None = None, seg_steps: int | None = None, clf_grid_epochs: int = 3,
            clf_epochs: int = 12,
            data_only: bool = False, overwrite: bool = False) -> Any:
    """Run the whole story on generated example data, each framework in its own process.

    ``n_images`` training images of ``size`` (height, width) px -> every data step ->
    segmentation training (``seg_backend`` "unet", "stardist" or "forest"; ``seg_epochs`` x
    ``seg_steps``, None: the U-Net's quick preset, StarDist 20 x 20) -> classifier training ->
    :func:`analyze` of ``n_new_images`` new images -> segmentation and class evaluation against their
    annotations. ``data_only`` stops after the data steps. Returns an ``ExampleResult`` whose
    ``summary()`` gives the figures (F1, AP, macro-F1) and where everything is.
    """
    from .pipelines.example import run_example

    return run_example(Path(out), n_images=n_images, seed=seed, size=_pair(size, "--size"),
                       n_new_images=n_new_images, seg_backend=seg_backend, seg_epochs=seg_epochs,
                       seg_steps=seg_steps,
                       clf_grid_epochs=clf_grid_epochs, clf_epochs=clf_epochs,
                       data_only=data_only, overwrite=overwrite)
