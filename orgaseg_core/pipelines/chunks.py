"""One chunk of analyze's images, run on a Dask worker: segment, cut out, classify, publish.

:func:`run_chunk` is the task. The worker process itself imports neither TensorFlow nor torch:
the chunk's segmentation runs in one child process (``orgaseg segment``: TensorFlow) and its
classification in another (``orgaseg classify``: torch), warm processes that the worker keeps
for its next chunks, their models loaded (:mod:`.step_server`), so the two frameworks never
meet in one process on any kind of cluster, without special worker pools. Cutting out and
measuring runs in the worker (numpy only).

Each attempt works in its own folder ``out/chunks/<index>-<token>/`` (links to the chunk's
images, the steps' outputs), so a retry after a lost worker never meets the files of the
attempt that died. When the chunk's steps have run, each image is published: its segmentation
files and crops are moved into ``out/segmentation`` and ``out/objects/crops``, its QuPath file
and overlay written, and then its completion record (:mod:`.progress`) with the image's rows of
every table. The attempt folder is then removed.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..common.errors import OrgasegError
from ..common.images import image_stem
from ..common.logs import LOG_LEVEL_VARIABLE
from .image_results import objects_table, write_image_results
from .processes import StepProcessError
from .progress import write_record
from .step_server import run_warm_step

log = logging.getLogger(__name__)

SEGMENTATION_DIR = "segmentation"
OBJECTS_DIR = "objects"
CLASSIFICATION_DIR = "classification"
CHUNKS_DIR = "chunks"
#: Names that look like numbers ("001") must stay text when the tables are read back.
TEXT_COLUMNS = {"image": str, "stem": str, "crop": str}


@dataclass(frozen=True)
class ChunkSpec:
    """What one task analyses. Paths are absolute strings (a remote worker sees the same files).

    images: the chunk's image files. masks: their label images (same order) instead of a
    segmentation model, or empty. settings: the step options (see ``analyze``). threads: the
    threads each step may use (None: the worker's default). servers_per_step: at most this many
    warm processes per step in the worker (1: chunks that run at once in one worker take turns
    at each step, one model in memory; None: one per chunk running).
    """

    index: int
    token: str
    images: tuple[str, ...]
    out: str
    settings: dict[str, Any]
    masks: tuple[str, ...] = ()
    threads: int | None = None
    servers_per_step: int | None = None


@dataclass
class ChunkOutcome:
    """What a chunk did: the stems it published, the images that failed (messages), the run
    records of its steps, the warm step processes that ran them (pid, request number, seconds,
    seconds waited for the process), seconds per stage and when each stage began and ended
    (seconds since the epoch)."""

    index: int
    published: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    steps: dict[str, Any] = field(default_factory=dict)
    servers: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)
    host: str = ""

    def stage(self, name: str, began: float, clock: float) -> None:
        """Record stage ``name`` that began at ``began`` (epoch) and ``clock`` (perf_counter)."""
        self.seconds[name] = time.perf_counter() - clock
        self.spans[name] = (began, time.time())


def new_token() -> str:
    return secrets.token_hex(3)


def child_environment(threads: int | None) -> dict[str, str]:
    """Environment of a chunk's step processes: their thread counts (so workers sharing a
    machine do not oversubscribe it), no progress bars and only warnings in the log (the
    parent shows one progress bar over all images)."""
    env = {"TQDM_DISABLE": "1", LOG_LEVEL_VARIABLE: "WARNING"}
    if threads:
        env.update(thread_environment(threads))
    return env


def thread_environment(threads: int) -> dict[str, str]:
    """The variables that limit OpenMP, MKL, OpenBLAS, TensorFlow and torch to ``threads``."""
    t = str(int(threads))
    return {"OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t,
            "TF_NUM_INTRAOP_THREADS": t, "TF_NUM_INTEROP_THREADS": "1"}


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    try:
        link.symlink_to(target)
    except FileExistsError:
        raise
    except OSError:  # a file system without links: a copy (inputs are never changed)
        shutil.copy2(target, link)


def _user_paths(message: str, links: dict[str, str]) -> str:
    """A step's message with the chunk's links replaced by the user's files."""
    for link, target in links.items():
        message = message.replace(link, target)
    return message


