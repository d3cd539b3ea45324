"""album solution orgaseg:annotations-to-masks -- QuPath GeoJSON into instance label images.

A thin wrapper around ``orgaseg_core.steps.annotations_to_masks`` (the same function as
``orgaseg annotations-to-masks``). album reads this file before the solution's environment
exists, so ``orgaseg_core`` is imported only inside ``run``, ``pre_test`` and ``test``.
"""
from album.runner.api import get_args, setup


def run():
    from orgaseg_core import steps
    from orgaseg_core.album_support import run_step

    args = get_args()
    run_step(lambda: steps.annotations_to_masks(args.annotations, args.images, args.out,
                                                keep_unclassified=args.keep_unclassified,
                                                class_map=args.class_map,
                                                object_types=args.object_types, plane=args.plane,
                                                overwrite=args.overwrite))


def pre_test():
    import tempfile
    from pathlib import Path

    from orgaseg_core import steps

    root = Path(tempfile.mkdtemp(prefix="orgaseg-album-test-"))
    steps.demo_data(root / "data", n_images=2, seed=2, size=(240, 320))
    return {"--annotations": str(root / "data" / "geojsons"), "--images": str(root / "data" / "images"),
            "--out": str(root / "masks")}


def test():
    import shutil
    from collections import Counter
    from pathlib import Path

    import numpy as np
    import pandas as pd
    import tifffile

    def key(name):  # case, spaces and hyphens do not make another class
        return " ".join(str(name).replace("-", " ").replace("_", " ").split()).casefold()

    args = get_args()
    out, images = Path(args.out), Path(args.images)
    truth = pd.read_csv(images.parent / "objects.csv", keep_default_na=False)
    organoids = truth[(truth["kind"] == "organoid") & (truth["class"] != "")]
    for image in sorted(images.iterdir()):
        stem = image.stem
        labels = tifffile.imread(out / f"{stem}.tif")
        table = pd.read_csv(out / f"{stem}_objects.csv")
        expected = organoids[organoids["image"] == image.name]
        assert labels.dtype == np.uint16 and labels.ndim == 2, (stem, labels.dtype, labels.shape)
        # one label per classified organoid annotation; spellings of a class are merged (the
        # first one found is kept, so compare spelling-insensitively)
        assert Counter(map(key, table["class"])) == Counter(map(key, expected["class"])), stem
        assert list(table["label"]) == list(range(1, len(expected) + 1)), stem
        ids, counts = np.unique(labels[labels > 0], return_counts=True)
        drawn = table[table["area_px"] > 0]
        assert list(ids) == list(drawn["label"]), f"{stem}: labels in the image and the table differ"
        assert list(counts) == list(drawn["area_px"]), f"{stem}: pixel counts differ from area_px"
        # rasterised areas agree with the polygon areas (pixel-centre rule), a few % for tiny objects
        rel = np.abs(drawn["area_px"] - drawn["polygon_area"]) / drawn["polygon_area"]
        assert float(np.median(rel)) < 0.1, f"{stem}: pixel areas far from polygon areas"
    assert (out / "classes.csv").is_file() and (out / "run.json").is_file()
    if out.parent.name.startswith("orgaseg-album-test-"):
        shutil.rmtree(out.parent, ignore_errors=True)


setup(
    group="orgaseg",
    name="annotations-to-masks",
    version="0.21.0",
    album_api_version="0.7.3",
    title="QuPath annotations to label images",
    description=(
        "Turns the organoid outlines drawn in QuPath (exported as one GeoJSON file per image) "
        "into instance label images: a 16-bit TIFF per image in which every organoid has its own "
        "number (0 = background), the training data StarDist needs. A table per image lists "
        "each object's class, area, bounding box and centre. Polygons with holes and "
        "multi-part objects are kept; overlapping objects keep the smaller one on top."
    ),
    solution_creators=["orgaseg developers"],
    cite=[
        {"text": "orgaseg developers. orgaseg: organoid segmentation and morphological "
                 "classification for brightfield microscopy, version 0.21.0 (the source "
                 "repository of this album catalog)."},
        {"text": "Bankhead P. et al. QuPath: Open source software for digital pathology image "
                 "analysis. Scientific Reports 7, 16878 (2017).",
         "doi": "10.1038/s41598-017-17204-5"},
        {"text": "Schmidt U., Weigert M., Broaddus C., Myers G. Cell Detection with Star-Convex "
                 "Polygons. MICCAI 2018.",
         "doi": "10.1007/978-3-030-00934-2_30"},
    ],
    tags=["organoids", "brightfield", "QuPath", "GeoJSON", "segmentation", "label image",
          "StarDist", "training data", "orgaseg"],
    license="MIT",
    documentation=["README.md"],
    covers=[],
    args=[
        {"name": "annotations", "type": "directory", "required": True,
         "description": "Folder with the GeoJSON files exported from QuPath, one per image and "
                        "named after it, e.g. 'plate1_A3.jpg.geojson' for 'plate1_A3.jpg' "
                        "(.geojson, .json, .geojson.gz or QuPath's .zip)."},
        {"name": "images", "type": "directory", "required": True,
         "description": "Folder with the annotated images (JPEG, TIFF or PNG). Only their size "
                        "in pixels is read; they are not changed."},
        {"name": "out", "type": "directory", "required": True,
         "description": "New or empty folder for the label images (<image name>.tif) and the "
                        "object tables (<image name>_objects.csv), e.g. 'masks'."},
        {"name": "keep_unclassified", "type": "boolean", "default": False,
         "description": "Also draw annotations that have no class in QuPath, as class "
                        "'Unclassified' (True/False). False leaves them out."},
        {"name": "class_map", "type": "file", "default": None,
         "description": "Optional file that renames or merges classes: a CSV with two "
                        "columns (alias, class), e.g. 'apoptotic,Burned out', or a JSON "
                        "object {\"alias\": \"class\"}. Leave empty to keep the class names."},
        {"name": "object_types", "type": "string", "default": "annotation",
         "description": "Which QuPath objects to draw, comma-separated: annotation, detection, "
                        "cell, tile, tmaCore, or all. 'detection,annotation' reads an analyze "
                        "result that was corrected in QuPath; the others are counted as skipped."},
        {"name": "plane", "type": "string", "default": "0,0",
         "description": "The z,t plane whose objects are drawn (0-based, e.g. '2,0' for the third "
                        "z-slice); objects of other planes are counted as skipped."},
        {"name": "overwrite", "type": "boolean", "default": False,
         "description": "Allow writing into an output folder that already holds files "
                        "(True/False); files of the same name are replaced. False protects "
                        "earlier results."},
    ],
    run=run,
    pre_test=pre_test,
    test=test,
    dependencies={"environment_file": "environment.yml"},
)
