"""report.md and plots render from a hand-written report.json, complete or partial."""
import json
from types import SimpleNamespace

import pytest

from hardware.analysis.activity import activity_by_t, layer_activity, save_raster, spiking_layers
from hardware.analysis.energy import cost_by_t, count_macs, energy_estimate
from hardware.ir import Conv, Dense, Flatten, Input, Network, Neuron
from hardware.analysis.resources import check_fit
from pipeline.artifacts import ArtifactError, sha256_of
from pipeline.operating_point import operating_points
from pipeline.report import ReportError, render_report

NEURON = Neuron("if_soft", 64)
T = 8


def small_net(rng) -> Network:
    conv = Conv(rng.integers(-8, 9, (4, 1, 3, 3)), None, NEURON, padding=(1, 1), name="conv1")
    return Network(Input((1, 8, 8)), [conv, Flatten(),
                                      Dense(rng.integers(-8, 9, (10, 256)), None, NEURON, name="fc")],
                   integer=True, input_bits=8, readout="spikes")


def training_and_eval() -> dict:
    history = [{"epoch": e, "loss": 1.0 / e, "ann_val": 0.8 + 0.02 * e, "snn_val": 0.7 + 0.03 * e,
                "sigma": [0.2 / e, 0.1 / e], "mean_abs_gap": 0.05 / e, "lambda": [2.0, 1.5 + 0.1 * e],
                "lr": 0.05} for e in range(1, 6)]
    return {
        "config": {"data": {"name": "digits", "root": None}, "snn": {"timesteps": 4, "neuron": "if_soft"},
                   "energy": {}},
        "training": {"best_epoch": 5, "history": history},
        "accuracy": {"ann": 0.95, "snn_float": {str(t): 0.6 + 0.04 * t for t in range(1, T + 1)}},
        "test_samples": 180,
    }


def full_report(rng, run_dir) -> dict:
    net = small_net(rng)
    layers = spiking_layers(net)
    trains = [rng.random((T, 4) + sl.shape) < 0.2 for sl in layers]
    x = rng.integers(0, 256, (4, 1, 8, 8))
    act = layer_activity(net, trains, x)
    raster = save_raster(run_dir / "raster.npz", [sl.name for sl in layers], trains)
    report = training_and_eval()
    report["raster"] = {"path": "raster.npz", "sha256": sha256_of(raster), "layers": [sl.name for sl in layers]}
    report["accuracy"].update({"snn_fixed": {str(t): 0.6 + 0.04 * t for t in range(1, T + 1)},
                               "lava": {str(t): 0.6 + 0.04 * t for t in range(1, T + 1)}})
    report["lava"] = {"samples": 4, "agreement": 1.0, "backend": "loihi2-sim", "steps_per_sample": T,
                      "wall_time_s": 3.2, "samples_per_s": 1.25, "disagreeing_samples": []}
    report["quantization"] = [{"name": n, "scale": 10.0, "limited_by": "weight", "weight_bits_used": 8,
                               "weight_max_abs_error": 0.01, "weight_rms_rel_error": 0.02,
                               "threshold_float": 1.0, "threshold_mantissa": 640,
                               "threshold_rel_error": 0.001, "bias_max_abs_error": 0.0,
                               "worst_case_input": 1000} for n in ("conv1", "fc")]
    report["export"] = {"path": str(run_dir / "model.net"), "neuron": "if_soft", "input_bits": 8}
    report["probes"] = act.to_dict()
    report["energy"] = energy_estimate(act, {}, count_macs(net))
    report["resources"] = check_fit(net).to_dict()
    costs = cost_by_t(activity_by_t(net, SimpleNamespace(layer_spike_trains=trains), x), {}, count_macs(net))
    validation = {"samples": 30, "snn_fixed": {str(t): 0.6 + 0.04 * t for t in range(1, T + 1)}}
    report["operating_points"] = operating_points(4, rng.integers(0, 10, (T, 4)), rng.integers(0, 10, 4),
                                                  costs, validation, 0.70, 0.01)
    return report


def write(run_dir, report):
    (run_dir / "report.json").write_text(json.dumps(report))


