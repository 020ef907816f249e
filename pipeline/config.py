"""The pipeline's configuration: typed, frozen, validated before any work.

A config file (``deploy.yaml``) is a YAML mapping of sections to mappings of
keys. It is read defensively, before any schema check:

* at most :data:`MAX_CONFIG_BYTES`, a regular file, UTF-8 text without NUL bytes;
* with a :class:`yaml.SafeLoader` subclass (no arbitrary Python objects) that
  refuses anchors and aliases (a "billion laughs" file stops at its first
  anchor, before anything is expanded), refuses nesting deeper than
  :data:`MAX_YAML_DEPTH` (instead of a RecursionError), and refuses a key that
  appears twice in one mapping (naming both lines: a second ``train:`` section
  would otherwise silently replace the first).

Then every key is checked against the schema below:

* an unknown section or key is an error that names it and suggests the
  closest known name (``difflib``);
* a value of the wrong type is an error (ints must be ints, and ``bool`` is
  not an int; floats accept ints; strings must be strings);
* a value out of range is an error that states the allowed range or choices;
* a path (``data.root``, ``run.dir``, ``run.net``, ``import.nir``) must be a non-empty string
  without NUL characters, within the operating system's length limits.
  Whether it exists, or is a directory, is checked by the stage that uses it.

All problems found are reported together in one :class:`ConfigError` (one
line; each problem names its key as ``section.key``). Command-line overrides
(``--set section.key=value``) are applied before validation; their value is
parsed by the same YAML loader, so ``nq.noise=false`` is a bool and
``train.lr=0.1`` a float.

Relative paths are relative to the current working directory.
:func:`json_schema` gives a JSON Schema of the file for editors
(``deploy.schema.json``, kept up to date by a test).
"""
from __future__ import annotations

import difflib
import json
import math
import re
import stat
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import yaml

from hardware.analysis.energy import ENERGY_CONSTANTS, EnergyConfigError, check_override
from hardware.errors import ToolkitError
from hardware.kinds import EXPORT_FORMATS as _EXPORT_FORMATS, READOUTS
from hardware.spec import LOIHI2

#: deploy.yaml is 4 kB; a file 16 times that is not a config (and is not read into memory,
#: nor handed to the pure-Python YAML parser, which needs seconds for a few hundred kB).
MAX_CONFIG_BYTES = 64 << 10
#: Longest ``--set`` override accepted.
MAX_OVERRIDE_CHARS = 4096
#: Deepest YAML nesting accepted (a config needs 3: file, section, value).
MAX_YAML_DEPTH = 16
#: Linux limits (PATH_MAX includes the terminating NUL; NAME_MAX per component), in bytes.
MAX_PATH_BYTES = 4095
MAX_NAME_BYTES = 255


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


