"""Benchmark of train-segmentation and segment.

Prints:
- training time per epoch (default batch 4 and patch size, on the generated example data);
- wall time and peak memory of ``segment`` on one 4032x3040 image and on a folder of ten
  1008x760 images, next to a bare ``StarDist2D.predict_instances`` call on the same model and
  images (read, grey, rescale to the model's scale, normalise, predict with the same tiles),
  without and with the model's training preprocessing (vignette removal), and the ratios:
  orgaseg / bare+preprocessing is the overhead of label rescaling and of writing the label
  image, the QuPath GeoJSON and the object table.

Usage:  python benchmarks/bench_segmentation.py [--model DIR] [--epochs 3] [--repeats 3]
Without ``--model`` a small model is trained first (``--epochs`` x 25 steps, which also gives
the time per epoch). Times: one child process loads the model once, warms up, then runs the
three variants in turn ``--repeats`` times and keeps the fastest run of each (the speed of a
shared machine varies). Peak memory (VmHWM): each variant once more in its own child process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
from pathlib import Path
mode, model, images, out, rounds = (sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]),
                                    int(sys.argv[5]))
t0 = time.perf_counter()
import orgaseg_core.segmentation.predict as seg_module
from orgaseg_core.common.images import list_images, read_image
from orgaseg_core.common.illumination import process_image
from orgaseg_core.common.resample import rescale_image
from orgaseg_core.common.images import to_grey
from orgaseg_core.segmentation.model import auto_n_tiles, check_model_folder, load_model, normalize_image
info = check_model_folder(model)
# only the network(s) this mode runs, so that its peak memory is theirs: orgaseg's (load_model,
# whose Keras predict is leaner) for segment(), StarDist's own model object for the bare calls
loaded = load_model(model) if mode in ("all", "orgaseg") else None  # imports TensorFlow
if mode != "orgaseg":
    from stardist.models import StarDist2D
    plain = StarDist2D(None, name=model.resolve().name, basedir=str(model.resolve().parent))
    plain.thresholds = dict(info.thresholds)
load = time.perf_counter() - t0
files = list_images(images) if images.is_dir() else [images]
seg_module.load_model = lambda folder: loaded  # segment() reuses the network loaded above


def bare(preprocessing):
    # What a script calling StarDist directly must do at least: read, grey, (the model's
    # preprocessing), rescale to the model's scale, normalise, predict with the same tiles.
    n = 0
    for f in files:
        grey = to_grey(read_image(f))
        if preprocessing:
            grey = process_image(grey, vignette=info.preprocessing.get("remove_vignette", False),
                                 flatten=info.preprocessing.get("flatten_background", False))
        x = normalize_image(rescale_image(grey, info.scale), info.norm_percentiles)
        labels, details = plain.predict_instances(x, n_tiles=auto_n_tiles(x.shape),
                                                  show_tile_progress=False)
        n += len(details["prob"])
    return n


def orgaseg(i):
    return seg_module.segment(model, images, out / f"run{i}").n_objects


runs = {"bare": (lambda i: bare(False)), "bare+preprocessing": (lambda i: bare(True)), "orgaseg": orgaseg}
chosen = list(runs) if mode == "all" else [mode]
best, objects = {}, {}
# Round 0 warms up (TensorFlow traces the network per tile shape); the modes alternate so that
# a slow spell of the machine hits all of them alike; the fastest round of each counts.
for i in range(rounds + 1):
    for name in chosen:
        t = time.perf_counter()
        objects[name] = runs[name](i)
        seconds = time.perf_counter() - t
        if i > 0:
            best[name] = min(best.get(name, seconds), seconds)
hwm_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"load": load, "seconds": best, "objects": objects, "peak_mib": hwm_kib / 1024}))
"""


def child(mode: str, model: Path, images: Path, out: Path, rounds: int) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, mode, str(model), str(images), str(out),
                           str(rounds)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def train_small_model(tmp: Path, epochs: int) -> Path:
    from orgaseg_core.pipelines.example import run_example
    from orgaseg_core.pipelines.processes import run_step_process

    example = run_example(tmp / "example", n_images=16, seed=0, data_only=True)
    model = tmp / "model"
    ended = run_step_process("train-segmentation", ["--data", example.folders["split (segmentation)"],
                                                    "--model-out", model, "--epochs", epochs])
    if ended.returncode != 0:
        raise SystemExit(f"training failed (exit status {ended.returncode}): {ended.message}")
    return model


def report_training(model: Path) -> None:
    meta = json.loads((model / "orgaseg_model.json").read_text())
    history = meta.get("history", [])
    seconds = [h["seconds"] for h in history]
    steady = seconds[1:] or seconds  # the first epoch includes graph building
    t = meta["training"]
    print(f"training: {len(seconds)} epochs x {t['steps_per_epoch']} steps, batch {t['batch_size']}, "
          f"patch {meta['patch_size'][0]}x{meta['patch_size'][1]}: first epoch {seconds[0]:.1f} s, "
          f"then {sum(steady) / len(steady):.1f} s per epoch "
          f"({sum(steady) / len(steady) / t['steps_per_epoch']:.2f} s per step); "
          f"threshold optimisation {meta['timings_s']['thresholds']:.1f} s, "
          f"validation F1@0.5 {meta['validation']['0.5']['f1']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="model folder (default: train a small one)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the small model")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (after one warm-up)")
    args = parser.parse_args()
    from orgaseg_core.data.demo import make_demo_data

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = args.model
        if model is None:
            t0 = time.perf_counter()
            model = train_small_model(tmp, args.epochs)
            print(f"trained a small model in {time.perf_counter() - t0:.0f} s (with data generation)")
        report_training(model)
        t0 = time.perf_counter()
        big = make_demo_data(tmp / "big", n_images=1, seed=7, size=(3040, 4032))
        small = make_demo_data(tmp / "small", n_images=10, seed=8)
        print(f"inputs: one 4032x3040 image, ten 1008x760 images (generated in "
              f"{time.perf_counter() - t0:.0f} s)")
        cases = {"1 image 4032x3040": big.images[0], "10 images 1008x760": tmp / "small" / "images"}
        for name, images in cases.items():
            timing = child("all", model, images, tmp / f"time-{len(name)}", args.repeats)
            for mode, seconds in timing["seconds"].items():
                peak = child(mode, model, images, tmp / f"peak-{mode}-{len(name)}", 0)
                print(f"{name:<20} {mode:<18} {seconds:7.2f} s  {timing['objects'][mode]:5d} objects  "
                      f"peak RSS {peak['peak_mib']:6.0f} MiB (TensorFlow import + model load "
                      f"{peak['load']:.1f} s, not included)")
            for base in ("bare", "bare+preprocessing"):
                ratio = timing["seconds"]["orgaseg"] / timing["seconds"][base]
                print(f"{name:<20} orgaseg / {base}: {ratio:.2f} ({100 * (ratio - 1):+.0f} %)")


if __name__ == "__main__":
    main()
