"""Residual networks (IR extra inputs) in real Lava, bit for bit.

Every layer is its netx block and every extra input a ``DelaySparse`` (bit-accurate
``PyDelaySparseModelBitAcc``) into the receiving block's neurons, delayed by
``net.extra_delay`` steps (hardware.runtime.network). Output spikes, the potential readout and
every layer's probed spikes must equal, on every sample and step:

* a plain int64 numpy reference written here (the paper's same-step semantics: layer l
  at step τ integrates W·s_{l-1}[τ] + Σ P_k·s_{source_k}[τ]; neurons advance by
  :func:`hardware.fixed_point.dynamics.step`, the shared definition Lava's models are tested against);
* ``hardware.simulator.simulate(net, x, T, pipelined=False)``;

and a continuous unreset run equals the simulator's Lava-timing mode
(``pipelined=True``) at every layer and step.

Thresholds are calibrated so that layers fire at moderate rates (asserted), and the
extra inputs are shown to change the result (so a test without them would fail).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hardware import ir

from hardware.fixed_point import dynamics
from hardware.errors import LavaBackendError
from hardware.errors import LoihiRangeError
from hardware.runtime.network import build_lava_network, lava_order, projection_matrix
from hardware.runtime.runner import run_lava
from hardware.runtime.schedule import weighted_shapes
from hardware.spec import LOIHI2
from tests.lava_continuous import continuous_block_spikes

pytestmark = [pytest.mark.lava, pytest.mark.filterwarnings("error:Cannot import module")]


# --------------------------------------------------------------------------- reference

def _synapse(layer, s: np.ndarray, in_shape: tuple) -> np.ndarray:
    """W ⊛ s for a batch s (N, *in_shape) -> (N, n_out) int64 (float64 is exact here)."""
    n = s.shape[0]
    if isinstance(layer, ir.Conv):
        out = torch.nn.functional.conv2d(
            torch.tensor(s.reshape((n,) + tuple(in_shape)), dtype=torch.float64),
            torch.tensor(np.asarray(layer.weight), dtype=torch.float64),
            stride=tuple(layer.stride), padding=tuple(layer.padding),
            dilation=tuple(layer.dilation), groups=int(layer.groups))
        out = out.numpy().reshape(n, -1)
    else:
        out = s.reshape(n, -1).astype(np.float64) @ np.asarray(layer.weight, np.float64).T
    assert np.all(np.abs(out) < 2 ** 23)  # no Lava wrap can occur in these tests
    return np.rint(out).astype(np.int64)


def _params(layer, shape: tuple) -> dynamics.NeuronParams:
    n = layer.neuron
    bias = np.zeros(shape[0], dtype=np.int64) if layer.bias is None else np.asarray(layer.bias)
    per_neuron = np.repeat(bias.astype(np.int64), int(np.prod(shape[1:])))
    return dynamics.NeuronParams(n.kind, vth=int(n.threshold), du=int(n.du), dv=int(n.dv),
                                 bias_mant=per_neuron, bias_exp=int(n.bias_exp))


@dataclasses.dataclass
class Reference:
    output_spikes: np.ndarray      # (N, T, n_out)
    trains: list                   # per weighted layer (T, N, *shape) int64
    output_potential: np.ndarray   # (N, n_out): v of the last layer after step T


def reference(net: ir.Network, x: np.ndarray, T: int) -> Reference:
    """The same-step integer SNN, int64, one sample window from a fresh state."""
    n = x.shape[0]
    shapes = net.shapes()
    state = {}
    for layer, shape in zip(net.layers, shapes):
        if isinstance(layer, ir.WEIGHTED):
            v0 = dynamics.initial_v(layer.neuron.kind, int(layer.neuron.threshold))
            size = int(np.prod(shape))
            state[layer.name] = (np.zeros((n, size), np.int64), np.full((n, size), v0, np.int64))
    trains = {name: [] for name in state}
    for _ in range(T):
        s, in_shape, now = x.astype(np.int64), tuple(net.input.shape), {}
        for layer, shape in zip(net.layers, shapes):
            if isinstance(layer, ir.Flatten):
                s, in_shape = s.reshape(n, -1), shape
                continue
            a = _synapse(layer, s, in_shape)
            for proj in layer.extra_inputs:
                src, src_shape = now[proj.source]
                a = a + _synapse(proj.synapse("projection"), src, src_shape)
            u, v = state[layer.name]
            u, v, out = dynamics.step(u, v, a, _params(layer, shape))
            state[layer.name] = (u, v)
            s = np.asarray(out).astype(np.int64).reshape((n,) + tuple(shape))
            in_shape = shape
            now[layer.name] = (s, shape)
            trains[layer.name].append(s)
    names = [layer.name for layer in net.weighted_layers]
    stacked = [np.stack(trains[name]) for name in names]
    return Reference(output_spikes=stacked[-1].reshape(T, n, -1).transpose(1, 0, 2),
                     trains=stacked, output_potential=state[names[-1]][1])


# --------------------------------------------------------------------------- networks

def _neuron(kind: str, rng) -> ir.Neuron:
    if kind == "if_soft":
        return ir.Neuron("if_soft", 1, du=LOIHI2.if_du, dv=LOIHI2.if_dv)
    return ir.Neuron("cuba", 1, du=int(rng.integers(0, 4096)), dv=int(rng.integers(0, 1024)))


def _calibrate(net: ir.Network, x: np.ndarray, T: int) -> ir.Network:
    """θ of each spiking layer = the median of its positive per-step synaptic inputs
    (with the layers before it already calibrated), so some neurons fire and others not."""
    layers = list(net.layers)
    for idx, layer in enumerate(layers):
        if not isinstance(layer, ir.WEIGHTED) or layer.neuron == ir.readout_neuron(True):
            continue
        probe = dataclasses.replace(layer, neuron=dataclasses.replace(
            layer.neuron, threshold=LOIHI2.threshold_max))
        trial = net.replace(layers=layers[:idx] + [probe] + layers[idx + 1:])
        # with an unreachable threshold, u of a du=4095 neuron is its input; measure it
        # through the reference's v increments instead, which works for every decay
        ref = reference(trial.replace(layers=trial.layers[:idx + 1], readout="spikes"), x, 1)
        v0 = dynamics.initial_v(layer.neuron.kind, LOIHI2.threshold_max)
        a = (ref.output_potential - v0) >> LOIHI2.activation_shift
        pos = a[a > 0]
        theta = int(np.clip(np.median(pos) if pos.size else 1, 1, LOIHI2.threshold_max))
        layers[idx] = dataclasses.replace(layer, neuron=dataclasses.replace(layer.neuron,
                                                                            threshold=theta))
    return net.replace(layers=layers)


def conv_residual_net(kind: str, readout: str = "spikes", seed: int = 0, n: int = 3, T: int = 3):
    """conv c1 -> c2 -> c3 (+ identity 1x1 from c1, delay 1) -> c4 stride 2 (+ 1x1 stride-2
    projection from c2, delay 1) -> flatten -> fc5 -> fc6 (+ dense projection from the
    flattened c4, delay 1). ``readout='potential'``: fc6 is the non-firing integrator."""
    rng = np.random.default_rng(seed)
    w = lambda *shape: rng.integers(-4, 9, size=shape)  # noqa: E731  (mostly excitatory)
    identity = (np.eye(4, dtype=np.int64) * 12)[:, :, None, None]
    layers = [
        ir.Conv(weight=w(4, 2, 3, 3), bias=rng.integers(-2, 3, 4), neuron=_neuron(kind, rng),
                padding=(1, 1), name="c1"),
        ir.Conv(weight=w(4, 4, 3, 3), bias=None, neuron=_neuron(kind, rng), padding=(1, 1),
                name="c2"),
        ir.Conv(weight=w(4, 4, 3, 3), bias=rng.integers(-2, 3, 4), neuron=_neuron(kind, rng),
                padding=(1, 1), name="c3",
                extra_inputs=(ir.Projection("c1", weight=identity),)),
        ir.Conv(weight=w(6, 4, 3, 3), bias=None, neuron=_neuron(kind, rng), stride=(2, 2),
                padding=(1, 1), name="c4",
                extra_inputs=(ir.Projection("c2", weight=w(6, 4, 1, 1), stride=(2, 2)),)),
        ir.Flatten(name="flat"),
        ir.Dense(weight=w(10, 54), bias=rng.integers(-2, 3, 10), neuron=_neuron(kind, rng),
                 name="fc5"),
    ]
    out_neuron = ir.readout_neuron(True) if readout == "potential" else _neuron(kind, rng)
    # fc6 = 3x3 output map flattened: the dense projection reads c4 in (C, H, W) C order
    layers.append(ir.Dense(weight=w(5, 10), bias=None, neuron=out_neuron, name="fc6",
                           extra_inputs=(ir.Projection("c4", weight=w(5, 54), kind="dense"),)))
    net = ir.Network(input=ir.Input((2, 5, 5)), layers=layers, integer=True, input_bits=4,
                     readout=readout)
    x = rng.integers(0, 16, size=(n, 2, 5, 5))
    return _calibrate(net, x, T), x


def dense_residual_net(kind: str, readout: str = "spikes", seed: int = 1, n: int = 3, T: int = 3):
    """fc1 -> fc2 -> fc3 (+ dense projection from fc1, delay 1) -> fc4 (+ from fc2, delay 1,
    and from fc3, delay 0: two extra inputs into one population)."""
    rng = np.random.default_rng(seed)
    w = lambda *shape: rng.integers(-4, 9, size=shape)  # noqa: E731
    layers = [
        ir.Dense(weight=w(12, 8), bias=rng.integers(-2, 3, 12), neuron=_neuron(kind, rng),
                 name="fc1"),
        ir.Dense(weight=w(12, 12), bias=None, neuron=_neuron(kind, rng), name="fc2"),
        ir.Dense(weight=w(12, 12), bias=None, neuron=_neuron(kind, rng), name="fc3",
                 extra_inputs=(ir.Projection("fc1", weight=np.eye(12, dtype=np.int64) * 10,
                                             kind="dense"),)),
    ]
    out_neuron = ir.readout_neuron(True) if readout == "potential" else _neuron(kind, rng)
    layers.append(ir.Dense(weight=w(4, 12), bias=rng.integers(-2, 3, 4), neuron=out_neuron,
                           name="fc4",
                           extra_inputs=(ir.Projection("fc2", weight=w(4, 12), kind="dense"),
                                         ir.Projection("fc3", weight=w(4, 12), kind="dense"))))
    net = ir.Network(input=ir.Input((8,)), layers=layers, integer=True, input_bits=4,
                     readout=readout)
    x = rng.integers(0, 16, size=(n, 8))
    return _calibrate(net, x, T), x


def without_extra_inputs(net: ir.Network) -> ir.Network:
    return net.replace(layers=[dataclasses.replace(layer, extra_inputs=())
                               if isinstance(layer, ir.WEIGHTED) else layer
                               for layer in net.layers])


# --------------------------------------------------------------------------- checks

def _assert_moderate(ref: Reference, net: ir.Network) -> None:
    for layer, train in zip(net.weighted_layers, ref.trains):
        if layer.neuron == ir.readout_neuron(True):
            continue
        total = int(train.sum())
        assert 0 < total < train.size, f"{layer.name}: {total} spikes of {train.size}"


def _simulator(net, x, T):
    from hardware.simulator import simulate
    return simulate(net, x, T, pipelined=False, record_spikes=True)


def _check_run(net: ir.Network, x: np.ndarray, T: int, res) -> None:
    ref = reference(net, x, T)
    _assert_moderate(ref, net)
    # the extra inputs matter: without them the reference differs
    plain = reference(without_extra_inputs(net), x, T)
    assert any(not np.array_equal(a, b) for a, b in zip(ref.trains, plain.trains)) or \
        not np.array_equal(ref.output_potential, plain.output_potential)

    assert res.output_spikes.dtype == np.int64
    assert np.array_equal(res.output_spikes, ref.output_spikes)
    assert res.layer_names == [layer.name for layer in net.weighted_layers]
    for name, train, counts, steps, lava_train in zip(
            res.layer_names, ref.trains, res.layer_counts, res.layer_step_spikes,
            res.layer_spike_trains):
        assert np.array_equal(counts, train.sum(axis=0)), name
        assert np.array_equal(steps, train.reshape(T, len(x), -1).sum(axis=2)), name
        assert np.array_equal(lava_train, train.astype(bool)), name
    if net.readout == "potential":
        assert np.array_equal(res.output_potential, ref.output_potential)
        assert not res.output_spikes.any()

    sim = _simulator(net, x, T)
    assert np.array_equal(sim.output_spikes.numpy().transpose(1, 0, 2), ref.output_spikes)
    for counts, sim_counts in zip(res.layer_counts, sim.layer_counts):
        assert np.array_equal(counts, sim_counts.numpy())
    for train, sim_train in zip(ref.trains, sim.layer_spike_trains):
        assert np.array_equal(train.astype(bool), sim_train.numpy().astype(bool))
    if net.readout == "potential":
        assert np.array_equal(res.output_potential, sim.output_potential[-1].numpy())


# --------------------------------------------------------------------------- Lava runs

@pytest.mark.parametrize("kind", ["if_soft", "cuba"])
def test_conv_residual_net_in_lava_equals_reference(kind):
    """Identity 1x1 and stride-2 1x1 conv projections and a dense projection from a conv map."""
    T = 3
    net, x = conv_residual_net(kind, T=T)
    res = run_lava(net, x, T, progress=False, probes=True)
    _check_run(net, x, T, res)
    assert res.models["DelaySparse"] == ["PyDelaySparseModelBitAcc"]
    assert res.loader == "hardware.runtime.network.build_lava_network"


@pytest.mark.parametrize("kind,T", [("if_soft", 2), ("cuba", 4)])
def test_dense_residual_net_with_potential_readout(kind, T):
    """Dense projections, two extra inputs into one population, the potential readout."""
    net, x = dense_residual_net(kind, readout="potential", T=T)
    res = run_lava(net, x, T, progress=False, probes="trains", chunk_steps=3)
    _check_run(net, x, T, res)


def test_conv_residual_potential_readout_if_soft_T4():
    T = 4
    net, x = conv_residual_net("if_soft", readout="potential", seed=3, n=2, T=T)
    res = run_lava(net, x, T, progress=False, probes=True)
    _check_run(net, x, T, res)


def test_residual_cuba_file_runs_with_own_loader(tmp_path):
    """A residual cuba .net cannot go to stock netx: run_lava uses this project's loader."""
    from hardware.formats.netx import read_net, write_net
    T = 2
    net, x = dense_residual_net("cuba", T=T, n=2)
    path = write_net(net, tmp_path / "res.net", steps_per_sample=T)
    back = read_net(path)
    res = run_lava(back, x, T, net_path=str(path), progress=False, probes=True)
    assert res.loader == "hardware.runtime.network.build_lava_network"
    _check_run(back, x, T, res)


