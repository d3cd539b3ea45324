"""The ``orgaseg`` command line: one subcommand per pipeline step.

Each subcommand only parses its options and calls the step's function in ``orgaseg_core``;
the album solutions call the same functions. Errors the user can fix are printed as one line
(``error: <file>: <problem>``) with exit status 1; bad option values exit with status 2.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

import typer

from . import __version__, steps
from .common.errors import Interrupted, OptionError, OrgasegError, describe_os_error
from .common.logs import configure_logging
from .common.params import parse_number_list, parse_pair

app = typer.Typer(
    name="orgaseg",
    help="Organoid segmentation and classification for brightfield microscopy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("orgaseg")

OVERWRITE_HELP = "Allow writing into a non-empty output folder (files of the same name are replaced)."


def _tiles(text: str | None) -> tuple[int, int] | None:
    """``--n-tiles 4x4`` -> (4, 4); not given -> None (the step chooses)."""
    return parse_pair(text, what="--n-tiles") if text else None


def _object_types_option(text: str) -> str:
    """Check ``--object-types`` while parsing, so a typo is a usage error (exit status 2)."""
    from .qupath.geojson import parse_object_types

    try:
        parse_object_types(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return text


def _plane_option(text: str) -> tuple[int, int]:
    """``--plane 1,0`` -> (1, 0); anything else is a usage error (exit status 2)."""
    from .qupath.geojson import parse_plane

    try:
        return parse_plane(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _echo_partial_result(exc: OrgasegError) -> None:
    """A batch step that failed on some files (SegmentFailed, AnalyzeFailed) carries the result of
    the others: print its summary (what was written) before the error line."""
    result = getattr(exc, "result", None)
    if result is not None:
        typer.echo(result.summary())


def _version(value: bool) -> None:
    if value:
        typer.echo(f"orgaseg {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debugging details."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    configure_logging(verbose)


@app.command("demo-data")
def demo_data_cmd(
    out: Path = typer.Option(..., help="Folder to write the example data to."),
    n_images: int = typer.Option(8, "--n-images", min=1, help="Number of images to generate."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same data."),
    size: str = typer.Option("760x1008", help="Image size as HEIGHTxWIDTH in pixels."),
    style: str = typer.Option("default", help="Image style: 'default' (clearly different classes, "
                              "vignetted field) or 'faint' (bright low-contrast cysts, paler and "
                              "smaller organoids, flat field, more noise)."),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
) -> None:
    """Generate synthetic brightfield organoid images laid out like a QuPath project export."""
    result = steps.demo_data(out, n_images=n_images, seed=seed, size=size, overwrite=overwrite,
                             style=style)
    typer.echo(result.summary())


@app.command("sort-crops")
def sort_crops_cmd(
    crops: Path = typer.Option(..., help="Folder with QuPath crops named like 'imgAnnotation (Cyst)_1.tif'."),
    out: Path = typer.Option(..., help="Folder to create one sub-folder per class in."),
    move: bool = typer.Option(False, "--move", help="Move the crops instead of copying them (changes the input folder)."),
    class_map: Optional[Path] = typer.Option(None, help="JSON or CSV file mapping class-name aliases to class names."),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
) -> None:
    """Sort QuPath per-object crops into one folder per class."""
    result = steps.sort_crops(crops, out, move=move, class_map=class_map, overwrite=overwrite)
    typer.echo(result.summary())


@app.command("annotations-to-masks")
def annotations_to_masks_cmd(
    annotations: Path = typer.Option(..., help="Folder with QuPath GeoJSON files, one per image."),
    images: Path = typer.Option(..., help="Folder with the annotated images (to read their size)."),
    out: Path = typer.Option(..., help="Folder for the label images and object tables."),
    keep_unclassified: bool = typer.Option(False, "--keep-unclassified", help="Also draw annotations without a class."),
    class_map: Optional[Path] = typer.Option(None, help="JSON or CSV file mapping class-name aliases to class names."),
    object_types: str = typer.Option(
        "annotation", callback=_object_types_option,
        help="QuPath object types to draw, comma-separated: annotation, detection, cell, tile, "
             "tmaCore, or all (e.g. 'detection,annotation' for a corrected analyze result)."),
    plane: str = typer.Option("0,0", callback=_plane_option,
                              help="z,t plane whose objects are drawn (0-based); others are skipped."),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
) -> None:
    """Turn QuPath GeoJSON annotations into instance label images and per-object class tables."""
    result = steps.annotations_to_masks(annotations, images, out, keep_unclassified=keep_unclassified,
                                        class_map=class_map, object_types=object_types, plane=plane,
                                        overwrite=overwrite)
    typer.echo(result.summary())


@app.command("preprocess")
def preprocess_cmd(
    images: Path = typer.Option(..., help="Folder with images."),
    out: Path = typer.Option(..., help="Folder for images/ and masks/."),
    masks: Optional[Path] = typer.Option(None, help="Folder with label images of the same names (optional)."),
    scale: float = typer.Option(1.0, min=0.01, max=10.0, help="Resize factor, e.g. 0.25 for a quarter of the size."),
    tiles: str = typer.Option("1x1", help="Cut each image into ROWSxCOLUMNS tiles, e.g. 2x2."),
    remove_vignette: bool = typer.Option(False, "--remove-vignette", help="Replace the dark microscope vignette with the background level."),
    flatten_background: bool = typer.Option(False, "--flatten-background", help="Even out uneven illumination."),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
) -> None:
    """Convert to grey, clean up, tile and rescale images (and their label images)."""
    try:
        result = steps.preprocess(images, out, masks=masks, scale=scale, tiles=tiles,
                                  remove_vignette=remove_vignette, flatten_background=flatten_background,
                                  overwrite=overwrite)
    except OrgasegError as exc:
        _echo_partial_result(exc)
        raise
    typer.echo(result.summary())


@app.command("split")
def split_cmd(
    data: Path = typer.Option(..., help="Folder with images/ + masks/ (segmentation) or one folder per class (classification)."),
    out: Path = typer.Option(..., help="Folder for train/, val/, test/ and split.csv."),
    mode: str = typer.Option(..., help="'segmentation' or 'classification'."),
    train: float = typer.Option(0.7, help="Fraction of source images for training."),
    val: float = typer.Option(0.15, help="Fraction of source images for validation."),
    test: float = typer.Option(0.15, help="Fraction of source images for the final test."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same split."),
    groups: str = typer.Option("images", help="What stays together: 'images' (all tiles of a source image in one split, no shared pixels) or 'tiles' (segmentation: each image's tiles shared out over the splits, so that validation sees every image when there are only a few; validation figures are then optimistic)."),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
) -> None:
    """Split data into train/val/test, seeded, stratified by class, without leakage between splits."""
    result = steps.split(data, out, mode=mode, train=train, val=val, test=test, seed=seed,
                         groups=groups, overwrite=overwrite)
    typer.echo(result.summary())


@app.command("example")
def example_cmd(
    out: Path = typer.Option(Path("orgaseg-demo"), help="Folder for the example data and every step's results."),
    n_images: int = typer.Option(24, "--n-images", min=4, help="Number of example training images to generate."),
    seed: int = typer.Option(0, help="Random seed for the data, the splits and the training."),
    size: str = typer.Option("760x1008", help="Example image size as HEIGHTxWIDTH in pixels."),
    n_new_images: int = typer.Option(6, "--n-new-images", min=2, help="New example images to analyse: wells of a generated experiment, half control, half treated (one image per well)."),
    seg_backend: str = typer.Option("unet", "--seg-backend", help="Segmentation model to train: 'unet' (the default of train-segmentation), 'stardist' or 'forest'."),
    seg_epochs: Optional[int] = typer.Option(None, "--seg-epochs", min=1, help="Epochs of the segmentation training (default: the U-Net's quick preset, 20 x 25 steps; StarDist 20 x 20)."),
    seg_steps: Optional[int] = typer.Option(None, "--seg-steps", min=1, help="Steps per epoch of the segmentation training (default: see --seg-epochs)."),
    clf_grid_epochs: int = typer.Option(3, "--clf-grid-epochs", min=1, help="Epochs per grid point of the classifier's grid search."),
    clf_epochs: int = typer.Option(12, "--clf-epochs", min=1, help="Most epochs of the classifier's final training."),
    data_only: bool = typer.Option(False, "--data-only", help="Stop after the data steps (needs neither TensorFlow nor torch)."),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
) -> None:
    """Run the whole story on generated example data: data steps, both trainings, analyze, evaluation."""
    result = steps.example(out, n_images=n_images, seed=seed, size=size,
                           n_new_images=n_new_images, seg_backend=seg_backend, seg_epochs=seg_epochs, seg_steps=seg_steps,
                           clf_grid_epochs=clf_grid_epochs, clf_epochs=clf_epochs, data_only=data_only,
                           overwrite=overwrite)
    typer.echo(result.summary())


@app.command("evaluate-segmentation")
def evaluate_segmentation_cmd(
    truth: Path = typer.Option(..., help="Folder with the ground-truth label images (e.g. from annotations-to-masks)."),
    pred: Path = typer.Option(..., help="Folder with the predicted label images of the same names (e.g. from segment)."),
    out: Path = typer.Option(..., help="Folder for the metric tables, the plot and the overlays."),
    images: Optional[Path] = typer.Option(None, help="Folder with the images, drawn under the outline overlays (optional)."),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
) -> None:
    """Compare predicted with true label images: precision, recall, F1, AP per IoU threshold, merges, splits."""
    result = steps.evaluate_segmentation(truth, pred, out, images=images, overwrite=overwrite)
    typer.echo(result.summary())


@app.command("train-segmentation")
def train_segmentation_cmd(
    data: Path = typer.Option(..., help="Folder written by 'orgaseg split --mode segmentation' (train/ and val/ with images/ and masks/)."),
    model_out: Path = typer.Option(..., "--model-out", help="Folder for the trained model (weights, thresholds, report, TensorBoard logs)."),
    preset: str = typer.Option("quick", help="Training budget: 'quick' (U-Net 20 x 25 steps, StarDist 40 x 25; minutes on 2 CPU cores for the example data) or 'real' (U-Net up to 200 x 50 steps, StarDist up to 400 x 50; early stopping, at most 30 min)."),
    epochs: Optional[int] = typer.Option(None, min=1, help="Number of training epochs (default: from the preset)."),
    steps_per_epoch: Optional[int] = typer.Option(None, "--steps-per-epoch", min=1, help="Training steps (batches) per epoch (default: from the preset)."),
    early_stopping: Optional[int] = typer.Option(None, "--early-stopping", min=0, help="Stop after this many epochs without a better validation loss; 0: never (default: from the preset)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Stop training after this many minutes (default: from the preset)."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Image patches per training step."),
    patch_size: Optional[str] = typer.Option(None, "--patch-size", help="Training patch size in pixels, N or HEIGHTxWIDTH (multiples of 16; the U-Net: N, a multiple of 32); default: automatic, 256 or twice the large objects (StarDist), fitting the smallest image."),
    resize: str = typer.Option("auto", help="Resize the images by this factor before training; 'auto': chosen from the object sizes so the large organoids fit the network's field of view; 1: as given."),
    n_rays: int = typer.Option(32, "--n-rays", min=3, help="--backend stardist: number of rays of each object's star-convex polygon."),
    grid: str = typer.Option("2x2", help="--backend stardist: output grid (subsampling) as ROWSxCOLUMNS."),
    learning_rate: Optional[float] = typer.Option(None, "--learning-rate", help="Initial learning rate (default: 3e-4 for StarDist, halved when the validation loss stalls; 2e-3 for the U-Net, the peak of its warm-up and cosine schedule)."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Random flips, rotations, scale jitter, brightness, contrast, gamma, blur and noise of the training patches."),
    refine: str = typer.Option("auto", help="--backend stardist: outline refinement stored in the model: none, probability, edges, or auto (the best on the validation images)."),
    pyramid: str = typer.Option("auto", help="Scales to predict at, as factors of the model's scale, e.g. 1,2,4 (small organoids are found at the finer ones; the network is trained at one); 'auto': chosen from the small organoids' size and kept only if better on the validation images; 'none': one scale."),
    tta: str = typer.Option("auto", help="--backend unet: test-time views stored in the model, its probabilities averaged over 1, 2, 4 or 8 flipped and turned copies of each image; 'auto': 1 or 8, the most within 0.01 of the best validation mean F1."),
    norm_low: float = typer.Option(1.0, "--norm-low", help="Lower percentile of the per-image intensity normalisation."),
    norm_high: float = typer.Option(99.8, "--norm-high", help="Upper percentile of the per-image intensity normalisation."),
    seed: int = typer.Option(0, help="Random seed (patches, augmentation, network initialisation)."),
    init_model: Optional[Path] = typer.Option(None, "--init-model", help="--backend stardist: local StarDist model folder to continue training from (same rays and grid)."),
    scale: Optional[float] = typer.Option(None, help="Pixel scale of the training images relative to the originals (default: read from the preprocess run, else 1)."),
    backend: str = typer.Option("unet", help="'unet' (default since 0.18): a U-Net trained from scratch (PyTorch, a GPU when there is one) that finds organoid interiors and boundaries, outlines of any shape (takes the budget options, --batch-size, --patch-size, --resize, --learning-rate, --augment, --norm-low/--norm-high, --seed, --scale, --device, --pyramid, --tta, --refit); on real brightfield organoids it finds far more than StarDist. 'stardist': a StarDist2D network (TensorFlow; also --n-rays, --grid, --refine, --init-model). 'forest': a random forest on multi-scale pixel features that finds the same interiors and boundaries (CPU, seconds to minutes; takes --resize, --norm-low/--norm-high, --seed, --scale, --n-trees)."),
    n_trees: int = typer.Option(100, "--n-trees", min=1, help="Trees of the pixel forest (--backend forest)."),
    device: Optional[str] = typer.Option(None, help="'cpu' or 'cuda' for --backend unet (default: cuda when available)."),
    refit: bool = typer.Option(False, "--refit/--no-refit", help="--backend unet: once the network, outlines, views and pyramid are chosen on the validation images, train the stored network again on the training and validation images together, for as many steps (twice the training time)."),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
) -> None:
    """Train a segmentation model (a U-Net, StarDist or a pixel forest) on split image/mask pairs; choose thresholds and outlines; report validation quality."""
    result = steps.train_segmentation(data, model_out, preset=preset, epochs=epochs,
                                      steps_per_epoch=steps_per_epoch, early_stopping=early_stopping,
                                      max_minutes=max_minutes, batch_size=batch_size,
                                      patch_size=patch_size, resize=resize, n_rays=n_rays,
                                      grid=grid, learning_rate=learning_rate, augment=augment,
                                      refine=refine, pyramid=pyramid, tta=tta, norm_low=norm_low, norm_high=norm_high,
                                      seed=seed, init_model=init_model, scale=scale,
                                      backend=backend, n_trees=n_trees, device=device, refit=refit,
                                      overwrite=overwrite)
    typer.echo(result.summary())


@app.command("segment")
def segment_cmd(
    model: Path = typer.Option(..., help="Model folder written by train-segmentation."),
    images: Path = typer.Option(..., help="An image file or a folder of images to segment."),
    out: Path = typer.Option(..., help="Folder for the label images, QuPath GeoJSON files and object tables."),
    n_tiles: Optional[str] = typer.Option(None, "--n-tiles", help="Predict in ROWSxCOLUMNS tiles (default: automatic, tiles of at most 1024 px)."),
    prob_thresh: Optional[float] = typer.Option(None, "--prob-thresh", help="Object probability threshold (default: the model's optimised value)."),
    nms_thresh: Optional[float] = typer.Option(None, "--nms-thresh", help="Overlap threshold of non-maximum suppression (default: the model's optimised value)."),
    image_scale: float = typer.Option(1.0, "--image-scale", help="Pixel scale of the images relative to the original images (1 = full size)."),
    preprocessing: bool = typer.Option(True, "--preprocessing/--no-preprocessing", help="Repeat the model's training preprocessing (vignette removal, background flattening); use --no-preprocessing for images that were preprocessed already (e.g. the test split)."),
    refine: str = typer.Option("auto", help="Outline refinement: none (StarDist's polygons), probability (grown into StarDist's probability map), edges (onto the image's edges), or auto (the model's choice on its validation images)."),
    pyramid: str = typer.Option("auto", help="Predict at these factors of the model's scale, e.g. 1,2,4, keeping each organoid from the scale where it is best seen; 'none': one scale; 'auto': the model's choice."),
    tta: str = typer.Option("auto", help="Test-time views of a U-Net or pixel forest: its probabilities averaged over 1, 2, 4 or 8 flipped and turned copies of each image (n times the prediction time); 'auto': the model's choice on its validation images."),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
) -> None:
    """Segment images with a trained model (StarDist, U-Net or pixel forest): label images, QuPath GeoJSON and object tables."""
    try:
        result = steps.segment(model, images, out, n_tiles=_tiles(n_tiles),
                               prob_thresh=prob_thresh, nms_thresh=nms_thresh, image_scale=image_scale,
                               preprocessing=preprocessing, refine=refine, pyramid=pyramid,
                               tta=tta, overwrite=overwrite)
    except OrgasegError as exc:
        _echo_partial_result(exc)
        raise
    typer.echo(result.summary())


@app.command("extract-objects")
def extract_objects_cmd(
    images: Path = typer.Option(..., help="Folder with the images."),
    masks: Path = typer.Option(..., help="Folder with label images (masks) of the same names, e.g. from segment."),
    out: Path = typer.Option(..., help="Folder for crops/, objects.csv and skipped.csv."),
    padding: int = typer.Option(10, min=0, help="Pixels of context added around each object's bounding box."),
    context: float = typer.Option(0.25, min=0.0, max=2.0, help="And this fraction of the box's longer side on each side (a crop around an outline that misses thin branches still shows them; train-classifier cuts its crops the same way; 0: the box and padding only, as before 0.9)."),
    mask_background: bool = typer.Option(False, "--mask-background", help="Set crop pixels outside the object to the image's background level."),
    min_area: int = typer.Option(0, "--min-area", min=0, help="Skip objects smaller than this many pixels."),
    exclude_border: bool = typer.Option(False, "--exclude-border", help="Skip objects touching the image border."),
    class_folders: bool = typer.Option(
        False, "--class-folders",
        help="Sort the crops into crops/<class>/ by the class tables (<stem>_objects.csv) that "
             "annotations-to-masks wrote beside the masks: training crops from images + GeoJSON alone."),
    pixel_size: Optional[str] = typer.Option(None, "--pixel-size", help="Micrometres per pixel of the images (default: read from each image file: OME-XML, ImageJ metadata or TIFF resolution tags; JPEG and PNG carry none). Adds µm and µm² columns; a value that differs from a file's is reported and wins."),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
) -> None:
    """Cut one crop per object out of each image and measure every object's shape and intensity."""
    result = steps.extract_objects(images, masks, out, padding=padding, context=context,
                                   mask_background=mask_background,
                                   min_area=min_area, exclude_border=exclude_border,
                                   class_folders=class_folders, pixel_size=pixel_size, overwrite=overwrite)
    typer.echo(result.summary())


