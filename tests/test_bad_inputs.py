"""Generated bad inputs through the CLI (issue 8): every one is refused cleanly.

For each case (see :mod:`tests.bad_inputs`): exit code 2, stderr's last non-empty line
is the only one starting with ``error:`` (and names what is wrong), no traceback,
nothing on stdout, no file written outside ``run.dir``, no process of the run left
alive, no payload run; memory bombs are refused in under a second without allocating.

Most cases run ``pipeline.cli.main`` in a forked child of this process (imports paid
once; own session, address-space limit and timeout: :func:`harness.run_forked`); a
representative subset runs the real ``python -m pipeline`` under ``RLIMIT_AS`` = 4 GB.
The valid bases every case mutates are checked to be accepted, so each refusal is the
case's doing.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from tests.bad_inputs import Case
from tests.bad_inputs.base import Workspace, valid_digits_net, write_idx_dataset
from tests.bad_inputs.cases_config import config_cases
from tests.bad_inputs.cases_data import dataset_cases
from tests.bad_inputs.cases_net import net_cases
from tests.bad_inputs.cases_nir import nir_cases
from tests.bad_inputs.cases_report import report_cases
from tests.bad_inputs.cases_weights import checkpoint_cases, train_state_cases
from tests.bad_inputs.harness import (EXIT_REACHED_LAVA, LightForkServer, Outcome, run_forked,
                                      run_subprocess, snapshot)

ALL_CASES: list[Case] = (config_cases() + net_cases() + checkpoint_cases() + train_state_cases()
                         + report_cases() + dataset_cases() + nir_cases())
BY_ID = {c.id: c for c in ALL_CASES}
assert len(BY_ID) == len(ALL_CASES), "case ids must be unique"

pytestmark = pytest.mark.usefixtures("warm_stage_imports")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A run directory trained, evaluated and exported through the CLI (tiny config)."""
    ws = new_workspace(tmp_path_factory.mktemp("trained"))
    for stage in ("train", "evaluate", "export"):
        outcome = run_forked(ws.argv(stage), ws.root, ws.root / "scratch", timeout=300)
        assert outcome.returncode == 0, f"{stage} of the base run failed: {outcome.describe()}"
    return ws.run


def new_workspace(root: Path) -> Workspace:
    """A directory with the tiny config and an empty inputs folder."""
    ws = Workspace(root)
    ws.inputs.mkdir(parents=True)
    ws.write_config()
    return ws


def make_workspace(root: Path, case: Case, trained_run_dir) -> Workspace:
    """The case's directory with what it starts from (``case.base``)."""
    ws = new_workspace(root)
    if case.base == "trained":
        shutil.copytree(trained_run_dir(), ws.run)
    elif case.base == "net":
        valid_digits_net(ws.inputs / "model.net")
    elif case.base == "idx":
        write_idx_dataset(ws.inputs / "mnist")
        cfg = ws.config_dict()
        cfg["data"] = {"name": "mnist", "root": str(ws.inputs / "mnist")}
        cfg["model"] = {"arch": "cnn-small"}
        ws.write_config(cfg)
    return ws


def _matches(text: str, needle) -> bool:
    options = needle if isinstance(needle, tuple) else (needle,)
    return any(str(o).lower() in text.lower() for o in options)


