"""album solution orgaseg:classify -- the morphological class of every organoid crop.

A thin wrapper around ``orgaseg_core.steps.classify`` (the same function as
``orgaseg classify``). album reads this file before the solution's environment exists, so
``orgaseg_core`` is imported only inside ``run``, ``pre_test`` and ``test``.
"""
from album.runner.api import get_args, setup


def run():
    from orgaseg_core import steps
    from orgaseg_core.album_support import run_step

    args = get_args()
    # 'auto' (review_below, family) is parsed inside run_step: a bad value is one ERROR line
    run_step(lambda: steps.classify(args.model, args.objects, args.out, batch_size=args.batch_size,
                                    device=args.device, review_below=args.review_below,
                                    family=args.family, overwrite=args.overwrite))


def pre_test():
    import tempfile
    from pathlib import Path

    from orgaseg_core import steps

    root = Path(tempfile.mkdtemp(prefix="orgaseg-album-test-"))
    steps.demo_data(root / "data", n_images=6, seed=9, size=(240, 320))
    steps.annotations_to_masks(root / "data" / "geojsons", root / "data" / "images", root / "masks")
    # a tiny classifier from the annotated images (30 trees, a 32 px CNN of one epoch): the test
    # checks what classify writes, not how good the classifier is
    steps.train_classifier(None, root / "model", images=root / "data" / "images",
                           masks=root / "masks", val_fraction=0.34, test_fraction=0.34,
                           n_trees=30, architectures=["resnet18"], learning_rates=[1e-3],
                           batch_sizes=[16], weight_decays=[1e-4], grid_epochs=1, epochs=1,
                           patience=1, input_size=32, seed=0, device="cpu")
    steps.extract_objects(root / "data" / "images", root / "masks", root / "objects")
    # the combined candidate reads both the crops (in batches; one that does not divide the
    # number of crops, so the last batch is a short one) and the measurements of objects.csv
    return {"--model": str(root / "model"), "--objects": str(root / "objects"),
            "--out": str(root / "predicted"), "--batch_size": "16", "--device": "cpu",
            "--family": "combined", "--review_below": "0.9"}


def test():
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np
    import pandas as pd

    args = get_args()
    objects, out = Path(args.objects), Path(args.out)
    info = subprocess.run([sys.executable, "-m", "orgaseg_core", "classifier-info", "--model",
                           str(args.model), "--family", args.family, "--json"],
                          capture_output=True, text=True, check=True)
    info = json.loads(info.stdout)
    class_names = info["class_names"]
    assert info["family"] == args.family == "combined"
    table = pd.read_csv(objects / "objects.csv")
    predictions = pd.read_csv(out / "predictions.csv")
    assert len(table) % int(args.batch_size) != 0, "the test needs a short last batch"
    # one row per object, in the order of objects.csv, with its measurements carried over
    assert list(predictions["crop"]) == list(table["crop"])
    assert list(predictions["label"]) == list(table["label"])
    assert np.allclose(predictions["area_px"], table["area_px"])
    columns = [f"prob_{name}" for name in class_names]
    assert list(predictions.columns[:6 + len(columns)]) == \
        ["image", "label", "crop", "predicted_class", "confidence", "needs_review"] + columns
    probs = predictions[columns].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4) and (probs >= 0).all()
    assert list(predictions["predicted_class"]) == [class_names[i] for i in probs.argmax(axis=1)]
    assert np.allclose(predictions["confidence"], probs.max(axis=1))
    assert set(predictions["predicted_class"]) <= set(class_names)
    review = float(args.review_below)
    assert list(predictions["needs_review"]) == list(predictions["confidence"] < review)
    record = json.loads((out / "run.json").read_text())
    assert record["results"]["family"] == "combined" and record["results"]["review_below"] == review
    if out.parent.name.startswith("orgaseg-album-test-"):
        shutil.rmtree(out.parent, ignore_errors=True)


setup(
    group="orgaseg",
    name="classify",
    version="0.21.0",
    album_api_version="0.7.3",
    title="Classify organoid morphology",
    description=(
        "Gives every organoid its morphological class (e.g. Cyst, Filled in, Branched) with a "
        "classifier from orgaseg:train-classifier (a random forest on the measurements, a "
        "neural network on the crops, or both): the predicted class, a calibrated confidence, "
        "a flag for uncertain organoids to review and one probability per class, in one table "
        "(predictions.csv) together with the organoid's measurements. Takes the output folder "
        "of orgaseg:extract-objects or, for a network classifier, any folder of crops."
    ),
    solution_creators=["orgaseg developers"],
    cite=[
        {"text": "orgaseg developers. orgaseg: organoid segmentation and morphological "
                 "classification for brightfield microscopy, version 0.21.0 (the source "
                 "repository of this album catalog)."},
        {"text": "Paszke A., Gross S., Massa F., Lerer A., Bradbury J., Chanan G., Killeen T., "
                 "Lin Z., Gimelshein N., Antiga L., et al. PyTorch: An Imperative Style, "
                 "High-Performance Deep Learning Library. Advances in Neural Information "
                 "Processing Systems 32 (NeurIPS 2019), 8024-8035.",
         "url": "https://arxiv.org/abs/1912.01703"},
        {"text": "TorchVision maintainers and contributors. TorchVision: PyTorch's Computer "
                 "Vision library (2016).", "url": "https://github.com/pytorch/vision"},
        {"text": "He K., Zhang X., Ren S., Sun J. Deep Residual Learning for Image Recognition. "
                 "CVPR 2016, 770-778.", "doi": "10.1109/CVPR.2016.90"},
    ],
    tags=["organoids", "brightfield", "classification", "morphology", "PyTorch", "torchvision",
          "random forest", "orgaseg"],
    license="MIT",
    documentation=["README.md"],
    covers=[],
    args=[
        {"name": "model", "type": "directory", "required": True,
         "description": "Classifier folder written by orgaseg:train-classifier (or its "
                        "classifier.json / model.pt); it knows its classes and how to prepare "
                        "the crops and measurements."},
        {"name": "objects", "type": "directory", "required": True,
         "description": "Output folder of orgaseg:extract-objects (objects.csv and crops/), or, "
                        "for a network (cnn) classifier only, any folder of crop images named "
                        "<image>_<number>.tif. Not changed."},
        {"name": "out", "type": "directory", "required": True,
         "description": "New or empty folder for predictions.csv (class, confidence, review "
                        "flag and one probability per class for every object); not the model's "
                        "folder."},
        {"name": "batch_size", "type": "integer", "default": 64,
         "description": "Crops classified at once, e.g. 64; lower it if memory runs out. The "
                        "results do not depend on it."},
        {"name": "device", "type": "string", "default": "auto",
         "description": "Where to compute: 'cpu', 'cuda' (an NVIDIA GPU) or 'auto' (the GPU when "
                        "there is one, else the CPU)."},
        {"name": "review_below", "type": "string", "default": "auto",
         "description": "Flag objects whose confidence is below this (0-1) for review "
                        "(needs_review); 'auto' uses the classifier's threshold."},
        {"name": "family", "type": "string", "default": "auto",
         "description": "Use this trained candidate of the classifier folder (measurements, cnn, "
                        "combined) instead of the one chosen on validation ('auto')."},
        {"name": "overwrite", "type": "boolean", "default": False,
         "description": "Allow writing into an output folder that already holds files "
                        "(True/False); files of the same name are replaced."},
    ],
    run=run,
    pre_test=pre_test,
    test=test,
    dependencies={"environment_file": "environment.yml"},
)
