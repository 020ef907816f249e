"""Residual networks in the .net file: the ``nqloihi-residual`` extension of the netx layout.

Round trips (write -> read -> write gives the same datasets and attributes, byte for byte,
and the same IR), stock netx refusing the residual file (never loading it as a wrong
sequential network), and the hardened reader's errors.

That a sequential ``cuba`` file still loads and runs in stock netx exactly as before is
covered by ``tests/test_netx_io.py::test_cuba_file_runs_in_stock_netx_like_simulator``
(stock netx's output spikes == the simulator's), ``tests/test_lava_runner.py::
test_stock_netx_file_equals_own_loader`` and ``tests/test_validate.py::
test_stock_network_runs_in_lava_like_the_simulator`` (through ``stock_network``); here
:func:`test_sequential_file_unchanged_and_still_built_by_stock_netx` checks that such a
file carries no graph attributes and is still built by stock netx.
"""
from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest

from hardware import ir
from hardware.errors import IRError, NetxFormatError
from hardware.formats.netx import GRAPH_FORMAT, GRAPH_VERSION, read_net, write_net
from tests.test_netx_io import random_ir
from tests.test_residual_lava import conv_residual_net, dense_residual_net


def _residual_nets():
    conv_soft, _ = conv_residual_net("if_soft")
    conv_cuba, _ = conv_residual_net("cuba", readout="potential", seed=2)
    dense_cuba, _ = dense_residual_net("cuba")
    dense_soft, _ = dense_residual_net("if_soft", readout="potential", seed=4)
    return {"conv-if_soft": conv_soft, "conv-cuba-potential": conv_cuba,
            "dense-cuba": dense_cuba, "dense-if_soft-potential": dense_soft}


NETS = _residual_nets()


def _contents(path) -> dict:
    """Every group's and dataset's type, shape, bytes and attributes (bytes and dtypes)."""
    def value(v):
        a = np.asarray(v)
        return (a.dtype.str, a.shape, a.tobytes()) if a.dtype.kind != "O" else repr(v)

    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            attrs = {k: value(obj.attrs[k]) for k in sorted(obj.attrs)}
            if isinstance(obj, h5py.Dataset):
                out[name] = ("dataset", value(obj[()]), attrs)
            else:
                out[name] = ("group", attrs)
        visit("/", f)
        f.visititems(visit)
    return out


# --------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("name", sorted(NETS))
def test_residual_round_trip_identical(tmp_path, name):
    net = NETS[name]
    assert not net.is_sequential
    first = write_net(net, tmp_path / "a.net", provenance={"arch": name}, steps_per_sample=4)
    back = read_net(first)
    assert ir.networks_equal(back, net)
    assert [layer.name for layer in back.layers] == [layer.name for layer in net.layers]
    assert [[(p.source, p.kind) for p in layer.extra_inputs] for layer in back.weighted_layers] \
        == [[(p.source, p.kind) for p in layer.extra_inputs] for layer in net.weighted_layers]
    assert back.version == "1.2" and back.readout == net.readout
    second = write_net(back, tmp_path / "b.net", steps_per_sample=4)
    assert _contents(first) == _contents(second)
    assert first.read_bytes() == second.read_bytes()  # h5py stores no timestamps
    assert ir.networks_equal(read_net(second), net)
    # the comparison can fail: another projection weight changes the file
    fc = back.weighted_layers[-1]
    changed = dataclasses.replace(fc.extra_inputs[0], weight=fc.extra_inputs[0].weight + 1)
    other = back.replace(layers=back.layers[:-1] + [dataclasses.replace(
        fc, extra_inputs=(changed,) + tuple(fc.extra_inputs[1:]))])
    assert _contents(write_net(other, tmp_path / "c.net", steps_per_sample=4)) != _contents(first)
    assert not ir.networks_equal(read_net(tmp_path / "c.net"), net)


