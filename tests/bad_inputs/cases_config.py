"""Bad configs: YAML syntax, shapes, unknown names, wrong types, ranges, duplicates,
bombs, run.dir and the config path itself, and --set overrides. Stage: ``train`` (a
config error must come before any work; an accepted config trains for one epoch)."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import yaml

from . import Case, text_config
from .base import Workspace
from .harness import LAUNCH_ENV_FILE

REPO = Path(__file__).resolve().parents[2]
#: the tiny settings, as YAML lines, for configs written as raw text
TINY_TEXT = ("data: {name: digits}\nnq: {sigma_samples: 16}\n"
             "train: {epochs: 1, select_samples: 16}\nsnn: {timesteps: 2}\n"
             "eval: {timesteps: 2}\nrun: {dir: '@RUN@', lava_samples: 1, probes: false}\n")


def mutated(edit: Callable[[dict, Workspace], None]) -> Callable[[Workspace], Sequence[str]]:
    """A plant that edits the tiny config (a dict) before it is written."""
    def plant(ws: Workspace) -> Sequence[str]:
        cfg = ws.config_dict()
        edit(cfg, ws)
        ws.config.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
        return ()
    return plant


def set_key(section: str, key: str, value: Any) -> Callable[[Workspace], Sequence[str]]:
    def edit(cfg: dict, ws: Workspace) -> None:
        cfg.setdefault(section, {})[key] = value
    return mutated(edit)


def set_section(section: str, value: Any) -> Callable[[Workspace], Sequence[str]]:
    def edit(cfg: dict, ws: Workspace) -> None:
        cfg[section] = value
    return mutated(edit)


def _config_case(id_: str, plant, needles=("deploy.yaml",), light: bool = True, **kw) -> Case:
    return Case(id=f"config-{id_}", owner="D", stage="train", plant=plant, needles=needles,
                light=light, **kw)


# --------------------------------------------------------------------------- YAML text
SYNTAX = {
    "unclosed-bracket": "train: [\n",
    "bad-indent": "train:\n    lr: 0.1\n  epochs: 1\n",
    "tab-indent": "train:\n\tlr: 0.1\n",
    "unterminated-quote": 'train: {lr: "0.1}\n',
    "unclosed-brace": "train: {lr: 0.1\n",
    "list-then-map": "- a\nb: c\n",
    "colon-colon": "train:\n  lr: : 0.2\n",
    "yaml-version-9": "%YAML 9.9\n---\ntrain: {}\n",
    "undefined-alias": "train:\n  lr: *nowhere\n",
    "two-documents": TINY_TEXT + "---\ntrain: {epochs: 1}\n",
    "unhashable-key": TINY_TEXT.replace("nq: {", "nq: {[1]: 2, "),
    "complex-key": TINY_TEXT + "? [a, b]\n: c\n",
    "control-chars": "train:\n  lr: \x01\x02\n",
    "python-tag-payload": TINY_TEXT.replace(
        "nq: {", "nq: {levels: !!python/object/apply:builtins.open ['@MARKER@', 'w'], "),
    "python-name-tag": TINY_TEXT.replace("nq: {", "nq: {levels: !!python/name:os.system, "),
    "binary-tag-section": TINY_TEXT + "model: !!binary AAAA\n",
    "set-tag-section": TINY_TEXT + "model: !!set {a, b}\n",
    "timestamp-value": TINY_TEXT.replace("train: {", "train: {lr: 2001-12-14, "),
}
RAW = {
    "random-bytes": np.random.default_rng(7).integers(0, 256, 512, dtype=np.uint8).tobytes(),
    "nul-bytes": b"train:\n  lr: 0.1\0\0\0\n",
    "latin1-bytes": ("data: {name: digits}\ntrain: {seed: 1}\n# caf\xe9\n").encode("latin-1") + b"\xff\xfe",
    "utf16": ("\ufeff" + TINY_TEXT).encode("utf-16"),
    "elf-binary": b"\x7fELF\x02\x01\x01" + b"\0" * 64,
    "gzip-file": b"\x1f\x8b\x08\x00" + b"\0" * 32,
}
TOP_LEVEL = {"list": "[1, 2]\n", "int": "42\n", "string": "'just a string'\n",
             "bool": "true\n", "float": "3.5\n"}

# --------------------------------------------------------------------------- schema
#: every key of deploy.yaml, with its kind (the config's documented schema)
KEYS = {
    "int": ["nq.levels", "nq.sigma_samples", "train.epochs", "train.batch_size", "train.seed",
            "snn.timesteps", "eval.timesteps", "eval.batch_size", "quant.input_bits",
            "run.lava_samples", "train.select_samples", "snn.sigma_timesteps"],
    "float": ["data.val_fraction", "nq.init_threshold", "train.lr", "train.momentum",
              "train.weight_decay"],
    "bool": ["nq.noise", "train.augment", "run.probes"],
    "str": ["data.name", "model.arch", "snn.neuron", "snn.readout", "run.dir", "run.backend",
            "data.root", "run.net"],
}
NULLABLE = {"train.select_samples", "snn.sigma_timesteps", "data.root", "run.net"}
WRONG_TYPES = {
    "int": {"str": "abc", "float": 1.5, "bool": True, "list": [1]},
    "float": {"str": "abc", "bool": True, "list": [0.1]},
    "bool": {"str": "yes please", "int": 1},
    "str": {"int": 5, "list": ["x"]},
}
OUT_OF_RANGE = [
    ("nq.levels", 0), ("nq.levels", 257), ("nq.levels", -1), ("nq.init_threshold", 0),
    ("nq.init_threshold", -2.5), ("nq.init_threshold", 1e300), ("nq.sigma_samples", 15),
    ("train.epochs", 0), ("train.epochs", -3), ("train.batch_size", 0), ("train.lr", 0),
    ("train.lr", 11.0), ("train.momentum", 1.0), ("train.momentum", -0.1),
    ("train.weight_decay", -0.1), ("train.weight_decay", 1.5), ("train.seed", -1),
    ("train.seed", 2 ** 32), ("train.select_samples", 15), ("snn.timesteps", 0),
    ("snn.sigma_timesteps", 0), ("eval.timesteps", 0), ("eval.batch_size", 0),
    ("quant.input_bits", 0), ("quant.input_bits", 25), ("run.lava_samples", 0),
    ("data.val_fraction", 0), ("data.val_fraction", 0.5), ("data.val_fraction", -1),
    ("data.name", "imagenet"), ("model.arch", "resnet50"), ("snn.neuron", "lif"),
    ("snn.readout", "rate"), ("run.backend", "loihi3"), ("train.lr", float("nan")),
    ("train.lr", float("inf")), ("train.epochs", 10 ** 30),
    ("train.lr", 10 ** 400),  # a YAML int too large for a float
    ("data.name", ""), ("run.dir", ""),
]
UNKNOWN_KEYS = [("data", "nmae", "data.name"), ("model", "archh", "model.arch"),
                ("nq", "level", "nq.levels"), ("train", "lrr", "train.lr"),
                ("snn", "timestep", "snn.timesteps"), ("eval", "timestep", "eval.timesteps"),
                ("quant", "input_bit", "quant.input_bits"), ("run", "dirr", "run.dir"),
                ("energy", "synop", "energy.synop")]
SECTIONS = ("data", "model", "nq", "train", "snn", "eval", "quant", "run", "energy")


def _value_id(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 24 else f"{type(value).__name__}{len(text)}"


def schema_cases() -> list[Case]:
    cases = []
    for kind, keys in KEYS.items():
        for key in keys:
            section, name = key.split(".")
            # the first wrong type of every key in the default run, the others in -m slow
            for i, (label, value) in enumerate(WRONG_TYPES[kind].items()):
                cases.append(_config_case(f"type-{key}-{label}", set_key(section, name, value),
                                          needles=(key,), slow=i > 0))
            if key not in NULLABLE:
                cases.append(_config_case(f"null-{key}", set_key(section, name, None),
                                          needles=(key,), slow=kind != "str"))
    for key, value in OUT_OF_RANGE:
        section, name = key.split(".")
        cases.append(_config_case(f"range-{key}-{_value_id(value)}", set_key(section, name, value),
                                  needles=(key,)))
    for section, name, hint in UNKNOWN_KEYS:
        cases.append(_config_case(f"unknown-{section}.{name}", set_key(section, name, 1),
                                  needles=(f"{section}.{name}",)))
    for section in SECTIONS:
        for i, (label, value) in enumerate((("int", 5), ("list", [1]), ("str", "x"))):
            cases.append(_config_case(f"section-{section}-{label}", set_section(section, value),
                                      needles=(section,), slow=i > 0))
    for name in ("trian", "banana", "1", "null"):
        key = {"1": 1, "null": None}.get(name, name)
        cases.append(_config_case(f"unknown-section-{name}", set_section(key, {}),
                                  needles=("section",)))
    return cases


# --------------------------------------------------------------------------- the rest
def _cross_and_energy_cases() -> list[Case]:
    return [
        _config_case("eval-timesteps-below-snn", mutated(
            lambda c, ws: (c["snn"].update(timesteps=4), c["eval"].update(timesteps=2))),
            needles=("eval.timesteps",)),
        _config_case("energy-unknown-constant", set_key("energy", "warp_drive_pj", 1.0),
                     needles=("energy.warp_drive_pj",)),
        _config_case("energy-negative", set_key("energy", "synop_pj", -1.0),
                     needles=("energy.synop_pj",)),
        _config_case("energy-zero", set_key("energy", "synop_pj", 0),
                     needles=("energy.synop_pj",)),
        _config_case("energy-string", set_key("energy", "synop_pj", "lots"),
                     needles=("energy.synop_pj",)),
        _config_case("energy-nested", set_key("energy", "synop_pj", {"a": 1}),
                     needles=("energy.synop_pj",)),
        _config_case("energy-static-power-negative", set_key("energy", "static_power_w", -0.5),
                     needles=("energy.static_power_w",)),
        _config_case("energy-name-not-identifier", set_key("energy", "syn op", 1.0),
                     needles=("energy",)),
    ]


DUPLICATES = {
    # the second train: section would silently wipe out the first one's lr
    "duplicate-section": TINY_TEXT + "train: {epochs: 1, lr: 0.2}\n",
    "duplicate-key-block": TINY_TEXT + "model:\n  arch: cnn-small\n  arch: vgg16\n",
    "duplicate-key-flow": TINY_TEXT.replace("train: {", "train: {lr: 0.1, lr: 0.2, "),
    "duplicate-energy-constant": TINY_TEXT + "energy: {synop_pj: 1.0, synop_pj: 2.0}\n",
}


def _laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        refs = ",".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines)


BOMBS = {
    # 10^9 strings if anything walks it (repr in an error message, json.dumps, deepcopy)
    "billion-laughs-value": "lol:\n  " + _laughs().replace("\n", "\n  ") + "\n"
                            + TINY_TEXT.replace("train: {", "train: {lr: *a9, "),
    "billion-laughs-section": TINY_TEXT.replace("model", "m") + "x:\n  " +
                              _laughs().replace("\n", "\n  ") + "\nmodel: *a9\n",
    "billion-laughs-energy": TINY_TEXT + "energy:\n  " + _laughs().replace("\n", "\n  ") + "\n",
    "billion-laughs-unknown-section": TINY_TEXT + "lulz:\n  " + _laughs().replace("\n", "\n  ")
                                      + "\n",
}
DEEP = {
    "deep-flow-list": TINY_TEXT.replace("train: {", "train: {lr: " + "[" * 20000 + "]" * 20000 + ", "),
    "deep-flow-map": TINY_TEXT.replace("train: {", "train: {lr: " + "{a: " * 5000 + "1" + "}" * 5000
                                       + ", "),
    "deep-block-map": TINY_TEXT + "x:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 3000))
                      + "  " * 3000 + "v: 1\n",
}


def _run_dir_cases() -> list[Case]:
    def run_dir(make: Callable[[Workspace], str]):
        def edit(cfg: dict, ws: Workspace) -> None:
            cfg["run"]["dir"] = make(ws)
        return mutated(edit)

    def a_file(ws: Workspace) -> str:
        (ws.inputs / "afile").write_text("not a directory\n")
        return str(ws.inputs / "afile")

    def under_a_file(ws: Workspace) -> str:
        return str(Path(a_file(ws)) / "run")

    def loop(ws: Workspace) -> str:
        os.symlink(ws.inputs / "loop_b", ws.inputs / "loop_a")
        os.symlink(ws.inputs / "loop_a", ws.inputs / "loop_b")
        return str(ws.inputs / "loop_a")

    variants = {
        "a-file": a_file, "under-a-file": under_a_file, "symlink-loop": loop,
        "nul": lambda ws: str(ws.root / "ru\0n"),
        "too-long": lambda ws: str(ws.root / "/".join(["d" * 200] * 25)),
        "component-too-long": lambda ws: str(ws.root / ("x" * 300)),
        "dev-null": lambda ws: "/dev/null",
        "under-dev-null": lambda ws: "/dev/null/run",
        "in-proc": lambda ws: "/proc/self/run",
    }
    # refused by the stage (after the heavy imports), so not light
    return [_config_case(f"run.dir-{name}", run_dir(make), needles=(("run.dir", "run directory"),),
                         light=False) for name, make in variants.items()]


def _config_path_cases() -> list[Case]:
    def config_path(make: Callable[[Workspace], Path]):
        def plant(ws: Workspace) -> Sequence[str]:
            target = make(ws)
            ws.config.unlink()
            os.symlink(target, ws.config)
            return ()
        return plant

    def fifo(ws: Workspace) -> Path:
        os.mkfifo(ws.inputs / "fifo")
        return ws.inputs / "fifo"

    return [
        _config_case("path-directory", config_path(lambda ws: ws.inputs)),
        _config_case("path-dangling-link", config_path(lambda ws: ws.inputs / "nothing.yaml")),
        _config_case("path-fifo", config_path(fifo), timeout=20),
        _config_case("path-dev-zero", config_path(lambda ws: Path("/dev/zero")), bomb=True,
                     timeout=20),
        _config_case("path-dev-urandom", config_path(lambda ws: Path("/dev/urandom")), bomb=True,
                     timeout=20),
    ]


OVERRIDES = {
    "no-equals": "nqlevels", "no-value-key": "nq.levels", "empty-key": "=3",
    "empty-name": "nq.=3", "empty-section": ".levels=3", "three-parts": "nq.levels.x=3",
    "bad-yaml": "nq.levels=[", "unknown-section": "nqq.levels=3", "unknown-key": "nq.levelz=3",
    "payload": "nq.levels=!!python/object/apply:builtins.open ['@MARKER@', 'w']",
    "nul-in-value": "run.dir=ru\0n", "mapping-value": "nq.levels={a: 1}",
}


def _override_case(name: str, text: str) -> Case:
    def plant(ws: Workspace) -> Sequence[str]:
        ws.write_config()
        return (text.replace("@MARKER@", str(ws.marker)),)
    needle = text.split("=")[0] if "=" in text and text.split("=")[0] else "override"
    return Case(id=f"config-override-{name}", owner="D", stage="train", plant=plant,
                needles=((needle, "override"),), payload="MARKER" in text, light=True)


#: torchrun's variables for rank 0 of a valid two-process job; each case breaks one (issue 18: an
#: out-of-range WORLD_SIZE ended in a TypeError traceback)
LAUNCH = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
BAD_LAUNCH = {
    "world-size-huge": {"WORLD_SIZE": "99999999999999999999"}, "world-size-2^40": {"WORLD_SIZE": str(1 << 40)},
    "world-size-0": {"WORLD_SIZE": "0"}, "world-size-negative": {"WORLD_SIZE": "-2"},
    "world-size-text": {"WORLD_SIZE": "two"}, "world-size-float": {"WORLD_SIZE": "2.0"},
    "world-size-empty": {"WORLD_SIZE": ""}, "rank-equal-world": {"RANK": "2"}, "rank-negative": {"RANK": "-1"},
    "rank-huge": {"RANK": "1" * 30}, "local-rank-negative": {"LOCAL_RANK": "-1"},
    "local-rank-beyond-local-world": {"LOCAL_WORLD_SIZE": "1", "LOCAL_RANK": "1"},
    "local-world-size-beyond-world": {"LOCAL_WORLD_SIZE": "3"}, "local-world-size-0": {"LOCAL_WORLD_SIZE": "0"},
    "master-port-0": {"MASTER_PORT": "0"}, "master-port-65536": {"MASTER_PORT": "65536"},
    "master-port-text": {"MASTER_PORT": "http"}, "master-port-missing": {"MASTER_PORT": None},
    "master-addr-space": {"MASTER_ADDR": "local host"}, "master-addr-nul-like": {"MASTER_ADDR": "a\x01b"},
    "master-addr-long": {"MASTER_ADDR": "h" * 300}, "rank-missing": {"RANK": None},
}
#: launch cases in the default run (the rest: -m slow)
LAUNCH_DEFAULT = {"world-size-huge", "world-size-0", "rank-equal-world", "local-rank-beyond-local-world",
                  "master-port-65536", "master-addr-space"}


def launch_env(changes: dict) -> Callable[[Workspace], Sequence[str]]:
    """A plant that gives the CLI call torchrun's variables with ``changes`` (None: unset)."""
    def plant(ws: Workspace) -> Sequence[str]:
        ws.write_config()
        env = {k: v for k, v in {**LAUNCH, **changes}.items() if v is not None}
        (ws.root / LAUNCH_ENV_FILE).write_text(json.dumps(env))
        return ()
    return plant


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _launch_cases() -> list[Case]:
    def needle(name: str, changes: dict) -> tuple:
        return (next(iter(changes)).replace("LOCAL_WORLD_SIZE", "LOCAL_"),)

    cases = [Case(id=f"launch-{name}", owner="D", stage="train", plant=launch_env(changes),
                  needles=needle(name, changes), light=True, slow=name not in LAUNCH_DEFAULT, timeout=20)
             for name, changes in BAD_LAUNCH.items()]
    # a rank whose peers never come gives up after train.dist_timeout_s (it waited 60 minutes)
    for rank in ("0", "1"):
        def plant(ws: Workspace, rank=rank) -> Sequence[str]:
            launch_env({"RANK": rank, "LOCAL_RANK": rank, "MASTER_PORT": _free_port()})(ws)
            return ("train.dist_timeout_s=2",)
        cases.append(Case(id=f"launch-peers-never-come-rank{rank}", owner="D", stage="train", plant=plant,
                          needles=("rank", "train.dist_timeout_s"), slow=True, timeout=60))
    return cases


