"""Reading images and label images, listing folders, and pairing files by stem.

Images are numpy arrays shaped (Y, X) for grey or (Y, X, C) for colour; all pixel
coordinates are (row, column) = (y, x) in pixels.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import InputFileError, OptionError, OrgasegError
from .resample import cast_like

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".jpg", ".jpeg", ".png")
TIFF_SUFFIXES = (".tif", ".tiff")


def is_image_file(path: Path) -> bool:
    """True for a visible file with one of :data:`IMAGE_SUFFIXES` (any case)."""
    path = Path(path)
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def image_stem(name: str | Path) -> str:
    """File name without its suffixes that name image formats or GeoJSON.

    QuPath keeps the image extension in exported names, so ``a.jpg.geojson``,
    ``a.jpg.geojson.gz``, ``a.zip`` and ``a.tif`` all have the stem ``a``.
    """
    name = Path(name).name
    while True:
        base, dot, ext = name.rpartition(".")
        if dot and base and ("." + ext.lower()) in IMAGE_SUFFIXES + (".geojson", ".json", ".gz", ".zip"):
            name = base
        else:
            return name


def list_images(folder: Path, *, what: str = "images") -> list[Path]:
    """Sorted image files directly in ``folder``; a clear error if the folder is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError(folder, f"{what} folder does not exist or is not a folder")
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def index_by_stem(files: Iterable[Path], *, what: str = "files") -> dict[str, Path]:
    """Map stem -> file. Two files with the same stem (``a.tif`` and ``a.jpg``) are ambiguous.

    A TIFF wins over other formats for the same stem (it is the lossless copy QuPath or the
    user made); any other clash is an error naming both files.
    """
    by_stem: dict[str, Path] = {}
    for f in sorted(files):
        stem = image_stem(f)
        other = by_stem.get(stem)
        if other is None:
            by_stem[stem] = f
            continue
        tiffs = [p for p in (other, f) if p.suffix.lower() in TIFF_SUFFIXES]
        if len(tiffs) == 1:
            by_stem[stem] = tiffs[0]
            log.info("%s: %s and %s share a stem; using the TIFF", what, other.name, f.name)
        else:
            raise InputFileError(f, f"has the same name stem as {other}; cannot tell which "
                                    f"of the two {what} to use")
    return by_stem


def pair_by_stem(first: Sequence[Path], second: Sequence[Path], *,
                 first_what: str = "images", second_what: str = "masks"
                 ) -> tuple[list[tuple[str, Path, Path]], list[Path], list[Path]]:
    """Pair two file lists by stem, never by position.

    Returns (pairs as (stem, first, second) sorted by stem, unmatched of ``first``,
    unmatched of ``second``).
    """
    a = index_by_stem(first, what=first_what)
    b = index_by_stem(second, what=second_what)
    pairs = [(s, a[s], b[s]) for s in sorted(a.keys() & b.keys())]
    only_a = [a[s] for s in sorted(a.keys() - b.keys())]
    only_b = [b[s] for s in sorted(b.keys() - a.keys())]
    return pairs, only_a, only_b


def report_unmatched(only_a: Sequence[Path], only_b: Sequence[Path], *, first_what: str,
                     second_what: str) -> list[str]:
    """Log unmatched files by name and return one message line per file."""
    lines = [f"{p}: no matching {second_what} file" for p in only_a]
    lines += [f"{p}: no matching {first_what} file" for p in only_b]
    for line in lines:
        log.warning(line)
    return lines


def input_images(images: Path) -> tuple[dict[str, Path], Path]:
    """The images a step was given: one image file, or every image in a folder (not searched
    recursively). Returns (stem -> file, sorted by stem; the folder they are in). Raises
    InputFileError naming the path when it is not an image, does not exist or holds none."""
    images = Path(images)
    if images.is_file():
        if not is_image_file(images):
            raise InputFileError(images, "is not an image file (.tif, .tiff, .jpg, .jpeg, .png)")
        return {image_stem(images): images}, images.parent
    if not images.exists():
        raise InputFileError(images, "does not exist")
    files = list_images(images, what="images")
    if not files:
        raise InputFileError(images, "contains no image files (.tif, .tiff, .jpg, .jpeg, .png)")
    return dict(sorted(index_by_stem(files, what="images").items())), images

