"""Overhead of run_lava's probes: the same network and inputs, probes off vs on.

Mechanisms compared (bench/probe_mechanisms.py MECHANISMS): one
SpikeRecorder process for all layers, bit-packed, read after every chunk
("recorder", the default of run_lava(probes=True)); one sink RingBuffer per
layer read after every chunk ("ringbuffer"); one lava.proc.monitor.Monitor
per layer read at the end ("monitor"). Runs are interleaved (off, recorder, ...) so
that load from other jobs on the machine hits every mode alike. Wall time is
LavaRunResult.wall_time_s (compile + runtime start + all RunSteps + probe
reads); steps/s = steps_run / wall time. Every probed run's output spikes are
checked == the unprobed run's.

    .venv/bin/python bench/probe_overhead.py [--net RUN_DIR_OR_NET] [-n 30] [-T 8] [--repeats 3]
"""
from __future__ import annotations

import argparse

import numpy as np

from bench_common import describe, load_net, machine, mean_std, random_inputs, today
from hardware.runtime.runner import run_lava
from probe_mechanisms import MECHANISMS

MODES = [("off", dict(probes=False)),
         ("recorder (trains)", dict(probes=True, probe_taps=MECHANISMS["recorder"])),
         ("recorder (counts)", dict(probes="counts", probe_taps=MECHANISMS["recorder"])),
         ("ringbuffer (trains)", dict(probes=True, probe_taps=MECHANISMS["ringbuffer"])),
         ("monitor (trains)", dict(probes=True, probe_taps=MECHANISMS["monitor"]))]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--net", default=None, help="model.net or a run directory (default: "
                    "random dense 64-128-10 if_soft IR)")
    ap.add_argument("-n", "--samples", type=int, default=30)
    ap.add_argument("-T", "--timesteps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    net = load_net(args.net, args.timesteps)
    x = random_inputs(net, args.samples)
    print(f"# probe overhead, {today()}, {machine()}")
    print(f"# network: {describe(net)}")
    print(f"# N={args.samples} samples, T={args.timesteps}, repeats={args.repeats}")
    walls = {name: [] for name, _ in MODES}
    steps = None
    reference = None
    for _ in range(args.repeats):
        for name, kw in MODES:
            res = run_lava(net, x, args.timesteps, progress=False, **kw)
            if reference is None:
                reference = res.output_spikes
            elif not np.array_equal(res.output_spikes, reference):
                raise SystemExit(f"{name}: output spikes differ from the unprobed run")
            walls[name].append(res.wall_time_s)
            steps = res.steps_run
    base, _ = mean_std(walls["off"])
    print(f"{'mode':<22} {'wall s (mean±sd)':>18} {'steps/s':>9} {'overhead':>9}")
    for name, _ in MODES:
        m, sd = mean_std(walls[name])
        print(f"{name:<22} {m:>10.2f} ± {sd:<5.2f} {steps / m:>9.1f} {100 * (m / base - 1):>+8.1f}%")


if __name__ == "__main__":
    main()
