"""Tests of the crop classifier: data preparation, networks, checkpoints, train-classifier, classify.

Small generated crops (three visibly different classes) keep the trainings to seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

pytestmark = pytest.mark.torch

torch = pytest.importorskip("torch")

from orgaseg_core.classification.crops import (  # noqa: E402
    Augmentation,
    CropDataset,
    augment_params,
    border_median,
    class_weights,
    learn_input_size,
    normalisation_stats,
    prepare_crop,
    to_unit,
)
from orgaseg_core.classification.networks import (  # noqa: E402
    ARCHITECTURES,
    CHECKPOINT_KEYS,
    build_model,
    load_checkpoint,
    load_weights,
    min_input_size,
)
from orgaseg_core.classification.predict import classify, parse_crop_name  # noqa: E402
from orgaseg_core.classification.train import classification_metrics, confusion_matrix, train_classifier  # noqa: E402
from orgaseg_core.cli import main  # noqa: E402
from orgaseg_core.common.errors import InputFileError, OrgasegError, OutputError  # noqa: E402

CLASSES = ("Bright", "Dark", "Ring")


# --------------------------------------------------------------------------- generated crops

def make_crop(cls: str, rng: np.random.Generator) -> np.ndarray:
    """A grey float crop in [0, 1]: an object of class ``cls`` on a mid-grey background."""
    h, w = (int(v) for v in rng.integers(28, 60, size=2))
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2))
    crop = np.full((h, w), 0.5)
    if cls == "Bright":
        crop[r < 0.7] = 0.9
    elif cls == "Dark":
        crop[r < 0.7] = 0.1
    else:
        crop[(r > 0.5) & (r < 0.75)] = 0.1
    return np.clip(crop + rng.normal(0, 0.03, crop.shape), 0, 1)


def write_crop(path: Path, unit: np.ndarray, kind: int) -> Path:
    """Write a crop as 8-bit grey TIFF, 16-bit grey TIFF or 8-bit RGB PNG (kind 0, 1, 2)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == 0:
        tifffile.imwrite(path.with_suffix(".tif"), np.round(unit * 255).astype(np.uint8))
        return path.with_suffix(".tif")
    if kind == 1:
        tifffile.imwrite(path.with_suffix(".tif"), np.round(unit * 65535).astype(np.uint16))
        return path.with_suffix(".tif")
    rgb = np.repeat(np.round(unit * 255).astype(np.uint8)[..., None], 3, axis=2)
    Image.fromarray(rgb).save(path.with_suffix(".png"))
    return path.with_suffix(".png")


def make_split(root: Path, counts=None, seed=0) -> Path:
    """A classification split: root/<split>/<Class>/img<i>_<k>.tif|png."""
    counts = counts or {"train": 8, "val": 3, "test": 3}
    rng = np.random.default_rng(seed)
    k = 0
    for split, n in counts.items():
        for cls in CLASSES:
            for i in range(n):
                write_crop(root / split / cls / f"{split}{i}_{k + 1}", make_crop(cls, rng), k % 3)
                k += 1
    return root


@pytest.fixture(scope="module")
def split_data(tmp_path_factory) -> Path:
    return make_split(tmp_path_factory.mktemp("split") / "data")


TINY = dict(learning_rates=(1e-3, 3e-3), grid_epochs=1, epochs=2, patience=2, seed=0)


@pytest.fixture(scope="module")
def trained(split_data, tmp_path_factory):
    """A tiny training: 2-setting grid of 1 epoch each, final run of 2 epochs."""
    out = tmp_path_factory.mktemp("model") / "model"
    return train_classifier(split_data, out, **TINY)


# --------------------------------------------------------------------------- array functions

def test_to_unit_scales_by_dtype_range():
    assert to_unit(np.array([[0, 255]], np.uint8)).tolist() == [[0.0, 1.0]]
    assert to_unit(np.array([[0, 65535]], np.uint16)).tolist() == [[0.0, 1.0]]
    np.testing.assert_allclose(to_unit(np.array([[257 * 51]], np.uint16)), 0.2, atol=1e-6)
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 1] = 255  # pure green: luminance 0.7154
    np.testing.assert_allclose(to_unit(rgb), round(0.7154 * 255) / 255, atol=1e-6)
    np.testing.assert_allclose(to_unit(np.array([[0.25, 0.5]], np.float32)), [[0.25, 0.5]])
    np.testing.assert_allclose(to_unit(np.array([[0.0, 127.5]], np.float32)), [[0.0, 0.5]])


