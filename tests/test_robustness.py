"""Nothing good is lost, nothing runs forever (issue 18, part 5): trained artifacts of another
configuration are not replaced unless the user says so; run-directory files are read only as
regular files within a size limit; the readers' checks are linear; the run directory's stale
temporary files go; distributed launches check their variables, give up on missing peers and
end with their launcher."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# imported before any training: Lava fixes the multiprocessing start method on import
from pipeline import stages
from pipeline.artifacts import (CHECKPOINT, NET_FILE, RASTER_NPZ, REPORT_JSON, TRAIN_STATE, ArtifactError,
                                RunDir, parse_report_json, read_regular, remove_stale_temporaries,
                                sha256_of, validate_report)
from pipeline.config import load_config
from pipeline.overwrite import OverwriteError, differences, export_identity

REPO = Path(__file__).resolve().parents[1]
TINY = ("data.name=digits", "nq.sigma_samples=16", "nq.init_threshold=2.0", "train.epochs=1",
        "train.select_samples=16", "train.batch_size=64", "snn.timesteps=2", "eval.timesteps=2",
        "eval.batch_size=512", "run.lava_samples=1", "run.probes=false")


def _cfg(run_dir: Path, *extra: str):
    return load_config(REPO / "deploy.yaml", [*TINY, f"run.dir={run_dir}", *extra])


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A run directory trained (1 epoch) and exported with the tiny config."""
    run_dir = tmp_path_factory.mktemp("exported")
    cfg = _cfg(run_dir)
    stages.train(cfg, progress=False)
    stages.export(cfg, progress=False)
    return run_dir


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def _shas(run_dir: Path) -> dict:
    return {p.name: sha256_of(p) for p in sorted(run_dir.iterdir()) if p.is_file()}


# --------------------------------------------------------------------------- 1: no silent replacement
@pytest.mark.parametrize("change", ["train.epochs=2", "train.seed=7", "model.arch=cnn-small", "nq.levels=8"])
def test_train_refuses_to_replace_a_checkpoint_of_another_configuration(exported, tmp_path, change):
    run_dir = _copy(exported, tmp_path)
    before = _shas(run_dir)
    with pytest.raises(OverwriteError, match=r"another configuration.*--overwrite.*run\.dir") as info:
        stages.train(_cfg(run_dir, change), progress=False)
    assert change.split("=")[0] in str(info.value)
    assert _shas(run_dir) == before, "a refused train changed the run directory"


def test_train_with_overwrite_replaces_the_checkpoint_and_what_was_made_from_it(exported, tmp_path):
    run_dir = _copy(exported, tmp_path)
    old = _shas(run_dir)
    stages.train(_cfg(run_dir, "train.seed=7", "run.overwrite=true"), progress=False)
    assert sha256_of(run_dir / CHECKPOINT) != old[CHECKPOINT]
    assert not (run_dir / NET_FILE).exists(), "model.net of the old checkpoint left beside the new one"
    report = RunDir(run_dir).read_report()
    assert report.export is None and report.config["train"]["seed"] == 7


def test_train_with_the_same_configuration_resumes_and_keeps_everything(exported, tmp_path):
    """Same configuration (keys that do not change the model may differ) = resume as before."""
    run_dir = _copy(exported, tmp_path)
    before = _shas(run_dir)
    stages.train(_cfg(run_dir, "eval.batch_size=7", "run.lava_samples=3", "train.dist_timeout_s=30"),
                 progress=False)
    after = _shas(run_dir)
    assert after[CHECKPOINT] == before[CHECKPOINT] and after[NET_FILE] == before[NET_FILE]


@pytest.mark.parametrize("change", ["snn.neuron=cuba", "quant.input_bits=7", "snn.timesteps=1"])
def test_export_refuses_to_replace_a_net_of_another_configuration(exported, tmp_path, change):
    run_dir = _copy(exported, tmp_path)
    before = sha256_of(run_dir / NET_FILE)
    with pytest.raises(OverwriteError, match=r"exported with another configuration.*--overwrite") as info:
        stages.export(_cfg(run_dir, change), progress=False)
    assert change.split("=")[0] in str(info.value)
    assert sha256_of(run_dir / NET_FILE) == before
    stages.export(_cfg(run_dir, change, "run.overwrite=true"), progress=False)
    assert sha256_of(run_dir / NET_FILE) != before


