"""Config schema: defaults, deploy.yaml, and clear errors naming the key."""
import json
import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from hardware.errors import ToolkitError
from hardware.spec import LOIHI2
from pipeline.config import (Config, ConfigError, DEFAULT_ARCH, describe_schema,
                             load_config)
from tests.cost import time_and_peak as bounded

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


@pytest.mark.parametrize("text, start", [
    ("nq:\n  levels: 4\ntrain:\n  epochs: 3\n  lr: -1\n",
     "c.yaml line 5: train.lr must be a number > 0 and <= 10, got -1 (int)"),
    ("nq:\n  levels: 4\ntrian: {}\n", "c.yaml line 3: unknown section 'trian'"),
    ("train:\n  epochs: 3\n  lrr: 1\n", "c.yaml line 3: unknown key train.lrr"),
    ("train: {epochs: 3, lr: x}\n", "c.yaml line 1: train.lr must be"),
    ("nq: 3\n", "c.yaml line 1: section nq must be a mapping"),
    ("snn:\n  timesteps: 8\neval:\n  timesteps: 4\n",
     "c.yaml line 4: eval.timesteps (4) must be >= snn.timesteps (8)"),
    ("snn:\n  timesteps: 16\n", "c.yaml line 2: eval.timesteps (8) must be >= snn.timesteps (16)"),
])
def test_a_problem_names_the_line_of_its_key(tmp_path, text, start):
    msg = error_of(tmp_path, text)
    assert msg.startswith(str(tmp_path / start)), msg


def test_several_problems_come_in_file_order_each_with_its_line(tmp_path):
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, "nq:\n  levelz: 3\ntrain:\n  lr: x\n  epochs: 0\n"), [])
    assert [p.split(":")[0] for p in ei.value.problems] == ["line 2", "line 4", "line 5"]
    for problem, key in zip(ei.value.problems, ["nq.levelz", "train.lr", "train.epochs"]):
        assert key in problem, (key, problem)


def test_an_overridden_key_names_no_file_line(tmp_path):
    path = write(tmp_path, "train:\n  lr: 0.1\n")
    with pytest.raises(ConfigError) as ei:
        load_config(path, ["train.lr=-1"])
    assert str(ei.value) == f"{path}: train.lr must be a number > 0 and <= 10, got -1 (int)"


def test_energy_section_is_a_mapping_of_the_constants_set():
    energy = load_config(DEPLOY, ["energy.synop_pj=3", "energy.spike_pj=1"]).energy
    assert dict(energy) == {"synop_pj": 3.0, "spike_pj": 1.0} and len(energy) == 2
    assert "synop_pj" in energy and "hop_ew_pj" not in energy and energy.get("hop_ew_pj") is None
    with pytest.raises(KeyError):
        energy["no_such_pj"]


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
    with pytest.raises(ValidationError, match="frozen"):
        cfg.train.lr = 1.0  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        cfg.train = cfg.train  # type: ignore[misc]
    assert hash(cfg) == hash(Config.from_dict({}))


def test_arch_auto_resolves_per_dataset():
    needs = {"npz": {"root": "d.npz"}, "folder": {"root": "d", "image_size": 32}}
    for name, arch in DEFAULT_ARCH.items():
        assert Config.from_dict({"data": {"name": name, **needs.get(name, {})}}).arch == arch
    assert Config.from_dict({"data": {"name": "cifar10"},
                             "model": {"arch": "cnn-small"}}).arch == "cnn-small"



def test_activation_auto_follows_the_neuron_and_drives_model_and_conversion():
    soft = Config.from_dict({"nq": {"activation": "auto"}})
    assert soft.activation == "qcfs"
    assert soft.activation_kwargs() == {"activation": "qcfs", "timesteps": None, "cuba_shift": "none"}
    cuba = Config.from_dict({"nq": {"activation": "auto"}, "snn": {"neuron": "cuba", "timesteps": 2}})
    assert cuba.activation == "cuba-matched"
    assert cuba.activation_kwargs() == {"activation": "cuba-matched", "timesteps": 2, "cuba_shift": "none"}
    assert cuba.conversion_kwargs() == {}  # a matched model carries its own shift
    shifted = Config.from_dict({"nq": {"activation": "cuba-matched"},
                                "snn": {"neuron": "cuba", "cuba_shift": "half-bias", "timesteps": 8},
                                "eval": {"timesteps": 8}})
    assert shifted.activation_kwargs() == {"activation": "cuba-matched", "timesteps": 8,
                                           "cuba_shift": "half-bias"}
    # a QCFS-trained model gets the shift at conversion
    qcfs = Config.from_dict({"nq": {"activation": "qcfs"},
                             "snn": {"neuron": "cuba", "cuba_shift": "half-bias"}})
    assert qcfs.activation_kwargs()["cuba_shift"] == "none"
    assert qcfs.conversion_kwargs() == {"cuba_shift": "half-bias", "shift_timesteps": 4}
    # the default is auto (bench/board_path.py: cuba-matched is the best cuba variant)
    assert Config().nq.activation == "auto" and Config().activation == "qcfs"
    assert Config.from_dict({"snn": {"neuron": "cuba"}}).activation == "cuba-matched"


