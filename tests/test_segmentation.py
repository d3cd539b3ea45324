"""train-segmentation and segment: data checks, model folder, outputs, tiny end-to-end runs.

One tiny StarDist model (a few steps on small synthetic disc images) is trained once per module
and reused; the data checks and the array functions run without TensorFlow.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage
from digests import tree_digest
from story_analysis import analyze_story_images
from synthetic import SHAPE, disc_pair, write_split  # noqa: E402  (shared with test_analyze)

from orgaseg_core import cli
from orgaseg_core.common.errors import InputFileError, OrgasegError
from orgaseg_core.common.images import read_labels
from orgaseg_core.qupath.geojson import load_features
from orgaseg_core.segmentation.evaluation import segmentation_metrics
from orgaseg_core.segmentation.model import (
    FORMAT_VERSION,
    MODEL_KIND,
    LoadedModel,
    ModelInfo,
    auto_n_tiles,
    check_model_folder,
    normalize_image,
)
from orgaseg_core.segmentation.predict import (
    Segmentation,
    object_table,
    polygons_of,
    segment,
    segment_array,
    upscale_labels,
)
from orgaseg_core.segmentation.train import (
    Augmenter,
    fit_patch_size,
    load_split,
    read_data_provenance,
    split_pairs,
    train_segmentation,
)


@pytest.fixture
def split_data(tmp_path) -> Path:
    return write_split(tmp_path / "split")


# --------------------------------------------------------------------------- data checks (no TF)

def test_image_without_mask_is_named(split_data, tmp_path):
    (split_data / "train" / "masks" / "train_2.tif").unlink()
    with pytest.raises(OrgasegError, match=r"train_2\.tif: image has no mask"):
        train_segmentation(split_data, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_mask_without_image_is_named(split_data, tmp_path):
    (split_data / "val" / "images" / "val_1.tif").unlink()
    with pytest.raises(OrgasegError, match=r"val_1\.tif: mask has no image"):
        split_pairs(split_data, "val")


def test_non_integer_mask_is_named(split_data, tmp_path):
    bad = split_data / "train" / "masks" / "train_1.tif"
    tifffile.imwrite(bad, np.full(SHAPE, 0.5, np.float32))
    with pytest.raises(InputFileError, match="train_1.tif") as info:
        train_segmentation(split_data, tmp_path / "model")
    assert "integer" in str(info.value)


def test_mismatched_shapes_are_named(split_data, tmp_path):
    tifffile.imwrite(split_data / "train" / "masks" / "train_0.tif", np.zeros((50, 60), np.uint16))
    with pytest.raises(InputFileError, match=r"train_0\.tif.*50x60.*96x128"):
        train_segmentation(split_data, tmp_path / "model")


def test_empty_training_folder(tmp_path):
    data = write_split(tmp_path / "split", n_train=0, n_val=1)
    (data / "train" / "images").mkdir(parents=True, exist_ok=True)
    (data / "train" / "masks").mkdir(parents=True, exist_ok=True)
    with pytest.raises(InputFileError, match="no train images"):
        train_segmentation(data, tmp_path / "model")


def test_no_validation_data_says_how_to_split(split_data, tmp_path):
    shutil.rmtree(split_data / "val")
    with pytest.raises(InputFileError, match=r"--val") as info:
        train_segmentation(split_data, tmp_path / "model")
    assert str(split_data) in str(info.value)


def test_missing_data_folder(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        train_segmentation(tmp_path / "nope", tmp_path / "model")


def test_masks_hold_no_objects(split_data, tmp_path):
    for mask in (split_data / "train" / "masks").iterdir():
        tifffile.imwrite(mask, np.zeros(SHAPE, np.uint16))
    with pytest.raises(InputFileError, match="no objects"):
        train_segmentation(split_data, tmp_path / "model")


def test_load_split_fills_holes_and_converts_rgb(split_data):
    image, labels = disc_pair(np.random.default_rng(5))
    labels[labels == 1] = 0
    ring = np.zeros(SHAPE, bool)
    ring[20:40, 20:40] = True
    ring[27:33, 27:33] = False  # a hole
    labels[ring] = 9
    tifffile.imwrite(split_data / "train" / "images" / "train_0.tif", np.dstack([image] * 3))
    tifffile.imwrite(split_data / "train" / "masks" / "train_0.tif", labels)
    data = load_split(split_data, "train")
    i = data.names.index("train_0")
    assert data.images[i].shape == SHAPE  # RGB -> grey
    assert np.all(data.masks[i][27:33, 27:33] == 9)  # hole filled with its object's id


def test_patch_size_reduced_with_warning():
    shapes = [(190, 252), (120, 300), (400, 400)]
    names = ["a", "small", "c"]
    patch, warning = fit_patch_size(256, shapes, names, (16, 16))
    assert patch == (112, 240)
    assert "reduced to 112x240" in warning
    assert "small, 120x300" in warning and "a, 190x252" in warning
    # Automatic: no warning, the largest multiple of 16 up to 256 that fits.
    assert fit_patch_size(None, shapes, names, (16, 16)) == ((112, 240), None)
    assert fit_patch_size(None, [(1000, 1000)], ["big"], (16, 16)) == ((256, 256), None)
    patch, warning = fit_patch_size((96, 200), shapes, names, (16, 16))
    assert patch == (96, 192) and "width 200 is not a multiple of 16" in warning
    assert fit_patch_size(64, shapes, names, (16, 16)) == ((64, 64), None)
    assert fit_patch_size(64, shapes, names, (32, 32)) == ((64, 64), None)
    with pytest.raises(OrgasegError, match="tiny"):
        fit_patch_size(64, [(10, 300)], ["tiny"], (16, 16))


def test_read_data_provenance(split_data, tmp_path):
    found = read_data_provenance(split_data)
    assert found["scale"] == 0.5
    assert found["preprocessing"] == {"remove_vignette": False, "flatten_background": False}
    # tiles.csv fallback, and nothing at all
    lone = tmp_path / "lone"
    lone.mkdir()
    assert read_data_provenance(lone)["scale"] is None
    pd.DataFrame({"file": ["a.tif"], "scale": [0.25]}).to_csv(lone / "tiles.csv", index=False)
    assert read_data_provenance(lone)["scale"] == 0.25


def test_augmenter_is_seeded_and_keeps_pairs_aligned():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, size=(32, 32)).astype(np.uint16)
    x = y.astype(np.float32)
    outs = [Augmenter(seed=3, brightfield=False)(x, y) for _ in range(2)]
    assert np.array_equal(outs[0][0], outs[1][0])  # same seed, same transform
    aug = Augmenter(seed=1, brightfield=False)
    seen = set()
    for _ in range(20):
        xa, ya = aug(x, y)
        assert xa.shape == x.shape and xa.dtype == np.float32
        # x is an affine function of y, so the transform moved both the same way
        a, b = np.polyfit(ya.ravel().astype(float), xa.ravel().astype(float), 1)
        assert np.allclose(xa, a * ya + b, atol=1e-4) and 0.79 < a < 1.21
        seen.add(ya.tobytes())
    assert len(seen) > 4
    # non-square patches keep their shape
    xa, ya = Augmenter(seed=1)(np.zeros((16, 32), np.float32), np.zeros((16, 32), np.uint16))
    assert xa.shape == (16, 32) == ya.shape


def test_defocus_blurs_and_fades_the_chosen_organoids_only():
    from skimage.draw import disk

    x = np.full((96, 96), 0.9, np.float32)
    y = np.zeros((96, 96), np.uint16)
    for label, centre in ((1, (30, 30)), (2, (66, 66))):
        rr, cc = disk(centre, 12)
        y[rr, cc] = label
        x[rr, cc] = 0.2 + 0.1 * (rr % 2)  # a dark organoid with texture
    aug = Augmenter(seed=0, p_defocus=1.0, defocus=(3.0, 3.0), fade=(0.5, 0.5))
    out = aug._defocus(x.copy(), y.copy())
    inside = y > 0
    core = ndimage.distance_transform_edt(inside) > 6
    # faded towards the background grey (0.9): about halfway (0.25 -> 0.575), its texture
    # (0.2 / 0.3 rows) smoothed away
    assert 0.5 < out[core].mean() < 0.65 and out[core].std() < 0.3 * x[core].std()
    # the halo reaches beyond the outline; the background far away is untouched
    ring = (ndimage.distance_transform_edt(~inside) > 0) & (ndimage.distance_transform_edt(~inside) <= 2)
    assert out[ring].mean() < 0.88
    far = ndimage.distance_transform_edt(~inside) > 15
    assert np.allclose(out[far], 0.9)
    # off by default: the same transforms, draw for draw, as before the option existed
    a, b = Augmenter(seed=4), Augmenter(seed=4, p_defocus=0.0, defocus=(9.0, 9.0))
    for _ in range(5):
        assert np.array_equal(a(x, y)[0], b(x, y)[0])
    # on: labels unchanged by the defocus itself, and only chosen organoids change
    aug = Augmenter(seed=1, p_defocus=0.5)
    changed = {tuple(sorted(set(np.unique(y[np.abs(aug._defocus(x, y) - x) > 0.05])) - {0}))
               for _ in range(12)}
    assert {(1,), (2,)} & changed  # one organoid of the two, not always both


def test_normalize_image_matches_csbdeep():
    csbdeep_utils = pytest.importorskip("csbdeep.utils")
    image = np.random.default_rng(0).integers(0, 4000, size=(50, 60)).astype(np.uint16)
    ours = normalize_image(image, (2.0, 99.0))
    theirs = csbdeep_utils.normalize(image, 2.0, 99.0)
    assert ours.dtype == np.float32
    assert np.allclose(ours, theirs, atol=1e-5)


def test_auto_n_tiles():
    assert auto_n_tiles((760, 1008)) == (1, 1)
    assert auto_n_tiles((3040, 4032)) == (3, 4)
    assert auto_n_tiles((1025, 10)) == (2, 1)


# --------------------------------------------------------------------------- model folder checks

def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize("case, pattern", [
    ("missing", "does not exist"),
    ("empty", "config.json is missing"),
    ("random-json", "not a StarDist configuration"),
    ("corrupt-config", "not valid JSON"),
    ("no-weights", "no weights file"),
    ("no-orgaseg-json", "orgaseg_model.json is missing"),
    ("wrong-kind", "kind 'something-else'"),
    ("corrupt-orgaseg-json", "not valid JSON"),
    ("file", "not a file"),
])
def test_not_a_model_folder(tmp_path, case, pattern):
    folder = tmp_path / "model"
    if case == "file":
        _write(folder, "x")
    elif case != "missing":
        folder.mkdir()
    config = json.dumps({"n_dim": 2, "n_rays": 32, "grid": [2, 2], "n_channel_in": 1})
    meta = {"kind": MODEL_KIND, "format_version": FORMAT_VERSION, "norm_percentiles": [1, 99.8],
            "scale": 1.0}
    if case == "random-json":
        _write(folder / "config.json", json.dumps({"hello": "world"}))
    elif case == "corrupt-config":
        _write(folder / "config.json", "{not json")
    elif case in ("no-weights", "no-orgaseg-json", "wrong-kind", "corrupt-orgaseg-json"):
        _write(folder / "config.json", config)
        if case != "no-weights":
            _write(folder / "weights_best.h5", "")
        if case == "wrong-kind":
            _write(folder / "orgaseg_model.json", json.dumps({**meta, "kind": "something-else"}))
        elif case == "corrupt-orgaseg-json":
            _write(folder / "orgaseg_model.json", '{"kind": ')
    with pytest.raises(InputFileError, match=pattern) as info:
        check_model_folder(folder)
    assert str(folder) in str(info.value)
    # segment refuses before writing anything
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, np.zeros(SHAPE, np.uint8))
    with pytest.raises(InputFileError, match=pattern):
        segment(folder, image, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_init_model_must_fit(split_data, tmp_path):
    init = tmp_path / "init"
    _write(init / "config.json", json.dumps({"n_dim": 2, "n_rays": 16, "grid": [1, 1], "n_channel_in": 1}))
    _write(init / "weights_best.h5", "")
    with pytest.raises(InputFileError, match=r"n_rays is 16 there but 32") as info:
        train_segmentation(split_data, tmp_path / "model", init_model=init)
    assert str(init) in str(info.value) and "grid" in str(info.value)


# --------------------------------------------------------------------------- array functions (fake model)

class _FakeStarDist:
    """Stands in for StarDist2D: one disc object in the middle of whatever it is given."""

    def __init__(self):
        self.calls = []

    def predict_instances(self, x, n_tiles, prob_thresh, nms_thresh, show_tile_progress):
        self.calls.append((x.shape, n_tiles, prob_thresh, nms_thresh))
        h, w = x.shape
        cy, cx, r = h / 2, w / 2, min(h, w) / 4
        yy, xx = np.mgrid[:h, :w]
        labels = np.zeros((h, w), np.int32)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        angles = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        coord = np.stack([cy + r * np.sin(angles), cx + r * np.cos(angles)])[None]  # (1, 2, 32) y/x
        return labels, {"coord": coord, "prob": np.array([0.9]), "points": np.array([[cy, cx]])}


def _fake_loaded(scale: float) -> LoadedModel:
    info = ModelInfo(folder=Path("fake"), n_rays=32, grid=(2, 2), n_channel_in=1,
                     norm_percentiles=(1.0, 99.8), scale=scale, patch_size=(64, 64))
    return LoadedModel(model=_FakeStarDist(), info=info)


@pytest.mark.parametrize("model_scale, image_scale", [(0.5, 1.0), (0.5, 0.5), (0.5, 0.25), (1.0, 1.0)])
def test_segment_array_scales_back(model_scale, image_scale):
    loaded = _fake_loaded(model_scale)
    image = np.full((201, 303, 3), 180, np.uint8)
    image[0, 0] = 181  # not blank: a constant image is not segmented at all
    seg = segment_array(image, loaded, image_scale=image_scale)
    factor = model_scale / image_scale
    net_shape = loaded.model.calls[0][0]
    assert net_shape == (round(201 * factor), round(303 * factor))
    assert seg.labels.shape == (201, 303) and seg.n_objects == 1
    # The polygon (x, y in input pixels) covers the label's pixels: compare areas and centres.
    poly = polygons_of(seg)[0]
    area = int((seg.labels == 1).sum())
    assert abs(poly.area - area) / area < 0.1
    rr, cc = np.nonzero(seg.labels == 1)
    assert abs(poly.centroid.x - (cc.mean() + 0.5)) < 1.5
    assert abs(poly.centroid.y - (rr.mean() + 0.5)) < 1.5
    assert seg.probabilities.tolist() == [0.9]


def test_object_table_matches_regionprops():
    from skimage.measure import regionprops

    rng = np.random.default_rng(2)
    _, labels = disc_pair(rng, (80, 90), n=5)
    labels[5:9, 70:80] = 7  # gap in ids: 6 is absent
    table = object_table(labels, np.linspace(0.5, 0.9, 7), "x.tif")
    props = {p.label: p for p in regionprops(labels)}
    assert table["label"].tolist() == sorted(props)
    for row in table.itertuples():
        p = props[row.label]
        assert (row.bbox_min_row, row.bbox_min_col, row.bbox_max_row, row.bbox_max_col) == p.bbox
        assert row.area_px == p.area
        assert np.allclose((row.centroid_row, row.centroid_col), p.centroid)
    assert table.loc[table.label == 7, "probability"].item() == pytest.approx(0.9)


def test_upscale_labels_exact_shape():
    labels = np.arange(12, dtype=np.uint16).reshape(3, 4)
    big = upscale_labels(labels, (7, 9))
    assert big.shape == (7, 9)
    assert set(np.unique(big)) == set(range(12))


def test_upscaled_labels_have_smooth_outlines():
    """Labels predicted at the model's scale come back with outlines as round as drawn ones:
    the measurements (perimeter, circularity) of segmented organoids are compared with, and a
    classifier is trained on, annotated polygons."""
    from skimage.draw import disk
    from skimage.measure import regionprops

    small = np.zeros((80, 80), np.uint16)
    small[disk((40, 40), 25)] = 1
    region = regionprops(upscale_labels(small, (160, 160)))[0]
    assert 4 * np.pi * region.area / region.perimeter ** 2 > 0.88  # 0.77 with nearest neighbour
    shrunk = upscale_labels(small, (40, 40))  # shrinking: nearest neighbour
    assert shrunk.shape == (40, 40) and np.array_equal(shrunk, small[1::2, 1::2])


def test_degenerate_polygon_falls_back_to_bounding_box():
    from orgaseg_core.qupath.geojson import new_run_ids
    from orgaseg_core.segmentation.predict import detection_features

    labels = np.zeros((10, 10), np.uint16)
    labels[2:4, 3:6] = 1
    seg = Segmentation(labels=labels, polygons=[np.zeros((8, 2))], probabilities=np.array([0.7]),
                       model_shape=(10, 10), n_tiles=(1, 1))
    table = object_table(labels, seg.probabilities, "x")
    features = detection_features(seg, table, "x", new_run_ids())
    assert len(features) == 1
    assert features[0]["properties"]["measurements"]["Label"] == 1


# --------------------------------------------------------------------------- tiny trained model
#
# TensorFlow runs only in child processes (the orgaseg CLI): once imported it stays in the
# pytest process, and torch run later in the same process crashes (see the design notes).

def run_cli(*args: str) -> subprocess.CompletedProcess:
    """Run ``orgaseg ARGS`` in a fresh Python process; returns the finished process."""
    done = subprocess.run([sys.executable, "-m", "orgaseg_core.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)
    if done.returncode not in (0, 1):
        print(done.stdout[-4000:], done.stderr[-4000:])
    return done


def test_package_imports_no_tensorflow():
    code = ("import sys, orgaseg_core.cli, orgaseg_core.segmentation.predict, orgaseg_core.segmentation.train, "
            "orgaseg_core.segmentation.model; assert 'tensorflow' not in sys.modules, 'tensorflow imported'; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A split folder and a tiny model trained on it through the CLI (a few steps)."""
    if importlib.util.find_spec("stardist") is None or importlib.util.find_spec("tensorflow") is None:
        pytest.skip("the segmentation extra (stardist, tensorflow) is not installed")
    root = tmp_path_factory.mktemp("tiny")
    data = write_split(root / "split", n_train=6, n_val=2)
    before = tree_digest(data)
    model = root / "model"
    done = run_cli("train-segmentation", "--data", data, "--model-out", model, "--backend", "stardist", "--epochs", 12,
                   "--steps-per-epoch", 10, "--batch-size", 4, "--patch-size", 256,
                   "--learning-rate", 1e-3, "--seed", 1)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "train-segmentation: model written to" in done.stdout
    assert "IoU 0.5: precision" in done.stdout
    assert tree_digest(data) == before  # inputs unchanged
    return data, model


