"""Parsing of the small text parameters shared by the CLI and the album solutions."""

from __future__ import annotations

import re

from .errors import OrgasegError

_GRID = re.compile(r"^\s*(\d+)\s*[xX\u00d7,]\s*(\d+)\s*$")


def parse_pair(text: str | tuple[int, int], *, what: str = "value") -> tuple[int, int]:
    """Parse ``"2x3"`` (also ``2X3``, ``2,3``) into (2, 3); both numbers must be >= 1."""
    if isinstance(text, (tuple, list)):
        values = tuple(int(v) for v in text)
    else:
        match = _GRID.match(str(text))
        if not match:
            raise OrgasegError(f"{what} must look like 2x3 (two whole numbers), got {text!r}")
        values = (int(match.group(1)), int(match.group(2)))
    if len(values) != 2 or min(values) < 1:
        raise OrgasegError(f"{what} must be two whole numbers >= 1, got {text!r}")
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
            raise OrgasegError(f"{what} must be >= 1, got {text!r}")
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
        raise OrgasegError(f"{what} must be a number or 'auto', got {text!r}") from None
