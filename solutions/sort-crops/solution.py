"""album solution orgaseg:sort-crops -- QuPath per-object crops into one folder per class.

A thin wrapper around ``orgaseg_core.steps.sort_crops`` (the same function as
``orgaseg sort-crops``). album reads this file before the solution's environment exists, so
``orgaseg_core`` is imported only inside ``run``, ``pre_test`` and ``test``.
"""
from album.runner.api import get_args, setup


def run():
    from orgaseg_core import steps
    from orgaseg_core.album_support import run_step

    args = get_args()
    run_step(lambda: steps.sort_crops(args.crops, args.out, move=args.move, class_map=args.class_map,
                                      overwrite=args.overwrite))


def pre_test():
    import tempfile
    from pathlib import Path

    from orgaseg_core import steps

    root = Path(tempfile.mkdtemp(prefix="orgaseg-album-test-"))
    steps.demo_data(root / "data", n_images=2, seed=1, size=(240, 320))
    return {"--crops": str(root / "data" / "crops"), "--out": str(root / "sorted-crops")}


def test():
    import shutil
    from pathlib import Path

    import pandas as pd

    args = get_args()
    crops, out = Path(args.crops), Path(args.out)
    inputs = sorted(p.name for p in crops.iterdir() if p.is_file())
    truth = pd.read_csv(crops.parent / "objects.csv", keep_default_na=False)
    truth = truth[truth["crop"] != ""]
    assert sorted(truth["crop"]) == inputs, "sort-crops changed the crops folder"
    def key(name):  # spellings of a class are merged; the first one found names the folder
        return " ".join(str(name).replace("-", " ").replace("_", " ").split()).casefold()

    copied = {p.name: p.parent.name for p in out.glob("*/*") if p.is_file()}
    skipped = set(pd.read_csv(out / "skipped.csv")["file"])
    for crop, cls in zip(truth["crop"], truth["class"]):
        if cls:  # classified organoid: its crop is in the folder of its class
            folder = copied.get(crop)
            assert folder is not None and key(folder) == key(cls), f"{crop} is in {folder!r}, expected {cls!r}"
            assert (out / folder / crop).read_bytes() == (crops / crop).read_bytes()
        else:
            assert crop in skipped, f"{crop} (no class) was not skipped"
    assert len(copied) + len(skipped) == len(inputs)
    # one folder per class of the annotations
    assert sorted({key(c) for c in truth["class"] if c}) == sorted(
        key(p.name) for p in out.iterdir() if p.is_dir())
    assert (out / "run.json").is_file()
    if crops.parent.parent.name.startswith("orgaseg-album-test-"):
        shutil.rmtree(crops.parent.parent, ignore_errors=True)


setup(
    group="orgaseg",
    name="sort-crops",
    version="0.21.0",
    album_api_version="0.7.3",
    title="Sort QuPath crops by class",
    description=(
        "Sorts the per-object image crops that QuPath exports (file names like "
        "'plate1_A3.jpgAnnotation (Cyst)_4.tif') into one folder per class, e.g. Cyst/, "
        "Filled in/, Branched/, ready for training an organoid classifier. Spelling variants of "
        "a class ('Filled-in', 'filled in') end up in one folder. The crops are copied unless "
        "you ask to move them; crops without a class are listed in skipped.csv."
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
    tags=["organoids", "brightfield", "QuPath", "classification", "training data", "orgaseg"],
    license="MIT",
    documentation=["README.md"],
    covers=[],
    args=[
        {"name": "crops", "type": "directory", "required": True,
         "description": "Folder with the crops exported from QuPath, one TIFF per annotated "
                        "organoid, the class in parentheses in the file name, e.g. "
                        "'plate1_A3.jpgAnnotation (Cyst)_4.tif'. Left unchanged unless you "
                        "choose 'move'."},
        {"name": "out", "type": "directory", "required": True,
         "description": "New or empty folder to create the class folders in, e.g. "
                        "'sorted-crops'. Must not be inside the crops folder."},
        {"name": "move", "type": "boolean", "default": False,
         "description": "Move the crops instead of copying them (True/False). Moving empties "
                        "the crops folder; leave it False to keep your export as it is."},
        {"name": "class_map", "type": "file", "default": None,
         "description": "Optional file that renames or merges classes: a CSV with two "
                        "columns (alias, class), e.g. 'apoptotic,Burned out', or a JSON "
                        "object {\"alias\": \"class\"}. Leave empty to keep the class names."},
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
