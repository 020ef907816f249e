"""Fixed-point bounds over time (issue 18, part 2): a network the quantizer accepts for T
steps never wraps u nor clips v in any of them, so its float and integer runs agree.

Every net here is built directly in the IR. A first ``spread`` layer (fan-in 1, cuba,
du = 4095) turns each analog input into a spike every step while it is on, so the layer
under test sees exactly the worst-case drive the quantizer bounds, step after step.
"""
import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hardware.fixed_point import dynamics
from hardware.errors import QuantizationError
from hardware.ir import Dense, Input, Network, Neuron
from hardware.fixed_point.quantize import quantize
from hardware.simulator import encode_input, simulate
from hardware.spec import LOIHI2
from tests.property_profiles import examples

INPUT_BITS = 8


def _spread(n_in: int, fan_out: int) -> Dense:
    """Input i drives neurons [i·fan_out, (i+1)·fan_out): each spikes every step its input is 1."""
    w = np.kron(np.eye(n_in), np.ones((fan_out, 1)))
    return Dense(weight=w, bias=None, neuron=Neuron("cuba", 0.5), name="spread")


def alpha_net(du: int = 2047, dv: int = 0, fan_in: int = 2000, theta: float = 0.9) -> Network:
    """The issue's case: a cuba layer with α = 1 − (du+1)/4096 ≈ 0.5 and fan-in 2,000 whose
    three neurons receive a total of 1.0, 0.8, 0.6 per step (all spikes on)."""
    rng = np.random.default_rng(0)
    w = rng.uniform(0.5, 1.5, size=(3, fan_in))
    w = w / w.sum(axis=1, keepdims=True) * np.array([[1.0], [0.8], [0.6]])
    layers = [_spread(1, fan_in),
              Dense(weight=w, bias=None, neuron=Neuron("cuba", theta, du=du, dv=dv), name="alpha")]
    return Network(input=Input(shape=(1,)), layers=layers, readout="spikes")


def negative_drive_net(kind: str = "cuba", dv: int = 0, fan_in: int = 500,
                       theta: float = 0.9, neg: float = 1.0, pos: float = 1.5) -> Network:
    """Input 0 inhibits the layer under test (total −neg per step), input 1 excites it (+pos
    per step; neuron k gets pos·(k+1)/3): several steps of negative drive, then positive."""
    w_neg = -np.full((3, fan_in), neg / fan_in)
    w_pos = np.full((3, fan_in), pos / fan_in) * np.array([[1.0], [2.0], [3.0]]) / 3
    layers = [_spread(2, fan_in),
              Dense(weight=np.hstack([w_neg, w_pos]), bias=None,
                    neuron=Neuron(kind, theta, du=LOIHI2.if_du, dv=dv), name="drive")]
    return Network(input=Input(shape=(2,)), layers=layers, readout="spikes")


def on_off(T: int, off_from: int) -> np.ndarray:
    """(1, T, 2) inputs: input 0 on for steps < off_from, input 1 on from off_from."""
    x = np.zeros((1, T, 2))
    x[0, :off_from, 0] = 1.0
    x[0, off_from:, 1] = 1.0
    return x


def float_and_integer(net: Network, x: np.ndarray, T: int):
    """(float run, integer run) of ``net`` quantized for T steps, on the same input."""
    q = quantize(net, input_bits=INPUT_BITS, readout_steps=T)
    fl = simulate(net, torch.as_tensor(x), T, record_spikes=True)
    fx = simulate(q, torch.as_tensor(encode_input(x, INPUT_BITS)), T, record_spikes=True)
    return q, fl, fx


def assert_same_spikes(fl, fx) -> None:
    for name, a, b in zip(fl.layer_names, fl.layer_spike_trains, fx.layer_spike_trains):
        assert torch.equal(a, b), (name, a.reshape(a.shape[0], -1).T.int(), b.reshape(b.shape[0], -1).T.int())
    assert torch.equal(fl.predictions(), fx.predictions())


