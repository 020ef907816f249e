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
``input_bits``, ``readout`` and ``provenance`` (a JSON object as a string); on
every layer group ``name``, ``neuron_kind``, ``weight_exp`` and ``bias_exp``.

Self-describing for stock netx users: the root also carries the arguments
stock ``netx.hdf5.Network`` needs and cannot find in the layers:
``input_message_bits`` (the graded input's bits; netx's default 0 would
silently turn the graded input into binary spikes), ``reset_interval`` (steps
per sample, when the writer was told it) and ``reset_offset``
(:func:`stock_reset_offset`), plus ``stock_netx_call``, the exact call as
text, only on a network stock netx runs (:func:`stock_netx_runs`: sequential, ``cuba``;
an if_soft or residual file carries none), and ``stock_netx_note`` (how to feed and
read the network, or why stock netx cannot).
:func:`hardware.runtime.stock_netx.stock_network` builds that network.

Writing is atomic: the file is written under a temporary name in the same
directory, flushed to disk and renamed over the target, so a writer killed at
any moment leaves the previous complete file or the new complete one.

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
an identical IR. Every file is checked before anything large is read: only
the expected keys are visited, links other than hard links (soft links, link
cycles, external links) are refused, every dataset's type and declared size
is checked against what it should hold, against what the file can store and
against :data:`MAX_DATASET_ELEMENTS` / :data:`MAX_TOTAL_ELEMENTS`, and the
layer shapes are checked against each other; then the network read is checked
by :func:`hardware.ir.validate.validate_network`, with
:func:`~hardware.ir.validate.project_limits` for this project's files and
:func:`~hardware.ir.validate.netx_limits` for others. Values are never truncated:
a weight of 0.5, a bool or complex weight or a threshold of 1.5 is an error.
Other netx files (lava-dl's ``tiny.net``, ``mnist.net``,
PilotNet LIF) are mapped onto what netx + Lava actually compute: an input
layer with a neuron becomes ``Input(shape, neuron=...)``; dense weights are
the effective Lava integers ``W_eff`` with ``weight_exp`` = netx's weight
exponent; conv weights and biases must hold integers (``NetDict`` would
truncate them with ``astype(int)``); a dense layer without a neuron gets netx's default neuron.
Nothing is ever unpickled.

Residual networks: graph format ``nqloihi-residual``, version 1 (IR 1.2)
-----------------------------------------------------------------------
A network with extra inputs (:class:`hardware.ir.Projection`) is written in the layout
above with one extension. A layer with extra inputs computes
``a = W·s_prev + Σ_k P_k·s_k = [W P_1 ...]·concat(s_prev, s_1, ...)``, which is netx's
``concat`` idea, so its entry is::

    layer/i/{type='concat', layer_type='conv'|'dense',   (its real kind)
             <every key of a conv/dense layer as above: shape, weight, bias, stride, ...,
              neuron/{...}; attributes name, neuron_kind, weight_exp, bias_exp>,
             inputs/k/{source = j (the file index of the source layer, 1 <= j < i, a
                                   conv/dense/concat layer),
                       kind = 'conv'|'dense',
                       weight = (out, in/groups, kh, kw) | (out, n_source),
                       stride, padding, dilation, groups  (conv only, as for a layer);
                       attribute weight_exp}}              k = 0 .. K-1, K >= 1

and the root carries ``graph_format = 'nqloihi-residual'`` (:data:`GRAPH_FORMAT`) and
``graph_version = 1`` (:data:`GRAPH_VERSION`); ``ir_version`` is at least 1.2. A dense
projection reads its source's output flattened in (C, H, W) C order (the IR's rule).
Why ``concat``: stock netx (``hdf5.Network._create``) silently *skips* layer types it
does not know (there is no ``else`` branch), so an invented type would load as a wrong
sequential network; ``'concat'`` is one of the types it refuses, raising
``NotImplementedError('concat is not implemented.')``. Sequential networks are written
exactly as before, without the graph attributes, and keep loading in stock netx.
:func:`hardware.runtime.stock_netx.stock_network` refuses a residual file with a
:class:`NetxFormatError` before netx sees it.

