"""train.activity_penalty: weight 0 trains exactly as the plain loss; a positive weight lowers the
spike rate; the key takes no negative weight."""
import pytest
import torch
from pydantic import ValidationError
from safetensors import safe_open

import pipeline.training as training
from models.architectures import nq_layers
from pipeline.config import load_config
from pipeline.data import load_dataset


def _cfg(run_dir, *extra):
    return load_config("deploy.yaml", [f"run.dir={run_dir}", "train.epochs=1", "nq.sigma_samples=64",
                                       "train.select_samples=64", *extra])


def _weights(run_dir) -> dict[str, torch.Tensor]:
    with safe_open(str(run_dir / training.TRAIN_STATE), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith("model/")}


def _mean_rate(cfg) -> float:
    """Mean over NQ layers of the spike rate on the validation split, by the selected model."""
    model = training.model_from_checkpoint(training.load_checkpoint(cfg.run_dir / training.CHECKPOINT))
    val = load_dataset(cfg.data, seed=cfg.train.seed).val
    x = torch.stack([val[i][0] for i in range(len(val))])
    model.eval()
    with torch.no_grad(), training._spike_rates(model, True) as rates:
        model(x)
        return float(torch.stack(rates).mean())


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    cfg = _cfg(tmp_path_factory.mktemp("plain"), "train.activity_penalty=0")
    training.train(cfg, progress=False)
    return cfg


def test_zero_weight_is_the_plain_loss_bit_for_bit(plain, tmp_path, monkeypatch):
    # the penalised path (hooks on, loss + 0 · rate) must leave every weight as the plain path does
    monkeypatch.setattr(training, "_penalised", lambda cfg: True)
    cfg = _cfg(tmp_path, "train.activity_penalty=0")
    training.train(cfg, progress=False)
    a, b = _weights(plain.run_dir), _weights(tmp_path)
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def test_positive_weight_lowers_the_spike_rate(plain, tmp_path):
    cfg = _cfg(tmp_path, "train.activity_penalty=5")
    training.train(cfg, progress=False)
    a, b = _weights(plain.run_dir), _weights(tmp_path)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert _mean_rate(cfg) < _mean_rate(plain)


def test_rates_are_spikes_per_neuron_per_step():
    from models.nq import NQActivation
    layer = NQActivation(levels=4, activation="cuba-matched", timesteps=4, init_threshold=2.0)
    model = torch.nn.Sequential(layer)
    with training._spike_rates(model, True) as rates:
        model(torch.tensor([0.0, 3.0, 1.0]))  # counts 0, 4, 1 of T = 4 (strict v > θ: z = θ/2 fires at step 3)
    assert float(rates[0]) == pytest.approx((0 + 1 + 0.25) / 3)
    assert nq_layers(model) == [layer]


def test_negative_weight_is_refused(tmp_path):
    with pytest.raises((ValidationError, ValueError), match="activity_penalty"):
        _cfg(tmp_path, "train.activity_penalty=-1")