@pytest.mark.parametrize("raw,needle", [
    ({"nq": {"activation": "cuba-matched"}}, "nq.activation cuba-matched models the stock cuba neuron"),
    ({"snn": {"cuba_shift": "half-bias"}}, "snn.cuba_shift half-bias applies to cuba neurons only"),
    ({"snn": {"cuba_shift": "half"}}, "snn.cuba_shift must be one of 'none', 'half-bias'"),
    ({"nq": {"activation": "cuba"}}, "nq.activation must be one of 'qcfs', 'cuba-matched', 'auto'"),
])
def test_cuba_keys_are_checked(raw, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        Config.from_dict(raw)


def test_a_removed_key_says_what_sets_it_now(tmp_path):
    """snn.cuba_timesteps is gone: snn.timesteps is the one deployment T. An old config that sets
    it gets one line naming the key and what replaces it (file and --set alike)."""
    msg = error_of(tmp_path, "snn:\n  neuron: cuba\n  cuba_timesteps: 4\n")
    assert msg.startswith(str(tmp_path / "c.yaml line 3: snn.cuba_timesteps was removed: snn.timesteps")), msg
    assert "\n" not in msg
    with pytest.raises(ConfigError, match=r"^override 'snn.cuba_timesteps=4': snn.cuba_timesteps was "
                                          r"removed: snn.timesteps now sets"):
        Config.from_dict({}, ["snn.cuba_timesteps=4"])


# ------------------------------------------------------------------ hostile YAML

def one_line_error(path, overrides=()):
    with pytest.raises(ConfigError) as ei:
        load_config(path, list(overrides))
    msg = str(ei.value)
    assert "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("text, needles", [
    ("train:\n  lr: 0.1\nnq:\n  levels: 4\ntrain:\n  epochs: 3\n",
     ["duplicate key 'train'", "lines 1 and 5"]),
    ("train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n", ["duplicate key 'train.lr'", "lines 2 and 4"]),
    ("train: {lr: 0.1, lr: 0.2}\n", ["duplicate key 'train.lr'", "lines 1 and 1"]),
    ("energy:\n  synop_pj: 1\n  synop_pj: 2\n", ["'energy.synop_pj'", "lines 2 and 3"]),
    ("train:\n  lr: 0.1\n'train':\n  epochs: 3\n", ["duplicate key 'train'", "lines 1 and 3"]),
])
def test_duplicate_keys_name_the_key_and_both_lines(tmp_path, text, needles):
    msg = one_line_error(write(tmp_path, text))
    for n in needles:
        assert n in msg, (n, msg)
    assert "c.yaml" in msg


BILLION_LAUGHS = "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n" + \
    "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n"
            for i in range(9))


@pytest.mark.parametrize("text, needle", [
    (BILLION_LAUGHS, "anchors and aliases"),
    ("train:\n  lr: &x 0.1\n", "anchors and aliases"),
    ("base: &b {lr: 0.1}\ntrain:\n  <<: *b\n", "anchors and aliases"),
    ("train:\n  lr: " + "[" * 30_000 + "]" * 30_000 + "\n", "nested deeper than"),
    ("".join(" " * i + f"k{i}:\n" for i in range(300)), "nested deeper than"),
    ("a:\n" + "".join(" " * (i + 1) + "- \n" for i in range(300)), "nested deeper than"),
    ("train: " + "{a: " * 15_000, "nested deeper than"),
    ("train: [\n", "line 2"),
    ("\ttrain: 1\n", "line 1"),
], ids=["billion-laughs", "anchor", "merge-key", "deep-flow", "deep-block", "deep-list",
        "deep-mapping", "unclosed", "tab"])
def test_hostile_yaml_fails_fast_in_one_line(tmp_path, text, needle):
    path = write(tmp_path, text)
    box = {}
    elapsed, peak = bounded(lambda: box.setdefault("msg", one_line_error(path)))
    assert needle in box["msg"] and "c.yaml" in box["msg"], box["msg"]
    assert elapsed < 1.0 and peak < 64 << 20, (elapsed, peak)


def test_file_that_is_not_a_yaml_text_file(tmp_path):
    assert "not UTF-8" in one_line_error(write_bytes(tmp_path, b"train:\n  lr: \xff\xfe\n"))
    assert "binary" in one_line_error(write_bytes(tmp_path, b"\x7fELF\x02\x01\x00\x00"))
    assert "not a regular file" in one_line_error(tmp_path)
    assert "not a regular file" in one_line_error(Path("/dev/zero"))
    assert "not found" in one_line_error(tmp_path / "missing.yaml")
    big = write(tmp_path, "# " + "x" * (64 << 10) + "\n", name="big.yaml")
    assert "at most" in one_line_error(big) and "big.yaml" in one_line_error(big)
    sparse = tmp_path / "sparse.yaml"
    with sparse.open("wb") as fh:   # 10 GB of holes: refused by its size, never read
        fh.truncate(10 << 30)
    elapsed, _ = bounded(lambda: one_line_error(sparse))
    assert elapsed < 0.5


