"""Label images: renumbering and rescaling that never lose an object without saying so.

Label images are (Y, X) integer arrays, 0 = background, ids 1..N; orgaseg writes them as uint16
(uint32 beyond 65,535 objects, :func:`orgaseg_core.common.images.label_dtype`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .errors import OrgasegError
from .images import label_dtype
from .resample import nearest_indices, output_length

log = logging.getLogger(__name__)


@dataclass
class LabelRescaleReport:
    """What rescaling a label image did to its objects.

    ``id_map`` maps original id -> new id for the objects kept; ``vanished`` lists the original
    ids of objects present before and absent after rescaling (too small for the new size).
    """

    n_before: int
    n_after: int
    vanished: list[int] = field(default_factory=list)
    id_map: dict[int, int] = field(default_factory=dict)


def _present_ids(labels: np.ndarray) -> np.ndarray:
    """Sorted non-zero ids in ``labels`` (bincount when ids are small, else unique)."""
    if labels.size == 0:
        return np.zeros(0, dtype=np.int64)
    top = int(labels.max())
    if top == 0:
        return np.zeros(0, dtype=np.int64)
    if top <= 4 * labels.size + 1_000_000 and labels.dtype.itemsize < 8:
        counts = np.bincount(labels.ravel(), minlength=top + 1)
        return np.nonzero(counts[1:])[0] + 1
    ids = np.unique(labels)
    return ids[ids > 0].astype(np.int64)


def relabel_consecutive(labels: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """Renumber the ids of ``labels`` to 1..N in the order of the original ids (0 stays 0).

    Every original id keeps one new id, also when its pixels form several separate parts.
    dtype: uint16, or uint32 beyond 65,535 objects (:func:`orgaseg_core.common.images.label_dtype`).
    """
    ids = _present_ids(labels)
    dtype = label_dtype(len(ids))
    new_ids = np.arange(1, len(ids) + 1, dtype=dtype)
    if ids.size and int(ids[-1]) <= 4 * labels.size + 1_000_000:
        lut = np.zeros(int(ids[-1]) + 1, dtype=dtype)
        lut[ids] = new_ids
        out = lut[labels]
    else:
        out = np.zeros(labels.shape, dtype=dtype)
        nz = labels > 0
        out[nz] = new_ids[np.searchsorted(ids, labels[nz])]
    return out, {int(a): int(b) for a, b in zip(ids, new_ids)}


def rescale_labels(labels: np.ndarray, scale: float) -> tuple[np.ndarray, LabelRescaleReport]:
    """Resize a label image (Y, X) by ``scale`` with nearest neighbour, then relabel.

    Each output pixel takes the label under its centre. Ids are renumbered 1..N in order of
    the original ids (deterministic), each object keeping one id even if it falls apart into
    separate pieces. Objects that disappear at the new size are listed by original id in the
    report (and logged), never silently lost. Returns (labels, report); dtype uint16 (uint32
    beyond 65,535 objects).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise OrgasegError(f"a label image must be 2D, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise OrgasegError(f"a label image must hold integers, got {labels.dtype}")
    h, w = labels.shape
    shape = (output_length(h, scale), output_length(w, scale))
    if shape == (h, w):
        resized = labels
    else:
        resized = labels[nearest_indices(h, shape[0])][:, nearest_indices(w, shape[1])]
    before = _present_ids(labels)
    out, id_map = relabel_consecutive(resized)
    vanished = np.setdiff1d(before, np.fromiter(id_map.keys(), dtype=np.int64, count=len(id_map)))
    report = LabelRescaleReport(n_before=len(before), n_after=len(id_map),
                                vanished=[int(v) for v in vanished], id_map=id_map)
    if report.vanished:
        log.warning("rescaling labels by %g: %d of %d objects vanished (original ids %s)", scale,
                    len(report.vanished), report.n_before, short_list(report.vanished))
    return out, report


def short_list(values: list, limit: int = 20) -> str:
    text = ", ".join(str(v) for v in values[:limit])
    return text + (f", ... ({len(values) - limit} more)" if len(values) > limit else "")
