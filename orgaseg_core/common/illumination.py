"""Illumination clean-up of grey brightfield images: microscope vignette and uneven background.

Pure array functions on grey (Y, X) images (any dtype; the result keeps shape and dtype).
``preprocess`` applies them to training images; ``segment`` repeats what the training images
had (:func:`process_image`), so both steps share this one implementation.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from .errors import OrgasegError
from .resample import cast_like, output_length, resize_2d

log = logging.getLogger(__name__)


def _subsample(grey: np.ndarray, max_side: int = 1024) -> np.ndarray:
    """Every k-th pixel so the longer side is at most ``max_side`` (for robust statistics)."""
    step = max(1, int(np.ceil(max(grey.shape) / max_side)))
    return grey[::step, ::step]


def background_level(grey: np.ndarray) -> float:
    """Robust background grey level: the median of the central half of the image.

    The centre is used because a microscope vignette darkens the border; organoids cover a
    minority of the field, so the median is the background.
    """
    h, w = grey.shape
    centre = grey[h // 4: h - h // 4 or h, w // 4: w - w // 4 or w]
    return float(np.median(_subsample(centre)))


def vignette_mask(grey: np.ndarray, *, threshold: float = 0.4, min_area: float = 0.001,
                  smooth: int = 5) -> np.ndarray:
    """Boolean (Y, X) mask of the dark vignette: dark regions connected to the image border.

    A pixel is dark when its local mean (``smooth`` x ``smooth`` pixels, to ignore noise) is
    below ``threshold`` times the background level (:func:`background_level`). Dark connected
    regions (8-connectivity) that touch the border and cover at least ``min_area`` (fraction of
    the image) form the vignette; dark objects in the interior never touch the border and are
    kept, as are small dark specks at the border. Dark pixels within ``smooth // 2`` of the
    found vignette join it (the local mean shifts its edge). Limitation: a dark object that
    touches the border or the vignette is taken as part of the vignette.
    """
    if grey.ndim != 2:
        raise OrgasegError(f"vignette detection needs a grey (Y, X) image, got shape {grey.shape}")
    level = background_level(grey)
    if level <= 0:
        return np.zeros(grey.shape, dtype=bool)
    values = grey.astype(np.float32, copy=False)
    if smooth > 1:
        values = ndimage.uniform_filter(values, size=smooth, mode="nearest")
    dark = values < threshold * level
    if not dark.any():
        return dark
    labels, n = ndimage.label(dark, structure=np.ones((3, 3), dtype=bool))
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    border_ids = np.unique(border[border > 0])
    if border_ids.size == 0:
        return np.zeros(grey.shape, dtype=bool)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = border_ids[sizes[border_ids] >= min_area * grey.size]
    lut = np.zeros(n + 1, dtype=bool)
    lut[keep] = True
    mask = lut[labels]
    if smooth > 1 and mask.any():
        # The local mean blurs the vignette's edge by smooth // 2 pixels; take back the dark
        # pixels there so no thin dark line stays along the edge.
        grow = 2 * (smooth // 2) + 1
        near = ndimage.maximum_filter(mask.view(np.uint8), size=grow).view(bool)
        mask |= near & (grey < threshold * level)
    return mask


def remove_vignette(grey: np.ndarray, *, threshold: float = 0.4, min_area: float = 0.001,
                    return_mask: bool = False):
    """Replace the dark microscope vignette with the median of the remaining image.

    The vignette is found by :func:`vignette_mask` (dark regions touching the border, darker
    than ``threshold`` x background level). Returns the cleaned grey image (same shape and
    dtype as ``grey``), or ``(image, mask)`` with ``return_mask=True``.
    """
    mask = vignette_mask(grey, threshold=threshold, min_area=min_area)
    result = grey.copy()
    if mask.any() and not mask.all():
        rest = grey[~mask]
        fill = float(np.median(rest[:: max(1, rest.size // 1_000_000)]))
        result[mask] = cast_like(np.array(fill), grey.dtype)
        log.debug("vignette: %d pixels (%.1f %%) set to %.1f", mask.sum(), 100 * mask.mean(), fill)
    return (result, mask) if return_mask else result


def estimate_background(grey: np.ndarray, *, sigma_fraction: float = 0.125,
                        work_side: int = 128) -> np.ndarray:
    """Smooth illumination estimate of a grey image, float64 (Y, X), without any mask.

    Works on a copy shrunk (area means) so its shorter side is about ``work_side`` pixels:
    a grey closing (window ``sigma_fraction`` of the shorter side) removes dark objects such as
    organoids, then a Gaussian (sigma = ``sigma_fraction`` of the shorter side) smooths; the
    result is enlarged back with linear interpolation. Cost: linear in the pixels, small constant.
    """
    h, w = grey.shape
    factor = min(1.0, work_side / min(h, w))
    small_shape = (output_length(h, factor), output_length(w, factor))
    small = resize_2d(grey, small_shape)
    size = max(3, int(round(sigma_fraction * min(small_shape))) | 1)
    # Organoids are darker than the background: a closing (max then min filter) fills them.
    small = ndimage.grey_closing(small, size=(size, size), mode="nearest")
    small = ndimage.gaussian_filter(small, sigma=sigma_fraction * min(small_shape), mode="nearest")
    return resize_2d(small, (h, w))


def flatten_background(grey: np.ndarray, *, sigma_fraction: float = 0.125) -> np.ndarray:
    """Even out uneven illumination: divide by a smooth background estimate, keep the level.

    ``grey / background * median(background)``: the background becomes flat at its original
    median level, objects keep their contrast relative to the local background. No mask is
    used (masks are not available at inference, and using them leaks annotations into the
    training images). Returns the same shape and dtype (integers rounded and clipped).
    """
    if grey.ndim != 2:
        raise OrgasegError(f"background flattening needs a grey (Y, X) image, got shape {grey.shape}")
    background = estimate_background(grey, sigma_fraction=sigma_fraction)
    level = float(np.median(background))
    # Guard against division by ~0 in a black image or an unremoved black vignette.
    floor = max(abs(level) * 1e-3, 1e-6)
    np.maximum(background, floor, out=background)
    flat = grey.astype(np.float64)
    flat /= background
    flat *= level
    return cast_like(flat, grey.dtype)


def process_image(grey: np.ndarray, *, vignette: bool = False, flatten: bool = False) -> np.ndarray:
    """Apply the optional vignette removal, then background flattening, to a grey (Y, X) image."""
    if vignette:
        grey = remove_vignette(grey)
    if flatten:
        grey = flatten_background(grey)
    return grey
