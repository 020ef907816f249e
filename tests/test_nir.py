"""NIR graphs (hardware.formats.nir, issue 11): write → read → write identity for every node type,
the mapping checked against snnTorch 1.0 in both directions, and clear refusals.

* Identity: every IR this project makes (dense and conv layers, flatten, decaying neurons,
  both readouts, residual extra inputs) written, read back (the same IR, ``==``) and written
  again gives the same file; graphs with NIR's LIF, IF and I nodes read as the cuba neurons
  they are and then round-trip the same way.
* Export, checked by snnTorch: our file loaded by ``snntorch.import_from_nir`` runs every
  layer's spikes at every step exactly as the reference simulator (float64 state in snnTorch;
  the IR with the float32 weights snnTorch's importer holds), residual shortcuts included.
* Import, checked by snnTorch and Lava: a network built in snnTorch and written by its own
  ``export_to_nir`` reads into an IR that runs exactly as the snnTorch model, and quantized,
  written as .net and run in Lava it equals the bit-accurate simulator (agreement 1.000).
* Export, checked by Norse (issue 18): ``norse.torch.from_nir`` of our file gives our float
  simulator's class on every digits test sample; no file we write holds NaN or inf (Norse
  1.1.0 turned the inf of older files into NaN membranes); older files with inf still read.
* Refusals name the node (or layer): unsupported node types, neurons Loihi 2 cannot run
  exactly, graphs the IR cannot hold, if_soft export, corrupt files, NaN and inf parameters,
  unknown format versions (ours and NIR's).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import nir
import numpy as np
import pytest
import torch

from bench.nir_agreement import (agreement, export_snntorch, float32_view, norse_module, quietly,
                                 run_norse, run_snntorch, synaptic)
from hardware import ir
from hardware.errors import NirFormatError, ToolkitError
from hardware.formats.nir import (DEFAULT_DT, NEVER_FIRES, NIR_FORMAT, NO_LEAK_TAU_STEPS, from_nir_graph,
                             read_nir, to_nir_graph, write_nir)
from hardware.simulator import first_argmax, simulate

DATA = Path(__file__).resolve().parent / "data"
SNNTORCH_FILE = DATA / "snntorch_digits.nir"


# ----------------------------------------------------------------------------- networks
def cuba(theta: float, du: int = 4095, dv: int = 0) -> ir.Neuron:
    return ir.Neuron(kind="cuba", threshold=theta, du=du, dv=dv)


def dense_net(readout: str = "spikes") -> ir.Network:
    rng = np.random.default_rng(0)
    out = ir.readout_neuron(False) if readout == "potential" else cuba(1.3)
    layers = [ir.Flatten(name="flat"),
              ir.Dense(weight=rng.normal(size=(12, 64)), bias=rng.normal(size=12) * 0.1,
                       neuron=cuba(0.7), name="fc1"),
              ir.Dense(weight=rng.normal(size=(10, 12)),
                       bias=rng.normal(size=10) if readout == "potential" else None,
                       neuron=out, name="out")]
    return ir.Network(input=ir.Input(shape=(1, 8, 8)), layers=layers, readout=readout,
                      metadata={"made_by": "tests/test_nir.py"})


def conv_net() -> ir.Network:
    rng = np.random.default_rng(1)
    layers = [ir.Conv(weight=rng.normal(size=(4, 2, 3, 3)), bias=rng.normal(size=4), neuron=cuba(1.1),
                      stride=(2, 1), padding=(1, 0), name="c1"),
              ir.Conv(weight=rng.normal(size=(6, 4, 3, 3)), bias=np.zeros(6), neuron=cuba(0.9),
                      padding=(2, 1), dilation=(2, 1), name="c2"),
              ir.Flatten(name="flat"),
              ir.Dense(weight=rng.normal(size=(5, 6 * 5 * 7)), bias=None, neuron=cuba(2.0), name="out")]
    return ir.Network(input=ir.Input(shape=(2, 9, 9)), layers=layers, readout="spikes")


def decay_net() -> ir.Network:
    """Decaying current and membrane (no bias there: Loihi adds biases to v, NIR to I)."""
    rng = np.random.default_rng(2)
    layers = [ir.Dense(weight=rng.normal(size=(8, 6)), bias=None, neuron=cuba(0.8, du=1023, dv=300),
                       name="leaky"),
              ir.Dense(weight=rng.normal(size=(3, 8)), bias=rng.normal(size=3), neuron=cuba(0.5, dv=4000),
                       name="out")]
    return ir.Network(input=ir.Input(shape=(6,)), layers=layers, readout="spikes")


def residual_net() -> ir.Network:
    """A conv shortcut (1×1 from a) and a dense one from a (C, H, W) source (b, flattened)."""
    rng = np.random.default_rng(3)

    def conv(name, extra=()):
        return ir.Conv(weight=rng.normal(size=(3, 3, 3, 3)) * 0.5, bias=rng.normal(size=3) * 0.1,
                       neuron=cuba(1.0), padding=(1, 1), name=name, extra_inputs=extra)

    layers = [ir.Conv(weight=rng.normal(size=(3, 1, 3, 3)), bias=np.zeros(3), neuron=cuba(0.6),
                      padding=(1, 1), name="a"),
              conv("b"),
              conv("c", (ir.Projection(source="a", weight=rng.normal(size=(3, 3, 1, 1))),)),
              ir.Flatten(name="flat"),
              ir.Dense(weight=rng.normal(size=(10, 192)) * 0.2, bias=rng.normal(size=10), name="out",
                       neuron=ir.readout_neuron(False),
                       extra_inputs=(ir.Projection(source="b", kind="dense",
                                                   weight=rng.normal(size=(10, 192)) * 0.1),))]
    return ir.Network(input=ir.Input(shape=(1, 8, 8)), layers=layers, readout="potential")


NETWORKS = {"dense-spikes": lambda: dense_net("spikes"), "dense-potential": lambda: dense_net("potential"),
            "conv": conv_net, "decays": decay_net, "residual": residual_net}


def datasets(path: Path) -> dict:
    """Every dataset of an HDF5 file, by path."""
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return found


def assert_same_file(a: Path, b: Path) -> None:
    da, db = datasets(a), datasets(b)
    assert sorted(da) == sorted(db)
    for key in da:
        assert np.array_equal(da[key], db[key]), key


def assert_same_ir(a: ir.Network, b: ir.Network) -> None:
    assert ir.networks_equal(a, b)
    assert [getattr(la, "name", None) for la in a.layers] == [getattr(lb, "name", None) for lb in b.layers]
    assert (a.metadata, a.readout, a.version) == (b.metadata, b.readout, b.version)


# ----------------------------------------------------------------------------- identity
@pytest.mark.parametrize("name", list(NETWORKS))
def test_write_read_write_identity(name, tmp_path):
    net = NETWORKS[name]()
    first = write_nir(net, tmp_path / "first.nir")
    back = read_nir(first)
    assert_same_ir(net, back)
    assert_same_file(first, write_nir(back, tmp_path / "second.nir"))
    graph = nir.read(first)  # NIR's own reader, with its type check
    assert graph.metadata["format"] == NIR_FORMAT and float(graph.metadata["dt"]) == DEFAULT_DT
    kinds = {type(n).__name__ for n in graph.nodes.values()}
    assert kinds <= {"Input", "Output", "Conv2d", "Affine", "Linear", "Flatten", "CubaLIF"}


def test_every_node_type_is_covered_by_the_identity_networks():
    kinds = set()
    for make in NETWORKS.values():
        kinds |= {type(n).__name__ for n in to_nir_graph(make()).nodes.values()}
    assert kinds == {"Input", "Output", "Conv2d", "Affine", "Linear", "Flatten", "CubaLIF"}


def _full(value, n=4):
    return np.full(n, value, dtype=np.float64)


def foreign_graph() -> nir.NIRGraph:
    """LIF, IF and I nodes (as other frameworks write them), with input gains ≠ 1."""
    rng = np.random.default_rng(4)
    tau = DEFAULT_DT * 4096 / 512  # dv = 512
    nodes = {"in": nir.Input(input_type={"input": np.array([5])}),
             "w1": nir.Affine(weight=rng.normal(size=(4, 5)), bias=rng.normal(size=4)),
             "lif": nir.LIF(tau=_full(tau), r=_full(2 * tau / DEFAULT_DT), v_leak=_full(0.0),
                            v_threshold=_full(0.75)),
             "w2": nir.Linear(weight=rng.normal(size=(4, 4))),
             "if": nir.IF(r=_full(1 / DEFAULT_DT), v_threshold=_full(0.5)),
             "w3": nir.Affine(weight=rng.normal(size=(3, 4)), bias=rng.normal(size=3)),
             "readout": nir.I(r=_full(0.5 / DEFAULT_DT, 3)),
             "out": nir.Output(output_type={"output": np.array([3])})}
    order = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(order, order[1:])))


def test_lif_if_and_integrator_nodes_read_as_cuba_and_round_trip(tmp_path):
    graph = foreign_graph()
    net = from_nir_graph(graph)
    fc1, fc2, out = net.weighted_layers
    assert (fc1.neuron, fc2.neuron) == (cuba(0.75, dv=512), cuba(0.5))
    assert out.neuron == ir.readout_neuron(False) and net.readout == "potential"
    # the input gains (dt·R/τ = 2 for the LIF, dt·R = 0.5 for I) are folded into the synapses
    np.testing.assert_allclose(fc1.weight, 2 * graph.nodes["w1"].weight, rtol=1e-12)
    np.testing.assert_allclose(fc1.bias, 2 * graph.nodes["w1"].bias, rtol=1e-12)
    np.testing.assert_array_equal(fc2.weight, graph.nodes["w2"].weight)
    np.testing.assert_allclose(out.weight, 0.5 * graph.nodes["w3"].weight, rtol=1e-12)
    first = write_nir(net, tmp_path / "first.nir")
    assert_same_ir(net, read_nir(first))
    assert_same_file(first, write_nir(read_nir(first), tmp_path / "second.nir"))


# ----------------------------------------------------------------------------- export vs snnTorch
def _trained_like(arch: str, steps: int):
    from bench.bench_common import bench_images, calibrate
    from models.architectures import build_model

    torch.manual_seed(0)
    model = build_model(arch, (1, 8, 8), 10, 4, noise=False, activation="cuba-matched", timesteps=steps)
    images, _ = bench_images((1, 8, 8), 64, seed=0)
    calibrate(model, images, quantile=0.9)
    return model, torch.as_tensor(images[:10])


@pytest.mark.parametrize("arch, readout", [("cnn-small", "potential"), ("cnn-small", "spikes"),
                                           ("resnet-small", "potential")])
def test_snntorch_runs_our_export_as_our_simulator(arch, readout, tmp_path):
    """snnTorch's import_from_nir of our file == hardware.simulator, every spike, every step."""
    from models.converter import convert
    from snntorch.import_nir import import_from_nir

    steps = 5
    model, x = _trained_like(arch, steps)
    net = convert(model, (1, 8, 8), neuron="cuba", readout=readout,
                  output_threshold=0.3 if readout == "spikes" else None)
    path = write_nir(net, tmp_path / "model.nir")
    imported = quietly(import_from_nir, nir.read(path))
    ref = simulate(float32_view(read_nir(path)), x, steps, record_spikes=True)
    got = agreement(run_snntorch(imported, x, steps, float64=True, batched=False), ref, readout)
    assert (got.all_spikes, got.predictions) == (1.0, 1.0), got
    if readout == "potential":
        assert got.readout_max_rel <= 1e-12, got
    spiking = ref.layer_counts[:-1] if readout == "potential" else ref.layer_counts
    assert all(int(c.sum()) > 0 for c in spiking)  # every layer that can fire does
    # snnTorch as it runs by default (float32): the same spikes on these samples
    native = agreement(run_snntorch(imported, x, steps, float64=False, batched=False),
                       simulate(net, x, steps, record_spikes=True), readout)
    assert native.predictions == 1.0, native


