"""Seeded comparison: plain QCFS against NQ (residual noise), σ measured at T = 4 and at a target T.

Every arm trains with the same seeds (paired: seed s of one arm and seed s of
another share initialisation, shuffling, augmentation draws and validation split)
through the pipeline's own training loop, then is evaluated in Loihi 2 fixed
point (quantizer + bit-accurate reference simulator, the paper's potential
readout) on the whole test split at T = 1, 2, 4, 8, both at the selected epoch
(best SNN validation accuracy at ``snn.timesteps``) and at the last epoch. Per
run it also records the ANN test accuracy, the spike-count readout on the same
weights (``snn.readout: spikes``), the per-epoch cost split (train / σ /
selection seconds) and, on a sample, the agreement of Lava with the simulator.

Each finished run is appended to the results file (JSON lines) as soon as it
ends; a restarted benchmark skips the runs already there (and resumes an
interrupted training from its resume state). ``--lava`` runs the Lava
check on the finished runs (its own results file, also resumable); ``--report``
prints the markdown tables from the results files without running anything.

    nohup .venv/bin/python bench/nq_vs_qcfs.py > runs/nq_vs_qcfs.log 2>&1 &
    .venv/bin/python bench/nq_vs_qcfs.py --lava
    .venv/bin/python bench/nq_vs_qcfs.py --report
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from hardware.fixed_point.quantize import quantize
from hardware.kinds import NEURON_KINDS, NeuronKind, Readout
from pipeline.data import load_dataset
from pipeline.artifacts import CHECKPOINT, TRAIN_STATE
from pipeline.checkpoints import load_checkpoint, model_from_checkpoint, read_train_state
from pipeline.training import ann_accuracy, to_ir, train

try:  # run as a script: bench/ is on sys.path, as for the other benchmarks
    import bench_common as common
except ImportError:  # imported as bench.nq_vs_qcfs (the tests)
    from bench import bench_common as common

STEPS = (1, 2, 4, 8)


def arms(target_t: int) -> dict[str, list[str]]:
    return {"qcfs": ["nq.noise=false"],
            "nq-sigma-T4": ["nq.noise=true", "snn.sigma_timesteps=4"],
            f"nq-sigma-T{target_t}": ["nq.noise=true", f"snn.sigma_timesteps={target_t}"]}


def fixed_point_accuracy(model, data, neuron: NeuronKind, readout: Readout, output_threshold: float,
                         input_bits: int, batch: int = 1000) -> dict[str, float]:
    """Loihi 2 fixed point (quantizer + bit-accurate simulator) on the whole test split."""
    net = quantize(to_ir(model, data.input_shape, neuron, readout=readout, output_threshold=output_threshold),
                   input_bits=input_bits, readout_steps=max(STEPS))
    return common.fixed_point_accuracy_by_t(net, data, input_bits, STEPS, batch)


def lava_agreement(model, data, neuron: str, input_bits: int, samples: int) -> dict:
    """Lava (loihi2-sim) against the bit-accurate simulator on the first test samples."""
    net = quantize(to_ir(model, data.input_shape, neuron), input_bits=input_bits, readout_steps=max(STEPS))
    return common.lava_agreement(net, data.test, input_bits, max(STEPS), samples)


def last_epoch_model(run_dir: Path, ckpt: dict):
    model = model_from_checkpoint(ckpt)
    state = read_train_state(run_dir / TRAIN_STATE, model)
    model.load_state_dict(state.model)
    return model.eval(), state.history[-1]


def arm_config(args, arm: str, seed: int):
    """The arm's config: the script's settings, the arm's overrides, then ``--set`` (which wins,
    as on the pipeline's command line: ``--set data.name=digits`` picks the dataset)."""
    run_dir = Path(args.out) / f"{arm}-s{seed}"
    return common.bench_config(args.config, [f"data.name={args.dataset}", f"model.arch={args.arch}",
                                      f"train.epochs={args.epochs}", f"train.seed={seed}",
                                      f"train.batch_size={args.batch_size}", f"snn.neuron={args.neuron}",
                                      f"train.select_samples={args.select_samples}", f"run.dir={run_dir}"],
                        [*arms(args.target_t)[arm], *args.extra])


def _run_key(cfg, arm: str) -> tuple:
    """What tells runs apart in the results file, as the run's config resolved them."""
    return arm, cfg.train.seed, cfg.train.epochs, cfg.arch, cfg.data.name, cfg.snn.neuron