@pytest.mark.parametrize("kind", ["if_soft", "cuba"])
def test_every_layer_every_step_equals_pipelined_simulator(kind):
    """No reset, one continuous run from step 1, a single sample: Lava equals the
    simulator's Lava-timing mode (hop delays plus the extra delays) for every layer at
    every step, and differs from it without the extra delays (they are really there)."""
    from hardware.simulator import simulate

    T = 9
    net, x = conv_residual_net(kind, n=1, T=T)
    lnet = build_lava_network(net, reset_interval=None)
    got = continuous_block_spikes(lnet, x[0], T)
    aligned = simulate(net, x, T, pipelined=True, record_spikes=True)
    misaligned = simulate(net, x, T, pipelined=True, record_spikes=True,
                          align_extra_inputs=False)
    assert sum(int(t.sum()) for t in aligned.layer_spike_trains) > 0
    differs = False
    for lava_spikes, train, other in zip(got, aligned.layer_spike_trains,
                                         misaligned.layer_spike_trains):
        lava_spikes = np.moveaxis(lava_spikes, -1, 0)  # (T, W, H, C) or (T, n)
        if lava_spikes.ndim == 4:
            lava_spikes = lava_spikes.transpose(0, 3, 2, 1)  # (T, C, H, W)
        assert np.array_equal(lava_spikes.astype(np.int64), train.numpy()[:, 0].astype(np.int64))
        differs |= not np.array_equal(train.numpy(), other.numpy())
    assert differs
    # the measurement-only undelayed wiring: Lava equals the simulator's misaligned mode
    undelayed = build_lava_network(net, reset_interval=None, align_extra_inputs=False)
    for lava_spikes, train in zip(continuous_block_spikes(undelayed, x[0], T),
                                  misaligned.layer_spike_trains):
        lava_spikes = np.moveaxis(lava_spikes, -1, 0)
        if lava_spikes.ndim == 4:
            lava_spikes = lava_spikes.transpose(0, 3, 2, 1)
        assert np.array_equal(lava_spikes.astype(np.int64), train.numpy()[:, 0].astype(np.int64))


