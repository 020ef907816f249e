"""Every stage once, successfully, through the real CLI (``python -m pipeline``) on digits.

One tiny run (one epoch, T = 2, two Lava samples) is made stage by stage and shared by
the tests; ``all --json`` makes a second one, and a third runs the first one's .net via
``run.net``. Each stage must exit 0 without a traceback, leave no process of its session
alive, and write only inside its ``run.dir``; ``--json`` prints exactly one JSON
document on stdout.
"""
from __future__ import annotations

import hashlib
import json
import resource
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.artifacts import CHECKPOINT, NET_FILE, REPORT_JSON, REPORT_MD, TRAIN_STATE
from tests.bad_inputs.base import Workspace
from tests.bad_inputs.harness import Outcome, run_subprocess, snapshot

LAVA_SAMPLES = 2


@dataclass
class Stage:
    outcome: Outcome
    ws: Workspace
    written_elsewhere: list


def run_stage(ws: Workspace, stage: str, *args: str, overrides=()) -> Stage:
    """One CLI call; record what changed outside its run.dir."""
    before = snapshot(ws.root, ws.run)
    argv = ws.argv(stage, f"run.lava_samples={LAVA_SAMPLES}", *overrides) + list(args)
    outcome = run_subprocess(argv, ws.root, timeout=600, address_space=resource.RLIM_INFINITY)
    after = snapshot(ws.root, ws.run)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    return Stage(outcome, ws, changed)


def assert_success(stage: Stage) -> None:
    out = stage.outcome
    assert out.returncode == 0, out.describe()
    assert "Traceback" not in out.stderr, out.describe()
    assert not out.leftover, f"processes left alive: {out.leftover}"
    assert not stage.written_elsewhere, f"files written outside run.dir: {stage.written_elsewhere}"


def json_document(stage: Stage) -> dict:
    """stdout must be exactly one JSON document (logs go to stderr)."""
    try:
        doc = json.loads(stage.outcome.stdout)
    except json.JSONDecodeError as exc:
        pytest.fail(f"--json stdout is not one JSON document ({exc}): {stage.outcome.stdout[:500]!r}")
    assert isinstance(doc, dict), type(doc)
    return doc


def report_of(ws: Workspace) -> dict:
    return json.loads((ws.run / REPORT_JSON).read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _workspace(root: Path) -> Workspace:
    ws = Workspace(root)
    ws.inputs.mkdir(parents=True)
    ws.write_config()
    return ws


# one run, stage by stage: each fixture is the previous one plus its stage
@pytest.fixture(scope="module")
def first(tmp_path_factory) -> Workspace:
    return _workspace(tmp_path_factory.mktemp("first"))


@pytest.fixture(scope="module")
def trained(first) -> Stage:
    return run_stage(first, "train")


def _after(previous: Stage, *argv: str) -> Stage:
    """The next stage of the same run, once the previous one has succeeded."""
    assert_success(previous)
    return run_stage(previous.ws, *argv)


@pytest.fixture(scope="module")
def evaluated(trained) -> Stage:
    return _after(trained, "evaluate", "--json")


@pytest.fixture(scope="module")
def exported(evaluated) -> Stage:
    return _after(evaluated, "export")


@pytest.fixture(scope="module")
def ran(exported) -> Stage:
    return _after(exported, "run", "--json")


@pytest.fixture(scope="module")
def reported(ran) -> Stage:
    return _after(ran, "report", "--json")


def test_train(trained):
    assert_success(trained)
    run = trained.ws.run
    assert (run / CHECKPOINT).is_file() and (run / TRAIN_STATE).is_file(), sorted(p.name for p in run.iterdir())
    history = report_of(trained.ws)["training"]["history"]
    assert [h["epoch"] for h in history] == [1]
    assert "ANN" in trained.outcome.stdout  # the accuracy table


def test_evaluate_json(evaluated):
    assert_success(evaluated)
    doc = json_document(evaluated)
    acc = report_of(evaluated.ws)["accuracy"]
    assert 0.0 <= acc["ann"] <= 1.0
    assert sorted(acc["snn_float"]) == ["1", "2"]
    assert doc["accuracy"]["ann"] == acc["ann"]


def test_export(exported):
    from hardware.formats.netx import read_net

    assert_success(exported)
    net_file = exported.ws.run / NET_FILE
    net = read_net(net_file)
    assert tuple(net.input.shape) == (1, 8, 8) and net.input_bits == 8
    assert report_of(exported.ws)["export"]["sha256"] == sha256(net_file)


def test_run_json(ran):
    assert_success(ran)
    doc = json_document(ran)
    report = report_of(ran.ws)
    lava = report["lava"]
    assert lava["samples"] == LAVA_SAMPLES
    # the tiny config's snn.timesteps (2): the T model.net is made for and Lava runs
    assert lava["steps_per_sample"] == report["network_file"]["timesteps"] == report["export"]["timesteps"] == 2
    assert lava["agreement"] == 1.0, lava
    assert doc["lava"]["agreement"] == 1.0


def test_report_json(reported):
    assert_success(reported)
    json_document(reported)
    assert (reported.ws.run / REPORT_MD).is_file()


def test_all_json_prints_one_document(tmp_path):
    stage = run_stage(_workspace(tmp_path), "all", "--json")
    assert_success(stage)
    doc = json_document(stage)
    assert {"accuracy", "lava"} <= set(doc), sorted(doc)
    assert doc["lava"]["agreement"] == 1.0


def test_run_net_made_by_another_run(ran, tmp_path):
    """``run.net`` set to the .net of another run directory: runs it, writes only here."""
    assert_success(ran)
    other_net = ran.ws.run / NET_FILE
    first_before = snapshot(ran.ws.run, ran.ws.run / "nothing")
    stage = run_stage(_workspace(tmp_path), "run", overrides=(f"run.net={other_net}",))
    assert_success(stage)
    assert snapshot(ran.ws.run, ran.ws.run / "nothing") == first_before, "the other run.dir changed"
    report = report_of(stage.ws)
    assert report["network_file"]["sha256"] == sha256(other_net)
    assert report["lava"]["agreement"] == 1.0
