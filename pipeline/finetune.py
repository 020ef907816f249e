"""The ``finetune`` stage: the converted SNN trained further as what it is, at the deployment T.

The trained checkpoint's network is run as its converted SNN (:class:`models.snn_unroll.Unrolled`:
snn.neuron, its reset, threshold λ, initial membrane and the readout integrator, over
snn.timesteps steps) and trained through time with a surrogate gradient (finetune.surrogate)
by Adam (finetune.lr, finetune.batch_size, finetune.epochs), cross-entropy on the readout's
potential after T steps divided by T. The trainable parameters are the ANN's (weights,
batch-norm affine, λ; batch-norm statistics stay frozen, as conversion folds them), so the
result converts, quantizes and exports exactly as a trained checkpoint does. Before the first
epoch and after each one, the network is converted and its SNN accuracy at snn.timesteps is
measured on the validation selection set (train.select_samples) with the float reference
simulator; the best (the converted network itself if no epoch beats it) is kept, never judged
on the test split.

Files in run.dir: ``checkpoint.safetensors`` becomes the fine-tuned network; the network it
started from is kept as ``checkpoint.converted.safetensors``; ``finetune.json`` records both
networks' tensor hashes, the settings and the result. Every later call starts from the kept
network (fine-tuning never stacks); with the same settings on the fine-tuned checkpoint it
does nothing; finetune.epochs 0 puts the kept network back. A checkpoint that is neither
(a new training) becomes the new starting point. The record is written before the
checkpoint, so an interruption never loses the network fine-tuning started from.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from hardware.runtime.progress import tqdm
from models.architectures import nq_layers
from models.snn_unroll import Unrolled, accumulated

from .artifacts import FINETUNE_RECORD, FINETUNE_START, ArtifactError, RunDir, atomic_write_text, read_regular
from .checkpoints import load_checkpoint, model_from_checkpoint, save_checkpoint
from .config import Config
from .data import DatasetSplits, augment_batch, load_dataset
from .training import (TRAINING_SIM_DTYPE, TrainingDiverged, first_non_finite_grad, pick_device, selection_set,
                       snn_predictions, to_ir)
from .user_model import user_model

log = logging.getLogger(__name__)

#: the network fine-tuning started from, kept next to the checkpoint
CONVERTED = FINETUNE_START
#: what fine-tuning did: hashes, settings, result (JSON)
RECORD = FINETUNE_RECORD
RECORD_FORMAT = 1
#: the record is a few kB; beyond this it is not ours
_MAX_RECORD_BYTES = 1 << 20
#: λ is kept above this fraction of its starting value (the converter divides by it)
_MIN_THRESHOLD_FRACTION = 1e-3


class FinetuneError(ArtifactError):
    """A fine-tuning record or kept network that does not belong to this run directory."""


def tensors_sha256(state_dict: dict) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes (not the file's JSON header,
    which ``train`` rewrites when it only appends history)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def settings_of(cfg: Config) -> dict:
    """The keys that decide what fine-tuning makes (a record with others is done again)."""
    full = cfg.to_dict()
    train = {k: full["train"][k] for k in ("seed", "select_samples", "augment")}
    return json.loads(json.dumps({"finetune": full["finetune"], "snn": full["snn"], "data": full["data"],
                                  "train": train}))


def _selection_accuracy(model: nn.Module, cfg: Config, data: DatasetSplits, select_set,
                        output_threshold: float, device: torch.device) -> float:
    """SNN accuracy at snn.timesteps of the converted ``model`` on ``select_set`` (float32 simulator)."""
    net = to_ir(model, data.input_shape, cfg.snn.neuron, readout=cfg.snn.readout,
                output_threshold=output_threshold, **cfg.conversion_kwargs())
    steps = cfg.snn.timesteps
    preds, labels = snn_predictions(net, select_set, steps, cfg.eval.batch_size, dtype=TRAINING_SIM_DTYPE,
                                    device=device)
    return float((preds[steps - 1] == labels).double().mean())


def _epoch(unrolled: Unrolled, optimizer, cfg: Config, data: DatasetSplits, epoch: int, floors: list,
           device: torch.device, progress: bool) -> float:
    """One pass over the training split through time; the mean loss."""
    shuffle = torch.Generator().manual_seed(cfg.train.seed * 100003 + 7919 + epoch)
    loader = torch.utils.data.DataLoader(data.train, batch_size=cfg.finetune.batch_size, shuffle=True,
                                         generator=shuffle)
    augment = torch.Generator().manual_seed(cfg.train.seed * 100019 + 7919 + epoch)
    layers, steps = nq_layers(unrolled.model), cfg.snn.timesteps
    total, seen = 0.0, 0
    for x, y in tqdm(loader, desc=f"fine-tune epoch {epoch + 1}", leave=False, disable=not progress):
        x, y = x.to(device), y.to(device)
        if cfg.train.augment:
            x = augment_batch(x, data.name, augment)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(accumulated(unrolled(x))[-1] / steps, y)
        loss.backward()
        culprit = first_non_finite_grad(unrolled.model)
        if culprit is not None:
            raise TrainingDiverged(f"fine-tuning diverged in epoch {epoch + 1}: the gradient of {culprit} "
                                   f"holds NaN or infinite values; nothing was saved. Try a lower finetune.lr")
        optimizer.step()
        with torch.no_grad():
            for nq, floor in zip(layers, floors):
                nq.threshold.clamp_(min=floor)
        total += float(loss) * len(y)
        seen += len(y)
    return total / max(seen, 1)


def finetune_model(model: nn.Module, cfg: Config, data: DatasetSplits, output_threshold: float,
                   progress: bool = False) -> tuple[dict, dict]:
    """Fine-tune ``model`` in place for finetune.epochs (module docstring); returns (the best
    state_dict, with epoch 0 the model as given, and the result: accuracies, history, times)."""
    start, device = time.perf_counter(), pick_device()
    model.to(device).eval()  # eval: frozen batch-norm statistics, no training noise
    select_set = selection_set(cfg, data)
    unrolled = Unrolled(model, cfg.snn.timesteps, cfg.snn.neuron, surrogate=cfg.finetune.surrogate,
                        **cfg.conversion_kwargs())
    floors = [float(nq.threshold.detach()) * _MIN_THRESHOLD_FRACTION for nq in nq_layers(model)]
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.finetune.lr)
    before = _selection_accuracy(model, cfg, data, select_set, output_threshold, device)
    best_state, best, best_epoch, history = copy.deepcopy(model.state_dict()), before, 0, []
    bar = tqdm(range(cfg.finetune.epochs), desc="fine-tuning", disable=not progress)
    for epoch in bar:
        t0 = time.perf_counter()
        loss = _epoch(unrolled, optimizer, cfg, data, epoch, floors, device, progress)
        t1 = time.perf_counter()
        acc = _selection_accuracy(model, cfg, data, select_set, output_threshold, device)
        history.append({"epoch": epoch + 1, "loss": loss, "snn_val": acc, "train_s": t1 - t0,
                        "select_s": time.perf_counter() - t1})
        log.info("fine-tune epoch %d: loss %.4f, SNN val (T=%d) %.4f", epoch + 1, loss, cfg.snn.timesteps, acc)
        bar.set_postfix(loss=f"{loss:.3f}", snn=f"{acc:.3f}")
        if acc > best:
            best_state, best, best_epoch = copy.deepcopy(model.state_dict()), acc, epoch + 1
    result = {"epochs": cfg.finetune.epochs, "timesteps": cfg.snn.timesteps, "neuron": cfg.snn.neuron,
              "snn_val_before": before, "snn_val_after": best, "best_epoch": best_epoch,
              "select_samples": len(select_set), "history": history,
              "wall_time_s": time.perf_counter() - start}
    return {k: v.detach().cpu() for k, v in best_state.items()}, result


def _read_record(path: Path) -> Optional[dict]:
    if not path.exists():
        return None
    try:
        doc = json.loads(read_regular(path, _MAX_RECORD_BYTES, RECORD))
    except (ValueError, UnicodeDecodeError) as exc:
        raise FinetuneError(f"{path}: not a fine-tuning record ({exc}); delete it to fine-tune afresh") from None
    keys = {"format_version", "kind", "converted_sha256", "finetuned_sha256", "settings", "result"}
    if not isinstance(doc, dict) or doc.get("kind") != "finetune" or doc.get("format_version") != RECORD_FORMAT \
            or not keys <= set(doc):
        raise FinetuneError(f"{path}: not a fine-tuning record of format {RECORD_FORMAT} (needs "
                            f"{', '.join(sorted(keys))}); delete it to fine-tune afresh")
    return doc


def read_record(path: Path) -> Optional[dict]:
    """The fine-tuning record at ``path``, checked (None if there is none; FinetuneError if the
    file is not one): for readers such as the report."""
    return _read_record(path)


def _kept_network(root: Path, record: dict, user) -> dict:
    """The network fine-tuning started from (``CONVERTED``), checked against the record."""
    kept = load_checkpoint(root / CONVERTED, user)
    if tensors_sha256(kept["state_dict"]) != record["converted_sha256"]:
        raise FinetuneError(f"{root / CONVERTED}: its tensors are not those {RECORD} records as the network "
                            f"fine-tuning started from; train again (or delete {RECORD} to start from the "
                            f"current checkpoint)")
    return kept


def _start(run_dir: RunDir, user) -> tuple[dict, Optional[dict], bool]:
    """(the network to start from, the record, whether the checkpoint is our fine-tuned one);
    the starting network is kept as ``CONVERTED`` before anything else is written."""
    root = Path(run_dir.root)
    ckpt = load_checkpoint(run_dir.checkpoint, user)
    record = _read_record(root / RECORD)
    current = tensors_sha256(ckpt["state_dict"])
    if record is not None and current == record["finetuned_sha256"]:
        return _kept_network(root, record, user), record, True
    kept_path = root / CONVERTED
    if not (kept_path.exists() and tensors_sha256(load_checkpoint(kept_path, user)["state_dict"]) == current):
        save_checkpoint(kept_path, ckpt)
    return ckpt, None if record is None or record["converted_sha256"] != current else record, False


def finetune(cfg: Config, progress: bool = True, data: DatasetSplits | None = None,
             module: nn.Module | None = None) -> dict:
    """Fine-tune the run's checkpoint at snn.timesteps (module docstring); returns the result:
    ``epochs``, ``snn_val_before``/``snn_val_after`` (SNN accuracy at T on the validation
    selection set), ``best_epoch``, ``history``, ``wall_time_s``, and ``action``: ``finetuned``,
    ``unchanged`` (already done with these settings), ``restored`` or ``off`` (epochs 0)."""
    run_dir = RunDir.prepared(cfg.run.dir)
    user = user_model(cfg.model, module)
    start, record, is_finetuned = _start(run_dir, user)
    if cfg.finetune.epochs == 0:
        if is_finetuned:  # off: the checkpoint is the network training made again
            save_checkpoint(run_dir.checkpoint, start)
            log.info("finetune.epochs 0: %s is the converted network again", run_dir.checkpoint)
        return {"epochs": 0, "action": "restored" if is_finetuned else "off"}
    settings = settings_of(cfg)
    if is_finetuned and record["settings"] == settings:
        log.info("%s is already fine-tuned with these settings; nothing to do", run_dir.checkpoint)
        return {**record["result"], "action": "unchanged"}
    data = data or load_dataset(cfg.data, seed=cfg.train.seed)
    model = model_from_checkpoint(start, user)
    best_state, result = finetune_model(model, cfg, data, start["output_threshold"], progress)
    model.load_state_dict(best_state)
    tuned = dict(start, state_dict=best_state, metrics={**start["metrics"], "snn_val": result["snn_val_after"]},
                 **{"lambda": [float(nq.threshold.detach()) for nq in nq_layers(model)]})
    doc = {"format_version": RECORD_FORMAT, "kind": "finetune",
           "converted_sha256": tensors_sha256(start["state_dict"]), "finetuned_sha256": tensors_sha256(best_state),
           "settings": settings, "result": result}
    atomic_write_text(Path(run_dir.root) / RECORD, json.dumps(doc, indent=1, sort_keys=True))
    save_checkpoint(run_dir.checkpoint, tuned)
    log.info("fine-tuned %s: SNN val at T=%d %.4f -> %.4f (%.0f s)", run_dir.checkpoint, cfg.snn.timesteps,
             result["snn_val_before"], result["snn_val_after"], result["wall_time_s"])
    return {**result, "action": "finetuned"}


__all__ = ["finetune", "finetune_model", "tensors_sha256", "read_record", "settings_of", "CONVERTED", "RECORD",
           "FinetuneError"]
