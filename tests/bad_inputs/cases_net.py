"""Bad .net files: missing keys, wrong types, out-of-range and non-integer values (with
and without this project's own attributes), impossible geometry, HDF5 links, damaged
bytes and declared sizes no file can hold. Stage: ``run`` with ``run.net`` set; a bad
file must be refused before the Lava phase (the harness makes reaching it a failure)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import h5py
import numpy as np

from . import Case, default_run
from .base import Workspace, deep_json

#: layer indices of the base network (see base.valid_digits_net)
INPUT, CONV, FLAT, DENSE = "layer/0", "layer/1", "layer/2", "layer/3"


def net_path(ws: Workspace) -> Path:
    return ws.inputs / "model.net"


def with_h5(edit: Callable[[h5py.File, Workspace], None]) -> Callable[[Workspace], Sequence[str]]:
    """A plant that edits the base .net with h5py."""
    def plant(ws: Workspace) -> Sequence[str]:
        with h5py.File(net_path(ws), "r+") as f:
            edit(f, ws)
        return (f"run.net={net_path(ws)}",)
    return plant


def with_bytes(edit: Callable[[bytes], bytes]) -> Callable[[Workspace], Sequence[str]]:
    """A plant that rewrites the base .net's bytes."""
    def plant(ws: Workspace) -> Sequence[str]:
        p = net_path(ws)
        p.write_bytes(edit(p.read_bytes()))
        return (f"run.net={p}",)
    return plant


def replace(key: str, value: Any, foreign: bool = False, **dataset_kw):
    def edit(f: h5py.File, ws: Workspace) -> None:
        del f[key]
        if value is not None:
            f.create_dataset(key, data=value, **dataset_kw)
        if foreign:
            del f.attrs["project"]
    return with_h5(edit)


def delete(key: str):
    def edit(f: h5py.File, ws: Workspace) -> None:
        del f[key]
    return with_h5(edit)


def set_attr(key: str, value: Any, where: str = "/"):
    def edit(f: h5py.File, ws: Workspace) -> None:
        f[where].attrs[key] = value
    return with_h5(edit)


def huge(key: str, shape: tuple, dtype: str = "i4"):
    """A dataset that declares ``shape`` but stores nothing (chunked, all fill value)."""
    def edit(f: h5py.File, ws: Workspace) -> None:
        del f[key]
        chunks = tuple(min(s, 1024) for s in shape)
        f.create_dataset(key, shape=shape, dtype=dtype, chunks=chunks, compression="gzip")
    return with_h5(edit)


def _weight_with(shape: tuple, value: Any, dtype=None) -> np.ndarray:
    w = np.ones(shape, dtype=dtype or np.int32)
    w.flat[0] = value
    return w


def _case(id_: str, plant, needles=(), **kw) -> Case:
    return Case(id=f"net-{id_}", owner=kw.pop("owner", "B"), stage="run", plant=plant, base="net",
                needles=needles, **kw)


CONV_W, DENSE_W = (4, 1, 3, 3), (10, 256)


def missing_key_cases() -> list[Case]:
    keys = [INPUT + "/type", INPUT + "/shape", CONV + "/type", CONV + "/shape",
            CONV + "/weight", CONV + "/stride", CONV + "/padding", CONV + "/dilation",
            CONV + "/groups", CONV + "/neuron", CONV + "/neuron/type", CONV + "/neuron/vThMant",
            CONV + "/neuron/iDecay", CONV + "/neuron/vDecay", DENSE + "/type", DENSE + "/shape",
            DENSE + "/weight", DENSE + "/neuron/vThMant", FLAT + "/type", "layer", INPUT, CONV]
    return [_case(f"missing-{k.replace('/', '.')}", delete(k), needles=("model.net",))
            for k in keys]


def value_cases() -> list[Case]:
    """Out-of-range and non-integer values, in this project's files and (``foreign``)
    in the same file without the 'project' attribute: the reader checks both."""
    return _values(False) + _values(True) + _values_ours_only()


