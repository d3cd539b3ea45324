"""Steps run in child processes: ``python -m orgaseg_core <step> ...`` with this Python.

TensorFlow and torch crash when loaded into one process, so the pipelines run the StarDist and
the torch steps each in a child process. The child's output is passed on live (progress bars
and logs) and its ``error: ...`` lines are kept for the parent's own error message.
"""

from __future__ import annotations

import json
import logging
import shlex
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


def run_step_process(step: str, options: Sequence[Any], *, out: Path | None = None) -> StepProcess:
    """Run one orgaseg step in a child process and wait for it.

    The child's output is passed on as it comes (progress bars and logs stay live) and its
    error output is also kept, so its ``error: ...`` lines can be repeated in our error.
    ``out``: the step's output folder, whose ``run.json`` is read afterwards (if written).
    """
    command = orgaseg_command(step, options)
    log.info("%s: starting its own process: %s", step, shlex.join(command))
    tail = bytearray()
    with subprocess.Popen(command, stderr=subprocess.PIPE) as process:
        assert process.stderr is not None
        while chunk := process.stderr.read1(65536):
            _echo_stderr(chunk)
            tail += chunk
            del tail[:-_TAIL_BYTES]
    record: dict[str, Any] = {}
    if out is not None and (Path(out) / "run.json").is_file():
        try:
            record = json.loads((Path(out) / "run.json").read_text())
        except (OSError, ValueError):
            record = {}
    lines = tail.decode("utf-8", errors="replace").replace("\r", "\n").splitlines()
    errors = [line[len("error: "):] for line in lines if line.startswith("error: ")]
    return StepProcess(step, process.returncode, record, errors)


def _echo_stderr(chunk: bytes) -> None:
    buffer = getattr(sys.stderr, "buffer", None)
    if buffer is not None:
        buffer.write(chunk)
    else:  # a replaced sys.stderr (e.g. under a test runner) takes text
        sys.stderr.write(chunk.decode("utf-8", errors="replace"))
    sys.stderr.flush()
