"""Fault suite (issue 13): interrupted runs end with the right exit status and nothing half-written.

Interrupts are tested with a real child process and a real signal: ``orgaseg demo-data`` with
many images is a step that is sure to be running when the signal arrives.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orgaseg_core.common.outputs import LOCK_NAME, atomic_path, step_run
from orgaseg_core.pipelines.processes import StepProcessError, run_step_process


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "orgaseg_core", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_files(folder: Path, n: int, timeout: float = 120) -> None:
    """Until ``folder`` holds ``n`` files: the step is surely in its loop, writing."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if folder.is_dir() and len(list(folder.iterdir())) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{folder} did not get {n} files within {timeout} s")


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".part" in p.name]


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_a_step_with_its_exit_status_and_an_interrupted_record(tmp_path, signum, status):
    out = tmp_path / "demo"
    process = start("demo-data", "--out", out, "--n-images", 2000, "--size", "480x640")
    wait_for_files(out / "images", 3)
    process.send_signal(signum)
    _stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == status, stderr[-2000:]
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "interrupted" and record["error"] == signal.Signals(signum).name
    assert f"interrupted by {signal.Signals(signum).name}" in stderr
    assert temporaries(out) == []
    assert len(list((out / "images").iterdir())) < 2000


def test_an_exit_code_raised_inside_a_command_is_the_process_exit_status(tmp_path):
    """click returns (does not raise) an Exit raised inside a command without standalone mode;
    cli.main must pass that code on instead of exiting 0."""
    import typer

    from orgaseg_core import cli

    @cli.app.command("fault-exit-probe", hidden=True)
    def _probe() -> None:
        raise typer.Exit(3)

    try:
        assert cli.main(["fault-exit-probe"]) == 3
    finally:
        cli.app.registered_commands = [c for c in cli.app.registered_commands
                                       if c.name != "fault-exit-probe"]


def test_interrupt_inside_a_step_writes_interrupted_and_removes_the_temporary_file(tmp_path):
    from orgaseg_core.common.errors import Interrupted

    out = tmp_path / "out"
    with pytest.raises(Interrupted):
        with step_run("probe", out, {}):
            with atomic_path(out / "table.csv") as tmp:
                tmp.write_text("half")
                raise Interrupted(signal.SIGTERM)
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]


def test_overwrite_removes_temporaries_of_a_killed_run(tmp_path):
    out = tmp_path / "out"
    (out / "crops").mkdir(parents=True)
    stale = [out / ".objects.csv.k2j4l1.part.csv", out / "crops" / ".a_1.tif.x9.part.tif"]
    for path in stale:
        path.write_text("left by kill -9")
    (out / "keep.part.txt").write_text("a user's file, not one of ours")
    with step_run("probe", out, {}, overwrite=True):
        pass
    assert not any(p.exists() for p in stale)
    assert (out / "keep.part.txt").exists()


def test_a_child_step_that_is_stopped_fails_the_pipeline(tmp_path):
    """analyze and example run segment/classify as children: a child killed on its own must not
    let them go on as if it had finished (it used to exit 0 with an empty summary)."""
    out = tmp_path / "demo"
    options = ["--out", out, "--n-images", 2000, "--size", "480x640"]
    import threading

    def kill_child_when_running():
        wait_for_files(out / "images", 3)
        found = subprocess.run(["pgrep", "-f", f"orgaseg_core demo-data --out {out}"],
                               capture_output=True, text=True).stdout.split()
        for pid in found:
            subprocess.run(["kill", "-TERM", pid])

    killer = threading.Thread(target=kill_child_when_running)
    killer.start()
    with pytest.raises(StepProcessError, match="demo-data was stopped before it finished "
                                               r"\(exit status 143\)"):
        run_step_process("demo-data", options, out=out)
    killer.join()
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"


