"""NQ training with measured residual noise.

Each epoch: SGD (momentum, weight decay, cosine schedule) on the NQ ANN with noise
σ_l·N(0,1) after every QCFS activation; then, on the validation split,

    σ_l ← std( a_l^ANN − θ_l · rate_l^SNN )       (per layer, over samples and neurons)

where the SNN is the converted network simulated (float32 reference simulator) for
``snn.sigma_timesteps`` steps with the configured neuron. The epoch with the best SNN
validation accuracy at ``snn.timesteps`` (configured readout; ``train.select_samples`` of
the validation split) is kept, never judged on the test set. Each epoch's record holds the
wall times ``train_s``, ``sigma_s`` and ``select_s``. ``train.activity_penalty`` = w > 0 adds
w · mean over NQ layers of mean(quantized activation / λ) (spikes per neuron per step) to the loss.

Files in ``run.dir`` (:mod:`pipeline.checkpoints`, safetensors, never unpickled):
``checkpoint.safetensors`` (the best epoch) and ``train_state.safetensors`` (the resume
point, rewritten atomically after every epoch: a killed run loses at most that epoch).

Under ``torchrun`` (:mod:`pipeline.distributed`) the model is wrapped in
DistributedDataParallel; each rank trains on a disjoint share in batches of
``train.batch_size / N``, with noise and augmentation seeded from (seed, rank, epoch).
σ, the output threshold and the accuracies are measured on shards and combined exactly
(float64 sums all-reduced, logits gathered), so every rank holds what one process would
compute. Rank 0 alone writes files, logs and shows progress.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from hardware.errors import ToolkitError
from hardware.ir import Network
from hardware.kinds import NeuronKind, Readout
from hardware.runtime.progress import tqdm
from hardware.simulator import simulate
from models.architectures import build_model, nq_layers
from models.calibrate import DEFAULT_BATCHES, DEFAULT_PERCENTILE, init_thresholds_from_data
from models.converter import convert

from .artifacts import CHECKPOINT, TRAIN_STATE, prepare_run_dir, remove_stale_temporaries
# re-exported: the checkpoint API lived here before pipeline.checkpoints
from .checkpoints import (CHECKPOINT_FORMAT, CheckpointError, checkpoint_from_model,  # noqa: F401
                          load_checkpoint, load_train_state, model_from_checkpoint, normalization_of, refuse_legacy,
                          save_checkpoint, save_train_state)
from .config import Config
from .data import DatasetSplits, augment_batch, load_dataset
from .distributed import (STREAM_AUGMENT, STREAM_NOISE, DistContext, DistributedError, default_device,
                          derived_seed, peer_timeout, process_group)
from .overwrite import clear_trained, training_replaces
from .user_model import Normalized, UserModel, check_outputs, user_model

log = logging.getLogger(__name__)


class TrainingError(ToolkitError):
    """A training run that cannot start (e.g. an architecture too deep for the dataset's images)."""


class TrainingDiverged(TrainingError, FloatingPointError):
    """A training step that produced a non-finite gradient or parameter, or a threshold λ ≤ 0
    (where the NQ activation is undefined). Raised before anything of that epoch is saved:
    the checkpoint and resume state of the last finished epoch stay as they were."""


def pick_device() -> torch.device:
    return default_device()


def to_ir(model: nn.Module, input_shape: tuple, neuron: NeuronKind, metadata: dict | None = None,
          readout: Readout = "potential", output_threshold: float | None = None, **conversion) -> Network:
    """Convert a (copy of the) model on the CPU to the float IR (``conversion``: the cuba shift
    options of :func:`models.converter.convert`, see ``Config.conversion_kwargs``)."""
    cpu_model = copy.deepcopy(model).to("cpu").eval()
    return convert(cpu_model, input_shape, neuron=neuron, metadata=metadata, readout=readout,
                   output_threshold=output_threshold, **conversion)


def ann_accuracy(model: nn.Module, dataset, batch_size: int, device: torch.device) -> float:
    correct, total = ann_correct(model, dataset, batch_size, device)
    return correct / max(total, 1)


@torch.no_grad()
def ann_correct(model: nn.Module, dataset, batch_size: int, device: torch.device) -> tuple[int, int]:
    """(correctly classified, total) samples of ``dataset`` (eval mode)."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    correct = total = 0
    for x, y in loader:
        out = model(x.to(device))
        correct += int((out.argmax(1).cpu() == y).sum())
        total += len(y)
    return correct, total


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
                     neuron: str, conversion: dict | None = None,
                     dist: DistContext | None = None) -> tuple[list[float], list[float], float]:
    """On the batch ``x``, per NQ layer: σ_l = std(ANN activation − θ_l·SNN rate) and the
    mean |gap|; and the output threshold for a spike-count readout (a high percentile of
    the positive logits, :data:`OUTPUT_THRESHOLD_PERCENTILE`).

    With ``dist`` of several processes every rank passes the same ``x`` and the same model;
    each measures its contiguous shard and the shards are combined exactly
    (:func:`_combined_gap_statistics`; the percentile from the gathered logits), so every
    rank returns the single-process numbers of the whole ``x``, up to float rounding."""
    distributed = dist is not None and dist.distributed
    gaps, logits = _residual_gaps(model, input_shape, x[dist.shard(len(x))] if distributed else x,
                                  timesteps, neuron, conversion)
    if distributed:
        sigmas, mean_abs = _combined_gap_statistics(gaps, dist)
        return sigmas, mean_abs, _output_threshold(dist.gather_rows(logits, len(x)))
    return [float(g.std()) for g in gaps], [float(g.abs().mean()) for g in gaps], _output_threshold(logits)


def _residual_gaps(model: nn.Module, input_shape: tuple, x: torch.Tensor, timesteps: int, neuron: str,
                   conversion: dict | None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(per NQ layer the float64 gap a_l^ANN − θ_l·rate_l^SNN on ``x``, the ANN's float64 logits)."""
    activations: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: activations.append(out.detach().cpu().double()))
             for m in nq_layers(model)]
    model.eval()
    try:
        logits = model(x.to(next(model.parameters()).device)).detach().cpu().double()
    finally:
        for h in hooks:
            h.remove()
    net = to_ir(model, input_shape, neuron, **(conversion or {}))
    result = simulate(net, x.to(device=_sim_device(model), dtype=TRAINING_SIM_DTYPE), timesteps,
                      dtype=TRAINING_SIM_DTYPE)
    # the simulator's spiking layers are the NQ layers, in order, then the readout
    return [act - count.cpu().double() / timesteps * float(layer.neuron.threshold)
            for act, count, layer in zip(activations, result.layer_counts, net.weighted_layers)], logits


