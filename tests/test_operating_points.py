"""Every T in the report: the activity of the first t steps equals a run of t steps, its cost is
the energy model's at that T, steps to decision and the suggested T follow their definitions,
and the run stage puts its headline (probes, energy) at the deployment T with Lava's probes
equal to the reference's there.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hardware.analysis.activity import activity_by_t, activity_from_sim
from hardware.analysis.energy import cost_by_t, count_macs, energy_estimate
from hardware.formats.netx import read_net
from hardware.simulator import encode_input, simulate
from pipeline import stages
from pipeline.artifacts import NET_FILE
from pipeline.config import Config
from pipeline.data import load_dataset
from pipeline.operating_point import steps_to_decision, suggest_timesteps
from pipeline.report import format_summary
from tests.bad_inputs.base import TINY_CONFIG

STEPS = 5
T, CURVE = 2, 4


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A digits if_soft network deployed at T = 2 (its curve to T = 4): trained, evaluated, exported."""
    raw = {k: dict(v) for k, v in TINY_CONFIG.items()}
    raw["run"].update(dir=str(tmp_path_factory.mktemp("points") / "run"), probes=True, lava_samples=4)
    cfg = Config.from_dict(raw, [f"snn.timesteps={T}", f"eval.timesteps={CURVE}"])
    for stage in (stages.train, stages.evaluate, stages.export):
        stage(cfg, progress=False)
    return cfg


def _digits_run(cfg, samples: int = 40):
    """The exported net, the first ``samples`` encoded test images and a STEPS-step simulation."""
    net = read_net(cfg.run_dir / NET_FILE)
    x = load_dataset(cfg.data, seed=cfg.train.seed).test.tensors[0][:samples].numpy()
    x = encode_input(x.reshape((len(x),) + tuple(net.input.shape)), net.input_bits)
    return net, x, simulate(net, torch.as_tensor(x), STEPS, record_spikes=True)


def test_the_activity_of_the_first_t_steps_is_a_run_of_t_steps(exported):
    net, x, res = _digits_run(exported)
    by_t = activity_by_t(net, res, x)
    assert [a.timesteps for a in by_t] == list(range(1, STEPS + 1))
    for t, activity in enumerate(by_t, start=1):
        direct = activity_from_sim(net, simulate(net, torch.as_tensor(x), t, record_spikes=True), x)
        assert activity.to_dict() == direct.to_dict()
    assert all(la["spikes"] > 0 for la in by_t[-1].to_dict()["layers"] if not la["readout"])


def test_the_cost_at_each_t_is_the_energy_model_at_that_t(exported):
    net, x, res = _digits_run(exported)
    activities = activity_by_t(net, res, x)
    macs = count_macs(net)
    for activity, cost in zip(activities, cost_by_t(activities, {"synop_pj": 10.0}, macs)):
        estimate = energy_estimate(activity, {"synop_pj": 10.0}, macs, steps_per_sample=activity.timesteps)
        totals = activity.to_dict()["totals"]
        assert cost.timesteps == activity.timesteps
        assert cost.loihi_uj == estimate["total_uj"]
        assert cost.literature_snn_uj == estimate["literature"]["snn_pj"] * 1e-6
        assert cost.literature_ann_uj == estimate["literature"]["ann_pj"] * 1e-6
        assert cost.synops == totals["synops"] and cost.spikes == totals["spikes"]
        assert cost.synops_per_ann_mac == totals["synops"] / sum(macs)


def test_steps_to_decision():
    # three samples over 4 steps: decided at once; changes at step 3; changes at 2 and flips back at 4
    predictions = np.array([[1, 0, 2],
                            [1, 0, 3],
                            [1, 5, 3],
                            [1, 5, 2]])
    assert steps_to_decision(predictions) == [1.0, (1 + 1 + 2) / 3, (1 + 3 + 2) / 3, (1 + 3 + 4) / 3]


def test_the_suggested_t_is_the_smallest_within_the_drop_on_validation():
    val = {"1": 0.80, "2": 0.975, "3": 0.99, "4": 0.985}
    assert suggest_timesteps(0.985, val, 0.01)[0] == 2
    assert suggest_timesteps(0.985, val, 0.0)[0] == 3
    t, why = suggest_timesteps(0.999, val, 0.001)
    assert t is None and "no T ≤ 4" in why and "0.9900" in why
    t, why = suggest_timesteps(None, val, 0.01)
    assert t is None and "ANN" in why


@pytest.fixture(scope="module")
def ran(exported):
    """The exported network run (the reference on test and validation, Lava on 4 samples)."""
    stages.run(exported, progress=False)
    return exported, json.loads((exported.run_dir / "report.json").read_text())


@pytest.mark.lava
def test_the_headline_is_at_the_deployment_t_and_equals_lava(ran):
    cfg, report = ran
    points = report["operating_points"]
    assert points["deployment_timesteps"] == T
    assert [r["timesteps"] for r in points["rows"]] == list(range(1, CURVE + 1))
    assert report["probes"]["timesteps"] == T and report["energy"]["timesteps"] == T
    assert report["energy"]["steps_per_sample"] == T
    at_t = points["rows"][T - 1]["cost"]
    assert at_t["synops"] == report["probes"]["totals"]["synops"]
    assert at_t["loihi_uj"] == report["energy"]["total_uj"]
    # the accuracy at every T is the fixed-point curve's; Lava's probes equal the reference's at T
    assert {str(r["timesteps"]): r["snn_fixed"] for r in points["rows"]} == report["accuracy"]["snn_fixed"]
    assert report["lava"]["steps_per_sample"] == T and report["lava"]["probes_equal_reference"] is True
    assert report["lava"]["probes"]["timesteps"] == T
    # ... and equal, layer by layer, the activity the run stage records at T for the same samples
    net, x, res = _digits_run(cfg, samples=report["lava"]["samples"])
    assert activity_by_t(net, res, x)[T - 1].to_dict()["layers"] == report["lava"]["probes"]["layers"]


@pytest.mark.lava
def test_the_suggestion_uses_the_validation_split_and_the_summary_shows_the_headline(ran):
    cfg, report = ran
    points = report["operating_points"]
    assert points["ann_val"] == report["accuracy"]["ann_val"] is not None
    assert points["validation_samples"] > 0 and points["max_drop"] == cfg.eval.max_drop
    assert all(r["snn_fixed_val"] is not None for r in points["rows"])
    expected, _ = suggest_timesteps(points["ann_val"], {str(r["timesteps"]): r["snn_fixed_val"]
                                                        for r in points["rows"]}, cfg.eval.max_drop)
    assert points["suggested_timesteps"] == expected
    summary = format_summary(report)
    assert f"deployed at T = {T}: accuracy" in summary and "suggested T:" in summary
    assert f"energy per inference at T = {T}" in summary


@pytest.mark.lava
def test_the_report_shows_the_table_and_the_plot(ran):
    cfg, _ = ran
    rendered = stages.report(cfg, progress=False)
    text = (cfg.run_dir / "report.md").read_text()
    assert "## Operating points" in text and f"**{T}** (deployed" in text
    assert rendered["plots"]["operating_points"] is not None
    assert (cfg.run_dir / "operating_points.png").exists()
