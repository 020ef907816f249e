"""Low latency: what calibration (``snn.calibrate``) and SNN fine-tuning buy at T = 1, 2, 4.

Per neuron (``if_soft``; ``cuba`` with deploy.yaml's cuba settings: the cuba-matched
activation, no shift) and seed, ONE ANN is trained (Fashion-MNIST cnn-small, deploy.yaml
otherwise, ``snn.timesteps`` = the deployment T ``--deploy-t``, so σ, selection and the
cuba-matched activation are at it) and kept under ``--out``; every arm starts from it:

* ``converted``: the checkpoint converted as export does today;
* ``bias``, ``bias+threshold``: the same, then :func:`pipeline.stages.calibrate_network`
  (``snn.calibrate`` of that name) at the deployment T; ``bias-T1``, ``bias+threshold-T1``:
  calibrated at T = 1 instead (the network one would export for T = 1);
* ``finetuned``: a copy of the run directory fine-tuned by ``pipeline.finetune`` (its wall
  time recorded), converted;
* ``both``: the fine-tuned checkpoint, calibrated with ``--calibrate``.

Each arm is quantized for each T = 1, 2, 4 (the file export writes for that T) and run on the
bit-accurate simulator over the whole test split: accuracy and SynOps per inference
(``bench/sparsity.py``'s evaluation); the ANN's test accuracy and MACs per row. Rows go to
the results file as they finish, seed-major; a restart skips the rows already there.

``--lava`` then checks Lava (loihi2-sim) against the simulator on ``--lava-samples`` test images
of each finished row of ``--arms``, at the T the arm is for (``<results>_lava.jsonl``).

    nohup .venv/bin/python bench/low_latency.py > runs/low_latency.log 2>&1 &
    .venv/bin/python bench/low_latency.py --lava --arms converted bias-T1 finetuned
    .venv/bin/python bench/low_latency.py --report
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from hardware.fixed_point.quantize import quantize
from models.converter import count_ann_macs
from pipeline.artifacts import CHECKPOINT
from pipeline.checkpoints import load_checkpoint, model_from_checkpoint
from pipeline.data import load_dataset
from pipeline.finetune import finetune
from pipeline.stages import calibrate_network
from pipeline.training import ann_accuracy, to_ir, train

try:  # run as a script: bench/ is on sys.path, as for the other benchmarks
    import bench_common as common
    from sparsity import STEPS, fixed_point_by_t
except ImportError:  # imported as bench.low_latency (the tests)
    from bench import bench_common as common
    from bench.sparsity import STEPS, fixed_point_by_t

ARMS = ("converted", "bias", "bias+threshold", "bias-T1", "bias+threshold-T1", "finetuned", "both")
NEURONS = ("if_soft", "cuba")
#: how a row's T = 1, 2, 4 were run: each from the file made for it
FILES = "per-t"


def run_config(args, neuron: str, seed: int, run_dir: Path, extra=()):
    """The base run's config (deploy.yaml, the script's settings, ``--set``), in ``run_dir``."""
    own = [f"data.name={args.dataset}", f"model.arch={args.arch}", f"train.epochs={args.epochs}",
           f"train.seed={seed}", f"train.batch_size={args.batch_size}",
           f"train.select_samples={args.select_samples}", f"snn.neuron={neuron}",
           f"snn.timesteps={args.deploy_t}", f"run.dir={run_dir}", *extra]
    return common.bench_config(args.config, own, args.extra)


def base_dir(args, neuron: str, seed: int) -> Path:
    return Path(args.out) / f"{neuron}-s{seed}" / "base"


def finetuned_dir(args, neuron: str, seed: int, data) -> tuple[Path, dict]:
    """(the fine-tuned run directory, {wall_s, result}): a copy of the base run fine-tuned in
    place, once (a copy an interrupted run left behind is made again)."""
    ft_dir = arm_dir(args, "finetuned", neuron, seed)
    done = ft_dir / "FINETUNED.json"
    if done.exists():
        return ft_dir, json.loads(done.read_text())
    shutil.rmtree(ft_dir, ignore_errors=True)
    shutil.copytree(base_dir(args, neuron, seed), ft_dir)
    cfg = run_config(args, neuron, seed, ft_dir, [f"finetune.epochs={args.finetune_epochs}"])
    started = time.perf_counter()
    result = finetune(cfg, progress=False, data=data)
    record = {"wall_s": time.perf_counter() - started, "result": result}
    done.write_text(json.dumps(record, sort_keys=True))
    return ft_dir, record


def arm_network(cfg, run_dir: Path, calibrate: str, data, calibrate_t: int) -> tuple:
    """(model, float IR, calibration record, calibration s) of the arm: the checkpoint in
    ``run_dir`` converted and, if asked, calibrated at ``calibrate_t``."""
    model = model_from_checkpoint(ckpt := load_checkpoint(run_dir / CHECKPOINT)).eval()
    net = to_ir(model, data.input_shape, cfg.snn.neuron, readout=cfg.snn.readout,
                output_threshold=ckpt["output_threshold"], **cfg.conversion_kwargs())
    started, calibration = time.perf_counter(), None
    if calibrate != "none":
        net, calibration = calibrate_network(cfg.model_copy(update={"snn": cfg.snn.model_copy(
            update={"calibrate": calibrate, "timesteps": calibrate_t})}), net, ckpt, data)
    return model, ckpt, net, calibration, time.perf_counter() - started


def evaluate_arm(cfg, run_dir: Path, calibrate: str, data, calibrate_t: int) -> dict:
    """The arm's network (:func:`arm_network`, quantized for each T) on the whole test split:
    accuracy and SynOps by T, ANN accuracy and MACs."""
    model, ckpt, net, calibration, calibrate_s = arm_network(cfg, run_dir, calibrate, data, calibrate_t)
    accuracy, synops = {}, {}
    for t in STEPS:  # each T from the file export writes for it (the readout's bound is T's)
        qnet = quantize(net, input_bits=cfg.quant.input_bits, readout_steps=t)
        by_t = fixed_point_by_t(qnet, data.test, cfg.quant.input_bits, steps=(t,))
        accuracy[str(t)], synops[str(t)] = by_t[0][str(t)], by_t[1][str(t)]
    return {"ann": ann_accuracy(model, data.test, 1000, torch.device("cpu")),
            "ann_macs": int(sum(count_ann_macs(model, tuple(data.input_shape)))),
            "snn_fixed": accuracy, "synops": synops, "best_epoch": ckpt["epoch"],
            "calibrate": calibrate, "calibrate_s": calibrate_s, "calibration": calibration}


def arm_dir(args, arm: str, neuron: str, seed: int) -> Path:
    """Where the arm's checkpoint is: the base run, or its fine-tuned copy."""
    if arm in ("finetuned", "both"):
        return Path(args.out) / f"{neuron}-s{seed}" / f"finetune-e{args.finetune_epochs}"
    return base_dir(args, neuron, seed)


