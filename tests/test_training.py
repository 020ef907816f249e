"""Short NQ training on digits: accuracy, learned sigma, checkpoint, resume (also after kill -9)."""
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from pipeline import stages
from pipeline.config import load_config
from pipeline.data import load_dataset
from pipeline.training import (CHECKPOINT, TRAIN_STATE, ann_accuracy, load_checkpoint, model_from_checkpoint,
                               train)


def _cfg(tmp_path, *extra):
    return load_config("deploy.yaml", [f"run.dir={tmp_path}", *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("train")
    cfg = _cfg(run_dir, "train.epochs=12")
    result = train(cfg, progress=False)
    return cfg, result


def test_short_training_reaches_accuracy_and_learns_sigma(trained):
    cfg, result = trained
    ckpt = load_checkpoint(cfg.run_dir / CHECKPOINT)
    model = model_from_checkpoint(ckpt)
    data = load_dataset(cfg.data, seed=cfg.train.seed)
    acc = ann_accuracy(model, data.test, 256, torch.device("cpu"))
    assert acc >= 0.95, f"ANN test accuracy {acc:.3f} < 0.95"
    # cnn-small: three NQ layers (the output layer is a plain Linear); with T = L = 4 the first
    # layer's residual is (up to float32 rounding) zero, the later ones are not
    assert len(ckpt["sigma"]) == 3 and all(s > 1e-3 for s in ckpt["sigma"][1:]), ckpt["sigma"]
    # sigma lives in the model's buffers too, so it is saved with the state dict
    sigmas = [float(v) for k, v in ckpt["state_dict"].items() if k.endswith("sigma")]
    assert sigmas == pytest.approx(ckpt["sigma"])
    # the kept epoch is the best by SNN validation accuracy (never the test set)
    best = max(result["history"], key=lambda r: r["snn_val"])
    assert ckpt["metrics"]["snn_val"] == best["snn_val"]
    # the per-epoch cost split is recorded
    assert all(r["train_s"] > 0 and r["sigma_s"] > 0 and r["select_s"] > 0 for r in result["history"])
    assert ckpt["output_threshold"] > 0


def test_checkpoint_is_safetensors_with_a_json_document(trained):
    cfg, _ = trained
    with safe_open(str(cfg.run_dir / CHECKPOINT), "pt") as f:
        doc = json.loads(f.metadata()["nqloihi"])
        names = set(f.keys())
    assert doc["format_version"] == 3 and doc["kind"] == "checkpoint" and doc["arch"] == "cnn-small"
    assert doc["config"] == cfg.to_dict() and "state_dict" not in doc
    assert names == set(load_checkpoint(cfg.run_dir / CHECKPOINT)["state_dict"])
    assert not (cfg.run_dir / "checkpoint.pt").exists() and not (cfg.run_dir / "train_state.pt").exists()


def _state_epoch(path) -> int:
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["nqloihi"])["epoch"]


def test_resume_after_interruption(tmp_path, monkeypatch):
    import pipeline.training as training_module

    full = train(_cfg(tmp_path / "full", "train.epochs=2"), progress=False)
    cfg = _cfg(tmp_path / "cut", "train.epochs=2")
    original = training_module.measure_residual
    calls = []

    def interrupt_in_second_epoch(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(training_module, "measure_residual", interrupt_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    monkeypatch.setattr(training_module, "measure_residual", original)
    assert _state_epoch(tmp_path / "cut" / TRAIN_STATE) == 0  # epoch 1 kept
    resumed = train(cfg, progress=False)
    assert [r["epoch"] for r in resumed["history"]] == [1, 2]
    timing = ("train_s", "sigma_s", "select_s")
    assert _without(resumed["history"][0], timing) == _without(full["history"][0], timing)
    assert resumed["history"][1]["loss"] == pytest.approx(full["history"][1]["loss"])


def _without(record: dict, keys) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


def test_legacy_run_directory_is_refused_before_training(tmp_path):
    from pipeline.training import CheckpointError

    (tmp_path / "train_state.pt").write_bytes(b"PK\x03\x04 an old torch.save archive")
    with pytest.raises(CheckpointError, match="older version"):
        train(_cfg(tmp_path, "train.epochs=1"), progress=False)
    assert not (tmp_path / CHECKPOINT).exists()


def test_architecture_too_deep_for_the_images_is_a_clean_error(tmp_path):
    from hardware.errors import ToolkitError

    with pytest.raises(ToolkitError, match="vgg16 needs images of at least 32×32.*8, 8"):
        train(_cfg(tmp_path, "train.epochs=1", "model.arch=vgg16"), progress=False)


@pytest.mark.parametrize("where", ["f", "f/run"])
def test_run_dir_that_cannot_be_a_directory_is_a_clean_error(tmp_path, where):
    from pipeline.artifacts import ArtifactError

    (tmp_path / "f").write_text("a file where run.dir should be")
    with pytest.raises(ArtifactError, match="run.dir .* a file, not a directory"):
        train(_cfg(tmp_path, "train.epochs=1", f"run.dir={tmp_path / where}"), progress=False)


def test_options_augment_sigma_T_spike_readout_and_selection_subset(tmp_path):
    cfg = _cfg(tmp_path, "train.epochs=2", "train.augment=true", "snn.sigma_timesteps=1",
               "snn.readout=spikes", "train.select_samples=64", "eval.timesteps=4")
    result = train(cfg, progress=False)
    assert [r["epoch"] for r in result["history"]] == [1, 2]
    # σ measured at T = 1 is not the T = L = 4 residual: the first layer's residual is not zero
    assert result["history"][-1]["sigma"][0] > 1e-3
    evaluated = stages.evaluate(cfg, progress=False)
    assert evaluated["readout"] == "spikes" and set(evaluated["accuracy"]["snn_float"]) == {"1", "2", "3", "4"}