def test_prepare_crop_keeps_aspect_and_pads_with_border_median():
    crop = np.full((20, 40), 0.3, np.float32)
    crop[5:15, 10:30] = 0.9                         # object inside a 0.3 background
    out = prepare_crop(crop, 64)
    assert out.shape == (64, 64) and out.dtype == np.float32
    # 20x40 fitted to 32x64 and centred: 16 rows of padding above and below, value 0.3.
    np.testing.assert_allclose(out[:15], 0.3, atol=1e-6)
    np.testing.assert_allclose(out[-15:], 0.3, atol=1e-6)
    bright = out > 0.6
    rows, cols = np.flatnonzero(bright.any(1)), np.flatnonzero(bright.any(0))
    assert rows.size in (16, 17) and cols.size in (32, 33)     # object 10x20 -> 16x32 px (x1.6)
    assert abs(rows.mean() - 31.5) < 1 and abs(cols.mean() - 31.5) < 1
    assert border_median(crop) == pytest.approx(0.3)
    np.testing.assert_allclose(prepare_crop(np.full((7, 300), 0.6), 64), 0.6, atol=1e-6)


def test_augmentation_flip_equals_mirrored_input_and_margins_shrink_the_object():
    rng = np.random.default_rng(0)
    crop = rng.random((30, 50)).astype(np.float32)
    crop[:, :10] = 0.0
    plain = prepare_crop(crop, 64)
    np.testing.assert_allclose(prepare_crop(crop, 64, Augmentation(flip=True)), plain[:, ::-1], atol=1e-5)
    np.testing.assert_allclose(prepare_crop(crop, 64, Augmentation(rot90=2)), plain[::-1, ::-1], atol=1e-5)
    disk = np.full((40, 40), 0.2, np.float32)
    yy, xx = np.mgrid[:40, :40]
    disk[np.hypot(yy - 19.5, xx - 19.5) < 15] = 0.8
    area = (prepare_crop(disk, 64) > 0.5).sum()
    area_margin = (prepare_crop(disk, 64, Augmentation(margins=(0.25, 0.25, 0.25, 0.25))) > 0.5).sum()
    assert area_margin == pytest.approx(area / 1.5 ** 2, rel=0.1)
    bright = prepare_crop(disk, 64, Augmentation(brightness=1.1))
    assert bright.mean() == pytest.approx(1.1 * prepare_crop(disk, 64).mean(), rel=1e-3)  # no clipping: 0.8 * 1.1 < 1
    a = augment_params(np.random.default_rng([1, 2, 3]), 64)
    assert a == augment_params(np.random.default_rng([1, 2, 3]), 64)
    assert -15 <= a.angle <= 15 and 0.9 <= a.scale <= 1.1 and all(0 <= m <= 0.3 for m in a.margins)


def test_learned_input_size_is_median_rounded_to_32_and_clipped():
    assert learn_input_size([40, 50, 90, 100, 300]) == 96
    assert learn_input_size([80, 81, 82]) == 96
    assert learn_input_size([10, 12, 20]) == 64
    assert learn_input_size([900, 1000]) == 224
    with pytest.raises(OrgasegError):
        learn_input_size([])


def test_class_weights_are_inverse_frequency():
    counts = [10, 30, 60]
    weights = class_weights(counts)
    np.testing.assert_allclose(weights, [100 / 30, 100 / 90, 100 / 180])
    np.testing.assert_allclose(weights * counts, 100 / 3)           # every class weighs the same
    assert np.average(weights, weights=counts) == pytest.approx(1.0)  # loss scale unchanged
    np.testing.assert_allclose(class_weights([5, 5]), [1, 1])
    with pytest.raises(OrgasegError):
        class_weights([3, 0])


