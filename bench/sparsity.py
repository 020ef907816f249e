"""Activity penalty (``train.activity_penalty``) against accuracy and synaptic work.

Trains Fashion-MNIST cnn-small (deploy.yaml otherwise; ``--set`` changes every run) once per
penalty weight and seed, the seeds paired (same initialisation, data order and noise), and
evaluates the selected epoch on the whole test split in Loihi 2 fixed point (quantizer +
bit-accurate simulator, the config's neuron and readout): accuracy, and SynOps per inference
(binary + the first layer's graded ones, :func:`hardware.analysis.activity.activity_from_sim`'s
counts over the first T steps) at T = 1, 2, 4, against the ANN's multiply-accumulates
(:func:`models.converter.count_ann_macs`) and its test accuracy.

Each finished run is appended to the results file as it ends; a restarted benchmark skips the
runs already there (and a run directory resumes its training). Runs go seed-major, so seed 0
of every weight finishes first.

    .venv/bin/python bench/sparsity.py [--weights 0 0.25 1] [--seeds 0 1 2] [--epochs 1]
        [--set KEY=VALUE] [--report]
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from hardware.analysis.activity import activity_from_sim
from hardware.fixed_point.quantize import quantize
from hardware.simulator import encode_input, simulate
from models.converter import count_ann_macs
from pipeline.artifacts import CHECKPOINT
from pipeline.checkpoints import load_checkpoint, model_from_checkpoint
from pipeline.data import load_dataset
from pipeline.operating_point import suggest_timesteps
from pipeline.training import ann_accuracy, to_ir, train

try:  # run as a script: bench/ is on sys.path, as for the other benchmarks
    import bench_common as common
except ImportError:  # imported as bench.sparsity (the tests)
    from bench import bench_common as common

STEPS = (1, 2, 4)
#: the drop from the ANN's validation accuracy the suggested T may have (the report's eval.max_drop)
SUGGEST_WITHIN = 0.01
#: test images per simulator batch (its spike trains are kept for the per-T activity)
SIM_BATCH = 250


def run_config(args, weight: float, seed: int):
    """One run's config: deploy.yaml, the script's settings, then ``--set`` (which wins)."""
    own = [f"data.name={args.dataset}", f"model.arch={args.arch}", f"train.epochs={args.epochs}",
           f"train.seed={seed}", f"train.batch_size={args.batch_size}",
           f"train.select_samples={args.select_samples}", f"train.activity_penalty={weight:g}",
           f"run.dir={Path(args.out) / f'w{weight:g}-s{seed}'}"]
    return common.bench_config(args.config, own, args.extra)


def fixed_point_by_t(net, split, input_bits: int, steps=STEPS) -> tuple[dict, dict]:
    """({T: accuracy}, {T: SynOps per inference}) of the integer ``net`` on a whole split
    (``data.test`` or ``data.val``), for each T of ``steps``."""
    correct = np.zeros(len(steps))
    synops = np.zeros(len(steps))
    x = torch.stack([split[i][0] for i in range(len(split))]).numpy()
    y = torch.as_tensor([int(split[i][1]) for i in range(len(split))])
    for begin in range(0, len(x), SIM_BATCH):
        payload = encode_input(x[begin:begin + SIM_BATCH], input_bits)
        res = simulate(net, torch.as_tensor(payload), max(steps), record_spikes=True)
        preds = res.predictions()
        trains = res.layer_spike_trains
        for k, t in enumerate(steps):
            correct[k] += float((preds[t - 1] == y[begin:begin + len(payload)]).sum())
            res.layer_spike_trains = [tr[:t] for tr in trains]
            report = activity_from_sim(net, res, payload).to_dict()
            synops[k] += report["totals"]["synops"] * report["samples"]
    n = len(x)
    return ({str(t): correct[k] / n for k, t in enumerate(steps)},
            {str(t): synops[k] / n for k, t in enumerate(steps)})


def integer_net(cfg, model, input_shape, ckpt: dict):
    """The selected model as the pipeline quantizes it (the config's neuron, readout and shift)."""
    net = to_ir(model, input_shape, cfg.snn.neuron, readout=cfg.snn.readout,
                output_threshold=ckpt["output_threshold"], **cfg.conversion_kwargs())
    return quantize(net, input_bits=cfg.quant.input_bits, readout_steps=max(STEPS))


def run_one(args, weight: float, seed: int, data) -> dict:
    """Train (or resume) one weight and seed and evaluate its selected epoch: the results row."""
    cfg, started = run_config(args, weight, seed), time.perf_counter()
    result = train(cfg, progress=False, data=data)
    train_s, ckpt = time.perf_counter() - started, load_checkpoint(Path(cfg.run.dir) / CHECKPOINT)
    model = model_from_checkpoint(ckpt).eval()
    accuracy, synops = fixed_point_by_t(integer_net(cfg, model, data.input_shape, ckpt), data.test,
                                        cfg.quant.input_bits)
    return {"weight": weight, "seed": seed, "dataset": data.name, "arch": args.arch, "epochs": args.epochs,
            "overrides": args.extra, "best_epoch": ckpt["epoch"], "train_s": train_s,
            "ann": ann_accuracy(model, data.test, 1000, torch.device("cpu")),
            "ann_macs": int(sum(count_ann_macs(model, tuple(data.input_shape)))),
            "snn_fixed": accuracy, "synops": synops, "lambda": ckpt["lambda"],
            "history": [{k: r[k] for k in ("epoch", "loss", "ann_val", "snn_val")} for r in result["history"]],
            "wall_s": time.perf_counter() - started}


def validation_row(args, row: dict, data) -> dict:
    """The suggested T of a finished run, as the report makes it: the smallest T whose fixed-point
    accuracy on the validation split is within 1 point of the ANN's there (never the test split),
    with the test-split SynOps per ANN MAC at that T."""
    cfg = run_config(args, row["weight"], row["seed"])
    ckpt = load_checkpoint(Path(cfg.run.dir) / CHECKPOINT)
    model = model_from_checkpoint(ckpt).eval()
    snn_val = fixed_point_by_t(integer_net(cfg, model, data.input_shape, ckpt), data.val, cfg.quant.input_bits)[0]
    ann_val = ann_accuracy(model, data.val, 1000, torch.device("cpu"))
    suggested, _ = suggest_timesteps(ann_val, snn_val, SUGGEST_WITHIN)
    return {"weight": row["weight"], "seed": row["seed"], "epochs": row["epochs"], "overrides": row["overrides"],
            "ann_val": ann_val, "snn_fixed_val": snn_val, "suggested_t": suggested,
            "synops_per_mac_at_suggested": None if suggested is None
            else row["synops"][str(suggested)] / row["ann_macs"]}


def _key(row: dict) -> tuple:
    return row["weight"], row["seed"], row["epochs"], tuple(row["overrides"])


def report(rows: list[dict]) -> str:
    """The table: per weight, mean ± sd over seeds of accuracy (%) and SynOps per ANN MAC by T."""
    head = ("| weight | epochs | seeds | ANN % | " + " | ".join(f"T={t} fixed %" for t in STEPS) + " | "
            + " | ".join(f"T={t} SynOps/MAC" for t in STEPS) + " |")
    lines = [head, "|" + "---|" * (4 + 2 * len(STEPS))]
    for weight, epochs in sorted({(r["weight"], r["epochs"]) for r in rows}):
        group = [r for r in rows if (r["weight"], r["epochs"]) == (weight, epochs)]
        acc = [common.mean_sd_percent(r["snn_fixed"][str(t)] for r in group) for t in STEPS]
        ratio = ["{:.3f} ± {:.3f}".format(*common.mean_std(r["synops"][str(t)] / r["ann_macs"] for r in group))
                 for t in STEPS]
        lines.append(f"| {weight:g} | {epochs} | {','.join(str(r['seed']) for r in group)} | "
                     f"{common.mean_sd_percent(r['ann'] for r in group)} | " + " | ".join(acc + ratio) + " |")
    macs = sorted({r["ann_macs"] for r in rows})
    return "\n".join(lines + ["", *_operating_points(rows), f"\nANN MACs per inference: {', '.join(map(str, macs))}",
                              f"Provenance: {common.provenance_summary(rows)}"])


def _operating_points(rows: list[dict], within: float = 0.01) -> list[str]:
    """Per weight and epochs: the smallest T whose mean fixed-point accuracy is within ``within``
    of the mean ANN accuracy (both on the test split: a reading of the benchmark, not a model
    selection), and the SynOps per ANN MAC there."""
    lines = []
    for weight, epochs in sorted({(r["weight"], r["epochs"]) for r in rows}):
        group = [r for r in rows if (r["weight"], r["epochs"]) == (weight, epochs)]
        ann = common.mean_std(r["ann"] for r in group)[0]
        at = next((t for t in STEPS if common.mean_std(r["snn_fixed"][str(t)] for r in group)[0] >= ann - within),
                  None)
        if at is None:
            lines.append(f"- w = {weight:g}, {epochs} epoch(s): no T in {STEPS} within {100 * within:g} point of the ANN")
            continue
        ratio = common.mean_std(r["synops"][str(at)] / r["ann_macs"] for r in group)
        lines.append(f"- w = {weight:g}, {epochs} epoch(s): smallest T within {100 * within:g} point of the ANN "
                     f"(means over seeds {','.join(str(r['seed']) for r in group)}): T = {at}, "
                     f"SynOps/MAC {ratio[0]:.3f} ± {ratio[1]:.3f}")
    return lines


def parse_args(argv=None):
    ap = common.seeded_arguments(__doc__.split("\n\n")[0], out="runs/sparsity",
                                 results="bench/results/sparsity.jsonl")
    ap.set_defaults(epochs=1)  # ~30 min for seed 0 of three weights on 2 busy cores
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.25, 1.0])
    ap.add_argument("--validation", action="store_true",
                    help="only add the suggested T (validation split) of the finished runs (resumable)")
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="a further config override for every run, as the pipeline's --set")
    return ap.parse_args(argv)


