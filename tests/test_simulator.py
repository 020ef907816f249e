"""Tests of the reference simulator (hardware/simulator/).

Float and integer neuron dynamics by hand, the QCFS rate property of the
soft-reset IF neuron, Lava's integer edge cases (checked against Lava itself),
pipelined timing, and the result helpers.
"""
from fractions import Fraction
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import event, given, settings, strategies as st

import hardware.simulator as simulator
from hardware.errors import IRError, QuantizationError
from hardware.ir import Conv, Dense, Flatten, Input, Network, Neuron
from hardware.simulator import SimResult, encode_input, kernel_plan, simulate
from hardware.spec import LOIHI2
from tests.property_profiles import examples


def _one_dense(kind, threshold, weight=1.0, integer=False, weight_exp=0, bias=None,
               du=4095, dv=0, input_bits=None, bias_exp=6):
    w = np.atleast_2d(np.asarray(weight, dtype=np.int64 if integer else np.float64))
    return Network(
        input=Input(shape=(w.shape[1],)),
        layers=[Dense(weight=w, bias=bias, weight_exp=weight_exp, name="d0",
                      neuron=Neuron(kind, threshold, du=du, dv=dv, bias_exp=bias_exp))],
        integer=integer, input_bits=input_bits, readout="spikes")


# ---------------------------------------------------------------------------
# 1. QCFS property of the soft-reset IF neuron
# ---------------------------------------------------------------------------

@settings(max_examples=examples(60), deadline=None)
@given(k=st.integers(1, 256), T=st.integers(1, 64),
       js=st.lists(st.integers(0, 1024), min_size=1, max_size=16))
def test_if_soft_rate_is_qcfs(k, T, js):
    """Spike count over T of an if_soft neuron fed a constant x in [0, θ]
    equals clip(floor(x·T/θ + 1/2), 0, T).

    θ = k/16 and x = θ·j/1024 are dyadic, so every membrane value is exact in
    float64 and the exact .5 ties (j·T/1024 + 1/2 integer) are tested, not
    avoided: at a tie v reaches exactly n·θ and spikes (v ≥ θ)."""
    theta = k / 16.0
    xs = np.array([[theta * j / 1024.0] for j in js])
    res = simulate(_one_dense("if_soft", theta), xs, T)
    got = res.layer_counts[0][:, 0].tolist()
    want = [min(max(int(Fraction(j * T, 1024) + Fraction(1, 2)), 0), T) for j in js]
    assert got == want


# ---------------------------------------------------------------------------
# 2. cuba vs if_soft, hand-computed traces
# ---------------------------------------------------------------------------

def test_cuba_vs_if_soft_float_trace():
    # θ = 1, a = x (weight 1), du = 4095 (u = a), dv = 0.
    x = np.array([0.625, 0.5, 0.375, 1.0, 0.0, 1.0]).reshape(1, 6, 1)
    # if_soft, v0 = 0.5:  1.125→s,0.125 | 0.625 | 1.0→s(≥),0 | 1.0→s,0 | 0 | 1.0→s
    soft = simulate(_one_dense("if_soft", 1.0), x, 6).output_spikes[:, 0, 0].tolist()
    assert soft == [1, 0, 1, 1, 0, 1]
    # cuba, v0 = 0: 0.625 | 1.125→s,0 | 0.375 | 1.375→s,0 | 0 | 1.0 (not > 1)
    cuba = simulate(_one_dense("cuba", 1.0), x, 6).output_spikes[:, 0, 0].tolist()
    assert cuba == [0, 1, 0, 1, 0, 0]


def test_cuba_vs_if_soft_integer_trace():
    # vth = 8 → θ = 8 << 6 = 512; graded inputs s, weight 1: u = s << 6 (du = 4095).
    # s = 5,4,3,8,0,8 → u = 320,256,192,512,0,512.
    x = np.array([5, 4, 3, 8, 0, 8]).reshape(1, 6, 1)
    # if_soft, v0 = 512 >> 1 = 256: 576→s,64 | 320 | 512→s(≥),0 | 512→s,0 | 0 | 512→s
    net = _one_dense("if_soft", 8, weight=1, integer=True, input_bits=8)
    assert simulate(net, x, 6).output_spikes[:, 0, 0].tolist() == [1, 0, 1, 1, 0, 1]
    # cuba, v0 = 0: 320 | 576→s,0 | 192 | 704→s,0 | 0 | 512 (not > 512)
    net = _one_dense("cuba", 8, weight=1, integer=True, input_bits=8)
    assert simulate(net, x, 6).output_spikes[:, 0, 0].tolist() == [0, 1, 0, 1, 0, 0]


