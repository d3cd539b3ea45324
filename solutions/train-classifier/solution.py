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
        args.data, args.model_out, architectures=args.architectures,
        learning_rates=args.learning_rates, batch_sizes=args.batch_sizes,
        weight_decays=args.weight_decays, grid_epochs=args.grid_epochs, epochs=args.epochs,
        patience=args.patience, input_size=args.input_size, weights=args.weights, seed=args.seed,
        num_workers=args.num_workers, device=args.device, overwrite=args.overwrite))


def pre_test():
    import tempfile
    from pathlib import Path

    from orgaseg_core import steps

    root = Path(tempfile.mkdtemp(prefix="orgaseg-album-test-"))
    steps.demo_data(root / "data", n_images=4, seed=7, size=(240, 320))
    steps.sort_crops(root / "data" / "crops", root / "sorted")
    steps.split(root / "sorted", root / "split", mode="classification", train=0.5, val=0.25,
                test=0.25, seed=0)
    # a tiny run (two grid points of one epoch, then two epochs at 64 px): this checks that
    # training works end to end and writes a complete model folder, not that the model is good
    return {"--data": str(root / "split"), "--model-out": str(root / "model"),
            "--architectures": "resnet18", "--learning-rates": "0.001,0.0003", "--batch-sizes": "16",
            "--grid-epochs": "1", "--epochs": "2", "--patience": "1", "--input-size": "64",
            "--device": "cpu"}


def test():
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import pandas as pd
    from PIL import Image

    args = get_args()
    data, model = Path(args.data), Path(args.model_out)
    classes = sorted(p.name for p in (data / "train").iterdir() if p.is_dir() and any(p.iterdir()))
    # what the checkpoint holds, read back by the orgaseg command line of this environment
    info = subprocess.run([sys.executable, "-m", "orgaseg_core", "classifier-info", "--model",
                           str(model / "model.pt"), "--json"], capture_output=True, text=True, check=True)
    checkpoint = json.loads(info.stdout)
    class_names = checkpoint["class_names"]
    assert sorted(class_names) == classes, (class_names, classes)
    assert checkpoint["architecture"] == "resnet18" and checkpoint["input_size"] == 64
    assert checkpoint["normalisation"]["std"] > 0
    grid = pd.read_csv(model / "grid.csv")
    assert sorted(grid["learning_rate"]) == [0.0003, 0.001] and grid["chosen"].sum() == 1
    assert len(pd.read_csv(model / "history.csv")) <= 2
    report = json.loads((model / "report.json").read_text())
    assert report["class_names"] == class_names and report["report_split"] == "test"
    n_test = sum(len(list((data / "test" / c).iterdir())) for c in classes if (data / "test" / c).is_dir())
    assert report["test"]["n"] == n_test and 0.0 <= report["test"]["macro_f1"] <= 1.0
    table = pd.read_csv(model / "classification_report.csv")
    assert list(table["class"]) == class_names + ["macro avg", "weighted avg", "accuracy"]
    assert table["support"].iloc[-1] == n_test
    with Image.open(model / "confusion_matrix.png") as png:
        assert png.format == "PNG" and min(png.size) > 200, png.size
    assert any((model / "tensorboard").iterdir()), "no TensorBoard logs"
    assert (model / "run.json").is_file()
    if model.parent.name.startswith("orgaseg-album-test-"):
        shutil.rmtree(model.parent, ignore_errors=True)


setup(
    group="orgaseg",
    name="train-classifier",
    version="0.5.0",
    album_api_version="0.7.3",
    title="Train an organoid morphology classifier",
    description=(
        "Trains a neural network (a torchvision ResNet or another architecture, from scratch or "
        "from a local weights file) that sorts organoid crops into morphological classes such "
        "as Cyst, Filled in or Branched, from crops split into train/, val/ and test/ with one "
        "folder per class (orgaseg:split with mode classification). Tries every combination of "
        "the settings you list, keeps the best on the validation crops, stops early when the "
        "validation score stops improving and reports precision, recall and F1 per class on "
        "the test crops. The model file holds everything orgaseg:classify needs."
    ),
    solution_creators=["orgaseg developers"],
    cite=[
        {"text": "orgaseg developers. orgaseg: organoid segmentation and morphological "
                 "classification for brightfield microscopy, version 0.5.0 (the source "
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
          "ResNet", "training", "orgaseg"],
    license="MIT",
    documentation=["README.md"],
    covers=[],
    args=[
        {"name": "data", "type": "directory", "required": True,
         "description": "Folder made by orgaseg:split (mode classification): train/, val/ and "
                        "optionally test/, each with one sub-folder of crops per class. Not changed."},
        {"name": "model-out", "type": "directory", "required": True,
         "description": "New or empty folder for the trained model (model.pt), the reports "
                        "(report.json, classification_report.csv, confusion_matrix.png, grid.csv) "
                        "and TensorBoard logs."},
        {"name": "architectures", "type": "string", "default": "resnet18",
         "description": "Network architectures to try, separated by commas: resnet18, resnet50, "
                        "resnext50_32x4d, wide_resnet50_2, densenet121, efficientnet_b0, "
                        "mobilenet_v3_small, convnext_tiny. resnet18 suits a few hundred crops."},
        {"name": "learning-rates", "type": "string", "default": "0.001,0.0003",
         "description": "Learning rates to try, separated by commas, e.g. 0.001,0.0003; each is "
                        "tried with every other setting and the best is kept."},
        {"name": "batch-sizes", "type": "string", "default": "32",
         "description": "Numbers of crops per training step to try, separated by commas, e.g. "
                        "16,32; lower them if memory runs out."},
        {"name": "weight-decays", "type": "string", "default": "0.0001",
         "description": "Weight decays (regularisation against over-fitting) to try, separated "
                        "by commas, e.g. 0.0001,0.001; 0 switches it off."},
        {"name": "grid-epochs", "type": "integer", "default": 3,
         "description": "Training rounds (passes over all training crops) of each short trial "
                        "of the settings search, e.g. 3."},
        {"name": "epochs", "type": "integer", "default": 15,
         "description": "Most training rounds of the final run with the best settings; it stops "
                        "earlier when the validation score stops improving."},
        {"name": "patience", "type": "integer", "default": 5,
         "description": "Stop the final run after this many rounds without a better validation "
                        "score (macro-F1); the best round's model is kept."},
        {"name": "input-size", "type": "string", "default": "auto",
         "description": "Size in pixels the crops are scaled to for the network (32 to 1024), "
                        "e.g. 128; 'auto' chooses it from the sizes of the training crops."},
        {"name": "weights", "type": "file", "default": None,
         "description": "Optional local weights file to start from (a torchvision state_dict "
                        "of the one architecture given, or an orgaseg model.pt). Leave empty to "
                        "train from scratch; nothing is downloaded."},
        {"name": "seed", "type": "integer", "default": 0,
         "description": "Random seed (a whole number): the same seed and data give the same "
                        "model on the CPU."},
        {"name": "num-workers", "type": "integer", "default": 0,
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
