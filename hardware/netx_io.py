"""Integer SNN IR <-> lava-dl netx HDF5 (``.net``) files.

File layout (what stock ``lava.lib.dl.netx.hdf5.Network`` reads; keys as in
its ``create_input``/``create_conv``/``create_dense``/``_create`` and
``netx.utils.NetDict``)::

    layer/0/{type='input', shape=(C, H, W) or (N,)}      (+ neuron/ if the IR input has one)
    layer/i/{type='conv', shape=(C_out, H_out, W_out), weight=(out, in/groups, kh, kw),
             bias=(C_out,), stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), groups,
             neuron/{type, vThMant, iDecay, vDecay, refDelay, gradedSpike}}
    layer/i/{type='flatten'}
    layer/i/{type='dense', shape=(N_out,), weight=(out, in), bias=(N_out,), neuron/{...}}

Shapes are stored reversed with respect to netx's WHC order, i.e. CHW; conv
weights are PyTorch cross-correlation kernels; stride/padding/dilation are
stored in (h, w) order (netx reverses them to (x, y) and Lava's conv reverses
them back). Neuron parameters: ``vThMant = threshold``, ``iDecay = du + 1``,
``vDecay = dv`` (netx computes ``du = iDecay - 1``, ``dv = vDecay`` and always
uses ``bias_exp = 6``). Everything netx does not read is kept in HDF5
attributes, which netx ignores: on the root ``format_version``
(:data:`NETX_FORMAT_VERSION`), ``project`` (``'nqloihi'``), ``ir_version``,
``input_bits``, ``readout`` and ``provenance`` (a JSON string); on every layer
group ``name``, ``neuron_kind``, ``weight_exp`` and ``bias_exp``.

Readout: ``readout`` is one of :data:`hardware.ir.READOUTS`. Files without it
(IR 1.0 files of this project, every file written by others) read back as
``'spikes'``. A ``'potential'`` readout layer is stored as an ordinary CUBA
layer (``vThMant`` 131071, ``iDecay`` 4096, ``vDecay`` 0, see
:func:`hardware.ir.readout_neuron`), so a ``cuba`` network with it still loads
and runs in stock netx unchanged; only this project knows to read its membrane
instead of its (never emitted) spikes. IR versions read:
:data:`READABLE_IR_VERSIONS`.

Neuron kinds: ``cuba`` is written as netx type ``'CUBA'`` and runs unchanged
in stock netx (Lava ``LIF``/``LIFReset``). ``if_soft`` (reset by subtraction,
v(0) = θ/2) is written as type ``'IF_SOFT'``, which stock netx does not know:
its ``get_neuron_params`` falls through every branch and returns ``None`` and
``AbstractBlock.__init__`` then fails with ``AttributeError: 'NoneType'
object has no attribute 'pop'``, so stock netx can never silently run an
if_soft file with the stock reset-to-zero dynamics (this project's runner
supplies the soft-reset neuron process).

Dense weights in netx: ``create_dense`` passes the file weights through
``netx.utils.optimize_weight_bits`` (``W' = W << s``, ``weight_exp = -s``,
``num_weight_bits``) and Lava's bit-accurate ``Dense`` model then applies
``clip_weights(W', sign_mode, 8)`` and ``truncate_weights`` with the sign mode
it determines itself from ``W'`` (netx does not pass its own), and computes
``a = (W_eff @ s) >> s``. :func:`netx_dense_effective` reproduces that chain
exactly. When ``W_eff == W << s`` the result equals ``W @ s`` exactly (an
integer multiplied by ``2**s`` and arithmetically shifted right by ``s`` is
unchanged); this holds for every 8-bit weight matrix except an all-zero one
(``optimize_weight_bits`` raises ``OverflowError``) and matrices with no
positive weight whose most negative weight is a negative power of two (it is
scaled to -256, which Lava's inhibitory clip turns into -255). :func:`write_net`
checks exactly this and raises for the layers it cannot represent.

Reading (:func:`read_net`): files written by :func:`write_net` come back as
an identical IR. Other netx files (lava-dl's ``tiny.net``, ``mnist.net``,
PilotNet LIF) are mapped onto what netx + Lava actually compute: an input
layer with a neuron becomes ``Input(shape, neuron=...)``; dense weights are
the effective Lava integers ``W_eff`` with ``weight_exp`` = netx's weight
exponent; conv weights and all biases are cast with ``astype(int)`` as
``NetDict`` does; a dense layer without a neuron gets netx's default neuron.
Nothing is ever unpickled.
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import h5py
import numpy as np

from .errors import IRError, NetxFormatError
from .ir import IR_VERSION, READOUTS, Conv, Dense, Flatten, Input, Network, Neuron
from .spec import LOIHI2

__all__ = [
    "NETX_FORMAT_VERSION", "PROJECT_NAME", "NEURON_TYPE_OF_KIND", "READABLE_IR_VERSIONS",
    "write_net", "read_net", "netx_dense_effective",
]

NETX_FORMAT_VERSION = "1"
PROJECT_NAME = "nqloihi"
#: IR versions this reader understands: 1.0 (no readout attribute: spike-count
#: readout) and 1.1 (``readout`` attribute). A newer file may carry meaning this
#: reader would silently drop, so it is refused.
READABLE_IR_VERSIONS = ("1.0", "1.1")

#: netx neuron ``type`` string written for each IR neuron kind. ``IF_SOFT`` is
#: deliberately unknown to stock netx (see module docstring).
NEURON_TYPE_OF_KIND = {"cuba": "CUBA", "if_soft": "IF_SOFT"}
#: netx neuron types read back into IR kinds (``LOIHI`` is netx's alias of CUBA).
_KIND_OF_NEURON_TYPE = {"CUBA": "cuba", "LOIHI": "cuba", "IF_SOFT": "if_soft"}

#: layer types stock netx raises NotImplementedError for, or that the IR has
#: no counterpart of.
_UNSUPPORTED_LAYER_TYPES = ("pool", "average", "concat", "convT", "unpool",
                            "dense_rec", "dense_comp")

#: netx's neuron for a dense layer whose file has no ``neuron`` group
#: (``Network.create_dense``: "Non-leaky integrator by default"). Note netx's
#: own expression ``1 << 18 - 1`` is ``1 << 17``.
_NETX_DEFAULT_DENSE_NEURON = {"type": "CUBA", "iDecay": 0, "vDecay": 4096,
                              "vThMant": 1 << 17}

PathLike = Union[str, Path]


# --------------------------------------------------------------------------
# netx + Lava dense weight pipeline
# --------------------------------------------------------------------------

def netx_dense_effective(weight: np.ndarray, layer: str = "dense"
                         ) -> tuple[np.ndarray, int]:
    """Integer weights and exponent Lava's bit-accurate Dense ends up with.

    Runs the very functions netx and Lava run: ``netx.utils.
    optimize_weight_bits`` (as called by ``hdf5.Network.create_dense``), then
    ``lava.utils.weightutils.determine_sign_mode``, ``clip_weights`` and
    ``truncate_weights`` (as ``AbstractPyDenseModelBitAcc.run_spk`` does,
    with the ``weight_clip_bits`` of :data:`hardware.spec.LOIHI2`). Lava then
    computes ``a = W_eff @ s`` shifted by the returned exponent (``<<`` if
    positive, arithmetic ``>>`` if negative).

    Raises :class:`NetxFormatError` for an all-zero matrix, on which
    ``optimize_weight_bits`` fails (``255 / 0`` -> ``int(inf)``).
    """
    from lava.lib.dl.netx.utils import optimize_weight_bits
    from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights

    weight = np.asarray(weight).astype(int)  # as NetDict reads 'weight'
    if not np.any(weight):
        raise NetxFormatError(
            f"layer {layer}: all-zero dense weight matrix; netx's "
            f"optimize_weight_bits cannot scale it (OverflowError on int(inf))")
    printed = io.StringIO()
    # netx prints its clipping warnings; a one-signed matrix divides by zero harmlessly
    with contextlib.redirect_stdout(printed), np.errstate(divide="ignore"):
        w, num_weight_bits, weight_exp, _ = optimize_weight_bits(weight)
    if printed.getvalue().strip():
        warnings.warn(f"layer {layer}: netx: {' '.join(printed.getvalue().split())}")
    sign_mode = determine_sign_mode(w)
    w = clip_weights(w, sign_mode, num_bits=LOIHI2.weight_clip_bits)
    w = truncate_weights(w, sign_mode, num_weight_bits)
    return np.asarray(w).astype(np.int64), int(weight_exp)


def _dense_exact(weight: np.ndarray, layer: str) -> None:
    """Raise unless netx + Lava compute exactly ``W @ s`` for these weights."""
    try:
        w_eff, exp = netx_dense_effective(weight, layer)
    except NetxFormatError as e:
        raise IRError(str(e)) from None
    if exp > 0 or not np.array_equal(w_eff, np.asarray(weight, dtype=np.int64) << -exp):
        bad = np.argwhere(w_eff != (np.asarray(weight, dtype=np.int64) << max(-exp, 0)))
        where = tuple(int(i) for i in bad[0]) if len(bad) else ()
        raise IRError(
            f"layer {layer}: netx + Lava cannot represent these dense weights "
            f"exactly (weight{list(where)} = "
            f"{int(np.asarray(weight)[where]) if where else '?'} becomes "
            f"{int(w_eff[where]) if where else '?'} * 2**{exp}); a weight matrix "
            f"without positive weights whose minimum is a negative power of two "
            f"is scaled to -256 and clipped to -255 by Lava")


# --------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------

def _check_int_array(a: np.ndarray, what: str, layer: str, lo: int, hi: int) -> np.ndarray:
    a = np.asarray(a)
    if a.size and (not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a))):
        raise IRError(f"layer {layer}: {what} must be integers (integer IR)")
    a = a.astype(np.int64)
    if a.size and (a.min() < lo or a.max() > hi):
        v = a.min() if a.min() < lo else a.max()
        raise IRError(f"layer {layer}: {what} value {int(v)} outside [{lo}, {hi}]")
    return a


def _write_str(group: h5py.Group, key: str, value: str) -> None:
    # Same layout as slayer's export (fixed-length ASCII, shape (1,)).
    group.create_dataset(key, (1,), "S10", [value.encode("ascii")])


def _write_neuron(group: h5py.Group, neuron: Neuron, layer: str) -> None:
    if neuron.bias_exp != LOIHI2.netx_bias_exp:
        raise IRError(f"layer {layer}: bias_exp {neuron.bias_exp} is not "
                      f"{LOIHI2.netx_bias_exp}, the only bias exponent netx uses")
    th = _check_int_array(neuron.threshold, "threshold (vThMant)", layer, 0, LOIHI2.threshold_max)
    du = _check_int_array(neuron.du, "du", layer, 0, LOIHI2.decay_max)
    dv = _check_int_array(neuron.dv, "dv", layer, 0, LOIHI2.decay_max)
    g = group.create_group("neuron")
    g.create_dataset("type", data=NEURON_TYPE_OF_KIND[neuron.kind])
    g.create_dataset("vThMant", data=int(th))
    g.create_dataset("iDecay", data=int(du) + LOIHI2.current_decay_offset)
    g.create_dataset("vDecay", data=int(dv))
    g.create_dataset("refDelay", data=1)
    g.create_dataset("gradedSpike", data=False)
    group.attrs["neuron_kind"] = neuron.kind
    group.attrs["bias_exp"] = int(neuron.bias_exp)


def write_net(net: Network, path: PathLike, provenance: Optional[dict] = None) -> Path:
    """Write an integer IR to a netx HDF5 file; return the path.

    ``provenance`` (config, checkpoint sha256, quantization report, ...) is
    merged over ``net.metadata`` and stored as a JSON string attribute;
    :func:`read_net` returns it as the IR's ``metadata``.

    Raises :class:`IRError` (naming the layer) for anything netx + Lava cannot
    run exactly as the IR says: a float IR, weight or bias outside the 8-bit /
    13-bit ranges, a ``weight_exp`` other than 0 (netx picks the dense exponent
    itself and Lava's Conv ignores it), ``bias_exp`` other than 6, dense
    weights netx would rescale inexactly (see module docstring), a Flatten
    whose input is not (C, H, W).
    """
    if not net.integer:
        raise IRError("write_net needs an integer IR (quantize the network first)")
    meta = {**(net.metadata or {}), **(provenance or {})}
    try:
        meta_json = json.dumps(meta, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise IRError(f"provenance/metadata is not JSON-serialisable: {e}") from None
    shapes = net.shapes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format_version"] = NETX_FORMAT_VERSION
            f.attrs["project"] = PROJECT_NAME
            f.attrs["ir_version"] = net.version
            f.attrs["readout"] = net.readout
            if net.input_bits is not None:
                if not 0 < int(net.input_bits) <= LOIHI2.graded_spike_max_bits:
                    raise IRError(f"input_bits {net.input_bits} outside "
                                  f"[1, {LOIHI2.graded_spike_max_bits}]")
                f.attrs["input_bits"] = int(net.input_bits)
            f.attrs["provenance"] = meta_json
            layers = f.create_group("layer")

            g = layers.create_group("0")
            _write_str(g, "type", "input")
            g.create_dataset("shape", data=np.asarray(net.input.shape, dtype=np.int64))
            g.attrs["name"] = net.input.name
            if net.input.neuron is not None:
                _write_neuron(g, net.input.neuron, net.input.name)

            in_shape = tuple(net.input.shape)
            prev_is_input = True
            for i, (layer, out_shape) in enumerate(zip(net.layers, shapes), start=1):
                g = layers.create_group(str(i))
                g.attrs["name"] = layer.name
                if isinstance(layer, Flatten):
                    # netx flattens by transposing the previous block's WHC
                    # output port; that needs a 3-D previous block.
                    if len(in_shape) != 3 and not (prev_is_input and net.input.neuron is None):
                        raise IRError(f"layer {layer.name}: netx can only flatten a "
                                      f"(C, H, W) output, got {in_shape}")
                    _write_str(g, "type", "flatten")
                elif isinstance(layer, (Conv, Dense)):
                    if layer.weight_exp != 0:
                        raise IRError(
                            f"layer {layer.name}: weight_exp {layer.weight_exp} != 0 cannot "
                            f"be stored: netx chooses the dense exponent itself and "
                            f"Lava's Conv ignores it")
                    w = _check_int_array(layer.weight, "weight", layer.name,
                                         LOIHI2.weight_min, LOIHI2.weight_max)
                    if isinstance(layer, Dense):
                        _dense_exact(w, layer.name)
                    _write_str(g, "type", "conv" if isinstance(layer, Conv) else "dense")
                    g.create_dataset("shape", data=np.asarray(out_shape, dtype=np.int64))
                    g.create_dataset("weight", data=w.astype(np.int32))
                    if layer.bias is not None:
                        b = _check_int_array(layer.bias, "bias", layer.name,
                                             LOIHI2.bias_min, LOIHI2.bias_max)
                        if b.shape != (out_shape[0],):
                            raise IRError(f"layer {layer.name}: bias shape {b.shape} is "
                                          f"not ({out_shape[0]},)")
                        g.create_dataset("bias", data=b.astype(np.int32))
                    if isinstance(layer, Conv):
                        g.create_dataset("stride", data=np.asarray(layer.stride, dtype=np.int64))
                        g.create_dataset("padding", data=np.asarray(layer.padding, dtype=np.int64))
                        g.create_dataset("dilation", data=np.asarray(layer.dilation, dtype=np.int64))
                        g.create_dataset("groups", data=int(layer.groups))
                    g.attrs["weight_exp"] = int(layer.weight_exp)
                    _write_neuron(g, layer.neuron, layer.name)
                else:
                    raise IRError(f"layer {i}: unknown IR layer {type(layer).__name__}")
                in_shape = out_shape
                prev_is_input = False
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------

class _Reader:
    """Reads one open file; every missing/invalid item becomes NetxFormatError."""

    def __init__(self, f: h5py.File, path: Path) -> None:
        self.f = f
        self.path = path
        self.ours = _attr_str(f.attrs.get("project")) == PROJECT_NAME

    def fail(self, msg: str) -> NetxFormatError:
        return NetxFormatError(f"{self.path}: {msg}")

    def get(self, group: h5py.Group, key: str, where: str) -> Any:
        if key not in group:
            raise self.fail(f"{where}: missing key '{key}'")
        obj = group[key]
        if not isinstance(obj, h5py.Dataset):
            raise self.fail(f"{where}: '{key}' is not a dataset")
        return obj[()]

    def get_str(self, group: h5py.Group, key: str, where: str) -> str:
        v = self.get(group, key, where)
        if isinstance(v, np.ndarray):
            if v.size != 1:
                raise self.fail(f"{where}: '{key}' is not a single string")
            v = v.reshape(-1)[0]
        if isinstance(v, bytes):
            return v.decode("ascii")
        if isinstance(v, str):
            return v
        raise self.fail(f"{where}: '{key}' is not a string")

    def get_int(self, group: h5py.Group, key: str, where: str) -> int:
        v = np.asarray(self.get(group, key, where))
        if v.size != 1:
            if v.size > 1 and np.all(v == v.reshape(-1)[0]):
                v = v.reshape(-1)[:1]
            else:
                raise self.fail(f"{where}: '{key}' must be one value, got shape {v.shape}")
        return int(v.reshape(-1)[0])

    def pair(self, group: h5py.Group, key: str, where: str) -> tuple:
        v = np.asarray(self.get(group, key, where)).astype(int).reshape(-1)
        if v.size == 1:
            return (int(v[0]), int(v[0]))
        if v.size != 2:
            raise self.fail(f"{where}: '{key}' must have 1 or 2 values, got {v.tolist()}")
        return (int(v[0]), int(v[1]))  # stored (h, w)

    def neuron(self, group: h5py.Group, where: str) -> Neuron:
        if "neuron" in group:
            g = group["neuron"]
            where_n = f"{where} neuron"
            ntype = self.get_str(g, "type", where_n)
            if ntype not in _KIND_OF_NEURON_TYPE:
                raise self.fail(f"{where}: neuron type '{ntype}' is not supported "
                                f"(supported: {sorted(_KIND_OF_NEURON_TYPE)})")
            if "messageBits" in g and self.get_int(g, "messageBits", where_n) != 0:
                raise self.fail(f"{where}: graded output spikes (messageBits) are not "
                                f"supported by the IR")
            cfg = {k: self.get_int(g, k, where_n) for k in ("vThMant", "iDecay", "vDecay")}
        elif group.get("type") is not None and self.get_str(group, "type", where) == "dense":
            ntype, cfg = "CUBA", dict(_NETX_DEFAULT_DENSE_NEURON)
        else:
            raise self.fail(f"{where}: missing key 'neuron'")
        bias_exp = LOIHI2.netx_bias_exp
        if self.ours and "bias_exp" in group.attrs:
            bias_exp = int(group.attrs["bias_exp"])
        kind = _KIND_OF_NEURON_TYPE[ntype]
        if self.ours and "neuron_kind" in group.attrs and _attr_str(group.attrs["neuron_kind"]) != kind:
            raise self.fail(f"{where}: neuron_kind attribute disagrees with neuron type '{ntype}'")
        return Neuron(kind=kind, threshold=cfg["vThMant"],
                      du=cfg["iDecay"] - LOIHI2.current_decay_offset,
                      dv=cfg["vDecay"], bias_exp=bias_exp)

    def version_and_readout(self) -> tuple[str, str]:
        """Root attributes of this project's files (1.0 files have no readout: spikes)."""
        version = _attr_str(self.f.attrs.get("ir_version", IR_VERSION))
        if version not in READABLE_IR_VERSIONS:
            raise self.fail(f"IR version {version!r} is not supported (this reader reads "
                            f"{', '.join(READABLE_IR_VERSIONS)})")
        readout = _attr_str(self.f.attrs.get("readout", "spikes"))
        if readout not in READOUTS:
            raise self.fail(f"readout attribute {readout!r} is not one of {READOUTS}")
        return version, readout

    def name(self, group: h5py.Group, default: str) -> str:
        if self.ours and "name" in group.attrs:
            return _attr_str(group.attrs["name"])
        return default

    def bias(self, group: h5py.Group, n_out: int, where: str) -> Optional[np.ndarray]:
        if "bias" not in group:
            return None
        b = np.asarray(self.get(group, "bias", where)).astype(int).reshape(-1)
        if b.size == 1 and n_out != 1 and not self.ours:
            b = np.full(n_out, int(b[0]), dtype=int)  # netx broadcasts a scalar bias
        if b.shape != (n_out,):
            raise self.fail(f"{where}: bias has {b.size} values, expected {n_out} "
                            f"(per output channel)")
        return b.astype(np.int64)

    def read(self) -> Network:
        f = self.f
        if "layer" not in f or not isinstance(f["layer"], h5py.Group):
            raise self.fail("missing group 'layer' (not a netx network file)")
        layers_g = f["layer"]
        keys = list(layers_g.keys())
        if not keys or sorted(keys, key=lambda k: int(k) if k.isdigit() else -1) != \
                [str(i) for i in range(len(keys))]:
            raise self.fail(f"layer group must hold layers 0..N-1, found {sorted(keys)}")

        net_input: Optional[Input] = None
        layers: list = []
        shape: Optional[tuple] = None
        input_meta: dict = {}
        for i in range(len(keys)):
            g = layers_g[str(i)]
            if not isinstance(g, h5py.Group):
                raise self.fail(f"layer {i}: not a group")
            ltype = self.get_str(g, "type", f"layer {i}")
            where = f"layer {i} ({ltype})"
            if ltype in _UNSUPPORTED_LAYER_TYPES:
                raise self.fail(f"{where}: layer type '{ltype}' is not supported "
                                f"(stock netx or the IR cannot represent it)")
            if ltype == "input":
                if i != 0:
                    raise self.fail(f"{where}: an input layer must be layer 0")
                shape = tuple(int(s) for s in np.asarray(self.get(g, "shape", where)).reshape(-1))
                neuron = self.neuron(g, where) if "neuron" in g else None
                for k in ("weight", "bias"):
                    if k in g:  # netx keeps them as an unused 'transform'
                        input_meta[k] = int(np.asarray(g[k][()]).reshape(-1)[0])
                net_input = Input(shape=shape, neuron=neuron, name=self.name(g, "input"))
            elif ltype == "flatten":
                layers.append(Flatten(name=self.name(g, f"flatten{i}")))
                if shape is not None:
                    shape = (int(np.prod(shape)),)
            elif ltype == "conv":
                if shape is None:
                    raise self.fail(f"{where}: input shape unknown (no input layer before "
                                    f"the first conv)")
                w = np.asarray(self.get(g, "weight", where)).astype(int)
                if w.ndim == 5 and w.shape[4] == 1:
                    w = w.reshape(w.shape[:4])  # slayer's (out, in, kh, kw, 1)
                if w.ndim != 4:
                    raise self.fail(f"{where}: conv weight must be 4-D, got shape {w.shape}")
                out_c = w.shape[0]
                layer = Conv(weight=w.astype(np.int64), bias=self.bias(g, out_c, where),
                             neuron=self.neuron(g, where),
                             stride=self.pair(g, "stride", where),
                             padding=self.pair(g, "padding", where),
                             dilation=self.pair(g, "dilation", where),
                             groups=self.get_int(g, "groups", where),
                             weight_exp=int(g.attrs.get("weight_exp", 0)) if self.ours else 0,
                             name=self.name(g, f"conv{i}"))
                if "delay" in g:
                    raise self.fail(f"{where}: synaptic delays are not supported by the IR")
                try:
                    out = layer.output_shape(shape)
                except IRError as e:
                    raise self.fail(f"{where}: {e}") from None
                stored = tuple(int(s) for s in np.asarray(self.get(g, "shape", where)).reshape(-1))
                if stored != tuple(out):
                    raise self.fail(f"{where}: stored shape {stored} (C, H, W) does not match "
                                    f"the computed output shape {tuple(out)}")
                layers.append(layer)
                shape = tuple(out)
            elif ltype == "dense":
                n_out = int(np.prod(np.asarray(self.get(g, "shape", where))))
                w = np.asarray(self.get(g, "weight", where)).astype(int)
                if w.ndim == 1:
                    w = w.reshape(n_out, -1)
                if w.ndim != 2 or w.shape[0] != n_out:
                    raise self.fail(f"{where}: weight shape {w.shape} does not match "
                                    f"{n_out} outputs")
                if "delay" in g:
                    raise self.fail(f"{where}: synaptic delays are not supported by the IR")
                if self.ours:
                    exp = int(g.attrs.get("weight_exp", 0))
                    if exp != 0:
                        raise self.fail(f"{where}: weight_exp attribute {exp} != 0")
                    w_ir = w
                else:
                    w_ir, exp = netx_dense_effective(w, where)
                if net_input is None and not layers:
                    shape = (w.shape[1],)  # no input layer: infer from the weights
                    net_input = Input(shape=shape)
                layers.append(Dense(weight=w_ir.astype(np.int64),
                                    bias=self.bias(g, n_out, where),
                                    neuron=self.neuron(g, where), weight_exp=exp,
                                    name=self.name(g, f"dense{i}")))
                shape = (n_out,)
            else:
                raise self.fail(f"{where}: unknown layer type '{ltype}'")

        if net_input is None:
            raise self.fail("no input layer and no layer to infer the input shape from")
        if not layers:
            raise self.fail("the network has no weighted layer")
        if self.ours:
            try:
                metadata = json.loads(_attr_str(f.attrs.get("provenance", "{}")))
            except json.JSONDecodeError as e:
                raise self.fail(f"provenance attribute is not valid JSON ({e})") from None
            input_bits = int(f.attrs["input_bits"]) if "input_bits" in f.attrs else None
            version, readout = self.version_and_readout()
        else:
            metadata = {"source": "netx", "file": self.path.name}
            if input_meta:
                metadata["input_transform_unused_by_netx"] = input_meta
            input_bits, version, readout = None, IR_VERSION, "spikes"
        try:
            return Network(input=net_input, layers=layers, integer=True,
                           input_bits=input_bits, metadata=metadata, version=version,
                           readout=readout)
        except IRError as e:
            raise self.fail(f"inconsistent network: {e}") from None


def _attr_str(v: Any) -> Optional[str]:
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if v is None:
        return None
    return str(v)


def read_net(path: PathLike) -> Network:
    """Read a netx HDF5 file into an integer IR (see module docstring).

    Raises :class:`NetxFormatError` for a missing, non-HDF5, truncated or
    incomplete file and for layers the IR or stock netx cannot represent
    (naming the layer index and type).
    """
    path = Path(path)
    if not path.is_file():
        raise NetxFormatError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise NetxFormatError(f"{path}: not a readable HDF5 file ({e})") from None
    try:
        with f:
            reader = _Reader(f, path)
            if reader.ours:
                version = _attr_str(f.attrs.get("format_version"))
                if version != NETX_FORMAT_VERSION:
                    raise NetxFormatError(
                        f"{path}: format version {version!r} is not supported "
                        f"(this reader reads version {NETX_FORMAT_VERSION})")
            return reader.read()
    except NetxFormatError:
        raise
    except (OSError, KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
        # h5py reports damaged/truncated data lazily, on access.
        raise NetxFormatError(f"{path}: corrupt or incomplete netx file "
                              f"({type(e).__name__}: {e})") from None
