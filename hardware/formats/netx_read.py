"""A lava-dl netx ``.net`` file read into an integer IR (:func:`read_net`) without trusting it.

This project's files (:func:`hardware.formats.netx.write_net`) come back as an identical IR.
Every file is checked before anything large is read: only the expected keys are visited;
links other than hard links (soft, cyclic, external) are refused; every dataset's type and
declared size is checked against what it should hold, what the file can store and
:data:`~hardware.formats.netx_layout.MAX_DATASET_ELEMENTS` / ``MAX_TOTAL_ELEMENTS``; the layer
shapes are checked against each other; a damaged global heap (on which HDF5 loops) is refused.
The network read is then checked by :func:`hardware.ir.validate.validate_network`
(:func:`~hardware.ir.validate.project_limits` for this project's files,
:func:`~hardware.ir.validate.netx_limits` for others'). Values are never truncated: a weight of
0.5, a bool or complex weight, a threshold of 1.5 is an error. Nothing is ever unpickled.

Other netx files (lava-dl's ``tiny.net``, ``mnist.net``, PilotNet LIF) are mapped onto what
netx + Lava compute: an input layer with a neuron becomes ``Input(shape, neuron=...)``; dense
weights are the effective Lava integers (:func:`~hardware.formats.netx_layout.netx_dense_effective`)
with netx's weight exponent; conv weights and biases must hold integers (``NetDict`` would
truncate them); a dense layer without a neuron gets netx's default neuron. ``concat`` layers
(extra inputs) are read only from this project's files that declare the graph format, each
projection's sizes checked against its source and its layer before its weights are read.
The T a file of this project is made for is ``metadata["timesteps"]``: its provenance's, else
its ``reset_interval`` (they must agree); files of others state none. IR versions read:
:data:`hardware.ir.READABLE_IR_VERSIONS`. Every failure is one
:class:`NetxFormatError` line naming the file (and the layer and key where there is one).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Optional

import h5py
import numpy as np

from hardware.errors import IRError, LoihiRangeError, NetxFormatError
from hardware.formats.netx_layout import (_KIND_OF_NEURON_TYPE, _LAYER_KEYS, _MAX_ATTR_BYTES, _MAX_ATTRS,
                                          _MAX_EXTRA_INPUTS, _MAX_LAYER_KEYS, _MAX_LAYERS, _MAX_TEXT,
                                          _NETX_DEFAULT_DENSE_NEURON, _READABLE_GRAPH_VERSIONS,
                                          _SEQUENTIAL_IR_VERSIONS, _SMALL, _UNSUPPORTED_LAYER_TYPES,
                                          GRAPH_FORMAT, MAX_DATASET_ELEMENTS, MAX_TOTAL_ELEMENTS,
                                          NETX_FORMAT_VERSION, PROJECT_NAME, PathLike,
                                          netx_dense_effective)
from hardware.ir import (IR_VERSION, PROJECTION_KINDS, READABLE_IR_VERSIONS, READOUTS, Conv, Dense, Flatten, Input,
                         Network, Neuron, Projection)
from hardware.ir.validate import (check_conv_geometry, integer_array, integer_scalar, netx_limits,
                                  project_limits, validate_network)
from hardware.spec import LOIHI2

__all__ = ["read_net", "read_provenance", "provenance_problem"]


# --------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------

#: JSON types of the annotations of hardware.fixed_point.quantize.LayerQuantReport's fields
_JSON_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
               "dict": (dict,), "list": (list,), "None": (type(None),)}


def _quantization_field_types() -> dict:
    """{field: (accepted Python types, description)} of the quantizer's per-layer report, the
    ``quantization`` list of the provenance, read from the dataclass so that they never drift."""
    from hardware.fixed_point.quantize import LayerQuantReport

    out = {}
    for f in dataclasses.fields(LayerQuantReport):
        parts = [part.strip() for part in str(f.type).split("|")]
        if all(part in _JSON_TYPES for part in parts):
            out[f.name] = (tuple(t for part in parts for t in _JSON_TYPES[part]), " or ".join(parts))
    return out


def _json_type_problem(value: Any, types: tuple, what: str, expected: str) -> Optional[str]:
    # bool is an int in Python, never in a file's meaning
    if isinstance(value, types) and (bool in types or not isinstance(value, bool)):
        return None
    return f"{what} is a {type(value).__name__} ({str(value)[:40]!r}), expected {expected}"


def provenance_problem(metadata: dict, n_weighted: Optional[int] = None) -> Optional[str]:
    """What is wrong with the provenance keys this project reads back (``quantization``,
    ``ann_macs``, ``netx_default_neuron_layers``), or None: a wrong type there would end as a
    TypeError deep in a stage. ``n_weighted``: the network's conv/dense layers, if known."""
    quant = metadata.get("quantization")
    if quant is not None:
        if not isinstance(quant, list) or not all(isinstance(q, dict) for q in quant):
            return "'quantization' must be a list of objects (one per layer)"
        fields = _quantization_field_types()
        for k, entry in enumerate(quant):
            for key, value in entry.items():
                if key in fields:
                    bad = _json_type_problem(value, fields[key][0], f"'quantization'[{k}].{key}",
                                             fields[key][1])
                    if bad:
                        return bad
    macs = metadata.get("ann_macs")
    if macs is not None:
        # the ANN's multiply-accumulates per weighted layer (models.converter.count_ann_macs)
        if not isinstance(macs, list) or any(isinstance(m, bool) or not isinstance(m, int) or m < 0
                                             for m in macs):
            return f"'ann_macs' is {str(macs)[:40]!r}, expected a list of non-negative integers"
        if n_weighted is not None and len(macs) != n_weighted:
            return f"'ann_macs' has {len(macs)} entries for {n_weighted} weighted layers"
    steps = metadata.get("timesteps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        return f"'timesteps' (the T the file is made for) is {str(steps)[:40]!r}, expected an integer >= 1"
    names = metadata.get("netx_default_neuron_layers")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        return "'netx_default_neuron_layers' must be a list of layer names"
    return None


def _shape_only(shape: tuple) -> np.ndarray:
    """A zero-strided array of ``shape``: lets shape checks run before any data is read."""
    return np.broadcast_to(np.int8(0), tuple(shape))


class _Access:
    """Bounded access to one open file: only hard links, checked types and sizes.

    Every problem becomes a :class:`NetxFormatError` naming the file and where."""

    def __init__(self, f: h5py.File, path: Path) -> None:
        self.f, self.path = f, path
        self.file_size = path.stat().st_size
        self.budget = MAX_TOTAL_ELEMENTS

    def fail(self, msg: str) -> NetxFormatError:
        return NetxFormatError(f"{self.path}: {msg}")

    @staticmethod
    def ints(values: Any, where: str, field: str, low: Optional[int] = None,
             high: Optional[int] = None) -> np.ndarray:
        """:func:`hardware.ir.validate.integer_array` for a value found at ``where``."""
        return integer_array(values, where.removeprefix("layer "), field, low, high)

    @staticmethod
    def int1(value: Any, where: str, field: str, low: Optional[int] = None,
             high: Optional[int] = None) -> int:
        return integer_scalar(value, where.removeprefix("layer "), field, low, high)

    def child(self, group: h5py.Group, key: str, where: str, kind: type = h5py.Dataset,
              required: bool = True) -> Any:
        link = group.get(key, getlink=True)
        if link is None:
            if required:
                raise self.fail(f"{where}: missing key '{key}'")
            return None
        if not isinstance(link, h5py.HardLink):
            raise self.fail(f"{where}: '{key}' is a {type(link).__name__}; only objects stored "
                            f"in this file are read")
        obj = group[key]
        if not isinstance(obj, kind):
            raise self.fail(f"{where}: '{key}' is not a {'group' if kind is h5py.Group else 'dataset'}")
        return obj

    def check_dataset(self, ds: h5py.Dataset, key: str, where: str, max_elements: int) -> None:
        """Type and declared size against the caps and against what the file stores."""
        n = int(ds.size)
        if n > max_elements:
            raise self.fail(f"{where}: '{key}' declares {n} values (shape {ds.shape}); at most "
                            f"{max_elements} are accepted")
        if ds.dtype.kind not in "iufbS" and h5py.check_string_dtype(ds.dtype) is None:
            raise self.fail(f"{where}: '{key}' has unsupported type {ds.dtype}")
        if ds.chunks is None and ds.id.get_storage_size() < ds.nbytes:
            raise self.fail(f"{where}: '{key}' declares {ds.nbytes} bytes but the file stores "
                            f"{ds.id.get_storage_size()} (truncated or corrupt)")
        self.budget -= n
        if self.budget < 0:
            raise self.fail(f"the datasets hold more than {MAX_TOTAL_ELEMENTS} values in total")

    def values(self, group: h5py.Group, key: str, where: str, max_elements: int = _SMALL,
               required: bool = True) -> Optional[np.ndarray]:
        ds = self.child(group, key, where, h5py.Dataset, required)
        if ds is None:
            return None
        self.check_dataset(ds, key, where, max_elements)
        return np.asarray(ds[()])

    def number(self, group: h5py.Group, key: str, where: str, required: bool = True):
        """One integer (several equal values count as one, as slayer sometimes stores them)."""
        v = self.values(group, key, where, required=required)
        if v is None:
            return None
        v = v.reshape(-1)
        if v.size > 1 and v.dtype.kind in "iuf" and np.all(v == v[0]):
            v = v[:1]
        return self.int1(v, where, key)

    def flag(self, group: h5py.Group, key: str, where: str) -> bool:
        """An optional boolean (absent = False); 0/1 integers count as booleans."""
        v = self.values(group, key, where, max_elements=1, required=False)
        if v is None:
            return False
        v = v.reshape(-1)
        if v.size != 1 or v.dtype.kind not in "biu" or int(v[0]) not in (0, 1):
            raise self.fail(f"{where}: '{key}' is not a single boolean")
        return bool(v[0])

    def text(self, group: h5py.Group, key: str, where: str) -> str:
        v = self.values(group, key, where, max_elements=1)
        if v.size != 1:
            raise self.fail(f"{where}: '{key}' is not a single string")
        return self._as_text(v.reshape(-1)[0], f"{where}: '{key}'")

    def _as_text(self, v: Any, what: str) -> str:
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise self.fail(f"{what} is not UTF-8 text") from None
        if not isinstance(v, str):
            raise self.fail(f"{what} is not a string")
        if len(v) > _MAX_TEXT:
            raise self.fail(f"{what} is longer than {_MAX_TEXT} characters")
        return v

    def attr(self, obj: Any, key: str, where: str, max_bytes: int = _MAX_ATTR_BYTES) -> Any:
        """One attribute value (None if absent), checked before it is read as datasets are:
        the object's number of attributes, then the attribute's shape, type, declared size
        (at most ``max_bytes``) and the bytes the file stores for it."""
        n_attrs = obj.attrs.__len__()
        if n_attrs > _MAX_ATTRS:
            raise self.fail(f"{where}: {n_attrs} attributes; at most {_MAX_ATTRS} are accepted")
        if key not in obj.attrs:
            return None
        aid = obj.attrs.get_id(key)
        if aid.shape not in ((), (1,)):
            raise self.fail(f"{where}: attribute '{key}' has shape {aid.shape}, expected one value")
        vlen = h5py.check_string_dtype(aid.dtype)
        if aid.dtype.kind not in "iufS" and vlen is None:
            raise self.fail(f"{where}: attribute '{key}' has unsupported type {aid.dtype}")
        if aid.dtype.itemsize > max_bytes:
            raise self.fail(f"{where}: attribute '{key}' declares {aid.dtype.itemsize} bytes; at "
                            f"most {max_bytes} are accepted")
        if aid.get_storage_size() < aid.dtype.itemsize:  # a variable-length string: its reference
            raise self.fail(f"{where}: attribute '{key}' declares {aid.dtype.itemsize} bytes but "
                            f"the file stores {aid.get_storage_size()} (truncated or corrupt)")
        v = obj.attrs[key]
        v = v.reshape(-1)[0] if isinstance(v, np.ndarray) else v
        if isinstance(v, (str, bytes)) and len(v) > max(max_bytes, _MAX_ATTR_BYTES):
            raise self.fail(f"{where}: attribute '{key}' holds {len(v)} characters; at most "
                            f"{max(max_bytes, _MAX_ATTR_BYTES)} are accepted")
        return v

    def attr_text(self, obj: Any, key: str, where: str, default: Optional[str] = None,
                  max_bytes: int = _MAX_ATTR_BYTES) -> Optional[str]:
        v = self.attr(obj, key, where, max_bytes)
        return default if v is None else self._as_text(v, f"{where}: attribute '{key}'")

    def attr_int(self, obj: Any, key: str, where: str, low: Optional[int] = None,
                 high: Optional[int] = None) -> Optional[int]:
        v = self.attr(obj, key, where)
        if v is None:
            return None
        if isinstance(v, (str, bytes)):
            raise self.fail(f"{where}: attribute '{key}' is text, expected an integer")
        return self.int1(v, where, f"attribute '{key}'", low, high)


class _Reader(_Access):
    """Reads the layer chain of one open file, checking sizes before reading data."""

    def __init__(self, f: h5py.File, path: Path) -> None:
        super().__init__(f, path)
        self.ours = self.attr_text(f, "project", "root") == PROJECT_NAME
        self.net_input: Optional[Input] = None
        self.layers: list = []
        #: file index -> (name, output shape) of every conv/dense layer read so far
        self.weighted_at: dict = {}
        #: graph version of a residual file of this project (None: a chain)
        self.graph: Optional[int] = None
        self.shape: Optional[tuple] = None
        self.input_meta: dict = {}
        #: names of the layers without a neuron group (netx's default neuron)
        self.default_neuron: list = []

    def name(self, group: h5py.Group, default: str) -> str:
        if self.ours:
            return self.attr_text(group, "name", default, default) or default
        return default

    def shape_of(self, group: h5py.Group, where: str) -> tuple:
        shape = self.ints(self.values(group, "shape", where), where, "shape", 1).reshape(-1)
        if shape.size == 0 or int(np.prod(shape, dtype=object)) > MAX_DATASET_ELEMENTS:
            raise self.fail(f"{where}: shape {shape.tolist()} is empty or holds more than "
                            f"{MAX_DATASET_ELEMENTS} neurons")
        return tuple(int(s) for s in shape)

    def pair(self, group: h5py.Group, key: str, where: str) -> tuple:
        v = self.ints(self.values(group, key, where), where, key).reshape(-1)
        if v.size not in (1, 2):
            raise self.fail(f"{where}: '{key}' must have 1 or 2 values, got {v.tolist()}")
        return (int(v[0]), int(v[-1]))  # stored (h, w)

    def neuron(self, group: h5py.Group, where: str, ltype: str) -> Neuron:
        g = self.child(group, "neuron", where, h5py.Group, required=False)
        if g is not None:
            where_n = f"{where} neuron"
            ntype = self.text(g, "type", where_n)
            if ntype not in _KIND_OF_NEURON_TYPE:
                raise self.fail(f"{where}: neuron type '{ntype}' is not supported "
                                f"(supported: {sorted(_KIND_OF_NEURON_TYPE)})")
            if self.number(g, "messageBits", where_n, required=False) not in (None, 0):
                raise self.fail(f"{where}: graded output spikes (messageBits) are not "
                                f"supported by the IR")
            if self.flag(g, "gradedSpike", where_n):
                # slayer writes it next to messageBits; stock netx reads only messageBits, so a
                # file claiming graded spikes without it would silently run with binary ones
                raise self.fail(f"{where}: gradedSpike is set: graded output spikes are not "
                                f"supported by the IR (and stock netx would send binary spikes)")
            cfg = {k: self.number(g, k, where_n) for k in ("vThMant", "iDecay", "vDecay")}
        elif ltype == "dense":
            ntype, cfg = "CUBA", dict(_NETX_DEFAULT_DENSE_NEURON)
        else:
            raise self.fail(f"{where}: missing key 'neuron'")
        kind = _KIND_OF_NEURON_TYPE[ntype]
        bias_exp = LOIHI2.netx_bias_exp
        if self.ours:
            bias_exp = self.attr_int(group, "bias_exp", where)
            bias_exp = LOIHI2.netx_bias_exp if bias_exp is None else bias_exp
            if self.attr_text(group, "neuron_kind", where, kind) != kind:
                raise self.fail(f"{where}: neuron_kind attribute disagrees with neuron type '{ntype}'")
        return Neuron(kind=kind, threshold=cfg["vThMant"],
                      du=cfg["iDecay"] - LOIHI2.current_decay_offset,
                      dv=cfg["vDecay"], bias_exp=bias_exp)

    def bias(self, group: h5py.Group, n_out: int, where: str) -> Optional[np.ndarray]:
        ds = self.child(group, "bias", where, required=False)
        if ds is None:
            return None
        if ds.size not in (n_out, 1) or (ds.size == 1 and self.ours and n_out != 1):
            raise self.fail(f"{where}: bias has {ds.size} values, expected {n_out} "
                            f"(per output channel)")
        b = self.ints(self.values(group, "bias", where, n_out), where, "bias").reshape(-1)
        return np.full(n_out, b[0], dtype=np.int64) if b.size != n_out else b

    def weight_exp(self, group: h5py.Group, where: str) -> int:
        exp = self.attr_int(group, "weight_exp", where) if self.ours else None
        return 0 if exp is None else exp

    def no_delays(self, group: h5py.Group, where: str) -> None:
        if self.child(group, "delay", where, required=False) is not None:
            raise self.fail(f"{where}: synaptic delays are not supported by the IR")

    # -- layers ------------------------------------------------------------

    def read_input(self, i: int, g: h5py.Group, where: str) -> None:
        if i != 0:
            raise self.fail(f"{where}: an input layer must be layer 0")
        self.shape = self.shape_of(g, where)
        has_neuron = self.child(g, "neuron", where, h5py.Group, required=False) is not None
        neuron = self.neuron(g, where, "input") if has_neuron else None
        for k in ("weight", "bias"):  # netx keeps them as an unused 'transform'
            v = self.values(g, k, where, max_elements=1, required=False)
            if v is not None and v.dtype.kind in "iuf" and np.all(np.isfinite(v)):
                x = float(v.reshape(-1)[0])
                self.input_meta[k] = int(x) if x.is_integer() else x
        self.net_input = Input(shape=self.shape, neuron=neuron, name=self.name(g, "input"))

    def read_conv(self, i: int, g: h5py.Group, where: str) -> Conv:
        if self.shape is None:
            raise self.fail(f"{where}: input shape unknown (no input layer before the first conv)")
        wds = self.child(g, "weight", where)
        wshape = tuple(wds.shape)
        if len(wshape) == 5 and wshape[4] == 1:
            wshape = wshape[:4]  # slayer's (out, in, kh, kw, 1)
        if len(wshape) != 4:
            raise self.fail(f"{where}: conv weight must be 4-D, got shape {tuple(wds.shape)}")
        self.no_delays(g, where)
        geometry = dict(stride=self.pair(g, "stride", where), padding=self.pair(g, "padding", where),
                        dilation=self.pair(g, "dilation", where),
                        groups=self.number(g, "groups", where))
        probe = Conv(weight=_shape_only(wshape), bias=None, neuron=Neuron("cuba", 1),
                     name=where.removeprefix("layer "), **geometry)
        out = check_conv_geometry(probe, self.shape)
        stored = self.shape_of(g, where)
        if stored != out:
            raise self.fail(f"{where}: stored shape {stored} (C, H, W) does not match "
                            f"the computed output shape {out}")
        w = self.values(g, "weight", where, MAX_DATASET_ELEMENTS)
        w = self.ints(w, where, "weight").reshape(wshape)
        self.shape = out
        return Conv(weight=w, bias=self.bias(g, out[0], where),
                    neuron=self.neuron(g, where, "conv"), weight_exp=self.weight_exp(g, where),
                    name=self.name(g, f"conv{i}"), **geometry)

    def dense_inputs(self, wshape: tuple, n_out: int, where: str) -> int:
        """Number of inputs of a dense layer, checked against its weight's declared shape."""
        if self.shape is not None and len(self.shape) != 1:
            raise self.fail(f"{where}: a dense layer needs a flat input, got {self.shape} "
                            f"(a flatten layer is missing)")
        if self.shape is not None:
            n_in = self.shape[0]
        elif len(wshape) == 2:
            n_in = wshape[1]  # no input layer: inferred from the weights
        else:
            raise self.fail(f"{where}: input size unknown (no input layer, 1-D weight)")
        if wshape not in ((n_out, n_in), (n_out * n_in,)):
            raise self.fail(f"{where}: weight shape {wshape} does not match {n_out} outputs "
                            f"and {n_in} inputs")
        return n_in

    def read_dense(self, i: int, g: h5py.Group, where: str) -> Dense:
        shape = self.shape_of(g, where)
        # (N,), or slayer's (N, 1, 1); a (C, H, W) of several non-unit sizes is a conv's
        if (len(shape) != 1 and self.ours) or sum(s != 1 for s in shape) > 1:
            raise self.fail(f"{where}: shape {shape} is not a dense layer's (N,)")
        n_out = int(np.prod(shape))
        n_in = self.dense_inputs(tuple(self.child(g, "weight", where).shape), n_out, where)
        self.no_delays(g, where)
        w = self.values(g, "weight", where, MAX_DATASET_ELEMENTS)
        w = self.ints(w, where, "weight").reshape(n_out, n_in)
        if self.ours:
            w_ir, exp = w, self.weight_exp(g, where)
        else:
            w_ir, exp = netx_dense_effective(w, where.removeprefix("layer "))
        if self.net_input is None:
            self.net_input = Input(shape=(n_in,))
        self.shape = (n_out,)
        name = self.name(g, f"dense{i}")
        if self.child(g, "neuron", where, h5py.Group, required=False) is None:
            self.default_neuron.append(name)
        return Dense(weight=w_ir, bias=self.bias(g, n_out, where),
                     neuron=self.neuron(g, where, "dense"), weight_exp=exp, name=name)

    # -- extra inputs (residual graph format) ------------------------------

    def graph_attrs(self) -> Optional[int]:
        """The graph version a file of this project declares (None: no graph attributes)."""
        fmt = self.attr_text(self.f, "graph_format", "root")
        version = self.attr_int(self.f, "graph_version", "root")
        if fmt is None and version is None:
            return None
        if fmt != GRAPH_FORMAT:
            raise self.fail(f"graph format {fmt!r} is not supported (this reader reads "
                            f"{GRAPH_FORMAT!r})")
        if version not in _READABLE_GRAPH_VERSIONS:
            raise self.fail(f"graph version {version!r} of {GRAPH_FORMAT!r} is not supported "
                            f"(this reader reads {', '.join(map(str, _READABLE_GRAPH_VERSIONS))})")
        return version

    def read_projection(self, pg: h5py.Group, layer_shape: tuple, where: str) -> Projection:
        """One ``inputs/<k>`` group; every size is checked before its weights are read."""
        source = self.number(pg, "source", where)
        if source not in self.weighted_at:
            raise self.fail(f"{where}: source {source} is not an earlier conv/dense layer of the "
                            f"file (extra inputs come from spiking layers before their layer)")
        source_name, source_shape = self.weighted_at[source]
        kind = self.text(pg, "kind", where)
        if kind not in PROJECTION_KINDS:
            raise self.fail(f"{where}: kind {kind!r} is not one of {PROJECTION_KINDS}")
        self.no_delays(pg, where)
        exp = self.attr_int(pg, "weight_exp", where)
        wshape = tuple(self.child(pg, "weight", where).shape)
        geometry: dict = {}
        if kind == "conv":
            if len(wshape) != 4:
                raise self.fail(f"{where}: conv weight must be 4-D, got shape {wshape}")
            if len(source_shape) != 3:
                raise self.fail(f"{where}: a conv projection needs a (C, H, W) source, layer "
                                f"{source} outputs {source_shape}")
            geometry = dict(stride=self.pair(pg, "stride", where),
                            padding=self.pair(pg, "padding", where),
                            dilation=self.pair(pg, "dilation", where),
                            groups=self.number(pg, "groups", where))
            probe = Projection(source=source_name, weight=_shape_only(wshape), **geometry)
            out = check_conv_geometry(probe.synapse(where.removeprefix("layer ")), source_shape)
        else:
            n_source, n_out = int(np.prod(source_shape)), int(np.prod(layer_shape))
            if wshape != (n_out, n_source):
                raise self.fail(f"{where}: dense weight shape {wshape} is not ({n_out}, "
                                f"{n_source}) (layer outputs, source outputs)")
            out = (n_out,)
        if tuple(out) != tuple(layer_shape):
            raise self.fail(f"{where}: the projection outputs {tuple(out)}, its layer "
                            f"{tuple(layer_shape)}")
        w = self.values(pg, "weight", where, MAX_DATASET_ELEMENTS)
        w = self.ints(w, where, "weight").reshape(wshape)
        return Projection(source=source_name, weight=w, kind=kind,
                          weight_exp=0 if exp is None else exp, **geometry)

    def read_extra_inputs(self, g: h5py.Group, where: str) -> tuple:
        ig = self.child(g, "inputs", where, h5py.Group)
        n = len(ig)
        if not 1 <= n <= _MAX_EXTRA_INPUTS:
            raise self.fail(f"{where}: 'inputs' holds {n} entries; a concat layer has 1 to "
                            f"{_MAX_EXTRA_INPUTS} extra inputs")
        if sorted(ig.keys()) != sorted(str(k) for k in range(n)):
            raise self.fail(f"{where}: 'inputs' must hold 0..{n - 1}, found "
                            f"{sorted(ig.keys())[:20]}")
        return tuple(self.read_projection(self.child(ig, str(k), where, h5py.Group),
                                          self.shape, f"{where} extra input {k}")
                     for k in range(n))

    def read_concat(self, i: int, g: h5py.Group, where: str):
        """A conv/dense layer with extra inputs (residual graph format)."""
        kind = self.text(g, "layer_type", where)
        if kind == "conv":
            layer = self.read_conv(i, g, where)
        elif kind == "dense":
            layer = self.read_dense(i, g, where)
        else:
            raise self.fail(f"{where}: layer_type {kind!r} is not 'conv' or 'dense'")
        return dataclasses.replace(layer, extra_inputs=self.read_extra_inputs(g, where))

    # -- layers (continued) -------------------------------------------------

    def check_keys(self, g: h5py.Group, ltype: str, where: str) -> None:
        """Refuse a layer whose keys belong to another layer type (its type disagrees with what
        it holds: a relabelled layer), and in this project's files any key its writer does not
        write (see :data:`_LAYER_KEYS`)."""
        if ltype not in _LAYER_KEYS:
            return
        n = len(g)
        if n > _MAX_LAYER_KEYS:
            raise self.fail(f"{where}: {n} keys; a layer holds at most {_MAX_LAYER_KEYS}")
        allowed = _LAYER_KEYS[ltype]
        if ltype == "concat":
            kind = self.text(g, "layer_type", where) if "layer_type" in g else None
            if kind not in ("conv", "dense"):
                return  # refused by read_concat (or as unsupported outside a residual file)
            allowed = allowed | _LAYER_KEYS[kind]
        extra = sorted(set(g.keys()) - allowed)
        owners = sorted({t for t, keys in _LAYER_KEYS.items() if t != ltype and keys & set(extra)})
        if owners:
            raise self.fail(f"{where}: holds {', '.join(map(repr, extra[:6]))}, keys of a "
                            f"{' or '.join(owners)} layer: its type disagrees with its contents")
        if extra and self.ours:
            raise self.fail(f"{where}: unexpected key(s) {', '.join(map(repr, extra[:6]))}")

    def read_layer(self, i: int, g: h5py.Group) -> None:
        ltype = self.text(g, "type", f"layer {i}")
        where = f"layer {i} ({ltype})"
        self.check_keys(g, ltype, where)
        if ltype == "concat" and self.graph is not None:
            self.layers.append(self.read_concat(i, g, where))
            self.weighted_at[i] = (self.layers[-1].name, self.shape)
            return
        if ltype in _UNSUPPORTED_LAYER_TYPES:
            raise self.fail(f"{where}: layer type '{ltype}' is not supported "
                            f"(stock netx or the IR cannot represent it)")
        if ltype == "input":
            self.read_input(i, g, where)
        elif ltype == "flatten":
            self.layers.append(Flatten(name=self.name(g, f"flatten{i}")))
            if self.shape is not None:
                self.shape = (int(np.prod(self.shape)),)
        elif ltype == "conv":
            self.layers.append(self.read_conv(i, g, where))
        elif ltype == "dense":
            self.layers.append(self.read_dense(i, g, where))
        else:
            raise self.fail(f"{where}: unknown layer type '{ltype}'")
        if ltype in ("conv", "dense"):
            self.weighted_at[i] = (self.layers[-1].name, self.shape)

    # -- the file ------------------------------------------------------------

    def layer_groups(self) -> list:
        layers_g = self.child(self.f, "layer", "file", h5py.Group, required=False)
        if layers_g is None:
            raise self.fail("missing group 'layer' (not a netx network file)")
        if len(layers_g) > _MAX_LAYERS:
            raise self.fail(f"'layer' holds {len(layers_g)} entries; at most {_MAX_LAYERS} "
                            f"layers are accepted")
        keys = list(layers_g.keys())
        if not keys or sorted(keys, key=lambda k: int(k) if k.isdigit() else -1) != \
                [str(i) for i in range(len(keys))]:
            raise self.fail(f"layer group must hold layers 0..N-1, found {sorted(keys)[:20]}")
        return [self.child(layers_g, str(i), f"layer {i}", h5py.Group) for i in range(len(keys))]

    def provenance(self) -> dict:
        text = self.attr_text(self.f, "provenance", "root", "{}", max_bytes=_MAX_TEXT)
        try:
            metadata = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise self.fail(f"provenance attribute is not valid JSON ({type(e).__name__})") from None
        if not isinstance(metadata, dict):
            raise self.fail(f"provenance attribute is a JSON {type(metadata).__name__}, not an object")
        problem = provenance_problem(metadata, sum(isinstance(layer, (Conv, Dense))
                                                   for layer in self.layers) or None)
        if problem:
            raise self.fail(f"provenance attribute: {problem}")
        return metadata

    def version_and_readout(self) -> tuple[str, str]:
        """Root attributes of this project's files (1.0 files have no readout: spikes)."""
        version = self.attr_text(self.f, "ir_version", "root", IR_VERSION)
        if version not in READABLE_IR_VERSIONS:
            raise self.fail(f"IR version {version!r} is not supported (this reader reads "
                            f"{', '.join(READABLE_IR_VERSIONS)})")
        readout = self.attr_text(self.f, "readout", "root", "spikes")
        if readout not in READOUTS:
            raise self.fail(f"readout attribute {readout!r} is not one of {READOUTS}")
        return version, readout

    def stock_netx_attrs(self, input_bits: Optional[int]) -> Optional[int]:
        """The stock-netx arguments the file states must agree with the network; its reset
        interval (None if it states none)."""
        bits = self.attr_int(self.f, "input_message_bits", "input", 1, LOIHI2.graded_spike_max_bits)
        if bits is not None and bits != input_bits:
            raise self.fail(f"attribute input_message_bits = {bits} disagrees with "
                            f"input_bits = {input_bits}")
        interval = self.attr_int(self.f, "reset_interval", "input", 1)
        offset = self.attr_int(self.f, "reset_offset", "input", 0)
        if (interval is None) != (offset is None):
            raise self.fail("attributes reset_interval and reset_offset must come together")
        return interval

    def ours_root(self) -> tuple:
        """(metadata, input_bits, version, readout) of a file this project wrote."""
        version = self.attr_text(self.f, "format_version", "root")
        if version != NETX_FORMAT_VERSION:
            raise self.fail(f"format version {version!r} is not supported "
                            f"(this reader reads version {NETX_FORMAT_VERSION})")
        input_bits = self.attr_int(self.f, "input_bits", "input")
        interval = self.stock_netx_attrs(input_bits)
        metadata = self.provenance()
        steps = metadata.get("timesteps")
        if steps is not None and interval is not None and steps != interval:
            raise self.fail(f"provenance timesteps = {steps} disagrees with reset_interval = {interval}")
        if steps is None and interval is not None:
            metadata["timesteps"] = interval  # a file whose provenance predates the key: its T
        return (metadata, input_bits) + self.version_and_readout()

    def read(self) -> Network:
        if self.ours:
            self.graph = self.graph_attrs()
        for i, g in enumerate(self.layer_groups()):
            self.read_layer(i, g)
        if self.net_input is None:
            raise self.fail("no input layer and no layer to infer the input shape from")
        if not self.layers:
            raise self.fail("the network has no weighted layer")
        if self.graph is not None and not any(getattr(layer, "extra_inputs", ())
                                              for layer in self.layers):
            raise self.fail(f"the root declares graph_format {GRAPH_FORMAT!r} but no layer has "
                            f"extra inputs (no 'concat' layer): a residual file whose shortcuts "
                            f"were removed")
        if self.ours:
            metadata, input_bits, version, readout = self.ours_root()
        else:
            metadata = {"source": "netx", "file": self.path.name}
            if self.input_meta:
                metadata["input_transform_unused_by_netx"] = self.input_meta
            if self.default_neuron:
                metadata["netx_default_neuron_layers"] = list(self.default_neuron)
            input_bits, version, readout = None, IR_VERSION, "spikes"
        if version in _SEQUENTIAL_IR_VERSIONS and any(
                getattr(layer, "extra_inputs", ()) for layer in self.layers):
            raise self.fail(f"IR version {version} has no extra inputs, but the file has "
                            f"'concat' layers")
        try:
            net = Network(input=self.net_input, layers=self.layers, integer=True,
                          input_bits=input_bits, metadata=metadata, version=version,
                          readout=readout)
        except LoihiRangeError:
            raise
        except IRError as e:
            raise self.fail(f"inconsistent network: {e}") from None
        validate_network(net, project_limits() if self.ours else netx_limits())
        return net


#: what h5py raises, lazily and on access, for damaged or truncated files
_H5_ERRORS = (OSError, KeyError, ValueError, TypeError, IndexError, AttributeError,
              RuntimeError, RecursionError, OverflowError)


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_GLOBAL_HEAP = b"GCOL"
#: an object header in a global heap collection: index (2), references (2), reserved (4), size (8)
_HEAP_OBJECT_HEADER = 16


def _lengths_size(m) -> Optional[int]:
    """The superblock's "size of lengths" (8 in every file h5py writes), or None if the file
    does not start with a superblock this check understands."""
    if m[:8] != _HDF5_SIGNATURE or len(m) < 16:
        return None
    return {0: m[14], 1: m[14], 2: m[10], 3: m[10]}.get(m[8])


def _heap_objects(m, at: int, objects: dict) -> Optional[str]:
    """Walk the global heap collection at ``at`` exactly as HDF5's loader does (by the object
    sizes it stores), noting ``objects[(at, index)] = size``; what would send that walk outside
    the collection or nowhere, or None."""
    if at + 16 > len(m) or m[at + 4] != 1:
        return None  # not a collection header: HDF5 refuses it or never reads it as one
    end = at + int.from_bytes(m[at + 8:at + 16], "little")
    if end > len(m) or end < at + 16:
        return None  # HDF5 fails reading it; it never walks it
    p = at + 16
    while p + _HEAP_OBJECT_HEADER <= end:
        index = int.from_bytes(m[p:p + 2], "little")
        size = int.from_bytes(m[p + 8:p + 16], "little")
        # index 0 is the free space, whose size counts its header; an object's is padded to 8
        need = size if index == 0 else _HEAP_OBJECT_HEADER + (size + 7) // 8 * 8
        if need < _HEAP_OBJECT_HEADER or p + need > end:
            return f"object {index} at byte {p} declares {size} bytes, beyond its collection"
        if index:
            objects[(at, index)] = size
        p += need
    return None


def _vlen_length_problem(m, objects: dict) -> Optional[str]:
    """A variable-length string's reference (length: 4 bytes, collection address: 8, object
    index: 4) whose length is longer than any string read here and than its heap object: HDF5
    allocates that length before it compares the two (seconds per reference near 4 GB)."""
    for at in {a for a, _ in objects}:
        needle = at.to_bytes(8, "little")
        q = m.find(needle, 4)
        while q >= 0:
            length = int.from_bytes(m[q - 4:q], "little")
            index = int.from_bytes(m[q + 8:q + 12], "little")
            size = objects.get((at, index))
            if size is not None and length > _MAX_TEXT and length != size:
                return (f"a variable-length string at byte {q - 4} declares {length} bytes, its "
                        f"heap object holds {size}")
            q = m.find(needle, q + 1)
    return None


def _check_global_heaps(path: Path) -> None:
    """Refuse a file whose global heap (where variable-length strings live: this project's
    string attributes among them) would make HDF5 loop forever. HDF5 1.x walks a collection by
    the sizes it stores without checking them: one damaged size sends the walk backwards (an
    unsigned wrap) or nowhere (a free-space size of 0), and reading any string attribute then
    never returns; a damaged string length makes it allocate up to 4 GB first. A few passes
    over the file, mapped, linear in its size."""
    import mmap

    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size < len(_HDF5_SIGNATURE):
            return
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if _lengths_size(m) != 8:
                return  # not a layout this walk knows: left to h5py
            objects: dict = {}
            at = m.find(_GLOBAL_HEAP)
            while at >= 0:
                problem = _heap_objects(m, at, objects)
                if problem:
                    raise NetxFormatError(f"{path}: corrupt global heap at byte {at}: {problem}")
                at = m.find(_GLOBAL_HEAP, at + len(_GLOBAL_HEAP))
            problem = _vlen_length_problem(m, objects)
            if problem:
                raise NetxFormatError(f"{path}: corrupt file: {problem}")


def _read_checked(path: PathLike, what):
    """``what(reader)`` on the opened file, every failure one :class:`NetxFormatError` line."""
    path = Path(path)
    try:
        if not path.is_file():
            raise NetxFormatError(f"{path}: no such file")
        _check_global_heaps(path)
        f = h5py.File(path, "r")
    except NetxFormatError:
        raise
    except (OSError, ValueError, RuntimeError) as e:
        raise NetxFormatError(f"{path}: not a readable HDF5 file ({' '.join(str(e).split())})") from None
    try:
        with f:
            return what(_Reader(f, path))
    except NetxFormatError:
        raise
    except LoihiRangeError as e:
        raise NetxFormatError(f"{path}: {e}") from e
    except _H5_ERRORS as e:
        raise NetxFormatError(f"{path}: corrupt or incomplete netx file "
                              f"({type(e).__name__}: {' '.join(str(e).split())})") from None


def read_net(path: PathLike) -> Network:
    """Read a netx HDF5 file into an integer IR (module docstring).

    Raises :class:`NetxFormatError` (one line naming the file, and the layer
    and key where there is one) for a missing, non-HDF5, truncated, corrupt or
    oversized file, links that leave the file, layers the IR or stock netx
    cannot represent, and values outside the limits of
    :mod:`hardware.ir.validate` (its :class:`LoihiRangeError` is the cause).
    """
    return _read_checked(path, lambda reader: reader.read())


def read_provenance(path: PathLike) -> dict:
    """The ``provenance`` root attribute of a .net file alone (``{}`` if it has none), checked
    as :func:`read_net` checks it (global heap, the attribute's count, size and storage, a JSON
    object, the types of the keys this project reads) without reading the layers: for a caller
    that only needs to know whose file it is. Raises :class:`NetxFormatError`."""
    return _read_checked(path, lambda reader: reader.provenance())
