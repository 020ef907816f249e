"""Run an integer SNN IR in Lava: many samples streamed through one run (:func:`run_lava`).

Backends (:data:`hardware.kinds.Backend`):

* ``loihi2-sim``: ``Loihi2SimCfg(select_tag='fixed_pt')`` on the CPU, which picks every
  process's bit-accurate model (Dense, Conv, LIF/LIFReset, this project's IFSoftReset,
  DelaySparse, the ring buffers); ``tests/test_lava_runner.py`` checks which.
* ``loihi2-hw``: ``Loihi2HwCfg`` on a board (:mod:`hardware.runtime.board`, needs lava-loihi).
  ``if_soft`` and residual networks are refused there: lava-loihi has no soft-reset
  neuron, and mapping DelaySparse extra inputs onto the chip is unverified.

Every block resets every T steps so each block's window holds one sample; which step
holds which sample is :mod:`hardware.runtime.schedule`'s. The RunSteps calls run inside a
:class:`hardware.runtime.session.LavaSession`, so the runtime is stopped on every exit path
and no Lava worker outlives the run.

A potential readout's output layer is a non-firing integrator: the run is split into
RunSteps chunks that end at each sample's window end, where ``out_layer.neuron.v`` is read
(:class:`_PotentialReader`).

Probes (``probes=True``/``'trains'``/``'counts'``) feed every block's output into one
bit-packed :class:`~hardware.runtime.procs.spike_recorder.SpikeRecorder`, read back after
every chunk, in the layouts of :class:`hardware.simulator.SimResult`. Other probe mechanisms
are benchmark-only (``bench/probe_mechanisms.py``, through ``probe_taps``).
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np

from hardware import ir
from hardware.kinds import BACKENDS, READOUTS, Backend, NeuronKind, Readout
from hardware.errors import LavaBackendError
from hardware.runtime.board import board_io, board_measurement, refuse_on_board
from hardware.runtime.network import build_lava_network
from hardware.runtime.progress import tqdm
from hardware.ir.validate import netx_limits, project_limits, validate_network
from hardware.runtime.schedule import (RESET_OFFSET, LayerProbes, Schedule, lava_rows, make_schedule,
                            output_spikes, readout_window_ends, source_data, validate_inputs,
                            weighted_shapes)
from hardware.runtime.session import LavaSession
from hardware.formats.netx import stock_reset_offset

__all__ = ["LavaRunResult", "run_lava", "RESET_OFFSET", "BACKENDS", "PROBE_MODES",
           "sim_run_config", "RecorderTaps"]

#: ``probes`` values: what is recorded per spiking layer.
PROBE_MODES = (False, True, "counts", "trains")


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
    backend: Backend
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
    readout: Readout = "potential"
    output_potential: Optional[np.ndarray] = None

    @property
    def output_counts(self) -> np.ndarray:
        """(N, n_out) total spikes per output neuron."""
        return self.output_spikes.sum(axis=1)

    def predictions(self, readout: Optional[Readout] = None) -> np.ndarray:
        """(N,) class of each sample after T steps, by the run's readout (or ``readout``):
        argmax of ``output_potential`` or of the output spike counts; ties go to the
        lowest index (numpy's argmax returns the first maximum), as in
        :meth:`hardware.simulator.SimResult.predictions`."""
        readout = readout or self.readout
        if readout not in READOUTS:
            raise LavaBackendError(f"readout {readout!r} is not one of {READOUTS}")
        if readout == "potential":
            if self.output_potential is None:
                raise LavaBackendError("this run recorded no output potential (the network's "
                                       "readout is not 'potential')")
            return np.argmax(self.output_potential, axis=1)
        return np.argmax(self.output_counts, axis=1)

    def accuracy(self, labels, readout: Optional[Readout] = None) -> float:
        """Fraction of samples whose :meth:`predictions` equal ``labels`` (N,)."""
        labels = np.asarray(labels).reshape(-1)
        pred = self.predictions(readout)
        if labels.shape != pred.shape:
            raise LavaBackendError(f"{labels.size} labels for {pred.size} samples")
        return float(np.mean(pred == labels))

    def activity(self, net: ir.Network, input_int=None):
        """:func:`hardware.analysis.activity.activity_from_sim` of the probed spikes
        (exact spikes, synaptic ops and neuron updates; ``source='lava'``)."""
        from hardware.analysis.activity import activity_from_sim
        if self.layer_counts is None:
            raise LavaBackendError("this run recorded no probes (run_lava(..., probes=True))")
        return activity_from_sim(net, self, input_int, source="lava")


def sim_run_config():
    """The CPU run config: Loihi2SimCfg selecting the ``fixed_pt`` models."""
    from lava.magma.core.run_configs import Loihi2SimCfg
    return Loihi2SimCfg(select_tag="fixed_pt")


class RecorderTaps:
    """The probes' Lava side: one SpikeRecorder on every block, read after every chunk.

    The recorder stores step t in ring column (t − 1) mod ``ring``; no chunk is
    longer than ``ring``, so a chunk covering steps done+1 .. done+n is read at
    columns (done + j) mod ring, j < n. Any ``probe_taps`` factory of
    :func:`run_lava` has this constructor and these three members.
    """

    mechanism = "recorder"

    def __init__(self, lnet, probes: LayerProbes, ring: int, steps: int):
        from hardware.runtime.procs.spike_recorder import SpikeRecorder
        self.probes, self.ring = probes, ring
        self.lava_shapes = [tuple(b.out.shape) for b in lnet.layers]
        probes.check_block_shapes(self.lava_shapes)
        self.proc = SpikeRecorder(shapes=self.lava_shapes, buffer=ring)
        for j, block in enumerate(lnet.layers):
            block.out.connect(self.proc.port(j))

    def after_chunk(self, done: int, n: int) -> None:
        from hardware.runtime.procs.spike_recorder import unpack
        cols = (done + np.arange(n)) % self.ring
        words = np.asarray(self.proc.data.get())[:, cols]
        for i, rows in enumerate(unpack(words, self.lava_shapes)):
            self.probes.add(i, done, lava_rows(rows, step_axis_last=False))

    def after_run(self) -> None:
        """Nothing left: every chunk was read."""


class _PotentialReader:
    """The output block's membrane v at the end of every sample window.

    The output block finishes sample k, step T at Lava step (k+1)·T + L and the
    LIFReset reset at the start of the next step wipes it, so the run stops at
    exactly those steps and ``Var.get`` reads v then: Lava's v after the step's
    update (and before any reset), in Lava's units (already ``<< 6``), the same
    register as ``SimResult.output_potential``.

    Measured on a tiny conv net (2 shared cores): each extra RunSteps call plus ``Var.get``
    costs ~10 ms (T = 8, N = 100: 4.2 s against 3.3 s in ~100-step chunks), while a
    ``lava.proc.io.sink.Read`` process reading v at every step made the run ~1.8x slower.
    On a board the same ``Var.get`` is used (unverified: no board); lava-loihi's profilers
    then see one run call per sample and average over them.
    """

    def __init__(self, var, plan: Schedule, n_out: int):
        self.var = var
        self.sample_at = {end: k for k, end in enumerate(
            readout_window_ends(plan.n_samples, plan.timesteps, plan.n_layers))}
        self.values = np.zeros((plan.n_samples, n_out), dtype=np.int64)
        self.read = np.zeros(plan.n_samples, dtype=bool)

    def after_chunk(self, end_step: int) -> None:
        k = self.sample_at.get(end_step)
        if k is None:
            return
        v = np.asarray(self.var.get())
        self.values[k] = lava_rows(v[..., None])[0].reshape(-1)
        self.read[k] = True

    def result(self) -> np.ndarray:
        if not self.read.all():  # pragma: no cover - the schedule holds every window end
            raise LavaBackendError("the output potential of some samples was never read")
        return self.values


def _neuron_kinds(net: ir.Network) -> set[NeuronKind]:
    return {layer.neuron.kind for layer in net.weighted_layers}


def _check_options(net: ir.Network, timesteps, backend: Backend, probes) -> int:
    """Validate run_lava's options (board availability included); return T as an int."""
    if backend not in BACKENDS:
        raise LavaBackendError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if not net.integer:
        raise LavaBackendError("run_lava needs the integer IR (quantize it first)")
    if isinstance(timesteps, bool) or int(timesteps) != timesteps or timesteps < 1:
        raise LavaBackendError(f"timesteps must be a positive integer, got {timesteps!r}")
    if not (isinstance(probes, bool) or probes in ("counts", "trains")):
        raise LavaBackendError(f"probes={probes!r}; choose one of {PROBE_MODES}")
    if backend == "loihi2-hw":
        # the input must reach the input neurons' a_in (see _input_port); through
        # lava-loihi's adapters that path is unverified without a board
        refuse_on_board(_neuron_kinds(net), probes, residual=not net.is_sequential,
                        input_neurons=net.input.neuron is not None)
    return int(timesteps)


def _build(net: ir.Network, timesteps: int, net_path: Optional[str], align_extra_inputs: bool = True):
    """Stock netx for a sequential cuba network read from ``net_path``, else our loader
    (stock netx cannot build if_soft neurons nor a residual network's extra inputs).
    A file stock netx loads may hold what netx makes of others' files (rescaled dense
    weights, its default neuron): netx's limits; our loader takes this project's."""
    stock = net_path is not None and _neuron_kinds(net) == {"cuba"} and net.is_sequential
    validate_network(net, netx_limits() if stock else project_limits())
    if net.input_bits is None:
        raise LavaBackendError("the network does not state its input bits (input_bits)")
    if stock:
        from lava.lib.dl.netx.hdf5 import Network as NetxNetwork
        if not os.path.isfile(net_path):
            raise LavaBackendError(f"netx file {net_path!r} does not exist")
        lnet = NetxNetwork(net_config=str(net_path), input_message_bits=int(net.input_bits),
                           reset_interval=int(timesteps), reset_offset=stock_reset_offset(net))
        blocks = len(net.weighted_layers) + (net.input.neuron is not None)
        if len(lnet.layers) != blocks:
            raise LavaBackendError(f"{net_path}: netx built {len(lnet.layers)} blocks, the IR "
                                   f"has {blocks} (weighted layers and an input neuron layer)")
        return lnet, "stock lava.lib.dl.netx.hdf5.Network"
    return (build_lava_network(net, reset_interval=int(timesteps), reset_offset=RESET_OFFSET,
                               align_extra_inputs=align_extra_inputs),
            "hardware.runtime.network.build_lava_network")


def _input_port(lnet):
    """Where the input goes. netx's ``Input`` block (a file's input neuron layer) leaves its
    ``inp`` port unconnected ("the input must be handled through neuron's bias"), so data sent
    there is dropped without a word; lava-dl's own tests feed that neuron's ``a_in``."""
    from lava.lib.dl.netx.blocks.process import Input

    in_layer = getattr(lnet, "in_layer", None)
    return in_layer.neuron.a_in if isinstance(in_layer, Input) else lnet.inp


def _io(lnet, data: np.ndarray, backend: Backend, steps: int, input_bits: int):
    """(source, sink, run config, board profilers or None) of one run."""
    if backend != "loihi2-sim":
        return board_io(lnet, data, steps, input_bits)  # pragma: no cover - needs a board
    from lava.proc import io
    src = io.source.RingBuffer(data=data)
    sink = io.sink.RingBuffer(shape=tuple(lnet.out.shape), buffer=steps)
    src.s_out.connect(_input_port(lnet))
    lnet.out.connect(sink.a_in)
    return src, sink, sim_run_config(), None


def _selected_models(lnet, src, sink) -> dict:
    """Process class -> model class the run config selected, for the report."""
    procs = [src, sink]
    for block in lnet.layers:
        procs += [block, getattr(block, "synapse", None), getattr(block, "neuron", None)]
    procs += [proj.process for proj in getattr(lnet, "projections", ())]
    out = {}
    for p in procs:
        if p is not None and p.model_class is not None:
            out.setdefault(type(p).__name__, set()).add(p.model_class.__name__)
    return {k: sorted(v) for k, v in out.items()}


def _execute(plan: Schedule, lnet, src, sink, run_cfg, taps, reader, bar) -> tuple:
    """All RunSteps chunks of one run: (sink data, selected models)."""
    with LavaSession() as session:
        done = 0
        for end in plan.ends:
            session.run(sink, end - done, run_cfg)
            if taps is not None:
                taps.after_chunk(done, end - done)
            if reader is not None:
                reader.after_chunk(end)
            bar.update(end - done)
            done = end
        sink_data = np.asarray(sink.data.get())
        if taps is not None:
            taps.after_run()
        return sink_data, _selected_models(lnet, src, sink)


def run_lava(net: ir.Network, inputs: np.ndarray, timesteps: int, *,
             backend: Backend = "loihi2-sim", net_path: Optional[str] = None,
             progress: bool = True, chunk_steps: Optional[int] = None,
             probes: Union[bool, str] = False,
             probe_taps: Optional[Callable] = None,
             align_extra_inputs: bool = True) -> LavaRunResult:
    """Stream N encoded samples through one Lava run and return their outputs.

    ``inputs``: (N, *input_shape) integer graded-spike payloads held for T
    steps (or (N, T, *input_shape), time-varying). Every block resets every
    ``timesteps`` steps so that each block's window holds exactly one sample
    (:mod:`hardware.runtime.schedule`). The run lasts ``N·T + L`` steps, executed
    in RunSteps chunks of at most ``chunk_steps`` steps (progress bar per
    chunk); with a potential readout a chunk also ends at every sample's window
    end, where the output layer's v is read (``LavaRunResult.output_potential``).
    The runtime is always stopped and its workers never outlive the run
    (:class:`hardware.runtime.session.LavaSession`); SIGTERM during the run exits
    the process with status 143 once Lava is stopped.

    For a sequential ``cuba`` network with ``net_path`` the file is loaded by stock
    ``lava.lib.dl.netx.hdf5.Network`` (proving it runs unchanged in lava-dl);
    otherwise (if_soft neurons, or a residual network, whose extra inputs become
    DelaySparse processes) :func:`hardware.runtime.network.build_lava_network` builds it;
    residual networks stream, probe and read out as chains (:mod:`hardware.runtime.schedule`).

    ``probes``: ``False`` (default), ``True``/``'trains'`` (per-layer counts,
    spikes per step and spike trains) or ``'counts'`` (no trains); see the
    module docstring and :class:`LavaRunResult`; ``'loihi2-sim'`` only.
    ``probe_taps``: how probes attach (default :class:`RecorderTaps`).
    ``align_extra_inputs=False``: shortcuts without their delays (measurement only).
    """
    timesteps = _check_options(net, timesteps, backend, probes)
    x = validate_inputs(net, inputs, timesteps)
    plan = make_schedule(net, x.shape[0], timesteps, chunk_steps)
    lnet, loader = _build(net, timesteps, net_path, align_extra_inputs)
    src, sink, run_cfg, profilers = _io(lnet, source_data(net, x, plan.steps), backend,
                                        plan.steps, int(net.input_bits))
    if profilers is not None:  # pragma: no cover - board only
        plan = plan.one_call_per_window()
    taps = _probe_taps(net, lnet, plan, timesteps, probes, probe_taps)
    reader = None
    if plan.windows:
        reader = _PotentialReader(lnet.out_layer.neuron.v, plan, net.output_size)
    bar = tqdm(total=plan.steps, desc=f"lava {backend}", unit="step", disable=not progress,
               leave=False)
    t0 = time.perf_counter()
    try:
        sink_data, models = _execute(plan, lnet, src, sink, run_cfg, taps, reader, bar)
    finally:
        bar.close()
    wall = time.perf_counter() - t0
    result = LavaRunResult(
        output_spikes=output_spikes(net, sink_data, plan.n_samples, timesteps),
        wall_time_s=wall, steps_run=plan.steps,
        samples_per_s=plan.n_samples / wall if wall > 0 else float("inf"),
        backend=backend, loader=loader, models=models, readout=net.readout)
    _attach_records(result, net, reader, taps, timesteps)
    if profilers is not None:  # pragma: no cover - board only
        result.board_measurement = board_measurement(*profilers, timesteps=timesteps)
    return result


def _probe_taps(net: ir.Network, lnet, plan, timesteps: int, probes, probe_taps):
    """The per-layer probes attached to the built network, or None without probes."""
    if not probes:
        return None
    # an input neuron layer (files made elsewhere) is netx's block 0 and spikes too
    first = [net.input] if net.input.neuron is not None else []
    layer_probes = LayerProbes([layer.name for layer in first + list(net.weighted_layers)],
                               [tuple(net.input.shape)] * len(first) + weighted_shapes(net),
                               plan.n_samples, timesteps,
                               keep_trains=probes is True or probes == "trains", lead=1 - len(first))
    return (probe_taps or RecorderTaps)(lnet, layer_probes, plan.longest_chunk, plan.steps)


def _attach_records(result: LavaRunResult, net: ir.Network, reader, taps,
                    timesteps: int) -> None:
    """Output potential and probes of the run, checked against its output spikes."""
    out = result.output_spikes
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
    if taps is not None:
        taps.probes.check(out)
        result.layer_names = list(taps.probes.names)
        result.layer_counts = taps.probes.counts
        result.layer_step_spikes = taps.probes.steps
        result.layer_spike_trains = taps.probes.trains
        result.probe_mechanism = taps.mechanism
