"""Training on several processes: ``torchrun --nproc_per_node=N`` (DDP, gloo) against one process.

The same training (default: Fashion-MNIST, cnn-small, 2 epochs, global batch 128, σ on 512
and selection on 2,000 validation images, seed 0) is launched once per entry of ``--grid``
(``PROCESSESxTHREADS``; default on a C-core machine: ``1xC`` one process with torch's
default thread count, ``1x1`` one single-threaded process, ``Nx(C/N)`` for N = 2). One
process runs as ``python -m pipeline train``, N > 1 as ``python -m torch.distributed.run
--standalone --nproc_per_node=N -m pipeline train``, each with OMP_NUM_THREADS set to the
entry's threads (torchrun's own default is 1 per process). Then ``python -m pipeline
evaluate`` (one process) scores the kept model on the test split (float SNN at T = 4).

Per run, from its report.json: the training throughput (training images per second of
SGD pass, ``train_s``), the epoch time (the SGD pass alone, and SGD + σ + selection), the
wall time of the whole training launch (start-up, data, every epoch, files), the best
epoch and the ANN and float-SNN test accuracy.

Each finished run is appended to ``--results`` (JSON lines) as soon as it ends; a restarted
benchmark skips the runs already there (an unfinished run starts again from scratch: its
timings would otherwise mix two launches). ``--report`` prints the markdown section from
the results and writes it into BENCHMARKS.md between ``<!-- ddp:begin -->`` and
``<!-- ddp:end -->``. Timings need a machine that does nothing else.

    nohup .venv/bin/python bench/ddp_scaling.py > runs/ddp_scaling.log 2>&1 &
    .venv/bin/python bench/ddp_scaling.py --report
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

try:  # run as a script: bench/ is on sys.path, as for the other benchmarks
    from bench_common import code_state, provenance
except ImportError:  # imported as bench.ddp_scaling (the tests)
    from bench.bench_common import code_state, provenance
SETTINGS = {"data.name": "fashion-mnist", "model.arch": "cnn-small", "train.epochs": "2",
            "train.batch_size": "128", "nq.sigma_samples": "512", "train.select_samples": "2000",
            "eval.timesteps": "4"}
BEGIN, END = "<!-- ddp:begin -->", "<!-- ddp:end -->"
COMMAND = "nohup .venv/bin/python bench/ddp_scaling.py > runs/ddp_scaling.log 2>&1 &"
CPUS = os.cpu_count() or 1


def default_grid() -> list[str]:
    return list(dict.fromkeys([f"1x{CPUS}", "1x1", f"2x{max(1, CPUS // 2)}"]))


def parse_entry(entry: str) -> tuple[int, int]:
    """``"2x1"`` -> (2 processes, 1 thread each)."""
    try:
        processes, threads = (int(part) for part in entry.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--grid entry {entry!r} is not PROCESSESxTHREADS (e.g. 2x1)") from None
    if processes < 1 or threads < 1:
        raise SystemExit(f"--grid entry {entry!r}: processes and threads must be >= 1")
    return processes, threads


def run_settings(args) -> dict[str, str]:
    """The config overrides of every run (the grid's, then ``--set``), as key -> value text."""
    settings = {**SETTINGS, "train.seed": str(args.seed)}
    for item in args.set:
        key, _, value = item.partition("=")
        settings[key] = value
    return settings


def run_key(settings: dict[str, str], processes: int, threads: int) -> str:
    return json.dumps({"settings": settings, "processes": processes, "threads": threads}, sort_keys=True)


def _pipeline_command(stage: str, processes: int, settings: dict[str, str], run_dir: Path,
                      config: str) -> list[str]:
    launcher = [sys.executable, "-m", "pipeline"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
        "-m", "pipeline"]
    cmd = [*launcher, stage, "--config", config, "--quiet"]
    for key, value in {**settings, "run.dir": str(run_dir)}.items():
        cmd += ["--set", f"{key}={value}"]
    return cmd


def training_samples(config: str, settings: dict[str, str]) -> int:
    """Images in the training split (validation carved out) of the benchmark's dataset."""
    from pipeline.config import load_config
    from pipeline.data import load_dataset

    cfg = load_config(config, [f"{key}={value}" for key, value in settings.items()])
    return len(load_dataset(cfg.data, seed=cfg.train.seed).train)


def run_one(args, settings: dict[str, str], processes: int, threads: int, samples: int) -> dict:
    """Train with ``processes`` × ``threads``, evaluate in one process; the run's record."""
    name = f"{settings['data.name']}-{settings['model.arch']}-seed{settings['train.seed']}-{processes}x{threads}"
    run_dir = Path(args.out) / name
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: the timings of one launch only
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    print(f"{name}: training with {processes} process(es) x {threads} thread(s)", flush=True)
    start = time.perf_counter()
    subprocess.run(_pipeline_command("train", processes, settings, run_dir, args.config), env=env, cwd=REPO,
                   check=True, stdout=subprocess.DEVNULL)
    train_wall = time.perf_counter() - start
    env["OMP_NUM_THREADS"] = str(CPUS)
    subprocess.run(_pipeline_command("evaluate", 1, settings, run_dir, args.config), env=env, cwd=REPO,
                   check=True, stdout=subprocess.DEVNULL)
    report = json.loads((run_dir / "report.json").read_text())
    return {"key": run_key(settings, processes, threads), "processes": processes, "threads": threads,
            "settings": settings, "train_samples": samples, "train_wall_s": train_wall,
            **summarise(report, samples), "machine": machine(), "provenance": _run_provenance(threads)}


def _run_provenance(threads: int) -> dict:
    """This process's provenance with the training processes' threads: each was started with
    OMP_NUM_THREADS = ``threads``, which is what torch takes as its thread count."""
    return {**provenance(), "torch_threads": threads, "omp_num_threads": str(threads)}


def summarise(report: dict, samples: int) -> dict:
    """Timings (means over the epochs) and accuracies of one finished run's report."""
    history = report["training"]["history"]
    timesteps = str(report["config"]["snn"]["timesteps"])
    train_s = [r["train_s"] for r in history]
    epoch_s = [r["train_s"] + r["sigma_s"] + r["select_s"] for r in history]
    return {"epochs": len(history), "train_samples_per_s": samples * len(train_s) / sum(train_s),
            "train_s_per_epoch": sum(train_s) / len(train_s), "epoch_s": sum(epoch_s) / len(epoch_s),
            "best_epoch": report["training"]["best_epoch"], "timesteps": int(timesteps),
            "ann_test": report["accuracy"]["ann"], "snn_float_test": report["accuracy"]["snn_float"][timesteps]}


def machine() -> dict:
    return {"cpus": CPUS, "platform": platform.platform(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d"), "load_average": list(os.getloadavg())}


def load_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _settings_of(record: dict) -> str:
    return json.dumps(record["settings"], sort_keys=True)


def table(results: list[dict]) -> str:
    """One row per run; the speed-up is against one process with all cores' threads (else the
    first one-process row) of the same settings."""
    lines = ["| processes × threads | epochs | train images/s | speed-up | SGD pass s/epoch "
             "| epoch s (SGD + σ + selection) | training launch wall s | load avg at end | best epoch "
             "| ANN test % | SNN float test % (T) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    singles = sorted((r for r in results if r["processes"] == 1), key=lambda r: -r["threads"])
    baseline = {_settings_of(r): r for r in reversed(singles)}
    for r in sorted(results, key=lambda r: (_settings_of(r), r["processes"], -r["threads"])):
        base = baseline.get(_settings_of(r))
        speedup = f"{r['train_samples_per_s'] / base['train_samples_per_s']:.2f}×" if base else "–"
        lines.append(f"| {r['processes']} × {r['threads']} | {r['epochs']} | {r['train_samples_per_s']:,.0f} "
                     f"| {speedup} | {r['train_s_per_epoch']:.1f} | {r['epoch_s']:.1f} "
                     f"| {r['train_wall_s']:.0f} | {r['machine']['load_average'][0]:.1f} | {r['best_epoch']} "
                     f"| {100 * r['ann_test']:.2f} | {100 * r['snn_float_test']:.2f} ({r['timesteps']}) |")
    return "\n".join(lines)


def section(results: list[dict]) -> str:
    """The BENCHMARKS.md section body (between the markers)."""
    if not results:
        return f"Not measured yet. Command: `{COMMAND}`, then `.venv/bin/python bench/ddp_scaling.py --report`."
    settings = ", ".join(f"{k}={v}" for k, v in sorted(results[0]["settings"].items()))
    m = results[0]["machine"]
    return "\n".join([
        f"Command: `{COMMAND}` (resumable; `--report` rewrites this section from "
        "`bench/results/ddp_scaling.jsonl`).",
        f"Settings (`--set` on deploy.yaml): {settings}. Machine: {m['cpus']} CPUs, {m['platform']}, "
        f"Python {m['python']}, {m['date']}.",
        "Threads: each row states processes × OMP_NUM_THREADS per process (torchrun sets 1 per "
        "process when it is unset; one process uses all cores by default). train.batch_size is the "
        "global batch (each of N ranks takes batch / N), so every row runs the same optimizer steps; "
        "accuracies differ by the order of the samples and the per-rank BN batch statistics "
        "(seed-level noise), not by the recipe.",
        "", table(results)])


def update_benchmarks(path: Path, body: str) -> bool:
    """Replace the text between the ddp markers of ``path``; False if the markers are missing."""
    text = path.read_text()
    if BEGIN not in text or END not in text:
        return False
    head, rest = text.split(BEGIN, 1)
    path.write_text(head + BEGIN + "\n" + body + "\n" + END + rest.split(END, 1)[1])
    return True


def run_grid(args, results_path: Path) -> None:
    settings = run_settings(args)
    done = {r["key"] for r in load_results(results_path)}
    todo = [entry for entry in map(parse_entry, args.grid) if run_key(settings, *entry) not in done]
    samples = training_samples(args.config, settings) if todo else 0
    for processes, threads in todo:
        record = run_one(args, settings, processes, threads, samples)
        results_path.parent.mkdir(parents=True, exist_ok=True)
        with results_path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", nargs="+", default=default_grid(), metavar="PROCESSESxTHREADS",
                    help=f"runs, e.g. 1x{CPUS} 2x1 (default: {' '.join(default_grid())})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a setting of every run (e.g. --set data.name=digits)")
    ap.add_argument("--config", default="deploy.yaml")
    ap.add_argument("--out", default="runs/ddp_scaling", help="run directories")
    ap.add_argument("--results", default=str(REPO / "bench/results/ddp_scaling.jsonl"))
    ap.add_argument("--benchmarks", default=str(REPO / "BENCHMARKS.md"), help="the file --report updates")
    ap.add_argument("--report", action="store_true", help="print the section, update BENCHMARKS.md, exit")
    args = ap.parse_args(argv)
    code_state()  # the commit this process runs, taken before a long run (the tree may move)
    results_path = Path(args.results)
    if not args.report:
        run_grid(args, results_path)
    body = section(load_results(results_path))
    print(body)
    if args.report and not update_benchmarks(Path(args.benchmarks), body):
        print(f"{args.benchmarks} has no {BEGIN} … {END} section; not updated", file=sys.stderr)


if __name__ == "__main__":
    main()
