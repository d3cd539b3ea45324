"""album solution orgaseg:segment -- outline every organoid in new images with a trained model
(StarDist, pixel forest or U-Net).

A thin wrapper around ``orgaseg_core.steps.segment`` (the same function as ``orgaseg segment``).
album reads this file before the solution's environment exists, so ``orgaseg_core`` is imported
only inside ``run``, ``pre_test`` and ``test``.
"""
from album.runner.api import get_args, setup


def run():
    from orgaseg_core import steps
    from orgaseg_core.album_support import run_step

    args = get_args()
    run_step(lambda: steps.segment(
        args.model, args.images, args.out, n_tiles=args.n_tiles, prob_thresh=args.prob_thresh,
        nms_thresh=args.nms_thresh, image_scale=args.image_scale,
        preprocessing=args.preprocessing, refine=args.refine, pyramid=args.pyramid,
        tta=args.tta, overwrite=args.overwrite))


def pre_test():
    import tempfile
    from pathlib import Path

    from orgaseg_core import steps

    root = Path(tempfile.mkdtemp(prefix="orgaseg-album-test-"))
    steps.demo_data(root / "data", n_images=3, seed=6, size=(240, 320))
    steps.annotations_to_masks(root / "data" / "geojsons", root / "data" / "images", root / "masks")
    steps.preprocess(root / "data" / "images", root / "pre", masks=root / "masks")
    steps.split(root / "pre", root / "split", mode="segmentation", train=0.67, val=0.33, test=0.0, seed=0)
    # a tiny StarDist model (TensorFlow; the run below tiles its prediction): the test checks what
    # segment writes, not how good the model is
    steps.train_segmentation(root / "split", root / "model", backend="stardist", epochs=1,
                             steps_per_epoch=2, batch_size=2, patch_size=64)
    return {"--model": str(root / "model"), "--images": str(root / "data" / "images"),
            "--out": str(root / "segmented"), "--n_tiles": "2x2"}


def test():
    import json
    import shutil
    from pathlib import Path

    import numpy as np
    import pandas as pd
    import tifffile
    from PIL import Image

    args = get_args()
    images, out = Path(args.images), Path(args.out)
    for image in sorted(images.iterdir()):
        stem = image.name.split(".")[0]
        labels = tifffile.imread(out / f"{stem}.tif")
        with Image.open(image) as opened:
            assert labels.shape == opened.size[::-1], (image.name, labels.shape)
        assert labels.dtype in (np.uint16, np.uint32)
        ids = [int(i) for i in np.unique(labels) if i]
        table = pd.read_csv(out / f"{stem}_objects.csv")
        assert sorted(table["label"]) == ids, image.name
        assert list(table["area_px"]) == [int((labels == i).sum()) for i in table["label"]]
        features = json.loads((out / f"{stem}.geojson").read_text())["features"]
        assert len(features) == len(ids)
        assert all(f["properties"]["objectType"] == "detection" for f in features)
    assert (out / "run.json").is_file()
    if out.parent.name.startswith("orgaseg-album-test-"):
        shutil.rmtree(out.parent, ignore_errors=True)


