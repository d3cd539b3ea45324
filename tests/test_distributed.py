"""analyze on Dask workers: chunks, a given scheduler, resume after an interrupt, a killed worker.

The models are the fastest of each step (a pixel forest, the measurement classifier: seconds on
a CPU), trained once for the module; what is checked is how the work is spread and merged, so
every run is compared with one uninterrupted single-worker run of the same images.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from orgaseg_core import steps

psutil = pytest.importorskip("psutil")  # installed with dask.distributed

N_IMAGES = 6


def _cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orgaseg_core", *map(str, args)], capture_output=True,
                          text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Images, a forest segmentation model and a measurement classifier, and a reference
    analysis of the images (one worker, its default two chunks)."""
    root = tmp_path_factory.mktemp("distributed")
    steps.demo_data(root / "data", n_images=6, seed=21, size=(360, 480))
    steps.annotations_to_masks(root / "data" / "geojsons", root / "data" / "images", root / "masks")
    steps.preprocess(root / "data" / "images", root / "pre", masks=root / "masks")
    steps.split(root / "pre", root / "split", mode="segmentation", train=0.67, val=0.33, test=0.0, seed=0)
    for step, options in (
            ("train-segmentation", ["--data", root / "split", "--model-out", root / "seg", "--backend", "forest",
                                    "--n-trees", 10]),
            ("train-classifier", ["--images", root / "data" / "images", "--masks", root / "masks",
                                  "--model-out", root / "classifier", "--val-fraction", 0.34,
                                  "--test-fraction", 0.34, "--families", "measurements", "--n-trees", 20])):
        done = _cli(step, *options)
        assert done.returncode == 0, done.stderr[-3000:]
    steps.demo_data(root / "new", n_images=N_IMAGES, seed=22, size=(360, 480))
    images = root / "new" / "images"
    reference = root / "reference"
    done = _cli(*command(root, images, reference), "--workers", 1)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, images, reference


def command(root: Path, images: Path, out: Path) -> list:
    return ["analyze", "--segmentation-model", root / "seg", "--classifier", root / "classifier",
            "--images", images, "--out", out]


def tables(out: Path) -> dict[str, pd.DataFrame]:
    """The merged tables of an analysis, in a comparable form."""
    read = {name: pd.read_csv(out / name, dtype={"stem": str, "image": str})
            for name in ("objects.csv", "summary.csv", "objects/objects.csv", "objects/skipped.csv",
                         "classification/predictions.csv")}
    return read


def assert_same_analysis(out: Path, reference: Path, overlay: str | None = ".png") -> None:
    mine, theirs = tables(out), tables(reference)
    for name in theirs:
        pd.testing.assert_frame_equal(mine[name], theirs[name], check_exact=False, rtol=1e-9, obj=name)
    stems = sorted(theirs["summary.csv"]["stem"])
    for folder, suffix in (("qupath", ".geojson"), ("overlays", overlay), ("segmentation", ".tif")):
        if suffix is None:
            assert not (out / folder).exists()
            continue
        # the overlays folder holds the overlays of the chosen format only
        found = (out / folder).iterdir() if folder == "overlays" else (out / folder).glob(f"*{suffix}")
        assert sorted(p.name for p in found) == [s + suffix for s in stems]
    crops = sorted(p.name for p in (out / "objects" / "crops").iterdir())
    assert crops == sorted(p.name for p in (reference / "objects" / "crops").iterdir())
    assert len(list((out / "progress" / "images").glob("*.json"))) == len(stems)
    assert not (out / "chunks").exists()
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "ok" and set(record["results"]["steps"]) == {"segment", "extract-objects",
                                                                           "classify"}


