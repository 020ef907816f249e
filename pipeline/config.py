"""The pipeline's configuration: pydantic models, validated before any work.

A config file (``deploy.yaml``) is a YAML mapping of sections to mappings of keys; a missing
key takes its default, an empty file is the default config. It is read defensively: at most
:data:`MAX_CONFIG_BYTES` of UTF-8 text from a regular file, by a ``SafeLoader`` that refuses
anchors and aliases (a "billion laughs" stops at its first anchor), nesting deeper than
:data:`MAX_YAML_DEPTH`, and a key given twice in one mapping (naming both lines).

Each section is a frozen pydantic model (strict: ``bool`` is not an int, ints must be ints,
floats accept ints; unknown keys are refused; choices are ``Literal`` types, bounds ``Field``
constraints) and :class:`Config` is the model of the sections (section ``import`` is
``cfg.import_``). A path (``data.root``, ``run.dir``, ``run.net``, ``import.nir``) must be
non-empty, without NUL and within the OS's length limits; whether it exists is checked by the
stage that uses it. Relative paths are relative to the current working directory.
``--set section.key=value`` overrides are parsed by the same YAML loader (``nq.noise=false``
is a bool) and applied before validation.

Every problem is reported at once, in one single-line :class:`ConfigError` (``problems``
holds one message each) that names the key as ``section.key``, the file line it came from,
and the closest known name for a misspelt section, key or choice. The messages are built
from each field's JSON Schema, never from pydantic's wording. :func:`json_schema_text` is
``deploy.schema.json`` (for editors; a test keeps the file current).
"""
from __future__ import annotations

import difflib
import json
import re
import stat
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, Optional, Sequence, Union, get_args

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, PrivateAttr,
                      StringConstraints, ValidationError, WithJsonSchema, create_model,
                      model_validator)
from pydantic_core import PydanticCustomError

from hardware.analysis.energy import ENERGY_CONSTANTS
from hardware.errors import ToolkitError
from hardware.kinds import EXPORT_FORMATS, Backend, ExportFormat, NeuronKind, Readout
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

__all__ = ["Config", "ConfigError", "load_config", "describe_schema", "json_schema",
           "json_schema_text", "DEFAULT_ARCH", "DATASETS", "ARCHS", "ACTIVATIONS", "CUBA_SHIFTS",
           "EXPORT_FORMATS"]


