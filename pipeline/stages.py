"""The pipeline's stages. Each takes the validated config and returns the report.json
sections it produced (plain JSON types); each writes its results into ``run.dir``
through :class:`pipeline.artifacts.RunDir` (``report.json`` is updated, never
replaced, so stages can run one at a time).

Every stage checks ``run.dir`` and reads (validates) the existing report.json
before it does any work, so a bad directory or a corrupt report fails at once,
not after an epoch of training or a Lava run.
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hardware.analysis.activity import activity_by_t, activity_from_sim, save_raster, spiking_layers
from hardware.analysis.energy import cost_by_t, count_macs, energy_estimate
from hardware.errors import NetxFormatError, QuantizationError
from hardware.analysis.resources import check_fit, require_fit
from hardware.fixed_point.quantize import check_state_bounds, quantize
from hardware.simulator import encode_input, simulate
from hardware.ir.validate import simulator_limits, validate_network
from hardware.runtime.progress import tqdm

from .artifacts import (MAX_ARTIFACT_BYTES, ArtifactError, Report, RunDir, atomic_path, check_input_file,
                        check_regular, merge_report, sha256_of)
from .config import Config
from .data import load_dataset
from models.converter import count_ann_macs

from .checkpoints import load_checkpoint, model_from_checkpoint
from .distributed import peer_timeout, process_group
from .operating_point import operating_points
from .overwrite import check_net_replacement, clear_imported, import_replaces
from .training import ann_accuracy, snn_accuracy_by_t, to_ir
from .user_model import user_model
from .training import train as train_model
from .finetune import finetune

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

#: the report sections the run stage owns: replaced as a whole by every run, so a run without
#: probes (or on a .net without a quantization report) leaves none of an earlier run's behind
RUN_SECTIONS = ("lava", "probes", "energy", "operating_points", "energy_measured", "resources", "network_file", "raster",
                "quantization")


# --------------------------------------------------------------------------- helpers
def open_run(cfg: Config) -> RunDir:
    """``run.dir`` checked and created, and its report.json (if any) validated: before any work."""
    run_dir = RunDir.prepared(cfg.run.dir)
    run_dir.read_report()
    return run_dir


def _tensors(split) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of a dataset split, stacked."""
    x = torch.stack([split[i][0] for i in range(len(split))])
    y = torch.stack([split[i][1] for i in range(len(split))])
    return x, y


