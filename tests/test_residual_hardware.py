"""Residual networks (``ir.Projection`` extra inputs) through every numeric consumer of the IR:
the quantizer's joint scale, the validator, the float and integer simulators (both timing
modes, every kernel path) against an independent numpy reference written here, and the
activity / energy / resource counts.

The reference loop (:func:`reference_run`) shares nothing with ``hardware/simulator/``:
its synapses are explicit numpy int64 sums over kernel taps with Lava's output rules
(Conv: wrap to 24 bits; Dense: int32), its timing is written from the IR's docstring
(paper's same-step rule; Lava's one step per hop plus ``net.extra_delay`` per
projection), and its neurons are :func:`hardware.fixed_point.dynamics.step`, the one integer step
that ``tests/test_dynamics.py`` checks against Lava's own models.
"""
from __future__ import annotations

import dataclasses
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import hardware.simulator as simulator
from hardware.fixed_point import dynamics
from hardware.analysis.activity import activity_from_sim, fan_in, fan_out, layer_activity
from hardware.analysis.energy import count_macs
from hardware.errors import LoihiRangeError, QuantizationError
from hardware.ir import (Conv, Dense, Flatten, Input, Network, Neuron, Projection,
                         readout_neuron)
from hardware.fixed_point.quantize import SUM_OF_INPUTS, quantize
from hardware.analysis.resources import check_fit
from hardware.simulator import kernel_plan, simulate
from hardware.spec import LOIHI2
from hardware.ir.validate import project_limits, simulator_limits, validate_network
from tests.property_profiles import examples

ACT_MAX = LOIHI2.activation_max


# =============================================================================== networks
def identity(c: int, gain: float = 1.0) -> np.ndarray:
    """A ResNet identity shortcut as a 1×1 conv weight: gain · I (gain = θ of the source)."""
    return gain * np.eye(c).reshape(c, c, 1, 1)


def float_residual_net(kind: str = "if_soft", readout: str = "potential", seed: int = 0,
                       readout_projection: bool = False) -> Network:
    """input (2, 8, 8) → c1 → c2 → c3 (+ identity from c1) → c4 (stride 2) → c5 (+ 1×1
    stride-2 projection from c3) → flatten → d6 → d7 (+ dense projection from c3,
    flattened) → out (optionally + dense projection from d6).

    Extra delays (Lava): c3 ← c1: 1, c5 ← c3: 1, d7 ← c3: 3, out ← d6: 1."""
    rng = np.random.default_rng(seed)
    th = {"c1": 1.0, "c2": 1.2, "c3": 0.9, "c4": 1.1, "c5": 1.0, "d6": 1.3, "d7": 0.8}

    def neuron(name):
        if kind == "if_soft":
            return Neuron("if_soft", th[name])
        return Neuron("cuba", th[name], du=LOIHI2.if_du, dv=LOIHI2.if_dv)

    def w(*shape, scale=0.4):
        return rng.normal(scale=scale, size=shape)

    c1 = Conv(w(4, 2, 3, 3), 0.05 * rng.normal(size=4), neuron("c1"), padding=(1, 1), name="c1")
    c2 = Conv(w(4, 4, 3, 3), None, neuron("c2"), padding=(1, 1), name="c2")
    c3 = Conv(w(4, 4, 3, 3), 0.05 * rng.normal(size=4), neuron("c3"), padding=(1, 1), name="c3",
              extra_inputs=(Projection("c1", identity(4, th["c1"])),))
    c4 = Conv(w(6, 4, 3, 3), None, neuron("c4"), stride=(2, 2), padding=(1, 1), name="c4")
    c5 = Conv(w(6, 6, 3, 3), None, neuron("c5"), padding=(1, 1), name="c5",
              extra_inputs=(Projection("c3", w(6, 4, 1, 1), stride=(2, 2)),))
    d6 = Dense(w(10, 96, scale=0.15), 0.05 * rng.normal(size=10), neuron("d6"), name="d6")
    d7 = Dense(w(10, 10), None, neuron("d7"), name="d7",
               extra_inputs=(Projection("c3", w(10, 256, scale=0.05), kind="dense"),))
    out_neuron = readout_neuron(False) if readout == "potential" else neuron("d7")
    out_extra = (Projection("d6", w(5, 10), kind="dense"),) if readout_projection else ()
    out = Dense(w(5, 10), 0.05 * rng.normal(size=5), out_neuron, name="out",
                extra_inputs=out_extra)
    return Network(input=Input((2, 8, 8)), layers=[c1, c2, c3, c4, c5, Flatten(name="flat"),
                                                   d6, d7, out], readout=readout)


