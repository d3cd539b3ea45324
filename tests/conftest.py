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


@pytest.fixture(scope="session")
def story(tmp_path_factory):
    """``orgaseg example`` with tiny training budgets (8 images of 480x640): the whole story once
    per session, in child processes (TensorFlow and torch never enter the pytest process).
    Returns the output folder and what the command printed. Used by test_example.py and by the
    album integration test of analyze (its trained models and new images)."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("story") / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "orgaseg_core", "example", "--out", str(out), "--n-images", "8",
         "--size", "480x640", "--n-new-images", "2", "--seg-epochs", "14", "--seg-steps", "15",
         "--clf-grid-epochs", "1", "--clf-epochs", "3"],
        capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-5000:]
    return out, done.stdout