def test_export_with_the_same_configuration_replaces_and_a_foreign_net_is_kept(exported, tmp_path):
    run_dir = _copy(exported, tmp_path)
    stages.export(_cfg(run_dir, "eval.batch_size=7", "run.lava_samples=3"), progress=False)
    (run_dir / NET_FILE).write_bytes(b"a file the user put here")
    with pytest.raises(OverwriteError, match="not a network this toolkit's export wrote"):
        stages.export(_cfg(run_dir), progress=False)
    assert (run_dir / NET_FILE).read_bytes() == b"a file the user put here"


def test_the_cli_flag_overwrite_and_the_error_line(exported, tmp_path, capsys):
    from pipeline.cli import main

    run_dir = _copy(exported, tmp_path)
    argv = ["export", "--config", str(REPO / "deploy.yaml"), *sum((["--set", s] for s in TINY), []),
            "--set", f"run.dir={run_dir}", "--set", "quant.input_bits=6"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and "--overwrite" in err[-1] and "run.dir" in err[-1]
    assert main([*argv, "--overwrite"]) == 0


def test_differences_name_each_key_and_export_identity_ignores_the_rest():
    a = {"config": {"snn": {"neuron": "if_soft"}, "quant": {"input_bits": 8},
                    "eval": {"timesteps": 2, "batch_size": 5}, "run": {"dir": "x"}}, "arch": "mlp"}
    b = json.loads(json.dumps(a))
    b["config"]["eval"]["batch_size"], b["config"]["run"]["dir"] = 9, "y"
    assert differences(export_identity(a), export_identity(b)) == []
    b["config"]["snn"]["neuron"] = "cuba"
    assert differences(export_identity(a), export_identity(b)) == ["snn.neuron: 'if_soft' -> 'cuba'"]


# --------------------------------------------------------------------------- 2: regular files only
def _fifo(p: Path):
    os.mkfifo(p)


def _dev_zero(p: Path):
    p.symlink_to("/dev/zero")


def _directory(p: Path):
    p.mkdir()


def _socket(p: Path):
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(p))
    return s


def _huge(p: Path):
    with open(p, "wb") as f:  # sparse: costs no disk
        f.truncate(1 << 40)


def _dev_null_link(p: Path):
    p.symlink_to("/dev/null")


NOT_REGULAR = {"fifo": (_fifo, "FIFO"), "link-to-dev-zero": (_dev_zero, "character device"),
               "link-to-dev-null": (_dev_null_link, "character device"), "directory": (_directory, "directory"),
               "socket": (_socket, "socket"), "huge-sparse": (_huge, "bytes, more than")}


@pytest.mark.parametrize("case", sorted(NOT_REGULAR))
def test_report_json_that_is_not_a_regular_file_is_refused_at_once(tmp_path, case):
    make, what = NOT_REGULAR[case]
    keep = make(tmp_path / REPORT_JSON)
    start = time.perf_counter()
    with pytest.raises(ArtifactError, match=what) as info:
        RunDir(tmp_path).read_report()
    assert time.perf_counter() - start < 1.0
    assert REPORT_JSON in str(info.value) and "\n" not in str(info.value)
    if keep is not None:
        keep.close()


def test_a_link_to_a_regular_report_is_followed(tmp_path):
    (tmp_path / "elsewhere.json").write_text('{"format_version": 1, "test_samples": 3}')
    (tmp_path / REPORT_JSON).symlink_to(tmp_path / "elsewhere.json")
    assert RunDir(tmp_path).read_report().test_samples == 3


def test_sha256_and_input_files_refuse_a_fifo_without_blocking(tmp_path):
    from pipeline.artifacts import check_input_file

    os.mkfifo(tmp_path / "model.net")
    start = time.perf_counter()
    with pytest.raises(ArtifactError, match="FIFO"):
        sha256_of(tmp_path / "model.net")
    with pytest.raises(ArtifactError, match="run.net .*FIFO"):
        check_input_file(tmp_path / "model.net", "run.net")
    assert time.perf_counter() - start < 1.0


