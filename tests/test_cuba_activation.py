"""The cuba-matched activation is the stock CUBA neuron's constant-input response (issue 9).

For a layer with constant per-step drive z (synaptic input + bias) and threshold θ,
the stock neuron (v0 = 0, strict v > θ, reset to 0, du = 4095, dv = 0) fires
floor(T / (floor(θ/z) + 1)) times in T steps (0 for z ≤ 0): the integer simulator,
the float simulator and Lava (stock lava-dl netx) must all count exactly that, for
every shift option, and the ANN's activation must be θ·count/T of the same drive.
Integers are compared with ==.
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings, strategies as st
from torch import nn

from hardware import ir
from hardware.formats.netx import read_net, write_net
from hardware.fixed_point.quantize import quantize
from hardware.simulator import encode_input, simulate
from hardware.spec import LOIHI2
from models import nq as nq_module
from models.architectures import build_model, configure_activations, nq_layers
from models.converter import convert, ir_quantized_forward
from models.nq import (CUBA_SHIFTS, ActivationError, NQActivation, cuba_matched,
                       cuba_shift_offset, cuba_spike_count)
from pipeline import config as config_module
from tests.property_profiles import examples

GRADED_MAX = LOIHI2.input_max(8)


def _brute_force_count(z: int, theta: int, T: int) -> int:
    """The stock neuron stepped by hand: v += z; spike if v > θ, then v = 0."""
    v = spikes = 0
    for _ in range(T):
        v += z
        if v > theta:
            spikes, v = spikes + 1, 0
    return spikes


@pytest.mark.parametrize("theta,T,cases", [
    (8, 4, {-3: 0, 0: 0, 1: 0, 2: 0, 3: 1, 4: 1, 5: 2, 7: 2, 8: 2, 9: 4, 100: 4}),
    (8, 1, {8: 0, 9: 1, -1: 0}),          # z = θ never fires in one step (strict >)
    (6, 7, {1: 1, 2: 1, 3: 2, 4: 3, 6: 3, 7: 7}),  # k = 7, 4, 3, 2, 2, 1
])
def test_count_edge_cases(theta, T, cases):
    z = torch.tensor(list(cases), dtype=torch.int64)
    want = [cases[k] for k in cases]
    assert cuba_spike_count(z, torch.tensor(theta), T).tolist() == want
    assert cuba_spike_count(z.double(), float(theta), T).tolist() == want
    assert [_brute_force_count(int(k), theta, T) for k in cases] == want


@settings(max_examples=examples(200), deadline=None)
@given(z=st.integers(-50, 400), theta=st.integers(1, 300), T=st.integers(1, 40))
def test_count_formula_is_the_neuron(z, theta, T):
    got = cuba_spike_count(torch.tensor([z]), torch.tensor(theta), T)
    assert int(got[0]) == _brute_force_count(z, theta, T)


def _drives(draw_theta: int, T: int, extra: list) -> list:
    """The edge drives of θ (θ/m exactly and one above, θ, θ+1, 0, −1) plus ``extra``."""
    edges = {0, -1, draw_theta, draw_theta + 1}
    for m in range(1, T + 2):
        edges |= {draw_theta // m, draw_theta // m + 1}
    return sorted(edges) + extra


def _integer_layer(drives: list, theta: int, bias_offset: int) -> tuple:
    """A one-input Dense cuba layer whose neuron i gets ``drives[i] + bias_offset`` per step
    from the graded input 255: weight·255 + bias (weight = total // 255, bias the rest, so the
    bias stays in [0, 254] however large the offset: θ/(2T) alone can pass the 13-bit bias)."""
    total = np.asarray(drives, dtype=np.int64) + bias_offset
    weight = (total // GRADED_MAX)[:, None]
    bias = total - weight[:, 0] * GRADED_MAX
    if np.abs(weight).max() > LOIHI2.weight_max:
        raise ValueError(f"a drive of {int(np.abs(total).max())} needs a weight beyond the 8-bit range")
    layer = ir.Dense(weight=weight, bias=bias, name="hidden",
                     neuron=ir.Neuron("cuba", theta, du=LOIHI2.if_du, dv=LOIHI2.if_dv))
    net = ir.Network(input=ir.Input((1,)), layers=[layer], integer=True, input_bits=8, readout="spikes")
    return net, np.array([[GRADED_MAX]])


#: the largest |drive| a weight of the 8-bit range times the graded 255 carries, with room for the bias
MAX_DRIVE = 30000


@settings(max_examples=examples(80), deadline=None)
@given(theta=st.integers(1, 8000), T=st.integers(1, 20), shift=st.sampled_from(CUBA_SHIFTS),
       extra=st.lists(st.integers(-MAX_DRIVE, MAX_DRIVE), max_size=6))
@example(theta=7683, T=1, shift="half-bias", extra=[])  # once built a bias of 4096 (issue 18)
def test_integer_simulator_count_equals_activation_count(theta, T, shift, extra):
    """Property (issue 9, item 1): integer simulator == activation, random θ, inputs, T, shift.

    The shift enters the integer layer as the rounded offset θ/(2T) in the bias, the way the
    converter folds it and the quantizer rounds it."""
    offset = int(np.rint(float(cuba_shift_offset(float(theta), T, shift))))
    drives = [d for d in _drives(theta, T, extra) if abs(d + offset) <= MAX_DRIVE]
    net, x = _integer_layer(drives, theta, offset)
    want = cuba_spike_count(torch.tensor(drives) + offset, torch.tensor(theta), T)
    for kernel in ("fast", "exact64"):
        got = simulate(net, x, T, kernel=kernel).layer_counts[0][0]
        assert torch.equal(got, want), (kernel, drives, got.tolist(), want.tolist())
    assert int(want.sum()) > 0  # θ+1 ≥ … always fires: the comparison is not all zeros


def _one_layer_model(shift: str, T: int, seed: int) -> nn.Sequential:
    """Linear(3→12) + cuba-matched activation + Linear(12→2), float64, λ ≈ 1."""
    torch.manual_seed(seed)
    act = NQActivation(4, noise=False, init_threshold=0.8 + 0.4 * seed / 7,
                       activation="cuba-matched", timesteps=T, shift=shift)
    model = nn.Sequential(nn.Linear(3, 12), act, nn.Linear(12, 2)).double().eval()
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    return model


@pytest.mark.parametrize("shift", CUBA_SHIFTS)
@pytest.mark.parametrize("T", [1, 2, 4, 7])
def test_converted_layer_matches_ann_in_float_and_integer(shift, T):
    """The converter folds the shift so that, under constant input, the float SNN counts what
    the ANN's activation says and the quantized SNN counts the formula on its integers."""
    model = _one_layer_model(shift, T, seed=T)
    x = torch.rand(64, 3, dtype=torch.float64)
    theta = float(model[1].threshold)
    with torch.no_grad():
        pre = model[0](x)
        ann = model[1](pre)
    drive = pre + float(cuba_shift_offset(theta, T, shift))
    count = cuba_spike_count(drive, theta, T)
    # the ANN's value is θ·count/T (up to the rounding of its straight-through sum)
    torch.testing.assert_close(ann, theta * count / T, rtol=0, atol=1e-12)
    assert 0 < int((count > 0).sum()) < count.numel()  # some neurons fire, some do not
    net = convert(model, (3,), neuron="cuba", readout="potential")
    assert net.metadata["cuba_shift"] == shift and net.metadata["cuba_timesteps"] == T
    float_counts = simulate(net, x, T).layer_counts[0]
    assert torch.equal(float_counts, count.long())
    with torch.no_grad():
        torch.testing.assert_close(ir_quantized_forward(net, x, 4, "cuba-matched", T), model(x),
                                   rtol=1e-12, atol=1e-12)
    qnet = quantize(net, input_bits=8, readout_steps=T)
    payload = encode_input(x, 8)
    hidden = qnet.layers[0]
    int_drive = torch.as_tensor(payload @ hidden.weight.T + hidden.bias)
    want = cuba_spike_count(int_drive, torch.tensor(int(hidden.neuron.threshold)), T)
    assert torch.equal(simulate(qnet, payload, T).layer_counts[0], want)
    # the half-bias offset is in the integer bias: θ/(2T) in mantissa units, rounded once
    scale = qnet.metadata["quantization"][0]["scale"]
    plain = np.rint(scale * net.layers[0].bias - (scale * theta / (2 * T) if shift != "none" else 0))
    offset = hidden.bias - plain
    expected = round(scale * theta / (2 * T)) if shift != "none" else 0
    assert np.all(np.abs(offset - expected) <= 1)