def test_full_report_renders_with_all_plots(tmp_path, rng):
    write(tmp_path, full_report(rng, tmp_path))
    out = render_report(tmp_path)
    assert out["missing"] == []
    for name in ("accuracy", "training", "firing_rate", "energy", "raster", "operating_points"):
        png = tmp_path / out["plots"][name].split("/")[-1]
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    md = (tmp_path / "report.md").read_text()
    for text in ("## Configuration", "## Accuracy vs time steps", "## Activity per layer",
                 "## Energy per inference: two conventions", "no per-operation energy figures for Loihi 2",
                 "1.66 mJ", "## Resource fit on Loihi 2", "## Quantization error",
                 "agreement (identical output spike trains)", "![spike raster of one sample](raster.png)",
                 "ANN, ", "## Operating points", "**4** (deployed)", "**Suggested T**: T = 3 is"):
        assert text in md, text
    assert "Not available" not in md
    _assert_both_energy_conventions(md)


def _assert_both_energy_conventions(md: str) -> None:
    """Both conventions are there, each labelled with what it includes, and the warning that
    they must not be compared sits above the numbers."""
    section = md[md.index("## Energy per inference"):md.index("## Resource fit")]
    warning = section.index("do not compare a figure of one with a figure of the other")
    a = section.index("### (a) Loihi estimate, per operation (ESTIMATE)")
    b = section.index("### (b) Conversion-literature convention (compute only)")
    assert warning < a < b
    assert "(a) Estimated SNN energy per inference on Loihi" in section[a:b]
    for text in ("**SNN total (b)**", "**ANN, MACs (fp32, E_MAC) (b)**", "(b) ANN / SNN energy",
                 "no memory access, routing", "| ac_fp32_pj | 0.9000 |", "| ann_mac_fp32_pj | 4.6 |"):
        assert text in section[b:], text


def test_nir_import_and_export_are_named(tmp_path, rng):
    report = full_report(rng, tmp_path)
    write(tmp_path, report)
    render_report(tmp_path)
    assert "## Network files (NIR)" not in (tmp_path / "report.md").read_text()
    report["import"] = {"source": "/data/snntorch.nir", "source_sha256": "ab" * 32,
                        "path": str(tmp_path / "imported.nir"), "sha256": "cd" * 32,
                        "readout": "potential", "dt": 1e-4, "layers": ["fc1 (Dense)", "fc2 (Dense)"]}
    report["export_nir"] = {"path": str(tmp_path / "model.nir"), "sha256": "ef" * 32, "format": "nir",
                            "neuron": "cuba", "readout": "potential", "source": "imported-nir"}
    write(tmp_path, report)
    render_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "## Network files (NIR)" in md
    assert "Imported from the NIR graph `/data/snntorch.nir`" in md and "2 layers" in md
    assert f"NIR graph written to `{tmp_path / 'model.nir'}` (neuron cuba" in md


def test_partial_report_says_what_is_missing(tmp_path):
    write(tmp_path, training_and_eval())
    out = render_report(tmp_path)
    assert set(out["missing"]) >= {"lava", "probes", "energy", "resources", "quantization"}
    assert out["plots"]["energy"] is None and out["plots"]["raster"] is None
    assert out["plots"]["firing_rate"] is None
    assert (tmp_path / "accuracy_vs_t.png").exists() and (tmp_path / "training.png").exists()
    md = (tmp_path / "report.md").read_text()
    assert "Incomplete run" in md and "`python -m pipeline run`" in md
    assert "`python -m pipeline export`" in md
    assert "Estimate only" in md          # the caveat is there even without numbers


def test_energy_computed_from_probes_when_not_stored(tmp_path, rng):
    report = full_report(rng, tmp_path)
    del report["energy"], report["resources"]
    report["config"]["energy"] = {"synop_pj": 10.0}
    write(tmp_path, report)
    out = render_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert out["plots"]["energy"] is not None and "resources" in out["missing"]
    assert "MAC counts need the network" in md     # no .net file: ANN baseline omitted
    assert "| synop_pj | 10 |" in md


def test_old_energy_section_without_the_literature_convention_renders_both(tmp_path, rng):
    """A report.json written before convention (b) existed validates, and the report computes
    (b) from the stored probes, constants and ANN MAC count: the same as a new report.json."""
    from pipeline.artifacts import RunDir

    def literature_part() -> str:
        render_report(tmp_path)
        md = (tmp_path / "report.md").read_text()
        return md[md.index("### (b)"):md.index("Constants used")]

    report = full_report(rng, tmp_path)
    write(tmp_path, report)
    new = literature_part()
    for key in ("includes", "literature", "not_comparable"):
        del report["energy"][key]
    for row in report["energy"]["layers"]:
        del row["literature_pj"]
    report["energy"]["constants"] = [c for c in report["energy"]["constants"]
                                     if c["name"] != "ac_fp32_pj"]
    write(tmp_path, report)
    assert RunDir(tmp_path).read_report().to_json_dict()["energy"].get("literature") is None
    old = literature_part()
    assert old.split("By layer")[0] == new.split("By layer")[0] and "**SNN total (b)**" in old


