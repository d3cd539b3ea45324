"""Helpers shared by the album integration tests (a plain module: importing from conftest is
ambiguous with two conftest files)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest


def digest(path: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under the folder ``path``, or {name: sha256} of the
    file ``path`` (to prove inputs were not touched)."""
    path = Path(path)
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def error_line(output: str, *needles: str) -> str:
    """The ERROR line of album's output that contains all ``needles`` (fails if there is none)."""
    for line in output.splitlines():
        if "ERROR" in line and all(n in line for n in needles):
            return line
    pytest.fail(f"no ERROR line with {needles} in:\n{output}")
