"""Helpers shared by the album integration tests (a plain module: importing from conftest is
ambiguous with two conftest files). Input fingerprints: ``tests/digests.py``."""

from __future__ import annotations

import pytest


def error_line(output: str, *needles: str) -> str:
    """The ERROR line of album's output that contains all ``needles`` (fails if there is none)."""
    for line in output.splitlines():
        if "ERROR" in line and all(n in line for n in needles):
            return line
    pytest.fail(f"no ERROR line with {needles} in:\n{output}")