:func:`read_net` reads ``concat`` layers only from this project's files that declare the
graph format (a ``concat`` layer anywhere else is refused as before), checks every
projection's declared sizes against its source's and its layer's shapes before reading
its weights, refuses a source that is not an earlier conv/dense layer, and checks the
values (extra inputs included) against :func:`~hardware.ir.validate.project_limits`.
Written again, the network gives the same datasets and attributes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import h5py
import numpy as np

from hardware.errors import IRError, LoihiRangeError, NetxFormatError
from hardware.formats.files import atomic_path
from hardware.ir import (IR_VERSION, PROJECTION_KINDS, READABLE_IR_VERSIONS, READOUTS, Conv, Dense,
                 Flatten, Input, Network, Neuron, Projection)
from hardware.spec import LOIHI2
from hardware.ir.validate import (check_conv_geometry, integer_array, integer_scalar, netx_limits,
                       project_limits, validate_network)

__all__ = [
    "NETX_FORMAT_VERSION", "PROJECT_NAME", "NEURON_TYPE_OF_KIND", "READABLE_IR_VERSIONS",
    "STOCK_RESET_OFFSET", "MAX_DATASET_ELEMENTS", "MAX_TOTAL_ELEMENTS",
    "GRAPH_FORMAT", "GRAPH_VERSION", "write_net", "read_net", "netx_dense_effective",
    "stock_reset_offset", "stock_netx_runs", "read_provenance",
]

NETX_FORMAT_VERSION = "1"
PROJECT_NAME = "nqloihi"
# READABLE_IR_VERSIONS (imported from hardware.ir, re-exported): the IR versions this
# reader understands: 1.0 (no readout attribute: spike-count readout), 1.1 (``readout``
# attribute), 1.2 (extra inputs). A newer file may carry meaning this reader would
# silently drop, so it is refused.
#: IR versions without extra inputs: a ``concat`` layer in such a file is an error.
_SEQUENTIAL_IR_VERSIONS = ("1.0", "1.1")

#: root attributes naming the residual extension of the layout (module docstring)
GRAPH_FORMAT = "nqloihi-residual"
GRAPH_VERSION = 1
#: graph versions this reader understands
_READABLE_GRAPH_VERSIONS = (1,)
#: at most this many extra inputs per layer
_MAX_EXTRA_INPUTS = 64

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
#: what netx's slayer-style writers put in the neuron group besides the parameters
#: (netx ignores ``refDelay``; ``gradedSpike`` False means binary output spikes).
_NETX_REF_DELAY = 1

#: ``reset_offset`` a stock netx user passes with ``reset_interval = T`` when
#: sample k occupies source columns kT .. kT+T-1 (a RingBuffer sends column c at
#: step c + 1): netx resets block i at steps t = offset + 1 + i (mod T), which is
#: then the first step of block i's window (see :mod:`hardware.runtime.runner`).
STOCK_RESET_OFFSET = 1

def stock_reset_offset(net: Network) -> int:
    """The ``reset_offset`` stock netx needs for ``net`` (see :data:`STOCK_RESET_OFFSET`).

    An input neuron layer is netx's block 0 and takes sample k at steps kT+1 .. kT+T (no
    synapse in front of it), so every block's window starts one step earlier: offset 0."""
    return STOCK_RESET_OFFSET - (net.input.neuron is not None)


#: Sane limits checked before anything is read: no dataset (weights, biases) may
#: declare more elements than this, nor all of them together more than
#: MAX_TOTAL_ELEMENTS (a 784-512-512-10 net holds 0.7 M, a VGG-16 for CIFAR 15 M;
#: one Loihi 2 chip holds 120 M synapses); a layer may not have more neurons than
#: MAX_DATASET_ELEMENTS either.
MAX_DATASET_ELEMENTS = 1 << 25
MAX_TOTAL_ELEMENTS = 1 << 26
#: at most this many layers, characters in a string attribute or dataset and
#: values in a small dataset (shape, stride, a neuron parameter).
_MAX_LAYERS = 4096
_MAX_TEXT = 1 << 24
_SMALL = 8
#: at most this many attributes on one object (this project writes at most 13), bytes in a
#: fixed-size attribute other than the provenance, and keys in one layer group
_MAX_ATTRS = 64
_MAX_ATTR_BYTES = 4096
_MAX_LAYER_KEYS = 64