# --------------------------------------------------------------------------- construction

def test_built_delays_and_wiring():
    net, _ = conv_residual_net("if_soft")
    lnet = build_lava_network(net, reset_interval=3, reset_offset=1)
    got = [(p.layer, p.source, p.delay) for p in lnet.projections]
    assert got == [("c3", "c1", 1), ("c4", "c2", 1), ("fc6", "c4", 1)]
    for p in lnet.projections:
        assert type(p.process).__name__ == "DelaySparse"
        weights = p.process.weights.init
        delays = p.process.delays.init
        # sparse, with the delays on exactly the synapses
        assert weights.format == "csr" and delays.format == "csr"
        assert weights.nnz == delays.nnz and set(delays.data.tolist()) == {p.delay}
    net2, _ = dense_residual_net("cuba")
    assert [(p.layer, p.source, p.delay)
            for p in build_lava_network(net2, None).projections] == [
        ("fc3", "fc1", 1), ("fc4", "fc2", 1), ("fc4", "fc3", 0)]
    undelayed = build_lava_network(net, reset_interval=3, reset_offset=1, align_extra_inputs=False)
    assert [p.delay for p in undelayed.projections] == [0, 0, 0]


@pytest.mark.parametrize("case", range(4))
def test_projection_matrix_equals_conv_in_lava_order(case):
    """The sparse matrix in Lava's flat (W, H, C) orders computes the IR's conv/dense."""
    rng = np.random.default_rng(case)
    src_shape = (4, 7, 6)
    geometry = [dict(), dict(stride=(2, 2)), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
                dict(groups=2, padding=(1, 1))][case]
    groups = geometry.get("groups", 1)
    kh, kw = (1, 1) if case < 2 else (3, 2)
    proj = ir.Projection("src", weight=rng.integers(-128, 128, size=(6, 4 // groups, kh, kw)),
                         **geometry)
    out_shape = proj.output_shape(src_shape, "p")
    m = projection_matrix(proj, src_shape, out_shape)
    assert m.format == "csr" and m.shape == (int(np.prod(out_shape)), int(np.prod(src_shape)))
    s = rng.integers(0, 2, size=(3,) + src_shape)
    want = _synapse(proj.synapse("p"), s, src_shape)  # (3, n_out) in IR order
    s_lava = s.transpose(0, 3, 2, 1).reshape(3, -1)   # (W, H, C) flattened
    got_lava = (m @ s_lava.T).T
    got = got_lava[:, lava_order(out_shape)]           # back to IR order
    assert np.array_equal(got, want)
    # dense projection reading the source flattened in (C, H, W) order
    dproj = ir.Projection("src", weight=rng.integers(-128, 128, size=(5, int(np.prod(src_shape)))),
                          kind="dense")
    md = projection_matrix(dproj, src_shape, (5,))
    assert np.array_equal((md @ s_lava.T).T, s.reshape(3, -1) @ dproj.weight.T)


def test_delay_beyond_loihi2_raises():
    """A projection skipping more layers than Loihi 2's 6-bit delay holds is refused."""
    depth = LOIHI2.synaptic_delay_max + 3
    neuron = ir.Neuron("if_soft", 1, du=LOIHI2.if_du, dv=LOIHI2.if_dv)
    layers = [ir.Dense(weight=np.ones((1, 1), dtype=np.int64), bias=None, neuron=neuron,
                       name=f"fc{i}") for i in range(depth - 1)]
    layers.append(ir.Dense(weight=np.ones((1, 1), dtype=np.int64), bias=None, neuron=neuron,
                           name="last", extra_inputs=(ir.Projection(
                               "fc0", weight=np.ones((1, 1), dtype=np.int64), kind="dense"),)))
    net = ir.Network(input=ir.Input((1,)), layers=layers, integer=True, input_bits=1, readout="spikes")
    assert net.extra_delay(layers[-1], layers[-1].extra_inputs[0]) == 64
    with pytest.raises(LoihiRangeError, match="layer last, extra input from 'fc0': .*64 outside"):
        build_lava_network(net, reset_interval=2)


def test_out_of_range_projection_weight_raises():
    net, _ = dense_residual_net("if_soft")
    fc3 = net.layers[2]
    bad = dataclasses.replace(fc3.extra_inputs[0], weight=fc3.extra_inputs[0].weight * 20)
    net = net.replace(layers=net.layers[:2] + [dataclasses.replace(fc3, extra_inputs=(bad,))]
                      + net.layers[3:])
    with pytest.raises(LoihiRangeError, match="layer fc3, extra input from 'fc1': weight "
                                              "value 200 outside"):
        build_lava_network(net, reset_interval=2)


def test_hw_backend_refuses_residual():
    net, x = dense_residual_net("cuba", n=1)
    with pytest.raises(LavaBackendError, match="residual networks"):
        run_lava(net, x, 2, backend="loihi2-hw", progress=False)


def test_weighted_shapes_of_residual_net():
    net, _ = conv_residual_net("cuba")
    assert weighted_shapes(net) == [(4, 5, 5), (4, 5, 5), (4, 5, 5), (6, 3, 3), (10,), (5,)]