def _short_repr(value: Any, limit: int = 60) -> str:
    """``repr`` cut to ``limit`` characters: a 5000-character value must not become the message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _path_problem(value: str) -> Optional[str]:
    """Why ``value`` cannot be a path on this OS, or None."""
    if "\x00" in value:
        return "must not contain a NUL character"
    size = len(value.encode("utf-8", "surrogateescape"))
    if size > MAX_PATH_BYTES:
        return f"is {size} bytes long; paths are limited to {MAX_PATH_BYTES} bytes"
    for part in value.split("/"):
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            return (f"has a component {_short_repr(part, 30)} longer than {MAX_NAME_BYTES} bytes "
                    f"(the file-name limit)")
    return None


_KIND_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false",
               "str": "a non-empty string", "path": "a path (non-empty string)"}


@dataclass(frozen=True)
class _Rule:
    """How one key is checked.

    kind: 'int' | 'float' | 'bool' | 'str' | 'path' | 'choice'
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
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {self.hi:g}")
        base = " ".join([_KIND_NAMES[self.kind]] + [" and ".join(parts)] * bool(parts))
        return base + " or null" if self.nullable else base

    def check(self, value: Any) -> Any:
        """Return the (possibly converted) value or raise :class:`_Invalid`."""
        if value is None and self.nullable:
            return None
        bad = _Invalid(f"must be {self.describe()}, got {_short_repr(value)} ({_type_name(value)})")
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise bad
            return value
        if self.kind in ("str", "path", "choice"):
            return self._check_text(value, bad)
        return self._check_number(value, bad)

    def _check_text(self, value: Any, bad: _Invalid) -> str:
        if not isinstance(value, str) or not value:
            raise bad
        if self.kind == "path":
            problem = _path_problem(value)
            if problem:
                raise _Invalid(f"{problem} (got {_short_repr(value)})")
        if self.kind == "choice" and value not in self.choices:
            close = difflib.get_close_matches(value, self.choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _Invalid(f"must be {self.describe()}, got {_short_repr(value)}{hint}")
        return value

    def _check_number(self, value: Any, bad: _Invalid) -> Any:
        # bool is a subclass of int but never a valid number here
        if isinstance(value, bool):
            raise bad
        if self.kind == "int":
            if not isinstance(value, int):
                raise bad
        else:
            if not isinstance(value, (int, float)):
                raise bad
            try:
                value = float(value)
            except OverflowError:  # an int with hundreds of digits
                raise bad from None
            if not math.isfinite(value):
                raise bad
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            raise bad
        if self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)):
            raise bad
        return value

    def json_schema(self) -> dict[str, Any]:
        """This rule as a JSON Schema fragment (for editor completion)."""
        if self.kind == "choice":
            return {"enum": list(self.choices)}
        out: dict[str, Any] = {"type": {"int": "integer", "float": "number", "bool": "boolean",
                                        "str": "string", "path": "string"}[self.kind]}
        if self.kind in ("str", "path"):
            out["minLength"] = 1
        if self.kind == "path":
            out.update(maxLength=MAX_PATH_BYTES, pattern="^[^\\u0000]*$")
        if self.lo is not None:
            out["exclusiveMinimum" if self.lo_open else "minimum"] = self.lo
        if self.hi is not None:
            out["exclusiveMaximum" if self.hi_open else "maximum"] = self.hi
        if self.nullable:
            out["type"] = [out["type"], "null"]
        return out


def _f(default: Any, rule: _Rule, doc: str) -> Any:
    return field(default=default, metadata={"rule": rule, "doc": doc})


# --------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------

DATASETS = ("digits", "fashion-mnist", "mnist", "cifar10")
#: ``nq.activation``: the hidden layers' ANN activation (models.nq.ACTIVATIONS, plus ``auto``:
#: cuba-matched when snn.neuron is cuba, qcfs otherwise). Spelled out here so that reading
#: a config does not import torch; tests/test_config.py checks them against models.nq.
ACTIVATIONS = ("qcfs", "cuba-matched", "auto")
#: ``snn.cuba_shift``: per-step drive offsets of the cuba path (models.nq.CUBA_SHIFTS).
CUBA_SHIFTS = ("none", "half-bias")
#: ``model.arch`` (models.architectures.ARCHITECTURES, plus ``auto``); the resnets are residual nets.
ARCHS = ("auto", "cnn-small", "vgg-small", "vgg16", "resnet-small", "resnet20", "resnet18")
#: The architecture ``model.arch: auto`` picks for each dataset.
DEFAULT_ARCH = {"digits": "cnn-small", "fashion-mnist": "vgg-small",
                "mnist": "vgg-small", "cifar10": "vgg16"}


@dataclass(frozen=True)
class DataConfig:
    name: str = _f("digits", _Rule("choice", choices=DATASETS), "dataset")
    root: Optional[str] = _f(None, _Rule("path", nullable=True),
                             "dataset directory; null = the dataset's default location")
    val_fraction: float = _f(0.1, _Rule("float", lo=0.0, hi=0.5, lo_open=True, hi_open=True),
                             "fraction of the training set held out for validation")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = _f("auto", _Rule("choice", choices=ARCHS),
                   "network architecture: plain conv nets (cnn-small, vgg-small, vgg16) or residual "
                   "nets (resnet-small, resnet20, resnet18); auto picks a plain net per dataset")


