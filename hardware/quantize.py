"""Float SNN IR -> Loihi 2 fixed-point SNN IR.

Per weighted layer l the quantizer picks one scale ``s_l`` (units of synaptic
input per float unit) and sets::

    W_int = round(s_l · W / x_max)        x_max = 2**input_bits − 1 for the first layer
                                          (its input is the graded pixel payload), else 1
    vth   = round(s_l · θ)                 threshold mantissa (compared as vth << 6)
    bias  = round(s_l · b)                 bias mantissa (applied as bias << 6, netx's exponent)

Rescaling W, θ and b of a layer together leaves its spike train unchanged in
exact arithmetic, so ``s_l`` is free; it is the largest value that

* uses the weight mantissa range fully:         s ≤ 127 / max|W/x_max|
* keeps the threshold in its 17-bit mantissa:   s ≤ 131071 / θ
* keeps the bias in its 13-bit mantissa:        s ≤ 4095 / max|b|
* cannot overflow the 24-bit u and v in one step: the worst-case synaptic input
  of any neuron (all positive or all negative weights active at full input),
  plus threshold and bias, stays below 2**17 (so ``<< 6`` fits in 24 bits),
  rounding included: s ≤ (131071 − ½·(fan_in·x_max + 2)) / (max_i Σ_j max(±W_ij, 0) + θ + max|b|).

The output layer of a potential readout (``net.readout == 'potential'``) is a
non-firing integrator: its threshold is the largest mantissa (it must never be
reached) and the scale instead keeps the accumulated membrane below it for every
T up to ``readout_steps``::

    |v[T]| ≤ T · (max_i Σ_j |W_ij·x_j| + max|b|) · 2**6 ≤ vth_max · 2**6 < 2**23
    =>  s ≤ 131071 / (readout_steps · (worst-case input + max|b|))      (rounding included)

so the neuron never spikes, v never clips and u never wraps. If that scale would
leave the readout weights fewer than :data:`MIN_READOUT_WEIGHT_BITS` signed bits,
the quantizer refuses (fewer steps, or fewer input bits, fit).

All limits come from :data:`hardware.spec.LOIHI2`. The report names, per layer,
the limit that set the scale and the quantization error of each quantity.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .errors import QuantizationError
from .ir import WEIGHTED, Conv, Dense, Flatten, Input, Network, Neuron, readout_neuron
from .spec import LOIHI2, Loihi2Spec
from .validate import check_input_bits, project_limits, validate_network

#: A potential-readout layer whose accumulation bound leaves its largest weight
#: fewer signed bits than this is refused rather than quantized to noise.
MIN_READOUT_WEIGHT_BITS = 4


@dataclass
class LayerQuantReport:
    name: str
    scale: float
    limited_by: str
    weight_bits_used: int
    weight_max_abs_error: float      # in float units (after dividing by the scale)
    weight_rms_rel_error: float      # rms error / max |W|
    threshold_float: float | None    # None for a potential-readout layer (never fires)
    threshold_mantissa: int
    threshold_rel_error: float
    bias_max_abs_error: float
    worst_case_input: int            # max |synaptic input| per step, in integer units
    readout_steps: int | None = None  # potential readout: T up to which |v| provably fits


def _worst_case_input(weight: np.ndarray) -> float:
    """max over neurons of max(Σ positive weights, Σ |negative weights|) for inputs in [0, 1]."""
    flat = weight.reshape(weight.shape[0], -1)
    return float(max(np.clip(flat, 0, None).sum(axis=1).max(initial=0.0),
                     np.clip(-flat, 0, None).sum(axis=1).max(initial=0.0)))


def quantize(net: Network, input_bits: int | None = None, spec: Loihi2Spec = LOIHI2,
             readout_steps: int | None = None) -> Network:
    """Quantize a float IR to the integer IR Loihi 2 (and Lava's fixed_pt models) execute.

    ``readout_steps``: for a potential readout, the largest T the network will be run
    for (the accumulated output is guaranteed to fit for every T up to it); required
    when ``net.readout == 'potential'``. The result is checked by
    :func:`hardware.validate.validate_network` (``project_limits``), whose
    :class:`LoihiRangeError` is a :class:`QuantizationError`.
    """
    input_bits = _check_arguments(net, input_bits, readout_steps, spec)
    readout_layer = net.weighted_layers[-1] if net.readout == "potential" else None
    layers, reports = [], []
    x_max = spec.input_max(input_bits)  # the first layer's input is the graded payload
    for layer in net.layers:
        if isinstance(layer, Flatten):
            layers.append(Flatten(name=layer.name))
            continue
        if not isinstance(layer, WEIGHTED):
            raise QuantizationError(f"layer {getattr(layer, 'name', layer)} has an unsupported type")
        weight = np.asarray(layer.weight, dtype=np.float64) / x_max
        bias = np.zeros(weight.shape[0]) if layer.bias is None else np.asarray(layer.bias, dtype=np.float64)
        if not np.all(np.isfinite(weight)) or not np.all(np.isfinite(bias)):
            raise QuantizationError(f"layer {layer.name}: weights or biases are not finite")
        if layer is readout_layer:
            q_layer, report = _quantize_readout(layer, weight, bias, x_max, readout_steps, spec)
        else:
            q_layer, report = _quantize_hidden(layer, weight, bias, x_max, spec)
        layers.append(q_layer)
        reports.append(report)
        x_max = 1  # later layers receive binary spikes
    metadata = dict(net.metadata)
    metadata["quantization"] = [asdict(r) for r in reports]
    q = Network(input=Input(shape=tuple(net.input.shape)), layers=layers, integer=True,
                input_bits=input_bits, metadata=metadata, readout=net.readout)
    validate_network(q, project_limits(spec), spec)
    return q


def _check_arguments(net: Network, input_bits, readout_steps, spec: Loihi2Spec) -> int:
    """The input bits to use; refuses what the quantizer cannot take."""
    if net.integer:
        raise QuantizationError("network is already in integer form")
    if net.input.neuron is not None:
        raise QuantizationError("input layers with neurons are not produced by this project's converter")
    bits = check_input_bits(spec.input_bits_default if input_bits is None else input_bits,
                            required=True, spec=spec)
    if net.readout == "potential" and (not isinstance(readout_steps, int)
                                       or isinstance(readout_steps, bool) or readout_steps < 1):
        raise QuantizationError(f"a potential readout needs readout_steps (the largest T it will run "
                                f"for) as a positive integer, got {readout_steps!r}")
    return bits


def _hidden_scale(layer, weight: np.ndarray, bias: np.ndarray, theta: float, x_max: int,
                  spec: Loihi2Spec) -> tuple[float, str]:
    """The largest scale every limit allows (module docstring) and the limit that set it."""
    w_abs = float(np.abs(weight).max(initial=0.0))
    b_abs = float(np.abs(bias).max(initial=0.0))
    worst = _worst_case_input(weight * x_max)  # input values in [0, 1] float units
    limits = {
        "weight range": spec.weight_max / w_abs if w_abs > 0 else math.inf,
        "threshold mantissa": spec.threshold_max / theta,
        "bias mantissa": spec.bias_max / b_abs if b_abs > 0 else math.inf,
        "24-bit state": spec.activation_max / (worst + theta + b_abs),
    }
    limited_by = min(limits, key=limits.get)
    if not math.isfinite(limits[limited_by]):
        raise QuantizationError(f"layer {layer.name}: no finite scale (all weights zero?)")
    return limits[limited_by], limited_by


def _quantize_hidden(layer, weight: np.ndarray, bias: np.ndarray, x_max: int, spec: Loihi2Spec):
    """One spiking layer (see the module docstring)."""
    theta = float(layer.neuron.threshold)
    if not math.isfinite(theta) or theta <= 0:
        raise QuantizationError(f"layer {layer.name}: threshold θ = {theta} must be a positive number")
    scale, limited_by = _hidden_scale(layer, weight, bias, theta, x_max, spec)
    w_int, b_int, vth, worst_int = _round(weight, bias, theta, scale, x_max)
    # Rounding can push the worst case past the 24-bit limit (up to half a unit per weight,
    # times the input's maximum): shrink the scale until the rounded network fits.
    for _ in range(50):
        total = worst_int + vth + int(np.abs(b_int).max(initial=0))
        if total <= spec.activation_max:
            break
        scale *= spec.activation_max / total * (1 - 1e-6)
        limited_by = "24-bit state"
        w_int, b_int, vth, worst_int = _round(weight, bias, theta, scale, x_max)
    else:
        raise QuantizationError(f"layer {layer.name}: worst-case synaptic input {worst_int} "
                                f"+ threshold {vth} exceeds {spec.activation_max} at every scale")
    if vth < 1:
        raise QuantizationError(f"layer {layer.name}: threshold θ = {theta:.3g} rounds to mantissa "
                                f"{vth} at scale {scale:.3g} (set by the {limited_by}); Loihi 2 "
                                f"needs a threshold mantissa of at least 1")
    neuron = Neuron(kind=layer.neuron.kind, threshold=vth, du=layer.neuron.du, dv=layer.neuron.dv,
                    bias_exp=spec.netx_bias_exp)
    w_abs = float(np.abs(weight).max(initial=0.0))
    w_err = w_int / scale - weight
    report = LayerQuantReport(
        name=layer.name, scale=float(scale), limited_by=limited_by,
        weight_bits_used=int(np.ceil(np.log2(np.abs(w_int).max(initial=0) + 1))) + 1,
        weight_max_abs_error=float(np.abs(w_err).max(initial=0.0) * x_max),
        weight_rms_rel_error=float(np.sqrt(np.mean(w_err ** 2)) / w_abs) if w_abs else 0.0,
        threshold_float=theta, threshold_mantissa=vth,
        threshold_rel_error=abs(vth / scale - theta) / theta,
        bias_max_abs_error=float(np.abs(b_int / scale - bias).max(initial=0.0)),
        worst_case_input=worst_int)
    return _integer_layer(layer, w_int, b_int, neuron), report


def _quantize_readout(layer, weight: np.ndarray, bias: np.ndarray, x_max: int, steps: int,
                      spec: Loihi2Spec):
    """The non-firing output integrator (see the module docstring)."""
    w_abs = float(np.abs(weight).max(initial=0.0))
    if w_abs == 0:
        raise QuantizationError(f"layer {layer.name}: all readout weights are zero")
    b_abs = float(np.abs(bias).max(initial=0.0))
    worst = _worst_case_input(weight * x_max)
    limits = {
        "weight range": spec.weight_max / w_abs,
        "bias mantissa": spec.bias_max / b_abs if b_abs > 0 else math.inf,
        f"readout accumulation over T={steps}": spec.threshold_max / (steps * (worst + b_abs)),
    }
    limited_by = min(limits, key=limits.get)
    scale = limits[limited_by]
    if not math.isfinite(scale):
        raise QuantizationError(f"layer {layer.name}: no finite scale (weights of magnitude {w_abs:.3g} "
                                f"are too small to represent)")
    w_int, b_int, _, worst_int = _round(weight, bias, 0.0, scale, x_max)
    for _ in range(50):  # rounding may add up to half a unit per weight: shrink until it fits
        total = steps * (worst_int + int(np.abs(b_int).max(initial=0)))
        if total <= spec.threshold_max:
            break
        scale *= spec.threshold_max / total * (1 - 1e-6)
        limited_by = f"readout accumulation over T={steps}"
        w_int, b_int, _, worst_int = _round(weight, bias, 0.0, scale, x_max)
    else:  # pragma: no cover - the loop converges for any finite input
        raise QuantizationError(f"layer {layer.name}: no scale keeps the readout inside the threshold")
    w_max = int(np.abs(w_int).max(initial=0))
    if w_max < 1 << (MIN_READOUT_WEIGHT_BITS - 1):
        raise QuantizationError(
            f"layer {layer.name}: to keep the accumulated output of the readout inside Loihi 2's "
            f"24-bit membrane for T up to {steps}, its weights would shrink to at most ±{w_max} "
            f"(fewer than {MIN_READOUT_WEIGHT_BITS} signed bits); use fewer time steps "
            f"(eval.timesteps) or fewer input bits")
    neuron = readout_neuron(integer=True)
    q_layer = _integer_layer(layer, w_int, b_int, neuron)
    w_err = w_int / scale - weight
    report = LayerQuantReport(
        name=layer.name, scale=float(scale), limited_by=limited_by,
        weight_bits_used=int(np.ceil(np.log2(w_max + 1))) + 1,
        weight_max_abs_error=float(np.abs(w_err).max(initial=0.0) * x_max),
        weight_rms_rel_error=float(np.sqrt(np.mean(w_err ** 2)) / w_abs),
        threshold_float=None, threshold_mantissa=int(neuron.threshold), threshold_rel_error=0.0,
        bias_max_abs_error=float(np.abs(b_int / scale - bias).max(initial=0.0)),
        worst_case_input=worst_int, readout_steps=int(steps))
    return q_layer, report


def _integer_layer(layer, w_int: np.ndarray, b_int: np.ndarray, neuron: Neuron):
    """The integer counterpart of a float Conv/Dense layer (same geometry, weight_exp 0)."""
    if isinstance(layer, Conv):
        return Conv(weight=w_int, bias=b_int, neuron=neuron, stride=tuple(layer.stride),
                    padding=tuple(layer.padding), dilation=tuple(layer.dilation), groups=layer.groups,
                    weight_exp=0, name=layer.name)
    return Dense(weight=w_int, bias=b_int, neuron=neuron, weight_exp=0, name=layer.name)


def _round(weight: np.ndarray, bias: np.ndarray, theta: float, scale: float, x_max: int):
    """Integer weights, biases, threshold at ``scale`` and the worst-case synaptic input."""
    w_int = np.rint(weight * scale).astype(np.int64)
    b_int = np.rint(bias * scale).astype(np.int64)
    vth = int(np.rint(theta * scale))
    return w_int, b_int, vth, int(round(_worst_case_input(w_int * x_max)))