def test_reference_analysis_found_and_classified_objects(setup):
    _, _, reference = setup
    summary = pd.read_csv(reference / "summary.csv")
    assert len(summary) == N_IMAGES and summary["classified"].sum() > 3 * N_IMAGES
    record = json.loads((reference / "run.json").read_text())
    # one worker running two chunks at once by default: the images shared out over the two
    chunks = record["results"]["chunks"]
    assert sorted(c["published"] for c in chunks) == [N_IMAGES // 2, N_IMAGES // 2]


def _wait_for(condition, timeout: float = 300.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_an_interrupted_analysis_resumes_with_only_the_images_left(setup, tmp_path):
    """Ctrl-C after the first chunk: exit 130, run.json 'interrupted'; the same command again
    (chunks of another size, and the workers of a given scheduler: they only spread the work)
    does only the other images (the records of the first are not rewritten) and ends with the
    same tables. The first run takes its chunks one at a time, so that the interrupt reliably
    comes before the last: two chunks at once end within moments of each other."""
    root, images, reference = setup
    out = tmp_path / "resumed"
    records = out / "progress" / "images"
    args = [*command(root, images, out), "--workers", 1]
    process = subprocess.Popen([sys.executable, "-m", "orgaseg_core", *map(str, args), "--chunk-size", "2",
                                "--chunks-per-worker", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: records.is_dir() and len(list(records.glob("*.json"))) >= 2 or process.poll() is not None,
              what="two completion records")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    before = {p.name: p.stat().st_mtime_ns for p in records.glob("*.json")}
    assert 2 <= len(before) < N_IMAGES
    # the rest on workers this run did not start: the --scheduler route, the same code
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        again = _cli(*args, "--chunk-size", N_IMAGES, "--scheduler", cluster.scheduler_address)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming the unfinished analysis in {out}: {len(before)} of {N_IMAGES} image(s) already done" \
        in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in records.glob("*.json") if p.name in before} == before
    assert_same_analysis(out, reference)
    # finished: the same command again is refused, as is a rerun with other arguments
    finished = _cli(*args)
    assert finished.returncode == 1 and "holds a finished analysis" in finished.stderr


def test_a_rerun_with_other_arguments_does_not_mix_results(setup, tmp_path):
    root, images, _ = setup
    out = tmp_path / "mixed"
    (out / "progress").mkdir(parents=True)
    from orgaseg_core.pipelines.progress import write_plan

    write_plan(out, {"images": str(images), "min_area": 0})
    done = _cli(*command(root, images, out), "--min-area", 50)
    assert done.returncode == 1
    assert "holds an unfinished analysis with other arguments" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_killed_worker_costs_only_its_chunks(setup, tmp_path):
    """SIGKILL to a Dask worker process once it has a warm step process: the chunks it runs (two
    at once by default) run again on a new worker, its step processes die with the worker, and
    the result is as if nothing happened."""
    root, images, reference = setup
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "orgaseg_core",
                                *map(str, [*command(root, images, out), "--workers", 2, "--chunk-size", 2])],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    me = psutil.Process(process.pid)
    killed = {}

    def kill_a_worker_in_a_step() -> bool:
        if process.poll() is not None:
            return True
        for child in me.children(recursive=True):
            try:
                line = child.cmdline()  # a warm step process: python -m orgaseg_core --warm-step-server <step>
                if "orgaseg_core" in line and ("segment" in line or "classify" in line):
                    worker = child.parent()
                    if worker is not None and worker.pid != process.pid:
                        killed.update(worker=worker.pid, step=child.pid)
                        worker.send_signal(signal.SIGKILL)
                        return True
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return False

    _wait_for(kill_a_worker_in_a_step, what="a worker running a step")
    _, stderr = process.communicate(timeout=600)
    assert killed, "no worker was running a step"
    assert process.returncode == 0, stderr[-3000:]
    assert not psutil.pid_exists(killed["step"]) or psutil.Process(killed["step"]).status() == "zombie"
    # two workers, three chunks of two images, the killed worker's run again: as if nothing happened
    record = json.loads((out / "run.json").read_text())
    assert sorted(c["chunk"] for c in record["results"]["chunks"]) == [0, 1, 2]
    assert all(len(runs) == 3 for runs in record["results"]["steps"].values())
    assert_same_analysis(out, reference)


def test_a_worker_runs_its_chunks_in_one_warm_process_per_step(setup, tmp_path):
    """Three chunks on one worker: each step runs in one process that served them in turn (its
    framework imported and its model loaded once), and the tables are those of one chunk."""
    root, images, reference = setup
    out = tmp_path / "warm"
    done = _cli(*command(root, images, out), "--workers", 1, "--chunk-size", 2)
    assert done.returncode == 0, done.stderr[-3000:]
    chunks = sorted(json.loads((out / "run.json").read_text())["results"]["chunks"], key=lambda c: c["chunk"])
    assert len(chunks) == 3
    for step in ("segment", "classify"):
        served = [(c["servers"][step]["pid"], c["servers"][step]["request"]) for c in chunks]
        assert len({pid for pid, _ in served}) == 1, served
        assert sorted(n for _, n in served) == [1, 2, 3]
    assert_same_analysis(out, reference)
    # two chunks at once (the default): one segments while the other is cut out, classified, written
    assert _overlapping(chunks), [c["spans"] for c in chunks]
    # ended with the run
    assert not any(psutil.pid_exists(c["servers"][s]["pid"]) and
                   psutil.Process(c["servers"][s]["pid"]).status() != "zombie"
                   for c in chunks for s in ("segment", "classify"))


def _overlapping(chunks: list[dict]) -> bool:
    """Whether any two chunks ran at the same time (their spans of segment to publish)."""
    spans = sorted((min(a for a, _ in c["spans"].values()), max(b for _, b in c["spans"].values()))
                   for c in chunks)
    return any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))


