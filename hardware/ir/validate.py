"""The one validator of integer SNN networks against Loihi 2's limits.

:func:`validate_network` checks an integer :class:`hardware.ir.Network` against the one
spec object (:data:`hardware.spec.LOIHI2`); every violation is a
:class:`hardware.errors.LoihiRangeError` naming the layer (for an extra input also its
source: ``layer c2, extra input from 'c0': ...``), the field, the value and the limit.
The quantizer, the netx writer and reader, the Lava builder and the reference simulator
all call it.

Checked on every layer and every extra input (:class:`hardware.ir.Projection`):
integrality (bool, complex, non-numeric values and fractional floats are errors, never
truncated), weight and weight-exponent ranges, bias mantissa and exponent, threshold
mantissa (≥ 1), decays, input bits and shape, conv geometry (stride and dilation ≥ 1,
padding ≥ 0, groups dividing the channels, the kernel fitting the padded input), shapes
from layer to layer, the potential readout's integrator, and each projection's extra
delay (:meth:`hardware.ir.Network.extra_delay`) against Loihi 2's delayed synapses.

Three sets of :class:`Limits`, for three kinds of consumer:

* :func:`project_limits`: what this project quantizes, writes and builds in Lava.
* :func:`netx_limits`: what stock netx + Lava's fixed_pt models run (files written by
  others: netx's rescaled dense weights and its default neuron, du = -1, dv = 4096).
* :func:`simulator_limits`: :func:`netx_limits` with any bias exponent Lava's LIF takes.

Lava's Conv ignores a weight exponent, so a conv synapse's is 0 in every set.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from hardware.errors import IRError, LoihiRangeError
from hardware.ir import (PROJECTION_KINDS, WEIGHTED, Conv, Dense, Flatten, Network, Neuron,
                         Projection, conv_output_size, readout_neuron)
from hardware.spec import LOIHI2, Loihi2Spec

__all__ = ["Limits", "project_limits", "netx_limits", "simulator_limits", "validate_network",
           "integer_array", "integer_scalar", "check_neuron", "check_input_bits",
           "check_conv_geometry"]

Range = tuple  # (low, high), both inclusive


@dataclass(frozen=True)
class Limits:
    """Inclusive ranges one consumer of integer networks accepts (see module docstring)."""

    name: str
    weight: Range
    weight_exp: Range
    bias: Range
    bias_exp: Range
    threshold: Range
    du: Range
    dv: Range
    input_bits_required: bool
    #: extra synaptic delay of an extra input (None as high: any)
    extra_delay: Range = (0, None)


def project_limits(spec: Loihi2Spec = LOIHI2) -> Limits:
    return Limits(name="this project's Loihi 2 networks",
                  weight=(spec.weight_min, spec.weight_max), weight_exp=(0, 0),
                  bias=(spec.bias_min, spec.bias_max),
                  bias_exp=(spec.netx_bias_exp, spec.netx_bias_exp),
                  threshold=(1, spec.threshold_max), du=(0, spec.decay_max),
                  dv=(0, spec.decay_max), input_bits_required=True,
                  extra_delay=(0, spec.synaptic_delay_max))


def netx_limits(spec: Loihi2Spec = LOIHI2) -> Limits:
    return Limits(name="netx + Lava fixed_pt",
                  weight=(spec.weight_clip_min, spec.weight_clip_max),
                  weight_exp=(spec.weight_exp_min, spec.weight_exp_max),
                  bias=(spec.bias_min, spec.bias_max),
                  bias_exp=(spec.netx_bias_exp, spec.netx_bias_exp),
                  threshold=(1, spec.netx_threshold_max), du=(spec.netx_du_min, spec.decay_max),
                  dv=(0, spec.netx_dv_max), input_bits_required=False,
                  extra_delay=(0, spec.synaptic_delay_max))


def simulator_limits(spec: Loihi2Spec = LOIHI2) -> Limits:
    base = netx_limits(spec)
    return Limits(**{**base.__dict__, "name": "the reference simulator",
                     "bias_exp": (0, spec.bias_exp_max), "extra_delay": (0, None)})


# --------------------------------------------------------------------------
# values
# --------------------------------------------------------------------------

def _fail(layer: str, msg: str) -> LoihiRangeError:
    return LoihiRangeError(f"layer {layer}: {msg}")


def integer_array(values: Any, layer: str, field: str, low: Optional[int] = None,
                  high: Optional[int] = None) -> np.ndarray:
    """``values`` as int64 if they are all integers in [low, high]; else LoihiRangeError.

    Bool, complex, string and object values, NaN/inf and floats with a fractional
    part are refused (never truncated); ``None`` bounds are not checked."""
    a = np.asarray(values)
    if a.dtype.kind not in "iuf":
        raise _fail(layer, f"{field} must be integers, got {a.dtype} values")
    if a.size == 0:
        return a.astype(np.int64)
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a)
        if not bad.any():
            bad = a != np.floor(a)
        if bad.any():
            raise _fail(layer, f"{field} must be integers, found {a[bad].flat[0]!r}")
    lo_v, hi_v = int(a.min()), int(a.max())
    for v, out in ((lo_v, low is not None and lo_v < low), (hi_v, high is not None and hi_v > high)):
        if out:
            raise _fail(layer, f"{field} value {v} outside [{low}, {high}]")
    return a.astype(np.int64)


def integer_scalar(value: Any, layer: str, field: str, low: Optional[int] = None,
                   high: Optional[int] = None) -> int:
    """One integer in [low, high] (see :func:`integer_array`)."""
    a = np.asarray(value)
    if a.size != 1:
        raise _fail(layer, f"{field} must be one integer, got shape {a.shape}")
    return int(integer_array(a.reshape(()), layer, field, low, high))


def check_input_bits(bits: Any, required: bool, spec: Loihi2Spec = LOIHI2) -> Optional[int]:
    """The graded input's payload bits, 1 .. ``graded_spike_max_bits`` (None allowed
    only for networks whose input layer has neurons or that come from other tools)."""
    if bits is None:
        if required:
            raise LoihiRangeError(f"layer input: input_bits is missing (graded input spikes "
                                  f"need 1..{spec.graded_spike_max_bits} bits)")
        return None
    return integer_scalar(bits, "input", "input_bits", 1, spec.graded_spike_max_bits)


def check_neuron(neuron: Neuron, layer: str, limits: Limits) -> None:
    """Threshold mantissa, decays and bias exponent of one layer's neurons."""
    integer_scalar(neuron.threshold, layer, "threshold (vThMant)", *limits.threshold)
    integer_scalar(neuron.du, layer, "du", *limits.du)
    integer_scalar(neuron.dv, layer, "dv", *limits.dv)
    integer_scalar(neuron.bias_exp, layer, "bias_exp", *limits.bias_exp)