def _values(foreign: bool) -> list[Case]:
    tag = "foreign-" if foreign else ""
    return [
        _case(f"{tag}conv-weight-1000", replace(CONV + "/weight", _weight_with(CONV_W, 1000),
                                                foreign), needles=("1000",)),
        _case(f"{tag}conv-weight--300", replace(CONV + "/weight", _weight_with(CONV_W, -300),
                                                foreign), needles=("-300",)),
        _case(f"{tag}conv-bias-1e6", replace(CONV + "/bias", np.full(4, 10 ** 6, np.int64),
                                             foreign), needles=("1000000",)),
        _case(f"{tag}dense-bias-5000", replace(DENSE + "/bias", np.full(10, 5000, np.int64),
                                               foreign), needles=("5000",)),
        _case(f"{tag}conv-threshold-0", replace(CONV + "/neuron/vThMant", 0, foreign),
              needles=(("vThMant", "threshold"),)),
        _case(f"{tag}conv-threshold-negative", replace(CONV + "/neuron/vThMant", -5, foreign),
              needles=(("vThMant", "threshold"),)),
        _case(f"{tag}conv-threshold-2^24", replace(CONV + "/neuron/vThMant", 1 << 24, foreign),
              needles=(("vThMant", "threshold"),)),
        _case(f"{tag}conv-iDecay-4097", replace(CONV + "/neuron/iDecay", 4097, foreign),
              needles=(("iDecay", "du"),)),
        _case(f"{tag}conv-iDecay-0", replace(CONV + "/neuron/iDecay", 0, foreign),
              needles=(("iDecay", "du"),)),
        _case(f"{tag}conv-vDecay-5000", replace(CONV + "/neuron/vDecay", 5000, foreign),
              needles=(("vDecay", "dv"),)),
        _case(f"{tag}conv-vDecay--1", replace(CONV + "/neuron/vDecay", -1, foreign),
              needles=(("vDecay", "dv"),)),
        _case(f"{tag}conv-weight-plus-half", replace(CONV + "/weight",
              _weight_with(CONV_W, 3.5, np.float64), foreign), needles=("weight",)),
        _case(f"{tag}conv-weight-complex", replace(CONV + "/weight",
              np.ones(CONV_W, np.complex64), foreign), needles=("weight",)),
        _case(f"{tag}conv-weight-bool", replace(CONV + "/weight", np.ones(CONV_W, bool),
                                                foreign), needles=("weight",)),
        _case(f"{tag}conv-threshold-1.5", replace(CONV + "/neuron/vThMant", 1.5, foreign),
              needles=(("vThMant", "threshold"),)),
        _case(f"{tag}conv-stride-0", replace(CONV + "/stride", np.array([0, 0]), foreign),
              needles=("stride",)),
    ]


