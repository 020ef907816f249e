"""Initial λ (``nq.init_threshold``) against low-latency accuracy on the digits demo.

Trains the demo configuration (deploy.yaml: cnn-small, L = 4, σ and selection at
T = 4, 30 epochs) once per initial λ and prints the float-SNN test accuracy at
T = 1, 2, 4, 8 (potential readout) and the ANN's. Each setting keeps its run
directory; training resumes from it, so a restart re-evaluates instead of retraining.

    .venv/bin/python bench/init_threshold.py [--values 8 4 2] [--out runs/init_threshold]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline import stages

try:  # run as a script: bench/ is on sys.path, as for the other benchmarks
    from bench_common import bench_config
except ImportError:  # imported as bench.init_threshold (the tests)
    from bench.bench_common import bench_config


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--values", type=float, nargs="+", default=[8.0, 4.0, 2.0])
    ap.add_argument("--config", default="deploy.yaml")
    ap.add_argument("--out", default="runs/init_threshold")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="config override for every run, as the pipeline's --set (e.g. data.name=fashion-mnist)")
    args = ap.parse_args(argv)
    print("| initial λ | train s | ANN | T=1 | T=2 | T=4 | T=8 |")
    print("|---|---|---|---|---|---|---|")
    for value in args.values:
        run_dir = Path(args.out) / f"lambda0-{value:g}"
        cfg = bench_config(args.config, [f"nq.init_threshold={value}", f"run.dir={run_dir}"], args.set)
        started = time.perf_counter()
        stages.train(cfg, progress=False)  # resumes: a finished run trains nothing
        train_s = time.perf_counter() - started
        acc = stages.evaluate(cfg, progress=False)["accuracy"]
        cells = " | ".join(f"{acc['snn_float'][str(t)]:.4f}" for t in (1, 2, 4, 8))
        print(f"| {value:g} | {train_s:.0f} | {acc['ann']:.4f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