class ConfigError(ToolkitError, ValueError):
    """A config file, section, key, value or override that is not valid.

    ``problems`` holds one message per problem (each names its key)."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        super().__init__(message)
        self.problems = tuple(problems) or (message,)


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


def _checked_path(value: str) -> str:
    problem = _path_problem(value)
    if problem:
        raise PydanticCustomError("config_path", "{problem}",
                                  {"problem": f"{problem} (got {_short_repr(value)})"})
    return value


#: A path key's value (its JSON Schema marks it as a path by its ``pattern``).
PathText = Annotated[str, StringConstraints(min_length=1), AfterValidator(_checked_path),
                     WithJsonSchema({"type": "string", "minLength": 1, "maxLength": MAX_PATH_BYTES,
                                     "pattern": "^[^\\u0000]*$"})]

# --------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------

Dataset = Literal["digits", "fashion-mnist", "mnist", "cifar10", "npz", "folder"]
#: ``nq.activation``: the hidden layers' ANN activation (models.nq.ACTIVATIONS, plus ``auto``:
#: cuba-matched when snn.neuron is cuba, qcfs otherwise). Spelled out here so that reading
#: a config does not import torch; tests/test_cuba_activation.py checks them against models.nq.
Activation = Literal["qcfs", "cuba-matched", "auto"]
#: ``snn.cuba_shift``: per-step drive offsets of the cuba path (models.nq.CUBA_SHIFTS).
CubaShift = Literal["none", "half-bias"]
#: ``finetune.surrogate``: models.snn_unroll.SURROGATES (tests/test_finetune.py checks they agree)
Surrogate = Literal["rectangle", "sigmoid"]
#: ``model.arch`` (models.architectures.ARCHITECTURES, plus ``auto``); the resnets are residual nets.
Arch = Literal["auto", "cnn-small", "vgg-small", "vgg16", "resnet-small", "resnet20", "resnet18"]
DATASETS: tuple[str, ...] = get_args(Dataset)
ACTIVATIONS: tuple[str, ...] = get_args(Activation)
CUBA_SHIFTS: tuple[str, ...] = get_args(CubaShift)
#: ``snn.calibrate``: training-free correction at export (models.snn_calibrate.CALIBRATIONS).
Calibrate = Literal["none", "bias", "bias+threshold"]
CALIBRATIONS: tuple[str, ...] = get_args(Calibrate)
ARCHS: tuple[str, ...] = get_args(Arch)
#: The architecture ``model.arch: auto`` picks for each dataset.
DEFAULT_ARCH = {"digits": "cnn-small", "fashion-mnist": "vgg-small",
                "mnist": "vgg-small", "cifar10": "vgg16", "npz": "vgg-small", "folder": "vgg-small"}
_STEPS = {"ge": 1, "le": 100_000}  # a number of time steps
_COUNT = {"ge": 1, "le": 1 << 20}  # a batch size
_SAMPLES = {"ge": 16, "le": 10_000_000}  # enough samples for a statistic


class _Section(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)


#: Most values in ``data.mean`` / ``data.std`` (one per channel, or per flat input feature).
MAX_NORM_VALUES = 1 << 16
#: Largest ``data.image_size`` (a folder dataset's side after resizing).
MAX_IMAGE_SIZE = 1024


def _norm_values(positive: bool):
    """The validator of ``data.mean`` (values in [0, 1]) or ``data.std`` (in (0, 1]): a list of
    numbers, as a tuple. Inputs are [0, 1] pixels, so a value above 1 is in 0..255 units."""
    def check(value: Any) -> tuple[float, ...]:
        ok = (isinstance(value, (list, tuple)) and 1 <= len(value) <= MAX_NORM_VALUES
              and all(type(v) in (int, float) and (v > 0 if positive else v >= 0) and v <= 1
                      for v in value))
        if not ok:
            raise PydanticCustomError("config_value", "{problem}", {"problem": (
                f"must be a list of 1..{MAX_NORM_VALUES} numbers {'>' if positive else '>='} 0 "
                f"and <= 1, one per input channel, in units of [0, 1] pixels (divide 0..255 values "
                f"by 255), or null; got {_short_repr(value)}")})
        return tuple(float(v) for v in value)
    low = {"exclusiveMinimum" if positive else "minimum": 0}
    schema = {"type": "array", "items": {"type": "number", **low, "maximum": 1}, "minItems": 1,
              "maxItems": MAX_NORM_VALUES}
    return Annotated[tuple[float, ...], PlainValidator(check), WithJsonSchema(schema)]


class DataConfig(_Section):
    """The dataset, its validation split and the input normalisation a pretrained model expects."""

    name: Dataset = Field("digits", description=(
        "dataset: digits | fashion-mnist | mnist | cifar10 | npz (data.root: one .npz file) | "
        "folder (data.root: train/<class>/ and test/<class>/ image folders)"))
    root: Optional[PathText] = Field(
        None, description="dataset directory (npz: the .npz file); null = the dataset's default location")
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5, description=(
        "fraction of the training set held out for validation"))
    image_size: Optional[int] = Field(None, ge=1, le=MAX_IMAGE_SIZE, description=(
        "folder only: side every image is resized to (square); required with data.name folder"))
    channels: Optional[int] = Field(None, ge=1, le=3, description=(
        "folder only: 1 (grayscale) or 3 (RGB); null: 1 if every image is grayscale, else 3"))
    mean: Optional[_norm_values(positive=False)] = Field(None, description=(
        "per-channel mean of the normalisation (x - mean) / std the model expects, folded into "
        "its first layer (the chip still receives [0, 1] pixels); null: none"))
    std: Optional[_norm_values(positive=True)] = Field(None, description=(
        "per-channel std of that normalisation (with data.mean); null: none"))


#: ``model.factory``: ``package.module:function`` (dotted Python names).
_FACTORY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
#: A ``model.kwargs`` value: a YAML scalar, or a list of scalars or of lists of scalars.
_Scalar = Union[bool, int, float, str, None]
KwargValue = Union[_Scalar, list[Union[_Scalar, list[_Scalar]]]]


def _checked_factory(value: str) -> str:
    if not _FACTORY_RE.match(value):
        raise PydanticCustomError("config_value", "{problem}", {"problem": (
            f"must be 'package.module:function' (Python names), got {_short_repr(value)}")})
    return value


class ModelConfig(_Section):
    """The network: an architecture of the registry, or the user's own (a factory or ONNX)."""

    arch: Arch = Field("auto", description=(
        "network architecture: plain conv nets (cnn-small, vgg-small, vgg16) or residual nets "
        "(resnet-small, resnet20, resnet18); auto picks a plain net per dataset"))
    factory: Optional[Annotated[str, AfterValidator(_checked_factory)]] = Field(None, description=(
        "'package.module:function' returning the user's nn.Module (imported like any import, "
        "so it runs that code; from the working directory or sys.path); null: model.arch"))
    kwargs: dict[str, KwargValue] = Field({}, description=(
        "keyword arguments of model.factory (YAML scalars and lists)"))
    weights: Optional[PathText] = Field(None, description=(
        "safetensors file with the factory module's state_dict (pretrained): NQ training "
        "fine-tunes it; null: a fresh init"))
    onnx: Optional[PathText] = Field(None, description=(
        "an .onnx file of the user's network (read as data, never run; needs the onnx extra); "
        "null: model.factory or model.arch"))

    def __hash__(self) -> int:  # kwargs is a dict, which pydantic's frozen hash cannot take
        return hash(json.dumps(self.model_dump(), sort_keys=True))