setup(
    group="orgaseg",
    name="segment",
    version="0.21.0",
    album_api_version="0.7.3",
    title="Segment organoids with a trained model (StarDist, pixel forest or U-Net)",
    description=(
        "Finds and outlines every organoid in one image or a folder of images with a model from "
        "orgaseg:train-segmentation, any backend (a StarDist network, a pixel forest or a "
        "U-Net; a U-Net runs on torch, on a GPU when there is one, and never beside TensorFlow). "
        "Works on full-size microscope images (4032x3040 and larger) and on images at another "
        "scale than the training images. "
        "Writes per image a label image, a QuPath GeoJSON file of detections (drag it onto the "
        "image in QuPath) and a table of the objects."
    ),
    solution_creators=["orgaseg developers"],
    cite=[
        {"text": "orgaseg developers. orgaseg: organoid segmentation and morphological "
                 "classification for brightfield microscopy, version 0.21.0 (the source "
                 "repository of this album catalog)."},
        {"text": "Schmidt U., Weigert M., Broaddus C., Myers G. Cell Detection with Star-convex "
                 "Polygons. MICCAI 2018.", "doi": "10.1007/978-3-030-00934-2_30"},
        {"text": "Ronneberger O., Fischer P., Brox T. U-Net: Convolutional Networks for "
                 "Biomedical Image Segmentation. MICCAI 2015.", "doi": "10.1007/978-3-319-24574-4_28"},
    ],
    tags=["organoids", "brightfield", "segmentation", "StarDist", "U-Net", "QuPath", "orgaseg"],
    license="MIT",
    documentation=["README.md"],
    covers=[],
    args=[
        {"name": "model", "type": "directory", "required": True,
         "description": "Model folder written by orgaseg:train-segmentation, any backend "
                        "(StarDist, pixel forest or U-Net); the kind is read from the folder."},
        {"name": "images", "type": "string", "required": True,
         "description": "One image file or a folder of images (TIFF, JPEG, PNG; grey, RGB or "
                        "16-bit) to segment."},
        {"name": "out", "type": "directory", "required": True,
         "description": "New or empty folder for <image>.tif (labels), <image>.geojson (for "
                        "QuPath) and <image>_objects.csv per image."},
        {"name": "n_tiles", "type": "string", "default": "auto",
         "description": "Predict in ROWSxCOLUMNS tiles, e.g. 4x4, to save memory: 'auto' "
                        "chooses tiles of at most 1024 px. StarDist models only: leave 'auto' "
                        "with a pixel-forest or U-Net model."},
        {"name": "prob_thresh", "type": "string", "default": "auto",
         "description": "Object probability threshold (0-1), e.g. 0.6; higher finds fewer, surer "
                        "organoids. 'auto' uses the value tuned during training. StarDist models "
                        "only: leave 'auto' with a pixel-forest or U-Net model."},
        {"name": "nms_thresh", "type": "string", "default": "auto",
         "description": "Overlap threshold (0-1), e.g. 0.4, above which two candidate outlines "
                        "are one organoid. 'auto' uses the value tuned during training. StarDist "
                        "models only: leave 'auto' with a pixel-forest or U-Net model."},
        {"name": "image_scale", "type": "float", "default": 1.0,
         "description": "Pixel scale of these images relative to the original microscope images "
                        "(1 = full size, 0.5 = half size). Images are resized to the model's "
                        "scale and the results returned at the images' own size."},
        {"name": "preprocessing", "type": "boolean", "default": True,
         "description": "Repeat the clean-up the training images had (vignette removal, "
                        "background flattening) before predicting (True/False)."},
        {"name": "refine", "type": "string", "default": "auto",
         "description": "How the outlines are finished: 'auto' (what the model chose on its "
                        "validation images), 'none' (StarDist's star-shaped polygons), "
                        "'probability' (grown into the model's organoid probability map) or "
                        "'edges' (moved onto the image's edges at full resolution, taking in "
                        "buds). StarDist models only: leave 'auto' with a pixel-forest or U-Net model."},
        {"name": "pyramid", "type": "string", "default": "auto",
         "description": "For organoids of very different sizes: segment at these factors of the "
                        "model's scale, e.g. '1,2,4', and keep each organoid from the scale where "
                        "it is best seen (small ones at the finer scales). 'auto': what the model "
                        "chose on its validation images; 'none': one scale. Any model (since "
                        "0.9.0 also a pixel forest or a U-Net)."},
        {"name": "tta", "type": "string", "default": "auto",
         "description": "Test-time views of a U-Net or pixel-forest model: its probabilities "
                        "averaged over 1, 2, 4 or 8 flipped and turned copies of each image "
                        "(better outlines and more organoids found on real images; n times the "
                        "prediction time). 'auto': what the model chose on its validation "
                        "images (1 for models before 0.10.0). StarDist models: leave 'auto'."},
        {"name": "overwrite", "type": "boolean", "default": False,
         "description": "Allow writing into an output folder that already holds files "
                        "(True/False); files of the same name are replaced."},
    ],
    run=run,
    pre_test=pre_test,
    test=test,
    dependencies={"environment_file": "environment.yml"},
)
