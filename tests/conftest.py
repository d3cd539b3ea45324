"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

# A plain module, not conftest: two conftest.py files (tests/ and tests/integration/) make
# "from conftest import ..." depend on which one pytest imported first.
from digests import tree_digest


@pytest.fixture
def unchanged():
    """Call ``unchanged(folder)`` before a run; the returned function asserts nothing changed."""

    def snapshot(root: Path):
        before = tree_digest(root)

        def check():
            assert tree_digest(root) == before, f"input files under {root} were changed"

        return check

    return snapshot
