"""The potential readout downstream of the integer IR: netx file, Lava runner, stages.run.

The output layer is a non-firing integrator (hardware.ir.readout_neuron). Lava's
membrane v of that layer at the end of each sample must equal the bit-accurate
simulator's ``output_potential[T-1]``; integers are compared with ==.
"""
import dataclasses
import json

import h5py
import numpy as np
import pytest

from bench.probe_mechanisms import MECHANISMS
from hardware import ir
from hardware.analysis.activity import activity_from_sim
from hardware.errors import LavaBackendError, NetxFormatError
from hardware.runtime.runner import LavaRunResult, run_lava
from hardware.runtime.schedule import chunk_ends, readout_window_ends
from hardware.formats.netx import read_net, write_net
from hardware.simulator import simulate
from hardware.spec import LOIHI2
from tests.test_lava_runner import random_net

def readout_net(seed, kind, conv, n_samples=3, T=5):
    """random_net (calibrated hidden layers) with its last layer made the output integrator."""
    net, x = random_net(seed, kind, conv, n_samples=n_samples, T=T)
    last = dataclasses.replace(net.layers[-1], neuron=ir.readout_neuron(True))
    return net.replace(layers=net.layers[:-1] + [last], readout="potential"), x


def limit_net(kind):
    """Hidden layer firing at every step for inputs > 0, readout rows whose accumulated
    input over T = 5 steps reaches 131070 of the 131071 threshold mantissa units
    (|v| = 131070·64 = 8388480, 64 below the threshold and 127 inside the 24-bit clip)."""
    hidden = ir.Dense(weight=np.ones((204, 2), dtype=np.int64), bias=None,
                      neuron=ir.Neuron(kind, 1, du=LOIHI2.if_du, dv=LOIHI2.if_dv), name="hidden")
    w = np.zeros((3, 204), dtype=np.int64)
    w[0], w[1] = 127, -128          # 204·127 + 306 = 204·128 + 102 = 26214 = 131070 / 5
    w[2, :4] = [5, -7, 0, 3]
    out = ir.Dense(weight=w, bias=np.array([306, -102, 4]), neuron=ir.readout_neuron(True),
                   name="out")
    net = ir.Network(input=ir.Input((2,)), layers=[hidden, out], integer=True, input_bits=8,
                     readout="potential")
    x = np.array([[255, 255], [0, 0], [3, 0], [0, 200]])
    return net, x, 5


def graded_limit_net():
    """The readout straight on the graded input: 8·(2·255·32 + 63) = 131064 ≤ 131071."""
    w = np.array([[32, 32], [-32, -32], [31, -2]])
    out = ir.Dense(weight=w, bias=np.array([63, -63, 0]), neuron=ir.readout_neuron(True),
                   name="out")
    net = ir.Network(input=ir.Input((2,)), layers=[out], integer=True, input_bits=8,
                     readout="potential")
    return net, np.array([[255, 255], [255, 0], [0, 0], [128, 77]]), 8


def _check_against_simulator(net, x, T, res):
    ref = simulate(net, x, T, pipelined=False)
    want = ref.output_potential[-1].numpy()
    assert res.readout == "potential"
    assert res.output_potential.dtype == np.int64
    assert res.output_potential.shape == (len(x), net.output_size)
    assert np.array_equal(res.output_potential, want)
    # the integrator never fires, in Lava as in the simulator
    assert not res.output_spikes.any() and not ref.output_spikes.any()
    assert np.array_equal(res.predictions(), ref.predictions()[-1].numpy())
    return ref, want


# --------------------------------------------------------------------------- no Lava
def test_schedule_stops_at_every_window_end():
    windows = readout_window_ends(3, 4, 2)
    assert windows == [6, 10, 14]  # (k+1)·T + L, the last = N·T + L
    assert chunk_ends(14, 3, windows) == [3, 6, 9, 10, 12, 14]
    assert chunk_ends(14, None, windows) == windows
    assert chunk_ends(14, 100) == [14]


