"""Vectorised reference simulator of an SNN IR :class:`hardware.ir.Network`.

One call runs a whole batch for ``T`` steps with whole-batch torch tensors
(no per-sample Python loop) on the device of the inputs (CPU for numpy).

Float form (``net.integer`` False, float64)::

    a_l[t]  = W_l ⊛ s_{l-1}[t] · 2**weight_exp       (conv2d cross-correlation / matmul)
    u ← u·(1 − (du+1)/4096) + a;   v ← v·(1 − dv/4096) + u + b
    if_soft:  s = v ≥ θ;  v ← v − s·θ;  v(0) = θ/2     (du = 4095, dv = 0: v ← v + a + b)
    cuba:     s = v > θ;  v ← v·(1 − s);  v(0) = 0

Integer form (``net.integer`` True): bit-exactly Lava 0.10's ``fixed_pt``
models, all in int64 with explicit emulation of Lava's int32 containers
(``wrap32``, :attr:`Loihi2Spec.container_bits`)::

    Dense (graded input, W·s):  a = wrap32(wrap32(W @ s) << e)  or  wrap32(W @ s) >> −e
    Dense (binary spikes):      a = wrap32((W @ s) << e)         or  wrap32((W @ s) >> −e)
    Conv:                       a = wrap24(W ⊛ s)                (Lava ignores weight_exp)
    LIF (AbstractPyLifModelFixed.subthr_dynamics):
        d  = sign(u·(4096−du−1))·(|u·(4096−du−1)| >> 12)
        d  = wrap32(d + wrap32(a << 6))
        u  = d − 2M  if d > M  else d;   u = d + 2M  if u ≤ −M  else u     (M = 2**23;
             Lava's single-step wrap: the second test adds to d, not to the
             already wrapped value)
        v  = clip(wrap32(wrap32(sign·(|v·(4096−dv)| >> 12) + u) + (b << bias_exp)), −(M−1), M−1)
        cuba:    s = v >  (θ << 6);  v ← 0 where s;            v(0) = 0
        if_soft: s = v >= (θ << 6);  v ← v − (θ << 6) where s;  v(0) = (θ << 6) >> 1
    u(0) = 0 for both.

Timing. ``pipelined=False``: layer l integrates at step t what layer l−1 emitted
at step t (the paper's SNN). ``pipelined=True``: Lava's timing, one continuous
run from step 1: every synapse sends at step t what it computed from the spikes
it received at step t−1 (zero at step 1); an input neuron layer receives the
input at step t directly (no synapse in front of it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .errors import IRError, QuantizationError
from .ir import Conv, Dense, Flatten, Network, Neuron
from .spec import LOIHI2

# float64 represents every integer below 2**53 exactly: the integer matmul/conv
# run in float64 when a bound on the result says it is exact.
_FLOAT64_EXACT = 1 << 53


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

    def output_counts(self) -> torch.Tensor:
        """Cumulative output spike counts, (T, B, n_out)."""
        return torch.cumsum(self.output_spikes, dim=0)

    def predictions(self) -> torch.Tensor:
        """(T, B) class with the most output spikes up to each step.

        Ties go to the lowest index (torch.argmax returns the first maximum;
        computed explicitly so it does not depend on that documented detail).
        """
        counts = self.output_counts()
        best = counts.max(dim=-1, keepdim=True).values
        is_best = counts == best
        n = counts.shape[-1]
        idx = torch.arange(n, device=counts.device).expand_as(counts)
        return torch.where(is_best, idx, torch.full_like(idx, n)).min(dim=-1).values


# ----------------------------------------------------------------------------
# integer helpers (int64 tensors emulating Lava's int32 / 24-bit containers)
# ----------------------------------------------------------------------------

def _wrap(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Two's-complement wrap to ``bits`` bits (numpy int32 overflow, Lava's signed_clamp)."""
    half = 1 << (bits - 1)
    if x.numel() == 0:
        return x
    lo, hi = torch.aminmax(x)
    if lo.item() >= -half and hi.item() < half:
        return x  # nothing overflows (the usual case): skip three full passes
    return ((x + half) & ((1 << bits) - 1)) - half


