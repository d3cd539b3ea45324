"""analyze of the story's new images (tests/conftest.py ``story``) with another segmentation model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd


def analyze_story_images(demo: Path, model: Path, out: Path) -> pd.DataFrame:
    """``orgaseg analyze`` in a child process of the story's new images with ``model`` and the
    story's classifier into ``out``; asserts exit status 0 and at least one classified object,
    and returns ``objects.csv``."""
    done = subprocess.run([sys.executable, "-m", "orgaseg_core", "analyze", "--segmentation-model", str(model),
                           "--classifier", str(demo / "models" / "classifier"),
                           "--images", str(demo / "new-images" / "images"), "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    objects = pd.read_csv(out / "objects.csv", dtype={"stem": str})
    assert len(objects) > 0 and objects["predicted_class"].notna().all()
    return objects