def write_bytes(tmp_path, data):
    p = tmp_path / "b.yaml"
    p.write_bytes(data)
    return p


def test_unreadable_file(tmp_path):
    import os

    p = write(tmp_path, "train: {}\n")
    p.chmod(0)
    if os.access(p, os.R_OK):  # running as root: permissions do not apply
        pytest.skip("root can read a mode-000 file")
    assert "cannot read config file" in one_line_error(p)


@pytest.mark.parametrize("override, needle", [
    ("energy.synop_pj={a: 1, a: 2}", "duplicate key 'a'"),
    ("train.lr=&a 1", "anchors and aliases"),
    ("train.lr=" + "[" * 2000 + "]" * 2000, "nested deeper than"),
    ("train.lr=" + "1" * 5000, "at most 4096"),
], ids=["duplicate", "anchor", "deep", "long"])
def test_overrides_get_the_same_yaml_rules(override, needle):
    msg = one_line_error(DEPLOY, [override])
    assert needle in msg, msg


def test_several_problems_are_one_line(tmp_path):
    msg = one_line_error(write(tmp_path, "train:\n  lr: x\n  epochs: 0\n"))
    assert msg.count("train.") >= 2 and "2 problems" in msg


@pytest.mark.parametrize("section, key", [("run", "dir"), ("run", "net"), ("data", "root")])
@pytest.mark.parametrize("value, needle", [
    ('""', "non-empty"),
    ('"runs/a\\0b"', "NUL"),
    ('"' + "a/" * 2100 + '"', "4095 bytes"),
    ('"runs/' + "x" * 300 + '"', "longer than 255 bytes"),
    ("3", "path"),
    ("[a, b]", "path"),
])
def test_path_values_are_checked_and_name_the_key(tmp_path, section, key, value, needle):
    msg = one_line_error(write(tmp_path, f"{section}:\n  {key}: {value}\n"))
    assert f"{section}.{key}" in msg and needle in msg, msg
    assert len(msg) < 400  # a huge value is not echoed whole


def test_valid_paths_are_kept():
    cfg = load_config(DEPLOY, ["run.dir=/tmp/some dir/ü", "run.net=model.net",
                               "data.root=" + "d/" * 100])
    assert cfg.run.dir == "/tmp/some dir/ü" and cfg.run.net == "model.net"
    assert load_config(DEPLOY, ["run.dir=" + "a" * 255]).run.dir == "a" * 255


# ------------------------------------------------------------------ JSON Schema for editors

SCHEMA_FILE = Path(DEPLOY).with_name("deploy.schema.json")


def test_json_schema_file_is_up_to_date():
    from pipeline.config import json_schema_text

    assert SCHEMA_FILE.read_text(encoding="utf-8") == json_schema_text(), (
        "deploy.schema.json is stale; regenerate it: .venv/bin/python -c \"from pipeline.config "
        "import json_schema_text as t; open('deploy.schema.json', 'w').write(t())\"")


def test_json_schema_mirrors_the_validator():
    from hardware.analysis.energy import ENERGY_CONSTANT_NAMES
    from pipeline.config import DATASETS, json_schema

    schema = json_schema()
    assert schema["additionalProperties"] is False and "null" in schema["type"]
    sections = {name: schema["$defs"][ref["$ref"].rsplit("/", 1)[1]]
                for name, ref in schema["properties"].items()}
    assert set(sections) == set(describe_schema())
    for sec, keys in describe_schema().items():
        props = sections[sec]["properties"]
        assert sections[sec]["additionalProperties"] is False, sec
        assert "null" in sections[sec]["type"], sec  # "energy:" with nothing under it
        if sec == "energy":
            assert set(props) == set(ENERGY_CONSTANT_NAMES)
            assert all(p["exclusiveMinimum"] == 0 and "default" not in p for p in props.values())
            continue
        assert set(props) == set(keys)
        for key, (default, _, doc) in keys.items():
            assert props[key]["default"] == default
            assert props[key]["description"] == doc
    assert sections["data"]["properties"]["name"]["enum"] == list(DATASETS)
    levels = sections["nq"]["properties"]["levels"]
    assert (levels["type"], levels["minimum"], levels["maximum"]) == ("integer", 1, 256)
    assert sections["data"]["properties"]["val_fraction"]["exclusiveMaximum"] == 0.5
    net = sections["run"]["properties"]["net"]["anyOf"]
    assert [option["type"] for option in net] == ["string", "null"]
    assert net[0]["maxLength"] == 4095
    assert open(DEPLOY).readline().strip() == \
        "# yaml-language-server: $schema=./deploy.schema.json"
