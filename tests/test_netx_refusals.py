"""The .net reader refuses what does not mean what it says (issue 18, part 5): a layer whose
type disagrees with what it holds (a residual 'concat' layer relabelled 'conv' would run with
its shortcut dropped), provenance values of the wrong type (a TypeError in ``run`` before),
and HDF5 attributes checked for size and storage before they are read."""
from __future__ import annotations

import json
import time

import h5py
import numpy as np
import pytest

from hardware.errors import NetxFormatError
from hardware.formats.netx import read_net, write_net
from tests.bad_inputs.base import valid_digits_net
from tests.test_residual_netx import NETS

#: layers of valid_digits_net: input, conv, flatten, dense (potential readout)
INPUT, CONV, FLAT, DENSE = "layer/0", "layer/1", "layer/2", "layer/3"


@pytest.fixture
def digits_net(tmp_path):
    return valid_digits_net(tmp_path / "base.net")


def _relabel(group: h5py.Group, new_type: str) -> None:
    del group["type"]
    group.create_dataset("type", (1,), "S10", [new_type.encode()])


def _refused(path, *needles: str) -> str:
    start = time.perf_counter()
    with pytest.raises(NetxFormatError) as info:
        read_net(path)
    assert time.perf_counter() - start < 1.0
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def _concat_layers(path) -> list:
    with h5py.File(path, "r") as f:
        return [i for i in range(len(f["layer"])) if f[f"layer/{i}/type"][0] == b"concat"]


# --------------------------------------------------------------------------- layer types
@pytest.mark.parametrize("name", sorted(NETS))
def test_concat_layer_relabelled_as_its_kind_is_refused(tmp_path, name):
    """Before: read as a plain conv/dense layer, its shortcut silently dropped."""
    path = write_net(NETS[name], tmp_path / "res.net")
    i = _concat_layers(path)[0]
    with h5py.File(path, "r+") as f:
        kind = f[f"layer/{i}/layer_type"][0].decode()
        _relabel(f[f"layer/{i}"], kind)
    _refused(path, f"layer {i} ({kind})", "'inputs'", "concat")


def test_residual_file_without_concat_layers_is_refused(tmp_path):
    """Every concat relabelled and its inputs deleted: a different network, yet the root still
    declares the residual graph format."""
    path = write_net(NETS["dense-cuba"], tmp_path / "res.net")
    with h5py.File(path, "r+") as f:
        for i in _concat_layers(path):
            g = f[f"layer/{i}"]
            _relabel(g, g["layer_type"][0].decode())
            del g["layer_type"], g["inputs"]
    _refused(path, "graph_format", "no 'concat' layer")


def test_conv_relabelled_dense_is_refused_naming_the_conv_keys(digits_net):
    with h5py.File(digits_net, "r+") as f:
        _relabel(f[CONV], "dense")
    _refused(digits_net, "layer 1 (dense)", "'stride'", "conv")


def test_dense_relabelled_flatten_is_refused(digits_net):
    """Before: the dense layer's weights were ignored (netx's flatten reads only 'type')."""
    with h5py.File(digits_net, "r+") as f:
        _relabel(f[DENSE], "flatten")
    _refused(digits_net, "layer 3 (flatten)", "'weight'")


def test_flatten_holding_weights_is_refused(digits_net):
    with h5py.File(digits_net, "r+") as f:
        f[FLAT].create_dataset("weight", data=np.ones((4, 4), np.int32))
    _refused(digits_net, "layer 2 (flatten)", "'weight'")


@pytest.mark.parametrize("shape", [(5, 2, 1), (2, 5), (1, 10, 1, 1)])
def test_dense_with_a_conv_shape_is_refused(digits_net, shape):
    with h5py.File(digits_net, "r+") as f:
        del f[DENSE + "/shape"]
        f[DENSE].create_dataset("shape", data=np.asarray(shape, np.int64))
    _refused(digits_net, "layer 3 (dense)", "shape")


def test_foreign_dense_shape_as_slayer_writes_it_is_read(digits_net):
    """slayer writes a dense layer's shape as (N, 1, 1): still a dense layer of N neurons."""
    with h5py.File(digits_net, "r+") as f:
        del f.attrs["project"]
        del f[DENSE + "/shape"]
        f[DENSE].create_dataset("shape", data=np.asarray((10, 1, 1), np.int64))
    assert read_net(digits_net).layers[-1].weight.shape == (10, 256)


def test_unknown_key_in_a_project_file_is_refused(digits_net):
    with h5py.File(digits_net, "r+") as f:
        f[CONV].create_dataset("kernel_scale", data=np.int64(2))
    _refused(digits_net, "layer 1 (conv)", "'kernel_scale'")


