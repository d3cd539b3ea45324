"""Classifier quality where it matters: on the organoids ``analyze`` finds in new images.

For each demo-data style (``default`` and ``faint``, or ``--styles``):

1. ``demo-data``: ``--n-train`` training images (seed 0) and ``--n-new`` new images (seed
   1000) of the style, with their QuPath annotations; ``annotations-to-masks`` of both;
2. a segmentation model: ``train-segmentation --backend forest`` (the pixel forest: minutes on
   CPU) on the training images (grey, whole images, split by ``split``);
3. ``train-classifier --images --masks`` on the training images with its defaults (every
   candidate family; the one chosen on validation is kept), and a measurement forest without
   the outline variants for comparison;
4. ``analyze`` of the new images, then ``classify --family F`` of its objects with every trained
   candidate; the class of every organoid found compared with the class of the annotation it
   matches (IoU >= 0.5): macro-F1 and accuracy.

Prints per style and family: whether it was chosen, its validation macro-F1 (annotated
outlines), the chosen one's test macro-F1, the macro-F1 on the analysed organoids of the new
images (segmented outlines), the expected calibration error there, the share flagged for
review and the training time. Every step runs as ``orgaseg`` in its own process (TensorFlow
and torch never share one); data and models are kept in ``--work`` and reused.

    python benchmarks/bench_classifier_styles.py --work /tmp/bench-cls
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

STYLES = ("default", "faint")
NEW_IMAGES_SEED = 1000


def run_step(step: str, *options) -> float:
    """``orgaseg STEP OPTIONS`` in its own process; returns its wall time in seconds."""
    from orgaseg_core.pipelines.processes import run_step_process

    start = time.perf_counter()
    ended = run_step_process(step, [str(o) for o in options])
    if ended.returncode != 0:
        raise SystemExit(f"orgaseg {step} failed (exit status {ended.returncode}): {ended.message}")
    return time.perf_counter() - start


def prepare(work: Path, style: str, n_train: int, n_new: int) -> dict[str, Path]:
    """Data, masks, segmentation split and the forest segmentation model of one style (reused)."""
    root = work / style
    paths = {"train": root / "train", "train_masks": root / "train-masks", "new": root / "new",
             "new_masks": root / "new-masks", "pre": root / "preprocessed", "split": root / "split-seg",
             "seg_model": root / "seg-forest"}
    if not paths["train_masks"].exists():
        run_step("demo-data", "--out", paths["train"], "--n-images", n_train, "--seed", 0, "--style", style)
        run_step("annotations-to-masks", "--annotations", paths["train"] / "geojsons", "--images",
                 paths["train"] / "images", "--out", paths["train_masks"])
    if not paths["new_masks"].exists():
        run_step("demo-data", "--out", paths["new"], "--n-images", n_new, "--seed", NEW_IMAGES_SEED,
                 "--style", style)
        run_step("annotations-to-masks", "--annotations", paths["new"] / "geojsons", "--images",
                 paths["new"] / "images", "--out", paths["new_masks"])
    if not (paths["seg_model"] / "orgaseg_model.json").exists():
        run_step("preprocess", "--images", paths["train"] / "images", "--masks", paths["train_masks"],
                 "--out", paths["pre"], "--overwrite")
        run_step("split", "--data", paths["pre"], "--out", paths["split"], "--mode", "segmentation",
                 "--overwrite")
        run_step("train-segmentation", "--data", paths["split"], "--model-out", paths["seg_model"],
                 "--backend", "forest", "--seed", 0, "--overwrite")
    return paths


def agreement(paths: dict[str, Path], segmentation: Path, predictions: Path, out_csv: Path) -> dict:
    """Class of every found organoid against its matched annotation (IoU >= 0.5): macro-F1,
    accuracy, expected calibration error, share flagged for review."""
    import numpy as np
    import pandas as pd

    from orgaseg_core.classification.calibration import reliability
    from orgaseg_core.pipelines.example import class_agreement

    figures = class_agreement(paths["new_masks"], segmentation, predictions, out_csv)
    objects = pd.read_csv(predictions, dtype={"stem": str})
    matched = pd.read_csv(out_csv, dtype={"stem": str}).merge(
        objects, left_on=["stem", "pred_label"], right_on=["stem", "label"], how="left",
        suffixes=("", "_prediction"))
    names = sorted({c[len("prob_"):] for c in objects.columns if c.startswith("prob_")})
    index = {n: i for i, n in enumerate(names)}
    known = matched["true_class"].isin(index)
    probabilities = matched.loc[known, [f"prob_{n}" for n in names]].to_numpy(dtype=np.float64)
    truth = matched.loc[known, "true_class"].map(index).to_numpy()
    figures["ece"] = reliability(probabilities, truth)["ece"] if len(truth) else float("nan")
    figures["review"] = float(objects["needs_review"].astype(str).eq("True").mean()) if len(objects) else 0.0
    figures["found"] = int(len(objects))
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for data and models (reused)")
    parser.add_argument("--styles", default=",".join(STYLES), help="demo-data styles, comma-separated")
    parser.add_argument("--n-train", type=int, default=30, help="training images per style")
    parser.add_argument("--n-new", type=int, default=8, help="new images per style")
    parser.add_argument("--epochs", type=int, default=None, help="CNN epochs (default: train-classifier's)")
    args = parser.parse_args(argv)

    rows = []
    for style in [s.strip() for s in args.styles.split(",") if s.strip()]:
        paths = prepare(args.work, style, args.n_train, args.n_new)
        model = args.work / style / "classifier"
        options = ["--images", paths["train"] / "images", "--masks", paths["train_masks"],
                   "--model-out", model, "--seed", 0, "--overwrite"]
        if args.epochs:
            options += ["--epochs", args.epochs]
        seconds = run_step("train-classifier", *options)
        # The same measurement forest without the outline variants, for comparison.
        plain = args.work / style / "classifier-no-outline-augmentation"
        plain_seconds = run_step("train-classifier", "--images", paths["train"] / "images", "--masks",
                                 paths["train_masks"], "--model-out", plain, "--families", "measurements",
                                 "--no-outline-augmentation", "--seed", 0, "--overwrite")
        report = json.loads((model / "report.json").read_text())
        description = json.loads((model / "classifier.json").read_text())
        analysis = args.work / style / "analysis"
        run_step("analyze", "--segmentation-model", paths["seg_model"], "--classifier", model, "--images",
                 paths["new"] / "images", "--out", analysis, "--overwrite")
        runs = [(f, model, f) for f in description["candidates"]]
        runs.append(("measurements, no outline augmentation", plain, None))
        for name, folder, family in runs:
            out = analysis / f"classify-{name.replace(', ', '-').replace(' ', '-')}"
            options = ["--model", folder, "--objects", analysis / "objects", "--out", out, "--overwrite"]
            if family:
                options += ["--family", family]
            run_step("classify", *options)
            figures = agreement(paths, analysis / "segmentation", out / "predictions.csv", out / "classes.csv")
            candidate = (description["candidates"].get(family) if family else
                         json.loads((plain / "classifier.json").read_text())["candidates"]["measurements"])
            rows.append({
                "style": style, "family": name,
                "chosen": family == report["family"],
                "val_f1": candidate["val_macro_f1"],
                "test_f1": (report["test"] or {}).get("macro_f1", float("nan")) if family == report["family"] else float("nan"),
                "analyze_f1": figures.get("class_macro_f1", float("nan")),
                "analyze_acc": figures.get("class_accuracy", float("nan")),
                "matched": figures.get("class_n", 0), "found": figures["found"],
                "ece": figures["ece"], "review": figures["review"],
                "temperature": candidate["temperature"],
                "train_min": (seconds if family else plain_seconds) / 60,
            })
            print(json.dumps(rows[-1]), flush=True)

    import pandas as pd

    table = pd.DataFrame(rows)
    print("\nclassifier quality on the organoids analyze found in new images (IoU >= 0.5 to an annotation):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("val_f1: validation macro-F1 (annotated outlines, chooses the family); test_f1: the chosen "
          "family on the test images (annotated outlines, used once); analyze_f1: segmented outlines of "
          "new images; ece: expected calibration error there; review: share of found objects flagged "
          "for review; train_min: the whole train-classifier run (all candidates)", file=sys.stderr)


if __name__ == "__main__":
    main()