def _output_threshold(logits: torch.Tensor) -> float:
    positive = logits[logits > 0]
    return float(torch.quantile(positive, OUTPUT_THRESHOLD_PERCENTILE / 100)) if positive.numel() else 1.0


def _combined_gap_statistics(gaps: list[torch.Tensor],
                             dist: DistContext) -> tuple[list[float], list[float]]:
    """σ_l and mean |gap_l| over the gaps of all ranks, in two float64 all-reduces:

        n = Σ_r n_r,   μ = Σ_r Σ g / n,   σ = sqrt( Σ_r Σ (g − μ)² / (n − 1) ),
        mean|g| = Σ_r Σ |g| / n

    σ is torch's unbiased std (``Tensor.std``) of the concatenated gaps; the two-pass form
    (deviations from the global mean) keeps the float64 rounding at the single-process level,
    where the one-pass Σg² − (Σg)²/n would cancel digits."""
    first = dist.sum([[float(g.numel()), float(g.sum()), float(g.abs().sum())] for g in gaps])
    count, mean = first[:, 0], first[:, 1] / first[:, 0]
    squares = dist.sum([float(((g - m) ** 2).sum()) for g, m in zip(gaps, mean.tolist())])
    sigmas = torch.sqrt(squares / (count - 1))
    return sigmas.tolist(), (first[:, 2] / count).tolist()


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


def sigma_batch(cfg: Config, data: DatasetSplits) -> torch.Tensor:
    """The fixed validation images σ is measured on every epoch (``nq.sigma_samples``, seeded)."""
    g = torch.Generator().manual_seed(cfg.train.seed)
    sigma_idx = torch.randperm(len(data.val), generator=g)[:cfg.nq.sigma_samples]
    return torch.stack([data.val[int(i)][0] for i in sigma_idx])


def selection_set(cfg: Config, data: DatasetSplits):
    """The validation samples the model is selected on (``train.select_samples`` of them, seeded;
    the whole split when it is null)."""
    return _subset(data.val, cfg.train.select_samples, cfg.train.seed + 1)