def _accuracy_by_t(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """predictions (T, N) -> {"1": acc, ..., "T": acc}."""
    return {str(t + 1): float(np.mean(predictions[t] == labels)) for t in range(predictions.shape[0])}


def _predictions_from_spikes(spikes: np.ndarray) -> np.ndarray:
    """(N, T, n_out) spikes -> (T, N) argmax of cumulative counts (ties -> lowest index)."""
    return np.cumsum(spikes, axis=1).argmax(axis=2).T


def _fixed_point_run(cfg: Config, net, x_int: np.ndarray, progress: bool, probes: bool,
                     split: str = "test"):
    """Bit-accurate simulator over a split for T = eval.timesteps steps (the same file past the T
    it was made for, too): (predictions (T, N) by the net's readout at every step, the summed
    activity of the first t steps for every t (with ``probes``, else None), sample 0's raster
    (names, trains) or None, wall time)."""
    steps = cfg.eval.timesteps
    start = time.perf_counter()
    predictions, activities, raster = [], None, None
    for begin in tqdm(range(0, len(x_int), cfg.eval.batch_size), desc=f"SNN fixed point, {split}, T={steps}",
                      leave=False, disable=not progress):
        batch = x_int[begin:begin + cfg.eval.batch_size]
        res = simulate(net, torch.as_tensor(batch), steps, record_spikes=probes)
        predictions.append(res.predictions().numpy())  # (T, B), by net.readout
        if probes:
            if begin == 0:
                raster = _raster_of_sample0(net, res)
            batch_activities = activity_by_t(net, res, batch)
            activities = batch_activities if activities is None else \
                [a.merge(b) for a, b in zip(activities, batch_activities)]
    return np.concatenate(predictions, axis=1), activities, raster, time.perf_counter() - start


def _raster_of_sample0(net, res):
    """(names, trains) of the layers that spike, or None (a potential readout's output
    integrator never does: its all-empty panel would only mislead)."""
    keep = [i for i, sl in enumerate(spiking_layers(net)) if not sl.readout]
    if not keep:
        return None
    return [res.layer_names[i] for i in keep], [res.layer_spike_trains[i] for i in keep]


def _write_raster(run_dir: RunDir, raster) -> dict | None:
    """Replace raster.npz atomically; return the report section that vouches for it (its hash).

    Without a raster the old file goes: it would describe another network."""
    if raster is None:
        run_dir.raster.unlink(missing_ok=True)
        return None
    names, trains = raster
    with atomic_path(run_dir.raster, suffix=".npz") as tmp:
        save_raster(tmp, names, trains, sample=0)
    return {"path": run_dir.raster.name, "sha256": sha256_of(run_dir.raster), "layers": list(names)}


def deployment_timesteps(cfg: Config, net, path: Path) -> int:
    """The T the run deploys at: snn.timesteps, which must be the T the file is made for (its
    ``timesteps``; a file made elsewhere states none). With run.allow_other_timesteps another T
    is allowed if the file's state and readout bounds hold at it (re-checked, else refused)."""
    steps, made_for = cfg.snn.timesteps, net.metadata.get("timesteps")
    if made_for is None or made_for == steps:
        return steps
    if not cfg.run.allow_other_timesteps:
        raise ArtifactError(f"{path} is made for T = {made_for} but snn.timesteps is {steps}: set "
                            f"snn.timesteps={made_for}, or export again, or set "
                            f"run.allow_other_timesteps=true to run it at T = {steps} if its bounds hold")
    try:
        check_state_bounds(net, steps)
    except QuantizationError as exc:
        raise ArtifactError(f"{path} is made for T = {made_for} and cannot run at snn.timesteps = {steps} "
                            f"(run.allow_other_timesteps): {exc}; export it for T = {steps}") from None
    log.warning("running %s, made for T = %d, at T = %d (run.allow_other_timesteps; its bounds hold)",
                path, made_for, steps)
    return steps


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


# --------------------------------------------------------------------------- train, evaluate, export
def train(cfg: Config, progress: bool = True, module: nn.Module | None = None) -> dict:
    """Train (the config's network, or the user's ``module`` given by :mod:`pipeline.api`); under
    torchrun with several processes with DDP (:mod:`pipeline.distributed`): every rank trains,
    rank 0 alone writes the files and the report."""
    with process_group(peer_timeout(cfg)) as dist:
        run_dir = open_run(cfg)
        result = train_model(cfg, progress=progress, dist=dist, module=module)
        if dist.is_main:
            training = {"best_epoch": result["best_epoch"], "history": result["history"],
                        "pretrained": result["pretrained"]}
            run_dir.update_report({"config": cfg.to_dict(), "training": training})
        dist.barrier()  # every rank returns once report.json is complete
    return result


def _trained_model(cfg: Config, run_dir: RunDir, module: nn.Module | None) -> tuple:
    """(checkpoint, its sha256, the model rebuilt from it): a user's network by the source the
    config (or ``module``) names, which must be the checkpoint's."""
    user = user_model(cfg.model, module)
    ckpt = load_checkpoint(run_dir.checkpoint, user)
    return ckpt, sha256_of(run_dir.checkpoint), model_from_checkpoint(ckpt, user)


def evaluate(cfg: Config, progress: bool = True, module: nn.Module | None = None) -> dict:
    """ANN accuracy (noise off) and float-SNN accuracy at every t ≤ eval.timesteps on the test split."""
    run_dir = open_run(cfg)
    ckpt, ckpt_sha, model = _trained_model(cfg, run_dir, module)
    data = load_dataset(cfg.data, seed=cfg.train.seed)
    ann = ann_accuracy(model, data.test, cfg.eval.batch_size, torch.device("cpu"))
    ann_val = ann_accuracy(model, data.val, cfg.eval.batch_size, torch.device("cpu"))
    net = to_ir(model, data.input_shape, cfg.snn.neuron, readout=cfg.snn.readout,
                output_threshold=ckpt["output_threshold"], **cfg.conversion_kwargs())
    start = time.perf_counter()
    snn_float = snn_accuracy_by_t(net, data.test, cfg.eval.timesteps, cfg.eval.batch_size, progress)
    sim_time = time.perf_counter() - start
    result = {"accuracy": {"ann": ann, "ann_val": ann_val, "snn_float": snn_float}, "readout": cfg.snn.readout,
              "test_samples": len(data.test),
              "simulator": {"float_samples_per_s": len(data.test) / sim_time if sim_time > 0 else None},
              "checkpoint": {"epoch": ckpt["epoch"], "sigma": ckpt["sigma"], "lambda": ckpt["lambda"],
                             "sha256": ckpt_sha}}
    return _sections_written(run_dir, result)


def _export_provenance(cfg: Config, ckpt: dict, ckpt_sha: str, model) -> dict:
    """What the exported file records about its making: the network is the checkpoint's (its arch
    and levels, whatever the config says now); neuron, readout and quantization are this export's."""
    config = cfg.to_dict()
    if ckpt["arch"] is not None:  # a user's network is the config's (load_checkpoint checked it)
        config["model"]["arch"] = ckpt["arch"]
    config["nq"]["levels"] = ckpt["levels"]
    source = {"source": ckpt["source"]} if ckpt["source"] is not None else {}
    return {"config": config, "checkpoint_sha256": ckpt_sha, "arch": ckpt["arch"], **source, "levels": ckpt["levels"],
            "ann_macs": count_ann_macs(model, tuple(ckpt["input_shape"])),
            "checkpoint_epoch": ckpt["epoch"], "activation": ckpt["activation"]}


def _network_to_export(cfg: Config, run_dir: RunDir, module: nn.Module | None = None) -> tuple:
    """(float IR, provenance, source) of the run directory's one network: the NIR graph ``import``
    wrote (source ``'imported-nir'``) or the trained checkpoint converted with snn.* (``'checkpoint'``)."""
    from hardware.formats.nir import read_nir

    if run_dir.imported_nir.exists():
        if run_dir.checkpoint.exists():
            raise ArtifactError(f"{run_dir.root} holds both a trained checkpoint ({run_dir.checkpoint.name}) "
                                f"and an imported NIR graph ({run_dir.imported_nir.name}); a run directory "
                                f"holds one network: import into a new run.dir or delete one of them")
        net = read_nir(check_regular(run_dir.imported_nir, MAX_ARTIFACT_BYTES))  # no FIFO, no endless file
        return net, {"config": cfg.to_dict(), "imported_nir_sha256": sha256_of(run_dir.imported_nir)}, \
            "imported-nir"
    ckpt, ckpt_sha, model = _trained_model(cfg, run_dir, module)
    net = to_ir(model, tuple(ckpt["input_shape"]), cfg.snn.neuron, readout=cfg.snn.readout,
                output_threshold=ckpt["output_threshold"], **cfg.conversion_kwargs())
    provenance = _export_provenance(cfg, ckpt, ckpt_sha, model)
    if cfg.snn.calibrate != "none":
        net, provenance["calibration"] = calibrate_network(cfg, net, ckpt)
    return net, provenance, "checkpoint"


def calibrate_network(cfg: Config, net, ckpt: dict, data=None) -> tuple:
    """(``net`` calibrated by snn.calibrate at snn.timesteps, its summary) on a fixed, seeded
    subset of snn.calibrate_samples training images (never the test split)."""
    from models.snn_calibrate import calibrate_snn

    data = data or load_dataset(cfg.data, seed=cfg.train.seed)
    n = min(cfg.snn.calibrate_samples, len(data.train))
    idx = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(cfg.train.seed))[:n]
    images = torch.stack([data.train[int(i)][0] for i in idx])
    activation = ckpt["activation"]  # the function the ANN computed: the layers' targets
    return calibrate_snn(net, images, cfg.snn.timesteps, cfg.snn.calibrate, levels=ckpt["levels"],
                         activation=activation["activation"], activation_timesteps=activation["timesteps"])


