"""hardware.fixed_point.dynamics is THE neuron step: Lava's models and the simulator equal it exactly.

(a) this project's PyIFSoftResetModelBitAcc and (b) Lava's stock PyLifModelBitAcc, each
run through Lava on a small population driven by random integer synaptic input (large
enough to wrap u and clip v), and (c) hardware.simulator's two integer neuron paths, all
compared with == against hardware.fixed_point.dynamics.run.
"""
import numpy as np
import pytest

from hardware import ir

from hardware.fixed_point import dynamics
from hardware.fixed_point.dynamics import NeuronParams
from hardware.simulator import kernel_plan, simulate
from hardware.spec import LOIHI2

pytestmark = pytest.mark.filterwarnings("error:Cannot import module")

N, STEPS = 6, 24


def _inputs(seed, n=N, steps=STEPS):
    """Synaptic input per step: mostly moderate, some rows big enough to wrap u (a << 6
    beyond 2**23) and to push v into its ±(2**23 − 1) clip."""
    rng = np.random.default_rng(seed)
    a = rng.integers(-3000, 6000, size=(n, steps))
    a[0] = rng.integers(100_000, 140_000, size=steps)   # u wraps
    a[1] = rng.integers(-140_000, -100_000, size=steps)
    a[2] = 32767                                          # v clips
    return a


def _run_in_lava(proc, a):
    """Drive ``proc.a_in`` with column t−1 of ``a`` at step t; (spikes, final v)."""
    from lava.proc import io

    from hardware.runtime.runner import sim_run_config
    from hardware.runtime.session import LavaSession
    src = io.source.RingBuffer(data=a)
    sink = io.sink.RingBuffer(shape=(a.shape[0],), buffer=a.shape[1])
    src.s_out.connect(proc.a_in)
    proc.s_out.connect(sink.a_in)
    with LavaSession() as session:
        session.run(sink, a.shape[1], sim_run_config())
        spikes = np.asarray(sink.data.get()).astype(np.int64)
        v = np.asarray(proc.v.get()).astype(np.int64)
        model = proc.model_class.__name__
    return spikes, v, model


def _assert_fires_sometimes(spikes):
    assert 0 < spikes.sum() < spikes.size, "no or only spikes: the comparison would be weak"


@pytest.mark.lava
@pytest.mark.parametrize("du,dv", [(LOIHI2.if_du, LOIHI2.if_dv), (700, 150)])
def test_if_soft_lava_model_equals_definition(du, dv):
    from hardware.runtime.procs.if_soft import IFSoftReset
    a = _inputs(1)
    bias = np.array([0, 40, -40, 7, 4095, -4096])
    p = NeuronParams("if_soft", vth=900, du=du, dv=dv, bias_mant=bias, bias_exp=6)
    want, want_v = dynamics.run(a, p, reset_interval=5, reset_offset=3)
    _assert_fires_sometimes(want)
    proc = IFSoftReset(shape=(N,), vth=p.vth, du=du, dv=dv, bias_mant=bias, bias_exp=6,
                       reset_interval=5, reset_offset=3)
    got, v, model = _run_in_lava(proc, a)
    assert model == "PyIFSoftResetModelBitAcc"
    assert np.array_equal(got, want)
    assert np.array_equal(v, want_v[:, -1])


@pytest.mark.lava
def test_stock_lif_bit_accurate_model_equals_definition():
    from lava.proc.lif.process import LIF
    a = _inputs(2)
    bias = np.array([3, -3, 100, -7, 0, 12])
    p = NeuronParams("cuba", vth=700, du=1000, dv=300, bias_mant=bias, bias_exp=6)
    want, want_v = dynamics.run(a, p)
    _assert_fires_sometimes(want)
    proc = LIF(shape=(N,), vth=p.vth, du=p.du, dv=p.dv, bias_mant=bias, bias_exp=6)
    got, v, model = _run_in_lava(proc, a)
    assert model == "PyLifModelBitAcc"
    assert np.array_equal(got, want)
    assert np.array_equal(v, want_v[:, -1])


def _diagonal_net(neuron, n_in=4, readout="spikes"):
    """One dense layer whose synaptic input is x·(±1) and sums of two inputs, so that the
    definition can be fed the same a."""
    w = np.array([[1, 0, 0, 0], [-1, 0, 0, 0], [0, 1, 1, 0], [0, 0, -1, -1], [1, 1, 1, 1]])
    bias = np.array([5, -7, 0, 3, -100])
    net = ir.Network(input=ir.Input(shape=(n_in,)),
                     layers=[ir.Dense(weight=w, bias=bias, neuron=neuron, name="only")],
                     integer=True, input_bits=16, readout=readout)
    return net, w, bias