def _shard(dataset, dist: DistContext):
    """This rank's contiguous share of ``dataset`` (the dataset itself in a single process)."""
    if not dist.distributed:
        return dataset
    bounds = dist.shard(len(dataset))
    return torch.utils.data.Subset(dataset, range(bounds.start, bounds.stop))


def _train_loader(s: "_Session", epoch: int) -> torch.utils.data.DataLoader:
    """The epoch's mini-batches. One process shuffles the whole training split with a generator
    seeded from train.seed and the epoch; under DDP the DistributedSampler (seeded with
    train.seed, ``set_epoch`` every epoch) deals each rank a disjoint share, in batches of
    train.batch_size / world_size, so the global batch (and hence the lr) is the config's."""
    train_split, batch_size = s.data.train, s.cfg.train.batch_size
    if s.sampler is None:
        shuffle = torch.Generator().manual_seed(s.cfg.train.seed * 100003 + epoch)
        return torch.utils.data.DataLoader(train_split, batch_size=batch_size, shuffle=True,
                                           drop_last=False, generator=shuffle)
    s.sampler.set_epoch(epoch)
    return torch.utils.data.DataLoader(train_split, batch_size=batch_size // s.dist.world_size,
                                       sampler=s.sampler, drop_last=False)


def _augment_generator(s: "_Session", epoch: int) -> torch.Generator:
    """The epoch's augmentation generator. One process: seeded from train.seed and the epoch, the
    noise drawn from torch's global RNG, which runs on (and is saved in the resume state). Under
    DDP each rank draws its own noise and augmentation from seeds fixed by (train.seed, rank,
    epoch), so a resumed run draws exactly what the uninterrupted one would have."""
    seed = s.cfg.train.seed
    if not s.dist.distributed:
        return torch.Generator().manual_seed(seed * 100019 + epoch)
    torch.manual_seed(derived_seed(seed, STREAM_NOISE, s.dist.rank, epoch))
    return torch.Generator().manual_seed(derived_seed(seed, STREAM_AUGMENT, s.dist.rank, epoch))


def _penalised(cfg: Config) -> bool:
    """Whether the loss carries the activity term (weight 0: the plain loss, not a zero term)."""
    return cfg.train.activity_penalty > 0


@contextlib.contextmanager
def _spike_rates(model: nn.Module, enabled: bool):
    """While open, every forward appends each NQ layer's mean spike rate to the yielded list
    (None when not ``enabled``: no hooks at all).

    The rate is quantized(input) / λ: spikes per neuron per step of the constant-input SNN
    (count/T for cuba-matched, level/L for QCFS), so λ cannot buy a smaller penalty by shrinking
    while the SNN fires as often. It is recomputed from the input, without the training noise,
    whose zero-mean term would only add noise to the gradient. Hooks sit on the modules
    themselves, so a DDP wrapper's forward fills the list too."""
    if not enabled:
        yield None
        return
    rates: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda m, inputs, _out: rates.append((m.quantized(inputs[0]) /
                                                                           m.threshold).mean()))
             for m in nq_layers(model)]
    try:
        yield rates
    finally:
        for h in hooks:
            h.remove()


