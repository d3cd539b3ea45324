"""Test-time views: class probabilities averaged over flipped and turned copies of an image.

A microscope image has no up or left, but a network trained from scratch on a few images has
not learned that fully: its output at a pixel changes when the image is flipped or turned by
90 degrees. Predicting on such copies ("views", the dihedral group of the square), turning each
result back and averaging gives smoother, more certain class probabilities (test-time
augmentation). It costs one prediction per view.

Views in order: the image; flipped left-right; flipped up-down; both (turned 180 degrees);
then the same four transposed. ``views`` n uses the first n of them (1, 2, 4 or 8).

Measured (``python benchmarks/bench_real_segmentation.py``, GOAT leave-one-image-out, the
U-Net of the real preset): 8 views raise the pooled F1 at IoU 0.5 from 0.40 to 0.47 on the
same five models (see the README).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

#: the numbers of views that can be averaged
VIEW_COUNTS = (1, 2, 4, 8)
#: the views: (transpose, flip rows, flip columns), applied in that order
_VIEWS = ((False, False, False), (False, False, True), (False, True, False), (False, True, True),
          (True, False, False), (True, False, True), (True, True, False), (True, True, True))
#: training keeps the most views whose validation mean F1 (IoU 0.5-0.9) is within this of the best
VIEWS_TOLERANCE = 0.01


def parse_views(value) -> int | None:
    """``views`` as given by a user: None/"auto" -> None (the model's choice), else one of
    :data:`VIEW_COUNTS` as int. Raises ValueError naming the choices."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    try:
        number = int(str(value).strip()) if not isinstance(value, (int, float)) else value
    except ValueError:
        number = None
    if isinstance(number, bool) or number not in VIEW_COUNTS or int(number) != number:
        raise ValueError(f"test-time views must be auto or one of {', '.join(map(str, VIEW_COUNTS))}, "
                         f"got {value!r}")
    return int(number)


def _turn(array: np.ndarray, view: tuple[bool, bool, bool]) -> np.ndarray:
    transpose, flip_rows, flip_cols = view
    if transpose:
        array = np.swapaxes(array, 0, 1)
    if flip_rows:
        array = array[::-1]
    if flip_cols:
        array = array[:, ::-1]
    return array


def _turn_back(array: np.ndarray, view: tuple[bool, bool, bool]) -> np.ndarray:
    transpose, flip_rows, flip_cols = view
    if flip_cols:
        array = array[:, ::-1]
    if flip_rows:
        array = array[::-1]
    if transpose:
        array = np.swapaxes(array, 0, 1)
    return array


def mean_over_views(probabilities: Callable[[np.ndarray], np.ndarray], image: np.ndarray,
                    views: int) -> np.ndarray:
    """The mean of ``probabilities(view)`` over the first ``views`` views of ``image`` (Y, X),
    each turned back: (Y, X, classes) float32. ``views`` 1 is ``probabilities(image)``."""
    if views not in VIEW_COUNTS:
        raise ValueError(f"views must be one of {VIEW_COUNTS}, got {views!r}")
    if views == 1:
        return probabilities(image)
    total = None
    for view in _VIEWS[:views]:
        p = _turn_back(probabilities(np.ascontiguousarray(_turn(image, view))), view)
        total = p.astype(np.float32, copy=True) if total is None else total + p
    total /= views
    return total


def with_views(probabilities: Callable[[np.ndarray], np.ndarray], views: int
               ) -> Callable[[np.ndarray], np.ndarray]:
    """``probabilities`` averaged over ``views`` views (itself when 1)."""
    if views == 1:
        return probabilities
    return lambda image: mean_over_views(probabilities, image, views)


def stored_views(metadata: dict) -> int:
    """The views a model folder's ``orgaseg_model.json`` chose (1 for models before 0.10)."""
    stored = metadata.get("test_time_views") or {}
    views = stored.get("views") if isinstance(stored, dict) else None
    return int(views) if views in VIEW_COUNTS else 1


def choose_views(score: Callable[[int], float], *, candidates: Sequence[int] = (1, 8),
                 given: int | None = None, tolerance: float = VIEWS_TOLERANCE) -> dict:
    """The views a model keeps: ``score(views)`` (mean F1 over IoU 0.5-0.9 on the validation
    images) for each candidate, and the most views within ``tolerance`` of the best. One
    validation image decides little, and averaging views is known not to hurt on average
    (it did not on GOAT), so a tie keeps the views; a clear loss drops them. given: the
    user's number, kept (scored for the report). Returns {"views", "reason", "scores"
    (views text -> score), "chosen": "auto" or "given"}."""
    if given is not None:
        s = round(float(score(given)), 4)
        return {"views": int(given), "reason": "given", "scores": {str(given): s}, "chosen": "given"}
    scores = {int(v): round(float(score(v)), 4) for v in candidates}
    top = max(scores.values())
    best = max(v for v, s in scores.items() if s >= top - tolerance)
    listed = ", ".join(f"{v} view{'s' if v > 1 else ''} {s:.3f}" for v, s in scores.items())
    reason = (f"the most views within {tolerance:g} of the best validation mean F1 over IoU 0.5-0.9 "
              f"({listed})")
    return {"views": best, "reason": reason, "scores": {str(v): s for v, s in scores.items()},
            "chosen": "auto"}