def test_normalisation_stats_of_prepared_crops():
    mean, std = normalisation_stats([np.full((10, 20), 0.25), np.full((30, 30), 0.75)], 32)
    assert mean == pytest.approx(0.5) and std == pytest.approx(0.25)
    assert normalisation_stats([np.full((5, 5), 0.4)], 32) == (pytest.approx(0.4), 1.0)


def test_dataset_items_are_normalised_and_seeded_by_epoch_and_index():
    rng = np.random.default_rng(0)
    greys = [np.round(make_crop(c, rng) * 255).astype(np.uint8) for c in CLASSES]
    ds = CropDataset(greys, [0, 1, 2], input_size=32, mean=0.5, std=0.25, augment=True, seed=3)
    x, y = ds[1]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and y == 1
    assert torch.equal(ds[1][0], x)
    ds.set_epoch(1)
    assert not torch.equal(ds[1][0], x)
    plain = CropDataset(greys, [0, 1, 2], input_size=32, mean=0.5, std=0.25)
    expected = (prepare_crop(to_unit(greys[0]), 32) - 0.5) / 0.25
    np.testing.assert_allclose(plain[0][0][0].numpy(), expected, atol=1e-6)


def test_metrics_by_hand():
    truth = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 1, 1, 1]
    assert confusion_matrix(truth, pred, 3).tolist() == [[2, 1, 0], [0, 2, 0], [0, 1, 0]]
    m = classification_metrics(truth, pred, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8),
                                   "support": 3}
    assert m["per_class"]["b"]["precision"] == pytest.approx(0.5) and m["per_class"]["b"]["f1"] == pytest.approx(2 / 3)
    assert m["per_class"]["c"]["f1"] == 0.0
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 0) / 3)
    # A class absent from the split and never predicted does not count in the macro average.
    m = classification_metrics([0, 1], [0, 1], ["a", "b", "c"])
    assert m["macro_f1"] == 1.0


# --------------------------------------------------------------------------- networks

@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_every_architecture_builds_and_runs_at_its_minimum_and_the_smallest_learned_size(architecture):
    torch.manual_seed(0)
    model = build_model(architecture, 3)
    size = min_input_size(architecture)
    model.eval()
    with torch.inference_mode():
        for s in (size, 64):
            assert model(torch.randn(2, 1, s, s)).shape == (2, 3)
    model.train()  # BatchNorm in training mode at the smallest size
    model(torch.randn(2, 1, size, size)).sum().backward()


def test_unknown_architecture_lists_the_supported_ones(split_data, tmp_path):
    with pytest.raises(OrgasegError, match="resnet18.*convnext_tiny"):
        build_model("vgg16", 3)
    with pytest.raises(OrgasegError, match="unknown architecture 'alexnet'"):
        train_classifier(split_data, tmp_path / "m", architectures=("alexnet",))
    assert not (tmp_path / "m").exists()


def test_local_rgb_weights_are_summed_to_grey_and_the_head_stays_random(tmp_path):
    import torchvision

    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None, num_classes=1000)
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("resnet18", 3)
    head_before = model.fc.weight.detach().clone()
    summary = load_weights(model, path)
    assert summary["first_conv_adapted"] and summary["head_random"]
    torch.testing.assert_close(model.conv1.weight, reference.conv1.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert torch.equal(model.fc.weight, head_before)
    # Grey input through the adapted conv = the same grey repeated to RGB through the original.
    x = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(model.conv1(x), reference.conv1(x.repeat(1, 3, 1, 1)))
    other = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), other)
    with pytest.raises(InputFileError, match=r"resnet50\.pth: weights do not fit"):
        load_weights(build_model("resnet18", 3), other)


# --------------------------------------------------------------------------- train-classifier

