"""Stopping a bundle's run_on_loihi.py during its Lava run leaves no Lava process behind.

Three rehearsals (``--backend sim``, in a ``python -I`` process that cannot import this
project) of a bundle long enough to be interrupted are started together, each in its own
session: Ctrl-C to the whole group (exit 130, one line), SIGTERM to the script (exit 143),
SIGKILL to the script. Every Lava worker seen just before the signal must be gone within
5 s (the helpers of tests/test_kill_lava.py).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from pipeline.bundle import bundle
from tests.test_bundle import ISOLATED, _bundle_of
from tests.test_kill_lava import (_as_from_a_terminal, _assert_workers_gone, _finished, _wait_for_lava,
                                  _wait_gone)

pytestmark = pytest.mark.lava

T = 32


def wide_cuba_net():
    """64-512-512-10 cuba, spikes readout: ~100 Lava steps/s, 300 samples of T = 32 outlast the tests."""
    from hardware.ir import Dense, Input, Network, Neuron
    from hardware.spec import LOIHI2

    rng = np.random.default_rng(0)
    sizes, thresholds = (64, 512, 512, 10), (300, 2000, 2000)
    layers = [Dense(weight=rng.integers(-20, 40, size=(n_out, n_in)), bias=None, name=f"d{i}",
                    neuron=Neuron("cuba", theta, du=LOIHI2.if_du, dv=0))
              for i, (n_in, n_out, theta) in enumerate(zip(sizes, sizes[1:], thresholds))]
    return Network(input=Input((64,)), layers=layers, integer=True, input_bits=8, readout="spikes")


@pytest.fixture(scope="module")
def rehearsals(tmp_path_factory):
    base = tmp_path_factory.mktemp("bundle-kill")
    cfg = _bundle_of(base, wide_cuba_net(), timesteps=T, samples=300)
    bundle(cfg, progress=False)
    procs = {sig: subprocess.Popen([sys.executable, "-I", "-c", ISOLATED, "--backend", "sim"],
                                   cwd=cfg.run_dir / "bundle", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, start_new_session=True, preexec_fn=_as_from_a_terminal)
             for sig in ("SIGKILL", "SIGTERM", "SIGINT")}
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def test_sigkill_leaves_no_lava_worker(rehearsals):
    proc = rehearsals["SIGKILL"]
    before = _wait_for_lava(proc)
    proc.kill()
    _assert_workers_gone(before, "SIGKILL")
    assert _wait_gone(before) == []


def test_sigterm_stops_lava_and_exits_143(rehearsals):
    proc = rehearsals["SIGTERM"]
    before = _wait_for_lava(proc)
    proc.terminate()
    err = _finished(proc, _assert_workers_gone(before, "SIGTERM"))
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]


def test_ctrl_c_stops_lava_and_exits_130(rehearsals):
    proc = rehearsals["SIGINT"]
    before = _wait_for_lava(proc)
    os.killpg(proc.pid, signal.SIGINT)  # the whole group, as a terminal does
    err = _finished(proc, _assert_workers_gone(before, "Ctrl-C"))
    assert proc.returncode == 130, err[-3000:]
    assert err.rstrip().splitlines()[-1] == "interrupted", err[-3000:]
