"""Benchmark of the data steps on full-size images.

Prints the wall time and peak memory of:
- annotations-to-masks for N objects (default 2,000) on one 4032x3040 image;
- preprocess of one 4032x3040 RGB image + label image pair (grey, vignette removal,
  background flattening, 2x2 tiles, scale 0.25), and the same with no options.

Usage:  python benchmarks/bench_data_steps.py [--objects 2000] [--repeats 3]
Each measurement runs in a fresh subprocess so peak memory (max RSS) belongs to that step alone.
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


def make_inputs(folder: Path, n_objects: int, seed: int = 0) -> None:
    """A 4032x3040 RGB TIFF and a GeoJSON with ``n_objects`` non-overlapping organoid-like polygons."""
    import tifffile

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "geojsons").mkdir()
    image = rng.normal(180, 8, size=(HEIGHT, WIDTH, 3)).clip(0, 255).astype(np.uint8)
    tifffile.imwrite(folder / "images" / "big.tif", image)
    # One polygon per grid cell, so objects never overlap and the count is exact.
    cols = int(np.ceil(np.sqrt(n_objects * WIDTH / HEIGHT)))
    rows = int(np.ceil(n_objects / cols))
    cell_h, cell_w = HEIGHT / rows, WIDTH / cols
    radius = 0.4 * min(cell_h, cell_w)
    features = []
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    for i in range(n_objects):
        cy, cx = (i // cols + 0.5) * cell_h, (i % cols + 0.5) * cell_w
        r = radius * (0.8 + 0.2 * np.sin(3 * angles + rng.uniform(0, 6)))
        ring = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1).tolist()
        ring.append(ring[0])
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": {"objectType": "annotation",
                                        "classification": {"name": "Cyst", "color": [0, 0, 255]}}})
    (folder / "geojsons" / "big.tif.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": features}))


CHILD = r"""
import json, sys, time
from pathlib import Path
step, folder, out, options = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4])
start = time.perf_counter()
if step == "annotations-to-masks":
    from orgaseg_core.data.masks import annotations_to_masks
    annotations_to_masks(folder / "geojsons", folder / "images", out)
else:
    from orgaseg_core.data.preprocess import preprocess
    preprocess(folder / "images", out, masks=folder / "masks", **options)
seconds = time.perf_counter() - start
# VmHWM is this process's own peak resident memory; ru_maxrss would include the parent's
# peak from before exec on Linux.
hwm_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "max_rss_mib": hwm_kib / 1024}))
"""


def measure(step: str, folder: Path, out: Path, options: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, step, str(folder), str(out), json.dumps(options)],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "inputs"
        t0 = time.perf_counter()
        make_inputs(folder, args.objects)
        print(f"inputs: {WIDTH}x{HEIGHT} RGB image, {args.objects} polygons "
              f"(generated in {time.perf_counter() - t0:.1f} s)")
        runs = []
        for i in range(args.repeats):
            out = Path(tmp) / f"masks{i}"
            runs.append(measure("annotations-to-masks", folder, out, {}))
        (folder / "masks").symlink_to(Path(tmp) / "masks0")
        report("annotations-to-masks", f"{args.objects} objects", runs)
        settings = {
            "all options": {"scale": 0.25, "tiles": [2, 2], "remove_vignette": True, "flatten_background": True},
            "grey only": {},
        }
        for name, options in settings.items():
            runs = [measure("preprocess", folder, Path(tmp) / f"pre-{len(name)}-{i}", options)
                    for i in range(args.repeats)]
            report("preprocess", f"image+mask pair, {name}", runs)


def report(step: str, what: str, runs: list[dict]) -> None:
    seconds = sorted(r["seconds"] for r in runs)
    rss = max(r["max_rss_mib"] for r in runs)
    print(f"{step:<22} {what:<40} median {seconds[len(seconds) // 2]:6.2f} s  "
          f"(min {seconds[0]:.2f}, max {seconds[-1]:.2f}, n={len(runs)})  peak RSS {rss:7.0f} MiB")


if __name__ == "__main__":
    main()