def test_the_float32_view_matters():
    """The float64-state comparison uses snnTorch's float32 weights; the float64 IR differs."""
    net = dense_net("potential")
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = simulate(net, x, 4).output_potential
    b = simulate(float32_view(net), x, 4).output_potential
    assert not torch.equal(a, b)


# ----------------------------------------------------------------------------- finite files, Norse
def non_finite_values(path: Path) -> tuple:
    """(datasets holding NaN or inf or non-strict JSON, names of the numeric datasets checked)."""
    bad, checked, items = [], set(), []
    with h5py.File(path, "r") as f:
        f.visititems(lambda key, obj: items.append((key, obj)))
        for key, obj in items:
            if obj.attrs:
                bad.append(f"{key} has attributes")  # nir.write uses datasets only
            if not isinstance(obj, h5py.Dataset):
                continue
            value = np.asarray(obj[()])
            if value.dtype.kind in "SUO":  # text: the provenance must be strict JSON
                if key.endswith("provenance"):
                    try:
                        json.loads(value.reshape(-1)[0].decode(),
                                   parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
                    except ValueError:
                        bad.append(key)
            elif value.dtype.kind not in "iufb" or not np.all(np.isfinite(value)):
                bad.append(key)
            else:
                checked.add(key.split("/")[-1])
    return bad, checked


def test_no_written_file_holds_a_non_finite_value(tmp_path):
    """Every dataset of every file we write: numbers finite, the JSON text strict."""
    checked = set()
    for name, make in NETWORKS.items():
        bad, seen = non_finite_values(write_nir(make(), tmp_path / f"{name}.nir"))
        assert bad == [], (name, bad)
        checked |= seen
    assert {"weight", "bias", "tau_syn", "tau_mem", "r", "w_in", "v_threshold"} <= checked
    # and the walk does see an inf (the check is not vacuous)
    nir.write(tmp_path / "old.nir", _with_infinities(to_nir_graph(dense_net("potential"))))
    assert "node/nodes/out.neuron/v_threshold" in non_finite_values(tmp_path / "old.nir")[0]


def test_no_leak_and_never_fires_are_exact_in_every_consumer_arithmetic():
    """dt/τ_mem is 2**-64 exactly: snnTorch's β = 1 − dt/τ_mem is 1.0 in float64 and float32, and
    Norse's coefficient dt·(1/τ_mem) times r is exactly 1 in float32 (so v + (dt/τ)(r·I − v) is
    v + I rounded once); NEVER_FIRES is float32's largest value, which no finite float32 exceeds."""
    tau = DEFAULT_DT * NO_LEAK_TAU_STEPS
    assert 1.0 - DEFAULT_DT / tau == 1.0
    assert np.float32(1.0) - np.float32(DEFAULT_DT) / np.float32(tau) == np.float32(1.0)
    coefficient = DEFAULT_DT * (1 / torch.tensor([tau], dtype=torch.float32))  # Norse's lif_box step
    assert (coefficient * torch.tensor([NO_LEAK_TAU_STEPS], dtype=torch.float32)).item() == 1.0
    assert np.float32(NEVER_FIRES) == np.finfo(np.float32).max and np.isfinite(np.float32(NEVER_FIRES))
    # the readout's membrane grows by at most max_j(Σ_i |W_ji| + |b_j|) a step (inputs are spikes)
    out = dense_net("potential").layers[-1]
    per_step = float(np.max(np.abs(out.weight).sum(1) + np.abs(out.bias)))
    assert NEVER_FIRES / per_step > 1e36  # steps before a float64 membrane could reach it


def _with_infinities(graph: nir.NIRGraph) -> nir.NIRGraph:
    """``graph`` as this project wrote it before issue 18: τ_mem = r = inf, readout θ = inf."""
    nodes = dict(graph.nodes)
    for name, node in graph.nodes.items():
        if isinstance(node, nir.CubaLIF):
            no_leak = node.r == NO_LEAK_TAU_STEPS
            node = dataclasses.replace(node, tau_mem=np.where(no_leak, np.inf, node.tau_mem),
                                       r=np.where(no_leak, np.inf, node.r),
                                       v_threshold=np.where(node.v_threshold == NEVER_FIRES, np.inf,
                                                            node.v_threshold))
        nodes[name] = node
    return nir.NIRGraph(nodes=nodes, edges=list(graph.edges), metadata=graph.metadata, type_check=False)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_older_files_with_infinities_read_as_before(name, tmp_path):
    net = NETWORKS[name]()
    old = _with_infinities(to_nir_graph(net))
    assert any(np.isinf(n.r).any() for n in old.nodes.values() if isinstance(n, nir.CubaLIF)) \
        or name == "decays"
    path = tmp_path / "old.nir"
    nir.write(path, old)
    assert_same_ir(net, read_nir(path))


@pytest.fixture(scope="module")
def digits_test_split() -> torch.Tensor:
    """The pipeline's digits test split (359 samples)."""
    from bench.nir_agreement import digits

    return digits()[2]


def digits_nets() -> dict:
    """Small nets on 8×8 digits: both readouts of a dense net and a conv net."""
    rng = np.random.default_rng(7)
    conv = ir.Network(input=ir.Input(shape=(1, 8, 8)), layers=[
        ir.Conv(weight=rng.normal(size=(3, 1, 3, 3)), bias=rng.normal(size=3) * 0.1, neuron=cuba(0.8),
                stride=(2, 2), padding=(1, 1), name="c1"),
        ir.Flatten(name="flat"),
        ir.Dense(weight=rng.normal(size=(10, 48)) * 0.5, bias=rng.normal(size=10) * 0.1,
                 neuron=ir.readout_neuron(False), name="out")], readout="potential")
    return {"dense-spikes": dense_net("spikes"), "dense-potential": dense_net("potential"), "conv": conv}


def _same_class_in_snntorch_and_norse(name: str, x: torch.Tensor, tmp_path: Path) -> None:
    """Our file in snnTorch (import_from_nir) and in Norse (from_nir at our dt), float32 both:
    the class of our float simulator on every sample of ``x``."""
    from snntorch.import_nir import import_from_nir

    net, steps = digits_nets()[name], 6
    graph = nir.read(write_nir(net, tmp_path / "model.nir"))
    ours = first_argmax(_scores(simulate(net, x, steps), net.readout))
    neurons = [f"{layer.name}.neuron" for layer in net.weighted_layers]
    runs = {"snntorch": run_snntorch(quietly(import_from_nir, graph), x, steps, float64=False,
                                     batched=False),
            "norse": run_norse(norse_module(graph, DEFAULT_DT), x, steps, neurons)}
    for framework, run in runs.items():
        scores = run.last_mem if net.readout == "potential" else run.spikes[-1].sum(0).reshape(len(x), -1)
        assert torch.equal(first_argmax(scores), ours), framework
        assert torch.isfinite(run.last_mem).all(), framework


@pytest.mark.parametrize("name", ["dense-spikes", "dense-potential", "conv"])
def test_snntorch_and_norse_give_our_class_on_digits_test_samples(name, digits_test_split, tmp_path):
    _same_class_in_snntorch_and_norse(name, digits_test_split[:90], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dense-spikes", "dense-potential", "conv"])
def test_snntorch_and_norse_give_our_class_on_every_digits_test_sample(name, digits_test_split,
                                                                       tmp_path):
    _same_class_in_snntorch_and_norse(name, digits_test_split, tmp_path)


def _scores(result, readout: str) -> torch.Tensor:
    return result.output_potential[-1] if readout == "potential" else result.output_counts()[-1]


def test_norse_ran_older_files_as_nan(tmp_path):
    """Why the files changed: Norse 1.1.0 computes inf·I and (1/inf)·inf: NaN membranes."""
    net = dense_net("potential")
    graph = _with_infinities(to_nir_graph(net))
    run = run_norse(norse_module(graph, DEFAULT_DT), digits_sample(4), 3, ["fc1.neuron", "out.neuron"])
    assert torch.isnan(run.last_mem).all() and not any(s.any() for s in run.spikes)


def test_norse_evaluates_a_shortcut_after_the_neuron_it_feeds():
    """The README's residual caveat: nirtorch 2.6's GraphExecutor (what norse.torch.from_nir
    returns) orders the nodes so a shortcut runs after the neuron it feeds, which then sums
    the shortcut's output of the previous step (a one-step delay our simulator does not have)."""
    module = norse_module(to_nir_graph(residual_net()), DEFAULT_DT)
    order = [node.name for node in module.execution_order]
    assert order.index("c_extra0") > order.index("c_neuron")


def test_consumer_import_paths_and_time_steps_as_the_readme_says():
    """snnTorch 1.0: ``import_from_nir`` lives in ``snntorch.import_nir`` (not the package top
    level) and discretises with its own dt = 1e-4 whatever the file says; Norse 1.1.0:
    ``norse.torch.from_nir`` defaults to dt = 1e-3, so our files need ``dt=1e-4``."""
    import inspect

    import norse.torch
    import snntorch
    from snntorch.import_nir import import_from_nir

    assert not hasattr(snntorch, "import_from_nir")
    assert inspect.signature(norse.torch.from_nir).parameters["dt"].default == 1e-3
    net = decay_net()  # du = 1023, dv = 300 and du = 4095, dv = 4000
    imported = quietly(import_from_nir, to_nir_graph(net))
    got = [(float(m.alpha), float(m.beta)) for m in imported.modules() if type(m).__name__ == "Synaptic"]
    want = [(1 - (la.neuron.du + 1) / 4096, 1 - la.neuron.dv / 4096) for la in net.weighted_layers]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)  # dt/τ at snnTorch's 1e-4
    x = torch.rand(40, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = first_argmax(simulate(net, x, 8).output_counts()[-1])
    for dt, same in ((DEFAULT_DT, True), (1e-3, False)):  # Norse at our dt, and at its default
        run = run_norse(norse_module(to_nir_graph(net), dt), x, 8, ["leaky.neuron", "out.neuron"])
        assert torch.equal(first_argmax(run.spikes[-1].sum(0).reshape(len(x), -1)), ours) == same, dt


@pytest.mark.parametrize("framework", ["snntorch", "norse"])
def test_a_batch_through_an_imported_flatten_fails(framework):
    """Both map NIR's Flatten (of the non-batch dimensions) to ``torch.nn.Flatten(0, -1)``,
    which flattens a batch into one vector: run networks with a Flatten one sample at a time."""
    from snntorch.import_nir import import_from_nir

    graph = to_nir_graph(dense_net())
    module = quietly(import_from_nir, graph) if framework == "snntorch" else norse_module(graph, DEFAULT_DT)
    flatten = [m for m in module.modules() if isinstance(m, torch.nn.Flatten)]
    assert [(m.start_dim, m.end_dim) for m in flatten] == [(0, -1)]
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        module(torch.rand(2, 1, 8, 8))


# ----------------------------------------------------------------------------- import from snnTorch
def snntorch_conv_net():
    torch.manual_seed(5)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1, bias=False), synaptic((4, 8, 8), 0.5, 1.0, 1.0),
        torch.nn.Flatten(), torch.nn.Linear(256, 10), synaptic((10,), 0.0, 1.0 - 256 / 4096, 0.5, output=True))
    with torch.no_grad():
        net[0].weight.mul_(4.0)
        net[3].weight.mul_(3.0)
    return net


