"""NIR interop figures, checked against snnTorch and Norse.

Export: a ``cuba`` digits model trained by the pipeline (cnn-small, cuba-matched activation;
trained into ``runs/nir_agreement/`` unless ``--checkpoint`` names one) is written as NIR
(:mod:`hardware.formats.nir`), imported by snnTorch and Norse, run one sample at a time (their
imported Flatten also flattens the batch) and compared with the reference simulator (float
IR, same-step timing) on every layer's spikes at every step and on the potential readout:

* snnTorch as imported (float32) against the float64 IR;
* snnTorch with float64 state (float32 spikes and inputs cast by forward pre-hooks) against
  the IR rounded to float32 as ``import_from_nir`` rounds it: this isolates the neuron
  mapping from float32 arithmetic and must agree exactly;
* Norse 1.1.0's ``from_nir`` at dt = 1e-4 (float32) against the float64 IR: its synapse step
  I + (dt/τ_syn)(w_in·x − I) is x only up to rounding, so a spike may differ where a membrane
  lies within rounding of its threshold.

Import: an snnTorch network (Flatten, Linear, ``Synaptic(α = 0.5, β = 1)``, Linear,
``Synaptic(α = 0, β = 1 − 256/4096)``, reset to zero, BPTT) exported with ``export_to_nir`` is
read by :func:`hardware.formats.nir.read_nir`, compared with snnTorch, quantized, written as
``.net`` and run by stock lava-dl netx in Lava against the bit-accurate simulator.

    .venv/bin/python bench/nir_agreement.py              # a few minutes; writes the results
    .venv/bin/python bench/nir_agreement.py --report     # the BENCHMARKS.md table only

Results: ``bench/results/nir_agreement.json`` and the ``nir`` table in BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from hardware.kinds import Readout

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "nir_agreement.json"
BENCHMARKS = REPO / "BENCHMARKS.md"
MARKERS = ("<!-- nir:begin -->", "<!-- nir:end -->")
RUN_DIR = REPO / "runs" / "nir_agreement"
COMMAND = ".venv/bin/python bench/nir_agreement.py"


# ----------------------------------------------------------------------------- snnTorch helpers
def quietly(fn, *args, **kwargs):
    """Call ``fn``; snnTorch's NIR code prints progress and warnings on stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def synaptic(shape: tuple, alpha: float, beta: float, threshold: float, output: bool = False):
    """snnTorch's CUBA neuron as NIR can carry it: per-neuron parameters (snnTorch's exporter
    writes their shape as the node's type), reset to zero at once (``reset_delay=False``)."""
    import snntorch as snn

    return snn.Synaptic(alpha=torch.full(shape, alpha), beta=torch.full(shape, beta),
                        threshold=torch.full(shape, threshold), reset_mechanism="zero",
                        reset_delay=False, init_hidden=True, output=output)


