"""Seeded comparison of the stock-Loihi (`cuba`) path against the paper's neuron.

Arms (same architecture, paired seeds: seed s of every arm shares initialisation, shuffling,
augmentation draws and validation split): ``if_soft`` (the NQ default, this project's neuron
process; the configuration of ``bench/nq_vs_qcfs.py``'s ``nq-sigma-T4`` arm, whose rows are
borrowed by default, ``--baseline-from``), ``cuba-qcfs`` (stock CUBA neurons, QCFS-trained),
``cuba-matched`` (trained with the CUBA neuron's own response, ``nq.activation: cuba-matched``),
and both cuba arms converted with the ``half-bias`` shift (``...-half-bias``).

Every run trains through ``pipeline.training.train``; the selected checkpoint is evaluated in
Loihi 2 fixed point (quantizer + bit-accurate simulator, potential readout) on the whole test
split at T = 1, 2, 4, 8, with its ANN test accuracy. Each finished run is appended to the
results file (JSON lines) at once; a restarted benchmark skips the runs already there.
``--lava`` checks Lava against the simulator on a sample of every finished run (stock lava-dl
netx for the cuba arms; own results file, resumable); ``--report`` prints the tables (mean ± sd,
paired differences against if_soft).

    nohup .venv/bin/python bench/board_path.py > runs/board_path.log 2>&1 &
    .venv/bin/python bench/board_path.py --lava
    .venv/bin/python bench/board_path.py --report
    # smoke run on the digits:
    .venv/bin/python bench/board_path.py --set data.name=digits --epochs 2 --seeds 0 \\
        --out runs/board_path_smoke --results runs/board_path_smoke.jsonl
"""
from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hardware.formats.netx import write_net
from hardware.fixed_point.quantize import quantize
from hardware.simulator import encode_input, simulate
from models.converter import convert
from pipeline.data import load_dataset
from pipeline.artifacts import CHECKPOINT
from pipeline.checkpoints import load_checkpoint, model_from_checkpoint
from pipeline.training import ann_accuracy, train

try:  # run as a script: bench/ is on sys.path, as for the other benchmarks
    import bench_common as common
except ImportError:  # imported as bench.board_path (the tests)
    from bench import bench_common as common

STEPS = (1, 2, 4, 8)
BASELINE = "if_soft"
#: Every arm: its overrides on top of the shared ones (the nq-sigma-T4 noise settings).
ARMS = {
    "if_soft": ["snn.neuron=if_soft"],
    "cuba-qcfs": ["snn.neuron=cuba", "nq.activation=qcfs"],
    "cuba-qcfs-half-bias": ["snn.neuron=cuba", "nq.activation=qcfs", "snn.cuba_shift=half-bias"],
    "cuba-matched": ["snn.neuron=cuba", "nq.activation=cuba-matched"],
    "cuba-matched-half-bias": ["snn.neuron=cuba", "nq.activation=cuba-matched",
                               "snn.cuba_shift=half-bias"],
}
SHARED = ["nq.noise=true", "snn.sigma_timesteps=4"]


def integer_net(model, cfg, input_shape: tuple, output_threshold: float | None = None):
    """Converted (with the arm's cuba shift) and quantized for T up to max(STEPS)."""
    float_net = convert(copy.deepcopy(model).cpu().eval(), input_shape, neuron=cfg.snn.neuron,
                        readout="potential", output_threshold=output_threshold,
                        **cfg.conversion_kwargs())
    return quantize(float_net, input_bits=cfg.quant.input_bits, readout_steps=max(STEPS))


def arm_config(args, arm: str, seed: int):
    """The arm's config: the script's settings, the arm's overrides, then ``--set`` (which wins,
    as on the pipeline's command line: ``--set data.name=digits`` picks the dataset)."""
    run_dir = Path(args.out) / f"{arm}-s{seed}"
    return common.bench_config(args.config, [
        f"data.name={args.dataset}", f"model.arch={args.arch}", f"train.epochs={args.epochs}",
        f"train.seed={seed}", f"train.batch_size={args.batch_size}",
        f"train.select_samples={args.select_samples}", f"run.dir={run_dir}"],
        [*SHARED, *ARMS[arm], *args.set])


