"""Models kept loaded between runs of a step in one long-lived process.

analyze's workers run their steps in warm step processes (:mod:`orgaseg_core.pipelines.step_server`)
that serve chunk after chunk; loading the same model for every chunk would cost seconds each
time (TensorFlow's graph, a skops forest, torch weights). Such a process sets
``ORGASEG_KEEP_MODELS=1``; everywhere else :func:`keep_loaded` just loads, so a plain
``orgaseg segment`` behaves exactly as before.

A kept model is reused only while the files of its folder are unchanged (names, sizes and
modification times), so retraining into the same folder is picked up. One model is kept per kind.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, TypeVar

log = logging.getLogger(__name__)

KEEP_VARIABLE = "ORGASEG_KEEP_MODELS"

T = TypeVar("T")
_kept: dict[str, tuple[tuple, Any]] = {}
_lock = threading.Lock()


def keeping() -> bool:
    """Whether this process keeps its models (``ORGASEG_KEEP_MODELS=1``)."""
    return os.environ.get(KEEP_VARIABLE, "") == "1"


def folder_state(path: Path) -> tuple:
    """What identifies the files of a model (a folder, or one file): (relative name, size,
    modification time in ns) of every file, sorted."""
    path = Path(path).resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    state = []
    for f in files:
        st = f.stat()
        state.append((str(f.relative_to(path)) if f != path else f.name, st.st_size, st.st_mtime_ns))
    return (str(path), *state)


def keep_loaded(kind: str, path: Path, load: Callable[[], T], *options: Any) -> T:
    """``load()``, or the object it returned before for the same ``kind``, unchanged files at
    ``path`` and the same ``options``, when this process keeps its models (see the module)."""
    if not keeping():
        return load()
    key = (folder_state(path), options)
    with _lock:
        held = _kept.get(kind)
        if held is not None and held[0] == key:
            log.info("%s %s: kept loaded from an earlier run in this process", kind, path)
            return held[1]
    loaded = load()
    with _lock:
        _kept[kind] = (key, loaded)  # the one before (another model) is let go
    return loaded


def forget_all() -> None:
    """Let go of every kept model."""
    with _lock:
        _kept.clear()