#: The largest ``nq.init_threshold`` number.
_MAX_INIT_THRESHOLD = 1e6


def _checked_init_threshold(value: Any) -> Any:
    """``auto`` or a number in (0, 1e6] (as a float); one validator instead of a pydantic union,
    whose errors would name each member separately."""
    if value == "auto":
        return value
    if type(value) in (int, float) and 0 < value <= _MAX_INIT_THRESHOLD:
        return float(value)
    raise PydanticCustomError("init_threshold", "not auto or a positive number")


#: ``nq.init_threshold``: ``auto`` (from the data, models.calibrate) or λ0 > 0.
InitThreshold = Annotated[Union[Literal["auto"], float], PlainValidator(_checked_init_threshold),
                          WithJsonSchema({"anyOf": [
                              {"const": "auto", "type": "string"},
                              {"type": "number", "exclusiveMinimum": 0.0, "maximum": _MAX_INIT_THRESHOLD}]})]


class NQConfig(_Section):
    """The noisy-quantized (QCFS) activation and its residual noise."""

    levels: int = Field(4, ge=1, le=256, description="quantization levels L of the QCFS activation")
    init_threshold: InitThreshold = Field("auto", description=(
        "initial value of every layer's learnable threshold lambda: auto (each layer's from a high "
        "percentile of its pre-activations on a few training batches, on a fresh start; "
        "models.calibrate) or a number (the paper: 8)"))
    noise: bool = Field(True, description="inject residual noise during training")
    sigma_samples: int = Field(512, **_SAMPLES, description=(
        "validation samples used to estimate sigma each epoch"))
    activation: Activation = Field("auto", description=(
        "hidden-layer activation: qcfs (the IF neuron's response) | cuba-matched (the stock CUBA "
        "neuron's exact response over snn.timesteps steps) | auto (cuba-matched if "
        "snn.neuron is cuba, else qcfs)"))

    @property
    def start_threshold(self) -> float:
        """The λ the NQ layers are built with: the number, or with ``auto`` the paper's 8 until
        the data set each layer's (on a fresh start; a resumed run restores its own)."""
        return 8.0 if self.init_threshold == "auto" else self.init_threshold


class TrainConfig(_Section):
    """ANN training (SGD)."""

    epochs: int = Field(30, ge=1, le=100_000, description="training epochs")
    batch_size: int = Field(64, **_COUNT, description="training mini-batch size")
    lr: float = Field(0.05, gt=0.0, le=10.0, description="SGD learning rate")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0.0, le=1.0, description="L2 weight decay")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of every random choice")
    augment: bool = Field(False, description=(
        "random crop with padding (and horizontal flip where the dataset allows it)"))
    select_samples: Optional[int] = Field(None, **_SAMPLES, description=(
        "fixed validation subset for model selection (null: all)"))
    dist_timeout_s: float = Field(180.0, ge=1.0, le=86_400.0, description=(
        "under torchrun: seconds a process waits for a missing peer before it gives up"))
    activity_penalty: float = Field(0.0, ge=0.0, le=1000.0, description=(
        "weight of the activity term added to the training loss: the mean over NQ layers of "
        "mean(activation / lambda), i.e. spikes per neuron per step (0: off, the plain loss)"))


class FinetuneConfig(_Section):
    """Fine-tuning of the converted SNN at snn.timesteps (pipeline.finetune), after train."""

    epochs: int = Field(0, ge=0, le=100_000, description=(
        "epochs of surrogate-gradient training of the converted SNN at snn.timesteps, with its "
        "own neuron, selected on the validation split (0: off; `all` runs it when > 0)"))
    lr: float = Field(1e-3, gt=0.0, le=10.0, description="Adam learning rate")
    batch_size: int = Field(64, **_COUNT, description="fine-tuning mini-batch size")
    surrogate: Surrogate = Field("rectangle", description=(
        "the spike's surrogate derivative around the threshold: rectangle | sigmoid"))


