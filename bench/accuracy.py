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

from hardware.kinds import NEURON_KINDS
from pipeline import stages

try:  # run as a script: bench/ is on sys.path, as for the other benchmarks
    from bench_common import bench_config, provenance
except ImportError:  # imported as bench.accuracy (the tests)
    from bench.bench_common import bench_config, provenance


def setting_config(args, noise: bool):
    """The setting's config: the script's flags, then ``--set`` (which wins, as on the pipeline's
    command line); the run directory is named after the resolved dataset, neuron and epochs."""
    script = [f"data.name={args.dataset}", f"nq.noise={str(noise).lower()}", f"train.epochs={args.epochs}",
              f"snn.neuron={args.neuron}", f"run.lava_samples={args.lava_samples}"]
    cfg = bench_config(args.config, script, args.set)
    name = f"{cfg.data.name}-{cfg.snn.neuron}-{'nq' if noise else 'qcfs'}-e{cfg.train.epochs}"
    return bench_config(args.config, [*script, f"run.dir={Path(args.out) / name}"], args.set)


def run_setting(args, noise: bool) -> dict:
    cfg = setting_config(args, noise)
    run_dir = Path(cfg.run.dir)
    report_path = run_dir / "report.json"
    if report_path.exists() and "lava" in json.loads(report_path.read_text()).get("accuracy", {}):
        return json.loads(report_path.read_text())
    started = time.perf_counter()
    for stage in (stages.train, stages.evaluate, stages.export, stages.run):
        stage(cfg, progress=False)
    stages.update_report(run_dir, {"bench_wall_time_s": time.perf_counter() - started,
                                   "bench_provenance": provenance()})
    return json.loads(report_path.read_text())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="fashion-mnist", help="shorthand for --set data.name=...")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--neuron", default="if_soft", choices=NEURON_KINDS)
    ap.add_argument("--lava-samples", type=int, default=50)
    ap.add_argument("--config", default="deploy.yaml")
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="config override for every setting, as the pipeline's --set, applied last")
    args = ap.parse_args(argv)
    cfg = setting_config(args, True)
    print(f"# accuracy vs T on {cfg.data.name}, {cfg.train.epochs} epochs, neuron {cfg.snn.neuron}")
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
