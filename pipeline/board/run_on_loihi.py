#!/usr/bin/env python3
"""Run this bundle's network on a Loihi 2 board and check the chip against the golden outputs.

    python run_on_loihi.py                  # on the board: Loihi2HwCfg (needs lava-loihi)
    python run_on_loihi.py --backend sim    # the rehearsal on any CPU: Loihi2SimCfg, fixed point

Needs numpy, h5py, lava-nc, lava-dl (stock ``lava.lib.dl.netx.hdf5.Network``) and, on the
board, lava-loihi; nothing of the project that wrote the bundle. The folder holds:

* ``model.net``: the network, made for T steps per sample; its root attributes state the
  arguments stock netx needs (``input_message_bits``, ``reset_interval`` = T, ``reset_offset``);
* ``inputs.npz``: ``inputs`` (N, *input port shape), the integer graded spikes sample k sends
  at each of its T steps, and ``labels`` (N,);
* ``golden.npz``: what the bit-accurate reference simulator computed: ``output`` (N, n_out),
  the readout at the end of each sample (the output layer's membrane v for a 'potential'
  readout, its spike counts for a 'spikes' readout), ``prediction`` (N,);
* ``manifest.json``: T, readout, the SHA-256 of every file (checked before anything runs).

Sample k is sent at Lava steps kT+1 .. kT+T; with L blocks the output block ends sample k's
window after step (k+1)T + L, where the run pauses and its v is read; netx resets every block
at the start of its next window (``reset_interval``). Agreement is exact integer equality.
Exit status: 0 every sample agrees, 1 some do not, 2 the bundle is refused, 130 interrupted.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import io
import json
import multiprocessing
import os
import platform
import signal
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np

RESULT_FORMAT = "nqloihi-board-result"
RESULT_VERSION = 1
BUNDLE_FORMAT = "nqloihi-board-bundle"
BUNDLE_VERSIONS = (1,)
MAX_MANIFEST_BYTES = 1 << 20


class Refused(Exception):
    """The bundle is incomplete, changed, or holds a network stock netx cannot run on a board."""


# --------------------------------------------------------------------------- reading the bundle
def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict:
    """manifest.json, its format checked and every file it lists checked against its SHA-256."""
    path = folder / "manifest.json"
    if not path.is_file() or path.stat().st_size > MAX_MANIFEST_BYTES:
        raise Refused(f"{path}: missing or not a manifest (run this script inside the bundle folder)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT \
            or manifest.get("format_version") not in BUNDLE_VERSIONS:
        raise Refused(f"{path}: not a {BUNDLE_FORMAT} manifest of version {BUNDLE_VERSIONS}")
    for key, kind in (("files", dict), ("timesteps", int), ("readout", str)):
        if not isinstance(manifest.get(key), kind):
            raise Refused(f"{path}: '{key}' is missing or not a {kind.__name__}")
    for name, expected in manifest["files"].items():
        if not (folder / name).is_file():
            raise Refused(f"{name}: missing from {folder}; copy the whole bundle folder")
        if sha256_of(folder / name) != expected:
            raise Refused(f"{name}: its SHA-256 is not the one manifest.json states: the file "
                          f"changed after the bundle was made (an incomplete copy?)")
    return manifest


def netx_arguments(path: Path, manifest: dict) -> dict:
    """The arguments of ``netx.hdf5.Network`` the file states, refusing what stock netx cannot
    run on a board (the file's own ``stock_netx_note`` says why)."""
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
    if "stock_netx_call" not in attrs:
        raise Refused(f"{path.name}: stock netx cannot run this network on a board. "
                      f"{attrs.get('stock_netx_note', 'The file states no stock netx call.')}")
    missing = [k for k in ("input_message_bits", "reset_interval", "reset_offset") if k not in attrs]
    if missing:
        raise Refused(f"{path.name} does not state {', '.join(missing)}: export it for its T again")
    args = {key: int(attrs[key]) for key in ("input_message_bits", "reset_interval", "reset_offset")}
    if args["reset_interval"] != manifest["timesteps"]:
        raise Refused(f"{path.name} states T = {args['reset_interval']} (reset_interval), the "
                      f"manifest T = {manifest['timesteps']}: the bundle is inconsistent")
    return {"net_config": str(path), **args}


def load_arrays(folder: Path, samples) -> tuple:
    """(inputs, labels, golden output, golden prediction), the first ``samples`` of each."""
    with np.load(folder / "inputs.npz", allow_pickle=False) as f:
        inputs, labels = f["inputs"], f["labels"]
    with np.load(folder / "golden.npz", allow_pickle=False) as f:
        output, prediction = f["output"], f["prediction"]
    n = len(inputs) if samples is None else min(samples, len(inputs))
    if n < 1 or not len(inputs) == len(labels) == len(output) == len(prediction):
        raise Refused("inputs.npz and golden.npz do not hold the same samples")
    return inputs[:n], labels[:n], output[:n], prediction[:n]


# --------------------------------------------------------------------------- running in Lava
def build(netx_args: dict, inputs: np.ndarray, backend: str, timesteps: int):
    """(network, sink, run config, profilers or None): inputs streamed from a ring buffer,
    sample k at columns kT .. kT+T-1 (column c is sent at step c+1), zeros after them."""
    from lava.proc import io as lava_io
    with contextlib.redirect_stdout(io.StringIO()):  # lava-dl prints an irrelevant warning
        from lava.lib.dl.netx.hdf5 import Network
    net = Network(**netx_args)
    if tuple(inputs.shape[1:]) != tuple(net.inp.shape):
        raise Refused(f"inputs.npz holds samples of shape {inputs.shape[1:]}, the network's input port "
                      f"is {tuple(net.inp.shape)}: the bundle is inconsistent")
    steps = len(inputs) * timesteps + len(net.layers)
    data = np.zeros(tuple(net.inp.shape) + (steps,), dtype=np.int64)
    held = np.repeat(np.moveaxis(inputs.astype(np.int64), 0, -1), timesteps, axis=-1)
    data[..., :held.shape[-1]] = held
    source = lava_io.source.RingBuffer(data=data)
    sink = lava_io.sink.RingBuffer(shape=tuple(net.out.shape), buffer=steps)
    if backend == "sim":
        from lava.magma.core.run_configs import Loihi2SimCfg
        source.s_out.connect(net.inp)
        net.out.connect(sink.a_in)
        return net, sink, Loihi2SimCfg(select_tag="fixed_pt"), None
    return board_io(net, source, sink, netx_args["input_message_bits"], steps)


def board_io(net, source, sink, input_bits: int, steps: int):
    """On the board the host's ring buffers reach the chip through lava-loihi's adapters, and
    lava-loihi's profilers (where it has them) measure power and time per step."""
    from lava.magma.core.run_configs import Loihi2HwCfg
    try:
        from lava.proc.embedded_io.spike import NxToPyAdapter, PyToNxAdapter  # lava-loihi
    except ImportError:
        raise Refused("--backend hw needs Intel's lava-loihi (the Loihi 2 compiler and runtime), "
                      "which is not installed here; rehearse on a CPU with --backend sim") from None
    from lava.utils import slurm
    if "NXSDKHOST" not in os.environ and not slurm.is_available():
        raise Refused("lava-loihi is installed but no Loihi 2 board is reachable (no SLURM controller "
                      "and NXSDKHOST is not set); see lava.utils.loihi.use_slurm_host / use_ethernet_host")
    to_chip = PyToNxAdapter(shape=tuple(net.inp.shape), num_message_bits=input_bits)
    to_host = NxToPyAdapter(shape=tuple(net.out.shape))
    source.s_out.connect(to_chip.inp)
    to_chip.out.connect(net.inp)
    net.out.connect(to_host.inp)
    to_host.out.connect(sink.a_in)
    try:
        from lava.utils import loihi2_profiler
        profilers = (loihi2_profiler.Loihi2Power(num_steps=steps), loihi2_profiler.Loihi2ExecutionTime())
    except ImportError:
        profilers = None
    cfg = Loihi2HwCfg(select_sub_proc_model=True, callback_fxs=list(profilers or []))
    return net, sink, cfg, profilers


def in_ir_order(array: np.ndarray) -> np.ndarray:
    """A Lava (W, H, C) value as the golden files' flat (C, H, W) order; flat values as they are."""
    array = np.asarray(array)
    return (array.transpose(2, 1, 0) if array.ndim == 3 else array).reshape(-1)


def run_samples(net, sink, run_cfg, n: int, timesteps: int, readout: str) -> tuple:
    """(readout per sample (n, n_out) int64, seconds per RunSteps call): one call per sample,
    ending where the output block has finished the sample, the output v read there."""
    from lava.magma.core.run_conditions import RunSteps
    layers, done, values, seconds = len(net.layers), 0, [], []
    for k in range(n):
        end = (k + 1) * timesteps + layers
        start = time.perf_counter()
        sink.run(condition=RunSteps(num_steps=end - done), run_cfg=run_cfg)
        if readout == "potential":
            values.append(np.rint(in_ir_order(net.out_layer.neuron.v.get())).astype(np.int64))
        seconds.append(time.perf_counter() - start)
        done = end
        if n >= 10 and (k + 1) % (n // 10) == 0:
            print(f"  {k + 1}/{n} samples", file=sys.stderr, flush=True)
    if readout == "potential":
        return np.stack(values), seconds
    # the output block emits sample k, step t (1..T) at Lava step kT + L + t, kept in column
    # kT + L + t - 1
    spikes = np.moveaxis(np.asarray(sink.data.get()), -1, 0)
    columns = np.arange(n)[:, None] * timesteps + layers + np.arange(timesteps)[None, :]
    return np.stack([np.rint(in_ir_order(spikes[c].sum(axis=0))) for c in columns]).astype(np.int64), seconds


def stop_lava(proc, timeout_s: float = 10.0) -> None:
    """Stop Lava's runtime so that no Lava process outlives this script: Lava's own stop between
    two runs; interrupted inside a run (or if that stop hangs) Lava would wait for replies that
    never come, so its workers are killed and its shared memory freed here."""
    runtime = proc.runtime
    if runtime is None or not getattr(runtime, "_is_started", False):
        return kill_workers()
    if not getattr(runtime, "_is_running", False):
        stopper = threading.Thread(target=lambda: _quietly(runtime.stop), daemon=True)
        stopper.start()
        stopper.join(timeout_s)
        if not stopper.is_alive():
            return kill_workers()
    kill_workers()
    memory = getattr(getattr(runtime, "_messaging_infrastructure", None), "smm", None)
    for handle in list(getattr(memory, "_shared_memory_handles", ())):
        with contextlib.suppress(OSError):
            handle.close()
            handle.unlink()
    runtime._is_started = runtime._is_running = False  # its __del__ would stop it again


def kill_workers() -> None:
    """Kill every process this script forked that is still alive, and wait (1 s) for them."""
    children = multiprocessing.active_children()
    for child in children:
        child.kill()
    deadline = time.monotonic() + 1.0
    while any(child.is_alive() for child in children) and time.monotonic() < deadline:
        time.sleep(0.01)


def workers_follow_this_script() -> None:
    """Lava forks a worker process per process model. Each one this script forks ignores Ctrl-C
    (the script stops them all) and, on Linux, is killed by the kernel if the script dies, even
    by kill -9; the workers' own children are left to them."""
    parent = {"pid": os.getpid()}

    def in_child() -> None:
        if parent["pid"] is None or os.getppid() != parent["pid"]:
            return
        parent["pid"] = None
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if sys.platform.startswith("linux"):
            import ctypes
            ctypes.CDLL(None).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
            if os.getppid() == 1:  # the script died between fork() and prctl()
                os._exit(1)

    os.register_at_fork(after_in_child=in_child)


def _quietly(fn) -> None:
    with contextlib.suppress(Exception):
        fn()


# --------------------------------------------------------------------------- the result
def board_measurement(profilers, timesteps: int):
    """Power and time per step from lava-loihi's profilers (as lava-dl's benchmarks read them)."""
    if profilers is None:
        return None
    power, timer = profilers
    time_per_step_us = float(timer.avg_time_per_step)
    total_w, static_w = float(np.mean(power.total_power)), float(power.static_total_power)
    sample_s = time_per_step_us * 1e-6 * timesteps
    return {"source": "lava-loihi loihi2_profiler", "time_per_step_us": time_per_step_us,
            "total_power_w": total_w, "static_power_w": static_w, "dynamic_power_w": total_w - static_w,
            "energy_per_sample_j": total_w * sample_s,
            "dynamic_energy_per_sample_j": (total_w - static_w) * sample_s}


def versions() -> dict:
    from importlib import metadata
    found = {}
    for name in ("lava-nc", "lava-dl", "lava-loihi", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def make_result(args, manifest: dict, arrays: tuple, measured: np.ndarray, seconds: list,
                profilers) -> dict:
    _, labels, golden, golden_prediction = arrays
    agree = np.all(measured == golden, axis=1)
    prediction = measured.argmax(axis=1)  # ties go to the lowest index, as in the simulator
    n = len(agree)
    return {
        "format": RESULT_FORMAT, "format_version": RESULT_VERSION, "backend": args.backend,
        "run_config": "Loihi2HwCfg" if args.backend == "hw" else "Loihi2SimCfg(select_tag='fixed_pt')",
        "host": platform.node(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        "board": {k: os.environ[k] for k in ("PARTITION", "BOARD", "LOIHI_GEN", "NXSDKHOST")
                  if k in os.environ},
        "net_sha256": manifest["files"]["model.net"], "bundle_commit": manifest.get("commit"),
        "timesteps": manifest["timesteps"], "readout": manifest["readout"], "samples": n,
        "agreement": float(agree.mean()), "mismatching_samples": np.flatnonzero(~agree).tolist(),
        "predictions_agree": bool(np.array_equal(prediction, golden_prediction)),
        "accuracy": float(np.mean(prediction == labels)),
        "golden_accuracy": float(np.mean(golden_prediction == labels)),
        "wall_time_s": float(sum(seconds)), "first_sample_s": float(seconds[0]),
        "time_per_sample_s": float(np.mean(seconds[1:]) if n > 1 else seconds[0]),
        "board_measurement": board_measurement(profilers, manifest["timesteps"]),
        "versions": versions()}


def print_result(result: dict, out: Path) -> None:
    bad = result["mismatching_samples"]
    print(f"backend {result['backend']} ({result['run_config']}), {result['samples']} samples, "
          f"T = {result['timesteps']}, readout {result['readout']}")
    print(f"agreement with the golden outputs (exact integers): {result['agreement']:.3f}"
          + (f"; mismatching samples: {', '.join(map(str, bad[:20]))}{' ...' if len(bad) > 20 else ''}"
             if bad else ""))
    print(f"accuracy {result['accuracy']:.4f} (golden: {result['golden_accuracy']:.4f}); "
          f"{result['time_per_sample_s'] * 1e3:.1f} ms per sample after the first "
          f"({result['first_sample_s']:.1f} s with compiling)")
    measured = result["board_measurement"]
    if measured:
        print(f"board: {measured['time_per_step_us']:.1f} us per step, "
              f"{measured['total_power_w']:.3f} W total")
    print(f"result written to {out}")


# --------------------------------------------------------------------------- main
def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a whole number >= 1, got {text!r}")
    return int(text)


def parse_args(argv=None):
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description="Run the bundle's network on Loihi 2 (or its CPU "
                                     "rehearsal) and compare it with the golden outputs.")
    parser.add_argument("--backend", choices=("hw", "sim"), default="hw",
                        help="hw: a Loihi 2 board (Loihi2HwCfg, lava-loihi); sim: any CPU (Loihi2SimCfg)")
    parser.add_argument("--samples", type=positive, default=None, help="first N samples only (default all)")
    parser.add_argument("--bundle", type=Path, default=here, help="the bundle folder (default: this script's)")
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (default: <bundle>/result_<backend>.json)")
    return parser.parse_args(argv)


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # the finally below stops Lava first


def main(argv=None) -> int:
    args = parse_args(argv)
    folder = args.bundle.resolve()
    out = args.out or folder / f"result_{args.backend}.json"
    try:
        manifest = read_manifest(folder)
        netx_args = netx_arguments(folder / "model.net", manifest)
        arrays = load_arrays(folder, args.samples)
    except Refused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    workers_follow_this_script()
    timesteps, sink = manifest["timesteps"], None
    try:
        net, sink, run_cfg, profilers = build(netx_args, arrays[0], args.backend, timesteps)
        measured, seconds = run_samples(net, sink, run_cfg, len(arrays[0]), timesteps, manifest["readout"])
    except Refused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if sink is not None:
            stop_lava(sink)
    result = make_result(args, manifest, arrays, measured, seconds, profilers)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_result(result, out)
    return 0 if result["agreement"] == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
