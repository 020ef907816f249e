"""Run an integer SNN IR in Lava: many samples streamed through ONE run.

Backends
--------
``'loihi2-sim'``
    ``Loihi2SimCfg(select_tag='fixed_pt')`` on the CPU. It selects, for every
    leaf process, the Python model tagged ``fixed_pt``: ``PyDenseModelBitAcc``
    (Dense), ``PyConvModelFixed`` (Conv), ``PyLifModelBitAcc`` /
    ``PyLifResetModelBitAcc`` (LIF / LIFReset),
    :class:`hardware.lava_procs.if_soft.models.PyIFSoftResetModelBitAcc` (IFSoftReset),
    ``PySendModelFixed`` / ``PyReceiveModelFixed`` (ring buffers); the netx
    blocks resolve to their ``fixed_pt`` sub-process models. (Checked by
    ``tests/test_lava_runner.py``.)
``'loihi2-hw'``
    ``Loihi2HwCfg`` on a Loihi 2 board; needs Intel's lava-loihi package and a
    reachable board. An ``if_soft`` network is refused there: lava-loihi ships
    microcode only for its own neuron models, none of which is a soft-reset IF
    neuron, and running the neuron on the host CPU instead would silently not
    be a hardware run.

Time alignment (the streaming schedule)
---------------------------------------
Lava steps are numbered t = 1, 2, ... Let T be the number of steps per sample,
L the number of weighted layers (blocks), i = 0 .. L−1 the block index.

* Source: a RingBuffer whose column c (0-based) is sent at step c + 1. Sample
  k (0-based) occupies columns kT .. kT+T−1 (its input repeated T times, or
  its T time steps if the input is time-varying); columns ≥ NT are zero.
* A Dense/Conv synapse sends at step t what it received at step t−1, and a
  neuron's spike reaches the next synapse in the same step. So block 0's
  neuron integrates at step t the column sent at step t−1, i.e. column t−2;
  block i's neuron integrates at step t what block i−1's neuron emitted at
  step t−1.
* Hence block i processes sample k, simulator step τ = 1..T, at Lava step
  ``t = kT + 1 + i + τ``: for i = 0 that is column kT + τ − 1 (sample k,
  step τ) and for i > 0 it is the step-τ output of block i−1 at Lava step
  kT + i + τ, which is exactly the simulator's non-pipelined rule "layer l at
  step τ integrates what layer l−1 emitted at step τ".
* Block i's window for sample k therefore begins at step kT + 2 + i, so it
  must reset (u=0, v=v0 for if_soft; u=v=0 for cuba) at the start of steps
  with t ≡ 2 + i (mod T). netx gives block i ``reset_offset = user + 1 + i``,
  so the user offset is **1** (``RESET_OFFSET``). Anything a block integrated
  before its first window (zeros, bias, or spikes of the previous block
  before *its* window) is wiped by that reset.
* The output block (i = L−1) emits sample k, step τ at Lava step
  kT + L + τ; the sink RingBuffer stores step t in column t − 1, so
  ``output_spikes[k, τ−1] = sink[..., kT + L + τ − 1]`` and the run needs
  ``N·T + L`` steps (the last sample's last output is at step NT + L).

With this schedule the result equals
``simulate(net, inputs, T, pipelined=False).output_spikes`` transposed to
(N, T, n_out), sample by sample, bit for bit.

Potential readout (``net.readout == 'potential'``)
--------------------------------------------------
The output layer is a non-firing integrator (a LIFReset with vth = 131071,
du = 4095, dv = 0): the class is argmax of its membrane v after step T, which
it never sends. The output block holds sample k's v[T] after Lava step
(k+1)·T + L (its last step of the window) and LIFReset zeroes u and v at the
start of the next step (inside ``run_spk``, before the update), so the run is
split into RunSteps chunks that end exactly at those steps
(:func:`readout_window_ends`, merged into :func:`chunk_ends`) and
``out_layer.neuron.v.get()`` is read after each of them. Measured on a tiny
conv net (2 cores shared): each extra RunSteps call plus ``Var.get`` costs
~10 ms (T = 8, N = 100: 4.2 s against 3.3 s for the same net in ~100-step
chunks; T = 32, N = 32: within the ±20 % noise), while a
``lava.proc.io.sink.Read`` process reading v at every step through a RefPort
(one management phase per step) made the run ~1.8x slower; v at T only is
therefore what is recorded.
On the board the same ``Var.get`` is used (unverified here: no board), and
lava-loihi's profilers then see one run call per sample; their per-step time and
mean power are averages, which is assumed (not checked) to survive the split.

Probes (``run_lava(..., probes=True)``)
---------------------------------------
Every block's neuron output (``block.out``) additionally feeds a recorder
(one :class:`hardware.lava_procs.spike_recorder.SpikeRecorder` by default, or a
sink RingBuffer per block) whose ring holds as many columns as the longest
RunSteps chunk and is read back (``data.get()``) after every chunk, so host
memory in Lava stays bounded however long the run. Step t is stored in ring
column (t − 1) mod ring. Block i emits sample k, step τ at Lava step
``kT + 1 + i + τ`` (above): each layer's window is offset by
its own latency i + 1, exactly as the output layer's (i = L − 1). From those
columns the runner keeps, per layer, the per-neuron counts ``(N, *shape)``,
the spikes per step ``(T, N)`` and (``probes='trains'``/``True``) the spike
trains ``(T, N, *shape)``, the layouts of
:class:`hardware.simulator.SimResult`, so
``hardware.activity.activity_from_sim(net, result, x)`` accepts a
:class:`LavaRunResult` unchanged.

Why sink RingBuffers: measured against ``lava.proc.monitor.Monitor`` on the
same network (``bench/probe_overhead.py``, figures in BENCHMARKS.md) they are
the cheaper exact mechanism. Monitor runs an extra management phase at every
step (its ``post_guard`` is always true), stores float64 and can record one
port per Monitor only; Lava 0.10 cannot merge the layers into one sink
(``ConcatPort`` has no transform implemented). ``probe_mechanism='monitor'``
is kept so that the comparison can be re-measured.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
from tqdm.auto import tqdm

from . import ir
from .errors import LavaBackendError, QuantizationError
from .lava_net import build_lava_network, chw_to_whc

__all__ = ["LavaRunResult", "run_lava", "RESET_OFFSET", "BACKENDS", "PROBE_MODES",
           "PROBE_MECHANISMS", "total_steps", "hardware_available", "sim_run_config",
           "readout_window_ends", "chunk_ends"]

BACKENDS = ("loihi2-sim", "loihi2-hw")
#: netx ``reset_offset`` argument that aligns block windows with samples
#: (see the module docstring).
RESET_OFFSET = 1
#: ``probes`` values: what is recorded per spiking layer.
PROBE_MODES = (False, True, "counts", "trains")
#: How probes are attached (see the module docstring; ring buffers are the default).
PROBE_MECHANISMS = ("recorder", "ringbuffer", "monitor")


@dataclass
class LavaRunResult:
    """Output of :func:`run_lava`.

    ``output_spikes``: (N, T, n_out) int64 spikes of the last layer per sample
    and step, n_out in the IR's flattened (C, H, W) C order.
    ``wall_time_s`` covers compile, runtime start-up and all RunSteps calls
    (not network construction), so ``samples_per_s = N / wall_time_s`` is the
    end-to-end throughput of one run.

    Probe fields (``None`` unless ``run_lava(..., probes=...)``), one entry per
    spiking layer (every Conv/Dense block, in order), in the layouts of
    :class:`hardware.simulator.SimResult`, shapes in the IR's (C, H, W) order,
    sample k being the k-th input:

    ``layer_names``: the IR layer names.
    ``layer_counts``: (N, *shape) int64 spikes per neuron over the T steps.
    ``layer_step_spikes``: (T, N) int64 spikes of the layer at each step.
    ``layer_spike_trains``: (T, N, *shape) bool (``probes='trains'``/``True``
    only; ``'counts'`` keeps host memory at O(N·neurons)).
    ``probe_mechanism``: how they were recorded.

    ``readout``: the network's readout. ``output_potential`` (potential readout
    only): (N, n_out) int64, the output layer's membrane v at the end of each
    sample's window (after step T), in Lava's units (the 24-bit register, i.e.
    already ``<< 6``), n_out in the IR's C order; it equals
    ``simulate(net, x, T).output_potential[T − 1]``. ``output_spikes`` of a
    potential readout are all zero (the layer never fires).
    """

    output_spikes: np.ndarray
    wall_time_s: float
    steps_run: int
    samples_per_s: float
    backend: str
    #: who built the Lava network: stock netx (from ``net_path``) or this
    #: project's loader.
    loader: str = ""
    #: process class name -> selected process-model class name (as compiled).
    models: Optional[dict] = None
    layer_names: Optional[list] = None
    layer_counts: Optional[list] = None
    layer_step_spikes: Optional[list] = None
    layer_spike_trains: Optional[list] = None
    probe_mechanism: Optional[str] = None
    #: on a board with lava-loihi: measured power and time per step (see board_measurement)
    board_measurement: Optional[dict] = None
    readout: str = "spikes"
    output_potential: Optional[np.ndarray] = None

    @property
    def output_counts(self) -> np.ndarray:
        """(N, n_out) total spikes per output neuron."""
        return self.output_spikes.sum(axis=1)

    def predictions(self, readout: Optional[str] = None) -> np.ndarray:
        """(N,) class of each sample after T steps, by the run's readout (or ``readout``):
        argmax of ``output_potential`` or of the output spike counts; ties go to the
        lowest index (numpy's argmax returns the first maximum), as in
        :meth:`hardware.simulator.SimResult.predictions`."""
        readout = readout or self.readout
        if readout not in ir.READOUTS:
            raise LavaBackendError(f"readout {readout!r} is not one of {ir.READOUTS}")
        if readout == "potential":
            if self.output_potential is None:
                raise LavaBackendError("this run recorded no output potential (the network's "
                                       "readout is not 'potential')")
            return np.argmax(self.output_potential, axis=1)
        return np.argmax(self.output_counts, axis=1)

    def accuracy(self, labels, readout: Optional[str] = None) -> float:
        """Fraction of samples whose :meth:`predictions` equal ``labels`` (N,)."""
        labels = np.asarray(labels).reshape(-1)
        pred = self.predictions(readout)
        if labels.shape != pred.shape:
            raise LavaBackendError(f"{labels.size} labels for {pred.size} samples")
        return float(np.mean(pred == labels))

    def activity(self, net: ir.Network, input_int=None):
        """:func:`hardware.activity.activity_from_sim` of the probed spikes
        (exact spikes, synaptic ops and neuron updates; ``source='lava'``)."""
        from .activity import activity_from_sim
        if self.layer_counts is None:
            raise LavaBackendError("this run recorded no probes (run_lava(..., probes=True))")
        return activity_from_sim(net, self, input_int, source="lava")


def board_profilers_available() -> tuple[bool, str]:
    """(ok, reason): whether lava-loihi's power/time profilers can be used here."""
    try:
        from lava.utils import loihi2_profiler  # noqa: F401  (ships with lava-loihi only)
    except ImportError:
        return False, ("lava-loihi is not installed: its loihi2_profiler (board power and "
                       "execution-time measurement) is unavailable; energy stays an estimate")
    return True, "lava-loihi's loihi2_profiler is available"


def board_profilers(num_steps: int):
    """lava-loihi's (Loihi2Power, Loihi2ExecutionTime) for a run of ``num_steps``, or None.

    They are passed to ``Loihi2HwCfg(callback_fxs=...)`` as lava-dl's own
    benchmark notebooks do; selected automatically whenever lava-loihi is installed.
    """
    ok, _ = board_profilers_available()
    if not ok:
        return None
    from lava.utils import loihi2_profiler  # pragma: no cover - board only
    return (loihi2_profiler.Loihi2Power(num_steps=num_steps),  # pragma: no cover
            loihi2_profiler.Loihi2ExecutionTime())


def board_measurement(power_logger, time_logger, timesteps: int) -> dict:  # pragma: no cover
    """Measured figures from lava-loihi's profilers (as lava-dl's benchmark notebooks read them).

    ``time_per_step_us`` from ``avg_time_per_step``; ``total_power_w`` the mean of
    ``total_power``; ``static_power_w`` ``static_total_power``; energy per sample =
    total power × time per step × T (dynamic: with static power removed).
    """
    time_per_step_us = float(time_logger.avg_time_per_step)
    total_w = float(np.mean(power_logger.total_power))
    static_w = float(power_logger.static_total_power)
    sample_s = time_per_step_us * 1e-6 * timesteps
    return {"source": "lava-loihi loihi2_profiler (measured on the board)",
            "time_per_step_us": time_per_step_us, "samples_per_s": 1.0 / sample_s if sample_s else None,
            "total_power_w": total_w, "static_power_w": static_w, "dynamic_power_w": total_w - static_w,
            "energy_per_sample_j": total_w * sample_s, "dynamic_energy_per_sample_j": (total_w - static_w) * sample_s}


def total_steps(n_samples: int, timesteps: int, n_layers: int) -> int:
    """Lava steps to stream ``n_samples`` through ``n_layers`` blocks: N·T + L."""
    return n_samples * timesteps + n_layers


def sim_run_config():
    """The CPU run config: Loihi2SimCfg selecting the ``fixed_pt`` models."""
    from lava.magma.core.run_configs import Loihi2SimCfg
    return Loihi2SimCfg(select_tag="fixed_pt")


def hardware_available() -> tuple:
    """(ok, reason): whether lava-loihi is importable and a board reachable."""
    from lava.utils import loihi, slurm
    if not loihi.is_installed():
        return False, ("backend 'loihi2-hw' needs Intel's lava-loihi package (the Loihi 2 "
                       "compiler and runtime), which is not installed in this environment; "
                       "use backend 'loihi2-sim' to run the bit-accurate CPU models")
    if "NXSDKHOST" not in os.environ and not slurm.is_available():
        return False, ("lava-loihi is installed but no Loihi 2 board is reachable (no SLURM "
                       "controller and NXSDKHOST is not set); see lava.utils.loihi."
                       "use_slurm_host / use_ethernet_host")
    return True, ""


def _neuron_kinds(net: ir.Network) -> set:
    return {layer.neuron.kind for layer in net.weighted_layers}


def _validate_inputs(net: ir.Network, inputs: np.ndarray, timesteps: int) -> np.ndarray:
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
    if not np.issubdtype(x.dtype, np.integer):
        if not np.array_equal(x, np.round(x)):
            raise QuantizationError("input: run_lava needs encoded integer inputs "
                                    "(hardware.simulator.encode_input)")
    x = x.astype(np.int64)
    top = (1 << int(net.input_bits)) - 1
    if x.min() < 0 or x.max() > top:
        raise QuantizationError(f"input: values in [{x.min()}, {x.max()}] do not fit "
                                f"{net.input_bits}-bit graded spikes [0, {top}]")
    return x


def _source_data(net: ir.Network, x: np.ndarray, steps: int) -> np.ndarray:
    """RingBuffer data (*lava_input_shape, steps): column kT+τ−1 = sample k, step τ."""
    n, t = x.shape[:2]
    first = net.weighted_layers[0]
    flat = x.reshape(n * t, -1) if isinstance(first, ir.Dense) else None
    if flat is not None:
        cols = flat  # IR Flatten = C-order flatten of (C, H, W); netx feeds it as is
        lava_shape = (flat.shape[1],)
    else:
        # IR (C, H, W) -> Lava (W, H, C)
        cols = x.reshape((n * t,) + tuple(net.input.shape)).transpose(0, 3, 2, 1)
        lava_shape = chw_to_whc(net.input.shape)
    data = np.zeros(lava_shape + (steps,), dtype=np.int64)
    data[..., : n * t] = np.moveaxis(cols, 0, -1)
    return data


def _output_flat(net: ir.Network, sink_data: np.ndarray) -> np.ndarray:
    """Sink (*lava_out_shape, steps) -> (steps, n_out) in the IR's C order."""
    if sink_data.ndim == 4:  # (W, H, C, steps) -> (steps, C, H, W)
        arr = sink_data.transpose(3, 2, 1, 0)
    else:
        arr = np.moveaxis(sink_data, -1, 0)
    return np.rint(arr.reshape(arr.shape[0], -1)).astype(np.int64)


def _lava_rows(arr: np.ndarray, step_axis_last: bool = True) -> np.ndarray:
    """Lava-order recording -> rows per step in the IR's (C, H, W) order.

    ``arr``: (*lava_shape, steps) (ring buffer) or, with
    ``step_axis_last=False``, (steps, *lava_shape) (Monitor); returns
    (steps, *ir_shape) int64.
    """
    if step_axis_last:
        arr = np.moveaxis(arr, -1, 0)
    if arr.ndim == 4:  # (steps, W, H, C) -> (steps, C, H, W)
        arr = arr.transpose(0, 3, 2, 1)
    return np.rint(arr).astype(np.int64)


class _LayerProbes:
    """Sorts probed Lava steps of every block into per-sample windows.

    Block i emits sample k, step τ (1-based) at Lava step t = kT + 1 + i + τ,
    i.e. 0-based column c = t − 1 = kT + i + τ; so c − (i + 1) = kT + τ − 1.
    """

    def __init__(self, names: list, shapes: list, n_samples: int, timesteps: int,
                 keep_trains: bool):
        self.names = names
        self.shapes = shapes
        self.n = n_samples
        self.t = timesteps
        self.counts = [np.zeros((n_samples,) + s, dtype=np.int64) for s in shapes]
        self.steps = [np.zeros((timesteps, n_samples), dtype=np.int64) for _ in shapes]
        self.trains = ([np.zeros((timesteps, n_samples) + s, dtype=bool) for s in shapes]
                       if keep_trains else None)

    def add(self, i: int, first_col: int, rows: np.ndarray) -> None:
        """``rows``: (n, *shape) spikes of block i at columns first_col .. first_col+n−1."""
        rel = np.arange(first_col, first_col + rows.shape[0]) - (i + 1)
        keep = (rel >= 0) & (rel < self.n * self.t)
        rel, rows = rel[keep], rows[keep]
        if rel.size == 0:
            return
        if (rows.min() < 0 or rows.max() > 1):
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


def _build(net: ir.Network, timesteps: int, net_path: Optional[str]):
    """Stock netx for a cuba network read from ``net_path``, else our loader."""
    kinds = _neuron_kinds(net)
    if net_path is not None and kinds == {"cuba"}:
        from lava.lib.dl.netx.hdf5 import Network as NetxNetwork
        if not os.path.isfile(net_path):
            raise LavaBackendError(f"netx file {net_path!r} does not exist")
        lnet = NetxNetwork(net_config=str(net_path), input_message_bits=int(net.input_bits),
                           reset_interval=int(timesteps), reset_offset=RESET_OFFSET)
        if len(lnet.layers) != len(net.weighted_layers):
            raise LavaBackendError(f"{net_path}: netx built {len(lnet.layers)} blocks, the IR "
                                   f"has {len(net.weighted_layers)} weighted layers")
        return lnet, "stock lava.lib.dl.netx.hdf5.Network"
    return (build_lava_network(net, reset_interval=int(timesteps), reset_offset=RESET_OFFSET),
            "hardware.lava_net.build_lava_network")


def _selected_models(lnet, src, sink) -> dict:
    """Process class -> model class the run config selected, for the report."""
    procs = [src, sink]
    for block in lnet.layers:
        procs += [block, getattr(block, "synapse", None), getattr(block, "neuron", None)]
    out = {}
    for p in procs:
        if p is not None and p.model_class is not None:
            out.setdefault(type(p).__name__, set()).add(p.model_class.__name__)
    return {k: sorted(v) for k, v in out.items()}


def _hw_io(lnet, data: np.ndarray, out_shape: tuple, steps: int, input_bits: int):
    """Source/sink for the board: host ring buffers through lava-loihi's adapters."""
    from lava.proc import io
    from lava.proc.embedded_io.spike import NxToPyAdapter, PyToNxAdapter  # lava-loihi
    src = io.source.RingBuffer(data=data)
    sink = io.sink.RingBuffer(shape=out_shape, buffer=steps)
    to_nx = PyToNxAdapter(shape=data.shape[:-1], num_message_bits=input_bits)
    to_py = NxToPyAdapter(shape=out_shape)
    src.s_out.connect(to_nx.inp)
    to_nx.out.connect(lnet.inp)
    lnet.out.connect(to_py.inp)
    to_py.out.connect(sink.a_in)
    return src, sink


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


class _PotentialReader:
    """The output block's membrane v at the end of every sample window.

    The output block finishes sample k, step T at Lava step (k+1)·T + L and the
    LIFReset reset at the start of the next step wipes it, so the run stops at
    exactly those steps (:func:`chunk_ends`) and ``Var.get`` reads v then: Lava's
    v after the step's update (and before any reset), in Lava's units (already
    ``<< 6``), the same register as ``SimResult.output_potential``.
    """

    def __init__(self, var, n_samples: int, timesteps: int, n_layers: int, n_out: int):
        self.var = var
        self.sample_at = {end: k for k, end in
                          enumerate(readout_window_ends(n_samples, timesteps, n_layers))}
        self.values = np.zeros((n_samples, n_out), dtype=np.int64)
        self.read = np.zeros(n_samples, dtype=bool)

    def after_chunk(self, end_step: int) -> None:
        k = self.sample_at.get(end_step)
        if k is None:
            return
        v = np.asarray(self.var.get())
        self.values[k] = _lava_rows(v[..., None])[0].reshape(-1)
        self.read[k] = True

    def result(self) -> np.ndarray:
        if not self.read.all():  # pragma: no cover - chunk_ends always holds every window end
            raise LavaBackendError("the output potential of some samples was never read")
        return self.values


class _ProbeTaps:
    """Lava side of the probes: per-layer recorders attached to the blocks, read
    back after every chunk into a :class:`_LayerProbes`.

    The recorder and the ring-buffer sinks store step t in ring column
    (t − 1) mod ``ring``; no chunk is longer than ``ring``, so a chunk covering
    steps done+1 .. done+n is read at columns (done + j) mod ring, j < n.
    """

    def __init__(self, lnet, recorder: _LayerProbes, mechanism: str, ring: int, steps: int):
        from lava.proc import io
        self.recorder, self.mechanism, self.ring = recorder, mechanism, ring
        self.lava_shapes = [tuple(b.out.shape) for b in lnet.layers]
        for name, lava_shape, shape in zip(recorder.names, self.lava_shapes, recorder.shapes):
            if lava_shape != chw_to_whc(shape):
                raise LavaBackendError(f"layer {name}: Lava block output {lava_shape} is not "
                                       f"the IR shape {shape} as (W, H, C)")
        self.sinks = []
        if mechanism == "recorder":
            from .lava_procs.spike_recorder import SpikeRecorder
            self.proc = SpikeRecorder(shapes=self.lava_shapes, buffer=ring)
            for j, block in enumerate(lnet.layers):
                block.out.connect(self.proc.port(j))
            return
        for block, lava_shape in zip(lnet.layers, self.lava_shapes):
            if mechanism == "ringbuffer":
                probe = io.sink.RingBuffer(shape=lava_shape, buffer=ring)
                block.out.connect(probe.a_in)
            else:
                from lava.proc.monitor.process import Monitor
                probe = Monitor()  # one port per Monitor (lava 0.10 limitation)
                probe.probe(block.out, steps)
            self.sinks.append(probe)

    def after_chunk(self, done: int, n: int) -> None:
        cols = (done + np.arange(n)) % self.ring
        if self.mechanism == "recorder":
            from .lava_procs.spike_recorder import unpack
            words = np.asarray(self.proc.data.get())[:, cols]
            for i, rows in enumerate(unpack(words, self.lava_shapes)):
                self.recorder.add(i, done, _lava_rows(rows, step_axis_last=False))
        elif self.mechanism == "ringbuffer":
            for i, probe in enumerate(self.sinks):
                self.recorder.add(i, done, _lava_rows(np.asarray(probe.data.get())[..., cols]))

    def after_run(self) -> None:
        if self.mechanism == "monitor":
            for i, probe in enumerate(self.sinks):
                rows = _lava_rows(np.asarray(probe.out_read_0.get()), step_axis_last=False)
                self.recorder.add(i, 0, rows)


def _check_options(net: ir.Network, timesteps, backend: str, probes, probe_mechanism: str) -> int:
    """Validate run_lava's options (board availability included); return T as an int."""
    if backend not in BACKENDS:
        raise LavaBackendError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if not net.integer:
        raise LavaBackendError("run_lava needs the integer IR (quantize it first)")
    if int(timesteps) != timesteps or timesteps < 1:
        raise LavaBackendError(f"timesteps must be a positive integer, got {timesteps!r}")
    if backend == "loihi2-hw":
        if "if_soft" in _neuron_kinds(net):
            raise LavaBackendError(
                "backend 'loihi2-hw' cannot run 'if_soft' neurons: lava-loihi ships Loihi 2 "
                "microcode only for its own neuron models (e.g. the CUBA LIF), none of which "
                "resets by subtraction, and running the soft-reset IF neuron on the host CPU "
                "would not be a hardware run. Train/convert with `snn.neuron: cuba` to deploy "
                "on the board, or use backend 'loihi2-sim'.")
        ok, reason = hardware_available()
        if not ok:
            raise LavaBackendError(reason)
    if not (isinstance(probes, bool) or probes in ("counts", "trains")):
        raise LavaBackendError(f"probes={probes!r}; choose one of {PROBE_MODES}")
    if probe_mechanism not in PROBE_MECHANISMS:
        raise LavaBackendError(f"unknown probe_mechanism {probe_mechanism!r}; choose one of "
                               f"{PROBE_MECHANISMS}")
    if probes and backend != "loihi2-sim":
        raise LavaBackendError(
            "probes are implemented for backend 'loihi2-sim' only: on the board every layer "
            "would need its own lava-loihi NxToPyAdapter, which is untested here")
    return int(timesteps)


def _schedule(net: ir.Network, n_samples: int, timesteps: int, chunk_steps) -> tuple:
    """(total steps, chunk ends, window ends or ()) of one run."""
    n_layers = len(net.weighted_layers)
    steps = total_steps(n_samples, timesteps, n_layers)
    windows = (readout_window_ends(n_samples, timesteps, n_layers)
               if net.readout == "potential" else ())
    if chunk_steps is None and not windows:
        # ~100 steps per RunSteps call: few enough calls that their overhead
        # is small, often enough for a useful progress bar.
        chunk_steps = timesteps * max(1, math.ceil(100 / timesteps))
    if chunk_steps is not None and int(chunk_steps) < 1:
        raise LavaBackendError(f"chunk_steps must be >= 1, got {chunk_steps}")
    return steps, chunk_ends(steps, chunk_steps, windows), windows


def _io(lnet, data: np.ndarray, backend: str, steps: int, input_bits: int):
    """(source, sink, run config, board profilers or None) of one run."""
    from lava.proc import io
    out_shape = tuple(lnet.out.shape)
    if backend == "loihi2-sim":
        src = io.source.RingBuffer(data=data)
        sink = io.sink.RingBuffer(shape=out_shape, buffer=steps)
        src.s_out.connect(lnet.inp)
        lnet.out.connect(sink.a_in)
        return src, sink, sim_run_config(), None
    from lava.magma.core.run_configs import Loihi2HwCfg  # pragma: no cover - needs a board
    src, sink = _hw_io(lnet, data, out_shape, steps, input_bits)  # pragma: no cover
    profilers = board_profilers(steps)  # pragma: no cover
    return src, sink, Loihi2HwCfg(  # pragma: no cover
        select_sub_proc_model=True,
        callback_fxs=list(profilers) if profilers is not None else []), profilers


def _output_spikes(net: ir.Network, sink_data: np.ndarray, n_samples: int,
                   timesteps: int) -> np.ndarray:
    """Sink -> (N, T, n_out): sample k, step τ is Lava step kT + L + τ (module docstring)."""
    flat = _output_flat(net, sink_data)  # (steps, n_out), row t-1 = Lava step t
    idx = (np.arange(n_samples)[:, None] * timesteps + len(net.weighted_layers)
           + np.arange(timesteps)[None, :])  # kT + L + τ − 1
    return flat[idx]


def run_lava(net: ir.Network, inputs: np.ndarray, timesteps: int, *,
             backend: str = "loihi2-sim", net_path: Optional[str] = None,
             progress: bool = True, chunk_steps: Optional[int] = None,
             probes: Union[bool, str] = False,
             probe_mechanism: str = "recorder") -> LavaRunResult:
    """Stream N encoded samples through one Lava run and return their outputs.

    ``inputs``: (N, *input_shape) integer graded-spike payloads held for T
    steps (or (N, T, *input_shape), time-varying). Every block resets every
    ``timesteps`` steps, staggered as netx does, with user offset
    :data:`RESET_OFFSET` so that each block's window holds exactly one sample
    (derivation in the module docstring). The run lasts ``N·T + L`` steps,
    executed in RunSteps chunks of at most ``chunk_steps`` steps (progress bar
    per chunk); with a potential readout (``net.readout == 'potential'``) a
    chunk also ends at every sample's window end, where the output layer's v is
    read (``LavaRunResult.output_potential``). The runtime is always stopped,
    also on errors and KeyboardInterrupt.

    For a ``cuba`` network with ``net_path`` the file is loaded by stock
    ``lava.lib.dl.netx.hdf5.Network`` (proving it runs unchanged in lava-dl);
    otherwise :func:`hardware.lava_net.build_lava_network` builds it.

    ``probes``: ``False`` (default), ``True``/``'trains'`` (per-layer counts,
    spikes per step and spike trains) or ``'counts'`` (no trains); see the
    module docstring and :class:`LavaRunResult`. ``probe_mechanism``:
    ``'recorder'`` (default), ``'ringbuffer'`` or ``'monitor'``.
    Probes are supported on ``'loihi2-sim'`` only.
    """
    timesteps = _check_options(net, timesteps, backend, probes, probe_mechanism)
    x = _validate_inputs(net, inputs, timesteps)
    n_samples = x.shape[0]
    steps, ends, windows = _schedule(net, n_samples, timesteps, chunk_steps)
    from lava.magma.core.run_conditions import RunSteps

    lnet, loader = _build(net, timesteps, net_path)
    src, sink, run_cfg, profilers = _io(lnet, _source_data(net, x, steps), backend, steps,
                                        int(net.input_bits))
    if profilers is not None:  # pragma: no cover - board only
        # as few run calls as the readout allows: the profilers measure per call
        ends = chunk_ends(steps, None, windows)
    taps = reader = None
    if probes:
        recorder = _LayerProbes([layer.name for layer in net.weighted_layers],
                                _weighted_shapes(net), n_samples, timesteps,
                                keep_trains=probes is True or probes == "trains")
        ring = int(np.diff([0] + ends).max())
        taps = _ProbeTaps(lnet, recorder, probe_mechanism, ring, steps)
    if windows:
        reader = _PotentialReader(lnet.out_layer.neuron.v, n_samples, timesteps,
                                  len(net.weighted_layers), net.output_size)
    bar = tqdm(total=steps, desc=f"lava {backend}", unit="step", disable=not progress,
               leave=False)
    started = False
    t0 = time.perf_counter()
    try:
        done = 0
        for end in ends:
            started = True
            sink.run(condition=RunSteps(num_steps=end - done), run_cfg=run_cfg)
            if taps is not None:
                taps.after_chunk(done, end - done)
            if reader is not None:
                reader.after_chunk(end)
            bar.update(end - done)
            done = end
        sink_data = np.asarray(sink.data.get())
        if taps is not None:
            taps.after_run()
        models = _selected_models(lnet, src, sink)
    finally:
        bar.close()
        if started and sink.runtime is not None:
            sink.stop()
    wall = time.perf_counter() - t0
    return _result(net, _output_spikes(net, sink_data, n_samples, timesteps), wall, steps,
                   backend, loader, models, profilers, taps, reader, timesteps)


def _weighted_shapes(net: ir.Network) -> list:
    return [tuple(int(v) for v in s) for s, layer in zip(net.shapes(), net.layers)
            if isinstance(layer, (ir.Conv, ir.Dense))]


def _result(net: ir.Network, out: np.ndarray, wall: float, steps: int, backend: str,
            loader: str, models: dict, profilers, taps, reader, timesteps: int) -> LavaRunResult:
    n_samples = out.shape[0]
    result = LavaRunResult(output_spikes=out, wall_time_s=wall, steps_run=steps,
                           samples_per_s=n_samples / wall if wall > 0 else float("inf"),
                           backend=backend, loader=loader, models=models, readout=net.readout)
    if reader is not None:
        result.output_potential = reader.result()
        if out.any():
            # the quantizer bounds |v| below the threshold for T ≤ readout_steps; a spike
            # means that bound does not hold here and v was reset: the potential is wrong
            fired = np.flatnonzero(out.any(axis=(1, 2))).tolist()
            warnings.warn(f"the non-firing readout layer {net.weighted_layers[-1].name} fired "
                          f"(samples {fired[:10]}): its accumulated input reached the threshold "
                          f"(was the network quantized for T >= {timesteps}?), so its output "
                          f"potential is not the accumulated input", RuntimeWarning, stacklevel=3)
    if profilers is not None:  # pragma: no cover - board only
        result.board_measurement = board_measurement(*profilers, timesteps=timesteps)
    if taps is not None:
        taps.recorder.check(out)
        result.layer_names = list(taps.recorder.names)
        result.layer_counts = taps.recorder.counts
        result.layer_step_spikes = taps.recorder.steps
        result.layer_spike_trains = taps.recorder.trains
        result.probe_mechanism = taps.mechanism
    return result