def run_one(args, arm: str, seed: int, data) -> dict:
    cfg = arm_config(args, arm, seed)
    run_dir, overrides = Path(cfg.run.dir), [*arms(args.target_t)[arm], *args.extra]
    started = time.perf_counter()
    result = train(cfg, progress=False, data=data)
    train_wall = time.perf_counter() - started
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    best_model = model_from_checkpoint(ckpt)
    last_model, last_record = last_epoch_model(run_dir, ckpt)
    bits, neuron = cfg.quant.input_bits, cfg.snn.neuron
    cpu = torch.device("cpu")
    history = result["history"]
    record = {
        "arm": arm, "seed": cfg.train.seed, "overrides": overrides, "arch": cfg.arch, "epochs": cfg.train.epochs,
        "dataset": cfg.data.name, "neuron": neuron, "best_epoch": ckpt["epoch"],
        "selected": {"ann": ann_accuracy(best_model, data.test, 1000, cpu),
                     "snn_fixed": fixed_point_accuracy(best_model, data, neuron, "potential",
                                                       ckpt["output_threshold"], bits),
                     "snn_fixed_spike_vote": fixed_point_accuracy(best_model, data, neuron, "spikes",
                                                                  ckpt["output_threshold"], bits)},
        "last": {"ann": ann_accuracy(last_model, data.test, 1000, cpu),
                 "snn_fixed": fixed_point_accuracy(last_model, data, neuron, "potential",
                                                   last_record["output_threshold"], bits)},
        "sigma_selected": ckpt["sigma"],
        "cost_s": {k: statistics.mean(r[k] for r in history) for k in ("train_s", "sigma_s", "select_s")},
        "train_wall_s": train_wall,
    }
    record["wall_s"] = time.perf_counter() - started
    return record


def lava_pass(args, results_path: Path, lava_path: Path) -> None:
    """Lava agreement for every finished run that has none yet (a separate, resumable pass:
    Lava is slow on CPU and is run on a sample only)."""
    checked = {(r["arm"], r["seed"]) for r in common.load_results(lava_path)}
    for record in common.load_results(results_path):
        if (record["arm"], record["seed"]) in checked:
            continue
        run_dir = Path(args.out) / f"{record['arm']}-s{record['seed']}"
        if not (run_dir / CHECKPOINT).exists():  # e.g. trained on another machine: results only
            print(f"Lava {record['arm']} seed {record['seed']}: skipped, no checkpoint at "
                  f"{run_dir / CHECKPOINT} (pass the --out the run was trained with)", flush=True)
            continue
        cfg = common.bench_config(args.config, [f"data.name={record['dataset']}"], record.get("overrides", []))
        data = load_dataset(cfg.data, seed=record["seed"])
        model = model_from_checkpoint(load_checkpoint(run_dir / CHECKPOINT))
        lava = lava_agreement(model, data, record["neuron"], cfg.quant.input_bits, args.lava_samples)
        common.append_result(lava_path, {"arm": record["arm"], "seed": record["seed"], **lava})
        print(f"Lava {record['arm']} seed {record['seed']}: agreement {lava['agreement']:.3f} "
              f"on {lava['samples']} samples", flush=True)