# --------------------------------------------------------------------------
# layers and shapes
# --------------------------------------------------------------------------

def check_conv_geometry(layer: Conv, in_shape: tuple) -> tuple:
    """Stride/padding/dilation/groups and the output shape of a conv on ``in_shape``."""
    name = layer.name
    if np.ndim(layer.weight) != 4:
        raise _fail(name, f"conv weight must be 4-D (out, in/groups, kh, kw), got shape "
                          f"{np.shape(layer.weight)}")
    pairs = {}
    for field, low in (("stride", 1), ("padding", 0), ("dilation", 1)):
        v = np.asarray(getattr(layer, field))
        if v.shape != (2,):
            raise _fail(name, f"{field} must be two integers (h, w), got {v.tolist()}")
        pairs[field] = tuple(integer_scalar(x, name, field, low) for x in v)
    groups = integer_scalar(layer.groups, name, "groups", 1)
    out_c, in_per_group, kh, kw = np.shape(layer.weight)
    if len(in_shape) != 3:
        raise _fail(name, f"conv needs a (C, H, W) input, got {in_shape}")
    if out_c % groups or in_shape[0] != in_per_group * groups:
        raise _fail(name, f"groups {groups} do not fit {in_shape[0]} input and {out_c} output "
                          f"channels with weight shape {np.shape(layer.weight)}")
    out = [out_c]
    for size, k, stride, pad, dil in zip(in_shape[1:], (kh, kw), pairs["stride"],
                                         pairs["padding"], pairs["dilation"]):
        n = conv_output_size(size, k, stride, pad, dil)
        if k < 1 or n < 1:
            raise _fail(name, f"kernel {k} with dilation {dil} does not fit the padded input "
                              f"size {size + 2 * pad}")
        out.append(n)
    return tuple(out)


def _check_bias(layer, n_out: int, limits: Limits) -> None:
    if layer.bias is None:
        return
    b = integer_array(layer.bias, layer.name, "bias", *limits.bias)
    if b.shape != (n_out,):
        raise _fail(layer.name, f"bias shape {b.shape} is not ({n_out},) (one per output channel)")


def _check_synapse(syn, in_shape: tuple, limits: Limits) -> tuple:
    """Weights, exponent and geometry of one conv/dense synapse (``syn.name`` names it in
    errors); its output shape."""
    name = syn.name
    integer_array(syn.weight, name, "weight", *limits.weight)
    exp_range = (0, 0) if isinstance(syn, Conv) else limits.weight_exp
    integer_scalar(syn.weight_exp, name, "weight_exp", *exp_range)
    if isinstance(syn, Conv):
        return check_conv_geometry(syn, in_shape)
    if np.ndim(syn.weight) != 2:
        raise _fail(name, f"dense weight must be 2-D (out, in), got shape {np.shape(syn.weight)}")
    if len(in_shape) != 1 or in_shape[0] != np.shape(syn.weight)[1]:
        raise _fail(name, f"input shape {in_shape} does not match weight shape "
                          f"{np.shape(syn.weight)}")
    return (np.shape(syn.weight)[0],)