def test_matched_activation_gradient_is_the_clipped_ramp():
    theta = torch.tensor(1.0, requires_grad=True)
    x = torch.tensor([-0.5, 0.1, 0.3, 0.6, 0.99, 1.5], requires_grad=True)
    y = cuba_matched(x, theta, 4)
    assert y.tolist() == [0.0, 0.0, 0.25, 0.5, 0.5, 1.0]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    # ∂y/∂λ = count/T − z/λ inside the ramp, 1 above it (as QCFS)
    want = sum([0.0, 0.0 - 0.1, 0.25 - 0.3, 0.5 - 0.6, 0.5 - 0.99, 1.0])
    assert math.isclose(float(theta.grad), want, rel_tol=1e-6)


def test_noise_is_added_only_while_training():
    act = NQActivation(4, noise=True, init_threshold=1.0, activation="cuba-matched", timesteps=4)
    act.sigma.fill_(0.5)
    x = torch.full((2000,), 0.6)
    assert torch.equal(act.eval()(x), torch.full_like(x, 0.5))
    noisy = act.train()(x) - 0.5
    assert 0.45 < float(noisy.std()) < 0.55


@pytest.mark.parametrize("kwargs,match", [
    (dict(activation="cuba"), "activation 'cuba' is not one of qcfs, cuba-matched"),
    (dict(activation="cuba-matched"), "needs timesteps T as a positive integer, got None"),
    (dict(activation="cuba-matched", timesteps=0), "got 0"),
    (dict(activation="cuba-matched", timesteps=4, shift="half"), "shift 'half' is not one of"),
    (dict(shift="half-bias"), "a QCFS activation is shifted at conversion"),
])
def test_bad_activation_parameters_are_toolkit_errors(kwargs, match):
    with pytest.raises(ActivationError, match=match):
        NQActivation(4, **kwargs)
    with pytest.raises(ActivationError, match=match):
        build_model("cnn-small", (1, 8, 8), 10, 4, **{("cuba_shift" if k == "shift" else k): v
                                                      for k, v in kwargs.items()})