def _export_nir(run_dir: RunDir, net, provenance: dict, source: str, overwrite: bool = False) -> dict:
    """The float network as a NIR graph, model.nir (atomic; refused for if_soft neurons)."""
    from hardware.formats.nir import DEFAULT_DT, to_nir_graph, write_nir

    to_nir_graph(net, provenance=provenance)  # what NIR cannot hold is the first error
    check_net_replacement(run_dir.nir, provenance, overwrite, "nir")
    write_nir(net, run_dir.nir, provenance=provenance)
    result = {"export_nir": {"path": str(run_dir.nir), "sha256": sha256_of(run_dir.nir), "format": "nir",
                             "neuron": net.weighted_layers[0].neuron.kind, "readout": net.readout,
                             "source": source, "dt": DEFAULT_DT}}
    log.info("wrote %s", run_dir.nir)
    return _sections_written(run_dir, result)


def export(cfg: Config, progress: bool = True, module: nn.Module | None = None) -> dict:
    """The run directory's network (trained checkpoint -> float IR, or the imported NIR graph) ->
    export.format ``net``: Loihi 2 fixed point -> model.net (netx HDF5); ``nir``: model.nir (NIR).
    Every file is written atomically."""
    from hardware.formats.netx import write_net

    run_dir = open_run(cfg)
    net, provenance, source = _network_to_export(cfg, run_dir, module)
    if cfg.export.format == "nir":
        return _export_nir(run_dir, net, provenance, source, cfg.run.overwrite)
    steps = cfg.snn.timesteps  # the deployment T: the file's reset interval and its bounds
    provenance = {**provenance, "timesteps": steps}
    check_net_replacement(run_dir.net, provenance, cfg.run.overwrite)  # before the work, not after
    qnet = quantize(net, input_bits=cfg.quant.input_bits, readout_steps=steps)
    write_net(qnet, run_dir.net, provenance={**provenance, "quantization": qnet.metadata["quantization"]},
              steps_per_sample=steps)
    result = {"export": {"path": str(run_dir.net), "sha256": sha256_of(run_dir.net),
                         "neuron": net.weighted_layers[0].neuron.kind, "readout": qnet.readout,
                         "input_bits": qnet.input_bits, "format": "net", "source": source,
                         "timesteps": steps},
              "quantization": qnet.metadata["quantization"]}
    log.info("wrote %s", run_dir.net)
    return _sections_written(run_dir, result)


