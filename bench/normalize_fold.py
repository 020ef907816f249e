"""How much folding an input normalisation into a zero-padded first conv moves a pretrained net.

A plain ReLU ANN (defined here: 3×3 convs with zero padding 1, average pooling, a linear
readout) is trained on normalised inputs (x - mean) / std, with the dataset's own per-channel
mean and std, as a pretrained model would be. Then models.normalize.fold_input_normalization
folds the normalisation into its first conv, and both are scored on the whole test split:
the original on normalised inputs, the folded one on the raw [0, 1] pixels the chip receives.
They differ only where the first conv's window touches the zero-padded border. A control
arm with ``padding_mode='replicate'`` (exact fold) checks the measurement.

    python -m bench.normalize_fold [--datasets digits fashion-mnist] [--seeds 0 1 2]

Each finished (dataset, seed, padding) run is appended to bench/results/normalize_fold.jsonl;
a restart skips the runs already there.
"""
from __future__ import annotations

import argparse
import copy
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from bench.bench_common import append_result, load_results, mean_sd_percent
from models.normalize import fold_input_normalization
from pipeline.config import Config
from pipeline.data import load_dataset

RESULTS = Path(__file__).parent / "results" / "normalize_fold.jsonl"
EPOCHS = {"digits": 30, "fashion-mnist": 3}


def network(channels: int, side: int, classes: int, padding_mode: str) -> nn.Module:
    conv = dict(kernel_size=3, padding=1, padding_mode=padding_mode)
    return nn.Sequential(nn.Conv2d(channels, 16, **conv), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(32 * (side // 4) ** 2, classes))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return float((pred == y).float().mean()), pred


def run(name: str, seed: int, padding_mode: str) -> dict:
    data = load_dataset(Config.from_dict({"data": {"name": name}}).data, seed=seed)
    x, y = data.train.tensors
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    shape = (1, -1, 1, 1)
    torch.manual_seed(seed)
    model = network(x.shape[1], x.shape[2], data.num_classes, padding_mode)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    start = time.perf_counter()
    for _ in range(EPOCHS[name]):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model((x[idx] - mean.view(shape)) / std.view(shape)), y[idx])
            loss.backward()
            opt.step()
    model.eval()
    xt, yt = data.test.tensors
    acc_norm, pred_norm = accuracy(model, (xt - mean.view(shape)) / std.view(shape), yt)
    with warnings.catch_warnings():   # the zero-padding warning is what this measures
        warnings.simplefilter("ignore", UserWarning)
        folded = fold_input_normalization(copy.deepcopy(model), mean.tolist(), std.tolist())
    acc_fold, pred_fold = accuracy(folded, xt, yt)
    return {"dataset": name, "seed": seed, "padding_mode": padding_mode, "epochs": EPOCHS[name],
            "mean": mean.tolist(), "std": std.tolist(), "acc_normalised": acc_norm,
            "acc_folded": acc_fold, "agreement": float((pred_norm == pred_fold).float().mean()),
            "test_samples": len(yt), "train_seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["digits", "fashion-mnist"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = ap.parse_args()
    torch.set_num_threads(1)
    done = {(r["dataset"], r["seed"], r["padding_mode"]) for r in load_results(RESULTS)}
    for name in args.datasets:
        for seed in args.seeds:
            for mode in ("zeros", "replicate"):
                if (name, seed, mode) not in done:
                    row = run(name, seed, mode)
                    append_result(RESULTS, row)
                    print(row)
    rows = load_results(RESULTS)
    for name in args.datasets:
        for mode in ("zeros", "replicate"):
            sel = [r for r in rows if r["dataset"] == name and r["padding_mode"] == mode]
            if sel:
                cells = [mean_sd_percent(r[k] for r in sel)
                         for k in ("acc_normalised", "acc_folded", "agreement")]
                print(f"| {name} | {mode} | {len(sel)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
