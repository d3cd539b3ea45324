"""Benchmark of distributed analyze: images per minute with 1 and 2 Dask workers, against the bare
model calls on the same images in the same run.

Generates ``--small`` images of 1008x760 and ``--large`` images of 4032x3040 (demo-data), then
for each image size:

1. **bare**: in one process, ``StarDist2D.predict_instances`` of a model loaded by StarDist
   itself (``StarDist2D(None, name, basedir)``, the model's thresholds) on every image as
   segment feeds it to the network (resized to the model's scale and normalised, tiles as
   segment chooses; loading the model, reading and resizing the images not timed),
   and in another process (torch) the classifier network's forward pass on as many crops as
   analyze found (at its input size, batches of 64; loading not timed). Their sum is the cost
   of the model calls alone.
2. ``orgaseg analyze --workers N`` for every N of ``--workers``, as a user runs it (a child
   process, wall time from start to exit, including Dask, process start-up, model loading, crops,
   measurements, QuPath files, overlays and tables), each step given ``--threads-per-worker``
   threads, and the bare run given the same number.

Prints per run: wall seconds, images per minute, seconds per image, the ratio to the bare model
calls, and the speed-up of N workers over 1; where a worker ran more than one chunk
(``--chunk-size``), also the seconds per image of the chunks after each worker's first (warm
step processes: the per-image cost of a long run, without start-up and the merged tables) and
the throughput that gives with N workers side by side (choose images and chunks so that every
worker has the same number of warm chunks, e.g. 80 images in chunks of 8 for 1 and 2 workers).
The goals of issue 14: per-image cost within 1.3x of the bare calls at 40+ images, and 2
workers at least 1.7x the throughput of 1 where the machine has the cores (2 workers x
``--threads-per-worker`` cores).

The bare calls are StarDist's, as issue 14 names them, so the example's segmentation model must
be a StarDist model: ``orgaseg example --seg-backend stardist`` (since 0.18 the example trains
the default U-Net; the script refuses another model by name).

Usage:  orgaseg example --out orgaseg-demo-stardist --seg-backend stardist
        python benchmarks/bench_distributed.py --example orgaseg-demo-stardist [--small 40] [--large 8]
            [--workers 1,2] [--threads-per-worker 1] [--chunk-size N] [--overlays jpeg] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARE_SEGMENT = r"""
import json, sys, time
from pathlib import Path
from orgaseg_core.common.images import input_images, read_image
from orgaseg_core.segmentation.model import LoadedModel, auto_n_tiles, check_model_folder
from orgaseg_core.segmentation.predict import network_input, preprocessed_grey
from stardist.models import StarDist2D
folder = Path(sys.argv[1]).resolve()
info = check_model_folder(folder)
# StarDist's own model object (orgaseg's load_model makes Keras' predict leaner: not bare)
bare = StarDist2D(None, name=folder.name, basedir=str(folder.parent))
bare.thresholds = dict(info.thresholds)
loaded = LoadedModel(model=bare, info=info)  # the model's preprocessing and scale
stems, _ = input_images(Path(sys.argv[2]))
# the network's input as segment makes it: at the model's scale, normalised as in training
inputs = [network_input(preprocessed_grey(read_image(p), loaded), loaded.info.scale, loaded.info.norm_percentiles)
          for p in stems.values()]
seconds = 0.0
for x in inputs:
    t0 = time.perf_counter()
    bare.predict_instances(x, n_tiles=auto_n_tiles(x.shape), show_tile_progress=False)
    seconds += time.perf_counter() - t0
print(json.dumps({"seconds": seconds}))
"""

BARE_CLASSIFY = r"""
import json, sys, time
import torch
from pathlib import Path
from orgaseg_core.classification.model import load_classifier
classifier = load_classifier(Path(sys.argv[1]))
n = int(sys.argv[2])
checkpoint = classifier.checkpoint
network = checkpoint.build("cpu")
seconds = 0.0
with torch.no_grad():
    for start in range(0, n, 64):
        batch = torch.zeros(min(64, n - start), checkpoint.in_channels, checkpoint.input_size, checkpoint.input_size)
        t0 = time.perf_counter()
        network(batch)
        seconds += time.perf_counter() - t0
