"""Steps run in child processes: ``python -m orgaseg_core <step> ...`` with this Python.

TensorFlow and torch crash when loaded into one process, so the pipelines run the StarDist and
the torch steps each in a child process. The child's output is passed on live (progress bars
and logs) and its ``error: ...`` lines are kept for the parent's own error message.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..common.errors import OrgasegError

log = logging.getLogger(__name__)

#: Lines of a child process's error output kept for the error message.
_TAIL_BYTES = 20_000


class StepProcessError(OrgasegError):
    """A step run in a child process ended with an error."""


@dataclass
class StepProcess:
    """How a step run in a child process ended: exit status, its run.json, its error lines."""

    step: str
    returncode: int
    record: dict[str, Any]
    errors: list[str]

    @property
    def message(self) -> str:
        """The child's own error lines, else the error recorded in its run.json."""
        if self.errors:
            return "\n".join(self.errors)
        return str(self.record.get("error") or "no error message; see the output above")


def orgaseg_command(step: str, options: Sequence[Any]) -> list[str]:
    """``python -m orgaseg_core <step> <options>`` with this process's Python."""
    return [sys.executable, "-m", "orgaseg_core", step, *[str(o) for o in options]]


def run_step_process(step: str, options: Sequence[Any], *, out: Path | None = None,
                     env: dict[str, str] | None = None) -> StepProcess:
    """Run one orgaseg step in a child process and wait for it.

    The child's output is passed on as it comes (progress bars and logs stay live) and its
    error output is also kept, so its ``error: ...`` lines can be repeated in our error.
    ``out``: the step's output folder, whose ``run.json`` is read afterwards (if written).
    ``env``: variables set for the child on top of ours (threads, log level). On Linux the
    child gets SIGTERM when this process dies (a killed Dask worker leaves no step running on).
    """
    command = orgaseg_command(step, options)
    log.info("%s: starting its own process: %s", step, shlex.join(command))
    tail = bytearray()
    child_env = {**os.environ, **env} if env else None
    with subprocess.Popen(command, stderr=subprocess.PIPE, env=child_env,
                          preexec_fn=_die_with_parent if _PRCTL is not None else None) as process:
        assert process.stderr is not None
        try:
            while chunk := process.stderr.read1(65536):
                _echo_stderr(chunk)
                tail += chunk
                del tail[:-_TAIL_BYTES]
        except BaseException as exc:
            # We were interrupted (or failed): the child must not run on unseen. It gets the
            # same signal, so it too records "interrupted" and cleans up, then we go on raising.
            _stop_child(process, getattr(exc, "signum", signal.SIGTERM))
            raise
    if process.returncode in INTERRUPTED_STATUSES or process.returncode < 0:
        # The child alone was stopped (a killed worker, an operator's kill): its results are
        # incomplete, so the pipeline must not go on as if it had finished.
        raise stopped_error(step, f"exit status {process.returncode}", out)
    return StepProcess(step, process.returncode, read_run_record(out), error_lines(tail))


def stopped_error(step: str, how: str, out: Path | None) -> StepProcessError:
    """The error of a step stopped before it finished (``how``: its exit status, in words)."""
    return StepProcessError(f"{step} was stopped before it finished ({how}); its output"
                            + (f" in {out}" if out is not None else "") + " is incomplete")


def read_run_record(out: Path | None) -> dict[str, Any]:
    """The run.json of a step's output folder ({} when there is none or it cannot be read)."""
    if out is None or not (Path(out) / "run.json").is_file():
        return {}
    try:
        return json.loads((Path(out) / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def error_lines(output: bytes | bytearray) -> list[str]:
    """The messages of the ``error: ...`` lines of a step's error output."""
    lines = bytes(output).decode("utf-8", errors="replace").replace("\r", "\n").splitlines()
    return [line[len("error: "):] for line in lines if line.startswith("error: ")]


def _load_prctl():
    """libc's ``prctl`` (Linux), loaded before any fork: a ``preexec_fn`` must not import."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (``PR_SET_PDEATHSIG``)."""
    _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


#: Exit statuses of an orgaseg step stopped by SIGINT (130) or SIGTERM (143).
INTERRUPTED_STATUSES = (128 + signal.SIGINT, 128 + signal.SIGTERM)


def _stop_child(process: subprocess.Popen, signum: int, timeout: float = 60.0) -> None:
    """Send ``signum`` to a still running child, wait for it, kill it if it does not end."""
    try:
        # A Ctrl-C in the terminal reached the child too: give it a moment to end by itself, so
        # a second signal does not cut into its own clean-up.
        process.wait(timeout=5)
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        process.send_signal(signum)
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop within %.0f s of %s; killing it", process.args[3:4],
                    timeout, signal.Signals(signum).name)
        process.kill()
        process.wait()
    except ProcessLookupError:
        pass


def _echo_stderr(chunk: bytes) -> None:
    buffer = getattr(sys.stderr, "buffer", None)
    if buffer is not None:
        buffer.write(chunk)
    else:  # a replaced sys.stderr (e.g. under a test runner) takes text
        sys.stderr.write(chunk.decode("utf-8", errors="replace"))
    sys.stderr.flush()
