"""album solution orgaseg:extract-objects -- one crop per organoid and a table of shape measurements.

A thin wrapper around ``orgaseg_core.steps.extract_objects`` (the same function as
``orgaseg extract-objects``). album reads this file before the solution's environment exists,
so ``orgaseg_core`` is imported only inside ``run``, ``pre_test`` and ``test``.
"""
from album.runner.api import get_args, setup


def run():
    from orgaseg_core import steps
    from orgaseg_core.album_support import run_step

    args = get_args()
    run_step(lambda: steps.extract_objects(
        args.images, args.masks, args.out, padding=args.padding, context=args.context,
        mask_background=args.mask_background, min_area=args.min_area,
        exclude_border=args.exclude_border, class_folders=args.class_folders,
        pixel_size=args.pixel_size, overwrite=args.overwrite))


def pre_test():
    import tempfile
    from pathlib import Path

    from orgaseg_core import steps

    root = Path(tempfile.mkdtemp(prefix="orgaseg-album-test-"))
    steps.demo_data(root / "data", n_images=2, seed=8, size=(240, 320))
    steps.annotations_to_masks(root / "data" / "geojsons", root / "data" / "images", root / "masks")
    # min_area drops the smallest objects, so the test also sees skipped.csv filled
    return {"--images": str(root / "data" / "images"), "--masks": str(root / "masks"),
            "--out": str(root / "objects"), "--padding": "5", "--min_area": "150"}


def test():
    import shutil
    from pathlib import Path

    import numpy as np
    import pandas as pd
    import tifffile
    from PIL import Image

    # the columns of objects.csv, as the README documents them
    object_table_columns = [
        "image", "stem", "label", "crop", "bbox_min_row", "bbox_min_col", "bbox_max_row",
        "bbox_max_col", "centroid_row", "centroid_col", "area_px", "perimeter",
        "equivalent_diameter", "circularity", "eccentricity", "solidity", "major_axis_length",
        "minor_axis_length", "orientation", "mean_intensity", "std_intensity",
        # the descriptors the measurement classifier reads (since 0.6.0)
        "background_intensity", "relative_mean_intensity", "relative_std_intensity",
        "relative_p10_intensity", "relative_p90_intensity", "relative_rim_intensity",
        "relative_core_intensity", "core_rim_ratio", "relative_gradient", "radius_cv",
        "n_concavities", "concavity_depth",
        "padding", "crop_min_row", "crop_min_col", "crop_max_row", "crop_max_col"]

    def read_image(path):
        if path.suffix.lower() in (".tif", ".tiff"):
            return tifffile.imread(path)
        with Image.open(path) as opened:
            return np.asarray(opened)

    args = get_args()
    images, masks, out = Path(args.images), Path(args.masks), Path(args.out)
    padding, context, min_area = int(args.padding), float(args.context), int(args.min_area)
    objects = pd.read_csv(out / "objects.csv")
    skipped = pd.read_csv(out / "skipped.csv")
    assert list(objects.columns) == object_table_columns, list(objects.columns)
    descriptors = objects[object_table_columns[21:-5]]
    assert np.isfinite(descriptors.to_numpy(dtype=float)).all(), "a descriptor is not a number"
    assert (objects["background_intensity"] > 0).all() and (objects["n_concavities"] >= 0).all()
    assert len(skipped) > 0 and set(skipped["reason"]) == {"smaller than min_area"}
    assert (skipped["area_px"] < min_area).all() and (objects["area_px"] >= min_area).all()
    for image_path in sorted(images.iterdir()):
        stem = image_path.name.split(".")[0]
        labels = tifffile.imread(masks / f"{stem}.tif")
        image = read_image(image_path)
        ids, counts = np.unique(labels[labels > 0], return_counts=True)
        rows = objects[objects["stem"] == stem]
        # every object is either cropped or listed as skipped, with its pixel count
        assert sorted(rows["label"].tolist() + skipped.loc[skipped["stem"] == stem, "label"].tolist()) \
            == ids.tolist(), stem
        assert (rows["image"] == image_path.name).all()
        area = dict(zip(ids.tolist(), counts.tolist()))
        for row in rows.itertuples():
            assert row.crop == f"crops/{stem}_{row.label}.tif"
            assert row.area_px == area[row.label]
            # the box grown by the padding plus the context times its longer side, clipped
            grow = padding + round(context * max(row.bbox_max_row - row.bbox_min_row,
                                                 row.bbox_max_col - row.bbox_min_col))
            assert row.crop_min_row == max(row.bbox_min_row - grow, 0)
            assert row.crop_max_col == min(row.bbox_max_col + grow, labels.shape[1])
            crop = tifffile.imread(out / row.crop)
            window = image[row.crop_min_row:row.crop_max_row, row.crop_min_col:row.crop_max_col]
            assert crop.dtype == image.dtype and np.array_equal(crop, window), row.crop
    crops = sorted(p.name for p in (out / "crops").iterdir())
    assert crops == sorted(Path(c).name for c in objects["crop"])
    assert (out / "run.json").is_file()
    if out.parent.name.startswith("orgaseg-album-test-"):
        shutil.rmtree(out.parent, ignore_errors=True)


