"""``orgaseg example``: the whole story on generated example data, in one call.

It generates a QuPath-like project export and runs every step on it, each into its own folder
under ``out``, so a new user sees what every step reads and writes:

1. ``data``: example images, QuPath GeoJSON annotations and crops (demo-data)
2. ``sorted-crops``, ``masks``, ``preprocessed``: sort-crops, annotations-to-masks, preprocess
3. ``split-segmentation``, ``split-classification``: split (by source image, no leakage)
4. ``models/segmentation``: train-segmentation (a U-Net on torch by default, or StarDist on
   TensorFlow with ``seg_backend="stardist"``: its own process)
5. ``models/classifier``: train-classifier from the annotated images (torch: its own process):
   measurement forest, CNN and their combination, the best on validation kept
6. ``new-images``: an experiment never seen in training (:mod:`orgaseg_core.data.experiment`):
   wells of a control and a treatment that shifts the class mix (20% -> 60% branched) and makes
   organoids larger, one image per well with its pixel size, ``design.csv`` and ``planted.json``
7. ``analysis``: analyze of the new images with their design, control ``control`` (segment,
   extract-objects, classify; QuPath files, overlays, tables, conditions.csv, plots and
   ``report.html``); the summary compares the measured effect with the planted one
8. ``evaluation``: the new images' annotations as label images, evaluate-segmentation of the
   analysis against them, and ``classes.csv``: each analysed object's predicted class next to
   the class of the annotation it matches (IoU >= 0.5), with the macro-F1 in the summary.

The training budgets are small so that the whole story runs in minutes on a laptop's CPU; the
README says what longer training reaches.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.errors import OrgasegError
from ..common.outputs import step_run

log = logging.getLogger(__name__)

#: Training budgets of the example: minutes on 2 CPU cores in all (see the README). The U-Net
#: trains with its ``quick`` preset; StarDist (``seg_backend="stardist"``) with these epochs x
#: steps, the example's budget up to 0.17.
EXAMPLE_SEG_BACKEND = "unet"
EXAMPLE_STARDIST_EPOCHS = 20
EXAMPLE_STARDIST_STEPS = 20
EXAMPLE_CLF_GRID_EPOCHS = 3
EXAMPLE_CLF_EPOCHS = 12
NEW_IMAGES_SEED_OFFSET = 1000


@dataclass
class ExampleResult:
    """Folders written by :func:`run_example`, in pipeline order (step name -> folder), and the
    figures of the models and of the analysis of the new images."""

    out: Path
    folders: dict[str, Path] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    report: Path | None = None

    def summary(self) -> str:
        lines = [f"example: all results are in {self.out} ({sum(self.seconds.values()):.0f} s)"]
        lines += [f"  {step:<28} {folder}" for step, folder in self.folders.items()]
        f = self.figures
        if f:
            lines.append("results on new images (never seen in training):")
        if "segmentation_f1" in f:
            lines.append(f"  segmentation: F1 {f['segmentation_f1']:.3f}, AP {f['segmentation_ap']:.3f} at IoU 0.5 "
                         f"({f['true_objects']} annotated organoids, {f['found_objects']} found)")
        if f.get("shapes"):
            from ..segmentation.shapes import shape_line

            lines.append("  " + shape_line(f["shapes"], reference="annotated"))
        if "class_macro_f1" in f:
            lines.append(f"  classes of the matched organoids: macro-F1 {f['class_macro_f1']:.3f}, "
                         f"accuracy {f['class_accuracy']:.3f} ({f['class_n']} organoids)")
        if f.get("recall_per_class"):
            lines.append("  organoids found and classified, per annotated class: " + ", ".join(
                f"{name} {value:.0%}" for name, value in f["recall_per_class"].items()))
        if "classifier_test_macro_f1" in f:
            lines.append(f"  classifier ({f.get('classifier_family', 'cnn')} family, chosen on validation) on its "
                         f"test objects: macro-F1 {f['classifier_test_macro_f1']:.3f}")
        if "measured_diff" in f:
            lines.append(f"  planted treatment effect: {f['effect_class']} fraction treated - control "
                         f"{f['planted_diff']:+.2f} planted ({f['generated_diff']:+.2f} in the generated images), "
                         f"{f['measured_diff']:+.2f} measured (95% interval over wells {f['measured_diff_low']:+.2f} "
                         f"to {f['measured_diff_high']:+.2f}); median area treated / control "
                         f"{f['planted_area_ratio']:.2f} generated, {f['measured_area_ratio']:.2f} measured")
        if "analysis" in self.folders:
            a = self.folders["analysis"]
            lines.append(f"  open in QuPath: {a / 'qupath'}/<image>.geojson; overlays: {a / 'overlays'}; "
                         f"tables: {a / 'summary.csv'}, {a / 'objects.csv'}, {a / 'conditions.csv'}")
        if self.report is not None:
            lines.append(f"  report: open {self.report} in a browser")
        return "\n".join(lines)


def run_example(out: Path, *, n_images: int = 24, seed: int = 0, size: tuple[int, int] = (760, 1008),
                scale: float = 0.5, tiles: tuple[int, int] = (2, 2), n_new_images: int = 6,
                seg_backend: str = EXAMPLE_SEG_BACKEND, seg_epochs: int | None = None,
                seg_steps: int | None = None, clf_grid_epochs: int = EXAMPLE_CLF_GRID_EPOCHS,
                clf_epochs: int = EXAMPLE_CLF_EPOCHS,
                data_only: bool = False, overwrite: bool = False) -> ExampleResult:
    """Generate example data in ``out/data`` and run the whole pipeline on it (see module notes).

    n_images: training images; size: (height, width) px; scale, tiles: preprocess settings of the
    segmentation training data; n_new_images: images for analyze; seg_backend: the segmentation
    model, "unet" (default), "stardist" or "forest"; seg_epochs x seg_steps: its training budget
    (None: the U-Net's ``quick`` preset, StarDist's 20 x 20 steps); clf_grid_epochs,
    clf_epochs: the classifier's. data_only: stop after the data steps (no TensorFlow or torch
    needed).
    """
    from ..data.demo import make_demo_data
    from ..data.masks import annotations_to_masks
    from ..data.preprocess import preprocess
    from ..data.sort_crops import sort_crops
    from ..data.split import split_dataset
    from .processes import run_step_process

    out = Path(out)
    if n_images < 4:
        raise OrgasegError(f"the example needs at least 4 images to split, got {n_images}")
    seg_backend = str(seg_backend).strip().lower()
    if seg_backend not in ("unet", "stardist", "forest"):
        raise OrgasegError(f"--seg-backend must be 'unet', 'stardist' or 'forest', got {seg_backend!r}")
    if seg_backend == "forest" and (seg_epochs is not None or seg_steps is not None):
        raise OrgasegError("--seg-backend forest trains no network: --seg-epochs and --seg-steps do not apply")
    if seg_backend == "stardist":
        seg_epochs = EXAMPLE_STARDIST_EPOCHS if seg_epochs is None else seg_epochs
        seg_steps = EXAMPLE_STARDIST_STEPS if seg_steps is None else seg_steps
    arguments = {"out": out, "n_images": n_images, "seed": seed, "size": size, "scale": scale,
                 "tiles": tiles, "n_new_images": n_new_images, "seg_backend": seg_backend, "seg_epochs": seg_epochs,
                 "seg_steps": seg_steps, "clf_grid_epochs": clf_grid_epochs, "clf_epochs": clf_epochs,
                 "data_only": data_only, "overwrite": overwrite}
    with step_run("example", out, arguments, overwrite=overwrite) as record:
        result = ExampleResult(out=out)
        folders = result.folders
        clock = [time.perf_counter()]

        def done(step: str, summary: str | None = None) -> None:
            now = time.perf_counter()
            result.seconds[step] = round(now - clock[0], 1)
            clock[0] = now
            if summary:
                log.info("%s", summary)

        folders["demo-data"] = out / "data"
        done("demo-data", make_demo_data(folders["demo-data"], n_images=n_images, seed=seed, size=size,
                                         overwrite=overwrite).summary())
        folders["sort-crops"] = out / "sorted-crops"
        done("sort-crops", sort_crops(folders["demo-data"] / "crops", folders["sort-crops"],
                                      overwrite=overwrite).summary())
        folders["annotations-to-masks"] = out / "masks"
        done("annotations-to-masks", annotations_to_masks(
            folders["demo-data"] / "geojsons", folders["demo-data"] / "images",
            folders["annotations-to-masks"], overwrite=overwrite).summary())
        folders["preprocess"] = out / "preprocessed"
        done("preprocess", preprocess(folders["demo-data"] / "images", folders["preprocess"],
                                      masks=folders["annotations-to-masks"], scale=scale, tiles=tiles,
                                      remove_vignette=True, overwrite=overwrite).summary())
        folders["split (segmentation)"] = out / "split-segmentation"
        done("split (segmentation)", split_dataset(
            folders["preprocess"], folders["split (segmentation)"], mode="segmentation", seed=seed,
            overwrite=overwrite).summary())
        folders["split (classification)"] = out / "split-classification"
        done("split (classification)", split_dataset(
            folders["sort-crops"], folders["split (classification)"], mode="classification",
            seed=seed, overwrite=overwrite).summary())
        if not data_only:
            _models_and_analysis(result, run_step_process, seed=seed, size=size,
                                 n_new_images=n_new_images, seg_backend=seg_backend, seg_epochs=seg_epochs,
                                 seg_steps=seg_steps, clf_grid_epochs=clf_grid_epochs,
                                 clf_epochs=clf_epochs, overwrite=overwrite, done=done)
        record.results["folders"] = {k: str(v) for k, v in folders.items()}
        record.results["figures"] = result.figures
        record.results["seconds"] = result.seconds
    return result


def _models_and_analysis(result: ExampleResult, run_step_process, *, seed, size, n_new_images,
                         seg_backend, seg_epochs, seg_steps, clf_grid_epochs, clf_epochs, overwrite, done) -> None:
    """Steps 4-8 of the example (see the module notes)."""
    import json

    from ..data.experiment import make_demo_experiment
    from ..data.masks import annotations_to_masks
    from ..segmentation.evaluation import evaluate_segmentation
    from .analyze import analyze

    folders, out = result.folders, result.out
    extra = ["--overwrite"] if overwrite else []

    def child(step: str, options: list, folder: Path) -> None:
        ended = run_step_process(step, [*options, *extra], out=folder)
        if ended.returncode != 0:
            raise OrgasegError(f"example: {step} failed (exit status {ended.returncode}): {ended.message}")
        done(step)

    folders["train-segmentation"] = out / "models" / "segmentation"
    budget = [*(["--epochs", seg_epochs] if seg_epochs is not None else []),
              *(["--steps-per-epoch", seg_steps] if seg_steps is not None else [])]
    child("train-segmentation", ["--data", folders["split (segmentation)"], "--model-out",
                                 folders["train-segmentation"], "--backend", seg_backend, *budget,
                                 "--seed", seed],
          folders["train-segmentation"])
    folders["train-classifier"] = out / "models" / "classifier"
    # From the annotated images (not the crops): every family can be trained, and the objects
    # are cut and measured exactly as analyze will cut and measure the segmented ones.
    child("train-classifier", ["--images", folders["demo-data"] / "images", "--masks",
                               folders["annotations-to-masks"], "--model-out",
                               folders["train-classifier"], "--grid-epochs", clf_grid_epochs,
                               "--epochs", clf_epochs, "--seed", seed],
          folders["train-classifier"])
    report = json.loads((folders["train-classifier"] / "report.json").read_text())
    result.figures["classifier_family"] = report["family"]
    if report.get("test"):
        result.figures["classifier_test_macro_f1"] = round(float(report["test"]["macro_f1"]), 4)

    folders["new images"] = out / "new-images"
    experiment = make_demo_experiment(folders["new images"], wells_per_condition=max(1, n_new_images // 2),
                                      seed=seed + NEW_IMAGES_SEED_OFFSET, size=size, overwrite=overwrite)
    done("new images", experiment.summary())
    folders["analysis"] = out / "analysis"
    analysed = analyze(folders["train-segmentation"], folders["train-classifier"],
                       folders["new images"] / "images", folders["analysis"], metadata=experiment.design_csv,
                       control="control", overwrite=overwrite)
    done("analyze", analysed.summary())
    result.report = analysed.report
    result.figures.update(planted_effect(folders["analysis"] / "conditions.csv", experiment.planted_json))

    folders["evaluation"] = out / "evaluation"
    truth = folders["evaluation"] / "true-masks"
    annotations_to_masks(folders["new images"] / "geojsons", folders["new images"] / "images", truth,
                         overwrite=overwrite)
    evaluated = evaluate_segmentation(truth, folders["analysis"] / "segmentation",
                                      folders["evaluation"] / "segmentation",
                                      images=folders["new images"] / "images", overwrite=overwrite)
    done("evaluate-segmentation", evaluated.summary())
    at_05 = evaluated.metrics.iloc[(evaluated.metrics["threshold"] - 0.5).abs().argmin()]
    result.figures.update(segmentation_f1=round(float(at_05["f1"]), 4),
                          segmentation_ap=round(float(at_05["ap"]), 4),
                          true_objects=int(evaluated.n_true), found_objects=int(evaluated.n_pred),
                          shapes=evaluated.key_figures.get("shapes"))
    classes = class_agreement(truth, folders["analysis"] / "segmentation", folders["analysis"] / "objects.csv",
                              folders["evaluation"] / "classes.csv")
    result.figures.update(classes)
    done("class agreement")


def planted_effect(conditions_csv: Path, planted_json: Path, cls: str = "Branched") -> dict[str, Any]:
    """The treatment's effect as planted and as measured: the difference of the ``cls`` fraction
    (treated - control, with its 95% bootstrap interval over wells) and the ratio of the median
    organoid areas, from analyze's ``conditions.csv`` and the experiment's ``planted.json``."""
    import json

    import pandas as pd

    planted = json.loads(Path(planted_json).read_text())
    table = pd.read_csv(conditions_csv)
    rows = table[table["grouping"] == "condition"].set_index("condition")
    if not {"control", "treated"} <= set(rows.index) or f"diff_{cls}" not in rows.columns:
        return {}
    treated, control = rows.loc["treated"], rows.loc["control"]
    return {"effect_class": cls,
            "planted_diff": round(planted["treated"]["class_chance"][cls] - planted["control"]["class_chance"][cls], 4),
            "generated_diff": round(planted["treated"]["generated_fractions"][cls]
                                    - planted["control"]["generated_fractions"][cls], 4),
            "measured_diff": round(float(treated[f"diff_{cls}"]), 4),
            "measured_diff_low": round(float(treated[f"diff_{cls}_low"]), 4),
            "measured_diff_high": round(float(treated[f"diff_{cls}_high"]), 4),
            "planted_area_ratio": round(planted["treated"]["generated_median_area_um2"]
                                        / planted["control"]["generated_median_area_um2"], 3),
            "measured_area_ratio": round(float(treated["area_median"]) / float(control["area_median"]), 3)}


def class_agreement(truth: Path, pred: Path, objects_csv: Path, out_csv: Path) -> dict[str, Any]:
    """Predicted class of each analysed object next to the class of the annotation it matches.

    truth: annotations-to-masks folder (``<stem>.tif`` + ``<stem>_objects.csv`` with classes);
    pred: segment's label images; objects_csv: analyze's objects.csv. Objects are matched one
    to one at IoU >= 0.5 (as in evaluate-segmentation). Writes ``out_csv`` (stem, true label,
    predicted label, IoU, true class, predicted class) and returns macro-F1 and accuracy.
    """
    import numpy as np
    import pandas as pd

    from ..common.images import read_labels
    from ..common.outputs import write_csv
    from ..segmentation.evaluation import match_objects, matched_pairs

    objects = pd.read_csv(objects_csv, dtype={"stem": str})
    rows = []
    annotated: dict[str, int] = {}
    for truth_file in sorted(truth.glob("*.tif")):
        stem = truth_file.stem
        if not (pred / f"{stem}.tif").is_file():
            continue
        classes = pd.read_csv(truth / f"{stem}_objects.csv")
        true_class = dict(zip(classes["label"], classes["class"]))
        for name in classes["class"].dropna():
            annotated[str(name)] = annotated.get(str(name), 0) + 1
        predicted = objects[objects["stem"] == stem]
        pred_class = dict(zip(predicted["label"], predicted["predicted_class"]))
        matches = matched_pairs(match_objects(read_labels(truth_file), read_labels(pred / f"{stem}.tif")), 0.5)
        for t, p, iou in matches:
            if int(p) in pred_class and int(t) in true_class:
                rows.append({"stem": stem, "true_label": int(t), "pred_label": int(p), "iou": round(float(iou), 4),
                             "true_class": true_class[int(t)], "predicted_class": pred_class[int(p)]})
    table = pd.DataFrame(rows, columns=["stem", "true_label", "pred_label", "iou", "true_class",
                                        "predicted_class"])
    write_csv(out_csv, table)
    if table.empty:
        return {"class_n": 0}
    f1s = []
    for name in sorted(set(table["true_class"])):
        tp = int(((table["true_class"] == name) & (table["predicted_class"] == name)).sum())
        fp = int(((table["true_class"] != name) & (table["predicted_class"] == name)).sum())
        fn = int(((table["true_class"] == name) & (table["predicted_class"] != name)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    # segmentation recall per annotated class (matched at IoU >= 0.5 and classified, of annotated):
    # a class the segmentation misses is invisible to every table after it
    found = table["true_class"].value_counts()
    recall = {name: round(int(found.get(name, 0)) / n, 4) for name, n in sorted(annotated.items())}
    return {"class_n": int(len(table)), "class_macro_f1": round(float(np.mean(f1s)), 4),
            "class_accuracy": round(float((table["true_class"] == table["predicted_class"]).mean()), 4),
            "recall_per_class": recall}