def assert_refused(outcome: Outcome, case: Case, ws: Workspace, before: dict) -> None:
    """Every promise of a clean refusal, each with its own message."""
    problems = []
    if ws.marker.exists():
        problems.append("CODE EXECUTION: the payload ran (marker file exists)")
    if outcome.timed_out:
        problems.append(f"no answer within {case.timeout} s")
    if outcome.returncode == EXIT_REACHED_LAVA and case.may_be_valid:
        pass  # a random mutation that left a valid file
    elif outcome.returncode == EXIT_REACHED_LAVA:
        problems.append("accepted: the run reached the Lava phase")
    elif outcome.returncode != 2:
        problems.append(f"exit code {outcome.returncode}, expected 2")
    if "Traceback" in outcome.stderr:
        problems.append("traceback on stderr")
    lines = [ln for ln in outcome.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    if outcome.returncode == EXIT_REACHED_LAVA and case.may_be_valid:
        pass
    elif not lines or not lines[-1].startswith("error:") or len(errors) != 1:
        problems.append(f"stderr must end in exactly one 'error:' line, got {len(errors)}")
    else:
        missing = [n for n in case.needles if not _matches(errors[0], n)]
        if missing:
            problems.append(f"the error line does not name {missing}")
    if outcome.stdout.strip():
        problems.append("output on stdout")
    after = snapshot(ws.root, ws.run)
    changed = sorted(k for k in set(before) | set(after)
                     if before.get(k) != after.get(k) and not k.startswith("scratch"))
    if changed:
        problems.append(f"files written outside run.dir: {changed[:5]}")
    if outcome.leftover:
        problems.append(f"processes left alive: {outcome.leftover[:3]}")
    if case.bomb and (outcome.seconds is None or outcome.seconds > case.bomb_seconds):
        problems.append(f"memory bomb took {outcome.seconds} s (limit {case.bomb_seconds} s)")
    assert not problems, f"{case.id} [{case.owner}]: " + "; ".join(problems) + \
        "\n" + outcome.describe()


@pytest.fixture
def trained_run_dir(request):
    """Lazily: only cases on a trained base pay for training (once per module)."""
    return lambda: request.getfixturevalue("trained_run")


def _params(cases):
    return [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in cases]


@pytest.fixture(scope="module")
def light_server():
    server = LightForkServer()
    yield server
    server.close()


@pytest.mark.parametrize("case", _params(ALL_CASES))
def test_bad_input_is_refused(case: Case, tmp_path, trained_run_dir, request):
    ws = make_workspace(tmp_path / "ws", case, trained_run_dir)
    overrides = case.plant(ws)
    before = snapshot(ws.root, ws.run)
    run = request.getfixturevalue("light_server").run if case.light else run_forked
    outcome = run(ws.argv(case.stage, *overrides), ws.root, tmp_path / "scratch",
                  timeout=case.timeout)
    assert_refused(outcome, case, ws, before)


# --------------------------------------------------------------------------- the bases
def test_valid_bases_are_accepted(tmp_path, trained_run):
    """The inputs the cases mutate are valid: a refusal in a case is the mutation's doing."""
    net = Case(id="base-net", owner="-", stage="run", plant=lambda ws: (), base="net")
    ws = make_workspace(tmp_path / "net", net, lambda: trained_run)
    outcome = run_forked(ws.argv("run", f"run.net={ws.inputs / 'model.net'}"), ws.root,
                         tmp_path / "s1")
    assert outcome.returncode == EXIT_REACHED_LAVA, outcome.describe()

    idx = Case(id="base-idx", owner="-", stage="train", plant=lambda ws: (), base="idx")
    ws = make_workspace(tmp_path / "idx", idx, lambda: trained_run)
    outcome = run_forked(ws.argv("train"), ws.root, tmp_path / "s2")
    assert outcome.returncode == 0, outcome.describe()

    ws = make_workspace(tmp_path / "trained", Case("base-run", "-", "evaluate", lambda ws: (),
                                                   base="trained"), lambda: trained_run)
    for stage in ("evaluate", "export", "train", "report"):
        outcome = run_forked(ws.argv(stage), ws.root, tmp_path / f"s-{stage}")
        assert outcome.returncode == 0, f"{stage}: {outcome.describe()}"


# --------------------------------------------------------------------------- real CLI
#: the representative subset run through ``python -m pipeline`` under RLIMIT_AS = 4 GB:
#: config bombs (no heavy import), every code-execution payload, the memory bombs
SUBPROCESS_IDS = [
    "config-billion-laughs-value", "config-deep-flow-list", "config-syntax-python-tag-payload",
    "config-run.dir-nul", "config-path-dev-zero", "config-duplicate-section",
    "config-override-payload", "config-range-train.lr-int401",
]
SUBPROCESS_HEAVY_IDS = [
    "checkpoint-evaluate-torchscript", "checkpoint-evaluate-pickle-payload",
    "checkpoint-evaluate-torch-zip-payload", "train-state-pickle-payload",
    "train-state-torchscript", "net-bomb-dense-60k-by-60k", "net-bomb-bias-1e9",
    "dataset-gzip-bomb", "net-softlink-cycle", "net-conv-stride-0", "dataset-cifar10-payload",
    "report-report-truncated-half",
]
#: in the default run; the other heavy ones (each pays torch + Lava imports) in -m slow
SUBPROCESS_DEFAULT_HEAVY = {"checkpoint-evaluate-pickle-payload", "net-bomb-dense-60k-by-60k"}


def _subprocess_params():
    params = [pytest.param(BY_ID[i], id=i) for i in SUBPROCESS_IDS]
    params += [pytest.param(BY_ID[i], id=i, marks=[] if i in SUBPROCESS_DEFAULT_HEAVY
                            else [pytest.mark.slow]) for i in SUBPROCESS_HEAVY_IDS]
    return params


@pytest.mark.parametrize("case", _subprocess_params())
def test_bad_input_refused_by_the_real_cli(case: Case, tmp_path, trained_run_dir):
    ws = make_workspace(tmp_path / "ws", case, trained_run_dir)
    overrides = case.plant(ws)
    before = snapshot(ws.root, ws.run)
    outcome = run_subprocess(ws.argv(case.stage, *overrides), ws.root, timeout=300)
    # the stage's own time is measured in-process (test_bad_input_is_refused); here the
    # limit on address space is the check that nothing was allocated
    assert_refused(outcome, dataclasses.replace(case, bomb=False), ws, before)