def test_tiny_training_writes_a_self_describing_model_and_reports(trained):
    out = trained.model_out
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "classifier.json", "model.pt", "grid.csv", "history.csv", "report.json",
        "classification_report.csv", "confusion_matrix.png", "reliability.png", "tensorboard",
        "run.json"])
    description = json.loads((out / "classifier.json").read_text())
    assert description["kind"] == "orgaseg-classifier" and description["family"] == "cnn"
    assert description["files"] == ["model.pt"] and description["class_names"] == list(CLASSES)
    assert 0.05 <= description["temperature"] <= 20
    checkpoint = torch.load(out / "model.pt", weights_only=True)
    assert set(CHECKPOINT_KEYS) <= set(checkpoint)
    assert checkpoint["format"] == "orgaseg-classifier" and checkpoint["format_version"] == 1
    assert checkpoint["class_names"] == list(CLASSES)
    assert checkpoint["architecture"] == "resnet18" and checkpoint["in_channels"] == 1
    assert checkpoint["input_size"] == 64  # crops of 28-59 px: median rounds to 32, clipped to 64
    assert 0 < checkpoint["normalisation"]["mean"] < 1 and checkpoint["normalisation"]["std"] > 0
    assert checkpoint["versions"]["torch"] in torch.__version__
    assert checkpoint["arguments"]["learning_rates"] == [1e-3, 3e-3]
    assert checkpoint["metrics"]["chosen_on"] == "val"

    table = pd.read_csv(out / "grid.csv")
    assert list(table["stage"]) == ["family", "cnn grid", "cnn grid"]  # crops: the cnn family only
    assert table.loc[0, "family"] == "cnn" and bool(table.loc[0, "chosen"])
    grid = table[table["stage"] == "cnn grid"]
    assert len(grid) == 2 and grid["chosen"].sum() == 1
    assert sorted(grid["learning_rate"]) == [1e-3, 3e-3] and (grid["epochs"] == 1).all()
    chosen = grid[grid["chosen"]].iloc[0]
    assert chosen["best_val_macro_f1"] == grid["best_val_macro_f1"].max()

    report = json.loads((out / "report.json").read_text())
    assert report["chosen_on"] == "val" and report["report_split"] == "test"
    assert report["family"] == "cnn" and report["source"] == "crops"
    assert report["cnn"]["chosen"]["learning_rate"] == chosen["learning_rate"]
    assert report["test"]["n"] == 9 and report["val"]["n"] == 9
    assert set(report["test"]["per_class"]) == set(CLASSES)
    assert report["counts"]["train"] == {c: 8 for c in CLASSES}
    assert report["cnn"]["class_weights"] == {c: pytest.approx(1.0) for c in CLASSES}
    assert report["cnn"]["epochs_trained"] == len(pd.read_csv(out / "history.csv"))
    calibration = report["calibration"]
    assert calibration["temperature"] == pytest.approx(description["temperature"])
    assert calibration["val_after"]["n"] == 9 and len(calibration["val_after"]["bins"]) == 10
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    table = pd.read_csv(out / "classification_report.csv")
    assert list(table["class"]) == list(CLASSES) + ["macro avg", "weighted avg", "accuracy"]
    assert table.loc[table["class"] == "macro avg", "f1"].item() == pytest.approx(report["test"]["macro_f1"], abs=1e-4)
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = sorted(p.name for p in (out / "tensorboard").iterdir())
    assert len(runs) == 3 and runs[0].startswith("final_resnet18") and runs[1].startswith("grid01")
    for run in runs:
        assert list((out / "tensorboard" / run).rglob("events.out.tfevents.*")), run
    record = json.loads((out / "run.json").read_text())
    assert record["step"] == "train-classifier" and record["status"] == "ok"
    assert "Bright" in trained.summary() and "test" in trained.summary()


def test_tensorboard_holds_scalars_and_the_confusion_matrix(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    final = next((trained.model_out / "tensorboard").glob("final_*"))
    events = EventAccumulator(str(final))
    events.Reload()
    tags = events.Tags()
    assert {"loss/train", "loss/val", "val/macro_f1", "val/accuracy", "learning_rate"} <= set(tags["scalars"])
    assert len(events.Scalars("val/macro_f1")) == trained.epochs_trained
    assert "val/confusion_matrix_best_epoch" in tags["images"]


def test_test_split_never_influences_the_model(trained, split_data, tmp_path, unchanged):
    """Same seed, test labels scrambled: same grid scores, same choice, identical weights."""
    other = tmp_path / "data"
    shutil.copytree(split_data, other)
    test = other / "test"
    (test / "Bright").rename(test / "tmp")
    (test / "Dark").rename(test / "Bright")
    (test / "tmp").rename(test / "Dark")
    check = unchanged(other)
    again = train_classifier(other, tmp_path / "model", **TINY)
    check()
    without_time = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert without_time(again.grid) == without_time(trained.grid)
    assert again.chosen == trained.chosen and again.best_epoch == trained.best_epoch
    assert again.val == trained.val
    first = load_checkpoint(trained.checkpoint).state_dict
    second = load_checkpoint(again.checkpoint).state_dict
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)  # deterministic on the CPU
    assert again.test != trained.test  # the scrambled test split is only reported