#: a user's factory module, written into the workspace (the CLI's working directory) as usernets.py
USER_NETS = """from torch import nn
def build(width=4):
    return nn.Sequential(nn.Conv2d(1, width, 3), nn.ReLU(), nn.Flatten(), nn.Linear(width * 36, 10))
def broken(**kw):
    raise RuntimeError("the factory broke")
def not_a_module(**kw):
    return 42
"""


def with_user_nets(*overrides: str, weights: Callable[[], dict] | None = None,
                   weights_bytes: bytes | None = None) -> Callable[[Workspace], Sequence[str]]:
    """A plant: the tiny config, usernets.py beside it, optionally a weights file, and ``overrides``."""
    def plant(ws: Workspace) -> Sequence[str]:
        ws.write_config()
        (ws.root / "usernets.py").write_text(USER_NETS)
        if weights is not None or weights_bytes is not None:
            from safetensors.torch import save_file
            path = ws.root / "weights.safetensors"
            if weights_bytes is not None:
                path.write_bytes(weights_bytes)
            else:
                save_file(weights(), str(path))
        return overrides
    return plant


def _user_state(drop: str = "", add: str = "") -> Callable[[], dict]:
    def make() -> dict:
        import torch
        state = {"0.weight": torch.zeros(4, 1, 3, 3), "0.bias": torch.zeros(4), "3.weight": torch.zeros(10, 144),
                 "3.bias": torch.zeros(10)}
        state.pop(drop, None)
        return {**state, **({add: torch.zeros(1)} if add else {})}
    return make