def test_lava_result_predictions_tie_to_lowest_index():
    res = LavaRunResult(output_spikes=np.zeros((2, 3, 3), dtype=np.int64), wall_time_s=1.0,
                        steps_run=8, samples_per_s=2.0, backend="loihi2-sim", readout="potential",
                        output_potential=np.array([[5, 5, 1], [-3, -1, -1]]))
    assert res.predictions().tolist() == [0, 1]
    assert res.accuracy([0, 2]) == 0.5
    assert res.predictions("spikes").tolist() == [0, 0]
    with pytest.raises(LavaBackendError, match="no output potential"):
        dataclasses.replace(res, output_potential=None).predictions()


def test_netx_round_trip_with_readout(tmp_path):
    net, _ = readout_net(0, "if_soft", True)
    path = write_net(net, tmp_path / "a.net")
    with h5py.File(path, "r") as f:
        assert f.attrs["readout"] == "potential" and f.attrs["ir_version"] == ir.IR_VERSION == "1.2"
        neuron = f[f"layer/{len(net.layers)}/neuron"]
        # an ordinary CUBA layer to netx
        assert neuron["type"][()] == b"CUBA"
        assert (int(neuron["vThMant"][()]), int(neuron["iDecay"][()]), int(neuron["vDecay"][()])) \
            == (LOIHI2.threshold_max, 4096, 0)
    back = read_net(path)
    assert back.readout == "potential" and ir.networks_equal(back, net)
    again = read_net(write_net(back, tmp_path / "b.net"))
    assert ir.networks_equal(again, net) and again.metadata == back.metadata
    assert not ir.networks_equal(net.replace(readout="spikes"), net)


def _set_attrs(path, **attrs):
    with h5py.File(path, "a") as f:
        for key, value in attrs.items():
            if value is None:
                del f.attrs[key]
            else:
                f.attrs[key] = value


def test_ir_1_0_file_without_readout_reads_as_spikes(tmp_path):
    spikes_net, _ = random_net(0, "cuba", False)
    path = write_net(spikes_net, tmp_path / "old.net")
    _set_attrs(path, readout=None, ir_version="1.0")
    back = read_net(path)
    assert (back.readout, back.version) == ("spikes", "1.0")
    assert ir.networks_equal(back, spikes_net)
    again = read_net(write_net(back, tmp_path / "again.net"))
    assert (again.readout, again.version) == ("spikes", "1.0") and ir.networks_equal(again, back)
    # a potential file stripped of the attribute is an ordinary CUBA output layer
    pot, _ = readout_net(0, "cuba", False)
    path = write_net(pot, tmp_path / "stripped.net")
    _set_attrs(path, readout=None)
    assert read_net(path).readout == "spikes"


@pytest.mark.parametrize("attrs,match", [
    ({"readout": "voltage"}, "readout attribute 'voltage' is not one of"),
    ({"readout": "spikes "}, "readout attribute 'spikes ' is not one of"),
    ({"ir_version": "2.0"}, "IR version '2.0' is not supported"),
])
def test_bad_readout_or_version_refused(tmp_path, attrs, match):
    net, _ = readout_net(0, "if_soft", False)
    path = write_net(net, tmp_path / "bad.net")
    _set_attrs(path, **attrs)
    with pytest.raises(NetxFormatError, match=f"bad.net: {match}"):
        read_net(path)


def test_potential_attribute_on_a_firing_output_layer_refused(tmp_path):
    net, _ = random_net(0, "cuba", False)
    path = write_net(net, tmp_path / "liar.net")
    _set_attrs(path, readout="potential")
    with pytest.raises(NetxFormatError, match="liar.net: inconsistent network.*non-firing integrator"):
        read_net(path)