def _check_weighted(layer, in_shape: tuple, limits: Limits) -> tuple:
    """Weights, exponent, bias and neurons of one Conv/Dense layer; its output shape."""
    out = _check_synapse(layer, in_shape, limits)
    _check_bias(layer, out[0], limits)
    check_neuron(layer.neuron, layer.name, limits)
    return out


def _check_extra_inputs(net: Network, layer, out_shape: tuple, earlier: dict,
                        limits: Limits) -> None:
    """Every projection of ``layer`` (module docstring); ``earlier``: output shape of
    every conv/dense layer before it, by name."""
    extra = getattr(layer, "extra_inputs", ())
    if not isinstance(extra, (tuple, list)):
        raise _fail(layer.name, f"extra_inputs must be a tuple of Projections, got "
                                f"{type(extra).__name__}")
    for k, proj in enumerate(extra):
        if not isinstance(proj, Projection):
            raise _fail(layer.name, f"extra input {k} is a {type(proj).__name__}, not a Projection")
        where = f"{layer.name}, extra input from {proj.source!r}"
        if proj.source not in earlier:
            raise _fail(where, "the source is not a conv/dense layer listed before this layer")
        if proj.kind not in PROJECTION_KINDS:
            raise _fail(where, f"kind {proj.kind!r} is not one of {PROJECTION_KINDS}")
        src_shape = earlier[proj.source]
        if proj.kind == "dense":
            src_shape = (int(np.prod(src_shape)),)  # the source read flattened in C order
        got = _check_synapse(proj.synapse(where), src_shape, limits)
        if tuple(got) != tuple(out_shape):
            raise _fail(where, f"the projection outputs {tuple(got)}, the layer outputs "
                               f"{tuple(out_shape)}")
        integer_scalar(net.extra_delay(layer, proj), where, "extra synaptic delay (steps)",
                       *limits.extra_delay)


def _check_input(net: Network, limits: Limits, spec: Loihi2Spec) -> tuple:
    shape = np.asarray(net.input.shape)
    if shape.ndim != 1 or shape.size not in (1, 3):
        raise _fail(net.input.name, f"input shape must be (N,) or (C, H, W), got {shape.tolist()}")
    shape = tuple(integer_scalar(s, net.input.name, "input shape", 1) for s in shape)
    if net.input.neuron is not None:
        check_neuron(net.input.neuron, net.input.name, limits)
    check_input_bits(net.input_bits, limits.input_bits_required and net.input.neuron is None, spec)
    return shape


def _check_readout(net: Network) -> None:
    if net.readout != "potential":
        return
    last = net.layers[-1] if net.layers else None
    if not isinstance(last, WEIGHTED):
        raise LoihiRangeError("readout 'potential' needs a network that ends with a conv/dense layer")
    want = readout_neuron(integer=True)
    if last.neuron != want:
        raise _fail(last.name, f"a potential readout layer must be the non-firing integrator "
                               f"{want}, got {last.neuron}")


def validate_network(net: Network, limits: Optional[Limits] = None,
                     spec: Loihi2Spec = LOIHI2) -> None:
    """Raise :class:`LoihiRangeError` unless ``net`` is an integer network within ``limits``
    (default :func:`project_limits`) at every layer."""
    limits = project_limits(spec) if limits is None else limits
    if not net.integer:
        raise LoihiRangeError("the network is not an integer IR (quantize it first)")
    shape = _check_input(net, limits, spec)
    if not any(isinstance(layer, WEIGHTED) for layer in net.layers):
        raise LoihiRangeError("the network has no conv/dense layer")
    earlier: dict = {}  # conv/dense layer name -> output shape (sources of extra inputs)
    for layer in net.layers:
        if isinstance(layer, Flatten):
            shape = (int(np.prod(shape)),)
        elif isinstance(layer, (Conv, Dense)):
            shape = _check_weighted(layer, shape, limits)
            _check_extra_inputs(net, layer, shape, earlier, limits)
            earlier.setdefault(layer.name, shape)  # (a repeated name: net.shapes() below)
        else:
            raise LoihiRangeError(f"layer {getattr(layer, 'name', '?')}: unknown layer type "
                                  f"{type(layer).__name__}")
    _check_readout(net)
    try:
        net.shapes()  # the IR's own shape rules agree with the checks above
    except IRError as e:
        raise LoihiRangeError(str(e)) from None
