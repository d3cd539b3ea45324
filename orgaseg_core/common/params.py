"""Parsing of the small text parameters shared by the CLI and the album solutions."""

from __future__ import annotations

import re

import numpy as np

from .errors import OptionError

_GRID = re.compile(r"^\s*(\d+)\s*[xX\u00d7,]\s*(\d+)\s*$")


def parse_pair(text: str | tuple[int, int], *, what: str = "value") -> tuple[int, int]:
    """Parse ``"2x3"`` (also ``2X3``, ``2,3``) into (2, 3); both numbers must be >= 1."""
    if isinstance(text, (tuple, list)):
        values = tuple(int(v) for v in text)
    else:
        match = _GRID.match(str(text))
        if not match:
            raise OptionError(f"{what} must look like 2x3 (two whole numbers), got {text!r}")
        values = (int(match.group(1)), int(match.group(2)))
    if len(values) != 2 or min(values) < 1:
        raise OptionError(f"{what} must be two whole numbers >= 1, got {text!r}")
    return values  # type: ignore[return-value]


def parse_optional_size(text: str | int | None, *, what: str = "value") -> int | tuple[int, int] | None:
    """``None``/``""``/``"auto"`` -> None (automatic); ``"256"`` -> 256; ``"256x192"`` -> (256, 192)."""
    if text is None or isinstance(text, int):
        return text
    text = str(text).strip()
    if text.lower() in ("", "auto", "none"):
        return None
    if text.isdigit():
        if int(text) < 1:
            raise OptionError(f"{what} must be >= 1, got {text!r}")
        return int(text)
    return parse_pair(text, what=what)


def parse_optional_float(text: str | float | None, *, what: str = "value") -> float | None:
    """``None``/``""``/``"auto"`` -> None (use the model's own value); ``"0.5"`` -> 0.5."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else float(text)
    text = str(text).strip()
    if text.lower() in ("", "auto", "none"):
        return None
    try:
        return float(text)
    except ValueError:
        raise OptionError(f"{what} must be a number or 'auto', got {text!r}") from None


def split_list(text: str | list | tuple | None) -> list[str]:
    """``"resnet18, resnet50"`` -> ["resnet18", "resnet50"]: comma-separated items, stripped,
    empty items dropped. A list or tuple is returned as a list of stripped strings."""
    if text is None:
        return []
    if isinstance(text, (list, tuple)):
        return [str(t).strip() for t in text if str(t).strip()]
    return [t.strip() for t in str(text).split(",") if t.strip()]


def parse_number_list(text: str | list | tuple, kind: type = float, *, what: str = "value",
                      minimum: float = 0.0, strict: bool = True) -> list:
    """``"1e-3,3e-4"`` -> [0.001, 0.0003]: a comma-separated list of numbers for a grid search.

    kind: ``float`` or ``int`` (``int`` refuses "1.5"). Every value must be finite and above
    ``minimum`` (``strict``) or at least ``minimum`` (not ``strict``). Raises OrgasegError
    naming ``what`` and the bad item; at least one value is required.
    """
    items = split_list(text)
    if not items:
        raise OptionError(f"{what}: give at least one value (several are separated by commas)")
    values = []
    for item in items:
        try:
            value = kind(item)
        except (TypeError, ValueError):
            raise OptionError(f"{what}: {item!r} is not a {'whole ' if kind is int else ''}number"
                               ) from None
        if value != value or value in (float("inf"), float("-inf")):
            raise OptionError(f"{what}: {item!r} is not a finite number")
        if not (value > minimum if strict else value >= minimum):
            raise OptionError(f"{what}: {item!r} must be {'>' if strict else '>='} {minimum:g}")
        values.append(value)
    return values


def parse_optional_int(text: str | int | None, *, what: str = "value") -> int | None:
    """``None``/``""``/``"auto"`` -> None (automatic); ``"64"`` -> 64. Range checks are the
    caller's (the step function knows the limits)."""
    if text is None or (isinstance(text, int) and not isinstance(text, bool)):
        return text
    text = str(text).strip()
    if text.lower() in ("", "auto", "none"):
        return None
    try:
        return int(text)
    except ValueError:
        raise OptionError(f"{what} must be a whole number or 'auto', got {text!r}") from None


def parse_optional_text(text: str | None) -> str | None:
    """``None``/``""``/``"auto"`` -> None (let the step choose); anything else stripped."""
    if text is None:
        return None
    text = str(text).strip()
    return None if text.lower() in ("", "auto", "none") else text


_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def check_device(device: str | None) -> str | None:
    """``None``/``"auto"`` -> None (cuda when there is one, else cpu); ``"cpu"``, ``"cuda"``,
    ``"cuda:1"`` as given. Anything else is an OptionError, raised before a model is loaded."""
    if device is None or str(device).strip().lower() in ("", "auto"):
        return None
    text = str(device).strip().lower()
    if not _DEVICE.match(text):
        raise OptionError(f"--device must be cpu, cuda or cuda:<n> (or auto), got {device!r}")
    return text


def check_seed(seed: int, *, what: str = "--seed") -> int:
    """A random seed: a whole number >= 0 (numpy refuses negative seeds)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise OptionError(f"{what} must be a whole number >= 0, got {seed!r}")
    return int(seed)