def digits_sample(n: int) -> torch.Tensor:
    from sklearn.datasets import load_digits

    return torch.as_tensor(load_digits().images[:n, None] / 16.0)


@pytest.mark.lava
def test_snntorch_network_imports_exactly_and_runs_in_lava(tmp_path):
    from hardware.runtime.runner import run_lava
    from hardware.formats.netx import read_net, write_net
    from hardware.fixed_point.quantize import quantize
    from hardware.simulator import encode_input

    model, steps = snntorch_conv_net(), 6
    path = tmp_path / "snntorch.nir"
    nir.write(path, export_snntorch(model, (1, 8, 8)))
    net = read_nir(path)
    assert [type(layer).__name__ for layer in net.layers] == ["Conv", "Flatten", "Dense"]
    assert [(la.neuron.du, la.neuron.dv) for la in net.weighted_layers] == [(2047, 0), (4095, 256)]
    x = digits_sample(8)
    ref = simulate(net, x, steps, record_spikes=True)
    exact = agreement(run_snntorch(model, x, steps, float64=True, batched=True), ref, "spikes")
    assert exact.all_spikes == 1.0, exact
    assert all(int(c.sum()) > 0 for c in ref.layer_counts)
    qnet = quantize(net, input_bits=8, readout_steps=steps)
    net_path = write_net(qnet, tmp_path / "snntorch.net", steps_per_sample=steps)
    x_int = encode_input(x.numpy(), 8)[:4]
    fixed = simulate(read_net(net_path), torch.as_tensor(x_int), steps)
    lava = run_lava(read_net(net_path), x_int, steps, net_path=str(net_path), progress=False, probes="counts")
    assert lava.loader.startswith("stock lava.lib.dl.netx")
    assert np.array_equal(lava.output_spikes, fixed.output_spikes.numpy().transpose(1, 0, 2))
    for got, want in zip(lava.layer_counts, fixed.layer_counts):
        assert np.array_equal(got, want.numpy())
    assert int(fixed.output_spikes.sum()) > 0


