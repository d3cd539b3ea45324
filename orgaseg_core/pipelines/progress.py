"""Completion records of analyze: which images are done, so a rerun resumes instead of redoing.

``out/progress/plan.json`` holds the fingerprint of the arguments that decide the results (not
those that only decide how the work is spread: workers, scheduler, chunk size). When an image's
results are all in place (segmentation, crops, QuPath file, overlay), its worker writes
``out/progress/images/<stem>.json`` last, atomically: the image's rows of every table and the
fingerprint. A rerun of the same command into the same folder after a crash, an interrupt or a
lost worker finds the plan, keeps the images whose record matches and processes only the others;
the merged tables are then built from the records, so they equal those of an uninterrupted run.
Existence of an image's output files alone never counts as done: a killed run can leave them
half written.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterable

from ..common.errors import OutputError
from ..common.outputs import write_json

log = logging.getLogger(__name__)

PROGRESS_DIR = "progress"
PLAN_JSON = "plan.json"
#: Arguments that only decide how the work is spread, not what is computed.
DISTRIBUTION_ARGUMENTS = frozenset({"overwrite", "workers", "scheduler", "chunk_size", "threads_per_worker",
                                    "chunks_per_worker"})


def fingerprint(arguments: dict[str, Any]) -> str:
    """SHA-256 (hex, 16 characters) of the arguments that decide the results."""
    kept = {k: (str(v) if v is not None else None) for k, v in sorted(arguments.items())
            if k not in DISTRIBUTION_ARGUMENTS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def _changed(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = (set(old) | set(new)) - DISTRIBUTION_ARGUMENTS
    return sorted(k for k in keys if str(old.get(k)) != str(new.get(k)))


def resumable(out: Path, arguments: dict[str, Any]) -> bool:
    """True when ``out`` holds an unfinished analyze run with the same arguments (resume it).

    False when ``out`` holds no plan (a new run: the usual empty-folder rules apply). Raises
    OutputError when the plan's arguments differ (results would mix) or the run already ended
    with every image done (nothing to resume; ``--overwrite`` starts over).
    """
    plan_path = Path(out) / PROGRESS_DIR / PLAN_JSON
    if not plan_path.is_file():
        return False
    try:
        plan = json.loads(plan_path.read_text())
    except (OSError, ValueError) as exc:
        raise OutputError(f"{plan_path}: unreadable plan of an earlier run ({exc}); pass --overwrite "
                          "to start over") from None
    if plan.get("fingerprint") != fingerprint(arguments):
        changed = _changed(plan.get("arguments") or {}, {k: v for k, v in arguments.items()})
        raise OutputError(f"{out}: holds an unfinished analysis with other arguments (differs in "
                          f"{', '.join(changed) or 'the arguments'}); rerun it with the same arguments to "
                          "resume, pass --overwrite to start over, or choose another folder")
    run_json = Path(out) / "run.json"
    if run_json.is_file():
        try:
            status = json.loads(run_json.read_text()).get("status")
        except (OSError, ValueError):
            status = None
        if status == "ok":
            raise OutputError(f"{out}: holds a finished analysis of these images; pass --overwrite "
                              "to run it again, or choose another folder")
    return True


def write_plan(out: Path, arguments: dict[str, Any]) -> None:
    """``progress/plan.json``: the fingerprint and the arguments of this run."""
    write_json(Path(out) / PROGRESS_DIR / PLAN_JSON,
               {"fingerprint": fingerprint(arguments),
                "arguments": {k: v for k, v in arguments.items() if k not in DISTRIBUTION_ARGUMENTS}})


def record_path(out: Path, stem: str) -> Path:
    return Path(out) / PROGRESS_DIR / "images" / f"{stem}.json"


def write_record(out: Path, stem: str, record: dict[str, Any]) -> Path:
    """The image's completion record (written last, atomically)."""
    return write_json(record_path(out, stem), record)


def completed(out: Path, stems: Iterable[str], print_: str) -> dict[str, dict[str, Any]]:
    """The completion records (stem -> record) of ``stems`` that belong to the run with
    fingerprint ``print_``; unreadable or foreign records count as not done."""
    done = {}
    for stem in stems:
        path = record_path(out, stem)
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            log.warning("%s: unreadable completion record; the image is analysed again", path)
            continue
        if record.get("fingerprint") == print_ and record.get("stem") == stem:
            done[stem] = record
    return done
