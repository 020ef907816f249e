"""CLI: every ToolkitError is `error: <message>` on stderr, exit 2, no traceback."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hardware.errors import ToolkitError
from pipeline import cli

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=REPO, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_clean_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert lines, proc.stderr
    for n in needles:
        assert n in proc.stderr, (n, proc.stderr)
    assert proc.stdout == ""


def test_bad_key_in_config_file(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train:\n  lrr: 0.1\n")
    assert_clean_error(run_cli("train", "--config", str(cfg)), "train.lrr", "train.lr")


def test_bad_value_and_bad_override():
    assert_clean_error(run_cli("evaluate", "--set", "nq.levels=0"), "nq.levels", ">= 1")
    assert_clean_error(run_cli("export", "--set", "nq.levelz=3"), "nq.levelz")
    assert_clean_error(run_cli("run", "--set", "nqlevels"), "nqlevels", "section.key=value")


def test_missing_config_file(tmp_path):
    assert_clean_error(run_cli("all", "--config", str(tmp_path / "none.yaml")), "not found")


def test_usage_errors_exit_2():
    proc = run_cli("fly")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", list(cli.STAGES))
def test_every_subcommand_validates_config_first(command, capsys):
    deploy = str(REPO / "deploy.yaml")
    assert cli.main([command, "--config", deploy, "--set", "train.lr=-1"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "train.lr" in err


def test_toolkit_error_from_a_stage_is_exit_2(monkeypatch, capsys):
    def boom(args):
        raise ToolkitError("layer conv1: weight 300 does not fit 8 bits")
    monkeypatch.setattr(cli, "_run", boom)
    assert cli.main(["train"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "error: layer conv1: weight 300 does not fit 8 bits")


def test_keyboard_interrupt_is_exit_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "_run", interrupted)
    assert cli.main(["train"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_stages_import():
    """An import error in the stages is a failure, never a reason to skip a test."""
    import pipeline.stages  # noqa: F401


def test_missing_dataset_via_cli(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli("train", "--set", "data.name=mnist", "--set", f"data.root={empty}",
                   "--set", f"run.dir={tmp_path / 'run'}")
    assert_clean_error(proc, str(empty), "train-images-idx3-ubyte", "data.root")