def run_one(args, arm: str, seed: int, data) -> dict:
    cfg = arm_config(args, arm, seed)
    started = time.perf_counter()
    result = train(cfg, progress=False, data=data)
    train_wall = time.perf_counter() - started
    ckpt = load_checkpoint(Path(cfg.run.dir) / CHECKPOINT)
    model = model_from_checkpoint(ckpt)  # with the activation it was trained with
    net = integer_net(model, cfg, data.input_shape)
    history = result["history"]
    record = {
        **_run_key(args, arm, seed, cfg), "overrides": [*SHARED, *ARMS[arm], *args.set],
        "neuron": cfg.snn.neuron, "activation": cfg.activation, "cuba_shift": cfg.snn.cuba_shift,
        "best_epoch": ckpt["epoch"], "sigma_selected": ckpt["sigma"], "lambda": ckpt["lambda"],
        "selected": {"ann": ann_accuracy(model, data.test, 1000, torch.device("cpu")),
                     "snn_fixed": common.fixed_point_accuracy_by_t(net, data, cfg.quant.input_bits, STEPS)},
        "cost_s": {k: statistics.mean(r[k] for r in history) for k in ("train_s", "sigma_s", "select_s")},
        "train_wall_s": train_wall,
    }
    record["wall_s"] = time.perf_counter() - started
    return record


def _run_key(args, arm: str, seed: int, cfg) -> dict:
    """What tells runs apart, as the run's config resolved them (``--set`` included)."""
    return {"arm": arm, "seed": seed, "epochs": cfg.train.epochs, "arch": cfg.arch,
            "dataset": cfg.data.name, "set": list(args.set)}


def lava_agreement(net, data, input_bits: int, samples: int) -> dict:
    """Lava (loihi2-sim) against the bit-accurate simulator on the first test samples; a cuba
    network goes through its .net file and stock lava-dl netx."""
    from hardware.runtime.runner import run_lava

    x = torch.stack([data.test[i][0] for i in range(samples)]).numpy()
    payload = encode_input(x, input_bits)
    with tempfile.TemporaryDirectory() as tmp:
        stock = all(layer.neuron.kind == "cuba" for layer in net.weighted_layers)
        path = str(write_net(net, Path(tmp) / "model.net")) if stock else None
        lava = run_lava(net, payload, max(STEPS), progress=False, net_path=path)
    ref_v = simulate(net, torch.as_tensor(payload), max(STEPS)).output_potential[-1].numpy()
    equal = np.all(np.asarray(lava.output_potential) == ref_v, axis=1)
    return {"samples": samples, "agreement": float(equal.mean()), "loader": lava.loader,
            "lava_samples_per_s": lava.samples_per_s}


def lava_pass(args, results_path: Path, lava_path: Path) -> None:
    """Lava agreement for every finished run that has none yet (resumable)."""
    checked = {_key_tuple(r) for r in common.load_results(lava_path)}
    for record in common.load_results(results_path):
        if _key_tuple(record) in checked:
            continue
        cfg = common.bench_config(args.config,
                                  [f"data.name={record['dataset']}", f"model.arch={record['arch']}"],
                           record["overrides"])
        data = load_dataset(cfg.data, seed=record["seed"])
        run_dir = Path(args.out) / f"{record['arm']}-s{record['seed']}"
        model = model_from_checkpoint(load_checkpoint(run_dir / CHECKPOINT))
        lava = lava_agreement(integer_net(model, cfg, data.input_shape), data, cfg.quant.input_bits,
                              args.lava_samples)
        common.append_result(lava_path, {**{k: record[k] for k in _KEY}, **lava})
        print(f"Lava {record['arm']} seed {record['seed']}: agreement {lava['agreement']:.3f} on "
              f"{lava['samples']} samples ({lava['loader']})", flush=True)


_KEY = ("arm", "seed", "epochs", "arch", "dataset", "set")


def _key_tuple(record: dict) -> tuple:
    return tuple(tuple(record[k]) if isinstance(record[k], list) else record[k] for k in _KEY)


#: the arm of bench/nq_vs_qcfs.py that is this benchmark's if_soft arm (same overrides)
NQ_VS_QCFS_TWIN = "nq-sigma-T4"


def borrowed_baseline(path: Path) -> list[dict]:
    """if_soft rows taken from bench/nq_vs_qcfs.py's results (its ``nq-sigma-T4`` arm trains the
    same configuration with the same seeds), so the baseline is not trained twice."""
    rows = []
    for r in common.load_results(path):
        if r.get("arm") == NQ_VS_QCFS_TWIN and r.get("neuron", "if_soft") == "if_soft":
            rows.append({"arm": BASELINE, "seed": r["seed"], "epochs": r["epochs"], "arch": r["arch"],
                         "dataset": r["dataset"], "set": [], "selected": r["selected"],
                         "borrowed_from": f"{path.name} {NQ_VS_QCFS_TWIN}"})
    return rows


def all_results(args, results_path: Path) -> list[dict]:
    """This benchmark's rows plus borrowed if_soft rows for runs it has not trained itself."""
    own = common.load_results(results_path)
    if not args.baseline_from:
        return own
    have = {_key_tuple(r) for r in own}
    return own + [r for r in borrowed_baseline(Path(args.baseline_from)) if _key_tuple(r) not in have]


