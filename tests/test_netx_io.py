"""netx HDF5 writer/reader: round trips, stock-netx compatibility, errors."""
from __future__ import annotations

import dataclasses
import json

import h5py
import numpy as np
import pytest

from hardware.errors import IRError, NetxFormatError
from hardware.ir import Conv, Dense, Flatten, Input, Network, Neuron, networks_equal
from hardware.formats.netx import (NETX_FORMAT_VERSION, netx_dense_effective, read_net,
                              write_net)
from hardware.spec import LOIHI2


# --------------------------------------------------------------------------
# random integer IRs
# --------------------------------------------------------------------------

def _neuron(rng, kind):
    return Neuron(kind=kind, threshold=int(rng.integers(1, LOIHI2.threshold_max + 1)),
                  du=int(rng.integers(0, LOIHI2.decay_max + 1)),
                  dv=int(rng.integers(0, LOIHI2.decay_max + 1)),
                  bias_exp=LOIHI2.netx_bias_exp)


def _weights(rng, shape):
    w = rng.integers(LOIHI2.weight_min, LOIHI2.weight_max + 1, size=shape)
    # at least one positive and one negative weight: netx's rescaling is then exact
    w.flat[0] = rng.integers(1, LOIHI2.weight_max + 1)
    w.flat[1] = rng.integers(LOIHI2.weight_min, 0)
    return w


def _bias(rng, n):
    if rng.random() < 0.25:
        return None
    return rng.integers(LOIHI2.bias_min, LOIHI2.bias_max + 1, size=n)


