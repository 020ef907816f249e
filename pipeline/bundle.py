"""The ``bundle`` stage: everything an INRC user copies to a Loihi 2 board machine, and the
way its result comes back into the report.

``<run.dir>/bundle/`` holds the run's model.net (made for the deployment T, which the file
states), ``run_on_loihi.py`` (a copy of :data:`TEMPLATE`, which needs only numpy, h5py,
lava-nc, lava-dl and on a board lava-loihi), ``inputs.npz`` (the integers the chip receives
for the first ``bundle.samples`` test samples, in the netx input port's layout, and their
labels), ``golden.npz`` (the bit-accurate reference simulator's readout at T and class per
sample, spikes per layer), ``manifest.json`` (format, T, neuron, readout, the SHA-256 of every
file, the commit that made it) and ``README.txt``. The folder is built aside and renamed into
place, so a killed stage leaves the previous bundle or the new one.

Networks the board cannot run are refused before any work, by the rules the run stage uses
(:func:`hardware.runtime.board.board_refusal`, :func:`hardware.runtime.stock_netx.stock_netx_arguments`).

:func:`board_run_section` reads the result JSON ``run_on_loihi.py`` wrote
(``bundle.board_result``, the CLI's ``report --board-result FILE``): bounded, validated
(:class:`pipeline.artifacts.BoardRun`), and refused unless it was measured on this run's
network; the report stage stores it as report.json's ``board_run`` section.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from .artifacts import (ArtifactError, BoardRun, RunDir, check_input_file, parse_report_json,
                        sha256_of, validate_section)

log = logging.getLogger(__name__)

#: the board script's source, copied into every bundle (never imported by this package)
TEMPLATE = Path(__file__).resolve().parent / "board" / "run_on_loihi.py"
BUNDLE_DIR = "bundle"
BUNDLE_FORMAT = "nqloihi-board-bundle"
BUNDLE_VERSION = 1
#: a result JSON beyond this is not run_on_loihi.py's
MAX_RESULT_BYTES = 4 << 20
#: the files of a bundle, in the manifest's order (manifest.json and README.txt describe them)
BUNDLE_FILES = ("model.net", "run_on_loihi.py", "inputs.npz", "golden.npz")

README = """\
Loihi 2 board bundle: {arch} on {dataset}, T = {timesteps}, {neuron} neurons, {readout} readout
=============================================================================================
Copy this whole folder to the board machine (INRC); there you need Python 3.10 with numpy,
h5py, lava-nc, lava-dl and Intel's lava-loihi. Nothing else of the project that made it.

  python run_on_loihi.py --backend sim   # rehearsal on any CPU (Loihi2SimCfg), no board needed
  python run_on_loihi.py                 # on the board (Loihi2HwCfg): agreement, power, time

model.net      the network; its root attributes state stock netx's arguments
               (input_message_bits={input_bits}, reset_interval={timesteps}, reset_offset={reset_offset})
inputs.npz     'inputs': the graded spikes of {samples} test samples, 'labels'
golden.npz     'output': the bit-accurate simulator's readout at T per sample, 'prediction'
manifest.json  T, readout, SHA-256 of every file (checked before anything runs), commit

