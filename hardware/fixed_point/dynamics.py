"""The one-step update of every neuron this project runs, defined once.

Each function advances a population by one Lava step on int64 numpy arrays, with Lava
0.10's fixed-point arithmetic (``AbstractPyLifModelFixed.subthr_dynamics``) and the
numbers of :data:`hardware.spec.LOIHI2`. ``tests/test_dynamics.py`` checks Lava's stock
``PyLifModelBitAcc``, this project's ``PyIFSoftResetModelBitAcc`` (which runs
:func:`step`) and both integer paths of the reference simulator against these with ==.

Sub-threshold update (M = 2**23 for the 24-bit state, A = ``activation_shift`` = 6,
int32 = a wrap to 32 bits where Lava's int32 containers overflow)::

    decay(x, d) = sign(x·(4096 − d)) · (|x·(4096 − d)| >> 12)      (toward zero)
    u' = int32( decay(u, du + 1) + int32(int32(a) << A) )
    u  = u' − 2M  if u' > M;   u' + 2M  if u' ≤ −M;   u' otherwise  (one wrap only)
    v  = clip( int32(decay(v, dv) + u + (bias_mant << bias_exp)), −(M−1), M−1 )

Spikes, with θ = vth << ``threshold_shift`` (6): ``cuba`` (Lava's LIF): s = v > θ, v ← 0
where s, v0 = 0. ``if_soft`` (the paper's IF neuron): s = v ≥ θ, v ← v − θ where s,
v0 = θ >> 1. The readout integrator (:func:`readout_params`) is a cuba neuron with
du = 4095 (u = a << 6), dv = 0 and vth = ``threshold_max``, which it never reaches.
Periodic reset (:func:`is_reset_step`): at the start of step t (1-based), if
t mod I == offset mod I, then u ← 0 and v ← v0. The float IR runs the same update in
real numbers: decay(x, d) = x·(1 − d/4096), no wrap, clip or shift, v0 = θ/2 or 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from hardware.spec import LOIHI2, Loihi2Spec

__all__ = ["NeuronParams", "decay", "subthreshold", "cuba_spikes", "if_soft_spikes",
           "initial_v", "step", "is_reset_step", "run", "readout_params"]

KINDS = ("cuba", "if_soft")


@dataclass(frozen=True)
class NeuronParams:
    """One population's parameters, in Lava's integer units."""

    kind: str
    vth: int
    du: int
    dv: int
    bias_mant: Union[np.ndarray, int] = 0
    bias_exp: Union[np.ndarray, int] = 0


def readout_params(spec: Loihi2Spec = LOIHI2) -> NeuronParams:
    """The non-firing readout integrator (``hardware.ir.readout_neuron``'s integer form)."""
    return NeuronParams("cuba", vth=spec.threshold_max, du=spec.if_du, dv=0,
                        bias_exp=spec.netx_bias_exp)


def _wrap(x: np.ndarray, bits: int) -> np.ndarray:
    half = 1 << (bits - 1)
    return ((x + half) & ((1 << bits) - 1)) - half


def decay(x: np.ndarray, d: int, spec: Loihi2Spec = LOIHI2) -> np.ndarray:
    """sign(x·(4096 − d)) · (|x·(4096 − d)| >> 12): Lava's decay, rounding toward zero."""
    prod = np.asarray(x, dtype=np.int64) * (spec.decay_unity - int(d))
    return np.sign(prod) * (np.abs(prod) >> spec.decay_bits)


def effective_bias(p: NeuronParams, spec: Loihi2Spec = LOIHI2) -> np.ndarray:
    """bias_mant << bias_exp (>> −bias_exp if negative), in an int32 container."""
    b = np.asarray(p.bias_mant, dtype=np.int64)
    e = np.asarray(p.bias_exp, dtype=np.int64)
    shifted = np.where(e >= 0, b << np.maximum(e, 0), b >> np.maximum(-e, 0))
    return _wrap(shifted, spec.container_bits)


def subthreshold(u: np.ndarray, v: np.ndarray, a: np.ndarray, p: NeuronParams,
                 spec: Loihi2Spec = LOIHI2) -> tuple:
    """(u, v) after one step's integration of synaptic input ``a`` (module docstring)."""
    m, c = spec.state_max, spec.container_bits
    a64 = _wrap(np.asarray(a, dtype=np.int64), c)
    du = decay(u, p.du + spec.current_decay_offset, spec)
    u_new = _wrap(_wrap(du, c) + _wrap(a64 << spec.activation_shift, c), c)
    # Lava's quirk: the second test adds 2M to the unwrapped value, so one wrap at most
    wrapped = np.where(u_new > m, u_new - 2 * m, u_new)
    u_new = np.where(wrapped <= -m, u_new + 2 * m, wrapped)
    v_sum = _wrap(_wrap(decay(v, p.dv + spec.voltage_decay_offset, spec), c) + u_new
                  + effective_bias(p, spec), c)
    return u_new, np.clip(v_sum, -(m - 1), m - 1)


def theta(vth: int, spec: Loihi2Spec = LOIHI2) -> int:
    """The effective threshold vth << 6, MSB-aligned with the 24-bit v."""
    return int(vth) << spec.threshold_shift


def cuba_spikes(v: np.ndarray, vth: int, spec: Loihi2Spec = LOIHI2) -> tuple:
    """(spikes, v): spike where v > θ (strict), v reset to 0 there."""
    s = v > theta(vth, spec)
    return s, np.where(s, 0, v)


def if_soft_spikes(v: np.ndarray, vth: int, spec: Loihi2Spec = LOIHI2) -> tuple:
    """(spikes, v): spike where v ≥ θ, reset by subtraction v − θ there."""
    th = theta(vth, spec)
    s = v >= th
    return s, v - np.where(s, th, 0).astype(v.dtype)


def initial_v(kind: str, vth: int, spec: Loihi2Spec = LOIHI2) -> int:
    """The membrane before step 1 and after a periodic reset: θ >> 1 (if_soft) or 0."""
    if kind not in KINDS:
        raise ValueError(f"unknown neuron kind {kind!r}; one of {KINDS}")
    return theta(vth, spec) >> 1 if kind == "if_soft" else 0


def is_reset_step(t: int, interval: Optional[int], offset: int) -> bool:
    """LIFReset's rule: reset at the start of steps with t mod I == offset mod I."""
    return interval is not None and t % interval == offset % interval


def step(u: np.ndarray, v: np.ndarray, a: np.ndarray, p: NeuronParams,
         spec: Loihi2Spec = LOIHI2) -> tuple:
    """(u, v, spikes) after one step of a ``cuba`` or ``if_soft`` population."""
    u, v = subthreshold(u, v, a, p, spec)
    fire = if_soft_spikes if p.kind == "if_soft" else cuba_spikes
    s, v = fire(v, p.vth, spec)
    return u, v, s


def run(a: np.ndarray, p: NeuronParams, *, reset_interval: Optional[int] = None,
        reset_offset: int = 0, spec: Loihi2Spec = LOIHI2) -> tuple:
    """Run a population on inputs ``a`` (n, steps), column t−1 being step t's input.

    Returns (spikes (n, steps) int64, v after each step (n, steps) int64).
    """
    a = np.asarray(a, dtype=np.int64)
    n, steps = a.shape
    u = np.zeros(n, dtype=np.int64)
    v = np.full(n, initial_v(p.kind, p.vth, spec), dtype=np.int64)
    spikes = np.zeros((n, steps), dtype=np.int64)
    vs = np.zeros((n, steps), dtype=np.int64)
    for t in range(1, steps + 1):
        if is_reset_step(t, reset_interval, reset_offset):
            u[:] = 0
            v[:] = initial_v(p.kind, p.vth, spec)
        u, v, s = step(u, v, a[:, t - 1], p, spec)
        spikes[:, t - 1], vs[:, t - 1] = s, v
    return spikes, vs
