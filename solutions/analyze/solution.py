"""album solution orgaseg:analyze -- segment, measure and classify every organoid of new images.

A thin wrapper around ``orgaseg_core.steps.analyze`` (the same function as ``orgaseg analyze``).
album reads this file before the solution's environment exists, so ``orgaseg_core`` is imported
only inside ``run``, ``pre_test`` and ``test``.
"""
from album.runner.api import get_args, setup

if __name__ == "__mp_main__":
    # analyze runs its images on Dask worker processes started by "spawn": each re-imports the
    # main module, which album makes this file, so setup() below would start a whole second
    # analyze run in every worker. A worker needs nothing of this file: there, setup does nothing.
    def setup(**_):
        return None


def run():
    from orgaseg_core import steps
    from orgaseg_core.album_support import run_step

    args = get_args()
    run_step(lambda: steps.analyze(
        args.segmentation_model, args.classifier, args.images, args.out, masks=args.masks,
        n_tiles=args.n_tiles,
        prob_thresh=args.prob_thresh, nms_thresh=args.nms_thresh, image_scale=args.image_scale,
        preprocessing=args.preprocessing, padding=args.padding, context=args.context,
        mask_background=args.mask_background, min_area=args.min_area,
        exclude_border=args.exclude_border, batch_size=args.batch_size, device=args.device,
        review_below=args.review_below, family=args.family, pixel_size=args.pixel_size,
        metadata=args.metadata, name_pattern=args.name_pattern, control=args.control,
        seed=args.seed, workers=args.workers, scheduler=args.scheduler or None,
        chunk_size=args.chunk_size or None, threads_per_worker=args.threads_per_worker or None,
        chunks_per_worker=args.chunks_per_worker or None, overlays=args.overlays, tta=args.tta,
        overwrite=args.overwrite))