The script prints, and writes to result_<backend>.json: agreement (the fraction of samples
whose readout integers equal the golden ones exactly; it names every sample that differs),
accuracy, wall time per sample and, on a board with lava-loihi's profiler, time per step and
power. 1.000 means the chip computed what the simulator computed, bit for bit.
Exit status: 0 all agree, 1 some differ, 2 refused (changed or incomplete bundle), 130 Ctrl-C.
Back home: nqloihi report --config <your config> --board-result result_hw.json
"""


class BundleError(ArtifactError):
    """A network the board bundle cannot hold, or a board result that does not belong here."""


# --------------------------------------------------------------------------- the stage
def refuse_unrunnable(net, path: Path) -> dict:
    """Stock netx's arguments for ``path``; :class:`BundleError` naming the reason for a network
    the board cannot run (if_soft neurons, residual networks, input neuron layers)."""
    from hardware.errors import NetxFormatError
    from hardware.runtime.board import board_refusal
    from hardware.runtime.stock_netx import stock_netx_arguments

    reason = board_refusal({layer.neuron.kind for layer in net.weighted_layers},
                           residual=not net.is_sequential, input_neurons=net.input.neuron is not None)
    if reason is not None:
        raise BundleError(f"{path}: no board bundle: {reason}")
    try:
        return stock_netx_arguments(path)
    except NetxFormatError as exc:
        raise BundleError(f"no board bundle: {exc}") from None


def golden_outputs(net, x_int: np.ndarray, steps: int, batch: int, progress: bool) -> dict:
    """The reference simulator's readout at T, class and spikes per spiking layer, per sample."""
    import torch

    from hardware.runtime.progress import tqdm
    from hardware.simulator import simulate

    parts: dict = {"output": [], "prediction": [], "layer_spikes": []}
    for begin in tqdm(range(0, len(x_int), batch), desc="golden outputs", leave=False, disable=not progress):
        res = simulate(net, torch.as_tensor(x_int[begin:begin + batch]), steps, record_spikes=True)
        out = res.output_potential[-1] if net.readout == "potential" else res.output_spikes.sum(dim=0)
        parts["output"].append(out.numpy().astype(np.int64))
        parts["prediction"].append(res.predictions()[-1].numpy().astype(np.int64))
        parts["layer_spikes"].append(np.stack([c.reshape(c.shape[0], -1).sum(dim=1).numpy()
                                               for c in res.layer_counts], axis=1))
    golden = {key: np.concatenate(value) for key, value in parts.items()}
    golden["layer_names"] = np.array(res.layer_names)
    return golden


def port_inputs(net, x_int: np.ndarray) -> np.ndarray:
    """(N, *input port shape): sample k's graded spikes as netx's input port takes them."""
    from hardware.runtime.schedule import source_data

    columns = source_data(net, x_int[:, None], steps=len(x_int))  # one column per sample
    return np.ascontiguousarray(np.moveaxis(columns, -1, 0)).astype(np.int32)


def bundle(cfg, progress: bool = True) -> dict:
    """Write ``<run.dir>/bundle/`` for the network ``run`` would execute (module docstring)."""
    from hardware.formats.netx import read_net

    from . import stages

    run_dir = stages.open_run(cfg)
    path = run_dir.net_to_run(cfg.run.net)
    netx_args = refuse_unrunnable(read_net(path), path)
    net, _, data = stages._load_net_and_data(cfg, path, splits=("test",))
    x_int, labels = data["test"]
    steps = stages.deployment_timesteps(cfg, net, path)
    if steps != netx_args["reset_interval"]:
        raise BundleError(f"{path} states T = {netx_args['reset_interval']} (its reset interval) and "
                          f"the board script runs it at that T, not at snn.timesteps = {steps}: "
                          f"export it for T = {steps} first")
    n = min(cfg.bundle.samples, len(x_int))
    golden = golden_outputs(net, x_int[:n], steps, cfg.eval.batch_size, progress)
    arrays = {"inputs.npz": {"inputs": port_inputs(net, x_int[:n]), "labels": labels[:n].astype(np.int64)},
              "golden.npz": golden}
    manifest = _manifest(cfg, net, path, netx_args, n, golden, labels[:n])
    target = run_dir.root / BUNDLE_DIR
    _write_bundle(target, path, arrays, manifest)
    section = {"path": str(target), "samples": n, "timesteps": steps, "readout": net.readout,
               "bytes": sum(f.stat().st_size for f in target.iterdir()),
               "net_sha256": manifest["files"]["model.net"], "golden_accuracy": manifest["golden_accuracy"]}
    log.info("wrote %s (%d samples, T = %d, %d bytes)", target, n, steps, section["bytes"])
    run_dir.update_report({"bundle": section})
    return {"bundle": section}


