"""Fingerprints of input folders, to prove a step changed no input file."""

from __future__ import annotations

import hashlib
from pathlib import Path


def tree_digest(root: Path) -> dict[str, tuple[str, int]]:
    """Map relative path -> (sha256, mtime_ns) for every file under the folder ``root``, or
    {name: (sha256, mtime_ns)} of the file ``root``."""
    root = Path(root)
    if root.is_file():
        return {root.name: (hashlib.sha256(root.read_bytes()).hexdigest(), root.stat().st_mtime_ns)}
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*")) if p.is_file()
    }
