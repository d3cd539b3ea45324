"""album solution orgaseg:train-segmentation -- train an organoid segmentation model (a U-Net,
StarDist2D or a pixel random forest) on annotated organoids.

A thin wrapper around ``orgaseg_core.steps.train_segmentation`` (the same function
as ``orgaseg train-segmentation``). album reads this file before the solution's environment
exists, so ``orgaseg_core`` is imported only inside ``run``, ``pre_test`` and ``test``.
"""
from album.runner.api import get_args, setup


def run():
    from orgaseg_core import steps
    from orgaseg_core.album_support import run_step

    args = get_args()
    # 'auto' (album's default for the budget, patch, learning-rate and device options) means
    # automatic, and with another backend it counts as not given: steps.train_segmentation reads it
    # so. The U-Net (backend 'unet') runs on torch in this process; TensorFlow is imported only
    # for StarDist, so the two never meet in one process.
    run_step(lambda: steps.train_segmentation(
        args.data, args.model_out, preset=args.preset, epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch, early_stopping=args.early_stopping,
        max_minutes=args.max_minutes, batch_size=args.batch_size, patch_size=args.patch_size,
        resize=args.resize, n_rays=args.n_rays, grid=args.grid, learning_rate=args.learning_rate,
        augment=args.augment, refine=args.refine, pyramid=args.pyramid, tta=args.tta, norm_low=args.norm_low,
        norm_high=args.norm_high, seed=args.seed, init_model=args.init_model, scale=args.scale,
        backend=args.backend, n_trees=args.n_trees, device=args.device, refit=args.refit,
        overwrite=args.overwrite))


def pre_test():
    import tempfile
    from pathlib import Path

    from orgaseg_core import steps

    root = Path(tempfile.mkdtemp(prefix="orgaseg-album-test-"))
    steps.demo_data(root / "data", n_images=4, seed=5, size=(240, 320))
    steps.annotations_to_masks(root / "data" / "geojsons", root / "data" / "images", root / "masks")
    steps.preprocess(root / "data" / "images", root / "pre", masks=root / "masks", remove_vignette=True)
    steps.split(root / "pre", root / "split", mode="segmentation", train=0.5, val=0.5, test=0.0, seed=0)
    # a tiny run: this checks that training works end to end, not that the model is good
    return {"--data": str(root / "split"), "--model_out": str(root / "model"), "--epochs": "1",
            "--steps_per_epoch": "2", "--batch_size": "2", "--patch_size": "64"}


def test():
    import json
    import shutil
    from pathlib import Path

    import pandas as pd

    args = get_args()
    model = Path(args.model_out)
    meta = json.loads((model / "orgaseg_model.json").read_text())
    # the default backend (a U-Net since 0.18.0): its weights and the region setting it chose
    assert meta["kind"] == "orgaseg-unet", meta.get("kind")
    assert (model / "unet.pt").is_file() and (model / "unet.pt").stat().st_size > 0
    assert meta["regions"]["h_minima"] > 0, meta.get("regions")
    report = json.loads((model / "report.json").read_text())
    table = pd.read_csv(model / "report.csv")
    for threshold in (0.5, 0.7, 0.9):
        assert threshold in set(table["threshold"].round(2)), threshold
    assert 0.0 <= table["f1"].min() <= table["f1"].max() <= 1.0 and report
    assert (model / "run.json").is_file()
    if model.parent.name.startswith("orgaseg-album-test-"):
        shutil.rmtree(model.parent, ignore_errors=True)