def _manifest(cfg, net, path: Path, netx_args: dict, n: int, golden: dict, labels: np.ndarray) -> dict:
    return {"format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": _commit(), "arch": cfg.arch, "dataset": cfg.data.name, "split": "test (first samples)",
            "samples": n, "timesteps": int(netx_args["reset_interval"]), "neuron": "cuba",
            "readout": net.readout, "input_bits": int(netx_args["input_message_bits"]),
            "reset_offset": int(netx_args["reset_offset"]), "output_size": int(net.output_size),
            "layers": [str(name) for name in golden["layer_names"]], "source_net": str(path),
            "golden_accuracy": float(np.mean(golden["prediction"] == labels)),
            "files": {}}


def _commit():
    """The commit of the code that made the bundle (``-dirty`` if tracked files differ), or None."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40"],
                             cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def _write_bundle(target: Path, net_path: Path, arrays: dict, manifest: dict) -> None:
    """Build the folder next to ``target`` and swap it in (the old bundle goes only then)."""
    _remove_left_behind(target.parent)
    tmp = target.with_name(f".{BUNDLE_DIR}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        shutil.copyfile(net_path, tmp / "model.net")
        shutil.copyfile(TEMPLATE, tmp / "run_on_loihi.py")
        for name, content in arrays.items():
            np.savez_compressed(tmp / name, **content)
        manifest["files"] = {name: sha256_of(tmp / name) for name in BUNDLE_FILES}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        (tmp / "README.txt").write_text(README.format(**manifest))
        old = target.with_name(f".{BUNDLE_DIR}.{os.getpid()}.old")
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_left_behind(root: Path) -> None:
    """Half-built or half-replaced bundle folders of a killed writer (its pid is in the name)."""
    for leftover in root.glob(f".{BUNDLE_DIR}.*.*"):
        pid = leftover.name.split(".")[2]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


# --------------------------------------------------------------------------- the result, back home
def read_board_result(path, key: str = "bundle.board_result") -> dict:
    """run_on_loihi.py's result JSON, size-bounded, parsed strictly and validated; its figures
    checked against each other. :class:`BundleError` naming ``key`` and the file otherwise."""
    path = check_input_file(path, key, limit=MAX_RESULT_BYTES)
    try:
        result = validate_section(BoardRun, parse_report_json(path), f"{key} {path}")
    except ArtifactError as exc:
        text = str(exc)
        raise BundleError(text if text.startswith(key) else f"{key}: {text}") from None
    mismatching = result["mismatching_samples"]
    if any(k >= result["samples"] for k in mismatching) or len(set(mismatching)) != len(mismatching) \
            or abs(result["agreement"] - (1 - len(mismatching) / result["samples"])) > 1e-9:
        raise BundleError(f"{key} {path}: agreement {result['agreement']} does not match "
                          f"{len(mismatching)} mismatching samples of {result['samples']}")
    return {**result, "source": str(path)}


def board_run_section(cfg, run_dir: RunDir) -> dict:
    """The ``board_run`` section of ``bundle.board_result``, refused unless it was measured on
    this run's network (the SHA-256 of its model.net, or of the file the report names)."""
    result = read_board_result(cfg.bundle.board_result)
    report = run_dir.read_report().to_json_dict()
    known = {(report.get(k) or {}).get("sha256") for k in ("export", "network_file")} - {None}
    if run_dir.net.exists():
        known = {sha256_of(run_dir.net)}
    if known and result["net_sha256"] not in known:
        raise BundleError(f"bundle.board_result {result['source']}: measured on a network with SHA-256 "
                          f"{result['net_sha256'][:16]}…, not this run's ({sorted(known)[0][:16]}…); "
                          f"it belongs to another run")
    return result


__all__ = ["bundle", "BundleError", "read_board_result", "board_run_section", "refuse_unrunnable",
           "TEMPLATE", "BUNDLE_DIR", "BUNDLE_FILES"]
