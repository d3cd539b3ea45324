"""album solution orgaseg:demo-data -- synthetic organoid images laid out like a QuPath export.

A thin wrapper around ``orgaseg_core.steps.demo_data`` (the same function as
``orgaseg demo-data``). album reads this file before the solution's environment exists, so
``orgaseg_core`` is imported only inside ``run``, ``pre_test`` and ``test``.
"""
from album.runner.api import get_args, setup


def run():
    from orgaseg_core import steps
    from orgaseg_core.album_support import run_step

    args = get_args()
    run_step(lambda: steps.demo_data(args.out, n_images=args.n_images, seed=args.seed,
                                     size=args.size, style=args.style, overwrite=args.overwrite))


def pre_test():
    import tempfile
    from pathlib import Path

    root = Path(tempfile.mkdtemp(prefix="orgaseg-album-test-"))
    return {"--out": str(root / "demo"), "--n_images": "3", "--seed": "5", "--size": "200x300"}


def test():
    import json
    import shutil
    from pathlib import Path

    import pandas as pd
    from PIL import Image

    args = get_args()
    out = Path(args.out)
    images = sorted((out / "images").iterdir())
    assert len(images) == args.n_images == 3, [p.name for p in images]
    objects = pd.read_csv(out / "objects.csv", keep_default_na=False)
    for image in images:
        with Image.open(image) as opened:
            assert opened.size == (300, 200), f"{image.name} has the wrong size"  # (width, height)
        geojson = json.loads((out / "geojsons" / f"{image.name}.geojson").read_text())
        rows = objects[objects["image"] == image.name]
        assert len(geojson["features"]) == len(rows) > 0, f"{image.name}: annotations and table disagree"
        for feature in geojson["features"]:
            assert feature["properties"].get("objectType", "annotation") == "annotation"
    crops = sorted(p.name for p in (out / "crops").iterdir())
    assert crops == sorted(c for c in objects["crop"] if c), "crops and objects.csv disagree"
    classified = objects[(objects["kind"] == "organoid") & (objects["class"] != "")]
    assert set(classified["class"]) <= {"Cyst", "Filled in", "Early branching", "Branched", "Burned out"}
    assert len(set(classified["class"])) >= 3, "the demo images should show several classes"
    record = json.loads((out / "run.json").read_text())
    assert record["step"] == "demo-data" and record["status"] == "ok"
    if out.parent.name.startswith("orgaseg-album-test-"):
        shutil.rmtree(out.parent, ignore_errors=True)


setup(
    group="orgaseg",
    name="demo-data",
    version="0.21.0",
    album_api_version="0.7.3",
    title="Example organoid images (QuPath export layout)",
    description=(
        "Generates synthetic brightfield images of organoids of five classes (Cyst, Filled in, "
        "Early branching, Branched, Burned out) together with what a QuPath project export "
        "holds: one GeoJSON file of annotations per image, one cropped TIFF per annotated "
        "organoid, and a table of every object. Use it to try the other orgaseg steps before "
        "you have your own data; the same seed always gives the same files."
    ),
    solution_creators=["orgaseg developers"],
    cite=[
        {"text": "orgaseg developers. orgaseg: organoid segmentation and morphological "
                 "classification for brightfield microscopy, version 0.21.0 (the source "
                 "repository of this album catalog)."},
        {"text": "Bankhead P. et al. QuPath: Open source software for digital pathology image "
                 "analysis. Scientific Reports 7, 16878 (2017).",
         "doi": "10.1038/s41598-017-17204-5"},
    ],
    tags=["organoids", "brightfield", "QuPath", "example data", "synthetic", "orgaseg"],
    license="MIT",
    documentation=["README.md"],
    covers=[],
    args=[
        {"name": "out", "type": "directory", "required": True,
         "description": "New or empty folder for the example data, e.g. 'demo-data'. It gets "
                        "images/, geojsons/, crops/, objects.csv and run.json."},
        {"name": "n_images", "type": "integer", "default": 8,
         "description": "How many images to generate (a whole number, 1 or more), e.g. 8. "
                        "Each image holds about 20 organoids."},
        {"name": "seed", "type": "integer", "default": 0,
         "description": "Random seed (a whole number, 0 or more). The same seed gives the same "
                        "images; change it to get different ones."},
        {"name": "size", "type": "string", "default": "760x1008",
         "description": "Image size as HEIGHTxWIDTH in pixels, e.g. 760x1008 (at least "
                        "128x128). Organoid sizes scale with the image."},
        {"name": "style", "type": "string", "default": "default",
         "description": "Image style of the synthetic data: 'default' (clearly different "
                        "classes, vignetted field) or 'faint' (bright low-contrast cysts, paler "
                        "and smaller organoids, flat field, more noise)."},
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
