"""Initial thresholds from data (nq.init_threshold auto): the percentile, the order through the
network, what is restored, and when the pipeline calibrates (fresh start only)."""
import numpy as np
import pytest
import torch
from torch import nn

from models.architectures import build_model, nq_layers
from models.calibrate import DEFAULT_PERCENTILE, init_thresholds_from_data
from models.nq import ActivationError, NQActivation, qcfs
from pipeline.config import ConfigError, load_config
from pipeline.data import load_dataset
from pipeline.distributed import single_process
from pipeline.training import TRAIN_STATE, _start_session

LEVELS = 4


def tiny() -> nn.Sequential:
    """2 -> 3 -> 2 with two NQ layers; on [0, 1] inputs layer 1 stays below 1 = λ/(2L) at λ = 8."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 3), NQActivation(LEVELS, init_threshold=8.0),
                        nn.Linear(3, 2), NQActivation(LEVELS, init_threshold=8.0))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.5, 0.3], [-1.0, 1.0], [0.3, 0.3]]))
        net[0].bias.copy_(torch.tensor([0.1, -0.2, 0.0]))
        net[2].weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [-0.5, 2.0, 0.25]]))
        net[2].bias.copy_(torch.tensor([0.05, 0.0]))
    return net


def batches() -> list[torch.Tensor]:
    x = torch.rand(3, 16, 2, generator=torch.Generator().manual_seed(1))
    return list(x)


def percentile_of_positives(values: torch.Tensor, p: float) -> float:
    v = values.detach().double().numpy().ravel()
    return float(np.percentile(v[v > 0], p))


def test_percentile_of_each_layer_measured_in_order_by_hand():
    net, xs = tiny(), batches()
    lambdas = init_thresholds_from_data(net, xs, 99.0)
    x = torch.cat(xs)
    pre1 = net[0](x)
    lam1 = percentile_of_positives(pre1, 99.0)
    # layer 2 sees layer 1 quantized at its NEW λ, not at the 8 it was built with
    pre2 = net[2](qcfs(pre1, torch.tensor(lam1), LEVELS))
    lam2 = percentile_of_positives(pre2, 99.0)
    assert lambdas == pytest.approx([lam1, lam2], rel=1e-6)
    assert [float(m.threshold) for m in nq_layers(net)] == lambdas
    # measured after λ1 = 8 instead, layer 2 would see only its bias (every input < 4 rounds to 0)
    out_of_order = percentile_of_positives(net[2](qcfs(pre1, torch.tensor(8.0), LEVELS)), 99.0)
    assert out_of_order == pytest.approx(0.05) and lam2 != pytest.approx(out_of_order)


def test_modes_noise_and_batchnorm_statistics_are_restored():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), NQActivation(LEVELS, noise=True))
    net[2].sigma.fill_(0.3)
    net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items() if "threshold" not in k}
    init_thresholds_from_data(net, batches())
    after = {k: v for k, v in net.state_dict().items() if "threshold" not in k}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not net.training and net[2].noise


def test_a_layer_no_input_drives_above_zero_keeps_its_threshold():
    net = tiny()
    with torch.no_grad():
        net[2].weight.fill_(-1.0)
        net[2].bias.fill_(-1.0)
    lambdas = init_thresholds_from_data(net, batches())
    assert lambdas[0] != 8.0 and lambdas[1] == 8.0


@pytest.mark.parametrize("percentile", [0, -1, 100.5])
def test_bad_percentile_or_no_batches_are_refused(percentile):
    with pytest.raises(ActivationError, match="percentile"):
        init_thresholds_from_data(tiny(), batches(), percentile)
    with pytest.raises(ActivationError, match="batch"):
        init_thresholds_from_data(tiny(), [])


# ------------------------------------------------------------------ the pipeline's use

@pytest.fixture(scope="module")
def digits():
    return load_dataset(load_config("deploy.yaml").data, seed=0)


def _session_lambdas(tmp_path, data, *overrides) -> tuple[list[float], nn.Module]:
    cfg = load_config("deploy.yaml", [f"run.dir={tmp_path}", *overrides])
    model = _start_session(cfg, data, single_process(torch.device("cpu"))).model
    return [float(m.threshold) for m in nq_layers(model)], model


def test_auto_is_the_default_and_calibrates_a_fresh_run(tmp_path, digits):
    assert load_config("deploy.yaml").nq.init_threshold == "auto"
    lambdas, _ = _session_lambdas(tmp_path, digits)
    assert len(lambdas) == 3 and all(0 < v < 8.0 for v in lambdas) and len(set(lambdas)) == 3


def test_a_run_that_resumes_is_not_recalibrated(tmp_path, digits):
    (tmp_path / TRAIN_STATE).write_bytes(b"")  # its λ come from this file (load_train_state)
    lambdas, _ = _session_lambdas(tmp_path, digits)
    assert lambdas == [8.0] * 3


def test_a_number_keeps_the_built_model_exactly(tmp_path, digits):
    lambdas, model = _session_lambdas(tmp_path, digits, "nq.init_threshold=2")
    torch.manual_seed(0)
    plain = build_model("cnn-small", digits.input_shape, digits.num_classes, LEVELS, True, 2.0)
    assert lambdas == [2.0] * 3
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values()))


def test_config_accepts_auto_or_a_positive_number_only():
    assert load_config("deploy.yaml", ["nq.init_threshold=8"]).nq.start_threshold == 8.0
    assert load_config("deploy.yaml").nq.start_threshold == 8.0  # until the data set it
    for bad in ("0", "-1", "automatic", "true", "null"):
        with pytest.raises(ConfigError, match="nq.init_threshold must be 'auto' or a number > 0"):
            load_config("deploy.yaml", [f"nq.init_threshold={bad}"])
    assert 99 <= DEFAULT_PERCENTILE <= 100