def test_integer_decay_rounds_toward_zero():
    """Leaky cuba: du = 2047 (u · 2048/4096), dv = 1 (v · 4095/4096), weight −3,
    s = 1 at step 1 only, bias_mant 144 with bias_exp 0, vth = 1 (never reached here).
      step 1: u = −3 << 6 = −192;  v = −192 + 144 = −48
      step 2: u = −(192·2048 >> 12) = −96
              v = −(48·4095 >> 12) − 96 + 144 = −(196560 >> 12) + 48 = −47 + 48 = 1
    Lava's sign-magnitude shift rounds toward zero; a floor (−48) would give v = 0."""
    net = _one_dense("cuba", 1, weight=[[-3]], integer=True, input_bits=8,
                     du=2047, dv=1, bias=np.array([144]), bias_exp=0)
    x = np.array([1, 0]).reshape(1, 2, 1)
    res = simulate(net, x, 2)
    assert res.output_potential[:, 0, 0].tolist() == [-48, 1]
    assert res.output_spikes[:, 0, 0].tolist() == [0, 0]


# ---------------------------------------------------------------------------
# 3. Integer edge cases against Lava
# ---------------------------------------------------------------------------

@pytest.mark.lava
def test_integer_edge_cases_match_lava():
    """Dense(graded, 24-bit payloads) → LIF in real Lava (fixed_pt) vs simulate(pipelined=True).

    Two branches share one RingBuffer source (6 inputs, 10 steps):
      A: inputs 0–2 below 2**16, mixed-sign even weights (Lava's mixed sign mode
         truncates the LSB: even weights are its effective weights), weight_exp 7,
         leaky neurons: synaptic inputs of ~10**6..10**9 exercise the u wrap
         (including Lava's single-step quirk that leaves |u| > 2**23), the int32
         wrap of a << 6 and of u + a, and the v clip to ±(2**23 − 1).
      B: inputs 3–5 near 2**23, weights 127, weight_exp −8: W @ s exceeds
         2**31, so the int32 dot product wraps *before* the right shift.

    Established by experiment (these runs, plus probes reading u after each
    step): a value beyond the declared 16-bit precision of Dense.a_out /
    LIF.a_in is neither clipped nor wrapped at 16 bits. It passes through in
    the int32 channel; the only wraps are numpy's int32 overflow (the graded
    dot product, a << 6, decayed u + a, v sums), i.e. at
    LOIHI2.container_bits = 32, then Lava's 24-bit u wrap and v clip.
    """
    T, n_out = 10, 6
    x, branches = _edge_case_branches(T, n_out)
    lava_out = _edge_cases_in_lava(x, branches, T, n_out)
    total = 0
    for key, b in branches.items():
        sim = _edge_case_in_simulator(x, b, T, n_out)
        assert (sim == lava_out[key]).all(), (key, sim, lava_out[key])
        total += int(sim.sum())
    assert total > 0  # the comparison is not vacuous


def _edge_case_branches(T: int, n_out: int) -> tuple:
    """(inputs (6, T), {branch: parameters}) of the two branches described above."""
    rng = np.random.default_rng(7)
    x = np.zeros((6, T), dtype=np.int64)
    x[:3] = rng.integers(0, 1 << 16, size=(3, T))
    x[3:] = rng.integers(1 << 22, 1 << 23, size=(3, T))
    wa = np.zeros((n_out, 6), dtype=np.int64)
    wa[:, :3] = 2 * rng.integers(-64, 64, size=(n_out, 3))
    wa[0, :3] = [2, 0, 0]        # a = 256·s: u wraps via the 24-bit rule only
    wa[1, :3] = [-128, 126, 0]
    wb = np.zeros((n_out, 6), dtype=np.int64)
    wb[:, 3:] = 127
    wb[0, 3:] = [1, 0, 0]        # small: no int32 overflow, checks the floor shift
    branches = {
        "A": dict(w=wa, exp=7, du=1000, dv=300, vth=rng.integers(0, 1 << 17, n_out),
                  bias=rng.integers(-4096, 4096, n_out), bias_exp=3),
        "B": dict(w=wb, exp=-8, du=4095, dv=0, vth=rng.integers(0, 1 << 10, n_out),
                  bias=np.zeros(n_out, dtype=np.int64), bias_exp=0),
    }
    return x, branches