def test_training_refuses_a_class_with_one_image(tmp_path, unchanged):
    data = make_split(tmp_path / "data", {"train": 3, "val": 1})
    for f in sorted((data / "train" / "Ring").iterdir())[1:]:
        f.unlink()
    check = unchanged(data)
    with pytest.raises(InputFileError, match=r"train/Ring: class folder holds only one image"):
        train_classifier(data, tmp_path / "m")
    check()
    assert not (tmp_path / "m").exists()


def test_training_refuses_missing_validation_data(tmp_path):
    data = make_split(tmp_path / "data", {"train": 3})
    with pytest.raises(InputFileError, match=r"val: no validation crops.*--val"):
        train_classifier(data, tmp_path / "m")
    (data / "val" / "Bright").mkdir(parents=True)  # an empty val folder is no better
    with pytest.raises(InputFileError, match="no validation crops"):
        train_classifier(data, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_training_refuses_bad_layouts_and_values(tmp_path):
    with pytest.raises(InputFileError, match="no training folder"):
        train_classifier(tmp_path, tmp_path / "m")
    data = make_split(tmp_path / "data", {"train": 2, "val": 1})
    shutil.rmtree(data / "train" / "Dark")
    shutil.rmtree(data / "train" / "Ring")
    with pytest.raises(InputFileError, match="at least 2 class folders"):
        train_classifier(data, tmp_path / "m")
    with pytest.raises(OrgasegError, match="learning rates"):
        train_classifier(data, tmp_path / "m", learning_rates=(0.0,))
    with pytest.raises(OrgasegError, match="one architecture"):
        train_classifier(data, tmp_path / "m", architectures=("resnet18", "resnet50"),
                         weights=tmp_path / "w.pth")
    with pytest.raises(OrgasegError, match="no CUDA|not a valid"):
        train_classifier(data, tmp_path / "m", device="cuda:7" if not torch.cuda.is_available() else "nonsense")
    assert not (tmp_path / "m").exists()


def test_unreadable_training_crops_are_reported_and_skipped(tmp_path):
    data = make_split(tmp_path / "data", {"train": 10, "val": 2}, seed=1)
    bad = data / "train" / "Dark" / "broken.tif"
    bad.write_bytes(b"not a tiff at all")
    result = train_classifier(data, tmp_path / "m", input_size=32, epochs=1, learning_rates=(1e-3,))
    assert [Path(f).name for f, _ in result.unreadable] == ["broken.tif"]
    table = pd.read_csv(tmp_path / "m" / "unreadable.csv")
    assert table["file"].str.endswith("broken.tif").all() and "cannot be read" in table["error"][0]
    assert result.counts["train"]["Dark"] == 10 and result.test is None
    assert json.loads((tmp_path / "m" / "report.json").read_text())["report_split"] == "val"
    grid = pd.read_csv(tmp_path / "m" / "grid.csv")
    assert list(grid["stage"]) == ["family"]  # one setting: no CNN grid search
    for f in sorted((data / "train" / "Dark").iterdir())[:5]:  # 5 of 31 training crops: > 10 %
        f.write_bytes(b"")
    with pytest.raises(OrgasegError, match="cannot be read"):
        train_classifier(data, tmp_path / "m2", input_size=32, epochs=1, learning_rates=(1e-3,))
    assert json.loads((tmp_path / "m2" / "run.json").read_text())["status"] == "failed"


# --------------------------------------------------------------------------- checkpoints

@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_load_checkpoint_errors_name_the_file(trained, tmp_path):
    with pytest.raises(InputFileError, match=r"missing\.pt: model file does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    plain_state = tmp_path / "state.pt"
    torch.save(build_model("resnet18", 3).state_dict(), plain_state)
    with pytest.raises(InputFileError, match=r"state\.pt: is a plain state_dict"):
        load_checkpoint(plain_state)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(trained.checkpoint.read_bytes()[:5000])
    with pytest.raises(InputFileError, match=r"corrupt\.pt: model file is corrupt"):
        load_checkpoint(corrupt)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 definitely not torch" * 10)
    with pytest.raises(InputFileError, match=r"garbage\.pt: model file is corrupt"):
        load_checkpoint(garbage)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "orgaseg-classifier", "model": Path("x")}, pickled)
    with pytest.raises(InputFileError, match=r"pickled\.pt: model file is unsafe \(contains code"):
        load_checkpoint(pickled)
    scripted = tmp_path / "scripted.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(scripted))
    with pytest.raises(InputFileError, match=r"scripted\.pt: model file is a TorchScript model"):
        load_checkpoint(scripted)
    data = torch.load(trained.checkpoint, weights_only=True)
    data["format_version"] = 99
    future = tmp_path / "future.pt"
    torch.save(data, future)
    with pytest.raises(InputFileError, match=r"future\.pt: has checkpoint format version 99"):
        load_checkpoint(future)
    del data["normalisation"]
    data["format_version"] = 1
    torch.save(data, future)
    with pytest.raises(InputFileError, match="lacks the entries normalisation"):
        load_checkpoint(future)
    # descriptions that would give wrong results or huge tensors are refused as invalid
    good = torch.load(trained.checkpoint, weights_only=True)
    for change, message in (
            (lambda d: d["normalisation"].update(mean=float("nan")), "invalid normalisation"),
            (lambda d: d.update(class_names=[d["class_names"][0]] * len(d["class_names"])),
             "names a class more than once"),
            (lambda d: d.update(input_size=100000), "input size 100000 px is beyond"),
            (lambda d: d.update(state_dict=[1, 2]), "state_dict is not a dictionary")):
        data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in good.items()}
        change(data)
        torch.save(data, future)
        with pytest.raises(InputFileError, match=message):
            load_checkpoint(future)