def import_nir(cfg: Config, progress: bool = True) -> dict:
    """Read the NIR graph ``import.nir`` (made by another framework, or by export) into the run
    directory as ``imported.nir``, rewritten by this project: export and run then take it as a
    trained network. Everything is checked before anything is written."""
    from hardware.formats.nir import read_nir, write_nir

    run_dir = open_run(cfg)
    if cfg.import_.nir is None:
        raise ArtifactError("import.nir is not set: name the NIR graph to import "
                            "(--set import.nir=path/to/graph.nir)")
    source = check_input_file(cfg.import_.nir, "import.nir")
    if run_dir.checkpoint.exists():
        raise ArtifactError(f"{run_dir.root} already holds a trained checkpoint; a run directory holds "
                            f"one network: import into a new run.dir")
    net = read_nir(source, dt=cfg.import_.dt)
    net.metadata = {**net.metadata, "imported_from": str(source), "imported_sha256": sha256_of(source)}
    if import_replaces(run_dir.root, net.metadata, cfg.run.overwrite):
        log.warning("run.overwrite: removed %s of another imported graph", ", ".join(clear_imported(run_dir.root)))
    write_nir(net, run_dir.imported_nir)
    # a graph of this project carries its own dt (its metadata is the provenance it was written with)
    dt = net.metadata.get("dt") if net.metadata.get("source") == "nir" else None
    result = {"import": {"source": str(source), "source_sha256": net.metadata["imported_sha256"],
                         "path": str(run_dir.imported_nir), "sha256": sha256_of(run_dir.imported_nir),
                         "readout": net.readout, "dt": dt,
                         "layers": [f"{layer.name} ({type(layer).__name__})" for layer in net.layers]}}
    log.info("imported %s into %s (%d layers, readout %s)", source, run_dir.imported_nir,
             len(net.layers), net.readout)
    return _sections_written(run_dir, result)


def _sections_written(run_dir: RunDir, result: dict, replace=()) -> dict:
    """Merge ``result`` into report.json; return the stage's own sections, validated, in JSON types."""
    own = merge_report(Report(), result).to_json_dict()
    run_dir.update_report(result, replace=replace)
    return {key: own[key] for key in result}


def read_report(run_dir) -> dict:
    """report.json of ``run_dir`` as validated JSON types (for scripts such as bench/)."""
    return RunDir(Path(run_dir)).read_report().to_json_dict()


def update_report(run_dir, updates: dict) -> dict:
    """Merge ``updates`` into ``run_dir``'s report.json (for scripts such as bench/)."""
    return RunDir(Path(run_dir)).update_report(updates).to_json_dict()


