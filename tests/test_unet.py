"""The U-Net backend (``train-segmentation --backend unet``): scale choice, schedule, basins of
the boundary map, the model folder and what is refused, a tiny training through the CLI, then
``segment`` with it.

Imports torch (never TensorFlow): runs in the torch pytest process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from digests import tree_digest
from synthetic import disc_pair, write_split

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch", reason="the U-Net backend needs torch (classification extra)")

from orgaseg_core import steps  # noqa: E402
from orgaseg_core.common.errors import InputFileError, OrgasegError  # noqa: E402
from orgaseg_core.common.images import read_labels  # noqa: E402
from orgaseg_core.segmentation.evaluation import segmentation_metrics  # noqa: E402
from orgaseg_core.segmentation.forest.features import BACKGROUND, BOUNDARY, INTERIOR  # noqa: E402
from orgaseg_core.segmentation.forest.levels import PYRAMID_TOLERANCE  # noqa: E402
from orgaseg_core.segmentation.forest.regions import RegionParams, regions_from_probabilities  # noqa: E402
from orgaseg_core.segmentation.model import check_segmentation_model, is_region_model  # noqa: E402
from orgaseg_core.segmentation.unet.model import (  # noqa: E402
    UNET_FILE,
    UNET_KIND,
    check_unet_folder,
    load_unet,
)
from orgaseg_core.segmentation.unet.network import UNet  # noqa: E402
from orgaseg_core.segmentation.unet.predict import class_probabilities  # noqa: E402
from orgaseg_core.segmentation.views import VIEWS_TOLERANCE  # noqa: E402
from orgaseg_core.segmentation.unet.train import (  # noqa: E402
    WARMUP_STEPS,
    choose_unet_resize,
    class_weights,
    learning_rate_at,
    seconds_per_step,
    steps_within,
)


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orgaseg_core", *map(str, args)],
                          capture_output=True, text=True, timeout=900)


# --------------------------------------------------------------------------- pure functions

def test_scale_fits_the_large_objects_and_keeps_the_median():
    # large organoids (95th percentile 400 px) in 256 px patches: shrunk until they are 128 px
    d = np.r_[np.full(90, 100.0), np.full(10, 400.0)]
    choice = choose_unet_resize(d, 256)
    assert choice["factor"] == pytest.approx(0.32, abs=0.01) and "fit half a 256 px patch" in choice["reason"]
    # ... but never so far that the median object falls under 16 px
    d = np.r_[np.full(90, 20.0), np.full(10, 400.0)]
    choice = choose_unet_resize(d, 256)
    assert choice["factor"] == pytest.approx(0.8) and "must stay 16 px" in choice["reason"]
    # small objects: kept as given, never enlarged
    assert choose_unet_resize(np.full(20, 30.0), 256)["factor"] == 1.0
    with pytest.raises(ValueError):
        choose_unet_resize(np.array([]), 256)


def test_learning_rate_warms_up_then_falls_to_zero():
    rates = [learning_rate_at(s, 200, 1e-3) for s in range(200)]
    assert rates[0] == pytest.approx(1e-3 / WARMUP_STEPS)
    assert max(rates) <= 1e-3 and np.argmax(rates) == WARMUP_STEPS - 1
    assert all(a >= b for a, b in zip(rates[WARMUP_STEPS:], rates[WARMUP_STEPS + 1:]))
    assert learning_rate_at(200, 200, 1e-3) == pytest.approx(0.0, abs=1e-12)


def test_time_limit_fitted_from_the_epochs_after_the_first():
    # the first epoch is slow (warm-up): 50 steps in 50 s, then 50 steps in 25 s each
    assert seconds_per_step([(50, 50.0)]) == pytest.approx(1.0)
    times = [(50, 50.0), (50, 25.0), (50, 25.0)]
    assert seconds_per_step(times) == pytest.approx(0.5)
    # 150 steps in 100 s of a 300 s limit: 200 s left hold 400 more steps at 0.5 s
    assert steps_within(300, 100, 150, times, cap=10_000) == 550
    # the first epoch's speed alone would have stopped far earlier
    assert steps_within(300, 50, 50, times[:1], cap=10_000) == 300
    # never more than the preset's steps; the time up: stop where we are
    assert steps_within(300, 100, 150, times, cap=400) == 400
    assert steps_within(300, 301, 150, times, cap=10_000) == 150


def test_class_weights_favour_the_rare_boundary():
    t = np.zeros((10, 10), np.uint8)
    t[2:8, 2:8] = INTERIOR
    t[2, 2:8] = BOUNDARY
    w = class_weights([t])
    assert w[BOUNDARY] > w[INTERIOR] > w[BACKGROUND] and w.mean() == pytest.approx(1.0)


def _ring_probabilities(gap: bool) -> np.ndarray:
    """Probabilities of two discs outlined by a boundary ring (one ring with a gap)."""
    yy, xx = np.mgrid[:80, :120]
    prob = np.zeros((80, 120, 3), np.float32)
    prob[..., BACKGROUND] = 1.0
    for cy, cx in ((40, 30), (40, 90)):
        r = np.hypot(yy - cy, xx - cx)
        inside, ring = r < 16, (r >= 16) & (r < 19)
        prob[inside] = (0.0, 1.0, 0.0)
        prob[ring] = (0.2, 0.4, 0.4)  # a faint boundary, as a U-Net's often is
        if gap and cx == 90:
            opening = ring & (np.abs(yy - cy) < 3) & (xx > cx)
            prob[opening] = (0.5, 0.3, 0.2)
    return prob


def test_deep_basins_find_organoids_whose_boundary_is_faint_or_open():
    prob = _ring_probabilities(gap=True)
    by_depth, _ = regions_from_probabilities(prob, RegionParams(h_minima=0.1, smoothing=1.0))
    assert by_depth.max() == 2  # both discs, the open one too
    for cy, cx in ((40, 30), (40, 90)):
        assert by_depth[cy, cx] > 0
    assert by_depth[40, 30] != by_depth[40, 90] and by_depth[2, 2] == 0
    # a global threshold above the faint boundary floods the open disc into the background
    by_threshold, _ = regions_from_probabilities(prob, RegionParams(boundary_threshold=0.3, smoothing=1.0))
    assert by_threshold[40, 30] > 0 and by_threshold[40, 90] == 0
    params = RegionParams(h_minima=0.1)
    assert RegionParams.from_dict(params.as_dict()) == params
    assert RegionParams.from_dict({k: v for k, v in params.as_dict().items() if k != "h_minima"}).h_minima == 0.0
    with pytest.raises(ValueError):
        RegionParams(h_minima=1.5)


def test_network_shapes_and_tiles():
    net = UNet(base=4, depth=2).eval()
    out = net(torch.zeros(1, 1, 32, 48))
    assert out.shape == (1, 3, 32, 48)
    from orgaseg_core.segmentation.unet.model import LoadedUNet, UNetInfo

    info = UNetInfo(folder=Path("."), scale=1.0, norm_percentiles=(1.0, 99.8),
                    architecture=net.architecture(), regions=RegionParams())
    loaded = LoadedUNet(network=net, info=info)
    image = np.random.default_rng(0).random((70, 90)).astype(np.float32)  # not a multiple of 4
    whole = class_probabilities(loaded, image, tile=1024)
    tiled = class_probabilities(loaded, image, tile=32, margin=24)
    assert whole.shape == (70, 90, 3) and np.allclose(whole.sum(-1), 1.0, atol=1e-5)
    # a margin wider than the receptive field of this small network: the same probabilities
    assert np.abs(tiled - whole).max() < 1e-4


# --------------------------------------------------------------------------- training and use

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A split of disc images and a small U-Net trained on it through the CLI, with the default
    backend (the U-Net since 0.18: no --backend given)."""
    root = tmp_path_factory.mktemp("unet")
    data = write_split(root / "split", n_train=6, n_val=2)
    before = tree_digest(data)
    model = root / "model"
    done = run_cli("train-segmentation", "--data", data, "--model-out", model,
                   "--epochs", 8, "--steps-per-epoch", 15, "--batch-size", 4, "--patch-size", 64,
                   "--learning-rate", 3e-3, "--device", "cpu", "--seed", 1)
    assert done.returncode == 0, done.stderr[-3000:]
    assert tree_digest(data) == before  # inputs unchanged
    return data, model, done