def _edge_cases_in_lava(x: np.ndarray, branches: dict, T: int, n_out: int) -> dict:
    """{branch: (T, n_out) spikes}: Lava Dense → LIF per branch, one shared source."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.dense.process import Dense as LavaDense
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source
    from lava.proc.lif.process import LIF

    src = Source(data=x)
    sinks = {}
    for key, b in branches.items():
        dense = LavaDense(weights=b["w"], weight_exp=b["exp"], num_message_bits=24)
        lif = LIF(shape=(n_out,), du=b["du"], dv=b["dv"], vth=b["vth"],
                  bias_mant=b["bias"], bias_exp=b["bias_exp"])
        sink = Sink(shape=(n_out,), buffer=T)
        src.s_out.connect(dense.s_in)
        dense.a_out.connect(lif.a_in)
        lif.s_out.connect(sink.a_in)
        sinks[key] = sink
    lava_out = {}
    try:
        src.run(condition=RunSteps(num_steps=T), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        for key, sink in sinks.items():
            lava_out[key] = sink.data.get().astype(np.int64).T  # (T, n_out)
    finally:
        src.stop()
    return lava_out


def _edge_case_in_simulator(x: np.ndarray, b: dict, T: int, n_out: int) -> np.ndarray:
    """(T, n_out) spikes of one branch from simulate(pipelined=True), one IR network per
    neuron (thresholds are per layer in the IR)."""
    inputs = x.T[None]  # (1, T, 6)
    sim = np.zeros((T, n_out), dtype=np.int64)
    for i in range(n_out):
        net = _one_dense("cuba", int(b["vth"][i]), weight=b["w"][i:i + 1], integer=True,
                         weight_exp=b["exp"], du=b["du"], dv=b["dv"],
                         bias=b["bias"][i:i + 1], bias_exp=b["bias_exp"],
                         input_bits=LOIHI2.graded_spike_max_bits)
        sim[:, i] = simulate(net, inputs, T, pipelined=True).output_spikes[:, 0, 0].numpy()
    return sim


# ---------------------------------------------------------------------------
# 4. Dense weight_exp < 0 floors
# ---------------------------------------------------------------------------

def test_negative_weight_exp_floors():
    """weight_exp = −2: a = (W·s) >> 2, arithmetic (floor).
    vth = 1, so a neuron spikes when v > 64.
    Neuron 0: W = 9,  s = 1 → a = 9 >> 2 = 2;   u = 128, v = 128 > 64 → spikes every step.
    Neuron 1: W = −5, s = 1 → a = −5 >> 2 = −2 (truncation would give −1);
              bias 2 << 6 = 128: v = −128 + 128 = 0 every step → never spikes
              (with truncation v would grow by 64 per step and spike at step 2)."""
    w = np.array([[9], [-5]])
    net = Network(input=Input(shape=(1,)),
                  layers=[Dense(weight=w, bias=np.array([0, 2]), weight_exp=-2, name="d0",
                                neuron=Neuron("cuba", 1, du=4095, dv=0, bias_exp=6))],
                  integer=True, input_bits=8, readout="spikes")
    out = simulate(net, np.array([[1]]), 4).output_spikes[:, 0].tolist()
    assert out == [[1, 0]] * 4


# ---------------------------------------------------------------------------
# 5. result helpers
# ---------------------------------------------------------------------------

def test_predictions_and_counts_tie_breaking():
    # T=3, B=2, n_out=3
    spikes = torch.tensor([
        [[0, 1, 1], [0, 0, 0]],
        [[1, 0, 0], [0, 0, 1]],
        [[0, 0, 1], [1, 0, 0]],
    ], dtype=torch.int64)
    res = SimResult(output_spikes=spikes, layer_names=["x"], layer_step_spikes=[],
                    layer_counts=[], readout="spikes")
    counts = res.output_counts()
    assert counts.shape == (3, 2, 3)
    assert counts[-1].tolist() == [[1, 1, 2], [1, 0, 1]]
    # sample 0: t1 tie 1,2 → 1; t2 tie 0,1,2 → 0; t3 → 2
    # sample 1: t1 all zero → 0; t2 → 2; t3 tie 0,2 → 0
    assert res.predictions().tolist() == [[1, 0], [0, 2], [2, 0]]


def test_simulate_shapes_and_records():
    rng = np.random.default_rng(0)
    conv = Conv(weight=rng.normal(size=(4, 2, 3, 3)), bias=np.zeros(4),
                neuron=Neuron("if_soft", 1.0), padding=(1, 1), name="c0")
    net = Network(input=Input(shape=(2, 5, 5)),
                  layers=[conv, Flatten(), Dense(weight=rng.normal(size=(3, 100)), bias=None,
                                                 neuron=Neuron("cuba", 1.0), name="d1")], readout="spikes")
    res = simulate(net, torch.rand(7, 2, 5, 5, dtype=torch.float64), 5, record_spikes=True)
    assert res.layer_names == ["c0", "d1"]
    assert res.output_spikes.shape == (5, 7, 3) and res.output_spikes.dtype == torch.int64
    assert [c.shape for c in res.layer_counts] == [(7, 4, 5, 5), (7, 3)]
    assert [s.shape for s in res.layer_step_spikes] == [(5, 7), (5, 7)]
    assert res.layer_spike_trains[0].shape == (5, 7, 4, 5, 5)
    assert res.layer_spike_trains[0].dtype == torch.bool
    assert (res.layer_spike_trains[0].sum(dim=(2, 3, 4)) == res.layer_step_spikes[0]).all()
    assert res.predictions().shape == (5, 7)
    assert (res.output_counts()[-1] == res.layer_counts[1]).all()


# ---------------------------------------------------------------------------
# extra: timing, conv integer rules, input neuron, encode_input
# ---------------------------------------------------------------------------

def test_pipelined_is_delayed_by_one_step_per_layer():
    """With zero bias, du = 4095 and dv = 0 a zero input leaves every state
    unchanged, so Lava's timing is the unpipelined SNN delayed by l steps at layer l."""
    rng = np.random.default_rng(1)
    layers = [Dense(weight=rng.integers(-20, 20, size=(6, 4)), bias=None,
                    neuron=Neuron("if_soft", 40), name="d0"),
              Dense(weight=rng.integers(-20, 30, size=(5, 6)), bias=None,
                    neuron=Neuron("if_soft", 5), name="d1")]
    net = Network(input=Input(shape=(4,)), layers=layers, integer=True, input_bits=8, readout="spikes")
    x = rng.integers(0, 256, size=(3, 12, 4))
    plain = simulate(net, x, 12, record_spikes=True)
    piped = simulate(net, x, 12, pipelined=True, record_spikes=True)
    for layer in range(2):
        d = layer + 1
        p, q = piped.layer_spike_trains[layer], plain.layer_spike_trains[layer]
        assert not p[:d].any()
        assert torch.equal(p[d:], q[:-d])
    assert plain.layer_counts[1].sum() > 0