#: the keys each layer type may hold: this project's writer's, and slayer's (``inChannels``,
#: ``outChannels``, ``kernelSize``, ``inFeatures``, ``outFeatures``, which netx ignores);
#: ``delay`` is refused with its own message. A key of another type means the type disagrees
#: with the contents (a relabelled layer): refused in every file. Any other key is refused in
#: this project's files (its writer writes none) and left alone in others' (netx ignores it).
_LAYER_KEYS = {
    "input": frozenset({"type", "shape", "neuron", "weight", "bias"}),
    "flatten": frozenset({"type", "shape"}),
    "conv": frozenset({"type", "shape", "weight", "bias", "stride", "padding", "dilation", "groups",
                       "neuron", "inChannels", "outChannels", "kernelSize", "delay"}),
    "dense": frozenset({"type", "shape", "weight", "bias", "neuron", "inFeatures", "outFeatures",
                        "delay"}),
    "concat": frozenset({"layer_type", "inputs"}),  # + the keys of its layer_type
}

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

    weight = integer_array(weight, layer, "weight")
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
        raise LoihiRangeError(str(e)) from None
    w = np.asarray(weight, dtype=np.int64)
    if exp <= 0 and np.array_equal(w_eff, w << -exp):
        return
    bad = np.argwhere(w_eff != (w << max(-exp, 0)))
    where = tuple(int(i) for i in bad[0]) if len(bad) else ()
    raise LoihiRangeError(
        f"layer {layer}: netx + Lava cannot represent these dense weights "
        f"exactly (weight{list(where)} = {int(w[where]) if where else '?'} becomes "
        f"{int(w_eff[where]) if where else '?'} * 2**{exp}); a weight matrix "
        f"without positive weights whose minimum is a negative power of two "
        f"is scaled to -256 and clipped to -255 by Lava")


# --------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------

def _write_str(group: h5py.Group, key: str, value: str) -> None:
    # Same layout as slayer's export (fixed-length ASCII, shape (1,)).
    group.create_dataset(key, (1,), "S10", [value.encode("ascii")])


def _write_neuron(group: h5py.Group, neuron: Neuron) -> None:
    g = group.create_group("neuron")
    g.create_dataset("type", data=NEURON_TYPE_OF_KIND[neuron.kind])
    g.create_dataset("vThMant", data=int(neuron.threshold))
    g.create_dataset("iDecay", data=int(neuron.du) + LOIHI2.current_decay_offset)
    g.create_dataset("vDecay", data=int(neuron.dv))
    g.create_dataset("refDelay", data=_NETX_REF_DELAY)
    g.create_dataset("gradedSpike", data=False)
    group.attrs["neuron_kind"] = neuron.kind
    group.attrs["bias_exp"] = int(neuron.bias_exp)


def _check_netx_representable(net: Network) -> None:
    """What netx + Lava (and this project's loader, for extra inputs) cannot load as
    the IR says, beyond the value ranges (which include the extra inputs')."""
    if not net.is_sequential and net.version in _SEQUENTIAL_IR_VERSIONS:
        raise IRError(f"the network has extra inputs but claims IR version {net.version}; "
                      f"extra inputs exist from IR 1.2 on")
    for layer in net.weighted_layers:
        if len(layer.extra_inputs) > _MAX_EXTRA_INPUTS:
            raise LoihiRangeError(f"layer {layer.name}: {len(layer.extra_inputs)} extra inputs; "
                                  f"the file format holds at most {_MAX_EXTRA_INPUTS} per layer")
    in_shape, prev_is_input = tuple(net.input.shape), True
    for layer, out_shape in zip(net.layers, net.shapes()):
        if isinstance(layer, Flatten) and len(in_shape) != 3 \
                and not (prev_is_input and net.input.neuron is None):
            # netx flattens by transposing the previous block's WHC output port
            raise LoihiRangeError(f"layer {layer.name}: netx can only flatten a (C, H, W) "
                                  f"output, got {in_shape}")
        if isinstance(layer, Dense):
            _dense_exact(layer.weight, layer.name)
        in_shape, prev_is_input = out_shape, False


