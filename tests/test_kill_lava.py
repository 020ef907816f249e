"""Killing `python -m pipeline run` during its Lava phase leaves no process behind.

Three real CLI runs (digits, a small exported network, a Lava phase long enough to
be interrupted) are started together, each in its own session (process group), so
that the slow start-up (imports, the reference simulator) overlaps. Each is
signalled once its Lava workers exist: SIGKILL and SIGTERM to the CLI process
alone, SIGINT to the whole group as a terminal's Ctrl-C does. Every Lava worker
seen just before the signal must be gone within 5 s. multiprocessing's resource
tracker is the CLI's own helper and ends with it: after SIGKILL within 5 s; after
SIGTERM/SIGINT within 5 s of the CLI's exit (the interpreter's own teardown of
torch/lava-dl modules takes several seconds on a loaded machine, after Lava is
already stopped).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hardware import ir
from hardware.formats.netx import write_net
from hardware.spec import LOIHI2

pytestmark = pytest.mark.lava

ROOT = Path(__file__).resolve().parents[1]
#: Lava's runtime for this network forks a manager, a runtime service and one
#: process per leaf process; seeing this many descendants means it has started.
LAVA_STARTED = 5
START_TIMEOUT_S = 150
GONE_TIMEOUT_S = 5.0
#: the CLI's exit after SIGTERM/SIGINT: Lava stopped (bounded by STOP_TIMEOUT_S), then
#: the interpreter's teardown
EXIT_TIMEOUT_S = 60


def _stat(pid: int):
    """(ppid, state, start time) of a live process, None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), fields[0], int(fields[19])


def descendants(root: int) -> dict:
    """pid -> start time of every live descendant of ``root`` (zombies excluded)."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := _stat(int(name))) is not None:
            table[int(name)] = st
    found, todo = {}, [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, state, start) in table.items():
            if ppid == parent and pid not in found:
                todo.append(pid)
                if state != "Z":
                    found[pid] = start
    return found


def is_resource_tracker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"multiprocessing.resource_tracker" in fh.read()
    except OSError:
        return False


def _describe(pid: int) -> str:
    """cmdline and status lines of a process, for failure messages."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")[:120]
        with open(f"/proc/{pid}/status") as fh:
            status = [line.strip() for line in fh if line.startswith(("Threads", "SigIgn", "State"))]
    except OSError:
        return "gone"
    return f"{cmd} {status}"


def _has_memory(pid: int) -> bool:
    """False once a process has released its address space: it is inside exit() and can
    run no more code (on an overloaded machine the rest of the teardown can lag)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return any(line.startswith("VmSize") for line in fh)
    except OSError:
        return False


def alive(procs: dict) -> list:
    """The processes of ``procs`` (pid -> start time) still running (not exiting or zombies)."""
    out = []
    for pid, start in procs.items():
        st = _stat(pid)
        if st is not None and st[2] == start and st[1] != "Z" and _has_memory(pid):
            out.append(pid)
    return out


def _tiny_digits_net(path: Path) -> Path:
    rng = np.random.default_rng(0)

    def neuron(theta):
        return ir.Neuron("if_soft", threshold=theta, du=LOIHI2.if_du, dv=LOIHI2.if_dv)

    # wide enough that Lava runs ~100 steps/s: its phase outlasts the three tests
    layers = [ir.Flatten(),
              ir.Dense(weight=rng.integers(-20, 40, size=(512, 64)), bias=None,
                       neuron=neuron(300), name="d0"),
              ir.Dense(weight=rng.integers(-20, 40, size=(512, 512)), bias=None,
                       neuron=neuron(2000), name="d1"),
              ir.Dense(weight=rng.integers(-20, 40, size=(10, 512)), bias=None,
                       neuron=neuron(2000), name="d2")]
    net = ir.Network(input=ir.Input(shape=(1, 8, 8)), layers=layers, integer=True,
                     input_bits=LOIHI2.input_bits_default, readout="spikes")
    return write_net(net, path)


def _as_from_a_terminal() -> None:
    """Ctrl-C's default action in the CLI, as a terminal gives it. A test suite started in the
    background (``make test &``, a non-interactive shell's ``&``, CI runners) hands its children
    SIGINT ignored, and Python then keeps it ignored: the CLI would rightly run to the end."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One CLI `run` per signal, started together; killed at module end if a test failed."""
    base = tmp_path_factory.mktemp("kill")
    net = _tiny_digits_net(base / "tiny.net")
    procs = {}
    for sig in ("SIGKILL", "SIGTERM", "SIGINT"):
        # 359 test samples × T = 32: ~11k Lava steps, interrupted long before the end
        cmd = [sys.executable, "-m", "pipeline", "run", "--set", f"run.dir={base / sig}",
               "--set", f"run.net={net}", "--set", "run.lava_samples=359",
               "--set", "snn.timesteps=32", "--set", "eval.timesteps=32", "--set", "run.probes=false"]
        procs[sig] = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True,
                                      start_new_session=True, preexec_fn=_as_from_a_terminal)
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def _wait_for_lava(proc: subprocess.Popen) -> dict:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) before Lava started:\n{err[-3000:]}")
        found = descendants(proc.pid)
        if len(found) >= LAVA_STARTED:
            time.sleep(1.0)  # well inside the run, between RunSteps chunks or in one
            return descendants(proc.pid)
        time.sleep(0.2)
    pytest.fail(f"no Lava workers after {START_TIMEOUT_S} s")


def _wait_gone(procs: dict) -> list:
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while (left := alive(procs)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _assert_workers_gone(before: dict, what: str) -> dict:
    """Lava's workers gone within GONE_TIMEOUT_S; returns the resource tracker(s) left."""
    trackers = {pid: st for pid, st in before.items() if is_resource_tracker(pid)}
    workers = {pid: st for pid, st in before.items() if pid not in trackers}
    assert len(workers) >= LAVA_STARTED - 1
    left = _wait_gone(workers)
    assert left == [], (f"{len(left)} of {len(workers)} Lava workers alive {GONE_TIMEOUT_S} s "
                        f"after {what}: {[(pid, _stat(pid), _describe(pid)) for pid in left]} "
                        f"(snapshot: {sorted(before)}, trackers {sorted(trackers)})")
    return trackers


def test_sigkill_leaves_no_process(runs):
    proc = runs["SIGKILL"]
    before = _wait_for_lava(proc)
    proc.kill()
    _assert_workers_gone(before, "SIGKILL")
    assert _wait_gone(before) == [], "the resource tracker outlived the killed CLI"


def _finished(proc: subprocess.Popen, trackers: dict) -> str:
    """Wait for the CLI's exit, then for its resource tracker; return its stderr."""
    _, err = proc.communicate(timeout=EXIT_TIMEOUT_S)
    assert _wait_gone(trackers) == [], "the resource tracker outlived the CLI"
    assert "Traceback" not in err, err[-3000:]
    return err


def test_sigterm_stops_lava_and_exits_143(runs):
    proc = runs["SIGTERM"]
    before = _wait_for_lava(proc)
    proc.terminate()
    trackers = _assert_workers_gone(before, "SIGTERM")
    err = _finished(proc, trackers)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]


def test_ctrl_c_ends_run_with_one_line(runs):
    proc = runs["SIGINT"]
    before = _wait_for_lava(proc)
    os.killpg(proc.pid, signal.SIGINT)  # the whole group, as a terminal does
    trackers = _assert_workers_gone(before, "Ctrl-C")
    err = _finished(proc, trackers)
    assert proc.returncode == 130, err[-3000:]
    assert err.rstrip().splitlines()[-1] == "interrupted", err[-3000:]
