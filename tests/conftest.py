"""Shared test helpers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest


def tree_digest(root: Path) -> dict[str, tuple[str, int]]:
    """Map relative path -> (sha256, mtime_ns) for every file under ``root``."""
    root = Path(root)
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture
def unchanged():
    """Call ``unchanged(folder)`` before a run; the returned function asserts nothing changed."""

    def snapshot(root: Path):
        before = tree_digest(root)

        def check():
            assert tree_digest(root) == before, f"input files under {root} were changed"

        return check

    return snapshot