def report(results: list[dict], lava_results: list[dict] = ()) -> str:
    """Markdown: accuracy per arm (mean ± sd over seeds, %) and paired differences against QCFS."""
    lava_by_run = {(r["arm"], r["seed"]): r for r in lava_results}
    results = [dict(r, lava=lava_by_run[(r["arm"], r["seed"])]) if (r["arm"], r["seed"]) in lava_by_run else r
               for r in results]
    names = list(dict.fromkeys(r["arm"] for r in results))
    lines = []
    for where in ("selected", "last"):
        lines += [f"\n**{where} epoch** (SNN fixed point, potential readout, whole test split; % mean ± sd "
                  "over seeds)\n", "| arm | seeds | ANN | T=1 | T=2 | T=4 | T=8 |", "|---|---|---|---|---|---|---|"]
        for arm in names:
            rows = [r for r in results if r["arm"] == arm]
            cells = [common.mean_sd_percent([r[where]["snn_fixed"][str(t)] for r in rows]) for t in STEPS]
            lines.append(f"| {arm} | {len(rows)} | {common.mean_sd_percent([r[where]['ann'] for r in rows])} | "
                         + " | ".join(cells) + " |")
        lines += [f"\nPaired difference arm − qcfs ({where} epoch, points, mean ± sd over seeds)\n",
                  "| arm | pairs | ANN | T=1 | T=2 | T=4 | T=8 |", "|---|---|---|---|---|---|---|"]
        base = {r["seed"]: r for r in results if r["arm"] == "qcfs"}
        for arm in names[1:] if names and names[0] == "qcfs" else [n for n in names if n != "qcfs"]:
            pairs = [(r, base[r["seed"]]) for r in results if r["arm"] == arm and r["seed"] in base]
            ann = [a[where]["ann"] - b[where]["ann"] for a, b in pairs]
            cells = [common.mean_sd_percent([a[where]["snn_fixed"][str(t)] - b[where]["snn_fixed"][str(t)]
                                             for a, b in pairs]) for t in STEPS]
            lines.append(f"| {arm} | {len(pairs)} | {common.mean_sd_percent(ann)} | "
                         + " | ".join(cells) + " |")
    lines += ["\nReadout gain on the same (selected) weights: potential − spike vote, points\n",
              "| arm | T=1 | T=2 | T=4 | T=8 |", "|---|---|---|---|---|"]
    for arm in names:
        rows = [r for r in results if r["arm"] == arm]
        lines.append(f"| {arm} | " + " | ".join(
            common.mean_sd_percent([r["selected"]["snn_fixed"][str(t)]
                                    - r["selected"]["snn_fixed_spike_vote"][str(t)] for r in rows])
            for t in STEPS) + " |")
    lines += ["\nPer-epoch cost (s, mean over epochs and seeds) and Lava agreement\n",
              "| arm | train_s | sigma_s | select_s | (sigma+select)/epoch | Lava agreement (samples) |",
              "|---|---|---|---|---|---|"]
    for arm in names:
        rows = [r for r in results if r["arm"] == arm]
        cost = {k: statistics.mean(r["cost_s"][k] for r in rows) for k in ("train_s", "sigma_s", "select_s")}
        share = (cost["sigma_s"] + cost["select_s"]) / sum(cost.values())
        lava = [r["lava"] for r in rows if "lava" in r]
        agree = (f"{statistics.mean(x['agreement'] for x in lava):.3f} ({sum(x['samples'] for x in lava)})"
                 if lava else "–")
        lines.append(f"| {arm} | {cost['train_s']:.1f} | {cost['sigma_s']:.2f} | {cost['select_s']:.2f} | "
                     f"{100 * share:.1f} % | {agree} |")
    lines.append(f"\nProvenance: {common.provenance_summary(results)}")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    ap = common.seeded_arguments(__doc__.split("\n\n")[0], out="runs/nq_vs_qcfs",
                          results="bench/results/nq_vs_qcfs.jsonl", lava=True)
    ap.add_argument("--target-t", type=int, default=1, help="T of the third arm's σ measurement")
    ap.add_argument("--arms", nargs="+", default=None,
                    help="run only these arms (default: all three; names as in the results)")
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="a further config override for every arm, as the pipeline's --set and applied "
                         "last (e.g. nq.init_threshold=2, data.name=digits); use its own --results "
                         "file: runs are told apart by arm, seed, epochs, arch, dataset and neuron only")
    ap.add_argument("--neuron", default="if_soft", choices=NEURON_KINDS)
    args = ap.parse_args(argv)
    unknown = set(args.arms or ()) - set(arms(args.target_t))
    if unknown:
        ap.error(f"--arms: unknown arm(s) {sorted(unknown)}; choose from {sorted(arms(args.target_t))}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    common.code_state()  # the commit this process runs, taken before a long run (the tree may move)
    results_path, lava_path = common.results_paths(args)
    if args.report:
        print(report(common.load_results(results_path), common.load_results(lava_path)))
        return
    results_path.parent.mkdir(parents=True, exist_ok=True)
    if args.lava:
        lava_pass(args, results_path, lava_path)
        print(report(common.load_results(results_path), common.load_results(lava_path)))
        return
    for seed in args.seeds:  # seed-major: every finished seed is a complete paired comparison
        data = None
        for arm in arms(args.target_t):
            if args.arms and arm not in args.arms:
                continue
            cfg = arm_config(args, arm, seed)
            done = {(r["arm"], r["seed"], r["epochs"], r["arch"], r["dataset"], r["neuron"])
                    for r in common.load_results(results_path)}
            if _run_key(cfg, arm) in done:
                continue
            data = data or load_dataset(cfg.data, seed=cfg.train.seed)
            record = run_one(args, arm, seed, data)
            common.append_result(results_path, record)
            common.print_run(arm, seed, record, STEPS)
    print(report(common.load_results(results_path), common.load_results(lava_path)))


if __name__ == "__main__":
    main()
