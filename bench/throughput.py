"""Samples/s: Lava (loihi2-sim, bit-accurate CPU models) vs the reference simulator.

Same integer network, same T, same inputs. Lava: one run_lava call streaming N
samples through one run (LavaRunResult.samples_per_s = N / wall time, wall
time = compile + runtime start + all RunSteps). Simulator:
hardware.simulator.simulate(net, x, T) on the whole batch at once (integer
mode, non-pipelined), timed with perf_counter, median of --repeats calls, for
the same N and for a large batch (--sim-batch). The Lava outputs are checked
== the simulator's.

    .venv/bin/python bench/throughput.py [--net RUN_DIR_OR_NET] [-n 50] [-T 8] [--sim-batch 2000]
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np

from bench_common import describe, load_net, machine, random_inputs, timed, today
from hardware.lava_runner import run_lava
from hardware.simulator import simulate


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--net", default=None, help="model.net or a run directory (default: "
                    "random dense 64-128-10 if_soft IR)")
    ap.add_argument("-n", "--samples", type=int, default=50)
    ap.add_argument("-T", "--timesteps", type=int, default=8)
    ap.add_argument("--sim-batch", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    net = load_net(args.net, args.timesteps)
    T = args.timesteps
    x = random_inputs(net, args.samples)
    print(f"# throughput, {today()}, {machine()}")
    print(f"# network: {describe(net)}")
    print(f"# T={T}")

    res = run_lava(net, x, T, progress=False)
    ref = simulate(net, x, T).output_spikes.numpy().transpose(1, 0, 2)
    if not np.array_equal(res.output_spikes, ref):
        raise SystemExit("Lava output differs from the reference simulator")
    print(f"{'engine':<34} {'N':>6} {'wall s':>8} {'samples/s':>10} {'steps/s':>9}")
    print(f"{'lava loihi2-sim (run_lava)':<34} {args.samples:>6} {res.wall_time_s:>8.2f} "
          f"{res.samples_per_s:>10.2f} {res.steps_run / res.wall_time_s:>9.1f}")
    for n in (args.samples, args.sim_batch):
        xb = random_inputs(net, n, seed=2)
        wall = statistics.median(t for t, _ in timed(lambda: simulate(net, xb, T), args.repeats))
        print(f"{'reference simulator (batch)':<34} {n:>6} {wall:>8.3f} {n / wall:>10.1f} "
              f"{'':>9}")


if __name__ == "__main__":
    main()