def lava_pass(args, results_path: Path, lava_path: Path) -> None:
    """Lava against the bit-accurate simulator for each finished row of ``--arms`` that has no
    check yet, on ``--lava-samples`` test images, with the file made for the T the arm is for
    (1 for the ``-T1`` arms, the deployment T otherwise). Resumable; Lava is slow on CPU."""
    checked = {_key(r) for r in common.load_results(lava_path)}
    for row in common.load_results(results_path):
        if row["arm"] not in args.arms or row["neuron"] not in args.neurons or _key(row) in checked:
            continue
        run_dir = arm_dir(args, row["arm"], row["neuron"], row["seed"])
        if not (run_dir / CHECKPOINT).exists():  # e.g. run on another machine: results only
            print(f"Lava {row['arm']} {row['neuron']} seed {row['seed']}: skipped, no checkpoint in "
                  f"{run_dir} (pass the --out the rows were made with)", flush=True)
            continue
        cfg = run_config(args, row["neuron"], row["seed"], run_dir)
        data = load_dataset(cfg.data, seed=row["seed"])
        steps = 1 if row["arm"].endswith("-T1") else row["deploy_t"]
        net = arm_network(cfg, run_dir, row["calibrate"], data, steps)[2]
        qnet = quantize(net, input_bits=cfg.quant.input_bits, readout_steps=steps)
        lava = common.lava_agreement(qnet, data.test, cfg.quant.input_bits, steps, args.lava_samples)
        common.append_result(lava_path, {**{k: row[k] for k in LAVA_KEYS}, "files": row.get("files"), **lava})
        print(f"Lava {row['arm']} {row['neuron']} seed {row['seed']} at T={steps}: agreement "
              f"{lava['agreement']:.3f} on {lava['samples']} samples", flush=True)


def run_arm(args, arm: str, neuron: str, seed: int, data, train_s: float) -> dict:
    """One results row."""
    started = time.perf_counter()
    run_dir, finetuned = base_dir(args, neuron, seed), {"wall_s": None, "result": None}
    if arm in ("finetuned", "both"):
        run_dir, finetuned = finetuned_dir(args, neuron, seed, data)
    cfg = run_config(args, neuron, seed, run_dir)
    calibrate = arm_calibration(args, arm)
    row = evaluate_arm(cfg, run_dir, calibrate, data, 1 if arm.endswith("-T1") else args.deploy_t)
    return {"arm": arm, "neuron": neuron, "seed": seed, "dataset": data.name, "arch": args.arch,
            "epochs": args.epochs, "deploy_t": args.deploy_t, "overrides": args.extra,
            "finetune_epochs": args.finetune_epochs if arm in ("finetuned", "both") else 0, "files": FILES,
            "finetune_s": finetuned["wall_s"], "finetune": finetuned["result"], "train_s": train_s, **row,
            "wall_s": time.perf_counter() - started}