@dataclass(frozen=True)
class NQConfig:
    levels: int = _f(4, _Rule("int", lo=1, hi=256), "quantization levels L of the QCFS activation")
    init_threshold: float = _f(8.0, _Rule("float", lo=0.0, hi=1e6, lo_open=True),
                               "initial value of every layer's learnable threshold lambda")
    noise: bool = _f(True, _Rule("bool"), "inject residual noise during training")
    sigma_samples: int = _f(512, _Rule("int", lo=16, hi=10_000_000),
                            "validation samples used to estimate sigma each epoch")
    activation: str = _f("auto", _Rule("choice", choices=ACTIVATIONS),
                         "hidden-layer activation: qcfs (the IF neuron's response) | cuba-matched "
                         "(the stock CUBA neuron's exact response over snn.cuba_timesteps steps) | "
                         "auto (cuba-matched if snn.neuron is cuba, else qcfs)")


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
    dist_timeout_s: float = _f(180.0, _Rule("float", lo=1.0, hi=86_400.0),
                               "under torchrun: seconds a process waits for a missing peer before "
                               "it gives up")


@dataclass(frozen=True)
class SNNConfig:
    timesteps: int = _f(4, _Rule("int", lo=1, hi=100_000),
                        "T used for model selection (and sigma, unless sigma_timesteps is set)")
    sigma_timesteps: Optional[int] = _f(None, _Rule("int", lo=1, hi=100_000, nullable=True),
                                        "T at which sigma is measured (null: snn.timesteps)")
    neuron: str = _f("if_soft", _Rule("choice", choices=("if_soft", "cuba")), "SNN neuron model")
    readout: str = _f("potential", _Rule("choice", choices=READOUTS),
                      "how the SNN's class is read out")
    cuba_shift: str = _f("none", _Rule("choice", choices=CUBA_SHIFTS),
                         "cuba only: per-step drive offset folded into the biases: none | half-bias "
                         "(theta/(2T) per step, T = snn.cuba_timesteps)")
    cuba_timesteps: Optional[int] = _f(None, _Rule("int", lo=1, hi=100_000, nullable=True),
                                       "T the cuba-matched activation and the cuba shift are "
                                       "designed for (null: snn.timesteps)")

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
    dir: str = _f("runs/digits", _Rule("path"), "output directory of this run")
    backend: str = _f("loihi2-sim", _Rule("choice", choices=("loihi2-sim", "loihi2-hw")),
                      "Lava backend")
    lava_samples: int = _f(100, _Rule("int", lo=1, hi=10_000_000),
                           "test samples run through Lava")
    probes: bool = _f(True, _Rule("bool"), "record spikes/ops per layer and step")
    net: Optional[str] = _f(None, _Rule("path", nullable=True),
                            "the .net file `run` executes (null: <run.dir>/model.net)")
    overwrite: bool = _f(False, _Rule("bool"),
                         "let train/export replace a checkpoint/model.net made with another "
                         "configuration (the CLI's --overwrite)")


#: ``export.format``: the file ``export`` writes (``net``: quantized netx HDF5, ``nir``: the
#: float network as a NIR graph, hardware.formats.nir)
EXPORT_FORMATS = _EXPORT_FORMATS


@dataclass(frozen=True)
class ExportConfig:
    format: str = _f("net", _Rule("choice", choices=EXPORT_FORMATS),
                     "file export writes: net (Loihi 2 fixed point, <run.dir>/model.net) | nir (the "
                     "float SNN as a NIR graph, <run.dir>/model.nir; cuba neurons only)")


@dataclass(frozen=True)
class ImportConfig:
    nir: Optional[str] = _f(None, _Rule("path", nullable=True),
                            "the NIR graph `import` reads into run.dir (export and run then take it)")
    dt: float = _f(1e-4, _Rule("float", lo=0.0, hi=1.0, lo_open=True),
                   "time step the NIR graph's time constants are discretised with (snnTorch: "
                   "1e-4, Norse: 1e-3); a graph written by this project carries its own")


_ENERGY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class EnergyConfig(Mapping):
    """Read-only mapping of energy-constant overrides, name -> positive float.

    Names and values are checked by the energy model (which knows its
    constants). Stored as a sorted tuple so the config stays hashable."""

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
    "export": ExportConfig, "import": ImportConfig, "energy": EnergyConfig,
}
#: sections whose name is a Python keyword live in the attribute with a trailing underscore
#: (``cfg.import_``)
_ATTRIBUTE = {"import": "import_"}


