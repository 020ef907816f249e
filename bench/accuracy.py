"""Accuracy versus T: NQ (residual noise) against plain QCFS, through the whole pipeline.

For each setting it runs the real stages (train -> evaluate -> export -> run)
into its own run directory and prints ANN, float-SNN, fixed-point-SNN and
Lava accuracy at T = 1, 2, 4, 8 plus the Lava/reference agreement. Runs that
already finished (report.json with Lava results) are read back, not redone.

    .venv/bin/python bench/accuracy.py --dataset fashion-mnist --epochs 8 [--neuron if_soft] [--out runs/bench]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pipeline import stages
from pipeline.config import load_config


def run_setting(args, noise: bool) -> dict:
    run_dir = Path(args.out) / f"{args.dataset}-{args.neuron}-{'nq' if noise else 'qcfs'}-e{args.epochs}"
    report_path = run_dir / "report.json"
    if report_path.exists() and "lava" in json.loads(report_path.read_text()).get("accuracy", {}):
        return json.loads(report_path.read_text())
    cfg = load_config(args.config, [f"data.name={args.dataset}", f"nq.noise={str(noise).lower()}",
                                    f"train.epochs={args.epochs}", f"snn.neuron={args.neuron}",
                                    f"run.dir={run_dir}", f"run.lava_samples={args.lava_samples}"])
    started = time.perf_counter()
    for stage in (stages.train, stages.evaluate, stages.export, stages.run):
        stage(cfg, progress=False)
    stages.update_report(run_dir, {"bench_wall_time_s": time.perf_counter() - started})
    return json.loads(report_path.read_text())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--neuron", default="if_soft", choices=["if_soft", "cuba"])
    ap.add_argument("--lava-samples", type=int, default=50)
    ap.add_argument("--config", default="deploy.yaml")
    ap.add_argument("--out", default="runs/bench")
    args = ap.parse_args(argv)
    print(f"# accuracy vs T on {args.dataset}, {args.epochs} epochs, neuron {args.neuron}")
    print("| training | T | ANN | SNN float | SNN fixed | Lava (n) | agreement | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for noise in (True, False):
        report = run_setting(args, noise)
        acc, lava = report["accuracy"], report["lava"]
        for t in ("1", "2", "4", "8"):
            if t not in acc["snn_float"]:
                continue
            print(f"| {'NQ (noise)' if noise else 'QCFS (no noise)'} | {t} | {acc['ann']:.4f} | "
                  f"{acc['snn_float'][t]:.4f} | {acc['snn_fixed'][t]:.4f} | {acc['lava'][t]:.4f} "
                  f"({lava['samples']}) | {lava['agreement']:.3f} | {report.get('bench_wall_time_s', 0):.0f} |")


if __name__ == "__main__":
    main()
