"""Resampling of 2D arrays with separable weight matrices: exact area means, linear, nearest.

A resize of an (H, W) array to (h, w) is ``Wy @ array @ Wx.T`` with sparse weight matrices
``Wy`` (h x H) and ``Wx`` (w x W). Building the matrices is O(H + W); applying them is linear in
the pixels. Pixel ``i`` of an axis of length ``n`` covers the interval [i, i + 1) in pixel units,
so input and output grids are aligned at their outer edges (corner-aligned areas, like
OpenCV's ``INTER_AREA`` and scikit-image's ``resize``).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from .errors import OptionError


def output_length(n_in: int, scale: float) -> int:
    """Length of an axis of ``n_in`` pixels resized by ``scale`` (rounded, at least 1)."""
    if not np.isfinite(scale) or scale <= 0:
        raise OptionError(f"scale must be a positive number, got {scale!r}")
    return max(1, int(round(n_in * scale)))


def area_matrix(n_in: int, n_out: int) -> sparse.csr_matrix:
    """(n_out, n_in) weights: each output pixel is the mean of the input area it covers.

    Output pixel ``i`` covers input interval [i * r, (i + 1) * r) with r = n_in / n_out >= 1;
    input pixels partly inside get the overlapping fraction as weight; every row sums to 1.
    For an integer ratio this is exactly the block mean.
    """
    if n_out > n_in:
        raise ValueError("area_matrix is for downscaling (n_out <= n_in)")
    ratio = n_in / n_out
    starts = np.arange(n_out) * ratio
    ends = starts + ratio
    first = np.floor(starts).astype(np.int64)
    span = int(np.ceil(ratio)) + 1  # an interval of length r touches at most ceil(r) + 1 pixels
    rows, cols, vals = [], [], []
    for k in range(span):
        j = first + k
        overlap = np.minimum(ends, j + 1) - np.maximum(starts, j)
        keep = (overlap > 1e-12) & (j < n_in)
        rows.append(np.nonzero(keep)[0])
        cols.append(j[keep])
        vals.append(overlap[keep] / ratio)
    matrix = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                               shape=(n_out, n_in))
    return matrix


def linear_matrix(n_in: int, n_out: int) -> sparse.csr_matrix:
    """(n_out, n_in) weights of linear interpolation at the output pixel centres.

    The centre of output pixel ``i`` lies at input coordinate (i + 0.5) * n_in / n_out - 0.5;
    beyond the outermost input centres the edge value is repeated.
    """
    pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    left = np.floor(pos).astype(np.int64)
    right = np.minimum(left + 1, n_in - 1)
    frac = pos - left
    rows = np.concatenate([np.arange(n_out), np.arange(n_out)])
    cols = np.concatenate([left, right])
    vals = np.concatenate([1.0 - frac, frac])
    # csr_matrix sums duplicate entries (left == right at the last pixel), giving weight 1.
    return sparse.csr_matrix((vals, (rows, cols)), shape=(n_out, n_in))


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Input index sampled for each of ``n_out`` output pixels (the pixel under its centre)."""
    idx = np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64)
    return np.clip(idx, 0, n_in - 1)


def resize_weights(n_in: int, n_out: int) -> sparse.csr_matrix:
    """Area weights when shrinking an axis, linear weights when enlarging (identity if equal)."""
    if n_out == n_in:
        return sparse.identity(n_in, format="csr")
    return area_matrix(n_in, n_out) if n_out < n_in else linear_matrix(n_in, n_out)


def resize_2d(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a 2D array to ``shape`` (rows, cols); float64 result, not rounded.

    Shrinking uses exact area means, enlarging linear interpolation (per axis).
    """
    if array.ndim != 2:
        raise ValueError(f"resize_2d needs a 2D array, got shape {array.shape}")
    h, w = array.shape
    wy = resize_weights(h, shape[0])
    wx = resize_weights(w, shape[1])
    data = np.asarray(array, dtype=np.float64)
    # Apply the axis that shrinks more first, so the second product works on fewer pixels.
    if shape[0] / h <= shape[1] / w:
        tmp = wy @ data                      # (h', W)
        return np.ascontiguousarray((wx @ tmp.T).T)
    tmp = (wx @ data.T).T                    # (H, w')
    return np.ascontiguousarray(wy @ tmp)


def cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast float ``values`` to ``dtype``: integers rounded to nearest and clipped to its range."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        rounded = np.rint(values)
        if isinstance(rounded, np.ndarray) and rounded.ndim:
            np.clip(rounded, info.min, info.max, out=rounded)  # in place: no second full-size copy
        else:
            rounded = np.clip(rounded, info.min, info.max)
        return np.asarray(rounded).astype(dtype)
    if dtype == np.bool_:
        return values >= 0.5
    return values.astype(dtype)


# --------------------------------------------------------------------------- images

def rescale_image(image: np.ndarray, scale: float) -> np.ndarray:
    """Resize an image (Y, X) or (Y, X, C) by ``scale``; same dtype as the input.

    Shrinking: each output pixel is the exact mean of the input area it covers (area
    interpolation; a factor 0.5 gives 2x2 block means). Enlarging: linear interpolation.
    The output size is round(size * scale) per axis; integers are rounded to nearest.
    """
    image = np.asarray(image)
    shape = (output_length(image.shape[0], scale), output_length(image.shape[1], scale))
    if shape == image.shape[:2]:
        return image.copy()
    if image.ndim == 2:
        return cast_like(resize_2d(image, shape), image.dtype)
    channels = [cast_like(resize_2d(image[..., c], shape), image.dtype) for c in range(image.shape[-1])]
    return np.stack(channels, axis=-1)