#: Images whose header declares more pixels than this are refused before they are decoded
#: (a 138-byte TIFF can declare 200000 x 200000 px). Raise it with the environment variable
#: ORGASEG_MAX_PIXELS (e.g. 4294967296 for 2^32) for truly huge single images.
DEFAULT_MAX_PIXELS = 2 ** 30


def max_pixels() -> int:
    """The pixel limit of :func:`read_image` (``ORGASEG_MAX_PIXELS`` or 2^30)."""
    import os

    text = os.environ.get("ORGASEG_MAX_PIXELS", "").strip()
    try:
        return int(text) if text else DEFAULT_MAX_PIXELS
    except ValueError:
        raise OptionError(f"ORGASEG_MAX_PIXELS must be a whole number, got {text!r}") from None


def check_pixel_budget(n_pixels: float, what: str) -> None:
    """Refuse (OptionError) an option value that would make an image of more than
    :func:`max_pixels` pixels, before anything is allocated (``--image-scale 1e-7``)."""
    limit = max_pixels()
    if n_pixels > limit:
        raise OptionError(f"{what} would need an image of {n_pixels:,.0f} pixels, more than the "
                          f"limit of {limit:,} (set ORGASEG_MAX_PIXELS to raise it)")


def _check_declared_size(path: Path, dims: Sequence[int], what: str) -> None:
    total = int(np.prod([int(d) for d in dims], dtype=np.float64))
    limit = max_pixels()
    if total > limit:
        raise InputFileError(path, f"header declares {what} = {total:,} pixel values, more than the "
                                   f"limit of {limit:,}; refused before decoding (set "
                                   "ORGASEG_MAX_PIXELS to raise the limit)")


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        shape, axes = tuple(series.shape), str(series.axes)
        _check_declared_size(path, shape, f"{'x'.join(map(str, shape))} ({axes})")
        # Planes along Z or T are a stack, not the colour samples of one image.
        stacked = [a for a, n in zip(axes, shape) if a in "ZT" and n > 1]
        if stacked:
            raise InputFileError(path, f"is a stack of {'x'.join(str(n) for a, n in zip(axes, shape) if a in 'ZT')} "
                                       f"planes (axes {axes}), not one 2D image; export one plane")
        return series.asarray()


def read_image(path: Path) -> np.ndarray:
    """Read an image file (TIFF, JPEG, PNG) as an array (Y, X) or (Y, X, C).

    Raises InputFileError naming the file when it is missing, empty, cannot be decoded, declares
    more pixels than :func:`max_pixels` (checked on the header, before decoding), is a Z/T stack,
    or holds complex or not-finite (NaN, inf) values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise InputFileError(path, "file is empty (0 bytes)")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            array = _read_tiff(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                _check_declared_size(path, im.size, f"{im.size[1]}x{im.size[0]}")
                im.load()
                array = np.asarray(im)
    except InputFileError:
        raise
    except Exception as exc:  # decoders raise many types; all mean "not a readable image"
        raise InputFileError(path, f"cannot be read as an image ({type(exc).__name__}: {exc})") from exc
    array = np.asarray(array)
    if np.iscomplexobj(array):
        raise InputFileError(path, f"holds complex numbers ({array.dtype}), not image intensities")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise InputFileError(path, f"holds {bad} pixel values that are NaN or infinite")
    # A multi-page TIFF of one plane, or singleton axes, are squeezed; real stacks are refused.
    if array.ndim > 2:
        squeezed = np.squeeze(array)
        if squeezed.ndim == 2 or (squeezed.ndim == 3 and squeezed.shape[-1] in (3, 4)):
            array = squeezed
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        array = np.moveaxis(array, 0, -1)  # channels-first TIFF
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 2, 3, 4))):
        raise InputFileError(path, f"is not a 2D grey or colour image (array shape {array.shape})")
    if array.size == 0:
        raise InputFileError(path, "image has no pixels")
    return array


def read_image_shape(path: Path) -> tuple[int, int]:
    """(height, width) of an image in pixels, without decoding all pixels where possible."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "file does not exist")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].shape
                axes = tif.series[0].axes
            if "Y" in axes and "X" in axes:
                size = int(shape[axes.index("Y")]), int(shape[axes.index("X")])
            else:
                size = int(shape[0]), int(shape[1])
        else:
            from PIL import Image

            with Image.open(path) as im:
                width, height = im.size
            size = int(height), int(width)
    except Exception as exc:
        raise InputFileError(path, f"cannot be read as an image ({type(exc).__name__}: {exc})") from exc
    # A label image of this size will be allocated from it (annotations-to-masks).
    _check_declared_size(path, size, f"{size[0]}x{size[1]}")
    return size