def _attribute(section: str) -> str:
    return _ATTRIBUTE.get(section, section)


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
    export: ExportConfig = field(default_factory=ExportConfig)
    import_: ImportConfig = field(default_factory=ImportConfig)  # section "import"
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

    @property
    def activation(self) -> str:
        """``nq.activation`` with ``auto`` resolved from ``snn.neuron``."""
        if self.nq.activation == "auto":
            return "cuba-matched" if self.snn.neuron == "cuba" else "qcfs"
        return self.nq.activation

    @property
    def cuba_t(self) -> int:
        """The T the cuba-matched activation and the cuba shift are designed for."""
        return self.snn.timesteps if self.snn.cuba_timesteps is None else self.snn.cuba_timesteps

    def activation_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``models.architectures.build_model`` (and
        ``configure_activations``) for the configured hidden-layer activation."""
        if self.activation == "cuba-matched":
            return {"activation": "cuba-matched", "timesteps": self.cuba_t,
                    "cuba_shift": self.snn.cuba_shift}
        return {"activation": "qcfs", "timesteps": None, "cuba_shift": "none"}

    def conversion_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``models.converter.convert`` for the configured cuba shift (a
        cuba-matched model carries its own; a QCFS model is shifted at conversion)."""
        if self.activation == "qcfs" and self.snn.cuba_shift != "none":
            return {"cuba_shift": self.snn.cuba_shift, "shift_timesteps": self.cuba_t}
        return {}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain, JSON-serialisable ``{section: {key: value}}`` (for provenance).

        ``Config.from_dict(cfg.to_dict()) == cfg``."""
        out: dict[str, dict[str, Any]] = {}
        for name in _SECTIONS:
            sec = getattr(self, _attribute(name))
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
# Reading YAML defensively
# --------------------------------------------------------------------------

class _Refused(yaml.YAMLError):
    """Internal: YAML that parses but that a config must not contain."""


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader without anchors/aliases and with bounded nesting.

    Refusing at compose time means nothing is expanded or built before the
    refusal: a billion-laughs document fails at its first anchor."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    # Nesting is refused while scanning, at the first bracket or indentation too deep: the
    # scanner's cost grows with the depth (simple-key bookkeeping per flow level).
    def fetch_flow_collection_start(self, TokenClass):
        if self.flow_level >= MAX_YAML_DEPTH:
            raise _Refused(self._too_deep(self.line + 1))
        super().fetch_flow_collection_start(TokenClass)

    def add_indent(self, column):
        if self.indent < column and len(self.indents) >= MAX_YAML_DEPTH:
            raise _Refused(self._too_deep(self.line + 1))
        return super().add_indent(column)

    @staticmethod
    def _too_deep(line: int) -> str:
        return (f"line {line}: nested deeper than {MAX_YAML_DEPTH} levels; a config is a "
                f"mapping of sections to mappings of keys")

    def compose_node(self, parent, index):
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise _Refused(f"line {line}: YAML anchors and aliases (&{event.anchor}, "
                           f"*{event.anchor}) are not allowed in a config; write the value out")
        if self._depth >= MAX_YAML_DEPTH:
            raise _Refused(self._too_deep(line))
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _duplicate_keys(node: yaml.Node, path: str = "") -> Optional[str]:
    """The first key that appears twice in one mapping of ``node``, described, or None."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if isinstance(key_node, yaml.ScalarNode):
                ident = (key_node.tag, key_node.value)
                name = f"{path}{key_node.value}"
                if ident in seen:
                    return (f"duplicate key {name!r} at lines {seen[ident]} and {line} (the "
                            f"second would silently replace the first; merge them)")
                seen[ident] = line
                sub = _duplicate_keys(value_node, name + ".")
            else:
                sub = _duplicate_keys(value_node, path)
            if sub:
                return sub
    elif isinstance(node, yaml.SequenceNode):
        return next(filter(None, (_duplicate_keys(item, path) for item in node.value)), None)
    return None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error as one line (PyYAML's own messages span several)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        context = f"{exc.context}: " if exc.context else ""
        return f"{context}{exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())


def _parse_yaml(text: str) -> Any:
    """Parse one YAML document with :class:`_ConfigLoader`; raise :class:`_Refused`
    or another :class:`yaml.YAMLError` for anything a config must not be."""
    loader = _ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        duplicate = _duplicate_keys(node)
        if duplicate:
            raise _Refused(duplicate)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _read_config_text(p: Path) -> str:
    """The file's text, after checking it is a regular, not-too-large, UTF-8, NUL-free file."""
    try:
        info = p.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"config {p} is not a regular file"
                              f"{' (it is a directory)' if stat.S_ISDIR(info.st_mode) else ''}")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config {p} is {info.st_size} bytes; a config is at most "
                              f"{MAX_CONFIG_BYTES} bytes")
        with p.open("rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p} (pass --config PATH)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:  # the file grew after stat
        raise ConfigError(f"config {p} is larger than {MAX_CONFIG_BYTES} bytes")
    if b"\x00" in data:
        raise ConfigError(f"config {p} contains NUL bytes: it is a binary file, not YAML text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {p} is not UTF-8 text (byte 0x{data[exc.start]:02x} at "
                          f"offset {exc.start})") from None


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------

def _suggest(name: str, known: Sequence[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


def _parse_override_value(text: str, rhs: str) -> Any:
    if len(rhs) > MAX_OVERRIDE_CHARS:
        raise ConfigError(f"override {text[:40]!r}…: value is {len(rhs)} characters; at most "
                          f"{MAX_OVERRIDE_CHARS}")
    try:
        return _parse_yaml(rhs) if rhs.strip() else None
    except _Refused as exc:
        raise ConfigError(f"override {_short_repr(text)}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {_short_repr(text)}: value {_short_repr(rhs)} is not valid YAML "
                          f"({_yaml_problem(exc)})") from None


def _parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` -> (section, key, yaml-parsed value)."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"malformed override {_short_repr(text)}: expected section.key=value "
                          f"(e.g. train.lr=0.1)")
    lhs, rhs = text.split("=", 1)
    parts = lhs.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"malformed override {_short_repr(text)}: the key must be section.key "
                          f"(e.g. nq.noise=false), got {_short_repr(lhs.strip())}")
    section, key = parts
    if section not in _SECTIONS:
        raise ConfigError(f"override {_short_repr(text)}: unknown section {section!r}"
                          f"{_suggest(section, list(_SECTIONS))}; sections are "
                          f"{', '.join(_SECTIONS)}")
    cls = _SECTIONS[section]
    if cls is not EnergyConfig:
        known = [f.name for f in fields(cls)]
        if key not in known:
            raise ConfigError(f"override {_short_repr(text)}: unknown key {section}.{key}"
                              f"{_suggest(key, known, section + '.')}; keys of {section} "
                              f"are {', '.join(known)}")
    return section, key, _parse_override_value(text, rhs)


def _raw_sections(raw: Any, where: str, problems: list[str]) -> dict[str, dict[Any, Any]]:
    """``{section: {key: value}}`` from the parsed file; structural problems go to ``problems``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}the config must be a mapping of sections "
                          f"({', '.join(_SECTIONS)}), got {_type_name(raw)}")
    merged: dict[str, dict[Any, Any]] = {}
    for sec, body in raw.items():
        if not isinstance(sec, str) or sec not in _SECTIONS:
            problems.append(f"unknown section {_short_repr(sec)}"
                            f"{_suggest(str(sec), list(_SECTIONS))}; "
                            f"sections are {', '.join(_SECTIONS)}")
            continue
        if body is None:  # "energy:" with everything commented out
            body = {}
        if not isinstance(body, Mapping):
            problems.append(f"section {sec} must be a mapping of keys, got {_type_name(body)}")
            continue
        merged[sec] = dict(body)
    return merged


def _energy_section(body: Mapping, problems: list[str]) -> EnergyConfig:
    items = []
    for name, value in body.items():
        if not isinstance(name, str) or not _ENERGY_NAME.match(name):
            problems.append(f"energy.{str(name)[:60]}: an energy constant name must be an "
                            f"identifier (letters, digits, _)")
            continue
        try:
            items.append((name, check_override(name, value)))
        except EnergyConfigError as exc:
            problems.append(str(exc))
    return EnergyConfig(tuple(sorted(items)))


def _typed_section(sec: str, cls: type, body: Mapping, problems: list[str]) -> Any:
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in body.items():
        if key not in known:
            hint = _suggest(str(key), list(known), sec + ".")
            problems.append(f"unknown key {sec}.{str(key)[:60]}{hint}; "
                            f"keys of {sec} are {', '.join(known)}")
            continue
        try:
            kwargs[key] = known[key].metadata["rule"].check(value)
        except _Invalid as exc:
            problems.append(f"{sec}.{key} {exc}")
    return None if problems else cls(**kwargs)


def _cross_key_problems(cfg: Config) -> list[str]:
    problems = []
    if cfg.eval.timesteps < cfg.snn.timesteps:
        problems.append(f"eval.timesteps ({cfg.eval.timesteps}) must be >= snn.timesteps "
                        f"({cfg.snn.timesteps}): the largest reported T must cover the T used for "
                        f"model selection")
    if cfg.nq.activation == "cuba-matched" and cfg.snn.neuron != "cuba":
        problems.append(f"nq.activation cuba-matched models the stock cuba neuron but snn.neuron is "
                        f"{cfg.snn.neuron}: set snn.neuron: cuba (or nq.activation: auto)")
    if cfg.snn.cuba_shift != "none" and cfg.snn.neuron != "cuba":
        problems.append(f"snn.cuba_shift {cfg.snn.cuba_shift} applies to cuba neurons only, but "
                        f"snn.neuron is {cfg.snn.neuron}: set snn.cuba_shift: none")
    return problems


def _build(raw: Any, overrides: Sequence[str], source: Optional[str]) -> Config:
    where = f"{source}: " if source else ""
    problems: list[str] = []
    merged = _raw_sections(raw, where, problems)
    if isinstance(overrides, str):  # a lone string would be iterated per character
        overrides = [overrides]
    for ov in overrides:
        section, key, value = _parse_override(ov)
        merged.setdefault(section, {})[key] = value
    sections = {}
    for sec, cls in _SECTIONS.items():
        body = merged.get(sec, {})
        if cls is EnergyConfig:
            sections[sec] = _energy_section(body, problems)
        else:
            sections[sec] = _typed_section(sec, cls, body, problems)
    if not problems:
        cfg = Config(**{_attribute(sec): value for sec, value in sections.items()}, source=source)
        problems = _cross_key_problems(cfg)
        if not problems:
            return cfg
    if len(problems) == 1:
        raise ConfigError(where + problems[0], problems)
    # one line: the CLI prints every error as a single "error: ..." line
    raise ConfigError(f"{where}{len(problems)} problems in the config: " + "; ".join(problems),
                      problems)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read ``path`` (YAML), apply ``section.key=value`` overrides, validate.

    Missing keys take their defaults; an empty file is the default config.
    Raises :class:`ConfigError` naming the file and the offending key or override."""
    p = Path(path)
    text = _read_config_text(p)
    try:
        raw = _parse_yaml(text)
    except _Refused as exc:
        raise ConfigError(f"{p}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {_yaml_problem(exc)}") from None
    return _build(raw, overrides, str(p))


# --------------------------------------------------------------------------
# Schema descriptions
# --------------------------------------------------------------------------

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


def _energy_json_schema() -> dict[str, Any]:
    props = {c.name: {"type": "number", "exclusiveMinimum": 0,
                      "description": f"{c.unit}; default {c.value:g}; {c.source}"}
             for c in ENERGY_CONSTANTS}
    return {"type": ["object", "null"], "additionalProperties": False, "properties": props,
            "description": "energy-constant overrides (name: positive number)"}


def json_schema() -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of deploy.yaml, for editor completion and checks.

    The validator above is the authority; this schema mirrors its rules (it
    cannot express the cross-key rule eval.timesteps >= snn.timesteps)."""
    sections: dict[str, Any] = {}
    for sec, cls in _SECTIONS.items():
        if cls is EnergyConfig:
            sections[sec] = _energy_json_schema()
            continue
        props = {}
        for f in fields(cls):
            rule: _Rule = f.metadata["rule"]
            default = None if f.default is MISSING else f.default
            props[f.name] = {**rule.json_schema(), "default": default,
                             "description": f.metadata["doc"]}
        sections[sec] = {"type": ["object", "null"], "additionalProperties": False,
                         "properties": props}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "nqloihi pipeline configuration (deploy.yaml)",
            "type": ["object", "null"], "additionalProperties": False, "properties": sections}


def json_schema_text() -> str:
    """:func:`json_schema` as the text of ``deploy.schema.json`` (regenerate that file with
    ``python -c "from pipeline.config import json_schema_text as t; open('deploy.schema.json',
    'w').write(t())"``)."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