def _values_ours_only() -> list[Case]:
    return [
        _case("conv-weight-200", replace(CONV + "/weight", _weight_with(CONV_W, 200)),
              needles=("200",)),
        _case("dense-weight-1000", replace(DENSE + "/weight", _weight_with(DENSE_W, 1000)),
              needles=("1000",)),
        _case("dense-weight-200", replace(DENSE + "/weight", _weight_with(DENSE_W, 200)),
              needles=("200",)),
        _case("dense-weight-plus-half", replace(DENSE + "/weight",
              _weight_with(DENSE_W, 0.5, np.float32)), needles=("weight",)),
        _case("dense-weight-complex", replace(DENSE + "/weight", np.ones(DENSE_W, np.complex128)),
              needles=("weight",)),
        _case("dense-weight-bool", replace(DENSE + "/weight", np.ones(DENSE_W, bool)),
              needles=("weight",)),
        _case("dense-weight-nan", replace(DENSE + "/weight", np.full(DENSE_W, np.nan)),
              needles=("weight",)),
        _case("dense-weight-string", replace(DENSE + "/weight", np.array([b"abc"] * 10)),
              needles=("weight",)),
        _case("conv-bias-0.5", replace(CONV + "/bias", np.full(4, 0.5)), needles=("bias",)),
        _case("conv-bias-wrong-size", replace(CONV + "/bias", np.ones(7, np.int32)),
              needles=("bias",)),
        _case("conv-weight-int64-huge", replace(CONV + "/weight",
              _weight_with(CONV_W, 2 ** 40, np.int64)), needles=("weight",)),
        _case("conv-weight-3d", replace(CONV + "/weight", np.ones((4, 3, 3), np.int32)),
              needles=("weight",)),
        _case("conv-weight-in-channels-2", replace(CONV + "/weight", np.ones((4, 2, 3, 3), np.int32)),
              needles=(("channel", "weight"),)),
        _case("dense-weight-wrong-fan-in", replace(DENSE + "/weight", np.ones((10, 255), np.int32)),
              needles=("weight",)),
        _case("dense-threshold-1.5", replace(DENSE + "/neuron/vThMant", 1.5),
              needles=(("vThMant", "threshold"),)),
        _case("threshold-string", replace(CONV + "/neuron/vThMant", "high"),
              needles=(("vThMant", "threshold"),)),
        _case("iDecay-1.5", replace(CONV + "/neuron/iDecay", 1.5), needles=(("iDecay", "du"),)),
        _case("neuron-type-unknown", replace(CONV + "/neuron/type", "BANANA"),
              needles=("BANANA",)),
        _case("neuron-type-int", replace(CONV + "/neuron/type", 5), needles=("type",)),
        _case("graded-output-spikes", replace(CONV + "/neuron/gradedSpike", True),
              needles=(("graded", "gradedSpike"),)),
        _case("layer-type-unknown", replace(CONV + "/type", np.array([b"banana"])),
              needles=("banana",)),
        _case("layer-type-pool", replace(CONV + "/type", np.array([b"pool"])), needles=("pool",)),
    ]


def geometry_cases() -> list[Case]:
    g = [
        ("input-shape-8.5", INPUT + "/shape", np.array([1.0, 8.5, 8.0]), "shape"),
        ("input-shape-zero", INPUT + "/shape", np.array([1, 8, 0]), "shape"),
        ("input-shape-negative", INPUT + "/shape", np.array([-1, 8, 8]), "shape"),
        ("input-shape-5d", INPUT + "/shape", np.array([1, 1, 1, 8, 8]), ("shape", "input")),
        ("input-shape-string", INPUT + "/shape", "1x8x8", "shape"),
        ("input-shape-huge", INPUT + "/shape", np.array([1, 2 ** 31, 2 ** 31]), "shape"),
        ("stride-negative", CONV + "/stride", np.array([-1, -1]), "stride"),
        ("stride-1.5", CONV + "/stride", np.array([1.5, 1.5]), "stride"),
        ("stride-three-values", CONV + "/stride", np.array([1, 1, 1]), "stride"),
        ("padding-negative", CONV + "/padding", np.array([-1, -1]), "padding"),
        ("padding-0.5", CONV + "/padding", np.array([0.5, 0.5]), "padding"),
        ("padding-huge", CONV + "/padding", np.array([2 ** 30, 2 ** 30]), ("padding", "shape")),
        ("dilation-0", CONV + "/dilation", np.array([0, 0]), "dilation"),
        ("groups-0", CONV + "/groups", 0, "groups"),
        ("groups-3", CONV + "/groups", 3, "groups"),
        ("groups-1.5", CONV + "/groups", 1.5, "groups"),
        ("groups-string", CONV + "/groups", "one", "groups"),
        ("conv-shape-mismatch", CONV + "/shape", np.array([4, 7, 7]), "shape"),
        ("dense-shape-zero", DENSE + "/shape", np.array([0]), "shape"),
        ("dense-shape-mismatch", DENSE + "/shape", np.array([11]), ("shape", "weight")),
        ("dense-shape-huge", DENSE + "/shape", np.array([2 ** 40]), ("shape", "weight")),
    ]
    return [_case(name, replace(key, value), needles=(needle,)) for name, key, value, needle in g]