def _report(q: Network, name: str) -> dict:
    return next(r for r in q.metadata["quantization"] if r["name"] == name)


# ------------------------------------------------------------------ decaying current (u)
@pytest.mark.parametrize("du", [2047, 2048])
def test_alpha_half_fan_in_2000_spikes_as_in_float(du):
    """du = 2047 is α = 0.5 exactly (NIR's import of snnTorch's α = 0.5), 2048 the issue's
    value. Before the T-step bound u wrapped at step 5: [1, 1, 1, 1, 0, 0] in fixed point."""
    T = 6
    q, fl, fx = float_and_integer(alpha_net(du=du), np.ones((1, 1)), T)
    out = fl.layer_spike_trains[-1][:, 0].T.int()
    assert out.tolist()[0] == [1] * T  # the neuron: every step in float
    assert out.sum() >= 15  # the other two join after one step: nothing passes vacuously
    assert_same_spikes(fl, fx)
    rep = _report(q, "alpha")
    # v ≤ θ + u: the membrane of a neuron about to spike is what comes closest to 2**23
    assert rep["limited_by"] == f"24-bit v over T={T}"
    assert rep["state_steps"] == T
    bounds = rep["state_bounds"]
    one_step = rep["worst_case_input"] << LOIHI2.activation_shift
    assert 1.9 * one_step < bounds["u_max"] < bounds["v_max"] <= LOIHI2.state_abs_max


def test_u_bound_holds_with_the_integer_rounding():
    """The reported u bound is the exact integer worst case: running the layer on its
    worst-case input for T steps reaches it and stays within it."""
    T = 12
    q = quantize(alpha_net(du=1000), input_bits=INPUT_BITS, readout_steps=T)
    layer = q.layers[-1]
    a = np.clip(layer.weight, 0, None).sum(axis=1).max()
    p = dynamics.NeuronParams("cuba", vth=LOIHI2.threshold_max, du=layer.neuron.du, dv=0)
    u = np.zeros(1, dtype=np.int64)
    for _ in range(T):
        u, _, _ = dynamics.step(u, np.zeros(1, dtype=np.int64), np.array([a]), p)
    assert int(u[0]) == _report(q, "alpha")["state_bounds"]["u_max"] <= LOIHI2.state_abs_max


# ------------------------------------------------------------------ voltage: negative drive
@pytest.mark.parametrize("kind,dv,neg", [("cuba", 0, 1.0), ("if_soft", 0, 1.0), ("cuba", 1024, 2.5),
                                         ("if_soft", 1024, 2.5)])
def test_several_steps_of_negative_drive_then_positive(kind, dv, neg):
    T = 12
    net = negative_drive_net(kind=kind, dv=dv, neg=neg)
    q, fl, fx = float_and_integer(net, on_off(T, 5), T)
    assert int(fl.layer_spike_trains[-1].sum()) >= 3
    assert_same_spikes(fl, fx)
    rep = _report(q, "drive")
    assert rep["limited_by"] == f"24-bit v over T={T}"
    assert rep["state_bounds"]["v_min"] >= -LOIHI2.state_abs_max


def test_decaying_voltage_and_current_together():
    """dv > 0 and du < 4095 at once, with biases: v leaks while u accumulates."""
    T = 8
    net = alpha_net(du=1500, dv=512, theta=1.2)
    net.layers[-1].bias = np.array([0.01, 0.02, -0.01])
    q, fl, fx = float_and_integer(net, np.ones((1, 1)), T)
    assert int(fl.layer_spike_trains[-1].sum()) >= 6
    assert_same_spikes(fl, fx)


