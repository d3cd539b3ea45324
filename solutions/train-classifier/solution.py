"""album solution orgaseg:train-classifier -- train a torchvision classifier of organoid crops.

A thin wrapper around ``orgaseg_core.steps.train_classifier`` (the same function as
``orgaseg train-classifier``). album reads this file before the solution's environment exists,
so ``orgaseg_core`` is imported only inside ``run``, ``pre_test`` and ``test``.
"""
from album.runner.api import get_args, setup


def run():
    from orgaseg_core import steps
    from orgaseg_core.album_support import run_step

    args = get_args()
    # lists and 'auto' are parsed inside run_step, so a bad value is one ERROR line (exit 1)
    run_step(lambda: steps.train_classifier(
        args.data, args.model_out, images=args.images, masks=args.masks, families=args.families,
        val_fraction=args.val_fraction, test_fraction=args.test_fraction, padding=args.padding,
        context=args.context,
        n_trees=args.n_trees, outline_augmentation=args.outline_augmentation,
        architectures=args.architectures, learning_rates=args.learning_rates,
        batch_sizes=args.batch_sizes, weight_decays=args.weight_decays,
        grid_epochs=args.grid_epochs, epochs=args.epochs, patience=args.patience,
        input_size=args.input_size, weights=args.weights, pretrained=args.pretrained,
        review_below=args.review_below, seed=args.seed, num_workers=args.num_workers,
        device=args.device, overwrite=args.overwrite))


def pre_test():
    import tempfile
    from pathlib import Path

    from orgaseg_core import steps

    root = Path(tempfile.mkdtemp(prefix="orgaseg-album-test-"))
    steps.demo_data(root / "data", n_images=6, seed=7, size=(240, 320))
    steps.annotations_to_masks(root / "data" / "geojsons", root / "data" / "images", root / "masks")
    # a tiny run from annotated images (all three families; a 32 px CNN of one epoch, 30 trees):
    # this checks that training works end to end and writes a complete classifier folder, not
    # that the classifier is good
    return {"--images": str(root / "data" / "images"), "--masks": str(root / "masks"),
            "--model_out": str(root / "model"), "--val_fraction": "0.34", "--test_fraction": "0.34",
            "--n_trees": "30", "--architectures": "resnet18", "--learning_rates": "0.001",
            "--batch_sizes": "16", "--grid_epochs": "1", "--epochs": "1", "--patience": "1",
            "--input_size": "32", "--device": "cpu"}


def test():
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import pandas as pd
    from PIL import Image

    args = get_args()
    masks, model = Path(args.masks), Path(args.model_out)
    classes = sorted({c for table in masks.glob("*_objects.csv")
                      for c in pd.read_csv(table, keep_default_na=False)["class"] if c})
    families = {"measurements", "cnn", "combined"}
    description = json.loads((model / "classifier.json").read_text())
    assert description["family"] in families and description["class_names"] == classes, description
    # what the classifier holds, read back by the orgaseg command line of this environment
    info = subprocess.run([sys.executable, "-m", "orgaseg_core", "classifier-info", "--model",
                           str(model), "--json"], capture_output=True, text=True, check=True)
    info = json.loads(info.stdout)
    assert {"family", "class_names", "temperature", "needs_crops", "needs_measurements",
            "crop_padding", "review_below"} <= set(info), sorted(info)
    assert info["family"] == description["family"] and info["class_names"] == classes
    assert info["temperature"] > 0 and info["crop_padding"] == 10 and info["review_below"] == 0.6
    if info["needs_crops"]:  # the CNN is used (cnn or combined)
        assert info["architecture"] == "resnet18" and info["input_size"] == 32
    assert (model / "model.pt").is_file() or (model / "measurements.skops").is_file()
    report = json.loads((model / "report.json").read_text())
    assert report["family"] == info["family"] and report["class_names"] == classes
    assert sorted(row["family"] for row in report["candidates"]) == sorted(families)
    assert sum(bool(row["chosen"]) for row in report["candidates"]) == 1
    split = pd.read_csv(model / "split.csv")
    n_test = int((split["split"] == "test").sum())
    assert report["report_split"] == "test" and report["test"]["n"] == n_test > 0
    assert 0.0 <= report["test"]["macro_f1"] <= 1.0
    grid = pd.read_csv(model / "grid.csv")
    rows = grid[grid["stage"] == "family"]
    assert sorted(rows["family"]) == sorted(families) and rows["chosen"].sum() == 1
    assert rows.loc[rows["chosen"], "family"].item() == info["family"]
    assert set(grid["stage"]) <= {"family", "cnn grid"}
    table = pd.read_csv(model / "classification_report.csv")
    assert list(table["class"]) == classes + ["macro avg", "weighted avg", "accuracy"]
    assert table["support"].iloc[-1] == n_test
    for name in ("confusion_matrix.png", "reliability.png"):
        with Image.open(model / name) as png:
            assert png.format == "PNG" and min(png.size) > 200, (name, png.size)
    assert (model / "run.json").is_file()
    if model.parent.name.startswith("orgaseg-album-test-"):
        shutil.rmtree(model.parent, ignore_errors=True)