def size_bomb_cases() -> list[Case]:
    """Declared sizes of tens of GB in a file of kilobytes: refused before allocating."""
    bombs = [
        ("dense-60k-by-60k", DENSE + "/weight", (60000, 60000)),
        ("dense-20k-by-60k", DENSE + "/weight", (20000, 60000)),
        ("conv-4096x4096", CONV + "/weight", (4096, 4096, 3, 3)),
        ("bias-1e9", DENSE + "/bias", (10 ** 9,)),
        ("input-shape-1e9-values", INPUT + "/shape", (10 ** 9,)),
        ("vThMant-1e9-values", CONV + "/neuron/vThMant", (10 ** 9,)),
    ]
    cases = [_case(f"bomb-{name}", huge(key, shape), needles=("model.net",), bomb=True)
             for name, key, shape in bombs]
    cases.append(_case("bomb-provenance-deep", set_attr("provenance", deep_json(100000)),
                       needles=("provenance",), bomb=True))
    return cases


def attribute_cases() -> list[Case]:
    a = [
        ("provenance-not-json", "provenance", "{not json", "provenance"),
        ("provenance-list", "provenance", "[1, 2]", "provenance"),
        ("provenance-number", "provenance", "42", "provenance"),
        ("provenance-null", "provenance", "null", "provenance"),
        ("provenance-bytes", "provenance", np.void(b"\x00\xff\x10"), "provenance"),
        ("input-bits-0", "input_bits", 0, "input_bits"),
        ("input-bits-25", "input_bits", 25, "input_bits"),
        ("input-bits-negative", "input_bits", -8, "input_bits"),
        ("input-bits-1.5", "input_bits", 1.5, "input_bits"),
        ("input-bits-string", "input_bits", "eight", "input_bits"),
        ("input-message-bits-0", "input_message_bits", 0, "input"),
        ("readout-unknown", "readout", "telepathy", "readout"),
        ("ir-version-future", "ir_version", "9.9", "9.9"),
        ("format-version-future", "format_version", "2", "format"),
        ("project-not-string", "project", 12345, "model.net"),
    ]
    cases = [_case(f"attr-{name}", set_attr(key, value), needles=(needle,))
             for name, key, value, needle in a]
    cases += [
        _case("attr-weight-exp-3", set_attr("weight_exp", 3, CONV), needles=("weight_exp",)),
        _case("attr-weight-exp-1.5", set_attr("weight_exp", 1.5, DENSE), needles=("weight_exp",)),
        _case("attr-bias-exp-5", set_attr("bias_exp", 5, CONV), needles=("bias_exp",)),
        _case("attr-bias-exp-string", set_attr("bias_exp", "six", CONV), needles=("bias_exp",)),
        _case("attr-neuron-kind-mismatch", set_attr("neuron_kind", "cuba", CONV),
              needles=("neuron",)),
        _case("attr-name-int", set_attr("name", 7, CONV), needles=("name",)),
    ]
    return cases


def _timed(id_: str, plant, needles=(), **kw) -> Case:
    """A case refused from the file's metadata, in under a second (the bomb time limit)."""
    return _case(id_, plant, needles, bomb=True, **kw)


def _relabel(group: h5py.Group, new_type: str) -> None:
    del group["type"]
    group.create_dataset("type", (1,), "S10", [new_type.encode()])


def residual(name: str, edit: Callable[[h5py.File], None]) -> Callable[[Workspace], Sequence[str]]:
    """A plant that writes one of tests/test_residual_netx.py's residual networks in place of
    the base .net, then edits it."""
    def plant(ws: Workspace) -> Sequence[str]:
        from hardware.formats.netx import write_net
        from tests.test_residual_netx import NETS
        write_net(NETS[name], net_path(ws), steps_per_sample=2)
        with h5py.File(net_path(ws), "r+") as f:
            edit(f)
        return (f"run.net={net_path(ws)}",)
    return plant


