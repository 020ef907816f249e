"""The finetune stage on digits: zero fine-tuning changes nothing; fine-tuning keeps the network
it started from, selects on validation, never stacks, and is undone by finetune.epochs 0; the
CLI runs it; a fine-tuned network exports and runs in Lava equal to the simulator."""
import json
import shutil
from pathlib import Path
from typing import get_args

import pytest
import torch
from safetensors import safe_open

from models.snn_unroll import SURROGATES
from pipeline import cli, stages
from pipeline.config import Surrogate, load_config
from pipeline.data import load_dataset
from pipeline.finetune import (CONVERTED, RECORD, FinetuneError, _selection_accuracy, finetune, finetune_model,
                               tensors_sha256)
from pipeline.checkpoints import load_checkpoint, model_from_checkpoint
from pipeline.training import selection_set, train


def _cfg(run_dir, *extra):
    return load_config("deploy.yaml", [f"run.dir={run_dir}", "train.epochs=2", "snn.timesteps=2",
                                       "eval.timesteps=2", "nq.sigma_samples=64", *extra])


def _tensors(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    train(_cfg(root), progress=False)
    return root


@pytest.fixture
def run_dir(trained, tmp_path):
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def test_surrogate_keys_agree():
    assert get_args(Surrogate) == SURROGATES


def test_zero_epochs_change_nothing(run_dir):
    before = (run_dir / "checkpoint.safetensors").read_bytes()
    assert finetune(_cfg(run_dir, "finetune.epochs=0"), progress=False) == {"epochs": 0, "action": "off"}
    assert (run_dir / "checkpoint.safetensors").read_bytes() == before
    cfg = _cfg(run_dir, "finetune.epochs=0")
    model = model_from_checkpoint(load_checkpoint(run_dir / "checkpoint.safetensors"))
    state, result = finetune_model(model, cfg, load_dataset(cfg.data, seed=0), 1.0)
    assert _same(state, _tensors(run_dir / "checkpoint.safetensors"))
    assert result["history"] == [] and result["snn_val_after"] == result["snn_val_before"]


def test_finetune_keeps_the_start_selects_and_never_stacks(run_dir):
    original = _tensors(run_dir / "checkpoint.safetensors")
    cfg = _cfg(run_dir, "finetune.epochs=2", "finetune.lr=0.003")
    result = finetune(cfg, progress=False)
    assert result["action"] == "finetuned" and len(result["history"]) == 2
    assert result["snn_val_after"] >= result["snn_val_before"]
    assert _same(_tensors(run_dir / CONVERTED), original)
    tuned = load_checkpoint(run_dir / "checkpoint.safetensors")
    record = json.loads((run_dir / RECORD).read_text())
    assert record["finetuned_sha256"] == tensors_sha256(tuned["state_dict"])
    if result["best_epoch"] > 0:
        assert not _same(tuned["state_dict"], original)
    # the kept accuracy is the saved network's, measured as selection measures it
    data = load_dataset(cfg.data, seed=0)
    assert _selection_accuracy(model_from_checkpoint(tuned), cfg, data, selection_set(cfg, data),
                               tuned["output_threshold"], torch.device("cpu")) == result["snn_val_after"]
    # same settings: nothing to do; other settings start again from the kept network
    assert finetune(cfg, progress=False)["action"] == "unchanged"
    again = finetune(_cfg(run_dir, "finetune.epochs=1", "finetune.lr=0.003"), progress=False)
    assert again["snn_val_before"] == result["snn_val_before"]
    assert _same(_tensors(run_dir / CONVERTED), original)
    # off: the converted network is the checkpoint again
    assert finetune(_cfg(run_dir, "finetune.epochs=0"), progress=False)["action"] == "restored"
    assert _same(_tensors(run_dir / "checkpoint.safetensors"), original)


def test_a_kept_network_that_is_not_the_recorded_one_is_refused(run_dir):
    cfg = _cfg(run_dir, "finetune.epochs=1", "finetune.lr=0.003")
    result = finetune(cfg, progress=False)
    if result["best_epoch"] == 0:
        pytest.skip("fine-tuning kept the converted network: nothing to tell apart")
    shutil.copy(run_dir / "checkpoint.safetensors", run_dir / CONVERTED)
    with pytest.raises(FinetuneError, match=CONVERTED):
        finetune(_cfg(run_dir, "finetune.epochs=2"), progress=False)
    (run_dir / RECORD).write_text("{}")
    with pytest.raises(FinetuneError, match=RECORD):
        finetune(cfg, progress=False)


def test_cli_runs_the_stage(run_dir, capsys):
    code = cli.main(["finetune", "--config", "deploy.yaml", "--json", "--set", f"run.dir={run_dir}",
                     "--set", "train.epochs=2", "--set", "snn.timesteps=2", "--set", "eval.timesteps=2",
                     "--set", "finetune.epochs=1"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["action"] == "finetuned" and out["epochs"] == 1 and "wall_time_s" in out


@pytest.mark.lava
@pytest.mark.parametrize("neuron", ["if_soft", "cuba"])
def test_finetuned_network_runs_in_lava_as_simulated(tmp_path, neuron):
    cfg = _cfg(tmp_path, f"snn.neuron={neuron}", "train.epochs=3", "finetune.epochs=2", "finetune.lr=0.003",
               "run.lava_samples=8", "run.probes=false")
    report = stages.run_all(cfg, progress=False)
    assert (tmp_path / CONVERTED).exists() and (tmp_path / RECORD).exists()
    record = json.loads((tmp_path / RECORD).read_text())
    assert record["finetuned_sha256"] != record["converted_sha256"]  # it did fine-tune
    assert report["lava"]["samples"] == 8
    assert report["lava"]["agreement"] == 1.0, report["lava"]["disagreeing_samples"]


def test_train_overwrite_clears_the_fine_tuning_files(tmp_path):
    # a re-trained checkpoint must not sit beside the start and record of an older fine-tuning
    from pipeline.artifacts import CHECKPOINT, FINETUNE_RECORD, FINETUNE_START
    from pipeline.overwrite import clear_trained

    for name in (CHECKPOINT, FINETUNE_START, FINETUNE_RECORD):
        (tmp_path / name).write_bytes(b"x")
    removed = clear_trained(tmp_path)
    assert {CHECKPOINT, FINETUNE_START, FINETUNE_RECORD} <= set(removed)
    assert not any((tmp_path / n).exists() for n in (CHECKPOINT, FINETUNE_START, FINETUNE_RECORD))