def _train_epoch(s: "_Session", epoch: int, progress: bool) -> float:
    """One SGD pass; the mean training loss (over the samples of every rank; with
    ``train.activity_penalty`` its activity term included)."""
    s.trainable.train()
    loader, augment_rng = _train_loader(s, epoch), _augment_generator(s, epoch)
    loss_fn = nn.CrossEntropyLoss()
    total_loss, seen = 0.0, 0
    with _spike_rates(s.model, _penalised(s.cfg)) as rates:
        for batch, (x, y) in enumerate(tqdm(loader, desc=f"epoch {epoch + 1}", leave=False,
                                            disable=not progress), start=1):
            x, y = x.to(s.device), y.to(s.device)
            if s.cfg.train.augment:
                x = augment_batch(x, s.data.name, augment_rng)
                if s.dist.distributed:  # the crop's gather leaves a channels-last layout, whose weight
                    x = x.contiguous()  # gradients DDP would copy into its buckets stride by stride
            s.optimizer.zero_grad()
            loss = loss_fn(s.trainable(x), y)
            if rates is not None:
                loss = loss + s.cfg.train.activity_penalty * torch.stack(rates).mean()
                rates.clear()
            loss.backward()  # under DDP: the gradients are averaged over the ranks here
            _check_step(s, epoch, batch, "gradient of", first_non_finite_grad(s.model))
            s.optimizer.step()
            _check_step(s, epoch, batch, "parameter", _first_bad_parameter(s.model))
            total_loss += float(loss) * len(y)
            seen += len(y)
    if not s.dist.distributed:
        return total_loss / len(s.data.train)
    # BatchNorm: plain per-rank BN (torch's default), not SyncBatchNorm. Each rank normalises
    # with the statistics of its own train.batch_size / world_size samples, the usual DDP
    # approximation; SyncBatchNorm would match one process's batch statistics but runs on GPUs
    # only (torch 2.3; this project's common case is gloo on CPUs) and costs an all-reduce per
    # BN layer and step. The running statistics (used by σ, selection and conversion) are rank
    # 0's: DDP broadcasts rank 0's buffers before every forward, and the last forward of each
    # rank updated its own copy, so they are broadcast once more: one model on every rank.
    s.dist.broadcast_buffers(s.model)
    total_loss, seen = s.dist.sum([total_loss, seen]).tolist()
    return total_loss / seen


def first_non_finite_grad(model: nn.Module) -> Optional[str]:
    """The name of the first parameter whose gradient holds NaN or ±inf, or None. The same on
    every DDP rank: it is read after the gradients were averaged over the ranks."""
    for name, param in model.named_parameters():
        if param.grad is not None and not bool(torch.isfinite(param.grad).all()):
            return name
    return None


#: how :func:`_first_bad_parameter` names a collapsed NQ threshold (:func:`divergence_hint` reads it)
THRESHOLD_CULPRIT = "threshold λ"


def _first_bad_parameter(model: nn.Module) -> Optional[str]:
    """The first parameter that is non-finite, or an NQ threshold λ ≤ 0, described; or None."""
    for index, layer in enumerate(nq_layers(model)):
        value = float(layer.threshold.detach())
        if not value > 0:  # also NaN
            return f"{THRESHOLD_CULPRIT} of NQ layer {index} (now {value:.4g})"
    for name, param in model.named_parameters():
        if not bool(torch.isfinite(param.detach()).all()):
            return name
    return None


def divergence_hint(cfg: Config, culprit: str) -> str:
    """What to try after ``culprit`` (as :func:`_first_bad_parameter` or the gradient check names
    it) went bad. The cuba-matched activation's threshold gradient (−z/λ below a step, summed
    over a layer) can drive λ through 0: always at T = 1 (a single step), and at T = 2 on
    resnet-small (BENCHMARKS.md, "Low latency"); QCFS with the half-bias shift trains instead."""
    recipe = (f"train QCFS for it instead: nq.activation: qcfs, snn.cuba_shift: half-bias, and "
              f"fine-tune at T = {cfg.snn.timesteps} (finetune.epochs: 2)")
    if cfg.activation != "cuba-matched":
        return "lower train.lr"
    if cfg.snn.timesteps == 1:
        return ("the cuba-matched activation at snn.timesteps 1 is a single step whose threshold "
                f"gradient drives λ through 0 (with either snn.cuba_shift); {recipe}")
    if culprit.startswith(THRESHOLD_CULPRIT):
        return f"the cuba-matched activation's threshold gradient drove λ through 0; {recipe}, or lower train.lr"
    return "lower train.lr"


def _check_step(s: "_Session", epoch: int, batch: int, what: str, culprit: Optional[str]) -> None:
    if culprit is None:
        return
    hint = divergence_hint(s.cfg, culprit)
    raise TrainingDiverged(
        f"training diverged in epoch {epoch + 1}, batch {batch}: the {what} {culprit} is not valid "
        f"(NaN, infinite or a threshold <= 0). Nothing of this epoch was saved; the checkpoint "
        f"and resume state of the last finished epoch in {s.run_dir} are unchanged. Try: {hint}")