def _concat_as_its_kind(remove_inputs: bool = False, first_only: bool = True):
    def edit(f: h5py.File) -> None:
        concat = [g for g in (f[f"layer/{i}"] for i in range(len(f["layer"])))
                  if g["type"][0] == b"concat"]
        for g in concat[:1] if first_only else concat:
            _relabel(g, g["layer_type"][0].decode())
            if remove_inputs:
                del g["layer_type"], g["inputs"]
    return edit


def layer_type_cases() -> list[Case]:
    """A layer whose type disagrees with what it holds: read as its type, it would be another
    network (a relabelled 'concat' runs with its shortcut dropped)."""
    def h5(edit):
        return with_h5(lambda f, ws: edit(f))

    def add(key: str, value: Any):
        return h5(lambda f: f.create_dataset(key, data=value))

    return [
        _timed("type-concat-relabelled-conv", residual("conv-cuba-potential", _concat_as_its_kind()),
              needles=("(conv)", "concat")),
        _timed("type-concat-relabelled-dense", residual("dense-cuba", _concat_as_its_kind()),
              needles=("(dense)", "concat")),
        _timed("type-if-soft-concat-relabelled", residual("conv-if_soft", _concat_as_its_kind()),
              needles=("(conv)", "concat")),
        _timed("type-residual-shortcuts-removed",
              residual("dense-cuba", _concat_as_its_kind(remove_inputs=True, first_only=False)),
              needles=("graph_format", "concat")),
        _timed("type-conv-relabelled-dense", h5(lambda f: _relabel(f[CONV], "dense")),
              needles=("layer 1 (dense)", "conv")),
        _timed("type-dense-relabelled-flatten", h5(lambda f: _relabel(f[DENSE], "flatten")),
              needles=("layer 3 (flatten)", "weight")),
        _timed("type-dense-relabelled-conv", h5(lambda f: _relabel(f[DENSE], "conv")),
              needles=("layer 3 (conv)",)),
        _timed("type-flatten-with-weight", add(FLAT + "/weight", np.ones((4, 4), np.int32)),
              needles=("layer 2 (flatten)", "weight")),
        _timed("type-input-with-stride", add(INPUT + "/stride", np.array([1, 1])),
              needles=("layer 0 (input)", "stride")),
        _timed("type-dense-with-conv-shape", replace(DENSE + "/shape", np.array([5, 2, 1])),
              needles=("layer 3 (dense)", "shape")),
        _timed("type-foreign-dense-with-conv-shape",
              replace(DENSE + "/shape", np.array([5, 2, 1]), foreign=True),
              needles=("layer 3 (dense)", "shape")),
        _timed("type-conv-unknown-key", add(CONV + "/kernel_scale", 2),
              needles=("layer 1 (conv)", "kernel_scale")),
    ]


def provenance_type_cases() -> list[Case]:
    """Provenance keys this project reads back, holding the wrong type (a TypeError in run
    before): refused by the reader, naming the key."""
    bad = [
        ("quantization-object", {"quantization": {"fc_out": {"scale": 1.0}}}, "quantization"),
        ("quantization-numbers", {"quantization": [1, 2, 3]}, "quantization"),
        ("readout-steps-string", {"quantization": [{"name": "fc_out", "readout_steps": "8"}]},
         "readout_steps"),
        ("readout-steps-bool", {"quantization": [{"name": "fc_out", "readout_steps": True}]},
         "readout_steps"),
        ("quantization-name-int", {"quantization": [{"name": 3}]}, "name"),
        ("quantization-scale-list", {"quantization": [{"name": "c", "scale": [1, 2]}]}, "scale"),
        ("ann-macs-string", {"ann_macs": "many"}, "ann_macs"),
        ("ann-macs-negative", {"ann_macs": [10, -1]}, "ann_macs"),
        ("ann-macs-wrong-length", {"ann_macs": [10, 20, 30, 40]}, "ann_macs"),
        ("default-neuron-layers-int", {"netx_default_neuron_layers": 3},
         "netx_default_neuron_layers"),
    ]
    return [_timed(f"provenance-{name}", set_attr("provenance", json.dumps(value)),
                  needles=("provenance", needle)) for name, value, needle in bad]