def _per_sample(x, w, timesteps):
    """Synaptic input a (neurons, N·T) of samples held for T steps, one after the other."""
    a = np.einsum("oi,ni->on", w, x)
    return np.repeat(a, timesteps, axis=1)


@pytest.mark.parametrize("kind,du,dv", [("if_soft", LOIHI2.if_du, 0), ("if_soft", 900, 200),
                                        ("cuba", 1500, 100), ("cuba", LOIHI2.if_du, 0)])
@pytest.mark.parametrize("input_bits,vth,mode", [(16, 30000, "lava"), (10, 30000 >> 4, "exact")])
def test_simulator_integer_path_equals_definition(kind, du, dv, input_bits, vth, mode):
    """Both of the simulator's integer neuron paths: the int64 emulation of every wrap
    ('lava', large inputs) and exact integers held in floats ('exact', where a static
    bound proves that no wrap can occur)."""
    neuron = ir.Neuron(kind, threshold=vth, du=du, dv=dv)
    net, w, bias = _diagonal_net(neuron)
    T = 7
    x = np.random.default_rng(4).integers(0, 1 << 16, size=(5, 4)) >> (16 - input_bits)
    assert [row["neuron_mode"] for row in kernel_plan(net, x, T)] == [mode]
    res = simulate(net, x, T)
    p = NeuronParams(kind, vth=vth, du=du, dv=dv, bias_mant=bias, bias_exp=LOIHI2.netx_bias_exp)
    # one fresh state per sample: reset at the start of steps 1, T+1, 2T+1, ...
    want, _ = dynamics.run(_per_sample(x, w, T), p, reset_interval=T, reset_offset=1)
    want = want.reshape(len(w), len(x), T).transpose(2, 1, 0)  # (T, N, neurons)
    _assert_fires_sometimes(want)
    assert np.array_equal(res.output_spikes.numpy().astype(np.int64), want)


def test_simulator_readout_integrator_equals_definition():
    net, w, bias = _diagonal_net(ir.readout_neuron(True), readout="potential")
    T = 6
    x = np.random.default_rng(5).integers(0, 1 << 12, size=(4, 4))
    res = simulate(net, x, T)
    p = dynamics.readout_params()
    p = NeuronParams(p.kind, p.vth, p.du, p.dv, bias_mant=bias, bias_exp=p.bias_exp)
    spikes, v = dynamics.run(_per_sample(x, w, T), p, reset_interval=T, reset_offset=1)
    assert spikes.sum() == 0
    v = v.reshape(len(w), len(x), T).transpose(2, 1, 0)  # (T, N, neurons)
    assert np.abs(v).max() > 0
    assert np.array_equal(res.output_potential.numpy().astype(np.int64), v)


def test_definition_edge_cases():
    """Hand-checked values: the toward-zero decay, the single u wrap, the v clip and the
    strict (cuba) versus non-strict (if_soft) threshold."""
    assert dynamics.decay(np.array([-5, 5]), 2048).tolist() == [-2, 2]
    m = LOIHI2.state_max
    p = NeuronParams("cuba", vth=1, du=LOIHI2.if_du, dv=0)
    u, v = dynamics.subthreshold(np.zeros(1, np.int64), np.zeros(1, np.int64),
                                 np.array([(m >> 6) + 1]), p)
    assert u.tolist() == [(((m >> 6) + 1) << 6) - 2 * m]           # wrapped once
    u, v = dynamics.subthreshold(np.zeros(1, np.int64), np.array([m - 10]),
                                 np.array([1000]), NeuronParams("cuba", 1, LOIHI2.if_du, 0))
    assert v.tolist() == [m - 1]                                       # clipped
    at = np.array([1 << LOIHI2.threshold_shift])
    assert dynamics.cuba_spikes(at, 1)[0].tolist() == [False]
    s, after = dynamics.if_soft_spikes(at, 1)
    assert s.tolist() == [True] and after.tolist() == [0]
    assert dynamics.initial_v("if_soft", 101) == (101 << 6) >> 1 and dynamics.initial_v("cuba", 9) == 0
