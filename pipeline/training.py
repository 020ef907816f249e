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

Artifacts (``run.dir``): ``checkpoint.pt`` (best model) and
``train_state.pt`` (resume point, rewritten atomically after every epoch), both
plain tensors/containers loadable with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from hardware.errors import ToolkitError
from hardware.ir import Network
from hardware.simulator import simulate
from models.architectures import build_model, nq_layers
from models.converter import convert

from .data import DatasetSplits, augment_batch, load_dataset

log = logging.getLogger(__name__)

#: 2: the output layer is a plain Linear (paper readout); ``output_threshold`` added.
CHECKPOINT_FORMAT = 2


class CheckpointError(ToolkitError):
    """A missing or unreadable checkpoint."""


CHECKPOINT = "checkpoint.pt"
TRAIN_STATE = "train_state.pt"


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_arch(cfg) -> str:
    return cfg.arch


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def to_ir(model: nn.Module, input_shape: tuple, neuron: str, metadata: dict | None = None,
          readout: str = "potential", output_threshold: float | None = None) -> Network:
    """Convert a (copy of the) model on the CPU to the float IR."""
    cpu_model = copy.deepcopy(model).to("cpu").eval()
    return convert(cpu_model, input_shape, neuron=neuron, metadata=metadata, readout=readout,
                   output_threshold=output_threshold)


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
                     neuron: str) -> tuple[list[float], list[float], float]:
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
    net = to_ir(model, input_shape, neuron)
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
                                                      cfg.snn.neuron)
    if cfg.nq.noise:
        _set_sigma(model, sigmas)
    sigma_s = time.perf_counter() - start
    start = time.perf_counter()
    net = to_ir(model, data.input_shape, cfg.snn.neuron, readout=cfg.snn.readout,
                output_threshold=output_threshold)
    snn_val = snn_accuracy_by_t(net, select_set, cfg.snn.timesteps, cfg.eval.batch_size,
                                dtype=TRAINING_SIM_DTYPE, device=device)[str(cfg.snn.timesteps)]
    select_s = time.perf_counter() - start
    return {"snn_val": snn_val, "sigma": sigmas, "mean_abs_gap": gaps, "output_threshold": output_threshold,
            "sigma_s": sigma_s, "select_s": select_s}


def train(cfg, progress: bool = True, data: DatasetSplits | None = None) -> dict:
    """Train (or resume) the NQ ANN described by ``cfg``; returns the best epoch's metrics."""
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = data or load_dataset(cfg.data, seed=cfg.train.seed)
    device = pick_device()
    torch.manual_seed(cfg.train.seed)
    arch = resolve_arch(cfg)
    model = build_model(arch, data.input_shape, data.num_classes, cfg.nq.levels, cfg.nq.noise,
                        cfg.nq.init_threshold).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum,
                                weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.train.epochs)
    history, best, start_epoch = _resume(run_dir / TRAIN_STATE, cfg, model, optimizer, scheduler)
    g = torch.Generator().manual_seed(cfg.train.seed)
    sigma_idx = torch.randperm(len(data.val), generator=g)[:cfg.nq.sigma_samples]
    sigma_x = torch.stack([data.val[int(i)][0] for i in sigma_idx])
    select_set = _subset(data.val, cfg.train.select_samples, cfg.train.seed + 1)
    loss_fn = nn.CrossEntropyLoss()
    bar = tqdm(range(start_epoch, cfg.train.epochs), desc="epochs", disable=not progress,
               initial=start_epoch, total=cfg.train.epochs)
    for epoch in bar:
        start = time.perf_counter()
        loss = _train_epoch(model, optimizer, loss_fn, data, cfg, epoch, device, progress)
        scheduler.step()
        train_s = time.perf_counter() - start
        record = {"epoch": epoch + 1, "loss": loss, "train_s": train_s,
                  **_end_of_epoch(model, data, cfg, sigma_x, select_set, device)}
        record["ann_val"] = ann_accuracy(model, data.val, cfg.eval.batch_size, device)
        record["lambda"] = [float(m.threshold.detach()) for m in nq_layers(model)]
        record["lr"] = float(optimizer.param_groups[0]["lr"])
        history.append(record)
        if record["snn_val"] > best["snn_val"]:
            best = dict(record)
            _atomic_save(_checkpoint(model, cfg, arch, data, record, history), run_dir / CHECKPOINT)
        _atomic_save({"model": _cpu_state(model), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "epoch": epoch, "history": history, "best": best,
                      "config": cfg.to_dict(), "torch_rng": torch.get_rng_state()}, run_dir / TRAIN_STATE)
        bar.set_postfix(loss=f"{loss:.3f}", ann=f"{record['ann_val']:.3f}", snn=f"{record['snn_val']:.3f}")
        log.info("epoch %d: loss %.4f, ANN val %.4f, SNN val (T=%d) %.4f, sigma %s; %.1f s train, "
                 "%.1f s sigma, %.1f s selection", epoch + 1, loss, record["ann_val"], cfg.snn.timesteps,
                 record["snn_val"], ", ".join(f"{s:.3f}" for s in record["sigma"]), train_s,
                 record["sigma_s"], record["select_s"])
    _finish_checkpoint(run_dir, model, cfg, arch, data, history)
    return {"best_epoch": best.get("epoch"), "best": best, "history": history}


def _resume(state_path: Path, cfg, model, optimizer, scheduler) -> tuple[list, dict, int]:
    """(history, best, first epoch to run) from the resume state, if it belongs to this run."""
    if not state_path.exists():
        return [], {"snn_val": -1.0}, 0
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    if _training_identity(state.get("config", {})) != _training_identity(cfg.to_dict()):
        log.warning("%s was made with a different configuration; starting afresh", state_path)
        return [], {"snn_val": -1.0}, 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    start_epoch = int(state["epoch"]) + 1
    log.info("resuming training from %s at epoch %d", state_path, start_epoch + 1)
    return list(state["history"]), dict(state["best"]), start_epoch


def _finish_checkpoint(run_dir: Path, model, cfg, arch, data, history) -> None:
    """Make sure a checkpoint exists and that its history covers every epoch (also those
    after the best one)."""
    if not (run_dir / CHECKPOINT).exists():
        _atomic_save(_checkpoint(model, cfg, arch, data, history[-1] if history else {}, history),
                     run_dir / CHECKPOINT)
        return
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    ckpt["history"] = history
    _atomic_save(ckpt, run_dir / CHECKPOINT)


def _training_identity(config: dict) -> dict:
    """The parts of the config that define a training run (resume only into the same run)."""
    return {k: config.get(k) for k in ("data", "model", "nq", "train", "snn")}


def _checkpoint(model, cfg, arch, data, record, history) -> dict:
    return {"format_version": CHECKPOINT_FORMAT, "state_dict": _cpu_state(model), "config": cfg.to_dict(),
            "arch": arch, "input_shape": list(data.input_shape), "num_classes": int(data.num_classes),
            "levels": int(cfg.nq.levels), "epoch": int(record.get("epoch", 0)),
            "output_threshold": float(record.get("output_threshold", 1.0)),
            "sigma": [float(m.sigma) for m in nq_layers(model)],
            "lambda": [float(m.threshold.detach()) for m in nq_layers(model)],
            "metrics": {k: v for k, v in record.items() if k in ("loss", "ann_val", "snn_val")},
            "history": history}


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}; run `python -m pipeline train` first")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file: never fall back to unpickling
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format_version") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of format {CHECKPOINT_FORMAT}")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    model = build_model(ckpt["arch"], tuple(ckpt["input_shape"]), ckpt["num_classes"], ckpt["levels"],
                        noise=False)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()

