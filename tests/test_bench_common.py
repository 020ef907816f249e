"""The benchmarks' result rows say how they were made, and their configs come from the
pipeline's own loader (``--set`` as on the pipeline's command line). Issue 18, part 6."""
from __future__ import annotations

import json

import pytest
import torch

from bench import board_path, nq_vs_qcfs
from bench.bench_common import (PROVENANCE_PACKAGES, bench_config, code_state, provenance,
                                provenance_summary, row_provenance, with_provenance)
from pipeline.config import ConfigError

REQUIRED = {"commit", "dirty", "torch_threads", "torch_interop_threads", "omp_num_threads", "cpu",
            "versions"}


def test_provenance_records_commit_threads_cpu_and_versions():
    p = provenance()
    assert REQUIRED <= set(p)
    assert p["torch_threads"] == torch.get_num_threads()
    assert p["torch_interop_threads"] == torch.get_num_interop_threads()
    assert isinstance(p["cpu"], str) and p["cpu"]
    assert set(p["versions"]) == {"python", *PROVENANCE_PACKAGES}
    assert p["versions"]["torch"] == torch.__version__.split("+")[0]
    assert all(p["versions"][k] for k in ("python", "torch", "numpy", "lava-nc", "lava-dl", "nqloihi"))
    state = code_state()  # this test runs inside the project's git checkout
    assert len(state["commit"]) == 40 and isinstance(state["dirty"], bool)
    json.dumps(p)  # a row is one JSON line


def test_provenance_follows_the_thread_count():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert provenance()["torch_threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_rows_with_and_without_provenance_are_both_read():
    old = {"arm": "qcfs", "seed": 0}
    new = with_provenance(old)
    assert row_provenance(old) is None and row_provenance(new)["commit"] == code_state()["commit"]
    assert provenance_summary([old, new]).startswith("1 of 2 rows")


def _row(arm: str, seed: int, acc: float, **extra) -> dict:
    snn = {str(t): acc for t in (1, 2, 4, 8)}
    return {"arm": arm, "seed": seed, "epochs": 4, "arch": "cnn-small", "dataset": "digits",
            "neuron": "if_soft", "set": [],
            "selected": {"ann": acc, "snn_fixed": snn, "snn_fixed_spike_vote": snn},
            "last": {"ann": acc, "snn_fixed": snn},
            "cost_s": {"train_s": 1.0, "sigma_s": 0.1, "select_s": 0.1}, **extra}


def test_reports_read_old_rows_and_rows_with_provenance():
    rows = [_row("qcfs", 0, 0.5), with_provenance(_row("qcfs", 1, 0.6)),
            with_provenance(_row("nq-sigma-T1", 0, 0.7)), _row("nq-sigma-T1", 1, 0.8)]
    assert "2 of 4 rows record their provenance" in nq_vs_qcfs.report(rows)
    cuba = [_row("if_soft", 0, 0.5), with_provenance(_row("cuba-matched", 0, 0.6))]
    assert "1 of 2 rows record their provenance" in board_path.report(cuba)


def test_set_data_name_reaches_the_nq_vs_qcfs_run_config():
    args = nq_vs_qcfs.parse_args(["--set", "data.name=digits", "--set", "train.lr=0.01"])
    cfg = nq_vs_qcfs.arm_config(args, "qcfs", 0)
    assert cfg.data.name == "digits"  # --set wins over the script's --dataset default
    assert cfg.train.lr == 0.01 and cfg.nq.noise is False and cfg.train.seed == 0
    assert nq_vs_qcfs._run_key(cfg, "qcfs")[4] == "digits"  # the results file says so too


def test_set_data_name_reaches_the_board_path_run_config():
    args = board_path.parse_args(["--set", "data.name=digits"])
    cfg = board_path.arm_config(args, "cuba-matched", 2)
    assert cfg.data.name == "digits" and cfg.activation == "cuba-matched" and cfg.train.seed == 2
    assert board_path._run_key(args, "cuba-matched", 2, cfg)["dataset"] == "digits"


def test_without_set_the_script_defaults_stand():
    cfg = nq_vs_qcfs.arm_config(nq_vs_qcfs.parse_args([]), "nq-sigma-T1", 1)
    assert cfg.data.name == "fashion-mnist" and cfg.snn.sigma_t == 1 and cfg.train.epochs == 4


def test_a_bad_set_is_the_pipelines_config_error():
    with pytest.raises(ConfigError, match="data.nme"):
        bench_config("deploy.yaml", [], ["data.nme=digits"])


@pytest.mark.slow
def test_a_row_written_by_nq_vs_qcfs_names_its_dataset_and_provenance(tmp_path):
    results = tmp_path / "rows.jsonl"
    nq_vs_qcfs.main(["--set", "data.name=digits", "--epochs", "1", "--seeds", "0", "--arms", "qcfs",
                     "--select-samples", "100", "--out", str(tmp_path / "runs"), "--results", str(results)])
    row = json.loads(results.read_text())
    assert row["dataset"] == "digits" and row["epochs"] == 1
    assert REQUIRED <= set(row["provenance"]) and row["provenance"]["commit"] == code_state()["commit"]


def test_a_benchmark_keeps_the_config_it_started_with(tmp_path):
    config = tmp_path / "deploy.yaml"
    config.write_text("train:\n  epochs: 3\n")
    assert bench_config(config).train.epochs == 3
    config.write_text("train:\n  epochs: 5\n  no_such_key: 1\n")  # edited while the benchmark runs
    assert bench_config(config, ["train.seed=2"]).train.epochs == 3