def integer_residual_net(kind: str, seed: int = 0, leaky: bool = True) -> Network:
    """The same graph in integer form with random 8-bit weights (the identity shortcut
    c1 → c3 stays gain · I), thresholds that make every layer fire, per-channel biases and
    (cuba, ``leaky``) leaky decays."""
    rng = np.random.default_rng(seed)
    f = float_residual_net("if_soft", readout="spikes", seed=seed, readout_projection=True)
    layers, x_max = [], 255
    for layer in f.layers:
        if isinstance(layer, Flatten):
            layers.append(layer)
            continue
        wq = rng.integers(-60, 100, size=layer.weight.shape)
        extra = tuple(dataclasses.replace(p, weight=identity(p.weight.shape[0], int(rng.integers(20, 90)))
                                          .astype(np.int64) if _is_diagonal(p.weight)
                                          else rng.integers(-40, 90, size=p.weight.shape))
                      for p in layer.extra_inputs)
        rows = [wq.reshape(len(wq), -1) * x_max] + [p.weight.reshape(len(wq), -1) for p in extra]
        pos = int(sum(np.clip(r, 0, None).sum(1) for r in rows).max())
        vth = int(rng.integers(max(1, pos // 40), max(2, pos // 6)))
        if kind == "cuba" and leaky:
            neuron = Neuron("cuba", vth, du=int(rng.integers(0, 4096)), dv=int(rng.integers(0, 400)))
        else:
            neuron = Neuron(kind, vth)
        bias = rng.integers(-20, 21, size=wq.shape[0])
        layers.append(dataclasses.replace(layer, weight=wq, bias=bias, neuron=neuron,
                                          extra_inputs=extra))
        x_max = 1
    return Network(input=f.input, layers=layers, integer=True, input_bits=8, readout="spikes")


def _is_diagonal(w: np.ndarray) -> bool:
    m = w.reshape(w.shape[0], -1)
    return w.shape[2:] == (1, 1) and m.shape[0] == m.shape[1] and not np.any(m - np.diag(np.diag(m)))


def inputs(seed: int, n: int = 3, T=None) -> np.ndarray:
    rng = np.random.default_rng(100 + seed)
    shape = (n, 2, 8, 8) if T is None else (n, T, 2, 8, 8)
    return rng.integers(0, 256, size=shape)


# ====================================================================== numpy reference
def wrap(x: np.ndarray, bits: int) -> np.ndarray:
    half = 1 << (bits - 1)
    return ((x + half) & ((1 << bits) - 1)) - half


def ref_conv(x: np.ndarray, w: np.ndarray, stride, padding, dilation=(1, 1), groups=1):
    """Cross-correlation of (B, C, H, W) with (O, C/groups, kh, kw), summed tap by tap
    (exact in int64; plain float64 sums for floats)."""
    B, C, H, W = x.shape
    O, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((B, O, oh, ow), dtype=np.result_type(x, w))
    og = O // groups
    for g in range(groups):
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, g * cg:(g + 1) * cg, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                           j * dw:j * dw + sw * (ow - 1) + 1:sw]
                out[:, g * og:(g + 1) * og] += np.einsum("bchw,oc->bohw", patch,
                                                         w[g * og:(g + 1) * og, :, i, j])
    return out


def ref_synapse(syn, x: np.ndarray, graded: bool) -> np.ndarray:
    """Lava's integer synaptic input of one Conv/Dense (or projection) on input x."""
    w = np.asarray(syn.weight, dtype=np.int64)
    if isinstance(syn, Conv) or getattr(syn, "kind", None) == "conv":
        acc = ref_conv(x.astype(np.int64), w, syn.stride, syn.padding, syn.dilation, syn.groups)
        return wrap(acc, LOIHI2.conv_output_bits)
    acc = x.reshape(x.shape[0], -1).astype(np.int64) @ w.T
    if graded:
        acc = wrap(acc, 32)
    e = int(syn.weight_exp)
    return wrap(acc << e if e >= 0 else acc >> -e, 32)


def reference_run(net: Network, x: np.ndarray, T: int, pipelined: bool, align: bool = True):
    """(spike trains per layer (T, B, *shape) bool, last layer's v (T, B, n)) of an
    integer IR, step by step (module docstring)."""
    B = x.shape[0]
    varying = x.ndim == len(net.input.shape) + 2
    weighted = net.weighted_layers
    shapes = {l.name: s for l, s in zip(net.layers, net.shapes()) if not isinstance(l, Flatten)}
    trains = {l.name: np.zeros((T + 1, B) + shapes[l.name], dtype=bool) for l in weighted}
    u = {l.name: np.zeros((B,) + shapes[l.name], np.int64) for l in weighted}
    v = {l.name: np.full((B,) + shapes[l.name], dynamics.initial_v(l.neuron.kind, l.neuron.threshold),
                         np.int64) for l in weighted}
    params = {}
    for l in weighted:
        b = np.zeros(shapes[l.name][0], np.int64) if l.bias is None else np.asarray(l.bias, np.int64)
        b = b.reshape((-1,) + (1,) * (len(shapes[l.name]) - 1))
        params[l.name] = dynamics.NeuronParams(l.neuron.kind, int(l.neuron.threshold), int(l.neuron.du),
                                               int(l.neuron.dv), b, int(l.neuron.bias_exp))
    v_out = np.zeros((T, B, int(np.prod(shapes[weighted[-1].name]))), np.int64)

    def inp(t):  # graded input of step t (1-based)
        return x[:, t - 1] if varying else x

    lag = 1 if pipelined else 0
    for t in range(1, T + 1):
        prev = None
        for i, layer in enumerate(weighted):
            ts = t - lag  # the step whose output the main synapse delivers now
            if ts < 1:
                a = np.zeros((B,) + shapes[layer.name], np.int64)
            elif i == 0:
                a = ref_synapse(layer, inp(ts), graded=True)
            else:
                a = ref_synapse(layer, trains[prev][ts], graded=False)
            for p in layer.extra_inputs:
                d = net.extra_delay(layer, p) if (pipelined and align) else 0
                tp = t - lag - d
                if tp >= 1:
                    a = a + ref_synapse(p, trains[p.source][tp], graded=False)
            u[layer.name], v[layer.name], s = dynamics.step(u[layer.name], v[layer.name], a,
                                                            params[layer.name])
            trains[layer.name][t] = s
            prev = layer.name
        v_out[t - 1] = v[weighted[-1].name].reshape(B, -1)
    return [trains[l.name][1:] for l in weighted], v_out


def assert_equals_reference(net, x, T, pipelined, align=True, kernel="fast"):
    res = simulate(net, x, T, pipelined=pipelined, record_spikes=True, kernel=kernel,
                   align_extra_inputs=align)
    want, v_out = reference_run(net, x, T, pipelined, align)
    for name, got, ref in zip(res.layer_names, res.layer_spike_trains, want):
        assert np.array_equal(got.numpy(), ref), name
    assert np.array_equal(res.output_potential.numpy(), v_out)
    return res


def drop_extra_inputs(net: Network) -> Network:
    return net.replace(layers=[layer if isinstance(layer, Flatten) else
                               dataclasses.replace(layer, extra_inputs=()) for layer in net.layers])


# ============================================================================ quantizer
def _report(q: Network, name: str) -> dict:
    return next(r for r in q.metadata["quantization"] if r["name"] == name)


def _sum_worst(layer, x_max: int = 1) -> int:
    """Worst-case |synaptic input| of the integer layer over ALL of its synapses."""
    rows = [np.asarray(layer.weight).reshape(len(layer.weight), -1) * x_max] + \
        [np.asarray(p.weight).reshape(len(layer.weight), -1) for p in layer.extra_inputs]
    pos = sum(np.clip(r, 0, None).sum(1) for r in rows)
    neg = sum(np.clip(-r, 0, None).sum(1) for r in rows)
    return int(max(pos.max(), neg.max()))


@pytest.mark.parametrize("kind", ["if_soft", "cuba"])
def test_projection_uses_the_receiving_layers_scale(kind):
    net = float_residual_net(kind, readout_projection=True)
    q = quantize(net, input_bits=8, readout_steps=8)
    validate_network(q, project_limits())
    floats = {l.name: l for l in net.weighted_layers}
    for layer in q.weighted_layers:
        rep = _report(q, layer.name)
        s = rep["scale"]
        assert len(rep["extra_inputs"]) == len(layer.extra_inputs)
        for p, pf, prep in zip(layer.extra_inputs, floats[layer.name].extra_inputs,
                               rep["extra_inputs"]):
            assert (p.source, p.kind, p.weight_exp) == (pf.source, pf.kind, 0)
            assert tuple(p.stride) == tuple(pf.stride)
            assert p.weight.dtype.kind == "i"
            assert np.array_equal(p.weight, np.rint(s * pf.weight).astype(np.int64))
            assert prep["source"] == pf.source and prep["worst_case_input"] > 0
            assert np.abs(p.weight).max() <= LOIHI2.weight_max
        # the 24-bit bound holds for the SUM of every input, rounding included
        if layer.neuron.threshold != LOIHI2.threshold_max:
            worst = _sum_worst(layer, 255 if layer is q.weighted_layers[0] else 1)
            assert rep["worst_case_input"] == worst
            assert worst + layer.neuron.threshold + np.abs(layer.bias).max() <= ACT_MAX
    # the identity shortcut stays an identity: θ_c1 · I at c3's scale
    c3 = q.layers[2]
    assert np.array_equal(c3.extra_inputs[0].weight,
                          identity(4, round(_report(q, "c3")["scale"] * 1.0)).astype(np.int64))
    # the readout's accumulation bound covers its projection too
    out = q.layers[-1]
    assert 8 * (_sum_worst(out) + np.abs(out.bias).max()) <= LOIHI2.threshold_max


def test_projection_weights_can_set_the_scale():
    """Main weights ≤ 0.1, projection weights up to 2: the projection's weight range binds,
    its largest integer is 127 and the main weights get the same (small) scale."""
    net = float_residual_net()
    c3 = net.layers[2]
    big = np.zeros((4, 4, 1, 1))
    big[1, 2] = 2.0
    big[0, 0] = -1.0
    layers = list(net.layers)
    layers[2] = dataclasses.replace(c3, weight=0.1 * np.tanh(c3.weight),
                                    extra_inputs=(Projection("c1", big),))
    q = quantize(net.replace(layers=layers), input_bits=8, readout_steps=4)
    rep = _report(q, "c3")
    assert rep["limited_by"] == "weight range of the extra input from 'c1'"
    s = rep["scale"]
    assert s == pytest.approx(LOIHI2.weight_max / 2.0)
    assert int(np.abs(q.layers[2].extra_inputs[0].weight).max()) == LOIHI2.weight_max
    assert np.abs(q.layers[2].weight).max() < LOIHI2.weight_max // 10
    assert q.layers[2].neuron.threshold == round(s * 0.9)


def _wide_residual(theta3: float, with_projection: bool = True) -> Network:
    """d1 (700) → d2 (700) → d3 (3) with a dense projection d1 → d3: fan-in 700 on each
    branch, all weights 1. Alone each branch's worst case (700) lets the weight range bind
    (s = 127 < 131071/701); their sum (1400) does not (131071/1401 < 127)."""
    n = 700
    ones = np.ones((3, n))
    layers = [Dense(np.eye(n), None, Neuron("if_soft", 1.0), name="d1"),
              Dense(np.eye(n), None, Neuron("if_soft", 1.0), name="d2"),
              Dense(ones, None, Neuron("if_soft", theta3), name="d3",
                    extra_inputs=(Projection("d1", ones, kind="dense"),) if with_projection else ())]
    return Network(input=Input((n,)), layers=layers, readout="spikes")


def test_sum_of_both_branches_sets_the_24_bit_bound():
    q = quantize(_wide_residual(1.0), input_bits=8)
    rep = _report(q, "d3")
    assert rep["limited_by"] == "24-bit state" + SUM_OF_INPUTS
    d3 = q.layers[2]
    main_worst = int(np.clip(d3.weight, 0, None).sum(1).max())
    proj_worst = rep["extra_inputs"][0]["worst_case_input"]
    assert rep["worst_case_input"] == main_worst + proj_worst == _sum_worst(d3)
    assert main_worst + proj_worst + d3.neuron.threshold <= ACT_MAX
    # each branch alone would have fitted at the full weight range, their sum would not
    assert 127 * 700 < ACT_MAX < 127 * 1400
    assert np.abs(d3.weight).max() < LOIHI2.weight_max
    # without the projection the same layer uses the full weight range
    alone = quantize(_wide_residual(1.0, with_projection=False), input_bits=8)
    assert _report(alone, "d3")["limited_by"] == "weight range"


def test_sum_of_both_branches_that_cannot_fit_is_refused():
    """θ = 0.004: at the sum's scale (≈ 93.6) θ rounds to mantissa 0; one branch alone
    (scale 127) keeps mantissa 1, so only the joint bound refuses it."""
    alone = quantize(_wide_residual(0.004, with_projection=False), input_bits=8)
    assert alone.layers[2].neuron.threshold == 1
    with pytest.raises(QuantizationError) as info:
        quantize(_wide_residual(0.004), input_bits=8)
    msg = str(info.value)
    assert msg.startswith("layer d3: threshold θ = 0.004 rounds to mantissa 0")
    assert "24-bit state (sum of all inputs)" in msg and "from 'd1' 700" in msg


def test_readout_accumulation_over_all_inputs_is_refused_when_too_small():
    net = float_residual_net(readout_projection=True)
    # (at 100,000 steps a hidden layer's v bound over T refuses first)
    with pytest.raises(QuantizationError, match="^layer out: .*fewer than 4 signed bits.*from 'd6'"):
        quantize(net, input_bits=8, readout_steps=10_000)


# ============================================================================ validator
def _with_projection(net: Network, index: int, **changes) -> Network:
    """A copy of ``net`` whose layer ``index`` has its projection changed, AFTER the
    Network was built (so the IR's own shape check does not run first)."""
    layers = list(net.layers)
    copy = net.replace(layers=layers)
    layer = layers[index]
    layers[index] = dataclasses.replace(
        layer, extra_inputs=(dataclasses.replace(layer.extra_inputs[0], **changes),))
    return copy


def test_validator_checks_projections_like_weights():
    net = integer_residual_net("if_soft")
    validate_network(net, project_limits())
    w = net.layers[2].extra_inputs[0].weight
    bad = w.copy()
    bad[0, 0, 0, 0] = 200
    with pytest.raises(LoihiRangeError,
                       match=r"^layer c3, extra input from 'c1': weight value 200 outside \[-128, 127\]"):
        validate_network(_with_projection(net, 2, weight=bad))
    with pytest.raises(LoihiRangeError, match="^layer c3, extra input from 'c1': weight must be integers"):
        validate_network(_with_projection(net, 2, weight=w + 0.5))
    with pytest.raises(LoihiRangeError, match="^layer c3, extra input from 'c1': weight_exp"):
        validate_network(_with_projection(net, 2, weight_exp=1))
    # a dense projection's weight exponent: 0 for this project, Lava's range for netx files
    d7 = _with_projection(net, 7, weight_exp=-3)
    with pytest.raises(LoihiRangeError, match="^layer d7, extra input from 'c3': weight_exp value -3"):
        validate_network(d7, project_limits())
    validate_network(d7, simulator_limits())
    # geometry and shapes on the source's output (IR objects can be changed after building)
    wrong = _with_projection(net, 4, stride=(1, 1))
    with pytest.raises(LoihiRangeError, match=r"^layer c5, extra input from 'c3': the projection "
                                              r"outputs \(6, 8, 8\), the layer outputs \(6, 4, 4\)"):
        validate_network(wrong)
    with pytest.raises(LoihiRangeError, match="^layer c3, extra input from 'c9': the source is not"):
        validate_network(_with_projection(net, 2, source="c9"))
    with pytest.raises(LoihiRangeError, match="^layer c3, extra input from 'c5'"):  # a later layer
        validate_network(_with_projection(net, 2, source="c5"))
    with pytest.raises(LoihiRangeError, match="^layer d7, extra input from 'c3': input shape"):
        validate_network(_with_projection(net, 7, weight=np.zeros((10, 255), np.int64)))


def test_extra_delay_beyond_loihi_delays_is_refused_for_lava_but_simulated():
    """A projection skipping 64 layers needs an extra delay of 64 > 63 (6-bit delays)."""
    n = LOIHI2.synaptic_delay_max + 3
    layers = [Dense(np.ones((1, 1), np.int64), None, Neuron("if_soft", 1), name=f"d{i}")
              for i in range(n)]
    layers[-1] = dataclasses.replace(layers[-1], extra_inputs=(
        Projection("d0", np.ones((1, 1), np.int64), kind="dense"),))
    net = Network(input=Input((1,)), layers=layers, integer=True, input_bits=1, readout="spikes")
    assert net.extra_delay(layers[-1], layers[-1].extra_inputs[0]) == 64
    with pytest.raises(LoihiRangeError, match=r"extra input from 'd0': extra synaptic delay "
                                              r"\(steps\) value 64 outside \[0, 63\]"):
        validate_network(net, project_limits())
    res = simulate(net, np.ones((1, 1), np.int64), 3)
    assert res.output_spikes.sum() > 0


# ===================================================================== integer simulator
@pytest.mark.parametrize("kind", ["if_soft", "cuba"])
@pytest.mark.parametrize("timing", ["paper", "lava", "lava-misaligned"])
def test_integer_simulation_equals_numpy_reference(kind, timing):
    net = integer_residual_net(kind, seed=1)
    x = inputs(1)
    pipelined, align = timing != "paper", timing != "lava-misaligned"
    T = 14 if pipelined else 7  # on Lava's timing the 8th layer starts at step 9
    res = assert_equals_reference(net, x, T, pipelined, align)
    assert_equals_reference(net, x, T, pipelined, align, kernel="exact64")
    # not vacuous: every layer fires, and the extra inputs change what they feed
    assert all(int(c.sum()) > 0 for c in res.layer_counts)
    plain = simulate(drop_extra_inputs(net), x, T, pipelined=pipelined, record_spikes=True)
    for name in ("c3", "c5", "d7", "out"):
        i = res.layer_names.index(name)
        assert not torch.equal(res.layer_spike_trains[i], plain.layer_spike_trains[i]), name


def test_time_varying_input_equals_reference():
    net = integer_residual_net("cuba", seed=2)
    x = inputs(2, n=2, T=5)
    for pipelined in (False, True):
        assert_equals_reference(net, x, 5, pipelined)


def test_quantized_residual_net_equals_reference():
    """The quantizer's output (joint scales) runs in the simulator exactly as the reference."""
    q = quantize(float_residual_net("if_soft", readout="potential", readout_projection=True),
                 input_bits=8, readout_steps=6)
    x = inputs(3, n=4)
    res = assert_equals_reference(q, x, 6, pipelined=False)
    assert int(res.layer_counts[2].sum()) > 0
    assert_equals_reference(q, x, 6, pipelined=True)
    plan = kernel_plan(q, x, 6)
    assert all(p["neuron_mode"] == "exact" for p in plan)  # joint bound < 2**17: fast path


def test_aligned_lava_timing_is_the_paper_delayed_by_depth():
    """No bias, du = 4095, dv = 0: zero input leaves every state unchanged, so on Lava's
    timing with the extra delays layer l's train is the paper's train delayed by its
    depth; without them the shortcut is misaligned and the trains differ."""
    base = integer_residual_net("if_soft", seed=4)
    net = base.replace(layers=[l if isinstance(l, Flatten) else dataclasses.replace(l, bias=None)
                               for l in base.layers])
    x = inputs(4, n=2)
    T = 12
    paper = simulate(net, x, T, record_spikes=True)
    lava = simulate(net, x, T, pipelined=True, record_spikes=True)
    misaligned = simulate(net, x, T, pipelined=True, record_spikes=True, align_extra_inputs=False)
    depth = net.depths()
    for name, p, q in zip(paper.layer_names, lava.layer_spike_trains, paper.layer_spike_trains):
        d = depth[name]
        assert not p[:d].any()
        assert torch.equal(p[d:], q[:-d]), name
    i = paper.layer_names.index("c3")
    assert not torch.equal(misaligned.layer_spike_trains[i], lava.layer_spike_trains[i])


def test_kernel_plan_lists_projections():
    net = integer_residual_net("if_soft")
    plan = {p["layer"]: p for p in kernel_plan(net, inputs(0), 3)}
    assert plan["c1"]["extra_inputs"] == []
    (c3,) = plan["c3"]["extra_inputs"]
    assert (c3["source"], c3["kind"], c3["extra_delay"]) == ("c1", "conv", 1)
    assert c3["synapse"] in ("int8", "float32")
    (d7,) = plan["d7"]["extra_inputs"]
    assert (d7["source"], d7["kind"], d7["extra_delay"]) == ("c3", "dense", 3)


def test_projection_sums_beyond_2_23_are_refused():
    """Below 2**23 Lava's conv (24-bit wrap) and delayed sparse synapses (int32) agree on a
    projection's sums; beyond it the simulator refuses, naming the layer and the source."""
    net = integer_residual_net("if_soft")
    huge = np.full((10, 256), 255, np.int64)  # 256 · 255 < 2**23: fine
    simulate(_with_projection(net, 7, weight=huge), inputs(0, n=1), 1)
    # a 1×1 conv projection from 33000 channels of weight 255 reaches 8.4M >= 2**23
    c = 33000
    src = Conv(np.ones((c, 1, 1, 1), np.int64), None, Neuron("if_soft", 1), name="src")
    dst = Conv(np.ones((1, c, 1, 1), np.int64), None, Neuron("if_soft", 1), name="dst",
               extra_inputs=(Projection("src", np.full((1, c, 1, 1), 255, np.int64)),))
    big = Network(input=Input((1, 1, 1)), layers=[src, dst], integer=True, input_bits=1, readout="spikes")
    with pytest.raises(QuantizationError, match="^layer dst, extra input from 'src': the projection's "
                                                "synaptic sums may reach"):
        simulate(big, np.ones((1, 1, 1, 1), np.int64), 1)


def test_input_neuron_layer_and_projections():
    """A net with an input neuron layer (files written by others): state indices shift by
    one; fast == exact64 on both timings, and the activity counts the projection."""
    rng = np.random.default_rng(9)
    layers = [Conv(rng.integers(-5, 9, (3, 2, 3, 3)), None, Neuron("cuba", 4), padding=(1, 1),
                   name="c0"),
              Conv(rng.integers(-5, 9, (3, 3, 3, 3)), None, Neuron("if_soft", 6), padding=(1, 1),
                   name="c1"),
              Conv(rng.integers(-5, 9, (3, 3, 3, 3)), None, Neuron("if_soft", 5), padding=(1, 1),
                   name="c2", extra_inputs=(Projection("c0", identity(3, 4).astype(np.int64)),))]
    net = Network(Input((2, 4, 4), neuron=Neuron("if_soft", 3)), layers, integer=True, readout="spikes")
    x = rng.integers(-2, 4, size=(3, 6, 2, 4, 4))
    for piped in (False, True):
        fast = simulate(net, x, 6, pipelined=piped, record_spikes=True)
        ref = simulate(net, x, 6, pipelined=piped, record_spikes=True, kernel="exact64")
        for a, b in zip(fast.layer_spike_trains, ref.layer_spike_trains):
            assert torch.equal(a, b)
    assert fast.layer_names == ["input", "c0", "c1", "c2"]
    act = activity_from_sim(net, ref)
    c0 = ref.layer_counts[1].numpy()
    assert act.layers[3].synops_extra == int(c0.sum()) * 3 > 0  # 1×1 over 3 channels


# ------------------------------------------------------------- fast kernels == exact64
@st.composite
def residual_integer_nets(draw):
    """conv a → conv b (stride s) → conv c (+ 1×1 stride-s projection from a) → flatten →
    dense d → dense e (+ dense projection from c or b); weights, input bits, weight
    exponents and decays drawn so the int8, float32, float64 and int64-emulation paths run."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["if_soft", "cuba"]))
    bits = draw(st.sampled_from([1, 8, 8, 12, 16]))  # 16: float64 sums
    wmax = draw(st.sampled_from([3, 127, 255]))
    c0, ca, cb = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    h, w = draw(st.integers(3, 6)), draw(st.integers(3, 6))
    s = draw(st.sampled_from([1, 2]))

    def neuron():
        if kind == "if_soft":
            return Neuron("if_soft", 1, bias_exp=draw(st.integers(0, 6)))
        return Neuron("cuba", 1, du=draw(st.integers(0, LOIHI2.decay_max)),
                      dv=draw(st.sampled_from([0, draw(st.integers(1, LOIHI2.decay_max))])),
                      bias_exp=draw(st.integers(0, 6)))

    def weights(*shape):
        return rng.integers(-wmax // 2, wmax + 1, size=shape)

    la = Conv(weights(ca, c0, 3, 3), rng.integers(-50, 51, ca), neuron(), padding=(1, 1), name="a")
    lb = Conv(weights(cb, ca, 3, 3), None, neuron(), stride=(s, s), padding=(1, 1), name="b")
    lc = Conv(weights(cb, cb, 3, 3), rng.integers(-50, 51, cb), neuron(), padding=(1, 1), name="c",
              extra_inputs=(Projection("a", weights(cb, ca, 1, 1), stride=(s, s)),))
    oh, ow = (h - 1) // s + 1, (w - 1) // s + 1
    n_flat = cb * oh * ow
    nd = draw(st.integers(1, 5))
    ld = Dense(weights(nd, n_flat), rng.integers(-50, 51, nd), neuron(),
               weight_exp=draw(st.integers(-3, 7)), name="d")
    src = draw(st.sampled_from(["b", "c"]))
    le = Dense(weights(3, nd), None, neuron(), name="e", weight_exp=draw(st.integers(-2, 2)),
               extra_inputs=(Projection(src, weights(3, n_flat), kind="dense",
                                        weight_exp=draw(st.integers(-2, 6))),))
    net = Network(input=Input((c0, h, w)), layers=[la, lb, lc, Flatten(), ld, le],
                  integer=True, input_bits=bits, readout="spikes")
    x_max = (1 << bits) - 1
    for layer in net.weighted_layers:  # thresholds below the largest positive input
        rows = [layer.weight.reshape(len(layer.weight), -1) * x_max] + \
            [p.weight.reshape(len(layer.weight), -1) for p in layer.extra_inputs]
        pos = int(sum(np.clip(r, 0, None).sum(1) for r in rows).max())
        layer.neuron.threshold = int(rng.integers(1, max(1, min(LOIHI2.threshold_max, pos // 3)) + 1))
        x_max = 1
    x = rng.integers(0, 1 << bits, size=(draw(st.integers(1, 4)), c0, h, w))
    return net, x


@settings(max_examples=examples(60), deadline=None)
@given(case=residual_integer_nets(), T=st.integers(1, 5), pipelined=st.booleans(),
       align=st.booleans(), chunk_values=st.sampled_from([None, 1, 37]))
def test_fast_kernels_equal_exact64_on_residual_nets(case, T, pipelined, align, chunk_values):
    net, x = case
    try:
        ref = simulate(net, x, T, pipelined=pipelined, align_extra_inputs=align,
                       record_spikes=True, kernel="exact64")
    except QuantizationError:  # beyond Lava's float32 conv: both refuse
        with pytest.raises(QuantizationError):
            simulate(net, x, T, pipelined=pipelined, align_extra_inputs=align)
        return
    with mock.patch.object(simulator, "_CHUNK_VALUES", chunk_values or simulator._CHUNK_VALUES):
        fast = simulate(net, x, T, pipelined=pipelined, align_extra_inputs=align,
                        record_spikes=True)
    assert torch.equal(fast.output_potential, ref.output_potential)
    for a, b in zip(fast.layer_spike_trains, ref.layer_spike_trains):
        assert torch.equal(a, b)
    want, v_out = reference_run(net, x, T, pipelined, align)
    for got, w in zip(ref.layer_spike_trains, want):
        assert np.array_equal(got.numpy(), w)
    assert np.array_equal(ref.output_potential.numpy(), v_out)


# ======================================================================= float simulator
def qcfs_forward(net: Network, x: np.ndarray, levels: int) -> np.ndarray:
    """The float IR's ANN function with QCFS activations, extra inputs included:
    h_l = W_l ⊛ q_{l−1} + Σ_k P_k ⊛ q_{source_k} + b_l,
    q_l = clip(floor(clip(h_l/θ_l, 0, 1)·L + 1/2)/L, 0, 1); the output layer is affine."""
    q, acts = x.astype(np.float64), {}
    last = net.weighted_layers[-1]

    def apply(syn, z, conv):
        if conv:
            return ref_conv(z, np.asarray(syn.weight, np.float64), syn.stride, syn.padding,
                            syn.dilation, syn.groups)
        return z.reshape(z.shape[0], -1) @ np.asarray(syn.weight, np.float64).T

    for layer in net.layers:
        if isinstance(layer, Flatten):
            q = q.reshape(q.shape[0], -1)
            continue
        conv = isinstance(layer, Conv)
        h = apply(layer, q, conv)
        for p in layer.extra_inputs:
            h = h + apply(p, acts[p.source], p.kind == "conv")
        if layer.bias is not None:
            b = np.asarray(layer.bias, np.float64)
            h = h + (b.reshape(-1, 1, 1) if conv else b)
        if layer is last:
            return h
        theta = float(layer.neuron.threshold)
        q = np.clip(np.floor(np.clip(h / theta, 0, 1) * levels + 0.5) / levels, 0, 1)
        acts[layer.name] = q
    raise AssertionError("no weighted layer")


def test_float_simulation_at_T_1_equals_the_qcfs_forward():
    """T = L = 1: one step of the soft-reset IF neuron (v = θ/2 + h ≥ θ) is QCFS with one
    level (floor(h/θ + 1/2) clipped) for ANY weights, so the whole residual net (same-step
    extra inputs) must equal the ANN forward, and the readout equals the logits."""
    net = float_residual_net("if_soft", readout_projection=True)
    x = np.random.default_rng(7).random((16, 2, 8, 8))
    res = simulate(net, x, 1, record_spikes=True)
    logits = qcfs_forward(net, x, 1)
    np.testing.assert_allclose(res.output_potential[0].numpy(), logits, rtol=1e-12, atol=1e-12)
    assert all(int(c.sum()) > 0 for c in res.layer_counts[:-1])


@pytest.mark.parametrize("levels", [2, 4, 8])
def test_float_simulation_at_T_equals_L_with_residual_branches(levels):
    """T = L > 1. c1, c2 get integer multiples of θ (binary input, weights k·θ, no bias):
    levels 0 or 1, i.e. spike trains constant over time. c3 (+ identity shortcut from c1)
    and the readout (+ dense projection from c2) then receive constant input, so c3's
    count is exactly the QCFS level (fractional levels included) and the readout's
    accumulated potential is exactly T × the logits."""
    rng = np.random.default_rng(levels)
    th1, th2, th3 = 0.5, 0.75, 1.0
    c1 = Conv(th1 * rng.integers(-2, 3, (4, 2, 3, 3)), None, Neuron("if_soft", th1),
              padding=(1, 1), name="c1")
    c2 = Conv(th2 * rng.integers(-1, 2, (4, 4, 3, 3)), None, Neuron("if_soft", th2),
              padding=(1, 1), name="c2")
    c3 = Conv(rng.normal(scale=0.15, size=(4, 4, 3, 3)), 0.1 * rng.normal(size=4),
              Neuron("if_soft", th3), padding=(1, 1), name="c3",
              extra_inputs=(Projection("c1", identity(4, th1 * 0.3)),))
    out = Dense(rng.normal(size=(5, 4 * 36)), rng.normal(size=5), readout_neuron(False),
                name="out", extra_inputs=(Projection("c2", rng.normal(size=(5, 4 * 36)),
                                                     kind="dense"),))
    net = Network(Input((2, 6, 6)), [c1, c2, c3, Flatten(), out], readout="potential")
    x = rng.integers(0, 2, (20, 2, 6, 6)).astype(np.float64)
    res = simulate(net, x, levels, record_spikes=True)
    logits = qcfs_forward(net, x, levels)
    np.testing.assert_allclose(res.output_potential[-1].numpy(), levels * logits,
                               rtol=1e-10, atol=1e-9)
    counts = res.layer_counts[2].numpy()
    assert ((counts > 0) & (counts < levels)).any(), "vacuous: c3 has no fractional level"
    # the fast float32 path (channels-last, chunked) runs the same graph: same spikes here
    # (no membrane lands within float32 rounding of a threshold in this case)
    r32 = simulate(net, torch.as_tensor(x, dtype=torch.float32), levels, dtype=torch.float32)
    for a, b in zip(r32.layer_counts, res.layer_counts):
        assert torch.equal(a, b)
    np.testing.assert_allclose(r32.output_potential[-1].numpy(), levels * logits, rtol=1e-4, atol=1e-3)
    # without the shortcut the readout differs: the extra inputs are really added
    plain = simulate(drop_extra_inputs(net), x, levels)
    assert not torch.allclose(plain.output_potential[-1], res.output_potential[-1])


# ============================================================ activity, energy, resources
def tiny_residual() -> Network:
    """input (2,) → d1 (3) → d2 (2) → d3 (2) with a dense projection d1 → d3."""
    n = Neuron("if_soft", 64)
    return Network(Input((2,)), [
        Dense(np.ones((3, 2), np.int64), None, n, name="d1"),
        Dense(np.ones((2, 3), np.int64), None, n, name="d2"),
        Dense(np.ones((2, 2), np.int64), None, n, name="d3",
              extra_inputs=(Projection("d1", np.ones((2, 3), np.int64), kind="dense"),))],
        integer=True, input_bits=8, readout="spikes")


def test_activity_counts_include_projections_by_hand():
    """T = 2, one sample. d1 spikes 3 times (fan-out 2 into d2 + 2 through the projection),
    d2 spikes twice: d2 receives 3·2 = 6 synops, d3 receives 2·2 (d2) + 3·2 (d1) = 10, of
    which 6 through its extra input."""
    net = tiny_residual()
    d1 = np.array([[[1, 0, 1]], [[0, 1, 0]]])
    d2 = np.array([[[1, 0]], [[0, 1]]])
    d3 = np.zeros((2, 1, 2), np.int64)
    act = layer_activity(net, [d1, d2, d3], np.array([[5, 0]])).to_dict()
    l1, l2, l3 = act["layers"]
    assert (l2["synops_binary"], l2["synops_extra"]) == (6, 0)
    assert (l3["synops_binary"], l3["synops_extra"]) == (10, 6)
    assert (l1["fan_out_max"], l1["fan_in_max"], l3["fan_in_max"]) == (4, 2, 5)
    assert act["totals"]["synops_binary"] == 16 and act["totals"]["synops_extra"] == 6
    fit = check_fit(net)
    assert [la.synapses for la in fit.layers] == [6, 6, 4 + 6]
    assert count_macs(net) == [6, 6, 4 + 6]


def test_conv_activity_of_a_simulated_residual_net_counts_every_tap():
    """Synops through a conv projection = Σ conv(spike counts of the source, ones kernel)
    (each source spike times the taps it reaches), independently of the fan-out code."""
    net = integer_residual_net("if_soft", seed=5)
    x = inputs(5, n=2)
    res = simulate(net, x, 6)
    act = activity_from_sim(net, res, x)
    counts = {name: c.numpy() for name, c in zip(res.layer_names, res.layer_counts)}
    layers = {l.name: l for l in net.weighted_layers}
    for la in act.layers:
        want = 0
        for p in layers[la.name].extra_inputs:
            src = counts[p.source]
            if p.kind == "conv":
                want += int(ref_conv(src, np.ones_like(p.weight), p.stride, p.padding).sum())
            else:
                want += int(src.sum()) * p.weight.shape[0]
        assert la.synops_extra == want, la.name
        if la.name in ("c3", "c5", "d7", "out"):
            assert want > 0
    # the fan-outs and fan-ins seen from both ends count the same synapses
    assert sum(int(f.sum()) for f in fan_out(net)) == sum(int(f.sum()) for f in fan_in(net)[1:])
    assert int(fan_in(net)[2].max()) == 4 * 9 + 4  # c3: 3×3×4 main taps + 4 identity taps


def test_resources_and_macs_count_projection_synapses():
    net = integer_residual_net("if_soft")
    shapes = dict(zip([l.name for l in net.layers], net.shapes()))
    fit = {la.name: la for la in check_fit(net).layers}
    plain = {la.name: la for la in check_fit(drop_extra_inputs(net)).layers}
    c3_proj = int(np.prod(shapes["c3"])) * 4          # 1×1 identity: 4 inputs per neuron
    c5_proj = int(np.prod(shapes["c5"])) * 4          # 1×1 stride 2 from c3's 4 channels
    assert fit["c3"].synapses == plain["c3"].synapses + c3_proj
    assert fit["c5"].synapses == plain["c5"].synapses + c5_proj
    assert fit["d7"].synapses == plain["d7"].synapses + 10 * 256
    assert fit["d7"].fan_in_max == 10 + 256
    assert fit["c1"].fan_out_max > plain["c1"].fan_out_max  # c1 also drives the shortcut
    shared = {la.name: la for la in check_fit(net, conv_synapses="shared").layers}
    assert shared["c3"].synapses == (4 * 4 * 9 + 4 * 4) * shared["c3"].cores
    # ANN MACs: the identity shortcut is an addition (0 MACs); the stride-2 one a 1×1 conv
    macs = dict(zip([l.name for l in net.weighted_layers], count_macs(net)))
    plain_macs = dict(zip([l.name for l in net.weighted_layers], count_macs(drop_extra_inputs(net))))
    assert macs["c3"] == plain_macs["c3"]
    assert macs["c5"] - plain_macs["c5"] == int(np.prod(shapes["c5"])) * 4
    assert macs["d7"] - plain_macs["d7"] == 10 * 256