def test_residual_file_layout(tmp_path):
    net = NETS["conv-if_soft"]
    path = write_net(net, tmp_path / "r.net")
    with h5py.File(path, "r") as f:
        assert f.attrs["graph_format"] == GRAPH_FORMAT == "nqloihi-residual"
        assert int(f.attrs["graph_version"]) == GRAPH_VERSION == 1
        assert f.attrs["ir_version"] == "1.2"
        assert "residual" in f.attrs["stock_netx_note"]
        types = [f[f"layer/{i}/type"][0] for i in range(len(net.layers) + 1)]
        # input c1 c2 c3(+c1) c4(+c2) flat fc5 fc6(+c4)
        assert types == [b"input", b"conv", b"conv", b"concat", b"concat", b"flatten", b"dense",
                         b"concat"]
        c3 = f["layer/3"]
        assert c3["layer_type"][0] == b"conv" and c3.attrs["name"] == "c3"
        assert set(c3.keys()) == {"type", "layer_type", "shape", "weight", "bias", "stride",
                                  "padding", "dilation", "groups", "neuron", "inputs"}
        identity = c3["inputs/0"]
        assert int(identity["source"][()]) == 1 and identity["kind"][0] == b"conv"
        assert np.array_equal(identity["weight"][()], net.layers[2].extra_inputs[0].weight)
        assert int(identity.attrs["weight_exp"]) == 0
        shortcut = f["layer/4/inputs/0"]
        assert int(shortcut["source"][()]) == 2 and list(shortcut["stride"][()]) == [2, 2]
        dense = f["layer/7/inputs/0"]
        assert int(dense["source"][()]) == 4 and dense["kind"][0] == b"dense"
        assert set(dense.keys()) == {"source", "kind", "weight"}
        assert f["layer/7/layer_type"][0] == b"dense"


def test_sequential_file_unchanged_and_still_built_by_stock_netx(tmp_path):
    """A chain is written as before (no graph attributes, no 'concat'); stock netx builds it."""
    from hardware.runtime.stock_netx import stock_network
    net = random_ir(11, kinds=("cuba",))
    assert net.is_sequential
    path = write_net(net, tmp_path / "seq.net", steps_per_sample=3)
    with h5py.File(path, "r") as f:
        assert "graph_format" not in f.attrs and "graph_version" not in f.attrs
        types = {f[f"layer/{i}/type"][0] for i in range(len(net.layers) + 1)}
        assert b"concat" not in types and all("inputs" not in f[f"layer/{i}"]
                                              for i in range(len(net.layers) + 1))
    lnet = stock_network(path)
    assert len(lnet.layers) == len(net.weighted_layers)


def test_written_extra_inputs_need_ir_1_2(tmp_path):
    with pytest.raises(IRError, match="extra inputs but claims IR version 1.1"):
        write_net(NETS["dense-cuba"].replace(version="1.1"), tmp_path / "x.net")
    assert not (tmp_path / "x.net").exists()


# --------------------------------------------------------------------------- stock netx

@pytest.mark.lava
@pytest.mark.parametrize("name", ["dense-cuba", "conv-cuba-potential"])
def test_stock_netx_refuses_residual_file(tmp_path, name):
    """Stock netx raises on the 'concat' layer instead of skipping it (it silently skips
    unknown types); stock_network refuses first with a typed error naming the layers."""
    from lava.lib.dl.netx.hdf5 import Network as NetxNetwork

    from hardware.runtime.stock_netx import stock_netx_arguments, stock_network
    net = NETS[name]
    assert {layer.neuron.kind for layer in net.weighted_layers} == {"cuba"}
    path = write_net(net, tmp_path / "res.net", steps_per_sample=3)
    residual = [layer.name for layer in net.weighted_layers if layer.extra_inputs]
    with pytest.raises(NetxFormatError, match=f"residual network \\(layers {', '.join(residual)} "):
        stock_network(path)
    with pytest.raises(NetxFormatError, match="residual"):
        stock_netx_arguments(path)
    with pytest.raises(NotImplementedError, match="concat is not implemented"):
        NetxNetwork(net_config=str(path), input_message_bits=int(net.input_bits))


