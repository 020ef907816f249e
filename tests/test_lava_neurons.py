"""IFSoftReset: the paper's IF neuron (soft reset, v0 = θ/2) as a Lava process."""
import numpy as np
import pytest

from hardware import ir
from hardware.errors import LavaBackendError
from hardware.runtime.procs.if_soft import IFSoftReset, fixed_point_v0
from hardware.runtime.runner import run_lava
from hardware.simulator import simulate
from hardware.spec import LOIHI2

# Lava's model discovery must not meet any module it cannot import (the
# process lives in hardware/runtime/procs/if_soft/): the warning is an error here.
pytestmark = pytest.mark.filterwarnings("error:Cannot import module")



def test_process_mirrors_lifreset_and_starts_at_v0():
    from lava.proc.lif.process import LIFReset
    p = IFSoftReset(shape=(3,), vth=101, du=4095, dv=0, bias_mant=np.array([1, 2, 3]),
                    bias_exp=6, reset_interval=4, reset_offset=1)
    ref = LIFReset(shape=(3,), vth=101, reset_interval=4, reset_offset=1)
    for name in ("a_in", "s_out", "u", "v", "du", "dv", "bias_mant", "bias_exp", "vth"):
        assert hasattr(p, name), name
        assert getattr(p, name).shape == getattr(ref, name).shape, name
    assert p.proc_params["reset_interval"] == 4 and p.proc_params["reset_offset"] == 1
    # v0 = (vth << 6) >> 1 (fixed point), before any step
    assert np.array_equal(p.v.init, np.full(3, (101 << LOIHI2.threshold_shift) >> 1))
    assert int(fixed_point_v0(101)) == (101 << 6) >> 1
    explicit = IFSoftReset(shape=(2,), vth=10, v=np.array([5, 7]))
    assert np.array_equal(explicit.v.init, [5, 7])
    with pytest.raises(LavaBackendError):
        IFSoftReset(shape=(2,), vth=10, num_message_bits=8)


def test_netx_block_builds_ifsoftreset_from_netx_params():
    from lava.lib.dl.netx.blocks.process import Dense as DenseBlock
    params = {"neuron_proc": IFSoftReset, "bias_key": "bias_mant", "vth": 50, "du": 4095,
              "dv": 0, "bias_exp": 6, "num_message_bits": 0, "reset_interval": 5,
              "reset_offset": 2}
    block = DenseBlock(shape=(2,), neuron_params=params, weight=np.array([[1, 2], [3, 4]]),
                       bias=np.array([3, -4]), input_message_bits=8)
    assert isinstance(block.neuron, IFSoftReset)
    assert np.array_equal(block.neuron.bias_mant.init, [3, -4])
    assert block.output_message_bits == 0
    assert np.array_equal(block.neuron.v.init, [(50 << 6) >> 1] * 2)


def _one_layer(du, dv):
    """One dense if_soft layer whose synaptic input is large (16-bit graded
    input through ±1 weights), so the 24-bit clip of v is exercised."""
    w = np.array([[1, 0], [-1, 0], [0, 1], [1, 1], [-1, 1], [1, -1]])
    neuron = ir.Neuron("if_soft", threshold=60000, du=du, dv=dv)
    return ir.Network(input=ir.Input(shape=(2,)),
                      layers=[ir.Dense(weight=w, bias=np.array([5, -7, 0, 3, 100, -100]),
                                       neuron=neuron, name="if")],
                      integer=True, input_bits=16, readout="spikes")


@pytest.mark.lava
@pytest.mark.parametrize("du,dv", [(LOIHI2.if_du, LOIHI2.if_dv), (1000, 300)])
def test_bit_accurate_model_equals_simulator_with_resets(du, dv):
    """The bit-accurate IFSoftReset model equals the simulator's integer
    if_soft neuron; samples are separated by reset steps (u = 0, v = v0)."""
    net = _one_layer(du, dv)
    T = 5
    rng = np.random.default_rng(11)
    x = rng.integers(0, 1 << 16, size=(3, T, 2))
    ref = simulate(net, x, T).output_spikes.numpy().transpose(1, 0, 2)
    assert 0 < ref.sum() < ref.size
    res = run_lava(net, x, T, progress=False)
    assert np.array_equal(res.output_spikes, ref)


def _reference_if(a, bias, vth, interval, offset):
    """Hand-written IF soft-reset neuron (du = 4095, dv = 0) in Lava's step
    numbering, a[t-1] being the input of step t."""
    eff = vth << 6
    v0 = eff >> 1
    vmax = (1 << 23) - 1
    v = np.full(a.shape[0], v0, dtype=np.int64)
    out = []
    for t in range(1, a.shape[1] + 1):
        if t % interval == offset % interval:
            v[:] = v0
        v = np.clip(v + (a[:, t - 1] << 6) + (bias << 6), -vmax, vmax)
        s = v >= eff
        v[s] -= eff
        out.append(s.astype(np.int64))
    return np.stack(out, axis=1)


@pytest.mark.lava
def test_neuron_alone_reset_offset_and_clip():
    from lava.magma.core.run_conditions import RunSteps
    from lava.proc import io

    from hardware.runtime.runner import sim_run_config

    steps, vth = 14, 100000
    rng = np.random.default_rng(3)
    a = rng.integers(-30000, 32767, size=(4, steps))
    a[0] = 32767  # drives v into the +clip
    bias = np.array([0, 40, -40, 7])
    neuron = IFSoftReset(shape=(4,), vth=vth, du=LOIHI2.if_du, dv=LOIHI2.if_dv,
                         bias_mant=bias, bias_exp=6, reset_interval=3, reset_offset=5)
    src = io.source.RingBuffer(data=a)
    sink = io.sink.RingBuffer(shape=(4,), buffer=steps)
    src.s_out.connect(neuron.a_in)
    neuron.s_out.connect(sink.a_in)
    try:
        sink.run(condition=RunSteps(num_steps=steps), run_cfg=sim_run_config())
        got = np.asarray(sink.data.get()).astype(np.int64)
    finally:
        sink.stop()
    ref = _reference_if(a, bias, vth, 3, 5)
    assert 0 < ref.sum() < ref.size
    assert np.array_equal(got, ref)


@pytest.mark.lava
def test_float_model():
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc import io

    steps = 9
    rng = np.random.default_rng(0)
    a = rng.uniform(-0.2, 0.8, size=(3, steps))
    neuron = IFSoftReset(shape=(3,), vth=1.0, du=1.0, dv=0.0, bias_mant=0.05,
                         reset_interval=4, reset_offset=1)
    src = io.source.RingBuffer(data=a)
    sink = io.sink.RingBuffer(shape=(3,), buffer=steps)
    src.s_out.connect(neuron.a_in)
    neuron.s_out.connect(sink.a_in)
    try:
        sink.run(condition=RunSteps(num_steps=steps),
                 run_cfg=Loihi2SimCfg(select_tag="floating_pt"))
        got = np.asarray(sink.data.get())
        model = neuron.model_class.__name__
    finally:
        sink.stop()
    assert model == "PyIFSoftResetModelFloat"
    v = np.full(3, 0.5)
    ref = []
    for t in range(1, steps + 1):
        if t % 4 == 1:
            v[:] = 0.5
        v = v + a[:, t - 1] + 0.05
        s = v >= 1.0
        v[s] -= 1.0
        ref.append(s)
    assert np.array_equal(got.astype(bool), np.stack(ref, axis=1))