def _conv_net(cin, w_val, vth=1):
    w = np.full((1, cin, 3, 3), w_val, dtype=np.int64)
    return Network(input=Input(shape=(cin, 3, 3)),
                   layers=[Conv(weight=w, bias=None, neuron=Neuron("cuba", vth), name="conv0")],
                   integer=True, input_bits=8, readout="spikes")


def test_integer_conv_wraps_to_24_bits():
    # 20 channels: 127·255·180 = 5,829,300 < 2**23 → positive → spike (v > 0)
    x = np.full((1, 20, 3, 3), 255)
    assert simulate(_conv_net(20, 127), x, 1).output_spikes.tolist() == [[[1]]]
    # 30 channels: 127·255·270 = 8,743,950 ≥ 2**23 → wraps to 8,743,950 − 2**24 < 0 → no spike
    x = np.full((1, 30, 3, 3), 255)
    assert simulate(_conv_net(30, 127), x, 1).output_spikes.tolist() == [[[0]]]


def test_integer_conv_beyond_float32_raises():
    # 60 channels: partial sums reach 127·255·540 = 17,487,900 ≥ 2**24
    x = np.full((1, 60, 3, 3), 255)
    with pytest.raises(QuantizationError, match="conv0"):
        simulate(_conv_net(60, 127), x, 1)
    # the same layer on small inputs is exact and runs
    simulate(_conv_net(60, 127), np.ones((1, 60, 3, 3), dtype=np.int64), 1)