def pre_test():
    """Small example data and two small models, each trained in its own process; the classifier
    from the annotated images."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from orgaseg_core import steps

    root = Path(tempfile.mkdtemp(prefix="orgaseg-album-test-"))
    steps.demo_data(root / "data", n_images=6, seed=21, size=(480, 640))
    steps.annotations_to_masks(root / "data" / "geojsons", root / "data" / "images", root / "masks")
    steps.preprocess(root / "data" / "images", root / "pre", masks=root / "masks", scale=0.5)
    steps.split(root / "pre", root / "split-seg", mode="segmentation", train=0.67, val=0.33,
                test=0.0, seed=0)
    # The test checks what analyze writes, not how good the models are: the fastest models of
    # each step (a pixel forest, the measurement classifier; seconds on a CPU) stand in for
    # the U-Net, StarDist and the CNN, which the catalog's integration tests run through analyze.
    for step, options in (
            ("train-segmentation", ["--data", root / "split-seg", "--model-out", root / "seg-model",
                                    "--backend", "forest", "--n-trees", 20]),
            ("train-classifier", ["--images", root / "data" / "images", "--masks", root / "masks",
                                  "--model-out", root / "classifier", "--val-fraction", 0.34,
                                  "--test-fraction", 0.34, "--families", "measurements",
                                  "--n-trees", 30])):
        # the orgaseg command line of this environment, one process per framework
        ended = subprocess.run([sys.executable, "-m", "orgaseg_core", step, *map(str, options)])
        assert ended.returncode == 0, f"{step} failed with exit status {ended.returncode}"
    steps.demo_data(root / "new", n_images=2, seed=22, size=(480, 640))
    return {"--segmentation_model": str(root / "seg-model"),
            "--classifier": str(root / "classifier"), "--images": str(root / "new" / "images"),
            "--out": str(root / "analysis"), "--review_below": "0.9"}


def test():
    import json
    import shutil
    from pathlib import Path

    import numpy as np
    import pandas as pd
    import tifffile

    args = get_args()
    images, out = Path(args.images), Path(args.out)
    names = sorted(p.name for p in images.iterdir())
    summary = pd.read_csv(out / "summary.csv", dtype={"stem": str})
    objects = pd.read_csv(out / "objects.csv", dtype={"stem": str})
    assert list(summary["image"]) == names, (list(summary["image"]), names)
    classes = [c[len("count_"):] for c in summary.columns if c.startswith("count_")]
    assert len(classes) >= 2 and set(objects["predicted_class"]) <= set(classes)
    probabilities = objects[[f"prob_{c}" for c in classes]].sum(axis=1)
    assert np.allclose(probabilities, 1.0, atol=1e-4)
    review = float(args.review_below)
    assert list(objects["needs_review"]) == list(objects["confidence"] < review)
    for row in summary.to_dict("records"):
        stem = row["stem"]
        labels = tifffile.imread(out / "segmentation" / f"{stem}.tif")
        ids = {int(i) for i in np.unique(labels) if i}
        assert row["objects"] == len(ids)
        mine = objects[objects["stem"] == stem]
        assert row["classified"] == len(mine) and set(mine["label"]) <= ids
        for c in classes:
            assert row[f"count_{c}"] == (mine["predicted_class"] == c).sum(), (stem, c)
        assert row["needs_review"] == mine["needs_review"].sum(), stem
        flagged = set(mine.loc[mine["needs_review"], "label"])
        features = json.loads((out / "qupath" / f"{stem}.geojson").read_text())["features"]
        assert sorted(f["properties"]["measurements"]["Label"] for f in features) == sorted(ids)
        for feature in features:
            props = feature["properties"]
            if "classification" in props:
                assert props["classification"]["name"] in classes
                assert "Class confidence" in props["measurements"]
                label = props["measurements"]["Label"]
                assert props["measurements"]["Needs review"] == int(label in flagged), (stem, label)
        assert (out / "overlays" / f"{stem}.png").stat().st_size > 0
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "ok" and record["arguments"]["padding"] == 10  # the classifier's
    if out.parent.name.startswith("orgaseg-album-test-"):
        shutil.rmtree(out.parent, ignore_errors=True)


setup(
    group="orgaseg",
    name="analyze",
    version="0.21.0",
    album_api_version="0.7.3",
    title="Analyze new images: find, measure and classify every organoid",
    description=(
        "The whole inference pipeline in one run: finds every organoid in new brightfield images "
        "with a model from orgaseg:train-segmentation (a StarDist network, a pixel forest or a "
        "U-Net), "
        "measures its shape and classifies it with "
        "a model from orgaseg:train-classifier. Writes per image a QuPath GeoJSON file with every "
        "organoid classified (drag it onto the image in QuPath) and an overlay picture, plus a "
        "table of all organoids and a per-image summary of the class counts and proportions; "
        "organoids whose class is uncertain are flagged for review. "
        "Label images from another tool can take the place of the segmentation model. With "
        "the pixel size, sizes are also given in µm and µm²; with the experiment's design (a "
        "table or a file-name pattern: well, condition, timepoint ...) it adds counts, class "
        "fractions with 95% intervals and sizes per condition, and differences to a control "
        "condition with permutation tests over wells."
    ),
    solution_creators=["orgaseg developers"],
    cite=[
        {"text": "orgaseg developers. orgaseg: organoid segmentation and morphological "
                 "classification for brightfield microscopy, version 0.21.0 (the source "
                 "repository of this album catalog)."},
        {"text": "Schmidt U., Weigert M., Broaddus C., Myers G. Cell Detection with Star-convex "
                 "Polygons. MICCAI 2018.", "doi": "10.1007/978-3-030-00934-2_30"},
        {"text": "Paszke A. et al. PyTorch: An Imperative Style, High-Performance Deep Learning "
                 "Library. NeurIPS 2019."},
    ],
    tags=["organoids", "brightfield", "segmentation", "classification", "StarDist", "PyTorch",
          "QuPath", "orgaseg"],
    license="MIT",
    documentation=["README.md"],
    covers=[],
    args=[
        {"name": "segmentation_model", "type": "directory", "required": False, "default": None,
         "description": "Model folder written by orgaseg:train-segmentation, any backend "
                        "(StarDist, pixel forest or U-Net). Leave empty when you give masks "
                        "instead."},
        {"name": "classifier", "type": "directory", "required": True,
         "description": "Classifier folder written by orgaseg:train-classifier (or its "
                        "classifier.json / model.pt)."},
        {"name": "images", "type": "string", "required": True,
         "description": "One image file or a folder of images (TIFF, JPEG, PNG; grey, RGB or "
                        "16-bit) to analyse."},
        {"name": "out", "type": "directory", "required": True,
         "description": "New or empty folder for the results: qupath/, overlays/, summary.csv, "
                        "objects.csv and each step's own folder."},
        {"name": "masks", "type": "directory", "required": False, "default": None,
         "description": "Instead of a segmentation model: a folder of label images from another "
                        "tool (Cellpose, QuPath, another album solution), one per image with the "
                        "same name (e.g. well_A1.tif for well_A1.jpg), 0 = background. Leave "
                        "empty to segment with the model."},
        {"name": "n_tiles", "type": "string", "default": "auto",
         "description": "Segment in ROWSxCOLUMNS tiles, e.g. 4x4, to save memory: 'auto' "
                        "chooses tiles of at most 1024 px. StarDist models only: leave 'auto' "
                        "with a pixel-forest or U-Net model."},
        {"name": "prob_thresh", "type": "string", "default": "auto",
         "description": "Object probability threshold (0-1); higher finds fewer, surer "
                        "organoids. 'auto' uses the value tuned during training. StarDist models "
                        "only: leave 'auto' with a pixel-forest or U-Net model."},
        {"name": "nms_thresh", "type": "string", "default": "auto",
         "description": "Overlap threshold (0-1) above which two candidate outlines are one "
                        "organoid. 'auto' uses the value tuned during training. StarDist models "
                        "only: leave 'auto' with a pixel-forest or U-Net model."},
        {"name": "image_scale", "type": "float", "default": 1.0,
         "description": "Pixel scale of these images relative to the original microscope images "
                        "(1 = full size, 0.5 = half size)."},
        {"name": "preprocessing", "type": "boolean", "default": True,
         "description": "Repeat the clean-up the segmentation training images had (vignette "
                        "removal, background flattening) before segmenting (True/False)."},
        {"name": "padding", "type": "string", "default": "auto",
         "description": "Pixels of surroundings included around each organoid for the "
                        "classifier, e.g. 10; 'auto' uses the padding the classifier was trained "
                        "with, else 10."},
        {"name": "context", "type": "string", "default": "auto",
         "description": "And this fraction of the organoid's size on every side of its crop "
                        "(0-2), e.g. 0.25; 'auto' uses what the classifier was trained with (0 "
                        "for classifiers before 0.9.0)."},
        {"name": "mask_background", "type": "boolean", "default": False,
         "description": "Hide everything around each organoid (set it to the background level) "
                        "before classifying (True/False)."},
        {"name": "min_area", "type": "integer", "default": 0,
         "description": "Do not classify organoids smaller than this many pixels (they stay in "
                        "the QuPath file, without a class)."},
        {"name": "exclude_border", "type": "boolean", "default": False,
         "description": "Do not classify organoids cut by the image border (True/False)."},
        {"name": "batch_size", "type": "integer", "default": 64,
         "description": "Organoids classified at once; lower it if memory runs out."},
        {"name": "device", "type": "string", "default": "auto",
         "description": "Where the classifier runs: 'cpu', 'cuda' (an NVIDIA GPU) or 'auto' "
                        "(the GPU when there is one)."},
        {"name": "review_below", "type": "string", "default": "auto",
         "description": "Flag organoids whose class confidence is below this (0-1) for review "
                        "(needs_review); 'auto' uses the classifier's threshold."},
        {"name": "family", "type": "string", "default": "auto",
         "description": "Use this trained candidate of the classifier folder (measurements, cnn, "
                        "combined) instead of the one chosen on validation ('auto')."},
        {"name": "pixel_size", "type": "string", "default": "auto",
         "description": "Micrometres per pixel of the images, e.g. 0.65; 'auto' reads it from "
                        "each image file (OME-XML, ImageJ metadata or TIFF resolution tags; JPEG "
                        "and PNG carry none). Adds µm and µm² columns and QuPath measurements "
                        "where it is known."},
        {"name": "metadata", "type": "file", "default": None,
         "description": "Optional CSV or Excel table of the experiment's design: an 'image' "
                        "column (file name) and any others (well, condition, treatment, "
                        "timepoint, replicate ...). Adds them to the tables and writes "
                        "conditions.csv. Leave empty for none."},
        {"name": "name_pattern", "type": "string", "default": "",
         "description": "Regular expression with named groups that reads the design from the "
                        "file names, e.g. '(?P<well>[A-H]\\d{2})_(?P<condition>\\w+)'. Leave "
                        "empty for none."},
        {"name": "control", "type": "string", "default": "",
         "description": "The control condition, e.g. DMSO: the other conditions are compared "
                        "with it (differences with bootstrap intervals and permutation tests over "
                        "wells). Leave empty for no comparison."},
        {"name": "seed", "type": "integer", "default": 0,
         "description": "Random seed of the bootstrap intervals and permutation tests: the same "
                        "seed gives the same intervals and p-values."},
        {"name": "workers", "type": "string", "default": "auto",
         "description": "Dask worker processes of the local cluster that runs the images in "
                        "chunks ('auto': one per 2 CPU cores)."},
        {"name": "scheduler", "type": "string", "default": "",
         "description": "Address of a running Dask scheduler (tcp://host:8786) whose workers "
                        "run the chunks instead of a local cluster; they must see the same files "
                        "under the same paths. Leave empty for a local cluster."},
        {"name": "chunk_size", "type": "integer", "default": 0,
         "description": "Images per task (0: the images shared out over the workers, at most "
                        "64); a worker keeps its step processes and models loaded from chunk to chunk."},
        {"name": "threads_per_worker", "type": "integer", "default": 0,
         "description": "Threads of each chunk's steps (0: the CPU cores shared out over the "
                        "local workers)."},
        {"name": "chunks_per_worker", "type": "integer", "default": 0,
         "description": "Chunks each local worker runs at once (0: 2, the next chunk segments "
                        "while the one before it is cut out, classified and written; 1: one "
                        "after another). Not with a scheduler."},
        {"name": "overlays", "type": "string", "default": "png",
         "description": "Picture of each image's outlines coloured by class: png (lossless), "
                        "jpeg (.jpg files, faster to write and smaller: for thousands of images) "
                        "or none."},
        {"name": "tta", "type": "string", "default": "auto",
         "description": "Test-time views of a U-Net or pixel-forest segmentation model: its "
                        "probabilities averaged over 1, 2, 4 or 8 flipped and turned copies of "
                        "each image, one prediction each (1: the fast pass for thousands of "
                        "images). 'auto': the model's choice on its validation images. Leave "
                        "'auto' for a StarDist model or with masks."},
        {"name": "overwrite", "type": "boolean", "default": False,
         "description": "Allow writing into an output folder that already holds files "
                        "(True/False); files of the same name are replaced. Without it, the same "
                        "run again into the folder of an interrupted analysis resumes it."},
    ],
    run=run,
    pre_test=pre_test,
    test=test,
    dependencies={"environment_file": "environment.yml"},
)
