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

Extra inputs (residual networks, ``ir.Projection``): a layer's synaptic input is the
sum of its main synapse and of every projection applied to the spikes of its source
layer, each synapse computed by its own rule above (a conv projection as Conv, a dense
one as Dense on binary spikes, reading the source flattened in C order)::

    a_l[t] = W_l ⊛ s_{l−1}[t] + Σ_k P_k ⊛ s_{source_k}[t]

Lava adds what arrives at one InPort in its int32 container, i.e. ``wrap32`` of the sum,
which the neuron's ``wrap32(a)`` above is. An integer projection whose partial sums could
reach 2**23 is refused (below it Conv's 24-bit and a sparse synapse's 32-bit wraps
cannot differ; the quantizer keeps every sum below 2**17).

Timing. ``pipelined=False``: layer l integrates at step t what layer l−1 emitted
at step t (the paper's SNN), and every extra input is its source's step-t output.
``pipelined=True``: Lava's timing, one continuous run from step 1: every synapse
sends at step t what it computed from the spikes it received at step t−1 (zero at
step 1); an input neuron layer receives the input at step t directly (no synapse in
front of it). A projection is additionally delayed by d = ``net.extra_delay(layer,
projection)`` = depth(layer) − depth(source) − 1 steps (Lava's delayed sparse
synapse, delay d): it sends at step t what it computed from the source's spikes of
step t − 1 − d (zero before), so every input of a layer carries the same sample step
on Lava as in the paper. ``simulate(..., align_extra_inputs=False)`` drops the extra d
(only to measure what the alignment buys).

Kernels (``simulate(..., dtype=..., kernel=...)``). The integer form is exact on
every kernel; per layer the simulator runs the fastest one that a static bound
proves exact, and ``kernel='exact64'`` forces the reference path instead (the
IR's own kernels in float64, the int64 neuron emulation above, as before the fast
path existed; the tests compare the two with ``==``):

* synapse: synaptic inputs are ≥ 0 (spikes, graded payloads), so every partial
  sum of W ⊛ s, in any order, lies between the sums of its negative and of its
  positive terms: |partial| ≤ B = max s · max_o max(Σ W_o⁺, Σ |W_o⁻|) (each synapse of
  a layer, main and projections, gets its own kernel by its own bound). B < 2**24:
  float32 matmul/conv (a float32 significand holds every integer below 2**24),
  or, on an x86 CPU, oneDNN's u8·s8→int32 conv/linear when the inputs fit u8, the
  weights s8 and no int16 pair sum can saturate (:func:`_int8_exact`; binary
  spikes into 8-bit weights always qualify), 2–3× faster than float32;
  B < 2**53: float64; beyond: an error.
* pooling fold: a conv kernel constant on P×P blocks whose stride is a multiple
  of P (the converter's avg-pool + conv, ``kron(W, 1_{P×P})/P²``), or a dense
  layer after a flatten whose weights are constant on P×P blocks of the (C, H, W)
  map (avg-pool + flatten + linear), runs as a P×P sum-pool then the P²-times
  smaller conv/matmul: the same integer sums, so the same integers.
* neuron: when the bound on the synaptic input (for a layer with extra inputs: the
  SUM of the bounds of all of its synapses) proves that none of Lava's wraps
  (int32 containers, the 24-bit u wrap) can occur, u and v are exact integers
  held in float32 (every value below 2**24) or float64, updated by the same
  formulas (a decay is trunc(x·k/4096), exact while x·k fits the significand);
  otherwise the int64 emulation with every wrap, as above.
* layout: conv maps stay channels-last (oneDNN's fast layout) and the batch runs
  in cache-sized chunks (samples are independent); the reference paths do neither.
* device: float32 kernels are used only where they are sums of exact products:
  ``torch.get_float32_matmul_precision() == 'highest'`` (no TF32/bf16), and on
  CUDA integer convs bypass cuDNN (its Winograd/FFT algorithms round).

Float form: ``dtype=torch.float64`` (default) runs the IR's kernels as they are,
in float64 (the results of earlier versions). ``dtype=torch.float32`` runs
synapses and state in float32 (channels-last, chunked), with the pooling fold
and the weight exponent folded into the weights: a different rounding, so a
spike can differ where v lands within float32 rounding of θ (fine for σ
estimation and model selection, not a reference); on CUDA its convs do not use
TF32. The integer form ignores ``dtype``.
"""
from __future__ import annotations

import contextlib
import functools
import math
import platform
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from hardware.errors import IRError, QuantizationError
from hardware.kinds import Readout
from hardware.ir import Conv, Dense, Flatten, Network, Neuron, Projection
from hardware.spec import LOIHI2
from hardware.ir.validate import integer_array, integer_scalar, simulator_limits, validate_network

# IEEE significands: float32 holds every integer below 2**24 exactly, float64
# below 2**53. A sum of integers stays exact while every partial sum does.
_FLOAT32_EXACT = 1 << 24
_FLOAT64_EXACT = 1 << 53
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


def _shift_bound(bound: int, exp: int) -> int:
    """Bound on |x << exp| (or on |x >> −exp|, a floor: ⌈bound / 2**−exp⌉), |x| ≤ bound."""
    return bound << exp if exp >= 0 else -((-bound) >> (-exp))


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


def _float32_exact_here(device) -> bool:
    """float32 matmul/conv on ``device`` are plain sums of exact products (no TF32/bf16)."""
    return (torch.get_float32_matmul_precision() == "highest"
            and torch.device(device).type in ("cpu", "cuda"))


def _conv_context(integer: bool, dtype: torch.dtype, device):
    """On CUDA: integer convs bypass cuDNN (its Winograd/FFT algorithms round), and
    float32 ones do not drop to TF32's 10-bit mantissa. A no-op elsewhere."""
    if torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    if integer:
        return torch.backends.cudnn.flags(enabled=False)
    cudnn = torch.backends.cudnn
    return cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark,
                       deterministic=cudnn.deterministic,
                       allow_tf32=cudnn.allow_tf32 and dtype != torch.float32)


@functools.lru_cache(maxsize=None)
def _onednn_int8_available() -> bool:
    """oneDNN's u8·s8 → s32 conv/linear on an x86 CPU (the kernels reasoned about in
    :func:`_int8_exact`; other architectures take the float32 path)."""
    if platform.machine().lower() not in ("x86_64", "amd64") \
            or not torch.backends.mkldnn.is_available():
        return False
    try:
        for op in ("qconv_prepack", "qconv2d_pointwise", "qlinear_prepack", "qlinear_pointwise"):
            getattr(torch.ops.onednn, op)
    except (AttributeError, RuntimeError):
        return False
    return True


def _int8_exact(w: np.ndarray, x_max: float, groups: int, device) -> bool:
    """oneDNN's x86 u8·s8 kernels are exact on these integers: without VNNI they add
    products in pairs into a saturating int16 (vpmaddubsw), then widen to int32
    (vpmaddwd, vpaddd); VNNI (vpdpbusd) sums into int32 directly. So inputs in
    [0, 255], weights in [−128, 127] and 2·max x·max|w| ≤ 32767 leave no saturation,
    and the int32 sums are exact (the float32 bound keeps them below 2**24)."""
    if torch.device(device).type != "cpu" or groups != 1 or not _onednn_int8_available():
        return False
    i8, u8, i16 = np.iinfo(np.int8), np.iinfo(np.uint8), np.iinfo(np.int16)
    lo, hi = (float(w.min()), float(w.max())) if w.size else (0.0, 0.0)
    return (i8.min <= lo and hi <= i8.max and x_max <= u8.max
            and 2 * x_max * max(-lo, hi) <= i16.max)


def _exact_dtype(bound: float, device) -> torch.dtype:
    """float32 if every value (|·| ≤ bound) is an exactly representable integer there."""
    return torch.float32 if bound < _FLOAT32_EXACT and _float32_exact_here(device) \
        else torch.float64


# ----------------------------------------------------------------------------
# neuron state
# ----------------------------------------------------------------------------

class _NeuronState:
    """Parameters of one spiking layer; u, v of one batch chunk (:meth:`reset`); the step.

    ``mode``: ``'float'`` (float IR), ``'exact'`` (integer IR, no wrap possible:
    integers held in float32/float64) or ``'lava'`` (integer IR, int64 with every
    wrap). ``a_bound``: static bound on |synaptic input| (None: unknown, 'lava').
    ``bias``: shaped ``shape``, or (B, *shape) per sample (sliced per chunk).
    Spikes come back as a float 0/1 tensor (bool in 'lava' mode), reused every step."""

    def __init__(self, neuron: Neuron, bias: torch.Tensor, shape: tuple, integer: bool,
                 device, name: str, a_bound: Optional[int] = None,
                 dtype: torch.dtype = torch.float64, channels_last: bool = False):
        self.neuron, self.integer, self.name = neuron, integer, name
        self.shape, self.device = tuple(shape), device
        if neuron.kind not in ("if_soft", "cuba"):
            raise IRError(f"layer {name}: unknown neuron kind {neuron.kind!r}")
        # netx's default neuron (du = -1: no current decay, dv = 4096) included; float IR too
        integer_scalar(neuron.du, name, "du", LOIHI2.netx_du_min, LOIHI2.decay_max)
        integer_scalar(neuron.dv, name, "dv", 0, LOIHI2.netx_dv_max)
        self.du = int(neuron.du) + LOIHI2.current_decay_offset
        self.dv = int(neuron.dv) + LOIHI2.voltage_decay_offset
        self.soft = neuron.kind == "if_soft"
        if integer:
            self.v0 = self._init_integer(neuron, bias, a_bound)
        else:
            self.mode, self.dtype = "float", dtype
            self.theta = float(neuron.threshold)
            self.bias = bias.to(dtype)
            unity = float(LOIHI2.decay_unity)
            self.u_factor, self.v_factor = 1.0 - self.du / unity, 1.0 - self.dv / unity
            # (a readout layer's θ is +inf: 0·inf would be NaN)
            self.v0 = self.theta * neuron.initial_fraction if neuron.initial_fraction else 0.0
        self.has_bias = bool((self.bias != 0).any())
        self.bias_batched = self.bias.dim() == len(self.shape) + 1
        # channels-last conv states: the conv kernels' fast layout, kept end to end
        self.format = (torch.channels_last if channels_last and len(self.shape) == 3
                       and self.mode != "lava" else torch.contiguous_format)
        if not self.bias_batched and self.format is torch.channels_last:
            self.bias = self.bias.unsqueeze(0).contiguous(memory_format=self.format)

    def reset(self, b0: int, b1: int) -> None:
        """Fresh u, v (and spike buffer) for samples b0 .. b1 − 1."""
        shape = (b1 - b0,) + self.shape
        self.v = torch.empty(shape, dtype=self.dtype, device=self.device,
                             memory_format=self.format).fill_(self.v0)
        # u is state only where it decays (or in the emulation); else it is a << 6
        memoryless = (self.mode == "exact" and self.u_keep == 0.0
                      or self.mode == "float" and self.u_factor == 0.0)
        self.u = None if memoryless else torch.zeros_like(self.v)
        self.spikes = None if self.mode == "lava" else torch.empty_like(self.v)
        self.b = self.bias[b0:b1] if self.bias_batched else self.bias

    def _init_integer(self, neuron: Neuron, bias: torch.Tensor, a_bound) -> int:
        theta = int(neuron.threshold) << LOIHI2.threshold_shift  # validated in _build
        # Lava's scale_bias: int32 mantissa shifted by bias_exp (right if negative).
        bias = _wrap32(_shift(bias, int(neuron.bias_exp)))
        self.vlim = LOIHI2.state_max - 1
        bias_bound = int(bias.abs().max()) if bias.numel() else 0
        self.dtype = self._exact_state_dtype(a_bound, bias_bound)
        self.mode = "lava" if self.dtype is None else "exact"
        if self.mode == "lava":
            self.dtype, self.theta, self.bias = torch.int64, theta, bias
        else:
            self.theta, self.bias = float(theta), bias.to(self.dtype)
            unity = float(LOIHI2.decay_unity)
            # keep fractions k/4096: x·k/4096 is exact while x·k fits the significand
            self.u_keep = (LOIHI2.decay_unity - self.du) / unity
            self.v_keep = (LOIHI2.decay_unity - self.dv) / unity
            self.a_scale = float(1 << LOIHI2.activation_shift)
        return (theta >> 1) if self.soft else 0

    def _exact_state_dtype(self, a_bound, bias_bound: int) -> Optional[torch.dtype]:
        """float32/float64 if no Lava wrap can occur and every value is exact there, else None.

        |u_t| ≤ 64·A·Σ_i (k_u/4096)^i < 64·A·4096/(du+1) (decays round toward zero), so
        u never reaches the 24-bit wrap if that is < 2**23; |v| ≤ 2**23 − 1 after the clip,
        so the int32 sums decay(v) + u + bias cannot wrap below 2**31."""
        if a_bound is None:
            return None
        m, unity = LOIHI2.state_max, LOIHI2.decay_unity
        keep_u, keep_v = unity - self.du, unity - self.dv
        if keep_u == unity:  # u never decays (netx's default neuron): no static bound
            return None
        a64 = int(a_bound) << LOIHI2.activation_shift
        u_bound = a64 if keep_u == 0 else a64 * unity // (unity - keep_u) + 1
        v_bound = (m - 1) + u_bound + bias_bound
        if u_bound >= m or v_bound >= 1 << (LOIHI2.container_bits - 1):
            return None
        products = [v_bound, u_bound * keep_u,
                    (m - 1) * keep_v if keep_v != unity else 0]
        exact32 = max(products) < _FLOAT32_EXACT
        return torch.float32 if exact32 else torch.float64

    def step(self, a: torch.Tensor) -> torch.Tensor:
        """One step with synaptic input ``a``; returns the spikes."""
        if self.mode == "lava":
            self._subthreshold_lava(a)
            v = self.v
            if self.soft:
                s = v >= self.theta
                v.sub_(s.to(v.dtype), alpha=self.theta)
            else:
                s = v > self.theta
                v.masked_fill_(s, 0)
            return s
        if self.mode == "exact":
            self._subthreshold_exact(a)
        else:
            self._subthreshold_float(a)
        v, s = self.v, self.spikes
        # a float comparison result written straight into the float buffer: a bool
        # tensor and its conversion cost 4× more
        (torch.ge if self.soft else torch.gt)(v, self.theta, out=s)
        if self.soft:
            v.sub_(s, alpha=self.theta)  # v − θ·s, θ·s exact
        elif self.mode == "float" and self.dtype == torch.float64:
            v.masked_fill_(s.bool(), 0)  # the reference: also 0 where v = +inf
        else:
            v.addcmul_(v, s, value=-1)  # v − v·s: 0 where it fired (v is finite)
        return s

    def _subthreshold_lava(self, a: torch.Tensor) -> None:
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
            v = _wrap32(v + self.b)
        self.v = v.clamp(-self.vlim, self.vlim)

    def _subthreshold_exact(self, a: torch.Tensor) -> None:
        # Lava's formulas on exact integers (no wrap can occur, see _exact_state_dtype)
        if not a.is_floating_point():  # an input neuron layer's a_in (int64 payloads)
            a = a.to(self.dtype)
        v = self.v if self.v_keep == 1.0 else torch.trunc(self.v * self.v_keep)
        if self.u_keep == 0.0:  # du = 4095: u = a << 6, no memory
            v.add_(a, alpha=self.a_scale)
        else:
            self.u = torch.trunc(self.u * self.u_keep).add_(a, alpha=self.a_scale)
            v.add_(self.u)
        if self.has_bias:
            v.add_(self.b)
        self.v = v.clamp_(-self.vlim, self.vlim)

    def _subthreshold_float(self, a: torch.Tensor) -> None:
        # u·0 + a = a and v·1 = v exactly: the shortcuts round as the full formula
        self.u = a if self.u_factor == 0.0 else self.u * self.u_factor + a
        v = self.v if self.v_factor == 1.0 else self.v * self.v_factor
        self.v = v.add_(self.u)
        if self.has_bias:
            self.v.add_(self.b)


# ----------------------------------------------------------------------------
# synapses
# ----------------------------------------------------------------------------

def _block_values(w4: np.ndarray, p: int) -> Optional[np.ndarray]:
    """w4 (O, I, H, W) with H, W multiples of p: the p×p block values if w4 is
    constant on every block, else None."""
    o, i, h, w = w4.shape
    blocks = w4.reshape(o, i, h // p, p, w // p, p)
    first = blocks[:, :, :, :1, :, :1]
    return first[:, :, :, 0, :, 0] if np.array_equal(blocks, np.broadcast_to(first, blocks.shape)) \
        else None


def _conv_pool_fold(w: np.ndarray, stride: tuple, dilation: tuple):
    """(P, small kernel) for the largest P > 1 such that the conv kernel is constant on
    P×P blocks and the stride is a multiple of P, else (1, None)."""
    kh, kw = w.shape[2:]
    if tuple(dilation) != (1, 1):
        return 1, None
    for p in range(min(kh, kw), 1, -1):
        if kh % p or kw % p or stride[0] % p or stride[1] % p:
            continue
        small = _block_values(w, p)
        if small is not None:
            return p, small
    return 1, None


def _dense_pool_fold(w: np.ndarray, chw: Optional[tuple]):
    """(P, small matrix) for the largest P > 1 such that the weights, seen on the
    (C, H, W) map they read, are constant on P×P blocks of its top-left
    ⌊H/P⌋P × ⌊W/P⌋P part and zero elsewhere (what avg-pool's floor drops),
    else (1, None)."""
    if chw is None or len(chw) != 3:
        return 1, None
    c, h, wd = chw
    w4 = w.reshape(w.shape[0], c, h, wd)
    for p in range(min(h, wd), 1, -1):
        hc, wc = h // p * p, wd // p * p
        if w4[:, :, hc:].any() or w4[:, :, :, wc:].any():
            continue
        small = _block_values(np.ascontiguousarray(w4[:, :, :hc, :wc]), p)
        if small is not None:
            return p, small.reshape(w.shape[0], -1)
    return 1, None


def _partial_bound(w: np.ndarray, max_in: float, integer: bool) -> float:
    """Bound on every partial sum of W ⊛ s (see the module docstring, Kernels)."""
    flat = np.asarray(w, dtype=np.float64).reshape(w.shape[0], -1)
    if integer:  # inputs are ≥ 0: partial sums lie between Σ W⁻·s and Σ W⁺·s
        rows = np.maximum(np.clip(flat, 0, None).sum(axis=1), np.clip(-flat, 0, None).sum(axis=1))
    else:
        rows = np.abs(flat).sum(axis=1)
    return float(max_in) * float(rows.max(initial=0.0))


class _Synapse:
    """W ⊛ s for one weighted layer: float, or Lava-exact integer on the fastest
    kernel a static bound proves exact (module docstring, Kernels).

    ``a_bound``: bound on |a| when no Lava wrap can occur in the synapse (else None);
    ``exact_out`` (set by the caller when the neuron runs in 'exact' mode): return the
    Lava synaptic input as exact integers in a float tensor instead of int64."""

    def __init__(self, layer, in_shape: tuple, integer: bool, graded: bool, max_in: float,
                 device, fast: bool = False, dtype: torch.dtype = torch.float64,
                 chw: Optional[tuple] = None, channels_last: bool = False):
        self.layer, self.name, self.integer, self.graded = layer, layer.name, integer, graded
        self.out_shape = tuple(int(d) for d in layer.output_shape(
            (int(np.prod(in_shape)),) if isinstance(layer, Dense) else tuple(in_shape)))
        self.in_shape, self.device = in_shape, torch.device(device)
        self.is_conv = isinstance(layer, Conv)
        self.format = torch.channels_last if channels_last and self.is_conv \
            else torch.contiguous_format
        self.exp = int(layer.weight_exp)
        self.exact_out = False
        w = np.asarray(layer.weight)  # an integer IR's weights are validated in _build
        self.partial_bound = _partial_bound(w, max_in, integer)
        if integer and self.partial_bound >= _FLOAT64_EXACT:
            raise QuantizationError(f"layer {self.name}: synaptic sums may reach "
                                    f"{self.partial_bound:.3g}, beyond exact float64/int64 range")
        # Lava's Conv runs in float32: exact only while every partial sum stays below
        # 2**24. Checked on the actual values only when the static bound cannot exclude it.
        self.check_f32 = (self.is_conv and integer
                          and self.partial_bound >= (1 << LOIHI2.conv_float_exact_bits))
        if self.check_f32:
            self.abs_weight = torch.as_tensor(np.abs(w.astype(np.float64)), device=device)
        self._choose_kernel(w, max_in, fast, dtype, chw)
        self.a_bound = self._a_bound() if integer else None

    def _choose_kernel(self, w: np.ndarray, max_in: float, fast: bool, dtype, chw) -> None:
        """The kernel ('int8', 'float32' or 'float64'), its weights, and the pooling fold."""
        lay = self.layer
        fold = fast if self.integer else dtype == torch.float32
        self.pool, small, self.pre_pad, self.pool_shape = 1, None, None, None
        if fold and self.is_conv:
            self.pool, small = _conv_pool_fold(w, tuple(lay.stride), tuple(lay.dilation))
        elif fold:
            self.pool, small = _dense_pool_fold(w, chw)
            self.pool_shape = chw
        kernel = np.asarray(w if small is None else small)
        x_max = max_in * self.pool ** 2  # largest input of the (pooled) matmul/conv
        if not self.integer:
            self.dtype = dtype
        elif fast:  # the sum-pool's own sums must be exact too
            self.dtype = _exact_dtype(max(self.partial_bound, x_max), self.device)
        else:
            self.dtype = torch.float64
        if not self.integer and dtype == torch.float32 and self.exp:
            kernel = kernel * 2.0 ** self.exp  # exact power-of-two scaling
            self.exp = 0
        self.conv_args = self._conv_args() if self.is_conv else None
        groups = int(lay.groups) if self.is_conv else 1
        if fast and self.dtype == torch.float32 and _int8_exact(kernel, x_max, groups,
                                                                 self.device):
            self.kernel = "int8"
            self._pack_int8(kernel)
        else:
            self.kernel = "float32" if self.dtype == torch.float32 else "float64"
            self.weight = torch.as_tensor(kernel.astype(np.float64), device=self.device
                                          ).to(self.dtype).contiguous(memory_format=self.format)

    def _pack_int8(self, kernel: np.ndarray) -> None:
        """oneDNN's prepacked s8 weights; scales 1 and zero points 0, so the u8·s8 int32
        sums come back as float32 (exact: below 2**24)."""
        w8 = torch.as_tensor(kernel.astype(np.int8))
        self.w_scale = torch.ones(w8.shape[0], dtype=torch.float32)
        self.w_zero = torch.zeros(w8.shape[0], dtype=torch.int64)
        if self.is_conv:
            a = self.conv_args
            self.weight = torch.ops.onednn.qconv_prepack(
                w8, self.w_scale, 1.0, 0, list(a["stride"]), list(a["padding"]),
                list(a["dilation"]), a["groups"], None)
        else:
            self.weight = torch.ops.onednn.qlinear_prepack(w8, None)

    def _int8(self, x: torch.Tensor) -> torch.Tensor:
        xq = x.to(torch.uint8)  # integers in [0, 255] (_int8_exact)
        if not self.is_conv:
            return torch.ops.onednn.qlinear_pointwise(
                xq, 1.0, 0, self.weight, self.w_scale, self.w_zero, None, 1.0, 0,
                torch.float32, "none", [], "")
        a = self.conv_args
        out = torch.ops.onednn.qconv2d_pointwise(
            xq.contiguous(memory_format=torch.channels_last), 1.0, 0, self.weight,
            self.w_scale, self.w_zero, None, list(a["stride"]), list(a["padding"]),
            list(a["dilation"]), a["groups"], 1.0, 0, torch.float32, "none", [], "")
        return out.contiguous(memory_format=self.format)

    def set_output(self, exact: bool) -> None:
        """Exact integers in float for an 'exact' neuron, else (integer IR) Lava's int64."""
        self.exact_out = exact
        if self.integer and not exact and self.format is torch.channels_last:
            self.format = torch.contiguous_format  # the int64 emulation's layout
            if self.kernel != "int8":
                self.weight = self.weight.contiguous()

    def _conv_args(self) -> dict:
        lay, p = self.layer, self.pool
        stride, padding = tuple(lay.stride), tuple(lay.padding)
        if p > 1:
            h, w = self.in_shape[1:]
            aligned = padding[0] % p == 0 and padding[1] % p == 0 and h % p == 0 and w % p == 0
            # pad first unless the pooling blocks of the padded map are those of the
            # map (then the small conv pads by padding / P itself)
            if not aligned:
                self.pre_pad = (padding[1], padding[1], padding[0], padding[0])
            padding = (padding[0] // p, padding[1] // p) if aligned else (0, 0)
            stride = (stride[0] // p, stride[1] // p)
        return dict(stride=stride, padding=padding, dilation=tuple(lay.dilation),
                    groups=int(lay.groups))

    def _a_bound(self) -> Optional[int]:
        """Bound on |a| if none of Lava's synapse wraps can occur, else None."""
        bound = int(math.ceil(self.partial_bound))
        if self.is_conv:
            return bound if bound < 1 << (LOIHI2.conv_output_bits - 1) else None
        half32 = 1 << (LOIHI2.container_bits - 1)
        shifted = _shift_bound(bound, self.exp)
        return shifted if bound < half32 and shifted < half32 else None

    def _sum_pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_shape is not None:  # dense after flatten: pool the (C, H, W) map
            x = x.reshape((x.shape[0],) + tuple(self.pool_shape))
        if self.pre_pad is not None:
            x = F.pad(x, self.pre_pad)
        y = F.avg_pool2d(x, self.pool, divisor_override=1)  # a sum: integers stay exact
        return y.reshape(y.shape[0], -1) if self.pool_shape is not None else y

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool > 1:
            x = self._sum_pool(x)
        if self.kernel == "int8" and x.shape[0]:  # (oneDNN refuses empty batches)
            return self._int8(x)
        if self.kernel == "int8":
            return torch.zeros((0,) + self.out_shape, dtype=self.dtype, device=self.device)
        if not self.is_conv:
            return x @ self.weight.T
        with _conv_context(self.integer, self.dtype, self.device):
            out = F.conv2d(x, self.weight, **self.conv_args)
        # (with one input channel the layouts coincide and torch may answer in NCHW)
        return out.contiguous(memory_format=self.format)

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        """s: (B, *in_shape) spikes (bool) or inputs (float IR: analog; integer IR: payloads)."""
        x = s.to(self.dtype)
        if self.format is torch.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self._linear(x)
        if not self.integer:
            return out * (2.0 ** self.exp) if self.exp else out
        if self.exact_out:  # no wrap can occur (a_bound): the shift alone, exact in float
            return out if not self.exp else (out * 2.0 ** self.exp if self.exp > 0
                                             else torch.floor(out * 2.0 ** self.exp))
        return self._lava_int(out, x)

    def _lava_int(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Lava's int64/int32 treatment of the exact integer sums ``out``."""
        if self.is_conv:
            if self.check_f32:
                lay = self.layer
                reach = F.conv2d(x.abs().to(torch.float64), self.abs_weight,
                                 stride=tuple(lay.stride), padding=tuple(lay.padding),
                                 dilation=tuple(lay.dilation), groups=int(lay.groups)
                                 ).max().item() if x.numel() else 0.0
                if reach >= (1 << LOIHI2.conv_float_exact_bits):
                    raise QuantizationError(
                        f"layer {self.name}: conv partial sums reach {int(reach)} >= "
                        f"2**{LOIHI2.conv_float_exact_bits}; Lava computes Conv in float32 "
                        f"and would no longer be exact")
            # Lava: float32 result cast to int32, then signed_clamp to 24 bits (wraps).
            return _wrap(out.to(torch.int64), LOIHI2.conv_output_bits)
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
