"""NQ training with measured residual noise.

Each epoch: SGD (momentum, weight decay, cosine schedule) on the NQ ANN with
noise σ_l·N(0,1) after every QCFS activation; then, on the validation split,

    σ_l ← std( a_l^ANN − θ_l · rate_l^SNN )       (per layer, over samples and neurons)

where the SNN is the converted network simulated for ``snn.timesteps`` steps
with the configured neuron (reference simulator, float mode). The epoch with
the best SNN validation accuracy at T is kept (never the test set).

Artifacts (``run.dir``): ``checkpoint.pt`` (best model) and
``train_state.pt`` (resume point, rewritten atomically after every epoch), both
plain tensors/containers loadable with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from hardware.errors import ToolkitError
from hardware.ir import Network
from hardware.simulator import simulate
from models.architectures import build_model, nq_layers
from models.converter import convert

from .data import DatasetSplits, load_dataset

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


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


def to_ir(model: nn.Module, input_shape: tuple, neuron: str, metadata: dict | None = None) -> Network:
    """Convert a (copy of the) model on the CPU to the float IR."""
    cpu_model = copy.deepcopy(model).to("cpu").eval()
    return convert(cpu_model, input_shape, neuron=neuron, metadata=metadata)


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


@torch.no_grad()
def snn_predictions(net: Network, dataset, timesteps: int, batch_size: int,
                    progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, N) predictions at every t ≤ T from the float reference simulator, and the labels."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    preds, labels = [], []
    for x, y in tqdm(loader, desc=f"SNN float, T={timesteps}", leave=False, disable=not progress):
        preds.append(simulate(net, x.double(), timesteps).predictions())
        labels.append(y)
    return torch.cat(preds, 1), torch.cat(labels)


def snn_accuracy_by_t(net: Network, dataset, timesteps: int, batch_size: int,
                      progress: bool = False) -> dict[str, float]:
    preds, labels = snn_predictions(net, dataset, timesteps, batch_size, progress)
    acc = (preds == labels.unsqueeze(0)).double().mean(1)
    return {str(t + 1): float(acc[t]) for t in range(timesteps)}


@torch.no_grad()
def measure_residual(model: nn.Module, input_shape: tuple, x: torch.Tensor, timesteps: int,
                     neuron: str) -> tuple[list[float], list[float]]:
    """Per layer: σ_l = std(ANN activation − θ_l·SNN rate) and mean |gap|, on the batch ``x``."""
    layers = nq_layers(model)
    activations: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: activations.append(out.detach().cpu().double()))
             for m in layers]
    model.eval()
    try:
        model(x.to(next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    net = to_ir(model, input_shape, neuron)
    result = simulate(net, x.double().cpu(), timesteps)
    counts = result.layer_counts[-len(layers):]
    sigmas, gaps = [], []
    for act, count, layer in zip(activations, counts, net.weighted_layers):
        gap = act - count.double() / timesteps * float(layer.neuron.threshold)
        sigmas.append(float(gap.std()))
        gaps.append(float(gap.abs().mean()))
    return sigmas, gaps


def _set_sigma(model: nn.Module, sigmas: list[float]) -> None:
    for layer, sigma in zip(nq_layers(model), sigmas):
        layer.sigma.fill_(sigma)


def train(cfg, progress: bool = True, data: DatasetSplits | None = None) -> dict:
    """Train (or resume) the NQ ANN described by ``cfg``; returns the best epoch's metrics."""
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = data or load_dataset(cfg.data, seed=cfg.train.seed)
    device = pick_device()
    torch.manual_seed(cfg.train.seed)
    arch = resolve_arch(cfg)
    model = build_model(arch, data.input_shape, data.num_classes, cfg.nq.levels, cfg.nq.noise).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum,
                                weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.train.epochs)
    config_dict = cfg.to_dict()
    history: list[dict] = []
    best: dict = {"snn_val": -1.0}
    start_epoch = 0
    state_path = run_dir / TRAIN_STATE
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if _training_identity(state.get("config", {})) == _training_identity(config_dict):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            history = list(state["history"])
            best = dict(state["best"])
            start_epoch = int(state["epoch"]) + 1
            torch.set_rng_state(state["torch_rng"])
            log.info("resuming training from %s at epoch %d", state_path, start_epoch + 1)
        else:
            log.warning("%s was made with a different configuration; starting afresh", state_path)

    g = torch.Generator().manual_seed(cfg.train.seed)
    sigma_idx = torch.randperm(len(data.val), generator=g)[:cfg.nq.sigma_samples]
    sigma_x = torch.stack([data.val[int(i)][0] for i in sigma_idx])
    loss_fn = nn.CrossEntropyLoss()
    logits: list[torch.Tensor] = []
    output_layer = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    output_layer.register_forward_hook(lambda _m, _i, out: logits.append(out) if _m.training else None)
    epochs = range(start_epoch, cfg.train.epochs)
    bar = tqdm(epochs, desc="epochs", disable=not progress, initial=start_epoch, total=cfg.train.epochs)
    for epoch in bar:
        model.train()
        loader = torch.utils.data.DataLoader(
            data.train, batch_size=cfg.train.batch_size, shuffle=True, drop_last=False,
            generator=torch.Generator().manual_seed(cfg.train.seed * 100003 + epoch))
        total_loss = 0.0
        for x, y in tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not progress):
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            output = model(x)
            # The output layer is an NQ layer too (the SNN classifies by spike counts). Its clip
            # passes no gradient to classes whose pre-activation is negative, so those classes can
            # die; the auxiliary loss on the pre-activation keeps them trainable.
            loss = loss_fn(output, y) + loss_fn(logits[-1], y)
            logits.clear()
            loss.backward()
            optimizer.step()
            total_loss += float(loss) * len(y)
        scheduler.step()
        sigmas, gaps = measure_residual(model, data.input_shape, sigma_x, cfg.snn.timesteps, cfg.snn.neuron)
        if cfg.nq.noise:
            _set_sigma(model, sigmas)
        net = to_ir(model, data.input_shape, cfg.snn.neuron)
        snn_val = snn_accuracy_by_t(net, data.val, cfg.snn.timesteps, cfg.eval.batch_size)[str(cfg.snn.timesteps)]
        ann_val = ann_accuracy(model, data.val, cfg.eval.batch_size, device)
        record = {"epoch": epoch + 1, "loss": total_loss / len(data.train), "ann_val": ann_val,
                  "snn_val": snn_val, "sigma": sigmas, "mean_abs_gap": gaps,
                  "lambda": [float(m.threshold.detach()) for m in nq_layers(model)],
                  "lr": float(optimizer.param_groups[0]["lr"])}
        history.append(record)
        if snn_val > best["snn_val"]:
            best = dict(record)
            _atomic_save(_checkpoint(model, cfg, arch, data, record, history), run_dir / CHECKPOINT)
        _atomic_save({"model": _cpu_state(model), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "epoch": epoch, "history": history, "best": best,
                      "config": config_dict, "torch_rng": torch.get_rng_state()}, state_path)
        bar.set_postfix(loss=f"{record['loss']:.3f}", ann=f"{ann_val:.3f}", snn=f"{snn_val:.3f}")
        log.info("epoch %d: loss %.4f, ANN val %.4f, SNN val (T=%d) %.4f, sigma %s", epoch + 1, record["loss"],
                 ann_val, cfg.snn.timesteps, snn_val, ", ".join(f"{s:.3f}" for s in sigmas))
    if not (run_dir / CHECKPOINT).exists():
        _atomic_save(_checkpoint(model, cfg, arch, data, history[-1] if history else {}, history),
                     run_dir / CHECKPOINT)
    else:  # the checkpoint's history should cover all epochs, including those after the best
        ckpt = load_checkpoint(run_dir / CHECKPOINT)
        ckpt["history"] = history
        _atomic_save(ckpt, run_dir / CHECKPOINT)
    return {"best_epoch": best.get("epoch"), "best": best, "history": history}


def _training_identity(config: dict) -> dict:
    """The parts of the config that define a training run (resume only into the same run)."""
    return {k: config.get(k) for k in ("data", "model", "nq", "train", "snn")}


def _checkpoint(model, cfg, arch, data, record, history) -> dict:
    return {"format_version": CHECKPOINT_FORMAT, "state_dict": _cpu_state(model), "config": cfg.to_dict(),
            "arch": arch, "input_shape": list(data.input_shape), "num_classes": int(data.num_classes),
            "levels": int(cfg.nq.levels), "epoch": int(record.get("epoch", 0)),
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
    model = build_model(ckpt["arch"], tuple(ckpt["input_shape"]), ckpt["num_classes"], ckpt["levels"], noise=False)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()

