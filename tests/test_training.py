"""Short NQ training on digits: accuracy, learned sigma, checkpoint, resume."""
import pytest
import torch

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


def test_checkpoint_loads_with_weights_only(trained):
    cfg, _ = trained
    obj = torch.load(cfg.run_dir / CHECKPOINT, weights_only=True)
    assert obj["format_version"] == 2 and "state_dict" in obj and "config" in obj


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
    assert torch.load(tmp_path / "cut" / TRAIN_STATE, weights_only=True)["epoch"] == 0  # epoch 1 kept
    resumed = train(cfg, progress=False)
    assert [r["epoch"] for r in resumed["history"]] == [1, 2]
    timing = ("train_s", "sigma_s", "select_s")
    assert _without(resumed["history"][0], timing) == _without(full["history"][0], timing)
    assert resumed["history"][1]["loss"] == pytest.approx(full["history"][1]["loss"])


def _without(record: dict, keys) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


class _Payload:
    def __reduce__(self):  # would run code if it were unpickled
        import os
        return (os.mkdir, ("/tmp/nqloihi-should-not-exist",))


@pytest.mark.parametrize("content", ["garbage", "pickle"])
def test_corrupt_or_malicious_checkpoint_is_refused(tmp_path, content):
    import os
    import pickle

    path = tmp_path / CHECKPOINT
    if content == "garbage":
        path.write_bytes(b"not a checkpoint")
    else:
        torch.save({"format_version": 1, "evil": _Payload()}, path, pickle_module=pickle)
    from pipeline.training import CheckpointError

    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)
    assert not os.path.exists("/tmp/nqloihi-should-not-exist")


def test_missing_checkpoint_says_what_to_run(tmp_path):
    from pipeline.training import CheckpointError

    with pytest.raises(CheckpointError, match="pipeline train"):
        load_checkpoint(tmp_path / CHECKPOINT)


def test_options_augment_sigma_T_spike_readout_and_selection_subset(tmp_path):
    from pipeline import stages

    cfg = _cfg(tmp_path, "train.epochs=2", "train.augment=true", "snn.sigma_timesteps=1",
               "snn.readout=spikes", "train.select_samples=64", "eval.timesteps=4")
    result = train(cfg, progress=False)
    assert [r["epoch"] for r in result["history"]] == [1, 2]
    # σ measured at T = 1 is not the T = L = 4 residual: the first layer's residual is not zero
    assert result["history"][-1]["sigma"][0] > 1e-3
    evaluated = stages.evaluate(cfg, progress=False)
    assert evaluated["readout"] == "spikes" and set(evaluated["accuracy"]["snn_float"]) == {"1", "2", "3", "4"}
