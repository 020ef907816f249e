"""A diverging training run stops at the first bad step with a clear error and loses nothing."""
import hashlib

import pytest
import torch

from pipeline import training
from pipeline.config import load_config
from pipeline.training import (CHECKPOINT, TRAIN_STATE, TrainingDiverged, divergence_hint, first_non_finite_grad,
                               load_checkpoint, train)


def _cfg(tmp_path, *extra):
    return load_config("deploy.yaml", [f"run.dir={tmp_path}", "train.select_samples=100", *extra])


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_nan_loss_stops_training_and_keeps_the_last_epoch(tmp_path, monkeypatch):
    cfg, kept, original_epoch = _cfg(tmp_path, "train.epochs=2"), {}, training._train_epoch

    class NanLoss(torch.nn.CrossEntropyLoss):
        def forward(self, logits, target):
            return super().forward(logits, target) * float("nan")

    def second_epoch_diverges(s, epoch, progress):
        if epoch == 1:  # epoch 1 finished and was saved: its files must survive
            kept.update({name: _digest(tmp_path / name) for name in (CHECKPOINT, TRAIN_STATE)})
            monkeypatch.setattr(training.nn, "CrossEntropyLoss", NanLoss)
        return original_epoch(s, epoch, progress)

    monkeypatch.setattr(training, "_train_epoch", second_epoch_diverges)
    with pytest.raises(TrainingDiverged, match=r"epoch 2, batch 1: the gradient of .* lower train.lr"):
        train(cfg, progress=False)
    assert kept and {name: _digest(tmp_path / name) for name in kept} == kept
    monkeypatch.undo()  # the run resumes from the kept epoch
    assert [r["epoch"] for r in train(cfg, progress=False)["history"]] == [1, 2]


def test_cuba_matched_at_one_step_is_stopped_with_the_recipe_that_works(tmp_path):
    # the single-step activation's threshold gradient is −z/λ summed over a layer (a floor
    # without rounding): λ is driven through 0 (on digits in epoch 3, on Fashion-MNIST in epoch 1)
    with pytest.raises(TrainingDiverged, match=r"threshold λ of NQ layer \d .*nq.activation: qcfs, "
                                               r"snn.cuba_shift: half-bias"):
        train(_cfg(tmp_path, "snn.neuron=cuba", "snn.timesteps=1", "eval.timesteps=1", "train.epochs=5"),
              progress=False)
    assert load_checkpoint(tmp_path / CHECKPOINT)["epoch"] < 5  # a finished epoch (finite: it loads)


@pytest.mark.parametrize("extra, culprit, expected", [
    ((), "threshold λ of NQ layer 0 (now -0.3)", "lower train.lr"),  # QCFS
    (("snn.neuron=cuba", "snn.timesteps=1"), "conv.weight", "nq.activation: qcfs, snn.cuba_shift: half-bias"),
    (("snn.neuron=cuba", "snn.timesteps=2"), "threshold λ of NQ layer 0 (now -0.3)",
     "fine-tune at T = 2 (finetune.epochs: 2), or lower train.lr"),
    (("snn.neuron=cuba", "snn.timesteps=2"), "conv.weight", "lower train.lr"),
])
def test_divergence_hint_names_the_qcfs_recipe_where_the_matched_threshold_collapsed(tmp_path, extra,
                                                                                       culprit, expected):
    # cuba-matched λ went through 0 at T = 2 on resnet-small too (bench/low_latency.py)
    hint = divergence_hint(_cfg(tmp_path, *extra), culprit)
    assert expected in hint
    assert ("half-bias" in hint) == (expected != "lower train.lr")


def test_first_non_finite_grad_names_the_parameter():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    model(torch.ones(1, 2)).sum().backward()
    assert first_non_finite_grad(model) is None
    model[1].bias.grad[0] = float("inf")
    assert first_non_finite_grad(model) == "1.bias"
