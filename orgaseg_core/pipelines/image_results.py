"""What analyze writes per image: the classified QuPath detections, the class overlay, and the
image's rows of the objects table (predictions joined with segment's object probability).

Pure functions of the step outputs of one image; :mod:`.chunks` calls them on a Dask worker.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..common.images import read_image, read_labels

log = logging.getLogger(__name__)

QUPATH_DIR = "qupath"
OVERLAYS_DIR = "overlays"

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


def objects_table(predictions: pd.DataFrame, seg_out: Path, class_names: Sequence[str]) -> pd.DataFrame:
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


def write_image_results(path: Path, stem: str, seg_out: Path, out: Path, objects: pd.DataFrame,
                        reasons: dict[int, str], class_names: Sequence[str], overlays: str = "png") -> int:
    """qupath/<stem>.geojson and the overlay overlays/<stem>.png (or .jpg with ``overlays``
    "jpeg", none with "none") of one image; returns its object count."""
    from ..common.overlays import OVERLAY_SUFFIXES, check_overlay_format, class_overlay, save_jpeg, save_png
    from ..qupath.geojson import load_features, write_feature_collection

    features = load_features(seg_out / f"{stem}.geojson")
    geojson = out / QUPATH_DIR / f"{stem}.geojson"
    geojson.parent.mkdir(exist_ok=True)
    write_feature_collection(geojson, classified_features(features, objects, reasons, class_names))
    suffix = OVERLAY_SUFFIXES[check_overlay_format(overlays)]
    picture = out / OVERLAYS_DIR / f"{stem}{suffix}" if suffix else None
    if picture is not None:
        label_classes = {int(l): str(c) for l, c in zip(objects["label"], objects["predicted_class"])}
        overlay = class_overlay(read_image(path), read_labels(seg_out / f"{stem}.tif"), label_classes,
                                class_names=class_names)
        picture.parent.mkdir(exist_ok=True)
        (save_jpeg if suffix == ".jpg" else save_png)(picture, overlay)
    log.info("%s: %d objects, %d classified -> %s%s", path.name, len(features), len(objects), geojson,
             f", {picture}" if picture else "")
    return len(features)
