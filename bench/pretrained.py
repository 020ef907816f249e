"""Pretrained ANN weights as the start of NQ training, against NQ from scratch (Fashion-MNIST).

The network is defined here (:func:`build`, not in the registry): two 3×3 conv blocks
(conv, BatchNorm, ReLU, 2×2 max-pooling) and two linear layers, a plain ``nn.Module``.
Arms, per seed:

* ``ann``: trained as a plain ReLU ANN with max-pooling (plain torch: SGD, momentum,
  cosine schedule, ``--ann-epochs``) on the pipeline's training split; its state_dict is
  saved with safetensors in ``--out``;
* ``convert``: that ANN converted as it is (no NQ epoch; λ from the data, no σ);
* ``finetune``: NQ trained for ``--nq-epochs`` through the pipeline, starting from those
  weights (``model.factory`` = this script's :func:`build`, ``model.weights`` = the file;
  capture makes the ReLUs NQ activations and the max-pooling average pooling);
* ``scratch``: the same NQ training from a fresh initialisation for ``--ann-epochs +
  --nq-epochs`` epochs (the same total epoch count).

Seeds are paired (seed s of every arm shares the validation split and NQ's shuffling).
Each SNN is evaluated in Loihi 2 fixed point (quantizer + bit-accurate simulator,
potential readout) on the whole test split at T = 1, 2, 4, 8, at its selected epoch; the
wall time of convert and finetune counts the ANN pretraining too. Every finished run is
appended to the results file (JSON lines) at once; a restart skips what is there. Run it
from the repository root (the pipeline imports the factory as ``bench.pretrained:build``).

    OMP_NUM_THREADS=1 nohup .venv/bin/python bench/pretrained.py > runs/pretrained.log 2>&1 &
    .venv/bin/python bench/pretrained.py --report
"""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.data import load_dataset
from pipeline.training import ann_accuracy

try:  # run as a script: bench/ is on sys.path, as for the other benchmarks
    import bench_common as common
except ImportError:  # imported as bench.pretrained (the tests)
    from bench import bench_common as common

STEPS = (1, 2, 4, 8)
ARMS = ("ann", "convert", "finetune", "scratch")
#: the factory the pipeline imports (from the repository root, the working directory)
FACTORY = "bench.pretrained:build"


