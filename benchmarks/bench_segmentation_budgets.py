"""What a training budget (or the pixel forest) reaches on held-out generated images (issue 3, README table).

The data are those of the quality test ``tests/test_segmentation_quality.py``: 36 example
images of seed 0 (masks, preprocess with vignette removal, 2x2 tiles, scale 0.5, split), and 6
held-out full-size images of another seed, segmented at full resolution and compared with their
annotations. Every extra argument is passed to ``orgaseg train-segmentation``, so

    python benchmarks/bench_segmentation_budgets.py --work /tmp/budgets --name e100 -- --epochs 100
    python benchmarks/bench_segmentation_budgets.py --work /tmp/budgets --name rays64 -- --n-rays 64
    python benchmarks/bench_segmentation_budgets.py --work /tmp/budgets --name forest -- --backend forest

train the default settings for 100 epochs, or with 64 rays, on the same data (generated once in
``--work`` and reused) and print precision, recall, F1, AP and mean matched IoU at IoU 0.5, 0.7
and 0.9, with the training time. TensorFlow runs in child processes (the orgaseg CLI), whose progress is shown live.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

N_SOURCE_IMAGES = 36
N_HELD_OUT = 6
HELD_OUT_SEED = 20261124


def run_step(step: str, *options) -> None:
    """``orgaseg STEP OPTIONS`` in its own process, its progress shown as it comes."""
    from orgaseg_core.pipelines.processes import run_step_process

    ended = run_step_process(step, options)
    if ended.returncode != 0:
        raise SystemExit(f"orgaseg {step} failed (exit status {ended.returncode}): {ended.message}")


def prepare_data(work: Path) -> tuple[Path, Path, Path]:
    """Training split, held-out images and their masks in ``work`` (made once, then reused)."""
    from orgaseg_core.data.demo import make_demo_data
    from orgaseg_core.data.masks import annotations_to_masks
    from orgaseg_core.pipelines.example import run_example

    split = work / "example" / "split-segmentation"
    if not split.exists():
        example = run_example(work / "example", n_images=N_SOURCE_IMAGES, seed=0, data_only=True)
        split = example.folders["split (segmentation)"]
    held = work / "held-out"
    if not (work / "held-out-masks").exists():
        make_demo_data(held, n_images=N_HELD_OUT, seed=HELD_OUT_SEED)
        annotations_to_masks(held / "geojsons", held / "images", work / "held-out-masks")
    return split, held / "images", work / "held-out-masks"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for data and models (reused)")
    parser.add_argument("--name", required=True, help="name of this run's model folder in --work")
    parser.add_argument("train_args", nargs="*", help="arguments for orgaseg train-segmentation")
    args = parser.parse_args(argv)

    import pandas as pd

    from orgaseg_core.common.images import read_labels
    from orgaseg_core.segmentation.evaluation import segmentation_metrics

    split, images, masks = prepare_data(args.work)
    model = args.work / args.name
    t0 = time.perf_counter()
    run_step("train-segmentation", "--data", split, "--model-out", model, "--seed", 0, *args.train_args)
    t_train = time.perf_counter() - t0
    seg = args.work / f"{args.name}-segmented"
    run_step("segment", "--model", model, "--images", images, "--out", seg, "--image-scale", 1.0,
            "--overwrite")

    truths, preds = [], []
    for truth_file in sorted(masks.glob("*.tif")):
        truths.append(read_labels(truth_file))
        preds.append(read_labels(seg / truth_file.name))
    metrics = segmentation_metrics(truths, preds, thresholds=(0.5, 0.7, 0.9))
    meta = json.loads((model / "orgaseg_model.json").read_text())
    training = meta["training"]
    print(f"run {args.name}: train-segmentation {' '.join(args.train_args) or '(defaults)'}")
    if meta.get("backend") == "forest":
        print(f"  pixel forest of {meta['forest']['n_trees']} trees at scale {meta['scale']:g}, regions "
              f"{meta['regions']}: training {t_train / 60:.1f} min on this machine")
    elif meta.get("backend") == "unet":
        print(f"  U-Net, {meta['steps']} steps ({meta['stopped']}), scale {meta['scale']:g}, regions "
              f"{meta['regions']}, pyramid {meta['pyramid']['levels']}, "
              f"{meta['test_time_views']['views']} test-time view(s), the {meta['weights']['chosen']} network: "
              f"train-segmentation {t_train / 60:.1f} min on this machine ({meta['timings_s']['training'] / 60:.1f} min of it training)")
    else:
        print(f"  {training.get('epochs')} epochs x {training.get('steps_per_epoch')} steps, "
              f"n_rays {meta['n_rays']}, patch {meta['patch_size']}: "
              f"training {t_train / 60:.1f} min on this machine "
              f"({meta['timings_s']['per_epoch']:.1f} s per epoch)")
    print(pd.DataFrame(metrics)[["threshold", "n_true", "n_pred", "tp", "precision", "recall", "f1",
                                 "ap", "mean_matched_iou"]]
          .to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(per_class(masks, truths, preds).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def per_class(masks: Path, truths: list, preds: list):
    """Recall at IoU 0.5 and mean IoU of the matches per organoid class (the classes of the
    held-out annotations, ``<stem>_objects.csv`` of annotations-to-masks): no class may be
    missed systematically (issue 10)."""
    import pandas as pd

    from orgaseg_core.segmentation.evaluation import recall_by_class

    classes = [pd.read_csv(masks / f"{f.stem}_objects.csv").set_index("label")["class"].to_dict()
               for f in sorted(masks.glob("*.tif"))]
    return recall_by_class(truths, preds, classes)


if __name__ == "__main__":
    main()
