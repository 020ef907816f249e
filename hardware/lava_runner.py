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

Probes (``run_lava(..., probes=True)``)
---------------------------------------
Every block's neuron output (``block.out``) additionally feeds a sink
RingBuffer of ``chunk_steps`` columns, read back (``data.get()``) after every
RunSteps chunk, so host memory in Lava stays bounded however long the run.
Block i emits sample k, step τ at Lava step ``kT + 1 + i + τ`` (above), i.e.
ring column ``(kT + i + τ) mod chunk_steps``: each layer's window is offset by
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
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
from tqdm.auto import tqdm

from . import ir
from .errors import LavaBackendError, QuantizationError
from .lava_net import build_lava_network, chw_to_whc

__all__ = ["LavaRunResult", "run_lava", "RESET_OFFSET", "BACKENDS", "PROBE_MODES",
           "PROBE_MECHANISMS", "total_steps", "hardware_available", "sim_run_config"]

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

    @property
    def output_counts(self) -> np.ndarray:
        """(N, n_out) total spikes per output neuron."""
        return self.output_spikes.sum(axis=1)

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


def run_lava(net: ir.Network, inputs: np.ndarray, timesteps: int, *,
             backend: str = "loihi2-sim", net_path: Optional[str] = None,
             progress: bool = True, chunk_steps: Optional[int] = None,
             probes: Union[bool, str] = False,
             probe_mechanism: str = "recorder") -> LavaRunResult:
    """Stream N encoded samples through one Lava run and return their output spikes.

    ``inputs``: (N, *input_shape) integer graded-spike payloads held for T
    steps (or (N, T, *input_shape), time-varying). Every block resets every
    ``timesteps`` steps, staggered as netx does, with user offset
    :data:`RESET_OFFSET` so that each block's window holds exactly one sample
    (derivation in the module docstring). The run lasts ``N·T + L`` steps,
    executed in chunks of ``chunk_steps`` RunSteps (progress bar per chunk).
    The runtime is always stopped, also on errors and KeyboardInterrupt.

    For a ``cuba`` network with ``net_path`` the file is loaded by stock
    ``lava.lib.dl.netx.hdf5.Network`` (proving it runs unchanged in lava-dl);
    otherwise :func:`hardware.lava_net.build_lava_network` builds it.

    ``probes``: ``False`` (default), ``True``/``'trains'`` (per-layer counts,
    spikes per step and spike trains) or ``'counts'`` (no trains); see the
    module docstring and :class:`LavaRunResult`. ``probe_mechanism``:
    ``'ringbuffer'`` (default, the cheaper one measured) or ``'monitor'``.
    Probes are supported on ``'loihi2-sim'`` only.
    """
    if backend not in BACKENDS:
        raise LavaBackendError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if not net.integer:
        raise LavaBackendError("run_lava needs the integer IR (quantize it first)")
    if int(timesteps) != timesteps or timesteps < 1:
        raise LavaBackendError(f"timesteps must be a positive integer, got {timesteps!r}")
    timesteps = int(timesteps)
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

    x = _validate_inputs(net, inputs, timesteps)
    n_samples = x.shape[0]
    n_layers = len(net.weighted_layers)
    steps = total_steps(n_samples, timesteps, n_layers)
    if chunk_steps is None:
        # ~100 steps per RunSteps call: few enough calls that their overhead
        # is small, often enough for a useful progress bar.
        chunk_steps = timesteps * max(1, math.ceil(100 / timesteps))
    if int(chunk_steps) < 1:
        raise LavaBackendError(f"chunk_steps must be >= 1, got {chunk_steps}")
    chunk_steps = int(chunk_steps)

    from lava.magma.core.run_conditions import RunSteps
    from lava.proc import io

    data = _source_data(net, x, steps)
    lnet, loader = _build(net, timesteps, net_path)
    out_shape = tuple(lnet.out.shape)
    profilers = None
    if backend == "loihi2-sim":
        src = io.source.RingBuffer(data=data)
        sink = io.sink.RingBuffer(shape=out_shape, buffer=steps)
        src.s_out.connect(lnet.inp)
        lnet.out.connect(sink.a_in)
        run_cfg = sim_run_config()
    else:  # pragma: no cover - needs a Loihi 2 board
        from lava.magma.core.run_configs import Loihi2HwCfg
        src, sink = _hw_io(lnet, data, out_shape, steps, int(net.input_bits))
        profilers = board_profilers(steps)
        if profilers is not None:
            chunk_steps = steps  # the profilers measure one run call
        run_cfg = Loihi2HwCfg(select_sub_proc_model=True,
                              callback_fxs=list(profilers) if profilers is not None else [])

    recorder = probe_sinks = None
    if probes:
        names = [layer.name for layer in net.weighted_layers]
        shapes = [tuple(int(v) for v in s) for s, layer in zip(net.shapes(), net.layers)
                  if isinstance(layer, (ir.Conv, ir.Dense))]
        recorder = _LayerProbes(names, shapes, n_samples, timesteps,
                                keep_trains=probes is True or probes == "trains")
        probe_sinks = []
        for block, shape in zip(lnet.layers, shapes):
            lava_shape = tuple(block.out.shape)
            if lava_shape != chw_to_whc(shape):
                raise LavaBackendError(f"layer {names[len(probe_sinks)]}: Lava block output "
                                       f"{lava_shape} is not the IR shape {shape} as (W, H, C)")
            if probe_mechanism == "recorder":
                continue
            if probe_mechanism == "ringbuffer":
                # a ring of one chunk, emptied after every chunk: bounded memory
                probe = io.sink.RingBuffer(shape=lava_shape, buffer=chunk_steps)
                block.out.connect(probe.a_in)
            else:
                from lava.proc.monitor.process import Monitor
                probe = Monitor()  # one port per Monitor (lava 0.10 limitation)
                probe.probe(block.out, steps)
            probe_sinks.append(probe)
        if probe_mechanism == "recorder":
            from .lava_procs.spike_recorder import SpikeRecorder
            recorder_proc = SpikeRecorder(shapes=[tuple(b.out.shape) for b in lnet.layers],
                                          buffer=chunk_steps)
            for j, block in enumerate(lnet.layers):
                block.out.connect(recorder_proc.port(j))

    bar = tqdm(total=steps, desc=f"lava {backend}", unit="step", disable=not progress,
               leave=False)
    started = False
    t0 = time.perf_counter()
    try:
        done = 0
        while done < steps:
            n = min(chunk_steps, steps - done)
            started = True
            sink.run(condition=RunSteps(num_steps=n), run_cfg=run_cfg)
            if recorder is not None and probe_mechanism == "recorder":
                from .lava_procs.spike_recorder import unpack
                words = np.asarray(recorder_proc.data.get())[:, :n]
                for i, rows in enumerate(unpack(words, [tuple(b.out.shape) for b in lnet.layers])):
                    recorder.add(i, done, _lava_rows(rows, step_axis_last=False))
            if recorder is not None and probe_mechanism == "ringbuffer":
                # chunks start at multiples of chunk_steps = the ring length,
                # so this chunk's steps are ring columns 0 .. n-1
                for i, probe in enumerate(probe_sinks):
                    rows = _lava_rows(np.asarray(probe.data.get())[..., :n])
                    recorder.add(i, done, rows)
            done += n
            bar.update(n)
        sink_data = np.asarray(sink.data.get())
        if recorder is not None and probe_mechanism == "monitor":
            for i, probe in enumerate(probe_sinks):
                rows = _lava_rows(np.asarray(probe.out_read_0.get()), step_axis_last=False)
                recorder.add(i, 0, rows)
        models = _selected_models(lnet, src, sink)
    finally:
        bar.close()
        if started and sink.runtime is not None:
            sink.stop()
    wall = time.perf_counter() - t0

    flat = _output_flat(net, sink_data)  # (steps, n_out), row t-1 = Lava step t
    idx = (np.arange(n_samples)[:, None] * timesteps + n_layers
           + np.arange(timesteps)[None, :])  # kT + L + τ − 1
    out = flat[idx]  # (N, T, n_out)
    result = LavaRunResult(output_spikes=out, wall_time_s=wall, steps_run=steps,
                           samples_per_s=n_samples / wall if wall > 0 else float("inf"),
                           backend=backend, loader=loader, models=models)
    if backend == "loihi2-hw" and profilers is not None:  # pragma: no cover - board only
        result.board_measurement = board_measurement(*profilers, timesteps=timesteps)
    if recorder is not None:
        recorder.check(out)
        result.layer_names = list(recorder.names)
        result.layer_counts = recorder.counts
        result.layer_step_spikes = recorder.steps
        result.layer_spike_trains = recorder.trains
        result.probe_mechanism = probe_mechanism
    return result
