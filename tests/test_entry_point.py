"""The console script ``nqloihi`` is ``python -m pipeline``: one function behind both."""
import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import tomli

import pipeline.__main__
from pipeline import cli

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("nqloihi")


def _declared_entry_point() -> str:
    return tomli.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["nqloihi"]


def test_nqloihi_is_declared_and_is_what_python_m_pipeline_runs():
    module, _, function = _declared_entry_point().partition(":")
    assert (module, function) == ("pipeline.cli", "script")
    assert getattr(cli, function) is pipeline.__main__.script


def _sub_commands(parser) -> dict:
    """sub-command -> its options, as argparse parses them."""
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {name: sorted(o for a in p._actions for o in a.option_strings) for name, p in sub.choices.items()}


def test_both_commands_have_the_same_sub_commands():
    script_commands = _sub_commands(cli.build_parser("nqloihi"))
    assert script_commands == _sub_commands(cli.build_parser("python -m pipeline"))
    assert list(script_commands) == list(cli.STAGES)


@pytest.mark.skipif(not SCRIPT.exists(), reason=f"{SCRIPT} not installed: run `make venv` "
                                                  f"(or pip install -e .) after a pyproject.toml change")
def test_installed_script_runs():
    proc = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: nqloihi ")
    assert all(name in proc.stdout for name in cli.STAGES)
    refused = subprocess.run([str(SCRIPT), "train", "--set", "train.lr=-1"], capture_output=True, text=True,
                             timeout=120, cwd=REPO)
    assert refused.returncode == cli.EXIT_TOOLKIT_ERROR and "train.lr" in refused.stderr
