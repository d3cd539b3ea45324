"""album solution orgaseg:preprocess -- grey, clean up, tile and rescale images (and label images).

A thin wrapper around ``orgaseg_core.steps.preprocess`` (the same function as
``orgaseg preprocess``). album reads this file before the solution's environment exists, so
``orgaseg_core`` is imported only inside ``run``, ``pre_test`` and ``test``.
"""
from album.runner.api import get_args, setup


def run():
    from orgaseg_core import steps
    from orgaseg_core.album_support import run_step

    args = get_args()
    run_step(lambda: steps.preprocess(args.images, args.out, masks=args.masks, scale=args.scale,
                                      tiles=args.tiles, remove_vignette=args.remove_vignette,
                                      flatten_background=args.flatten_background,
                                      overwrite=args.overwrite))


def pre_test():
    import tempfile
    from pathlib import Path

    from orgaseg_core import steps

    root = Path(tempfile.mkdtemp(prefix="orgaseg-album-test-"))
    steps.demo_data(root / "data", n_images=2, seed=3, size=(240, 320))
    steps.annotations_to_masks(root / "data" / "geojsons", root / "data" / "images", root / "masks")
    return {"--images": str(root / "data" / "images"), "--masks": str(root / "masks"),
            "--out": str(root / "preprocessed"), "--tiles": "2x2", "--scale": "0.5",
            "--remove_vignette": "True"}


def test():
    import shutil
    from pathlib import Path

    import numpy as np
    import pandas as pd
    import tifffile

    args = get_args()
    out, masks = Path(args.out), Path(args.masks)
    assert (args.tiles, args.scale, args.remove_vignette) == ("2x2", 0.5, True), "pre_test arguments lost"
    sources = sorted(p.stem for p in Path(args.images).iterdir())
    expected = sorted(f"{s}_r{r}c{c}.tif" for s in sources for r in (0, 1) for c in (0, 1))
    assert sorted(p.name for p in (out / "images").iterdir()) == expected
    assert sorted(p.name for p in (out / "masks").iterdir()) == expected
    tiles = pd.read_csv(out / "tiles.csv", dtype={"vanished_objects": str}, keep_default_na=False)
    assert sorted(tiles["file"]) == expected
    for stem in sources:
        full = tifffile.imread(masks / f"{stem}.tif")
        for row in tiles[tiles["group"] == stem].itertuples():
            image = tifffile.imread(out / "images" / row.file)
            mask = tifffile.imread(out / "masks" / row.file)
            # a quarter of the 240x320 image at half size: 60x80 pixels, grey, image and mask alike
            assert image.shape == mask.shape == (60, 80), (row.file, image.shape, mask.shape)
            assert mask.dtype == np.uint16 and image.ndim == 2
            # labels are renumbered 1..n per tile; n is the number of objects in the tile
            ids = np.unique(mask[mask > 0])
            assert list(ids) == list(range(1, len(ids) + 1)) and len(ids) == row.n_objects
            source_ids = np.unique(full[row.y0:row.y1, row.x0:row.x1])
            # objects too small for the new scale are listed, never dropped silently
            vanished = len(row.vanished_objects.split())
            assert len(ids) + vanished == np.count_nonzero(source_ids), row.file
    if out.parent.name.startswith("orgaseg-album-test-"):
        shutil.rmtree(out.parent, ignore_errors=True)


setup(
    group="orgaseg",
    name="preprocess",
    version="0.21.0",
    album_api_version="0.7.3",
    title="Prepare images for training (grey, clean up, tile, resize)",
    description=(
        "Prepares brightfield images, and their label images if you have them, for training "
        "or prediction: converts to grey, optionally replaces the dark microscope vignette with "
        "the background level and evens out uneven illumination, cuts each image into tiles "
        "and resizes them. Images and label images are matched by file name and processed "
        "alike, so every tile keeps its objects (renumbered 1, 2, 3 ... per tile)."
    ),
    solution_creators=["orgaseg developers"],
    cite=[
        {"text": "orgaseg developers. orgaseg: organoid segmentation and morphological "
                 "classification for brightfield microscopy, version 0.21.0 (the source "
                 "repository of this album catalog)."},
        {"text": "Schmidt U., Weigert M., Broaddus C., Myers G. Cell Detection with Star-Convex "
                 "Polygons. MICCAI 2018.",
         "doi": "10.1007/978-3-030-00934-2_30"},
    ],
    tags=["organoids", "brightfield", "preprocessing", "tiling", "vignette", "StarDist",
          "training data", "orgaseg"],
    license="MIT",
    documentation=["README.md"],
    covers=[],
    args=[
        {"name": "images", "type": "directory", "required": True,
         "description": "Folder with the images (JPEG, TIFF or PNG; grey, colour or 16-bit). "
                        "They are not changed."},
        {"name": "out", "type": "directory", "required": True,
         "description": "New or empty folder for the results, e.g. 'preprocessed'. It gets "
                        "images/, masks/ (with label images), tiles.csv and run.json."},
        {"name": "masks", "type": "directory", "default": None,
         "description": "Optional folder with label images of the same names as the images "
                        "(e.g. from annotations-to-masks). They are tiled and resized with "
                        "their images. Leave empty to process images only."},
        {"name": "scale", "type": "float", "default": 1.0,
         "description": "Resize factor applied after tiling, a positive number: 1.0 keeps "
                        "the size, 0.25 makes each side a quarter as long (a 4032x3040 image "
                        "cut into 2x2 tiles gives 504x380-pixel tiles)."},
        {"name": "tiles", "type": "string", "default": "1x1",
         "description": "Cut each image into ROWSxCOLUMNS tiles, e.g. 2x2 for four quarters; "
                        "1x1 keeps whole images."},
        {"name": "remove_vignette", "type": "boolean", "default": False,
         "description": "Replace the dark round border (vignette) of the microscope image "
                        "with the background grey level (True/False)."},
        {"name": "flatten_background", "type": "boolean", "default": False,
         "description": "Even out uneven illumination (brighter centre, darker corners) so the "
                        "background has one grey level (True/False)."},
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