def test_snntorch_leaky_network_imports_exactly():
    """snnTorch's Leaky (NIR LIF) with reset to zero is the cuba neuron with du = 4095."""
    import snntorch as snn

    def leaky(n, beta, output=False):
        return snn.Leaky(beta=torch.full((n,), beta), threshold=torch.full((n,), 1.0),
                         reset_mechanism="zero", reset_delay=False, init_hidden=True, output=output)

    torch.manual_seed(6)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), leaky(16, 1 - 512 / 4096),
                                torch.nn.Linear(16, 10), leaky(10, 1.0, output=True))
    with torch.no_grad():
        model[1].weight.mul_(3.0)
    net = from_nir_graph(export_snntorch(model, (1, 8, 8)))
    assert [(la.neuron.du, la.neuron.dv) for la in net.weighted_layers] == [(4095, 512), (4095, 0)]
    x = digits_sample(16)
    ref = simulate(net, x, 6, record_spikes=True)
    got = agreement(run_snntorch(model, x, 6, float64=True, batched=True), ref, "spikes")
    assert got.all_spikes == 1.0, got
    assert all(int(c.sum()) > 0 for c in ref.layer_counts)


def test_stored_snntorch_file_reads_and_matches_its_quantized_form():
    """The file snnTorch 1.0.0 wrote (tests/data/make_nir_files.py) as the IR, and quantized."""
    from hardware.fixed_point.quantize import quantize
    from hardware.simulator import encode_input, first_argmax

    net = read_nir(SNNTORCH_FILE)
    assert [getattr(la, "name") for la in net.layers] == ["0", "1", "3"]
    assert [(la.neuron.du, la.neuron.dv) for la in net.weighted_layers] == [(2047, 0), (4095, 256)]
    assert net.readout == "spikes" and net.metadata["source"] == "nir"
    x = digits_sample(100)
    qnet = quantize(net, input_bits=8, readout_steps=8)
    fixed = simulate(qnet, torch.as_tensor(encode_input(x.numpy(), 8)), 8)
    floating = simulate(net, x, 8)
    same = first_argmax(fixed.output_counts()[-1]) == first_argmax(floating.output_counts()[-1])
    # Its first layer integrates without leak (dv = 0) a decaying current, so v can fall for all 8
    # steps: the scale that provably never clips v is ~10x below a one-step bound (whose v did
    # clip on real digits), and 92 of these 100 classes survive it.
    assert same.double().mean() >= 0.9
    assert all(layer["state_steps"] == 8 for layer in qnet.metadata["quantization"])


