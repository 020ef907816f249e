"""NIR through the CLI (issue 11): ``import`` a graph snnTorch made, ``export`` it to .net and
``run`` it in Lava; ``export --set export.format=nir`` from a trained cuba checkpoint; every
bad input refused with one ``error:`` line, exit 2 and nothing written.

Stages that do not start Lava run as ``pipeline.cli.main`` in a forked child of this process
(:func:`tests.bad_inputs.harness.run_forked`: imports paid once); ``run`` is the real
``python -m pipeline`` (:func:`~tests.bad_inputs.harness.run_subprocess`).
"""
from __future__ import annotations

import json
import resource
from pathlib import Path

import nir
import pytest

from hardware import ir
from hardware.formats.nir import read_nir
from pipeline.artifacts import CHECKPOINT, IMPORTED_NIR, NET_FILE, NIR_FILE, REPORT_JSON
from tests.bad_inputs.base import Workspace
from tests.bad_inputs.harness import Outcome, run_forked, run_subprocess
from tests.test_nir import SNNTORCH_FILE, _with_node, non_finite_values

EXIT_TOOLKIT_ERROR = 2


pytestmark = pytest.mark.usefixtures("warm_stage_imports")


def workspace(root: Path) -> Workspace:
    ws = Workspace(root)
    ws.inputs.mkdir(parents=True)
    ws.write_config()
    return ws


def cli(ws: Workspace, stage: str, *overrides: str, timeout: float = 300) -> Outcome:
    return run_forked(ws.argv(stage, *overrides), ws.root, ws.root / "scratch", timeout=timeout)


def ok(outcome: Outcome) -> None:
    assert outcome.returncode == 0, outcome.describe()
    assert "Traceback" not in outcome.stderr, outcome.describe()
    assert not outcome.leftover, outcome.leftover


