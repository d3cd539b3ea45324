"""``analyze``: new images in, every organoid outlined, measured and classified out.

The whole inference pipeline for an image file or a folder of images, with a segmentation model
of ``train-segmentation`` (or label images of another tool, ``--masks``) and a classifier of
``train-classifier``. The images are cut into chunks that run on Dask workers (:mod:`.cluster`:
a local cluster by default, or an existing scheduler); each chunk (:mod:`.chunks`) runs

1. ``segment`` in its own process (TensorFlow)
2. ``extract-objects`` in the worker (numpy only): crops and measurements
3. ``classify`` in its own process (torch)

(the step processes are warm: a worker keeps them, their models loaded, from chunk to chunk,
and ends them when the run ends; :mod:`.step_server`. A local worker runs two chunks at once,
``chunks_per_worker``: one segments while the other is cut out, classified and published, the
two taking turns at the worker's one process per step)

and publishes each image as it is done, with a completion record (:mod:`.progress`), so a rerun
of the same command resumes. When every chunk has ended, this process merges:

- ``out/qupath/<stem>.geojson``: every detection of the image with its class (name and
  colour), the class confidence, the probability of every class, the segmentation
  probability and the shape measurements; drag it onto the image in QuPath. Objects that
  were not classified (dropped by ``--min-area`` / ``--exclude-border``, unreadable crop)
  stay in the file as detections without a class, named with the reason. (Written per image.)
- ``out/overlays/<stem>.png``: outlines coloured by class over the image, with a legend of
  the classes and their counts (``.jpg`` with ``overlays="jpeg"``, none with "none"). (Written
  per image.)
- ``out/segmentation/``, ``out/objects/`` (crops, objects.csv, skipped.csv),
  ``out/classification/predictions.csv``: the steps' outputs of all chunks.
- ``out/objects.csv``: one row per classified object: image, stem, label, predicted class,
  confidence, class probabilities, segmentation probability, measurements, crop.
- ``out/summary.csv``: one row per image: objects found, classified, excluded, and per class
  the count and the fraction of the classified objects.
- ``out/conditions.csv`` and ``out/plots/`` (see :mod:`orgaseg_core.results`).
- ``out/run.json``: arguments, versions, per-image figures, every chunk and its steps' runs.

TensorFlow and torch crash when loaded into one process, so both run in child processes
(``python -m orgaseg_core <step>`` with the worker's Python); neither this process nor a worker
imports them. The classifier checkpoint is checked first (``classifier-info``, a short torch
process), so a wrong file fails before the long segmentation. A file that cannot be segmented or
cut out is reported and skipped; the others are still analysed, and the step then ends with an
error listing them (exit status 1).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..common.errors import InputFileError, OptionError, OrgasegError, OutputError
from ..common.images import input_images
from ..common.outputs import step_run, write_csv
from ..common.params import check_device
from .chunks import (CHUNKS_DIR, CLASSIFICATION_DIR, OBJECTS_DIR, SEGMENTATION_DIR, ChunkSpec, new_token,
                     rows_table, run_chunk)
from .image_results import (OVERLAYS_DIR, QUPATH_DIR, QUPATH_MEASUREMENTS,  # noqa: F401 (public names of 0.7)
                            QUPATH_PHYSICAL_MEASUREMENTS, classified_features, objects_table)
from .processes import orgaseg_command
from .progress import PROGRESS_DIR
from .step_server import close_step_servers

log = logging.getLogger(__name__)

OBJECTS_CSV = "objects.csv"
SUMMARY_CSV = "summary.csv"
CONDITIONS_CSV = "conditions.csv"
PLOTS_DIR = "plots"



def classifier_info(model: Path, family: str | None = None) -> dict[str, Any]:
    """What the checkpoint ``model`` holds (architecture, class names, input size ...), read in a
    child process (torch); raises the checkpoint's own error (naming the file) if it is not an
    orgaseg classifier."""
    options = ["--model", model, "--json"] + (["--family", family] if family else [])
    command = orgaseg_command("classifier-info", options)
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        lines = [l[len("error: "):] for l in completed.stderr.splitlines() if l.startswith("error: ")]
        raise InputFileError(model, lines[0].split(": ", 1)[-1] if lines else
                             f"cannot be read as a classifier checkpoint ({completed.stderr.strip()[-500:]})")
    return json.loads(completed.stdout)


# ----------------------------------------------------------------------------- result tables

def summary_table(objects: pd.DataFrame, per_image: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """One row per image: counts and fractions per class.

    objects: classified objects (columns stem, predicted_class, confidence). per_image: one row
    per analysed image with columns image, stem, objects (segmented), excluded, unreadable.
    Fractions are of the classified objects of the image (empty when none was classified).
    """
    rows = []
    for image in per_image.itertuples(index=False):
        mine = objects[objects["stem"] == image.stem] if len(objects) else objects
        counts = Counter(mine["predicted_class"]) if len(mine) else Counter()
        n = int(len(mine))
        row = {"image": image.image, "stem": image.stem, "objects": int(image.objects),
               "classified": n, "excluded": int(image.excluded), "unreadable": int(image.unreadable)}
        for name in class_names:
            row[f"count_{name}"] = int(counts.get(name, 0))
        for name in class_names:
            row[f"fraction_{name}"] = round(counts.get(name, 0) / n, 6) if n else math.nan
        row["mean_confidence"] = round(float(mine["confidence"].mean()), 6) if n else math.nan
        review = mine["needs_review"].astype(str).isin(["True", "true", "1"]) if "needs_review" in mine else None
        row["needs_review"] = int(review.sum()) if review is not None and n else 0
        rows.append(row)
    columns = (["image", "stem", "objects", "classified", "excluded", "unreadable"]
               + [f"count_{c}" for c in class_names] + [f"fraction_{c}" for c in class_names]
               + ["mean_confidence", "needs_review"])
    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------- the step

@dataclass
class AnalyzeResult:
    """What :func:`analyze` wrote."""

    out: Path
    class_names: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    n_objects: int = 0
    n_classified: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    design_columns: list[str] = field(default_factory=list)
    unmatched_design: list[str] = field(default_factory=list)
    report: Path | None = None

    @property
    def summary_csv(self) -> Path:
        return self.out / SUMMARY_CSV

    @property
    def objects_csv(self) -> Path:
        return self.out / OBJECTS_CSV

    def summary(self) -> str:
        lines = [f"analyze: {len(self.images)} image(s), {self.n_objects} objects found, "
                 f"{self.n_classified} classified, written to {self.out} ({self.seconds:.1f} s)"]
        if self.n_classified:
            parts = [f"{c} {self.class_counts.get(c, 0)} ({self.class_counts.get(c, 0) / self.n_classified:.0%})"
                     for c in self.class_names]
            lines.append("  classes: " + ", ".join(parts))
        lines += [f"  per image: {self.out / QUPATH_DIR}/<image>.geojson (open in QuPath), "
                  f"{self.out / OVERLAYS_DIR}/<image>.png",
                  f"  tables:    {self.summary_csv} (per image), {self.objects_csv} (per object)"
                  + (f", {self.out / CONDITIONS_CSV} (per {', '.join(self.design_columns)})"
                     if self.design_columns else ""),
                  f"  plots:     {self.out / PLOTS_DIR} (PNG and SVG)",
                  f"  report:    {self.report} (open it in a browser)" if self.report else "",
                  f"  steps:     {self.out / SEGMENTATION_DIR}, {self.out / OBJECTS_DIR}, "
                  f"{self.out / CLASSIFICATION_DIR}"]
        if self.unmatched_design:
            lines.append(f"  {len(self.unmatched_design)} image(s) have no design (kept, empty design "
                         f"columns): {', '.join(self.unmatched_design[:5])}"
                         + (" ..." if len(self.unmatched_design) > 5 else ""))
        if self.failed:
            lines.append(f"  {len(self.failed)} image(s) failed and were skipped:")
            lines += [f"    {f}" for f in self.failed]
        return "\n".join(line for line in lines if line)


class AnalyzeFailed(OrgasegError):
    """Some images could not be analysed; the others were written (``result``)."""

    def __init__(self, result: AnalyzeResult):
        self.result = result
        super().__init__(f"{len(result.failed)} image(s) could not be analysed (the other "
                         f"{len(result.images)} were written to {result.out}):\n  "
                         + "\n  ".join(result.failed))


def analyze(segmentation_model: Path | None, classifier: Path, images: Path, out: Path, *,
            masks: Path | None = None, n_tiles: tuple[int, int] | None = None, prob_thresh: float | None = None,
            nms_thresh: float | None = None, image_scale: float = 1.0, preprocessing: bool = True,
            padding: int | None = None, context: float | None = None, mask_background: bool = False,
            min_area: int = 0, exclude_border: bool = False, batch_size: int = 64, device: str | None = None,
            review_below: float | None = None, family: str | None = None,
            pixel_size: float | str | None = None, metadata: Path | None = None,
            name_pattern: str | None = None, control: str | None = None, seed: int = 0,
            workers: int | str | None = "auto", scheduler: Any = None, chunk_size: int | None = None,
            threads_per_worker: int | None = None, chunks_per_worker: int | None = None,
            overlays: str = "png", tta: int | str | None = "auto", overwrite: bool = False) -> AnalyzeResult:
    """Segment, measure and classify every organoid of an image file or a folder of images.

    segmentation_model: folder of ``train-segmentation``; or None with ``masks``: a folder of
    label images of the same stems from any other tool, used instead of segmenting (see
    :mod:`orgaseg_core.segmentation.external`). classifier: the folder written by
    ``train-classifier`` (or its classifier.json / model.pt). images: a file or a folder (not searched recursively). out: new or
    empty folder (or ``overwrite``); see the module notes for what is written.
    n_tiles, prob_thresh, nms_thresh, image_scale, preprocessing: as in ``segment`` (None =
    automatic tiles / the model's tuned thresholds). padding, mask_background, min_area,
    exclude_border: as in ``extract-objects`` (pixels; padding None: the padding the classifier
    was trained with, else 10). context: the fraction of each object's size added around its
    crop (None: what the classifier was trained with, 0 for classifiers before 0.9). batch_size, device, review_below, family: as in ``classify``.
    pixel_size: µm per pixel (None: each image file's own), as in ``extract-objects``: µm / µm²
    columns in objects.csv and µm measurements in the QuPath files where it is known.
    metadata, name_pattern: the experiment's design (:mod:`orgaseg_core.results.design`): its
    columns are added to objects.csv and summary.csv, and ``conditions.csv`` holds counts,
    class fractions with 95% intervals and sizes per condition (and timepoint, and well;
    :mod:`orgaseg_core.results.statistics`), compared with the condition ``control`` when given.
    seed: the bootstrap's and the permutation tests' random numbers.
    workers, scheduler, chunk_size, threads_per_worker: where the images run
    (:mod:`.cluster`): chunks of ``chunk_size`` images (default: the images shared out over the
    workers, at most 64 a chunk) on a local Dask cluster of ``workers`` processes (default one
    per 2 cores), or on the workers of ``scheduler`` (an address such as ``tcp://host:8786``, or
    a ``distributed.Client`` / cluster object); each step of a chunk gets
    ``threads_per_worker`` threads (default: the cores shared out over the local workers).
    chunks_per_worker: chunks each local worker runs at once (default
    :data:`~.cluster.CHUNKS_PER_WORKER`, 2): one chunk's segmentation runs while the chunk
    before it is cut out, classified and written, with one warm process (one model in memory)
    per step that the chunks take turns at; 1 runs the chunks one after another. Not for a
    ``scheduler``, whose workers' threads decide. The results are the same either way.
    Rerunning the same call into the same ``out`` after a crash or an interrupt resumes it
    (:mod:`.progress`); ``overwrite`` starts over. overlays: the picture of each image's
    outlines, "png" (lossless), "jpeg" (``.jpg``: faster and smaller, for thousands of images)
    or "none". tta: test-time views of a U-Net or pixel-forest model, 1, 2, 4 or 8 (None/"auto":
    the model's choice; each view is one more prediction per image, so ``tta=1`` is the fast
    pass for thousands of images).
    """
    from ..common.params import parse_pair
    from ..segmentation.model import check_segmentation_model, is_region_model

    from .cluster import (CHUNKS_PER_WORKER, check_count, check_workers, dask_client, local_workers, run_tasks,
                          threads_for)
    from .progress import completed, fingerprint, resumable, write_plan

    from ..common.overlays import check_overlay_format

    start = time.perf_counter()
    workers = check_workers(workers)
    try:
        overlays = check_overlay_format(overlays)
    except ValueError as exc:
        raise OptionError(str(exc)) from None
    if chunk_size is not None:
        chunk_size = check_count(chunk_size, "--chunk-size")
    if chunks_per_worker is not None:
        if scheduler is not None:
            raise OptionError("--chunks-per-worker sets the workers of the local cluster; the workers of "
                              "--scheduler run as many chunks at once as they have threads")
        chunks_per_worker = check_count(chunks_per_worker, "--chunks-per-worker")
    if (segmentation_model is None) == (masks is None):
        raise OrgasegError("give either a segmentation model (--segmentation-model) or label images "
                           "from another tool (--masks), not " + ("both" if masks else "neither"))
    from ..segmentation.views import parse_views

    try:
        views = parse_views(tta)
    except ValueError as exc:
        raise OptionError(f"--tta: {exc}") from None
    if masks is not None and (n_tiles is not None or prob_thresh is not None or nms_thresh is not None
                              or views is not None):
        raise OrgasegError("--n-tiles, --prob-thresh, --nms-thresh and --tta set how a model segments; "
                           "they do not apply to --masks")
    segmentation_model = Path(segmentation_model) if segmentation_model is not None else None
    masks = Path(masks) if masks is not None else None
    classifier, images, out = Path(classifier), Path(images), Path(out)
    if n_tiles is not None:
        n_tiles = parse_pair(n_tiles, what="n_tiles")
    if (padding is not None and int(padding) < 0) or int(min_area) < 0:
        raise OptionError(f"padding and min_area must be 0 or more pixels, got {padding} and {min_area}")
    device = check_device(device)  # before any step starts
    from ..common.pixel_size import check_pixel_size

    pixel_size = check_pixel_size(pixel_size)
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise OrgasegError(f"batch size must be a whole number >= 1, got {batch_size!r}")
    stems, image_folder = input_images(images)
    from ..common.params import check_seed
    from ..results.conditions import check_control
    from ..results.design import attach_design

    seed = check_seed(seed)
    design = attach_design([p.name for p in stems.values()],
                           metadata=Path(metadata) if metadata is not None else None,
                           name_pattern=name_pattern)
    control = check_control(design, control)
    # Everything that can be checked is checked before the long steps start.
    if segmentation_model is not None:
        seg_info = check_segmentation_model(segmentation_model)
        if is_region_model(seg_info) and (n_tiles is not None or prob_thresh is not None or nms_thresh is not None):
            kind = "pixel-forest" if type(seg_info).__name__ == "ForestInfo" else "U-Net"
            raise OrgasegError(f"{segmentation_model} is a {kind} model: --n-tiles, --prob-thresh "
                               "and --nms-thresh set how a StarDist model segments; they do not apply to it")
        if views is not None and not is_region_model(seg_info):
            raise OrgasegError(f"{segmentation_model} is a StarDist model: --tta (test-time views) applies "
                               "to U-Net and pixel-forest models")
    elif not masks.is_dir():
        raise InputFileError(masks, "is not a folder of label images")
    if out.resolve() == classifier.resolve() or out.resolve() in classifier.resolve().parents:
        raise OutputError(f"{out}: holds the classifier {classifier}; choose another output folder")
    if review_below is not None and not 0.0 <= float(review_below) <= 1.0:
        raise OrgasegError(f"review_below must be a confidence between 0 and 1, got {review_below!r}")
    info = classifier_info(classifier, family)
    class_names = [str(c) for c in info["class_names"]]
    if padding is None:
        padding = int(info.get("crop_padding") or 10)
    from ..objects.extract import check_context

    context = check_context((info.get("crop_context") or 0.0) if context is None else context)
    log.info("classifier %s: %s family, classes %s; crops cut with %d px of padding and %g of the "
             "object's size around it", classifier, info.get("family", "cnn"), ", ".join(class_names),
             padding, context)

    arguments = {"segmentation_model": segmentation_model, "masks": masks, "classifier": classifier,
                 "images": images, "out": out, "n_tiles": list(n_tiles) if n_tiles else None,
                 "prob_thresh": prob_thresh, "nms_thresh": nms_thresh, "image_scale": float(image_scale),
                 "preprocessing": bool(preprocessing), "padding": int(padding),
                 "context": context, "mask_background": bool(mask_background), "min_area": int(min_area),
                 "exclude_border": bool(exclude_border), "batch_size": int(batch_size),
                 "device": device, "review_below": review_below, "family": family,
                 "pixel_size": pixel_size, "metadata": metadata, "name_pattern": name_pattern,
                 "control": control, "seed": seed, "workers": workers,
                 "scheduler": scheduler if scheduler is None or isinstance(scheduler, str) else repr(scheduler),
                 "chunk_size": chunk_size, "threads_per_worker": threads_per_worker,
                 "chunks_per_worker": chunks_per_worker, "overlays": overlays,
                 "tta": views or "auto", "overwrite": overwrite}
    print_ = fingerprint(arguments)
    # The same command into the folder of an unfinished run resumes it (checked before the lock,
    # which a live run still holds and a dead one left stale).
    resuming = not overwrite and resumable(out, arguments)
    with step_run("analyze", out, arguments, overwrite=overwrite or resuming,
                  inputs=[image_folder, segmentation_model or masks]) as record:
        result = AnalyzeResult(out=out, class_names=class_names)
        if overwrite:  # a fresh start: no record of an earlier run may count
            for folder in (PROGRESS_DIR, CHUNKS_DIR):
                shutil.rmtree(out / folder, ignore_errors=True)
        write_plan(out, arguments)
        done = completed(out, stems, print_)
        todo = [stem for stem in stems if stem not in done]
        n_done_before = len(done)
        if resuming:
            log.info("resuming the unfinished analysis in %s: %d of %d image(s) already done, %d to do",
                     out, len(done), len(stems), len(todo))

        settings = {"segmentation_model": str(segmentation_model.resolve()) if segmentation_model else None,
                    "classifier": str(classifier.resolve()), "class_names": class_names,
                    "fingerprint": print_,
                    "segment_options": _segment_options(n_tiles, prob_thresh, nms_thresh, image_scale,
                                                        preprocessing, views),
                    "extract": {"padding": padding, "context": context, "mask_background": mask_background,
                                "min_area": min_area, "exclude_border": exclude_border,
                                "pixel_size": pixel_size},
                    "classify_options": _classify_options(batch_size, device, review_below, family),
                    "overlays": overlays}
        mask_files: dict[str, Path] = {}
        if masks is not None:
            from ..common.images import index_by_stem, list_images

            mask_files = index_by_stem(list_images(masks, what="label images"), what="label images")
            for stem in [t for t in todo if t not in mask_files]:
                result.failed.append(f"masks: {stems[stem]}: no label image {stem}.tif (or .tiff, .png) "
                                     f"in {masks}")
                log.error("skipped %s", result.failed[-1])
            todo = [t for t in todo if t in mask_files]
        chunk_runs: list[dict[str, Any]] = []
        record.results["chunks"] = chunk_runs
        if todo:
            n_workers = local_workers(workers, len(todo)) if scheduler is None else (workers or 1)
            at_once = (chunks_per_worker or CHUNKS_PER_WORKER) if scheduler is None else 1
            size = chunk_size or min(64, math.ceil(len(todo) / (n_workers * at_once)))
            threads = threads_for(n_workers, threads_per_worker) if scheduler is None else threads_per_worker
            specs = [ChunkSpec(index=i, token=new_token(), out=str(out.resolve()), settings=settings,
                               images=tuple(str(stems[t].resolve()) for t in part),
                               masks=tuple(str(mask_files[t].resolve()) for t in part) if masks else (),
                               threads=threads, servers_per_step=1 if scheduler is None else None)
                     for i, part in enumerate(todo[k:k + size] for k in range(0, len(todo), size))]
            with dask_client(workers=n_workers, scheduler=scheduler, tasks_per_worker=at_once) as (client, where):
                log.info("analysing %d image(s) in %d chunk(s) of up to %d on %s%s", len(todo), len(specs),
                         size, where, f", {threads} thread(s) per step" if threads else "")
                for spec, outcome, error in run_tasks(client, run_chunk, specs,
                                                      [len(p.images) for p in specs], desc="analyze"):
                    if error is not None:
                        message = str(error).strip() or type(error).__name__
                        result.failed += [f"{path}: {message}" for path in spec.images]
                        log.error("chunk %d (%d images) failed: %s", spec.index, len(spec.images), message)
                        chunk_runs.append({"chunk": spec.index, "images": len(spec.images), "error": message})
                        continue
                    result.failed += outcome.failed
                    chunk_runs.append({"chunk": spec.index, "host": outcome.host, "images": len(spec.images),
                                       "published": len(outcome.published),
                                       "seconds": {k: round(v, 3) for k, v in outcome.seconds.items()},
                                       "spans": {k: [round(t, 3) for t in v] for k, v in outcome.spans.items()},
                                       "steps": outcome.steps, "servers": outcome.servers})
                    log.debug("chunk %d: %d image(s) published", spec.index, len(outcome.published))
                # the workers' warm step processes hold models in memory: not beyond this run
                # (a cluster of the caller's lives on; a local one ends, and they with it)
                try:
                    log.debug("warm step processes ended: %s", client.run(close_step_servers))
                except Exception as exc:  # noqa: BLE001 - a worker lost just now: its processes end with it
                    log.warning("could not end the warm step processes of every worker (%s); they end "
                                "with their workers", exc)
            shutil.rmtree(out / CHUNKS_DIR, ignore_errors=True)  # attempts of lost workers
        done = completed(out, stems, print_)
        record.results["steps"] = _step_records(chunk_runs)
        record.results["resumed_with_done"] = n_done_before if resuming else None
        _merge(out, stems, done, design, class_names, control, seed, review_below, result, record)
        result.seconds = time.perf_counter() - start
        record.results["seconds"] = round(result.seconds, 3)
        if result.failed:
            raise AnalyzeFailed(result)
    return result


def _report(out: Path, table: pd.DataFrame, summary: pd.DataFrame, conditions, class_names: list[str],
            record, plots: list[Path]) -> Path:
    """``out/report.html`` (:mod:`orgaseg_core.results.report`)."""
    from ..common.outputs import package_versions
    from ..results.report import write_report

    arguments = record.arguments
    sizes = sorted({round(float(v), 6) for v in table.get("pixel_size_um", pd.Series(dtype=float)).dropna()})
    pixel = (f"{', '.join(f'{v:g}' for v in sizes)} µm per pixel" if sizes else None)
    inputs = {"images": arguments.get("images"),
              "segmentation": arguments.get("segmentation_model") or f"label images of {arguments.get('masks')}",
              "classifier": arguments.get("classifier"), "started": record.started}
    return write_report(out, objects=table, summary=summary, conditions=conditions, class_names=class_names,
                        run={"inputs": inputs, "arguments": arguments, "versions": package_versions(),
                             "pixel_size": pixel},
                        plots=plots, crops_root=out / OBJECTS_DIR, overlays_dir=out / OVERLAYS_DIR,
                        qupath_dir=out / QUPATH_DIR)


def _segment_options(n_tiles, prob_thresh, nms_thresh, image_scale: float, preprocessing: bool,
                     views: int | None = None) -> list:
    options: list[Any] = ["--image-scale", float(image_scale),
                          "--preprocessing" if preprocessing else "--no-preprocessing"]
    if n_tiles:
        options += ["--n-tiles", f"{n_tiles[0]}x{n_tiles[1]}"]
    if prob_thresh is not None:
        options += ["--prob-thresh", prob_thresh]
    if nms_thresh is not None:
        options += ["--nms-thresh", nms_thresh]
    if views is not None:
        options += ["--tta", views]
    return options


def _classify_options(batch_size: int, device, review_below, family) -> list:
    options: list[Any] = ["--batch-size", int(batch_size)]
    if device:
        options += ["--device", device]
    if review_below is not None:
        options += ["--review-below", float(review_below)]
    if family:
        options += ["--family", family]
    return options


def _step_records(chunk_runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each step's run records, one per chunk of this run."""
    steps: dict[str, list[dict[str, Any]]] = {}
    for run in chunk_runs:
        for step, rec in (run.get("steps") or {}).items():
            steps.setdefault(step, []).append(rec)
    return steps


def _merge(out: Path, stems: dict[str, Path], done: dict[str, dict], design, class_names: list[str],
           control, seed: int, review_below, result: AnalyzeResult, record) -> None:
    """The tables of every finished image (from the completion records, in stem order): the
    steps' merged tables, objects.csv, summary.csv, conditions.csv and the plots."""
    parts = {key: [rows_table(done[s][key]) for s in sorted(done)]
             for key in ("objects", "measurements", "skipped", "predictions")}

    def joined(key: str, columns: Sequence[str] = ()) -> pd.DataFrame:
        frames = [f for f in parts[key] if len(f.columns)]
        return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(columns)))

    table = joined("objects", ["image", "stem", "label", "predicted_class", "confidence"]
                   + [f"prob_{c}" for c in class_names])
    write_csv(out / OBJECTS_DIR / "objects.csv", joined("measurements", ["image", "stem", "label", "crop"]))
    write_csv(out / OBJECTS_DIR / "skipped.csv", joined("skipped", ["image", "stem", "label", "reason"]))
    write_csv(out / CLASSIFICATION_DIR / "predictions.csv", joined("predictions", ["image", "stem", "label"]))
    per_image = [done[s]["row"] for s in sorted(done)]
    result.images = [row["image"] for row in per_image]
    result.n_objects = int(sum(row["objects"] for row in per_image))
    summary = summary_table(table, pd.DataFrame(per_image, columns=["image", "stem", "objects", "excluded",
                                                                    "unreadable"]), class_names)
    conditions = None
    if design.columns:
        # the design beside every image and object; per condition in conditions.csv
        from ..results.conditions import conditions_table
        from ..results.design import Design

        columns = design.table[["stem"] + design.columns]
        table = table.merge(columns, on="stem", how="left")
        summary = summary.merge(columns, on="stem", how="left")
        analysed = design.table[design.table["stem"].isin(summary["stem"])]
        conditions = conditions_table(table, Design(table=analysed, columns=design.columns),
                                      class_names, control=control, seed=seed)
        write_csv(out / CONDITIONS_CSV, conditions)
        result.design_columns, result.unmatched_design = design.columns, design.unmatched
        log.info("wrote %s (%d rows)", out / CONDITIONS_CSV, len(conditions))
    write_csv(out / OBJECTS_CSV, table)
    write_csv(out / SUMMARY_CSV, summary)
    written: list[Path] = []
    if len(table):
        written = _plots(out, table, conditions, class_names, review_below)
        log.info("wrote %d plots (PNG and SVG) to %s", len(written) // 2, out / PLOTS_DIR)
    # the report shows first what a biologist asks: the conditions, then sizes, plate, confidence
    order = ["class_fractions", "sizes", "plate", "confidence", "gallery"]
    pngs = sorted((p for p in written if p.suffix == ".png"),
                  key=lambda p: order.index(p.stem) if p.stem in order else len(order))
    result.report = _report(out, table, summary, conditions, class_names, record, pngs)
    result.n_classified = int(len(table))
    result.class_counts = {c: int((table["predicted_class"] == c).sum()) for c in class_names}
    record.results.update({"class_names": class_names, "images": per_image,
                           "objects": result.n_objects, "classified": result.n_classified,
                           "class_counts": result.class_counts, "failed": result.failed,
                           "design": design.as_record()})
    log.info("wrote %s and %s (%d images, %d classified objects)", out / SUMMARY_CSV,
             out / OBJECTS_CSV, len(per_image), result.n_classified)


def _plots(out: Path, objects: pd.DataFrame, conditions: pd.DataFrame | None, class_names: Sequence[str],
           review: float | None) -> list[Path]:
    """``out/plots/``: confidence histogram and crop gallery always; class fractions and sizes per
    condition, and the plate, when the design has conditions and wells."""
    from ..results import plots

    folder = out / PLOTS_DIR
    written = plots.plot_confidence(objects, folder / "confidence", review_below=review)
    written += plots.plot_gallery(objects, out / OBJECTS_DIR, class_names, folder / "gallery")
    by = None
    if conditions is not None and len(conditions):
        groupings = list(conditions["grouping"].unique())
        by = next((g for g in groupings if "+" not in g and g != "well"), None)
        if by:
            written += plots.plot_class_fractions(conditions, class_names, folder / "class_fractions", by=by)
        if "well" in groupings:
            wells = plots.plot_plate(conditions[conditions["grouping"] == "well"], folder / "plate")
            written += wells or []
    written += plots.plot_sizes(objects, class_names, folder / "sizes", by=by)
    return written




#: The old private name (tests and scripts of 0.7.0 import it).
_objects_table = objects_table