@pytest.mark.lava
def test_unknown_layer_type_would_be_skipped_by_stock_netx(tmp_path):
    """Why 'concat': stock netx silently skips a layer type it does not know, loading a
    shorter, wrong network, so an invented type would not be refused."""
    from lava.lib.dl.netx.hdf5 import Network as NetxNetwork
    net = random_ir(11, kinds=("cuba",))
    path = write_net(net, tmp_path / "seq.net")
    with h5py.File(path, "a") as f:  # turn the last dense layer into an unknown type
        last = f[f"layer/{len(net.layers)}"]
        del last["type"]
        last.create_dataset("type", (1,), "S10", [b"residual"])
    lnet = NetxNetwork(net_config=str(path), input_message_bits=int(net.input_bits))
    assert len(lnet.layers) == len(net.weighted_layers) - 1


# --------------------------------------------------------------------------- hardened reader

def _write(tmp_path, name="dense-cuba"):
    return write_net(NETS[name], tmp_path / "r.net")


def _replace_dataset(group, key, data, **kw):
    del group[key]
    group.create_dataset(key, data=data, **kw)


def _edit_and_expect(path, edit, match):
    with h5py.File(path, "a") as f:
        edit(f)
    with pytest.raises(NetxFormatError, match=match):
        read_net(path)


# dense-cuba: layer/1 fc1, 2 fc2, 3 fc3 (+fc1), 4 fc4 (+fc2, +fc3);
# conv-if_soft: as in test_residual_file_layout
BAD_SOURCES = [
    (0, "source 0 is not an earlier conv/dense layer"),      # the input layer
    (3, "source 3 is not an earlier conv/dense layer"),      # the layer itself
    (4, "source 4 is not an earlier conv/dense layer"),      # a later layer
    (99, "source 99 is not an earlier conv/dense layer"),
    (-1, "source -1 is not an earlier conv/dense layer"),
]


@pytest.mark.parametrize("source,match", BAD_SOURCES)
def test_sources_must_be_earlier_weighted_layers(tmp_path, source, match):
    path = _write(tmp_path)
    _edit_and_expect(path, lambda f: _replace_dataset(f["layer/3/inputs/0"], "source", source),
                     f"layer 3 \\(concat\\) extra input 0: {match}")


def test_source_may_not_be_a_flatten(tmp_path):
    path = _write(tmp_path, "conv-if_soft")  # layer 5 is the flatten
    _edit_and_expect(path, lambda f: _replace_dataset(f["layer/7/inputs/0"], "source", 5),
                     "layer 7 \\(concat\\) extra input 0: source 5 is not an earlier")


def test_concat_needs_the_graph_format(tmp_path):
    """Without the root attributes a 'concat' layer is refused as before, never skipped."""
    path = _write(tmp_path)
    _edit_and_expect(path, lambda f: (f.attrs.__delitem__("graph_format"),
                                      f.attrs.__delitem__("graph_version")),
                     "layer 3 \\(concat\\): layer type 'concat' is not supported")


@pytest.mark.parametrize("attrs,match", [
    ({"graph_format": "other-graph"}, "graph format 'other-graph' is not supported"),
    ({"graph_version": 2}, "graph version 2 of 'nqloihi-residual' is not supported"),
    ({"graph_version": "1"}, "graph_version' is text"),
    ({"ir_version": "1.1"}, "IR version 1.1 has no extra inputs"),
    ({"ir_version": "1.3"}, "IR version '1.3' is not supported"),
])
def test_root_attributes_checked(tmp_path, attrs, match):
    path = _write(tmp_path)

    def edit(f):
        for k, v in attrs.items():
            f.attrs[k] = v
    _edit_and_expect(path, edit, match)


