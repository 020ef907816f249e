"""Shared pieces of the benchmarks: the benchmark network, its inputs, timing.

The network is either a run directory's ``model.net`` (``--net PATH``, read
with :func:`hardware.formats.netx.read_net`) or a random integer IR of the
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

:func:`provenance` is what every result row a benchmark writes records about how it was
made (commit, threads, CPU, library versions); :func:`bench_config` builds a run's config
with the pipeline's own loader, so a benchmark's ``--set`` means what the CLI's does.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

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
                     input_bits=input_bits, readout="spikes")
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
    from hardware.formats.netx import read_net
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
    from hardware.fixed_point.quantize import quantize
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


REPO = Path(__file__).resolve().parent.parent
#: the distributions whose versions a result row records (pip names)
PROVENANCE_PACKAGES = ("torch", "numpy", "lava-nc", "lava-dl", "nqloihi")
#: modified tracked files named in a row (the rest are counted by ``dirty`` only)
MAX_DIRTY_PATHS = 20


def bench_config(config_path, script_overrides=(), user_overrides=()):
    """The run's config exactly as ``python -m pipeline --config PATH --set ...`` builds it:
    the file, then the benchmark's own settings (its flags), then the user's ``--set``
    (last wins, so ``--set data.name=digits`` beats a script default). The file is read once
    per process (:func:`_config_text`): an hours-long benchmark runs every row with the config
    it started with, even if deploy.yaml is edited (or gains a key) meanwhile."""
    from pipeline.config import config_from_text
    return config_from_text(_config_text(str(config_path)), [*script_overrides, *user_overrides],
                            str(config_path))


@functools.lru_cache(maxsize=None)
def _config_text(config_path: str) -> str:
    from pipeline.config import read_config_text
    return read_config_text(Path(config_path))


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):  # no git on this machine
        return None
    return out.stdout if out.returncode == 0 else None


@functools.lru_cache(maxsize=None)
def code_state() -> dict:
    """The commit this process runs and whether tracked files differed from it, taken once per
    process (at its first call: call it at start-up, the tree may change during a long run).
    ``commit`` is None outside a git checkout."""
    commit = (_git("rev-parse", "HEAD") or "").strip() or None
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    paths = [line[3:] for line in (status or "").splitlines()]
    return {"commit": commit, "dirty": None if status is None else bool(paths),
            "dirty_paths": paths[:MAX_DIRTY_PATHS]}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what platform knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance() -> dict:
    """How a result row was made, recorded in every row the benchmarks write (module doc):
    commit and dirty tree, torch's intra-op and inter-op threads and kernel ISA,
    OMP_NUM_THREADS, the CPU,
    Python's and the libraries' versions, the date. Rows written before it have none:
    readers go through :func:`row_provenance`."""
    import torch
    return {**code_state(), "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            # the vector ISA torch's CPU kernels dispatch to: another one rounds differently
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "cpu": cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "versions": {"python": platform.python_version(),
                         **{p: _version(p) for p in PROVENANCE_PACKAGES}},
            "date": today()}


def with_provenance(row: dict) -> dict:
    """``row`` with its ``provenance`` (the one way a benchmark stamps what it writes)."""
    return {**row, "provenance": provenance()}


def row_provenance(row: dict) -> dict | None:
    """A row's provenance, None for rows written before rows carried one."""
    return row.get("provenance")


def provenance_summary(rows) -> str:
    """One line for a report: how many rows say how they were made, and their commits."""
    rows = list(rows)
    known = [p for p in map(row_provenance, rows) if p]
    commits = sorted({f"{(p['commit'] or 'unknown')[:10]}{'+dirty' if p['dirty'] else ''}" for p in known})
    return (f"{len(known)} of {len(rows)} rows record their provenance"
            + (f" (commits {', '.join(commits)})" if commits else " (older rows predate it)"))


# --------------------------------------------------------------------------- seeded comparisons
# What bench/nq_vs_qcfs.py and bench/board_path.py share: results files of JSON lines, one row
# per finished run (appended at once, so a restarted benchmark skips what is there), and the
# fixed-point evaluation of every run at several T.