# --------------------------------------------------------------------------- Lava
@pytest.mark.parametrize("kind", ["if_soft", "cuba"])
@pytest.mark.parametrize("conv", [False, True], ids=["dense", "conv"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.lava
@pytest.mark.filterwarnings("error:Cannot import module")
def test_lava_potential_equals_simulator(kind, conv, seed):
    T = 5
    net, x = readout_net(seed, kind, conv, T=T)
    res = run_lava(net, x, T, progress=False)
    ref, want = _check_against_simulator(net, x, T, res)
    assert sum(int(c.sum()) for c in ref.layer_counts[:-1]) > 0  # hidden layers do spike
    assert len(np.unique(want)) > 2                               # and the potentials differ
    assert res.models["LIFReset"] == ["PyLifResetModelBitAcc"]   # the readout: stock LIF
    if kind == "if_soft":
        assert res.models["IFSoftReset"] == ["PyIFSoftResetModelBitAcc"]


@pytest.mark.parametrize("make", [lambda: limit_net("if_soft"), lambda: limit_net("cuba"),
                                  graded_limit_net], ids=["if_soft", "cuba", "graded"])
@pytest.mark.lava
@pytest.mark.filterwarnings("error:Cannot import module")
def test_accumulation_near_the_24_bit_limit_does_not_fire(make, tmp_path):
    net, x, T = make()
    path = write_net(net, tmp_path / "limit.net")  # netx + Lava represent it exactly
    res = run_lava(net, x, T, progress=False, net_path=str(path))
    all_cuba = all(layer.neuron.kind == "cuba" for layer in net.weighted_layers)
    assert res.loader.startswith("stock") == all_cuba  # stock netx runs every cuba file
    _, want = _check_against_simulator(net, x, T, res)
    theta = LOIHI2.threshold_max << LOIHI2.threshold_shift
    peak = int(np.abs(want).max())
    assert theta - 512 < peak <= theta and peak < LOIHI2.state_max - 1
    assert int(want.max()) == peak and int(want.min()) < -(theta - 512)  # both signs


@pytest.mark.lava
@pytest.mark.filterwarnings("error:Cannot import module")
def test_stock_netx_runs_cuba_readout_file_like_simulator(tmp_path):
    T = 5
    net, x = readout_net(6, "cuba", True, n_samples=2, T=T)
    path = write_net(net, tmp_path / "cuba.net")
    stock = run_lava(read_net(path), x, T, net_path=str(path), progress=False)
    assert stock.loader.startswith("stock lava.lib.dl.netx")
    _check_against_simulator(net, x, T, stock)
    own = run_lava(net, x, T, progress=False)
    assert own.loader.startswith("hardware.runtime.network")
    assert np.array_equal(own.output_potential, stock.output_potential)


@pytest.mark.parametrize("mechanism", ["recorder", "ringbuffer"])
@pytest.mark.lava
@pytest.mark.filterwarnings("error:Cannot import module")
def test_probes_and_uneven_chunks_with_potential_readout(mechanism):
    """chunk_steps = 3 against windows of 4 steps: the rings are read at columns that
    wrap, and the potential is read at window ends that are not chunk multiples."""
    T = 4
    net, x = readout_net(1, "if_soft", True, n_samples=3, T=T)
    ref = simulate(net, x, T, record_spikes=True)
    res = run_lava(net, x, T, progress=False, probes=True, probe_taps=MECHANISMS[mechanism],
                   chunk_steps=3)
    _check_against_simulator(net, x, T, res)
    for got, want in zip(res.layer_spike_trains, ref.layer_spike_trains):
        assert np.array_equal(got, want.numpy())
    lava_act, sim_act = res.activity(net, x).to_dict(), activity_from_sim(net, ref, x).to_dict()
    assert lava_act["layers"] == sim_act["layers"] and lava_act["totals"] == sim_act["totals"]
    out = lava_act["layers"][-1]
    assert out["readout"] is True and not any(la["readout"] for la in lava_act["layers"][:-1])
    assert (out["spikes"], out["active_updates"], out["firing_rate"], out["fan_out_max"]) == (0, 0, None, 0)
    assert out["neuron_updates"] == net.output_size * T
    # its synapses work: every spike of the previous layer reaches every output neuron
    expected = int(ref.layer_counts[-2].sum()) * net.output_size
    assert out["synops_binary"] * len(x) == expected > 0


@pytest.mark.lava
@pytest.mark.filterwarnings("error:Cannot import module")
def test_stages_run_reports_the_potential_readout(tmp_path):
    from pipeline import stages
    from pipeline.config import load_config

    rng = np.random.default_rng(3)
    hidden = ir.Dense(weight=rng.integers(-20, 40, size=(24, 64)), bias=rng.integers(-50, 50, 24),
                      neuron=ir.Neuron("if_soft", 4000), name="hidden")
    out = ir.Dense(weight=rng.integers(-60, 60, size=(10, 24)), bias=rng.integers(-9, 9, 10),
                   neuron=ir.readout_neuron(True), name="out")
    net = ir.Network(input=ir.Input((1, 8, 8)), layers=[ir.Flatten(), hidden, out], integer=True,
                     input_bits=8, readout="potential")
    path = write_net(net, tmp_path / "given.net")
    cfg = load_config("deploy.yaml", [f"run.dir={tmp_path}", f"run.net={path}", "run.lava_samples=3",
                                      "eval.timesteps=4"])
    ran = stages.run(cfg, progress=False)
    rendered = stages.report(cfg, progress=False)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["readout"] == report["lava"]["readout"] == "potential"
    assert set(report["accuracy"]["snn_fixed"]) == {"1", "2", "3", "4"}
    assert set(report["accuracy"]["lava"]) == {"4"}
    assert report["lava"]["agreement"] == 1.0 and report["lava"]["disagreeing_samples"] == []
    assert report["lava"]["probes_equal_reference"] is True
    assert ran["probes"]["layers"][-1]["readout"] is True
    assert ran["probes"]["layers"][0]["spikes"] > 0
    assert report["energy"]["total_pj"] > 0
    md = (tmp_path / "report.md").read_text()
    assert "Readout: potential" in md and "identical output membrane at T" in md
    assert "out (readout, no spikes)" in md and rendered["plots"]["raster"]
    with np.load(tmp_path / "raster.npz", allow_pickle=False) as raster:
        assert [str(n) for n in raster["layer_names"]] == ["hidden"]


@pytest.mark.lava
@pytest.mark.filterwarnings("error:Cannot import module")
def test_conv_readout_layer_potential_in_ir_order():
    """A conv output integrator: Lava's (W, H, C) membrane comes back in the IR's C order."""
    rng = np.random.default_rng(9)
    conv = ir.Conv(weight=rng.integers(-40, 60, size=(3, 2, 3, 2)), bias=rng.integers(-5, 5, 3),
                   neuron=ir.readout_neuron(True), stride=(2, 1), padding=(1, 0), name="out")
    net = ir.Network(input=ir.Input((2, 5, 4)), layers=[conv], integer=True, input_bits=4,
                     readout="potential")
    x = rng.integers(0, 16, size=(2, 2, 5, 4))
    res = run_lava(net, x, 3, progress=False)
    _, want = _check_against_simulator(net, x, 3, res)
    assert len(np.unique(want)) == want.size  # every position distinct: any reordering shows


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
@pytest.mark.lava
@pytest.mark.filterwarnings("error:Cannot import module")
def test_error_while_reading_the_potential_stops_runtime(monkeypatch, exc):
    import hardware.runtime.runner as runner
    from tests.test_lava_runner import _no_children

    def fail(self, end_step):
        raise exc("boom")

    monkeypatch.setattr(runner._PotentialReader, "after_chunk", fail)
    net, x = readout_net(0, "if_soft", False, n_samples=2, T=3)
    with pytest.raises(exc, match="boom"):
        run_lava(net, x, 3, progress=False)
    assert _no_children()


@pytest.mark.lava
@pytest.mark.filterwarnings("error:Cannot import module")
def test_readout_run_beyond_its_bound_warns_and_still_equals_simulator():
    """graded_limit_net fits T = 8; at T = 9 the first row passes the threshold (v clips at
    2**23 − 1, fires, resets to 0) and the second clips at −(2**23 − 1): Lava and the
    simulator still agree bit for bit, and the runner says the potential is meaningless."""
    net, x, _ = graded_limit_net()
    with pytest.warns(RuntimeWarning, match="readout layer out fired"):
        res = run_lava(net, x, 9, progress=False)
    ref = simulate(net, x, 9, pipelined=False)
    assert np.array_equal(res.output_spikes, ref.output_spikes.numpy().transpose(1, 0, 2))
    assert res.output_spikes[0, -1, 0] == 1 and res.output_spikes.sum() == 1
    assert np.array_equal(res.output_potential, ref.output_potential[-1].numpy())
    assert res.output_potential[0, 0] == 0 and res.output_potential[0, 1] == -(LOIHI2.state_max - 1)