class SNNConfig(_Section):
    """The converted spiking network."""

    timesteps: int = Field(4, **_STEPS, description=(
        "the deployment T: the T the network is selected at, sigma is measured at (unless "
        "sigma_timesteps is set), the cuba-matched activation and cuba shift are designed for, "
        "the .net file is written for (reset interval, readout and state bounds) and Lava runs"))
    sigma_timesteps: Optional[int] = Field(None, **_STEPS, description=(
        "T at which sigma is measured (null: snn.timesteps)"))
    neuron: NeuronKind = Field("if_soft", description="SNN neuron model")
    readout: Readout = Field("potential", description="how the SNN's class is read out")
    cuba_shift: CubaShift = Field("none", description=(
        "cuba only: per-step drive offset folded into the biases: none | half-bias "
        "(theta/(2T) per step, T = snn.timesteps)"))
    calibrate: Calibrate = Field("none", description=(
        "training-free correction of the converted network at export, on snn.calibrate_samples "
        "training images at snn.timesteps: none | bias (each layer's bias shifted so its mean "
        "SNN output matches the ANN's, layer by layer) | bias+threshold (and each hidden "
        "layer's threshold scaled, downstream weights with it, to the best of a small grid)"))
    calibrate_samples: int = Field(256, **_SAMPLES, description=(
        "training images (a fixed, seeded subset) snn.calibrate measures the layers on"))

    @property
    def sigma_t(self) -> int:
        """The T at which sigma is measured."""
        return self.timesteps if self.sigma_timesteps is None else self.sigma_timesteps


class EvalConfig(_Section):
    """Evaluation of the ANN and the SNN."""

    timesteps: int = Field(8, **_STEPS, description=(
        "how far the accuracy-versus-T curve goes (T = 1..this; beyond snn.timesteps the "
        "fixed-point entries run the file past the T it was made for)"))
    batch_size: int = Field(256, **_COUNT, description="evaluation batch size")
    max_drop: float = Field(0.01, ge=0.0, le=1.0, allow_inf_nan=False, description=(
        "the report suggests the smallest T whose fixed-point validation accuracy is within this "
        "drop (a fraction: 0.01 = 1 point) of the ANN's validation accuracy"))


class QuantConfig(_Section):
    """Fixed-point quantization for Loihi 2."""

    input_bits: int = Field(LOIHI2.input_bits_default, ge=1, le=LOIHI2.graded_spike_max_bits,
                            description="bits of the graded-spike input payload")


class RunConfig(_Section):
    """The run directory and the Lava run."""

    dir: PathText = Field("runs/digits", description="output directory of this run")
    backend: Backend = Field("loihi2-sim", description="Lava backend")
    lava_samples: int = Field(100, ge=1, le=10_000_000, description="test samples run through Lava")
    probes: bool = Field(True, description="record spikes/ops per layer and step")
    net: Optional[PathText] = Field(None, description=(
        "the .net file `run` executes (null: <run.dir>/model.net)"))
    overwrite: bool = Field(False, description=(
        "let train/export replace a checkpoint/model.net made with another configuration "
        "(the CLI's --overwrite)"))
    allow_other_timesteps: bool = Field(False, description=(
        "let run execute a .net made for another T than snn.timesteps, if its readout and state "
        "bounds hold at snn.timesteps (checked)"))


class ExportConfig(_Section):
    """The file ``export`` writes."""

    format: ExportFormat = Field("net", description=(
        "file export writes: net (Loihi 2 fixed point, <run.dir>/model.net) | nir (the float "
        "SNN as a NIR graph, <run.dir>/model.nir; cuba neurons only)"))


class ImportConfig(_Section):
    """A NIR graph to import."""

    nir: Optional[PathText] = Field(None, description=(
        "the NIR graph `import` reads into run.dir (export and run then take it)"))
    dt: float = Field(1e-4, gt=0.0, le=1.0, description=(
        "time step the NIR graph's time constants are discretised with (snnTorch: 1e-4, Norse: "
        "1e-3); a graph written by this project carries its own"))


class BundleConfig(_Section):
    """The board bundle (``bundle`` stage) and the result it brings back (``report``)."""

    samples: int = Field(100, ge=1, le=1_000_000, description=(
        "test samples in <run.dir>/bundle/ (their encoded inputs and golden outputs)"))
    board_result: Optional[PathText] = Field(None, description=(
        "the result JSON a bundle's run_on_loihi.py wrote; `report` stores it in report.json "
        "(board_run) and report.md (the CLI's report --board-result FILE)"))