def stock_netx_runs(net: Network) -> bool:
    """Whether stock netx builds and runs this network as the IR says: a chain of ``cuba``
    layers with stated input bits. Stock netx fails on an ``IF_SOFT`` layer (``AttributeError:
    'NoneType' object has no attribute 'pop'``) and on a residual file's first ``concat``
    layer (``NotImplementedError: concat is not implemented.``), whichever comes first."""
    return (net.is_sequential and net.input_bits is not None
            and {layer.neuron.kind for layer in net.weighted_layers} == {"cuba"})


def _stock_netx_attrs(net: Network, steps_per_sample: Optional[int]) -> dict:
    """Root attributes that tell a stock netx user the arguments the layers cannot; the
    ``stock_netx_call`` only for a network stock netx runs (:func:`stock_netx_runs`)."""
    attrs: dict = {}
    args = ["net_config=<this file>"]
    if net.input_bits is not None:
        attrs["input_message_bits"] = int(net.input_bits)
        args.append(f"input_message_bits={int(net.input_bits)}")
    if steps_per_sample is not None:
        attrs["reset_interval"] = integer_scalar(steps_per_sample, "input", "steps_per_sample", 1)
        attrs["reset_offset"] = stock_reset_offset(net)
        args += [f"reset_interval={attrs['reset_interval']}", f"reset_offset={attrs['reset_offset']}"]
    if stock_netx_runs(net):
        attrs["stock_netx_call"] = f"lava.lib.dl.netx.hdf5.Network({', '.join(args)})"
    kinds = {layer.neuron.kind for layer in net.weighted_layers}
    notes = ["Feed sample k as the graded input of steps kT+1 .. kT+T (a RingBuffer column c "
             "is sent at step c+1); every block resets at the start of its window."]
    if kinds != {"cuba"}:
        notes.append("This network has IF_SOFT (reset-by-subtraction) layers, which stock netx "
                     "cannot build (AttributeError: 'NoneType' object has no attribute 'pop'); "
                     "run it with this project's hardware.runtime.network loader.")
    if not net.is_sequential:
        notes.append(f"This is a residual network (graph_format {GRAPH_FORMAT!r}): its layers "
                     f"of type 'concat' have extra inputs, which stock netx refuses ('concat is "
                     f"not implemented'); run it with this project's hardware.runtime.network loader.")
    if net.readout == "potential":
        notes.append("Readout 'potential': the class is the argmax of the output block's "
                     "neuron.v at the last step of each sample's window (it never spikes).")
    attrs["stock_netx_note"] = " ".join(notes)
    return attrs


def _write_root(f: h5py.File, net: Network, meta_json: str,
                steps_per_sample: Optional[int]) -> None:
    f.attrs["format_version"] = NETX_FORMAT_VERSION
    f.attrs["project"] = PROJECT_NAME
    f.attrs["ir_version"] = net.version
    f.attrs["readout"] = net.readout
    if net.input_bits is not None:
        f.attrs["input_bits"] = int(net.input_bits)
    f.attrs["provenance"] = meta_json
    if not net.is_sequential:
        f.attrs["graph_format"] = GRAPH_FORMAT
        f.attrs["graph_version"] = GRAPH_VERSION
    for key, value in _stock_netx_attrs(net, steps_per_sample).items():
        f.attrs[key] = value


def _write_geometry(g: h5py.Group, conv) -> None:
    for key in ("stride", "padding", "dilation"):
        g.create_dataset(key, data=np.asarray(getattr(conv, key), dtype=np.int64))
    g.create_dataset("groups", data=int(conv.groups))


def _write_extra_inputs(g: h5py.Group, layer, file_index: dict) -> None:
    """``inputs/<k>/`` of a layer with extra inputs (module docstring)."""
    inputs = g.create_group("inputs")
    for k, proj in enumerate(layer.extra_inputs):
        pg = inputs.create_group(str(k))
        pg.create_dataset("source", data=np.int64(file_index[proj.source]))
        _write_str(pg, "kind", proj.kind)
        pg.create_dataset("weight", data=np.asarray(proj.weight, dtype=np.int32))
        if proj.kind == "conv":
            _write_geometry(pg, proj)
        pg.attrs["weight_exp"] = int(proj.weight_exp)