def test_input_neuron_layer_gets_input_directly():
    """An IR input neuron receives the input as a_in at step t (no synapse in front)."""
    net = Network(input=Input(shape=(1,), neuron=Neuron("cuba", 1)),
                  layers=[Dense(weight=np.array([[2]]), bias=None,
                                neuron=Neuron("cuba", 1), name="d0")],
                  integer=True, readout="spikes")
    # a_in = 2 → u = v = 128 > 64 → the input layer spikes at step 1 already, and so
    # does d0 (a = 2 → v = 128 > 64);
    # d0 gets it at step 1 (plain) or step 2 (pipelined).
    plain = simulate(net, np.array([[2]]), 3)
    piped = simulate(net, np.array([[2]]), 3, pipelined=True)
    assert plain.layer_names == ["input", "d0"]
    assert plain.layer_step_spikes[0][:, 0].tolist() == [1, 1, 1]
    assert plain.output_spikes[:, 0, 0].tolist() == [1, 1, 1]
    assert piped.output_spikes[:, 0, 0].tolist() == [0, 1, 1]
    # input_bias (mantissa, bias_exp 6) alone drives it: 2 << 6 = 128 > 64
    biased = simulate(net, np.zeros((2, 1), dtype=np.int64), 2,
                      input_bias=np.array([[2], [0]]))
    assert biased.layer_counts[0][:, 0].tolist() == [2, 0]


def test_input_validation():
    net = _one_dense("cuba", 1, weight=1, integer=True, input_bits=8)
    with pytest.raises(QuantizationError):
        simulate(net, np.array([[256]]), 2)
    with pytest.raises(QuantizationError):
        simulate(net, np.array([[0.5]]), 2)
    with pytest.raises(IRError):
        simulate(net, np.array([[1]]), 0)
    with pytest.raises(IRError):
        simulate(net, np.zeros((1, 3, 1), dtype=np.int64), 2)


def test_encode_input():
    assert encode_input(np.array([0.0, 0.5, 1.0]), 8).tolist() == [0, 128, 255]
    assert encode_input(np.array([0.2]), 4).dtype == np.int64
    with pytest.raises(QuantizationError):
        encode_input(np.array([1.01]), 8)
    with pytest.raises(QuantizationError):
        encode_input(np.array([np.nan]), 8)


# ---------------------------------------------------------------------------
# 6. fast kernels == the float64/int64 reference path (kernel="exact64")
# ---------------------------------------------------------------------------

def _results_equal(a, b):
    assert torch.equal(a.output_spikes, b.output_spikes)
    assert torch.equal(a.output_potential, b.output_potential)
    assert a.output_potential.dtype == b.output_potential.dtype == torch.int64
    for x, y in zip(a.layer_counts, b.layer_counts):
        assert x.dtype == y.dtype == torch.int64 and torch.equal(x, y)
    for x, y in zip(a.layer_step_spikes, b.layer_step_spikes):
        assert torch.equal(x, y)
    for x, y in zip(a.layer_spike_trains, b.layer_spike_trains):
        assert torch.equal(x, y)


def _neuron(draw, kind, theta):
    if kind == "if_soft":
        return Neuron("if_soft", theta, du=LOIHI2.if_du, dv=LOIHI2.if_dv,
                      bias_exp=draw(st.integers(0, 6)))
    # leaky cuba: decays exercise the trunc(x·k/4096) products
    return Neuron("cuba", theta, du=draw(st.integers(0, LOIHI2.decay_max)),
                  dv=draw(st.sampled_from([0, draw(st.integers(1, LOIHI2.decay_max))])),
                  bias_exp=draw(st.integers(0, 6)))