# ----------------------------------------------------------------------------- refusals
def test_export_refuses_if_soft_naming_the_layer():
    net = dense_net()
    layers = [dataclasses.replace(la, neuron=ir.Neuron(kind="if_soft", threshold=1.0))
              if la.name == "fc1" else la for la in net.layers]
    with pytest.raises(NirFormatError, match=r"layer fc1: if_soft .* no NIR counterpart"):
        to_nir_graph(net.replace(layers=layers))


def test_export_refuses_what_nir_cannot_type_check_naming_the_layer():
    net = conv_net()
    rng = np.random.default_rng(0)
    layers = [dataclasses.replace(la, weight=rng.normal(size=(6, 2, 3, 3)), groups=2)
              if la.name == "c2" else la for la in net.layers]
    with pytest.raises(NirFormatError, match=r"layer c2: a grouped convolution \(groups = 2\)"):
        to_nir_graph(net.replace(layers=layers))
    tall = ir.Network(input=ir.Input(shape=(1, 5, 5)), layers=[
        ir.Conv(weight=rng.normal(size=(2, 1, 3, 1)), bias=None, neuron=cuba(1.0), name="tall"),
        ir.Flatten(), ir.Dense(weight=rng.normal(size=(3, 30)), bias=None, neuron=cuba(1.0))], readout="spikes")
    with pytest.raises(NirFormatError, match=r"layer tall: a 3x1 kernel"):
        to_nir_graph(tall)


