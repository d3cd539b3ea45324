"""Object descriptors, outline variants, calibration and the measurement forest's storage.

No torch and no TensorFlow in this process: these parts need numpy, scipy, scikit-image and
(for the forest) scikit-learn and skops only.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from skimage.draw import disk

from orgaseg_core.classification.calibration import (
    apply_temperature,
    fit_temperature,
    probabilities_to_logits,
    reliability,
    softmax,
)
from orgaseg_core.classification.objects import outline_variants, read_annotated_objects, split_by_image
from orgaseg_core.common.errors import InputFileError, OrgasegError
from orgaseg_core.objects.descriptors import DESCRIPTOR_COLUMNS, measure_and_describe, object_descriptors

pytest.importorskip("skops", reason="the measurement classifier needs skops")


def organoid_image(buds: int = 0, cyst: bool = False, dtype=np.uint8):
    """A 200x200 image (background 200) with one organoid (label 7): a dark disc, a cyst (dark
    ring, light lumen) or a disc with ``buds`` attached buds."""
    labels = np.zeros((200, 200), np.int32)
    grey = np.full((200, 200), 200.0)
    rr, cc = disk((100, 100), 30)
    labels[rr, cc] = 7
    grey[rr, cc] = 90
    if cyst:
        rr, cc = disk((100, 100), 22)
        grey[rr, cc] = 190
    for k in range(buds):
        angle = 2 * math.pi * k / buds
        for d in range(24, 52, 2):
            rr, cc = disk((100 + d * math.sin(angle), 100 + d * math.cos(angle)), 6, shape=labels.shape)
            labels[rr, cc] = 7
            grey[rr, cc] = 90
    if dtype == np.uint16:
        return (grey * 257).astype(np.uint16), labels
    return grey.astype(dtype), labels


def test_descriptors_tell_cysts_filled_and_budding_organoids_apart():
    filled = object_descriptors(*organoid_image()).iloc[0]
    cyst = object_descriptors(*organoid_image(cyst=True)).iloc[0]
    budding = object_descriptors(*organoid_image(buds=6)).iloc[0]
    assert filled["label"] == 7 and filled["background_intensity"] == 200
    assert filled["relative_mean_intensity"] == pytest.approx(0.45, abs=0.01)
    assert filled["core_rim_ratio"] == pytest.approx(1.0, abs=0.01)
    assert cyst["core_rim_ratio"] > 1.5  # light lumen, dark wall
    assert filled["n_concavities"] == 0 and filled["radius_cv"] < 0.03
    assert budding["n_concavities"] >= 6 and budding["radius_cv"] > 0.15
    assert budding["concavity_depth"] > 0.3 > filled["concavity_depth"]


def test_concavity_depth_is_the_deepest_gap_pixel():
    """A square with two notches cut from its top: two concavities, and the depth is the
    deepest gap pixel's distance to the object (6 px: the middle of the 11 px wide notch; the
    other's is 5 px), over the equivalent radius; not a sum or a mean over the gap's pixels."""
    labels = np.zeros((60, 60), np.uint16)
    labels[10:51, 10:51] = 1
    labels[10:18, 25:36] = 0  # 11 px wide, 8 deep: deepest pixel 6 px from the walls
    labels[10:18, 40:49] = 0  # 9 px wide, 8 deep: 5 px
    grey = np.full(labels.shape, 200, np.uint8)
    grey[labels == 1] = 90
    row = object_descriptors(grey, labels).iloc[0]
    radius = math.sqrt((labels == 1).sum() / math.pi)
    assert row["n_concavities"] == 2
    assert row["concavity_depth"] == pytest.approx(6 / radius)


def test_descriptors_do_not_depend_on_the_bit_depth():
    eight = object_descriptors(*organoid_image(cyst=True))
    sixteen = object_descriptors(*organoid_image(cyst=True, dtype=np.uint16))
    relative = [c for c in DESCRIPTOR_COLUMNS if c != "background_intensity"]
    np.testing.assert_allclose(eight[relative].to_numpy(), sixteen[relative].to_numpy(), rtol=1e-3, atol=1e-3)
    assert sixteen["background_intensity"].item() == pytest.approx(200 * 257)


def test_descriptors_of_sparse_and_missing_labels():
    grey, labels = organoid_image()
    labels[labels == 7] = 4_000_000  # larger than the pixel count: made consecutive internally
    labels[5:10, 5:10] = 3
    table = measure_and_describe(labels, grey)
    assert list(table["label"]) == [3, 4_000_000]
    assert list(table.columns[-len(DESCRIPTOR_COLUMNS):]) == DESCRIPTOR_COLUMNS
    assert object_descriptors(grey, np.zeros_like(labels)).empty
    with pytest.raises(OrgasegError, match="same shape"):
        object_descriptors(grey, labels[:10])


def test_outline_variants_shrink_grow_and_smooth_without_mixing_objects():
    labels = np.zeros((120, 120), np.int32)
    for label, centre in ((1, (40, 40)), (2, (40, 66))):  # touching discs
        rr, cc = disk(centre, 14)
        labels[rr, cc] = label
    labels[90:92, 10:110] = 3  # 2 px thin: gone after erosion and smoothing
    variants = outline_variants(labels)
    area = {name: {k: int((v == k).sum()) for k in (1, 2, 3)} for name, v in variants.items()}
    original = {k: int((labels == k).sum()) for k in (1, 2, 3)}
    assert all(area["eroded"][k] < original[k] for k in (1, 2)) and area["eroded"][3] == 0
    assert all(area["dilated"][k] > original[k] for k in (1, 2, 3))
    assert area["smoothed"][3] == 0 and all(area["smoothed"][k] <= original[k] for k in (1, 2))
    for variant in (variants["eroded"], variants["smoothed"]):  # never outside the object
        assert np.all((variant == 0) | (variant == labels))
    assert np.all(variants["dilated"][labels > 0] == labels[labels > 0])


def test_temperature_scaling_recovers_the_temperature_and_keeps_the_classes():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4000, 4))
    labels = np.array([rng.choice(4, p=p) for p in softmax(logits / 2.0)])
    assert fit_temperature(logits, labels) == pytest.approx(2.0, rel=0.1)
    calibrated = apply_temperature(logits, 2.0)
    assert (calibrated.argmax(1) == logits.argmax(1)).all()
    np.testing.assert_allclose(calibrated.sum(1), 1.0)
    before = reliability(softmax(logits), labels)
    after = reliability(calibrated, labels)
    assert after["ece"] < 0.03 < before["ece"]
    assert sum(b["n"] for b in after["bins"]) == 4000


def test_a_perfect_validation_split_does_not_claim_certainty():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8]] * 20)
    labels = np.array([0, 1] * 20)
    t = fit_temperature(probabilities_to_logits(probabilities), labels)
    confidence = apply_temperature(probabilities_to_logits(probabilities), t).max(1)
    assert 0.95 < confidence.mean() < 0.995 and confidence.max() < 0.999  # near (N + 1) / (N + 2)
    assert fit_temperature(np.zeros((0, 2)), []) == 1.0


def test_reliability_bins_hold_the_right_counts():
    probabilities = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    result = reliability(probabilities, [0, 1, 0, 0])
    filled = {b["high"]: (b["n"], b["accuracy"]) for b in result["bins"] if b["n"]}
    assert filled == {1.0: (2, 0.5), 0.6: (2, 1.0)}
    assert result["ece"] == pytest.approx(0.5 * 0.45 + 0.5 * 0.45)


# --------------------------------------------------------------------------- the forest file

def fitted_forest(n_features=3, n_classes=3):
    from orgaseg_core.classification.measurement_model import fit_measurement_forest

    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, n_features))
    y = np.arange(60) % n_classes
    x[:, 0] += 3 * y  # separable on the first feature
    return fit_measurement_forest(x, y, n_classes=n_classes, seed=0, n_trees=20), x, y


def test_the_measurement_forest_round_trips_and_is_checked_on_load(tmp_path):
    from sklearn.ensemble import GradientBoostingClassifier
    import skops.io as sio

    from orgaseg_core.classification.measurement_model import (
        predict_measurements,
        read_measurement_forest,
        save_measurement_forest,
    )

    forest, x, y = fitted_forest()
    path = save_measurement_forest(forest, tmp_path / "measurements.skops")
    again = read_measurement_forest(path, n_features=3, n_classes=3)
    np.testing.assert_array_equal(predict_measurements(again, x), predict_measurements(forest, x))
    assert (predict_measurements(again, x).argmax(1) == y).mean() > 0.9
    with pytest.raises(InputFileError, match="measurements.skops: is not an orgaseg measurement classifier"):
        read_measurement_forest(path, n_features=4, n_classes=3)
    other = GradientBoostingClassifier(n_estimators=3).fit(x, y)  # scikit-learn, trusted by skops
    (tmp_path / "other.skops").write_bytes(sio.dumps(other))
    with pytest.raises(InputFileError, match=r"other\.skops: (holds types|is not an orgaseg)"):
        read_measurement_forest(tmp_path / "other.skops", n_features=3, n_classes=3)
    (tmp_path / "broken.skops").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(InputFileError, match=r"broken\.skops: cannot be read"):
        read_measurement_forest(tmp_path / "broken.skops", n_features=3, n_classes=3)


def test_missing_measurement_columns_name_the_table():
    from orgaseg_core.classification.measurement_model import feature_matrix

    with pytest.raises(InputFileError, match="objects.csv: lacks the measurement columns relative_gradient"):
        feature_matrix(pd.DataFrame({"area_px": [1.0]}), ["area_px", "relative_gradient"], source="objects.csv")
    values = feature_matrix(pd.DataFrame({"a": [1.0, np.inf]}), ["a"])
    assert values[0, 0] == 1.0 and np.isnan(values[1, 0])


def measurement_model_folder(tmp_path, **changes):
    """A classifier folder of the measurements family, written by hand (no torch needed)."""
    from orgaseg_core.classification.measurement_model import MEASUREMENT_FEATURES, save_measurement_forest
    from orgaseg_core.classification.model import write_description

    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, len(MEASUREMENT_FEATURES)))
    y = np.arange(40) % 2
    x[:, 0] += 4 * y
    from orgaseg_core.classification.measurement_model import fit_measurement_forest

    folder = tmp_path / "model"
    folder.mkdir()
    save_measurement_forest(fit_measurement_forest(x, y, n_classes=2, seed=0, n_trees=10),
                            folder / "measurements.skops")
    description = {"family": "measurements", "class_names": ["Cyst", "Filled in"], "temperature": 0.5,
                   "cnn_weight": 0.0, "measurement_columns": MEASUREMENT_FEATURES, "crop_padding": 10,
                   "review_below": 0.6, "files": ["measurements.skops"], **changes}
    write_description(folder / "classifier.json", description)
    return folder, x, y


def test_a_measurements_classifier_loads_without_torch_and_predicts_calibrated(tmp_path):
    from orgaseg_core.classification.measurement_model import MEASUREMENT_FEATURES
    from orgaseg_core.classification.model import load_classifier, predict_probabilities

    folder, x, y = measurement_model_folder(tmp_path)
    classifier = load_classifier(folder)
    assert classifier.family == "measurements" and not classifier.needs_crops
    assert load_classifier(folder / "classifier.json").family == "measurements"
    table = pd.DataFrame(x, columns=MEASUREMENT_FEATURES)
    probabilities, ok = predict_probabilities(classifier, table, source="objects.csv")
    assert ok.all() and (probabilities.argmax(1) == y).mean() > 0.9
    raw = classifier.forest.predict_proba(x)
    # T = 0.5 sharpens: every confidence at least the forest's own vote share
    assert (probabilities.max(1) >= raw.max(1) - 1e-6).all()
    with pytest.raises(InputFileError, match="objects.csv: lacks the measurement columns"):
        predict_probabilities(classifier, table.drop(columns=["solidity"]), source="objects.csv")


@pytest.mark.parametrize("changes, message", [
    ({"family": "magic"}, "names the family 'magic'"),
    ({"class_names": ["Cyst"]}, "at least 2 distinct names"),
    ({"temperature": -1}, "temperature -1.0 is out of range"),
    ({"review_below": 2}, "within 0-1"),
    ({"measurement_columns": ["area_px"]}, "is not an orgaseg measurement classifier"),
])
def test_a_damaged_classifier_description_is_refused_by_name(tmp_path, changes, message):
    from orgaseg_core.classification.model import load_classifier

    folder, _x, _y = measurement_model_folder(tmp_path, **changes)
    with pytest.raises(InputFileError, match=message):
        load_classifier(folder)


def test_a_folder_without_a_description_or_network_is_refused(tmp_path):
    from orgaseg_core.classification.model import load_classifier

    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "measurements.skops").write_bytes(b"x")
    with pytest.raises(InputFileError, match="half: is not a classifier folder"):
        load_classifier(tmp_path / "half")
    (tmp_path / "model.txt").write_text("x")
    with pytest.raises(InputFileError, match="model.txt: is not a classifier model"):
        load_classifier(tmp_path / "model.txt")
    folder, _x, _y = measurement_model_folder(tmp_path)
    (folder / "classifier.json").write_text(json.dumps({"kind": "other"}))
    with pytest.raises(InputFileError, match="classifier.json: does not describe"):
        load_classifier(folder)


# --------------------------------------------------------------------------- annotated objects

@pytest.fixture(scope="module")
def annotated(tmp_path_factory):
    from orgaseg_core.data.demo import make_demo_data
    from orgaseg_core.data.masks import annotations_to_masks

    root = tmp_path_factory.mktemp("annotated")
    make_demo_data(root / "data", n_images=6, seed=3, size=(380, 504))
    annotations_to_masks(root / "data" / "geojsons", root / "data" / "images", root / "masks")
    return root


def test_annotated_objects_are_measured_as_extract_objects_measures_them(annotated, tmp_path):
    from orgaseg_core.objects.extract import extract_objects

    # the crops of training are those extract-objects cuts, context (a quarter of the size) included
    objects = read_annotated_objects(annotated / "data" / "images", annotated / "masks", padding=10,
                                     context=0.25)
    table = objects.table
    assert len(objects.crops) == len(table) > 50 and set(table["variant"]) == {""}
    assert set(table["class"]) == {"Cyst", "Filled in", "Early branching", "Branched", "Burned out"}
    assert set(objects.variants["variant"]) == {"eroded", "dilated", "smoothed"}
    extracted = extract_objects(annotated / "data" / "images", annotated / "masks", tmp_path / "objects",
                                padding=10, context=0.25)
    ours = pd.read_csv(extracted.objects_csv, dtype={"stem": str}).merge(table, on=["stem", "label"],
                                                                         suffixes=("", "_training"))
    assert len(ours) == len(table)
    for column in ("area_px", "solidity", "relative_mean_intensity", "core_rim_ratio", "n_concavities"):
        np.testing.assert_allclose(ours[column], ours[f"{column}_training"], rtol=1e-4, atol=1e-4)
    first = table.iloc[0]
    import tifffile

    crop = tifffile.imread(extracted.out / "crops" / f"{first['stem']}_{first['label']}.tif")
    from orgaseg_core.common.images import to_grey

    np.testing.assert_array_equal(to_grey(crop), objects.crops[0])


def test_annotated_objects_are_split_by_whole_images(annotated):
    objects = read_annotated_objects(annotated / "data" / "images", annotated / "masks", padding=10,
                                     outline_augmentation=False)
    assert objects.variants is None or objects.variants.empty
    assignment = split_by_image(objects, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0)
    assert set(assignment.values()) == {"train", "val", "test"}
    per_image = objects.table.groupby("stem")["split"].nunique()
    assert (per_image == 1).all()
    with pytest.raises(OrgasegError, match="too few to give the val split"):
        split_by_image(objects, {"train": 1.0, "val": 0.0, "test": 0.0}, seed=0)
