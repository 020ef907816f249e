"""Where a user's network comes from: model.factory (and its errors), model.weights (safetensors,
strict), the checkpoint's recorded source (rebuilt only by a config naming it) and the pretrained
ANN's accuracy before fine-tuning."""
from __future__ import annotations

import importlib
import json
import struct
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from pipeline import stages
from pipeline.artifacts import CHECKPOINT
from pipeline.checkpoints import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from pipeline.config import Config
from pipeline.user_model import UserModelError, call_factory, from_factory, load_weights, user_model

from .test_api import REPO, TINY

FACTORY = "examples.my_nets:build"


@pytest.fixture()
def user_package(tmp_path, monkeypatch):
    """A package ``userpkg`` on sys.path whose module ``nets`` the test writes."""
    (tmp_path / "userpkg").mkdir()
    (tmp_path / "userpkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))

    def forget() -> None:  # each test's package lives in its own directory
        for name in ("userpkg", "userpkg.nets"):
            sys.modules.pop(name, None)
        importlib.invalidate_caches()

    def write(source: str) -> str:
        (tmp_path / "userpkg" / "nets.py").write_text(textwrap.dedent(source))
        forget()
        return "userpkg.nets"
    yield write
    forget()


@pytest.mark.parametrize("source, spec, needle", [
    ("", "userpkg.nowhere:build", "no module named 'userpkg.nowhere'"),
    ("", "userpkg.nets:build", "has no function 'build'"),
    ("import nonexistent_dep\n", "userpkg.nets:build", "importing userpkg.nets raised ModuleNotFoundError"),
    ("def build(**kw):\n    raise RuntimeError('bad width')\n", "userpkg.nets:build",
     "raised RuntimeError: bad width"),
    ("def build(**kw):\n    return 42\n", "userpkg.nets:build", "returned int, not a torch nn.Module"),
    ("build = 3\n", "userpkg.nets:build", "has no function 'build'"),
])
def test_factory_problems_are_one_line_naming_the_key(user_package, source, spec, needle):
    user_package(source)
    with pytest.raises(UserModelError) as info:
        call_factory(spec, {"width": 3})
    message = str(info.value)
    assert message.startswith(f"model.factory {spec}") and needle in message and "\n" not in message


def test_factory_kwargs_reach_the_function():
    model = call_factory(FACTORY, {"width": 4, "classes": 3})
    assert isinstance(model, nn.Module) and model.fc2.out_features == 3 and model.conv1.out_channels == 4


def _weights(tmp_path, state, name="w.safetensors"):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_weights_load_strictly_by_safetensors(tmp_path):
    source = call_factory(FACTORY, {"width": 4})
    target = call_factory(FACTORY, {"width": 4})
    load_weights(target, _weights(tmp_path, source.state_dict()))
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    # another float width is converted, as load_state_dict does
    half = {k: v.half() if v.is_floating_point() else v for k, v in source.state_dict().items()}
    load_weights(target, _weights(tmp_path, half, "half.safetensors"))


@pytest.mark.parametrize("edit, needle", [
    (lambda s: {k: v for k, v in s.items() if k != "fc2.bias"}, "missing ['fc2.bias']"),
    (lambda s: {**s, "extra.weight": torch.zeros(2)}, "unexpected ['extra.weight']"),
    (lambda s: {**s, "fc2.weight": torch.zeros(3, 64)}, "tensor 'fc2.weight' is F32 [3, 64], the model needs F32 [10, 64]"),
    (lambda s: {**s, "fc2.bias": torch.full((10,), float("nan"))}, "NaN"),
])
def test_weights_that_do_not_fit_are_refused(tmp_path, edit, needle):
    path = _weights(tmp_path, edit(call_factory(FACTORY, {"width": 4}).state_dict()))
    with pytest.raises(UserModelError) as info:
        load_weights(call_factory(FACTORY, {"width": 4}), path)
    assert str(info.value).startswith("model.weights: ") and needle in str(info.value)


def test_weights_that_are_a_pickle_are_never_loaded(tmp_path):
    path = tmp_path / "w.safetensors"
    torch.save(call_factory(FACTORY, {"width": 4}).state_dict(), path)
    with pytest.raises(UserModelError, match="not a safetensors file; it is never loaded"):
        load_weights(call_factory(FACTORY, {"width": 4}), path)
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(UserModelError, match="truncated or not a safetensors file"):
        load_weights(call_factory(FACTORY, {"width": 4}), path)
    with pytest.raises(UserModelError, match="no such file"):
        from_factory(FACTORY, {}, str(tmp_path / "missing.safetensors"))


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory):
    """A 1-epoch NQ fine-tuning of the example from saved 'pretrained' weights, through export."""
    root = tmp_path_factory.mktemp("pretrained")
    weights = _weights(root, call_factory(FACTORY, {"width": 4}).state_dict())
    cfg = Config.from_dict({}, [f"{k}={json.dumps(v)}" for k, v in TINY.items()] + [
        f"run.dir={root / 'run'}", f"model.factory={FACTORY}", "model.kwargs={width: 4}",
        f"model.weights={weights}"])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        stages.train(cfg, progress=False)
        stages.export(cfg, progress=False)
    return cfg


def test_pretrained_accuracy_is_reported_before_fine_tuning(fine_tuned):
    report = stages.read_report(fine_tuned.run.dir)
    pre = report["training"]["pretrained"]
    assert pre["weights"] == fine_tuned.model.weights and len(pre["sha256"]) == 64
    assert 0 <= pre["ann_test"] <= 1 and 0 <= pre["ann_val"] <= 1
    assert report["export"]["source"] == "checkpoint"
    stages.report(fine_tuned, progress=False)
    markdown = (fine_tuned.run_dir / "report.md").read_text()
    assert f"Pretrained ANN ({fine_tuned.model.weights}) before NQ fine-tuning: test " in markdown


