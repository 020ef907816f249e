"""Synapses of the reference simulator: W ⊛ s of one conv/dense layer or projection.

Integer IR, as Lava 0.10 computes them (int64, emulating its int32 containers)::

    Dense, graded input:   a = wrap32(wrap32(W @ s) << e)   or  wrap32(W @ s) >> −e
    Dense, binary spikes:  a = wrap32((W @ s) << e)         or  wrap32((W @ s) >> −e)
    Conv:                  a = wrap24(W ⊛ s)                (Lava ignores weight_exp)

Kernels (``kernel='fast'``). Inputs are ≥ 0, so every partial sum of W ⊛ s, in any
order, lies between the sums of its negative and positive terms: |partial| ≤ B = max s ·
max_o max(Σ W_o⁺, Σ |W_o⁻|). B < 2**24: float32 matmul/conv, or on an x86 CPU oneDNN's
u8·s8→int32 kernels when the inputs fit u8, the weights s8 and no int16 pair sum can
saturate (:func:`_int8_exact`; 2–3× faster); B < 2**53: float64; beyond: an error.
float32 runs only where it sums exact products (matmul precision 'highest'; on CUDA,
integer convs bypass cuDNN, whose Winograd/FFT algorithms round).

Pooling fold: a conv kernel constant on P×P blocks whose stride is a multiple of P (the
converter's avg-pool + conv, ``kron(W, 1_{P×P})/P²``), or a dense layer after a flatten
whose weights are constant on P×P blocks of the (C, H, W) map, runs as a P×P sum-pool
then the P²-times smaller conv/matmul: the same integer sums. It is read from the
weights, so networks read from files get it too. The float IR at ``dtype=float32`` also
folds (and folds the weight exponent into the weights). Package-internal.
"""
from __future__ import annotations

import contextlib
import functools
import math
import platform
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from hardware.errors import QuantizationError
from hardware.ir import Conv, Dense
from hardware.simulator.arith import (_FLOAT64_EXACT, _exact_dtype, _shift, _shift_bound,
                                      _wrap, _wrap32)
from hardware.spec import LOIHI2


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
