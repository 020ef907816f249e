"""Benchmark-only probe mechanisms for ``run_lava(..., probe_taps=...)``.

The product records per-layer spikes with one SpikeRecorder process
(:class:`hardware.runtime.runner.RecorderTaps`). These are the alternatives it was
measured against (``bench/probe_overhead.py``, figures in BENCHMARKS.md); they
are exact too (``tests/test_lava_probes.py``) but cost more:

``RingBufferTaps``
    one ``lava.proc.io.sink.RingBuffer`` per block, read after every chunk:
    one more OS process to synchronise per layer and step, and ``Var.get``
    sends a ``(neurons, steps)`` buffer one element at a time.
``MonitorTaps``
    one ``lava.proc.monitor.Monitor`` per block, read at the end: Monitor runs
    an extra management phase at every step (its ``post_guard`` is always
    true), stores float64, records one port per Monitor, and its buffer grows
    with the whole run.
"""
from __future__ import annotations

import numpy as np

from hardware.runtime.schedule import LayerProbes, lava_rows

__all__ = ["RingBufferTaps", "MonitorTaps", "MECHANISMS"]


class RingBufferTaps:
    """One sink RingBuffer per block; step t is stored in ring column (t − 1) mod ring."""

    mechanism = "ringbuffer"

    def __init__(self, lnet, probes: LayerProbes, ring: int, steps: int):
        from lava.proc import io
        self.probes, self.ring = probes, ring
        shapes = [tuple(b.out.shape) for b in lnet.layers]
        probes.check_block_shapes(shapes)
        self.sinks = []
        for block, shape in zip(lnet.layers, shapes):
            sink = io.sink.RingBuffer(shape=shape, buffer=ring)
            block.out.connect(sink.a_in)
            self.sinks.append(sink)

    def after_chunk(self, done: int, n: int) -> None:
        cols = (done + np.arange(n)) % self.ring
        for i, sink in enumerate(self.sinks):
            self.probes.add(i, done, lava_rows(np.asarray(sink.data.get())[..., cols]))

    def after_run(self) -> None:
        """Nothing left: every chunk was read."""


class MonitorTaps:
    """One Monitor per block (Lava 0.10 records one port per Monitor), read at the end."""

    mechanism = "monitor"

    def __init__(self, lnet, probes: LayerProbes, ring: int, steps: int):
        from lava.proc.monitor.process import Monitor
        self.probes = probes
        probes.check_block_shapes([tuple(b.out.shape) for b in lnet.layers])
        self.monitors = []
        for block in lnet.layers:
            monitor = Monitor()
            monitor.probe(block.out, steps)
            self.monitors.append(monitor)

    def after_chunk(self, done: int, n: int) -> None:
        """Monitors are read once, after the run."""

    def after_run(self) -> None:
        for i, monitor in enumerate(self.monitors):
            rows = lava_rows(np.asarray(monitor.out_read_0.get()), step_axis_last=False)
            self.probes.add(i, 0, rows)


#: name -> probe_taps factory (None: run_lava's default, the SpikeRecorder)
MECHANISMS = {"recorder": None, "ringbuffer": RingBufferTaps, "monitor": MonitorTaps}