# ------------------------------------------------------------------ unchanged where it fits
def test_networks_the_one_step_rule_covers_keep_their_scale():
    """du = 4095, dv = 0 and only positive drive: u = a and a cuba v stays ≤ θ + a at every
    step, so the T-step bound is the one-step bound (same scale, same label, same integers)."""
    net = alpha_net(du=LOIHI2.if_du)
    one = quantize(net, input_bits=INPUT_BITS)
    six = quantize(net, input_bits=INPUT_BITS, readout_steps=6)
    assert [r["scale"] for r in one.metadata["quantization"]] == \
        [r["scale"] for r in six.metadata["quantization"]]
    rep = _report(six, "alpha")
    assert rep["limited_by"] == "24-bit state"
    assert rep["worst_case_input"] + rep["threshold_mantissa"] <= LOIHI2.activation_max
    assert np.array_equal(one.layers[-1].weight, six.layers[-1].weight)


def test_without_steps_the_bound_covers_one_step_and_says_so():
    """A spike-readout net quantized without readout_steps is bounded for T = 1 only, and the
    report says so (the pipeline always passes snn.timesteps, the deployment T)."""
    q = quantize(alpha_net(), input_bits=INPUT_BITS)
    assert [r["state_steps"] for r in q.metadata["quantization"]] == [1, 1]
    assert _report(q, "alpha")["limited_by"] == "24-bit state"


@pytest.mark.parametrize("steps", [0, -3, 2.5, True, "8"])
def test_bad_step_counts_are_refused(steps):
    with pytest.raises(QuantizationError, match="readout_steps .* must be a positive integer"):
        quantize(alpha_net(), input_bits=INPUT_BITS, readout_steps=steps)


# ------------------------------------------------------------------ the contract, on any input
def _input_patterns(w: np.ndarray, T: int, rng) -> list:
    """(T, n_in) payload sequences: every input on, random on/off, and for each neuron the
    inputs of its negative (then positive) weights on, the drive the bounds are made for."""
    top = LOIHI2.input_max(INPUT_BITS)
    pats = [np.full((T, w.shape[1]), top), rng.integers(0, 2, size=(T, w.shape[1])) * top]
    for row in w:
        pats += [np.tile((row < 0) * top, (T, 1)), np.tile((row > 0) * top, (T, 1))]
    return pats


def _run_unclipped(layer, x: np.ndarray) -> tuple:
    """Lava's integer step on payloads x (T, n_in), returning the largest |u| and the range of
    v BEFORE any wrap or clip could act (so a wrap or clip shows as a value beyond 2**23 − 1)."""
    n = layer.weight.shape[0]
    p = dynamics.NeuronParams(layer.neuron.kind, vth=layer.neuron.threshold, du=layer.neuron.du,
                              dv=layer.neuron.dv, bias_mant=layer.bias, bias_exp=layer.neuron.bias_exp)
    u = np.zeros(n, dtype=np.int64)
    v = np.full(n, dynamics.initial_v(p.kind, p.vth), dtype=np.int64)
    u_max, v_lo, v_hi = 0, 0, 0
    for xt in x:
        a = layer.weight @ xt
        u_raw = dynamics.decay(u, p.du + LOIHI2.current_decay_offset) + (a << LOIHI2.activation_shift)
        v_raw = dynamics.decay(v, p.dv) + u_raw + dynamics.effective_bias(p)
        u_max = max(u_max, int(np.abs(u_raw).max()))
        v_lo, v_hi = min(v_lo, int(v_raw.min())), max(v_hi, int(v_raw.max()))
        u, v, _ = dynamics.step(u, v, a, p)
    return u_max, v_lo, v_hi


@settings(max_examples=examples(40), deadline=None)
@given(seed=st.integers(0, 2**16), kind=st.sampled_from(["cuba", "if_soft"]),
       du=st.sampled_from([0, 1000, 2047, 3500, LOIHI2.if_du]), dv=st.sampled_from([0, 256, 2048]),
       T=st.integers(1, 24), fan_in=st.sampled_from([3, 40, 400]))