def test_bad_energy_override_in_config_is_reported_not_fatal(tmp_path, rng):
    report = full_report(rng, tmp_path)
    del report["energy"]
    report["config"]["energy"] = {"synop": 10.0}
    write(tmp_path, report)
    out = render_report(tmp_path)
    assert any("energy.synop" in n for n in out["notes"])


def test_empty_accuracy_and_missing_report(tmp_path):
    with pytest.raises(ReportError, match="no report.json"):
        render_report(tmp_path)
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="report.json is not readable JSON"):
        render_report(tmp_path)
    write(tmp_path, {})
    out = render_report(tmp_path)
    assert all(v is None for v in out["plots"].values())
    assert "Not available" in (tmp_path / "report.md").read_text()


def test_potential_readout_report_with_lava_at_T_only(tmp_path, rng):
    """The paper's readout: Lava accuracy exists at T only, the output layer sends no spikes
    (no firing rate, left out of the firing-rate plot) and report.md says so."""
    from hardware.ir import readout_neuron

    report = full_report(rng, tmp_path)
    plain = small_net(rng)
    fc = Dense(plain.layers[-1].weight, None, readout_neuron(True), name="fc")
    net = plain.replace(layers=plain.layers[:-1] + [fc], readout="potential")
    layers = spiking_layers(net)
    trains = [rng.random((T, 4) + sl.shape) < (0 if sl.readout else 0.2) for sl in layers]
    act = layer_activity(net, trains, rng.integers(0, 256, (4, 1, 8, 8)))
    report["readout"] = "potential"
    report["lava"]["readout"] = "potential"
    report["accuracy"]["lava"] = {str(T): 0.75}
    report["probes"] = act.to_dict()
    report["energy"] = energy_estimate(act, {}, count_macs(net))
    report["resources"] = check_fit(net).to_dict()
    report["quantization"][-1].update(threshold_float=None, threshold_mantissa=131071, readout_steps=T)
    write(tmp_path, report)
    out = render_report(tmp_path)
    assert out["missing"] == [] and out["plots"]["accuracy"] and out["plots"]["firing_rate"]
    md = (tmp_path / "report.md").read_text()
    for text in ("Readout: potential", "identical output membrane at T and hidden-layer spikes",
                 "fc (readout, no spikes)", "dense (readout)", "readout_steps"):
        assert text in md, text
    rows = [line for line in md.splitlines() if line.startswith(("| 1 | 0.9500", f"| {T} | 0.9500"))]
    assert len(rows) == 2 and rows[0].endswith("| – |") and rows[1].endswith("| 0.7500 |")


def test_raster_not_named_by_the_report_is_not_shown(tmp_path, rng):
    """A raster.npz left by a killed run (its hash is not the one report.json names) may describe
    another network: the report leaves it out and says why."""
    report = full_report(rng, tmp_path)
    report["raster"]["sha256"] = "0" * 64
    write(tmp_path, report)
    out = render_report(tmp_path)
    assert out["plots"]["raster"] is None
    assert any("raster.npz is not the raster report.json names" in n for n in out["notes"])
    del report["raster"]
    write(tmp_path, report)
    assert render_report(tmp_path)["plots"]["raster"] is None


def test_section_of_the_wrong_type_is_a_clean_error_naming_it(tmp_path, rng):
    report = full_report(rng, tmp_path)
    report["energy"]["layers"][0]["total"] = "lots"
    write(tmp_path, report)
    with pytest.raises(ArtifactError, match=r"report.json: section energy.layers.0.total"):
        render_report(tmp_path)
    assert not (tmp_path / "report.md").exists()


def test_summary_prints_energy_in_both_conventions_labelled(tmp_path, rng):
    from pipeline.report import format_summary

    report = full_report(rng, tmp_path)
    text = format_summary(report)
    lit = report["energy"]["literature"]
    assert "two conventions (do not compare one with the other)" in text
    assert f"(a) Loihi estimate: {report['energy']['total_pj'] / 1e6:.4g} µJ" in text
    assert f"(b) literature, compute only: SNN {lit['snn_pj'] / 1e6:.4g} µJ" in text
    assert f"against the ANN's {lit['ann_macs']:,} MACs: {lit['ann_pj'] / 1e6:.4g} µJ" in text
