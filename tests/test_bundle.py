"""The board bundle: ``bundle`` writes <run.dir>/bundle/ for a digits cuba run; its
run_on_loihi.py, started where this project cannot be imported, runs stock netx on
Loihi2SimCfg and agrees exactly with the golden outputs; a changed golden value is named by
sample; a changed file, an if_soft and a residual network are refused with their reason;
the result JSON comes back into report.json and report.md through ``report --board-result``.
"""
from __future__ import annotations

import hashlib
import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hardware.formats.netx import write_net
from hardware.simulator import simulate
from pipeline import stages
from pipeline.bundle import BUNDLE_FILES, TEMPLATE, BundleError, bundle, read_board_result
from pipeline.cli import main
from pipeline.config import Config
from tests.bad_inputs.base import TINY_CONFIG
from tests.test_netx_io import random_ir
from tests.test_residual_lava import conv_residual_net

T = 4
SAMPLES = 12

#: run in ``python -I`` (no PYTHONPATH, no user site) with this project's editable finder
#: removed: it proves the project cannot be imported, then runs the script as __main__
ISOLATED = """
import runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path_hooks[:] = [h for h in sys.path_hooks if not getattr(h, "__module__", "").startswith("__editable__")]
sys.path_importer_cache.clear()
for name in ("pipeline", "hardware", "models"):
    try:
        __import__(name)
    except ImportError:
        continue
    raise SystemExit(f"{name} is importable: not an isolated environment")
print("isolated: pipeline, hardware and models cannot be imported", file=sys.stderr)
sys.argv = ["run_on_loihi.py"] + sys.argv[1:]
runpy.run_path("run_on_loihi.py", run_name="__main__")
"""


def config(run_dir, *overrides: str) -> Config:
    raw = {k: dict(v) for k, v in TINY_CONFIG.items()}
    raw["run"]["dir"] = str(run_dir)
    return Config.from_dict(raw, [f"snn.timesteps={T}", f"eval.timesteps={T}", "snn.neuron=cuba",
                                  f"bundle.samples={SAMPLES}", *overrides])


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    """(config, bundle folder, stage result) of a digits cuba run trained one epoch."""
    cfg = config(tmp_path_factory.mktemp("bundle") / "run")
    stages.train(cfg, progress=False)
    stages.export(cfg, progress=False)
    return cfg, cfg.run_dir / "bundle", bundle(cfg, progress=False)


@pytest.fixture(scope="module")
def rehearsed(bundled, tmp_path_factory):
    """(completed process, result JSON) of run_on_loihi.py --backend sim in isolation."""
    folder = tmp_path_factory.mktemp("copy") / "bundle"
    shutil.copytree(bundled[1], folder)
    proc = run_isolated(folder, "--backend", "sim")
    return proc, json.loads((folder / "result_sim.json").read_text())


def run_isolated(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-c", ISOLATED, *args], cwd=folder, capture_output=True,
                          text=True, timeout=300)


def script_main(*argv) -> int:
    """The template's main() in this process (for refusals, which come before any Lava)."""
    return runpy.run_path(str(TEMPLATE))["main"]([str(a) for a in argv])


