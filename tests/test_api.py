"""The README's "Deploy your own model" examples, run as written (on a tiny budget): the one
command with model.factory, and the few Python lines of pipeline.api."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import api
from pipeline.cli import main
from pipeline.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
#: a budget that runs every stage in seconds: 1 epoch, T = 2, 2 Lava samples
TINY = {"nq.sigma_samples": 16, "train.epochs": 1, "train.select_samples": 16, "snn.timesteps": 2,
        "eval.timesteps": 2, "run.lava_samples": 2, "run.probes": False}


def _section_blocks(language: str) -> list[str]:
    """The ``language`` code blocks of the README's "Deploy your own model" section."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Deploy your own model", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


@pytest.mark.lava
def test_the_readme_command_deploys_the_example_factory(tmp_path, monkeypatch, capsys):
    command = shlex.split(_section_blocks("sh")[0])
    assert command[:4] == ["python", "-m", "pipeline", "all"]
    assert "model.factory=examples.my_nets:build" in command
    monkeypatch.chdir(REPO)  # the factory is imported from the working directory, as the README runs it
    argv = command[3:] + [f"--set={k}={v}" for k, v in TINY.items()] + [f"--set=run.dir={tmp_path / 'cli'}"]
    assert main(argv) == 0, capsys.readouterr().err
    report = api.pipeline_stages.read_report(tmp_path / "cli")
    assert report["lava"]["agreement"] == 1.0
    assert report["training"]["pretrained"] is None  # a fresh init: nothing to report before fine-tuning
    assert report["export"]["source"] == "checkpoint"


@pytest.mark.lava
def test_the_readme_python_lines_deploy_a_model_object(tmp_path, monkeypatch):
    deploy = api.deploy
    calls = []

    def tiny_deploy(model, train, test, *, run_dir, overrides=(), **kw):
        calls.append((run_dir, dict(overrides)))
        return deploy(model, train, test, run_dir=tmp_path / "api", overrides={**overrides, **TINY}, **kw)

    monkeypatch.setattr(api, "deploy", tiny_deploy)
    monkeypatch.chdir(REPO)
    namespace: dict = {}
    exec(compile(_section_blocks("python")[0], "README.md", "exec"), namespace)  # noqa: S102 (our README)
    report = namespace["report"]
    assert calls == [("runs/my_net_api", {"train.epochs": 5})]
    assert report["lava"]["agreement"] == 1.0 and report["config"]["data"]["name"] == "npz"
    # the object's own weights are the starting point, measured before fine-tuning
    assert 0.0 <= report["training"]["pretrained"]["ann_test"] <= 1.0
    assert (tmp_path / "api" / api.DATA_FILE).is_file()


def test_the_callers_model_object_is_not_trained(tmp_path):
    from examples.my_nets import build

    model = build(width=4, classes=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.rand(64, 1, 8, 8), torch.arange(64) % 4
    dataset = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(dataset, batch_size=10)
    cfg = api.configure(tmp_path, loader, (x[:16].numpy(), y[:16].numpy()), overrides=TINY)
    assert cfg.data.name == "npz" and Path(cfg.data.root) == tmp_path / api.DATA_FILE
    with np.load(cfg.data.root) as npz:
        assert np.array_equal(npz["x_train"], x.numpy()) and np.array_equal(npz["y_train"], y.numpy())
    api.deploy(model, dataset, (x[:16], y[:16]), run_dir=tmp_path / "run", overrides=TINY, stages=("train",))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_calls_are_refused_with_one_line(tmp_path):
    with pytest.raises(Exception, match="nn.Module"):
        api.deploy("not a model", (np.zeros((4, 1, 8, 8)), np.zeros(4)), (np.zeros((4, 1, 8, 8)), np.zeros(4)),
                   run_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown stage"):
        api.deploy(torch.nn.Linear(2, 2), None, None, run_dir=tmp_path, stages=("fly",))
    with pytest.raises(Exception, match=r"\(x, y\) pair"):
        api.configure(tmp_path, 42, None)
    (tmp_path / "checkpoint.safetensors").write_bytes(b"")
    with pytest.raises(Exception, match="trains afresh, but .* already holds checkpoint.safetensors"):
        api.deploy(torch.nn.Linear(2, 2), None, None, run_dir=tmp_path)
    with pytest.raises(ConfigError, match="train.epochs"):
        api.configure(tmp_path, None, None, overrides={"train.epochs": 0})
