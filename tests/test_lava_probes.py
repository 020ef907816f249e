"""run_lava(probes=...): per-layer spikes of a Lava run == the reference simulator's.

Lava's per-layer, per-step spike counts (each layer's window offset by its own
latency), per-neuron counts and spike trains, and the activity counts
(spikes, synaptic ops, neuron updates) hardware.analysis.activity derives from them,
must equal simulate(..., record_spikes=True) + activity_from_sim, with ==.
"""
import numpy as np
import pytest

from hardware.analysis.activity import activity_from_sim
from hardware.errors import LavaBackendError
from bench.probe_mechanisms import MECHANISMS
from hardware.runtime.runner import run_lava
from hardware.simulator import simulate
from tests.test_lava_runner import random_net

# Lava's model discovery must not meet any module it cannot import any more
# (the processes live in their own subpackages): the warning is an error here.
pytestmark = [pytest.mark.lava, pytest.mark.filterwarnings("error:Cannot import module")]


def _assert_probes_equal(res, ref, net, x, trains=True):
    assert res.layer_names == ref.layer_names
    assert sum(int(c.sum()) for c in res.layer_counts) > 0
    for got, want in zip(res.layer_step_spikes, ref.layer_step_spikes):
        assert got.dtype == np.int64
        assert np.array_equal(got, want.numpy())
    for got, want in zip(res.layer_counts, ref.layer_counts):
        assert np.array_equal(got, want.numpy())
    if trains:
        for got, want in zip(res.layer_spike_trains, ref.layer_spike_trains):
            assert got.shape == tuple(want.shape)
            assert np.array_equal(got, want.numpy())
    else:
        assert res.layer_spike_trains is None
    lava_act = res.activity(net, x)
    sim_act = activity_from_sim(net, ref, x)
    assert lava_act.source == "lava"
    assert (lava_act.samples, lava_act.timesteps) == (sim_act.samples, sim_act.timesteps)
    for a, b in zip(lava_act.layers, sim_act.layers):
        assert np.array_equal(a.spikes_per_step, b.spikes_per_step)
        assert (a.synops_binary, a.synops_graded, a.graded_messages, a.neurons) == \
               (b.synops_binary, b.synops_graded, b.graded_messages, b.neurons)
    da, db = lava_act.to_dict(), sim_act.to_dict()
    da.pop("source"), db.pop("source")
    assert da == db  # incl. neuron_updates / active_updates per layer and totals


@pytest.mark.parametrize("kind,conv", [("if_soft", True), ("if_soft", False), ("cuba", True)],
                         ids=["if_soft-conv", "if_soft-dense", "cuba-conv"])
def test_probes_equal_simulator(kind, conv):
    T = 5
    net, x = random_net(1, kind, conv, n_samples=3, T=T)
    ref = simulate(net, x, T, record_spikes=True)
    # chunks of 4 steps: windows of 5 steps straddle every chunk boundary
    res = run_lava(net, x, T, progress=False, probes=True, chunk_steps=4)
    assert res.probe_mechanism == "recorder"
    _assert_probes_equal(res, ref, net, x)
    assert np.array_equal(res.output_spikes, ref.output_spikes.numpy().transpose(1, 0, 2))


def test_probes_counts_only_and_time_varying_input():
    T = 4
    net, _ = random_net(2, "if_soft", False, T=T)
    xv = np.random.default_rng(5).integers(0, 16, size=(2, T) + tuple(net.input.shape))
    ref = simulate(net, xv, T, record_spikes=True)
    res = run_lava(net, xv, T, progress=False, probes="counts")
    _assert_probes_equal(res, ref, net, xv, trains=False)


@pytest.mark.parametrize("mechanism", ["ringbuffer", "monitor"])
def test_other_probe_mechanisms_are_exact_too(mechanism):
    T = 4
    net, x = random_net(0, "if_soft", True, n_samples=2, T=T)
    ref = simulate(net, x, T, record_spikes=True)
    res = run_lava(net, x, T, progress=False, probes=True, probe_taps=MECHANISMS[mechanism],
                   chunk_steps=3)
    assert res.probe_mechanism == mechanism
    _assert_probes_equal(res, ref, net, x)


def test_no_probes_by_default_and_bad_arguments():
    net, x = random_net(0, "if_soft", False, n_samples=1, T=2)
    res = run_lava(net, x, 2, progress=False)
    assert res.layer_counts is None and res.layer_names is None
    with pytest.raises(LavaBackendError, match="no probes"):
        res.activity(net, x)
    with pytest.raises(LavaBackendError, match="probes="):
        run_lava(net, x, 2, progress=False, probes="all")
    with pytest.raises(LavaBackendError, match="loihi2-sim"):
        run_lava(net, x, 2, progress=False, probes=True, backend="loihi2-hw")


def test_recorder_pack_unpack_roundtrip():
    from hardware.runtime.procs.spike_recorder import WORD_BITS, unpack
    rng = np.random.default_rng(0)
    shapes = [(3, 2, 5), (7,), (40,)]
    steps = 6
    spikes = [rng.integers(0, 2, size=(steps,) + s) for s in shapes]
    bits = np.concatenate([s.reshape(steps, -1) for s in spikes], axis=1)
    bits = np.pad(bits, ((0, 0), (0, -bits.shape[1] % WORD_BITS)))
    words = (bits.reshape(steps, -1, WORD_BITS) << np.arange(WORD_BITS)).sum(axis=2).T
    for got, want in zip(unpack(words.astype(np.float64), shapes), spikes):
        assert np.array_equal(got, want)