FAMILY_HELP = ("Use this trained candidate of the classifier folder (measurements, cnn, combined) "
               "instead of the one chosen on validation.")


def _comma_list(text: str, kind, what: str, *, minimum: float, strict: bool) -> list:
    """``"1e-3,3e-4"`` -> [0.001, 0.0003]; bad items are a usage error (exit status 2)."""
    try:
        return parse_number_list(text, kind, what=what, minimum=minimum, strict=strict)
    except OrgasegError as exc:
        raise typer.BadParameter(str(exc)) from None


# Defaults repeat orgaseg_core.classification.train.DEFAULT_* (not imported here: the CLI module must
# load without the classification extra); tests/test_classifier.py checks that they agree.
@app.command("train-classifier")
def train_classifier_cmd(
    data: Optional[Path] = typer.Option(None, help="Folder written by 'orgaseg split --mode classification' (train/, val/, test/ with one sub-folder per class); crops only: trains the cnn family. Or give --images and --masks."),
    images: Optional[Path] = typer.Option(None, help="Folder of annotated images (with --masks): every object becomes a crop and a row of measurements; all families can be trained."),
    masks: Optional[Path] = typer.Option(None, help="Folder written by annotations-to-masks for --images (<stem>.tif label images and <stem>_objects.csv classes)."),
    model_out: Path = typer.Option(..., "--model-out", help="Folder for the classifier (classifier.json, model.pt and/or measurements.skops), reports, grid results and TensorBoard logs."),
    families: str = typer.Option("measurements,cnn,combined", help="Candidate families, comma-separated: measurements (random forest on the object measurements), cnn (network on the crops), combined (their weighted mean). The best on validation is kept."),
    val_fraction: float = typer.Option(0.15, "--val-fraction", min=0.0, max=1.0, help="With --images: fraction of the images for validation (model choice, calibration)."),
    test_fraction: float = typer.Option(0.15, "--test-fraction", min=0.0, max=1.0, help="With --images: fraction of the images for the final test (used once)."),
    padding: int = typer.Option(10, min=0, help="With --images: pixels of context around each object's crop (as extract-objects cuts them; analyze uses the same)."),
    context: float = typer.Option(0.25, min=0.0, max=2.0, help="With --images: and this fraction of the object's size on each side of its crop (analyze uses the same)."),
    n_trees: int = typer.Option(300, "--n-trees", min=1, help="Trees of the measurement random forest."),
    outline_augmentation: bool = typer.Option(True, "--outline-augmentation/--no-outline-augmentation", help="Also train the measurement forest on eroded, dilated and smoothed outlines, so that segmented outlines do not throw it."),
    architectures: str = typer.Option("resnet18", help="Network architectures to try, comma-separated: resnet18, resnet50, resnext50_32x4d, wide_resnet50_2, densenet121, efficientnet_b0, mobilenet_v3_small, convnext_tiny."),
    learning_rates: str = typer.Option("1e-3,3e-4", "--learning-rates", help="Learning rates to try, comma-separated."),
    batch_sizes: str = typer.Option("32", "--batch-sizes", help="Batch sizes (crops per training step) to try, comma-separated."),
    weight_decays: str = typer.Option("1e-4", "--weight-decays", help="Weight decays (regularisation) to try, comma-separated."),
    grid_epochs: int = typer.Option(3, "--grid-epochs", min=1, help="Epochs of each short grid-search run."),
    epochs: int = typer.Option(15, min=1, help="Most epochs of the final run of the best setting."),
    patience: int = typer.Option(5, min=1, help="Stop the final run after this many epochs without a better validation macro-F1."),
    input_size: Optional[int] = typer.Option(None, "--input-size", min=32, max=1024, help="Network input size in pixels (default: learned from the training crops)."),
    weights: Optional[Path] = typer.Option(None, help="Local weights file (a torchvision state_dict of the architecture) to start the CNN from; nothing is downloaded."),
    pretrained: bool = typer.Option(False, help="Start the CNN from torchvision's ImageNet weights (read from torchvision's cache, downloaded there when online)."),
    review_below: float = typer.Option(0.6, "--review-below", min=0.0, max=1.0, help="Objects whose calibrated confidence is below this are flagged for review by classify and analyze."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same model on the CPU."),
    num_workers: int = typer.Option(0, "--num-workers", min=0, help="Worker processes that prepare crops (0 = in the main process)."),
    device: Optional[str] = typer.Option(None, help="'cpu' or 'cuda' (default: cuda when available)."),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
) -> None:
    """Train the classifier families (measurements, CNN, combined), keep the best on validation, calibrate its confidence, report on the test split."""
    result = steps.train_classifier(
        data, model_out, images=images, masks=masks, families=families, val_fraction=val_fraction,
        test_fraction=test_fraction, padding=padding, context=context, n_trees=n_trees,
        outline_augmentation=outline_augmentation,
        architectures=[a.strip() for a in architectures.split(",") if a.strip()],
        learning_rates=_comma_list(learning_rates, float, "--learning-rates", minimum=0, strict=True),
        batch_sizes=_comma_list(batch_sizes, int, "--batch-sizes", minimum=1, strict=False),
        weight_decays=_comma_list(weight_decays, float, "--weight-decays", minimum=0, strict=False),
        grid_epochs=grid_epochs, epochs=epochs, patience=patience, input_size=input_size,
        weights=weights, pretrained=pretrained, review_below=review_below, seed=seed,
        num_workers=num_workers, device=device, overwrite=overwrite)
    typer.echo(result.summary())


@app.command("classify")
def classify_cmd(
    model: Path = typer.Option(..., help="Classifier folder written by train-classifier (or its classifier.json / model.pt)."),
    objects: Path = typer.Option(..., help="Folder written by extract-objects (objects.csv + crops/), or a folder of crops (CNN only)."),
    out: Path = typer.Option(..., help="Folder for predictions.csv."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Crops classified at once."),
    device: Optional[str] = typer.Option(None, help="'cpu' or 'cuda' (default: cuda when available)."),
    review_below: Optional[float] = typer.Option(None, "--review-below", min=0.0, max=1.0, help="Flag objects whose confidence is below this for review (default: the model's threshold)."),
    family: Optional[str] = typer.Option(None, help=FAMILY_HELP),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
) -> None:
    """Classify every object: predicted class, calibrated confidence, review flag and one probability per class."""
    result = steps.classify(model, objects, out, batch_size=batch_size, device=device,
                            review_below=review_below, family=family, overwrite=overwrite)
    typer.echo(result.summary())


@app.command("classifier-info")
def classifier_info_cmd(
    model: Path = typer.Option(..., help="Classifier folder written by train-classifier (or its classifier.json / model.pt)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (for scripts) instead of text."),
    family: Optional[str] = typer.Option(None, help=FAMILY_HELP),
) -> None:
    """Check a classifier and print what it holds: family, classes, calibration, metrics."""
    import json

    from .classification.model import load_classifier

    classifier = load_classifier(model, family)
    info = {"model": str(model), **classifier.info(),
            "metrics": (classifier.description.get("metrics")
                        or (classifier.checkpoint.metrics if classifier.checkpoint else {})),
            "versions": (classifier.description.get("versions")
                         or (classifier.checkpoint.versions if classifier.checkpoint else {}))}
    if as_json:
        typer.echo(json.dumps(info, default=str))
        return
    typer.echo(f"{model}: orgaseg {classifier.describe()}")
    test = (info["metrics"] or {}).get("test") or {}
    if "macro_f1" in test:
        typer.echo(f"  test macro-F1 {test['macro_f1']:.3f}")


@app.command("analyze")
def analyze_cmd(
    segmentation_model: Optional[Path] = typer.Option(None, "--segmentation-model", help="Model folder written by train-segmentation (or give --masks)."),
    classifier: Path = typer.Option(..., help="Classifier folder written by train-classifier (or its classifier.json / model.pt)."),
    images: Path = typer.Option(..., help="An image file or a folder of images to analyse."),
    out: Path = typer.Option(..., help="Folder for the QuPath files, overlays, objects.csv and summary.csv."),
    masks: Optional[Path] = typer.Option(None, help="Instead of --segmentation-model: a folder of label images of the same names from another tool (Cellpose, QuPath, ...)."),
    n_tiles: Optional[str] = typer.Option(None, "--n-tiles", help="Segment in ROWSxCOLUMNS tiles (default: automatic)."),
    prob_thresh: Optional[float] = typer.Option(None, "--prob-thresh", help="Object probability threshold (default: the model's tuned value)."),
    nms_thresh: Optional[float] = typer.Option(None, "--nms-thresh", help="Overlap threshold (default: the model's tuned value)."),
    image_scale: float = typer.Option(1.0, "--image-scale", help="Pixel scale of the images relative to the original images (1 = full size)."),
    preprocessing: bool = typer.Option(True, "--preprocessing/--no-preprocessing", help="Repeat the segmentation model's training preprocessing."),
    padding: Optional[int] = typer.Option(None, min=0, help="Pixels of context around each object's crop (default: the padding the classifier was trained with, else 10)."),
    context: Optional[float] = typer.Option(None, min=0.0, max=2.0, help="And this fraction of the object's size on each side (default: what the classifier was trained with; 0 for classifiers before 0.9)."),
    mask_background: bool = typer.Option(False, "--mask-background", help="Set crop pixels outside the object to the background level."),
    min_area: int = typer.Option(0, "--min-area", min=0, help="Do not classify objects smaller than this many pixels."),
    exclude_border: bool = typer.Option(False, "--exclude-border", help="Do not classify objects touching the image border."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Crops classified at once."),
    device: Optional[str] = typer.Option(None, help="'cpu' or 'cuda' for the classifier (default: cuda when available)."),
    review_below: Optional[float] = typer.Option(None, "--review-below", min=0.0, max=1.0, help="Flag objects whose class confidence is below this for review (default: the classifier's threshold)."),
    family: Optional[str] = typer.Option(None, help=FAMILY_HELP),
    pixel_size: Optional[str] = typer.Option(None, "--pixel-size", help="Micrometres per pixel of the images (default: read from each image file; JPEG and PNG carry none). Adds µm and µm² columns and QuPath measurements."),
    metadata: Optional[Path] = typer.Option(None, help="CSV or Excel table of the experiment's design: an 'image' column (file name) and any others (well, condition, treatment, timepoint, replicate ...). Adds them to the tables and writes conditions.csv."),
    name_pattern: Optional[str] = typer.Option(None, "--name-pattern", help="Regular expression with named groups that reads the design from the file names, e.g. '(?P<well>[A-H]\\d{2})_(?P<condition>\\w+)'."),
    control: Optional[str] = typer.Option(None, help="The control condition: the others are compared with it (differences with bootstrap intervals and permutation tests over wells)."),
    seed: int = typer.Option(0, help="Random seed of the bootstrap intervals and permutation tests."),
    workers: str = typer.Option("auto", help="Dask worker processes of the local cluster (default 'auto': one per 2 CPU cores); with --scheduler, only sizes the chunks."),
    scheduler: Optional[str] = typer.Option(None, help="Address of a running Dask scheduler (tcp://host:8786) whose workers run the chunks (they must see the same files under the same paths); default: a local cluster."),
    chunk_size: Optional[int] = typer.Option(None, "--chunk-size", min=1, help="Images per task (default: the images shared out over the workers, at most 64); a worker keeps its step processes and models loaded from chunk to chunk."),
    threads_per_worker: Optional[int] = typer.Option(None, "--threads-per-worker", min=1, help="Threads of each chunk's steps (default: the CPU cores shared out over the local workers)."),
    chunks_per_worker: Optional[int] = typer.Option(None, "--chunks-per-worker", min=1, help="Chunks each local worker runs at once (default 2: the next chunk segments while the one before it is cut out, classified and written; one warm process per step in each worker); 1: one after another. Not with --scheduler."),
    overlays: str = typer.Option("png", help="Picture of each image's outlines coloured by class: 'png' (lossless), 'jpeg' (.jpg: faster to write and smaller, for thousands of images) or 'none'."),
    tta: str = typer.Option("auto", help="Test-time views of a U-Net or pixel-forest model: its probabilities averaged over 1, 2, 4 or 8 flipped and turned copies of each image (n predictions per image; 1 is the fast pass for thousands of images); 'auto': the model's choice on its validation images."),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP + " A rerun of the same command without it resumes an interrupted analysis."),
) -> None:
    """Segment (or take --masks), measure and classify every organoid in new images; QuPath files, overlays and tables."""
    try:
        result = steps.analyze(segmentation_model, classifier, images, out, masks=masks,
                               n_tiles=_tiles(n_tiles),
                               prob_thresh=prob_thresh, nms_thresh=nms_thresh, image_scale=image_scale,
                               preprocessing=preprocessing, padding=padding, context=context,
                               mask_background=mask_background, min_area=min_area,
                               exclude_border=exclude_border, batch_size=batch_size, device=device,
                               review_below=review_below, family=family, pixel_size=pixel_size,
                               metadata=metadata, name_pattern=name_pattern, control=control,
                               seed=seed, workers=workers, scheduler=scheduler, chunk_size=chunk_size,
                               threads_per_worker=threads_per_worker, chunks_per_worker=chunks_per_worker,
                               overlays=overlays, tta=tta, overwrite=overwrite)
    except OrgasegError as exc:
        _echo_partial_result(exc)
        raise
    typer.echo(result.summary())


def _raise_interrupted(signum, _frame) -> None:
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``orgaseg`` console script; returns the exit status.

    0 done; 1 an error the user can fix (one ``error: <file>: <problem>`` line); 2 a bad option
    value; 130 / 143 stopped by Ctrl-C (SIGINT) / SIGTERM: the step's ``run.json`` then says
    ``interrupted`` and no temporary file is left behind.
    """
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        # SIGTERM would otherwise end Python at once, with no cleanup and no run.json.
        for signum in (signal.SIGINT, signal.SIGTERM):
            handlers[signum] = signal.signal(signum, _raise_interrupted)
    try:
        status = app(args=argv, standalone_mode=False)
    except Interrupted as exc:
        typer.echo(f"interrupted by {exc.name}", err=True)
        return exc.exit_status
    except OptionError as exc:  # an option value out of range: a usage error
        typer.echo(f"error: {exc}", err=True)
        return 2
    except OrgasegError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 1
    except OSError as exc:  # the file system refused (read-only, full, name too long, ...)
        typer.echo(f"error: {describe_os_error(exc)}", err=True)
        return 1
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except Exception as exc:
        # Usage errors carry their own message and exit code (2). Recent typer versions ship their
        # own copy of click, so the class is recognised by what it offers, not by its module.
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            return exc.exit_code
        raise
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    # Without standalone mode click returns the code of an Exit raised inside a command
    # instead of raising it: it must become the process's exit status, not be dropped.
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
