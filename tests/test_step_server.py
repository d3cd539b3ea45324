"""Warm step processes (analyze's workers): one process runs request after request, reports each
like a step process of its own, is replaced when it died, and ends with its parent; models are
kept loaded only where asked and only while their files are unchanged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from orgaseg_core.common import kept_models
from orgaseg_core.pipelines.processes import StepProcessError
from orgaseg_core.pipelines.step_server import StepServer, close_step_servers, run_warm_step


def _demo(out) -> list:
    return ["--out", out, "--n-images", 1, "--size", "128x160", "--seed", 3]


@pytest.fixture(autouse=True)
def no_servers_left():
    yield
    close_step_servers()


def _gone(pid: int, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie child of ours counts as gone once reaped by its Popen; others by the kernel
        try:
            if open(f"/proc/{pid}/stat").read().split()[2] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


def test_one_warm_process_runs_the_requests_one_after_another(tmp_path):
    first, reply1 = run_warm_step("demo-data", _demo(tmp_path / "a"), model=tmp_path, out=tmp_path / "a")
    second, reply2 = run_warm_step("demo-data", _demo(tmp_path / "b"), model=tmp_path, out=tmp_path / "b")
    assert first.returncode == second.returncode == 0
    assert reply1["pid"] == reply2["pid"] and (reply1["request"], reply2["request"]) == (1, 2)
    # each request is a whole run of the step: its own run.json, read back for the caller
    assert first.record["status"] == second.record["status"] == "ok"
    assert first.record["arguments"]["out"] != second.record["arguments"]["out"]
    assert len(list((tmp_path / "b" / "images").iterdir())) == 1
    assert close_step_servers() == 1
    assert _gone(reply1["pid"])


def _at_once(tmp_path, limit) -> list[dict]:
    """Two requests sent at the same moment from two threads; their replies."""
    import threading

    replies, errors = [None, None], []
    go = threading.Barrier(2)

    def request(i: int) -> None:
        try:
            go.wait()
            done, replies[i] = run_warm_step("demo-data", _demo(tmp_path / f"r{i}"), model=tmp_path,
                                             out=tmp_path / f"r{i}", limit=limit)
            assert done.returncode == 0
        except BaseException as exc:  # noqa: BLE001 - shown by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    return replies


def test_with_a_limit_requests_at_once_take_turns_in_one_process(tmp_path):
    """limit=1 (a worker that overlaps its chunks): the second request waits for the one process
    instead of starting another; without a limit each gets a process of its own."""
    turns = _at_once(tmp_path / "limit", 1)
    assert turns[0]["pid"] == turns[1]["pid"]
    assert sorted(r["request"] for r in turns) == [1, 2]
    first, second = sorted(turns, key=lambda r: r["request"])
    # the second waited about as long as the first ran (both began at the barrier)
    assert second["waited"] >= 0.5 * first["seconds"] and first["waited"] < second["waited"]
    assert close_step_servers() == 1
    apart = _at_once(tmp_path / "free", None)
    assert apart[0]["pid"] != apart[1]["pid"] and [r["request"] for r in apart] == [1, 1]
    assert close_step_servers() == 2


def test_a_failed_request_brings_its_error_and_the_process_serves_on(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("a user's file")
    failed, reply1 = run_warm_step("demo-data", _demo(tmp_path / "taken"), model=tmp_path, out=tmp_path / "taken")
    assert failed.returncode == 1
    assert any("taken" in e for e in failed.errors), failed.errors
    assert (tmp_path / "taken" / "mine.txt").read_text() == "a user's file"
    fine, reply2 = run_warm_step("demo-data", _demo(tmp_path / "new"), model=tmp_path, out=tmp_path / "new")
    assert fine.returncode == 0 and reply2["pid"] == reply1["pid"]


def test_a_dead_process_fails_its_request_and_is_replaced(tmp_path):
    server = StepServer("demo-data", {})
    server.process.kill()
    server.process.wait()
    with pytest.raises(StepProcessError, match="demo-data was stopped before it finished"):
        server.run(_demo(tmp_path / "x"), tmp_path / "x")
    _, reply1 = run_warm_step("demo-data", _demo(tmp_path / "a"), model=tmp_path, out=tmp_path / "a")
    # dies while idle: the next request gets a new process (a process being killed can still look
    # alive for a moment; the request, never begun, then runs again on a new one)
    os.kill(reply1["pid"], signal.SIGKILL)
    assert _gone(reply1["pid"])
    again, reply2 = run_warm_step("demo-data", _demo(tmp_path / "b"), model=tmp_path, out=tmp_path / "b")
    assert again.returncode == 0 and reply2["pid"] != reply1["pid"] and reply2["request"] == 1


def test_the_process_ends_when_its_parent_dies(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from orgaseg_core.pipelines.step_server import run_warm_step\n"
        f"_, reply = run_warm_step('demo-data', {[str(o) for o in _demo(tmp_path / 'a')]!r}, model='.')\n"
        "print(reply['pid'], flush=True)\n"
        "time.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    os.kill(pid, 0)  # alive and idle, its parent asleep
    parent.kill()
    parent.wait()
    assert _gone(pid), "the warm step process outlived its parent"


def test_models_are_kept_only_where_asked_and_while_their_files_stay(tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"1234")
    loads = []

    def load():
        loads.append(1)
        return object()

    monkeypatch.delenv(kept_models.KEEP_VARIABLE, raising=False)
    assert kept_models.keep_loaded("test model", model, load) is not kept_models.keep_loaded("test model", model, load)
    assert len(loads) == 2  # a plain step process loads every time
    monkeypatch.setenv(kept_models.KEEP_VARIABLE, "1")
    kept_models.forget_all()
    one = kept_models.keep_loaded("test model", model, load)
    assert kept_models.keep_loaded("test model", model, load) is one and len(loads) == 3
    assert kept_models.keep_loaded("test model", model, load, "another family") is not one
    one = kept_models.keep_loaded("test model", model, load)
    (model / "weights.bin").write_bytes(b"retrained")  # the same folder, trained again
    assert kept_models.keep_loaded("test model", model, load) is not one
    kept_models.forget_all()