def _write_layer(g: h5py.Group, layer, out_shape: tuple, file_index: dict) -> None:
    g.attrs["name"] = layer.name
    if isinstance(layer, Flatten):
        _write_str(g, "type", "flatten")
        return
    kind = "conv" if isinstance(layer, Conv) else "dense"
    if layer.extra_inputs:
        _write_str(g, "type", "concat")  # stock netx refuses it (module docstring)
        _write_str(g, "layer_type", kind)
    else:
        _write_str(g, "type", kind)
    g.create_dataset("shape", data=np.asarray(out_shape, dtype=np.int64))
    g.create_dataset("weight", data=np.asarray(layer.weight, dtype=np.int32))
    if layer.bias is not None:
        g.create_dataset("bias", data=np.asarray(layer.bias, dtype=np.int32))
    if isinstance(layer, Conv):
        _write_geometry(g, layer)
    g.attrs["weight_exp"] = int(layer.weight_exp)
    _write_neuron(g, layer.neuron)
    if layer.extra_inputs:
        _write_extra_inputs(g, layer, file_index)


def write_net(net: Network, path: PathLike, provenance: Optional[dict] = None, *,
              steps_per_sample: Optional[int] = None) -> Path:
    """Write an integer IR to a netx HDF5 file, atomically; return the path.

    ``provenance`` (config, checkpoint sha256, quantization report, ...) is
    merged over ``net.metadata`` and stored as a JSON string attribute;
    :func:`read_net` returns it as the IR's ``metadata``. ``steps_per_sample``
    (T) is stored as the ``reset_interval`` a stock netx user needs.

    Raises :class:`LoihiRangeError` (an :class:`IRError`, naming the layer) for
    anything netx + Lava cannot run exactly as the IR says: every limit of
    :func:`hardware.ir.validate.project_limits` (a float IR, weight or bias
    outside the 8-bit / 13-bit ranges, a ``weight_exp`` other than 0 (netx picks
    the dense exponent itself and Lava's Conv ignores it), ``bias_exp`` other
    than 6, ...), dense weights netx would rescale inexactly (see module
    docstring), a Flatten whose input is not (C, H, W). A network with extra inputs
    (checked by the same ``validate_network``, delays included) is written in the
    residual graph format (module docstring).
    """
    validate_network(net, project_limits())
    _check_netx_representable(net)
    meta = {**(net.metadata or {}), **(provenance or {})}
    try:
        meta_json = json.dumps(meta, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise IRError(f"provenance/metadata is not JSON-serialisable: {e}") from None
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            _write_root(f, net, meta_json, steps_per_sample)
            layers = f.create_group("layer")
            g = layers.create_group("0")
            _write_str(g, "type", "input")
            g.create_dataset("shape", data=np.asarray(net.input.shape, dtype=np.int64))
            g.attrs["name"] = net.input.name
            if net.input.neuron is not None:
                _write_neuron(g, net.input.neuron)
            file_index = {layer.name: i for i, layer in enumerate(net.layers, start=1)
                          if isinstance(layer, (Conv, Dense))}
            for i, (layer, out_shape) in enumerate(zip(net.layers, net.shapes()), start=1):
                _write_layer(layers.create_group(str(i)), layer, out_shape, file_index)
    return path


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

    def stock_netx_attrs(self, input_bits: Optional[int]) -> None:
        """The stock-netx arguments the file states must agree with the network."""
        bits = self.attr_int(self.f, "input_message_bits", "input", 1, LOIHI2.graded_spike_max_bits)
        if bits is not None and bits != input_bits:
            raise self.fail(f"attribute input_message_bits = {bits} disagrees with "
                            f"input_bits = {input_bits}")
        interval = self.attr_int(self.f, "reset_interval", "input", 1)
        offset = self.attr_int(self.f, "reset_offset", "input", 0)
        if (interval is None) != (offset is None):
            raise self.fail("attributes reset_interval and reset_offset must come together")

    def ours_root(self) -> tuple:
        """(metadata, input_bits, version, readout) of a file this project wrote."""
        version = self.attr_text(self.f, "format_version", "root")
        if version != NETX_FORMAT_VERSION:
            raise self.fail(f"format version {version!r} is not supported "
                            f"(this reader reads version {NETX_FORMAT_VERSION})")
        input_bits = self.attr_int(self.f, "input_bits", "input")
        self.stock_netx_attrs(input_bits)
        return (self.provenance(), input_bits) + self.version_and_readout()

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
    """Read a netx HDF5 file into an integer IR (see module docstring).

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