def test_chunks_one_after_another_give_the_same_analysis(setup, tmp_path):
    """--chunks-per-worker 1: each chunk starts when the one before has ended, the warm processes
    serve them in turn, and the tables are those of the overlapping chunks."""
    root, images, reference = setup
    out = tmp_path / "serial"
    done = _cli(*command(root, images, out), "--workers", 1, "--chunk-size", 2, "--chunks-per-worker", 1)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "run.json").read_text())
    chunks = record["results"]["chunks"]
    assert len(chunks) == 3 and not _overlapping(chunks), [c["spans"] for c in chunks]
    assert all(c["servers"][s]["waited"] < 1.0 for c in chunks for s in ("segment", "classify"))
    assert record["arguments"]["chunks_per_worker"] == 1
    assert_same_analysis(out, reference)


def test_overlays_as_jpeg_or_none_leave_the_tables_unchanged(setup, tmp_path):
    """--overlays jpeg writes <stem>.jpg (the PNG's picture up to JPEG's rounding), --overlays none
    no overlay; the tables, QuPath files and the report's links follow."""
    import numpy as np
    from PIL import Image

    root, images, reference = setup
    for fmt, suffix in (("jpeg", ".jpg"), ("none", None)):
        out = tmp_path / fmt
        done = _cli(*command(root, images, out), "--workers", 1, "--overlays", fmt)
        assert done.returncode == 0, done.stderr[-3000:]
        assert_same_analysis(out, reference, overlay=suffix)
        report = (out / "report.html").read_text()
        assert json.loads((out / "run.json").read_text())["arguments"]["overlays"] == fmt
        if suffix is None:
            assert "no overlay" in report and "overlays/" not in report
            continue
        for png in sorted((reference / "overlays").glob("*.png")):
            jpeg = out / "overlays" / f"{png.stem}.jpg"
            with Image.open(jpeg) as picture:
                assert picture.format == "JPEG"
                mine = np.asarray(picture.convert("RGB"), dtype=np.float64)
            theirs = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64)
            assert mine.shape == theirs.shape and np.abs(mine - theirs).mean() < 3.0
            assert f"overlays/{png.stem}.jpg" in report


def test_worker_options_are_checked_before_any_work(setup, tmp_path):
    root, images, _ = setup
    for options in (("--workers", "0"), ("--workers", "many"), ("--chunk-size", "0"), ("--overlays", "gif"),
                    ("--chunks-per-worker", "0"),
                    ("--chunks-per-worker", "2", "--scheduler", "tcp://127.0.0.1:1")):
        done = _cli(*command(root, images, tmp_path / "never"), *options)
        assert done.returncode == 2, (options, done.stderr[-2000:])
    assert not (tmp_path / "never").exists()
