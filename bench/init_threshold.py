"""Initial λ (``nq.init_threshold``: ``auto`` or a number) against low-latency accuracy.

Trains the configuration (default deploy.yaml: the digits demo, cnn-small, L = 4, σ and
selection at T = 4, 30 epochs; ``--set`` changes it for every run, e.g.
``--set data.name=fashion-mnist --set train.epochs=3``) once per initial λ and seed, and
records the ANN's test accuracy and the SNN's (potential readout) at T = 1, 2, 4, 8 in float
and in Loihi 2 fixed point (quantizer + bit-accurate simulator, whole test split), plus the
λ each layer started from (``auto``) and ended with.

Each finished run is appended to the results file (JSON lines) as it ends; a restarted
benchmark skips the runs already there, and a run directory resumes its training.

    .venv/bin/python bench/init_threshold.py [--values auto 8 2] [--seeds 0] [--set KEY=VALUE]
        [--out runs/init_threshold] [--results runs/init_threshold/results.jsonl] [--report]
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from pipeline import stages
from pipeline.checkpoints import load_checkpoint, model_from_checkpoint
from pipeline.config import Config
from pipeline.data import load_dataset

try:  # run as a script: bench/ is on sys.path, as for the other benchmarks
    import bench_common as common
    from nq_vs_qcfs import STEPS, fixed_point_accuracy
except ImportError:  # imported as bench.init_threshold (the tests)
    from bench import bench_common as common
    from bench.nq_vs_qcfs import STEPS, fixed_point_accuracy


class _InitialLambdas(logging.Handler):
    """Keeps the λ the training log reports for ``nq.init_threshold: auto``."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.text = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("initial lambda per NQ layer"):
            self.text = record.getMessage().rsplit(": ", 1)[-1]


def _value(text: str) -> str:
    """``auto`` or a positive number, as the config key takes it."""
    if text != "auto" and not float(text) > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not auto or a positive number")
    return text if text == "auto" else f"{float(text):g}"


def run_one(args, value: str, seed: int) -> dict:
    """Train (or resume) one setting and evaluate it: the results row."""
    run_dir = Path(args.out) / f"lambda0-{value}-seed{seed}"
    cfg: Config = common.bench_config(args.config, [f"nq.init_threshold={value}", f"train.seed={seed}",
                                                    f"run.dir={run_dir}"], args.set)
    handler = _InitialLambdas()
    logging.getLogger("pipeline.training").addHandler(handler)
    started = time.perf_counter()
    try:
        stages.train(cfg, progress=False)
    finally:
        logging.getLogger("pipeline.training").removeHandler(handler)
    train_s = time.perf_counter() - started
    acc = stages.evaluate(cfg, progress=False)["accuracy"]
    ckpt = load_checkpoint(cfg.run_dir / "checkpoint.safetensors")
    data = load_dataset(cfg.data, seed=cfg.train.seed)
    fixed = fixed_point_accuracy(model_from_checkpoint(ckpt), data, cfg.snn.neuron, cfg.snn.readout,
                                 ckpt["output_threshold"], cfg.quant.input_bits)
    return {"value": value, "seed": seed, "set": list(args.set), "train_s": train_s, "ann": acc["ann"],
            "snn_float": {str(t): acc["snn_float"][str(t)] for t in STEPS}, "snn_fixed": fixed,
            "lambda_start": handler.text, "lambda_end": ckpt["lambda"], "epoch": ckpt["epoch"]}


def print_table(rows) -> None:
    print("| initial λ | seed | train s | ANN | " + " | ".join(f"T={t} float / fixed" for t in STEPS) + " |")
    print("|---|---|---|---|" + "---|" * len(STEPS))
    for r in rows:
        cells = " | ".join(f"{r['snn_float'][str(t)]:.4f} / {r['snn_fixed'][str(t)]:.4f}" for t in STEPS)
        print(f"| {r['value']} | {r['seed']} | {r['train_s']:.0f} | {r['ann']:.4f} | {cells} |", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--values", type=_value, nargs="+", default=["auto", "8", "2"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--config", default="deploy.yaml")
    ap.add_argument("--out", default="runs/init_threshold")
    ap.add_argument("--results", default=None, help="JSON lines (default: <out>/results.jsonl)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="config override for every run, as the pipeline's --set (e.g. data.name=fashion-mnist)")
    ap.add_argument("--report", action="store_true", help="print the table of the results file and exit")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # epoch lines, initial λ
    results = Path(args.results or Path(args.out) / "results.jsonl")
    results.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["value"], r["seed"], tuple(r["set"])): r for r in common.load_results(results)}
    if not args.report:
        for seed in args.seeds:
            for value in args.values:
                if (value, seed, tuple(args.set)) not in done:
                    row = run_one(args, value, seed)
                    common.append_result(results, row)
                    done[(value, seed, tuple(args.set))] = row
                    print(f"finished λ0 {value} seed {seed}: λ start {row['lambda_start']}", flush=True)
    print_table([r for key, r in done.items() if key[2] == tuple(args.set)])


if __name__ == "__main__":
    main()