# --------------------------------------------------------------------------- run
def _input_section(cfg: Config, net, path: Path, data_shape: tuple):
    """(net, report section) saying how the dataset meets the network's input: a flat input
    of C·H·W values takes the images flattened in C order (as a Flatten layer or torch's
    ``reshape`` would); a file made elsewhere (no ``input_bits``) gets quant.input_bits."""
    shape = tuple(net.input.shape)
    section = {"network_shape": list(shape), "data_shape": list(data_shape)}
    if shape != data_shape:
        if len(shape) != 1 or shape[0] != int(np.prod(data_shape)):
            raise NetxFormatError(f"{path}: the network takes input {shape}, but data.name={cfg.data.name} "
                                  f"gives images of shape {data_shape} ({int(np.prod(data_shape))} values); "
                                  f"run it with the dataset it was exported for")
        section["flattened"] = "C order (channel, row, column)"
    if net.input_bits is None:
        net = net.replace(input_bits=int(cfg.quant.input_bits))
        section["input_bits"] = net.input_bits
        section["input_bits_from"] = "quant.input_bits (the file does not state its input bits)"
    return net, section


def _default_neuron_note(net) -> dict:
    """The layers a file made elsewhere left without a neuron group: netx gives them its default
    neuron, a non-leaky integrator whose threshold (1 << 17) << 6 the clipped v never exceeds."""
    names = net.metadata.get("netx_default_neuron_layers") or []
    if not names:
        return {}
    if net.weighted_layers[-1].name in names and net.readout == "spikes":
        log.warning("the output layer %s has no neuron group in the file: netx's default neuron "
                    "never spikes, so the spike-count accuracy is that of always predicting class 0",
                    net.weighted_layers[-1].name)
    return {"default_neuron_layers": list(names),
            "default_neuron": "stock netx's: iDecay 0, vDecay 4096, vThMant 1 << 17 (never spikes)"}


def _load_net_and_data(cfg: Config, path: Path, splits: tuple = ("test", "val")):
    """(net, input section, {split: (integer inputs, labels)} for ``splits`` of "test", "val"),
    refusing a dataset the network was not made for."""
    from hardware.formats.netx import read_net

    net = read_net(path)
    # a foreign file can be valid netx yet use what the simulator does not model
    validate_network(net, simulator_limits())
    data = load_dataset(cfg.data, seed=cfg.train.seed)
    net, section = _input_section(cfg, net, path, tuple(data.input_shape))
    encoded = {}
    for name in splits:
        x, y = _tensors({"test": data.test, "val": data.val}[name])
        x = x.numpy().reshape((len(x),) + tuple(net.input.shape))  # C order
        encoded[name] = encode_input(x, net.input_bits), y.numpy()
    return net, section, encoded


def _lava_sections(cfg: Config, net, path: Path, data: tuple, steps: int, progress: bool):
    """Run the first ``run.lava_samples`` samples of ``data`` (integer inputs, labels) in Lava for
    ``steps`` (the deployment T) and compare them with the reference: (lava section, Lava accuracy
    by t, board measurement or None)."""
    from hardware.runtime.runner import run_lava

    x_int, labels = data
    n = min(cfg.run.lava_samples, len(x_int))
    # Lava-side probes exist on the CPU simulation; on a board lava-loihi's own counters apply
    lava_probes = "counts" if cfg.run.probes and cfg.run.backend == "loihi2-sim" else False
    lava_run = run_lava(net, x_int[:n], steps, backend=cfg.run.backend, net_path=str(path), progress=progress,
                        probes=lava_probes)
    ref = simulate(net, torch.as_tensor(x_int[:n]), steps)  # the reference for Lava's samples
    agree = _lava_agreement(lava_run, ref)
    lava = {"samples": int(n), "agreement": float(agree.mean()), "backend": lava_run.backend,
            "readout": net.readout, "steps_per_sample": steps, "wall_time_s": lava_run.wall_time_s,
            "samples_per_s": lava_run.samples_per_s, "disagreeing_samples": np.flatnonzero(~agree).tolist()}
    if lava_probes:
        lava_activity = lava_run.activity(net, x_int[:n]).to_dict()
        ref_activity = activity_from_sim(net, ref, x_int[:n]).to_dict()
        lava["probes"] = lava_activity
        lava["probes_equal_reference"] = lava_activity["layers"] == ref_activity["layers"]
    return lava, _lava_accuracy(lava_run, labels[:n], steps), lava_run.board_measurement


def _ann_macs(net) -> list[int]:
    """The ANN's MACs per weighted layer: its own (recorded at export) where known, since the IR's
    pooled-and-folded kernels would overstate them."""
    return net.metadata.get("ann_macs") or count_macs(net)


def _ann_val_of(run_dir: RunDir, net) -> float | None:
    """The ANN's validation accuracy from evaluate, if the file was made from this run's checkpoint."""
    report = run_dir.read_report().to_json_dict()
    made_from = net.metadata.get("checkpoint_sha256")
    if made_from is None or made_from != (report.get("checkpoint") or {}).get("sha256"):
        return None
    return (report.get("accuracy") or {}).get("ann_val")


