"""Benchmark of extract-objects on a full-size 4032x3040 image.

Prints, for 200 and 2,000 objects (or --objects ...) on one 4032x3040 RGB image:
- extract-objects wall time and peak memory (each run in a fresh subprocess; VmHWM is that
  process's own peak resident memory), with uncompressed crops (the default) and with
  zlib-compressed crops, and with --mask-background;
- time per object and the ratio of the times, to show the cost grows linearly with objects;
- the measurement alone: orgaseg_core.objects.measurements.measure_objects against
  skimage.measure.regionprops_table (same properties) on the same label image.

Usage:  python benchmarks/bench_extract_objects.py [--objects 200 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HEIGHT, WIDTH = 3040, 4032


def make_labels(n_objects: int, seed: int = 0, size_for: int = 2000) -> np.ndarray:
    """(HEIGHT, WIDTH) uint16 label image of ``n_objects`` non-touching ellipses, one per grid cell.

    The ellipses have the same size distribution whatever their number (semi-axes 0.25-0.42
    of the grid cell of ``size_for`` objects: about 20-33 px, 1,300-3,400 px area), so 10x the
    objects means 10x the object pixels and a linear step takes about 10x the time beyond its
    fixed cost per image (reading, grey conversion, one pass over the label image).
    """
    rng = np.random.default_rng(seed)

    def grid(n: int) -> tuple[int, float, float]:
        cols = int(np.ceil(np.sqrt(n * WIDTH / HEIGHT)))
        rows = int(np.ceil(n / cols))
        return cols, HEIGHT / rows, WIDTH / cols

    cols, cell_h, cell_w = grid(n_objects)
    _c, size_h, size_w = grid(max(size_for, n_objects))
    labels = np.zeros((HEIGHT, WIDTH), dtype=np.uint16)
    for i in range(n_objects):
        cy, cx = (i // cols + 0.5) * cell_h, (i % cols + 0.5) * cell_w
        ry, rx = rng.uniform(0.25, 0.42, size=2) * np.array([size_h, size_w])
        angle = rng.uniform(0, np.pi)
        r0, r1 = int(cy - 0.5 * size_h), int(np.ceil(cy + 0.5 * size_h))
        c0, c1 = int(cx - 0.5 * size_w), int(np.ceil(cx + 0.5 * size_w))
        yy, xx = np.mgrid[r0:r1, c0:c1]
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        inside = (u / rx) ** 2 + (v / ry) ** 2 <= 1
        labels[r0:r1, c0:c1][inside] = i + 1
    return labels


def make_inputs(folder: Path, n_objects: int, seed: int = 0) -> None:
    """images/big.tif (4032x3040 RGB uint8) and masks/big.tif (its label image)."""
    import tifffile

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    image = rng.normal(180, 8, size=(HEIGHT, WIDTH, 3)).clip(0, 255).astype(np.uint8)
    labels = make_labels(n_objects, seed)
    image[labels > 0] -= 60  # darker objects, as organoids in brightfield
    tifffile.imwrite(folder / "images" / "big.tif", image)
    tifffile.imwrite(folder / "masks" / "big.tif", labels, compression="zlib")


CHILD = r"""
import json, sys, time
from pathlib import Path
folder, out, options = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
import orgaseg_core.objects.extract as eo
eo.COMPRESS_CROPS = options.pop("compress", False)
start = time.perf_counter()
result = eo.extract_objects(folder / "images", folder / "masks", out, **options)
seconds = time.perf_counter() - start
hwm_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
crops = sum(p.stat().st_size for p in (out / "crops").iterdir())
print(json.dumps({"seconds": seconds, "max_rss_mib": hwm_kib / 1024, "crops": result.n_crops,
                  "crop_mib": crops / 2**20}))
"""


def measure(folder: Path, out: Path, options: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(out), json.dumps(options)],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(what: str, n_objects: int, runs: list[dict]) -> float:
    seconds = sorted(r["seconds"] for r in runs)
    median = seconds[len(seconds) // 2]
    rss = max(r["max_rss_mib"] for r in runs)
    print(f"  {what:<34} median {median:6.2f} s (min {seconds[0]:.2f}, max {seconds[-1]:.2f}, "
          f"n={len(runs)})  {1000 * median / n_objects:6.2f} ms/object  peak RSS {rss:5.0f} MiB  "
          f"crops {runs[0]['crops']} ({runs[0]['crop_mib']:.0f} MiB)")
    return median


def compare_measurement(n_objects: int) -> None:
    from skimage.measure import regionprops_table

    from orgaseg_core.objects.measurements import measure_objects

    labels = make_labels(n_objects)
    grey = np.random.default_rng(1).integers(0, 255, labels.shape, dtype=np.uint8)
    start = time.perf_counter()
    measure_objects(labels, grey)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    regionprops_table(labels, grey, properties=[
        "label", "bbox", "centroid", "area", "perimeter", "equivalent_diameter_area", "eccentricity",
        "solidity", "axis_major_length", "axis_minor_length", "orientation", "intensity_mean",
        "intensity_std"])
    theirs = time.perf_counter() - start
    print(f"  measurement only: measure_objects {ours:.2f} s, skimage regionprops_table "
          f"{theirs:.2f} s (same properties)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    settings = {
        "default (padding 10)": {},
        "zlib-compressed crops": {"compress": True},
        "--mask-background": {"mask_background": True},
    }
    medians: dict[str, dict[int, float]] = {name: {} for name in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.objects:
            folder = Path(tmp) / f"inputs{n}"
            t0 = time.perf_counter()
            make_inputs(folder, n)
            print(f"{n} objects on one {WIDTH}x{HEIGHT} RGB image "
                  f"(inputs generated in {time.perf_counter() - t0:.1f} s)")
            for name, options in settings.items():
                runs = [measure(folder, Path(tmp) / f"out{n}-{len(name)}-{i}", dict(options))
                        for i in range(args.repeats)]
                medians[name][n] = report(name, n, runs)
            compare_measurement(n)
    if len(args.objects) >= 2:
        lo, hi = min(args.objects), max(args.objects)
        print(f"scaling {lo} -> {hi} objects ({hi / lo:.0f}x the objects and object pixels); "
              "fit time = fixed + per_object * n:")
        for name, by_n in medians.items():
            per_object = (by_n[hi] - by_n[lo]) / (hi - lo)
            fixed = by_n[lo] - per_object * lo
            print(f"  {name:<34} time ratio {by_n[hi] / by_n[lo]:5.2f}  "
                  f"(total per object {1000 * by_n[lo] / lo:.2f} -> {1000 * by_n[hi] / hi:.2f} ms; "
                  f"fixed {fixed:.2f} s + {1000 * per_object:.2f} ms/object)")


if __name__ == "__main__":
    main()