#: the fields of a results row its Lava check repeats (:func:`_key` finds the pair)
LAVA_KEYS = ("arm", "neuron", "seed", "epochs", "deploy_t", "finetune_epochs", "calibrate", "overrides")


def _key(row: dict) -> tuple:
    return (row["arm"], row["neuron"], row["seed"], row["epochs"], row["deploy_t"],
            row["finetune_epochs"], row["calibrate"], tuple(row["overrides"]), row.get("files"))


def _row_key(args, arm: str, neuron: str, seed: int) -> tuple:
    return (arm, neuron, seed, args.epochs, args.deploy_t,
            args.finetune_epochs if arm in ("finetuned", "both") else 0,
            arm_calibration(args, arm), tuple(args.extra), FILES)


def arm_calibration(args, arm: str) -> str:
    """The snn.calibrate an arm exports with."""
    if arm in ("converted", "finetuned"):
        return "none"
    return args.calibrate if arm == "both" else arm.removesuffix("-T1")


def _table(rows: list[dict], neuron: str) -> list[str]:
    """Accuracy and SynOps per arm (mean ± sd over seeds) and the gap to the row's own ANN."""
    lines = [f"\n**{neuron}** (SNN Loihi 2 fixed point, potential readout, whole test split; "
             "% mean ± sd over seeds; SynOps per inference)\n",
             "| arm | seeds | ANN % | " + " | ".join(f"T={t} %" for t in STEPS) + " | "
             + " | ".join(f"T={t} − ANN" for t in STEPS) + " | "
             + " | ".join(f"T={t} SynOps" for t in STEPS) + " | extra cost s |",
             "|" + "---|" * (4 + 3 * len(STEPS))]
    for arm in ARMS:
        group = [r for r in rows if r["neuron"] == neuron and r["arm"] == arm]
        if not group:
            continue
        acc = [common.mean_sd_percent(r["snn_fixed"][str(t)] for r in group) for t in STEPS]
        gap = [common.mean_sd_percent(r["snn_fixed"][str(t)] - r["ann"] for r in group) for t in STEPS]
        ops = ["{:.3g} ± {:.2g}".format(*common.mean_std(r["synops"][str(t)] for r in group)) for t in STEPS]
        cost = common.mean_std((r["finetune_s"] or 0.0) + r["calibrate_s"] for r in group)[0]
        lines.append(f"| {arm} | {','.join(str(r['seed']) for r in group)} | "
                     f"{common.mean_sd_percent(r['ann'] for r in group)} | "
                     + " | ".join(acc + gap + ops) + f" | {cost:.0f} |")
    return lines


def _paired(rows: list[dict], neuron: str) -> list[str]:
    """Paired differences arm − converted (same seed, same ANN), points."""
    base = {r["seed"]: r for r in rows if r["neuron"] == neuron and r["arm"] == "converted"}
    lines = [f"\nPaired difference arm − converted ({neuron}, points, mean ± sd over seeds)\n",
             "| arm | pairs | " + " | ".join(f"T={t}" for t in STEPS) + " |", "|" + "---|" * (2 + len(STEPS))]
    for arm in ARMS[1:]:
        pairs = [(r, base[r["seed"]]) for r in rows
                 if r["neuron"] == neuron and r["arm"] == arm and r["seed"] in base]
        if pairs:
            lines.append(f"| {arm} | {len(pairs)} | " + " | ".join(common.mean_sd_percent(
                a["snn_fixed"][str(t)] - b["snn_fixed"][str(t)] for a, b in pairs) for t in STEPS) + " |")
    return lines


#: issue 22's goal: the deployed SNN within this many points of the trained ANN at T
GOAL_POINTS = {1: 5.0, 2: 1.0}