def test_export_refuses_an_integer_network_and_a_bias_into_a_decaying_current():
    from hardware.fixed_point.quantize import quantize

    with pytest.raises(NirFormatError, match="float IR"):
        to_nir_graph(quantize(dense_net(), input_bits=8))
    net = decay_net()
    layers = [dataclasses.replace(la, bias=np.ones(8)) if la.name == "leaky" else la for la in net.layers]
    with pytest.raises(NirFormatError, match=r"layer leaky: a bias with a decaying synaptic current"):
        to_nir_graph(net.replace(layers=layers))


def _with_node(kind: str) -> nir.NIRGraph:
    """dense_net's graph with one foreign node between the hidden neuron and the output layer."""
    graph = to_nir_graph(dense_net())
    n = 12
    node = {"AvgPool2d": None,
            "LI": nir.LI(tau=_full(1e-3, n), r=_full(10.0, n), v_leak=_full(0.0, n)),
            "Delay": nir.Delay(delay=_full(2.0, n)),
            "Scale": nir.Scale(scale=_full(2.0, n)),
            "CubaLI": nir.CubaLI(tau_syn=_full(1e-4, n), tau_mem=_full(1e-3, n), r=_full(10.0, n),
                                 v_leak=_full(0.0, n))}[kind]
    nodes = dict(graph.nodes)
    nodes["odd_one"] = node
    edges = [e for e in graph.edges if e != ("fc1.neuron", "out")] + [("fc1.neuron", "odd_one"),
                                                                      ("odd_one", "out")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=graph.metadata, type_check=False)


def _refused_as_graph_and_as_file(graph, message: str, path) -> None:
    """``graph`` is refused with ``message`` in memory, and read from ``path`` with the path first."""
    with pytest.raises(NirFormatError, match=message):
        from_nir_graph(graph)
    nir.write(path, graph)
    with pytest.raises(NirFormatError, match=rf"{path}: {message}"):
        read_nir(path)


@pytest.mark.parametrize("kind", ["LI", "Delay", "Scale", "CubaLI"])
def test_import_refuses_an_unsupported_node_with_its_name(kind, tmp_path):
    graph = _with_node(kind)
    _refused_as_graph_and_as_file(graph, rf"node 'odd_one' is a NIR {kind} node", tmp_path / "odd.nir")


