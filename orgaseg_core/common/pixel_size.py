"""The physical pixel size of an image (µm per pixel): read from the file's own metadata or
given by the user, and where it came from.

Read from TIFF files only (the header, never the pixels), in this order:

1. OME-XML ``Pixels`` ``PhysicalSizeX``/``PhysicalSizeY`` with their units (µm by default);
2. ImageJ's metadata: ``unit`` (micron, µm, um, nm, mm, cm) with the resolution tags, which
   ImageJ writes as pixels per unit;
3. the TIFF resolution tags ``XResolution``/``YResolution`` with ``ResolutionUnit`` centimetre
   or inch.

A value outside :data:`PLAUSIBLE_UM` is not a microscope's pixel: it is ignored with a log
line (72 or 96 dpi, which image programs write by default, are 353 and 265 µm). Pixels that are
not square (X and Y differ by more than 1%) are reported, and their geometric mean is used, so
areas stay right. JPEG and PNG carry no pixel size that microscopes write: give ``--pixel-size``.
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: µm per pixel that a microscope image can have; outside it a stored value is ignored
PLAUSIBLE_UM = (0.01, 100.0)
#: relative difference beyond which a given pixel size and the file's disagree
CONFLICT = 0.01

_UNIT_TO_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
               "micrometre": 1.0, "\u03bcm": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6,
               "pm": 1e-6, "å": 1e-4}


@dataclass(frozen=True)
class PixelSize:
    """µm per pixel (``um``; None: unknown) and where it came from (``source``: "given",
    "OME-XML", "ImageJ", "TIFF resolution tags" or "none"); ``note``: a conflict or an
    oddity worth reporting, else ""."""

    um: float | None
    source: str
    note: str = ""

    @property
    def known(self) -> bool:
        return self.um is not None

    def as_dict(self) -> dict:
        return {"pixel_size_um": self.um, "source": self.source, **({"note": self.note} if self.note else {})}


def _unit_factor(unit: str | None) -> float | None:
    if unit is None:
        return 1.0
    return _UNIT_TO_UM.get(str(unit).strip().lower().replace("\\u00b5", "µ"))


def _combine(x: float, y: float, what: str, path: Path) -> tuple[float, str]:
    note = ""
    if not math.isclose(x, y, rel_tol=CONFLICT):
        note = f"pixels are not square ({x:.4g} x {y:.4g} µm): the geometric mean is used"
        log.warning("%s: %s (%s)", path, note, what)
    return math.sqrt(x * y), note


def _plausible(value: float, what: str, path: Path) -> bool:
    if not (math.isfinite(value) and PLAUSIBLE_UM[0] <= value <= PLAUSIBLE_UM[1]):
        log.info("%s: %s says %.4g µm per pixel, not a microscope's pixel size: ignored", path, what, value)
        return False
    return True


def _from_ome(xml: str, path: Path) -> tuple[float, str] | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        log.info("%s: OME-XML that cannot be parsed: no pixel size from it", path)
        return None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] != "Pixels":
            continue
        values = []
        for axis in ("X", "Y"):
            raw = element.get(f"PhysicalSize{axis}")
            factor = _unit_factor(element.get(f"PhysicalSize{axis}Unit"))
            if raw is None or factor is None:
                return None
            try:
                values.append(float(raw) * factor)
            except ValueError:
                return None
        return _combine(values[0], values[1], "OME-XML", path)
    return None


def _per_unit(tag) -> float | None:
    """Pixels per unit from a TIFF rational (numerator, denominator) or number."""
    value = tag.value if tag is not None else None
    if value is None:
        return None
    if isinstance(value, tuple):
        num, den = value[:2]
        return float(num) / float(den) if den else None
    return float(value)


def read_pixel_size(path: Path) -> PixelSize:
    """The pixel size stored in the image file ``path`` (see the module notes); unknown
    (``um`` None, source "none") when there is none or it is not plausible."""
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return PixelSize(None, "none")
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            ome = tif.ome_metadata if tif.is_ome else None
            imagej = tif.imagej_metadata if tif.is_imagej else None
            tags = page.tags
            x_res, y_res = _per_unit(tags.get("XResolution")), _per_unit(tags.get("YResolution"))
            unit_tag = tags.get("ResolutionUnit")
            unit = int(unit_tag.value) if unit_tag is not None else 2
    except Exception as exc:  # the reader of the pixels reports unreadable files
        log.debug("%s: no pixel size read (%s)", path, exc)
        return PixelSize(None, "none")
    if ome:
        found = _from_ome(ome, path)
        if found and _plausible(found[0], "OME-XML", path):
            return PixelSize(found[0], "OME-XML", found[1])
    if imagej and x_res and y_res:
        factor = _unit_factor(imagej.get("unit"))
        if factor is not None and imagej.get("unit"):
            value, note = _combine(factor / x_res, factor / y_res, "ImageJ", path)
            if _plausible(value, "ImageJ's metadata", path):
                return PixelSize(value, "ImageJ", note)
    if x_res and y_res and unit in (2, 3):
        per = 25400.0 if unit == 2 else 10000.0  # µm per inch, per centimetre
        value, note = _combine(per / x_res, per / y_res, "TIFF resolution tags", path)
        if _plausible(value, "the TIFF resolution tags", path):
            return PixelSize(value, "TIFF resolution tags", note)
    return PixelSize(None, "none")


def check_pixel_size(value: float | str | None) -> float | None:
    """A pixel size option: None/"auto"/"" -> None (read from each file); else a positive
    number of µm per pixel (OptionError otherwise)."""
    from .errors import OptionError

    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto", "none")):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"--pixel-size must be µm per pixel (a positive number) or auto, got {value!r}") from None
    if not (math.isfinite(number) and number > 0):
        raise OptionError(f"--pixel-size must be µm per pixel (a positive number) or auto, got {value!r}")
    return number


def resolve_pixel_size(path: Path, given: float | None) -> PixelSize:
    """The pixel size for image ``path``: ``given`` (µm, wins) or the file's. A given value
    that differs from the file's by more than 1% is reported (log and ``note``)."""
    stored = read_pixel_size(path)
    if given is None:
        return stored
    note = ""
    if stored.known and not math.isclose(given, stored.um, rel_tol=CONFLICT):
        note = (f"--pixel-size {given:g} µm differs from the {stored.um:.4g} µm in the file "
                f"({stored.source}): {given:g} µm is used")
        log.warning("%s: %s", path, note)
    return PixelSize(float(given), "given", note)


