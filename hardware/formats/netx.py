"""Integer SNN IR <-> lava-dl netx HDF5 (``.net``) files: the writer, and the module to import
for both directions (:func:`read_net` and :func:`read_provenance` live in
:mod:`hardware.formats.netx_read`, the file layout and its constants in
:mod:`hardware.formats.netx_layout`).

:func:`write_net` writes a file stock ``lava.lib.dl.netx.hdf5.Network`` loads, atomically
(:func:`hardware.formats.files.atomic_path`), and refuses, naming the layer, what netx + Lava
would not compute exactly as the IR says; :func:`read_net` gives it back as an identical IR.

Readout: ``readout`` is one of :data:`hardware.ir.READOUTS`; files without it (IR 1.0, every
file written by others) read back as ``'spikes'``. A ``'potential'`` readout layer is stored as
an ordinary CUBA layer (``vThMant`` 131071, ``iDecay`` 4096, ``vDecay`` 0,
:func:`hardware.ir.readout_neuron`), so a ``cuba`` network with it still runs in stock netx;
only this project knows to read its membrane instead of its (never emitted) spikes.

Self-describing for stock netx users: the root also carries what stock ``netx.hdf5.Network``
needs and cannot find in the layers: ``input_message_bits`` (the graded input's bits; netx's
default 0 would silently turn it into binary spikes), ``reset_interval`` (steps per sample,
the T the file is made for, when the writer is told it; read back as ``metadata['timesteps']``), ``reset_offset`` (:func:`stock_reset_offset`), ``stock_netx_call``
(the exact call, only where :func:`stock_netx_runs`) and ``stock_netx_note`` (how to feed and
read the network, or why stock netx cannot). :func:`hardware.runtime.stock_netx.stock_network`
builds that network.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import h5py
import numpy as np

from hardware.errors import IRError, LoihiRangeError, NetxFormatError
from hardware.formats.files import atomic_path
from hardware.formats.netx_layout import (_MAX_EXTRA_INPUTS, _NETX_REF_DELAY, _SEQUENTIAL_IR_VERSIONS,
                                          GRAPH_FORMAT, GRAPH_VERSION, MAX_DATASET_ELEMENTS,
                                          MAX_TOTAL_ELEMENTS, NETX_FORMAT_VERSION, NEURON_TYPE_OF_KIND,
                                          PROJECT_NAME, STOCK_RESET_OFFSET, PathLike,
                                          netx_dense_effective, stock_reset_offset)
from hardware.formats.netx_read import read_net, read_provenance
from hardware.ir import READABLE_IR_VERSIONS, Conv, Dense, Flatten, Network, Neuron
from hardware.ir.validate import integer_scalar, project_limits, validate_network
from hardware.spec import LOIHI2

__all__ = [
    "NETX_FORMAT_VERSION", "PROJECT_NAME", "NEURON_TYPE_OF_KIND", "READABLE_IR_VERSIONS",
    "STOCK_RESET_OFFSET", "MAX_DATASET_ELEMENTS", "MAX_TOTAL_ELEMENTS",
    "GRAPH_FORMAT", "GRAPH_VERSION", "write_net", "read_net", "netx_dense_effective",
    "stock_reset_offset", "stock_netx_runs", "read_provenance",
]


# --------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------

def _dense_exact(weight: np.ndarray, layer: str) -> None:
    """Raise unless netx + Lava compute exactly ``W @ s`` for these weights: when
    ``W_eff == W << s`` (:func:`netx_dense_effective`), an integer times ``2**s`` shifted right
    by ``s`` is unchanged. That holds for every 8-bit matrix except an all-zero one and one
    without positive weights whose most negative weight is a negative power of two."""
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
    """``inputs/<k>/`` of a layer with extra inputs (:data:`GRAPH_FORMAT`)."""
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
        _write_str(g, "type", "concat")  # stock netx refuses it (see GRAPH_FORMAT)
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
    :func:`read_net` returns it as the IR's ``metadata``. ``steps_per_sample`` (T, the
    T the file is made for; default: the metadata's ``timesteps``) is stored as the
    ``reset_interval`` a stock netx user needs and as the provenance's ``timesteps``.

    Raises :class:`LoihiRangeError` (an :class:`IRError`, naming the layer) for
    anything netx + Lava cannot run exactly as the IR says: every limit of
    :func:`hardware.ir.validate.project_limits` (a float IR, weight or bias
    outside the 8-bit / 13-bit ranges, a ``weight_exp`` other than 0 (netx picks
    the dense exponent itself and Lava's Conv ignores it), ``bias_exp`` other
    than 6, ...), dense weights netx would rescale inexactly (:func:`_dense_exact`), a
    Flatten whose input is not (C, H, W). A network with extra inputs (checked by the same
    ``validate_network``, delays included) is written in the residual graph format
    (:data:`~hardware.formats.netx_layout.GRAPH_FORMAT`).
    """
    validate_network(net, project_limits())
    _check_netx_representable(net)
    meta = {**(net.metadata or {}), **(provenance or {})}
    if steps_per_sample is None:
        steps_per_sample = meta.get("timesteps")
    elif meta.get("timesteps", steps_per_sample) != steps_per_sample:
        raise IRError(f"steps_per_sample {steps_per_sample} disagrees with the provenance's timesteps "
                      f"{meta['timesteps']}: a file is made for one T")
    if steps_per_sample is not None:
        meta["timesteps"] = steps_per_sample
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