def run_chunk(spec: ChunkSpec) -> ChunkOutcome:
    """Analyse the images of ``spec`` and publish each one that succeeded (see the module)."""
    import socket

    os.environ.setdefault("TQDM_DISABLE", "1")  # the parent shows the progress
    out = Path(spec.out)
    s = spec.settings
    outcome = ChunkOutcome(index=spec.index, host=socket.gethostname())
    # a folder of this attempt: a retry (its worker lost) never meets the files of the one before
    attempt = new_token()
    work = out / CHUNKS_DIR / f"{spec.index:05d}-{attempt}"
    images_dir = work / "images"
    paths = [Path(p) for p in spec.images]
    links: dict[str, str] = {}
    for path in paths:
        _link(path, images_dir / path.name)
        links[str(images_dir / path.name)] = str(path)
    stems = {image_stem(p.name): p for p in paths}
    env = child_environment(spec.threads)
    seg_out = work / SEGMENTATION_DIR
    began, clock = time.time(), time.perf_counter()

    # 1. segmentation: a child process (TensorFlow / torch), or the label images of another tool
    if spec.masks:
        from ..segmentation.external import segmentation_from_masks

        masks_dir = work / "masks"
        for mask in map(Path, spec.masks):
            _link(mask, masks_dir / mask.name)
            links[str(masks_dir / mask.name)] = str(mask)
        imported = segmentation_from_masks(images_dir, masks_dir, seg_out)
        outcome.steps["masks"] = _read_record(seg_out)
        outcome.failed += [f"masks: {_user_paths(f, links)}" for f in imported.failed]
        segmented = {image_stem(name) for name in imported.objects}
    else:
        options = ["--model", s["segmentation_model"], "--images", images_dir, "--out", seg_out,
                   *s["segment_options"]]
        seg, server = run_warm_step("segment", options, model=s["segmentation_model"], out=seg_out, env=env,
                                    limit=spec.servers_per_step)
        outcome.steps["segment"] = seg.record
        outcome.servers["segment"] = server
        done = (seg.record.get("results") or {}).get("images") or {}
        if seg.returncode != 0:
            failed = (seg.record.get("results") or {}).get("failed")
            if not done or failed is None:
                raise StepProcessError(_user_paths(f"segment failed (exit status {seg.returncode}): "
                                                   f"{seg.message}", links))
            outcome.failed += [f"segment: {_user_paths(str(f), links)}" for f in failed]
        segmented = {stem for stem, p in stems.items() if p.name in done}
    outcome.stage("segment", began, clock)

    # 2. crops and measurements (numpy, this process)
    from ..objects.extract import ExtractFailed, extract_objects

    began, clock = time.time(), time.perf_counter()
    obj_out = work / OBJECTS_DIR
    try:
        extracted = extract_objects(images_dir, seg_out, obj_out, **s["extract"])
    except ExtractFailed as exc:
        extracted = exc.result
        outcome.failed += [f"extract-objects: {_user_paths(m, links)}" for _name, m in extracted.errors]
        segmented -= {image_stem(name) for name, _ in extracted.errors}
    outcome.steps["extract-objects"] = _read_record(obj_out)
    objects = pd.read_csv(obj_out / "objects.csv", dtype=TEXT_COLUMNS)
    skipped = pd.read_csv(obj_out / "skipped.csv", dtype=TEXT_COLUMNS)
    outcome.stage("extract", began, clock)

    # 3. classification (torch, a child process)
    began, clock = time.time(), time.perf_counter()
    class_names = list(s["class_names"])
    cls_out = work / CLASSIFICATION_DIR
    unreadable: dict[tuple[str, int], str] = {}
    if len(objects):
        options = ["--model", s["classifier"], "--objects", obj_out, "--out", cls_out, *s["classify_options"]]
        cls, server = run_warm_step("classify", options, model=s["classifier"], out=cls_out, env=env,
                                    limit=spec.servers_per_step)
        outcome.steps["classify"] = cls.record
        outcome.servers["classify"] = server
        if cls.returncode != 0:
            raise StepProcessError(_user_paths(f"classify failed (exit status {cls.returncode}): "
                                               f"{cls.message}", links))
        predictions = pd.read_csv(cls_out / "predictions.csv", dtype=TEXT_COLUMNS)
        if (cls_out / "unreadable.csv").is_file():
            crop_index = objects.set_index("crop")[["stem", "label"]]
            for crop, _error in pd.read_csv(cls_out / "unreadable.csv").itertuples(index=False):
                stem, label = crop_index.loc[crop]
                unreadable[(str(stem), int(label))] = "crop unreadable"
    else:
        predictions = pd.DataFrame(columns=["image", "stem", "label", "crop", "predicted_class",
                                            "confidence"] + [f"prob_{c}" for c in class_names])
    outcome.stage("classify", began, clock)

    # 4. publish every image that went through, each with its completion record last
    began, clock = time.time(), time.perf_counter()
    table = objects_table(predictions, seg_out, class_names)
    for stem in sorted(segmented):
        path = stems[stem]
        reasons = {int(r.label): str(r.reason) for r in skipped[skipped["stem"] == stem].itertuples()}
        reasons.update({label: why for (st, label), why in unreadable.items() if st == stem})
        mine = table[table["stem"] == stem]
        n_objects = write_image_results(path, stem, seg_out, out, mine, reasons, class_names,
                                        overlays=s.get("overlays", "png"))
        _move_files(seg_out, out / SEGMENTATION_DIR, [f"{stem}.tif", f"{stem}.geojson", f"{stem}_objects.csv"])
        _move_files(obj_out, out / OBJECTS_DIR, list(objects.loc[objects["stem"] == stem, "crop"]))
        row = {"image": path.name, "stem": stem, "objects": n_objects,
               "excluded": sum(1 for r in reasons.values() if r != "crop unreadable"),
               "unreadable": sum(1 for r in reasons.values() if r == "crop unreadable")}
        write_record(out, stem, {
            "stem": stem, "image": str(path), "fingerprint": s["fingerprint"],
            "chunk": spec.index, "attempt": attempt, "row": row,
            "objects": _rows(mine), "measurements": _rows(objects[objects["stem"] == stem]),
            "skipped": _rows(skipped[skipped["stem"] == stem]),
            "predictions": _rows(predictions[predictions["stem"] == stem]),
            "unreadable": [[st, label, why] for (st, label), why in unreadable.items() if st == stem]})
        outcome.published.append(stem)
    outcome.stage("publish", began, clock)
    shutil.rmtree(work, ignore_errors=True)
    return outcome


def _read_record(folder: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def _rows(table: pd.DataFrame) -> dict[str, Any]:
    """A table as JSON-ready columns and rows (NaN kept as NaN)."""
    return {"columns": [str(c) for c in table.columns], "rows": table.astype(object).values.tolist()}


def rows_table(part: dict[str, Any]) -> pd.DataFrame:
    """The inverse of :func:`_rows`."""
    return pd.DataFrame(part["rows"], columns=part["columns"])


def _move_files(source: Path, target: Path, names: list[str]) -> None:
    """Move ``names`` (relative paths) from ``source`` to ``target`` (replacing a file of the
    same name: a retried image's earlier copy)."""
    for name in names:
        src = source / name
        if not src.exists():
            raise OrgasegError(f"{src}: expected output of the chunk is missing")
        dst = target / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