def rehash(folder: Path, name: str) -> None:
    """Make the manifest state ``name``'s current SHA-256 (a consistent bundle of other content)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_the_bundle_holds_the_file_the_inputs_and_the_golden_outputs(bundled):
    cfg, folder, result = bundled
    assert sorted(p.name for p in folder.iterdir()) == sorted(BUNDLE_FILES + ("manifest.json", "README.txt"))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["timesteps"] == T and manifest["neuron"] == "cuba" and manifest["samples"] == SAMPLES
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    assert (folder / "model.net").read_bytes() == (cfg.run_dir / "model.net").read_bytes()
    assert (folder / "run_on_loihi.py").read_text() == TEMPLATE.read_text()
    assert len((folder / "README.txt").read_text().splitlines()) <= 30  # one screen
    # the golden outputs are the simulator's on the integers the chip receives
    net, _, data = stages._load_net_and_data(cfg, cfg.run_dir / "model.net", splits=("test",))
    x_int, labels = data["test"]
    ref = simulate(net, torch.as_tensor(x_int[:SAMPLES]), T)
    golden, inputs = np.load(folder / "golden.npz"), np.load(folder / "inputs.npz")
    assert np.array_equal(golden["output"], ref.output_potential[-1].numpy())
    assert np.array_equal(golden["prediction"], ref.predictions()[-1].numpy())
    assert np.array_equal(inputs["labels"], labels[:SAMPLES])
    assert np.array_equal(inputs["inputs"], x_int[:SAMPLES].transpose(0, 3, 2, 1))  # (W, H, C) port
    assert result["bundle"]["bytes"] == sum(p.stat().st_size for p in folder.iterdir())
    assert stages.read_report(cfg.run_dir)["bundle"]["net_sha256"] == manifest["files"]["model.net"]


@pytest.mark.lava
def test_the_cpu_rehearsal_agrees_without_this_project(rehearsed):
    proc, result = rehearsed
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "isolated: pipeline, hardware and models cannot be imported" in proc.stderr
    assert "agreement with the golden outputs (exact integers): 1.000" in proc.stdout
    assert result["agreement"] == 1.0 and result["mismatching_samples"] == [] and result["predictions_agree"]
    assert result["samples"] == SAMPLES and result["backend"] == "sim" and result["board_measurement"] is None
    assert result["accuracy"] == result["golden_accuracy"]


@pytest.mark.lava
def test_a_changed_golden_value_is_a_mismatch_naming_the_sample(bundled, tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(bundled[1], folder)
    with np.load(folder / "golden.npz") as f:
        golden = dict(f)
    golden["output"][3, 2] += 1
    np.savez_compressed(folder / "golden.npz", **golden)
    rehash(folder, "golden.npz")
    proc = run_isolated(folder, "--backend", "sim", "--samples", "5")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "agreement with the golden outputs (exact integers): 0.800; mismatching samples: 3" in proc.stdout
    assert json.loads((folder / "result_sim.json").read_text())["mismatching_samples"] == [3]


def test_a_file_changed_after_bundling_is_refused(bundled, tmp_path, capsys):
    folder = tmp_path / "bundle"
    shutil.copytree(bundled[1], folder)
    with open(folder / "golden.npz", "ab") as f:
        f.write(b"\0")
    assert script_main("--bundle", folder, "--backend", "sim") == 2
    assert "golden.npz: its SHA-256 is not the one manifest.json states" in capsys.readouterr().err


def _bundle_of(tmp_path, net, timesteps: int = T, samples: int = SAMPLES) -> Config:
    """The config of a run directory whose model.net is ``net``, made for ``timesteps``."""
    cfg = config(tmp_path / "run", f"snn.timesteps={timesteps}", f"eval.timesteps={timesteps}",
                 f"bundle.samples={samples}")
    cfg.run_dir.mkdir(parents=True)
    write_net(net, cfg.run_dir / "model.net", steps_per_sample=timesteps)
    return cfg


@pytest.mark.parametrize("kind", ["if_soft", "residual"])
def test_networks_the_board_cannot_run_are_refused_with_the_reason(kind, bundled, tmp_path, capsys):
    net = random_ir(3, kinds=("if_soft",)) if kind == "if_soft" else conv_residual_net("cuba")[0]
    cfg = _bundle_of(tmp_path, net)
    reason = "cannot run 'if_soft' neurons" if kind == "if_soft" else "cannot run residual networks"
    with pytest.raises(BundleError, match=f"no board bundle: backend 'loihi2-hw' {reason}"):
        bundle(cfg, progress=False)
    assert not (cfg.run_dir / "bundle").exists()
    # the script refuses such a file too, by the note the file carries
    folder = tmp_path / "bundle"
    shutil.copytree(bundled[1], folder)
    shutil.copyfile(cfg.run_dir / "model.net", folder / "model.net")
    rehash(folder, "model.net")
    assert script_main("--bundle", folder, "--backend", "sim") == 2
    err = capsys.readouterr().err
    assert "stock netx cannot run this network on a board" in err
    assert ("IF_SOFT" if kind == "if_soft" else "residual network") in err


@pytest.mark.lava
def test_the_result_comes_back_into_the_report(bundled, rehearsed, tmp_path, capsys):
    cfg, _, _ = bundled
    result_file = tmp_path / "result_sim.json"
    result_file.write_text(json.dumps(rehearsed[1]))
    config_file = tmp_path / "c.yaml"
    config_file.write_text(json.dumps(cfg.to_dict()))
    assert main(["report", "--config", str(config_file), "--board-result", str(result_file), "-q"]) == 0
    stored = stages.read_report(cfg.run_dir)["board_run"]
    assert stored == {**rehearsed[1], "source": str(result_file)}
    text = (cfg.run_dir / "report.md").read_text()
    assert "**MEASURED in the CPU rehearsal**" in text and rehearsed[1]["date"] in text
    # a result of another network, or a bad file, is refused naming the key
    other = {**rehearsed[1], "net_sha256": "0" * 64}
    result_file.write_text(json.dumps(other))
    assert main(["report", "--config", str(config_file), "--board-result", str(result_file)]) == 2
    assert "belongs to another run" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    ({"agreement": 1.5}, "agreement: Input should be less than or equal to 1"),
    ({"format": "something"}, "format: Input should be 'nqloihi-board-result'"),
    ({"mismatching_samples": [1]}, "does not match 1 mismatching samples of 4"),
    ({"samples": "4"}, "samples: Input should be a valid integer"),
])
def test_a_bad_board_result_is_refused_naming_the_key(tmp_path, change, message):
    good = {"format": "nqloihi-board-result", "format_version": 1, "backend": "hw", "run_config": "Loihi2HwCfg",
            "host": "ncl-ext", "date": "2026-12-05T01:00:00+00:00", "net_sha256": "a" * 64, "timesteps": 4,
            "readout": "potential", "samples": 4, "agreement": 1.0, "mismatching_samples": [],
            "predictions_agree": True, "accuracy": 0.75, "golden_accuracy": 0.75, "wall_time_s": 1.0,
            "first_sample_s": 0.5, "time_per_sample_s": 0.1}
    path = tmp_path / "result.json"
    path.write_text(json.dumps(good))
    assert read_board_result(path)["host"] == "ncl-ext"
    path.write_text(json.dumps({**good, **change}))
    with pytest.raises(BundleError, match="bundle.board_result") as info:
        read_board_result(path)
    assert message in str(info.value)
    path.write_text('{"format": 1, "format": 2}')
    with pytest.raises(BundleError, match="duplicate key"):
        read_board_result(path)


def spiking_dense_net(seed: int = 0):
    """A two-layer cuba network on flattened 8x8 digits with a spikes readout (no training)."""
    from hardware.ir import Dense, Input, Network, Neuron
    from hardware.spec import LOIHI2

    rng = np.random.default_rng(seed)
    layers = [Dense(weight=rng.integers(-6, 12, size=(16, 64)), bias=None, neuron=Neuron("cuba", 3000, du=LOIHI2.if_du, dv=0),
                    name="fc1"),
              Dense(weight=rng.integers(-4, 10, size=(10, 16)), bias=None, neuron=Neuron("cuba", 20, du=LOIHI2.if_du, dv=0),
                    name="fc2")]
    return Network(input=Input((64,)), layers=layers, integer=True, input_bits=8, readout="spikes")


@pytest.mark.lava
def test_a_spikes_readout_agrees_too(tmp_path):
    cfg = _bundle_of(tmp_path, spiking_dense_net())
    bundle(cfg, progress=False)
    folder = cfg.run_dir / "bundle"
    golden = np.load(folder / "golden.npz")
    assert golden["output"].sum() > 0 and golden["layer_spikes"].min() >= 0
    assert np.load(folder / "inputs.npz")["inputs"].shape == (SAMPLES, 64)  # a flat input port
    proc = run_isolated(folder, "--backend", "sim", "--samples", "6")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "readout spikes" in proc.stdout and "agreement with the golden outputs (exact integers): 1.000" in proc.stdout


def test_the_cli_stage_checks_the_network_first(tmp_path, capsys):
    assert main(["bundle", "--set", f"run.dir={tmp_path / 'empty'}", "--set", "snn.neuron=cuba"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run.net: no file at") and "export" in err