def snntorch_digits_net(hidden: int = 64, seed: int = 0) -> torch.nn.Sequential:
    """The import benchmark's network: 64 → hidden → 10 on 8×8 digits, Loihi-exact decays
    (α = 0.5: du = 2047; β = 1: dv = 0; α = 0: du = 4095; β = 1 − 256/4096: dv = 256)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, hidden, bias=False), synaptic((hidden,), 0.5, 1.0, 1.0),
        torch.nn.Linear(hidden, 10), synaptic((10,), 0.0, 1.0 - 256 / 4096, 1.0, output=True))


def synaptic_layers(module) -> list:
    """The snnTorch neuron layers (``Synaptic``: CubaLIF, ``Leaky``: LIF) in module order."""
    import snntorch as snn

    return [m for m in module.modules() if isinstance(m, (snn.Synaptic, snn.Leaky))]


@dataclasses.dataclass
class SnnTorchRun:
    spikes: list          # per neuron layer, in execution order: (T, B, *shape) float64
    last_mem: torch.Tensor  # (B, n) the last layer's membrane after the last step


def _float64_hooks(module) -> list:
    """snnTorch's spikes are float32 whatever the state's dtype: feed its synapses float64."""
    return [m.register_forward_pre_hook(lambda mod, args: (args[0].double(),) + tuple(args[1:]))
            for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]


def run_snntorch(module, x: torch.Tensor, steps: int, *, float64: bool, batched: bool) -> SnnTorchRun:
    """Run an snnTorch module (a model, or what ``import_from_nir`` returns) on inputs held for
    ``steps`` steps; every sample starts from zero state. ``batched=False`` runs the samples
    one by one, unbatched (snnTorch's imported Flatten flattens the batch dimension too)."""
    for m in synaptic_layers(module):
        m.reset_mem()  # fresh state, free of any autograd history (deepcopy refuses that)
    module = copy.deepcopy(module)  # hooks and dtype stay on this run's copy
    layers = synaptic_layers(module)
    seen: list = []
    handles = [m.register_forward_hook(lambda mod, args, out: seen.append(
        (out[0] if isinstance(out, tuple) else out).detach().double())) for m in layers]
    dtype = torch.float64 if float64 else torch.float32
    if float64:
        module = module.double()
        handles += _float64_hooks(module)
    graph = isinstance(module, torch.fx.GraphModule)
    groups = [x] if batched else [x[i] for i in range(len(x))]
    trains, mems = [[] for _ in layers], []
    try:
        with torch.no_grad():
            for xs in groups:
                for m in layers:
                    m.reset_mem()
                seen.clear()
                state = None
                for _ in range(steps):
                    if graph:
                        _, state = module(xs.to(dtype), state)
                    else:
                        module(xs.to(dtype))
                per_layer = [torch.stack(seen[k::len(layers)]) for k in range(len(layers))]
                for k, s in enumerate(per_layer):
                    trains[k].append(s if batched else s.unsqueeze(1))
                mems.append(layers[-1].mem.detach().double().reshape(len(xs) if batched else 1, -1))
    finally:
        for h in handles:
            h.remove()
    return SnnTorchRun([torch.cat(t, dim=1) for t in trains], torch.cat(mems))


def norse_module(graph, dt: float):
    """Norse's own NIR import (``norse.torch.from_nir``, through ``nirtorch.load``) at ``dt``
    (Norse's default is 1e-3; the file's is this project's, snnTorch's 1e-4)."""
    import logging
    import warnings

    from norse.torch import from_nir

    level = logging.root.level
    logging.root.setLevel(logging.ERROR)  # its import logs every parameter it does not map
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # nirtorch.load is deprecated
            return from_nir(graph, dt=dt)
    finally:
        logging.root.setLevel(level)


def run_norse(module, x: torch.Tensor, steps: int, neurons: list) -> SnnTorchRun:
    """Run what ``norse.torch.from_nir`` returns on inputs held for ``steps`` steps, one sample
    at a time (NIR's Flatten becomes ``torch.nn.Flatten(0, -1)``, which flattens a batch too),
    float32 (Norse keeps its parameters as float32 tensors). ``neurons``: the NIR neuron node
    names in layer order; their spikes are read from the executor's per-node outputs and the
    last one's membrane from its state (Norse's ``LIFBoxFeedForwardState.v``)."""
    keys = [n.replace(".", "_") for n in neurons]  # nirtorch's module names
    trains, mems = [[] for _ in keys], []
    with torch.no_grad():
        for sample in x:
            state, seen = None, [[] for _ in keys]
            for _ in range(steps):
                _, state = module(sample.float(), state)
                for k, key in enumerate(keys):
                    seen[k].append(state.cache[key].detach().double())
            for k, s in enumerate(seen):
                trains[k].append(torch.stack(s).unsqueeze(1))
            mems.append(state.state[keys[-1]][0][1].v.detach().double().reshape(1, -1))
    return SnnTorchRun([torch.cat(t, dim=1) for t in trains], torch.cat(mems))


def float32_view(net):
    """``net`` with weights, biases and thresholds rounded to float32, as snnTorch's
    ``import_from_nir`` holds them (``torch.Tensor(node.weight)``, ``float`` thresholds in
    float32 buffers)."""
    from hardware import ir

    def f32(a):
        return None if a is None else np.asarray(a, dtype=np.float32).astype(np.float64)

    layers = []
    for layer in net.layers:
        if isinstance(layer, ir.Flatten):
            layers.append(layer)
            continue
        neuron = dataclasses.replace(layer.neuron, threshold=float(np.float32(layer.neuron.threshold)))
        extras = tuple(dataclasses.replace(p, weight=f32(p.weight)) for p in layer.extra_inputs)
        layers.append(dataclasses.replace(layer, weight=f32(layer.weight), bias=f32(layer.bias),
                                          neuron=neuron, extra_inputs=extras))
    return net.replace(layers=layers)


@dataclasses.dataclass
class Agreement:
    samples: int
    all_spikes: float        # fraction of samples whose every layer's spikes equal at every step
    predictions: float       # fraction of samples with the same predicted class
    readout_max_abs: Optional[float]  # potential readout: max |Δv[T]|
    readout_max_rel: Optional[float]  # ... relative to max |v[T]|


def agreement(run: SnnTorchRun, ref, readout: Readout) -> Agreement:
    """snnTorch against a :class:`hardware.simulator.SimResult` recorded with spikes."""
    from hardware.simulator import first_argmax

    n = run.last_mem.shape[0]
    if len(run.spikes) != len(ref.layer_spike_trains):
        raise ValueError(f"snnTorch ran {len(run.spikes)} neuron layers, the IR has "
                         f"{len(ref.layer_spike_trains)}")
    same = torch.ones(n, dtype=torch.bool)
    for got, want in zip(run.spikes, ref.layer_spike_trains):
        same &= (got.reshape(got.shape[0], n, -1) == want.double().reshape(got.shape[0], n, -1)).all(-1).all(0)
    if readout == "potential":
        want_v = ref.output_potential[-1]
        diff = (run.last_mem - want_v).abs().max().item()
        pred = first_argmax(run.last_mem) == first_argmax(want_v)
        return Agreement(n, same.double().mean().item(), pred.double().mean().item(), diff,
                         diff / max(want_v.abs().max().item(), 1e-300))
    counts = run.spikes[-1].sum(0).reshape(n, -1)
    pred = first_argmax(counts) == first_argmax(ref.output_counts()[-1])
    return Agreement(n, same.double().mean().item(), pred.double().mean().item(), None, None)


def train_snntorch(net, x: torch.Tensor, y: torch.Tensor, steps: int, epochs: int, lr: float = 2e-3,
                   seed: int = 0, batch: int = 64) -> list:
    """BPTT with snnTorch's surrogate gradient: cross-entropy of the output spike counts."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    net.train()
    for _ in range(epochs):
        order, total = torch.randperm(len(x), generator=gen), 0.0
        for begin in range(0, len(x), batch):
            idx = order[begin:begin + batch]
            for m in synaptic_layers(net):
                m.reset_mem()
            counts = sum(net(x[idx].float())[0] for _ in range(steps))
            loss = torch.nn.functional.cross_entropy(counts, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        losses.append(total / len(x))
    for m in synaptic_layers(net):
        m.reset_mem()
    net.eval()
    return losses


def export_snntorch(net, input_shape: tuple):
    """snnTorch's own ``export_to_nir`` (batch dimension left out of the types)."""
    from snntorch.export_nir import export_to_nir

    with np.errstate(divide="ignore"):  # its τ = dt / (1 − β) for β = 1 is +inf, as intended
        return quietly(export_to_nir, net.float(), torch.zeros((1,) + tuple(input_shape)), ignore_dims=[0])


def digits():
    """(x_train, y_train, x_test, y_test) float64 in [0, 1], the pipeline's split."""
    from pipeline.config import Config
    from pipeline.data import load_dataset

    data = load_dataset(Config().data, seed=0)

    def stack(ds):
        return (torch.stack([ds[i][0] for i in range(len(ds))]).double(),
                torch.stack([ds[i][1] for i in range(len(ds))]))

    return (*stack(data.train), *stack(data.test))


# ----------------------------------------------------------------------------- the benchmark
def _trained_cuba_checkpoint(epochs: int) -> Path:
    """A cuba digits checkpoint trained by the pipeline (reused if already there)."""
    from pipeline.artifacts import CHECKPOINT
    from pipeline.config import load_config
    from pipeline.training import train

    path = RUN_DIR / CHECKPOINT
    if not path.exists():
        cfg = load_config(REPO / "deploy.yaml", [f"run.dir={RUN_DIR}", "snn.neuron=cuba",
                                                  f"train.epochs={epochs}", "nq.init_threshold=2"])
        train(cfg, progress=False)
    return path


def export_direction(checkpoint: Path, x: torch.Tensor, y: torch.Tensor, steps: int) -> dict:
    import nir
    from snntorch.import_nir import import_from_nir

    from hardware.formats.nir import DEFAULT_DT, read_nir, write_nir
    from hardware.simulator import first_argmax, simulate
    from pipeline.checkpoints import load_checkpoint, model_from_checkpoint
    from pipeline.training import to_ir

    ckpt = load_checkpoint(checkpoint)
    net = to_ir(model_from_checkpoint(ckpt), tuple(ckpt["input_shape"]), "cuba", readout="potential",
                output_threshold=ckpt["output_threshold"])
    with tempfile.TemporaryDirectory() as tmp:
        path = write_nir(net, Path(tmp) / "model.nir")
        graph = nir.read(path)
        net = read_nir(path)
    out = {"checkpoint": str(checkpoint.relative_to(REPO) if checkpoint.is_relative_to(REPO) else checkpoint),
           "arch": ckpt["arch"], "activation": ckpt["activation"], "timesteps": steps,
           "epoch": ckpt["epoch"], "epochs_trained": len(ckpt["history"]),
           "layers": [layer.name for layer in net.layers], "nodes": sorted(graph.nodes)}
    ref64 = simulate(net, x, steps, record_spikes=True)
    ref32 = simulate(float32_view(net), x, steps, record_spikes=True)
    neurons = [f"{layer.name}.neuron" for layer in net.weighted_layers]
    runs = {"snntorch_float32": (lambda: run_snntorch(quietly(import_from_nir, graph), x, steps,
                                                       float64=False, batched=False), ref64),
            "snntorch_float64_state": (lambda: run_snntorch(quietly(import_from_nir, graph), x, steps,
                                                             float64=True, batched=False), ref32),
            "norse_float32": (lambda: run_norse(norse_module(graph, DEFAULT_DT), x, steps, neurons), ref64)}
    for name, (run_it, ref) in runs.items():
        start = time.perf_counter()
        run = run_it()
        out[name] = {**dataclasses.asdict(agreement(run, ref, "potential")),
                     "accuracy": float((first_argmax(run.last_mem) == y).double().mean()),
                     "seconds": round(time.perf_counter() - start, 1)}
    out["ours_float_accuracy"] = float((ref64.predictions()[-1] == y).double().mean())
    return out


def import_direction(data: tuple, steps: int, epochs: int, lava_samples: int, input_bits: int = 8,
                     hidden: int = 64) -> dict:
    import nir

    from hardware.runtime.runner import run_lava
    from hardware.formats.netx import read_net, write_net
    from hardware.formats.nir import read_nir
    from hardware.fixed_point.quantize import quantize
    from hardware.simulator import encode_input, first_argmax, simulate

    x_train, y_train, x, y = data
    model = snntorch_digits_net(hidden)
    start = time.perf_counter()
    losses = train_snntorch(model, x_train, y_train, steps, epochs)
    train_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        nir.write(Path(tmp) / "snntorch.nir", export_snntorch(model, (1, 8, 8)))
        fnet = read_nir(Path(tmp) / "snntorch.nir")
        qnet = quantize(fnet, input_bits=input_bits, readout_steps=steps)
        net_path = write_net(qnet, Path(tmp) / "snntorch.net", steps_per_sample=steps)
        qnet = read_net(net_path)
        ref = simulate(fnet, x, steps, record_spikes=True)
        mine = run_snntorch(model, x, steps, float64=True, batched=True)
        native = run_snntorch(model, x, steps, float64=False, batched=True)
        x_int = encode_input(x.numpy(), input_bits)
        fixed = simulate(qnet, torch.as_tensor(x_int), steps)
        start = time.perf_counter()
        lava = run_lava(qnet, x_int[:lava_samples], steps, net_path=str(net_path), progress=False)
        lava_s = time.perf_counter() - start
    want = fixed.output_spikes.numpy().transpose(1, 0, 2)[:lava_samples]
    float_counts, fixed_counts = ref.output_counts()[-1], fixed.output_counts()[-1]
    return {"timesteps": steps, "epochs": epochs, "hidden": hidden, "train_loss": [round(v, 4) for v in losses],
            "train_seconds": round(train_s, 1), "layers": [layer.name for layer in fnet.layers],
            "decays": [(layer.neuron.du, layer.neuron.dv) for layer in fnet.weighted_layers],
            "snntorch_float64_state_vs_float_ir": dataclasses.asdict(agreement(mine, ref, "spikes")),
            "snntorch_float32_vs_float_ir": dataclasses.asdict(agreement(native, ref, "spikes")),
            "accuracy": {"snntorch": float((first_argmax(native.spikes[-1].sum(0)) == y).double().mean()),
                         "float_ir": float((first_argmax(float_counts) == y).double().mean()),
                         "fixed_point": float((first_argmax(fixed_counts) == y).double().mean())},
            "quantization": {"output_counts_equal": float((float_counts == fixed_counts).all(-1).double().mean()),
                             "predictions_equal": float((first_argmax(float_counts)
                                                         == first_argmax(fixed_counts)).double().mean()),
                             "layers": [{k: q[k] for k in ("name", "scale", "limited_by", "weight_bits_used",
                                                           "weight_rms_rel_error", "threshold_rel_error")}
                                        for q in qnet.metadata["quantization"]]},
            "lava": {"samples": int(len(want)), "loader": lava.loader, "seconds": round(lava_s, 1),
                     "agreement": float(np.all(lava.output_spikes == want, axis=(1, 2)).mean())}}


# ----------------------------------------------------------------------------- report
def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def _norse_row(norse: Optional[dict]) -> list:
    if norse is None:  # a results file from before Norse was checked
        return []
    return [f"| Norse `from_nir(graph, dt=1e-4)` (float32) | float64 IR | {norse['all_spikes']:.3f} | "
            f"{norse['predictions']:.3f} | {norse['readout_max_abs']:.2e} ({norse['readout_max_rel']:.1e}) | "
            f"{_pct(norse['accuracy'])} |"]


def markdown(res: dict) -> str:
    e, i = res["export"], res["import"]
    f32, f64 = e["snntorch_float32"], e["snntorch_float64_state"]
    lines = [
        f"Export ({e['arch']} trained {e['epochs_trained']} epochs by the pipeline, best epoch "
        f"{e['epoch']}, {e['activation']['activation']} activation at T = {e['activation']['timesteps']}; "
        f"run at T = {e['timesteps']} on {f32['samples']} digits test samples, potential readout; "
        f"{res['date']}, {res['machine']}):", "",
        "| run of our NIR file | compared with | all layers' spikes equal | same class "
        "| max abs Δv[T] (rel) | its accuracy |",
        "|---|---|---|---|---|---|",
        f"| snnTorch `import_from_nir` as imported (float32) | float64 IR | {f32['all_spikes']:.3f} | {f32['predictions']:.3f} | "
        f"{f32['readout_max_abs']:.2e} ({f32['readout_max_rel']:.1e}) | {_pct(f32['accuracy'])} |",
        f"| snnTorch, float64 state | float32-rounded IR | {f64['all_spikes']:.3f} | {f64['predictions']:.3f} | "
        f"{f64['readout_max_abs']:.2e} ({f64['readout_max_rel']:.1e}) | {_pct(f64['accuracy'])} |",
        *_norse_row(e.get("norse_float32")), "",
        f"Our float simulator's accuracy on the same samples: {_pct(e['ours_float_accuracy'])} %. "
        f"Whole benchmark: {res.get('seconds', '?')} s after {res.get('checkpoint_seconds', '?')} s "
        f"for the checkpoint (trained by the pipeline unless it was there).", "",
        f"Import (snnTorch 64-{i['hidden']}-10 Synaptic net, decays (du, dv) = "
        f"{', '.join(str(tuple(d)) for d in i['decays'])}, trained {i['epochs']} epochs in snnTorch, "
        f"T = {i['timesteps']}, spike-count readout):", "",
        "| check | samples | agreement |", "|---|---|---|",
        f"| snnTorch model (float64 state) vs our float IR, every spike | "
        f"{i['snntorch_float64_state_vs_float_ir']['samples']} | "
        f"{i['snntorch_float64_state_vs_float_ir']['all_spikes']:.3f} |",
        f"| snnTorch model (float32) vs our float IR, every spike | "
        f"{i['snntorch_float32_vs_float_ir']['samples']} | {i['snntorch_float32_vs_float_ir']['all_spikes']:.3f} |",
        f"| Loihi 2 fixed point vs float IR, output spike counts | "
        f"{i['snntorch_float32_vs_float_ir']['samples']} | {i['quantization']['output_counts_equal']:.3f} |",
        f"| ... same class | {i['snntorch_float32_vs_float_ir']['samples']} | "
        f"{i['quantization']['predictions_equal']:.3f} |",
        f"| Lava ({i['lava']['loader']}) vs bit-accurate simulator, every output spike | "
        f"{i['lava']['samples']} | {i['lava']['agreement']:.3f} |", "",
        f"Accuracy: snnTorch {_pct(i['accuracy']['snntorch'])} %, our float IR "
        f"{_pct(i['accuracy']['float_ir'])} %, Loihi 2 fixed point {_pct(i['accuracy']['fixed_point'])} %.",
    ]
    return "\n".join(lines)


def update_benchmarks(text: str) -> None:
    doc = BENCHMARKS.read_text()
    begin, end = MARKERS
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        doc = head + begin + "\n" + text + "\n" + end + rest.split(end, 1)[1]
    else:
        doc = doc.rstrip("\n") + f"\n\n## NIR interop, checked against snnTorch (`bench/nir_agreement.py`)\n\n" \
              f"Command: `{COMMAND}`\n\n{begin}\n{text}\n{end}\n"
    tmp = BENCHMARKS.with_name(f".{BENCHMARKS.name}.tmp")
    tmp.write_text(doc)
    os.replace(tmp, BENCHMARKS)


def main() -> None:
    try:
        from bench_common import machine, provenance, today  # run as a script, like the other benchmarks
    except ImportError:
        from bench.bench_common import machine, provenance, today

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a cuba checkpoint to export (default: train "
                        "one into runs/nir_agreement/)")
    parser.add_argument("--epochs", type=int, default=12, help="pipeline epochs of the default checkpoint")
    parser.add_argument("--snntorch-epochs", type=int, default=15)
    parser.add_argument("--timesteps", type=int, default=8)
    parser.add_argument("--samples", type=int, default=360, help="test samples (digits has 360)")
    parser.add_argument("--lava-samples", type=int, default=360, help="of the test samples")
    parser.add_argument("--report", action="store_true", help="print the table from the results file")
    args = parser.parse_args()
    if args.report:
        print(markdown(json.loads(RESULTS.read_text())))
        return
    torch.set_num_threads(1)
    data = digits()
    x, y = data[2][:args.samples], data[3][:args.samples]
    start = time.perf_counter()
    checkpoint = args.checkpoint or _trained_cuba_checkpoint(args.epochs)
    res = {"date": today(), "machine": machine(), "provenance": provenance(), "command": COMMAND,
           "checkpoint_seconds": round(time.perf_counter() - start, 1),
           "export": export_direction(checkpoint, x, y, args.timesteps),
           "import": import_direction((data[0], data[1], x, y), args.timesteps, args.snntorch_epochs,
                                      args.lava_samples)}
    res["seconds"] = round(time.perf_counter() - start, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    text = markdown(res)
    update_benchmarks(text)
    print(text)


if __name__ == "__main__":
    main()