def test_checkpoint_rebuilds_the_trained_network(trained):
    checkpoint = load_checkpoint(trained.checkpoint)
    model = checkpoint.build()
    assert not model.training
    x = torch.randn(2, 1, checkpoint.input_size, checkpoint.input_size)
    with torch.inference_mode():
        assert model(x).shape == (2, len(CLASSES))


# --------------------------------------------------------------------------- classify

def make_objects_folder(root: Path, source: Path) -> Path:
    """An extract-objects-like folder: crops/<stem>_<label>.tif + objects.csv (+ one broken crop)."""
    rows = []
    for k, f in enumerate(sorted(source.rglob("*.*"))):
        cls = f.parent.name
        stem, label = f"plate{k % 2}", k + 1
        name = f"crops/{stem}_{label}.tif"
        (root / "crops").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(root / name, np.asarray(Image.open(f).convert("L")) if f.suffix == ".png"
                         else tifffile.imread(f))
        rows.append({"image": f"{stem}.tif", "stem": stem, "label": label, "crop": name,
                     "area_px": 100 + k, "true_class": cls})
    (root / "crops" / "plate9_99.tif").write_bytes(b"broken")
    rows.append({"image": "plate9.tif", "stem": "plate9", "label": 99, "crop": "crops/plate9_99.tif",
                 "area_px": 1, "true_class": "Dark"})
    pd.DataFrame(rows).to_csv(root / "objects.csv", index=False)
    return root


