"""Label images from another tool (Cellpose, QuPath, another album solution) in the place of
``segment``'s output, so that ``analyze --masks`` extracts, classifies and reports on them.

For every image with a label image of the same stem it writes what ``segment`` writes
(``<stem>.tif``, ``<stem>.geojson``, ``<stem>_objects.csv``, ``run.json``), with the outlines
traced from the label image (:mod:`.outlines`) and no probability (the other tool did not give
one: the column is empty and QuPath gets no ``Probability`` measurement). Label ids are kept as
the other tool wrote them, so results map back to its objects; only ids beyond the range of
uint32 are renumbered (and the log says so). Needs neither TensorFlow nor torch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..common.errors import InputFileError, OrgasegError
from ..common.images import (
    IMAGE_SUFFIXES,
    index_by_stem,
    input_images,
    label_dtype,
    list_images,
    read_image_shape,
    read_labels,
)
from ..common.labels import relabel_consecutive
from ..common.outputs import step_run, whole_or_absent, write_csv, write_tiff
from ..qupath.geojson import new_run_ids, write_feature_collection
from .outlines import label_outlines
from .predict import features_of_objects, object_table

log = logging.getLogger(__name__)

STEP = "masks"


@dataclass
class MasksImportResult:
    """What :func:`segmentation_from_masks` wrote: objects per image name, failures, time."""

    out: Path
    masks: Path
    objects: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    unused_masks: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def n_images(self) -> int:
        return len(self.objects)

    def summary(self) -> str:
        lines = [f"masks: {sum(self.objects.values())} objects in {self.n_images} image(s) from "
                 f"{self.masks} -> {self.out} ({self.seconds:.1f} s)"]
        lines += [f"  not used: {m}" for m in self.unused_masks]
        lines += [f"  failed: {f}" for f in self.failed]
        return "\n".join(lines)


def _label_files(masks: Path) -> dict[str, Path]:
    if not masks.is_dir():
        raise InputFileError(masks, "is not a folder of label images")
    files = [p for p in list_images(masks, what="label images") if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise InputFileError(masks, "contains no label images (.tif, .tiff, .png)")
    return index_by_stem(files, what="label images")


def segmentation_from_masks(images: Path, masks: Path, out: Path, *,
                            overwrite: bool = False) -> MasksImportResult:
    """Write ``segment``'s outputs for ``images`` (a file or a folder) from the label images of
    the same stems in ``masks``.

    A label image must be 2D, hold non-negative integers and have its image's height and
    width (pixels). An image without a label image, or with one that does not fit, is reported
    in ``failed`` and skipped (the caller decides whether that fails the run); label images
    without an image are listed in ``unused_masks``.
    """
    start = time.perf_counter()
    images, masks, out = Path(images), Path(masks), Path(out)
    image_files, folder = input_images(images)
    label_files = _label_files(masks)
    arguments = {"images": images, "masks": masks, "out": out, "overwrite": overwrite}
    with step_run(STEP, out, arguments, overwrite=overwrite, inputs=[folder, masks]) as record:
        result = MasksImportResult(out=out, masks=masks)
        result.unused_masks = sorted(label_files[s].name for s in set(label_files) - set(image_files))
        for name in result.unused_masks:
            log.warning("%s: no image of this name in %s; not used", masks / name, folder)
        per_image = {}
        run_ids = new_run_ids()  # object ids: new for this run, shared by all its files
        for stem, path in tqdm(sorted(image_files.items()), desc="masks", unit="image", disable=None):
            if stem not in label_files:
                result.failed.append(f"{path}: no label image {stem}.tif (or .tiff, .png) in {masks}")
                log.error("skipped %s", result.failed[-1])
                continue
            try:
                labels = read_labels(label_files[stem])
                shape = read_image_shape(path)
                if labels.shape != tuple(shape):
                    raise InputFileError(label_files[stem], f"is {labels.shape[0]}x{labels.shape[1]} px "
                                         f"but its image {path.name} is {shape[0]}x{shape[1]} px")
            except OrgasegError as exc:
                result.failed.append(str(exc))
                log.error("skipped %s", exc)
                continue
            if labels.size and int(labels.max()) > np.iinfo(np.uint32).max:
                labels, _ = relabel_consecutive(labels)
                log.warning("%s: ids beyond %d renumbered 1..N", label_files[stem], np.iinfo(np.uint32).max)
            labels = labels.astype(label_dtype(int(labels.max()) if labels.size else 0), copy=False)
            table = object_table(labels, [], path.name)  # no probabilities: NaN
            outlines = label_outlines(labels)
            outputs = (out / f"{stem}.tif", out / f"{stem}.geojson", out / f"{stem}_objects.csv")
            with whole_or_absent(*outputs):
                write_tiff(outputs[0], labels)
                write_feature_collection(outputs[1], features_of_objects(outlines, table, stem, run_ids))
                write_csv(outputs[2], table)
            result.objects[path.name] = int(len(table))
            per_image[path.name] = {"objects": int(len(table)), "mask": str(label_files[stem]),
                                    "shape": list(labels.shape)}
            log.info("%s: %d objects from %s -> %s", path.name, len(table), label_files[stem],
                     out / f"{stem}.tif")
        result.seconds = time.perf_counter() - start
        record.results.update(images=per_image, n_images=result.n_images,
                              n_objects=sum(result.objects.values()), failed=result.failed,
                              unused_masks=result.unused_masks, seconds=round(result.seconds, 3))
    return result
