"""Networks made elsewhere, run through the CLI as stock netx reads them (issue 18, part 4).

* A flat-input network (snnTorch's tutorial pattern: Linear layers fed a flattened vector, no
  Flatten node) imported from NIR, exported and run on 8x8 digits: ``run`` flattens the
  (1, 8, 8) images in C order and says so in report.json's ``network_file`` section.
* lava-dl's shipped ``mnist.net`` (its output layer has no neuron group: stock netx's default
  neuron) run with ``run.net``: the simulator and stock netx on Lava agree.

``run`` is the real ``python -m pipeline`` (:func:`~tests.bad_inputs.harness.run_subprocess`);
the other stages run forked (:func:`~tests.bad_inputs.harness.run_forked`).
"""
from __future__ import annotations

import json
import resource
import sysconfig
from pathlib import Path

import nir
import numpy as np
import pytest

from pipeline.artifacts import NET_FILE, REPORT_JSON
from tests.bad_inputs.base import Workspace, write_idx_dataset
from tests.bad_inputs.harness import Outcome, run_forked, run_subprocess
from tests.test_nir import SNNTORCH_FILE

NETX_TESTS = Path(sysconfig.get_paths()["purelib"]) / "tests" / "lava" / "lib" / "dl" / "netx"
MNIST = NETX_TESTS / "mnist.net"


pytestmark = pytest.mark.usefixtures("warm_stage_imports")


def _workspace(root: Path, data: str = "digits") -> Workspace:
    ws = Workspace(root)
    ws.inputs.mkdir(parents=True)
    cfg = ws.config_dict()
    cfg["data"] = {"name": data}
    ws.write_config(cfg)
    return ws


def _ok(outcome: Outcome) -> None:
    assert outcome.returncode == 0, outcome.describe()
    assert "Traceback" not in outcome.stderr, outcome.describe()


def _report(ws: Workspace) -> dict:
    return json.loads((ws.run / REPORT_JSON).read_text())


def _run(ws: Workspace, *overrides: str) -> Outcome:
    return run_subprocess(ws.argv("run", *overrides), ws.root, timeout=600,
                          address_space=resource.RLIM_INFINITY)


def flat_input_graph() -> nir.NIRGraph:
    """snnTorch's digits network without its Flatten node: the Linear layer takes (64,)."""
    graph = nir.read(SNNTORCH_FILE)
    nodes = {k: v for k, v in graph.nodes.items() if k not in ("0", "input")}
    nodes["input"] = nir.Input(input_type={"input": np.array([64])})
    edges = [e for e in graph.edges if "0" not in e] + [("input", "1")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=graph.metadata)


def test_flat_input_network_runs_on_images_flattened_in_c_order(tmp_path):
    ws = _workspace(tmp_path)
    flat = ws.inputs / "flat.nir"
    nir.write(flat, flat_input_graph())
    _ok(run_forked(ws.argv("import", f"import.nir={flat}"), ws.root, ws.root / "scratch"))
    _ok(run_forked(ws.argv("export", "eval.timesteps=4"), ws.root, ws.root / "scratch"))
    _ok(_run(ws, "eval.timesteps=4", "run.lava_samples=2"))
    done = _report(ws)
    assert done["lava"]["agreement"] == 1.0 and done["lava"]["samples"] == 2
    assert done["network_file"]["input"] == {
        "network_shape": [64], "data_shape": [1, 8, 8], "flattened": "C order (channel, row, column)"}
    # the same classes as the Flatten version of the same weights (a flatten in C order)
    assert done["accuracy"]["snn_fixed"]["4"] > 0.5


def _cfg(name: str = "digits", input_bits: int = 8):
    from types import SimpleNamespace
    return SimpleNamespace(data=SimpleNamespace(name=name), quant=SimpleNamespace(input_bits=input_bits))


def _flat_net(n: int, input_bits=8):
    from hardware.ir import Dense, Input, Network, Neuron
    layer = Dense(weight=np.ones((2, n), dtype=np.int64), bias=None, neuron=Neuron("cuba", 10), name="d")
    return Network(input=Input(shape=(n,)), layers=[layer], integer=True, input_bits=input_bits, readout="spikes")


@pytest.mark.parametrize("net_size, data_shape, flattened", [
    (64, (1, 8, 8), True), (784, (1, 28, 28), True), (192, (3, 8, 8), True)])
def test_input_section_flattens_only_when_the_sizes_agree(net_size, data_shape, flattened):
    from pipeline.stages import _input_section
    net, section = _input_section(_cfg(), _flat_net(net_size), Path("x.net"), data_shape)
    assert section["flattened"] == "C order (channel, row, column)"
    assert section["network_shape"] == [net_size] and section["data_shape"] == list(data_shape)
    assert net.input_bits == 8 and "input_bits_from" not in section


@pytest.mark.parametrize("net_size, data_shape", [(63, (1, 8, 8)), (64, (1, 28, 28)), (65, (1, 8, 8))])
def test_input_section_refuses_a_size_that_differs(net_size, data_shape):
    from hardware.errors import NetxFormatError
    from pipeline.stages import _input_section
    with pytest.raises(NetxFormatError, match=rf"x.net: the network takes input \({net_size},\)"):
        _input_section(_cfg(), _flat_net(net_size), Path("x.net"), data_shape)


def test_input_section_gives_a_foreign_file_the_configured_input_bits():
    from pipeline.stages import _input_section
    net, section = _input_section(_cfg(input_bits=6), _flat_net(64, input_bits=None), Path("x.net"),
                                  (64,))
    assert net.input_bits == 6 and section["input_bits"] == 6 and "flattened" not in section
    assert section["input_bits_from"].startswith("quant.input_bits")


def test_run_lava_dl_mnist_net_with_run_net(tmp_path):
    """lava-dl's mnist.net (784 inputs, an input neuron layer, an output layer without a neuron
    group) run on 28x28 images (a tiny IDX set of 50 test images: a few frames, not MNIST):
    the simulator on the test split, stock netx on Lava on two samples, equal (agreement 1.0);
    what the file left unsaid is in the report."""
    ws = _workspace(tmp_path, data="mnist")
    write_idx_dataset(ws.inputs / "mnist")
    _ok(_run(ws, f"run.net={MNIST}", f"data.root={ws.inputs / 'mnist'}", "eval.timesteps=4",
             "run.lava_samples=2", "run.probes=true"))
    done = _report(ws)
    # the output layer never spikes: the agreement rests on the hidden layers' probes
    assert done["lava"]["agreement"] == 1.0 and done["lava"]["samples"] == 2, done["lava"]
    assert done["lava"]["probes_equal_reference"] is True
    hidden = {layer["name"]: layer for layer in done["lava"]["probes"]["layers"]}
    assert hidden["dense1"]["spikes"] > 0 and hidden["dense2"]["spikes"] > 0, hidden
    section = done["network_file"]
    assert section["path"] == str(MNIST) and section["input"]["flattened"].startswith("C order")
    assert section["input"]["input_bits"] == 8 and section["input"]["data_shape"] == [1, 28, 28]
    assert section["default_neuron_layers"] == ["dense3"]
    assert not (ws.run / NET_FILE).exists()  # the file given is run, nothing is copied
