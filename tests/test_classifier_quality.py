"""Quality of the crop classifier trained with its DEFAULT settings on generated data.

Training data: the QuPath-style crops of 40 generated images (seed 0), sorted by class and
split by source image (28 images train, 6 validation, 6 test). Held-out data: 8 images of
ANOTHER seed, never seen in training, classified twice:

- their QuPath-style crops (the objects' bounding boxes, as in training);
- the crops ``extract-objects`` cuts from their label images (default 10 px padding), i.e. the
  inference pipeline, whose crops carry context the training crops lack.

Both must reach a macro-F1 of at least 0.85. About 3 minutes on 2 idle CPU cores.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.torch, pytest.mark.slow]

TARGET_MACRO_F1 = 0.85


def _macro_f1(truth, predicted, class_names):
    from orgaseg_core.classification.train import classification_metrics

    index = {name: i for i, name in enumerate(class_names)}
    assert set(truth) <= set(index), f"unexpected true classes {set(truth) - set(index)}"
    return classification_metrics([index[t] for t in truth], [index[p] for p in predicted], class_names)


def test_default_training_classifies_held_out_images(tmp_path):
    from orgaseg_core.classification.predict import classify
    from orgaseg_core.classification.train import train_classifier
    from orgaseg_core.common.classes import canonical_class_name
    from orgaseg_core.data.demo import make_demo_data
    from orgaseg_core.data.masks import annotations_to_masks
    from orgaseg_core.data.sort_crops import class_from_crop_name, sort_crops
    from orgaseg_core.data.split import split_dataset
    from orgaseg_core.objects.extract import extract_objects

    start = time.perf_counter()
    make_demo_data(tmp_path / "demo", n_images=40, seed=0)
    sort_crops(tmp_path / "demo" / "crops", tmp_path / "sorted")
    split = split_dataset(tmp_path / "sorted", tmp_path / "split", mode="classification", seed=0)
    assert split.group_counts["train"] >= 24
    prepared = time.perf_counter()

    # Defaults only: nothing but data, output folder and seed.
    trained = train_classifier(tmp_path / "split", tmp_path / "model", seed=0)
    training = time.perf_counter()
    print()
    print(trained.summary())

    # Held-out images from another seed: never part of any split.
    make_demo_data(tmp_path / "heldout", n_images=8, seed=1)
    heldout = tmp_path / "heldout"
    result = classify(trained.checkpoint, heldout / "crops", tmp_path / "pred_qupath")
    predictions = pd.read_csv(result.predictions_csv)
    truth = [class_from_crop_name(c) for c in predictions["crop"]]
    keep = [t is not None for t in truth]   # the unclassified debris annotation has no class
    metrics_qupath = _macro_f1([canonical_class_name(t) for t in np.array(truth, dtype=object)[keep]],
                               predictions.loc[keep, "predicted_class"], result.class_names)

    annotations_to_masks(heldout / "geojsons", heldout / "images", tmp_path / "masks")
    extract_objects(heldout / "images", tmp_path / "masks", tmp_path / "objects")
    result = classify(trained.checkpoint, tmp_path / "objects", tmp_path / "pred_objects")
    predictions = pd.read_csv(result.predictions_csv)
    classes = pd.concat([pd.read_csv(f).assign(stem=f.name[: -len("_objects.csv")])
                         for f in sorted((tmp_path / "masks").glob("*_objects.csv"))])
    joined = predictions.merge(classes[["stem", "label", "class"]], on=["stem", "label"],
                               how="left", validate="one_to_one")
    assert joined["class"].notna().all()
    metrics_objects = _macro_f1(joined["class"], joined["predicted_class"], result.class_names)
    end = time.perf_counter()

    print(f"data {prepared - start:.0f} s, training {training - prepared:.0f} s, "
          f"held-out data + classification {end - training:.0f} s, total {end - start:.0f} s")
    for name, m in (("held-out QuPath crops", metrics_qupath),
                    ("held-out extract-objects crops", metrics_objects)):
        print(f"{name}: macro-F1 {m['macro_f1']:.3f}, accuracy {m['accuracy']:.3f} ({m['n']} crops)")
        print("  confusion (rows true, columns predicted, order "
              f"{', '.join(result.class_names)}): {m['confusion_matrix']}")
    assert metrics_qupath["n"] >= 100 and metrics_objects["n"] >= 100
    assert metrics_qupath["macro_f1"] >= TARGET_MACRO_F1
    assert metrics_objects["macro_f1"] >= TARGET_MACRO_F1
