"""Config schema: defaults, deploy.yaml, and clear errors naming the key."""
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from hardware.errors import ToolkitError
from hardware.spec import LOIHI2
from pipeline.config import (Config, ConfigError, DEFAULT_ARCH, describe_schema,
                             load_config)

DEPLOY = str(Path(__file__).resolve().parents[1] / "deploy.yaml")


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def error_of(tmp_path, text, overrides=()):
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, text), list(overrides))
    return str(ei.value)


def test_deploy_yaml_is_the_default_config():
    assert load_config(DEPLOY, []) == Config()


def test_deploy_yaml_lists_every_key_with_its_default_and_a_comment():
    raw = yaml.safe_load(open(DEPLOY))
    text = open(DEPLOY).read().splitlines()
    for sec, keys in describe_schema().items():
        assert sec in raw, sec
        for key, (default, _, _) in keys.items():
            assert raw[sec][key] == default, f"{sec}.{key}"
            line = next(ln for ln in text if ln.strip().startswith(key + ":"))
            assert "#" in line, f"{sec}.{key} has no comment"


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(write(tmp_path, ""), []) == Config()


def test_config_error_is_a_toolkit_error():
    assert issubclass(ConfigError, ToolkitError)


@pytest.mark.parametrize("text, needles", [
    ("train:\n  lrr: 0.1\n", ["train.lrr", "did you mean 'train.lr'"]),
    ("trian:\n  lr: 0.1\n", ["'trian'", "did you mean 'train'"]),
    ("train:\n  lr: fast\n", ["train.lr", "must be a number", "'fast'"]),
    ("train:\n  epochs: 2.5\n", ["train.epochs", "integer"]),
    ("train:\n  epochs: true\n", ["train.epochs", "bool"]),     # bool is not an int
    ("nq:\n  noise: 1\n", ["nq.noise", "true or false"]),
    ("nq:\n  levels: 0\n", ["nq.levels", ">= 1", "<= 256"]),
    ("nq:\n  levels: 257\n", ["nq.levels", "<= 256"]),
    ("nq:\n  sigma_samples: 15\n", ["nq.sigma_samples", ">= 16"]),
    ("data:\n  val_fraction: 0.5\n", ["data.val_fraction", "< 0.5"]),
    ("data:\n  val_fraction: 0\n", ["data.val_fraction", "> 0"]),
    ("data:\n  name: mnst\n", ["data.name", "did you mean 'mnist'", "fashion-mnist"]),
    ("data:\n  root: 3\n", ["data.root", "string"]),
    ("model:\n  arch: resnet\n", ["model.arch", "vgg16"]),
    ("snn:\n  neuron: lif\n", ["snn.neuron", "if_soft", "cuba"]),
    ("run:\n  backend: gpu\n", ["run.backend", "loihi2-sim"]),
    ("run:\n  lava_samples: 0\n", ["run.lava_samples", ">= 1"]),
    ("train:\n  momentum: 1.0\n", ["train.momentum", "< 1"]),
    ("train:\n  lr: .nan\n", ["train.lr"]),
    ("energy:\n  synop_pj: -1\n", ["energy.synop_pj", "> 0"]),
    ("energy:\n  synop_pj: big\n", ["energy.synop_pj"]),
    ("train: 3\n", ["section train", "mapping"]),
    ("- a\n- b\n", ["mapping of sections"]),
    ("snn:\n  timesteps: 16\n", ["eval.timesteps", "snn.timesteps"]),
])
def test_bad_values_name_the_key(tmp_path, text, needles):
    msg = error_of(tmp_path, text)
    for n in needles:
        assert n in msg, (n, msg)
    assert "c.yaml" in msg  # and the file


def test_input_bits_range_comes_from_the_spec(tmp_path):
    top = LOIHI2.graded_spike_max_bits
    cfg = load_config(write(tmp_path, f"quant:\n  input_bits: {top}\n"), [])
    assert cfg.quant.input_bits == top
    msg = error_of(tmp_path, f"quant:\n  input_bits: {top + 1}\n")
    assert "quant.input_bits" in msg and f"<= {top}" in msg


def test_all_problems_are_reported_together(tmp_path):
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, "train:\n  lr: x\n  epochs: 0\nnq:\n  levelz: 3\n"), [])
    assert len(ei.value.problems) == 3
    for key in ("train.lr", "train.epochs", "nq.levelz"):
        assert key in str(ei.value)


def test_floats_accept_ints_ints_stay_ints(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  lr: 1\n  epochs: 3\n"), [])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 3 and type(cfg.train.epochs) is int


def test_overrides_are_parsed_as_yaml_and_win():
    cfg = load_config(DEPLOY, ["nq.noise=false", "train.lr=0.2", "data.root=/tmp/x",
                                      "train.lr=0.3", "energy.spike_pj=2.5e-12"])
    assert cfg.nq.noise is False
    assert cfg.train.lr == 0.3            # the last one wins
    assert cfg.data.root == "/tmp/x"
    assert dict(cfg.energy) == {"spike_pj": 2.5e-12}
    assert load_config(DEPLOY, ["data.root="]).data.root is None  # empty -> null


@pytest.mark.parametrize("override, needles", [
    ("train.lr", ["'train.lr'", "section.key=value"]),
    ("lr=0.1", ["'lr=0.1'", "section.key"]),
    ("train.sgd.lr=0.1", ["train.sgd.lr"]),
    ("train.lrr=0.1", ["train.lrr", "did you mean 'train.lr'"]),
    ("trian.lr=0.1", ["'trian'", "did you mean 'train'"]),
    ("train.lr=[1", ["train.lr", "not valid YAML"]),
    ("nq.noise=maybe", ["nq.noise", "true or false"]),
])
def test_bad_overrides_name_themselves(override, needles):
    with pytest.raises(ConfigError) as ei:
        load_config(DEPLOY, [override])
    for n in needles:
        assert n in str(ei.value), (n, str(ei.value))


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", [])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "train: [\n"), [])


def test_yaml_tags_are_not_executed(tmp_path):
    # safe_load: a python/object tag is a YAML error, never an object.
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, "train: !!python/object/apply:os.getcwd []\n"), [])


def test_to_dict_is_json_and_round_trips():
    cfg = load_config(DEPLOY, ["energy.synop_pj=3", "nq.levels=8"])
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d) == set(describe_schema())
    assert Config.from_dict(d) == cfg
    assert d["energy"] == {"synop_pj": 3.0}


def test_config_is_frozen_and_hashable():
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0  # type: ignore[misc]
    hash(cfg)


def test_arch_auto_resolves_per_dataset():
    for name, arch in DEFAULT_ARCH.items():
        assert Config.from_dict({"data": {"name": name}}).arch == arch
    assert Config.from_dict({"data": {"name": "cifar10"},
                             "model": {"arch": "cnn-small"}}).arch == "cnn-small"
