"""Exact integer arithmetic for the reference simulator: int64 tensors that emulate
Lava's int32 and 24-bit containers, and the float dtypes that hold integers exactly.

IEEE significands: float32 holds every integer below 2**24 exactly, float64 below 2**53;
a sum of integers stays exact while every partial sum does. Package-internal.
"""
from __future__ import annotations

import torch

from hardware.spec import LOIHI2

_FLOAT32_EXACT = 1 << 24
_FLOAT64_EXACT = 1 << 53


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


def _exact_dtype(bound: float, device) -> torch.dtype:
    """float32 if every value (|·| ≤ bound) is an exactly representable integer there."""
    return torch.float32 if bound < _FLOAT32_EXACT and _float32_exact_here(device) \
        else torch.float64