def test_one_run_per_output_folder(tmp_path):
    """A second run into a folder that a running step writes to is refused, also with
    --overwrite (two runs used to mix 1.0- and 0.5-scale images under one run.json)."""
    out = tmp_path / "demo"
    first = start("demo-data", "--out", out, "--n-images", 2000, "--size", "480x640")
    try:
        wait_for_files(out / "images", 2)
        second = start("demo-data", "--out", out, "--n-images", 2, "--overwrite")
        _stdout, stderr = second.communicate(timeout=120)
        assert second.returncode == 1
        assert "another orgaseg run is writing to this folder (step demo-data, pid" in stderr
        assert f"pid {first.pid} " in stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 143
    assert not (out / LOCK_NAME).exists()  # released by the interrupted run


def test_a_stale_lock_is_reported_and_taken_over_with_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    import platform

    (out / LOCK_NAME).write_text(json.dumps({"pid": int(gone), "host": platform.node(),
                                             "step": "preprocess", "started": "earlier"}))
    from orgaseg_core.common.errors import OutputError

    with pytest.raises(OutputError, match="ended without releasing it .step preprocess, pid"):
        with step_run("probe", out, {}):
            pass
    with step_run("probe", out, {}, overwrite=True):
        assert json.loads((out / LOCK_NAME).read_text())["step"] == "probe"
    assert not (out / LOCK_NAME).exists() and (out / "run.json").is_file()