def _selection_accuracy(s: "_Session", net: Network) -> float:
    """SNN accuracy at snn.timesteps on the selection set. Under DDP each rank simulates its
    contiguous shard and the counts are summed: the fraction one process computes."""
    timesteps = s.cfg.snn.timesteps
    preds, labels = snn_predictions(net, _shard(s.select_set, s.dist), timesteps, s.cfg.eval.batch_size,
                                    dtype=TRAINING_SIM_DTYPE, device=s.device)
    correct, total = s.dist.sum([float((preds[timesteps - 1] == labels).sum()), float(len(labels))]).tolist()
    return correct / total


def _validation_ann_accuracy(s: "_Session") -> float:
    """ANN accuracy on the validation split (sharded over the ranks under DDP, counts summed)."""
    counts = ann_correct(s.model, _shard(s.data.val, s.dist), s.cfg.eval.batch_size, s.device)
    correct, total = s.dist.sum([float(c) for c in counts]).tolist()
    return correct / max(total, 1)


def _end_of_epoch(s: "_Session") -> dict:
    """σ re-estimation and SNN model selection after an epoch, timed separately (every rank
    ends with the same σ in its NQ layers and the same selection accuracy)."""
    cfg, start = s.cfg, time.perf_counter()
    sigmas, gaps, output_threshold = measure_residual(s.model, s.data.input_shape, s.sigma_x, cfg.snn.sigma_t,
                                                      cfg.snn.neuron, cfg.conversion_kwargs(), dist=s.dist)
    if cfg.nq.noise:
        _set_sigma(s.model, sigmas)
    sigma_s = time.perf_counter() - start
    start = time.perf_counter()
    net = to_ir(s.model, s.data.input_shape, cfg.snn.neuron, readout=cfg.snn.readout,
                output_threshold=output_threshold, **cfg.conversion_kwargs())
    snn_val = _selection_accuracy(s, net)
    select_s = time.perf_counter() - start
    return {"snn_val": snn_val, "sigma": sigmas, "mean_abs_gap": gaps, "output_threshold": output_threshold,
            "sigma_s": sigma_s, "select_s": select_s}


@dataclass
class _Session:
    """Everything one training run works with (built once, then used by every epoch).

    ``model`` is the network itself (saved, measured, converted: a DDP run's checkpoint has
    the same tensor names as a single process's); ``trainable`` is what the SGD pass calls,
    the DistributedDataParallel wrapper under DDP, else ``model``."""

    cfg: Config
    data: DatasetSplits
    dist: DistContext
    model: nn.Module
    trainable: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sigma_x: torch.Tensor
    select_set: object
    sampler: Optional[DistributedSampler] = None
    user: Optional[UserModel] = None  # the user's network's source (None: the registry's)
    pretrained: Optional[dict] = None  # the pretrained ANN's accuracies before fine-tuning

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run.dir)

    @property
    def device(self) -> torch.device:
        return self.dist.device


def _prepare_run_dir(cfg, dist: DistContext) -> Path:
    """``run.dir`` checked and created (:func:`pipeline.artifacts.prepare_run_dir`), without stale
    temporary files; an existing checkpoint of another configuration refused, or
    (``run.overwrite``) removed with every file made from it."""
    run_dir = prepare_run_dir(cfg.run.dir)
    refuse_legacy(run_dir)
    # every rank decides on the same files before rank 0 removes any
    replace = training_replaces(run_dir, cfg.to_dict(), cfg.run.overwrite)
    dist.barrier()
    if dist.is_main:
        remove_stale_temporaries(run_dir)
        if replace:
            removed = clear_trained(run_dir)
            log.warning("run.overwrite: removed %s of another configuration from %s", ", ".join(removed),
                        run_dir)
    dist.barrier()
    return run_dir


def _check_batch_split(cfg: Config, dist: DistContext) -> None:
    """Under DDP: train.batch_size is the global batch; it must split evenly over the ranks."""
    if dist.distributed and cfg.train.batch_size % dist.world_size:
        raise DistributedError(f"train.batch_size={cfg.train.batch_size} is the global batch and must split "
                               f"evenly over the {dist.world_size} processes")


def _check_samples_split(dist: DistContext, sizes: dict[str, int]) -> None:
    """Under DDP: at least one sample per rank in each sharded measurement (``sizes``: the
    config key that selects the samples -> how many there are)."""
    if not dist.distributed:
        return
    for key, size in sizes.items():
        if size < dist.world_size:
            raise DistributedError(f"{key}: {size} samples cannot be shared by {dist.world_size} processes")