def _wrap32(x: torch.Tensor) -> torch.Tensor:
    return _wrap(x, LOIHI2.container_bits)


def _shift(x: torch.Tensor, exp: int) -> torch.Tensor:
    """x << exp or x >> −exp (arithmetic: a right shift floors)."""
    return x << exp if exp > 0 else x >> (-exp)


def _sign_mag_decay(x: torch.Tensor, decay: int) -> torch.Tensor:
    """Lava's decay: sign(x·k)·(|x·k| >> 12), k = 4096 − decay (rounds toward zero)."""
    keep = LOIHI2.decay_unity - decay
    # exact shortcuts of the same formula: k = 0 gives 0, k = 4096 gives x
    if keep == 0:
        return torch.zeros_like(x)
    if keep == LOIHI2.decay_unity:
        return x
    prod = x * keep
    return torch.sign(prod) * (prod.abs() >> LOIHI2.decay_bits)


# ----------------------------------------------------------------------------
# neuron state
# ----------------------------------------------------------------------------

class _NeuronState:
    """u, v of one layer for the whole batch, and the step function."""

    def __init__(self, neuron: Neuron, bias: torch.Tensor, shape: tuple, integer: bool,
                 device, name: str):
        self.neuron = neuron
        self.integer = integer
        self.name = name
        if neuron.kind not in ("if_soft", "cuba"):
            raise IRError(f"layer {name}: unknown neuron kind {neuron.kind!r}")
        for field_name, val in (("du", neuron.du), ("dv", neuron.dv)):
            if not 0 <= int(val) <= LOIHI2.decay_max:
                raise QuantizationError(f"layer {name}: {field_name}={val} outside "
                                        f"[0, {LOIHI2.decay_max}]")
        self.du = int(neuron.du) + LOIHI2.current_decay_offset
        self.dv = int(neuron.dv) + LOIHI2.voltage_decay_offset
        self.soft = neuron.kind == "if_soft"
        if integer:
            th = neuron.threshold
            if int(th) != th or not 0 <= int(th) <= LOIHI2.threshold_max:
                raise QuantizationError(f"layer {name}: threshold mantissa {th!r} is not an "
                                        f"integer in [0, {LOIHI2.threshold_max}]")
            self.theta = int(th) << LOIHI2.threshold_shift
            # Lava's scale_bias: int32 mantissa shifted by bias_exp (right if negative).
            self.bias = _wrap32(_shift(bias, int(neuron.bias_exp)))
            self.vlim = LOIHI2.state_max - 1
            dtype = torch.int64
            v0 = (self.theta >> 1) if self.soft else 0
        else:
            self.theta = float(neuron.threshold)
            self.bias = bias
            dtype = torch.float64
            v0 = self.theta * neuron.initial_fraction
        self.has_bias = bool((self.bias != 0).any())
        self.u = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.full(shape, v0, dtype=dtype, device=device)

    def step(self, a: torch.Tensor) -> torch.Tensor:
        """One step with synaptic input ``a``; returns the spikes (bool)."""
        if self.integer:
            m = LOIHI2.state_max
            d = _sign_mag_decay(self.u, self.du)
            d = _wrap32(d + _wrap32(_wrap32(a) << LOIHI2.activation_shift))
            lo, hi = torch.aminmax(d) if d.numel() else (torch.tensor(0), torch.tensor(0))
            if hi.item() > m or lo.item() <= -m:
                wrapped = torch.where(d > m, d - 2 * m, d)
                # Lava's quirk kept on purpose: the second test adds 2M to d, not to
                # `wrapped` (so a value is wrapped once at most and |u| may exceed M).
                d = torch.where(wrapped <= -m, d + 2 * m, wrapped)
            self.u = d
            v = _wrap32(_sign_mag_decay(self.v, self.dv) + self.u)
            if self.has_bias:
                v = _wrap32(v + self.bias)
            self.v = v.clamp(-self.vlim, self.vlim)
        else:
            unity = float(LOIHI2.decay_unity)
            self.u = self.u * (1.0 - self.du / unity) + a
            self.v = self.v * (1.0 - self.dv / unity) + self.u
            if self.has_bias:
                self.v = self.v + self.bias
        if self.soft:
            s = self.v >= self.theta
            self.v = self.v - s.to(self.v.dtype) * self.theta
        else:
            s = self.v > self.theta
            self.v = torch.where(s, torch.zeros_like(self.v), self.v)
        return s