def _goal(rows: list[dict], neuron: str) -> list[str]:
    """Each arm against the ANN that was trained (the converted row's of the same seed: a
    fine-tuned checkpoint's own ANN moved with it): mean ± sd, the worst seed, and whether
    :data:`GOAL_POINTS` holds at that T on every seed."""
    base = {r["seed"]: r["ann"] for r in rows if r["neuron"] == neuron and r["arm"] == "converted"}
    lines = [f"\nAgainst the trained ANN ({neuron}, points: mean ± sd, worst seed; goal: "
             + ", ".join(f"T={t} within {g:g}" for t, g in GOAL_POINTS.items()) + " on every seed)\n",
             "| arm | seeds | " + " | ".join(f"T={t} − ANN (worst): goal" for t in GOAL_POINTS) + " |",
             "|" + "---|" * (2 + len(GOAL_POINTS))]
    for arm in ARMS:
        group = [r for r in rows if r["neuron"] == neuron and r["arm"] == arm and r["seed"] in base]
        if not group:
            continue
        cells = []
        for t, points in GOAL_POINTS.items():
            gaps = [r["snn_fixed"][str(t)] - base[r["seed"]] for r in group]
            verdict = "met" if min(gaps) >= -points / 100 else "missed"
            cells.append(f"{common.mean_sd_percent(gaps)} ({100 * min(gaps):.2f}): {verdict}")
        lines.append(f"| {arm} | {','.join(str(r['seed']) for r in group)} | " + " | ".join(cells) + " |")
    return lines


def _lava_lines(lava_rows: list[dict]) -> list[str]:
    """Lava's agreement with the simulator per neuron and arm (all seeds pooled)."""
    if not lava_rows:
        return []
    lines = ["\nLava (loihi2-sim) against the bit-accurate simulator: readout potentials equal, "
             "per neuron and arm, at the T the arm is for (seeds pooled)\n",
             "| neuron | arm | T | seeds | samples equal |", "|---|---|---|---|---|"]
    for neuron in NEURONS:
        for arm in ARMS:
            group = [r for r in lava_rows if r["neuron"] == neuron and r["arm"] == arm]
            if group:
                equal = sum(round(r["agreement"] * r["samples"]) for r in group)
                lines.append(f"| {neuron} | {arm} | {','.join(sorted({str(r['timesteps']) for r in group}))} | "
                             f"{','.join(str(r['seed']) for r in group)} | "
                             f"{equal} / {sum(r['samples'] for r in group)} |")
    return lines


def report(rows: list[dict], lava_rows: list[dict] = ()) -> str:
    """Markdown tables per neuron: accuracy, gap to the ANN, SynOps, paired differences, the
    goal; then Lava's agreement."""
    lines = [f"ANN MACs per inference: {', '.join(str(m) for m in sorted({r['ann_macs'] for r in rows}))}"]
    for neuron in [n for n in NEURONS if any(r["neuron"] == n for r in rows)]:
        lines += _table(rows, neuron) + _paired(rows, neuron) + _goal(rows, neuron)
    lines += _lava_lines(list(lava_rows))
    return "\n".join(lines + [f"\nProvenance: {common.provenance_summary(rows)}"])


def parse_args(argv=None):
    ap = common.seeded_arguments(__doc__.split("\n\n")[0], out="runs/low_latency",
                                 results="bench/results/low_latency.jsonl", lava=True)
    ap.set_defaults(epochs=2)  # cnn-small, two epochs: six base trainings in a session
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="a further config override for every run, as the pipeline's --set")
    ap.add_argument("--neurons", nargs="+", default=list(NEURONS), choices=NEURONS)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--deploy-t", type=int, default=2, help="snn.timesteps of the training runs")
    ap.add_argument("--calibrate", default="bias+threshold", help="snn.calibrate of the arm 'both'")
    ap.add_argument("--finetune-epochs", type=int, default=2)
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    common.code_state()  # the commit this process runs, taken before a long run
    path, lava_path = common.results_paths(args)
    if args.lava:
        lava_pass(args, path, lava_path)
    elif not args.report:
        path.parent.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:  # seed-major: each finished seed is a complete paired comparison
            for neuron in args.neurons:
                run_seed(args, path, neuron, seed)
    print(report(common.load_results(path), common.load_results(lava_path)))


def run_seed(args, path: Path, neuron: str, seed: int) -> None:
    """Train (or resume) the base run of ``neuron`` and ``seed`` and append every missing arm."""
    todo = [a for a in args.arms if _row_key(args, a, neuron, seed) not in
            {_key(r) for r in common.load_results(path)}]
    if not todo:
        return
    cfg = run_config(args, neuron, seed, base_dir(args, neuron, seed))
    data = load_dataset(cfg.data, seed=seed)
    history = train(cfg, progress=False, data=data)["history"]
    train_s = sum(r["train_s"] + r["sigma_s"] + r["select_s"] for r in history)  # also when resumed
    for arm in todo:
        row = run_arm(args, arm, neuron, seed, data, train_s)
        common.append_result(path, row)
        print(f"{arm} {neuron} seed {seed}: " + " / ".join(
            f"T={t} {row['snn_fixed'][str(t)]:.4f}" for t in STEPS) + f", ANN {row['ann']:.4f}", flush=True)


if __name__ == "__main__":
    import logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # the pipeline's epoch lines
    main()