def _operating_points(cfg: Config, run_dir: RunDir, net, steps: int, test: tuple, val: tuple,
                      activities, progress: bool) -> dict:
    """The operating_points section: every T on the test split ((predictions by step, labels)),
    the validation split's accuracy by T, and the suggested T (against the ANN's validation
    accuracy, where evaluate ran on this file's checkpoint)."""
    val_predictions = _fixed_point_run(cfg, net, val[0], progress, probes=False, split="validation")[0]
    validation = {"samples": len(val[1]), "snn_fixed": _accuracy_by_t(val_predictions, val[1])}
    costs = None if activities is None else cost_by_t(activities, dict(cfg.energy), _ann_macs(net))
    return operating_points(steps, test[0], test[1], costs, validation, _ann_val_of(run_dir, net),
                            cfg.eval.max_drop)


def run(cfg: Config, progress: bool = True) -> dict:
    """Run the .net file: bit-accurate reference simulator on the whole test split, Lava on a sample."""
    run_dir = open_run(cfg)
    path = run_dir.net_to_run(cfg.run.net)
    net, input_section, splits = _load_net_and_data(cfg, path)
    (x_int, labels), fit = splits["test"], check_fit(net)
    if cfg.run.backend == "loihi2-hw":
        require_fit(net)
    steps = deployment_timesteps(cfg, net, path)
    predictions, activities, raster, sim_time = _fixed_point_run(cfg, net, x_int, progress, cfg.run.probes)
    points = _operating_points(cfg, run_dir, net, steps, (predictions, labels), splits["val"], activities,
                               progress)
    lava, lava_acc, board = _lava_sections(cfg, net, path, (x_int, labels), steps, progress)
    result = {"readout": net.readout, "lava": lava, "operating_points": points,
              "accuracy": {"snn_fixed": _accuracy_by_t(predictions, labels), "lava": lava_acc},
              "simulator": {"fixed_samples_per_s": len(x_int) / sim_time if sim_time > 0 else None},
              "network_file": {"path": str(path), "sha256": sha256_of(path), "input": input_section,
                               "timesteps": net.metadata.get("timesteps"),
                               # the curve's entries past the deployment T: the same file, its bounds unchecked
                               "snn_fixed_beyond_t": list(range(steps + 1, cfg.eval.timesteps + 1)),
                               **_default_neuron_note(net)},
              "resources": fit.to_dict()}
    if board is not None:
        result["energy_measured"] = board
    if activities is not None:  # the headline: at the deployment T
        result["probes"] = activities[steps - 1].to_dict()
        result["energy"] = energy_estimate(activities[steps - 1], dict(cfg.energy), _ann_macs(net),
                                           steps_per_sample=steps)
    if net.metadata.get("quantization"):
        result["quantization"] = net.metadata["quantization"]
    # raster first, then the report that vouches for it by hash: a kill in between leaves a raster
    # the report does not name, which the report stage does not show
    raster_section = _write_raster(run_dir, raster)
    if raster_section is not None:
        result["raster"] = raster_section
    return _sections_written(run_dir, result, replace=RUN_SECTIONS)


# --------------------------------------------------------------------------- report, all
def report(cfg: Config, progress: bool = True) -> dict:
    """Render report.md and plots from report.json (no re-running)."""
    from .report import report_stage

    return report_stage(cfg, progress)


def run_all(cfg: Config, progress: bool = True, module: nn.Module | None = None) -> dict:
    """train, finetune (if finetune.epochs > 0), evaluate, export, run, report (the network: the
    config's, or the user's ``module`` given by :mod:`pipeline.api`); returns the whole report."""
    started = time.perf_counter()
    open_run(cfg)
    if cfg.run.net:  # checked now, not after training
        check_input_file(cfg.run.net, "run.net")
    for stage in (train, evaluate, export):
        stage(cfg, progress, module)
        if stage is train and cfg.finetune.epochs > 0:
            finetune(cfg, progress, module=module)
    for stage in (run, report):
        stage(cfg, progress)
    run_dir = RunDir(Path(cfg.run.dir))
    return run_dir.update_report({"wall_time_s": time.perf_counter() - started}).to_json_dict()


__all__ = ["train", "evaluate", "export", "import_nir", "run", "report", "run_all", "open_run", "read_report",
           "update_report",
           "RUN_SECTIONS", "ArtifactError"]