def _heap_objects(b: bytes) -> tuple[int, list]:
    """(address, [(offset, index, size), ...]) of the first global heap collection of a file."""
    at = b.find(b"GCOL")
    end, p, found = at + int.from_bytes(b[at + 8:at + 16], "little"), at + 16, []
    while p + 16 <= end:
        index, size = int.from_bytes(b[p:p + 2], "little"), int.from_bytes(b[p + 8:p + 16], "little")
        found.append((p, index, size))
        p += size if index == 0 else 16 + (size + 7) // 8 * 8
    return at, found


def heap_free_space_zero(b: bytes) -> bytes:
    """The free-space object's size set to 0: HDF5's heap walk never advances (a hang)."""
    _, found = _heap_objects(b)
    p = next(p for p, index, _ in found if index == 0)
    return b[:p + 8] + bytes(8) + b[p + 16:]


def heap_object_size_wrapped(b: bytes) -> bytes:
    """An object's size near 2**64: HDF5's walk wraps backwards (a hang)."""
    _, found = _heap_objects(b)
    p = found[2][0]
    return b[:p + 8] + (2 ** 64 - 64).to_bytes(8, "little") + b[p + 16:]


def vlen_length_4gb(b: bytes) -> bytes:
    """The first variable-length string reference's length set near 4 GB: HDF5 allocates it
    before comparing it with the heap object (seconds per read)."""
    at, found = _heap_objects(b)
    indices = {index for _, index, _ in found if index}
    q = b.find(at.to_bytes(8, "little"), 4)
    while int.from_bytes(b[q + 8:q + 12], "little") not in indices:
        q = b.find(at.to_bytes(8, "little"), q + 1)
    return b[:q - 4] + (0xF0000000).to_bytes(4, "little") + b[q:]


def attribute_size_cases() -> list[Case]:
    """Attributes are checked for count, shape, type and size before they are read."""
    def many(where: str, n: int):
        def edit(f: h5py.File, ws: Workspace) -> None:
            for k in range(n):
                f[where].attrs[f"extra{k}"] = k
        return with_h5(edit)

    long_fixed, long_text = np.bytes_(b"x" * 5000), "y" * 5000
    return [
        _timed("attr-root-200-attributes", many("/", 200), needles=("attributes",)),
        _timed("attr-layer-200-attributes", many(CONV, 200), needles=("attributes",)),
        _timed("attr-readout-5000-bytes", set_attr("readout", long_fixed), needles=("readout",)),
        _timed("attr-ir-version-5000-chars", set_attr("ir_version", long_text),
              needles=("ir_version",)),
        _timed("attr-name-5000-bytes", set_attr("name", long_fixed, CONV), needles=("name",)),
        _timed("attr-neuron-kind-5000-chars", set_attr("neuron_kind", long_text, CONV),
              needles=("neuron_kind",)),
        _timed("attr-input-bits-array", set_attr("input_bits", np.arange(1000)),
              needles=("input_bits",)),
        _timed("attr-weight-exp-matrix", set_attr("weight_exp", np.zeros((30, 30)), DENSE),
              needles=("weight_exp",)),
        _timed("attr-graph-version-compound", set_attr("graph_version",
              np.zeros(1, dtype=[("a", "i4"), ("b", "f8")])), needles=("graph_version",)),
        _timed("attr-heap-free-space-zero", with_bytes(heap_free_space_zero),
               needles=("global heap",)),
        _timed("attr-heap-object-size-wrapped", with_bytes(heap_object_size_wrapped),
               needles=("global heap",)),
        _timed("attr-string-length-4gb", with_bytes(vlen_length_4gb),
               needles=("variable-length string",)),
    ]


