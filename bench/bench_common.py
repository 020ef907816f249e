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

:func:`pipeline_net` builds the integer IR of an architecture the way the
pipeline does (``build_model`` → ``convert`` → ``quantize``), from a random
initialisation calibrated on real images (see :func:`calibrate`) so that the
layers fire at roughly the rates of a trained network.
"""
from __future__ import annotations

import datetime
import functools
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


@functools.lru_cache(maxsize=None)
def _dataset_images(hw: tuple) -> tuple:
    """(images (N, H, W) in [0, 1], source) of the dataset with that image size, or
    (None, 'uniform noise') when it is not installed."""
    try:
        if hw == (8, 8):
            from sklearn.datasets import load_digits
            return load_digits().images / 16.0, "sklearn digits"
        if hw == (28, 28):
            from pipeline.data import FASHION_MNIST_DEFAULT_ROOT, load_idx_dataset
            test = load_idx_dataset(FASHION_MNIST_DEFAULT_ROOT, "fashion-mnist")[2]
            return test / 255.0, "Fashion-MNIST test images"
    except (ImportError, OSError):  # not installed: only the stated source changes
        pass
    return None, "uniform noise"


def bench_images(shape: tuple, n: int, seed: int = 0) -> tuple:
    """(n, *shape) float images in [0, 1] and where they came from: the digits (8×8) or
    Fashion-MNIST test images (28×28) when present, else uniform noise (stated)."""
    rng = np.random.default_rng(seed)
    imgs, source = _dataset_images(tuple(shape[1:]))
    if imgs is None or shape[0] != 1:
        return rng.uniform(0, 1, size=(n,) + tuple(shape)), "uniform noise"
    idx = rng.choice(len(imgs), size=n, replace=n > len(imgs))
    return imgs[idx][:, None].astype(np.float64), source


def calibrate(model, images: np.ndarray, quantile: float = 0.99) -> None:
    """Give a randomly initialised NQ model trained-like statistics, in place: BN
    running stats from ``images`` and each λ at the ``quantile`` of its input, layer
    by layer (a λ changes what every later layer sees)."""
    import torch
    from torch import nn
    from models.architectures import nq_layers

    x = torch.as_tensor(images, dtype=torch.float32)
    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    for bn in bns:
        bn.momentum = None  # cumulative average: one pass sets the batch statistics
    seen = {}
    for nq in nq_layers(model) + [None]:
        for bn in bns:
            bn.reset_running_stats()
        hook = nq.register_forward_hook(lambda m, i, o: seen.update(x=i[0])) if nq else None
        model.train()
        with torch.no_grad():
            model(x)
        if hook is not None:
            hook.remove()
            pos = seen["x"][seen["x"] > 0]
            nq.threshold.data.fill_(float(torch.quantile(pos, quantile)) if pos.numel() else 1.0)
    model.eval()


def pipeline_net(arch: str, shape: tuple, neuron: str = "if_soft", timesteps: int = 8,
                 levels: int = 4, input_bits: int = LOIHI2.input_bits_default,
                 seed: int = 0) -> tuple:
    """(integer IR, float IR, image source) of ``arch`` built as the pipeline builds it
    (module doc): potential readout, quantized for T up to ``timesteps``."""
    import torch
    from hardware.quantize import quantize
    from models.architectures import build_model
    from models.converter import convert

    torch.manual_seed(seed)
    model = build_model(arch, tuple(shape), 10, levels=levels)
    images, source = bench_images(shape, 256, seed)
    calibrate(model, images)
    net = convert(model, tuple(shape), neuron, readout="potential")
    return quantize(net, input_bits, readout_steps=timesteps), net, source


def image_inputs(net: ir.Network, n: int, seed: int = 1) -> np.ndarray:
    """n encoded images (graded payloads) of the benchmark image source."""
    from hardware.simulator import encode_input
    return encode_input(bench_images(tuple(net.input.shape), n, seed)[0], int(net.input_bits))


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
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"{platform.node()}: {os.cpu_count()} CPU cores, {gpu}, "
            f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
            f"torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
            f"load average {load} (1, 5, 15 min)")


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
