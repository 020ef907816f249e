"""NQ training with measured residual noise.

Each epoch: SGD (momentum, weight decay, cosine schedule) on the NQ ANN with
noise σ_l·N(0,1) after every QCFS activation; then, on the validation split,

    σ_l ← std( a_l^ANN − θ_l · rate_l^SNN )       (per layer, over samples and neurons)

where the SNN is the converted network simulated for ``snn.sigma_timesteps``
steps (default ``snn.timesteps``) with the configured neuron (reference
simulator, float mode, float32). The epoch with the best SNN validation accuracy
at ``snn.timesteps`` (by the configured readout, on the whole validation split or
a fixed ``train.select_samples`` subset) is kept, never judged on the test set.
Each epoch's record in the history holds ``train_s``, ``sigma_s`` and
``select_s``: the wall time of the SGD pass, the σ measurement and the selection.

Artifacts (``run.dir``, files in :mod:`pipeline.checkpoints`):
``checkpoint.safetensors`` (the best epoch's model) and ``train_state.safetensors``
(the resume point, rewritten atomically after every epoch, so a killed run loses
at most the epoch in progress). Both are safetensors with a JSON document; nothing
is ever unpickled.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from hardware.errors import ToolkitError
from hardware.ir import Network
from hardware.simulator import simulate
from models.architectures import build_model, nq_layers
from models.converter import convert

from .artifacts import CHECKPOINT, TRAIN_STATE, ArtifactError
# re-exported: the checkpoint API lived here before pipeline.checkpoints
from .checkpoints import (CHECKPOINT_FORMAT, CheckpointError, checkpoint_from_model,  # noqa: F401
                          load_checkpoint, load_train_state, model_from_checkpoint, refuse_legacy,
                          save_checkpoint, save_train_state)
from .data import DatasetSplits, augment_batch, load_dataset

log = logging.getLogger(__name__)


class TrainingError(ToolkitError):
    """A training run that cannot start (e.g. an architecture too deep for the dataset's images)."""


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_ir(model: nn.Module, input_shape: tuple, neuron: str, metadata: dict | None = None,
          readout: str = "potential", output_threshold: float | None = None, **conversion) -> Network:
    """Convert a (copy of the) model on the CPU to the float IR (``conversion``: the cuba shift
    options of :func:`models.converter.convert`, see ``Config.conversion_kwargs``)."""
    cpu_model = copy.deepcopy(model).to("cpu").eval()
    return convert(cpu_model, input_shape, neuron=neuron, metadata=metadata, readout=readout,
                   output_threshold=output_threshold, **conversion)


@torch.no_grad()
def ann_accuracy(model: nn.Module, dataset, batch_size: int, device: torch.device) -> float:
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    correct = total = 0
    for x, y in loader:
        out = model(x.to(device))
        correct += int((out.argmax(1).cpu() == y).sum())
        total += len(y)
    return correct / max(total, 1)


#: The float reference simulator runs σ measurement and model selection in float32:
#: the σ estimate and the selection do not need float64, and float32 takes the fast kernels.
TRAINING_SIM_DTYPE = torch.float32
#: Percentile of the ANN's positive logits (validation subset) used as the output
#: layer's threshold when the SNN is read out by spike counts (``snn.readout: spikes``).
OUTPUT_THRESHOLD_PERCENTILE = 99.0


@torch.no_grad()
def snn_predictions(net: Network, dataset, timesteps: int, batch_size: int,
                    progress: bool = False, dtype: torch.dtype = torch.float64,
                    device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, N) predictions at every t ≤ T from the float reference simulator (by the
    network's readout, on ``device``: the training device during training), and the labels."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    preds, labels = [], []
    for x, y in tqdm(loader, desc=f"SNN float, T={timesteps}", leave=False, disable=not progress):
        preds.append(simulate(net, x.to(device=device, dtype=dtype), timesteps, dtype=dtype).predictions().cpu())
        labels.append(y)
    return torch.cat(preds, 1), torch.cat(labels)


def snn_accuracy_by_t(net: Network, dataset, timesteps: int, batch_size: int,
                      progress: bool = False, dtype: torch.dtype = torch.float64,
                      device: torch.device | None = None) -> dict[str, float]:
    preds, labels = snn_predictions(net, dataset, timesteps, batch_size, progress, dtype, device)
    acc = (preds == labels.unsqueeze(0)).double().mean(1)
    return {str(t + 1): float(acc[t]) for t in range(timesteps)}


@torch.no_grad()
def measure_residual(model: nn.Module, input_shape: tuple, x: torch.Tensor, timesteps: int,
                     neuron: str, conversion: dict | None = None) -> tuple[list[float], list[float], float]:
    """On the batch ``x``, per NQ layer: σ_l = std(ANN activation − θ_l·SNN rate) and the
    mean |gap|; and the output threshold for a spike-count readout (a high percentile of
    the positive logits, :data:`OUTPUT_THRESHOLD_PERCENTILE`)."""
    layers = nq_layers(model)
    activations: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: activations.append(out.detach().cpu().double()))
             for m in layers]
    model.eval()
    try:
        logits = model(x.to(next(model.parameters()).device)).detach().cpu().double()
    finally:
        for h in hooks:
            h.remove()
    positive = logits[logits > 0]
    output_threshold = (float(torch.quantile(positive, OUTPUT_THRESHOLD_PERCENTILE / 100))
                        if positive.numel() else 1.0)
    net = to_ir(model, input_shape, neuron, **(conversion or {}))
    result = simulate(net, x.to(device=_sim_device(model), dtype=TRAINING_SIM_DTYPE), timesteps,
                      dtype=TRAINING_SIM_DTYPE)
    sigmas, gaps = [], []
    # the simulator's spiking layers are the NQ layers, in order, then the readout
    for act, count, layer in zip(activations, result.layer_counts, net.weighted_layers):
        gap = act - count.cpu().double() / timesteps * float(layer.neuron.threshold)
        sigmas.append(float(gap.std()))
        gaps.append(float(gap.abs().mean()))
    return sigmas, gaps, output_threshold


