"""album solution orgaseg:split -- seeded, stratified, leakage-free train/val/test split.

A thin wrapper around ``orgaseg_core.steps.split`` (the same function as
``orgaseg split``). album reads this file before the solution's environment exists, so
``orgaseg_core`` is imported only inside ``run``, ``pre_test`` and ``test``.
"""
from album.runner.api import get_args, setup


def run():
    from orgaseg_core import steps
    from orgaseg_core.album_support import run_step

    args = get_args()
    run_step(lambda: steps.split(args.data, args.out, mode=args.mode, train=args.train, val=args.val,
                                 test=args.test, seed=args.seed, groups=args.groups,
                                 overwrite=args.overwrite))


def pre_test():
    import tempfile
    from pathlib import Path

    from orgaseg_core import steps

    root = Path(tempfile.mkdtemp(prefix="orgaseg-album-test-"))
    steps.demo_data(root / "data", n_images=4, seed=4, size=(200, 240))
    steps.annotations_to_masks(root / "data" / "geojsons", root / "data" / "images", root / "masks")
    steps.preprocess(root / "data" / "images", root / "tiles", masks=root / "masks", tiles=(2, 2))
    return {"--data": str(root / "tiles"), "--out": str(root / "split"), "--mode": "segmentation",
            "--train": "0.5", "--val": "0.25", "--test": "0.25", "--seed": "7"}


def test():
    import shutil
    from pathlib import Path

    import pandas as pd

    args = get_args()
    data, out = Path(args.data), Path(args.out)
    table = pd.read_csv(out / "split.csv")
    tiles = sorted(p.name for p in (data / "images").iterdir())
    assert sorted(table["file"]) == [f"images/{t}" for t in tiles], "split.csv must list every tile once"
    assert list(table["mask"]) == [f.replace("images/", "masks/", 1) for f in table["file"]]
    # no leakage: the four tiles of one source image are all in the same split
    assert table.groupby("group")["split"].nunique().max() == 1, "a source image spans two splits"
    groups = table.drop_duplicates("group")["split"].value_counts().to_dict()
    assert groups == {"train": 2, "val": 1, "test": 1}, groups
    for split in ("train", "val", "test"):
        names = sorted(p.name for p in (out / split / "images").iterdir())
        assert names == sorted(p.name for p in (out / split / "masks").iterdir()), split
        assert len(names) == 4 * groups[split]
        for name in names:
            assert (out / split / "masks" / name).read_bytes() == (data / "masks" / name).read_bytes()
    assert (out / "run.json").is_file()
    if out.parent.name.startswith("orgaseg-album-test-"):
        shutil.rmtree(out.parent, ignore_errors=True)


setup(
    group="orgaseg",
    name="split",
    version="0.21.0",
    album_api_version="0.7.3",
    title="Split data into training, validation and test sets",
    description=(
        "Divides prepared data into train/, val/ and test/ folders by the fractions you give, "
        "with a random seed so the split can be repeated. All tiles or crops that come from one "
        "source image go into the same set, so the test set never contains parts of a training "
        "image. Segmentation data (images/ + masks/) keeps images and label images together "
        "(the StarDist layout); classification data (one folder per class) is split class by "
        "class (the torchvision ImageFolder layout). split.csv records where each file went."
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
    tags=["organoids", "training data", "train/validation/test split", "StarDist",
          "classification", "orgaseg"],
    license="MIT",
    documentation=["README.md"],
    covers=[],
    args=[
        {"name": "data", "type": "directory", "required": True,
         "description": "Folder to split: for 'segmentation' it holds images/ and masks/ (e.g. "
                        "the output of preprocess); for 'classification' one sub-folder per "
                        "class (e.g. the output of sort-crops). Not changed."},
        {"name": "out", "type": "directory", "required": True,
         "description": "New or empty folder for train/, val/, test/ and split.csv, e.g. "
                        "'split-segmentation'."},
        {"name": "mode", "type": "string", "required": True,
         "description": "What the data is for: 'segmentation' (images/ + masks/ pairs) or "
                        "'classification' (one folder per class)."},
        {"name": "train", "type": "float", "default": 0.7,
         "description": "Fraction of the files for training, between 0 and 1, e.g. 0.7. "
                        "train + val + test must add up to 1."},
        {"name": "val", "type": "float", "default": 0.15,
         "description": "Fraction of the files for validation (checked during training), "
                        "between 0 and 1, e.g. 0.15."},
        {"name": "test", "type": "float", "default": 0.15,
         "description": "Fraction of the files kept aside for the final test, between 0 and 1, "
                        "e.g. 0.15."},
        {"name": "seed", "type": "integer", "default": 0,
         "description": "Random seed (a whole number). The same seed and data give the same "
                        "split."},
        {"name": "groups", "type": "string", "default": "images",
         "description": "What stays together: 'images' (all tiles of one source image in one "
                        "set, so no set sees pixels of another's images) or 'tiles' "
                        "(segmentation only: the tiles of every image shared out over the sets, "
                        "for a few large images that each show other organoids, so that "
                        "validation sees all of them; its figures are then optimistic)."},
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
