"""Tests of the reference simulator (hardware/simulator.py).

Float and integer neuron dynamics by hand, the QCFS rate property of the
soft-reset IF neuron, Lava's integer edge cases (checked against Lava itself),
pipelined timing, and the result helpers.
"""
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from hardware.errors import IRError, QuantizationError
from hardware.ir import Conv, Dense, Input, Network, Neuron
from hardware.simulator import SimResult, encode_input, simulate
from hardware.spec import LOIHI2


def _one_dense(kind, threshold, weight=1.0, integer=False, weight_exp=0, bias=None,
               du=4095, dv=0, input_bits=None, bias_exp=6):
    w = np.atleast_2d(np.asarray(weight, dtype=np.int64 if integer else np.float64))
    return Network(
        input=Input(shape=(w.shape[1],)),
        layers=[Dense(weight=w, bias=bias, weight_exp=weight_exp, name="d0",
                      neuron=Neuron(kind, threshold, du=du, dv=dv, bias_exp=bias_exp))],
        integer=integer, input_bits=input_bits)


# ---------------------------------------------------------------------------
# 1. QCFS property of the soft-reset IF neuron
# ---------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
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
    s = 1 at step 1 only, bias_mant 144 with bias_exp 0, vth = 0 (spike if v > 0).
      step 1: u = −3 << 6 = −192;  v = −192 + 144 = −48          → no spike
      step 2: u = −(192·2048 >> 12) = −96
              v = −(48·4095 >> 12) − 96 + 144 = −(196560 >> 12) + 48 = −47 + 48 = 1 > 0 → spike
    Lava's sign-magnitude shift rounds toward zero; a floor (−48) would give v = 0: no spike."""
    net = _one_dense("cuba", 0, weight=[[-3]], integer=True, input_bits=8,
                     du=2047, dv=1, bias=np.array([144]), bias_exp=0)
    x = np.array([1, 0]).reshape(1, 2, 1)
    assert simulate(net, x, 2).output_spikes[:, 0, 0].tolist() == [0, 1]


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
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.dense.process import Dense as LavaDense
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source
    from lava.proc.lif.process import LIF

    rng = np.random.default_rng(7)
    T, n_out = 10, 6
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

    inputs = x.T[None]  # (1, T, 6)
    total = 0
    for key, b in branches.items():
        # one IR network per neuron (thresholds are per layer in the IR)
        sim = np.zeros((T, n_out), dtype=np.int64)
        for i in range(n_out):
            net = _one_dense("cuba", int(b["vth"][i]), weight=b["w"][i:i + 1], integer=True,
                             weight_exp=b["exp"], du=b["du"], dv=b["dv"],
                             bias=b["bias"][i:i + 1], bias_exp=b["bias_exp"],
                             input_bits=LOIHI2.graded_spike_max_bits)
            sim[:, i] = simulate(net, inputs, T, pipelined=True).output_spikes[:, 0, 0].numpy()
        assert (sim == lava_out[key]).all(), (key, sim, lava_out[key])
        total += int(sim.sum())
    assert total > 0  # the comparison is not vacuous


# ---------------------------------------------------------------------------
# 4. Dense weight_exp < 0 floors
# ---------------------------------------------------------------------------

def test_negative_weight_exp_floors():
    """weight_exp = −2: a = (W·s) >> 2, arithmetic (floor).
    Neuron 0: W = 5,  s = 1 → a = 5 >> 2 = 1;   u = 64, v = 64 > 0 → spikes every step.
    Neuron 1: W = −5, s = 1 → a = −5 >> 2 = −2 (truncation would give −1);
              bias 2 << 6 = 128: v = −128 + 128 = 0, not > 0 → never spikes
              (with truncation v would grow by 64 per step and spike)."""
    w = np.array([[5], [-5]])
    net = Network(input=Input(shape=(1,)),
                  layers=[Dense(weight=w, bias=np.array([0, 2]), weight_exp=-2, name="d0",
                                neuron=Neuron("cuba", 0, du=4095, dv=0, bias_exp=6))],
                  integer=True, input_bits=8)
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
                    layer_counts=[])
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
    from hardware.ir import Flatten
    net = Network(input=Input(shape=(2, 5, 5)),
                  layers=[conv, Flatten(), Dense(weight=rng.normal(size=(3, 100)), bias=None,
                                                 neuron=Neuron("cuba", 1.0), name="d1")])
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
    net = Network(input=Input(shape=(4,)), layers=layers, integer=True, input_bits=8)
    x = rng.integers(0, 256, size=(3, 12, 4))
    plain = simulate(net, x, 12, record_spikes=True)
    piped = simulate(net, x, 12, pipelined=True, record_spikes=True)
    for layer in range(2):
        d = layer + 1
        p, q = piped.layer_spike_trains[layer], plain.layer_spike_trains[layer]
        assert not p[:d].any()
        assert torch.equal(p[d:], q[:-d])
    assert plain.layer_counts[1].sum() > 0


def _conv_net(cin, w_val, vth=0):
    w = np.full((1, cin, 3, 3), w_val, dtype=np.int64)
    return Network(input=Input(shape=(cin, 3, 3)),
                   layers=[Conv(weight=w, bias=None, neuron=Neuron("cuba", vth), name="conv0")],
                   integer=True, input_bits=8)


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
                  layers=[Dense(weight=np.array([[1]]), bias=None,
                                neuron=Neuron("cuba", 0), name="d0")],
                  integer=True)
    # a_in = 2 → u = v = 128 > 64 → the input layer spikes at step 1 already;
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