@example(seed=0, kind="cuba", du=2047, dv=0, T=6, fan_in=400)
def test_accepted_layer_never_wraps_or_clips(seed, kind, du, dv, T, fan_in):
    """Whatever the quantizer accepts for T steps stays inside 24 bits on every input it may
    get, within the bounds it reports."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(4, fan_in)) + rng.normal()
    net = Network(input=Input(shape=(fan_in,)),
                  layers=[Dense(weight=w, bias=rng.normal(size=4) * 0.2,
                                neuron=Neuron(kind, float(rng.uniform(0.1, 3.0)), du=du, dv=dv),
                                name="d")], readout="spikes")
    try:
        q = quantize(net, input_bits=INPUT_BITS, readout_steps=T)
    except QuantizationError as exc:
        assert str(exc).startswith("layer d: threshold"), exc
        return
    bounds = q.metadata["quantization"][0]["state_bounds"]
    for x in _input_patterns(w, T, rng):
        u_max, v_lo, v_hi = _run_unclipped(q.layers[0], x)
        assert u_max <= bounds["u_max"] <= LOIHI2.state_abs_max
        assert -LOIHI2.state_abs_max <= bounds["v_min"] <= v_lo <= v_hi <= bounds["v_max"] \
            <= LOIHI2.state_abs_max


# ------------------------------------------------------------------ refusal
def test_unfittable_layer_is_refused_naming_layer_and_bound():
    """Sustained negative drive of 10⁴ θ per step over T = 100 steps: only a scale with
    θ < 1/2 keeps v inside 24 bits, so θ would round to mantissa 0 (one step alone fits)."""
    net = negative_drive_net(kind="cuba", theta=0.001, neg=10.0, pos=0.01)
    quantize(net, input_bits=INPUT_BITS, readout_steps=1)
    with pytest.raises(QuantizationError) as info:
        quantize(net, input_bits=INPUT_BITS, readout_steps=100)
    msg = str(info.value)
    assert msg.startswith("layer drive: threshold θ = 0.001 rounds to mantissa 0"), msg
    assert "24-bit v over T=100" in msg, msg


# ------------------------------------------------------------------ Lava
@pytest.mark.lava
def test_alpha_case_in_lava_equals_float(tmp_path):
    """The issue's α = 0.5, fan-in 2,000 net, quantized for T = 6, written as a netx file and
    run by stock netx in Lava: the same spikes as the integer simulator and as float."""
    from hardware.runtime.runner import run_lava
    from hardware.formats.netx import read_net, write_net

    T = 6
    net = alpha_net()
    q, fl, fx = float_and_integer(net, np.ones((1, 1)), T)
    path = write_net(q, tmp_path / "alpha.net", steps_per_sample=T)
    lava = run_lava(read_net(path), encode_input(np.ones((1, 1)), INPUT_BITS), T,
                    net_path=str(path), progress=False, probes="counts")
    assert np.array_equal(lava.output_spikes, fx.output_spikes.numpy().transpose(1, 0, 2))
    assert np.array_equal(lava.output_spikes, fl.output_spikes.numpy().transpose(1, 0, 2))
    assert int(lava.output_spikes.sum()) >= 15


@pytest.mark.lava
def test_negative_drive_case_in_lava_equals_float(tmp_path):
    """Five steps of negative drive, then positive (cuba, dv = 1024), time-varying input: in
    Lava the same spikes as the integer simulator and as float (v never clipped)."""
    from hardware.runtime.runner import run_lava
    from hardware.formats.netx import read_net, write_net

    T = 12
    x = on_off(T, 5)
    q, fl, fx = float_and_integer(negative_drive_net(kind="cuba", dv=1024, neg=2.5), x, T)
    path = write_net(q, tmp_path / "drive.net", steps_per_sample=T)
    lava = run_lava(read_net(path), encode_input(x, INPUT_BITS), T, net_path=str(path),
                    progress=False, probes="counts")
    assert np.array_equal(lava.output_spikes, fx.output_spikes.numpy().transpose(1, 0, 2))
    assert np.array_equal(lava.output_spikes, fl.output_spikes.numpy().transpose(1, 0, 2))
    assert int(lava.output_spikes.sum()) >= 3