setup(
    group="orgaseg",
    name="train-classifier",
    version="0.21.0",
    album_api_version="0.7.3",
    title="Train an organoid morphology classifier",
    description=(
        "Trains a classifier that sorts organoids into morphological classes such as Cyst, "
        "Filled in or Branched, from annotated images (images and the label images of "
        "orgaseg:annotations-to-masks) or from crops split into class folders (orgaseg:split). "
        "Three candidate families: a random forest on the organoids' shape and intensity "
        "measurements, a neural network (a torchvision ResNet or another architecture) on the "
        "crops, and their combination; the best on the validation images is kept, its "
        "confidence is calibrated, and precision, recall and F1 per class are reported on the "
        "test images. The output folder holds everything orgaseg:classify and orgaseg:analyze "
        "need."
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
        {"text": "Pedregosa F. et al. Scikit-learn: Machine Learning in Python. Journal of "
                 "Machine Learning Research 12, 2825-2830 (2011).",
         "url": "https://jmlr.org/papers/v12/pedregosa11a.html"},
        {"text": "Guo C., Pleiss G., Sun Y., Weinberger K. Q. On Calibration of Modern Neural "
                 "Networks. ICML 2017.", "url": "https://arxiv.org/abs/1706.04599"},
    ],
    tags=["organoids", "brightfield", "classification", "morphology", "PyTorch", "torchvision",
          "ResNet", "random forest", "scikit-learn", "training", "orgaseg"],
    license="MIT",
    documentation=["README.md"],
    covers=[],
    args=[
        {"name": "data", "type": "directory", "required": False, "default": None,
         "description": "Folder made by orgaseg:split (mode classification): train/, val/ and "
                        "optionally test/, each with one sub-folder of crops per class; crops only: "
                        "trains the cnn family. Or give images and masks instead. Not changed."},
        {"name": "images", "type": "directory", "required": False, "default": None,
         "description": "Folder of annotated images (with masks): every object becomes a crop and "
                        "a row of measurements; all families can be trained. Not changed."},
        {"name": "masks", "type": "directory", "required": False, "default": None,
         "description": "Folder written by orgaseg:annotations-to-masks for the images "
                        "(<stem>.tif label images and <stem>_objects.csv classes). Not changed."},
        {"name": "model_out", "type": "directory", "required": True,
         "description": "New or empty folder for the classifier (classifier.json, model.pt "
                        "and/or measurements.skops), the reports (report.json, "
                        "classification_report.csv, confusion_matrix.png, reliability.png, "
                        "grid.csv, split.csv) and TensorBoard logs."},
        {"name": "families", "type": "string", "default": "measurements,cnn,combined",
         "description": "Candidate families, comma-separated: measurements (random forest on the "
                        "object measurements), cnn (network on the crops), combined (their "
                        "weighted mean). The best on validation is kept."},
        {"name": "val_fraction", "type": "float", "default": 0.15,
         "description": "With images: fraction of the images for validation (model choice, "
                        "calibration), e.g. 0.15."},
        {"name": "test_fraction", "type": "float", "default": 0.15,
         "description": "With images: fraction of the images for the final test (used once), "
                        "e.g. 0.15."},
        {"name": "padding", "type": "integer", "default": 10,
         "description": "With images: pixels of context around each object's crop (as "
                        "orgaseg:extract-objects cuts them; orgaseg:analyze uses the same)."},
        {"name": "context", "type": "float", "default": 0.25,
         "description": "With images: and this fraction of the object's size on every side of "
                        "its crop (0-2; stored with the classifier, orgaseg:analyze uses the "
                        "same). A segmented outline that misses thin branches still shows them "
                        "in the crop."},
        {"name": "n_trees", "type": "integer", "default": 300,
         "description": "Trees of the measurement random forest, e.g. 300."},
        {"name": "outline_augmentation", "type": "boolean", "default": True,
         "description": "Also train the measurement forest on eroded, dilated and smoothed "
                        "outlines, so that segmented outlines do not throw it (True/False)."},
        {"name": "architectures", "type": "string", "default": "resnet18",
         "description": "Network architectures to try, separated by commas: resnet18, resnet50, "
                        "resnext50_32x4d, wide_resnet50_2, densenet121, efficientnet_b0, "
                        "mobilenet_v3_small, convnext_tiny. resnet18 suits a few hundred crops."},
        {"name": "learning_rates", "type": "string", "default": "0.001,0.0003",
         "description": "Learning rates to try, separated by commas, e.g. 0.001,0.0003; each is "
                        "tried with every other setting and the best is kept."},
        {"name": "batch_sizes", "type": "string", "default": "32",
         "description": "Numbers of crops per training step to try, separated by commas, e.g. "
                        "16,32; lower them if memory runs out."},
        {"name": "weight_decays", "type": "string", "default": "0.0001",
         "description": "Weight decays (regularisation against over-fitting) to try, separated "
                        "by commas, e.g. 0.0001,0.001; 0 switches it off."},
        {"name": "grid_epochs", "type": "integer", "default": 3,
         "description": "Training rounds (passes over all training crops) of each short trial "
                        "of the settings search, e.g. 3."},
        {"name": "epochs", "type": "integer", "default": 15,
         "description": "Most training rounds of the final run with the best settings; it stops "
                        "earlier when the validation score stops improving."},
        {"name": "patience", "type": "integer", "default": 5,
         "description": "Stop the final run after this many rounds without a better validation "
                        "score (macro-F1); the best round's model is kept."},
        {"name": "input_size", "type": "string", "default": "auto",
         "description": "Size in pixels the crops are scaled to for the network (32 to 1024), "
                        "e.g. 128; 'auto' chooses it from the sizes of the training crops."},
        {"name": "weights", "type": "file", "default": None,
         "description": "Optional local weights file to start from (a torchvision state_dict "
                        "of the one architecture given, or an orgaseg model.pt). Leave empty to "
                        "train from scratch; nothing is downloaded."},
        {"name": "pretrained", "type": "boolean", "default": False,
         "description": "Start the CNN from torchvision's ImageNet weights (read from "
                        "torchvision's cache, downloaded there when online) (True/False)."},
        {"name": "review_below", "type": "float", "default": 0.6,
         "description": "Objects whose calibrated confidence (0-1) is below this are flagged for "
                        "review by orgaseg:classify and orgaseg:analyze."},
        {"name": "seed", "type": "integer", "default": 0,
         "description": "Random seed (a whole number): the same seed and data give the same "
                        "model on the CPU."},
        {"name": "num_workers", "type": "integer", "default": 0,
         "description": "Extra processes that prepare crops while the network trains (0 = none, "
                        "the safe choice; 2-4 can speed up training on a GPU)."},
        {"name": "device", "type": "string", "default": "auto",
         "description": "Where to train: 'cpu', 'cuda' (an NVIDIA GPU) or 'auto' (the GPU when "
                        "there is one, else the CPU)."},
        {"name": "overwrite", "type": "boolean", "default": False,
         "description": "Allow writing into a model folder that already holds files "
                        "(True/False); files of the same name are replaced."},
    ],
    run=run,
    pre_test=pre_test,
    test=test,
    dependencies={"environment_file": "environment.yml"},
)