def test_read_regular_is_bounded(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 10)
    assert read_regular(tmp_path / "f", 10) == b"x" * 10
    with pytest.raises(ArtifactError, match="more than"):
        read_regular(tmp_path / "f", 9)


# --------------------------------------------------------------------------- 3: linear checks
def test_duplicate_key_check_is_linear(tmp_path):
    keys = ", ".join(f'"k{i}": {i}' for i in range(200_000))
    # the last key repeated: a check that counts each key's occurrences in turn reaches it last
    (tmp_path / REPORT_JSON).write_text("{" + keys + ', "k199999": 0}')
    start = time.perf_counter()
    with pytest.raises(ArtifactError, match="duplicate key 'k199999'"):
        parse_report_json(tmp_path / REPORT_JSON)
    assert time.perf_counter() - start < 2.0
    (tmp_path / REPORT_JSON).write_text('{"format_version": 1, ' + keys + "}")
    start = time.perf_counter()
    assert len(validate_report(parse_report_json(tmp_path / REPORT_JSON), "r").model_extra) == 200_000
    assert time.perf_counter() - start < 5.0


# --------------------------------------------------------------------------- 5: what does not mean what it says
@pytest.mark.parametrize("section", [
    {"lava": {"samples": 1, "agreement": float("nan"), "backend": "loihi2-sim"}},
    {"lava": {"samples": 1, "agreement": float("inf"), "backend": "loihi2-sim"}},
    {"lava": {"samples": 1, "agreement": 1.5, "backend": "loihi2-sim"}},
    {"accuracy": {"ann": float("nan")}},
    {"accuracy": {"lava": {"2": float("-inf")}}},
    {"checkpoint": {"lambda": [1.0, 0.0]}},
    {"checkpoint": {"lambda": [float("nan")]}},
    {"checkpoint": {"sigma": [-0.5]}},
    {"training": {"history": [{"epoch": 1, "snn_val": float("nan")}]}},
    {"format_version": 2},
], ids=["agreement-nan", "agreement-inf", "agreement-1.5", "ann-nan", "lava-acc-inf", "lambda-0",
        "lambda-nan", "sigma-negative", "snn-val-nan", "version-2"])
def test_report_values_that_mean_nothing_are_refused(tmp_path, section):
    (tmp_path / REPORT_JSON).write_text(json.dumps({"format_version": 1, **section}, allow_nan=True))
    with pytest.raises(ArtifactError, match=REPORT_JSON):
        RunDir(tmp_path).read_report()


# --------------------------------------------------------------------------- 6: stale temporaries
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_writers_are_removed_at_the_next_start(tmp_path):
    dead, alive = _dead_pid(), os.getppid()
    stale = [f".{REPORT_JSON}.{dead}.abc12345.tmp", f".{CHECKPOINT}.{dead}.x_y_z123.tmp",
             f".{RASTER_NPZ}.{dead}.q1w2e3r4.npz.tmp", f"{NET_FILE}.{dead}.tmp",
             f".{NET_FILE}.{dead}.abcdefgh.net.tmp.{dead}.tmp", f".{TRAIN_STATE}.k2j3h4g5.tmp"]
    kept = [f".{REPORT_JSON}.{alive}.abc12345.tmp", f"{NET_FILE}.{alive}.tmp",
            f".{NET_FILE}.{dead}.abcdefgh.net.tmp.{alive}.tmp", "notes.tmp", "mine.net.123.tmp",
            REPORT_JSON + ".bak"]
    for name in stale + kept:
        (tmp_path / name).write_text("x")
    (tmp_path / f"{NET_FILE}.{dead}.tmp.d").mkdir()  # never a directory
    os.symlink("/etc/hostname", tmp_path / f".{NIR_FILE_LINK}.{dead}.ab.tmp")
    RunDir.prepared(tmp_path)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(kept + [f"{NET_FILE}.{dead}.tmp.d", f".{NIR_FILE_LINK}.{dead}.ab.tmp"])
    assert remove_stale_temporaries(tmp_path) == []


NIR_FILE_LINK = "model.nir"