def test_import_refuses_an_snntorch_recurrent_layer_naming_its_neuron(tmp_path):
    import snntorch as snn

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 6),
                              snn.RSynaptic(alpha=0.5, beta=0.5, linear_features=6, init_hidden=True,
                                            reset_mechanism="zero"))
    path = tmp_path / "recurrent.nir"
    nir.write(path, export_snntorch(net, (1, 8, 8)))
    # snnTorch writes the recurrent layer's nodes into the graph itself ("2.lif", "2.w_rec")
    with pytest.raises(NirFormatError, match=r"nodes \['2\.lif'\] form a cycle \(recurrence"):
        read_nir(path)


def test_import_refuses_snntorch_neurons_loihi_cannot_run_exactly(tmp_path):
    """α = 0.9 is not k/4096: no 12-bit Loihi decay equals it (the error says which node)."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 6, bias=False),
                              synaptic((6,), 0.9, 1.0, 1.0))
    path = tmp_path / "alpha.nir"
    nir.write(path, export_snntorch(net, (1, 8, 8)))
    with pytest.raises(NirFormatError, match=r"node '2': dt/tau_syn = 0\.1.* is not a Loihi 2 decay"):
        read_nir(path)
    biased = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 6),
                                 synaptic((6,), 0.5, 1.0, 1.0))
    nir.write(path, export_snntorch(biased, (1, 8, 8)))
    with pytest.raises(NirFormatError, match=r"neuron '2': a bias into a decaying synaptic current"):
        read_nir(path)


def _edit(graph: nir.NIRGraph, **changes) -> nir.NIRGraph:
    nodes = dict(graph.nodes)
    for name, node in changes.items():
        nodes[name] = node
    return nir.NIRGraph(nodes=nodes, edges=list(graph.edges), metadata={}, type_check=False)


def test_import_refuses_graphs_and_parameters_the_ir_cannot_hold():
    graph = to_nir_graph(dense_net())
    lif = graph.nodes["fc1.neuron"]
    cases = [
        (_edit(graph, **{"fc1.neuron": dataclasses.replace(lif, v_reset=_full(0.1, 12))}), "v_reset"),
        (_edit(graph, **{"fc1.neuron": dataclasses.replace(lif, v_threshold=np.linspace(1, 2, 12))}),
         "v_threshold takes 12 different values"),
        (_edit(graph, **{"fc1.neuron": dataclasses.replace(lif, v_leak=_full(0.2, 12))}), "v_leak"),
        (_edit(graph, **{"fc1.neuron": dataclasses.replace(lif, v_threshold=_full(np.inf, 12))}),
         "never fires"),
    ]
    cycle = nir.NIRGraph(nodes=dict(graph.nodes) | {"back": nir.Linear(weight=np.eye(12))},
                         edges=list(graph.edges) + [("fc1.neuron", "back"), ("back", "fc1.neuron")],
                         metadata={}, type_check=False)
    cases.append((cycle, "cycle"))
    for bad, needle in cases:
        with pytest.raises(NirFormatError, match=needle):
            from_nir_graph(bad)


def test_import_refuses_parallel_branches():
    graph = to_nir_graph(dense_net())
    nodes, edges = dict(graph.nodes), list(graph.edges)
    for side in ("left", "right"):  # fc1 -> left -> out and fc1 -> right -> out, side by side
        nodes[side] = nir.Linear(weight=np.ones((12, 12)))
        nodes[f"{side}.neuron"] = dataclasses.replace(graph.nodes["fc1.neuron"])
        nodes[f"{side}.out"] = nir.Linear(weight=np.ones((10, 12)))
        edges += [("fc1.neuron", side), (side, f"{side}.neuron"), (f"{side}.neuron", f"{side}.out"),
                  (f"{side}.out", "out.neuron")]
    with pytest.raises(NirFormatError, match="parallel branches"):
        from_nir_graph(nir.NIRGraph(nodes=nodes, edges=edges, metadata={}, type_check=False))


@pytest.mark.parametrize("damage", ["missing", "not-hdf5", "truncated", "soft-link", "unknown-type",
                                    "no-node"])
def test_bad_files_are_one_clear_error(damage, tmp_path):
    path = write_nir(dense_net(), tmp_path / "good.nir")
    if damage == "missing":
        path = tmp_path / "nothing.nir"
    elif damage == "not-hdf5":
        path.write_bytes(b"this is not a NIR file\n" * 10)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        with h5py.File(path, "r+") as f:
            if damage == "soft-link":
                del f["node/nodes/fc1/weight"]
                f["node/nodes/fc1/weight"] = h5py.SoftLink("/node/nodes/out/weight")
            elif damage == "unknown-type":
                del f["node/nodes/fc1/type"]
                f.create_dataset("node/nodes/fc1/type", data="Quantum", dtype=h5py.string_dtype())
            else:
                del f["node"]
    with pytest.raises(NirFormatError) as err:
        read_nir(path)
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message
    assert isinstance(err.value, ToolkitError)
    if damage == "unknown-type":
        assert "node 'fc1' is a NIR Quantum node" in message


# ----------------------------------------------------------------------------- non-finite, versions
def _replace_node(graph: nir.NIRGraph, name: str, **changes) -> nir.NIRGraph:
    nodes = dict(graph.nodes)
    nodes[name] = dataclasses.replace(nodes[name], **changes)
    return nir.NIRGraph(nodes=nodes, edges=list(graph.edges), metadata=graph.metadata, type_check=False)


def _poisoned(values: np.ndarray, value: float) -> np.ndarray:
    out = np.array(values, dtype=np.float64, copy=True)
    out.reshape(-1)[-1] = value
    return out


@pytest.mark.parametrize("node, param, value", [
    ("fc1", "weight", np.nan), ("fc1", "weight", np.inf), ("out", "weight", -np.inf),
    ("fc1", "bias", np.inf), ("fc1", "bias", np.nan),
    ("fc1.neuron", "v_threshold", np.nan), ("fc1.neuron", "v_threshold", -np.inf),
    ("fc1.neuron", "tau_syn", np.inf), ("fc1.neuron", "w_in", np.inf), ("fc1.neuron", "r", np.nan),
    ("fc1.neuron", "v_leak", np.nan), ("fc1.neuron", "v_reset", np.inf),
])
def test_import_refuses_non_finite_values_naming_node_and_parameter(node, param, value, tmp_path):
    graph = to_nir_graph(dense_net())
    bad = _replace_node(graph, node, **{param: _poisoned(getattr(graph.nodes[node], param), value)})
    what = "NaN" if np.isnan(value) else "inf"
    _refused_as_graph_and_as_file(bad, rf"node '{node}': {param} holds {what}", tmp_path / "bad.nir")


def test_import_reads_inf_only_where_it_meant_no_leak_or_never_fires():
    """+inf in τ_mem and r together (no leak) and in v_threshold (never fires) is the legacy
    meaning; +inf in only one of τ_mem and r, in part of a node, or in an I node's r is not."""
    graph = to_nir_graph(dense_net("potential"))
    hidden, readout = graph.nodes["fc1.neuron"], graph.nodes["out.neuron"]
    inf12 = np.full(12, np.inf)
    cases = {
        "r": _replace_node(graph, "fc1.neuron", r=inf12),
        "tau_mem": _replace_node(graph, "fc1.neuron", tau_mem=inf12),
        "v_threshold": _replace_node(graph, "out.neuron",
                                     v_threshold=_poisoned(readout.v_threshold, np.inf)),
    }
    for param, bad in cases.items():
        with pytest.raises(NirFormatError, match=rf"node '\S+': {param} holds inf"):
            from_nir_graph(bad)
    assert np.all(hidden.r == NO_LEAK_TAU_STEPS) and np.all(readout.v_threshold == NEVER_FIRES)
    legacy = _replace_node(graph, "fc1.neuron", r=inf12, tau_mem=inf12)
    assert ir.networks_equal(from_nir_graph(legacy), dense_net("potential"))
    integrator = foreign_graph()
    nodes = dict(integrator.nodes)
    nodes["readout"] = nir.I(r=np.full(3, np.inf))
    with pytest.raises(NirFormatError, match=r"node 'readout': r holds inf"):
        from_nir_graph(nir.NIRGraph(nodes=nodes, edges=list(integrator.edges), type_check=False))


