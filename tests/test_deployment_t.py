"""One deployment T: ``snn.timesteps`` is the T model.net is written for (its reset interval,
the readout's and every layer's state bound) whatever ``eval.timesteps`` says; ``run`` refuses
a file made for another T unless ``run.allow_other_timesteps``, which re-checks the bounds;
a file that states no T runs at the configured one; stock netx runs an exported digits cuba
file at its stated T exactly as the simulator does.
"""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from hardware.errors import IRError, NetxFormatError, QuantizationError
from hardware.fixed_point.quantize import check_state_bounds, quantize
from hardware.formats.netx import read_net, read_provenance, write_net
from hardware.simulator import encode_input, simulate
from pipeline import stages
from pipeline.artifacts import NET_FILE, ArtifactError
from pipeline.cli import main
from pipeline.config import Config
from tests.bad_inputs.base import TINY_CONFIG
from tests.test_netx_io import random_ir
from tests.test_stock_netx_files import _run_stock, stored_call

T = 4  # the deployment T of the exported file
CURVE = 6  # eval.timesteps: the accuracy curve goes past it


def config(run_dir, *overrides: str) -> Config:
    raw = {k: dict(v) for k, v in TINY_CONFIG.items()}
    raw["run"]["dir"] = str(run_dir)
    base = [f"snn.timesteps={T}", f"eval.timesteps={CURVE}", "snn.neuron=cuba"]
    return Config.from_dict(raw, base + list(overrides))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A digits cuba network (cuba-matched for T = 4) trained one epoch and exported."""
    cfg = config(tmp_path_factory.mktemp("deploy") / "run")
    stages.train(cfg, progress=False)
    stages.export(cfg, progress=False)
    return cfg, cfg.run_dir / NET_FILE


def test_the_file_is_written_for_snn_timesteps_not_eval_timesteps(exported):
    cfg, path = exported
    with h5py.File(path, "r") as f:
        assert int(f.attrs["reset_interval"]) == T
    assert read_provenance(path)["timesteps"] == T
    net = read_net(path)
    assert net.metadata["timesteps"] == T
    quant = net.metadata["quantization"]
    assert quant[-1]["readout_steps"] == T and {q["state_steps"] for q in quant} == {T}
    assert stored_call(path)["reset_interval"] == T


def test_a_file_run_at_another_T_is_refused(exported):
    cfg, path = exported
    other = config(cfg.run.dir, "snn.timesteps=2")
    net = read_net(path)
    with pytest.raises(ArtifactError, match=f"made for T = {T} but snn.timesteps is 2: set snn.timesteps={T}"):
        stages.deployment_timesteps(other, net, path)
    assert stages.deployment_timesteps(cfg, net, path) == T


def test_the_cli_refusal_is_one_line_exit_2(exported, tmp_path, capsys):
    import yaml

    cfg, path = exported
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump(cfg.to_dict()))
    code = main(["run", "--config", str(config_file), "--set", "snn.timesteps=2", "--set", "eval.timesteps=2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert err.startswith("error: ") and f"made for T = {T}" in err and "snn.timesteps is 2" in err
    assert "run.allow_other_timesteps" in err


def test_the_override_rechecks_the_bounds(exported):
    cfg, path = exported
    net = read_net(path)
    fewer = config(cfg.run.dir, "snn.timesteps=2", "run.allow_other_timesteps=true")
    assert stages.deployment_timesteps(fewer, net, path) == 2  # fewer steps: every bound holds
    many = config(cfg.run.dir, "snn.timesteps=5000", "eval.timesteps=5000", "run.allow_other_timesteps=true")
    with pytest.raises(ArtifactError, match=f"made for T = {T} and cannot run at snn.timesteps = 5000 "
                                            f"\\(run.allow_other_timesteps\\): layer \\w+: over T = 5000 "
                                            f"steps .* beyond the 24-bit state .*; export it for T = 5000$"):
        stages.deployment_timesteps(many, net, path)


def test_a_file_stating_no_T_runs_at_the_configured_T(tmp_path):
    net = random_ir(3, kinds=("cuba",))
    path = write_net(net, tmp_path / "no_t.net")
    loaded = read_net(path)
    assert "timesteps" not in loaded.metadata
    cfg = config(tmp_path / "run", "snn.timesteps=3")
    assert stages.deployment_timesteps(cfg, loaded, path) == 3


def _edit_root(path, **attrs):
    import json

    with h5py.File(path, "r+") as f:
        for key, value in attrs.items():
            if key == "provenance":
                f.attrs[key] = json.dumps(value(json.loads(f.attrs[key])))
            else:
                f.attrs[key] = value


def test_the_file_states_one_T_and_an_older_file_its_reset_interval(tmp_path):
    net = random_ir(3, kinds=("cuba",))
    with pytest.raises(IRError, match="steps_per_sample 8 disagrees with the provenance's timesteps 4"):
        write_net(net, tmp_path / "two.net", provenance={"timesteps": 4}, steps_per_sample=8)
    path = write_net(net, tmp_path / "t.net", steps_per_sample=8)
    assert read_provenance(path)["timesteps"] == read_net(path).metadata["timesteps"] == 8
    _edit_root(path, provenance=lambda p: {k: v for k, v in p.items() if k != "timesteps"})
    assert read_net(path).metadata["timesteps"] == 8  # written before the key: its reset interval
    _edit_root(path, provenance=lambda p: {**p, "timesteps": 4})
    with pytest.raises(NetxFormatError, match="provenance timesteps = 4 disagrees with reset_interval = 8"):
        read_net(path)


def _float_net(hidden, readout: str):
    """A float two-layer net: hidden neuron ``hidden``, output if_soft or a potential readout."""
    from hardware.ir import Dense, Input, Network, Neuron, readout_neuron

    rng = np.random.default_rng(3)
    out = readout_neuron(False) if readout == "potential" else Neuron("if_soft", 1.0)
    return Network(input=Input((5,)), readout=readout, layers=[
        Dense(weight=rng.normal(0, 1, (6, 5)), bias=None, neuron=hidden, name="h"),
        Dense(weight=rng.normal(0, 1, (3, 6)), bias=None, neuron=out, name="o")])


def test_check_state_bounds_holds_up_to_the_quantized_T_and_names_the_layer_beyond():
    """if_soft with dv = 0: v falls without bound under negative drive, so a T far past the
    quantized one breaks the 24-bit state of the hidden layer."""
    from hardware.ir import Neuron

    q = quantize(_float_net(Neuron("if_soft", 1.0), "spikes"), input_bits=8, readout_steps=T)
    for steps in range(1, T + 1):
        check_state_bounds(q, steps)
    with pytest.raises(QuantizationError, match="^layer h: over T = 100000 steps .* beyond the 24-bit state"):
        check_state_bounds(q, 100_000)


def test_check_state_bounds_keeps_a_potential_readout_below_its_threshold():
    """A cuba hidden layer without memory (du = dv = 4095) is bounded at any T; the readout's accumulation does not."""
    from hardware.ir import Neuron

    q = quantize(_float_net(Neuron("cuba", 1.0, du=4095, dv=4095), "potential"), input_bits=8,
                 readout_steps=T)
    check_state_bounds(q, T)
    with pytest.raises(QuantizationError, match="^layer o: over T = 1000 steps .* beyond its threshold"):
        check_state_bounds(q, 1000)


