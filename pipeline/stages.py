"""The pipeline's stages. Each takes the validated config and returns a dict;
each writes its results into ``run.dir`` (``report.json`` is updated, never
replaced, so stages can run one at a time)."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import time
from pathlib import Path

# Lava calls multiprocessing.set_start_method('fork') when its runtime is imported,
# which fails once anything (tqdm's write lock, for one) has fixed the start method:
# import it before any stage runs.
import lava.magma.runtime.message_infrastructure.multiprocessing  # noqa: F401,E402
import numpy as np
import torch
from tqdm.auto import tqdm

from hardware.activity import activity_from_sim, save_raster, spiking_layers
from hardware.energy import count_macs, energy_estimate
from hardware.errors import NetxFormatError
from hardware.resources import check_fit, require_fit
from hardware.quantize import quantize
from hardware.simulator import encode_input, simulate

from .data import load_dataset
from models.converter import count_ann_macs

from .training import (CHECKPOINT, ann_accuracy, load_checkpoint, model_from_checkpoint, snn_accuracy_by_t,
                       to_ir)
from .training import train as train_model

log = logging.getLogger(__name__)


def _import_netx_quietly() -> None:
    """lava-dl's slayer prints a warning about an optional Prophesee toolbox (irrelevant
    here) on stdout at import; keep it off the user's terminal but in the debug log."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        import lava.lib.dl.netx  # noqa: F401
    if printed.getvalue().strip():
        log.debug("lava-dl import said: %s", " ".join(printed.getvalue().split()))


_import_netx_quietly()

REPORT_JSON = "report.json"
NET_FILE = "model.net"
REPORT_FORMAT = 1


