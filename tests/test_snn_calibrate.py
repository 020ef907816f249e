"""Calibration of the converted network (``snn.calibrate``, :mod:`models.snn_calibrate`): a
network whose SNN already reproduces its ANN comes back unchanged; a mismatched one gets
closer to its ANN; bad input is refused by name; a calibrated network exports, quantizes and
runs, and the key does not change what training is.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hardware.errors import IRError
from hardware.fixed_point.quantize import quantize
from hardware.formats.netx import read_net, read_provenance
from hardware.ir import Dense, Input, Network, Neuron, networks_equal, readout_neuron
from hardware.simulator import encode_input, simulate
from models.snn_calibrate import CALIBRATIONS, _feed, ann_outputs, calibrate_snn, layer_output
from pipeline import stages
from pipeline.artifacts import NET_FILE
from pipeline.checkpoints import training_identity
from pipeline.config import CALIBRATIONS as CONFIG_CALIBRATIONS, Config
from tests.bad_inputs.base import TINY_CONFIG

LEVELS = 4


def one_hidden_layer(seed: int = 0) -> tuple[Network, torch.Tensor]:
    """A dense if_soft layer fed the constant input, then the potential readout: at T = L its
    spike counts are the QCFS levels exactly (no tie in the drawn values)."""
    rng = np.random.default_rng(seed)
    hidden = Dense(weight=rng.normal(0, 0.6, (12, 6)), bias=rng.normal(0, 0.1, 12),
                   neuron=Neuron("if_soft", threshold=1.3), name="dense0")
    out = Dense(weight=rng.normal(0, 0.5, (3, 12)) * 1.3, bias=rng.normal(0, 0.1, 3),
                neuron=readout_neuron(False), name="dense1")
    net = Network(input=Input(shape=(6,)), layers=[hidden, out], readout="potential")
    return net, torch.as_tensor(rng.uniform(0, 1, (64, 6)))


def test_the_targets_are_the_converted_ann():
    net, x = one_hidden_layer()
    hidden, logits = ann_outputs(net, x, LEVELS)
    h = x @ torch.as_tensor(net.layers[0].weight).T + torch.as_tensor(net.layers[0].bias)
    q = torch.clamp(torch.floor(torch.clamp(h / 1.3, 0, 1) * LEVELS + 0.5) / LEVELS, 0, 1)
    assert torch.equal(hidden, 1.3 * q)
    assert torch.allclose(logits, (1.3 * q) @ torch.as_tensor(net.layers[1].weight).T / 1.3
                          + torch.as_tensor(net.layers[1].bias))


@pytest.mark.parametrize("mode", ["bias", "bias+threshold"])
def test_a_network_whose_snn_matches_its_ann_is_unchanged(mode):
    net, x = one_hidden_layer()
    assert torch.equal(layer_output(net, 0, x, LEVELS), ann_outputs(net, x, LEVELS)[0])  # the premise
    calibrated, summary = calibrate_snn(net, x, LEVELS, mode, LEVELS)
    assert networks_equal(calibrated, net)
    assert [layer["threshold_scale"] for layer in summary["layers"]] == [1.0, 1.0]
    assert all(layer["error_before"] == 0.0 for layer in summary["layers"])


@pytest.mark.parametrize("mode", ["bias", "bias+threshold"])
def test_a_mismatched_network_moves_towards_its_ann(mode):
    net, x = one_hidden_layer()
    calibrated, summary = calibrate_snn(net, x, 1, mode, LEVELS)  # T = 1 against L = 4
    assert not networks_equal(calibrated, net)
    assert summary["layers"][-1]["error_after"] < summary["layers"][-1]["error_before"]
    assert summary["layers"][-1]["error_after"] < 1e-5  # the output layer's means match exactly
    again, _ = calibrate_snn(net, x, 1, mode, LEVELS)  # deterministic
    assert networks_equal(again, calibrated)
    assert networks_equal(net, one_hidden_layer()[0])  # the input network is not modified


def test_none_returns_an_equal_copy_and_bad_input_is_refused():
    net, x = one_hidden_layer()
    same, summary = calibrate_snn(net, x, 2, "none", LEVELS)
    assert same is not net and networks_equal(same, net) and summary["layers"] == []
    with pytest.raises(IRError, match="'scale' is not one of"):
        calibrate_snn(net, x, 2, "scale", LEVELS)
    with pytest.raises(IRError, match="float IR"):
        calibrate_snn(quantize(net, input_bits=8, readout_steps=2), x, 2, "bias", LEVELS)
    with pytest.raises(IRError, match="positive integer"):
        calibrate_snn(net, x, 0, "bias", LEVELS)
    assert CALIBRATIONS == CONFIG_CALIBRATIONS


def test_the_calibration_keys_are_not_training_keys():
    plain, calibrated = Config(), Config.from_dict({}, ["snn.calibrate=bias+threshold",
                                                        "snn.calibrate_samples=64"])
    assert training_identity(plain.to_dict()) == training_identity(calibrated.to_dict())


def test_a_calibrated_network_exports_quantizes_and_runs(tmp_path):
    raw = {k: dict(v) for k, v in TINY_CONFIG.items()}
    raw["run"]["dir"] = str(tmp_path / "run")
    cfg = Config.from_dict(raw, ["snn.calibrate=bias+threshold", "snn.calibrate_samples=64"])
    stages.train(cfg, progress=False)
    stages.export(cfg, progress=False)
    path = cfg.run_dir / NET_FILE
    calibration = read_provenance(path)["calibration"]
    assert calibration["mode"] == "bias+threshold" and calibration["samples"] == 64
    assert calibration["timesteps"] == cfg.snn.timesteps
    net = read_net(path)
    x = torch.as_tensor(encode_input(np.random.default_rng(0).uniform(0, 1, (4, 1, 8, 8)), 8))
    assert simulate(net, x, cfg.snn.timesteps).output_potential.shape == (cfg.snn.timesteps, 4, 10)
    plain = Config.from_dict(raw, ["snn.calibrate=none", "run.overwrite=true"])
    stages.export(plain, progress=False)
    assert "calibration" not in read_provenance(path)


def test_a_layer_measured_on_its_recorded_input_spikes_is_measured_as_in_the_network():
    rng = np.random.default_rng(3)
    net, x = one_hidden_layer()
    second = Dense(weight=rng.normal(0, 0.8, (5, 12)) * 1.3, bias=rng.normal(0, 0.2, 5),
                   neuron=Neuron("if_soft", threshold=0.9), name="dense_mid")
    head = Dense(weight=rng.normal(0, 0.5, (3, 5)) * 0.9, bias=np.zeros(3), neuron=readout_neuron(False),
                 name="dense_out")
    deep = net.replace(layers=[net.layers[0], second, head])
    for k in (1, 2):
        assert torch.equal(layer_output(deep, k, x, 3, _feed(deep, k, x, 3)), layer_output(deep, k, x, 3))