def test_classify_an_extract_objects_folder(trained, split_data, tmp_path, unchanged):
    objects = make_objects_folder(tmp_path / "objects", split_data / "test")
    check = unchanged(objects)
    result = classify(trained.checkpoint, objects, tmp_path / "pred")
    check()
    table = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    prob_columns = [f"prob_{c}" for c in CLASSES]
    assert list(table.columns[:9]) == ["image", "label", "crop", "predicted_class", "confidence",
                                       "needs_review"] + prob_columns
    assert (table["needs_review"] == (table["confidence"] < 0.6)).all()
    assert {"stem", "area_px", "true_class"} <= set(table.columns)  # objects.csv columns joined
    assert len(table) == 9 and result.n_crops == 10 and result.n_classified == 9
    np.testing.assert_allclose(table[prob_columns].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(table["confidence"], table[prob_columns].max(axis=1))
    assert set(table["predicted_class"]) <= set(CLASSES)
    assert (table["predicted_class"] == [CLASSES[i] for i in table[prob_columns].to_numpy().argmax(1)]).all()
    assert table.set_index("label").loc[1, "image"] == "plate0.tif"
    unreadable = pd.read_csv(tmp_path / "pred" / "unreadable.csv")
    assert list(unreadable["crop"]) == ["crops/plate9_99.tif"]
    record = json.loads((tmp_path / "pred" / "run.json").read_text())
    assert record["status"] == "ok" and record["results"]["classified"] == 9
    assert record["results"]["unreadable"][0]["crop"] == "crops/plate9_99.tif"
    assert "1 crops could not be read" in result.summary()


def test_classify_a_plain_folder_of_crops_parses_names(trained, split_data, tmp_path):
    crops = tmp_path / "crops"
    crops.mkdir()
    first, second = sorted((split_data / "test" / "Dark").iterdir())[:2]
    shutil.copy(first, crops / f"img_a_7{first.suffix}")
    shutil.copy(second, crops / f"odd name{second.suffix}")
    result = classify(trained.checkpoint, crops, tmp_path / "pred", batch_size=1)
    table = pd.read_csv(tmp_path / "pred" / "predictions.csv").sort_values("crop")
    assert list(table["image"]) == ["img_a", "odd name"]
    assert table["label"].iloc[0] == 7 and pd.isna(table["label"].iloc[1])
    assert result.n_classified == 2
    assert parse_crop_name("demo_001.tif_12.tif") == ("demo_001.tif", 12)


def test_classify_fails_when_no_crop_can_be_read_and_guards_the_model_folder(trained, tmp_path):
    crops = tmp_path / "crops"
    crops.mkdir()
    (crops / "a_1.tif").write_bytes(b"")
    (crops / "b_2.png").write_bytes(b"no png")
    with pytest.raises(OrgasegError, match="none of the 2 crops could be read"):
        classify(trained.checkpoint, crops, tmp_path / "pred")
    assert json.loads((tmp_path / "pred" / "run.json").read_text())["status"] == "failed"
    assert len(pd.read_csv(tmp_path / "pred" / "unreadable.csv")) == 2
    with pytest.raises(OutputError, match="model's folder"):
        classify(trained.checkpoint, crops, trained.model_out, overwrite=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="empty: contains no crops"):
        classify(trained.checkpoint, tmp_path / "empty", tmp_path / "p2")
    bad = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(1)}, bad)
    with pytest.raises(InputFileError, match=r"weights\.pt: is a plain state_dict"):
        classify(bad, crops, tmp_path / "p3")
    assert not (tmp_path / "p2").exists() and not (tmp_path / "p3").exists()


# --------------------------------------------------------------------------- CLI

def test_cli_train_and_classify(split_data, tmp_path, capsys):
    code = main(["train-classifier", "--data", str(split_data), "--model-out", str(tmp_path / "m"),
                 "--learning-rates", "1e-3", "--epochs", "1", "--input-size", "32", "--seed", "1"])
    assert code == 0
    assert "train-classifier: 3 classes" in capsys.readouterr().out
    objects = make_objects_folder(tmp_path / "objects", split_data / "val")
    code = main(["classify", "--model", str(tmp_path / "m" / "model.pt"), "--objects", str(objects),
                 "--out", str(tmp_path / "pred"), "--batch-size", "4"])
    assert code == 0
    assert len(pd.read_csv(tmp_path / "pred" / "predictions.csv")) == 9
    assert "classify: 9 of 10 crops classified" in capsys.readouterr().out