def test_tiny_training_writes_a_complete_model(tiny):
    data, model, done = tiny
    assert "train-segmentation (U-Net): model written to" in done.stdout
    assert "kept the" in done.stdout and "basins" in done.stdout
    names = {p.name for p in model.iterdir()}
    assert {UNET_FILE, "orgaseg_model.json", "report.json", "report.csv", "history.csv", "run.json"} <= names
    meta = json.loads((model / "orgaseg_model.json").read_text())
    assert meta["kind"] == UNET_KIND and meta["backend"] == "unet"
    assert meta["scale"] == 0.5  # from the preprocess record of the data; discs stay as they are
    assert meta["architecture"] == {"base": 16, "depth": 5, "n_classes": 3, "in_channels": 1}
    assert meta["steps"] == 120 and len(meta["history"]) == 8
    assert meta["training"]["seed"] == 1 and meta["training"]["device"] == "cpu"
    assert meta["object_patch_fraction"] == 0.5  # half the patches centred on an organoid
    assert meta["weights"]["chosen"] in ("last", "lowest validation loss")
    # 36 region settings per candidate network and number of test-time views (1, 8): the last
    # network, and the lowest validation loss when that is another epoch (training on 2 CPU
    # threads is not bit-reproducible, so either happens)
    weights = meta["weights"]
    networks = 1 if weights["lowest_val_loss_epoch"] == weights["epochs"] else 2
    assert meta["regions"]["h_minima"] > 0 and len(meta["region_scores"]) == 2 * 36 * networks
    assert sum(", 8 views: " in k for k in meta["region_scores"]) == 36 * networks
    assert "torch" in meta["versions"]
    # the pyramid kept: the most of the levels its small discs suggested that score within
    # PYRAMID_TOLERANCE of the best on the validation images
    pyramid = meta["pyramid"]
    kept = ",".join(f"{v:g}" for v in pyramid["levels"])
    scores = pyramid["scores"]
    assert list(scores)[0] == "1" and kept in scores and pyramid["chosen"] == "auto"
    assert scores[kept] >= max(scores.values()) - PYRAMID_TOLERANCE
    assert all(scores[k] < max(scores.values()) - PYRAMID_TOLERANCE for k in list(scores)[list(scores).index(kept) + 1:])
    # the test-time views kept: 1 or 8, the most within VIEWS_TOLERANCE of the best
    views = meta["test_time_views"]
    assert set(views["scores"]) == {"1", "8"} and views["chosen"] == "auto"
    # each number of views scored by its best setting; the kept one is the stored setting's
    for n, score in views["scores"].items():
        assert score == max(v for k, v in meta["region_scores"].items() if f", {n} view" in k)
    assert views["scores"][str(views["views"])] >= max(views["scores"].values()) - VIEWS_TOLERANCE
    assert views["views"] == 8 or views["scores"]["8"] < views["scores"]["1"] - VIEWS_TOLERANCE
    assert f"test-time views: {views['views']}" in done.stdout
    history = pd.read_csv(model / "history.csv")
    assert list(history["epoch"]) == list(range(1, 9)) and history["loss"].iloc[-1] < history["loss"].iloc[0]
    info = check_segmentation_model(model)
    assert is_region_model(info) and info.multiple == 32
    report = json.loads((model / "report.json").read_text())
    assert report["metrics"]["0.5"]["n_true"] == 8  # 2 validation images x 4 discs
    assert "tensorflow" not in sys.modules