def _thresholds_from_data(cfg: Config, data: DatasetSplits, model: nn.Module, dist: DistContext) -> None:
    """``nq.init_threshold: auto`` on a fresh start: every λ from :data:`DEFAULT_BATCHES` fixed,
    seeded batches of the training split (:func:`models.calibrate.init_thresholds_from_data`).
    A run that resumes keeps the λ of its resume state; a number is used as it is."""
    state = Path(cfg.run.dir) / TRAIN_STATE
    if cfg.nq.init_threshold != "auto" or state.exists() or state.is_symlink():
        return
    size = min(DEFAULT_BATCHES * cfg.train.batch_size, len(data.train))
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(cfg.train.seed + 2))
    x = torch.stack([data.train[int(i)][0] for i in order[:size]])
    lambdas = init_thresholds_from_data(model, list(torch.split(x, cfg.train.batch_size)), DEFAULT_PERCENTILE)
    if dist.is_main:
        log.info("initial lambda per NQ layer (nq.init_threshold auto: %gth percentile of the positive "
                 "pre-activations on %d training samples): %s", DEFAULT_PERCENTILE, size,
                 ", ".join(f"{v:.4g}" for v in lambdas))


def _initial_network(cfg: Config, data: DatasetSplits, user: Optional[UserModel]) -> tuple[nn.Module, Optional[dict]]:
    """The NQ network training starts from: the registry's architecture freshly initialised, or the
    user's module (with its pretrained weights) captured; and, with weights, the pretrained ANN's
    accuracy on the test and validation splits before any fine-tuning (else None)."""
    if user is None:
        if cfg.data.mean is not None:
            # a registry network starts from a fresh init: there is no pretrained scale to keep
            raise TrainingError("data.mean/data.std fold a pretrained network's input normalisation "
                                "into its first layer; they need model.factory, model.onnx or a module "
                                f"given to pipeline.api, not the registry's model.arch {cfg.arch}")
        return build_model(cfg.arch, data.input_shape, data.num_classes, cfg.nq.levels, cfg.nq.noise,
                           cfg.nq.start_threshold, **cfg.activation_kwargs()), None
    module = user.pretrained()
    normalization = normalization_of(cfg.to_dict())
    # the module as trained: on normalised inputs, which the fold below builds into the network
    as_trained = Normalized(module, normalization, data.input_shape) if normalization else module
    check_outputs(as_trained, data.input_shape, data.num_classes, user.name)
    pretrained = None
    if user.starts_from is not None:
        device, batch = torch.device("cpu"), cfg.eval.batch_size
        pretrained = {"weights": user.starts_from, "sha256": user.record["weights_sha256"],
                      "ann_test": ann_accuracy(as_trained, data.test, batch, device),
                      "ann_val": ann_accuracy(as_trained, data.val, batch, device)}
        log.info("pretrained ANN (%s) before NQ fine-tuning: test %.4f, validation %.4f", user.starts_from,
                 pretrained["ann_test"], pretrained["ann_val"])
    model = user.nq_network(module, data.input_shape, levels=cfg.nq.levels, noise=cfg.nq.noise,
                            init_threshold=cfg.nq.start_threshold, normalization=normalization,
                            **cfg.activation_kwargs())
    return model, pretrained


def _start_session(cfg: Config, data: DatasetSplits, dist: DistContext,
                   user: Optional[UserModel] = None) -> _Session:
    torch.manual_seed(cfg.train.seed)  # the same initial model on every rank
    model, pretrained = _initial_network(cfg, data, user)
    model = model.to(dist.device)
    _thresholds_from_data(cfg, data, model, dist)  # before DDP, whose wrap gives every rank rank 0's λ
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum,
                                weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.train.epochs)
    sigma_x = sigma_batch(cfg, data)
    select_set = selection_set(cfg, data)
    _check_samples_split(dist, {"nq.sigma_samples": len(sigma_x), "train.select_samples": len(select_set),
                                "data.val_fraction": len(data.val)})
    if not dist.distributed:
        return _Session(cfg, data, dist, model, model, optimizer, scheduler, sigma_x, select_set,
                        user=user, pretrained=pretrained)
    device_ids = [dist.device.index] if dist.device.type == "cuda" else None  # None: the CPU
    trainable = DistributedDataParallel(model, device_ids=device_ids)
    sampler = DistributedSampler(data.train, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                                 seed=cfg.train.seed, drop_last=False)
    return _Session(cfg, data, dist, model, trainable, optimizer, scheduler, sigma_x, select_set, sampler,
                    user, pretrained)


