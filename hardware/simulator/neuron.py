"""Neuron state of the reference simulator: u, v and the spike rule of one layer.

The update is :mod:`hardware.fixed_point.dynamics` (its float form for the float IR), on
torch tensors, in one of three modes:

* ``'float'`` (float IR): in the simulation's dtype.
* ``'lava'`` (integer IR): int64 with every one of Lava's wraps (int32 containers, the
  single 24-bit u wrap, the v clip).
* ``'exact'`` (integer IR, ``kernel='fast'``): when a static bound on the synaptic input
  (for a layer with extra inputs, the sum of the bounds of all of its synapses) proves
  that no wrap can occur, u and v are exact integers held in float32 (every value below
  2**24) or float64 and updated by the same formulas (a decay trunc(x·k/4096) is exact
  while x·k fits the significand).

``tests/test_dynamics.py`` checks 'lava' and 'exact' against dynamics with ==.
Package-internal.
"""
from __future__ import annotations

from typing import Optional

import torch

from hardware.errors import IRError
from hardware.ir import Neuron
from hardware.ir.validate import integer_scalar
from hardware.simulator.arith import _FLOAT32_EXACT, _shift, _sign_mag_decay, _wrap32
from hardware.spec import LOIHI2


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
