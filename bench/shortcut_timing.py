"""What the shortcut delays buy: a residual net on Lava with and without them.

On Lava every synaptic hop delays by one step, so a shortcut that skips layers reaches
its summing neuron early. This project gives each shortcut a Loihi 2 synaptic delay
(``net.extra_delay``) so Lava runs the paper's same-step SNN bit for bit (the simulator's
non-pipelined mode, checked sample by sample in the tests and in every ``pipeline run``).
This benchmark measures the alternative: the same quantized network streamed through
Lava exactly as deployed (``run_lava``: reset every T steps, potential readout) but with
every shortcut undelayed (``run_lava(..., align_extra_inputs=False)``), so a summing
neuron at its step τ sees the shortcut source's step τ + d (the next sample's, past the
window). Per T it records, on the first ``--samples`` test images, the accuracy of

* ``delayed``: the simulator's same-step run (= Lava with the delays), also on the whole
  test split;
* ``undelayed``: Lava without the delays (real Lava, ``Loihi2SimCfg``);

and how many samples change their prediction. One results line per (checkpoint, T,
samples), appended as soon as it is measured; a restart skips what is there.

    .venv/bin/python bench/shortcut_timing.py --run-dir runs/resnet_low_t/nq-sigma-T1-s0
    .venv/bin/python bench/shortcut_timing.py --report
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from hardware.fixed_point.quantize import quantize
from hardware.simulator import encode_input, simulate
from pipeline.artifacts import CHECKPOINT
from pipeline.checkpoints import load_checkpoint, model_from_checkpoint
from pipeline.data import load_dataset
from pipeline.training import to_ir

try:  # run as a script: bench/ is on sys.path, as for the other benchmarks
    from bench_common import bench_config, code_state, with_provenance
except ImportError:  # imported as bench.shortcut_timing (the tests)
    from bench.bench_common import bench_config, code_state, with_provenance

STEPS = (1, 2, 4)


def _load(results: Path) -> list[dict]:
    if not results.exists():
        return []
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def _simulator_predictions(net, x: torch.Tensor, input_bits: int, T: int, batch: int = 500) -> np.ndarray:
    """(N,) prediction after T steps, same-step timing (what Lava with the delays runs)."""
    preds = []
    for begin in range(0, len(x), batch):
        payload = torch.as_tensor(encode_input(x[begin:begin + batch].numpy(), input_bits))
        preds.append(simulate(net, payload, T).predictions()[T - 1])
    return torch.cat(preds).numpy()


def measure(run_dir: Path, config: str, samples: int, T: int, overrides=()) -> dict:
    from hardware.runtime.runner import run_lava

    ckpt_path = run_dir / CHECKPOINT
    ckpt = load_checkpoint(ckpt_path)
    cfg = bench_config(config, [f"data.name={ckpt['config']['data']['name']}"], overrides)
    data = load_dataset(cfg.data, seed=ckpt["config"]["train"]["seed"])
    neuron = ckpt["config"]["snn"]["neuron"]
    model = model_from_checkpoint(ckpt)
    bits = cfg.quant.input_bits
    net = quantize(to_ir(model, data.input_shape, neuron), input_bits=bits, readout_steps=max(STEPS))
    x = torch.stack([data.test[i][0] for i in range(len(data.test))])
    y = np.array([int(data.test[i][1]) for i in range(len(data.test))])
    delayed_all = _simulator_predictions(net, x, bits, T)
    started = time.perf_counter()
    lava = run_lava(net, encode_input(x[:samples].numpy(), bits), T, progress=False,
                    align_extra_inputs=False)
    undelayed = np.asarray(lava.output_potential).argmax(axis=1)
    delayed = delayed_all[:samples]
    return {"checkpoint": str(ckpt_path), "sha256": hashlib.sha256(ckpt_path.read_bytes()).hexdigest(),
            "arch": ckpt["arch"], "dataset": data.name, "neuron": neuron, "T": T, "samples": samples,
            "delayed_full_test": float((delayed_all == y).mean()),
            "delayed": float((delayed == y[:samples]).mean()),
            "undelayed": float((undelayed == y[:samples]).mean()),
            "changed": int((undelayed != delayed).sum()),
            "lava_wall_s": time.perf_counter() - started}


def report(rows: list[dict]) -> str:
    lines = ["| checkpoint | T | samples | with delays (same-step = Lava), whole test | with delays, "
             "same samples | without delays (Lava) | difference | predictions changed |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["checkpoint"], r["T"])):
        lines.append(f"| {Path(r['checkpoint']).parent.name} ({r['arch']}, {r['dataset']}) | {r['T']} | "
                     f"{r['samples']} | {100 * r['delayed_full_test']:.2f} | {100 * r['delayed']:.2f} | "
                     f"{100 * r['undelayed']:.2f} | {100 * (r['undelayed'] - r['delayed']):+.2f} | "
                     f"{r['changed']} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", action="append", default=[], help="a run directory with a checkpoint")
    ap.add_argument("--samples", type=int, default=200, help="test images streamed through Lava per T")
    ap.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    ap.add_argument("--config", default="deploy.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="config override, as the pipeline's --set, applied after the checkpoint's dataset")
    ap.add_argument("--results", default="bench/results/shortcut_timing.jsonl")
    ap.add_argument("--report", action="store_true", help="print the table from the results and exit")
    args = ap.parse_args(argv)
    code_state()  # the commit this process runs, taken before a long run (the tree may move)
    results = Path(args.results)
    if not args.report:
        results.parent.mkdir(parents=True, exist_ok=True)
        for run_dir in map(Path, args.run_dir):
            for T in args.steps:
                done = {(r["checkpoint"], r["T"], r["samples"]) for r in _load(results)}
                if (str(run_dir / CHECKPOINT), T, args.samples) in done:
                    continue
                row = measure(run_dir, args.config, args.samples, T, args.set)
                with open(results, "a") as f:
                    f.write(json.dumps(with_provenance(row), sort_keys=True) + "\n")
                print(f"{run_dir.name} T={T}: delayed {row['delayed']:.3f}, undelayed {row['undelayed']:.3f} "
                      f"({row['changed']} changed), Lava {row['lava_wall_s']:.0f} s", flush=True)
    print(report(_load(results)))


if __name__ == "__main__":
    main()