def train(cfg: Config, progress: bool = True, data: DatasetSplits | None = None,
          dist: DistContext | None = None, module: nn.Module | None = None) -> dict:
    """Train (or resume) the NQ ANN described by ``cfg`` (or the user's ``module``, given by
    :mod:`pipeline.api`); returns the best epoch's metrics (and ``pretrained``: the pretrained
    ANN's accuracies, or None).

    ``dist``: this process's part in a multi-process run; None: from torchrun's environment
    variables (:func:`pipeline.distributed.process_group`), a single process without them.
    Under DDP every rank returns the same history; rank 0 alone writes the files and shows
    progress, and every rank returns only once they are complete."""
    if dist is None:
        with process_group(peer_timeout(cfg)) as dist:
            return train(cfg, progress, data, dist, module)
    _check_batch_split(cfg, dist)
    run_dir = _prepare_run_dir(cfg, dist)
    data = data or load_dataset(cfg.data, seed=cfg.train.seed)
    s = _start_session(cfg, data, dist, user_model(cfg.model, module))
    history, best, start_epoch = _resume(s)
    progress = progress and dist.is_main
    bar = tqdm(range(start_epoch, cfg.train.epochs), desc="epochs", disable=not progress,
               initial=start_epoch, total=cfg.train.epochs)
    for epoch in bar:
        record = _run_epoch(s, epoch, progress)
        history.append(record)
        improved = record["snn_val"] > best["snn_val"]  # the same on every rank: snn_val is all-reduced
        if improved:
            best = dict(record)
        if dist.is_main:
            # atomic writes: a reader (a resuming rank, a later stage) sees the old or the new file
            if improved:
                save_checkpoint(run_dir / CHECKPOINT, _checkpoint(s, record, history))
            save_train_state(run_dir / TRAIN_STATE, s.model, s.optimizer, s.scheduler, epoch=epoch,
                             history=history, best=best, config=cfg.to_dict())
            bar.set_postfix(loss=f"{record['loss']:.3f}", ann=f"{record['ann_val']:.3f}",
                            snn=f"{record['snn_val']:.3f}")
            _log_epoch(record, cfg.snn.timesteps)
    if dist.is_main:
        _finish_checkpoint(s, history)
    dist.barrier()
    return {"best_epoch": best.get("epoch"), "best": best, "history": history, "pretrained": s.pretrained}


def _run_epoch(s: _Session, epoch: int, progress: bool) -> dict:
    """One SGD pass, the scheduler step, σ re-estimation and selection: the epoch's record."""
    start = time.perf_counter()
    loss = _train_epoch(s, epoch, progress)
    s.scheduler.step()
    record = {"epoch": epoch + 1, "loss": loss, "train_s": time.perf_counter() - start, **_end_of_epoch(s)}
    record["ann_val"] = _validation_ann_accuracy(s)
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
    complete = point.start_epoch == s.cfg.train.epochs
    if s.dist.is_main and complete:  # every rank restored the same state; rank 0 says so
        log.info("%s: training is already complete (%d epochs); nothing to train", state_path,
                 s.cfg.train.epochs)
    elif s.dist.is_main:
        log.info("resuming training from %s at epoch %d", state_path, point.start_epoch + 1)
    return point.history, point.best, point.start_epoch


def _finish_checkpoint(s: _Session, history: list) -> None:
    """Make sure a checkpoint exists and that its history covers every epoch (also those
    after the best one)."""
    path = s.run_dir / CHECKPOINT
    if not path.exists():
        save_checkpoint(path, _checkpoint(s, history[-1] if history else {}, history))
        return
    ckpt = load_checkpoint(path, s.user)
    ckpt["history"] = history
    save_checkpoint(path, ckpt)


def _checkpoint(s: _Session, record: dict, history: list) -> dict:
    return checkpoint_from_model(s.model, config=s.cfg.to_dict(), arch=None if s.user else s.cfg.arch,
                                 input_shape=s.data.input_shape, num_classes=s.data.num_classes,
                                 levels=s.cfg.nq.levels, record=record, history=history,
                                 activation=s.cfg.activation_kwargs(), source=s.user and s.user.record)