def _validation_path(path: Path) -> Path:
    return path.with_name(path.stem + "_validation.jsonl")


def backfill_validation(args, path: Path) -> None:
    """Append the suggested T (:func:`validation_row`) of every finished run of these settings
    that has none yet, from its kept checkpoint (resumable)."""
    done = {_key(r) for r in common.load_results(_validation_path(path))}
    for row in common.load_results(path):
        if _key(row) in done or (row["epochs"], row["overrides"]) != (args.epochs, args.extra):
            continue
        data = load_dataset(run_config(args, row["weight"], row["seed"]).data, seed=row["seed"])
        common.append_result(_validation_path(path), validation_row(args, row, data))
        print(f"weight {row['weight']:g} seed {row['seed']}: validation done", flush=True)


def validation_report(rows: list[dict]) -> list[str]:
    """Per weight: the suggested T of each seed and the SynOps per ANN MAC there (mean ± sd)."""
    lines = ["", "Suggested T (validation split, within 1 point of the ANN there) and SynOps/MAC at it (test):", ""]
    for weight, epochs in sorted({(r["weight"], r["epochs"]) for r in rows}):
        group = sorted((r for r in rows if (r["weight"], r["epochs"]) == (weight, epochs)), key=lambda r: r["seed"])
        at = [r["synops_per_mac_at_suggested"] for r in group if r["suggested_t"] is not None]
        ratio = "{:.3f} ± {:.3f}".format(*common.mean_std(at)) if at else "–"
        by_seed = ", ".join(f"{r['seed']}: {r['suggested_t']}" for r in group)
        lines.append(f"- w = {weight:g}, {epochs} epoch(s): suggested T by seed {by_seed}; SynOps/MAC {ratio}")
    return lines


def main(argv=None) -> None:
    args, _ = parse_args(argv), common.code_state()  # the commit this process runs, before a long run
    path = Path(args.results)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # the pipeline's epoch lines
    if args.validation:
        backfill_validation(args, path)
    elif not args.report:
        path.parent.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            data = None
            for weight in args.weights:
                row_key = (weight, seed, args.epochs, tuple(args.extra))
                if row_key in {_key(r) for r in common.load_results(path)}:
                    continue
                data = data or load_dataset(run_config(args, weight, seed).data, seed=seed)
                row = run_one(args, weight, seed, data)
                common.append_result(path, row)
                print(f"weight {weight:g} seed {seed}: " + report([row]).splitlines()[2], flush=True)
    print(report(common.load_results(path)))
    print("\n".join(validation_report(common.load_results(_validation_path(path)))))


if __name__ == "__main__":
    main()
