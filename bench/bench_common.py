"""Shared pieces of the benchmarks: the benchmark network, its inputs, timing.

The network is either a run directory's ``model.net`` (``--net PATH``, read
with :func:`hardware.netx_io.read_net`) or a random integer IR of the
digits-demo size, dense 64-128-10 with if_soft neurons, 8-bit graded input.
Random weights are uniform integers in [-42, 63] (inside Loihi 2's 8-bit
range) and each layer's threshold is set to the median of its positive mean
per-step synaptic input, measured on the reference simulator, so that roughly
half the neurons fire: a network that never spikes would time an idle run.
Inputs are uniform random ``input_bits``-bit payloads (the run time of the
bit-accurate models does not depend on the values, only the spike counts do).
"""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import time

import numpy as np

from hardware import ir
from hardware.simulator import simulate
from hardware.spec import LOIHI2


def random_dense_net(sizes=(64, 128, 10), input_bits: int = 8, timesteps: int = 8,
                     seed: int = 0) -> ir.Network:
    """Random integer dense IR with calibrated thresholds (see module doc)."""
    rng = np.random.default_rng(seed)
    layers = []
    for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(ir.Dense(
            weight=rng.integers(LOIHI2.weight_min // 3, LOIHI2.weight_max // 2, size=(n_out, n_in)),
            bias=np.zeros(n_out, dtype=np.int64),
            neuron=ir.Neuron("if_soft", threshold=1, du=LOIHI2.if_du, dv=LOIHI2.if_dv),
            name=f"fc{k}"))
    net = ir.Network(input=ir.Input(shape=(sizes[0],)), layers=layers, integer=True,
                     input_bits=input_bits)
    x = random_inputs(net, 16, seed + 1)
    rate = x.astype(float)  # mean per-step input of layer 0
    for li, layer in enumerate(net.layers):
        a = rate @ layer.weight.T
        pos = a[a > 0]
        layer.neuron.threshold = int(min(max(1, np.median(pos) if pos.size else 1),
                                         LOIHI2.threshold_max))
        res = simulate(net, x, timesteps)
        rate = res.layer_counts[li].numpy().reshape(len(x), -1) / timesteps
    return net


def load_net(path, timesteps: int, seed: int = 0) -> ir.Network:
    """``path`` (a .net file or a run directory holding model.net) or the random net."""
    if path is None:
        return random_dense_net(timesteps=timesteps, seed=seed)
    from hardware.netx_io import read_net
    if os.path.isdir(path):
        path = os.path.join(path, "model.net")
    return read_net(path)


def random_inputs(net: ir.Network, n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 1 << int(net.input_bits), size=(n,) + tuple(net.input.shape))


def describe(net: ir.Network) -> str:
    parts = []
    for layer, shape in zip(net.layers, net.shapes()):
        if isinstance(layer, (ir.Conv, ir.Dense)):
            parts.append(f"{type(layer).__name__.lower()} {layer.name} -> {tuple(shape)}"
                         f" ({layer.neuron.kind})")
    return f"input {tuple(net.input.shape)} ({net.input_bits}-bit); " + "; ".join(parts)


def machine() -> str:
    return (f"{platform.node()}: {os.cpu_count()} CPU cores, no GPU, "
            f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")


def today() -> str:
    return datetime.date.today().isoformat()


def timed(fn, repeats: int):
    """[(seconds, result)] of ``repeats`` calls."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = fn()
        out.append((time.perf_counter() - t0, r))
    return out


def mean_std(values) -> tuple:
    values = list(values)
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