def test_cli_errors_and_exit_codes(split_data, tmp_path, capsys):
    assert main(["train-classifier", "--data", str(split_data), "--model-out", str(tmp_path / "m"),
                 "--learning-rates", "1e-3,abc"]) == 2
    assert main(["train-classifier", "--data", str(split_data), "--model-out", str(tmp_path / "m"),
                 "--batch-sizes", "0"]) == 2
    assert main(["train-classifier", "--data", str(split_data), "--model-out", str(tmp_path / "m"),
                 "--architectures", "resnet18,vgg11"]) == 1
    assert "unknown architecture 'vgg11'; supported: resnet18" in capsys.readouterr().err
    assert main(["classify", "--model", str(tmp_path / "none.pt"), "--objects", str(split_data),
                 "--out", str(tmp_path / "p")]) == 1
    assert "none.pt: classifier model does not exist" in capsys.readouterr().err
    assert not (tmp_path / "m").exists() and not (tmp_path / "p").exists()


def test_cli_defaults_match_the_function_defaults():
    import typer.main

    from orgaseg_core import cli
    from orgaseg_core.classification import train as tc

    command = typer.main.get_command(cli.app).commands["train-classifier"]
    defaults = {p.name: p.default for p in command.params}
    assert [a for a in defaults["architectures"].split(",")] == list(tc.DEFAULT_ARCHITECTURES)
    assert [float(v) for v in defaults["learning_rates"].split(",")] == list(tc.DEFAULT_LEARNING_RATES)
    assert [int(v) for v in defaults["batch_sizes"].split(",")] == list(tc.DEFAULT_BATCH_SIZES)
    assert [float(v) for v in defaults["weight_decays"].split(",")] == list(tc.DEFAULT_WEIGHT_DECAYS)
    assert (defaults["grid_epochs"], defaults["epochs"], defaults["patience"]) == (
        tc.DEFAULT_GRID_EPOCHS, tc.DEFAULT_EPOCHS, tc.DEFAULT_PATIENCE)


def test_workers_do_not_change_the_model_and_val_may_lack_a_class(tmp_path):
    data = make_split(tmp_path / "data", {"train": 3, "val": 2}, seed=2)
    shutil.rmtree(data / "val" / "Ring")                       # a class missing from val
    write_crop(data / "val" / "Unknown" / "u_1", make_crop("Dark", np.random.default_rng(0)), 0)
    settings = dict(input_size=32, epochs=2, learning_rates=(1e-3,), batch_sizes=(4,), seed=4)
    a = train_classifier(data, tmp_path / "a", num_workers=0, **settings)
    b = train_classifier(data, tmp_path / "b", num_workers=2, **settings)
    first, second = load_checkpoint(a.checkpoint).state_dict, load_checkpoint(b.checkpoint).state_dict
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert a.class_names == list(CLASSES) and a.val["per_class"]["Ring"]["support"] == 0
    assert a.val["n"] == 4                                      # the Unknown crop is left out
    assert any("'Unknown' is not among the training classes" in w for w in a.warnings)


def test_training_starts_from_local_weights(tmp_path):
    import torchvision

    data = make_split(tmp_path / "data", {"train": 2, "val": 1}, seed=3)
    torch.manual_seed(5)
    reference = torchvision.models.resnet18(weights=None)
    weights = tmp_path / "w" / "resnet18.pth"
    weights.parent.mkdir()
    torch.save(reference.state_dict(), weights)
    # A vanishing learning rate keeps the weights where they started.
    result = train_classifier(data, tmp_path / "m", weights=weights, input_size=32, epochs=1,
                              learning_rates=(1e-12,), weight_decays=(0.0,))
    state = load_checkpoint(result.checkpoint).state_dict
    torch.testing.assert_close(state["conv1.weight"], reference.conv1.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(state["layer3.0.conv1.weight"], reference.layer3[0].conv1.weight)
    assert json.loads((tmp_path / "m" / "run.json").read_text())["arguments"]["weights"] == str(weights)
    with pytest.raises(OutputError, match="holds the weights file"):
        train_classifier(data, weights.parent, weights=weights, overwrite=True)
    with pytest.raises(InputFileError, match=r"resnet18\.pth: weights do not fit"):
        train_classifier(data, tmp_path / "m2", architectures=("mobilenet_v3_small",), weights=weights)
    assert not (tmp_path / "m2").exists()