class _EnergyOverrides(_Section, Mapping):
    """Read-only mapping of the energy constants set (name -> float); unset ones are None."""

    def __getitem__(self, name: str) -> float:
        value = getattr(self, name) if name in type(self).model_fields else None
        if value is None:
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:  # the names set, as a mapping iterates its keys
        return (name for name in type(self).model_fields if getattr(self, name) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default")  # "unset" is not a value an editor should offer


#: One optional key per constant of the energy model (hardware.analysis.energy), each > 0.
EnergyConfig = create_model(
    "EnergyConfig", __base__=_EnergyOverrides, __module__=__name__,
    __doc__="Energy-constant overrides (name: number > 0); see the README for the names.",
    **{c.name: (float, Field(None, gt=0, json_schema_extra=_no_default,
                             description=f"{c.unit}; default {c.value:g}; {c.source}"))
       for c in ENERGY_CONSTANTS})


def _cross_key_problems(cfg: Config) -> list[tuple[tuple[str, ...], str]]:
    """``(keys, message)`` for each rule between keys that ``cfg`` breaks."""
    problems = []
    if cfg.eval.timesteps < cfg.snn.timesteps:
        problems.append((("eval.timesteps", "snn.timesteps"), (
            f"eval.timesteps ({cfg.eval.timesteps}) must be >= snn.timesteps ({cfg.snn.timesteps}): "
            f"the accuracy-versus-T curve must reach the deployment T")))
    if cfg.nq.activation == "cuba-matched" and cfg.snn.neuron != "cuba":
        problems.append((("nq.activation", "snn.neuron"), (
            f"nq.activation cuba-matched models the stock cuba neuron but snn.neuron is "
            f"{cfg.snn.neuron}: set snn.neuron: cuba (or nq.activation: auto)")))
    if cfg.snn.cuba_shift != "none" and cfg.snn.neuron != "cuba":
        problems.append((("snn.cuba_shift", "snn.neuron"), (
            f"snn.cuba_shift {cfg.snn.cuba_shift} applies to cuba neurons only, but snn.neuron "
            f"is {cfg.snn.neuron}: set snn.cuba_shift: none")))
    return problems + _model_key_problems(cfg.model) + _data_key_problems(cfg.data)


def _data_key_problems(data: DataConfig) -> list[tuple[tuple[str, ...], str]]:
    """The rules between the data.* keys."""
    problems = []
    if data.name in ("npz", "folder") and data.root is None:
        what = "the .npz file" if data.name == "npz" else "the folder holding train/ and test/"
        problems.append((("data.root", "data.name"), f"data.name {data.name} needs data.root: {what}"))
    if data.name == "folder" and data.image_size is None:
        problems.append((("data.image_size", "data.name"), (
            "data.name folder resizes every image to data.image_size × data.image_size: set "
            "data.image_size (e.g. 32)")))
    for key in ("image_size", "channels"):
        if getattr(data, key) is not None and data.name != "folder":
            problems.append(((f"data.{key}", "data.name"), (
                f"data.{key} applies to data.name folder only (data.name is {data.name}, whose "
                f"inputs keep their stored shape): set data.{key}: null")))
    if data.channels == 2:
        problems.append((("data.channels",), "data.channels must be 1 (grayscale), 3 (RGB) or null"))
    if (data.mean is None) != (data.std is None):
        problems.append((("data.mean", "data.std"), (
            "data.mean and data.std go together ((x - mean) / std): set both or neither")))
    elif data.mean is not None and len(data.mean) != len(data.std):
        problems.append((("data.mean", "data.std"), (
            f"data.mean has {len(data.mean)} values and data.std {len(data.std)}: one each per "
            f"input channel")))
    return problems


def _model_key_problems(model: ModelConfig) -> list[tuple[tuple[str, ...], str]]:
    """The rules between the model.* keys: one source of the network."""
    problems = []
    named = [key for key in ("factory", "onnx") if getattr(model, key) is not None]
    if model.arch != "auto":
        named.insert(0, "arch")
    if len(named) > 1:
        given = " and ".join(f"model.{key} {_short_repr(getattr(model, key))}" for key in named)
        problems.append((tuple(f"model.{key}" for key in named), (
            f"{given} each name the network: keep one (model.arch: auto with a factory or an onnx file)")))
    for key in ("kwargs", "weights"):
        if getattr(model, key) and model.factory is None:
            problems.append(((f"model.{key}", "model.factory"), (
                f"model.{key} is set but model.factory is not: it belongs to the factory's module")))
    return problems


class Config(BaseModel):
    """The whole validated configuration: one frozen model per section."""

    model_config = ConfigDict(extra="forbid", frozen=True,
                              title="nqloihi pipeline configuration (deploy.yaml)")

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    nq: NQConfig = Field(default_factory=NQConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    snn: SNNConfig = Field(default_factory=SNNConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    quant: QuantConfig = Field(default_factory=QuantConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    import_: ImportConfig = Field(default_factory=ImportConfig, alias="import")
    bundle: BundleConfig = Field(default_factory=BundleConfig)
    energy: EnergyConfig = Field(default_factory=EnergyConfig)
    _source: Optional[str] = PrivateAttr(None)

    @model_validator(mode="after")
    def _keys_agree(self) -> Config:
        problems = _cross_key_problems(self)
        if problems:
            raise PydanticCustomError("config_cross_key", "rules between keys broken",
                                      {"problems": problems})
        return self

    # the file a config was read from is not part of its value
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Config):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash(tuple(self.__dict__.values()))

    @property
    def source(self) -> Optional[str]:
        """The file this config was read from (None: built from a mapping)."""
        return self._source

    @property
    def arch(self) -> str:
        """The network's name: ``model.factory`` if set, else ``model.arch`` with ``auto``
        resolved from ``data.name``."""
        if self.model.factory is not None or self.model.onnx is not None:
            return self.model.factory or self.model.onnx
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

    def activation_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``models.architectures.build_model`` (and
        ``configure_activations``) for the configured hidden-layer activation."""
        if self.activation == "cuba-matched":
            return {"activation": "cuba-matched", "timesteps": self.snn.timesteps,
                    "cuba_shift": self.snn.cuba_shift}
        return {"activation": "qcfs", "timesteps": None, "cuba_shift": "none"}

    def conversion_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``models.converter.convert`` for the configured cuba shift (a
        cuba-matched model carries its own; a QCFS model is shifted at conversion)."""
        if self.activation == "qcfs" and self.snn.cuba_shift != "none":
            return {"cuba_shift": self.snn.cuba_shift, "shift_timesteps": self.snn.timesteps}
        return {}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain, JSON-serialisable ``{section: {key: value}}`` (for provenance); the energy
        section holds the constants set. ``Config.from_dict(cfg.to_dict()) == cfg``."""
        out = self.model_dump(by_alias=True)
        out["energy"] = dict(self.energy)
        return out

    @classmethod
    def from_dict(cls, raw: Any, overrides: Sequence[str] = (), source: Optional[str] = None
                  ) -> Config:
        """Validate a ``{section: {key: value}}`` mapping (e.g. from a
        checkpoint's provenance) plus overrides; raise :class:`ConfigError`."""
        return _build(raw, overrides, source, {})


#: section name (as in the file) -> its model
_SECTIONS: dict[str, type[BaseModel]] = {
    info.alias or name: info.annotation for name, info in Config.model_fields.items()}


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


def _key_lines(node: yaml.Node) -> dict[tuple[str, ...], int]:
    """The line of each section, ``(section,)``, and key, ``(section, key)``, of a config file."""
    lines: dict[tuple[str, ...], int] = {}
    for sec_node, body in node.value if isinstance(node, yaml.MappingNode) else ():
        if isinstance(sec_node, yaml.ScalarNode):
            lines[(sec_node.value,)] = sec_node.start_mark.line + 1
            for key_node, _ in body.value if isinstance(body, yaml.MappingNode) else ():
                if isinstance(key_node, yaml.ScalarNode):
                    lines[(sec_node.value, key_node.value)] = key_node.start_mark.line + 1
    return lines


def _parse_yaml(text: str) -> tuple[Any, dict[tuple[str, ...], int]]:
    """One YAML document parsed with :class:`_ConfigLoader`, and :func:`_key_lines` of it;
    raise :class:`_Refused` or another :class:`yaml.YAMLError` for anything a config must not
    be."""
    loader = _ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        duplicate = _duplicate_keys(node)
        if duplicate:
            raise _Refused(duplicate)
        return loader.construct_document(node), _key_lines(node)
    finally:
        loader.dispose()


def read_config_text(p: Path) -> str:
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
# Validation
# --------------------------------------------------------------------------

#: A problem: the places it may be located at (``(section,)`` or ``(section, key)``; the first
#: one the file has a line for is named) and its message.
_Problem = tuple[tuple[tuple[Any, ...], ...], str]
_KIND_NAMES = {"integer": "an integer", "number": "a number", "boolean": "true or false",
               "string": "a non-empty string", "array": "a list of numbers", "object": "a mapping of names to YAML scalars or lists"}
_BOUNDS = (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))


def _suggest(name: str, known: Sequence[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


def _unknown_section(sec: Any) -> str:
    return (f"unknown section {_short_repr(sec)}{_suggest(str(sec), list(_SECTIONS))}; "
            f"sections are {', '.join(_SECTIONS)}")


#: keys an older config may still set -> what to do instead (one line each)
REMOVED_KEYS = {
    ("snn", "cuba_timesteps"): ("snn.timesteps now sets the T the cuba-matched activation and "
                                "the cuba shift are designed for (the deployment T): delete the key"),
}


def _unknown_key(sec: str, key: Any) -> str:
    if (sec, key) in REMOVED_KEYS:
        return f"{sec}.{key} was removed: {REMOVED_KEYS[sec, key]}"
    known = list(_SECTIONS[sec].model_fields)
    return (f"unknown key {sec}.{str(key)[:60]}{_suggest(str(key), known, sec + '.')}; "
            f"keys of {sec} are {', '.join(known)}")


@cache
def _key_schemas() -> dict[str, dict[str, dict[str, Any]]]:
    """``{section: {key: the key's JSON Schema}}``."""
    return {sec: cls.model_json_schema()["properties"] for sec, cls in _SECTIONS.items()}


def _allowed(prop: dict[str, Any]) -> str:
    """What a key's JSON Schema allows, in words (``an integer >= 1 and <= 256 or null``)."""
    options = prop.get("anyOf", [prop])
    rules = [o for o in options if o.get("type") != "null"]
    return " or ".join(map(_rule_words, rules)) + (" or null" if len(rules) < len(options) else "")


def _rule_words(rule: dict[str, Any]) -> str:
    """One JSON Schema alternative in words."""
    if "const" in rule:
        return repr(rule["const"])
    if "enum" in rule:
        return "one of " + ", ".join(repr(c) for c in rule["enum"])
    kind = "a path (non-empty string)" if "pattern" in rule else _KIND_NAMES[rule["type"]]
    bounds = " and ".join(f"{op} {rule[name]:g}" for name, op in _BOUNDS if name in rule)
    return " ".join(filter(None, [kind, bounds]))


def _value_problem(sec: str, key: str, value: Any) -> str:
    prop = _key_schemas()[sec][key]
    head = f"{sec}.{key} must be {_allowed(prop)}, got {_short_repr(value)}"
    if "enum" in prop and isinstance(value, str):
        close = difflib.get_close_matches(value, prop["enum"], n=1)
        return head + (f" (did you mean {close[0]!r}?)" if close else "")
    return f"{head} ({_type_name(value)})"


def _problems_of(exc: ValidationError) -> list[_Problem]:
    """pydantic's errors as the project's messages (one per key)."""
    problems: list[_Problem] = []
    seen = set()
    for err in exc.errors(include_url=False):
        loc, kind = err["loc"], err["type"]
        if loc in seen:
            continue
        seen.add(loc)
        if kind == "config_cross_key":
            problems += [(tuple(tuple(k.split(".")) for k in keys), text)
                         for keys, text in err["ctx"]["problems"]]
        elif len(loc) != 2:  # sections are checked before pydantic sees them; just in case
            problems.append(((loc[:1],), f"{'.'.join(map(str, loc)) or 'config'}: {err['msg']}"))
        elif kind in ("extra_forbidden", "invalid_key"):
            problems.append(((loc,), _unknown_key(*loc)))
        elif kind in ("config_path", "config_value"):
            problems.append(((loc,), f"{loc[0]}.{loc[1]} {err['msg']}"))
        else:
            problems.append(((loc,), _value_problem(*loc, err["input"])))
    return problems


def _parse_override_value(text: str, rhs: str) -> Any:
    if len(rhs) > MAX_OVERRIDE_CHARS:
        raise ConfigError(f"override {text[:40]!r}…: value is {len(rhs)} characters; at most "
                          f"{MAX_OVERRIDE_CHARS}")
    try:
        return _parse_yaml(rhs)[0] if rhs.strip() else None
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
        raise ConfigError(f"override {_short_repr(text)}: {_unknown_section(section)}")
    if key not in _SECTIONS[section].model_fields:
        raise ConfigError(f"override {_short_repr(text)}: {_unknown_key(section, key)}")
    return section, key, _parse_override_value(text, rhs)


def _raw_sections(raw: Any, where: str, problems: list[_Problem]) -> dict[str, dict[Any, Any]]:
    """``{section: {key: value}}`` from the parsed file; structural problems go to ``problems``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}the config must be a mapping of sections "
                          f"({', '.join(_SECTIONS)}), got {_type_name(raw)}")
    merged: dict[str, dict[Any, Any]] = {}
    for sec, body in raw.items():
        if not isinstance(sec, str) or sec not in _SECTIONS:
            problems.append((((sec,),), _unknown_section(sec)))
            continue
        if body is None:  # "energy:" with everything commented out
            body = {}
        if not isinstance(body, Mapping):
            problems.append((((sec,),), f"section {sec} must be a mapping of keys, "
                                        f"got {_type_name(body)}"))
            continue
        merged[sec] = dict(body)
    return merged


def _config_error(source: Optional[str], problems: list[_Problem],
                  lines: Mapping[tuple[str, ...], int]) -> ConfigError:
    """One single-line error for all ``problems``, each with the file line of its key."""
    located = []
    for places, text in problems:
        found = (lines.get(tuple(map(str, place))) for place in places)
        located.append((next(filter(None, found), None), text))
    located.sort(key=lambda item: item[0] or MAX_CONFIG_BYTES)  # in file order
    texts = [f"line {line}: {text}" if line else text for line, text in located]
    if len(located) == 1:
        line, text = located[0]
        head = f"{source}{f' line {line}' if line else ''}: " if source else ""
        return ConfigError(head + text, texts)
    where = f"{source}: " if source else ""
    # one line: the CLI prints every error as a single "error: ..." line
    return ConfigError(f"{where}{len(texts)} problems in the config: " + "; ".join(texts), texts)


def _build(raw: Any, overrides: Sequence[str], source: Optional[str],
           lines: dict[tuple[str, ...], int]) -> Config:
    problems: list[_Problem] = []
    merged = _raw_sections(raw, f"{source}: " if source else "", problems)
    if isinstance(overrides, str):  # a lone string would be iterated per character
        overrides = [overrides]
    lines = dict(lines)
    for ov in overrides:
        section, key, value = _parse_override(ov)
        merged.setdefault(section, {})[key] = value
        lines.pop((section, key), None)  # the value no longer comes from the file
    try:
        cfg = Config.model_validate(merged)
    except ValidationError as exc:
        problems += _problems_of(exc)
    if problems:
        raise _config_error(source, problems, lines)
    cfg._source = source
    return cfg


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read ``path`` (YAML), apply ``section.key=value`` overrides, validate.

    Missing keys take their defaults; an empty file is the default config.
    Raises :class:`ConfigError` naming the file and the offending key or override."""
    p = Path(path)
    return config_from_text(read_config_text(p), overrides, str(p))


def config_from_text(text: str, overrides: Sequence[str] = (), name: str = "<config>") -> Config:
    """:func:`load_config` of YAML ``text`` already read (errors name ``name`` as the file):
    for a long benchmark that reads its config once and keeps it, whatever happens to the
    file on disk meanwhile."""
    try:
        raw, lines = _parse_yaml(text)
    except _Refused as exc:
        raise ConfigError(f"{name}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: not valid YAML: {_yaml_problem(exc)}") from None
    return _build(raw, overrides, name, lines)


# --------------------------------------------------------------------------
# Schema descriptions
# --------------------------------------------------------------------------

def describe_schema() -> dict[str, dict[str, tuple[Any, str, str]]]:
    """``{section: {key: (default, allowed, doc)}}`` of the keys deploy.yaml lists with their
    defaults (the energy section's keys are optional overrides, so it has none)."""
    return {sec: {} if cls is EnergyConfig else
            {key: (info.default, _allowed(_key_schemas()[sec][key]), info.description)
             for key, info in cls.model_fields.items()}
            for sec, cls in _SECTIONS.items()}


def json_schema() -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of deploy.yaml, for editor completion and checks:
    :class:`Config`'s, where YAML's ``null`` (an empty file, a section with every key
    commented out) stands for an empty mapping. It cannot express the rules between keys."""
    schema = Config.model_json_schema()
    for model in [schema, *schema["$defs"].values()]:
        model["type"] = ["object", "null"]
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def json_schema_text() -> str:
    """:func:`json_schema` as the text of ``deploy.schema.json`` (regenerate that file with
    ``python -c "from pipeline.config import json_schema_text as t; open('deploy.schema.json',
    'w').write(t())"``)."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