def load_results(path: Path) -> list[dict]:
    """The rows of a JSON-lines results file ([] before the first run)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_result(path: Path, row: dict) -> None:
    """Append ``row``, stamped with its provenance, to a JSON-lines results file."""
    with open(path, "a") as f:
        f.write(json.dumps(with_provenance(row), sort_keys=True) + "\n")


def results_paths(args) -> tuple[Path, Path]:
    """(the results file ``--results``, the Lava check's file next to it)."""
    results_path = Path(args.results)
    return results_path, results_path.with_name(results_path.stem + "_lava.jsonl")


def lava_agreement(net: ir.Network, split, input_bits: int, timesteps: int, samples: int) -> dict:
    """Lava (loihi2-sim, stock netx or our if_soft process) against the bit-accurate simulator
    on the first ``samples`` images of ``split``: the fraction whose readout potentials after
    ``timesteps`` steps are equal integers, and Lava's speed."""
    import torch
    from hardware.runtime.runner import run_lava
    from hardware.simulator import encode_input, simulate

    x = torch.stack([split[i][0] for i in range(samples)]).numpy()
    payload = encode_input(x, input_bits)
    lava = run_lava(net, payload, timesteps, progress=False)
    ref_v = simulate(net, torch.as_tensor(payload), timesteps).output_potential[-1].numpy()
    equal = np.all(np.asarray(lava.output_potential) == ref_v, axis=1)
    return {"samples": samples, "timesteps": timesteps, "agreement": float(equal.mean()),
            "lava_samples_per_s": lava.samples_per_s}


def mean_sd_percent(values) -> str:
    """Fractions as ``mean ± sd`` in percent (sd 0 for one value, '–' for none)."""
    values = list(values)
    if not values:
        return "–"
    mean, sd = mean_std(values)
    return f"{100 * mean:.2f} ± {100 * sd:.2f}"


def fixed_point_accuracy_by_t(net: ir.Network, data, input_bits: int, steps, batch: int = 1000
                              ) -> dict[str, float]:
    """{t: accuracy} for each t of ``steps`` of the integer ``net`` (bit-accurate simulator, the
    net's readout) on the whole test split of ``data``."""
    import torch

    from hardware.simulator import encode_input

    x = torch.stack([data.test[i][0] for i in range(len(data.test))])
    y = torch.stack([torch.as_tensor(data.test[i][1]) for i in range(len(data.test))])
    preds = []
    for begin in range(0, len(x), batch):
        payload = torch.as_tensor(encode_input(x[begin:begin + batch].numpy(), input_bits))
        preds.append(simulate(net, payload, max(steps)).predictions())
    correct = (torch.cat(preds, 1) == y.unsqueeze(0)).double().mean(1)
    return {str(t): float(correct[t - 1]) for t in steps}


def print_run(arm: str, seed: int, record: dict, steps) -> None:
    """The progress line of one finished run."""
    print(f"{arm} seed {seed}: T={'/'.join(map(str, steps))} " + " / ".join(
        f"{record['selected']['snn_fixed'][str(t)]:.4f}" for t in steps)
        + f", ANN {record['selected']['ann']:.4f}, {record['wall_s']:.0f} s", flush=True)


def seeded_arguments(description: str, out: str, results: str, lava: bool = False) -> argparse.ArgumentParser:
    """The options every seeded comparison takes (a script adds its arms and ``--set``);
    ``--lava`` and ``--lava-samples`` only for a script with a Lava pass (``lava=True``)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--dataset", default="fashion-mnist", help="shorthand for --set data.name=...")
    ap.add_argument("--arch", default="cnn-small")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--select-samples", type=int, default=2000)
    if lava:
        ap.add_argument("--lava-samples", type=int, default=16)
        ap.add_argument("--lava", action="store_true",
                        help="only check Lava against the simulator on the finished runs (resumable)")
    ap.add_argument("--config", default="deploy.yaml")
    ap.add_argument("--out", default=out)
    ap.add_argument("--results", default=results)
    ap.add_argument("--report", action="store_true", help="print the tables from the results file and exit")
    return ap