# ----------------------------------------------------------------------------
# synapses
# ----------------------------------------------------------------------------

class _Synapse:
    """W ⊛ s for one weighted layer, float or Lava-exact integer."""

    def __init__(self, layer, in_shape: tuple, integer: bool, graded: bool,
                 max_in: float, device):
        self.layer = layer
        self.name = layer.name
        self.integer = integer
        self.graded = graded
        self.in_shape = in_shape
        w = np.asarray(layer.weight)
        if integer:
            if not np.all(np.isfinite(w)) or np.any(w != np.round(w)):
                raise QuantizationError(f"layer {self.name}: integer IR holds non-integer weights")
            if isinstance(layer, Conv) and int(layer.weight_exp) != 0:
                raise IRError(f"layer {self.name}: Lava's fixed-point Conv ignores weight_exp "
                              f"(= {layer.weight_exp}); fold it into the conv weights")
            if not LOIHI2.weight_exp_min <= int(layer.weight_exp) <= LOIHI2.weight_exp_max:
                raise QuantizationError(f"layer {self.name}: weight_exp {layer.weight_exp} "
                                        f"outside [{LOIHI2.weight_exp_min}, "
                                        f"{LOIHI2.weight_exp_max}]")
        # float64 carries integers exactly below 2**53: bound |W ⊛ s| by
        # max|s| · max_o Σ|W_o| (also bounds every partial sum).
        abs_row = np.abs(w.astype(np.float64)).reshape(w.shape[0], -1).sum(axis=1)
        self.partial_bound = float(max_in) * float(abs_row.max(initial=0.0))
        if integer and self.partial_bound >= _FLOAT64_EXACT:
            raise QuantizationError(f"layer {self.name}: synaptic sums may reach "
                                    f"{self.partial_bound:.3g}, beyond exact float64/int64 range")
        self.weight = torch.as_tensor(w.astype(np.float64), device=device)
        self.exp = int(layer.weight_exp)
        if isinstance(layer, Conv):
            self.abs_weight = self.weight.abs()
            # Lava's Conv runs in float32: exact only while every partial sum
            # stays below 2**24. Checked on the actual values only when the
            # static bound cannot exclude it.
            self.check_f32 = integer and self.partial_bound >= (1 << LOIHI2.conv_float_exact_bits)

    def _conv(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        lay = self.layer
        return F.conv2d(x, w, stride=tuple(lay.stride), padding=tuple(lay.padding),
                        dilation=tuple(lay.dilation), groups=int(lay.groups))

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        """s: (B, *in_shape) float64 (float IR) or int64 (integer IR)."""
        x = s.to(torch.float64)
        if isinstance(self.layer, Conv):
            out = self._conv(x, self.weight)
            if not self.integer:
                return out * (2.0 ** self.exp)
            if self.check_f32:
                reach = self._conv(x.abs(), self.abs_weight).max().item() if x.numel() else 0.0
                if reach >= (1 << LOIHI2.conv_float_exact_bits):
                    raise QuantizationError(
                        f"layer {self.name}: conv partial sums reach {int(reach)} >= "
                        f"2**{LOIHI2.conv_float_exact_bits}; Lava computes Conv in float32 "
                        f"and would no longer be exact")
            # Lava: float32 result cast to int32, then signed_clamp to 24 bits (wraps).
            return _wrap(out.to(torch.int64), LOIHI2.conv_output_bits)
        out = x @ self.weight.T
        if not self.integer:
            return out * (2.0 ** self.exp)
        acc = out.to(torch.int64)
        if self.graded:
            # graded spikes: weights(int32).dot(s_in(int32)) is an int32 product
            # that wraps before the exponent shift.
            return _wrap32(_shift(_wrap32(acc), self.exp))
        # binary spikes: numpy sums the selected int32 columns in int64; the
        # int32 channel wraps after the shift.
        return _wrap32(_shift(acc, self.exp))


# ----------------------------------------------------------------------------
# simulate
# ----------------------------------------------------------------------------

def _to_tensor(x, integer: bool, what: str) -> torch.Tensor:
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
    return t.to(torch.float64)


def _bias(layer, out_shape: tuple, integer: bool, device) -> torch.Tensor:
    dtype = torch.int64 if integer else torch.float64
    if layer.bias is None:
        return torch.zeros(out_shape, dtype=dtype, device=device)
    b = np.asarray(layer.bias)
    if integer:
        if np.any(b != np.round(b)):
            raise QuantizationError(f"layer {layer.name}: integer IR holds non-integer biases")
        if b.min(initial=0) < LOIHI2.bias_min or b.max(initial=0) > LOIHI2.bias_max:
            raise QuantizationError(f"layer {layer.name}: bias mantissa outside "
                                    f"[{LOIHI2.bias_min}, {LOIHI2.bias_max}]")
    t = torch.as_tensor(b.astype(np.int64 if integer else np.float64), device=device)
    if isinstance(layer, Conv) and t.dim() == 1 and len(out_shape) == 3:
        t = t.view(-1, 1, 1)  # one bias per output channel
    try:
        return torch.broadcast_to(t, out_shape).clone()
    except RuntimeError as exc:
        raise IRError(f"layer {layer.name}: bias shape {tuple(b.shape)} does not fit output "
                      f"{out_shape}") from exc


def simulate(net: Network, inputs, timesteps: int, *, pipelined: bool = False,
             record_spikes: bool = False, input_bias=None) -> SimResult:
    """Run ``net`` on a batch for ``timesteps`` steps (see module docstring).

    ``inputs``: (B, *input_shape) held constant, or (B, T, *input_shape)
    time-varying. Float IR: the analog values. Integer IR: graded spike
    payloads (0 .. 2**input_bits − 1), or the input neurons' a_in if the IR
    has an input neuron layer. ``input_bias``: bias (mantissa, integer IR) of
    the input neuron layer, shaped input_shape or (B, *input_shape).
    """
    if not isinstance(timesteps, (int, np.integer)) or isinstance(timesteps, bool) \
            or timesteps < 1:
        raise IRError(f"timesteps must be a positive integer, got {timesteps!r}")
    T = int(timesteps)
    integer = bool(net.integer)
    in_shape = tuple(int(s) for s in net.input.shape)
    device = inputs.device if isinstance(inputs, torch.Tensor) else torch.device("cpu")
    x = _to_tensor(inputs, integer, "inputs").to(device)
    if x.dim() == len(in_shape) + 1 and tuple(x.shape[1:]) == in_shape:
        varying = False
    elif x.dim() == len(in_shape) + 2 and tuple(x.shape[2:]) == in_shape:
        varying = True
        if x.shape[1] != T:
            raise IRError(f"time-varying inputs have {x.shape[1]} steps, expected {T}")
    else:
        raise IRError(f"inputs of shape {tuple(x.shape)} match neither (B, *{in_shape}) nor "
                      f"(B, {T}, *{in_shape})")
    B = int(x.shape[0])
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

    # --- build the layer chain ------------------------------------------------
    names, states = [], []
    if in_neuron is not None:
        if input_bias is None:
            ib = torch.zeros(in_shape, dtype=torch.int64 if integer else torch.float64,
                             device=device)
        else:
            ib = _to_tensor(input_bias, integer, "input_bias").to(device)
            if tuple(ib.shape) not in (in_shape, (B,) + in_shape):
                raise IRError(f"input_bias of shape {tuple(ib.shape)} is neither {in_shape} "
                              f"nor {(B,) + in_shape}")
            if integer and ib.numel() and (int(ib.min()) < LOIHI2.bias_min
                                           or int(ib.max()) > LOIHI2.bias_max):
                raise QuantizationError(f"layer {net.input.name}: input bias mantissa outside "
                                        f"[{LOIHI2.bias_min}, {LOIHI2.bias_max}]")
        ib = torch.broadcast_to(ib, (B,) + in_shape).clone()
        states.append(_NeuronState(in_neuron, ib, (B,) + in_shape, integer, device,
                                   net.input.name))
        names.append(net.input.name)
    elif input_bias is not None:
        raise IRError("input_bias given but the network has no input neuron layer")

    plan = []  # (kind, layer, synapse or None, state index or None)
    shape = in_shape
    first_weighted = True
    for layer, out_shape in zip(net.layers, net.shapes()):
        if isinstance(layer, Flatten):
            plan.append(("flatten", layer, None, None))
        elif isinstance(layer, (Conv, Dense)):
            graded = first_weighted and in_neuron is None
            syn = _Synapse(layer, shape, integer, graded, max_in if graded else 1.0, device)
            states.append(_NeuronState(layer.neuron, _bias(layer, out_shape, integer, device),
                                       (B,) + out_shape, integer, device, layer.name))
            names.append(layer.name)
            plan.append(("weighted", layer, syn, len(states) - 1))
            first_weighted = False
        else:
            raise IRError(f"unknown layer type {type(layer).__name__}")
        shape = out_shape

    n_out = int(np.prod(shape)) if net.layers else int(np.prod(in_shape))
    if not states:
        raise IRError("network has no spiking layer")
    int_dtype = torch.int64
    step_spikes = [torch.zeros((T, B), dtype=int_dtype, device=device) for _ in states]
    counts = [torch.zeros(st.v.shape, dtype=int_dtype, device=device) for st in states]
    trains = ([torch.zeros((T,) + tuple(st.v.shape), dtype=torch.bool, device=device)
               for st in states] if record_spikes else None)
    out_spikes = torch.zeros((T, B, n_out), dtype=int_dtype, device=device)
    # pipelined: what each synapse computed at the previous step (zero at step 1)
    buffers = {}
    for kind, layer, syn, idx in plan:
        if kind == "weighted":
            buffers[id(syn)] = torch.zeros(states[idx].v.shape,
                                           dtype=states[idx].v.dtype, device=device)
    sig_dtype = torch.int64 if integer else torch.float64
    # constant input into a synapse: W ⊛ x is the same every step, compute it once.
    const_first = None

    def record(idx: int, t: int, s: torch.Tensor) -> None:
        si = s.to(int_dtype)
        step_spikes[idx][t] = si.reshape(B, -1).sum(dim=1)
        counts[idx] += si
        if trains is not None:
            trains[idx][t] = s

    with torch.no_grad():
        for t in range(T):
            xt = x[:, t] if varying else x
            if in_neuron is not None:
                s = states[0].step(xt)
                record(0, t, s)
                sig = s.to(sig_dtype)
            else:
                sig = xt
            is_input_signal = in_neuron is None
            for kind, layer, syn, idx in plan:
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
                if pipelined:
                    a = buffers[id(syn)]
                    buffers[id(syn)] = a_new
                else:
                    a = a_new
                s = states[idx].step(a)
                record(idx, t, s)
                sig = s.to(sig_dtype)
            out_spikes[t] = sig.reshape(B, -1).to(int_dtype)
    return SimResult(output_spikes=out_spikes, layer_names=names, layer_step_spikes=step_spikes,
                     layer_counts=counts, layer_spike_trains=trains)
