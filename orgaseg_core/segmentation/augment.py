"""Random changes of training patches that brightfield organoid images also show.

:class:`Augmenter` is called by StarDist as ``x, y = augmenter(x, y)`` on every training patch
(never on validation data): ``x`` the normalised grey patch (Y, X) float32 (background about
0.5-1, organoids darker or brighter), ``y`` its label patch. Geometry changes apply to both,
intensity changes to ``x`` only. Seeded: the same seed gives the same sequence of transforms.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


class Augmenter:
    """Flips, 90-degree rotations, scale jitter, brightness/contrast/gamma, blur and noise.

    Geometry: flips up-down and left-right (probability 1/2 each), a rotation by k x 90 degrees
    (square patches only: a non-square patch would change shape), and with probability
    ``p_zoom`` a zoom by a factor uniform in ``zoom`` (log scale) about a random point, cropped
    or padded back to the patch size (padding: the patch's median grey, label 0), so the
    network sees organoids of more sizes than the annotations hold.
    Intensity, as microscopes and focus vary: gamma uniform in ``gamma`` (of the non-negative values), contrast ``(x - m) * c + m`` about the patch mean with c uniform in ``contrast``,
    ``x * a + b`` with a in ``scale`` and b in ``offset``; with probability ``p_blur`` a
    Gaussian blur of sigma uniform in ``blur`` px (out-of-focus organoids), with probability
    ``p_noise`` Gaussian noise of sd uniform in ``noise``.
    Single organoids out of focus (a microscope focuses on one plane, and organoids lie at many
    depths): with probability ``p_defocus`` each organoid of the patch is blurred, with one sigma
    uniform in ``defocus`` px for the patch, and faded towards the background grey by a factor
    uniform in ``fade``, inside a soft mask that reaches about a sigma beyond its outline (the
    halo of a defocused object); its label is kept. Off by default (``p_defocus=0``).
    ``brightfield=False`` keeps only flips, rotations and ``x * a + b`` (orgaseg 0.2).
    """

    def __init__(self, seed: int = 0, *, brightfield: bool = True,
                 scale: tuple[float, float] = (0.8, 1.2), offset: tuple[float, float] = (-0.1, 0.1),
                 gamma: tuple[float, float] = (0.7, 1.4), contrast: tuple[float, float] = (0.7, 1.3),
                 blur: tuple[float, float] = (0.5, 2.0), p_blur: float = 0.25,
                 noise: tuple[float, float] = (0.0, 0.05), p_noise: float = 0.25,
                 zoom: tuple[float, float] = (0.8, 1.25), p_zoom: float = 0.5,
                 defocus: tuple[float, float] = (2.0, 6.0), fade: tuple[float, float] = (0.3, 1.0),
                 p_defocus: float = 0.0):
        self.rng = np.random.default_rng(seed)
        self.brightfield = bool(brightfield)
        self.scale, self.offset = scale, offset
        self.gamma, self.contrast = gamma, contrast
        self.blur, self.p_blur = blur, p_blur
        self.noise, self.p_noise = noise, p_noise
        self.zoom, self.p_zoom = zoom, p_zoom
        self.defocus, self.fade, self.p_defocus = defocus, fade, p_defocus

    def _defocus(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``x`` with some of the organoids of ``y`` out of focus (see the class)."""
        labels = np.unique(y)
        labels = labels[labels > 0]
        chosen = labels[self.rng.random(len(labels)) < self.p_defocus]
        if not len(chosen):
            return x
        sigma = float(self.rng.uniform(*self.defocus))
        fade = np.float32(self.rng.uniform(*self.fade))
        background = np.float32(np.median(x[y == 0]) if (y == 0).any() else np.median(x))
        target = background + (ndimage.gaussian_filter(x, sigma) - background) * fade
        mask = ndimage.gaussian_filter(np.isin(y, chosen).astype(np.float32), sigma)
        mask = np.minimum(mask * 2.0, 1.0)  # 1 inside the organoid, fading out beyond its outline
        return x + (target - x) * mask

    def _zoom(self, x: np.ndarray, y: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
        shape = x.shape
        zx = ndimage.zoom(x, factor, order=1, mode="nearest", grid_mode=True)
        zy = ndimage.zoom(y, factor, order=0, mode="nearest", grid_mode=True)
        out_x = np.full(shape, np.median(x), dtype=np.float32)
        out_y = np.zeros(shape, dtype=y.dtype)
        # a random window of the zoomed patch (larger) or a random place for it (smaller)
        src, dst = [], []
        for axis in (0, 1):
            n, m = zx.shape[axis], shape[axis]
            if n >= m:
                start = int(self.rng.integers(n - m + 1))
                src.append(slice(start, start + m))
                dst.append(slice(0, m))
            else:
                start = int(self.rng.integers(m - n + 1))
                src.append(slice(0, n))
                dst.append(slice(start, start + n))
        out_x[tuple(dst)] = zx[tuple(src)]
        out_y[tuple(dst)] = zy[tuple(src)]
        return out_x, out_y

    def __call__(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        if x.shape[0] == x.shape[1]:
            k = int(rng.integers(4))
            if k:
                x, y = np.rot90(x, k, axes=(0, 1)), np.rot90(y, k, axes=(0, 1))
        if rng.random() < 0.5:
            x, y = x[::-1], y[::-1]
        if rng.random() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        x = np.asarray(x, dtype=np.float32)
        if self.brightfield:
            if rng.random() < self.p_zoom:
                factor = float(np.exp(rng.uniform(np.log(self.zoom[0]), np.log(self.zoom[1]))))
                x, y = self._zoom(np.ascontiguousarray(x), np.ascontiguousarray(y), factor)
            if self.p_defocus > 0:
                x = self._defocus(np.ascontiguousarray(x), np.ascontiguousarray(y))
            g = np.float32(rng.uniform(*self.gamma))
            # on the non-negative part only: values above 1 (bright cysts) keep their order
            x = np.power(np.maximum(x, 0.0), g) + np.minimum(x, 0.0)
            c = np.float32(rng.uniform(*self.contrast))
            m = np.float32(x.mean())
            x = (x - m) * c + m
        x = x * np.float32(rng.uniform(*self.scale)) + np.float32(rng.uniform(*self.offset))
        if self.brightfield:
            if rng.random() < self.p_blur:
                x = ndimage.gaussian_filter(x, float(rng.uniform(*self.blur)))
            if rng.random() < self.p_noise:
                x = x + rng.normal(0.0, rng.uniform(*self.noise), x.shape).astype(np.float32)
        return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)