def _kernel(rng, shape, wmax, pool):
    """Random integer kernel; with pool > 1 constant on pool×pool blocks (kron)."""
    o, i, kh, kw = shape
    small = rng.integers(-wmax // 2, wmax + 1, size=(o, i, kh, kw))
    return np.kron(small, np.ones((1, 1, pool, pool), dtype=np.int64)) if pool > 1 else small


@st.composite
def integer_nets(draw):
    """Random integer IR: [conv (maybe a folded-pool kernel)] → flatten → dense (maybe
    block-constant over the map, the folded avg-pool + linear) → dense readout, plus
    graded inputs. Input bits and weight ranges are drawn so that some layers run
    the int8/float32 kernels, some the float64 ones and some the int64 wrap emulation."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["if_soft", "cuba"]))
    bits = draw(st.sampled_from([1, 4, 8, 8, 12, 20]))  # 12, 20 bits: float64 sums
    wmax = draw(st.sampled_from([3, 127, 127, 4000]))  # 4000: wraps possible
    c0, h, w = draw(st.integers(1, 3)), draw(st.integers(4, 9)), draw(st.integers(4, 9))
    layers, shape = [], (c0, h, w)
    if draw(st.booleans()):
        p = draw(st.sampled_from([1, 2, 2, 3]))
        k = draw(st.integers(1, 3)) if p == 1 else draw(st.integers(1, 2))
        pad = draw(st.integers(0, k * p - 1))  # not a multiple of P: the pre-pad path
        stride = p * draw(st.integers(1, 2))
        if (h + 2 * pad - k * p) >= 0 and (w + 2 * pad - k * p) >= 0:
            c1 = draw(st.integers(1, 4))
            layers.append(Conv(weight=_kernel(rng, (c1, c0, k, k), wmax, p),
                               bias=rng.integers(-50, 51, size=c1), padding=(pad, pad),
                               stride=(stride, stride), name="conv0",
                               neuron=_neuron(draw, kind, 1)))
            shape = layers[-1].output_shape(shape)
    layers.append(Flatten(name="flat"))
    c, hh, ww = shape
    n1 = draw(st.integers(1, 6))
    dense_w = rng.integers(-wmax // 2, wmax + 1, size=(n1, c, hh, ww))
    p = draw(st.sampled_from([1, 2]))
    if p == 2 and hh >= 2 and ww >= 2:  # the converter's pooled linear: spread, floor-cropped
        grid = rng.integers(-wmax // 2, wmax + 1, size=(n1, c, hh // 2, ww // 2))
        dense_w = np.zeros_like(dense_w)
        dense_w[:, :, :hh // 2 * 2, :ww // 2 * 2] = np.kron(grid, np.ones((1, 1, 2, 2), int))
    layers.append(Dense(weight=dense_w.reshape(n1, -1), bias=rng.integers(-50, 51, size=n1),
                        weight_exp=draw(st.integers(-3, 3)), name="dense1",
                        neuron=_neuron(draw, kind, 1)))
    layers.append(Dense(weight=rng.integers(-wmax // 2, wmax + 1, size=(3, n1)), bias=None,
                        name="dense2", neuron=_neuron(draw, kind, 1)))
    net = Network(input=Input(shape=(c0, h, w)), layers=layers, integer=True, input_bits=bits, readout="spikes")
    x = rng.integers(0, 1 << bits, size=(draw(st.integers(1, 5)), c0, h, w))
    # thresholds below the largest positive synaptic input, so layers fire
    x_max = (1 << bits) - 1
    for layer in net.weighted_layers:
        pos = int(np.clip(layer.weight, 0, None).reshape(len(layer.weight), -1).sum(1).max())
        top = max(1, min(LOIHI2.threshold_max, x_max * pos // 3))
        layer.neuron.threshold = int(rng.integers(1, top + 1))
        x_max = 1
    return net, x


@settings(max_examples=examples(150), deadline=None)
@given(case=integer_nets(), T=st.integers(1, 6), pipelined=st.booleans(),
       chunk_values=st.sampled_from([None, 1, 37]))
def test_fast_kernels_equal_exact64(case, T, pipelined, chunk_values):
    """Every fast path (int8/float32/float64 synapses, pooling fold, exact float neuron
    state, batch chunks) gives the same integers as the float64/int64 reference path."""
    net, x = case
    try:
        ref = simulate(net, x, T, pipelined=pipelined, record_spikes=True, kernel="exact64")
    except QuantizationError:  # beyond exact float64 or Lava's float32 conv: both refuse
        with pytest.raises(QuantizationError):
            simulate(net, x, T, pipelined=pipelined, kernel="fast")
        return
    # small chunk budgets: one or a few samples per chunk, a short last chunk
    with mock.patch.object(simulator, "_CHUNK_VALUES", chunk_values or simulator._CHUNK_VALUES):
        fast = simulate(net, x, T, pipelined=pipelined, record_spikes=True)
    _results_equal(fast, ref)
    for p in kernel_plan(net, x, T):  # which paths ran (pytest --hypothesis-show-statistics)
        event(f"{p['synapse']} pool={p['pool']} {p['neuron_mode']} {p['state_dtype']}")
    event(f"spiking layers: {sum(int(c.sum()) > 0 for c in ref.layer_counts)}")


def _converter_like_net(kind="if_soft"):
    """conv0 → conv1 whose 6×6 stride-2 kernel is a folded 2×2 avg-pool + 3×3 conv →
    flatten → dense over the pooled map (folded) → readout; 8-bit graded input."""
    rng = np.random.default_rng(3)
    neuron = Neuron(kind, 200, du=LOIHI2.if_du, dv=LOIHI2.if_dv)
    conv0 = Conv(weight=rng.integers(-60, 100, size=(4, 1, 3, 3)), bias=rng.integers(-9, 9, 4),
                 padding=(1, 1), name="conv0", neuron=neuron)
    k1 = np.kron(rng.integers(-60, 100, size=(6, 4, 3, 3)), np.ones((1, 1, 2, 2), int))
    conv1 = Conv(weight=k1, bias=None, stride=(2, 2), padding=(2, 2), name="conv1",
                 neuron=Neuron(kind, 150, du=LOIHI2.if_du, dv=LOIHI2.if_dv))
    grid = rng.integers(-60, 100, size=(5, 6, 1, 1))
    spread = np.zeros((5, 6, 3, 3), dtype=np.int64)
    # a 3×3 map: the pooling's floor drops row and column 2
    spread[:, :, :2, :2] = np.kron(grid, np.ones((1, 1, 2, 2), int))
    dense = Dense(weight=spread.reshape(5, -1), bias=rng.integers(-9, 9, 5), name="dense2",
                  neuron=Neuron(kind, 40, du=LOIHI2.if_du, dv=LOIHI2.if_dv))
    net = Network(input=Input(shape=(1, 6, 6)), layers=[conv0, conv1, Flatten(), dense],
                  integer=True, input_bits=8, readout="spikes")
    return net, rng.integers(0, 256, size=(7, 1, 6, 6))


def test_kernel_plan_picks_fast_exact_kernels():
    net, x = _converter_like_net()
    plan = kernel_plan(net, x, 4)
    assert [p["pool"] for p in plan] == [1, 2, 2]
    # binary spikes into 8-bit weights: the int8 kernels where oneDNN has them (x86)
    fast = {"int8", "float32"}
    assert plan[0]["synapse"] == "float32"  # 8-bit graded pixels: int16 pairs could saturate
    assert all(p["synapse"] in fast and p["neuron_mode"] == "exact"
               and p["state_dtype"] == torch.float32 for p in plan)
    ref = kernel_plan(net, x, 4, kernel="exact64")
    assert all(p["pool"] == 1 and p["synapse"] == "float64"
               and p["neuron_mode"] == "lava" for p in ref)
    res = simulate(net, x, 4, record_spikes=True)
    assert 0 < int(res.layer_counts[1].sum()) < res.layer_counts[1].numel() * 4
    _results_equal(res, simulate(net, x, 4, record_spikes=True, kernel="exact64"))


def test_kernel_plan_falls_back_where_the_bound_says_so():
    # 20-bit graded input into 100·127: sums beyond 2**24 -> float64 synapse; a·64
    # may pass 2**23 -> the int64 wrap emulation
    net = _one_dense("if_soft", 1000, weight=np.full((2, 100), 127), integer=True,
                     input_bits=20)
    x = np.full((2, 100), (1 << 20) - 1)
    (layer,) = kernel_plan(net, x, 3)
    assert layer["synapse"] == "float64" and layer["neuron_mode"] == "lava"
    _results_equal(simulate(net, x, 3, record_spikes=True),
                   simulate(net, x, 3, record_spikes=True, kernel="exact64"))
    # small graded sums but a leaky neuron whose u·k exceeds 2**24 -> exact in float64
    # (|u| ≤ 64·255·4096/11 < 2**23: no wrap; u·4085 > 2**24: float64)
    net = _one_dense("cuba", 50, weight=[[1]], integer=True, input_bits=8, du=10, dv=7)
    x = np.array([[255], [3], [0]])
    (layer,) = kernel_plan(net, x, 3)
    assert layer["synapse"] in ("int8", "float32")  # 2·255·1 cannot saturate int16
    assert (layer["neuron_mode"], layer["state_dtype"]) == ("exact", torch.float64)
    _results_equal(simulate(net, x, 9, record_spikes=True),
                   simulate(net, x, 9, record_spikes=True, kernel="exact64"))


def test_float32_mode_folds_and_matches_float64_on_exact_values():
    """Float IR with dyadic weights (multiples of 1/64, small): every sum is exact in
    float32 and float64 alike, so the float32 path (pooling fold, float32 state)
    equals the float64 reference; the potential comes back in the chosen dtype."""
    net, x = _converter_like_net()
    scale = {"conv0": 64.0 * 255, "conv1": 64.0, "dense2": 64.0}
    layers = [layer if isinstance(layer, Flatten) else
              layer.__class__(**{**layer.__dict__, "weight": layer.weight / scale[layer.name],
                                 "bias": None if layer.bias is None else layer.bias / 8.0,
                                 "neuron": Neuron(layer.neuron.kind, 1.0)})
              for layer in net.layers]
    fnet = Network(input=net.input, layers=layers, integer=False, readout="spikes")
    xf = x / 255.0
    assert [p["pool"] for p in kernel_plan(fnet, xf, 6, dtype=torch.float32)] == [1, 2, 2]
    r64 = simulate(fnet, xf, 6, record_spikes=True)
    r32 = simulate(fnet, torch.as_tensor(xf, dtype=torch.float32), 6, record_spikes=True,
                   dtype=torch.float32)
    assert r64.output_potential.dtype == torch.float64
    assert r32.output_potential.dtype == torch.float32
    for a, b in zip(r64.layer_spike_trains, r32.layer_spike_trains):
        assert torch.equal(a, b)
    assert torch.equal(r64.output_potential, r32.output_potential.double())
    assert int(r64.layer_counts[0].sum()) > 0
    with pytest.raises(IRError):
        simulate(fnet, xf, 2, dtype=torch.float16)
    with pytest.raises(IRError):
        simulate(fnet, xf, 2, kernel="fastest")


def test_input_neurons_with_per_sample_bias_in_chunks():
    """An input neuron layer (a_in = the input, per-sample bias) runs on the fast path
    in one-sample chunks and equals the reference."""
    rng = np.random.default_rng(5)
    net = Network(input=Input(shape=(2, 4, 4), neuron=Neuron("if_soft", 3)),
                  layers=[Conv(weight=rng.integers(-5, 9, size=(3, 2, 3, 3)), bias=None,
                               padding=(1, 1), name="c0", neuron=Neuron("cuba", 4)),
                          Flatten(), Dense(weight=rng.integers(-5, 9, size=(4, 48)),
                                           bias=rng.integers(-3, 3, 4), name="d1",
                                           neuron=Neuron("if_soft", 6))],
                  integer=True, readout="spikes")
    x = rng.integers(-2, 4, size=(5, 6, 2, 4, 4))
    bias = rng.integers(-2, 3, size=(5, 2, 4, 4))
    assert kernel_plan(net, x, 6)[0]["neuron_mode"] == "exact"
    ref = simulate(net, x, 6, input_bias=bias, record_spikes=True, kernel="exact64")
    with mock.patch.object(simulator, "_CHUNK_VALUES", 1):
        for piped in (False, True):
            _results_equal(simulate(net, x, 6, input_bias=bias, record_spikes=True,
                                    pipelined=piped),
                           simulate(net, x, 6, input_bias=bias, record_spikes=True,
                                    pipelined=piped, kernel="exact64"))
    assert int(ref.layer_counts[0].sum()) > 0 and int(ref.layer_counts[2].sum()) > 0
