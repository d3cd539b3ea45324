"""Classifier training objects from annotated images: crops, measurements and classes together.

Input: the images and the output of ``annotations-to-masks`` (``<stem>.tif`` label image and
``<stem>_objects.csv`` with the ``label`` -> ``class`` of every object). Every object is turned
into exactly what ``analyze`` later gives the classifier for a segmented object:

- its crop, cut by :func:`orgaseg_core.objects.extract.object_crop` with the same ``padding``
  and ``context``
  (grey, native dtype);
- its measurements (:func:`orgaseg_core.objects.measurements.measure_objects`) and descriptors
  (:func:`orgaseg_core.objects.descriptors.object_descriptors`), computed on the whole image as
  ``extract-objects`` computes them.

So the measurement model sees the same columns at training and at prediction, and the CNN the
same kind of crops. The objects are then split by IMAGE (seeded, stratified by class, with
:func:`orgaseg_core.common.splits.assign_groups`): objects of one image never sit in two splits.
No torch, no scikit-learn here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm import tqdm

from ..common.classes import read_class_table
from ..common.errors import InputFileError, OrgasegError
from ..common.images import list_images, pair_by_stem, read_image, read_labels, report_unmatched, to_grey

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: Columns of the object table besides the measurements and descriptors.
ID_COLUMNS = ["image", "stem", "label", "class", "split", "variant"]


@dataclass
class ObjectSet:
    """Labelled objects: ``table`` (one row per object: :data:`ID_COLUMNS`, measurements,
    descriptors) and ``crops`` (grey crops, native dtype, in table order)."""

    table: pd.DataFrame
    crops: list[np.ndarray] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> objects
    unmatched: list[str] = field(default_factory=list)
    variants: pd.DataFrame | None = None  # measurements of outline variants (no crops)
    stress: pd.DataFrame | None = None  # stronger outline variants, for validation (with crops)
    stress_crops: list[np.ndarray] = field(default_factory=list)

    def subset(self, split: str) -> tuple[pd.DataFrame, list[np.ndarray]]:
        """(table rows, crops) of one split."""
        rows = np.flatnonzero(self.table["split"].to_numpy() == split)
        return self.table.iloc[rows].reset_index(drop=True), [self.crops[i] for i in rows]


#: Outline variants the measurement forest trains on: (grow/shrink px, smoothing fraction).
TRAINING_VARIANTS = (2, 0.1)
#: Stronger variants on which the candidates are also validated (errors larger than trained for).
VALIDATION_VARIANTS = (4, 0.2)


def outline_variants(labels: np.ndarray, pixels: int = TRAINING_VARIANTS[0],
                     smoothing: float = TRAINING_VARIANTS[1]) -> dict[str, np.ndarray]:
    """Label images whose outlines differ from the annotated ones as segmented outlines do.

    A model's outlines are rarely the annotator's: a little tighter or looser, smoother, with
    thin buds cut off. Measurements of such outlines shift (area, perimeter, circularity,
    solidity), so a forest trained on the annotated outlines alone is thrown by them (on the
    faint demo style: macro-F1 1.00 on annotated outlines, 0.90 on segmented ones). Training
    also on these variants teaches it which differences do not change the class:

    - ``eroded``: every object shrunk by ``pixels`` px (default 2);
    - ``dilated``: every object grown by ``pixels`` px into the background (never into another);
    - ``smoothed``: every object opened with a disk of ``smoothing`` (default 10 %) of its
      equivalent radius (at least 2 px): rough edges and thin protrusions go.

    Objects that vanish in a variant are simply absent from it. Linear in the pixels (the
    opening runs inside each object's bounding box).
    """
    from skimage.morphology import disk
    from skimage.segmentation import expand_labels

    labels = np.asarray(labels)
    eroded = labels.copy()
    # A pixel stays when its 5x5 disk holds only its own label (erosion of each object by 2 px).
    footprint = disk(int(pixels)).astype(bool)
    low = ndimage.grey_erosion(labels, footprint=footprint)
    high = ndimage.grey_dilation(labels, footprint=footprint)
    eroded[(low != labels) | (high != labels)] = 0
    smoothed = np.zeros_like(labels)
    for index, box in enumerate(ndimage.find_objects(labels)):
        if box is None:
            continue
        label = index + 1
        mask = labels[box] == label
        radius = max(2, int(round(smoothing * np.sqrt(mask.sum() / np.pi))))
        opened = ndimage.binary_opening(np.pad(mask, radius), structure=disk(radius).astype(bool))
        opened = opened[radius:-radius, radius:-radius]
        smoothed[box][opened] = label
    return {"eroded": eroded, "dilated": expand_labels(labels, int(pixels)), "smoothed": smoothed}


def read_annotated_objects(images: Path, masks: Path, *, padding: int, context: float = 0.0,
                           outline_augmentation: bool = True, stress_variants: bool = False) -> ObjectSet:
    """Every classified object of the annotated images (see the module notes); ``split`` empty.

    images: folder of images; masks: annotations-to-masks folder. padding, context: the crop
    window (:func:`orgaseg_core.objects.extract.crop_window`). Images and masks are paired
    by stem; unmatched files are reported by name and left out. A label without a class (or a
    class without pixels) is counted in ``skipped``. With ``outline_augmentation`` the table
    also holds, per object, the measurements of its :func:`outline_variants` (rows with
    ``variant`` set and no crop; only the measurement forest trains on them, and only those of
    training images are used); ``variant`` is "" for the annotated outline. With
    ``stress_variants``, ``stress`` and ``stress_crops`` hold the stronger variants of
    :data:`VALIDATION_VARIANTS` with the crops cut around them (for validation only).
    """
    from ..objects.descriptors import measure_and_describe
    from ..objects.extract import crop_window, object_crop

    images, masks = Path(images), Path(masks)
    pairs, only_images, only_masks = pair_by_stem(list_images(images, what="images"),
                                                  list_images(masks, what="masks"))
    if not pairs:
        raise InputFileError(masks, f"no label image matches an image of {images} by name (stem)")
    unmatched = report_unmatched(only_images, only_masks, first_what="image", second_what="mask")
    tables, crops, variants, stressed, stressed_crops = [], [], [], [], []
    skipped: dict[str, int] = {}
    for stem, image_path, mask_path in tqdm(pairs, desc="reading annotated objects", unit="image",
                                            disable=None):
        grey = to_grey(read_image(image_path))
        labels = read_labels(mask_path)
        if labels.shape != grey.shape:
            raise InputFileError(mask_path, f"mask is {labels.shape[0]}x{labels.shape[1]} pixels but "
                                            f"its image {image_path} is {grey.shape[0]}x{grey.shape[1]}")
        classes = read_class_table(masks / f"{stem}_objects.csv")
        table = measure_and_describe(labels, grey)
        known = table["label"].isin(list(classes)).to_numpy()
        if (~known).any():
            skipped["label without a class"] = skipped.get("label without a class", 0) + int((~known).sum())
        missing = set(classes) - set(table["label"].tolist())
        if missing:
            skipped["class without pixels"] = skipped.get("class without pixels", 0) + len(missing)
        table = table[known].reset_index(drop=True)
        for label, box in zip(table["label"].tolist(),
                              table[["bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col"]]
                              .itertuples(index=False, name=None)):
            crops.append(object_crop(grey, labels, int(label), crop_window(box, padding, labels.shape, context)))
        table.insert(0, "image", image_path.name)
        table.insert(1, "stem", stem)
        table.insert(3, "class", [classes[int(lab)] for lab in table["label"]])
        table.insert(4, "split", "")
        table.insert(5, "variant", "")
        tables.append(table)
        sets = []
        if outline_augmentation:
            sets.append(("", outline_variants(labels, *TRAINING_VARIANTS), variants, None))
        if stress_variants:
            sets.append(("stress ", outline_variants(labels, *VALIDATION_VARIANTS), stressed, stressed_crops))
        for prefix, outlines, rows, crop_list in sets:
            for name, variant in outlines.items():
                extra = measure_and_describe(variant, grey)
                extra = extra[extra["label"].isin(table["label"])].reset_index(drop=True)
                if crop_list is not None:  # the crop analyze would cut around this outline
                    for label, box in zip(extra["label"].tolist(),
                                          extra[["bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col"]]
                                          .itertuples(index=False, name=None)):
                        crop_list.append(object_crop(grey, variant, int(label),
                                                     crop_window(box, padding, labels.shape, context)))
                extra.insert(0, "image", image_path.name)
                extra.insert(1, "stem", stem)
                extra.insert(3, "class", [classes[int(lab)] for lab in extra["label"]])
                extra.insert(4, "split", "")
                extra.insert(5, "variant", prefix + name)
                rows.append(extra)
        log.info("read %s and %s: %d classified objects", image_path.name, mask_path.name, len(table))
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=ID_COLUMNS)
    if table.empty:
        raise InputFileError(masks, "holds no classified object (the <stem>_objects.csv tables "
                                    "name no class for any label)")
    augmented = pd.concat(variants, ignore_index=True) if variants else table.iloc[:0]
    stress = pd.concat(stressed, ignore_index=True) if stressed else table.iloc[:0]
    return ObjectSet(table=table, crops=crops, skipped=skipped, unmatched=unmatched, variants=augmented,
                     stress=stress, stress_crops=stressed_crops)


def split_by_image(objects: ObjectSet, ratios: Mapping[str, float], seed: int) -> dict[str, str]:
    """Assign every image (stem) to train/val/test, stratified by class; sets ``split`` in place.

    Returns stem -> split. Raises OrgasegError when the training or validation split would be
    empty (too few images for the fractions).
    """
    from ..common.splits import assign_groups

    counts: dict[str, dict[str, int]] = {}
    for stem, cls in zip(objects.table["stem"], objects.table["class"]):
        counts.setdefault(stem, {}).setdefault(cls, 0)
        counts[stem][cls] += 1
    assignment = assign_groups(counts, ratios, seed)
    objects.table["split"] = objects.table["stem"].map(assignment)
    for extra in (objects.variants, objects.stress):
        if extra is not None:
            extra["split"] = extra["stem"].map(assignment)
    present = set(assignment.values())
    for split in ("train", "val"):
        if split not in present:
            raise OrgasegError(f"{len(counts)} annotated images are too few to give the {split} split "
                               f"an image (fractions {dict(ratios)}); annotate more images or change "
                               "the fractions")
    return assignment
