"""Segmentation quality on real brightfield organoids that orgaseg did not make (issue 10).

Data: ``../shared/realdata/goat-dev/`` (GOAT, GPL-3.0; read from there, never copied into the
repository): 5 images of 2048x1536 px, one organoid type each, with instance masks. Leave one
image out: for each of the five, the other four are preprocessed (``--scale``, ``--tiles``),
split into train/val by source image, a model is trained with ``orgaseg train-segmentation``
(every argument after ``--`` is passed on), the held-out image is segmented at full resolution
and compared with its mask. Printed per fold and pooled over the folds: objects, predictions,
F1 at IoU 0.5 / 0.75 / 0.9, mean IoU of the matches, training time.

``--unannotated`` then segments every image of ``../shared/realdata/unannotated/`` (RGB JPEG,
16-bit TIFF, OME-flavoured TIFFs, names with spaces; no ground truth) with the first fold's
model and writes an outline overlay per image into ``WORK/unannotated/<folder>/overlays/``.

Since 0.18 ``train-segmentation`` trains a U-Net unless told otherwise; the first four commands
below trained StarDist, the default before: add ``--backend stardist`` after ``--`` to repeat
them. The default on these images: ``--name unetq --scale 1 --tiles 1x1 --no-pyramid-table --
--backend unet`` (the ``quick`` preset).

    python benchmarks/bench_real_segmentation.py --work /tmp/real --name defaults
    python benchmarks/bench_real_segmentation.py --work /tmp/real --name s025 --scale 0.25 \\
        --tiles 1x1 --unannotated -- --epochs 80 --steps-per-epoch 25
    python benchmarks/bench_real_segmentation.py --work /tmp/real --name real --scale 0.5 \\
        --tiles 1x1 --unannotated -- --preset real --max-minutes 12
    python benchmarks/bench_real_segmentation.py --work /tmp/real --name v040 --scale 1 \\
        --tiles 1x1 -- --preset real --max-minutes 8
    python benchmarks/bench_real_segmentation.py --work /tmp/real --name forest --scale 1 \\
        --tiles 1x1 --unannotated -- --backend forest
    python benchmarks/bench_real_segmentation.py --work /tmp/real --name unet14 --scale 1 \\
        --tiles 2x2 --split-groups tiles --no-pyramid-table -- --backend unet --preset real \\
        --max-minutes 10

``--rechoose FROM`` trains nothing: each fold's U-Net of ``WORK/FROM`` is copied to
``WORK/NAME`` and what training chooses on the validation image (region setting, test-time
views, pyramid) is chosen again with this checkout on the network as saved (the one that
training kept), then the held-out image is segmented. It measures a change of those choices
(e.g. the growing of 0.15) on the same networks, without the minutes and the noise of training:

    python benchmarks/bench_real_segmentation.py --work /tmp/real --name unet30-grow --scale 1 \\
        --tiles 1x1 --no-pyramid-table --rechoose unet30

``--split-groups tiles`` validates on one tile of each of the four training images (split
``--groups tiles``) instead of one whole image, so the choices made on validation (outline
setting, pyramid, test-time views) see every kind of organoid in the training data.

Each held-out image is segmented with every outline refinement (none, probability, edges);
the main table uses the one the model chose on its validation image, a second table compares
them all, pooled. The model's choice of pyramid (several scales, ``--pyramid``) is compared
with one scale and with the pyramids 1,2 and 1,2,4 on the same models in a third table
(outlines as chosen), and for the U-Net and the pixel forest the model's choice of test-time
views (``--tta``) with 1 and 8 views in a fourth. Folds trained with ``-- --refit`` (U-Net)
are also segmented with the network the choices were made with (trained without the
validation image, kept as ``unet_validated.pt``), a fifth table: the refit's own effect, same
run, same choices:

    python benchmarks/bench_real_segmentation.py --work /tmp/real --name unet30-refit --scale 1 \
        --tiles 1x1 --no-pyramid-table --folds 668 -- --backend unet --preset real --refit

Each fold trains a model (minutes to tens of minutes on 2 CPU cores): run it in the background
and read the log. TensorFlow runs in child processes (the orgaseg CLI). Without
``../shared/realdata`` the script says so and exits with status 0.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
GOAT = REALDATA / "goat-dev"
THRESHOLDS = (0.5, 0.75, 0.9)
#: The peers' figures on GOAT images (issue 10): F1 at IoU 0.5.
#: the pyramids every held-out image is also segmented with (the same for every fold)
PYRAMIDS = ("1", "1,2", "1,2,4")
#: the test-time views every held-out image is also segmented with (U-Net, pixel forest)
VIEWS = (1, 8)
PEERS = {"OrganoID pretrained (2022)": 0.35, "threshold + watershed baseline": 0.32}


def run_step(step: str, *options) -> None:
    """``orgaseg STEP OPTIONS`` in its own process, its progress shown as it comes."""
    from orgaseg_core.pipelines.processes import run_step_process

    ended = run_step_process(step, options)
    if ended.returncode != 0:
        raise SystemExit(f"orgaseg {step} failed (exit status {ended.returncode}): {ended.message}")


def goat_images() -> dict[str, tuple[Path, Path]]:
    """image id -> (image file, label image) of the GOAT development set."""
    found = {}
    for image in sorted((GOAT / "images").glob("*.png")):
        labels = GOAT / "truth" / f"{image.stem}_labels.tif"
        if labels.is_file():
            found[image.stem] = (image, labels)
    return found


def fold_data(work: Path, held: str, images: dict[str, tuple[Path, Path]], *, scale: float,
              tiles: str, groups: str = "images") -> Path:
    """The training split of one fold (made once in ``work``, then reused). ``groups`` is
    split's ``--groups``: 'images' validates on one whole training image, 'tiles' on tiles of
    every training image."""
    split = (work / f"data-s{scale:g}-t{tiles}{'' if groups == 'images' else '-g' + groups}"
             / f"without-{held}" / "split")
    if (split / "run.json").is_file():
        return split
    source = split.parent / "source"
    if source.exists():
        shutil.rmtree(source)
    for sub in ("images", "masks"):
        (source / sub).mkdir(parents=True)
    for stem, (image, labels) in images.items():
        if stem != held:  # copies in the work folder, outside the repository
            shutil.copy2(image, source / "images" / image.name)
            shutil.copy2(labels, source / "masks" / f"{stem}.tif")
    run_step("preprocess", "--images", source / "images", "--masks", source / "masks",
             "--out", split.parent / "pre", "--scale", scale, "--tiles", tiles, "--overwrite")
    # one of the four source images (all its tiles) for validation, or with --groups tiles a
    # quarter of the tiles of each
    run_step("split", "--data", split.parent / "pre", "--out", split, "--mode", "segmentation",
             "--train", 0.75, "--val", 0.25, "--test", 0.0, "--seed", 0, "--groups", groups, "--overwrite")
    return split


def scores(truths: list, preds: list) -> dict:
    """Pooled figures of ``preds`` against ``truths``: objects, found, F1 at each of THRESHOLDS,
    mean matched IoU (at IoU 0.5), and the median ratio measured / true of the perimeter and
    the circularity of the organoids matched at IoU 0.5 (:mod:`orgaseg_core.segmentation.shapes`)."""
    import pandas as pd

    from orgaseg_core.segmentation.evaluation import match_objects, matched_pairs, pooled_metrics
    from orgaseg_core.segmentation.shapes import SHAPE_IOU, shape_pairs, shape_summary

    matchings = [match_objects(t, p) for t, p in zip(truths, preds)]  # once per image, for both
    m = {round(r["threshold"], 2): r for r in pooled_metrics(matchings, THRESHOLDS).to_dict("records")}
    shapes = shape_summary(pd.concat([shape_pairs(t, p, matched_pairs(matching, SHAPE_IOU))
                                      for t, p, matching in zip(truths, preds, matchings)], ignore_index=True))
    return {"objects": m[0.5]["n_true"], "found": m[0.5]["n_pred"],
            **{f"f1@{t}": m[t]["f1"] for t in THRESHOLDS}, "mean_matched_iou": m[0.5]["mean_matched_iou"],
            "perimeter_ratio": shapes["perimeter"]["median_ratio"],
            "circularity_ratio": shapes["circularity"]["median_ratio"]}


def write_overlay(image_path: Path, labels_path: Path, png: Path) -> None:
    from orgaseg_core.common.images import read_image, read_labels
    from orgaseg_core.common.overlays import PRED_COLOUR, contour_overlay, save_png

    overlay = contour_overlay(read_image(image_path), [(read_labels(labels_path), PRED_COLOUR, "orgaseg")])
    save_png(png, overlay)


def rechoose_unet(source: Path, target: Path, split: Path) -> None:
    """A copy of the U-Net folder ``source`` in ``target`` whose region setting, test-time views
    and pyramid are chosen again on the validation images of ``split`` with this checkout's
    :func:`orgaseg_core.segmentation.unet.train.choose_regions_and_views` and pyramid choice,
    on the network as saved (``max_area`` as stored). Imports torch (this process runs no TensorFlow)."""
    import numpy as np

    from orgaseg_core import __version__
    from orgaseg_core.common.images import read_labels
    from orgaseg_core.segmentation.forest.levels import choose_region_pyramid
    from orgaseg_core.segmentation.sizing import object_diameters
    from orgaseg_core.segmentation.train import load_split
    from orgaseg_core.segmentation.unet.model import load_unet
    from orgaseg_core.segmentation.unet.predict import class_probabilities
    from orgaseg_core.segmentation.unet.train import choose_regions_and_views, validation_inputs
    from orgaseg_core.segmentation.views import mean_over_views, with_views

    if not (source / "orgaseg_model.json").is_file():
        raise SystemExit(f"{source}: no model folder (orgaseg_model.json missing) to choose again from")
    meta = json.loads((source / "orgaseg_model.json").read_text())
    if meta.get("backend") != "unet":
        raise SystemExit(f"{source}: --rechoose needs U-Net models, this is {meta.get('backend')!r}")
    loaded = load_unet(source)
    factor, percentiles = float(meta["resize"]["factor"]), meta["norm_percentiles"]
    train, val = load_split(split, "train"), load_split(split, "val")
    val_small = validation_inputs(val.images, factor, percentiles)
    truths = [read_labels(mask) for _, mask in val.files]
    train_diameters = object_diameters(train.masks)
    # as stored (0, no limit, in folders before 0.12), so that only the choice differs
    max_area = float(meta["regions"].get("max_area", 0.0))

    def predict(small):
        return class_probabilities(loaded, small)

    t0 = time.perf_counter()
    choice = choose_regions_and_views(
        lambda _name, views: [mean_over_views(predict, g, views).astype(np.float16) for g in val_small],
        [meta["weights"]["chosen"]], truths, max_area)
    pyramid = choose_region_pyramid([g.astype(np.float32) for g in val.images], truths, factor,
                                    with_views(predict, choice.views["views"]), choice.params, percentiles,
                                    train_diameters)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    before = {k: meta.get(k) for k in ("regions", "test_time_views", "pyramid")}
    meta.update(regions=choice.params.as_dict(), region_scores=choice.scores, test_time_views=choice.views,
                pyramid=pyramid, rechosen={"from": str(source), "orgaseg-core": __version__, "before": before,
                                           "seconds": round(time.perf_counter() - t0, 1)})
    (target / "orgaseg_model.json").write_text(json.dumps(meta, indent=2))
    print(f"  {target.name}: chose again on {', '.join(val.names)}: {choice.params.describe()}, "
          f"{choice.views['views']} view(s), pyramid {pyramid['levels']} (was "
          f"{before['regions']}, {before['test_time_views'].get('views')} view(s), {before['pyramid'].get('levels')})",
          flush=True)


def validated_copy(model: Path) -> Path | None:
    """For a U-Net trained with ``--refit``: a copy of its folder beside it whose network is the
    one the choices were made with (``unet_validated.pt`` as ``unet.pt``), so that the held-out
    image is also segmented without the refit, same choices, same run. None for other models."""
    meta = json.loads((model / "orgaseg_model.json").read_text())
    refit = (meta.get("weights") or {}).get("refit")
    if not refit:
        return None
    target = model.with_name(model.name + "-validated")
    if not (target / "orgaseg_model.json").is_file():
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(model, target, ignore=shutil.ignore_patterns("unet.pt", refit["validated_network"]))
        shutil.copy2(model / refit["validated_network"], target / "unet.pt")
    return target


def segment_held_out(model: Path, image: Path, seg: Path, *options):
    """``orgaseg segment`` of one held-out image into ``seg`` with ``options``; its label image
    (an outline overlay written beside it)."""
    from orgaseg_core.common.images import read_labels

    stem = image.stem
    run_step("segment", "--model", model, "--images", image, "--out", seg, *options, "--overwrite")
    write_overlay(image, seg / f"{stem}.tif", seg / f"{stem}_overlay.png")
    return read_labels(seg / f"{stem}.tif")


def print_fold(held: str, what: str, truth, found) -> None:
    """One line of figures for one held-out image segmented one way."""
    from orgaseg_core.segmentation.evaluation import segmentation_metrics

    one = segmentation_metrics([truth], [found], thresholds=THRESHOLDS).iloc[0]
    print(f"  {held}, {what}: F1@0.5 {one['f1']:.3f}, {one['n_pred']} found, mean matched IoU "
          f"{one['mean_matched_iou']:.3f}", flush=True)


def segment_unannotated(work: Path, model: Path) -> None:
    """``segment`` over every folder of realdata/unannotated, with an overlay per image."""
    from orgaseg_core.common.images import image_stem, list_images

    for folder in sorted(p for p in (REALDATA / "unannotated").iterdir() if p.is_dir()):
        out = work / "unannotated" / folder.name
        t0 = time.perf_counter()
        run_step("segment", "--model", model, "--images", folder, "--out", out / "segmented",
                 "--overwrite")
        record = json.loads((out / "segmented" / "run.json").read_text())
        (out / "overlays").mkdir(parents=True, exist_ok=True)
        for image in list_images(folder):
            stem = image_stem(image.name)
            write_overlay(image, out / "segmented" / f"{stem}.tif", out / "overlays" / f"{stem}.png")
        counts = {name: r["objects"] for name, r in record["results"]["images"].items()}
        print(f"unannotated/{folder.name}: {len(counts)} images read, objects per image "
              f"{sorted(counts.values())}, {time.perf_counter() - t0:.0f} s -> {out / 'overlays'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for data, models, results (reused)")
    parser.add_argument("--name", required=True, help="name of this configuration's models in --work")
    parser.add_argument("--scale", type=float, default=0.5, help="preprocess --scale of the training images")
    parser.add_argument("--tiles", default="2x2", help="preprocess --tiles of the training images")
    parser.add_argument("--split-groups", choices=("images", "tiles"), default="images",
                        help="split --groups of the four training images: 'images' validates on one "
                             "whole image, 'tiles' on a quarter of the tiles of each (use with --tiles 2x2)")
    parser.add_argument("--folds", default="all", help="held-out image ids, comma-separated (default: all)")
    parser.add_argument("--unannotated", action="store_true",
                        help="also segment realdata/unannotated with the first fold's model")
    parser.add_argument("--no-pyramid-table", action="store_true",
                        help="skip segmenting with the other pyramids (each is one more segment run per fold)")
    parser.add_argument("--rechoose", metavar="FROM",
                        help="train nothing: copy the U-Nets of WORK/FROM and choose their region setting, "
                             "views and pyramid again on the validation image with this checkout")
    parser.add_argument("train_args", nargs="*", help="arguments for orgaseg train-segmentation")
    args = parser.parse_args(argv)
    if not GOAT.is_dir():
        print(f"{GOAT} is not here (it is not part of the repository): nothing to measure")
        return 0

    import pandas as pd

    from orgaseg_core.common.images import read_labels

    images = goat_images()
    folds = list(images) if args.folds == "all" else [f.strip() for f in args.folds.split(",")]
    from orgaseg_core.segmentation.pyramid import levels_key
    from orgaseg_core.segmentation.refine import REFINEMENTS

    rows, truths, preds = [], [], []
    by_method: dict[str, list] = {}
    by_pyramid: dict[str, list] = {}
    by_views: dict[str, list] = {}
    by_refit: dict[str, list] = {}
    refit_truths: list = []
    first_model = None
    for held in folds:
        split = fold_data(args.work, held, images, scale=args.scale, tiles=args.tiles, groups=args.split_groups)
        model = args.work / args.name / f"model-without-{held}"
        first_model = first_model or model
        t0 = time.perf_counter()
        if args.rechoose and not (model / "orgaseg_model.json").is_file():
            rechoose_unet(args.work / args.rechoose / f"model-without-{held}", model, split)
        elif not (model / "orgaseg_model.json").is_file():
            run_step("train-segmentation", "--data", split, "--model-out", model, "--seed", 0,
                     "--overwrite", *args.train_args)
        t_train = time.perf_counter() - t0
        meta = json.loads((model / "orgaseg_model.json").read_text())
        chosen = meta.get("refinement", "none")
        # a pixel forest or a U-Net (--backend forest, unet) has its own outlines and one scale
        forest = meta.get("backend") in ("forest", "unet")
        truth = read_labels(images[held][1])
        truths.append(truth)
        # every outline refinement on the held-out image; the table uses the one the model
        # chose on its validation image, the second table compares them all
        for method in ["none"] if forest else REFINEMENTS:
            pred = segment_held_out(model, images[held][0], args.work / args.name / f"segmented-{held}-{method}",
                                    *([] if forest else ["--refine", method]))
            by_method.setdefault(method, []).append(pred)
            print_fold(held, f"outlines {method}{' (chosen)' if method == chosen else ''}", truth, pred)
        pred = by_method[chosen][-1]
        preds.append(pred)
        # the model's pyramid choice against every pyramid on the same model (the same three
        # for every fold, so that each pools over all five images), outlines as chosen
        pyramid = meta.get("pyramid", {})
        pyramid_label = levels_key(pyramid.get("levels", [1.0]))
        if pyramid.get("scores"):
            print(f"  {held}, pyramid kept {pyramid_label}; validation mean F1 over IoU 0.5-0.9: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in pyramid["scores"].items()), flush=True)
        for candidate in () if args.no_pyramid_table else PYRAMIDS:
            found = pred if candidate == pyramid_label else segment_held_out(
                model, images[held][0], args.work / args.name / f"segmented-{held}-pyramid-{candidate.replace(',', '-')}",
                *([] if forest else ["--refine", chosen]), "--pyramid", candidate)
            by_pyramid.setdefault(f"levels {candidate}", []).append(found)
            print_fold(held, f"pyramid {candidate}{' (chosen)' if candidate == pyramid_label else ''}", truth, found)
        by_pyramid.setdefault("chosen on validation", []).append(pred)
        # the model's test-time views (U-Net, pixel forest) against 1 and 8 views, same model and pyramid
        views = meta.get("test_time_views", {}).get("views", 1)
        for candidate in (VIEWS if forest else ()):
            found = pred if candidate == views else segment_held_out(
                model, images[held][0], args.work / args.name / f"segmented-{held}-views-{candidate}",
                "--tta", candidate)
            by_views.setdefault(f"{candidate} view{'s' if candidate > 1 else ''}", []).append(found)
            print_fold(held, f"{candidate} test-time view(s){' (chosen)' if candidate == views else ''}",
                       truth, found)
        if forest:
            by_views.setdefault("chosen on validation", []).append(pred)
        # --refit: the network the choices were made with, on the same held-out image
        validated = validated_copy(model)
        if validated is not None:
            found = segment_held_out(validated, images[held][0], args.work / args.name / f"segmented-{held}-validated")
            by_refit.setdefault("validated network (trained without the validation image)", []).append(found)
            by_refit.setdefault("refit network (the stored one)", []).append(pred)
            refit_truths.append(truth)
            print_fold(held, "validated network, before the refit", truth, found)
        rows.append({"held_out": held, "outlines": chosen, "pyramid": pyramid_label, "views": views,
                     "resize": meta.get("resize", {}).get("factor"), "model_scale": meta["scale"],
                     "epochs": meta.get("epochs_run", len(meta.get("history", []))), **scores([truth], [pred]),
                     "training_min": meta["timings_s"]["total"] / 60, "run_min": t_train / 60})
        print(pd.DataFrame(rows[-1:]).to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)
    rows.append({"held_out": "all (pooled)", "outlines": "chosen", **scores(truths, preds),
                 "training_min": sum(r["training_min"] for r in rows),
                 "run_min": sum(r["run_min"] for r in rows)})
    table = pd.DataFrame(rows)
    print(f"\nGOAT leave-one-image-out, {args.name}: preprocess --scale {args.scale:g} --tiles "
          f"{args.tiles}; split --groups {args.split_groups}; train-segmentation {' '.join(args.train_args) or '(defaults)'}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    compare = [{"outlines": method, **scores(truths, found)} for method, found in by_method.items()]
    print("\nevery outline refinement, pooled over the held-out images:")
    print(pd.DataFrame(compare).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    scales = [{"pyramid": name, **scores(truths, found)} for name, found in by_pyramid.items()]
    if not args.no_pyramid_table:
        print("\none scale against the pyramids (same models, chosen outlines), pooled:")
        print(pd.DataFrame(scales).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if by_views:
        viewed = [{"views": name, **scores(truths, found)} for name, found in by_views.items()]
        print("\ntest-time views (same models, chosen pyramid), pooled:")
        print(pd.DataFrame(viewed).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        (args.work / args.name).mkdir(parents=True, exist_ok=True)
        pd.DataFrame(viewed).to_csv(args.work / args.name / "views.csv", index=False)
    if by_refit:
        refits = [{"network": name, **scores(refit_truths, found)} for name, found in by_refit.items()]
        print("\n--refit: the stored network against the one the choices were made with (folds trained "
              "with --refit), pooled:")
        print(pd.DataFrame(refits).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        (args.work / args.name).mkdir(parents=True, exist_ok=True)
        pd.DataFrame(refits).to_csv(args.work / args.name / "refit.csv", index=False)
    for peer, f1 in PEERS.items():
        print(f"  peer: {peer}: F1@0.5 {f1:.2f} (3 of these images, issue 10)")
    (args.work / args.name).mkdir(parents=True, exist_ok=True)
    table.to_csv(args.work / args.name / "loo.csv", index=False)
    pd.DataFrame(compare).to_csv(args.work / args.name / "outlines.csv", index=False)
    pd.DataFrame(scales).to_csv(args.work / args.name / "pyramid.csv", index=False)
    if args.unannotated and first_model is not None:
        segment_unannotated(args.work / args.name, first_model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