def test_the_checkpoint_records_the_source_and_rebuilds_only_from_it(fine_tuned):
    path = fine_tuned.run_dir / CHECKPOINT
    user = user_model(fine_tuned.model)
    ckpt = load_checkpoint(path, user)
    assert ckpt["arch"] is None and ckpt["source"]["factory"] == FACTORY
    assert ckpt["source"]["kwargs"] == {"width": 4} and ckpt["source"]["weights_sha256"] == user.record["weights_sha256"]
    model_from_checkpoint(ckpt, user)
    with pytest.raises(CheckpointError, match="only a config .* naming it rebuilds it"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="but the config names model.factory examples.my_nets:build with "
                                              "model.kwargs {'width': 8}"):
        load_checkpoint(path, from_factory(FACTORY, {"width": 8}))
    with pytest.raises(CheckpointError, match="the Python object"):
        model_from_checkpoint({**ckpt, "source": {**ckpt["source"], "factory": None, "object": "x.Net"}})


def test_a_forged_source_runs_nothing(fine_tuned, tmp_path, user_package):
    """A checkpoint whose source names other code is refused before any of it is imported."""
    user_package("raise SystemExit('imported')\n")
    ckpt = load_checkpoint(fine_tuned.run_dir / CHECKPOINT, user_model(fine_tuned.model))
    forged = tmp_path / CHECKPOINT
    save_checkpoint(forged, {**ckpt, "source": {**ckpt["source"], "factory": "userpkg.nets:build"}})
    with pytest.raises(CheckpointError, match="comes from model.factory userpkg.nets:build"):
        load_checkpoint(forged, user_model(fine_tuned.model))
    assert "userpkg.nets" not in sys.modules


def test_a_registry_checkpoint_is_not_rebuilt_as_a_user_network(tmp_path):
    from models.architectures import build_model
    from pipeline.checkpoints import checkpoint_from_model

    model = build_model("cnn-small", (1, 8, 8), 10, 4, noise=False)
    ckpt = checkpoint_from_model(model, config={}, arch="cnn-small", input_shape=(1, 8, 8), num_classes=10,
                                 levels=4, record={}, history=[])
    save_checkpoint(tmp_path / CHECKPOINT, ckpt)
    with safe_open(str(tmp_path / CHECKPOINT), "pt") as f:  # the file is as the registry's always were
        assert "source" not in json.loads(f.metadata()["nqloihi"])
    assert load_checkpoint(tmp_path / CHECKPOINT)["source"] is None
    with pytest.raises(CheckpointError, match="holds the registry's cnn-small, but the config names"):
        load_checkpoint(tmp_path / CHECKPOINT, from_factory(FACTORY, {}))


def test_normalisation_is_folded_and_the_checkpoint_rebuilds_with_it(tmp_path, user_package):
    """data.mean/std: the pretrained module is measured on normalised inputs, the NQ network takes
    [0, 1] pixels (a bias-free first layer gains a bias) and evaluate rebuilds it with the fold."""
    module = user_package("""
        from torch import nn
        def build():
            return nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
        """)
    cfg = Config.from_dict({}, [f"{k}={json.dumps(v)}" for k, v in TINY.items()] + [
        f"run.dir={tmp_path / 'run'}", f"model.factory={module}:build", "data.mean=[0.5]", "data.std=[0.25]"])
    result = stages.train(cfg, progress=False)
    ckpt = load_checkpoint(cfg.run_dir / CHECKPOINT, user_model(cfg.model))
    assert "0.bias" in ckpt["state_dict"] and result["history"]
    assert stages.evaluate(cfg, progress=False)["accuracy"]["ann"] >= 0.0


def test_an_onnx_network_trains_and_rebuilds_by_its_sha256(tmp_path):
    pytest.importorskip("onnx2torch")
    module = call_factory(FACTORY, {"width": 4}).eval()
    onnx_path = tmp_path / "net.onnx"
    torch.onnx.export(module, torch.rand(2, 1, 8, 8), str(onnx_path))
    cfg = Config.from_dict({}, [f"{k}={json.dumps(v)}" for k, v in TINY.items()] + [
        f"run.dir={tmp_path / 'run'}", f"model.onnx={onnx_path}"])
    stages.train(cfg, progress=False)
    source = load_checkpoint(cfg.run_dir / CHECKPOINT, user_model(cfg.model))["source"]
    assert source["onnx"] == str(onnx_path) and len(source["onnx_sha256"]) == 64
    assert stages.export(cfg, progress=False)["export"]["source"] == "checkpoint"
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")  # another file under the same name
    with pytest.raises(CheckpointError, match="comes from model.onnx"):
        load_checkpoint(cfg.run_dir / CHECKPOINT, user_model(cfg.model))


def test_normalisation_with_a_registry_network_is_refused_not_ignored(tmp_path):
    """A registry network starts from a fresh init: data.mean/std would change nothing it was
    trained for, so they are refused by name instead of being silently dropped."""
    from pipeline.training import TrainingError

    cfg = Config.from_dict({}, [f"{k}={json.dumps(v)}" for k, v in TINY.items()] + [
        f"run.dir={tmp_path / 'run'}", "data.mean=[0.5]", "data.std=[0.25]"])
    with pytest.raises(TrainingError, match="data.mean/data.std .* model.factory"):
        stages.train(cfg, progress=False)
    assert not (cfg.run_dir / CHECKPOINT).exists()