def test_files_written_together_are_whole_or_absent(tmp_path):
    from orgaseg_core.common.errors import Interrupted
    from orgaseg_core.common.outputs import whole_or_absent, write_text

    paths = [tmp_path / "a.tif", tmp_path / "a.geojson", tmp_path / "a_objects.csv"]
    with pytest.raises(Interrupted):
        with whole_or_absent(*paths):
            write_text(paths[0], "labels")
            write_text(paths[1], "outlines")
            raise Interrupted(signal.SIGINT)  # before the table
    assert list(tmp_path.iterdir()) == []
    with whole_or_absent(*paths):
        for path in paths:
            write_text(path, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.geojson", "a.tif", "a_objects.csv"]


def test_interrupted_sort_crops_move_lists_every_moved_file(tmp_path, monkeypatch):
    import shutil

    import numpy as np
    import pandas as pd
    import tifffile

    from orgaseg_core.common.errors import Interrupted
    from orgaseg_core.data import sort_crops as module

    crops = tmp_path / "crops"
    crops.mkdir()
    for i in range(6):
        tifffile.imwrite(crops / f"img.tifAnnotation (Cyst)_{i}.tif", np.zeros((3, 3), np.uint8))
    real_move, moved = shutil.move, []

    def move_three_then_stop(src, dst):
        if len(moved) == 3:
            raise Interrupted(signal.SIGTERM)
        moved.append(src)
        return real_move(src, dst)

    monkeypatch.setattr(module.shutil, "move", move_three_then_stop)
    with pytest.raises(Interrupted):
        module.sort_crops(crops, tmp_path / "sorted", move=True)
    listed = pd.read_csv(tmp_path / "sorted" / "sorted.csv")
    assert len(listed) == 3
    assert all((tmp_path / "sorted" / d).is_file() for d in listed["destination"])
    assert len(list(crops.iterdir())) == 3  # the others were not touched
    assert json.loads((tmp_path / "sorted" / "run.json").read_text())["status"] == "interrupted"


def test_preprocess_skips_bad_images_reports_them_and_goes_on(tmp_path):
    """Zero-byte, truncated, mislabelled, z-stack and too-many-channel files: the good images
    are preprocessed, every bad one is named in failed.csv and run.json, and the exit status is 1."""
    import numpy as np
    import pandas as pd
    import tifffile

    images = tmp_path / "images"
    images.mkdir()
    tifffile.imwrite(images / "good1.tif", np.full((40, 50), 100, np.uint8))
    tifffile.imwrite(images / "good2.tif", np.full((40, 50), 120, np.uint8))
    (images / "empty.tif").write_bytes(b"")
    data = (images / "good1.tif").read_bytes()
    (images / "truncated.tif").write_bytes(data[: len(data) // 3])
    (images / "notreally.png").write_text("this is text, not a PNG")
    tifffile.imwrite(images / "zstack.tif", np.zeros((5, 40, 50), np.uint8))
    tifffile.imwrite(images / "channels.tif", np.zeros((40, 50, 7), np.uint8), photometric="minisblack",
                     planarconfig="contig")
    done = subprocess.run([sys.executable, "-m", "orgaseg_core", "preprocess", "--images", images,
                           "--out", tmp_path / "out"], capture_output=True, text=True)
    assert done.returncode == 1, done.stderr[-2000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "images").iterdir()) == ["good1.tif", "good2.tif"]
    failed = pd.read_csv(out / "failed.csv")
    assert sorted(failed["file"]) == ["channels.tif", "empty.tif", "notreally.png", "truncated.tif",
                                      "zstack.tif"]
    assert all(str(images) in error for error in failed["error"])
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "failed" and len(record["results"]["failed"]) == 5
    assert "2 image/mask pairs" not in done.stdout and "5 images FAILED" in done.stdout
    assert done.stderr.strip().splitlines()[-1].startswith("error: preprocess: 5 of 7 image(s)")


@pytest.mark.parametrize("args", [
    ["preprocess", "--images", "{tmp}", "--out", "{tmp}/o", "--tiles", "0x2"],
    ["split", "--data", "{tmp}", "--out", "{tmp}/o", "--mode", "segmentation", "--train", "0.5",
     "--val", "0.1", "--test", "0.1"],
    ["split", "--data", "{tmp}", "--out", "{tmp}/o", "--mode", "segmentation", "--train", "nan"],
    ["split", "--data", "{tmp}", "--out", "{tmp}/o", "--mode", "segmentation", "--seed", "-5"],
    ["split", "--data", "{tmp}", "--out", "{tmp}/o", "--mode", "classification", "--groups", "tiles"],
    ["segment", "--model", "{tmp}", "--images", "{tmp}", "--out", "{tmp}/o", "--prob-thresh", "5"],
    ["classify", "--model", "{tmp}", "--objects", "{tmp}", "--out", "{tmp}/o", "--device", "tpu"],
], ids=["tiles-0x2", "ratios-sum", "ratio-nan", "seed-negative", "groups-tiles-classification",
     "prob-thresh-5", "device-tpu"])
def test_out_of_range_option_values_are_usage_errors(tmp_path, args):
    """Exit status 2 and one 'error:' line, like a value of the wrong type; checked before any
    input is read (the folders here do not hold what the steps need)."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    done = subprocess.run([sys.executable, "-m", "orgaseg_core", *args], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()


def _tiny_tiff(path: Path, width: int, height: int) -> None:
    """A ~120-byte TIFF whose header declares width x height 8-bit pixels (one byte of data)."""
    import struct

    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
               (273, 4, 8), (277, 3, 1), (278, 4, height), (279, 4, 1)]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        ifd += (struct.pack("<HHIHH", tag, kind, 1, value, 0) if kind == 3
                else struct.pack("<HHII", tag, kind, 1, value))
    path.write_bytes(b"II*\x00" + struct.pack("<I", 9) + b"\x00" + ifd + struct.pack("<I", 0))


def test_a_huge_declared_size_is_refused_before_decoding(tmp_path, monkeypatch):
    import resource

    from orgaseg_core.common.errors import InputFileError
    from orgaseg_core.common.images import read_image, read_image_shape

    bomb = tmp_path / "bomb.tif"
    _tiny_tiff(bomb, 200000, 200000)
    assert bomb.stat().st_size < 200
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for reader in (read_image, read_image_shape):
        with pytest.raises(InputFileError, match=r"bomb.tif: header declares 200000x200000.* more than "
                                                 r"the limit of 1,073,741,824"):
            reader(bomb)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # kB: nothing big
    monkeypatch.setenv("ORGASEG_MAX_PIXELS", str(10 ** 11))
    assert read_image_shape(bomb) == (200000, 200000)  # the limit can be raised


def test_stacks_complex_and_not_finite_images_are_refused(tmp_path):
    import numpy as np
    import tifffile

    from orgaseg_core.common.errors import InputFileError
    from orgaseg_core.common.images import read_image

    tifffile.imwrite(tmp_path / "z.tif", np.zeros((3, 20, 30), np.uint8), imagej=True,
                     metadata={"axes": "ZYX"})
    with pytest.raises(InputFileError, match=r"z.tif: is a stack of 3 planes \(axes ZYX\)"):
        read_image(tmp_path / "z.tif")
    nan = np.ones((20, 30), np.float32)
    nan[3, 4] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", nan)
    with pytest.raises(InputFileError, match="nan.tif: holds 1 pixel values that are NaN or infinite"):
        read_image(tmp_path / "nan.tif")
    tifffile.imwrite(tmp_path / "complex.tif", np.ones((20, 30), np.complex64))
    with pytest.raises(InputFileError, match="complex.tif: holds complex numbers"):
        read_image(tmp_path / "complex.tif")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((20, 30, 3), np.uint8), photometric="rgb")
    assert read_image(tmp_path / "rgb.tif").shape == (20, 30, 3)  # colour samples still read


def test_a_grey_image_given_as_a_mask_is_refused(tmp_path):
    import numpy as np
    import tifffile

    from orgaseg_core.common.errors import InputFileError
    from orgaseg_core.common.images import read_labels

    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "photo.tif", rng.integers(90, 160, (60, 80), dtype=np.uint8))
    with pytest.raises(InputFileError, match="photo.tif: looks like a grey image, not a label image"):
        read_labels(tmp_path / "photo.tif")
    labels = np.zeros((60, 80), np.uint16)
    labels[5:20, 5:30], labels[30:55, 40:75] = 1, 2
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    assert read_labels(tmp_path / "labels.tif").max() == 2


def test_option_values_that_imply_huge_images_are_refused_before_allocation(tmp_path):
    import numpy as np

    from orgaseg_core.common.errors import OptionError
    from orgaseg_core.segmentation.predict import network_input

    done = subprocess.run([sys.executable, "-m", "orgaseg_core", "demo-data", "--out", tmp_path / "d",
                           "--size", "100000x100000"], capture_output=True, text=True)
    assert done.returncode == 2 and "would need an image of 10,000,000,000 pixels" in done.stderr
    assert not (tmp_path / "d").exists()
    # --image-scale 1e-7 with a model at scale 0.5: a 100x100 image x 5,000,000 per side
    with pytest.raises(OptionError, match="resized by 5e\\+06 for the model .--image-scale too small"):
        network_input(np.zeros((100, 100), np.float32), 0.5 / 1e-7, (1.0, 99.8))


def test_crop_paths_outside_the_objects_folder_are_refused(tmp_path):
    import pandas as pd

    from orgaseg_core.classification.predict import collect_crops
    from orgaseg_core.common.errors import InputFileError

    objects = tmp_path / "objects"
    (objects / "crops").mkdir(parents=True)
    (tmp_path / "secret.tif").write_bytes(b"x")
    pd.DataFrame({"image": ["a.tif"], "stem": ["a"], "label": [1],
                  "crop": ["../secret.tif"]}).to_csv(objects / "objects.csv", index=False)
    with pytest.raises(InputFileError, match=r"objects.csv: line 2: crop '../secret.tif' points outside"):
        collect_crops(objects)


def test_file_system_errors_on_the_output_side_are_one_line(tmp_path):
    """Name too long, a folder where a file must be: one 'error: <file>: <problem>' line, exit 1."""
    def run(*args):
        return subprocess.run([sys.executable, "-m", "orgaseg_core", *map(str, args)],
                              capture_output=True, text=True)

    done = run("demo-data", "--out", tmp_path / ("x" * 300), "--n-images", 1, "--size", "128x160")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: ") and "File name too long" in done.stderr
    out = tmp_path / "out"
    (out / "run.json").mkdir(parents=True)  # a folder where run.json must go
    done = run("demo-data", "--out", out, "--n-images", 1, "--size", "128x160", "--overwrite")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "run.json" in last and "Is a directory" in last


def test_class_maps_that_cannot_be_used_are_refused_before_anything_is_written(tmp_path):
    from orgaseg_core.common.classes import UnsafeClassNameError, load_class_map
    from orgaseg_core.common.errors import InputFileError

    latin1 = tmp_path / "map.csv"
    latin1.write_bytes("Zyste,Cyst\nBl\xe4schen,Cyst\n".encode("latin-1"))
    with pytest.raises(InputFileError, match="map.csv: class map is not UTF-8 text"):
        load_class_map(latin1)
    deep = tmp_path / "deep.json"
    deep.write_text("{" + '"a": {' * 50_000 + "}" * 50_001)
    with pytest.raises(InputFileError, match="deep.json: class map JSON is nested too deeply"):
        load_class_map(deep)
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"a": {"b": "c"}}))
    with pytest.raises(InputFileError, match="must be an object"):
        load_class_map(nested)
    long = tmp_path / "long.json"
    long.write_text(json.dumps({"cyst": "C" * 300}))
    with pytest.raises(UnsafeClassNameError, match="300 bytes long"):
        load_class_map(long)


@pytest.mark.parametrize("config_change, meta_change, message", [
    ({"n_rays": "abc"}, {}, "config.json: has a missing or invalid entry: n_rays must be a whole number"),
    ({"grid": "2x2"}, {}, "config.json: has a missing or invalid entry"),
    ({"n_dim": [2]}, {}, "config.json: is a [2]D StarDist model"),
    ({}, {"preprocessing": "yes"}, "orgaseg_model.json: has a missing or invalid entry: preprocessing"),
    ({}, {"preprocessing": {"remove_vignette": "no"}}, "orgaseg_model.json: has a missing or invalid entry"),
], ids=["n_rays-text", "grid-text", "n_dim-list", "preprocessing-text", "preprocessing-value-text"])
def test_model_folders_with_wrong_types_are_one_clear_error(tmp_path, config_change, meta_change, message):
    from orgaseg_core.common.errors import InputFileError
    from orgaseg_core.segmentation.model import check_model_folder

    model = tmp_path / "model"
    model.mkdir()
    config = {"n_dim": 2, "n_rays": 32, "grid": [2, 2], "n_channel_in": 1, **config_change}
    meta = {"kind": "orgaseg-stardist2d", "format_version": 1, "norm_percentiles": [1, 99.8],
            "scale": 0.5, "n_rays": 32, "grid": [2, 2], "preprocessing": {"remove_vignette": True},
            **meta_change}
    (model / "config.json").write_text(json.dumps(config))
    (model / "orgaseg_model.json").write_text(json.dumps(meta))
    (model / "weights_best.h5").write_bytes(b"not read here")
    with pytest.raises(InputFileError) as info:
        check_model_folder(model)
    assert message in str(info.value)


def test_an_unreadable_geojson_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    """A GeoJSON the user may not read (mode 000; root reads anything, so the refusal is
    simulated): one error line naming the file, exit status 1, no mask written."""
    from orgaseg_core import cli

    geojsons, images = tmp_path / "geojsons", tmp_path / "images"
    geojsons.mkdir()
    images.mkdir()
    secret = geojsons / "a.geojson"
    secret.write_text('{"type": "FeatureCollection", "features": []}')
    import numpy as np
    import tifffile

    tifffile.imwrite(images / "a.tif", np.zeros((32, 32), np.uint8))
    real = Path.read_bytes

    def refuse(self):
        if self == secret:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    status = cli.main(["annotations-to-masks", "--annotations", str(geojsons), "--images", str(images),
                       "--out", str(tmp_path / "masks")])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err
    assert any(line.startswith("error: ") and str(secret) in line and "Permission denied" in line
               for line in err.splitlines()), err
    assert not (tmp_path / "masks" / "a.tif").exists()
