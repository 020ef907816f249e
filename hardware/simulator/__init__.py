"""Vectorised reference simulator of an SNN IR :class:`hardware.ir.Network`.

:func:`simulate` runs a whole batch for T steps with torch tensors on the inputs' device.
Float IR: the IR's kernels in float64 (``dtype=torch.float32``: faster, float32 rounding,
for σ estimation and model selection, not a reference). Integer IR: bit-exactly Lava
0.10's ``fixed_pt`` models: the neurons of :mod:`hardware.fixed_point.dynamics`
(:mod:`.neuron`) behind Lava's Dense/Conv synapses (:mod:`.synapse`).

A layer's synaptic input is its main synapse plus every extra input (``ir.Projection``,
residual networks) applied to its source's spikes, a = W ⊛ s_prev + Σ_k P_k ⊛ s_source_k,
summed in Lava's int32 InPort container. An integer projection whose sums could reach
2**23 is refused (below it Lava's 24-bit conv and 32-bit sparse synapses agree).

Timing. ``pipelined=False``: layer l integrates at step t what layer l−1 emitted at step
t (the paper's SNN). ``pipelined=True``: Lava's timing in one continuous run: every
synapse sends at step t what it computed from step t−1's spikes (zero at step 1), an
input neuron layer receives the input directly, and a projection is delayed by
``net.extra_delay(layer, projection)`` more steps, so every input of a layer carries the
same sample step (``align_extra_inputs=False`` drops that, only to measure it).

Kernels. ``kernel='fast'`` (integer IR) runs each synapse and neuron on the fastest
kernel a static bound proves exact (:mod:`.synapse`, :mod:`.neuron`), conv maps
channels-last and the batch in cache-sized chunks; ``kernel='exact64'`` forces the
reference path (float64 sums, int64 neuron emulation). Tests compare the two with ==.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from hardware.errors import IRError, QuantizationError
from hardware.ir import Conv, Dense, Flatten, Network, Projection
from hardware.ir.validate import integer_array, simulator_limits, validate_network
from hardware.kinds import Readout
from hardware.simulator.arith import _FLOAT32_EXACT
from hardware.simulator.neuron import _NeuronState
from hardware.simulator.synapse import _Synapse
from hardware.spec import LOIHI2

__all__ = ["KERNELS", "SimResult", "encode_input", "first_argmax", "kernel_plan", "simulate"]

#: ``simulate(kernel=...)``: the fastest provably exact kernels, or the reference path.
KERNELS = ("fast", "exact64")


def encode_input(x, bits: int) -> np.ndarray:
    """Analog input in [0, 1] -> unsigned ``bits``-bit graded spike payload.

    ``q = rint(x · (2**bits − 1))`` (numpy's round-half-to-even), int64.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if not isinstance(bits, (int, np.integer)) or not 1 <= bits <= LOIHI2.graded_spike_max_bits:
        raise QuantizationError(
            f"input bits must be an integer in [1, {LOIHI2.graded_spike_max_bits}], got {bits!r}")
    bad = ~((x >= 0.0) & (x <= 1.0))  # also catches NaN
    if bad.any():
        raise QuantizationError(
            f"input values must lie in [0, 1] to be encoded as {bits}-bit graded spikes; "
            f"found {x[bad].ravel()[0]!r}")
    return np.rint(x * LOIHI2.input_max(int(bits))).astype(np.int64)


@dataclass
class SimResult:
    """Spikes of one simulation.

    ``output_spikes``: (T, B, n_out) int64 0/1 of the last layer, C-order flattened.
    ``output_potential``: (T, B, n_out) membrane v of the last layer after each step
    (float form: in the simulation's dtype, float64 by default; integer form: int64,
    the v register, i.e. in units of 2**-6 synaptic-input units). For a potential readout this is
    Σ_{τ≤t} (W·s_τ + b), the paper's accumulated output.
    ``readout``: the network's readout (``'potential'`` or ``'spikes'``).
    ``layer_names``: one per spiking layer (input neuron layer first if any).
    ``layer_step_spikes``: per spiking layer, (T, B) int64 spikes per step.
    ``layer_counts``: per spiking layer, (B, *out_shape) int64 spikes over T.
    ``layer_spike_trains``: per spiking layer (T, B, *out_shape) bool, if recorded.
    """

    output_spikes: torch.Tensor
    layer_names: list
    layer_step_spikes: list
    layer_counts: list
    layer_spike_trains: Optional[list] = None
    output_potential: Optional[torch.Tensor] = None
    readout: Readout = "potential"

    def output_counts(self) -> torch.Tensor:
        """Cumulative output spike counts, (T, B, n_out)."""
        return torch.cumsum(self.output_spikes, dim=0)

    def predictions(self, readout: Optional[str] = None) -> torch.Tensor:
        """(T, B) predicted class after each step, by the network's readout (or ``readout``).

        ``'potential'``: argmax of the accumulated output ``output_potential``;
        ``'spikes'``: the class with the most output spikes so far. Ties go to the
        lowest index either way.
        """
        readout = readout or self.readout
        if readout == "potential":
            if self.output_potential is None:
                raise IRError("this simulation recorded no output potential")
            return first_argmax(self.output_potential)
        return first_argmax(self.output_counts())


def first_argmax(values: torch.Tensor) -> torch.Tensor:
    """argmax over the last axis, ties to the lowest index (explicit, so it does not
    depend on a documented detail of torch.argmax)."""
    best = values.max(dim=-1, keepdim=True).values
    n = values.shape[-1]
    idx = torch.arange(n, device=values.device).expand_as(values)
    return torch.where(values == best, idx, torch.full_like(idx, n)).min(dim=-1).values


def _to_tensor(x, integer: bool, what: str, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype == object:
            raise IRError(f"{what} must be a numeric array")
        t = torch.as_tensor(arr)
    if integer:
        if t.is_floating_point():
            if not bool(torch.isfinite(t).all()) or bool((t != torch.round(t)).any()):
                raise QuantizationError(f"integer IR: {what} must hold integers")
        elif t.dtype == torch.bool or t.is_complex():
            raise QuantizationError(f"integer IR: {what} must hold integers")
        return t.to(torch.int64)
    if t.is_complex():
        raise IRError(f"{what} must be real")
    return t.to(dtype)


def _bias(layer, out_shape: tuple, integer: bool, device) -> torch.Tensor:
    dtype = torch.int64 if integer else torch.float64
    if layer.bias is None:
        return torch.zeros(out_shape, dtype=dtype, device=device)
    b = np.asarray(layer.bias)  # an integer IR's biases are validated in _build
    t = torch.as_tensor(b.astype(np.int64 if integer else np.float64), device=device)
    if isinstance(layer, Conv) and t.dim() == 1 and len(out_shape) == 3:
        t = t.view(-1, 1, 1)  # one bias per output channel
    try:
        return torch.broadcast_to(t, out_shape).clone()
    except RuntimeError as exc:
        raise IRError(f"layer {layer.name}: bias shape {tuple(b.shape)} does not fit output "
                      f"{out_shape}") from exc


def _check_options(timesteps, dtype, kernel) -> int:
    if not isinstance(timesteps, (int, np.integer)) or isinstance(timesteps, bool) \
            or timesteps < 1:
        raise IRError(f"timesteps must be a positive integer, got {timesteps!r}")
    if dtype not in (torch.float32, torch.float64):
        raise IRError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    if kernel not in KERNELS:
        raise IRError(f"kernel {kernel!r} is not one of {KERNELS}")
    return int(timesteps)


def _prepare_inputs(net: Network, inputs, T: int, dtype) -> tuple:
    """(x, varying, max_in): validated inputs, whether they vary over time, and the
    largest graded payload (integer IR without input neurons) or |x| (float IR)."""
    integer = bool(net.integer)
    in_shape = tuple(int(s) for s in net.input.shape)
    device = inputs.device if isinstance(inputs, torch.Tensor) else torch.device("cpu")
    x = _to_tensor(inputs, integer, "inputs", dtype).to(device)
    if x.dim() == len(in_shape) + 1 and tuple(x.shape[1:]) == in_shape:
        varying = False
    elif x.dim() == len(in_shape) + 2 and tuple(x.shape[2:]) == in_shape:
        varying = True
        if x.shape[1] != T:
            raise IRError(f"time-varying inputs have {x.shape[1]} steps, expected {T}")
    else:
        raise IRError(f"inputs of shape {tuple(x.shape)} match neither (B, *{in_shape}) nor "
                      f"(B, {T}, *{in_shape})")
    in_neuron = net.input.neuron
    if integer and in_neuron is None:
        bits = net.input_bits if net.input_bits is not None else LOIHI2.input_bits_default
        lo, hi = (int(x.min()), int(x.max())) if x.numel() else (0, 0)
        if lo < 0 or hi > LOIHI2.input_max(bits):
            raise QuantizationError(
                f"layer {net.input.name}: graded input {lo if lo < 0 else hi} outside the "
                f"{bits}-bit payload range [0, {LOIHI2.input_max(bits)}]")
        max_in = float(max(hi, 0))
    elif integer:
        max_in = 1.0
    else:
        max_in = float(x.abs().max()) if (in_neuron is None and x.numel()) else 1.0
    return x, varying, max_in


def _input_state(net: Network, x: torch.Tensor, input_bias, fast: bool,
                 dtype) -> _NeuronState:
    """The input neuron layer (its synaptic input is the input itself)."""
    integer, in_shape = bool(net.integer), tuple(int(s) for s in net.input.shape)
    device, B = x.device, int(x.shape[0])
    if input_bias is None:
        ib = torch.zeros(in_shape, dtype=torch.int64 if integer else torch.float64,
                         device=device)
    else:
        ib = _to_tensor(input_bias, integer, "input_bias").to(device)
        if tuple(ib.shape) not in (in_shape, (B,) + in_shape):
            raise IRError(f"input_bias of shape {tuple(ib.shape)} is neither {in_shape} "
                          f"nor {(B,) + in_shape}")
        if integer:
            integer_array(ib.cpu().numpy(), net.input.name, "input bias", LOIHI2.bias_min,
                          LOIHI2.bias_max)
    a_bound = (int(x.abs().max()) if x.numel() else 0) if (integer and fast) else None
    return _NeuronState(net.input.neuron, ib, in_shape, integer, device,
                        net.input.name, a_bound=a_bound, dtype=dtype)


@dataclass
class _ExtraInput:
    """One projection of a weighted layer (``ir.Projection``): its synapse, the state index
    of its source layer, the extra delay that aligns it on Lava (pipelined mode) and
    whether it reads the source flattened (a dense projection)."""

    synapse: "_Synapse"
    source: str
    source_idx: int
    delay: int
    flatten: bool


#: An integer projection whose sums could reach this is refused: below it Lava's
#: realisations of a synapse agree (Conv wraps its output to 24 bits, a dense or delayed
#: sparse synapse to 32), so the simulator's answer does not depend on which one runs it.
_PROJECTION_BOUND = 1 << (LOIHI2.conv_output_bits - 1)


def _extra_inputs(net: Network, layer, sources: dict, integer: bool, device, fast: bool,
                  dtype, channels_last: bool) -> tuple:
    """The :class:`_ExtraInput` of every projection of ``layer``; ``sources``: name ->
    (state index, output shape) of the weighted layers before it."""
    extras = []
    for proj in getattr(layer, "extra_inputs", ()):
        if not isinstance(proj, Projection):
            raise IRError(f"layer {layer.name}: an extra input is a {type(proj).__name__}, "
                          f"not a Projection")
        where = f"{layer.name}, extra input from {proj.source!r}"
        if proj.source not in sources:
            raise IRError(f"layer {where}: the source is not a conv/dense layer listed before "
                          f"this layer")
        src_idx, src_shape = sources[proj.source]
        dense = proj.kind == "dense"
        syn = _Synapse(proj.synapse(where), src_shape, integer, False, 1.0, device, fast=fast,
                       dtype=dtype, chw=src_shape if dense and len(src_shape) == 3 else None,
                       channels_last=channels_last)
        if integer and syn.partial_bound >= _PROJECTION_BOUND:
            raise QuantizationError(
                f"layer {where}: the projection's synaptic sums may reach "
                f"{syn.partial_bound:.6g} >= 2**{LOIHI2.conv_output_bits - 1}, where Lava's "
                f"conv and delayed synapses would wrap differently")
        extras.append(_ExtraInput(syn, proj.source, src_idx, int(net.extra_delay(layer, proj)),
                                  dense))
    return tuple(extras)


def _sum_bound(syn: "_Synapse", extras: tuple) -> Optional[int]:
    """Bound on |Σ synaptic inputs| of a layer if no synapse can wrap (else None)."""
    bounds = [syn.a_bound] + [e.synapse.a_bound for e in extras]
    return None if any(b is None for b in bounds) else sum(bounds)


def _build(net: Network, x: torch.Tensor, input_bias, max_in: float, fast: bool,
           dtype) -> tuple:
    """(names, states, plan): one neuron state per spiking layer and the layer plan
    [(kind, layer, synapse or None, state index or None, extra inputs)]."""
    integer, device = bool(net.integer), x.device
    if integer:  # every Loihi 2 limit, in one place
        validate_network(net, simulator_limits())
    in_neuron = net.input.neuron
    # the fast paths keep conv maps channels-last (mkldnn's fast layout on CPU)
    channels_last = fast or (not integer and dtype == torch.float32)
    names, states, plan = [], [], []
    if in_neuron is not None:
        states.append(_input_state(net, x, input_bias, fast, dtype))
        names.append(net.input.name)
    elif input_bias is not None:
        raise IRError("input_bias given but the network has no input neuron layer")
    shape, chw = tuple(int(s) for s in net.input.shape), None
    sources: dict = {}  # weighted layer name -> (state index, output shape)
    for layer, out_shape in zip(net.layers, net.shapes()):
        if isinstance(layer, Flatten):
            plan.append(("flatten", layer, None, None, ()))
            chw = shape if len(shape) == 3 else chw
        elif isinstance(layer, (Conv, Dense)):
            graded = not states and in_neuron is None
            syn = _Synapse(layer, shape, integer, graded, max_in if graded else 1.0, device,
                           fast=fast, dtype=dtype, chw=chw, channels_last=channels_last)
            extras = _extra_inputs(net, layer, sources, integer, device, fast, dtype,
                                   channels_last)
            # the neuron receives the SUM of all of its synapses: bound the sum
            a_bound = (syn.a_bound if not extras else _sum_bound(syn, extras)) if fast else None
            state = _NeuronState(layer.neuron, _bias(layer, out_shape, integer, device),
                                 tuple(out_shape), integer, device, layer.name,
                                 a_bound=a_bound, dtype=dtype, channels_last=channels_last)
            for s_ in (syn,) + tuple(e.synapse for e in extras):
                s_.set_output(exact=state.mode == "exact")
            states.append(state)
            names.append(layer.name)
            sources[layer.name] = (len(states) - 1, tuple(int(d) for d in out_shape))
            plan.append(("weighted", layer, syn, len(states) - 1, extras))
            chw = None
        else:
            raise IRError(f"unknown layer type {type(layer).__name__}")
        shape = tuple(out_shape)
    if not states:
        raise IRError("network has no spiking layer")
    return names, states, plan


class _Recorder:
    """Per-layer spike statistics and the output layer's spikes and potential, for the
    whole batch; filled one batch chunk at a time (:meth:`start` .. :meth:`finish`)."""

    def __init__(self, states: list, T: int, B: int, trains: bool, integer: bool, device):
        self.T = T
        self.step_spikes = [torch.zeros((T, B), dtype=torch.int64, device=device)
                            for _ in states]
        # (every chunk overwrites its rows in finish)
        self.counts = [torch.empty((B,) + st.shape, dtype=torch.int64, device=device)
                       for st in states]
        self.trains = ([torch.zeros((T, B) + st.shape, dtype=torch.bool, device=device)
                        for st in states] if trains else None)
        n_out = int(np.prod(states[-1].shape))
        self.out_spikes = torch.zeros((T, B, n_out), dtype=torch.int64, device=device)
        pot_dtype = torch.int64 if integer else states[-1].dtype
        self.out_potential = torch.zeros((T, B, n_out), dtype=pot_dtype, device=device)

    def start(self, b0: int, b1: int, states: list) -> None:
        self.b0, self.b1 = b0, b1
        # float spikes are counted in float (exact: T < 2**24), bool ones in int64
        self.acc = [torch.zeros_like(st.v, dtype=(torch.int64 if st.mode == "lava" else
                                                  torch.float32 if self.T < _FLOAT32_EXACT
                                                  else torch.float64))
                    for st in states]

    def layer(self, idx: int, t: int, s: torch.Tensor) -> None:
        # a float sum of 0/1 is exact below 2**24 terms
        exact = s.dtype == torch.bool or math.prod(s.shape[1:]) < _FLOAT32_EXACT
        n = s.sum(dim=tuple(range(1, s.dim())), dtype=None if exact else torch.float64)
        self.step_spikes[idx][t, self.b0:self.b1] = n
        self.acc[idx].add_(s)
        if self.trains is not None:
            self.trains[idx][t, self.b0:self.b1] = s

    def output(self, t: int, s: torch.Tensor, v: torch.Tensor) -> None:
        nb = self.b1 - self.b0
        self.out_spikes[t, self.b0:self.b1] = s.reshape(nb, -1)
        self.out_potential[t, self.b0:self.b1] = v.reshape(nb, -1)  # exact integers in float

    def finish(self) -> None:
        for idx, acc in enumerate(self.acc):
            self.counts[idx][self.b0:self.b1] = acc


#: Fast paths run the batch in chunks whose largest layer holds about this many
#: values (4 MB in float32): the per-step elementwise passes then run from cache
#: (measured 2–4× faster per element than on whole-batch tensors of 16+ MB on the
#: 2-core benchmark machine; 2**18 .. 2**21 performed alike).
_CHUNK_VALUES = 1 << 20


def kernel_plan(net: Network, inputs, timesteps: int, *, dtype: torch.dtype = torch.float64,
                kernel: str = "fast") -> list:
    """What :func:`simulate` would run for each spiking layer, as a list of dicts:
    ``layer``, ``synapse`` (the matmul/conv kernel: 'int8', 'float32' or 'float64';
    None for an input neuron layer), ``pool`` (the pooling-fold factor P, 1 if none),
    ``neuron_mode`` ('float', 'exact', 'lava'), ``state_dtype`` and ``extra_inputs``: one
    dict per projection (``source``, ``kind`` 'conv'/'dense', ``synapse``, ``pool``, and
    ``extra_delay``, the steps it is delayed by in pipelined mode beyond the one every
    synapse adds); empty for a sequential network."""
    T = _check_options(timesteps, dtype, kernel)
    fast = bool(net.integer) and kernel == "fast"
    x, _, max_in = _prepare_inputs(net, inputs, T, dtype)
    names, states, plan = _build(net, x, input_bias=None, max_in=max_in, fast=fast,
                                 dtype=dtype)
    syns = {idx: (syn, extras) for kind, _layer, syn, idx, extras in plan
            if kind == "weighted"}
    rows = []
    for i, (name, st) in enumerate(zip(names, states)):
        syn, extras = syns.get(i, (None, ()))
        rows.append(dict(
            layer=name, synapse=syn.kernel if syn else None, pool=syn.pool if syn else 1,
            neuron_mode=st.mode, state_dtype=st.dtype,
            extra_inputs=[dict(source=e.source, kind="dense" if e.flatten else "conv",
                               synapse=e.synapse.kernel, pool=e.synapse.pool,
                               extra_delay=e.delay) for e in extras]))
    return rows


def simulate(net: Network, inputs, timesteps: int, *, pipelined: bool = False,
             record_spikes: bool = False, input_bias=None, dtype: torch.dtype = torch.float64,
             kernel: str = "fast", align_extra_inputs: bool = True) -> SimResult:
    """Run ``net`` on a batch for ``timesteps`` steps (see module docstring).

    ``inputs``: (B, *input_shape) held constant, or (B, T, *input_shape)
    time-varying. Float IR: the analog values. Integer IR: graded spike
    payloads (0 .. 2**input_bits − 1), or the input neurons' a_in if the IR
    has an input neuron layer. ``input_bias``: bias (mantissa, integer IR) of
    the input neuron layer, shaped input_shape or (B, *input_shape).
    ``dtype`` (float IR only): ``torch.float64`` (the reference) or ``torch.float32``
    (fast, float32 rounding). ``kernel`` (integer IR only): ``'fast'`` (the fastest
    provably exact kernels) or ``'exact64'`` (the float64/int64 reference path).
    Runs on the device of ``inputs``; samples are independent, so the fast paths
    run the batch in cache-sized chunks.
    ``align_extra_inputs`` (pipelined mode, residual networks): True (Lava as this project
    builds it) delays every extra input by ``net.extra_delay(layer, projection)`` steps on
    top of the one step every synapse adds, so all inputs of a layer carry the same
    sample step; False drops those extra delays (the misaligned shortcut an undelayed Lava
    wiring would give; only to measure what the delays buy). No effect when not pipelined.
    """
    T = _check_options(timesteps, dtype, kernel)
    integer = bool(net.integer)
    fast = integer and kernel == "fast"
    x, varying, max_in = _prepare_inputs(net, inputs, T, dtype)
    B = int(x.shape[0])
    names, states, plan = _build(net, x, input_bias, max_in, fast, dtype)
    rec = _Recorder(states, T, B, record_spikes, integer, x.device)
    chunk = B
    if fast or (not integer and dtype == torch.float32):
        chunk = max(1, _CHUNK_VALUES // max(int(np.prod(st.shape)) for st in states))
    with torch.no_grad():
        for b0 in range(0, max(B, 1), chunk):
            b1 = min(B, b0 + chunk)
            for st in states:
                st.reset(b0, b1)
            rec.start(b0, b1, states)
            _run(plan, states, rec, x[b0:b1], T, varying, net.input.neuron is not None,
                 pipelined, align_extra_inputs)
            rec.finish()
    return SimResult(output_spikes=rec.out_spikes, layer_names=names,
                     layer_step_spikes=rec.step_spikes, layer_counts=rec.counts,
                     layer_spike_trains=rec.trains, output_potential=rec.out_potential,
                     readout=net.readout)


def _run(plan: list, states: list, rec: _Recorder, x: torch.Tensor, T: int, varying: bool,
         has_input_neurons: bool, pipelined: bool, align_extra_inputs: bool = True) -> None:
    B = int(x.shape[0])
    buffers = {}  # pipelined: what each synapse computed at the previous step
    const_first = None  # constant input into a synapse: W ⊛ x is the same every step
    # extra inputs: the spikes of this step of every layer a projection reads, and
    # (pipelined) per projection the outputs still in flight, oldest first
    feeds = {e.source_idx for *_, extras in plan for e in extras}
    step_spikes, in_flight = {}, {}
    for t in range(T):
        xt = x[:, t] if varying else x
        if has_input_neurons:
            sig = states[0].step(xt)
            rec.layer(0, t, sig)
        else:
            sig = xt
        is_input_signal = not has_input_neurons
        for kind, _layer, syn, idx, extras in plan:
            if kind == "flatten":
                sig = sig.reshape(B, -1)
                continue
            if is_input_signal and not varying:
                if const_first is None:
                    const_first = syn(sig)
                a_new = const_first
            else:
                a_new = syn(sig)
            is_input_signal = False
            if pipelined:  # Lava's timing: send what was computed one step earlier
                a = buffers.get(idx)
                a = torch.zeros_like(a_new) if a is None else a
                buffers[idx] = a_new
            else:
                a = a_new
            if extras:  # (out of place: a may be the cached or buffered main input)
                a = _add_extra_inputs(a, extras, step_spikes, in_flight, B, pipelined,
                                      align_extra_inputs)
            sig = states[idx].step(a)
            rec.layer(idx, t, sig)
            if idx in feeds:
                step_spikes[idx] = sig
        rec.output(t, sig, states[-1].v)


def _add_extra_inputs(a: torch.Tensor, extras: tuple, step_spikes: dict, in_flight: dict,
                      B: int, pipelined: bool, align: bool) -> torch.Tensor:
    """a + Σ_k P_k ⊛ s_source_k. Not pipelined: the sources' spikes of this step (the
    paper's timing). Pipelined: what P_k computed 1 + d_k steps ago (zero before that),
    d_k = the projection's extra delay (0 when not ``align``)."""
    for e in extras:
        s = step_spikes[e.source_idx]
        p_new = e.synapse(s.reshape(B, -1) if e.flatten else s)
        if not pipelined:
            a = a + p_new
            continue
        queue = in_flight.setdefault(id(e), [])
        queue.append(p_new)
        if len(queue) > 1 + (e.delay if align else 0):
            a = a + queue.pop(0)
    return a
