"""train-classifier from annotated images: every family trains, is chosen on validation, is
calibrated, and loads in classify and analyze; the CNN's stability measures; pretrained weights
from torchvision's cache, offline.

Imports torch: runs in the torch pytest process (marker ``torch``), never beside TensorFlow.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch", reason="classification extra (torch) not installed")
pytest.importorskip("skops", reason="the measurement classifier needs skops")

from orgaseg_core.classification.model import load_classifier  # noqa: E402
from orgaseg_core.classification.train import (  # noqa: E402
    FINAL_LR_FRACTION,
    lr_factor,
    recompute_batchnorm,
    train_classifier,
    warmup_steps,
)
from orgaseg_core.common.errors import InputFileError, OrgasegError  # noqa: E402

pytestmark = pytest.mark.torch

#: A CNN small and short enough for a test (seconds).
TINY_CNN = dict(input_size=32, epochs=1, grid_epochs=1, learning_rates=(1e-3,), n_trees=30)


@pytest.fixture(scope="module")
def annotated(tmp_path_factory):
    """8 training images and 2 new images of the demo generator with their label images."""
    from orgaseg_core.data.demo import make_demo_data
    from orgaseg_core.data.masks import annotations_to_masks

    root = tmp_path_factory.mktemp("families")
    make_demo_data(root / "train", n_images=8, seed=5, size=(380, 504))
    annotations_to_masks(root / "train" / "geojsons", root / "train" / "images", root / "train-masks")
    make_demo_data(root / "new", n_images=2, seed=99, size=(380, 504))
    annotations_to_masks(root / "new" / "geojsons", root / "new" / "images", root / "new-masks")
    return root


@pytest.fixture(scope="module")
def models(annotated):
    """One classifier per family (forced) and one with every candidate."""
    out = {}
    for run, families in (("all", ("measurements", "cnn", "combined")), ("measurements", ("measurements",)),
                          ("cnn", ("cnn",)), ("combined", ("combined",))):
        out[run] = train_classifier(None, annotated / f"model-{run}", images=annotated / "train" / "images",
                                    masks=annotated / "train-masks", families=families, seed=0, **TINY_CNN)
    return out


def test_every_candidate_is_reported_and_the_best_on_validation_is_kept(models, annotated):
    result = models["all"]
    folder = result.model_out
    grid = pd.read_csv(folder / "grid.csv")
    families = grid[grid["stage"] == "family"]
    assert list(families["family"]) == ["measurements", "cnn", "combined"]
    assert families["chosen"].sum() == 1
    chosen = families[families["chosen"]].iloc[0]
    assert chosen["score"] == families["score"].max()
    # the score: annotated outlines and stronger outline variants of the validation objects
    np.testing.assert_allclose(families["score"],
                               (families["val_macro_f1"] + families["val_outlines_macro_f1"]) / 2, atol=1e-6)
    assert result.family == chosen["family"]
    report = json.loads((folder / "report.json").read_text())
    assert report["family"] == result.family and report["source"] == "annotated images"
    assert len(report["candidates"]) == 3 and report["test"]["n"] > 0
    description = json.loads((folder / "classifier.json").read_text())
    assert description["family"] == result.family and description["crop_padding"] == 10
    assert description["crop_context"] == 0.25
    assert {"model.pt", "measurements.skops", "reliability.png", "split.csv"} <= {p.name for p in folder.iterdir()}
    split = pd.read_csv(folder / "split.csv", dtype={"stem": str})
    assert (split.groupby("stem")["split"].nunique() == 1).all()  # whole images per split
    assert set(split["split"]) == {"train", "val", "test"}
    # The measurement forest learns the demo classes from the annotated outlines.
    assert models["measurements"].val["macro_f1"] >= 0.8


def test_the_test_split_never_changes_a_choice(models, annotated, tmp_path):
    """Same data and seed, test-image annotations scrambled: same choice, same validation figures."""
    import shutil

    masks = tmp_path / "masks"
    shutil.copytree(annotated / "train-masks", masks)
    split = pd.read_csv(models["measurements"].model_out / "split.csv", dtype={"stem": str})
    for stem in set(split.loc[split["split"] == "test", "stem"]):
        table = pd.read_csv(masks / f"{stem}_objects.csv")
        table["class"] = np.roll(table["class"].to_numpy(), 1)
        table.to_csv(masks / f"{stem}_objects.csv", index=False)
    again = train_classifier(None, tmp_path / "m", images=annotated / "train" / "images", masks=masks,
                             families=("measurements",), seed=0, n_trees=30)
    assert again.val == models["measurements"].val and again.temperature == models["measurements"].temperature
    assert again.test != models["measurements"].test


@pytest.mark.parametrize("run", ["measurements", "cnn", "combined"])
def test_a_model_of_each_family_classifies_extract_objects_output(models, annotated, tmp_path, run):
    from orgaseg_core.classification.predict import classify
    from orgaseg_core.objects.extract import extract_objects

    assert models[run].family == run
    objects = extract_objects(annotated / "new" / "images", annotated / "new-masks", tmp_path / "objects")
    result = classify(models[run].model_out, objects.out, tmp_path / "predictions")
    table = pd.read_csv(result.predictions_csv)
    probabilities = table[[f"prob_{c}" for c in models[run].class_names]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
    assert (table["needs_review"] == (table["confidence"] < 0.6)).all()
    assert len(table) == len(pd.read_csv(objects.objects_csv))
    record = json.loads((tmp_path / "predictions" / "run.json").read_text())
    assert record["results"]["family"] == run
    if run == "measurements":  # the forest reads the table, never a crop
        assert record["results"]["architecture"] is None
    truth = pd.concat([pd.read_csv(p).assign(stem=p.name[: -len("_objects.csv")])
                       for p in (annotated / "new-masks").glob("*_objects.csv")])
    merged = table.assign(stem=table["crop"].str.extract(r"crops/(.+)_\d+\.tif")[0]).merge(
        truth[["stem", "label", "class"]], on=["stem", "label"])
    accuracy = (merged["predicted_class"] == merged["class"]).mean()
    if run != "cnn":  # a 1-epoch network is not meant to be good; the others are
        assert accuracy >= 0.8


def test_analyze_loads_the_model_folder_and_flags_objects_for_review(models, annotated, tmp_path):
    from orgaseg_core.pipelines.analyze import analyze

    folder = models["measurements"].model_out
    result = analyze(None, folder, annotated / "new" / "images", tmp_path / "analysis",
                     masks=annotated / "new-masks", review_below=0.99)
    objects = pd.read_csv(result.objects_csv)
    assert objects["needs_review"].dtype == bool and objects["needs_review"].any()
    summary = pd.read_csv(result.summary_csv)
    assert summary["needs_review"].sum() == objects["needs_review"].sum()
    stem = summary["stem"].iloc[0]
    features = json.loads((tmp_path / "analysis" / "qupath" / f"{stem}.geojson").read_text())["features"]
    flags = [f["properties"]["measurements"].get("Needs review") for f in features]
    assert set(flags) <= {0, 1} and 1 in flags
    # a model.pt path (as orgaseg 0.5 took) loads the folder's whole classifier
    assert load_classifier(models["combined"].model_out / "model.pt").family == "combined"


def test_families_that_need_outlines_are_refused_for_crops(tmp_path):
    (tmp_path / "train" / "A").mkdir(parents=True)
    with pytest.raises(OrgasegError, match="need object outlines: train from images and masks"):
        train_classifier(tmp_path, tmp_path / "m", families=("measurements",))
    with pytest.raises(OrgasegError, match="either data .* or images and masks"):
        train_classifier(tmp_path, tmp_path / "m", images=tmp_path, masks=tmp_path)
    with pytest.raises(OrgasegError, match="unknown classifier families"):
        train_classifier(None, tmp_path / "m", images=tmp_path, masks=tmp_path, families=("svm",))
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------------------- CNN stability

def test_learning_rate_warms_up_then_decays():
    total = 100
    warm = warmup_steps(total, steps_per_epoch=4)
    assert warm == 10
    factors = [lr_factor(step, total, warm) for step in range(total)]
    assert factors[0] < factors[5] < factors[9] <= 1.0
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert factors[-1] == pytest.approx(FINAL_LR_FRACTION, abs=0.01)
    assert warmup_steps(6, steps_per_epoch=10) == 3  # never more than half the run


def test_batchnorm_statistics_are_re_estimated_on_the_training_crops():
    from orgaseg_core.classification.crops import CropDataset
    from orgaseg_core.classification.networks import build_model

    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (40, 40), dtype=np.uint8) for _ in range(20)]
    dataset = CropDataset(crops, [0, 1] * 10, input_size=32, mean=0.5, std=0.3)
    model = build_model("resnet18", 2)
    bn = model.bn1
    bn.running_mean.fill_(50.0)
    bn.running_var.fill_(1e6)
    assert recompute_batchnorm(model, dataset, device="cpu", batch_size=10, seed=0)  # equal batches
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        conv = model.conv1(x)
    np.testing.assert_allclose(bn.running_mean.numpy(), conv.mean(dim=(0, 2, 3)).numpy(), rtol=1e-3, atol=1e-4)
    assert bn.momentum == 0.1 and not model.training


# --------------------------------------------------------------------------- pretrained weights

def test_pretrained_weights_come_from_torchvisions_cache_offline(tmp_path, monkeypatch):
    import torchvision

    from orgaseg_core.classification.networks import build_model, load_state, pretrained_state

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision.models.get_model_weights("resnet18").DEFAULT
    cached = tmp_path / "torch" / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    imagenet = torchvision.models.resnet18(weights=None, num_classes=1000)  # the right shapes
    torch.save(imagenet.state_dict(), cached)

    state, name = pretrained_state("resnet18")
    assert str(cached) in name
    model = build_model("resnet18", 3)
    summary = load_state(model, state, source=name)
    assert summary["first_conv_adapted"] and summary["head_random"]
    assert torch.equal(model.conv1.weight, imagenet.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(model.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight)

    cached.unlink()  # not cached, and no way to download: a clear error naming the place

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(OrgasegError, match="not in the torchvision cache .*hub/checkpoints.*--weights"):
        pretrained_state("resnet18")


def test_training_with_pretrained_weights_starts_from_them(annotated, tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision.models.get_model_weights("resnet18").DEFAULT
    cached = tmp_path / "torch" / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18(weights=None, num_classes=1000).state_dict(), cached)
    result = train_classifier(None, tmp_path / "m", images=annotated / "train" / "images",
                              masks=annotated / "train-masks", families=("cnn",), pretrained=True,
                              seed=0, input_size=32, epochs=1, learning_rates=(1e-3,))
    assert result.family == "cnn"
    assert json.loads((tmp_path / "m" / "run.json").read_text())["arguments"]["pretrained"] is True
    with pytest.raises(OrgasegError, match="either --weights .* or --pretrained"):
        train_classifier(None, tmp_path / "m2", images=annotated / "train" / "images",
                         masks=annotated / "train-masks", pretrained=True, weights=cached)


def test_a_damaged_network_in_a_model_folder_is_named(models, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(models["combined"].model_out, folder)
    (folder / "model.pt").write_bytes(b"broken")
    with pytest.raises(InputFileError, match=r"model\.pt: model file is corrupt"):
        load_classifier(folder)