print(json.dumps({"seconds": seconds}))
"""


def thread_env(threads: int) -> dict[str, str]:
    """This environment with the thread limits analyze gives each chunk's steps."""
    from orgaseg_core.pipelines.chunks import thread_environment

    return {**os.environ, **thread_environment(threads)}


def bare(script: str, args: list, threads: int) -> float:
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          env=thread_env(threads))
    if done.returncode != 0:
        raise SystemExit(f"bare run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def analyze(seg: Path, clf: Path, images: Path, out: Path, workers: int, threads: int,
            chunk_size: int | None = None, overlays: str | None = None,
            chunks_per_worker: int | None = None) -> tuple[float, dict]:
    command = [sys.executable, "-m", "orgaseg_core", "analyze", "--segmentation-model", seg, "--classifier", clf,
               "--images", images, "--out", out, "--workers", workers, "--threads-per-worker", threads]
    if chunk_size:
        command += ["--chunk-size", chunk_size]
    if overlays:
        command += ["--overlays", overlays]
    if chunks_per_worker:
        command += ["--chunks-per-worker", chunks_per_worker]
    t0 = time.perf_counter()
    done = subprocess.run(list(map(str, command)), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"analyze failed with exit status {done.returncode}:\n{done.stderr[-3000:]}")
    return wall, json.loads((out / "run.json").read_text())["results"]