setup(
    group="orgaseg",
    name="train-segmentation",
    version="0.21.0",
    album_api_version="0.7.3",
    title="Train an organoid segmentation model (U-Net, StarDist or pixel forest)",
    description=(
        "Trains a model that outlines every organoid, from images and label images split into "
        "train/ and val/ (orgaseg:split with mode segmentation), with one of three backends: a "
        "U-Net (PyTorch, on a GPU when there is one; the default since 0.18.0) that finds "
        "organoid interiors and boundaries with outlines of any shape, a StarDist2D network "
        "(TensorFlow; the default up to 0.17.0) or a pixel forest (a random forest on pixel "
        "features that finds the same interiors and boundaries; minutes on a CPU). Checks "
        "the data first and chooses the image size from the organoid sizes. StarDist: chooses "
        "the patch size, trains from scratch or continues a local model, and tunes the detection "
        "thresholds and the outline refinement on the validation images; forest and U-Net: tune "
        "how touching organoids are split on the validation images. Reports precision, recall, F1 "
        "and AP at IoU 0.5, 0.7 and 0.9 on the validation images. The model folder holds "
        "everything needed to segment new images with orgaseg:segment or orgaseg:analyze."
    ),
    solution_creators=["orgaseg developers"],
    cite=[
        {"text": "orgaseg developers. orgaseg: organoid segmentation and morphological "
                 "classification for brightfield microscopy, version 0.21.0 (the source "
                 "repository of this album catalog)."},
        {"text": "Schmidt U., Weigert M., Broaddus C., Myers G. Cell Detection with Star-convex "
                 "Polygons. MICCAI 2018.", "doi": "10.1007/978-3-030-00934-2_30"},
        {"text": "Ronneberger O., Fischer P., Brox T. U-Net: Convolutional Networks for "
                 "Biomedical Image Segmentation. MICCAI 2015.", "doi": "10.1007/978-3-319-24574-4_28"},
        {"text": "Paszke A. et al. PyTorch: An Imperative Style, High-Performance Deep Learning "
                 "Library. NeurIPS 2019."},
    ],
    tags=["organoids", "brightfield", "segmentation", "StarDist", "U-Net", "training", "orgaseg"],
    license="MIT",
    documentation=["README.md"],
    covers=[],
    args=[
        {"name": "data", "type": "directory", "required": True,
         "description": "Folder made by orgaseg:split (mode segmentation): train/ and val/, each "
                        "with images/ and masks/ of the same file names."},
        {"name": "model_out", "type": "directory", "required": True,
         "description": "New or empty folder for the trained model (weights, thresholds, "
                        "report.json/report.csv, TensorBoard logs)."},
        {"name": "preset", "type": "string", "default": "quick",
         "description": "Training budget: 'quick' (U-Net 20 rounds x 25 steps, a few minutes "
                        "on 2 CPU cores for the example data; StarDist 40 x 25 steps) or 'real' "
                        "(real images: StarDist up to 400 x 50 steps, U-Net up to 200 x 50; stops "
                        "when the validation loss has not improved for 20 rounds (U-Net 30) or "
                        "after 30 minutes)."},
        {"name": "epochs", "type": "string", "default": "auto",
         "description": "Training rounds; 'auto' takes them from the preset. More rounds train "
                        "longer and usually segment better."},
        {"name": "steps_per_epoch", "type": "string", "default": "auto",
         "description": "Training steps (batches of image patches) per round; 'auto': from the "
                        "preset."},
        {"name": "early_stopping", "type": "string", "default": "auto",
         "description": "Stop after this many rounds without a better validation loss (0: "
                        "never); 'auto': from the preset."},
        {"name": "max_minutes", "type": "string", "default": "auto",
         "description": "Stop training after this many minutes; 'auto': from the preset."},
        {"name": "batch_size", "type": "integer", "default": 4,
         "description": "Image patches per training step; lower it if memory runs out."},
        {"name": "patch_size", "type": "string", "default": "auto",
         "description": "Size of the training patches in pixels: 'auto' (256, or twice the large "
                        "organoids, fitting the smallest image), one number like 256, or "
                        "HEIGHTxWIDTH like 256x192 (multiples of 16; U-Net: one number, a "
                        "multiple of 32). Patches should hold a few whole organoids."},
        {"name": "resize", "type": "string", "default": "auto",
         "description": "Resize the images by this factor before training: 'auto' chooses it "
                        "from the organoid sizes in the masks so that the large ones fit what "
                        "the network sees (forest backend: so that the small ones are about "
                        "16 px across, never enlarged); 1 keeps them as they are. New images "
                        "are resized the same way when they are segmented."},
        {"name": "n_rays", "type": "integer", "default": 32,
         "description": "Backend 'stardist' only: number of rays describing each organoid's "
                        "outline (StarDist polygon); 32 suits round to lobed organoids."},
        {"name": "grid", "type": "string", "default": "2x2",
         "description": "Backend 'stardist' only: output grid as ROWSxCOLUMNS: 2x2 predicts at half resolution "
                        "(faster, fine for organoids larger than ~10 px)."},
        {"name": "learning_rate", "type": "string", "default": "auto",
         "description": "Initial learning rate of the optimiser, e.g. 0.0003. 'auto': 0.0003 for "
                        "StarDist (halved when the validation loss stops improving), 0.002 for "
                        "the U-Net (the peak of its warm-up and cosine schedule)."},
        {"name": "augment", "type": "boolean", "default": True,
         "description": "Random flips, rotations, size, brightness, contrast, gamma, blur and "
                        "noise changes of the training patches (True/False); keep True unless "
                        "you have a reason."},
        {"name": "refine", "type": "string", "default": "auto",
         "description": "Backend 'stardist' only: outline refinement stored in the model: "
                        "'auto' (the best of none, probability and edges on the validation "
                        "images), or one of them."},
        {"name": "pyramid", "type": "string", "default": "auto",
         "description": "For organoids of very different sizes: segment at several "
                        "scales, given as factors of the model's scale, e.g. '1,2,4' (small "
                        "organoids are found at the finer scales, each organoid is kept from "
                        "the coarsest scale where it is at least 8 px across). 'auto': tried when "
                        "the small organoids are under 16 px at the model's scale and kept only "
                        "if it does better than one scale on the validation images (the U-Net "
                        "keeps the finer scales unless they score more than 0.01 lower: its "
                        "validation image may hold no small organoids); 'none': one scale."},
        {"name": "tta", "type": "string", "default": "auto",
         "description": "Backend 'unet' only: the test-time views stored in the model, its "
                        "probabilities averaged over 1, 2, 4 or 8 flipped and turned copies of "
                        "each image when it segments (n times the prediction time). 'auto': "
                        "1 or 8 views, whichever scores better on the validation images (8 "
                        "unless they score more than 0.01 lower). Leave 'auto' with the other "
                        "backends."},
        {"name": "norm_low", "type": "float", "default": 1.0,
         "description": "Lower percentile of the per-image intensity normalisation (0-100)."},
        {"name": "norm_high", "type": "float", "default": 99.8,
         "description": "Upper percentile of the per-image intensity normalisation (0-100)."},
        {"name": "seed", "type": "integer", "default": 0,
         "description": "Random seed: the same seed and data give the same training."},
        {"name": "init_model", "type": "directory", "default": None,
         "description": "Backend 'stardist' only: optional folder of an earlier orgaseg StarDist model to continue "
                        "training from (same number of rays and grid). Leave empty to train "
                        "from scratch; nothing is downloaded."},
        {"name": "scale", "type": "string", "default": "auto",
         "description": "Pixel scale of the training images relative to the original images "
                        "(e.g. 0.5 after preprocess --scale 0.5). 'auto' reads it from the "
                        "preprocess run that made the data (else 1)."},
        {"name": "backend", "type": "string", "default": "unet",
         "description": "Which kind of model to train. 'unet' (the default since 0.18.0): a "
                        "U-Net trained from scratch with PyTorch (a GPU when there is one, see "
                        "device) that finds organoid interiors and boundaries; its outlines "
                        "follow buds and need not be star-convex, and on real brightfield "
                        "images it finds far more organoids than StarDist (GOAT images, one "
                        "image left out at a time: F1 about 0.5-0.67 at IoU 0.5 against about "
                        "0.2). It uses the budget options (preset, epochs, steps_per_epoch, "
                        "early_stopping, max_minutes), batch_size, patch_size, resize, "
                        "learning_rate, augment, norm_low, norm_high, seed, scale, device, "
                        "pyramid, tta and refit. 'stardist': a StarDist network on TensorFlow "
                        "(the default up to 0.17.0), which also uses n_rays, grid, refine and "
                        "init_model. 'forest': a random forest on pixel features that finds the "
                        "same interiors and boundaries in minutes on a CPU; it uses resize, "
                        "norm_low, norm_high, seed, scale and n_trees. Options that do not "
                        "apply to the chosen backend must stay at their defaults (a changed one "
                        "is refused, by name)."},
        {"name": "n_trees", "type": "integer", "default": 100,
         "description": "Number of trees of the pixel forest (backend 'forest' only; leave 100 "
                        "with StarDist). More trees are a little steadier and slower."},
        {"name": "device", "type": "string", "default": "auto",
         "description": "Where the U-Net trains (backend 'unet' only): 'cpu', 'cuda' (an NVIDIA "
                        "GPU), 'cuda:1' or 'auto' (the GPU when there is one). StarDist uses "
                        "TensorFlow's device; leave 'auto' with the other backends."},
        {"name": "refit", "type": "boolean", "default": False,
         "description": "Backend 'unet' only: once the network, outlines, test-time views and "
                        "pyramid are chosen on the validation images, train the stored network "
                        "again on the training and validation images together, for as many steps "
                        "(twice the training time). For a few annotated images, where the "
                        "validation image is a large part of the data (True/False)."},
        {"name": "overwrite", "type": "boolean", "default": False,
         "description": "Allow writing into a model folder that already holds files "
                        "(True/False); files of the same name are replaced."},
    ],
    run=run,
    pre_test=pre_test,
    test=test,
    dependencies={"environment_file": "environment.yml"},
)