def _sim_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _set_sigma(model: nn.Module, sigmas: list[float]) -> None:
    for layer, sigma in zip(nq_layers(model), sigmas):
        layer.sigma.fill_(sigma)


def _subset(dataset, size: int | None, seed: int):
    """A fixed, seeded subset of ``dataset`` (the whole dataset when ``size`` is None or larger)."""
    if size is None or size >= len(dataset):
        return dataset
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:size]
    return torch.utils.data.Subset(dataset, idx.tolist())


def _train_epoch(model, optimizer, loss_fn, data: DatasetSplits, cfg, epoch: int, device,
                 progress: bool) -> float:
    model.train()
    shuffle = torch.Generator().manual_seed(cfg.train.seed * 100003 + epoch)
    loader = torch.utils.data.DataLoader(data.train, batch_size=cfg.train.batch_size, shuffle=True,
                                         drop_last=False, generator=shuffle)
    augment_rng = torch.Generator().manual_seed(cfg.train.seed * 100019 + epoch)
    total_loss = 0.0
    for x, y in tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not progress):
        x, y = x.to(device), y.to(device)
        if cfg.train.augment:
            x = augment_batch(x, data.name, augment_rng)
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        total_loss += float(loss) * len(y)
    return total_loss / len(data.train)


def _end_of_epoch(model, data: DatasetSplits, cfg, sigma_x: torch.Tensor, select_set, device) -> dict:
    """σ re-estimation and SNN model selection after an epoch, timed separately."""
    start = time.perf_counter()
    sigmas, gaps, output_threshold = measure_residual(model, data.input_shape, sigma_x, cfg.snn.sigma_t,
                                                      cfg.snn.neuron, cfg.conversion_kwargs())
    if cfg.nq.noise:
        _set_sigma(model, sigmas)
    sigma_s = time.perf_counter() - start
    start = time.perf_counter()
    net = to_ir(model, data.input_shape, cfg.snn.neuron, readout=cfg.snn.readout,
                output_threshold=output_threshold, **cfg.conversion_kwargs())
    snn_val = snn_accuracy_by_t(net, select_set, cfg.snn.timesteps, cfg.eval.batch_size,
                                dtype=TRAINING_SIM_DTYPE, device=device)[str(cfg.snn.timesteps)]
    select_s = time.perf_counter() - start
    return {"snn_val": snn_val, "sigma": sigmas, "mean_abs_gap": gaps, "output_threshold": output_threshold,
            "sigma_s": sigma_s, "select_s": select_s}


@dataclass
class _Session:
    """Everything one training run works with (built once, then used by every epoch)."""

    cfg: object
    data: DatasetSplits
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sigma_x: torch.Tensor
    select_set: object

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run.dir)


def _prepare_run_dir(cfg) -> Path:
    run_dir = Path(cfg.run.dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as exc:  # a file in the way, permissions, a NUL byte, a too-long name
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ArtifactError(f"run.dir {str(run_dir)!r}: cannot create the directory ({reason})") from None
    refuse_legacy(run_dir)
    for stale in (*run_dir.glob(f".{CHECKPOINT}.*.tmp"), *run_dir.glob(f".{TRAIN_STATE}.*.tmp")):
        stale.unlink(missing_ok=True)  # left by a killed run; never read
    return run_dir


def _start_session(cfg, data: DatasetSplits) -> _Session:
    device = pick_device()
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.arch, data.input_shape, data.num_classes, cfg.nq.levels, cfg.nq.noise,
                        cfg.nq.init_threshold, **cfg.activation_kwargs()).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum,
                                weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.train.epochs)
    g = torch.Generator().manual_seed(cfg.train.seed)
    sigma_idx = torch.randperm(len(data.val), generator=g)[:cfg.nq.sigma_samples]
    sigma_x = torch.stack([data.val[int(i)][0] for i in sigma_idx])
    select_set = _subset(data.val, cfg.train.select_samples, cfg.train.seed + 1)
    return _Session(cfg, data, device, model, optimizer, scheduler, sigma_x, select_set)