def test_conversion_refuses_mismatched_neuron_or_shift():
    model = _one_layer_model("half-bias", 4, 0)
    with pytest.raises(Exception, match="module 0: the activation is matched to the stock cuba"):
        convert(model, (3,), neuron="if_soft")
    with pytest.raises(Exception, match="cuba_shift 'none' differs from the shift 'half-bias'"):
        convert(model, (3,), neuron="cuba", cuba_shift="none")
    qcfs_model = build_model("cnn-small", (1, 8, 8), 10, 4).eval()
    with pytest.raises(Exception, match="applies to cuba neurons only"):
        convert(qcfs_model, (1, 8, 8), neuron="if_soft", cuba_shift="half-bias", shift_timesteps=4)
    with pytest.raises(Exception, match="needs shift_timesteps"):
        convert(qcfs_model, (1, 8, 8), neuron="cuba", cuba_shift="half-bias")


def test_qcfs_model_shifted_at_conversion_gets_the_offset_in_its_biases():
    model = build_model("cnn-small", (1, 8, 8), 10, 4).double().eval()
    plain = convert(model, (1, 8, 8), neuron="cuba")
    shifted = convert(model, (1, 8, 8), neuron="cuba", cuba_shift="half-bias", shift_timesteps=4)
    lambdas = [float(m.threshold) for m in nq_layers(model)]
    hidden = [(a, b) for a, b in zip(plain.weighted_layers, shifted.weighted_layers)][:-1]
    assert len(hidden) == len(lambdas) == 3
    for (a, b), lam in zip(hidden, lambdas):
        np.testing.assert_allclose(b.bias - a.bias, lam / 8, rtol=0, atol=1e-12)
    assert np.array_equal(plain.weighted_layers[-1].bias, shifted.weighted_layers[-1].bias)
    assert shifted.metadata == {"ann_activation": "qcfs", "cuba_shift": "half-bias", "cuba_timesteps": 4}
    assert plain.metadata == {}


