"""album solution orgaseg:evaluate-segmentation -- how good is a segmentation?

A thin wrapper around ``orgaseg_core.steps.evaluate_segmentation`` (the same function as
``orgaseg evaluate-segmentation``). album reads this file before the solution's environment
exists, so ``orgaseg_core`` is imported only inside ``run``, ``pre_test`` and ``test``.
"""
from album.runner.api import get_args, setup


def run():
    from orgaseg_core import steps
    from orgaseg_core.album_support import run_step

    args = get_args()
    run_step(lambda: steps.evaluate_segmentation(args.truth, args.pred, args.out, images=args.images,
                                                 overwrite=args.overwrite))


def pre_test():
    import tempfile
    from pathlib import Path

    import numpy as np
    import tifffile
    from orgaseg_core import steps

    root = Path(tempfile.mkdtemp(prefix="orgaseg-album-test-"))
    steps.demo_data(root / "data", n_images=2, seed=4, size=(240, 320))
    steps.annotations_to_masks(root / "data" / "geojsons", root / "data" / "images", root / "truth")
    # The "prediction" is the truth with the largest object of each image missing: a known answer.
    (root / "pred").mkdir()
    for truth in sorted((root / "truth").glob("*.tif")):
        labels = tifffile.imread(truth)
        ids, counts = np.unique(labels[labels > 0], return_counts=True)
        labels[labels == ids[np.argmax(counts)]] = 0
        tifffile.imwrite(root / "pred" / truth.name, labels)
    return {"--truth": str(root / "truth"), "--pred": str(root / "pred"), "--out": str(root / "evaluation"),
            "--images": str(root / "data" / "images")}


def test():
    import json
    import shutil
    from pathlib import Path

    import numpy as np
    import pandas as pd
    import tifffile
    from PIL import Image

    args = get_args()
    truth, out = Path(args.truth), Path(args.out)
    stems = sorted(p.stem for p in truth.glob("*.tif"))
    n_true = sum(len(np.unique(tifffile.imread(truth / f"{s}.tif"))) - 1 for s in stems)
    metrics = pd.read_csv(out / "metrics.csv").set_index("threshold")
    # one object missing per image, every other object identical: exact counts at every threshold
    for threshold in (0.5, 0.7, 0.9):
        row = metrics.loc[threshold]
        assert (row.tp, row.fn, row.fp) == (n_true - len(stems), len(stems), 0), row
        assert row.precision == 1.0 and abs(row.recall - (n_true - len(stems)) / n_true) < 1e-9
    per_image = pd.read_csv(out / "metrics_per_image.csv")
    assert sorted(per_image["image"].unique()) == stems
    summary = json.loads((out / "summary.json").read_text())
    assert summary and (out / "run.json").is_file()
    # every matched organoid is identical to its annotation: measured / true is 1 for each
    shapes = pd.read_csv(out / "shapes.csv")
    assert len(shapes) == n_true - len(stems), len(shapes)
    assert (shapes["pred_perimeter"] == shapes["true_perimeter"]).all()
    assert summary["shapes"]["area_px"]["median_ratio"] == 1.0
    with Image.open(out / "ap_vs_iou.png") as plot:
        assert plot.size[0] > 100
    for stem in stems:
        with Image.open(out / "overlays" / f"{stem}.png") as overlay:
            assert overlay.size[:2] in ((320, 240), (240, 320)) or overlay.size[0] >= 320
    if truth.parent.name.startswith("orgaseg-album-test-"):
        shutil.rmtree(truth.parent, ignore_errors=True)


setup(
    group="orgaseg",
    name="evaluate-segmentation",
    version="0.21.0",
    album_api_version="0.7.3",
    title="Evaluate a segmentation against annotations",
    description=(
        "Compares predicted label images (e.g. from orgaseg:segment) with annotated ones (e.g. "
        "from orgaseg:annotations-to-masks), matched by file name: precision, recall, F1 and "
        "average precision at IoU thresholds 0.5 to 0.9, mean IoU of matched organoids, and how "
        "many organoids were merged or split, and how the matched organoids' measurements (area, "
        "perimeter, circularity, solidity) compare with the annotated ones. Writes tables, a "
        "plot of AP against the IoU threshold, and one overlay picture per image (annotation "
        "outlines green, prediction outlines magenta)."
    ),
    solution_creators=["orgaseg developers"],
    cite=[
        {"text": "orgaseg developers. orgaseg: organoid segmentation and morphological "
                 "classification for brightfield microscopy, version 0.21.0 (the source "
                 "repository of this album catalog)."},
        {"text": "Schmidt U., Weigert M., Broaddus C., Myers G. Cell Detection with Star-convex "
                 "Polygons. MICCAI 2018 (matching and average precision as in StarDist).",
         "doi": "10.1007/978-3-030-00934-2_30"},
    ],
    tags=["organoids", "brightfield", "segmentation", "evaluation", "StarDist", "orgaseg"],
    license="MIT",
    documentation=["README.md"],
    covers=[],
    args=[
        {"name": "truth", "type": "directory", "required": True,
         "description": "Folder with the annotated (true) label images, one TIFF per image, "
                        "e.g. the output of annotations-to-masks."},
        {"name": "pred", "type": "directory", "required": True,
         "description": "Folder with the predicted label images with the same file names, "
                        "e.g. the output of segment."},
        {"name": "out", "type": "directory", "required": True,
         "description": "New or empty folder for metrics.csv, metrics_per_image.csv, "
                        "shapes.csv, summary.json, ap_vs_iou.png and overlays/."},
        {"name": "images", "type": "directory", "default": None,
         "description": "Optional folder with the original images (same names), drawn under "
                        "the outlines in the overlay pictures. Leave empty for outlines on black."},
        {"name": "overwrite", "type": "boolean", "default": False,
         "description": "Allow writing into an output folder that already holds files "
                        "(True/False); files of the same name are replaced."},
    ],
    run=run,
    pre_test=pre_test,
    test=test,
    dependencies={"environment_file": "environment.yml"},
)