def test_segment_with_a_unet_finds_the_discs(tiny, tmp_path):
    data, model, _ = tiny
    rng = np.random.default_rng(11)
    image, truth = disc_pair(rng, (192, 256), n=6, radius=(14, 24))  # full size: twice the training
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "discs.tif", image)
    tifffile.imwrite(tmp_path / "in" / "rgb.tif", np.dstack([image] * 3))
    out = tmp_path / "out"
    done = run_cli("segment", "--model", model, "--images", tmp_path / "in", "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(U-Net)" in done.stdout and "segment: 2 image(s)" in done.stdout
    labels = read_labels(out / "discs.tif")
    assert labels.shape == (192, 256)
    f1 = segmentation_metrics([truth], [labels], thresholds=(0.5,)).loc[0, "f1"]
    assert f1 >= 0.8, f1
    assert np.array_equal(read_labels(out / "rgb.tif"), labels)
    ids = sorted(int(i) for i in np.unique(labels) if i)
    table = pd.read_csv(out / "discs_objects.csv")
    assert table["label"].tolist() == ids and table["probability"].between(0, 1).all()
    features = json.loads((out / "discs.geojson").read_text())["features"]
    assert sorted(f["properties"]["measurements"]["Label"] for f in features) == ids
    # at two scales (the pyramid): the discs are found at the coarse level, once each
    two = run_cli("segment", "--model", model, "--images", tmp_path / "in" / "discs.tif", "--out",
                  tmp_path / "two", "--pyramid", "1,2")
    assert two.returncode == 0, two.stderr[-3000:]
    pyramid_labels = read_labels(tmp_path / "two" / "discs.tif")
    assert segmentation_metrics([truth], [pyramid_labels], thresholds=(0.5,)).loc[0, "f1"] >= 0.8
    assert json.loads((tmp_path / "two" / "run.json").read_text())["results"]["images"]["discs.tif"]["pyramid"] == [1, 2]
    # test-time views as given: the discs again, the views recorded per image
    eight = run_cli("segment", "--model", model, "--images", tmp_path / "in" / "discs.tif", "--out",
                    tmp_path / "eight", "--tta", 8, "--pyramid", "none")
    assert eight.returncode == 0, eight.stderr[-3000:]
    assert segmentation_metrics([truth], [read_labels(tmp_path / "eight" / "discs.tif")],
                                thresholds=(0.5,)).loc[0, "f1"] >= 0.8
    record = json.loads((tmp_path / "eight" / "run.json").read_text())
    assert record["arguments"]["tta"] == 8 and record["results"]["images"]["discs.tif"]["views"] == 8
    bad = run_cli("segment", "--model", model, "--images", tmp_path / "in", "--out", tmp_path / "no", "--tta", 3)
    assert bad.returncode != 0 and "test-time views must be auto or one of 1, 2, 4, 8, got '3'" in bad.stderr
    assert not (tmp_path / "no").exists()
    # StarDist's options do not apply to it: refused before anything is written
    refused = run_cli("segment", "--model", model, "--images", tmp_path / "in", "--out", tmp_path / "no",
                      "--refine", "edges")
    assert refused.returncode != 0 and "U-Net model" in refused.stderr and not (tmp_path / "no").exists()


def test_the_views_are_predicted_and_the_models_choice_is_used(tiny, monkeypatch):
    """Every view is one prediction (transposed views have the transposed shape); without
    ``views`` the model's stored choice is used."""
    from orgaseg_core.segmentation.unet import predict as unet_predict

    _, model, _ = tiny
    loaded = load_unet(model, device="cpu")
    image, _ = disc_pair(np.random.default_rng(5), (96, 160), n=3, radius=(10, 16))
    shapes = []
    real = unet_predict.class_probabilities
    monkeypatch.setattr(unet_predict, "class_probabilities",
                        lambda net, small, **kw: shapes.append(small.shape) or real(net, small, **kw))
    for views in (1, 2, 4, 8):
        shapes.clear()
        seg = unet_predict.segment_unet_array(image, loaded, levels=(1.0,), views=views)
        assert seg.views == views and len(shapes) == views
        assert sum(s != shapes[0] for s in shapes) == (4 if views == 8 else 0)  # the transposed ones
    shapes.clear()
    stored = json.loads((model / "orgaseg_model.json").read_text())["test_time_views"]["views"]
    seg = unet_predict.segment_unet_array(image, loaded, levels=(1.0,))
    assert seg.views == stored and len(shapes) == stored


def test_unet_folders_that_cannot_be_used_are_refused_by_name(tiny, tmp_path):
    _, model, _ = tiny
    import shutil

    broken = tmp_path / "interrupted"
    shutil.copytree(model, broken)
    (broken / "orgaseg_model.json").unlink()
    with pytest.raises(InputFileError, match="interrupted"):
        check_segmentation_model(broken)
    other = tmp_path / "other-architecture"
    shutil.copytree(model, other)
    meta = json.loads((other / "orgaseg_model.json").read_text())
    meta["architecture"]["base"] = 8
    (other / "orgaseg_model.json").write_text(json.dumps(meta))
    with pytest.raises(InputFileError, match="does not fit the U-Net"):
        load_unet(other, device="cpu")
    meta["architecture"]["depth"] = 50
    (other / "orgaseg_model.json").write_text(json.dumps(meta))
    with pytest.raises(InputFileError, match="architecture depth"):
        check_unet_folder(other)
    not_dict = tmp_path / "not-a-dict"
    shutil.copytree(model, not_dict)
    torch.save([torch.zeros(3)], not_dict / UNET_FILE)
    with pytest.raises(InputFileError, match="not a state dict"):
        load_unet(not_dict, device="cpu")

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    unsafe = tmp_path / "unsafe"
    shutil.copytree(model, unsafe)
    torch.save({"x": Evil()}, unsafe / UNET_FILE)
    with pytest.raises(InputFileError, match="unsafe"):
        load_unet(unsafe, device="cpu")


def test_options_of_other_backends_are_refused(tmp_path):
    data = write_split(tmp_path / "split", n_train=1, n_val=1)
    for kwargs, words in (({"n_rays": 64}, "n_rays"), ({"refine": "edges"}, "refine"),
                          ({"init_model": tmp_path}, "init_model"), ({"grid": (4, 4)}, "grid"),
                          ({"patch_size": (64, 96)}, "square")):
        with pytest.raises(OrgasegError, match=words):
            steps.train_segmentation(data, tmp_path / "never", backend="unet", **kwargs)
    with pytest.raises(OrgasegError, match="pyramid factors must start at 1"):
        steps.train_segmentation(data, tmp_path / "never", backend="unet", pyramid="2,4")
    with pytest.raises(OrgasegError, match="test-time views must be auto or one of"):
        steps.train_segmentation(data, tmp_path / "never", backend="unet", tta="16")
    with pytest.raises(OrgasegError, match="--tta applies to --backend unet only"):
        steps.train_segmentation(data, tmp_path / "never", backend="forest", tta=8)
    with pytest.raises(OrgasegError, match="multiple of 32"):
        steps.train_segmentation(data, tmp_path / "never", backend="unet", patch_size=48)
    with pytest.raises(OrgasegError, match="--device applies to --backend unet only"):
        steps.train_segmentation(data, tmp_path / "never", backend="forest", device="cpu")
    assert not (tmp_path / "never").exists()


def test_refit_trains_the_stored_network_on_training_and_validation_images(tmp_path, monkeypatch):
    """``--refit``: after the choices, a new network is trained on the training and validation
    images for as many steps as the kept network had, and that network is the one stored."""
    from orgaseg_core.segmentation.unet import train as unet_train

    data = write_split(tmp_path / "split", n_train=3, n_val=1)
    samplers, refits = [], []

    class Recording(unet_train.PatchSampler):
        def __init__(self, images, masks, *args, **kwargs):
            samplers.append((len(images), len(masks), [g.shape for g in images]))
            super().__init__(images, masks, *args, **kwargs)

    real_train_steps = unet_train.train_steps

    def recording_train_steps(network, sampler, loss_fn, **kwargs):
        losses = real_train_steps(network, sampler, loss_fn, **kwargs)
        refits.append(({k: v.detach().clone() for k, v in network.state_dict().items()}, kwargs, losses))
        return losses

    monkeypatch.setattr(unet_train, "PatchSampler", Recording)
    monkeypatch.setattr(unet_train, "train_steps", recording_train_steps)
    model = tmp_path / "model"
    steps.train_segmentation(data, model, backend="unet", epochs=3, steps_per_epoch=4, batch_size=2,
                             patch_size=64, learning_rate=3e-3, device="cpu", seed=2, pyramid="none",
                             tta=1, refit=True)
    # the first sampler holds the 3 training images, the refit's the 3 + the validation image
    assert [(n, m) for n, m, _ in samplers] == [(3, 3), (4, 4)]
    assert samplers[1][2][:3] == samplers[0][2]
    meta = json.loads((model / "orgaseg_model.json").read_text())
    refit = meta["weights"]["refit"]
    kept = meta["steps"] if refit["of"] == "last" else meta["history"][meta["weights"]["lowest_val_loss_epoch"] - 1]["steps"]
    assert refit["steps"] == kept and len(refits) == 1 and len(refits[0][2]) == kept
    assert refits[0][1]["steps"] == kept and len(refit["images"]) == 4
    assert meta["weights"]["chosen"].startswith("network refit on the training and validation images") and meta["training"]["refit"] is True
    stored = torch.load(model / UNET_FILE, map_location="cpu")
    assert set(stored) == set(refits[0][0])
    assert all(torch.equal(stored[k], refits[0][0][k]) for k in stored)
    validated = torch.load(model / unet_train.VALIDATED_UNET_FILE, map_location="cpu")
    assert set(validated) == set(stored) and not all(torch.equal(stored[k], validated[k]) for k in stored)
    # the refit network segments like any U-Net model
    assert check_unet_folder(model) is not None
    with pytest.raises(OrgasegError, match="--refit applies to --backend unet only"):
        steps.train_segmentation(data, tmp_path / "never", backend="forest", refit=True)


def test_patch_sampler_centres_patches_on_organoids_when_asked():
    """``object_fraction`` 1: every patch is centred on an organoid drawn uniformly (the small
    one as often as the large one); 0: the patches of the plain sampler (same draws)."""
    from orgaseg_core.segmentation.unet.train import PatchSampler

    rows, cols = np.mgrid[:200, :300]
    where = (rows * 1000 + cols).astype(np.float32)  # each pixel's grey value is its position
    labels = np.zeros((200, 300), np.uint16)
    labels[20:24, 30:34] = 1  # small, in a corner: its patch is clipped at the image's corner
    labels[120:180, 200:260] = 2  # large: its box centre (150, 230) at the patch's centre
    sampler = PatchSampler([where], [labels], 64, seed=3, augment=False, object_fraction=1.0)
    patches, targets = sampler(40)
    corners = patches[:, 0, 0, 0].astype(int)
    assert set(corners.tolist()) == {0, 118_198}
    assert 10 <= int((corners == 0).sum()) <= 30
    assert (targets[corners > 0, 32, 32] > 0).all()
    # 0: anywhere, the draws of the plain sampler (an image, a row, a column per patch)
    off = PatchSampler([where], [labels], 64, seed=3, augment=False, object_fraction=0.0)
    rng = np.random.default_rng(3)
    expected = []
    for _ in range(5):
        rng.choice(1, p=[1.0])
        expected.append(int(rng.integers(200 - 64 + 1)) * 1000 + int(rng.integers(300 - 64 + 1)))
    assert off(5)[0][:, 0, 0, 0].astype(int).tolist() == expected