@pytest.mark.parametrize("T", [1, 4])
def test_ir_forward_of_a_shifted_qcfs_network_is_still_its_ann(T):
    """The offset conversion adds for the cuba neuron is no part of the ANN's function: the
    IR's QCFS forward (calibration's targets) takes it back out. Once it did not, and bias
    calibration at T = 1 aimed every layer two levels high (10.5 % on Fashion-MNIST)."""
    torch.manual_seed(0)
    model = build_model("cnn-small", (1, 8, 8), 10, 4, noise=False).double().eval()
    for m in nq_layers(model):
        m.threshold.data.fill_(1.0)
    x = torch.rand(16, 1, 8, 8, dtype=torch.float64)
    shifted = convert(model, (1, 8, 8), neuron="cuba", cuba_shift="half-bias", shift_timesteps=T)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(ir_quantized_forward(shifted, x, 4), expected, rtol=1e-9, atol=1e-9)
    unshifted_meta = shifted.replace(metadata={})  # without the record, the offset reads as bias
    assert not torch.allclose(ir_quantized_forward(unshifted_meta, x, 4), expected)


def test_configure_activations_switches_function_not_parameters():
    model = build_model("cnn-small", (1, 8, 8), 10, 4, noise=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    configure_activations(model, "cuba-matched", 2, "half-bias")
    assert all(m.activation == "cuba-matched" and m.timesteps == 2 and m.shift == "half-bias"
               for m in nq_layers(model))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert "cuba-matched, timesteps=2, shift=half-bias" in repr(model)


def test_config_choices_mirror_the_model_constants():
    assert config_module.ACTIVATIONS == nq_module.ACTIVATIONS + ("auto",)
    assert config_module.CUBA_SHIFTS == nq_module.CUBA_SHIFTS


# --------------------------------------------------------------------------- Lava
def _lava_layer_net(theta: int, T: int):
    """The integer one-layer net of the property test, plus a potential readout."""
    drives = _drives(theta, T, [-700, 1234, 5 * theta])
    hidden_net, x = _integer_layer(drives, theta, 0)
    readout = ir.Dense(weight=np.arange(2 * len(drives)).reshape(2, -1) % 7 - 3,
                       bias=np.array([5, -5]), neuron=ir.readout_neuron(True), name="out")
    net = ir.Network(input=hidden_net.input, layers=hidden_net.layers + [readout], integer=True,
                     input_bits=8, readout="potential")
    return net, x, drives


@pytest.mark.lava
@pytest.mark.filterwarnings("error:Cannot import module")
def test_lava_count_equals_activation_count(tmp_path):
    """One Lava case of the property: stock LIF in stock netx counts what the activation says."""
    from hardware.runtime.runner import run_lava

    T, theta = 6, 600
    net, x, drives = _lava_layer_net(theta, T)
    path = write_net(net, tmp_path / "layer.net")
    res = run_lava(read_net(path), x, T, net_path=str(path), progress=False, probes="counts")
    assert res.loader.startswith("stock lava.lib.dl.netx")
    want = cuba_spike_count(torch.tensor(drives), torch.tensor(theta), T).numpy()
    assert len(set(want.tolist())) >= 4  # 0, 1, … T: the levels differ
    assert np.array_equal(res.layer_counts[0][0], want)
    assert np.array_equal(res.output_potential, simulate(net, x, T).output_potential[-1].numpy())


@pytest.mark.lava
@pytest.mark.filterwarnings("error:Cannot import module")
def test_cuba_matched_export_runs_unchanged_in_stock_netx(tmp_path):
    """A cnn-small trained-like with the cuba-matched activation and half-bias shift: its .net
    loads in stock lava-dl netx and the output equals the integer simulator."""
    from bench.bench_common import bench_images, calibrate
    from hardware.runtime.runner import run_lava

    T = 4
    torch.manual_seed(0)
    model = build_model("cnn-small", (1, 8, 8), 10, 4, noise=False, activation="cuba-matched",
                        timesteps=T, cuba_shift="half-bias")
    images, _ = bench_images((1, 8, 8), 128, seed=0)
    calibrate(model, images, quantile=0.9)
    net = quantize(convert(model, (1, 8, 8), neuron="cuba", readout="potential"), input_bits=8,
                   readout_steps=T)
    path = write_net(net, tmp_path / "matched.net")
    x = encode_input(images[:2], 8)
    res = run_lava(read_net(path), x, T, net_path=str(path), progress=False, probes="counts")
    assert res.loader.startswith("stock lava.lib.dl.netx")
    ref = simulate(net, x, T)
    assert np.array_equal(res.output_potential, ref.output_potential[-1].numpy())
    for got, want in zip(res.layer_counts, ref.layer_counts):
        assert np.array_equal(got, want.numpy())
    assert all(int(c.sum()) > 0 for c in ref.layer_counts[:-1])  # every hidden layer fires
