"""The streaming schedule of a Lava run: which Lava step holds which sample and step.

Lava steps are t = 1, 2, ...; T steps per sample, L weighted layers (blocks), block index
i = 0 .. L−1, sample k = 0 .. N−1, simulator step τ = 1 .. T.

* The source RingBuffer sends column c at step c + 1; sample k fills columns kT .. kT+T−1.
* Block i processes sample k, step τ at Lava step ``t = kT + 1 + i + τ``, so its window
  for sample k starts at kT + 2 + i; netx resets block i at ``reset_offset = user + 1 + i``,
  hence the user offset :data:`RESET_OFFSET` = 1.
* The output block emits sample k, step τ at kT + L + τ: ``output_spikes[k, τ−1] =
  sink[..., kT + L + τ − 1]``, and the run lasts ``N·T + L`` steps.
* A potential readout holds sample k's v[T] after step (k+1)·T + L
  (:func:`readout_window_ends`); the RunSteps chunks end there (:func:`chunk_ends`).
* A per-layer probe sees block i's sample k, step τ at column kT + i + τ (:class:`LayerProbes`).
* Residual networks: an extra input of block i from block j is a DelaySparse with delay
  i − j − 1 (``net.extra_delay``), which aligns it to the main chain, so everything above
  depends on the main chain only.

With this schedule the result equals ``simulate(net, inputs, T, pipelined=False)``, sample
by sample, bit for bit. Why these steps: :class:`Schedule`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from hardware import ir
from hardware.errors import LavaBackendError, QuantizationError
from hardware.runtime.network import chw_to_whc
# one definition, next to the rest of what the .net file tells a stock netx user
from hardware.formats.netx import STOCK_RESET_OFFSET as RESET_OFFSET
from hardware.spec import LOIHI2

__all__ = ["RESET_OFFSET", "Schedule", "total_steps", "readout_window_ends", "chunk_ends",
           "make_schedule", "validate_inputs", "source_data", "output_spikes", "lava_rows",
           "weighted_shapes", "LayerProbes"]

#: RunSteps chunk length aimed at when nothing else fixes it: few enough calls that
#: their overhead is small, often enough for a useful progress bar.
DEFAULT_CHUNK_STEPS = 100


def total_steps(n_samples: int, timesteps: int, n_layers: int) -> int:
    """Lava steps to stream ``n_samples`` through ``n_layers`` blocks: N·T + L."""
    return n_samples * timesteps + n_layers


def readout_window_ends(n_samples: int, timesteps: int, n_layers: int) -> list:
    """Lava steps after which the output block holds sample k's final state:
    (k+1)·T + L for k = 0..N−1 (the last one is the last step of the run)."""
    return [(k + 1) * timesteps + n_layers for k in range(n_samples)]


def chunk_ends(steps: int, chunk_steps: Optional[int], window_ends: Sequence[int] = ()) -> list:
    """Ends of the RunSteps chunks: every multiple of ``chunk_steps`` (if given), every
    window end (potential readout) and the last step; no chunk is longer than ``chunk_steps``."""
    ends = {int(steps)} | {int(e) for e in window_ends}
    if chunk_steps:
        ends |= set(range(int(chunk_steps), int(steps), int(chunk_steps)))
    return sorted(e for e in ends if 0 < e <= steps)


@dataclass(frozen=True)
class Schedule:
    """One run's steps: ``steps`` in total, RunSteps chunks ending at ``ends``,
    output-potential reads at ``windows`` (empty unless the readout is 'potential').

    Why the module's step formulas hold: a Dense/Conv synapse sends at step t what it
    received at step t−1, and a neuron's spike reaches the next synapse in the same step.
    So block 0's neuron integrates at step t the column sent at t−1 (column t−2), and block
    i integrates at t what block i−1 emitted at t−1: sample k, step τ at kT + 1 + i + τ,
    which is the simulator's non-pipelined rule "layer l at step τ integrates what layer l−1
    emitted at step τ". Block i must reset (u = 0, v = v0 for if_soft; u = v = 0 for cuba)
    at the start of steps t ≡ 2 + i (mod T); what it integrated before its first window
    (zeros, bias, the previous block's spikes before *its* window) is wiped by that reset.
    The last output (sample N−1, step T) comes at NT + L; the sink stores step t in column
    t − 1. A potential readout's v[T] must be read before the next step's reset wipes it.

    Residual inputs: block j emits sample k, step τ at kT + 1 + j + τ; one hop plus the
    DelaySparse delay d = i − j − 1 later (delay d delivers d steps after a Dense would,
    measured), at kT + 1 + i + τ, it reaches block i: the step at which block i integrates
    block i−1's step-τ output. Spikes a source emits before its window arrive before the
    receiver's window and are wiped by its reset, as on the main chain.
    """

    n_samples: int
    timesteps: int
    n_layers: int
    steps: int
    ends: tuple
    windows: tuple

    @property
    def longest_chunk(self) -> int:
        return int(np.diff((0,) + self.ends).max())

    def one_call_per_window(self) -> "Schedule":
        """As few RunSteps calls as the readout allows (board profilers measure per call)."""
        return Schedule(self.n_samples, self.timesteps, self.n_layers, self.steps,
                        tuple(chunk_ends(self.steps, None, self.windows)), self.windows)


def make_schedule(net: ir.Network, n_samples: int, timesteps: int,
                  chunk_steps: Optional[int]) -> Schedule:
    """The :class:`Schedule` of streaming ``n_samples`` through ``net``."""
    n_layers = len(net.weighted_layers)
    steps = total_steps(n_samples, timesteps, n_layers)
    windows = (readout_window_ends(n_samples, timesteps, n_layers)
               if net.readout == "potential" else [])
    if chunk_steps is None and not windows:
        chunk_steps = timesteps * max(1, math.ceil(DEFAULT_CHUNK_STEPS / timesteps))
    if chunk_steps is not None and int(chunk_steps) < 1:
        raise LavaBackendError(f"chunk_steps must be >= 1, got {chunk_steps}")
    return Schedule(n_samples, timesteps, n_layers, steps,
                    tuple(chunk_ends(steps, chunk_steps, windows)), tuple(windows))


def validate_inputs(net: ir.Network, inputs: np.ndarray, timesteps: int) -> np.ndarray:
    """Return inputs as (N, T, *input_shape) int64, checking shape and range."""
    shape = tuple(net.input.shape)
    x = np.asarray(inputs)
    if x.ndim == len(shape) + 1 and tuple(x.shape[1:]) == shape:
        x = np.broadcast_to(x[:, None], (x.shape[0], timesteps) + shape)
    elif not (x.ndim == len(shape) + 2 and tuple(x.shape[2:]) == shape
              and x.shape[1] == timesteps):
        raise LavaBackendError(f"inputs of shape {x.shape} do not match (N, *{shape}) or "
                               f"(N, {timesteps}, *{shape})")
    if x.shape[0] < 1:
        raise LavaBackendError("inputs hold no sample")
    if not (np.issubdtype(x.dtype, np.integer) or np.array_equal(x, np.round(x))):
        raise QuantizationError("input: run_lava needs encoded integer inputs "
                                "(hardware.simulator.encode_input)")
    x = x.astype(np.int64)
    top = LOIHI2.input_max(int(net.input_bits))
    if x.min() < 0 or x.max() > top:
        raise QuantizationError(f"input: values in [{x.min()}, {x.max()}] do not fit "
                                f"{net.input_bits}-bit graded spikes [0, {top}]")
    return x


def source_data(net: ir.Network, x: np.ndarray, steps: int) -> np.ndarray:
    """RingBuffer data (*lava_input_shape, steps): column kT+τ−1 = sample k, step τ."""
    n, t = x.shape[:2]
    if isinstance(net.weighted_layers[0], ir.Dense):
        # IR Flatten = C-order flatten of (C, H, W); netx feeds it as is
        cols = x.reshape(n * t, -1)
        lava_shape = (cols.shape[1],)
    else:
        cols = x.reshape((n * t,) + tuple(net.input.shape)).transpose(0, 3, 2, 1)
        lava_shape = chw_to_whc(net.input.shape)
    data = np.zeros(lava_shape + (steps,), dtype=np.int64)
    data[..., : n * t] = np.moveaxis(cols, 0, -1)
    return data


def output_spikes(net: ir.Network, sink_data: np.ndarray, n_samples: int,
                  timesteps: int) -> np.ndarray:
    """Sink (*lava_out_shape, steps) -> (N, T, n_out): sample k, step τ is Lava step
    kT + L + τ, n_out in the IR's C order."""
    if sink_data.ndim == 4:  # (W, H, C, steps) -> (steps, C, H, W)
        arr = sink_data.transpose(3, 2, 1, 0)
    else:
        arr = np.moveaxis(sink_data, -1, 0)
    flat = np.rint(arr.reshape(arr.shape[0], -1)).astype(np.int64)  # row t-1 = Lava step t
    idx = (np.arange(n_samples)[:, None] * timesteps + len(net.weighted_layers)
           + np.arange(timesteps)[None, :])  # kT + L + τ − 1
    return flat[idx]


def lava_rows(arr: np.ndarray, step_axis_last: bool = True) -> np.ndarray:
    """Lava-order recording -> rows per step in the IR's (C, H, W) order.

    ``arr``: (*lava_shape, steps) (ring buffer) or, with
    ``step_axis_last=False``, (steps, *lava_shape); returns (steps, *ir_shape) int64.
    """
    if step_axis_last:
        arr = np.moveaxis(arr, -1, 0)
    if arr.ndim == 4:  # (steps, W, H, C) -> (steps, C, H, W)
        arr = arr.transpose(0, 3, 2, 1)
    return np.rint(arr).astype(np.int64)


def weighted_shapes(net: ir.Network) -> list:
    """Output shape (C, H, W) or (n,) of every Conv/Dense layer, in order."""
    return [tuple(int(v) for v in s) for s, layer in zip(net.shapes(), net.layers)
            if isinstance(layer, (ir.Conv, ir.Dense))]


class LayerProbes:
    """Sorts probed Lava steps of every block into per-sample windows.

    Block i emits sample k, step τ (1-based) at Lava step t = kT + 1 + i + τ,
    i.e. 0-based column c = t − 1 = kT + i + τ; so c − (i + 1) = kT + τ − 1.
    ``lead = 0`` when block 0 is an input neuron layer (a file made elsewhere), which
    takes its input the step it arrives: block i then emits at t = kT + i + τ.
    Per layer it keeps the layouts of :class:`hardware.simulator.SimResult`:
    ``counts`` (N, *shape), ``steps`` (T, N) and, with ``keep_trains``,
    ``trains`` (T, N, *shape) bool.
    """

    def __init__(self, names: list, shapes: list, n_samples: int, timesteps: int,
                 keep_trains: bool, lead: int = 1):
        self.names, self.shapes, self.lead = names, shapes, lead
        self.n, self.t = n_samples, timesteps
        self.counts = [np.zeros((n_samples,) + s, dtype=np.int64) for s in shapes]
        self.steps = [np.zeros((timesteps, n_samples), dtype=np.int64) for _ in shapes]
        self.trains = ([np.zeros((timesteps, n_samples) + s, dtype=bool) for s in shapes]
                       if keep_trains else None)

    def add(self, i: int, first_col: int, rows: np.ndarray) -> None:
        """``rows``: (n, *shape) spikes of block i at columns first_col .. first_col+n−1."""
        rel = np.arange(first_col, first_col + rows.shape[0]) - (i + self.lead)
        keep = (rel >= 0) & (rel < self.n * self.t)
        rel, rows = rel[keep], rows[keep]
        if rel.size == 0:
            return
        if rows.min() < 0 or rows.max() > 1:
            raise LavaBackendError(f"probe of layer {self.names[i]}: spikes outside {{0, 1}} "
                                   f"([{rows.min()}, {rows.max()}]); not a binary spike layer")
        k, tau = np.divmod(rel, self.t)
        self.steps[i][tau, k] = rows.reshape(rel.size, -1).sum(axis=1)
        np.add.at(self.counts[i], k, rows)
        if self.trains is not None:
            self.trains[i][tau, k] = rows != 0

    def check(self, output_spikes: np.ndarray) -> None:
        """The last layer's probe must equal the output sink (same spikes, two paths)."""
        last = self.counts[-1].reshape(self.n, -1)
        if not np.array_equal(last, output_spikes.sum(axis=1)):
            raise LavaBackendError(f"probe of the output layer {self.names[-1]} disagrees with "
                                   "the output sink: the probe alignment is wrong")

    def check_block_shapes(self, lava_shapes: list) -> None:
        """Each block's Lava output shape must be its IR shape as (W, H, C)."""
        for name, lava_shape, shape in zip(self.names, lava_shapes, self.shapes):
            if tuple(lava_shape) != chw_to_whc(shape):
                raise LavaBackendError(f"layer {name}: Lava block output {tuple(lava_shape)} is "
                                       f"not the IR shape {shape} as (W, H, C)")