def build(num_classes: int = 10, in_channels: int = 1, width: int = 8, side: int = 28) -> nn.Module:
    """The benchmark's network for ``side``×``side`` images: a plain ReLU CNN with max-pooling."""
    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*block(in_channels, width), *block(width, 2 * width), nn.Flatten(),
                         nn.Linear(2 * width * (side // 4) ** 2, 128), nn.ReLU(), nn.Linear(128, num_classes))


def pretrain_ann(data, epochs: int, seed: int, batch_size: int, lr: float) -> tuple[nn.Module, list]:
    """The plain ANN trained with plain torch; (model, per-epoch seconds)."""
    torch.manual_seed(seed)
    model = build(data.num_classes, data.input_shape[0], side=data.input_shape[-1])
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loader = torch.utils.data.DataLoader(data.train, batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        model.train()
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        sched.step()
        seconds.append(time.perf_counter() - started)
    return model.eval(), seconds


def weights_path(args, seed: int) -> Path:
    return Path(args.out) / f"ann-s{seed}.safetensors"


def run_ann(args, seed: int, data) -> dict:
    """Pretrain, save the state_dict (safetensors), and the row of the ``ann`` arm."""
    started = time.perf_counter()
    model, seconds = pretrain_ann(data, args.ann_epochs, seed, args.batch_size, args.ann_lr)
    path = weights_path(args, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return {"arm": "ann", "seed": seed, "dataset": data.name, "ann_epochs": args.ann_epochs, "nq_epochs": 0,
            "ann": ann_accuracy(model, data.test, 1000, torch.device("cpu")), "epoch_s": seconds,
            "weights": str(path), "wall_s": time.perf_counter() - started}


def _run_key(row: dict) -> tuple:
    return row["arm"], row["seed"], row["ann_epochs"], row["nq_epochs"]


def arm_key(args, arm: str, seed: int) -> tuple:
    """What tells runs apart in the results file: arm, seed and the epochs it trained."""
    if arm in ("ann", "convert"):
        return arm, seed, args.ann_epochs, 0
    if arm == "finetune":
        return arm, seed, args.ann_epochs, args.nq_epochs
    return arm, seed, 0, args.ann_epochs + args.nq_epochs


def arm_config(args, arm: str, seed: int):
    """An NQ arm's config: the script's settings, the arm's, then ``--set`` (which wins)."""
    epochs = arm_key(args, arm, seed)[3]
    own = [f"data.name={args.dataset}", f"model.factory={FACTORY}", f"train.epochs={epochs}",
           f"train.seed={seed}", f"train.batch_size={args.batch_size}",
           f"train.select_samples={args.select_samples}", f"run.dir={Path(args.out) / f'{arm}-s{seed}'}"]
    if arm == "finetune":
        own.append(f"model.weights={weights_path(args, seed)}")
    return common.bench_config(args.config, own, args.extra)


def selected_model(cfg) -> tuple[nn.Module, dict]:
    """The NQ network of the run's selected epoch (rebuilt by the config's factory) and its checkpoint."""
    from pipeline.artifacts import CHECKPOINT
    from pipeline.checkpoints import load_checkpoint, model_from_checkpoint
    from pipeline.user_model import user_model
    user = user_model(cfg.model)
    ckpt = load_checkpoint(Path(cfg.run.dir) / CHECKPOINT, user)
    return model_from_checkpoint(ckpt, user), ckpt


def fixed_point_accuracy(cfg, model: nn.Module, data, output_threshold: float) -> dict[str, float]:
    """Loihi 2 fixed point (quantizer + bit-accurate simulator, potential readout), whole test split."""
    from hardware.fixed_point.quantize import quantize
    from pipeline.training import to_ir
    net = to_ir(model, data.input_shape, cfg.snn.neuron, readout="potential",
                output_threshold=output_threshold, **cfg.conversion_kwargs())
    net = quantize(net, input_bits=cfg.quant.input_bits, readout_steps=max(STEPS))
    return common.fixed_point_accuracy_by_t(net, data, cfg.quant.input_bits, STEPS)


def run_nq(args, arm: str, seed: int, data, ann_row: dict | None) -> dict:
    """Train one NQ arm through the pipeline and evaluate its selected epoch."""
    from pipeline.training import train
    cfg = arm_config(args, arm, seed)
    started = time.perf_counter()
    result = train(cfg, progress=False, data=data)
    nq_wall = time.perf_counter() - started
    model, ckpt = selected_model(cfg)
    pretrain_s = ann_row["wall_s"] if ann_row else 0.0
    record = {"arm": arm, "seed": seed, "dataset": data.name, "ann_epochs": arm_key(args, arm, seed)[2],
              "nq_epochs": cfg.train.epochs, "best_epoch": ckpt["epoch"], "overrides": args.extra,
              "selected": {"ann": ann_accuracy(model, data.test, 1000, torch.device("cpu")),
                           "snn_fixed": fixed_point_accuracy(cfg, model, data, ckpt["output_threshold"])},
              "nq_epoch_s": [r["train_s"] + r["sigma_s"] + r["select_s"] for r in result["history"]],
              "nq_wall_s": nq_wall, "pretrain_wall_s": pretrain_s, "pretrained": result["pretrained"]}
    record["wall_s"] = time.perf_counter() - started + pretrain_s
    return record


def run_convert(args, seed: int, data, ann_row: dict) -> dict:
    """The pretrained ANN converted as it is (no NQ epoch): captured (max- to average pooling,
    ReLU to QCFS), each λ from the data as ``nq.init_threshold: auto`` sets it, no σ."""
    from models.calibrate import DEFAULT_BATCHES, DEFAULT_PERCENTILE, init_thresholds_from_data
    from pipeline.user_model import from_factory
    cfg = arm_config(args, "finetune", seed)
    started = time.perf_counter()
    user = from_factory(FACTORY, cfg.model.kwargs, str(weights_path(args, seed)))
    model = user.nq_network(user.pretrained(), data.input_shape, levels=cfg.nq.levels, noise=False)
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))
    x = torch.stack([data.train[int(i)][0] for i in order[:DEFAULT_BATCHES * args.batch_size]])
    init_thresholds_from_data(model, list(torch.split(x, args.batch_size)), DEFAULT_PERCENTILE)
    model.eval()
    return {"arm": "convert", "seed": seed, "dataset": data.name, "ann_epochs": args.ann_epochs, "nq_epochs": 0,
            "selected": {"ann": ann_accuracy(model, data.test, 1000, torch.device("cpu")),
                         "snn_fixed": fixed_point_accuracy(cfg, model, data, 1.0)},
            "pretrain_wall_s": ann_row["wall_s"], "wall_s": time.perf_counter() - started + ann_row["wall_s"]}


def _cells(rows: list[dict]) -> list[str]:
    """ANN and SNN T cells of an arm (mean ± sd, %); the plain ANN has no SNN."""
    if rows and rows[0]["arm"] == "ann":
        return [common.mean_sd_percent(r["ann"] for r in rows)] + ["–"] * len(STEPS)
    return ([common.mean_sd_percent(r["selected"]["ann"] for r in rows)]
            + [common.mean_sd_percent(r["selected"]["snn_fixed"][str(t)] for r in rows) for t in STEPS])


def grid_rows(args, results: list[dict]) -> list[dict]:
    """The rows of the grid ``--ann-epochs`` / ``--nq-epochs`` (every arm of it)."""
    keys = {(arm, ann, nq) for arm, _, ann, nq in (arm_key(args, arm, 0) for arm in ARMS)}
    return [r for r in results if (r["arm"], r["ann_epochs"], r["nq_epochs"]) in keys]


def report(results: list[dict]) -> str:
    """Markdown: each arm (mean ± sd over seeds) and the paired difference finetune − scratch."""
    head = "| arm | seeds | epochs (ANN + NQ) | ANN | " + " | ".join(f"T={t}" for t in STEPS) + " | wall s |"
    datasets = ", ".join(sorted({r.get("dataset", "?") for r in results}))
    lines = [f"SNN: Loihi 2 fixed point, potential readout, whole {datasets} test split (selected "
             "epoch); % mean ± sd over seeds\n", head, "|---" * (len(STEPS) + 5) + "|"]
    for arm in ARMS:
        rows = [r for r in results if r["arm"] == arm]
        if rows:
            wall = common.mean_std(r["wall_s"] for r in rows)
            lines.append(f"| {arm} | {len(rows)} | {rows[0]['ann_epochs']} + {rows[0]['nq_epochs']} | "
                         + " | ".join(_cells(rows)) + f" | {wall[0]:.0f} ± {wall[1]:.0f} |")
    scratch = {r["seed"]: r for r in results if r["arm"] == "scratch"}
    pairs = [(r, scratch[r["seed"]]) for r in results if r["arm"] == "finetune" and r["seed"] in scratch]
    diff = [common.mean_sd_percent(a["selected"]["ann"] - b["selected"]["ann"] for a, b in pairs)]
    diff += [common.mean_sd_percent(a["selected"]["snn_fixed"][str(t)] - b["selected"]["snn_fixed"][str(t)]
                                    for a, b in pairs) for t in STEPS]
    wall = common.mean_std([a["wall_s"] - b["wall_s"] for a, b in pairs]) if pairs else (0.0, 0.0)
    lines += ["\nPaired difference finetune − scratch (points; wall s), mean ± sd over seeds\n",
              "| pairs | ANN | " + " | ".join(f"T={t}" for t in STEPS) + " | wall s |",
              "|---" * (len(STEPS) + 3) + "|",
              f"| {len(pairs)} | " + " | ".join(diff) + f" | {wall[0]:.0f} ± {wall[1]:.0f} |",
              f"\nProvenance: {common.provenance_summary(results)}"]
    return "\n".join(lines)


def parse_args(argv=None):
    ap = common.seeded_arguments(__doc__.split("\n\n")[0], out="runs/pretrained",
                                 results="bench/results/pretrained.jsonl")
    ap.add_argument("--ann-epochs", type=int, default=2, help="plain-ANN pretraining epochs")
    ap.add_argument("--nq-epochs", type=int, default=2, help="NQ fine-tuning epochs (scratch: ANN + NQ)")
    ap.add_argument("--ann-lr", type=float, default=0.05)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS,
                    help="run only these arms (e.g. ann: the pretraining alone)")
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="a further config override for both NQ arms, as the pipeline's --set")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # the pipeline's epoch lines
    warnings.filterwarnings("ignore", message="max-pooling")  # capture says it per run; the doc says it once
    common.code_state()  # the commit this process runs, taken before a long run
    path = Path(args.results)
    if args.report:
        print(report(grid_rows(args, common.load_results(path))))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:  # seed-major: every finished seed is a complete paired comparison
        data = None
        for arm in args.arms:
            done = {_run_key(r): r for r in common.load_results(path)}
            ann_row = done.get(arm_key(args, "ann", seed))
            if arm_key(args, arm, seed) in done and (arm != "ann" or weights_path(args, seed).exists()):
                continue
            data = data or load_dataset(arm_config(args, "scratch", seed).data, seed=seed)
            if arm == "ann":
                row = run_ann(args, seed, data)
            elif arm == "convert":
                row = run_convert(args, seed, data, ann_row)
            else:
                row = run_nq(args, arm, seed, data, ann_row if arm == "finetune" else None)
            common.append_result(path, row)
            print(f"{arm} seed {seed}: " + " | ".join(_cells([row])) + f", {row['wall_s']:.0f} s", flush=True)
    print(report(grid_rows(args, common.load_results(path))))


if __name__ == "__main__":
    main()