def test_export_refuses_a_non_finite_network_naming_the_node():
    net = dense_net()
    layers = [dataclasses.replace(la, weight=_poisoned(la.weight, np.nan)) if la.name == "out" else la
              for la in net.layers]
    with pytest.raises(NirFormatError, match=r"node 'out': weight holds NaN or inf"):
        to_nir_graph(net.replace(layers=layers))
    layers = [dataclasses.replace(la, neuron=cuba(np.nan)) if la.name == "fc1" else la for la in net.layers]
    with pytest.raises(NirFormatError, match=r"node 'fc1.neuron': v_threshold holds NaN or inf"):
        to_nir_graph(net.replace(layers=layers))  # NaN is not +inf: not written as "never fires"


def _with_metadata(path: Path, key: str, value) -> None:
    with h5py.File(path, "r+") as f:
        del f[key]
        if value is not None:
            f.create_dataset(key, data=value)


@pytest.mark.parametrize("value, shown", [(2, "'2'"), (0, "'0'"), (1.5, "'1.5'"), ("1", "'1'"),
                                          (None, "'missing'"), (np.array([1, 1]), r"'\[1 1\]'")])
def test_import_refuses_an_unknown_format_version_of_ours(value, shown, tmp_path):
    path = write_nir(dense_net(), tmp_path / "model.nir")
    _with_metadata(path, "node/metadata/format_version", value)
    with pytest.raises(NirFormatError, match=rf"format_version = {shown}.*reads nqloihi-nir format "
                                             rf"version 1 only"):
        read_nir(path)


@pytest.mark.parametrize("version", ["2.0.0", "10.1", "abc", "", "1"])
def test_import_refuses_a_nir_version_this_reader_does_not_know(version, tmp_path):
    path = write_nir(dense_net(), tmp_path / "model.nir")
    with h5py.File(path, "r+") as f:
        del f["version"]
        f.create_dataset("version", data=version, dtype=h5py.string_dtype())
    with pytest.raises(NirFormatError, match=rf"{path}: NIR version '{version}' is not one this reader"):
        read_nir(path)
    with h5py.File(path, "r+") as f:  # an older NIR 1.x (snnTorch 1.0's files say 1.0.x)
        del f["version"]
        f.create_dataset("version", data="1.0.0", dtype=h5py.string_dtype())
    assert_same_ir(dense_net(), read_nir(path))
