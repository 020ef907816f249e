"""The pipeline's configuration: typed, frozen, validated before any work.

A config file (``deploy.yaml``) is a YAML mapping of sections to mappings of
keys. It is read with :func:`yaml.safe_load` (no arbitrary Python objects),
then every key is checked against the schema below:

* an unknown section or key is an error that names it and suggests the
  closest known name (``difflib``);
* a value of the wrong type is an error (ints must be ints, and ``bool`` is
  not an int; floats accept ints; strings must be strings);
* a value out of range is an error that states the allowed range or choices.

All problems found are reported together in one :class:`ConfigError`, each
naming its key as ``section.key``. Command-line overrides
(``--set section.key=value``) are applied before validation; their value is
parsed with :func:`yaml.safe_load`, so ``nq.noise=false`` is a bool and
``train.lr=0.1`` a float.

Relative paths (``data.root``, ``run.dir``) are relative to the current
working directory.
"""
from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import yaml

from hardware.errors import ToolkitError
from hardware.energy import ENERGY_CONSTANT_NAMES
from hardware.ir import READOUTS
from hardware.spec import LOIHI2


class ConfigError(ToolkitError, ValueError):
    """A config file, section, key, value or override that is not valid.

    ``problems`` holds one message per problem (each names its key)."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        super().__init__(message)
        self.problems = tuple(problems) or (message,)


# --------------------------------------------------------------------------
# Value rules
# --------------------------------------------------------------------------

class _Invalid(Exception):
    """Internal: a single value failed its rule (message without the key)."""


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


@dataclass(frozen=True)
class _Rule:
    """How one key is checked.

    kind: 'int' | 'float' | 'bool' | 'str' | 'choice'
    lo/hi: bounds (inclusive unless lo_open/hi_open); choices for 'choice'.
    nullable: ``null`` is allowed (means "use the default location").
    """

    kind: str
    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple = ()
    nullable: bool = False

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        base = {"int": "an integer", "float": "a number", "bool": "true or false",
                "str": "a non-empty string"}[self.kind]
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {self.hi:g}")
        if parts:
            base += " " + " and ".join(parts)
        if self.nullable:
            base += " or null"
        return base

    def check(self, value: Any) -> Any:
        """Return the (possibly converted) value or raise :class:`_Invalid`."""
        if value is None and self.nullable:
            return None
        bad = _Invalid(f"must be {self.describe()}, got {value!r} ({_type_name(value)})")
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise bad
            return value
        if self.kind in ("str", "choice"):
            if not isinstance(value, str) or not value:
                raise bad
            if self.kind == "choice" and value not in self.choices:
                close = difflib.get_close_matches(value, self.choices, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise _Invalid(f"must be {self.describe()}, got {value!r}{hint}")
            return value
        # numbers: bool is a subclass of int but never a valid number here
        if isinstance(value, bool):
            raise bad
        if self.kind == "int":
            if not isinstance(value, int):
                raise bad
        elif self.kind == "float":
            if not isinstance(value, (int, float)):
                raise bad
            value = float(value)
            if not math.isfinite(value):
                raise bad
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            raise bad
        if self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)):
            raise bad
        return value


def _f(default: Any, rule: _Rule, doc: str) -> Any:
    return field(default=default, metadata={"rule": rule, "doc": doc})


# --------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------

DATASETS = ("digits", "fashion-mnist", "mnist", "cifar10")
ARCHS = ("auto", "cnn-small", "vgg-small", "vgg16")
#: The architecture ``model.arch: auto`` picks for each dataset.
DEFAULT_ARCH = {"digits": "cnn-small", "fashion-mnist": "vgg-small",
                "mnist": "vgg-small", "cifar10": "vgg16"}


@dataclass(frozen=True)
class DataConfig:
    name: str = _f("digits", _Rule("choice", choices=DATASETS), "dataset")
    root: Optional[str] = _f(None, _Rule("str", nullable=True),
                             "dataset directory; null = the dataset's default location")
    val_fraction: float = _f(0.1, _Rule("float", lo=0.0, hi=0.5, lo_open=True, hi_open=True),
                             "fraction of the training set held out for validation")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = _f("auto", _Rule("choice", choices=ARCHS), "network architecture")


@dataclass(frozen=True)
class NQConfig:
    levels: int = _f(4, _Rule("int", lo=1, hi=256), "quantization levels L of the QCFS activation")
    init_threshold: float = _f(8.0, _Rule("float", lo=0.0, hi=1e6, lo_open=True),
                               "initial value of every layer's learnable threshold lambda")
    noise: bool = _f(True, _Rule("bool"), "inject residual noise during training")
    sigma_samples: int = _f(512, _Rule("int", lo=16, hi=10_000_000),
                            "validation samples used to estimate sigma each epoch")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _f(30, _Rule("int", lo=1, hi=100_000), "training epochs")
    batch_size: int = _f(64, _Rule("int", lo=1, hi=1 << 20), "training mini-batch size")
    lr: float = _f(0.05, _Rule("float", lo=0.0, hi=10.0, lo_open=True), "SGD learning rate")
    momentum: float = _f(0.9, _Rule("float", lo=0.0, hi=1.0, hi_open=True), "SGD momentum")
    weight_decay: float = _f(5e-4, _Rule("float", lo=0.0, hi=1.0), "L2 weight decay")
    seed: int = _f(0, _Rule("int", lo=0, hi=2**32 - 1), "seed of every random choice")
    augment: bool = _f(False, _Rule("bool"),
                       "random crop with padding (and horizontal flip where the dataset allows it)")
    select_samples: Optional[int] = _f(None, _Rule("int", lo=16, hi=10_000_000, nullable=True),
                                       "fixed validation subset for model selection (null: all)")


@dataclass(frozen=True)
class SNNConfig:
    timesteps: int = _f(4, _Rule("int", lo=1, hi=100_000),
                        "T used for model selection (and sigma, unless sigma_timesteps is set)")
    sigma_timesteps: Optional[int] = _f(None, _Rule("int", lo=1, hi=100_000, nullable=True),
                                        "T at which sigma is measured (null: snn.timesteps)")
    neuron: str = _f("if_soft", _Rule("choice", choices=("if_soft", "cuba")), "SNN neuron model")
    readout: str = _f("potential", _Rule("choice", choices=READOUTS),
                      "how the SNN's class is read out")

    @property
    def sigma_t(self) -> int:
        """The T at which sigma is measured."""
        return self.timesteps if self.sigma_timesteps is None else self.sigma_timesteps


@dataclass(frozen=True)
class EvalConfig:
    timesteps: int = _f(8, _Rule("int", lo=1, hi=100_000), "largest T reported")
    batch_size: int = _f(256, _Rule("int", lo=1, hi=1 << 20), "evaluation batch size")


@dataclass(frozen=True)
class QuantConfig:
    input_bits: int = _f(LOIHI2.input_bits_default,
                         _Rule("int", lo=1, hi=LOIHI2.graded_spike_max_bits),
                         "bits of the graded-spike input payload")


@dataclass(frozen=True)
class RunConfig:
    dir: str = _f("runs/digits", _Rule("str"), "output directory of this run")
    backend: str = _f("loihi2-sim", _Rule("choice", choices=("loihi2-sim", "loihi2-hw")),
                      "Lava backend")
    lava_samples: int = _f(100, _Rule("int", lo=1, hi=10_000_000),
                           "test samples run through Lava")
    probes: bool = _f(True, _Rule("bool"), "record spikes/ops per layer and step")
    net: Optional[str] = _f(None, _Rule("str", nullable=True),
                            "the .net file `run` executes (null: <run.dir>/model.net)")


_ENERGY_VALUE = _Rule("float", lo=0.0, lo_open=True)
_ENERGY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class EnergyConfig(Mapping):
    """Read-only mapping of energy-constant overrides, name -> positive float.

    Names are checked by the energy model (which knows its constants); here
    only their form (identifier) and the values (finite, > 0) are checked.
    Stored as a sorted tuple so the config stays hashable and picklable."""

    constants: tuple = ()

    def __getitem__(self, key: str) -> float:
        for k, v in self.constants:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self.constants)

    def __len__(self) -> int:
        return len(self.constants)


_SECTIONS: dict[str, type] = {
    "data": DataConfig, "model": ModelConfig, "nq": NQConfig, "train": TrainConfig,
    "snn": SNNConfig, "eval": EvalConfig, "quant": QuantConfig, "run": RunConfig,
    "energy": EnergyConfig,
}


@dataclass(frozen=True)
class Config:
    """The whole validated configuration (one frozen dataclass per section)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    nq: NQConfig = field(default_factory=NQConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    snn: SNNConfig = field(default_factory=SNNConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    run: RunConfig = field(default_factory=RunConfig)
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    #: the file this config was read from (not part of the config's value).
    source: Optional[str] = field(default=None, compare=False)

    @property
    def arch(self) -> str:
        """``model.arch`` with ``auto`` resolved from ``data.name``."""
        return DEFAULT_ARCH[self.data.name] if self.model.arch == "auto" else self.model.arch

    @property
    def run_dir(self) -> Path:
        return Path(self.run.dir)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain, JSON-serialisable ``{section: {key: value}}`` (for provenance).

        ``Config.from_dict(cfg.to_dict()) == cfg``."""
        out: dict[str, dict[str, Any]] = {}
        for name in _SECTIONS:
            sec = getattr(self, name)
            if isinstance(sec, EnergyConfig):
                out[name] = dict(sec.constants)
            else:
                out[name] = {f.name: getattr(sec, f.name) for f in fields(sec)}
        return out

    @classmethod
    def from_dict(cls, raw: Any, overrides: Sequence[str] = (), source: Optional[str] = None
                  ) -> "Config":
        """Validate a ``{section: {key: value}}`` mapping (e.g. from a
        checkpoint's provenance) plus overrides; raise :class:`ConfigError`."""
        return _build(raw, overrides, source)


# --------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------

def _suggest(name: str, known: Sequence[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


def _parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` -> (section, key, yaml-parsed value)."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"malformed override {text!r}: expected section.key=value "
                          f"(e.g. train.lr=0.1)")
    lhs, rhs = text.split("=", 1)
    parts = lhs.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"malformed override {text!r}: the key must be section.key "
                          f"(e.g. nq.noise=false), got {lhs.strip()!r}")
    section, key = parts
    if section not in _SECTIONS:
        raise ConfigError(f"override {text!r}: unknown section {section!r}"
                          f"{_suggest(section, list(_SECTIONS))}; sections are "
                          f"{', '.join(_SECTIONS)}")
    cls = _SECTIONS[section]
    if cls is not EnergyConfig:
        known = [f.name for f in fields(cls)]
        if key not in known:
            raise ConfigError(f"override {text!r}: unknown key {section}.{key}"
                              f"{_suggest(key, known, section + '.')}; keys of {section} "
                              f"are {', '.join(known)}")
    try:
        value = yaml.safe_load(rhs) if rhs.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value {rhs!r} is not valid YAML ({exc})") from None
    return section, key, value


def _build(raw: Any, overrides: Sequence[str], source: Optional[str]) -> Config:
    where = f"{source}: " if source else ""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}the config must be a mapping of sections "
                          f"({', '.join(_SECTIONS)}), got {_type_name(raw)}")
    problems: list[str] = []
    merged: dict[str, dict[str, Any]] = {}
    for sec, body in raw.items():
        if not isinstance(sec, str) or sec not in _SECTIONS:
            problems.append(f"unknown section {sec!r}{_suggest(str(sec), list(_SECTIONS))}; "
                            f"sections are {', '.join(_SECTIONS)}")
            continue
        if body is None:  # "energy:" with everything commented out
            body = {}
        if not isinstance(body, Mapping):
            problems.append(f"section {sec} must be a mapping of keys, got {_type_name(body)}")
            continue
        merged[sec] = dict(body)
    if isinstance(overrides, str):  # a lone string would be iterated per character
        overrides = [overrides]
    for ov in overrides:
        section, key, value = _parse_override(ov)
        merged.setdefault(section, {})[key] = value

    sections: dict[str, Any] = {}
    for sec, cls in _SECTIONS.items():
        body = merged.get(sec, {})
        if cls is EnergyConfig:
            items = []
            for name, value in body.items():
                if not isinstance(name, str) or not _ENERGY_NAME.match(name):
                    problems.append(f"energy.{name}: an energy constant name must be an "
                                    f"identifier (letters, digits, _)")
                    continue
                if name not in ENERGY_CONSTANT_NAMES:
                    close = difflib.get_close_matches(name, ENERGY_CONSTANT_NAMES, n=1, cutoff=0.6)
                    hint = f" (did you mean energy.{close[0]}?)" if close else ""
                    problems.append(f"energy.{name}: unknown energy constant{hint}; known: "
                                    f"{', '.join(ENERGY_CONSTANT_NAMES)}")
                    continue
                try:
                    items.append((name, _ENERGY_VALUE.check(value)))
                except _Invalid as exc:
                    problems.append(f"energy.{name} {exc}")
            sections[sec] = EnergyConfig(tuple(sorted(items)))
            continue
        known = {f.name: f for f in fields(cls)}
        kwargs = {}
        for key, value in body.items():
            if key not in known:
                hint = _suggest(str(key), list(known), sec + ".")
                problems.append(f"unknown key {sec}.{key}{hint}; "
                                f"keys of {sec} are {', '.join(known)}")
                continue
            try:
                kwargs[key] = known[key].metadata["rule"].check(value)
            except _Invalid as exc:
                problems.append(f"{sec}.{key} {exc}")
        if not problems:
            sections[sec] = cls(**kwargs)

    if not problems:
        cfg = Config(**sections, source=source)
        # Cross-key rule: the reported T sweep must include the selection T.
        if cfg.eval.timesteps < cfg.snn.timesteps:
            problems.append(f"eval.timesteps ({cfg.eval.timesteps}) must be >= snn.timesteps "
                            f"({cfg.snn.timesteps}): the largest reported T must cover the T "
                            f"used for model selection")
        else:
            return cfg
    if len(problems) == 1:
        raise ConfigError(where + problems[0], problems)
    raise ConfigError(f"{where}{len(problems)} problems in the config:\n  - "
                      + "\n  - ".join(problems), problems)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read ``path`` (YAML), apply ``section.key=value`` overrides, validate.

    Missing keys take their defaults; an empty file is the default config.
    Raises :class:`ConfigError` naming the offending key or override."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p} (pass --config PATH)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {p}: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    return _build(raw, overrides, str(p))


def default_config() -> Config:
    """The config with every key at its default."""
    return Config()


def describe_schema() -> dict[str, dict[str, tuple[Any, str, str]]]:
    """``{section: {key: (default, allowed, doc)}}``: used to check that
    deploy.yaml documents every key."""
    out: dict[str, dict[str, tuple[Any, str, str]]] = {}
    for sec, cls in _SECTIONS.items():
        if cls is EnergyConfig:
            out[sec] = {}
            continue
        out[sec] = {f.name: (f.default, f.metadata["rule"].describe(), f.metadata["doc"])
                    for f in fields(cls)}
    return out