def test_projection_keys_checked(tmp_path):
    cases = [
        (lambda f: f["layer/3"].__delitem__("inputs"),
         "layer 3 \\(concat\\): missing key 'inputs'"),
        (lambda f: f["layer/3/inputs"].__delitem__("0"), "'inputs' holds 0 entries"),
        (lambda f: f["layer/4/inputs"].move("1", "5"), "'inputs' must hold 0..1"),
        (lambda f: f["layer/3/inputs/0"].__delitem__("kind"), "missing key 'kind'"),
        (lambda f: f["layer/3/inputs/0"].__delitem__("source"), "missing key 'source'"),
        (lambda f: f["layer/3/inputs/0"].__delitem__("weight"), "missing key 'weight'"),
        (lambda f: _replace_dataset(f["layer/3/inputs/0"], "kind", "pool"),
         "kind 'pool' is not one of"),
        (lambda f: _replace_dataset(f["layer/3"], "layer_type", "pool"),
         "layer_type 'pool' is not 'conv' or 'dense'"),
        (lambda f: _replace_dataset(f["layer/3/inputs/0"], "source", 1.5),
         "source must be one integer|source must be integers"),
        (lambda f: f["layer/3/inputs/0"].create_dataset("delay", data=np.ones((12, 12))),
         "synaptic delays are not supported"),
        (lambda f: f["layer/3/inputs"].__setitem__("1", h5py.SoftLink("/layer/3/inputs/0")),
         "SoftLink"),
    ]
    for edit, match in cases:
        path = _write(tmp_path)
        _edit_and_expect(path, edit, match)


def test_projection_sizes_checked_before_reading(tmp_path):
    """Declared shapes are checked against the source and the layer before any weight is
    read: a huge declared weight is refused without being allocated."""
    big = dict(shape=(1 << 14, 1 << 14), dtype=np.int8, chunks=(64, 64))  # 256 MiB declared
    cases = [
        ("dense-cuba", "layer/3/inputs/0", dict(data=np.zeros((12, 13), np.int32)),
         "dense weight shape \\(12, 13\\) is not \\(12, 12\\)"),
        ("dense-cuba", "layer/3/inputs/0", big, "dense weight shape \\(16384, 16384\\) is not"),
        ("conv-if_soft", "layer/3/inputs/0", dict(data=np.zeros((4, 3, 1, 1), np.int32)),
         "groups 1 do not fit 4 input"),
        ("conv-if_soft", "layer/3/inputs/0", dict(data=np.zeros((5, 4, 1, 1), np.int32)),
         "the projection outputs \\(5, 5, 5\\), its layer \\(4, 5, 5\\)"),
        ("conv-if_soft", "layer/3/inputs/0",
         dict(shape=(4, 4, 1 << 12, 1 << 12), dtype=np.int8, chunks=(1, 1, 64, 64)),
         "does not fit the padded input"),
    ]
    for name, group, spec, match in cases:
        path = _write(tmp_path, name)

        def edit(f, group=group, spec=spec):
            del f[group]["weight"]
            f[group].create_dataset("weight", **spec)
        _edit_and_expect(path, edit, match)
    # a stride that does not give the layer's shape
    path = _write(tmp_path, "conv-if_soft")
    _edit_and_expect(path, lambda f: _replace_dataset(f["layer/4/inputs/0"], "stride",
                                                      np.array([1, 1])),
                     "the projection outputs \\(6, 5, 5\\), its layer \\(6, 3, 3\\)")


def test_projection_values_checked(tmp_path):
    cases = [
        (np.full((12, 12), 0.5), "weight must be integers, found 0.5"),
        (np.full((12, 12), 200), "weight value 200 outside \\[-128, 127\\]"),
        (np.full((12, 12), True), "weight must be integers, got bool"),
    ]
    for data, match in cases:
        path = _write(tmp_path)
        _edit_and_expect(path, lambda f, data=data: _replace_dataset(
            f["layer/3/inputs/0"], "weight", data), match)
    path = _write(tmp_path)
    _edit_and_expect(path, lambda f: f["layer/3/inputs/0"].attrs.__setitem__("weight_exp", 2),
                     "weight_exp value 2 outside")