def random_ir(seed: int, kinds=("if_soft", "cuba")) -> Network:
    rng = np.random.default_rng(seed)
    kind = lambda: str(rng.choice(kinds))  # noqa: E731
    c_in, h, w = int(rng.integers(1, 4)), int(rng.integers(6, 10)), int(rng.integers(6, 10))
    c1, c2 = 2 * int(rng.integers(1, 3)), 2 * int(rng.integers(1, 3))
    groups2 = int(rng.choice([1, 2]))
    layers = [
        Conv(weight=_weights(rng, (c1, c_in, 3, 3)), bias=_bias(rng, c1), neuron=_neuron(rng, kind()),
             stride=(int(rng.integers(1, 3)), int(rng.integers(1, 3))),
             padding=(int(rng.integers(0, 2)), int(rng.integers(0, 2))), name="conv_a"),
        Conv(weight=_weights(rng, (c2, c1 // groups2, 2, 2)), bias=_bias(rng, c2),
             neuron=_neuron(rng, kind()), dilation=(1, int(rng.integers(1, 3))),
             groups=groups2, name="conv_b"),
        Flatten(name="flat"),
    ]
    n_flat = Network(input=Input((c_in, h, w)), layers=layers, readout="spikes").shapes()[-1][0]
    n1, n2 = int(rng.integers(3, 12)), int(rng.integers(2, 6))
    layers += [
        Dense(weight=_weights(rng, (n1, n_flat)), bias=_bias(rng, n1), neuron=_neuron(rng, kind()),
              name="fc_1"),
        Dense(weight=_weights(rng, (n2, n1)), bias=_bias(rng, n2), neuron=_neuron(rng, kind()),
              name="fc_out"),
    ]
    return Network(input=Input((c_in, h, w), name="image"), layers=layers, integer=True,
                   input_bits=int(rng.integers(1, 9)), metadata={"seed": seed}, readout="spikes")


def dense_only_ir(weight, kind="cuba", threshold=100, bias=None, input_bits=8):
    n_out, n_in = weight.shape
    return Network(input=Input((n_in,)),
                   layers=[Dense(weight=np.asarray(weight), bias=bias,
                                 neuron=Neuron(kind, threshold, du=LOIHI2.if_du, dv=0),
                                 name="fc")],
                   integer=True, input_bits=input_bits, readout="spikes")


# --------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(8))
def test_round_trip_identical(tmp_path, seed):
    net = random_ir(seed)
    prov = {"config": {"model": "tiny", "T": 8}, "checkpoint_sha256": "ab" * 32,
            "quantization": [{"name": "conv_a", "scale": 0.5}]}
    path = write_net(net, tmp_path / "n.net", provenance=prov)
    back = read_net(path)
    assert networks_equal(net, back)
    assert [l.name for l in back.layers] == [l.name for l in net.layers]
    assert back.input.name == "image"
    assert [l.neuron.kind for l in back.weighted_layers] == \
        [l.neuron.kind for l in net.weighted_layers]
    assert back.metadata == {"seed": seed, **prov}
    assert back.version == net.version
    # written again, the file reads back to the same IR (a fixed point)
    again = read_net(write_net(back, tmp_path / "m.net"))
    assert networks_equal(again, net) and again.metadata == back.metadata


def test_round_trip_dense_only_and_input_neuron(tmp_path):
    rng = np.random.default_rng(5)
    net = dense_only_ir(_weights(rng, (4, 7)), kind="if_soft", bias=rng.integers(-9, 9, 4))
    assert networks_equal(read_net(write_net(net, tmp_path / "a.net")), net)
    with_in = net.replace(input=Input((7,), neuron=Neuron("cuba", 25, du=4095, dv=1024)))
    back = read_net(write_net(with_in, tmp_path / "b.net"))
    assert networks_equal(back, with_in) and back.input.neuron == with_in.input.neuron


def test_file_layout_and_attributes(tmp_path):
    net = random_ir(3, kinds=("if_soft",))
    path = write_net(net, tmp_path / "n.net", provenance={"checkpoint_sha256": "0" * 64})
    with h5py.File(path, "r") as f:
        assert f.attrs["format_version"] == NETX_FORMAT_VERSION == "1"
        assert f.attrs["project"] == "nqloihi"
        assert f.attrs["ir_version"] == net.version
        assert int(f.attrs["input_bits"]) == net.input_bits
        assert json.loads(f.attrs["provenance"])["checkpoint_sha256"] == "0" * 64
        lay = f["layer"]
        assert sorted(lay.keys(), key=int) == [str(i) for i in range(len(net.layers) + 1)]
        assert lay["0/type"][0] == b"input" and set(lay["0"].keys()) == {"type", "shape"}
        assert list(lay["0/shape"][()]) == list(net.input.shape)  # CHW = netx WHC reversed
        conv = lay["1"]
        assert conv["type"][0] == b"conv"
        assert list(conv["shape"][()]) == list(net.shapes()[0])
        assert np.array_equal(conv["weight"][()], net.layers[0].weight)
        assert list(conv["stride"][()]) == list(net.layers[0].stride)
        n = conv["neuron"]
        assert n["type"][()] == b"IF_SOFT"
        assert int(n["vThMant"][()]) == net.layers[0].neuron.threshold
        assert int(n["iDecay"][()]) == net.layers[0].neuron.du + 1
        assert int(n["vDecay"][()]) == net.layers[0].neuron.dv
        assert conv.attrs["neuron_kind"] == "if_soft" and conv.attrs["name"] == "conv_a"
        assert int(conv.attrs["weight_exp"]) == 0 and int(conv.attrs["bias_exp"]) == 6
        assert lay["3/type"][0] == b"flatten"
        assert lay["4/type"][0] == b"dense"


# --------------------------------------------------------------------------
# netx's dense weight rescaling
# --------------------------------------------------------------------------

def test_dense_effective_warns_when_netx_clips():
    """netx prints (not warns) when it clips dense weights; we turn that into a warning."""
    with pytest.warns(UserWarning, match="netx"):
        w_eff, exp = netx_dense_effective(np.array([[300, -2]]))
    assert exp == 0 and w_eff.max() <= 255


def test_dense_8bit_weights_exact_unless_nonpositive_power_of_two():
    """For 8-bit weights with a positive entry netx + Lava compute W @ s exactly."""
    rng = np.random.default_rng(1)
    for _ in range(300):
        w = _weights(rng, (4, 6))
        w_eff, exp = netx_dense_effective(w)
        assert exp <= 0 and np.array_equal(w_eff, w << -exp)
        s = rng.integers(0, 256, size=6)
        assert np.array_equal((w_eff @ s) >> -exp, w @ s)
    # no positive weight, minimum -128: scaled to -256, clipped to -255 by Lava
    w = np.array([[-128, 0], [-3, -1]])
    w_eff, exp = netx_dense_effective(w)
    assert exp == -1 and w_eff[0, 0] == -255
    assert ((w_eff @ np.array([2, 0])) >> 1)[0] != -256


def test_all_zero_dense_fails_in_netx_and_write_net(tmp_path):
    from lava.lib.dl.netx.utils import optimize_weight_bits
    with np.errstate(divide="ignore"), pytest.raises(OverflowError):
        optimize_weight_bits(np.zeros((2, 3)))
    with pytest.raises(IRError, match="layer fc: all-zero"):
        write_net(dense_only_ir(np.zeros((2, 3), dtype=int)), tmp_path / "z.net")


def test_write_rejects_unrepresentable(tmp_path):
    rng = np.random.default_rng(2)
    good = dense_only_ir(_weights(rng, (3, 4)))
    p = tmp_path / "x.net"
    with pytest.raises(IRError, match="integer IR"):
        write_net(good.replace(integer=False), p)
    fc = good.layers[0]
    too_big = fc.weight.copy()
    too_big[1, 2] = 128
    nonpositive = np.full((3, 4), -3)
    nonpositive[0, 0] = -64  # scaled to -256 by netx, clipped to -255 by Lava
    cases = [
        ({"weight": too_big}, "weight value 128 outside"),
        ({"weight": fc.weight + 0.5}, "weight must be integers"),
        ({"weight_exp": -1}, "weight_exp value -1 outside \\[0, 0\\]"),
        ({"neuron": Neuron("cuba", 10, bias_exp=5)}, "bias_exp value 5 outside \\[6, 6\\]"),
        ({"bias": np.array([0, 5000, 0])}, "bias value 5000 outside"),
        ({"neuron": Neuron("cuba", 1 << 17)}, "threshold .* 131072 outside"),
        ({"neuron": Neuron("cuba", 10, du=4096)}, "du value 4096 outside"),
        ({"weight": nonpositive}, "cannot represent these dense weights exactly"),
    ]
    for changes, msg in cases:
        with pytest.raises(IRError, match=f"^layer fc: .*{msg}"):
            write_net(good.replace(layers=[dataclasses.replace(fc, **changes)]), p)
    conv_net = random_ir(0)
    conv = dataclasses.replace(conv_net.layers[0], weight_exp=2)
    with pytest.raises(IRError, match="^layer conv_a: weight_exp value 2 outside"):
        write_net(conv_net.replace(layers=[conv] + conv_net.layers[1:]), p)
    assert not p.exists() and not list(tmp_path.glob("*.tmp"))


# --------------------------------------------------------------------------
# corrupt / unsupported files
# --------------------------------------------------------------------------

def test_missing_and_non_hdf5_files(tmp_path):
    with pytest.raises(NetxFormatError, match="no such file"):
        read_net(tmp_path / "nope.net")
    bad = tmp_path / "bad.net"
    bad.write_text("not an hdf5 file\n")
    with pytest.raises(NetxFormatError, match="not a readable HDF5"):
        read_net(bad)


def test_truncated_file(tmp_path):
    path = write_net(random_ir(1), tmp_path / "n.net")
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 100, 600):
        path.write_bytes(data[:cut])
        with pytest.raises(NetxFormatError):
            read_net(path)


def test_missing_keys(tmp_path):
    for key in ("layer/1/weight", "layer/1/neuron", "layer/1/neuron/vThMant",
                "layer/4/shape", "layer/0/shape", "layer/2/groups", "layer/1/type", "layer"):
        path = write_net(random_ir(1), tmp_path / "n.net")
        with h5py.File(path, "a") as f:
            del f[key]
        with pytest.raises(NetxFormatError) as ei:
            read_net(path)
        leaf = key.rsplit("/", 1)[-1]
        assert f"'{leaf}'" in str(ei.value), (key, str(ei.value))


@pytest.mark.parametrize("ltype", ["pool", "average", "concat", "convT", "mystery"])
def test_unsupported_layer_type(tmp_path, ltype):
    path = write_net(random_ir(2), tmp_path / "n.net")
    with h5py.File(path, "a") as f:
        del f["layer/2/type"]
        f["layer/2"].create_dataset("type", (1,), "S10", [ltype.encode("ascii")])
    with pytest.raises(NetxFormatError, match=f"layer 2 \\({ltype}\\)"):
        read_net(path)


def test_unsupported_neuron_type(tmp_path):
    path = write_net(random_ir(2), tmp_path / "n.net")
    with h5py.File(path, "a") as f:
        del f["layer/4/neuron/type"]
        f["layer/4/neuron"].create_dataset("type", data="SDNN")
    with pytest.raises(NetxFormatError, match="layer 4 \\(dense\\).*'SDNN'"):
        read_net(path)


# --------------------------------------------------------------------------
# stock netx
# --------------------------------------------------------------------------

def test_stock_netx_refuses_if_soft(tmp_path):
    """Stock netx cannot load IF_SOFT: get_neuron_params returns None for an
    unknown neuron type and AbstractBlock then fails on None.pop, so an
    if_soft file can never silently run with reset-to-zero LIF dynamics."""
    from lava.lib.dl.netx.hdf5 import Network as NetxNetwork
    path = write_net(random_ir(4, kinds=("if_soft",)), tmp_path / "soft.net")
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'pop'"):
        NetxNetwork(net_config=str(path), input_message_bits=8)
    assert NetxNetwork.get_neuron_params(
        {"type": "IF_SOFT", "vThMant": 1, "iDecay": 4096, "vDecay": 0}) is None


def _run_stock_netx(path, data_whc_t, steps, input_bits, probe_u=None):
    """Run a .net in stock netx on Lava's CPU fixed_pt models; return output spikes (n, T)."""
    from lava.lib.dl.netx.hdf5 import Network as NetxNetwork
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source

    lnet = NetxNetwork(net_config=str(path), input_message_bits=input_bits)
    source = Source(data=data_whc_t.astype(np.int32))
    sink = Sink(shape=lnet.out.shape, buffer=steps)
    source.s_out.connect(lnet.inp)
    lnet.out.connect(sink.a_in)
    try:
        lnet.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        out = sink.data.get()
        u = lnet.layers[probe_u].neuron.u.get() if probe_u is not None else None
    finally:
        lnet.stop()
    return out, u


@pytest.mark.lava
def test_lava_dense_computes_w_at_s_exactly(tmp_path):
    """netx rescales these weights (W << 2, weight_exp -2); Lava's u = (W @ x) << 6."""
    rng = np.random.default_rng(7)
    w = rng.integers(-60, 61, size=(12, 4))
    w[0, 0], w[1, 1] = 60, -60  # floor(log2(min(127/60, 128/60))) + 1 = 2
    assert netx_dense_effective(w)[1] == -2
    x = rng.integers(0, 256, size=(4, 3))  # time-varying graded input, 8 bits
    net = dense_only_ir(w, threshold=LOIHI2.threshold_max)
    path = write_net(net, tmp_path / "d.net")
    _, u = _run_stock_netx(path, x, steps=3, input_bits=8, probe_u=0)
    # du = 4095: u holds exactly the last synaptic input (sent at step 3 from step 2's spikes)
    assert np.array_equal(u.astype(np.int64), (w @ x[:, 1]) << LOIHI2.activation_shift)


@pytest.mark.lava
def test_cuba_file_runs_in_stock_netx_like_simulator(tmp_path):
    from hardware.simulator import simulate
    rng = np.random.default_rng(11)
    net = random_ir(11, kinds=("cuba",))
    # keep the synaptic sums small so nothing wraps, and make neurons fire
    layers = []
    for layer in net.layers:
        if isinstance(layer, (Conv, Dense)):
            graded = layer is net.layers[0]
            w = np.clip(layer.weight, -12, 12) if graded else layer.weight
            th = 1500 if graded else 60
            layer = layer.__class__(**{**layer.__dict__, "weight": w, "bias": None,
                                       "neuron": Neuron("cuba", th, du=4095, dv=0)})
        layers.append(layer)
    net = net.replace(layers=layers, input_bits=8)
    path = write_net(net, tmp_path / "cuba.net")
    steps = 8
    x = rng.integers(0, 256, size=(1, steps) + tuple(net.input.shape))
    out, _ = _run_stock_netx(path, x[0].transpose(3, 2, 1, 0), steps, input_bits=8)
    sim = simulate(read_net(path), x, steps, pipelined=True)
    expected = sim.output_spikes[:, 0].numpy().T  # (n_out, T)
    assert sum(int(c.sum()) for c in sim.layer_counts) > 0
    assert np.array_equal(out.astype(np.int64), expected)
