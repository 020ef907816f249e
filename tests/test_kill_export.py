"""Kill safety of ``export`` and ``train`` (issue 8): a kill -9 leaves either the previous
complete artifact or the new complete one, never a partial one a later stage accepts;
a killed ``train`` resumes and loses at most the epoch in progress.

``export`` writes its .net in milliseconds, too fast to hit from outside, so the kill is
placed deterministically: a forked child runs the real CLI and SIGKILLs itself inside
the write (at the n-th HDF5 dataset or attribute, at the fsync, just before or just
after the rename). ``train`` is killed from outside, the real ``python -m pipeline``,
while its second epoch runs.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.artifacts import CHECKPOINT, NET_FILE, REPORT_JSON, TRAIN_STATE
from tests.bad_inputs.base import Workspace
from tests.bad_inputs.harness import (EXIT_REACHED_LAVA, REPO, reap_session, run_forked,
                                      warm_imports)

#: files a run directory may hold after export; anything else is a leftover of the kill
KNOWN = {CHECKPOINT, TRAIN_STATE, REPORT_JSON, NET_FILE, "report.md", "raster.npz"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Workspace:
    """A trained workspace; first the stages (torch, Lava, and what they import lazily) are
    imported once, before the first fork (only the export tests fork)."""
    warm_imports()
    ws = Workspace(tmp_path_factory.mktemp("kill-export"))
    ws.inputs.mkdir()
    ws.write_config()
    outcome = run_forked(ws.argv("train"), ws.root, ws.root / "scratch", timeout=300)
    assert outcome.returncode == 0, outcome.describe()
    return ws


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def kill_self_at(owner: object, attr: str, nth: int, after: bool = False, when=lambda *a, **k: True):
    """Patch ``owner.attr`` so that its ``nth`` matching call SIGKILLs this process
    (before the call, or right after it returns)."""
    original = getattr(owner, attr)
    calls = [0]

    def wrapper(*args, **kwargs):
        hit = when(*args, **kwargs) and (calls.__setitem__(0, calls[0] + 1) or calls[0] == nth)
        if hit and not after:
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if hit:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    setattr(owner, attr, wrapper)


def _kill_points():
    import h5py

    return {
        "dataset-1": lambda: kill_self_at(h5py.Group, "create_dataset", 1),
        "dataset-6": lambda: kill_self_at(h5py.Group, "create_dataset", 6),
        "dataset-12": lambda: kill_self_at(h5py.Group, "create_dataset", 12),
        "dataset-20": lambda: kill_self_at(h5py.Group, "create_dataset", 20),
        "attribute-3": lambda: kill_self_at(h5py.AttributeManager, "__setitem__", 3),
        "file-close": lambda: kill_self_at(h5py.File, "close", 1),
        "fsync": lambda: kill_self_at(os, "fsync", 1),
        "before-rename": lambda: kill_self_at(os, "replace", 1, when=lambda s, d, *a, **k: str(d).endswith(NET_FILE)),
        "after-rename": lambda: kill_self_at(os, "replace", 1, after=True,
                                             when=lambda s, d, *a, **k: str(d).endswith(NET_FILE)),
    }


def _export(ws: Workspace, scratch: Path, *overrides: str, before_main=None):
    return run_forked(ws.argv("export", *overrides), ws.root, scratch, timeout=120,
                      before_main=before_main)


def _run_accepts(ws: Workspace, net: Path, scratch: Path) -> bool:
    """``run`` with run.net=net: True if it reaches the Lava phase, False if it refuses
    cleanly (exit 2, one error line, no traceback); anything else fails the test."""
    outcome = run_forked(ws.argv("run", f"run.net={net}"), ws.root, scratch, timeout=120)
    if outcome.returncode == EXIT_REACHED_LAVA:
        return True
    assert outcome.returncode == 2 and "Traceback" not in outcome.stderr, outcome.describe()
    assert outcome.stderr.strip().splitlines()[-1].startswith("error:"), outcome.describe()
    return False


@pytest.mark.parametrize("previous", [True, False], ids=["over-previous", "first-export"])
@pytest.mark.parametrize("point", list(_kill_points()))
def test_export_killed_mid_write_leaves_no_partial_net(trained, tmp_path, point, previous):
    import shutil

    ws = Workspace(tmp_path / "ws")
    shutil.copytree(trained.root, ws.root, ignore=shutil.ignore_patterns("scratch"))
    ws.write_config()
    # the complete file of the new export, and (distinct) of a previous one
    assert _export(ws, tmp_path / "s0", "run.overwrite=true").returncode == 0  # same config as the kill's
    new_sha = sha256(ws.run / NET_FILE)
    old_sha = None
    if previous:
        assert _export(ws, tmp_path / "s1", "quant.input_bits=7", "run.overwrite=true").returncode == 0
        old_sha = sha256(ws.run / NET_FILE)
        assert old_sha != new_sha
    else:
        (ws.run / NET_FILE).unlink()
    report_before = (ws.run / REPORT_JSON).read_text()

    # another configuration's model.net is replaced only when asked (issue 18)
    killed = _export(ws, tmp_path / "s2", "run.overwrite=true", before_main=_kill_points()[point])
    assert killed.returncode == -signal.SIGKILL, killed.describe()

    net = ws.run / NET_FILE
    assert (sha256(net) if net.exists() else None) in {old_sha, new_sha}, "model.net is partial"
    json.loads((ws.run / REPORT_JSON).read_text())  # report.json is complete
    if net.exists():
        assert _run_accepts(ws, net, tmp_path / "s3")
    leftovers = sorted(p for p in ws.run.iterdir() if p.name not in KNOWN)
    for p in leftovers:
        assert p.name.startswith(".") or p.name.endswith(".tmp"), \
            f"{p.name} left by the kill looks like a finished artifact"
        if _run_accepts(ws, p, tmp_path / f"s-{p.name}"):
            assert sha256(p) == new_sha, f"run accepted the partial file {p.name}"
    assert (ws.run / REPORT_JSON).read_text() == report_before or net.exists()


# --------------------------------------------------------------------------- train
def test_train_killed_mid_epoch_resumes(tmp_path):
    """SIGKILL of ``python -m pipeline train`` during epoch 2 of 4; the rerun resumes
    after epoch 1 (it trains epochs 2 to 4 only) and finishes a complete run."""
    ws = Workspace(tmp_path)
    ws.inputs.mkdir()
    cfg = ws.config_dict()
    cfg["train"]["epochs"] = epochs = 4
    ws.write_config(cfg)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *ws.argv("train")], cwd=ws.root,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    state = ws.run / TRAIN_STATE
    deadline = time.monotonic() + 300
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"train ended before it could be killed: {proc.stderr.read()[-2000:]}"
    # the state appears when epoch 1 ends: kill at once, inside epoch 2 (a fixed wait let a
    # fast machine finish every epoch first: an epoch of this config can take under 0.15 s)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not reap_session(proc.pid), "processes of the killed train left alive"
    json.loads(_doc_of(state))  # the resume state left by the kill is complete

    rerun = subprocess.run([sys.executable, "-m", "pipeline", *ws.argv("train")], cwd=ws.root,
                           env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Traceback" not in rerun.stderr
    assert "resum" in rerun.stderr.lower(), "the rerun did not resume"
    history = json.loads((ws.run / REPORT_JSON).read_text())["training"]["history"]
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
    # the epoch finished before the kill is kept, not trained again
    assert "epoch 1:" not in rerun.stderr and f"epoch {epochs}:" in rerun.stderr, rerun.stderr[-3000:]


def _doc_of(path: Path) -> str:
    """The JSON document in a safetensors file's metadata (pipeline.checkpoints' layout)."""
    from pipeline.checkpoints import METADATA_KEY
    from tests.bad_inputs.base import read_safetensors

    header, _ = read_safetensors(path)
    return header["__metadata__"][METADATA_KEY]