def _pickled_state() -> bytes:
    import io

    import torch
    buffer = io.BytesIO()
    torch.save(_user_state()(), buffer)
    return buffer.getvalue()


def _model_source_cases() -> list[Case]:
    factory = "model.factory=usernets:build"
    light = {  # refused while the config is read
        "factory-malformed": (set_key("model", "factory", "usernets"), "model.factory"),
        "factory-and-arch": (mutated(lambda c, ws: c.setdefault("model", {}).update(
            factory="usernets:build", arch="vgg16")), "model.arch"),
        "kwargs-without-factory": (set_key("model", "kwargs", {"width": 3}), "model.kwargs"),
        "kwargs-nested-mapping": (with_user_nets(factory, "model.kwargs={width: {a: 1}}"), "model.kwargs"),
        "weights-without-factory": (set_key("model", "weights", "w.safetensors"), "model.weights"),
    }
    cases = [_config_case(f"model-{name}", plant, needles=(needle,)) for name, (plant, needle) in light.items()]
    weights = "model.weights=weights.safetensors"
    staged = {  # refused by train, after the heavy imports
        "factory-missing-module": (with_user_nets("model.factory=nowhere_nets:build"), ("model.factory", "nowhere")),
        "factory-missing-function": (with_user_nets("model.factory=usernets:nothing"), ("model.factory", "nothing")),
        "factory-raises": (with_user_nets("model.factory=usernets:broken"), ("model.factory", "RuntimeError")),
        "factory-not-a-module": (with_user_nets("model.factory=usernets:not_a_module"), ("model.factory", "int")),
        "factory-unknown-kwarg": (with_user_nets(factory, "model.kwargs={depth: 3}"), ("model.factory", "TypeError")),
        "weights-missing-file": (with_user_nets(factory, weights), ("model.weights", "no such file")),
        "weights-missing-key": (with_user_nets(factory, weights, weights=_user_state(drop="3.bias")),
                                ("model.weights", "missing")),
        "weights-unexpected-key": (with_user_nets(factory, weights, weights=_user_state(add="4.weight")),
                                   ("model.weights", "unexpected")),
        "weights-torch-pickle": (with_user_nets(factory, weights, weights_bytes=_pickled_state()),
                                 ("model.weights", "never loaded")),
        "weights-truncated": (with_user_nets(factory, weights, weights_bytes=b"\x08\0\0\0\0\0\0\0{}"),
                              ("model.weights",)),
    }
    return cases + [_config_case(f"model-{name}", plant, needles=needles, light=False)
                    for name, (plant, needles) in staged.items()]


def config_cases() -> list[Case]:
    cases = [_config_case(f"syntax-{k}", text_config(v), payload="MARKER" in v)
             for k, v in SYNTAX.items()]
    cases += [_config_case(f"bytes-{k}", text_config(v)) for k, v in RAW.items()]
    cases += [_config_case(f"top-level-{k}", text_config(v)) for k, v in TOP_LEVEL.items()]
    cases += schema_cases()
    cases += _cross_and_energy_cases()
    cases += [_config_case(k, text_config(v)) for k, v in DUPLICATES.items()]
    cases += [_config_case(k, text_config(v), bomb=True, timeout=30) for k, v in BOMBS.items()]
    cases += [_config_case(k, text_config(v), timeout=30) for k, v in DEEP.items()]
    cases += _run_dir_cases()
    cases += _config_path_cases()
    cases += [_override_case(k, v) for k, v in OVERRIDES.items()]
    cases += _launch_cases()
    cases += _model_source_cases()
    return cases
