"""Multi-process training (torchrun, DistributedDataParallel): 2 gloo processes on the CPU, digits.

The runs are launched with torch.distributed's own launcher (``python -m torch.distributed.run
--standalone``, which picks a free port itself) as a subprocess tree; every process of it is
killed when a test ends, whatever happened. In the default run one short launch (one epoch)
must finish, and its checkpoint, σ and selection are checked against single-process
computations on the same samples. Under ``-m slow`` a longer run is killed (kill -9 of its
workers) after its first epoch and launched again: it must resume, finish, and equal a run
that was never stopped.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from pipeline.checkpoints import load_checkpoint, model_from_checkpoint
from pipeline.config import load_config
from pipeline.data import load_dataset
from pipeline.distributed import (DistContext, DistributedError, Launch, derived_seed, launch_from_env,
                                  require_single_process, shard_bounds)
from pipeline.training import (TRAINING_SIM_DTYPE, measure_residual, selection_set, sigma_batch,
                               snn_accuracy_by_t, to_ir)

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3
#: odd sizes: the shards of the two ranks differ in size (the padding of the gather is exercised)
OVERRIDES = ("train.epochs=3", "nq.sigma_samples=101", "train.select_samples=75", "nq.init_threshold=2")
LAUNCH_TIMEOUT_S = 240


def _cfg(run_dir: Path, *extra: str):
    return load_config(str(REPO / "deploy.yaml"), [f"run.dir={run_dir}", *OVERRIDES, *extra])


# --------------------------------------------------------------------------- process tree
def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry))
    return children


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun's workers run in sessions of their own, so a
    process-group kill of the launcher would not reach them)."""
    tree, found, todo = _children_by_parent(), [], [pid]
    while todo:
        kids = tree.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _workers_of(run_dir: Path) -> list[int]:
    """Processes whose command line names ``run_dir`` (unique per test): torchrun's workers, also
    after their launcher died and they were re-parented."""
    marker = f"run.dir={run_dir}".encode()
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def _kill(pids) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _torchrun(run_dir: Path, log_path: Path, *extra: str):
    """``torchrun --standalone --nproc_per_node=2 -m pipeline train`` into ``run_dir``; on leaving,
    every process of the tree that is still there is killed."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "pipeline", "train", "--config", "deploy.yaml", "--set", f"run.dir={run_dir}"]
    for override in (*OVERRIDES, *extra):
        cmd += ["--set", override]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        _kill(_descendants(proc.pid) + _workers_of(run_dir) + [proc.pid])
        proc.wait(timeout=30)


def _state_epoch(path: Path) -> int:
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["nqloihi"])["epoch"]


def _stop_after_first_epoch(proc, state: Path, log_path: Path) -> int:
    """Wait for the first resume state, kill -9 the training processes; the epoch stopped at."""
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    while not state.exists():
        if proc.poll() is not None:
            pytest.fail(f"torchrun ended ({proc.returncode}) before its first epoch:\n{log_path.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no resume state after {LAUNCH_TIMEOUT_S} s:\n{log_path.read_text()}")
        time.sleep(0.02)
    _kill(_descendants(proc.pid))
    proc.wait(timeout=60)  # torchrun sees its workers die and gives up
    assert proc.returncode != 0
    return _state_epoch(state)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """(config, log) of one uninterrupted 2-process launch of one epoch."""
    run_dir = tmp_path_factory.mktemp("ddp_short")
    cfg = _cfg(run_dir, "train.epochs=1")
    log_path = run_dir.parent / "short.log"
    with _torchrun(run_dir, log_path, "train.epochs=1") as proc:
        proc.wait(timeout=LAUNCH_TIMEOUT_S)
        assert proc.returncode == 0, log_path.read_text()
    return cfg, log_path.read_text()


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """(config, epoch the first launch was stopped after (0-based), log of the resumed launch)."""
    run_dir = tmp_path_factory.mktemp("ddp")
    cfg = _cfg(run_dir)
    with _torchrun(run_dir, run_dir.parent / "first.log") as proc:
        stopped = _stop_after_first_epoch(proc, cfg.run_dir / "train_state.safetensors",
                                          run_dir.parent / "first.log")
    assert stopped < EPOCHS - 1, "the run finished before it could be stopped"
    assert not (cfg.run_dir / "report.json").exists()  # it really stopped mid-way
    log_path = run_dir.parent / "resumed.log"
    with _torchrun(run_dir, log_path) as proc:
        proc.wait(timeout=LAUNCH_TIMEOUT_S)
        assert proc.returncode == 0, log_path.read_text()
    return cfg, stopped, log_path.read_text()


# --------------------------------------------------------------------------- the 2-process run
def test_ddp_run_completes_with_one_log_and_no_temporary_files(ddp_run):
    cfg, log = ddp_run
    report = json.loads((cfg.run_dir / "report.json").read_text())
    assert [r["epoch"] for r in report["training"]["history"]] == [1]
    assert log.count("pipeline.training: epoch 1:") == 1, log  # rank 0 alone logs
    assert not list(cfg.run_dir.glob(".*.tmp"))


@pytest.mark.slow
def test_killed_ddp_run_resumes_and_completes(resumed_run):
    cfg, stopped, log = resumed_run
    assert f"resuming training from {cfg.run_dir / 'train_state.safetensors'} at epoch {stopped + 2}" in log
    assert _state_epoch(cfg.run_dir / "train_state.safetensors") == EPOCHS - 1
    report = json.loads((cfg.run_dir / "report.json").read_text())
    assert [r["epoch"] for r in report["training"]["history"]] == list(range(1, EPOCHS + 1))
    # rank 0 alone logs: one line per epoch run after the resume, not one per rank
    assert log.count("pipeline.training: epoch 3:") == 1, log
    assert not list(cfg.run_dir.glob(".*.tmp"))


def test_ddp_checkpoint_loads_like_a_single_process_one(ddp_run):
    from pipeline import stages

    cfg, _ = ddp_run
    ckpt = load_checkpoint(cfg.run_dir / "checkpoint.safetensors")
    assert not [name for name in ckpt["state_dict"] if name.startswith("module.")]
    assert [r["epoch"] for r in ckpt["history"]] == [1]
    model_from_checkpoint(ckpt)
    result = stages.evaluate(cfg, progress=False)  # the single-process stage, as after any training
    assert result["accuracy"]["ann"] > 0.5, result["accuracy"]  # it learned: 10 classes


def test_ddp_sigma_and_selection_equal_single_process_on_the_same_samples(ddp_run):
    """The σ, mean |gap|, output threshold and selection accuracy the 2 ranks measured (sharded,
    all-reduced) equal what one process measures on the same samples with the saved model."""
    cfg, _ = ddp_run
    ckpt = load_checkpoint(cfg.run_dir / "checkpoint.safetensors")
    record = ckpt["history"][ckpt["epoch"] - 1]
    model, data = model_from_checkpoint(ckpt), load_dataset(cfg.data, seed=cfg.train.seed)
    sigmas, gaps, threshold = measure_residual(model, data.input_shape, sigma_batch(cfg, data),
                                               cfg.snn.sigma_t, cfg.snn.neuron)
    assert max(sigmas) > 0.05  # a trained model: the gaps are not all zero
    assert record["sigma"] == pytest.approx(sigmas, rel=1e-9, abs=1e-12)
    assert record["mean_abs_gap"] == pytest.approx(gaps, rel=1e-9, abs=1e-12)
    assert record["output_threshold"] == threshold
    assert ckpt["sigma"] == pytest.approx(sigmas, rel=1e-6, abs=1e-9)  # the model's float32 buffers
    net = to_ir(model, data.input_shape, cfg.snn.neuron, readout=cfg.snn.readout, output_threshold=threshold)
    single = snn_accuracy_by_t(net, selection_set(cfg, data), cfg.snn.timesteps, cfg.eval.batch_size,
                               dtype=TRAINING_SIM_DTYPE)[str(cfg.snn.timesteps)]
    assert record["snn_val"] == single


def _measure_on_rank(rank: int, world_size: int, init_file: str, checkpoint: str, out_dir: str) -> None:
    """One rank of the focused test: the sharded measurement, its result written as JSON (a stack
    dump of every thread if it is still running after the launch timeout, for the failure)."""
    import faulthandler

    import torch.distributed as dist

    stacks = open(Path(out_dir) / f"rank{rank}.stacks", "w")
    faulthandler.dump_traceback_later(LAUNCH_TIMEOUT_S - 10, exit=True, file=stacks)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        ckpt = load_checkpoint(Path(checkpoint))
        cfg = load_config(str(REPO / "deploy.yaml"), [f"run.dir={out_dir}", *OVERRIDES])
        data = load_dataset(cfg.data, seed=cfg.train.seed)
        context = DistContext(rank, world_size, 0, torch.device("cpu"), "gloo")
        result = measure_residual(model_from_checkpoint(ckpt), data.input_shape, sigma_batch(cfg, data),
                                  cfg.snn.sigma_t, cfg.snn.neuron, dist=context)
        partial = Path(out_dir) / f"rank{rank}.json.tmp"
        partial.write_text(json.dumps(result))
        partial.rename(partial.with_suffix(""))  # the parent sees the whole result or none
    finally:
        dist.destroy_process_group()
        faulthandler.cancel_dump_traceback_later()


def test_sharded_measurement_in_two_gloo_processes_equals_one_process(ddp_run, tmp_path):
    import torch.multiprocessing as mp

    cfg, _ = ddp_run
    checkpoint = cfg.run_dir / "checkpoint.safetensors"
    context = mp.start_processes(_measure_on_rank, nprocs=2, join=False, start_method="spawn",
                                 args=(2, str(tmp_path / "init"), str(checkpoint), str(tmp_path)))
    results = [tmp_path / f"rank{rank}.json" for rank in range(2)]
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        # wait for the results, not for the exits (join raises if a rank failed)
        while not all(path.exists() for path in results) and not context.join(timeout=0.5):
            if time.monotonic() > deadline:
                stacks = "\n".join(p.read_text() for p in sorted(tmp_path.glob("*.stacks")))
                pytest.fail(f"the 2 gloo processes did not finish; their threads:\n{stacks}")
    finally:
        _kill(p.pid for p in context.processes if p.is_alive())
    by_rank = [json.loads(path.read_text()) for path in results]
    assert by_rank[0] == by_rank[1]  # every rank sets the same σ in its NQ layers
    data = load_dataset(cfg.data, seed=cfg.train.seed)
    sigmas, gaps, threshold = measure_residual(model_from_checkpoint(load_checkpoint(checkpoint)),
                                               data.input_shape, sigma_batch(cfg, data), cfg.snn.sigma_t,
                                               cfg.snn.neuron)
    # float64 sums over ~10^5 gaps in another order (two passes vs torch's std): ~1e-12 apart
    assert by_rank[0][0] == pytest.approx(sigmas, rel=1e-10, abs=1e-14)
    assert by_rank[0][1] == pytest.approx(gaps, rel=1e-10, abs=1e-14)
    assert by_rank[0][2] == threshold


@pytest.mark.slow
def test_resumed_ddp_run_equals_an_uninterrupted_one(resumed_run, tmp_path):
    """Every random stream of a rank is seeded from (train.seed, rank, epoch): the killed and
    resumed run and one that was never stopped train the same model."""
    cfg, _, _ = resumed_run
    with _torchrun(tmp_path / "whole", tmp_path / "whole.log") as proc:
        proc.wait(timeout=LAUNCH_TIMEOUT_S)
        assert proc.returncode == 0, (tmp_path / "whole.log").read_text()
    resumed = load_checkpoint(cfg.run_dir / "checkpoint.safetensors")
    whole = load_checkpoint(tmp_path / "whole" / "checkpoint.safetensors")

    assert _untimed(resumed["history"]) == _untimed(whole["history"])
    assert all(torch.equal(resumed["state_dict"][k], whole["state_dict"][k]) for k in whole["state_dict"])


# --------------------------------------------------------------------------- one process
def _untimed(history: list) -> list:
    return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in history]


def test_single_process_run_is_deterministic_and_outside_any_process_group(tmp_path, monkeypatch):
    """Without torchrun variables `train` is one plain process, and two runs of it train the same
    model. (No loss recorded on one machine is compared: float kernels differ between CPUs and
    QCFS's floor amplifies the difference, issue 18.)"""
    from pipeline.training import train

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    overrides = ["train.epochs=2", "nq.sigma_samples=128", "train.select_samples=128", "train.augment=true"]
    runs = []
    for name in ("first", "second"):
        cfg = load_config(str(REPO / "deploy.yaml"), [f"run.dir={tmp_path / name}", *overrides])
        history = train(cfg, progress=False)["history"]
        assert not torch.distributed.is_initialized()
        runs.append((history, load_checkpoint(cfg.run_dir / "checkpoint.safetensors")["state_dict"]))
    (first, first_state), (second, second_state) = runs
    assert [r["epoch"] for r in first] == [1, 2]
    assert max(first[-1]["sigma"]) > 0  # σ was measured, not left at its initial 0
    assert _untimed(first) == _untimed(second)
    assert first_state.keys() == second_state.keys()
    assert all(torch.equal(first_state[k], second_state[k]) for k in first_state)


# --------------------------------------------------------------------------- launch plumbing
def test_launch_from_torchrun_variables():
    assert launch_from_env({}) == Launch(rank=0, local_rank=0, world_size=1)
    env = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert launch_from_env(env) == Launch(rank=3, local_rank=1, world_size=4)
    with pytest.raises(DistributedError, match="RANK=4 must be below WORLD_SIZE=4"):
        launch_from_env({**env, "RANK": "4"})
    with pytest.raises(DistributedError, match="MASTER_PORT"):
        launch_from_env({k: v for k, v in env.items() if k != "MASTER_PORT"})
    with pytest.raises(DistributedError, match="LOCAL_RANK='x' is not an integer"):
        launch_from_env({**env, "LOCAL_RANK": "x"})
    with pytest.raises(DistributedError, match="only `train` runs under torchrun"):
        require_single_process("evaluate", Launch(rank=0, local_rank=0, world_size=2))
    require_single_process("train", Launch(rank=0, local_rank=0, world_size=2))


def test_shards_cover_the_samples_in_order_and_seeds_differ_per_rank():
    for n, world in ((101, 2), (16, 3), (5, 5)):
        bounds = [shard_bounds(n, world, r) for r in range(world)]
        assert [b - a for a, b in bounds] == [len(c) for c in torch.tensor_split(torch.arange(n), world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(stop == start for (_, stop), (start, _) in zip(bounds, bounds[1:]))
    seeds = {derived_seed(0, stream, rank, epoch)
             for stream in (1, 2) for rank in range(4) for epoch in range(3)}
    assert len(seeds) == 24 and all(0 <= s < 2**63 for s in seeds)


def test_a_process_group_that_cannot_meet_is_a_clean_error(monkeypatch):
    import datetime
    import socket

    from pipeline.distributed import process_group

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name, value in {"RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(name, value)
    expected = f"rank 1 of 2 could not join the gloo process group at 127.0.0.1:{port}"
    with pytest.raises(DistributedError, match=expected):
        with process_group(timeout=datetime.timedelta(seconds=2)):
            pass
    assert not torch.distributed.is_initialized()


def test_cli_refuses_other_stages_under_several_processes(monkeypatch, capsys):
    from pipeline import cli

    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["evaluate", "--config", str(REPO / "deploy.yaml")]) == cli.EXIT_TOOLKIT_ERROR
    assert "`evaluate` runs in one process" in capsys.readouterr().err
