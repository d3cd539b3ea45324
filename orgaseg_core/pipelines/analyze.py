"""``analyze``: new images in, every organoid outlined, measured and classified out.

The whole inference pipeline for an image file or a folder of images, with a StarDist model of
``train-segmentation`` and a classifier of ``train-classifier``:

1. ``segment`` in its own process (TensorFlow) -> ``out/segmentation/``
2. ``extract-objects`` in this process (numpy only) -> ``out/objects/`` (crops, measurements)
3. ``classify`` in its own process (torch) -> ``out/classification/predictions.csv``
4. results, in this process:

   - ``out/qupath/<stem>.geojson``: every detection of the image with its class (name and
     colour), the class confidence, the probability of every class, the segmentation
     probability and the shape measurements; drag it onto the image in QuPath. Objects that
     were not classified (dropped by ``--min-area`` / ``--exclude-border``, unreadable crop)
     stay in the file as detections without a class, named with the reason.
   - ``out/overlays/<stem>.png``: outlines coloured by class over the image, with a legend of
     the classes and their counts.
   - ``out/objects.csv``: one row per classified object: image, stem, label, predicted class,
     confidence, class probabilities, segmentation probability, measurements, crop.
   - ``out/summary.csv``: one row per image: objects found, classified, excluded, and per class
     the count and the fraction of the classified objects.
   - ``out/run.json``: arguments, versions, per-image figures and every sub-step's run.

TensorFlow and torch crash when loaded into one process, so both run in child processes
(``python -m orgaseg_core <step>`` with this Python); this process imports neither. The
classifier checkpoint is checked first (``classifier-info``, a short torch process), so a wrong
file fails before the long segmentation. A file that cannot be segmented or cut out is reported
and skipped; the others are still analysed, and the step then ends with an error listing them
(exit status 1).
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from tqdm import tqdm

from ..common.errors import InputFileError, OptionError, OrgasegError, OutputError
from ..common.images import image_stem, input_images, read_image, read_labels
from ..common.outputs import step_run, write_csv
from ..common.params import check_device
from .processes import StepProcessError, orgaseg_command, run_step_process

log = logging.getLogger(__name__)

SEGMENTATION_DIR = "segmentation"
OBJECTS_DIR = "objects"
CLASSIFICATION_DIR = "classification"
QUPATH_DIR = "qupath"
OVERLAYS_DIR = "overlays"
OBJECTS_CSV = "objects.csv"
SUMMARY_CSV = "summary.csv"
CONDITIONS_CSV = "conditions.csv"
PLOTS_DIR = "plots"
# Names that look like numbers ("001") must stay text when the tables are read back.
_TEXT_COLUMNS = {"image": str, "stem": str, "crop": str}

#: objects.csv measurement columns -> QuPath measurement names (units: pixels, radians).
QUPATH_MEASUREMENTS = {
    "area_px": "Area px", "perimeter": "Perimeter px", "equivalent_diameter": "Equivalent diameter px",
    "circularity": "Circularity", "eccentricity": "Eccentricity", "solidity": "Solidity",
    "major_axis_length": "Major axis px", "minor_axis_length": "Minor axis px",
    "orientation": "Orientation rad", "mean_intensity": "Mean intensity",
    "std_intensity": "Std intensity",
}
#: physical-unit columns -> QuPath measurement names (QuPath's own spelling: "Area µm^2"),
#: written only where the pixel size is known
QUPATH_PHYSICAL_MEASUREMENTS = {
    "area_um2": "Area µm^2", "perimeter_um": "Perimeter µm", "equivalent_diameter_um": "Equivalent diameter µm",
    "major_axis_length_um": "Major axis µm", "minor_axis_length_um": "Minor axis µm",
}


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


def classified_features(features: list[dict], objects: pd.DataFrame, reasons: dict[int, str],
                        class_names: Sequence[str]) -> list[dict]:
    """The detections of one image (from ``segment``) with their classes and measurements.

    features: the image's GeoJSON features, each with ``measurements.Label``. objects: the
    image's rows of objects.csv. reasons: label -> why the object has no class. Returns new
    feature dicts (the inputs are not changed); geometry and ids are kept, so the file lines up
    with ``segmentation/<stem>.geojson``.
    """
    from ..common.classes import class_colour
    from ..qupath.geojson import measurement_value

    by_label = {int(r["label"]): r for r in objects.to_dict("records")}
    out = []
    for feature in features:
        properties = dict(feature.get("properties") or {})
        measurements = dict(properties.get("measurements") or {})
        label = int(measurements.get("Label", -1))
        row = by_label.get(label)
        if row is not None:
            name = str(row["predicted_class"])
            properties["classification"] = {"name": name, "color": list(class_colour(name))}
            measurements["Class confidence"] = measurement_value(row["confidence"])
            if "needs_review" in row:
                measurements["Needs review"] = int(str(row["needs_review"]) in ("True", "true", "1"))
            for c in class_names:
                measurements[f"Probability {c}"] = measurement_value(row[f"prob_{c}"])
            for column, title in QUPATH_MEASUREMENTS.items():
                value = row.get(column)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    # NaN (e.g. no second axis) is written as QuPath writes it: "NaN"
                    measurements[title] = measurement_value(int(value) if column == "area_px"
                                                            and math.isfinite(value) else value)
            size = row.get("pixel_size_um")
            if isinstance(size, (int, float)) and math.isfinite(size):
                for column, title in QUPATH_PHYSICAL_MEASUREMENTS.items():
                    if isinstance(row.get(column), (int, float)):
                        measurements[title] = measurement_value(row[column])
        else:
            properties.pop("classification", None)
            reason = reasons.get(label, "not classified")
            properties["name"] = f"{properties.get('name', f'object {label}')} ({reason})"
        if "Probability" in measurements:  # segment's name for the StarDist object probability
            measurements["Segmentation probability"] = measurements.pop("Probability")
        properties["measurements"] = measurements
        out.append({**feature, "properties": properties})
    return out


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
                  f"  steps:     {self.out / SEGMENTATION_DIR}, {self.out / OBJECTS_DIR}, "
                  f"{self.out / CLASSIFICATION_DIR}"]
        if self.unmatched_design:
            lines.append(f"  {len(self.unmatched_design)} image(s) have no design (kept, empty design "
                         f"columns): {', '.join(self.unmatched_design[:5])}"
                         + (" ..." if len(self.unmatched_design) > 5 else ""))
        if self.failed:
            lines.append(f"  {len(self.failed)} image(s) failed and were skipped:")
            lines += [f"    {f}" for f in self.failed]
        return "\n".join(lines)


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
            padding: int | None = None, mask_background: bool = False, min_area: int = 0,
            exclude_border: bool = False, batch_size: int = 64, device: str | None = None,
            review_below: float | None = None, family: str | None = None,
            pixel_size: float | str | None = None, metadata: Path | None = None,
            name_pattern: str | None = None, control: str | None = None, seed: int = 0,
            overwrite: bool = False) -> AnalyzeResult:
    """Segment, measure and classify every organoid of an image file or a folder of images.

    segmentation_model: folder of ``train-segmentation``; or None with ``masks``: a folder of
    label images of the same stems from any other tool, used instead of segmenting (see
    :mod:`orgaseg_core.segmentation.external`). classifier: the folder written by
    ``train-classifier`` (or its classifier.json / model.pt). images: a file or a folder (not searched recursively). out: new or
    empty folder (or ``overwrite``); see the module notes for what is written.
    n_tiles, prob_thresh, nms_thresh, image_scale, preprocessing: as in ``segment`` (None =
    automatic tiles / the model's tuned thresholds). padding, mask_background, min_area,
    exclude_border: as in ``extract-objects`` (pixels; padding None: the padding the classifier
    was trained with, else 10). batch_size, device, review_below, family: as in ``classify``.
    pixel_size: µm per pixel (None: each image file's own), as in ``extract-objects``: µm / µm²
    columns in objects.csv and µm measurements in the QuPath files where it is known.
    metadata, name_pattern: the experiment's design (:mod:`orgaseg_core.results.design`): its
    columns are added to objects.csv and summary.csv, and ``conditions.csv`` holds counts,
    class fractions with 95% intervals and sizes per condition (and timepoint, and well;
    :mod:`orgaseg_core.results.statistics`), compared with the condition ``control`` when given.
    seed: the bootstrap's and the permutation tests' random numbers.
    """
    from ..common.params import parse_pair
    from ..objects.extract import ExtractFailed, extract_objects
    from ..segmentation.model import check_segmentation_model, is_region_model

    start = time.perf_counter()
    if (segmentation_model is None) == (masks is None):
        raise OrgasegError("give either a segmentation model (--segmentation-model) or label images "
                           "from another tool (--masks), not " + ("both" if masks else "neither"))
    if masks is not None and (n_tiles is not None or prob_thresh is not None or nms_thresh is not None):
        raise OrgasegError("--n-tiles, --prob-thresh and --nms-thresh set how a model segments; "
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
    log.info("classifier %s: %s family, classes %s; crops cut with %d px of padding", classifier,
             info.get("family", "cnn"), ", ".join(class_names), padding)

    arguments = {"segmentation_model": segmentation_model, "masks": masks, "classifier": classifier,
                 "images": images, "out": out, "n_tiles": list(n_tiles) if n_tiles else None,
                 "prob_thresh": prob_thresh, "nms_thresh": nms_thresh, "image_scale": float(image_scale),
                 "preprocessing": bool(preprocessing), "padding": int(padding),
                 "mask_background": bool(mask_background), "min_area": int(min_area),
                 "exclude_border": bool(exclude_border), "batch_size": int(batch_size),
                 "device": device, "review_below": review_below, "family": family,
                 "pixel_size": pixel_size, "metadata": metadata, "name_pattern": name_pattern,
                 "control": control, "seed": seed, "overwrite": overwrite}
    with step_run("analyze", out, arguments, overwrite=overwrite,
                  inputs=[image_folder, segmentation_model or masks]) as record:
        result = AnalyzeResult(out=out, class_names=class_names)
        steps: dict[str, Any] = {}
        record.results["steps"] = steps

        # 1. segmentation (TensorFlow, own process), or the label images of another tool
        seg_out = out / SEGMENTATION_DIR
        if masks is not None:
            segmented_stems = _masks_as_segmentation(images, masks, seg_out, stems, steps, result,
                                                     overwrite=overwrite)
        else:
            segmented_stems = _segment(segmentation_model, images, seg_out, stems, steps, result,
                                       n_tiles=n_tiles, prob_thresh=prob_thresh, nms_thresh=nms_thresh,
                                       image_scale=image_scale, preprocessing=preprocessing,
                                       overwrite=overwrite)

        # 2. crops and measurements (numpy, this process)
        obj_out = out / OBJECTS_DIR
        try:
            extracted = extract_objects(images, seg_out, obj_out, padding=padding,
                                        mask_background=mask_background, min_area=min_area,
                                        exclude_border=exclude_border, pixel_size=pixel_size,
                                        overwrite=overwrite)
        except ExtractFailed as exc:
            extracted = exc.result
            result.failed += [f"extract-objects: {message}" for _name, message in extracted.errors]
            segmented_stems -= {image_stem(name) for name, _ in extracted.errors}
        steps["extract-objects"] = json.loads((obj_out / "run.json").read_text())
        objects = pd.read_csv(obj_out / "objects.csv", dtype=_TEXT_COLUMNS)
        skipped = pd.read_csv(obj_out / "skipped.csv", dtype=_TEXT_COLUMNS)

        # 3. classification (torch, own process)
        cls_out = out / CLASSIFICATION_DIR
        unreadable: dict[tuple[str, int], str] = {}
        if len(objects):
            options = ["--model", classifier, "--objects", obj_out, "--out", cls_out,
                       "--batch-size", int(batch_size)]
            if device:
                options += ["--device", device]
            if review_below is not None:
                options += ["--review-below", float(review_below)]
            if family:
                options += ["--family", family]
            if overwrite:
                options.append("--overwrite")
            cls = run_step_process("classify", options, out=cls_out)
            steps["classify"] = cls.record
            if cls.returncode != 0:
                raise StepProcessError(f"classify failed (exit status {cls.returncode}): {cls.message}")
            predictions = pd.read_csv(cls_out / "predictions.csv", dtype=_TEXT_COLUMNS)
            if (cls_out / "unreadable.csv").is_file():
                crop_index = objects.set_index("crop")[["stem", "label"]]
                for crop, error in pd.read_csv(cls_out / "unreadable.csv").itertuples(index=False):
                    stem, label = crop_index.loc[crop]
                    unreadable[(str(stem), int(label))] = "crop unreadable"
        else:
            log.warning("no objects to classify: nothing found in the images, or all excluded")
            predictions = pd.DataFrame(columns=["image", "stem", "label", "crop", "predicted_class",
                                                "confidence"] + [f"prob_{c}" for c in class_names])

        # 4. per-image results
        table = _objects_table(predictions, seg_out, class_names)
        write_csv(out / OBJECTS_CSV, table)
        per_image = []
        for stem in tqdm(sorted(segmented_stems), desc="analyze: results", unit="image", disable=None):
            path = stems[stem]
            reasons = {int(r.label): str(r.reason) for r in skipped[skipped["stem"] == stem].itertuples()}
            reasons.update({label: why for (s, label), why in unreadable.items() if s == stem})
            mine = table[table["stem"] == stem]
            n_objects = _write_image_results(path, stem, seg_out, out, mine, reasons, class_names)
            per_image.append({"image": path.name, "stem": stem, "objects": n_objects,
                              "excluded": sum(1 for r in reasons.values() if r != "crop unreadable"),
                              "unreadable": sum(1 for r in reasons.values() if r == "crop unreadable")})
            result.images.append(path.name)
            result.n_objects += n_objects
        summary = summary_table(table, pd.DataFrame(per_image, columns=["image", "stem", "objects",
                                                                        "excluded", "unreadable"]),
                                class_names)
        if design.columns:
            # the design beside every image and object; per condition in conditions.csv
            from ..results.conditions import conditions_table

            columns = design.table[["stem"] + design.columns]
            table = table.merge(columns, on="stem", how="left")
            write_csv(out / OBJECTS_CSV, table)
            summary = summary.merge(columns, on="stem", how="left")
            analysed = design.table[design.table["stem"].isin(summary["stem"])]
            from ..results.design import Design

            conditions = conditions_table(table, Design(table=analysed, columns=design.columns),
                                          class_names, control=control, seed=seed)
            write_csv(out / CONDITIONS_CSV, conditions)
            result.design_columns, result.unmatched_design = design.columns, design.unmatched
            log.info("wrote %s (%d rows)", out / CONDITIONS_CSV, len(conditions))
        else:
            conditions = None
        write_csv(out / SUMMARY_CSV, summary)
        if len(table):
            written = _plots(out, table, conditions, class_names, steps.get("classify", {}))
            log.info("wrote %d plots (PNG and SVG) to %s", len(written) // 2, out / PLOTS_DIR)
        result.n_classified = int(len(table))
        result.class_counts = {c: int((table["predicted_class"] == c).sum()) for c in class_names}
        result.seconds = time.perf_counter() - start
        record.results.update({"class_names": class_names, "images": per_image,
                               "objects": result.n_objects, "classified": result.n_classified,
                               "class_counts": result.class_counts, "failed": result.failed,
                               "design": design.as_record(),
                               "seconds": round(result.seconds, 3)})
        log.info("wrote %s and %s (%d images, %d classified objects)", out / SUMMARY_CSV,
                 out / OBJECTS_CSV, len(per_image), result.n_classified)
        if result.failed:
            raise AnalyzeFailed(result)
    return result


def _segment(model: Path, images: Path, seg_out: Path, stems: dict[str, Path], steps: dict,
             result: AnalyzeResult, *, n_tiles, prob_thresh, nms_thresh, image_scale: float,
             preprocessing: bool, overwrite: bool) -> set[str]:
    """``segment`` in its own process (TensorFlow); returns the stems it segmented."""
    options: list[Any] = ["--model", model, "--images", images, "--out", seg_out,
                          "--image-scale", float(image_scale),
                          "--preprocessing" if preprocessing else "--no-preprocessing"]
    if n_tiles:
        options += ["--n-tiles", f"{n_tiles[0]}x{n_tiles[1]}"]
    if prob_thresh is not None:
        options += ["--prob-thresh", prob_thresh]
    if nms_thresh is not None:
        options += ["--nms-thresh", nms_thresh]
    if overwrite:
        options.append("--overwrite")
    seg = run_step_process("segment", options, out=seg_out)
    steps["segment"] = seg.record
    segmented = (seg.record.get("results") or {}).get("images") or {}
    if seg.returncode != 0:
        failed = (seg.record.get("results") or {}).get("failed")
        if not segmented or failed is None:
            raise StepProcessError(f"segment failed (exit status {seg.returncode}): {seg.message}")
        result.failed += [f"segment: {f}" for f in failed]
    segmented_stems = {s for s, p in stems.items() if p.name in segmented}
    log.info("segmented %d of %d image(s) -> %s", len(segmented_stems), len(stems), seg_out)
    return segmented_stems


def _masks_as_segmentation(images: Path, masks: Path, seg_out: Path, stems: dict[str, Path],
                           steps: dict, result: AnalyzeResult, *, overwrite: bool) -> set[str]:
    """The label images of another tool in the place of ``segment``'s output (this process, no
    TensorFlow); returns the stems that have one."""
    from ..segmentation.external import segmentation_from_masks

    imported = segmentation_from_masks(images, masks, seg_out, overwrite=overwrite)
    steps["masks"] = json.loads((seg_out / "run.json").read_text())
    result.failed += [f"masks: {f}" for f in imported.failed]
    segmented_stems = {s for s, p in stems.items() if p.name in imported.objects}
    log.info("took the label images of %d of %d image(s) from %s -> %s", len(segmented_stems),
             len(stems), masks, seg_out)
    return segmented_stems


def _plots(out: Path, objects: pd.DataFrame, conditions: pd.DataFrame | None, class_names: Sequence[str],
           classify_record: dict) -> list[Path]:
    """``out/plots/``: confidence histogram and crop gallery always; class fractions and sizes per
    condition, and the plate, when the design has conditions and wells."""
    from ..results import plots

    folder = out / PLOTS_DIR
    review = (classify_record.get("results") or {}).get("review_below")
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


def _objects_table(predictions: pd.DataFrame, seg_out: Path, class_names: Sequence[str]) -> pd.DataFrame:
    """predictions.csv joined with segment's object probability, in a reading order."""
    seg_tables = []
    for path in sorted(seg_out.glob("*_objects.csv")):
        t = pd.read_csv(path, usecols=["label", "probability"])
        t.insert(0, "stem", path.name[: -len("_objects.csv")])
        seg_tables.append(t)
    seg = (pd.concat(seg_tables, ignore_index=True) if seg_tables
           else pd.DataFrame(columns=["stem", "label", "probability"]))
    seg = seg.rename(columns={"probability": "segmentation_probability"})
    table = predictions.merge(seg, on=["stem", "label"], how="left", validate="one_to_one")
    first = ["image", "stem", "label", "predicted_class", "confidence"]
    first += ["needs_review"] if "needs_review" in table.columns else []
    first += [f"prob_{c}" for c in class_names] + ["segmentation_probability"]
    rest = [c for c in table.columns if c not in first and c != "crop"]
    return table[first + rest + ["crop"]]


def _write_image_results(path: Path, stem: str, seg_out: Path, out: Path, objects: pd.DataFrame,
                         reasons: dict[int, str], class_names: Sequence[str]) -> int:
    """qupath/<stem>.geojson and overlays/<stem>.png of one image; returns its object count."""
    from ..common.overlays import class_overlay, save_png
    from ..qupath.geojson import load_features, write_feature_collection

    labels = read_labels(seg_out / f"{stem}.tif")
    features = load_features(seg_out / f"{stem}.geojson")
    geojson = out / QUPATH_DIR / f"{stem}.geojson"
    geojson.parent.mkdir(exist_ok=True)
    write_feature_collection(geojson, classified_features(features, objects, reasons, class_names))
    label_classes = {int(l): str(c) for l, c in zip(objects["label"], objects["predicted_class"])}
    overlay = class_overlay(read_image(path), labels, label_classes, class_names=class_names)
    png = out / OVERLAYS_DIR / f"{stem}.png"
    png.parent.mkdir(exist_ok=True)
    save_png(png, overlay)
    log.info("%s: %d objects, %d classified -> %s, %s", path.name, len(features), len(objects), geojson, png)
    return len(features)
