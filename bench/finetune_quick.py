"""Fine-tuning at the deployment T (``finetune`` stage), measured quickly.

Per neuron and deployment T (``snn.timesteps``): trains Fashion-MNIST cnn-small (deploy.yaml
otherwise, ``--set`` changes every run) for ``--epochs``, then fine-tunes the converted SNN at
that T for ``--ft-epochs`` (:func:`pipeline.finetune.finetune`), and evaluates the network
before (the kept ``checkpoint.converted.safetensors``) and after on the whole test split in
Loihi 2 fixed point (quantizer + bit-accurate simulator): accuracy and SynOps per inference at
T = 1, 2, 4, the ANN's test accuracy, and the wall time of training and of fine-tuning.

Each finished run is appended to the results file as it ends; a restarted benchmark skips the
runs already there.

    .venv/bin/python bench/finetune_quick.py [--neurons if_soft cuba] [--timesteps 2 1]
        [--seeds 0] [--epochs 1] [--ft-epochs 2] [--set KEY=VALUE] [--report]
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from pipeline.artifacts import CHECKPOINT
from pipeline.checkpoints import load_checkpoint, model_from_checkpoint
from pipeline.data import load_dataset
from pipeline.finetune import CONVERTED, finetune
from pipeline.training import ann_accuracy, train

try:  # run as a script: bench/ is on sys.path, as for the other benchmarks
    import bench_common as common
    from sparsity import STEPS, fixed_point_by_t, integer_net
except ImportError:  # imported as bench.finetune_quick
    from bench import bench_common as common
    from bench.sparsity import STEPS, fixed_point_by_t, integer_net


def run_config(args, neuron: str, timesteps: int, seed: int):
    own = [f"data.name={args.dataset}", f"model.arch={args.arch}", f"train.epochs={args.epochs}",
           f"train.seed={seed}", f"train.batch_size={args.batch_size}",
           f"train.select_samples={args.select_samples}", f"snn.neuron={neuron}", f"snn.timesteps={timesteps}",
           f"finetune.epochs={args.ft_epochs}",
           f"run.dir={Path(args.out) / f'{neuron}-t{timesteps}-s{seed}'}"]
    return common.bench_config(args.config, own, args.extra)


def _evaluate(cfg, path: Path, data) -> dict:
    """ANN test accuracy and fixed-point accuracy and SynOps at T = 1, 2, 4 of one checkpoint file."""
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt).eval()
    accuracy, synops = fixed_point_by_t(integer_net(cfg, model, data.input_shape, ckpt), data.test,
                                        cfg.quant.input_bits)
    return {"ann": ann_accuracy(model, data.test, 1000, torch.device("cpu")), "snn_fixed": accuracy,
            "synops": synops, "lambda": ckpt["lambda"]}


def run_one(args, neuron: str, timesteps: int, seed: int, data) -> dict:
    cfg, started = run_config(args, neuron, timesteps, seed), time.perf_counter()
    train(cfg, progress=False, data=data)
    train_s = time.perf_counter() - started
    ft = finetune(cfg, progress=False, data=data)
    root = Path(cfg.run.dir)
    return {"neuron": neuron, "timesteps": timesteps, "seed": seed, "dataset": data.name, "arch": args.arch,
            "epochs": args.epochs, "ft_epochs": args.ft_epochs, "overrides": args.extra, "train_s": train_s,
            "finetune_s": ft.get("wall_time_s"), "finetune": {k: v for k, v in ft.items()},
            "before": _evaluate(cfg, root / CONVERTED, data), "after": _evaluate(cfg, root / CHECKPOINT, data),
            "wall_s": time.perf_counter() - started}


def _key(row: dict) -> tuple:
    return (row["neuron"], row["timesteps"], row["seed"], row["epochs"], row["ft_epochs"],
            tuple(row["overrides"]))


def report(rows: list[dict]) -> str:
    head = ("| neuron | --set | deploy T | seed | epochs + ft | ANN % before → after | "
            + " | ".join(f"T={t} fixed % before → after" for t in STEPS)
            + " | SynOps (M) at deploy T before → after | train s | fine-tune s |")
    lines = [head, "|" + "---|" * (9 + len(STEPS))]
    for r in rows:
        acc = [f"{100 * r['before']['snn_fixed'][str(t)]:.2f} → {100 * r['after']['snn_fixed'][str(t)]:.2f}"
               for t in STEPS]
        acc.append(" → ".join(f"{r[side]['synops'][str(r['timesteps'])] / 1e6:.2f}" for side in ("before", "after")))
        lines.append(f"| {r['neuron']} | {' '.join(r['overrides']) or '-'} | {r['timesteps']} | {r['seed']} | {r['epochs']} + {r['ft_epochs']} | "
                     f"{100 * r['before']['ann']:.2f} → {100 * r['after']['ann']:.2f} | " + " | ".join(acc)
                     + f" | {r['train_s']:.0f} | {r['finetune_s'] or 0:.0f} |")
    return "\n".join(lines + [f"\nProvenance: {common.provenance_summary(rows)}"])


def parse_args(argv=None):
    ap = common.seeded_arguments(__doc__.split("\n\n")[0], out="runs/finetune_quick",
                                 results="bench/results/finetune_quick.jsonl")
    ap.set_defaults(epochs=1, seeds=[0])
    ap.add_argument("--neurons", nargs="+", default=["if_soft", "cuba"])
    ap.add_argument("--timesteps", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--ft-epochs", type=int, default=2)
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="a further config override for every run, as the pipeline's --set")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args, _ = parse_args(argv), common.code_state()
    path = Path(args.results)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.report:
        path.parent.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            data = None
            for neuron in args.neurons:
                for steps in args.timesteps:
                    key = (neuron, steps, seed, args.epochs, args.ft_epochs, tuple(args.extra))
                    if key in {_key(r) for r in common.load_results(path)}:
                        continue
                    data = data or load_dataset(run_config(args, neuron, steps, seed).data, seed=seed)
                    row = run_one(args, neuron, steps, seed, data)
                    common.append_result(path, row)
                    print(report([row]).splitlines()[2], flush=True)
    print(report(common.load_results(path)))


if __name__ == "__main__":
    main()