# --------------------------------------------------------------------------- helpers
def _run_dir(cfg) -> Path:
    path = Path(cfg.run.dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_report(run_dir: Path) -> dict:
    path = Path(run_dir) / REPORT_JSON
    if not path.exists():
        return {"format_version": REPORT_FORMAT}
    with open(path) as f:
        return json.load(f)


def update_report(run_dir: Path, updates: dict) -> dict:
    """Merge ``updates`` into report.json (one level deep for dict values), atomically."""
    report = read_report(run_dir)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(report.get(key), dict):
            report[key].update(value)
        else:
            report[key] = value
    path = Path(run_dir) / REPORT_JSON
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
    return report


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _test_tensors(cfg):
    data = load_dataset(cfg.data, seed=cfg.train.seed)
    x = torch.stack([data.test[i][0] for i in range(len(data.test))])
    y = torch.stack([data.test[i][1] for i in range(len(data.test))])
    return data, x, y


def _accuracy_by_t(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """predictions (T, N) -> {"1": acc, ..., "T": acc}."""
    return {str(t + 1): float(np.mean(predictions[t] == labels)) for t in range(predictions.shape[0])}


def _predictions_from_spikes(spikes: np.ndarray) -> np.ndarray:
    """(N, T, n_out) spikes -> (T, N) argmax of cumulative counts (ties -> lowest index)."""
    return np.cumsum(spikes, axis=1).argmax(axis=2).T


def _fixed_point_run(cfg, net, x_int: np.ndarray, labels: np.ndarray, run_dir: Path, progress: bool):
    """Bit-accurate simulator over the test split: ({t: accuracy} for t ≤ eval.timesteps by the
    net's readout, summed activity or None, wall time); writes sample 0's raster (probes on)."""
    steps = cfg.eval.timesteps
    start = time.perf_counter()
    predictions = []
    activity = None
    for begin in tqdm(range(0, len(x_int), cfg.eval.batch_size), desc=f"SNN fixed point, T={steps}",
                      leave=False, disable=not progress):
        batch = x_int[begin:begin + cfg.eval.batch_size]
        res = simulate(net, torch.as_tensor(batch), steps, record_spikes=cfg.run.probes)
        predictions.append(res.predictions().numpy())  # (T, B), by net.readout
        if cfg.run.probes:
            if begin == 0:
                _save_spike_raster(run_dir, net, res)
            batch_activity = activity_from_sim(net, res, batch)
            activity = batch_activity if activity is None else activity.merge(batch_activity)
    sim_time = time.perf_counter() - start
    return _accuracy_by_t(np.concatenate(predictions, axis=1), labels), activity, sim_time


def _warn_if_readout_unbounded(net, steps: int) -> None:
    """The quantizer keeps the output integrator below its threshold only up to the T it was
    quantized for; beyond it the layer may fire and reset, and argmax v means nothing."""
    if net.readout != "potential":
        return
    bounded = [q.get("readout_steps") for q in net.metadata.get("quantization") or []
               if isinstance(q, dict) and q.get("readout_steps") is not None]
    if bounded and steps > min(bounded):
        log.warning("eval.timesteps=%d exceeds the %d steps the readout layer of this network was "
                    "quantized for: its membrane may reach the threshold, fire and reset", steps,
                    min(bounded))


def _save_spike_raster(run_dir: Path, net, res) -> None:
    """Sample 0's spike trains of the layers that spike (a potential readout's output
    integrator never does: its all-empty panel would only mislead)."""
    keep = [i for i, sl in enumerate(spiking_layers(net)) if not sl.readout]
    if keep:
        save_raster(run_dir / "raster.npz", [res.layer_names[i] for i in keep],
                    [res.layer_spike_trains[i] for i in keep], sample=0)
    else:  # no layer spikes: a raster left by an earlier run would describe another network
        (run_dir / "raster.npz").unlink(missing_ok=True)


def _lava_agreement(lava_run, ref) -> np.ndarray:
    """(n,) bool: Lava's sample equals the bit-accurate simulator's ``ref`` (same samples).

    Output spikes at every step always (none for a potential readout); for a potential readout
    also the output membrane after T (``==``); and, where Lava recorded them (probes), every
    layer's spikes per neuron and per step.
    """
    agree = np.all(lava_run.output_spikes == ref.output_spikes.numpy().transpose(1, 0, 2), axis=(1, 2))
    if lava_run.readout == "potential":
        agree &= np.all(lava_run.output_potential == ref.output_potential[-1].numpy(), axis=1)
    for name, counts, per_step in zip(lava_run.layer_names or [], lava_run.layer_counts or [],
                                      lava_run.layer_step_spikes or []):
        i = ref.layer_names.index(name)
        agree &= np.all((counts == ref.layer_counts[i].numpy()).reshape(len(agree), -1), axis=1)
        agree &= np.all(per_step == ref.layer_step_spikes[i].numpy(), axis=0)
    return agree


def _lava_accuracy(lava_run, labels: np.ndarray, steps: int) -> dict[str, float]:
    """{t: accuracy} of the Lava run: every t for a spike readout, T only for a potential
    readout (the membrane is read once, at the end of each sample)."""
    if lava_run.readout == "potential":
        return {str(steps): lava_run.accuracy(labels)}
    return _accuracy_by_t(_predictions_from_spikes(lava_run.output_spikes), labels)


def net_path(cfg) -> Path:
    return Path(cfg.run.net) if cfg.run.net else Path(cfg.run.dir) / NET_FILE


# --------------------------------------------------------------------------- stages
def train(cfg, progress: bool = True) -> dict:
    run_dir = _run_dir(cfg)
    result = train_model(cfg, progress=progress)
    update_report(run_dir, {"config": cfg.to_dict(),
                            "training": {"best_epoch": result["best_epoch"], "history": result["history"]}})
    return result


def evaluate(cfg, progress: bool = True) -> dict:
    """ANN accuracy (noise off) and float-SNN accuracy at every t ≤ eval.timesteps on the test split."""
    run_dir = _run_dir(cfg)
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    model = model_from_checkpoint(ckpt)
    data = load_dataset(cfg.data, seed=cfg.train.seed)
    ann = ann_accuracy(model, data.test, cfg.eval.batch_size, torch.device("cpu"))
    net = to_ir(model, data.input_shape, cfg.snn.neuron, readout=cfg.snn.readout,
                output_threshold=ckpt["output_threshold"])
    start = time.perf_counter()
    snn_float = snn_accuracy_by_t(net, data.test, cfg.eval.timesteps, cfg.eval.batch_size, progress)
    sim_time = time.perf_counter() - start
    result = {"accuracy": {"ann": ann, "snn_float": snn_float}, "readout": cfg.snn.readout,
              "test_samples": len(data.test),
              "simulator": {"float_samples_per_s": len(data.test) / sim_time if sim_time > 0 else None},
              "checkpoint": {"epoch": ckpt["epoch"], "sigma": ckpt["sigma"], "lambda": ckpt["lambda"],
                             "sha256": _sha256(run_dir / CHECKPOINT)}}
    update_report(run_dir, result)
    return result


def export(cfg, progress: bool = True) -> dict:
    """Checkpoint -> float IR -> Loihi 2 fixed point -> model.net (netx HDF5)."""
    from hardware.netx_io import write_net

    run_dir = _run_dir(cfg)
    ckpt_path = run_dir / CHECKPOINT
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    net = to_ir(model, tuple(ckpt["input_shape"]), cfg.snn.neuron, readout=cfg.snn.readout,
                output_threshold=ckpt["output_threshold"])
    # the readout is guaranteed to fit Loihi 2's membrane for every T the run reports
    qnet = quantize(net, input_bits=cfg.quant.input_bits, readout_steps=cfg.eval.timesteps)
    provenance = {"config": cfg.to_dict(), "checkpoint_sha256": _sha256(ckpt_path),
                  "ann_macs": count_ann_macs(model, tuple(ckpt["input_shape"])),
                  "checkpoint_epoch": ckpt["epoch"], "quantization": qnet.metadata["quantization"]}
    path = write_net(qnet, run_dir / NET_FILE, provenance=provenance)
    result = {"export": {"path": str(path), "sha256": _sha256(path), "neuron": cfg.snn.neuron,
                         "readout": qnet.readout, "input_bits": qnet.input_bits},
              "quantization": qnet.metadata["quantization"]}
    update_report(run_dir, result)
    log.info("wrote %s", path)
    return result


def run(cfg, progress: bool = True) -> dict:
    """Run the .net file: bit-accurate reference simulator on the whole test split, Lava on a sample."""
    from hardware.lava_runner import run_lava
    from hardware.netx_io import read_net

    run_dir = _run_dir(cfg)
    path = net_path(cfg)
    if not path.exists():
        raise NetxFormatError(f"no network file at {path}; run `python -m pipeline export` first "
                              "or set run.net to a .net file")
    net = read_net(path)
    data, x, y = _test_tensors(cfg)
    if tuple(net.input.shape) != tuple(data.input_shape) or net.input_bits is None:
        raise NetxFormatError(f"{path}: the network takes input {tuple(net.input.shape)} as graded spikes "
                              f"(input_bits={net.input_bits}), but data.name={cfg.data.name} gives images "
                              f"of shape {tuple(data.input_shape)}; run it with the dataset it was exported for")
    labels = y.numpy()
    x_int = encode_input(x.numpy(), net.input_bits)
    steps = cfg.eval.timesteps

    fit = check_fit(net)
    if cfg.run.backend == "loihi2-hw":
        require_fit(net)

    _warn_if_readout_unbounded(net, steps)
    snn_fixed, activity, sim_time = _fixed_point_run(cfg, net, x_int, labels, run_dir, progress)

    n = min(cfg.run.lava_samples, len(x_int))
    # Lava-side probes exist on the CPU simulation; on a board lava-loihi's own counters apply
    lava_probes = "counts" if cfg.run.probes and cfg.run.backend == "loihi2-sim" else False
    lava_run = run_lava(net, x_int[:n], steps, backend=cfg.run.backend, net_path=str(path), progress=progress,
                    probes=lava_probes)
    ref = simulate(net, torch.as_tensor(x_int[:n]), steps)  # the reference for Lava's samples
    agree = _lava_agreement(lava_run, ref)
    result = {"readout": net.readout,
              "accuracy": {"snn_fixed": snn_fixed, "lava": _lava_accuracy(lava_run, labels[:n], steps)},
              "lava": {"samples": int(n), "agreement": float(agree.mean()), "backend": lava_run.backend,
                       "readout": net.readout, "steps_per_sample": steps, "wall_time_s": lava_run.wall_time_s,
                       "samples_per_s": lava_run.samples_per_s, "disagreeing_samples": np.flatnonzero(~agree).tolist()},
              "simulator": {"fixed_samples_per_s": len(x_int) / sim_time if sim_time > 0 else None},
              "network_file": {"path": str(path), "sha256": _sha256(path)}}
    if lava_probes:
        lava_activity = lava_run.activity(net, x_int[:n]).to_dict()
        ref_activity = activity_from_sim(net, ref, x_int[:n]).to_dict()
        result["lava"]["probes"] = lava_activity
        result["lava"]["probes_equal_reference"] = lava_activity["layers"] == ref_activity["layers"]
    if lava_run.board_measurement is not None:
        result["energy_measured"] = lava_run.board_measurement
    result["resources"] = fit.to_dict()
    if activity is not None:
        result["probes"] = activity.to_dict()
        # the ANN baseline uses the ANN's own MACs (recorded at export) where known: the IR's
        # pooled-and-folded kernels would overstate them
        ann_macs = net.metadata.get("ann_macs") or count_macs(net)
        result["energy"] = energy_estimate(activity, dict(cfg.energy), ann_macs)
    if net.metadata.get("quantization"):
        result["quantization"] = net.metadata["quantization"]
    update_report(run_dir, result)
    return result


def report(cfg, progress: bool = True) -> dict:
    """Render report.md and plots from report.json (no re-running)."""
    from .report import render_report

    return render_report(Path(cfg.run.dir))


def run_all(cfg, progress: bool = True) -> dict:
    started = time.perf_counter()
    train(cfg, progress)
    evaluate(cfg, progress)
    export(cfg, progress)
    run(cfg, progress)
    try:
        report(cfg, progress)
    except ImportError:
        log.info("report rendering is not available in this version")
    summary = read_report(Path(cfg.run.dir))
    summary["wall_time_s"] = time.perf_counter() - started
    update_report(Path(cfg.run.dir), {"wall_time_s": summary["wall_time_s"]})
    print(format_summary(summary) + f"\nwall time: {summary['wall_time_s']:.0f} s")
    return summary


def format_summary(report: dict) -> str:
    acc = report.get("accuracy", {})
    steps = sorted({int(t) for key in ("snn_float", "snn_fixed", "lava") for t in acc.get(key, {})})
    # the powers of two and the largest T (where a potential readout's Lava accuracy lives)
    shown = sorted({t for t in (1, 2, 4, 8, 16, 32) if t in steps} | set(steps[-1:]))
    lines = ["", f"{'T':>4} | {'ANN':>6} | {'SNN float':>9} | {'SNN fixed':>9} | {'Lava':>6}"]
    lines.append("-" * len(lines[-1]))

    def cell(key, t, width):
        value = acc.get(key, {}).get(str(t))
        return f"{value:>{width}.4f}" if value is not None else f"{'-':>{width}}"
    ann = acc.get("ann")
    ann_cell = f"{ann:>6.4f}" if ann is not None else f"{'-':>6}"
    for t in shown:
        lines.append(f"{t:>4} | {ann_cell} | {cell('snn_float', t, 9)} | {cell('snn_fixed', t, 9)} | "
                     f"{cell('lava', t, 6)}")
    if not shown:
        lines.append("(no accuracies yet: run `python -m pipeline evaluate`)")
    energy = report.get("energy", {})
    if energy.get("total_pj") is not None:
        lines.append(f"estimated energy per inference: {energy['total_pj'] / 1e6:.4g} µJ (estimate from Loihi 1 "
                     "per-operation figures; Intel has published none for Loihi 2)")
    lava_report = report.get("lava", {})
    if lava_report:
        lines.append(f"Lava ({lava_report.get('backend')}): {lava_report.get('samples')} test samples, agreement with the "
                     f"bit-accurate reference simulator: {lava_report.get('agreement'):.3f}")
    return "\n".join(lines)