def warm_chunk_seconds(results: dict, at_once: int = 1) -> tuple[float, int, int] | None:
    """(seconds, images, chunks) of each worker's steady state, summed over the workers, from
    analyze's run.json: from the end of the worker's ``at_once``-th chunk (its step processes
    started, their models loaded, and as many chunks in progress as at any later end) to the
    end of its last, and the images and chunks that ended in that time. Chunks that overlap
    (``--chunks-per-worker``) are counted by when they end, so the time is wall time, never
    counted twice. None when no worker ran more than ``at_once`` chunks."""
    by_worker: dict[tuple, list[tuple[float, int]]] = {}
    for chunk in results.get("chunks", []):
        spans = chunk.get("spans") or {}
        servers = chunk.get("servers") or {}
        if not spans or "segment" not in servers:
            continue
        worker = (chunk.get("host"), servers["segment"]["pid"])  # one segment process per worker
        by_worker.setdefault(worker, []).append((max(end for _, end in spans.values()), chunk["images"]))
    seconds, images, chunks = 0.0, 0, 0
    for ends in by_worker.values():
        ends.sort()
        if len(ends) <= at_once:
            continue
        seconds += ends[-1][0] - ends[at_once - 1][0]
        images += sum(n for _, n in ends[at_once:])
        chunks += len(ends) - at_once
    return (seconds, images, chunks) if chunks else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", type=Path, required=True, help="output folder of 'orgaseg example' (its models)")
    parser.add_argument("--small", type=int, default=40, help="images of 1008x760 (0: none)")
    parser.add_argument("--large", type=int, default=8, help="images of 4032x3040 (0: none)")
    parser.add_argument("--workers", default="1,2", help="worker counts to run, comma separated")
    parser.add_argument("--threads-per-worker", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None, help="folder for the images and outputs (default: temporary)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="analyze --chunk-size (default: analyze's own; smaller chunks show what the "
                             "warm step processes save from chunk to chunk)")
    parser.add_argument("--overlays", default=None, help="analyze --overlays (png, jpeg, none; default: analyze's own, png)")
    parser.add_argument("--chunks-per-worker", default=None,
                        help="analyze --chunks-per-worker, comma separated to run each (e.g. 1,2: one chunk "
                             "at a time against two overlapping; default: analyze's own)")
    args = parser.parse_args()
    seg = args.example / "models" / "segmentation"
    clf = args.example / "models" / "classifier"
    kind = json.loads((seg / "orgaseg_model.json").read_text()).get("kind")
    if kind != "orgaseg-stardist2d":
        sys.exit(f"error: {seg}: a {kind} model; the bare calls are StarDist's, so make the example with "
                 "'orgaseg example --seg-backend stardist'")
    workers = [int(w) for w in args.workers.split(",")]
    overlap = [int(c) for c in args.chunks_per_worker.split(",")] if args.chunks_per_worker else [None]
    threads = args.threads_per_worker

    from orgaseg_core.data.demo import make_demo_data
    from orgaseg_core.pipelines.cluster import CHUNKS_PER_WORKER

    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp:
        work = args.work or Path(tmp)
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {threads} thread(s) per worker "
              f"and for the bare calls")
        for name, n, size in (("1008x760", args.small, (760, 1008)), ("4032x3040", args.large, (3040, 4032))):
            if n <= 0:
                continue
            data = work / f"data-{name}"
            if not (data / "images").is_dir():
                make_demo_data(data, n_images=n, seed=args.seed, size=size)
            images = data / "images"
            runs = {}
            for c in overlap:
                for w in workers:
                    out = work / (f"analysis-{name}-{w}" + (f"-chunks{args.chunk_size}" if args.chunk_size else "")
                                  + (f"-{args.overlays}" if args.overlays else "") + (f"-at{c}" if c else ""))
                    runs[(w, c)] = analyze(seg, clf, images, out, w, threads, args.chunk_size, args.overlays, c)
            n_objects = next(iter(runs.values()))[1]["objects"]
            bare_seg = bare(BARE_SEGMENT, [seg, images], threads)
            bare_cls = bare(BARE_CLASSIFY, [clf, n_objects], threads)
            bare_total = bare_seg + bare_cls
            print(f"\n{n} images of {name}, {n_objects} objects")
            print(f"  bare model calls: {bare_total:7.1f} s ({bare_total / n:.2f} s per image: "
                  f"predict_instances {bare_seg:.1f} s, classifier forward {bare_cls:.1f} s)")
            for c in overlap:
                base = runs[(workers[0], c)][0]
                warm_base = None
                at_once = c or CHUNKS_PER_WORKER  # chunks each worker ran at once
                label = f", {c} chunk(s) per worker at once" if c else ""
                for w in workers:
                    wall, results = runs[(w, c)]
                    per_image = wall / n
                    line = (f"  analyze, {w} worker(s){label}: {wall:7.1f} s, {60 * n / wall:6.1f} images/min, "
                            f"{per_image:.2f} s per image = {per_image * w / (bare_total / n):.2f}x the bare calls "
                            f"per image per worker")
                    if w != workers[0]:
                        line += f", throughput {base / wall:.2f}x of {workers[0]} worker(s)"
                    print(line)
                    warm = warm_chunk_seconds(results, at_once)
                    if warm:
                        seconds, images_warm, chunks = warm
                        # each worker spends seconds / images on an image of its steady state, side
                        # by side with the others: w workers finish w images in that time
                        throughput = 60 * w * images_warm / seconds
                        warm_base = warm_base or (w, throughput)
                        line = (f"    warm ({chunks} chunk(s) ending after each worker's first {at_once}): "
                                f"{seconds / images_warm:.2f} s per image per worker = "
                                f"{seconds / images_warm / (bare_total / n):.2f}x the bare calls, {throughput:.1f} images/min")
                        if w != warm_base[0]:
                            line += f" = {throughput / warm_base[1]:.2f}x the throughput of {warm_base[0]} worker(s)"
                        print(line + " (what each of thousands of images costs: no start-up, no merged tables)")


if __name__ == "__main__":
    main()