# --------------------------------------------------------------------------- provenance
@pytest.mark.parametrize("provenance, needle", [
    ({"quantization": {"fc": 1}}, "'quantization'"),
    ({"quantization": [1, 2]}, "'quantization'"),
    ({"quantization": [{"name": "fc_out", "readout_steps": "8"}]}, "readout_steps"),
    ({"quantization": [{"name": 7}]}, "name"),
    ({"quantization": [{"name": "x", "scale": "big"}]}, "scale"),
    ({"quantization": [{"name": "x", "readout_steps": True}]}, "readout_steps"),
    ({"ann_macs": "lots"}, "ann_macs"),
    ({"ann_macs": [100, -5]}, "ann_macs"),
    ({"ann_macs": 2304}, "ann_macs"),
    ({"ann_macs": [1, 2, 3]}, "2 weighted layers"),
    ({"netx_default_neuron_layers": 5}, "netx_default_neuron_layers"),
])
def test_provenance_of_the_wrong_type_is_refused(digits_net, provenance, needle):
    with h5py.File(digits_net, "r+") as f:
        f.attrs["provenance"] = json.dumps(provenance)
    _refused(digits_net, "provenance", needle)


def test_provenance_the_project_writes_is_read(tmp_path):
    from hardware.fixed_point.quantize import quantize
    from tests.test_netx_io import random_ir
    net = random_ir(3, kinds=("cuba",))
    macs = [100 * (i + 1) for i in range(len(net.weighted_layers))]
    path = write_net(net, tmp_path / "q.net", provenance={"ann_macs": macs, "quantization": [
        {"name": "fc", "scale": 2.5, "limited_by": "weight", "readout_steps": None,
         "state_bounds": {"u_max": 3}, "state_steps": 4}]})
    assert read_net(path).metadata["ann_macs"] == macs
    assert quantize  # the field types come from its LayerQuantReport


# --------------------------------------------------------------------------- attributes
def test_attribute_declaring_more_than_the_file_stores_is_refused(digits_net):
    """A root attribute whose declared size the file cannot hold (a damaged header): refused
    from its metadata, before h5py reads it."""
    with h5py.File(digits_net, "r+") as f:
        f.attrs.create("provenance", data=np.zeros(3, "S10"))
    _refused(digits_net, "attribute 'provenance'")


@pytest.mark.parametrize("fixed", [True, False])
@pytest.mark.parametrize("where, key", [("/", "readout"), (CONV, "name"), ("/", "ir_version")])
def test_oversized_string_attribute_is_refused(digits_net, where, key, fixed):
    """A fixed-size string is refused from its declared size, before it is read."""
    text = "x" * 5000
    with h5py.File(digits_net, "r+") as f:
        f[where].attrs[key] = np.bytes_(text.encode()) if fixed else text
    _refused(digits_net, f"attribute '{key}'", "5000")


def test_too_many_attributes_are_refused(digits_net):
    with h5py.File(digits_net, "r+", libver="latest") as f:
        for k in range(3000):
            f[CONV].attrs[f"a{k}"] = k
    _refused(digits_net, "attributes")


@pytest.mark.parametrize("damage, needle", [
    ("heap_free_space_zero", "corrupt global heap"),
    ("heap_object_size_wrapped", "corrupt global heap"),
    ("vlen_length_4gb", "variable-length string"),
])
def test_damaged_string_storage_is_refused_before_hdf5_reads_it(digits_net, damage, needle):
    """Found by fuzzing the root attributes: HDF5 walks a global heap by the sizes it stores
    (a damaged one loops forever) and allocates a string's stored length before checking it
    (seconds near 4 GB). Before: read_net hung, or took seconds per attribute."""
    from tests.bad_inputs import cases_net
    digits_net.write_bytes(getattr(cases_net, damage)(digits_net.read_bytes()))
    _refused(digits_net, needle)


def test_every_file_the_project_writes_passes_the_heap_check(tmp_path):
    from tests.test_netx_io import random_ir
    for seed in range(6):
        read_net(write_net(random_ir(seed), tmp_path / f"n{seed}.net", steps_per_sample=3))
    for name, net in NETS.items():
        read_net(write_net(net, tmp_path / f"{name}.net", steps_per_sample=3))


def test_read_provenance_alone_is_checked_as_read_net_checks_it(digits_net, tmp_path):
    from hardware.formats.netx import read_provenance
    from tests.bad_inputs.cases_net import heap_free_space_zero
    assert read_provenance(digits_net)["purpose"] == "bad-input base"
    hung = tmp_path / "hung.net"
    hung.write_bytes(heap_free_space_zero(digits_net.read_bytes()))
    with pytest.raises(NetxFormatError, match="corrupt global heap"):
        read_provenance(hung)
    with h5py.File(digits_net, "r+") as f:
        f.attrs["provenance"] = json.dumps({"quantization": {"a": 1}})
    with pytest.raises(NetxFormatError, match="'quantization' must be a list"):
        read_provenance(digits_net)