@pytest.mark.lava
def test_stock_netx_runs_the_exported_digits_file_at_its_stated_T_as_the_simulator(exported):
    cfg, path = exported
    net = read_net(path)
    x = np.stack([img.numpy() for img, _ in stages.load_dataset(cfg.data, seed=0).test][:3])
    x_int = encode_input(x.reshape((len(x),) + tuple(net.input.shape)), net.input_bits)
    kwargs = stored_call(path)
    assert kwargs["reset_interval"] == T
    spikes, v = _run_stock(kwargs, x_int, T)
    sim = simulate(net, x_int, T)
    assert np.array_equal(v, sim.output_potential[-1].numpy())
    assert np.array_equal(spikes, sim.output_spikes.numpy())
    assert int(np.abs(v).max()) > 0


def test_the_overwrite_check_depends_on_the_deployment_T_not_on_the_curve():
    from pipeline.overwrite import differences, export_identity

    def provenance(snn_t: int, eval_t: int) -> dict:
        cfg = Config.from_dict({"snn": {"timesteps": snn_t}, "eval": {"timesteps": eval_t}})
        return {"config": cfg.to_dict(), "timesteps": snn_t}

    assert not differences(export_identity(provenance(4, 8)), export_identity(provenance(4, 16)))
    assert "timesteps: 4 -> 2" in differences(export_identity(provenance(4, 8)), export_identity(provenance(2, 8)))


def test_a_checkpoint_trained_before_cuba_timesteps_was_removed_is_the_same_training(tmp_path):
    """Its stored config says snn.cuba_timesteps: null (= snn.timesteps): train resumes it (no
    refusal); one whose cuba T differed is another training."""
    from pipeline.checkpoints import training_identity
    from pipeline.overwrite import differences

    now = Config.from_dict({"snn": {"neuron": "cuba"}}).to_dict()
    for old_value, same in ((None, True), (4, True), (2, False)):
        stored = {**now, "snn": {**now["snn"], "cuba_timesteps": old_value}}
        diffs = differences(training_identity(stored), training_identity(now))
        assert (not diffs) == same, (old_value, diffs)