def link_cases() -> list[Case]:
    def soft_cycle(f, ws):
        del f[CONV + "/weight"]
        f[CONV + "/weight"] = h5py.SoftLink("/" + CONV + "/weight")

    def soft_group_cycle(f, ws):
        f.move("layer/1", "layer/real1")
        f["layer/1"] = h5py.SoftLink("/layer/1")

    def dangling(f, ws):
        del f[DENSE + "/weight"]
        f[DENSE + "/weight"] = h5py.SoftLink("/nowhere/at/all")

    def external(f, ws):
        with h5py.File(ws.inputs / "other.h5", "w") as o:
            o.create_dataset("w", data=np.ones(DENSE_W, np.int32))
        del f[DENSE + "/weight"]
        f[DENSE + "/weight"] = h5py.ExternalLink(str(ws.inputs / "other.h5"), "/w")

    def external_missing(f, ws):
        del f[DENSE + "/weight"]
        f[DENSE + "/weight"] = h5py.ExternalLink("/nonexistent/file.h5", "/w")

    def hard_cycle(f, ws):
        f[CONV + "/neuron/loop"] = f[CONV]

    def layer_is_dataset(f, ws):
        del f[CONV]
        f.create_dataset(CONV, data=np.arange(3))

    def layer_gap(f, ws):
        f.move(DENSE, "layer/7")

    def extra_layer_key(f, ws):
        f.create_group("layer/x")

    # a hard-link cycle the reader never walks leaves a valid network
    return [_case(name, with_h5(edit), needles=("model.net",), may_be_valid=name == "hardlink-cycle")
            for name, edit in [
        ("softlink-cycle", soft_cycle), ("softlink-group-cycle", soft_group_cycle),
        ("softlink-dangling", dangling), ("external-link", external),
        ("external-link-missing", external_missing), ("hardlink-cycle", hard_cycle),
        ("layer-is-dataset", layer_is_dataset), ("layer-gap", layer_gap),
        ("layer-extra-key", extra_layer_key)]]