def test_a_stage_start_removes_what_a_killed_export_left(exported, tmp_path):
    run_dir = _copy(exported, tmp_path)
    dead = _dead_pid()
    leftovers = [run_dir / f".{NET_FILE}.{dead}.abcdefgh.net.tmp", run_dir / f".{REPORT_JSON}.{dead}.abcdefgh.tmp"]
    for p in leftovers:
        p.write_bytes(b"partial")
    stages.open_run(_cfg(run_dir))
    assert not any(p.exists() for p in leftovers)


# --------------------------------------------------------------------------- 4: distributed launches
BASE_ENV = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.mark.parametrize("change, named", [
    ({"WORLD_SIZE": "99999999999999999999"}, "WORLD_SIZE"), ({"WORLD_SIZE": "0"}, "WORLD_SIZE"),
    ({"WORLD_SIZE": "-3"}, "WORLD_SIZE"), ({"WORLD_SIZE": "two"}, "WORLD_SIZE"),
    ({"RANK": "2"}, "RANK"), ({"RANK": "-1"}, "RANK"), ({"LOCAL_RANK": "-1"}, "LOCAL_RANK"),
    ({"LOCAL_WORLD_SIZE": "1", "LOCAL_RANK": "1"}, "LOCAL_RANK"), ({"LOCAL_WORLD_SIZE": "9"}, "LOCAL_WORLD_SIZE"),
    ({"MASTER_PORT": "0"}, "MASTER_PORT"), ({"MASTER_PORT": "65536"}, "MASTER_PORT"),
    ({"MASTER_PORT": "http"}, "MASTER_PORT"), ({"MASTER_ADDR": "a b"}, "MASTER_ADDR"),
    ({"MASTER_ADDR": "x" * 300}, "MASTER_ADDR"),
])
def test_every_launch_variable_is_range_checked(change, named):
    from pipeline.distributed import DistributedError, launch_from_env

    with pytest.raises(DistributedError, match=f"^{named}="):
        launch_from_env({**BASE_ENV, **change})


def test_a_rank_whose_peers_never_come_gives_up_within_the_timeout():
    """Rank 1 of 2 with nobody at MASTER_PORT: a DistributedError after train.dist_timeout_s."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("import datetime, time\nfrom pipeline.distributed import process_group\nt = time.monotonic()\n"
            "try:\n    with process_group(datetime.timedelta(seconds=2)):\n        print('joined')\n"
            "except Exception as e:\n    print(type(e).__name__, round(time.monotonic() - t), e)\n")
    env = {**os.environ, **BASE_ENV, "RANK": "1", "LOCAL_RANK": "1", "MASTER_PORT": str(port), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    kind, seconds, message = out.stdout.split(" ", 2)
    assert kind == "DistributedError" and "rank 1 of 2" in message and "train.dist_timeout_s" in message
    assert int(seconds) < 10


def test_peer_timeout_comes_from_the_config(tmp_path):
    from pipeline.distributed import DEFAULT_PEER_TIMEOUT, peer_timeout

    assert peer_timeout(_cfg(tmp_path)) == DEFAULT_PEER_TIMEOUT and DEFAULT_PEER_TIMEOUT.total_seconds() == 180
    assert peer_timeout(_cfg(tmp_path, "train.dist_timeout_s=7")).total_seconds() == 7


WATCHED = """
import sys, time
from pipeline.distributed import _sigterm_as_interrupt, watch_launcher
with _sigterm_as_interrupt(), watch_launcher(poll=0.1, grace=float(sys.argv[1])):
    try:
        print("ready", flush=True)
        time.sleep(120)
    except KeyboardInterrupt:
        open(sys.argv[3], "w").close()  # the main thread was told, and its finally blocks run
        if sys.argv[2] == "stuck":
            time.sleep(120)  # a main thread that does not end: the watchdog's hard exit
        sys.exit(130)