def test_tiny_training_writes_a_complete_model(tiny):
    data, model = tiny
    names = {p.name for p in model.iterdir()}
    assert {"config.json", "weights_best.h5", "weights_last.h5", "thresholds.json", "orgaseg_model.json",
            "report.json", "report.csv", "run.json", "logs"} <= names
    assert any((model / "logs").rglob("*tfevents*"))  # TensorBoard
    meta = json.loads((model / "orgaseg_model.json").read_text())
    assert meta["kind"] == MODEL_KIND and meta["format_version"] == FORMAT_VERSION
    assert meta["scale"] == 0.5  # from the preprocess record of the data
    assert meta["norm_percentiles"] == [1.0, 99.8]
    assert meta["patch_size"] == [96, 128]  # 256 requested, reduced to the images' size
    assert any("reduced to 96x128" in w for w in meta["warnings"])
    assert meta["n_rays"] == 32 and meta["grid"] == [2, 2]
    assert meta["data"]["n_train_images"] == 6 and meta["data"]["n_val_images"] == 2
    assert meta["data"]["train_images"] == [f"train_{i}" for i in range(6)]
    assert meta["data"]["n_train_objects"] == 24
    assert meta["training"]["epochs"] == 12 and meta["training"]["seed"] == 1
    assert "stardist" in meta["versions"] and "tensorflow-cpu" in meta["versions"]
    assert len(meta["history"]) == 12 and all("val_loss" in h for h in meta["history"])
    # the lowest-loss or the last epoch's weights, whichever segments the validation images better
    assert meta["weights"]["chosen"] in ("best", "last") and set(meta["weights"]["scores"]) == {"best", "last"}
    assert meta["thresholds"] == meta["weights"]["thresholds"][meta["weights"]["chosen"]]
    thresholds = json.loads((model / "thresholds.json").read_text())
    assert 0 < thresholds["prob"] < 1 and 0 < thresholds["nms"] < 1
    assert meta["thresholds"] == pytest.approx(thresholds)
    report = json.loads((model / "report.json").read_text())
    assert set(report["metrics"]) == {"0.5", "0.7", "0.9"}
    for m in report["metrics"].values():
        assert {"precision", "recall", "f1", "ap"} <= set(m) and 0 <= m["f1"] <= 1
        assert m["n_true"] == 8  # 2 validation images x 4 discs
    table = pd.read_csv(model / "report.csv")
    assert table["threshold"].round(2).tolist() == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9]
    assert meta["validation"]["0.5"]["f1"] == pytest.approx(table.loc[0, "f1"])
    run = json.loads((model / "run.json").read_text())
    assert run["status"] == "ok" and run["step"] == "train-segmentation"
    info = check_model_folder(model)
    assert info.thresholds == pytest.approx(thresholds)


