"""Float SNN IR -> Loihi 2 fixed-point SNN IR (:func:`quantize`).

Per weighted layer l the quantizer picks one scale ``s_l`` (units of synaptic
input per float unit) and sets::

    W_int = round(s_l · W / x_max)        x_max = 2**input_bits − 1 for the first layer
                                          (its input is the graded pixel payload), else 1
    P_int = round(s_l · P)                 every extra input (ir.Projection) of the layer
    vth   = round(s_l · θ)                 threshold mantissa (compared as vth << 6)
    bias  = round(s_l · b)                 bias mantissa (applied as bias << 6, netx's exponent)

(``W`` and ``P`` are the float weights times ``2**weight_exp``; the integer synapses all
have weight exponent 0.) Rescaling every synapse, θ and b of a layer together leaves its
spike train unchanged in exact arithmetic, so ``s_l`` is free; it is the largest value that
uses the weight mantissa range (8 bits), keeps θ and b in their mantissas (17 and 13 bits)
and keeps u and v inside 24 bits at every step up to T = ``readout_steps``, rounding
included (the exact worst-case iteration: :func:`_state_extremes`). A layer with extra
inputs has one scale over the sum of its inputs (:class:`_Synapses`); the readout of a
potential readout is a non-firing integrator with its own bound (:func:`_quantize_readout`).
If θ rounds to mantissa 0 at the scale that fits, the layer is refused.

All limits come from :data:`hardware.spec.LOIHI2`. The report (:class:`LayerQuantReport`)
names, per layer, the limit that set the scale (``limited_by``), the quantization errors,
the worst-case input, the T its u/v bounds cover (``state_steps``, ``state_bounds``) and per
extra input its own errors and worst case.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from hardware.fixed_point import dynamics
from hardware.errors import QuantizationError
from hardware.ir import (WEIGHTED, Conv, Dense, Flatten, Input, Network, Neuron, Projection,
                 readout_neuron)
from hardware.spec import LOIHI2, Loihi2Spec
from hardware.ir.validate import check_input_bits, project_limits, validate_network

#: A potential-readout layer whose accumulation bound leaves its largest weight
#: fewer signed bits than this is refused rather than quantized to noise.
MIN_READOUT_WEIGHT_BITS = 4
#: Each retry of a scale that rounding pushed past its limit shrinks it by at least this
#: much: a purely proportional shrink (limit / total) stalls when the rounded total is one
#: unit over, since a step of ~1e-5 moves no weight's rounding however often it repeats.
MIN_SCALE_SHRINK = 1e-3
#: Retries before a layer is refused (100 × 0.1 % covers a rounding excess near 10 %).
RESCALE_RETRIES = 100

#: ``limited_by`` suffix of a sum bound of a layer with extra inputs.
SUM_OF_INPUTS = " (sum of all inputs)"


@dataclass
class LayerQuantReport:
    """How one layer was quantized (an entry of the .net provenance's and report.json's
    ``quantization`` list, as its ``asdict`` form)."""

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
    worst_case_input: int            # max |synaptic input| per step over ALL inputs, integer units
    readout_steps: int | None = None  # potential readout: T up to which |v| provably fits
    #: T up to which u and v provably neither wrap nor clip, and their extremes over it
    #: (exact integers, 24-bit register units: u_max ≥ |u|, v_min ≤ v ≤ v_max)
    state_steps: int = 1
    state_bounds: dict = field(default_factory=dict)
    #: one entry per extra input (projection): source, weight_bits_used, weight errors
    #: (as for the main weights) and its own worst-case input (integer units)
    extra_inputs: list = field(default_factory=list)


@dataclass
class _Synapses:
    """Float weights of every synapse of one receiving layer, for inputs in [0, 1]:
    ``main`` = W·2**e / x_max, ``extra`` = [P_k·2**e_k] (binary spikes, x_max 1).

    A neuron's synaptic input is the SUM of what all of its synapses deliver in one step
    (Lava adds everything that arrives at one InPort), so there is ONE scale per receiving
    layer, and the worst case is taken over that sum, per output neuron (dense) or output
    channel (conv)::

        worst = max_o max( Σ_syn Σ_j max(+W^syn_oj·x^syn_max, 0),  Σ_syn Σ_j max(−W^syn_oj·x^syn_max, 0) )

    Each branch may fit alone while the sum does not; then the 24-bit limit binds
    (``limited_by`` says "sum of all inputs") or, when even that scale rounds θ to 0, the
    layer is refused."""

    main: np.ndarray
    x_max: int
    extra: list
    projections: tuple  # the float ir.Projection objects, in the same order

    def worst(self) -> float:
        """Worst-case |synaptic input| of the sum, in float units."""
        return _worst_case_input([self.main * self.x_max] + self.extra)

    def pos_neg(self) -> tuple:
        """(largest positive, largest negative) synaptic input of the sum, float units."""
        return _pos_neg([self.main * self.x_max] + self.extra)

    def max_abs(self) -> float:
        return max([float(np.abs(w).max(initial=0.0)) for w in [self.main] + self.extra])

    def branch_worst(self) -> list:
        """(label, worst case) per synapse, float units, for error messages."""
        return ([("main", _worst_case_input([self.main * self.x_max]))]
                + [(f"from {p.source!r}", _worst_case_input([w]))
                   for p, w in zip(self.projections, self.extra)])


def _pos_neg(weights: list) -> tuple:
    """(max over output rows of Σ positive weights, max over rows of Σ |negative weights|),
    summed over every synapse in ``weights`` (each (out, ...), scaled to its largest input);
    integers for integer weights."""
    pos = neg = 0
    for w in weights:
        flat = np.asarray(w).reshape(w.shape[0], -1)
        pos = pos + np.clip(flat, 0, None).sum(axis=1)
        neg = neg + np.clip(-flat, 0, None).sum(axis=1)
    return np.max(pos, initial=0).item(), np.max(neg, initial=0).item()


def _worst_case_input(weights: list) -> float:
    """max over output rows of max(Σ positive weights, Σ |negative weights|) (:func:`_pos_neg`)."""
    return float(max(_pos_neg(weights)))


def quantize(net: Network, input_bits: int | None = None, spec: Loihi2Spec = LOIHI2,
             readout_steps: int | None = None) -> Network:
    """Quantize a float IR to the integer IR Loihi 2 (and Lava's fixed_pt models) execute.

    ``readout_steps``: the largest T the network will be run for (u and v are reset every
    T steps: per sample in the simulator, ``reset_interval = T`` in Lava). Every layer's u
    and v, and a potential readout's accumulated output, are guaranteed to neither wrap
    nor clip for every T up to it; required when ``net.readout == 'potential'``; without
    it the bound covers one step only. The result is checked by
    :func:`hardware.ir.validate.validate_network` (``project_limits``), whose
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
        syn = _synapses(layer, x_max)
        bias = np.zeros(syn.main.shape[0]) if layer.bias is None else np.asarray(layer.bias, dtype=np.float64)
        if not np.all(np.isfinite(bias)):
            raise QuantizationError(f"layer {layer.name}: weights or biases are not finite")
        if layer is readout_layer:
            q_layer, report = _quantize_readout(layer, syn, bias, readout_steps, spec)
        else:
            q_layer, report = _quantize_hidden(layer, syn, bias, readout_steps or 1, spec)
        layers.append(q_layer)
        reports.append(report)
        x_max = 1  # later layers receive binary spikes
    metadata = dict(net.metadata)
    metadata["quantization"] = [asdict(r) for r in reports]
    q = Network(input=Input(shape=tuple(net.input.shape)), layers=layers, integer=True,
                input_bits=input_bits, metadata=metadata, readout=net.readout)
    validate_network(q, project_limits(spec), spec)
    return q


def check_state_bounds(net: Network, steps: int, spec: Loihi2Spec = LOIHI2) -> None:
    """Raise :class:`QuantizationError` (naming the layer) unless the integer ``net`` keeps what
    :func:`quantize` guarantees for its ``readout_steps`` at ``steps``: every layer's u and v
    inside 24 bits at every step up to it (the exact worst case, :func:`_state_extremes`) and a
    potential readout's membrane at or below its threshold. For running a file at a T other
    than the one it was quantized for."""
    if not net.integer:
        raise QuantizationError("the state bounds are checked on an integer network")
    readout = net.weighted_layers[-1] if net.readout == "potential" else None
    x_max = spec.input_max(net.input_bits)
    for layer in net.weighted_layers:
        if layer.weight_exp or any(p.weight_exp for p in layer.extra_inputs):
            raise QuantizationError(f"layer {layer.name}: weight_exp is not 0; the state bounds are "
                                    f"checked for this project's files only")
        w = np.asarray(layer.weight, dtype=np.int64)
        p_ints = [np.asarray(p.weight, dtype=np.int64) for p in layer.extra_inputs]
        b = np.zeros(w.shape[0], np.int64) if layer.bias is None else np.asarray(layer.bias, np.int64)
        vth = int(layer.neuron.threshold)
        ext = _integer_extremes(w, p_ints, x_max, b, layer.neuron, vth, steps, spec)
        peak = _peak(ext)
        if layer is readout:
            worst = steps * (max(_pos_neg([w * x_max] + p_ints)) + int(np.abs(b).max(initial=0)))
            peak, limit, what = max(worst << spec.threshold_shift, peak), dynamics.theta(vth, spec), \
                "its threshold (it would fire)"
        else:
            limit, what = spec.state_abs_max, "the 24-bit state"
        if peak > limit:
            raise QuantizationError(f"layer {layer.name}: over T = {steps} steps its worst-case u or v "
                                    f"reaches {peak}, beyond {what} ({limit})")
        x_max = 1  # later layers receive binary spikes


def _float_weight(weight, weight_exp, what: str) -> np.ndarray:
    """W · 2**weight_exp as float64 (the float IR's synapse, see hardware.simulator)."""
    w = np.asarray(weight, dtype=np.float64) * 2.0 ** int(weight_exp)
    if not np.all(np.isfinite(w)):
        raise QuantizationError(f"{what}: weights or biases are not finite")
    return w


def _synapses(layer, x_max: int) -> _Synapses:
    extra, projections = [], tuple(getattr(layer, "extra_inputs", ()))
    for proj in projections:
        if not isinstance(proj, Projection):
            raise QuantizationError(f"layer {layer.name}: an extra input is a "
                                    f"{type(proj).__name__}, not a Projection")
        extra.append(_float_weight(proj.weight, proj.weight_exp,
                                   f"layer {layer.name}, extra input from {proj.source!r}"))
    main = _float_weight(layer.weight, layer.weight_exp, f"layer {layer.name}") / x_max
    return _Synapses(main=main, x_max=x_max, extra=extra, projections=projections)


def _check_arguments(net: Network, input_bits, readout_steps, spec: Loihi2Spec) -> int:
    """The input bits to use; refuses what the quantizer cannot take."""
    if net.integer:
        raise QuantizationError("network is already in integer form")
    if net.input.neuron is not None:
        raise QuantizationError("input layers with neurons are not produced by this project's converter")
    bits = check_input_bits(spec.input_bits_default if input_bits is None else input_bits,
                            required=True, spec=spec)
    if (net.readout == "potential" or readout_steps is not None) and (
            not isinstance(readout_steps, int) or isinstance(readout_steps, bool)
            or readout_steps < 1):
        raise QuantizationError(f"readout_steps (the largest T the network will run for; required "
                                f"for a potential readout) must be a positive integer, got "
                                f"{readout_steps!r}")
    return bits


def _weight_limits(syn: _Synapses, spec: Loihi2Spec) -> dict:
    """One weight-range limit per synapse (the main one named as before)."""
    limits = {}
    for label, w in [("weight range", syn.main)] + [
            (f"weight range of the extra input from {p.source!r}", w)
            for p, w in zip(syn.projections, syn.extra)]:
        w_abs = float(np.abs(w).max(initial=0.0))
        limits[label] = spec.weight_max / w_abs if w_abs > 0 else math.inf
    return limits


def _state_label(syn: _Synapses, label: str) -> str:
    return label + (SUM_OF_INPUTS if syn.extra else "")


@dataclass(frozen=True)
class _Drive:
    """A layer's worst case per step in one unit (float units at scale 1, or the 24-bit
    register): the largest positive and negative synaptic input (a_pos, a_neg ≥ 0, for u)
    and bias (b_pos, b_neg ≥ 0) of any neuron, the threshold θ and the initial membrane v0."""

    a_pos: float
    a_neg: float
    b_pos: float
    b_neg: float
    theta: float
    v0: float


def _float_decay(x: float, d: int, spec: Loihi2Spec) -> float:
    """x·(4096 − d)/4096 unrounded: |x| bounds the integer decay's magnitude (:func:`_state_extremes`)."""
    return x * (spec.decay_unity - d) / spec.decay_unity


def _exact_decay(x: int, d: int, spec: Loihi2Spec) -> int:
    if d == 0:  # (x·4096) >> 12 = x: no numpy call on the common no-leak path
        return x
    if d == spec.decay_unity:
        return 0
    return int(dynamics.decay(x, d, spec))


def _capped(v: float, kind: str, theta: float) -> float:
    """Largest membrane after the spike/reset of a step whose v was at most ``v``."""
    if kind == "if_soft":  # v < θ stays; v ≥ θ becomes v − θ
        return min(v, max(theta, v - theta))
    return min(v, theta)  # cuba: v ≤ θ stays, v > θ becomes 0


def _state_extremes(drive: _Drive, neuron: Neuron, steps: int, decay, cap: float,
                    spec: Loihi2Spec) -> dict:
    """max u, max v and min v over steps 1..``steps`` under any input the drive allows.

    A decaying current (du < 4095) accumulates towards a·4096/(du+1); a voltage under
    sustained negative drive falls without bound for dv = 0 and towards −(a + b)·4096/dv for
    dv > 0; positive v is capped by the spike. With A± the largest positive/negative input
    of one step (<< 6), B± = max(±b, 0) << 6, θ = vth << 6 and the decay D_d (``decay``:
    :func:`hardware.fixed_point.dynamics.decay` in integers, its unrounded bound
    |y|·(4096 − d)/4096 in float units), the worst case is iterated::

        u⁺_t = D_{du+1}(u⁺_{t−1}) + A⁺            u⁻_t = D_{du+1}(u⁻_{t−1}) + A⁻     (u_0 = 0)
        V⁺_t = D_dv(r⁺_{t−1}) + u⁺_t + B⁺         V⁻_t = D_dv(r⁻_{t−1}) − u⁻_t − B⁻  (r_0 = v0)
        r⁺_t = min(V⁺_t, θ) (cuba)  or  min(V⁺_t, max(θ, V⁺_t − θ)) (if_soft);   r⁻_t = min(V⁻_t, 0)

    Every map is monotone, so −u⁻_t ≤ u_t ≤ u⁺_t and V⁻_t ≤ v_t ≤ V⁺_t for any input within
    one step's worst case, and the iterates are themselves monotone; the layer needs
    max_t max(u⁺_t, u⁻_t, V⁺_t, −V⁻_t) ≤ 2**23 − 1 (no u wrap, no v clip). Stops at the
    fixed point or as soon as a value passes ``cap``."""
    du = int(neuron.du) + spec.current_decay_offset
    dv = int(neuron.dv) + spec.voltage_decay_offset
    u_hi = u_lo = 0  # u_lo: magnitude of the most negative u
    r_hi = r_lo = drive.v0  # membrane after the spike/reset
    ext = {"u_max": 0, "v_max": 0, "v_min": 0}
    for _ in range(steps):
        u_hi_next = decay(u_hi, du, spec) + drive.a_pos
        u_lo_next = decay(u_lo, du, spec) + drive.a_neg
        v_hi = decay(r_hi, dv, spec) + u_hi_next + drive.b_pos
        v_lo = decay(r_lo, dv, spec) - u_lo_next - drive.b_neg
        ext = {"u_max": max(ext["u_max"], u_hi_next, u_lo_next),
               "v_max": max(ext["v_max"], v_hi), "v_min": min(ext["v_min"], v_lo)}
        # negative v never spikes; a neuron that spiked sits at or above 0
        state = (u_hi_next, u_lo_next, _capped(v_hi, neuron.kind, drive.theta), min(v_lo, 0))
        if state == (u_hi, u_lo, r_hi, r_lo) or _peak(ext) > cap:
            break
        u_hi, u_lo, r_hi, r_lo = state
    return ext


def _peak(ext: dict) -> float:
    return max(ext["u_max"], ext["v_max"], -ext["v_min"])


def _time_label(syn: _Synapses, ext: dict, steps: int) -> str:
    which = "u" if ext["u_max"] >= max(ext["v_max"], -ext["v_min"]) else "v"
    return _state_label(syn, f"24-bit {which} over T={steps}")


def _time_limit(syn: _Synapses, bias: np.ndarray, neuron: Neuron, theta: float, steps: int,
                spec: Loihi2Spec) -> tuple:
    """(label, largest scale) of the T-step bound on u and v, from the unrounded worst case."""
    pos, neg = syn.pos_neg()
    drive = _Drive(a_pos=pos, a_neg=neg, b_pos=max(float(bias.max(initial=0.0)), 0.0),
                   b_neg=max(-float(bias.min(initial=0.0)), 0.0), theta=theta,
                   v0=theta * neuron.initial_fraction)
    room = _state_room(spec)
    # past 2θ·room the scale would round θ to mantissa 0: the layer is refused anyway
    ext = _state_extremes(drive, neuron, steps, _float_decay, 2 * theta * room, spec)
    peak = _peak(ext)
    return _time_label(syn, ext, steps), room / peak if peak > 0 else math.inf


def _state_room(spec: Loihi2Spec) -> float:
    """|u|, |v| ≤ 2**23 − 1 (no u wrap, no v clip), in synaptic-input units (before << 6)."""
    return spec.state_abs_max / (1 << spec.activation_shift)


def _integer_extremes(w_int: np.ndarray, p_ints: list, x_max: int, b_int: np.ndarray,
                      neuron: Neuron, vth: int, steps: int, spec: Loihi2Spec) -> dict:
    """:func:`_state_extremes` of the rounded layer, exact, in the 24-bit register's units."""
    pos, neg = _pos_neg([w_int * x_max] + p_ints)
    b = np.asarray(b_int, dtype=np.int64) << spec.netx_bias_exp
    drive = _Drive(a_pos=int(pos) << spec.activation_shift, a_neg=int(neg) << spec.activation_shift,
                   b_pos=max(int(b.max(initial=0)), 0), b_neg=max(-int(b.min(initial=0)), 0),
                   theta=dynamics.theta(vth, spec),
                   v0=dynamics.initial_v(neuron.kind, vth, spec) if vth > 0 else 0)
    # the cap at twice the room: a layer just over it gets its exact peak, so the next
    # scale is right at once
    return _state_extremes(drive, neuron, steps, _exact_decay, 2 * spec.state_abs_max, spec)


def _hidden_scale(layer, syn: _Synapses, bias: np.ndarray, theta: float, steps: int,
                  spec: Loihi2Spec) -> tuple[float, str]:
    """The largest scale every limit allows (module docstring) and the limit that set it."""
    b_abs = float(np.abs(bias).max(initial=0.0))
    worst = syn.worst()  # input values in [0, 1] float units, all synapses summed
    time_label, time_limit = _time_limit(syn, bias, layer.neuron, theta, steps, spec)
    limits = {
        **_weight_limits(syn, spec),
        "threshold mantissa": spec.threshold_max / theta,
        "bias mantissa": spec.bias_max / b_abs if b_abs > 0 else math.inf,
        _state_label(syn, "24-bit state"): spec.activation_max / (worst + theta + b_abs),
        # after the one-step rule: at T = 1 it is implied by it, so ties keep the old label
        time_label: time_limit,
    }
    limited_by = min(limits, key=limits.get)
    if not math.isfinite(limits[limited_by]):
        raise QuantizationError(f"layer {layer.name}: no finite scale (all weights zero?)")
    return limits[limited_by], limited_by


def _state_excess(syn: _Synapses, rounded: tuple, bias_worst: int, ext: dict, steps: int,
                  spec: Loihi2Spec):
    """None if the rounded layer fits both state rules, else (limit, value, label) of the
    one it exceeds most."""
    worst_int, vth = rounded
    over = []
    total = worst_int + vth + bias_worst
    if total > spec.activation_max:
        over.append((spec.activation_max / total, spec.activation_max, total,
                     _state_label(syn, "24-bit state")))
    if _peak(ext) > spec.state_abs_max:
        over.append((spec.state_abs_max / _peak(ext), spec.state_abs_max, _peak(ext),
                     _time_label(syn, ext, steps)))
    return min(over)[1:] if over else None


def _quantize_hidden(layer, syn: _Synapses, bias: np.ndarray, steps: int, spec: Loihi2Spec):
    """One spiking layer (see the module docstring)."""
    theta = float(layer.neuron.threshold)
    if not math.isfinite(theta) or theta <= 0:
        raise QuantizationError(f"layer {layer.name}: threshold θ = {theta} must be a positive number")
    scale, limited_by = _hidden_scale(layer, syn, bias, theta, steps, spec)
    # Rounding can push the worst case past the 24-bit limits (up to half a unit per weight
    # of every synapse, times its input's maximum): shrink the scale until the rounded
    # network fits.
    for _ in range(RESCALE_RETRIES):
        w_int, b_int, vth, p_ints, worst_int = _round_all(syn, bias, theta, scale)
        ext = _integer_extremes(w_int, p_ints, syn.x_max, b_int, layer.neuron, vth, steps, spec)
        excess = _state_excess(syn, (worst_int, vth), int(np.abs(b_int).max(initial=0)), ext,
                               steps, spec)
        if excess is None or vth < 1:  # (θ rounding to 0 is refused below)
            break
        limit, value, limited_by = excess
        scale = _shrunk(scale, limit, value)
    else:
        raise QuantizationError(f"layer {layer.name}: the worst-case synaptic input {worst_int} "
                                f"with threshold {vth} exceeds the 24-bit state ({limited_by}) "
                                f"at every scale{_branches(syn)}")
    if vth < 1:
        raise QuantizationError(f"layer {layer.name}: threshold θ = {theta:.3g} rounds to mantissa "
                                f"{vth} at scale {scale:.3g} (set by the {limited_by}"
                                f"{_branches(syn)}); Loihi 2 needs a threshold mantissa of at least 1")
    neuron = Neuron(kind=layer.neuron.kind, threshold=vth, du=layer.neuron.du, dv=layer.neuron.dv,
                    bias_exp=spec.netx_bias_exp)
    report = LayerQuantReport(
        name=layer.name, scale=float(scale), limited_by=limited_by,
        **_weight_errors(w_int, syn.main, scale, syn.x_max),
        threshold_float=theta, threshold_mantissa=vth,
        threshold_rel_error=abs(vth / scale - theta) / theta,
        bias_max_abs_error=float(np.abs(b_int / scale - bias).max(initial=0.0)),
        worst_case_input=worst_int, extra_inputs=_extra_reports(syn, p_ints, scale),
        state_steps=steps, state_bounds=_int_dict(ext))
    return _integer_layer(layer, w_int, b_int, neuron, syn, p_ints), report


def _int_dict(ext: dict) -> dict:
    return {k: int(v) for k, v in ext.items()}


def _branches(syn: _Synapses) -> str:
    """For a layer with extra inputs: the worst case of each branch (float units)."""
    if not syn.extra:
        return ""
    parts = ", ".join(f"{label} {w:.4g}" for label, w in syn.branch_worst())
    return f"; worst-case input of the sum of all inputs {syn.worst():.4g} = {parts}"


def _shrunk(scale: float, limit: int, total: int) -> float:
    """The next scale to try after rounding at ``scale`` gave ``total`` > ``limit``."""
    return scale * min(limit / total * (1 - 1e-6), 1 - MIN_SCALE_SHRINK)


def _weight_errors(w_int: np.ndarray, weight: np.ndarray, scale: float, x_max: int) -> dict:
    w_abs = float(np.abs(weight).max(initial=0.0))
    w_err = w_int / scale - weight
    return dict(
        weight_bits_used=int(np.ceil(np.log2(np.abs(w_int).max(initial=0) + 1))) + 1,
        weight_max_abs_error=float(np.abs(w_err).max(initial=0.0) * x_max),
        weight_rms_rel_error=float(np.sqrt(np.mean(w_err ** 2)) / w_abs) if w_abs else 0.0)


def _extra_reports(syn: _Synapses, p_ints: list, scale: float) -> list:
    return [dict(source=p.source, kind=p.kind, **_weight_errors(p_int, w, scale, 1),
                 worst_case_input=int(round(_worst_case_input([p_int]))))
            for p, w, p_int in zip(syn.projections, syn.extra, p_ints)]


def _readout_time_limit(syn: _Synapses, bias: np.ndarray, steps: int, spec: Loihi2Spec) -> float:
    """The readout's bound from the T-step iteration (:func:`_state_extremes`): its membrane stays at
    or below the largest threshold. With the readout's du = 4095, dv = 0 it is never below
    the closed form T·(worst + max|b|), which therefore sets the scale; it binds only if the
    readout neuron ever gets a decaying current or voltage."""
    pos, neg = syn.pos_neg()
    drive = _Drive(a_pos=pos, a_neg=neg, b_pos=max(float(bias.max(initial=0.0)), 0.0),
                   b_neg=max(-float(bias.min(initial=0.0)), 0.0), theta=math.inf, v0=0.0)
    ext = _state_extremes(drive, readout_neuron(integer=False), steps, _float_decay, math.inf, spec)
    peak = _peak(ext)
    return spec.threshold_max / peak if peak > 0 else math.inf


def _quantize_readout(layer, syn: _Synapses, bias: np.ndarray, steps: int, spec: Loihi2Spec):
    """The non-firing output integrator of a potential readout.

    Its threshold is the largest mantissa (it must never be reached) and the scale keeps
    the accumulated membrane below it for every T up to ``readout_steps``::

        |v[T]| ≤ T · (worst + max|b|) · 2**6 ≤ vth_max · 2**6 < 2**23
        =>  s ≤ 131071 / (readout_steps · (worst + max|b|))      (rounding included)

    (``worst`` over the sum of its inputs). Refused if the readout weights would keep fewer
    than :data:`MIN_READOUT_WEIGHT_BITS` signed bits (fewer steps or input bits fit)."""
    w_abs = syn.max_abs()
    if w_abs == 0:
        raise QuantizationError(f"layer {layer.name}: all readout weights are zero")
    b_abs = float(np.abs(bias).max(initial=0.0))
    worst = syn.worst()
    accumulation = _state_label(syn, f"readout accumulation over T={steps}")
    limits = {
        **_weight_limits(syn, spec),
        "bias mantissa": spec.bias_max / b_abs if b_abs > 0 else math.inf,
        accumulation: min(spec.threshold_max / (steps * (worst + b_abs)),
                          _readout_time_limit(syn, bias, steps, spec)),
    }
    limited_by = min(limits, key=limits.get)
    scale = limits[limited_by]
    if not math.isfinite(scale):
        raise QuantizationError(f"layer {layer.name}: no finite scale (weights of magnitude {w_abs:.3g} "
                                f"are too small to represent)")
    neuron = readout_neuron(integer=True)
    for _ in range(RESCALE_RETRIES):  # rounding may add up to half a unit per weight: shrink until it fits
        w_int, b_int, _, p_ints, worst_int = _round_all(syn, bias, 0.0, scale)
        total = steps * (worst_int + int(np.abs(b_int).max(initial=0)))
        ext = _integer_extremes(w_int, p_ints, syn.x_max, b_int, neuron, neuron.threshold, steps, spec)
        # v must stay at or below θ (never fires), which is below the 24-bit clip
        total = max(total, -(-max(ext["v_max"], -ext["v_min"], ext["u_max"])
                             >> spec.threshold_shift))
        if total <= spec.threshold_max:
            break
        scale = _shrunk(scale, spec.threshold_max, total)
        limited_by = accumulation
    else:
        raise QuantizationError(f"layer {layer.name}: no scale keeps the readout inside the threshold")
    w_max = max(int(np.abs(w).max(initial=0)) for w in [w_int] + p_ints)
    if w_max < 1 << (MIN_READOUT_WEIGHT_BITS - 1):
        raise QuantizationError(
            f"layer {layer.name}: to keep the accumulated output of the readout inside Loihi 2's "
            f"24-bit membrane for T up to {steps}, its weights would shrink to at most ±{w_max} "
            f"(fewer than {MIN_READOUT_WEIGHT_BITS} signed bits){_branches(syn)}; use fewer time "
            f"steps (snn.timesteps) or fewer input bits")
    q_layer = _integer_layer(layer, w_int, b_int, neuron, syn, p_ints)
    errors = _weight_errors(w_int, syn.main, scale, syn.x_max)
    report = LayerQuantReport(
        name=layer.name, scale=float(scale), limited_by=limited_by, **errors,
        threshold_float=None, threshold_mantissa=int(neuron.threshold), threshold_rel_error=0.0,
        bias_max_abs_error=float(np.abs(b_int / scale - bias).max(initial=0.0)),
        worst_case_input=worst_int, readout_steps=int(steps),
        extra_inputs=_extra_reports(syn, p_ints, scale), state_steps=int(steps),
        state_bounds=_int_dict(ext))
    return q_layer, report


def _integer_layer(layer, w_int: np.ndarray, b_int: np.ndarray, neuron: Neuron,
                   syn: _Synapses, p_ints: list):
    """The integer counterpart of a float Conv/Dense layer (same geometry, weight_exp 0),
    with its extra inputs as integer projections (same geometry, weight_exp 0)."""
    extra = tuple(Projection(source=p.source, weight=p_int, kind=p.kind, stride=tuple(p.stride),
                             padding=tuple(p.padding), dilation=tuple(p.dilation),
                             groups=int(p.groups), weight_exp=0)
                  for p, p_int in zip(syn.projections, p_ints))
    if isinstance(layer, Conv):
        return Conv(weight=w_int, bias=b_int, neuron=neuron, stride=tuple(layer.stride),
                    padding=tuple(layer.padding), dilation=tuple(layer.dilation), groups=layer.groups,
                    weight_exp=0, name=layer.name, extra_inputs=extra)
    return Dense(weight=w_int, bias=b_int, neuron=neuron, weight_exp=0, name=layer.name,
                 extra_inputs=extra)


def _round(weight: np.ndarray, bias: np.ndarray, theta: float, scale: float, x_max: int):
    """Integer weights, biases, threshold at ``scale`` and the worst-case synaptic input."""
    w_int = np.rint(weight * scale).astype(np.int64)
    b_int = np.rint(bias * scale).astype(np.int64)
    vth = int(np.rint(theta * scale))
    return w_int, b_int, vth, int(round(_worst_case_input([w_int * x_max])))


def _round_all(syn: _Synapses, bias: np.ndarray, theta: float, scale: float):
    """:func:`_round` plus the integer projections; the worst case is of the sum of all
    synapses (main at its input maximum, projections at 1)."""
    w_int, b_int, vth, worst_int = _round(syn.main, bias, theta, scale, syn.x_max)
    p_ints = [np.rint(w * scale).astype(np.int64) for w in syn.extra]
    if p_ints:
        worst_int = int(round(_worst_case_input([w_int * syn.x_max] + p_ints)))
    return w_int, b_int, vth, p_ints, worst_int
