"""Safe output writing: refuse to clobber, write atomically, record how outputs were made.

Every file is written to a temporary name in the destination folder and renamed into place,
so an interrupted run never leaves a half-written file under its final name.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import platform
import secrets
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .errors import Interrupted, OutputError

log = logging.getLogger(__name__)

RUN_RECORD_NAME = "run.json"
#: The lock file of the run writing into an output folder (pid, host, step, start time).
LOCK_NAME = ".orgaseg.lock"

# Packages whose versions go into every run record.
_RECORDED_PACKAGES = (
    "orgaseg-core", "numpy", "scipy", "scikit-image", "tifffile", "pandas", "shapely",
    "stardist", "csbdeep", "tensorflow-cpu", "tensorflow", "torch", "torchvision", "scikit-learn",
    "skops",
)


def package_versions() -> dict[str, str]:
    """Versions of Python and of the installed packages that can influence results."""
    versions = {"python": platform.python_version()}
    for name in _RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def prepare_output_dir(out: Path, *, overwrite: bool = False,
                       inputs: Sequence[Path | None] = ()) -> Path:
    """Create ``out`` (and parents) and check it is safe to write to.

    Raises OutputError when ``out`` already holds files and ``overwrite`` is False, and when
    ``out`` is one of the input folders or lies inside one (outputs would mix with inputs)
    or contains one (``--overwrite`` could then replace input files).
    """
    out = Path(out)
    for inp in inputs:
        if inp is None:
            continue
        inp = Path(inp)
        if inp.exists() and (_is_within(out, inp) or _is_within(inp, out)):
            raise OutputError(
                f"{out}: the output folder must not be, contain, or lie inside the input {inp}; "
                "choose a separate output folder")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir()) and not overwrite:
        raise OutputError(
            f"{out}: output folder is not empty; choose an empty folder or pass --overwrite "
            "to replace files of the same name")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _is_temporary(path: Path) -> bool:
    """A temporary file of :func:`atomic_path`: ``.<name>.<random>.part<suffix>``."""
    return path.name.startswith(".") and ".part" in path.name and path.is_file()


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete temporary files that a killed run (SIGKILL, power loss) left in ``out`` and its
    sub-folders; an interrupted run (Ctrl-C, SIGTERM) removes its own. Returns what was removed."""
    stale = [p for p in Path(out).rglob(".*.part*") if _is_temporary(p)]
    for path in stale:
        path.unlink()
    if stale:
        log.warning("%s: removed %d temporary files left by an earlier run that was killed "
                    "(e.g. %s)", out, len(stale), stale[0].name)
    return stale


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The name is chosen before the file exists, so a signal arriving at any point (even right
    # after the file is created) finds it in ``tmp_path`` and the finally below removes it.
    tmp_path = path.parent / f".{path.name}.{secrets.token_hex(4)}.part{path.suffix}"
    try:
        os.close(os.open(tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


@contextlib.contextmanager
def whole_or_absent(*paths: Path) -> Iterator[None]:
    """Files written together (an image's labels, outlines and table): if the block does not
    finish (an error, Ctrl-C, SIGTERM), those of ``paths`` already written are removed, so the
    set is there whole or not at all."""
    try:
        yield
    except BaseException:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                Path(path).unlink()
        raise


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (Paths and numpy values are converted)."""
    return write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def write_csv(path: Path, table) -> Path:
    """Write a pandas DataFrame as CSV (no index) atomically."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return Path(path)


def write_tiff(path: Path, array: np.ndarray, *, compress: bool = True) -> Path:
    """Write a 2D (or YX+channels) array as TIFF atomically, zlib-compressed by default."""
    import tifffile

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, np.ascontiguousarray(array),
                         compression="zlib" if compress else None)
    return Path(path)


def copy_file(src: Path, dst: Path) -> Path:
    """Copy ``src`` to ``dst`` atomically, keeping the modification time (like ``cp -p``)."""
    import shutil

    with atomic_path(dst) as tmp:
        shutil.copy2(src, tmp)
    return Path(dst)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


class RunRecord:
    """The ``run.json`` of one step run: step, arguments, versions, start and end time, results.

    Use :func:`step_run`; add result figures with ``record.results[...] = value``.
    """

    def __init__(self, step: str, out: Path, arguments: dict[str, Any]):
        self.step = step
        self.out = Path(out)
        self.arguments = dict(arguments)
        self.started = _now()
        self.results: dict[str, Any] = {}

    def as_dict(self, status: str, error: str | None = None) -> dict[str, Any]:
        record = {
            "step": self.step,
            "status": status,
            "arguments": self.arguments,
            "versions": package_versions(),
            "command": sys.argv,
            "started": self.started,
            "ended": _now(),
            "results": self.results,
        }
        if error:
            record["error"] = error
        return record

    def write(self, status: str, error: str | None = None) -> Path:
        return write_json(self.out / RUN_RECORD_NAME, self.as_dict(status, error))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _read_lock(lock: Path) -> dict[str, Any]:
    try:
        owner = json.loads(lock.read_text(encoding="utf-8"))
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe_owner(owner: dict[str, Any]) -> str:
    return (f"step {owner.get('step', '?')}, pid {owner.get('pid', '?')} on "
            f"{owner.get('host', '?')}, started {owner.get('started', '?')}")


@contextlib.contextmanager
def output_lock(out: Path, step: str, *, overwrite: bool = False) -> Iterator[Path]:
    """Hold ``out/.orgaseg.lock`` while a step writes into ``out``: one run per output folder.

    The lock file is created atomically (``O_EXCL``), so of two runs started into one folder
    exactly one gets it; the other gets an OutputError naming the owner (step, pid, host, start
    time). A lock whose process is gone (on this host) is stale: reported, and taken over with
    ``overwrite``. A lock of another host is taken as alive (its pid cannot be checked here).
    The same process may nest runs in one folder (the lock is then left to the outer one).
    """
    lock = Path(out) / LOCK_NAME
    me = {"pid": os.getpid(), "host": platform.node(), "step": step, "started": _now()}
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read_lock(lock)
            same_host = owner.get("host") == me["host"]
            if same_host and owner.get("pid") == me["pid"]:
                yield lock  # nested in a run of this process, which holds the lock
                return
            pid = owner.get("pid")
            alive = not same_host or (isinstance(pid, int) and _process_alive(pid))
            if alive and owner:
                raise OutputError(f"{out}: another orgaseg run is writing to this folder "
                                  f"({_describe_owner(owner)}); wait for it to end or choose "
                                  "another output folder")
            if not overwrite:
                raise OutputError(f"{out}: holds the lock of an orgaseg run that ended without "
                                  f"releasing it ({_describe_owner(owner)}); pass --overwrite "
                                  "to take the folder over")
            log.warning("%s: taking over the stale lock of an ended run (%s)", out,
                        _describe_owner(owner))
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(me, handle)
        break
    try:
        yield lock
    finally:
        if _read_lock(lock).get("pid") == me["pid"]:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()


@contextlib.contextmanager
def step_run(step: str, out: Path, arguments: dict[str, Any], *, overwrite: bool = False,
             inputs: Sequence[Path | None] = ()) -> Iterator[RunRecord]:
    """Prepare the output folder of a step and write its ``run.json`` when the step ends.

    The record is written with status ``failed`` (and the error) if the block raises, or
    ``interrupted`` (and the signal) when Ctrl-C or SIGTERM stopped it, so a partly filled
    output folder always says how it came about.
    """
    out = prepare_output_dir(Path(out), overwrite=overwrite, inputs=inputs)
    with output_lock(out, step, overwrite=overwrite):
        if overwrite:  # only now: a run that still writes here holds the lock
            remove_stale_temporaries(out)
        yield from _recorded_run(step, out, arguments)


def _recorded_run(step: str, out: Path, arguments: dict[str, Any]) -> Iterator[RunRecord]:
    record = RunRecord(step, out, arguments)
    log.info("%s: writing to %s", step, out)
    try:
        yield record
    except Interrupted as exc:
        record.write("interrupted", exc.name)
        raise
    except KeyboardInterrupt:
        record.write("interrupted", "SIGINT")
        raise
    except BaseException as exc:
        record.write("failed", f"{type(exc).__name__}: {exc}")
        raise
    record.write("ok")