def _check_outputs(out: Path, stem: str, image_shape: tuple[int, int]) -> int:
    """The three outputs of one image agree with each other; returns the number of objects."""
    labels = read_labels(out / f"{stem}.tif")
    assert labels.shape == image_shape
    assert labels.dtype == np.uint16
    ids = sorted(int(v) for v in np.unique(labels) if v)
    assert ids == list(range(1, len(ids) + 1))
    features = load_features(out / f"{stem}.geojson")
    assert len(features) == len(ids)
    assert all(f["properties"]["objectType"] == "detection" for f in features)
    assert sorted(f["properties"]["measurements"]["Label"] for f in features) == ids
    assert len({f["id"] for f in features}) == len(ids)
    table = pd.read_csv(out / f"{stem}_objects.csv")
    assert len(table) == len(ids)
    assert table["label"].tolist() == ids
    counts = np.bincount(labels.ravel())
    assert all(counts[k] == a for k, a in zip(table["label"], table["area_px"]))
    for feature in features:  # each polygon lies on its own object
        from shapely.geometry import shape

        geometry = shape(feature["geometry"])
        label = feature["properties"]["measurements"]["Label"]
        point = geometry.representative_point()
        row = table.loc[table.label == label].iloc[0]
        assert row.bbox_min_col - 3 <= point.x <= row.bbox_max_col + 3
        assert row.bbox_min_row - 3 <= point.y <= row.bbox_max_row + 3
    return len(ids)


