"""Benchmark of analyze: time per 4032x3040 image, split by step, and peak memory.

Generates ``--images`` example images of 4032x3040 px (demo-data, full microscope size) and
runs ``orgaseg analyze`` on them in a child process (as a user would), with the models given,
or with the models of an ``orgaseg example`` run (``--example DIR``). Prints the wall time per
image, the time of each step read from the steps' run.json files (segment, extract-objects,
classify; the rest is process start-up, model loading and writing the QuPath files, overlays
and tables), the number of objects, and the peak resident memory of the largest process.

Usage:  python benchmarks/bench_analyze.py --example orgaseg-demo [--images 3]
        python benchmarks/bench_analyze.py --segmentation-model M --classifier C.pt [--images 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", type=Path, help="output folder of 'orgaseg example' (its models)")
    parser.add_argument("--segmentation-model", type=Path)
    parser.add_argument("--classifier", type=Path)
    parser.add_argument("--images", type=int, default=3, help="number of 4032x3040 images")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--device", default=None, help="classifier device (default: cuda if available)")
    args = parser.parse_args()
    if args.example:
        seg = args.segmentation_model or args.example / "models" / "segmentation"
        clf = args.classifier or args.example / "models" / "classifier" / "model.pt"
    else:
        seg, clf = args.segmentation_model, args.classifier
    if seg is None or clf is None:
        parser.error("give --example DIR, or --segmentation-model and --classifier")

    from orgaseg_core.data.demo import make_demo_data

    with tempfile.TemporaryDirectory(prefix="bench-analyze-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        make_demo_data(tmp / "data", n_images=args.images, seed=args.seed, size=(3040, 4032))
        print(f"generated {args.images} images of 4032x3040 in {time.perf_counter() - t0:.1f} s")
        command = [sys.executable, "-m", "orgaseg_core", "analyze", "--segmentation-model", str(seg),
                   "--classifier", str(clf), "--images", str(tmp / "data" / "images"),
                   "--out", str(tmp / "analysis")]
        if args.device:
            command += ["--device", args.device]
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            print(done.stderr[-3000:])
            raise SystemExit(f"analyze failed with exit status {done.returncode}")
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        record = json.loads((tmp / "analysis" / "run.json").read_text())
        steps = record["results"]["steps"]
        n_objects = record["results"]["objects"]
        n = args.images
        print(f"analyze of {n} images 4032x3040: {wall:.1f} s wall, {wall / n:.1f} s per image "
              f"({n_objects} objects, {record['results']['classified']} classified)")
        # one run record per chunk and step (analyze runs its images in chunks on Dask workers)
        totals = {step: sum((run.get("results") or {}).get("seconds") or 0 for run in runs)
                  for step, runs in steps.items()}
        for step in ("segment", "extract-objects", "classify"):
            if step in totals:
                print(f"  {step:<16} {totals[step]:7.1f} s  ({totals[step] / n:.1f} s per image)")
        print(f"  other            {wall - sum(totals.values()):7.1f} s"
              "  (Dask, process start-up, model loading, QuPath files, overlays, tables)")
        print(f"peak resident memory of the largest process: {peak_mib:.0f} MiB")
        print(f"load average: {load:.2f} at start, {os.getloadavg()[0]:.2f} at end "
              f"({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
