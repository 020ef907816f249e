"""Residual vs plain network on Fashion-MNIST through the whole pipeline.

For each architecture (default ``resnet-small`` and ``vgg-small``) one ``python -m pipeline
all`` run: train (4 epochs, the nq_vs_qcfs grid's settings), export the .net, Loihi 2 fixed
point on the whole test split, Lava (loihi2-sim) on ``--lava-samples`` test images compared
with the bit-accurate simulator, probes, energy and resource fit. Each run writes its own
``report.json`` under ``--out/<arch>``; a run whose report already has a Lava result is
skipped, so the benchmark resumes where it stopped. ``--report`` prints the markdown table
from those reports.

    nohup .venv/bin/python bench/resnet_vs_vgg.py > runs/resnet_vs_vgg.log 2>&1 &
    .venv/bin/python bench/resnet_vs_vgg.py --report
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

STEPS = ("1", "2", "4", "8")
SETTINGS = ["data.name=fashion-mnist", "train.epochs=4", "train.batch_size=128",
            "train.select_samples=2000"]


def finished(report_path: Path) -> bool:
    if not report_path.exists():
        return False
    return bool(json.loads(report_path.read_text()).get("accuracy", {}).get("lava"))


def run_arch(args, arch: str) -> None:
    run_dir = Path(args.out) / arch
    if finished(run_dir / "report.json"):
        print(f"{arch}: done already ({run_dir})", flush=True)
        return
    sets = [*SETTINGS, f"model.arch={arch}", f"train.seed={args.seed}",
            f"run.lava_samples={args.lava_samples}", f"run.dir={run_dir}", *args.set]
    cmd = [sys.executable, "-m", "pipeline", "all", "--config", args.config]
    for item in sets:
        cmd += ["--set", item]
    subprocess.run(cmd, check=True)


def _synops(report: dict) -> float:
    layers = report["probes"]["layers"]
    return sum(layer["synops_binary"] + layer["synops_graded"] for layer in layers)


def table(out: Path, archs: list[str]) -> str:
    lines = ["| arch | ANN | T=1 | T=2 | T=4 | T=8 | SynOps / inference (T=8) | Lava agreement (samples) "
             "| cores | fits | wall s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arch in archs:
        path = out / arch / "report.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        acc = r["accuracy"]
        lava = r.get("lava", {})
        cells = [f"{100 * acc['snn_fixed'][t]:.2f}" if t in acc["snn_fixed"] else "–" for t in STEPS]
        lines.append(f"| {arch} | {100 * acc['ann']:.2f} | " + " | ".join(cells)
                     + f" | {_synops(r):,.0f} | {lava.get('agreement', float('nan')):.3f} "
                       f"({r['config']['run']['lava_samples']})"
                     + f" | {r['resources']['cores']} | {r['resources']['fits']} | {r['wall_time_s']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", nargs="+", default=["resnet-small", "vgg-small"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lava-samples", type=int, default=16)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--config", default="deploy.yaml")
    ap.add_argument("--out", default="runs/resnet_vs_vgg")
    ap.add_argument("--report", action="store_true", help="print the table and exit")
    args = ap.parse_args(argv)
    if not args.report:
        for arch in args.archs:
            run_arch(args, arch)
    print(table(Path(args.out), args.archs))


if __name__ == "__main__":
    main()