"""
LAUNCHER = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", *sys.argv[1:]], stdout=subprocess.PIPE, text=True)
print(child.pid, child.stdout.readline().strip(), flush=True)
child.wait()
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


@pytest.mark.parametrize("mode", ["interruptible", "stuck"])
def test_a_worker_ends_when_its_launcher_is_killed(mode, tmp_path):
    """The launcher gets kill -9: its worker is interrupted (SIGTERM: KeyboardInterrupt in the main
    thread) within a poll, and ends even if its main thread does not, after the grace time."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    told = tmp_path / "interrupted"
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, WATCHED, "1.5", mode, str(told)], env=env,
                                stdout=subprocess.PIPE, text=True)
    worker = None
    try:
        pid, ready = launcher.stdout.readline().split()
        worker = int(pid)
        assert ready == "ready" and not _gone(worker)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        start = time.monotonic()
        while not _gone(worker) and time.monotonic() < start + 8:
            time.sleep(0.05)
        assert _gone(worker), "the worker outlived its launcher"
        assert told.exists(), "the worker's main thread was not interrupted"
        assert (time.monotonic() - start >= 1.0) == (mode == "stuck")
    finally:
        launcher.kill()
        if worker is not None and not _gone(worker):
            os.kill(worker, signal.SIGKILL)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _tree_state(run_dir: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} if run_dir.exists() else {}


@pytest.mark.slow
def test_torchrun_killed_takes_its_training_processes_with_it(tmp_path):
    """kill -9 of torchrun during training: the workers end within seconds and write nothing after."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pipeline",
           "train", "--config", str(REPO / "deploy.yaml"), *sum((["--set", s] for s in TINY), []),
           "--set", f"run.dir={run_dir}", "--set", "train.epochs=200"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    log = open(tmp_path / "torchrun.log", "wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / TRAIN_STATE).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, (tmp_path / "torchrun.log").read_text()[-3000:]
        workers = [w for w in _descendants(proc.pid) if "pipeline" in Path(f"/proc/{w}/cmdline").read_text()]
        assert len(workers) >= 2
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + WATCHDOG_LIMIT_S
        while not all(map(_gone, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(map(_gone, workers)), "training processes outlived torchrun"
        after = _tree_state(run_dir)
        time.sleep(3)
        assert _tree_state(run_dir) == after, "the run directory was written after the workers ended"
    finally:
        for pid in [*workers, proc.pid]:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
        log.close()


#: the watchdog's poll plus its grace (a main thread stuck in a C call)
WATCHDOG_LIMIT_S = 15


def test_a_nir_export_of_another_configuration_is_not_replaced_either(tmp_path):
    """model.nir (the float network): another snn.* refuses; a quant.* change does not matter."""
    from pipeline.artifacts import NIR_FILE

    run_dir = tmp_path / "run"
    cfg = _cfg(run_dir, "snn.neuron=cuba", "export.format=nir")
    stages.train(cfg, progress=False)
    stages.export(cfg, progress=False)
    stages.export(_cfg(run_dir, "snn.neuron=cuba", "export.format=nir", "quant.input_bits=6"), progress=False)
    before = sha256_of(run_dir / NIR_FILE)
    with pytest.raises(OverwriteError, match="snn.readout"):
        stages.export(_cfg(run_dir, "snn.neuron=cuba", "export.format=nir", "snn.readout=spikes"), progress=False)
    assert sha256_of(run_dir / NIR_FILE) == before


def test_import_of_another_graph_does_not_replace_the_imported_one_silently(tmp_path):
    """A second import of another graph would leave model.net of the first: refused, or with
    run.overwrite the old graph goes with the files made from it."""
    from hardware.formats.nir import read_nir, write_nir
    from pipeline.artifacts import IMPORTED_NIR
    from tests.test_nir import SNNTORCH_FILE

    other = tmp_path / "other.nir"
    net = read_nir(SNNTORCH_FILE)
    net.weighted_layers[0].weight[0].flat[0] += 0.5
    write_nir(net, other)
    run_dir = tmp_path / "run"
    cfg = _cfg(run_dir, f"import.nir={SNNTORCH_FILE}")
    stages.import_nir(cfg, progress=False)
    stages.import_nir(cfg, progress=False)  # the same graph again: fine
    stages.export(cfg, progress=False)
    before = sha256_of(run_dir / IMPORTED_NIR)
    with pytest.raises(OverwriteError, match="imported_sha256"):
        stages.import_nir(_cfg(run_dir, f"import.nir={other}"), progress=False)
    assert sha256_of(run_dir / IMPORTED_NIR) == before and (run_dir / NET_FILE).exists()
    stages.import_nir(_cfg(run_dir, f"import.nir={other}", "run.overwrite=true"), progress=False)
    assert not (run_dir / NET_FILE).exists(), "model.net of the old graph left beside the new one"
