"""Warm step processes: one long-lived ``orgaseg`` process per model that runs step after step.

A chunk of analyze's images runs ``segment`` (TensorFlow or torch) and ``classify`` (torch) in
child processes, so the two frameworks never meet (:mod:`.chunks`). Starting such a process
costs seconds (importing the framework, loading the model), once per chunk; over thousands of
images a worker runs many chunks. So a worker keeps one process per step and model and sends it
chunk after chunk: the process imports its framework once and keeps its model loaded
(:mod:`orgaseg_core.common.kept_models`), and each request runs the very same command line as
``python -m orgaseg_core <step> ...`` (same checks, same run.json, same exit statuses).

The server (``python -m orgaseg_core --warm-step-server <step>``, :func:`serve`) reads one JSON request
per line on stdin (``{"options": [...]}``); everything it and its steps print goes to stderr,
and after each request it writes a reply line there, marked by :data:`REPLY_MARK`. It ends at
the end of stdin, on SIGTERM / SIGINT (a request then ends as an interrupted step would), and
within a second of its parent's death (a killed Dask worker leaves nothing running on).

The client side (:func:`run_warm_step`) keeps idle servers per (step, model, environment) in
this process, starts one when none is idle (two chunks at once in one worker get two), or, with
``limit``, waits for one when ``limit`` of them are busy (a worker that overlaps its chunks keeps
one process, one model in memory, per step), and hands back a :class:`~.processes.StepProcess`
just as :func:`~.processes.run_step_process` does.
A server that died is replaced at the next request (also when it died just before it, without
having begun the request); one that died during a request makes that request fail like a killed
step process.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .processes import (_TAIL_BYTES, INTERRUPTED_STATUSES, StepProcess, StepProcessError, _echo_stderr, _stop_child,
                        error_lines, read_run_record, stopped_error)

log = logging.getLogger(__name__)

#: Starts a server's reply line on its stderr; the JSON reply follows up to the line's end.
REPLY_MARK = b"\x1e\x1eorgaseg-step-server-reply "
#: ``python -m orgaseg_core SERVER_OPTION <step>`` starts a server (see ``orgaseg_core.__main__``).
SERVER_OPTION = "--warm-step-server"
#: Seconds between the server's checks that its parent is alive.
PARENT_CHECK_SECONDS = 1.0


# --- the server --------------------------------------------------------------------------------

def _watch_parent(parent: int) -> None:
    """End this process (as SIGTERM would) when its parent is gone (reparented)."""
    while True:
        time.sleep(PARENT_CHECK_SECONDS)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
            return


def serve(step: str, main: Callable[[list[str]], int]) -> int:
    """Run ``main([STEP, *options])`` (the ``orgaseg`` command line's entry point) for every
    request line on stdin (see the module); the exit status of the server."""
    from ..common.kept_models import KEEP_VARIABLE

    os.environ[KEEP_VARIABLE] = "1"
    replies = os.fdopen(os.dup(2), "wb", buffering=0)
    os.dup2(2, 1)  # a step's own printing (its summary) goes to stderr with its log

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)  # between requests; a step installs its own while it runs
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    served = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        t0 = time.perf_counter()
        try:
            status = main([step, *map(str, request["options"])])
        except SystemExit as exc:  # a stop between the step's own handlers
            status = exc.code if isinstance(exc.code, int) else 1
        except Exception:  # a bug: shown, and this request failed; the server serves on
            import traceback

            traceback.print_exc()
            status = 1
        served += 1
        sys.stdout.flush()
        sys.stderr.flush()
        reply = {"returncode": status, "pid": os.getpid(), "request": served,
                 "seconds": round(time.perf_counter() - t0, 3)}
        replies.write(REPLY_MARK + json.dumps(reply).encode() + b"\n")
        if status in INTERRUPTED_STATUSES:
            return status
    return 0


# --- the client --------------------------------------------------------------------------------

class StepServer:
    """One server process and the requests sent to it (used by one thread at a time)."""

    def __init__(self, step: str, env: dict[str, str]):
        self.step = step
        self.process = subprocess.Popen(
            [sys.executable, "-m", "orgaseg_core", SERVER_OPTION, step],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            # no death signal tied to the starting thread (any thread of the worker may use it
            # later): the server watches its parent process itself
            env={**os.environ, **env})
        self._pending = bytearray()
        log.info("%s: started a warm step process (pid %d)", step, self.process.pid)

    def alive(self) -> bool:
        return self.process.poll() is None

    def run(self, options: Sequence[Any], out: Path | None) -> tuple[StepProcess, dict[str, Any]]:
        """Run the step with ``options``; (how it ended, the server's reply)."""
        assert self.process.stdin is not None and self.process.stderr is not None
        tail = bytearray()
        reply: dict[str, Any] | None = None
        try:
            try:
                self.process.stdin.write(json.dumps({"options": [str(o) for o in options]}).encode() + b"\n")
                self.process.stdin.flush()
            except BrokenPipeError:
                pass  # it died: reading finds the end of its output
            while reply is None:
                chunk = self.process.stderr.read1(65536)
                if not chunk:
                    break
                self._pending += chunk
                at = self._pending.find(REPLY_MARK)
                if at < 0:
                    # keep back what could be the start of a mark cut in two
                    keep = len(REPLY_MARK) - 1
                    show, self._pending = self._pending[:-keep], self._pending[-keep:]
                elif (end := self._pending.find(b"\n", at)) < 0:
                    show, self._pending = self._pending[:at], self._pending[at:]
                else:
                    show = self._pending[:at]
                    reply = json.loads(bytes(self._pending[at + len(REPLY_MARK):end]))
                    self._pending = self._pending[end + 1:]
                _echo_stderr(bytes(show))
                tail += show
                del tail[:-_TAIL_BYTES]
        except BaseException as exc:
            _stop_child(self.process, getattr(exc, "signum", signal.SIGTERM))
            raise
        if reply is None:  # the server ended during the request (killed, crashed)
            raise stopped_error(self.step, f"its process ended with status {self.process.wait()}", out)
        status = int(reply["returncode"])
        if status in INTERRUPTED_STATUSES:
            raise stopped_error(self.step, f"exit status {status}", out)
        return StepProcess(self.step, status, read_run_record(out), error_lines(tail)), reply

    def close(self, timeout: float = 30.0) -> None:
        """End the server: the end of its input, then SIGTERM, then SIGKILL."""
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
            self.process.wait(timeout=timeout)
        except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
            _stop_child(self.process, signal.SIGTERM, timeout=timeout)


_idle: dict[tuple, list[StepServer]] = {}
#: servers of each key running a request now
_busy: dict[tuple, int] = {}
_lock = threading.Lock()
_released = threading.Condition(_lock)


def run_warm_step(step: str, options: Sequence[Any], *, model: Any, out: Path | None = None,
                  env: dict[str, str] | None = None, limit: int | None = None) -> tuple[StepProcess, dict[str, Any]]:
    """``orgaseg STEP OPTIONS`` in an idle warm server of this process for ``model`` and
    ``env`` (started when there is none, or with ``limit``: when fewer than ``limit`` run a
    request, else it waits for one); (how it ended, the server's reply: pid, request number,
    seconds, and ``waited``: seconds spent waiting for a server). Raises StepProcessError when
    the server died during the request."""
    env = dict(env or {})
    key = (step, str(Path(model).resolve()), tuple(sorted(env.items())))
    if limit is not None and int(limit) < 1:
        raise ValueError(f"limit must be None or >= 1, got {limit!r}")
    server = None
    t0 = time.perf_counter()
    with _released:
        while True:
            idle = _idle.setdefault(key, [])
            while idle and server is None:
                candidate = idle.pop()
                if candidate.alive():
                    server = candidate
            if server is not None or limit is None or _busy.get(key, 0) < int(limit):
                break
            _released.wait()
        _busy[key] = _busy.get(key, 0) + 1
        # servers of the same step for another model are not needed again soon: end them
        others = [old for k in [k for k in _idle if k[0] == step and k != key] for old in _idle.pop(k)]
    waited = time.perf_counter() - t0
    served = False
    try:
        for old in others:
            old.close()
        reused = server is not None
        if server is None:
            server = StepServer(step, env)
        ended, reply, server = _run_on(server, step, options, out, env, reused)
        served = True
    finally:
        with _released:  # busy no more; kept for the next request unless it failed (then closed)
            _busy[key] -= 1
            if served:
                _idle.setdefault(key, []).append(server)
            _released.notify_all()
    return ended, {**reply, "waited": round(waited, 3)}


def _run_on(server: StepServer, step: str, options: Sequence[Any], out: Path | None, env: dict[str, str],
            reused: bool) -> tuple[StepProcess, dict[str, Any], StepServer]:
    """Run one request on ``server`` (on a new server when a ``reused`` one turns out to have
    died before it); (how it ended, the reply, the server that ran it). A server that failed is
    closed."""
    try:
        try:
            ended = server.run(options, out)
        except StepProcessError:
            # An idle process can die between its last request and this one (killed, out of
            # memory) and still look alive for a moment. If it never began this request (its
            # output folder was never made), the request runs again on a new process.
            if not (reused and out is not None and not Path(out).exists() and not server.alive()):
                raise
            log.warning("%s: the warm step process %d had ended before this request; starting a new one",
                        step, server.process.pid)
            server.close(timeout=5)
            server = StepServer(step, env)
            ended = server.run(options, out)
    except BaseException:
        server.close(timeout=5)
        raise
    return ended[0], ended[1], server


def close_step_servers() -> int:
    """End every idle warm server of this process; how many there were."""
    with _lock:
        servers = [s for group in _idle.values() for s in group]
        _idle.clear()
    for server in servers:
        server.close()
    return len(servers)