def _accuracy_table(results: list[dict], names: list[str], lava: dict) -> list[str]:
    lines = ["\n**selected epoch** (SNN Loihi 2 fixed point, potential readout, whole test split; "
             "% mean ± sd over seeds)\n",
             "| arm | seeds | ANN | T=1 | T=2 | T=4 | T=8 | Lava agreement (samples) |",
             "|---|---|---|---|---|---|---|---|"]
    for arm in names:
        rows = [r for r in results if r["arm"] == arm]
        cells = [common.mean_sd_percent([r["selected"]["snn_fixed"][str(t)] for r in rows]) for t in STEPS]
        checks = [lava[_key_tuple(r)] for r in rows if _key_tuple(r) in lava]
        agree = (f"{statistics.mean(c['agreement'] for c in checks):.3f} "
                 f"({sum(c['samples'] for c in checks)})" if checks else "–")
        ann = common.mean_sd_percent([r['selected']['ann'] for r in rows])
        lines.append(f"| {arm} | {len(rows)} | {ann} | "
                     + " | ".join(cells) + f" | {agree} |")
    return lines


def _paired_table(results: list[dict], names: list[str]) -> list[str]:
    lines = [f"\nPaired difference arm − {BASELINE} (selected epoch, points, mean ± sd over seeds)\n",
             "| arm | pairs | ANN | T=1 | T=2 | T=4 | T=8 |", "|---|---|---|---|---|---|---|"]
    base = {_key_tuple({**r, "arm": BASELINE}): r for r in results if r["arm"] == BASELINE}
    for arm in (n for n in names if n != BASELINE):
        pairs = [(r, base[_key_tuple({**r, "arm": BASELINE})]) for r in results
                 if r["arm"] == arm and _key_tuple({**r, "arm": BASELINE}) in base]
        ann = [a["selected"]["ann"] - b["selected"]["ann"] for a, b in pairs]
        cells = [common.mean_sd_percent([a["selected"]["snn_fixed"][str(t)] - b["selected"]["snn_fixed"][str(t)]
                           for a, b in pairs]) for t in STEPS]
        lines.append(f"| {arm} | {len(pairs)} | {common.mean_sd_percent(ann)} | " + " | ".join(cells) + " |")
    return lines


def report(results: list[dict], lava_results: list[dict] = ()) -> str:
    """Markdown: accuracy per arm (mean ± sd, %) with Lava agreement, and paired differences
    against if_soft; one block per (dataset, arch, epochs, extra overrides)."""
    lava = {_key_tuple(r): r for r in lava_results}
    lines = []
    for setting in dict.fromkeys((r["dataset"], r["arch"], r["epochs"], tuple(r["set"])) for r in results):
        rows = [r for r in results if (r["dataset"], r["arch"], r["epochs"], tuple(r["set"])) == setting]
        names = [a for a in ARMS if any(r["arm"] == a for r in rows)]
        lines.append(f"\n### {setting[0]}, {setting[1]}, {setting[2]} epochs"
                     + (f", {' '.join(setting[3])}" if setting[3] else ""))
        lines += _accuracy_table(rows, names, lava) + _paired_table(rows, names)
    lines.append(f"\nProvenance: {common.provenance_summary(r for r in results if 'borrowed_from' not in r)}")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    ap = common.seeded_arguments(__doc__.split("\n\n")[0], out="runs/board_path",
                          results="bench/results/board_path.jsonl", lava=True)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="config override for every arm (repeatable), as the pipeline's --set and "
                         "applied last, e.g. nq.init_threshold=2 or data.name=digits")
    ap.add_argument("--baseline-from", default="bench/results/nq_vs_qcfs.jsonl",
                    help="take the if_soft arm from this nq_vs_qcfs results file where it has the run "
                         "(its nq-sigma-T4 arm is the same configuration); '' to train it here")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    common.code_state()  # the commit this process runs, taken before a long run (the tree may move)
    results_path, lava_path = common.results_paths(args)
    if args.report:
        print(report(all_results(args, results_path), common.load_results(lava_path)))
        return
    results_path.parent.mkdir(parents=True, exist_ok=True)
    if args.lava:
        lava_pass(args, results_path, lava_path)
        print(report(all_results(args, results_path), common.load_results(lava_path)))
        return
    for seed in args.seeds:  # seed-major: every finished seed is a complete paired comparison
        data = None
        for arm in args.arms:
            cfg = arm_config(args, arm, seed)
            if _key_tuple(_run_key(args, arm, seed, cfg)) in {_key_tuple(r) for r in all_results(args, results_path)}:
                continue
            data = data or load_dataset(cfg.data, seed=cfg.train.seed)
            record = run_one(args, arm, seed, data)
            common.append_result(results_path, record)
            common.print_run(arm, seed, record, STEPS)
    print(report(all_results(args, results_path), common.load_results(lava_path)))


if __name__ == "__main__":
    main()