def read_labels(path: Path) -> np.ndarray:
    """Read a label image: 2D integer array, 0 = background. Errors name the file."""
    labels = read_image(path)
    if labels.ndim != 2:
        raise InputFileError(path, f"label image must be 2D, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        if np.issubdtype(labels.dtype, np.floating) and np.all(np.mod(labels, 1) == 0) and labels.min() >= 0:
            labels = labels.astype(np.uint32)
        else:
            raise InputFileError(path, f"label image must hold non-negative integers, got {labels.dtype} values")
    if labels.min() < 0:
        raise InputFileError(path, "label image has negative values")
    changes = label_change_fraction(labels)
    # tiny label images of one-pixel objects are legitimate; a photo has many pixels
    if labels.size >= MIN_PIXELS_FOR_GREY_CHECK and changes > MAX_LABEL_CHANGE_FRACTION:
        raise InputFileError(path, f"looks like a grey image, not a label image: {changes:.0%} of "
                                   "neighbouring pixels differ (a label image is constant inside "
                                   "each object); give the masks (label images), not the images")
    return labels


#: In a label image neighbouring pixels differ only on object borders (a few %); in a photo
#: (noise, texture) most of them do. Above this fraction a "label image" is refused.
MAX_LABEL_CHANGE_FRACTION = 0.3
#: Below this many pixels a label image is not checked for being a photo.
MIN_PIXELS_FOR_GREY_CHECK = 1024


def label_change_fraction(labels: np.ndarray) -> float:
    """Fraction of horizontally neighbouring pixel pairs with different values (0..1)."""
    if labels.shape[1] < 2:
        return 0.0
    return float(np.count_nonzero(labels[:, 1:] != labels[:, :-1])) / (labels.shape[0] * (labels.shape[1] - 1))


def label_dtype(max_label: int) -> np.dtype:
    """uint16 for up to 65,535 objects, uint32 beyond (the orgaseg label image convention)."""
    if max_label > np.iinfo(np.uint32).max:
        raise OrgasegError(f"too many objects for a label image: {max_label}")
    return np.dtype(np.uint16) if max_label <= np.iinfo(np.uint16).max else np.dtype(np.uint32)


# --------------------------------------------------------------------------- grey conversion

#: Luminance weights (R, G, B) of ITU-R BT.709, as in scikit-image's ``rgb2gray``.
LUMINANCE_WEIGHTS = (0.2125, 0.7154, 0.0721)


def to_grey(image: np.ndarray) -> np.ndarray:
    """Convert an image to one grey channel, shape (Y, X).

    - (Y, X): returned unchanged (floats as float32);
    - (Y, X, 1): the single channel;
    - (Y, X, 2) grey + alpha: the first channel;
    - (Y, X, 3) RGB or (Y, X, 4) RGBA: luminance 0.2125 R + 0.7154 G + 0.0721 B (alpha dropped).

    Integer inputs keep their dtype (uint8 stays uint8, uint16 stays uint16), rounded to the
    nearest value; float inputs give float32.
    """
    image = np.asarray(image)
    if image.dtype == np.bool_:
        image = image.astype(np.uint8)
    if image.ndim == 3 and image.shape[-1] in (1, 2):
        grey = image[..., 0]
    elif image.ndim == 3 and image.shape[-1] in (3, 4):
        # Accumulate channel by channel in float64: exact rounding, no (Y, X, 3) float copy.
        grey_f = image[..., 0].astype(np.float64)
        grey_f *= LUMINANCE_WEIGHTS[0]
        grey_f += LUMINANCE_WEIGHTS[1] * image[..., 1]
        grey_f += LUMINANCE_WEIGHTS[2] * image[..., 2]
        if np.issubdtype(image.dtype, np.integer):
            return cast_like(grey_f, image.dtype)
        return grey_f.astype(np.float32)
    elif image.ndim == 2:
        grey = image
    else:
        raise OrgasegError(f"cannot convert an array of shape {image.shape} to grey; "
                           "expected (Y, X) or (Y, X, C) with C in 1..4")
    if np.issubdtype(grey.dtype, np.floating):
        return grey.astype(np.float32, copy=False)
    return grey