def damaged_file_cases() -> list[Case]:
    def truncate(fraction: float):
        return with_bytes(lambda b: b[:int(len(b) * fraction)])

    def corrupt(offset: int, length: int, fill: int = 0xA5):
        return with_bytes(lambda b: b[:offset] + bytes([fill]) * length + b[offset + length:])

    rng = np.random.default_rng(11)
    cases = [
        _case("empty-file", with_bytes(lambda b: b""), needles=("model.net",)),
        _case("truncated-8-bytes", with_bytes(lambda b: b[:8]), needles=("model.net",)),
        _case("truncated-512-bytes", with_bytes(lambda b: b[:512]), needles=("model.net",)),
        _case("truncated-25pct", truncate(0.25), needles=("model.net",)),
        _case("truncated-50pct", truncate(0.5), needles=("model.net",)),
        _case("truncated-90pct", truncate(0.9), needles=("model.net",)),
        _case("truncated-last-byte", with_bytes(lambda b: b[:-1]), needles=("model.net",)),
        _case("signature-corrupted", corrupt(0, 8), needles=("model.net",)),
        _case("superblock-corrupted", corrupt(8, 40), needles=("model.net",)),
        _case("superblock-zeroed", corrupt(8, 40, 0), needles=("model.net",)),
        _case("object-header-corrupted", corrupt(96, 256), needles=("model.net",)),
        _case("middle-zeroed", with_bytes(lambda b: b[:len(b) // 3] + bytes(4096) +
                                          b[len(b) // 3 + 4096:]), needles=("model.net",)),
        _case("all-zeros", with_bytes(lambda b: bytes(len(b))), needles=("model.net",)),
        _case("random-bytes", with_bytes(lambda b: rng.integers(0, 256, len(b), dtype=np.uint8)
                                         .tobytes()), needles=("model.net",)),
        _case("text-file", with_bytes(lambda b: b"layer:\n  0: input\n"), needles=("model.net",)),
    ]
    return cases


def _special_path_cases() -> list[Case]:
    def path_to(make: Callable[[Workspace], str]):
        def plant(ws: Workspace) -> Sequence[str]:
            return (f"run.net={make(ws)}",)
        return plant

    def fifo(ws: Workspace) -> str:
        os.mkfifo(ws.inputs / "net.fifo")
        return str(ws.inputs / "net.fifo")

    def dev_zero_link(ws: Workspace) -> str:
        os.symlink("/dev/zero", ws.inputs / "zero.net")
        return str(ws.inputs / "zero.net")

    specials = {"directory": lambda ws: str(ws.inputs), "missing": lambda ws: str(ws.inputs / "no.net"),
                "nul": lambda ws: str(ws.inputs / "a\0b.net"), "fifo": fifo,
                "dev-zero": dev_zero_link, "too-long": lambda ws: "/".join(["n" * 250] * 20)}
    return [_case(f"path-{name}", path_to(make), needles=(("run.net", ".net"),), timeout=30)
            for name, make in specials.items()]


def bit_flip_cases(count: int = 12, flips: int = 16) -> list[Case]:
    """Random bit flips: each file is either refused cleanly or valid (then it reaches
    Lava, which the harness reports); never a hang, a traceback or an OOM."""
    def flip(seed: int):
        def edit(b: bytes) -> bytes:
            rng = np.random.default_rng(seed)
            a = bytearray(b)
            for pos in rng.integers(0, len(a) * 8, flips):
                a[pos // 8] ^= 1 << (pos % 8)
            return bytes(a)
        return with_bytes(edit)
    return [_case(f"bitflip-{seed}", flip(seed), timeout=30, may_be_valid=True) for seed in range(count)]


#: the exhaustive-only cases of each group (the rest run by default)
SLOW = {
    *(f"net-missing-{k}" for k in ("layer.0.type", "layer.1.type", "layer.1.shape", "layer.1.padding",
                                   "layer.1.dilation", "layer.1.neuron.type", "layer.1.neuron.iDecay",
                                   "layer.1.neuron.vDecay", "layer.3.type", "layer.3.neuron.vThMant",
                                   "layer.0", "layer.1")),
    *(f"net-foreign-{k}" for k in ("conv-weight--300", "conv-bias-1e6", "dense-bias-5000",
                                   "conv-threshold-negative", "conv-threshold-2^24", "conv-iDecay-4097",
                                   "conv-vDecay-5000", "conv-vDecay--1", "conv-weight-complex",
                                   "conv-weight-bool", "conv-threshold-1.5")),
    *(f"net-attr-{k}" for k in ("input-bits-negative", "input-bits-string", "provenance-null",
                                "provenance-number", "bias-exp-string", "name-int")),
    *(f"net-{k}" for k in ("truncated-25pct", "truncated-90pct", "superblock-zeroed", "text-file",
                           "all-zeros", "path-too-long")),
    *(f"net-bitflip-{i}" for i in range(2, 12)),
    *(f"net-{k}" for k in ("stride-three-values", "padding-0.5", "groups-string", "groups-1.5",
                           "input-shape-string", "dense-shape-zero", "dense-weight-string",
                           "conv-bias-wrong-size", "conv-weight-3d", "threshold-string", "iDecay-1.5",
                           "neuron-type-int", "layer-type-pool", "dense-weight-nan",
                           "conv-weight-int64-huge", "dense-threshold-1.5", "attr-provenance-bytes",
                           "attr-input-bits-25", "attr-project-not-string", "truncated-last-byte",
                           "object-header-corrupted", "middle-zeroed", "path-missing",
                           "external-link-missing", "layer-extra-key", "missing-layer.1.groups",
                           "missing-layer.3.shape")),
}


def net_cases() -> list[Case]:
    cases = (missing_key_cases() + value_cases() + geometry_cases() + size_bomb_cases()
             + attribute_cases() + layer_type_cases() + provenance_type_cases()
             + attribute_size_cases() + link_cases() + damaged_file_cases()
             + _special_path_cases() + bit_flip_cases())
    return default_run(cases, {c.id for c in cases} - SLOW)