def train(cfg, progress: bool = True, data: DatasetSplits | None = None) -> dict:
    """Train (or resume) the NQ ANN described by ``cfg``; returns the best epoch's metrics."""
    run_dir = _prepare_run_dir(cfg)
    data = data or load_dataset(cfg.data, seed=cfg.train.seed)
    s = _start_session(cfg, data)
    history, best, start_epoch = _resume(s)
    bar = tqdm(range(start_epoch, cfg.train.epochs), desc="epochs", disable=not progress,
               initial=start_epoch, total=cfg.train.epochs)
    for epoch in bar:
        record = _run_epoch(s, epoch, progress)
        history.append(record)
        if record["snn_val"] > best["snn_val"]:
            best = dict(record)
            save_checkpoint(run_dir / CHECKPOINT, _checkpoint(s, record, history))
        save_train_state(run_dir / TRAIN_STATE, s.model, s.optimizer, s.scheduler, epoch=epoch,
                         history=history, best=best, config=cfg.to_dict())
        bar.set_postfix(loss=f"{record['loss']:.3f}", ann=f"{record['ann_val']:.3f}",
                        snn=f"{record['snn_val']:.3f}")
        _log_epoch(record, cfg.snn.timesteps)
    _finish_checkpoint(s, history)
    return {"best_epoch": best.get("epoch"), "best": best, "history": history}


def _run_epoch(s: _Session, epoch: int, progress: bool) -> dict:
    """One SGD pass, the scheduler step, σ re-estimation and selection: the epoch's record."""
    start = time.perf_counter()
    loss = _train_epoch(s.model, s.optimizer, nn.CrossEntropyLoss(), s.data, s.cfg, epoch, s.device, progress)
    s.scheduler.step()
    record = {"epoch": epoch + 1, "loss": loss, "train_s": time.perf_counter() - start,
              **_end_of_epoch(s.model, s.data, s.cfg, s.sigma_x, s.select_set, s.device)}
    record["ann_val"] = ann_accuracy(s.model, s.data.val, s.cfg.eval.batch_size, s.device)
    record["lambda"] = [float(m.threshold.detach()) for m in nq_layers(s.model)]
    record["lr"] = float(s.optimizer.param_groups[0]["lr"])
    return record


def _log_epoch(record: dict, timesteps: int) -> None:
    log.info("epoch %d: loss %.4f, ANN val %.4f, SNN val (T=%d) %.4f, sigma %s; %.1f s train, "
             "%.1f s sigma, %.1f s selection", record["epoch"], record["loss"], record["ann_val"], timesteps,
             record["snn_val"], ", ".join(f"{x:.3f}" for x in record["sigma"]), record["train_s"],
             record["sigma_s"], record["select_s"])


def _resume(s: _Session) -> tuple[list, dict, int]:
    """(history, best, first epoch to run) from the resume state, if it belongs to this run."""
    state_path = s.run_dir / TRAIN_STATE
    point = load_train_state(state_path, s.model, s.optimizer, s.scheduler, config=s.cfg.to_dict(),
                             epochs=s.cfg.train.epochs)
    if point is None:
        return [], {"snn_val": -1.0}, 0
    if point.start_epoch == s.cfg.train.epochs:
        log.info("%s: training is already complete (%d epochs); nothing to train", state_path,
                 s.cfg.train.epochs)
    else:
        log.info("resuming training from %s at epoch %d", state_path, point.start_epoch + 1)
    return point.history, point.best, point.start_epoch


def _finish_checkpoint(s: _Session, history: list) -> None:
    """Make sure a checkpoint exists and that its history covers every epoch (also those
    after the best one)."""
    path = s.run_dir / CHECKPOINT
    if not path.exists():
        save_checkpoint(path, _checkpoint(s, history[-1] if history else {}, history))
        return
    ckpt = load_checkpoint(path)
    ckpt["history"] = history
    save_checkpoint(path, ckpt)


def _checkpoint(s: _Session, record: dict, history: list) -> dict:
    return checkpoint_from_model(s.model, config=s.cfg.to_dict(), arch=s.cfg.arch,
                                 input_shape=s.data.input_shape, num_classes=s.data.num_classes,
                                 levels=s.cfg.nq.levels, record=record, history=history,
                                 activation=s.cfg.activation_kwargs())