setup(
    group="orgaseg",
    name="extract-objects",
    version="0.21.0",
    album_api_version="0.7.3",
    title="Cut out and measure every organoid",
    description=(
        "Cuts one small image (crop) per organoid out of each image, using the label image "
        "(mask) of the same name from orgaseg:segment or orgaseg:annotations-to-masks, and "
        "measures every organoid: area, perimeter, circularity, eccentricity, solidity, axis "
        "lengths, orientation and mean intensity, in pixels and, where the pixel size is known "
        "(from the image file or given), in µm and µm². The crops are what "
        "orgaseg:classify sorts into morphological classes; the table (objects.csv) is ready "
        "for statistics."
    ),
    solution_creators=["orgaseg developers"],
    cite=[
        {"text": "orgaseg developers. orgaseg: organoid segmentation and morphological "
                 "classification for brightfield microscopy, version 0.21.0 (the source "
                 "repository of this album catalog)."},
    ],
    tags=["organoids", "brightfield", "crops", "measurements", "morphology", "orgaseg"],
    license="MIT",
    documentation=["README.md"],
    covers=[],
    args=[
        {"name": "images", "type": "directory", "required": True,
         "description": "Folder of images (TIFF, JPEG, PNG; grey, RGB or 16-bit) to cut the "
                        "organoids out of. Not changed."},
        {"name": "masks", "type": "directory", "required": True,
         "description": "Folder of label images (masks), one per image with the same name, e.g. "
                        "the <image>.tif files written by orgaseg:segment. Not changed."},
        {"name": "out", "type": "directory", "required": True,
         "description": "New or empty folder for crops/<image>_<label>.tif, objects.csv (one "
                        "row of measurements per organoid) and skipped.csv."},
        {"name": "padding", "type": "integer", "default": 10,
         "description": "Pixels of surrounding image added on every side of each organoid's "
                        "bounding box (0 or more), e.g. 10."},
        {"name": "context", "type": "float", "default": 0.25,
         "description": "And this fraction of the box's longer side on every side (0-2): a crop "
                        "around an outline that misses an organoid's thin branches still shows "
                        "them, as orgaseg:train-classifier cuts its training crops (0: the box "
                        "and padding only, as up to 0.8.0)."},
        {"name": "mask_background", "type": "boolean", "default": False,
         "description": "Replace everything in a crop that is not the organoid itself "
                        "(background, neighbours) by the image's background grey (True/False)."},
        {"name": "min_area", "type": "integer", "default": 0,
         "description": "Skip objects smaller than this many pixels (0 keeps all), e.g. 100 to "
                        "drop debris; skipped objects are listed in skipped.csv."},
        {"name": "exclude_border", "type": "boolean", "default": False,
         "description": "Skip organoids that touch the image border, whose shape is cut off "
                        "(True/False); they are listed in skipped.csv."},
        {"name": "class_folders", "type": "boolean", "default": False,
         "description": "Sort the crops into crops/<class>/ using the class tables "
                        "(<image>_objects.csv) that annotations-to-masks wrote beside the masks "
                        "(True/False): classifier training data from images and QuPath GeoJSON "
                        "alone, without QuPath's crop export."},
        {"name": "pixel_size", "type": "string", "default": "auto",
         "description": "Micrometres per pixel of the images, e.g. 0.65; 'auto' reads it from "
                        "each image file (OME-XML, ImageJ metadata or TIFF resolution tags; JPEG "
                        "and PNG carry none). Adds µm and µm² columns where it is known; a value "
                        "that differs from a file's is reported and wins."},
        {"name": "overwrite", "type": "boolean", "default": False,
         "description": "Allow writing into an output folder that already holds files "
                        "(True/False); files of the same name are replaced."},
    ],
    run=run,
    pre_test=pre_test,
    test=test,
    dependencies={"environment_file": "environment.yml"},
)
