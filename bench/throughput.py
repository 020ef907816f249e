"""Samples/s: Lava (loihi2-sim, bit-accurate CPU models) vs the reference simulator.

Networks (``--nets``, comma-separated): ``ARCH:CxHxW`` builds the pipeline's
architecture the way the pipeline does (bench_common.pipeline_net: random init
calibrated on real images, ``convert(readout='potential')``,
``quantize(8 bits, readout_steps=T)``); ``dense`` is the random integer dense
64-128-10; ``--net RUN_DIR_OR_NET`` benchmarks a run directory's model.net instead.
Default: cnn-small on 1×8×8 (digits) and vgg-small on 1×28×28 (Fashion-MNIST).

Lava: one run_lava call streaming N samples; samples/s = N / wall time, wall
time = compile + runtime start + all RunSteps (end to end, start-up included).
``--lava-n2 M`` adds a second run with M samples: (M − N) / (wall_M − wall_N) is
Lava's marginal (steady-state) rate, without the start-up.
Check: on the Lava samples the simulator (non-pipelined, as run_lava's timing is
defined) must equal Lava: the output layer's potential after step T (potential
readout) and the output spikes; without a Lava potential, the hidden layers'
spike counts (``probes='counts'``, an extra run). Any difference exits non-zero.
Simulator: ``simulate(net, x, T)`` on ``--sim-batch`` samples at once, median of
``--repeats`` calls; integer mode (the fast exact kernels) and float32 float mode
(the float IR on the analog images, as the training loop runs it). ``--profile``
prints per-layer seconds of the integer simulation.

    .venv/bin/python bench/throughput.py [--nets cnn-small:1x8x8,vgg-small:1x28x28]
        [-n 20] [--lava-n2 40] [-T 8] [--sim-batch 2000] [--repeats 3] [--profile]
        [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from bench_common import (bench_images, describe, image_inputs, load_net, machine,
                          pipeline_net, random_inputs, timed, today)
from hardware.runtime.runner import run_lava
from hardware.simulator import kernel_plan, simulate

DEFAULT_NETS = "cnn-small:1x8x8,vgg-small:1x28x28"


def build(spec: str, path, T: int):
    """(label, integer IR, float IR or None, integer inputs(n, seed), float inputs(n, seed))."""
    if path is not None or spec == "dense":
        net = load_net(path, T)
        label = path or "dense 64-128-10 (random)"
        return label, net, None, lambda n, seed: random_inputs(net, n, seed), None
    arch, dims = spec.split(":")
    shape = tuple(int(d) for d in dims.split("x"))
    net, fnet, source = pipeline_net(arch, shape, timesteps=T)
    return (f"{arch} {dims} ({source})", net, fnet, lambda n, seed: image_inputs(net, n, seed),
            lambda n, seed: bench_images(shape, n, seed)[0])


def check_lava(net, x, T: int, res) -> str:
    """Compare Lava's run with the simulator (== on integers); returns what was compared."""
    sim = simulate(net, x, T)
    if not np.array_equal(res.output_spikes, sim.output_spikes.numpy().transpose(1, 0, 2)):
        raise SystemExit("Lava output spikes differ from the reference simulator")
    lava_v = getattr(res, "output_potential", None)
    if net.readout == "potential" and lava_v is not None:
        if not np.array_equal(lava_v, sim.output_potential[T - 1].numpy()):
            raise SystemExit("Lava output potential differs from the reference simulator")
        return "output potential after step T and output spikes"
    probed = run_lava(net, x, T, progress=False, probes="counts")
    for name, a, b in zip(probed.layer_names, probed.layer_counts, sim.layer_counts):
        if not np.array_equal(a, b.numpy()):
            raise SystemExit(f"Lava spike counts of {name} differ from the reference simulator")
    return "every layer's spike counts (probes) and output spikes"


def sim_rate(net, x, T: int, repeats: int, **kw) -> tuple:
    """(median wall s, samples/s) of simulate on the whole batch x."""
    def run():
        out = simulate(net, x, T, **kw)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        return out
    run()  # warm-up: allocator, oneDNN primitive caches
    wall = statistics.median(t for t, _ in timed(run, repeats))
    return wall, len(x) / wall