def test_segment_formats_and_scales(tiny, tmp_path, unchanged):
    data, model = tiny
    rng = np.random.default_rng(11)
    # "Full size" (scale 1): discs twice as large as in the training images at scale 0.5.
    image, truth = disc_pair(rng, (192, 256), n=6, radius=(14, 24))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    tifffile.imwrite(inputs / "grey8.tif", image)
    tifffile.imwrite(inputs / "rgb.tif", np.dstack([image] * 3))
    tifffile.imwrite(inputs / "grey16.tif", image.astype(np.uint16) * 257)
    check = unchanged(inputs)
    out = tmp_path / "out-folder"
    done = run_cli("segment", "--model", model, "--images", inputs, "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "segment: 3 image(s)" in done.stdout
    counts = {name: _check_outputs(out, name, (192, 256)) for name in ("grey8", "rgb", "grey16")}
    # Rescaled to the model's scale and back, the discs are found where they are.
    metrics = segmentation_metrics([truth], [read_labels(out / "grey8.tif")], thresholds=(0.5,))
    assert metrics.loc[0, "f1"] >= 0.8, metrics
    # RGB gives the same labels as 8-bit grey (the same grey values after conversion); 16-bit
    # the same objects (rescaling rounds at 16 bits, so a few edge pixels may differ).
    assert np.array_equal(read_labels(out / "rgb.tif"), read_labels(out / "grey8.tif"))
    same = segmentation_metrics([read_labels(out / "grey8.tif")], [read_labels(out / "grey16.tif")],
                                thresholds=(0.9,))
    assert same.loc[0, "f1"] == 1.0
    run = json.loads((out / "run.json").read_text())
    assert run["results"]["images"]["grey8.tif"]["model_shape"] == [96, 128]
    assert run["results"]["n_objects"] == sum(counts.values())
    # Already at model scale (image_scale 0.5), and enlarged (0.25) with explicit tiles; one file
    for scale, extra in ((0.5, []), (0.25, ["--n-tiles", "2x2", "--prob-thresh", 0.4, "--nms-thresh", 0.3])):
        out = tmp_path / f"out-{scale}"
        done = run_cli("segment", "--model", model, "--images", inputs / "grey8.tif", "--out", out,
                       "--image-scale", scale, *extra)
        assert done.returncode == 0, done.stderr[-3000:]
        _check_outputs(out, "grey8", (192, 256))
        assert sorted(p.name for p in out.iterdir()) == ["grey8.geojson", "grey8.tif",
                                                         "grey8_objects.csv", "run.json"]
        run = json.loads((out / "run.json").read_text())
        expected = [round(192 * 0.5 / scale), round(256 * 0.5 / scale)]
        assert run["results"]["images"]["grey8.tif"]["model_shape"] == expected
        if extra:
            assert run["results"]["thresholds"] == {"prob": 0.4, "nms": 0.3}
            assert run["results"]["images"]["grey8.tif"]["n_tiles"] == [2, 2]
    check()


def test_segment_with_an_image_pyramid(tiny, tmp_path, unchanged):
    """--pyramid with a real network: every organoid once (from the coarsest level where it is
    at least 8 px across), the outputs as consistent as with one scale."""
    data, model = tiny
    meta = json.loads((model / "orgaseg_model.json").read_text())
    assert meta["pyramid"]["levels"][0] == 1.0 and "1" in meta["pyramid"]["scores"]
    rng = np.random.default_rng(11)
    image, truth = disc_pair(rng, (192, 256), n=6, radius=(14, 24))
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "discs.tif"
    tifffile.imwrite(path, image)
    check = unchanged(path)
    for pyramid in ("none", "1,2"):
        out = tmp_path / f"out-{pyramid}"
        done = run_cli("segment", "--model", model, "--images", path, "--out", out, "--pyramid", pyramid)
        assert done.returncode == 0, done.stderr[-3000:]
        _check_outputs(out, "discs", (192, 256))
        run = json.loads((out / "run.json").read_text())
        assert run["results"]["images"]["discs.tif"]["pyramid"] == ([1.0] if pyramid == "none" else [1.0, 2.0])
        f1 = segmentation_metrics([truth], [read_labels(out / "discs.tif")], thresholds=(0.5,)).loc[0, "f1"]
        assert f1 >= 0.8, (pyramid, f1)  # no organoid found twice, none lost
    done = run_cli("segment", "--model", model, "--images", path, "--out", tmp_path / "bad", "--pyramid", "2,4")
    assert done.returncode != 0 and "pyramid" in done.stderr and not (tmp_path / "bad").exists()
    # test-time views are the U-Net's and the pixel forest's: refused for StarDist, nothing written
    done = run_cli("segment", "--model", model, "--images", path, "--out", tmp_path / "bad", "--tta", "8")
    assert done.returncode != 0 and "is a StarDist model: --tta" in done.stderr and not (tmp_path / "bad").exists()
    check()


LEAN_PREDICT_CHECK = r"""
import json, sys
from pathlib import Path
import numpy as np
from stardist.models import StarDist2D
from orgaseg_core.segmentation.model import load_model
folder = Path(sys.argv[1]).resolve()
loaded = load_model(folder)
plain = StarDist2D(None, name=folder.name, basedir=str(folder.parent))
plain.thresholds = dict(loaded.model.thresholds._asdict())
keras = loaded.model.keras_model
calls = {"on_batch": 0}
on_batch = keras.predict_on_batch
def counted(x):
    calls["on_batch"] += 1
    return on_batch(x)
keras.predict_on_batch = counted
rng = np.random.default_rng(5)
same, objects, per_call = [], 0, []
for tiles in ((1, 1), (2, 2)):
    before = calls["on_batch"]
    x = rng.random((96, 128)).astype(np.float32)
    x[20:50, 30:60] += 2.0
    a, da = loaded.model.predict_instances(x, n_tiles=tiles, show_tile_progress=False)
    b, db = plain.predict_instances(x, n_tiles=tiles, show_tile_progress=False)
    same.append(bool(np.array_equal(a, b)) and np.allclose(da["prob"], db["prob"]))
    per_call.append(calls["on_batch"] - before)
    objects += int(a.max())
batch = rng.random((40, 96, 128, 1)).astype(np.float32)  # more than one batch: Keras' own predict
before = calls["on_batch"]
big = [np.asarray(y) for y in keras.predict(batch, verbose=0)]
print(json.dumps({"same": same, "objects": objects, "on_batch": per_call, "big_on_batch": calls["on_batch"] - before,
                  "big_shapes": [list(y.shape) for y in big]}))
"""


def test_loaded_model_predicts_without_keras_per_call_pipeline(tiny):
    """load_model runs StarDist's one-image Keras calls as predict_on_batch: the same labels and
    probabilities as StarDist's own model object, with and without tiles."""
    data, model = tiny
    done = subprocess.run([sys.executable, "-c", LEAN_PREDICT_CHECK, str(model)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["same"] == [True, True]
    assert result["on_batch"][0] == 1 and result["on_batch"][1] >= 2  # untiled: one call; tiled: per tile
    assert result["big_on_batch"] == 0 and result["big_shapes"][0][0] == 40


def test_segment_folder_with_corrupt_file(tiny, tmp_path, unchanged, capsys):
    data, model = tiny
    inputs = tmp_path / "inputs"
    shutil.copytree(data / "val" / "images", inputs)
    (inputs / "broken.tif").write_bytes(b"this is not a TIFF")
    (inputs / "notes.txt").write_text("ignored: not an image")
    check = unchanged(inputs)
    out = tmp_path / "out"
    done = run_cli("segment", "--model", model, "--images", inputs, "--out", out)
    assert done.returncode == 1
    assert "broken.tif" in done.stderr and "1 of 3 image(s)" in done.stderr
    assert "segment: 2 image(s)" in done.stdout and "1 file(s) failed" in done.stdout
    for stem in ("val_0", "val_1"):
        _check_outputs(out, stem, SHAPE)
    assert not (out / "broken.tif").exists() and not (out / "broken.geojson").exists()
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and any("broken.tif" in f for f in run["results"]["failed"])
    check()
    # Writing into the same folder again is refused without --overwrite (checked in-process:
    # the refusal comes before TensorFlow is loaded).
    assert cli.main(["segment", "--model", str(model), "--images", str(inputs / "val_0.tif"),
                     "--out", str(out)]) == 1
    assert "not empty" in capsys.readouterr().err
    assert "tensorflow" not in sys.modules


def test_continue_training_from_init_model(tiny, tmp_path, unchanged):
    data, model = tiny
    check = unchanged(model)
    more = tmp_path / "more"
    done = run_cli("train-segmentation", "--data", data, "--model-out", more, "--backend", "stardist", "--epochs", 1,
                   "--steps-per-epoch", 2, "--batch-size", 2, "--patch-size", 64,
                   "--init-model", model, "--seed", 2)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((more / "orgaseg_model.json").read_text())
    assert meta["training"]["init_model"] == str(model)
    assert meta["patch_size"] == [64, 64]
    assert "starting from the weights of" in done.stderr
    check()
    # The model folder is an input: writing the new model inside it is refused (before TF).
    with pytest.raises(OrgasegError, match="must not be"):
        train_segmentation(data, model / "inner", epochs=1, steps_per_epoch=1, init_model=model)
    assert "tensorflow" not in sys.modules
    # Without --backend (the U-Net, the default since 0.18) --init-model is refused, naming the
    # way back to StarDist, before anything is read or written
    refused = run_cli("train-segmentation", "--data", data, "--model-out", tmp_path / "never",
                      "--init-model", model)
    assert refused.returncode == 1 and "init_model" in refused.stderr
    assert "--backend stardist" in refused.stderr and not (tmp_path / "never").exists()


def test_default_backend_refuses_stardist_options_by_name(split_data, tmp_path):
    """The default backend is the U-Net (0.18): StarDist's options given without --backend are
    refused with the way back, before any data is read or a framework is imported."""
    from orgaseg_core import steps

    for options, name in (({"n_rays": 16}, "n_rays"), ({"grid": "1x1"}, "grid"),
                          ({"refine": "edges"}, "refine")):
        with pytest.raises(OrgasegError, match=rf"--backend unet \(the default\): {name} .*--backend stardist"):
            steps.train_segmentation(split_data, tmp_path / "model", **options)
    assert not (tmp_path / "model").exists()
    assert "tensorflow" not in sys.modules


@pytest.mark.skipif(importlib.util.find_spec("stardist") is None or importlib.util.find_spec("tensorflow") is None,
                    reason="the segmentation extra (stardist, tensorflow) is not installed")
def test_analyze_segments_with_stardist(story, tmp_path):
    """The story's data with a StarDist model (the example trains the default U-Net): trained on
    its split, then analyze with the story's classifier, StarDist on TensorFlow in the
    segmentation process and the classifier on torch in another."""
    demo, _ = story
    model = tmp_path / "stardist"
    done = run_cli("train-segmentation", "--data", demo / "split-segmentation", "--model-out", model,
                   "--backend", "stardist", "--epochs", 14, "--steps-per-epoch", 15, "--seed", 0)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((model / "orgaseg_model.json").read_text())["kind"] == MODEL_KIND
    refused = run_cli("analyze", "--segmentation-model", model, "--classifier", demo / "models" / "classifier",
                      "--images", demo / "new-images" / "images", "--out", tmp_path / "never", "--tta", 2)
    assert refused.returncode == 1 and "is a StarDist model: --tta" in refused.stderr
    assert not (tmp_path / "never").exists()
    out = tmp_path / "analysis"
    objects = analyze_story_images(demo, model, out)
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 2 and (summary["objects"] > 0).all()
    assert objects["segmentation_probability"].between(0, 1).all()
    # StarDist's thresholds from the model: every object at least as probable as the threshold
    prob = json.loads((model / "thresholds.json").read_text())["prob"]
    assert (objects["segmentation_probability"] >= prob - 1e-6).all()