def refused(outcome: Outcome, *needles: str) -> str:
    """Exit 2, one ``error:`` line (the last) naming the problem, no traceback, empty stdout."""
    assert outcome.returncode == EXIT_TOOLKIT_ERROR, outcome.describe()
    lines = [ln for ln in outcome.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert errors == [lines[-1]], outcome.describe()
    assert "Traceback" not in outcome.stderr and outcome.stdout == "", outcome.describe()
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def report(ws: Workspace) -> dict:
    return json.loads((ws.run / REPORT_JSON).read_text())


def test_import_export_run_a_network_made_in_snntorch(tmp_path):
    ws = workspace(tmp_path)
    ok(cli(ws, "import", f"import.nir={SNNTORCH_FILE}"))
    section = report(ws)["import"]
    assert section["source"] == str(SNNTORCH_FILE) and section["readout"] == "spikes"
    assert section["dt"] == 1e-4 and len(section["layers"]) == 3
    assert ir.networks_equal(read_nir(ws.run / IMPORTED_NIR), read_nir(SNNTORCH_FILE))
    # snnTorch writes β = 1 as τ_mem = r = inf; the graph import rewrote holds finite values only
    assert non_finite_values(SNNTORCH_FILE)[0] and non_finite_values(ws.run / IMPORTED_NIR)[0] == []

    ok(cli(ws, "export", "eval.timesteps=8"))
    assert report(ws)["export"]["source"] == "imported-nir" and (ws.run / NET_FILE).is_file()
    ran = run_subprocess(ws.argv("run", "eval.timesteps=8", "run.lava_samples=3"), ws.root,
                         timeout=600, address_space=resource.RLIM_INFINITY)
    ok(ran)
    done = report(ws)
    assert done["lava"]["agreement"] == 1.0 and done["lava"]["samples"] == 3, done["lava"]
    assert done["accuracy"]["snn_fixed"]["8"] >= 0.85  # the network snnTorch trained: ~95 %

    ok(cli(ws, "export", "export.format=nir"))
    assert report(ws)["export_nir"]["format"] == "nir"
    assert ir.networks_equal(read_nir(ws.run / NIR_FILE), read_nir(SNNTORCH_FILE))


def test_export_nir_from_a_trained_cuba_checkpoint(tmp_path):
    ws = workspace(tmp_path)
    # a QCFS-trained model converts to either neuron (a cuba-matched one only to cuba)
    qcfs = ("nq.activation=qcfs",)
    ok(cli(ws, "train", "snn.neuron=cuba", *qcfs))
    ok(cli(ws, "export", "snn.neuron=cuba", "export.format=nir", *qcfs))
    net = read_nir(ws.run / NIR_FILE)
    assert net.readout == "potential" and {la.neuron.kind for la in net.weighted_layers} == {"cuba"}
    assert net.metadata["arch"] == "cnn-small" and "checkpoint_sha256" in net.metadata
    assert non_finite_values(ws.run / NIR_FILE)[0] == []  # the readout too: no inf threshold
    section = report(ws)["export_nir"]
    assert (section["source"], section["neuron"]) == ("checkpoint", "cuba")
    assert not (ws.run / NET_FILE).exists()  # the nir export writes model.nir only

    before = (ws.run / NIR_FILE).read_bytes()
    refused(cli(ws, "export", "snn.neuron=if_soft", "export.format=nir", *qcfs), "layer conv0: if_soft",
            "no NIR counterpart")
    assert (ws.run / NIR_FILE).read_bytes() == before
    refused(cli(ws, "import", f"import.nir={SNNTORCH_FILE}"), "already holds a trained checkpoint")
    assert not (ws.run / IMPORTED_NIR).exists()


def _bad_file(case: str, where: Path) -> Path:
    path = where / f"{case}.nir"
    if case == "corrupt":
        path.write_bytes(SNNTORCH_FILE.read_bytes()[:3000])
    elif case == "unsupported-node":
        nir.write(path, _with_node("Delay"))
    elif case == "not-nir":
        path.write_text("layers: [conv, dense]\n")
    return path


@pytest.mark.parametrize("case, needles", [
    ("missing", ["import.nir: no file at"]),
    ("corrupt", ["corrupt.nir: not a readable HDF5 file (", "truncated"]),
    ("not-nir", ["not-nir.nir: not a readable HDF5 file"]),
    ("unsupported-node", ["node 'odd_one' is a NIR Delay node"]),
    ("unset", ["import.nir is not set"]),
])
def test_import_refuses_bad_input_cleanly(case, needles, tmp_path):
    ws = workspace(tmp_path)
    overrides = () if case == "unset" else (f"import.nir={_bad_file(case, ws.inputs)}",)
    refused(cli(ws, "import", *overrides), *needles)
    assert not ws.run.exists() or not any(ws.run.iterdir()), sorted(ws.run.iterdir())


def test_export_refuses_a_run_dir_holding_two_networks(tmp_path):
    ws = workspace(tmp_path)
    ok(cli(ws, "import", f"import.nir={SNNTORCH_FILE}"))
    (ws.run / CHECKPOINT).write_bytes(b"not really")
    refused(cli(ws, "export"), "holds both a trained checkpoint", IMPORTED_NIR)
    assert not (ws.run / NET_FILE).exists()


def test_config_keys_are_validated_by_name():
    from pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"export\.format must be one of 'net', 'nir', got 'onnx'"):
        load_config("deploy.yaml", ["export.format=onnx"])
    with pytest.raises(ConfigError, match=r"import\.dt must be a number > 0"):
        load_config("deploy.yaml", ["import.dt=-1"])
    with pytest.raises(ConfigError, match=r"unknown key import\.nri.*did you mean 'import\.nir'"):
        load_config("deploy.yaml", ["import.nri=x.nir"])
    cfg = load_config("deploy.yaml", ["import.nir=graph.nir", "export.format=nir"])
    assert (cfg.import_.nir, cfg.export.format, cfg.to_dict()["import"]["dt"]) == ("graph.nir", "nir", 1e-4)


def test_the_bad_input_suites_nir_base_imports(tmp_path):
    """tests/bad_inputs/cases_nir.py mutates this file: unmutated, ``import`` takes it, so
    each refusal there is its mutation's doing."""
    from tests.bad_inputs.cases_nir import with_h5

    ws = workspace(tmp_path)
    overrides = with_h5(lambda f: None)(ws)
    ok(cli(ws, "import", *overrides))
    assert report(ws)["import"]["readout"] == "potential"
    foreign = workspace(tmp_path / "foreign")
    ok(cli(foreign, "import", *with_h5(lambda f: None, foreign=True)(foreign)))