def profile_layers(net, x, T: int) -> list:
    """[(layer, synapse s, neuron s)] of one integer simulation: wraps the simulator's
    private per-layer calls (a benchmark-only view, not an API)."""
    import hardware.simulator as sim
    spent = {}
    syn_call, neu_step = sim._Synapse.__call__, sim._NeuronState.step

    def timed_syn(self, s):
        t0 = time.perf_counter()
        out = syn_call(self, s)
        spent.setdefault(self.name, [0.0, 0.0])[0] += time.perf_counter() - t0
        return out

    def timed_step(self, a):
        t0 = time.perf_counter()
        out = neu_step(self, a)
        spent.setdefault(self.name, [0.0, 0.0])[1] += time.perf_counter() - t0
        return out
    sim._Synapse.__call__, sim._NeuronState.step = timed_syn, timed_step
    try:
        t0 = time.perf_counter()
        simulate(net, x, T)
        total = time.perf_counter() - t0
    finally:
        sim._Synapse.__call__, sim._NeuronState.step = syn_call, neu_step
    rows = [(name, s, n) for name, (s, n) in spent.items()]
    return rows + [("(recording, chunking, Python)", total - sum(s + n for _, s, n in rows), 0.0)]


def bench_net(spec: str, args, device) -> None:
    T = args.timesteps
    label, net, fnet, int_in, float_in = build(spec, args.net, T)
    print(f"\n## {label}\n# {describe(net)}")
    x = int_in(args.samples, 1)
    res = run_lava(net, x, T, progress=False)
    print(f"# Lava == simulator on the {args.samples} Lava samples: {check_lava(net, x, T, res)}")
    lava_rate = res.samples_per_s
    rows = [("Lava loihi2-sim (run_lava), end to end", args.samples, res.wall_time_s, lava_rate)]
    if args.lava_n2:
        res2 = run_lava(net, int_in(args.lava_n2, 3), T, progress=False)
        marginal = (args.lava_n2 - args.samples) / (res2.wall_time_s - res.wall_time_s)
        rows.append((f"Lava, marginal ({args.lava_n2} vs {args.samples} samples)",
                     args.lava_n2 - args.samples, res2.wall_time_s - res.wall_time_s, marginal))
    xb = torch.as_tensor(int_in(args.sim_batch, 2), device=device)
    for p in kernel_plan(net, xb[:1], T):
        print(f"#   {p['layer']}: synapse {p['synapse']}, pool fold {p['pool']}, "
              f"neuron {p['neuron_mode']} {p['state_dtype']}")
    wall, rate = sim_rate(net, xb, T, args.repeats)
    rows.append(("simulator, integer (fast exact kernels)", args.sim_batch, wall, rate))
    if fnet is not None:
        xf = torch.as_tensor(float_in(args.sim_batch, 2), dtype=torch.float32, device=device)
        wall, rate = sim_rate(fnet, xf, T, args.repeats, dtype=torch.float32)
        rows.append(("simulator, float32 (float IR)", args.sim_batch, wall, rate))
    print(f"| engine | N | wall s | samples/s | × Lava end to end |\n|---|---|---|---|---|")
    for name, n, wall, rate in rows:
        print(f"| {name} | {n} | {wall:.3f} | {rate:.2f} | {rate / lava_rate:.0f} |")
    if args.profile:
        prof = profile_layers(net, xb, T)
        total = sum(s + n for _, s, n in prof)
        print("| layer | synapse s | neuron s | share |\n|---|---|---|---|")
        for name, s, n in prof:
            print(f"| {name} | {s:.3f} | {n:.3f} | {100 * (s + n) / total:.0f} % |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", default=DEFAULT_NETS, help="comma-separated ARCH:CxHxW or dense")
    ap.add_argument("--net", default=None, help="model.net or a run directory (overrides --nets)")
    ap.add_argument("-n", "--samples", type=int, default=20, help="Lava samples")
    ap.add_argument("--lava-n2", type=int, default=0, help="second Lava run (marginal rate)")
    ap.add_argument("-T", "--timesteps", type=int, default=8)
    ap.add_argument("--sim-batch", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="per-layer simulator seconds")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads for the simulator (default: torch's own choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"# throughput, {today()}, {machine()}\n# T={args.timesteps}, simulator on {device}")
    for spec in ([args.net] if args.net else args.nets.split(",")):
        bench_net(spec, args, device)
    print(f"\n# load average at the end: {machine().split('load average ')[1]}")


if __name__ == "__main__":
    main()
