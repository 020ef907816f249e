"""Checkpoint and resume-state files: tensors in safetensors, everything else in JSON.

Two files per run directory (names in :mod:`pipeline.artifacts`):

* ``checkpoint.safetensors``: the best epoch's model (its ``state_dict``) and, as JSON, the
  config, architecture (or a user network's ``source``), input shape, classes, levels, epoch,
  output threshold, σ and λ per NQ layer, metrics, history and the hidden layers' activation;
* ``train_state.safetensors``: the resume point, rewritten after every epoch: model tensors
  (``model/<name>``), SGD momentum buffers (``optimizer/<param index>/<key>``), the torch
  RNG state (``torch_rng``, uint8) and, as JSON, the epoch, history, best record, config,
  the optimizer's ``param_groups`` and the scheduler's state.

The JSON document sits in the safetensors ``__metadata__`` under ``nqloihi`` with a ``kind``
and a ``format_version``; its fields are the pydantic models :class:`CheckpointMeta` and
:class:`TrainStateMeta`. Files are written atomically; under DDP by rank 0 alone, from the
bare model, so the tensor names are those of a single-process run (no ``module.``).
Reading never unpickles and never runs code: the header is parsed here and checked for size,
kind, version and fields, and the tensor names, dtypes and shapes are compared with the model
that would be built (on the ``meta`` device, so an absurd shape allocates nothing) before any
tensor is read; non-finite tensors are refused. A user's network is rebuilt by the source the
caller's config names (:mod:`pipeline.user_model`), only if it is the one the file records. Every problem is a one-line
:class:`CheckpointError` naming the file (and the field). The torch-pickle files of older
versions (``checkpoint.pt``, ``train_state.pt``) are recognised only to be refused.
"""
from __future__ import annotations

import json
import logging
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Mapping, Optional, Union, get_args

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from models.architectures import ARCHITECTURES, build_model, min_input_side, nq_layer_count, nq_layers
from models.nq import ACTIVATIONS, CUBA_SHIFTS, check_activation

from .artifacts import (LEGACY_CHECKPOINT, LEGACY_TRAIN_STATE, TRAIN_STATE, ArtifactError, atomic_path, open_regular,
                        reject_duplicate_keys)
from .config import Config

if TYPE_CHECKING:  # the user model rebuilds a network; it imports this module to read weights
    from .user_model import UserModel

log = logging.getLogger(__name__)

#: 3: safetensors + JSON (1 and 2 were torch pickles, ``checkpoint.pt``).
CHECKPOINT_FORMAT = 3
#: 2: safetensors + JSON (1 was the torch pickle ``train_state.pt``).
TRAIN_STATE_FORMAT = 2
#: the ``__metadata__`` key holding this project's JSON document
METADATA_KEY = "nqloihi"

# Sanity limits, checked before anything is allocated. A VGG-16 train state is
# about 0.3 GB; the header holds a few kB of JSON per epoch.
MAX_FILE_BYTES = 8 << 30
MAX_HEADER_BYTES = 64 << 20
MAX_INPUT_SIDE = 4096
MAX_INPUT_CHANNELS = 64
MAX_CLASSES = 100_000
MAX_LEVELS = 256  # as the config's nq.levels
MAX_EPOCH = 100_000  # as the config's train.epochs

_DTYPE_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                torch.uint8: "U8", torch.bool: "BOOL"}
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1}
#: build_model's activation arguments for a plain QCFS model
DEFAULT_ACTIVATION = {"activation": "qcfs", "timesteps": None, "cuba_shift": "none"}
#: optimizer state entries stored as tensors (SGD's only per-parameter state)
_OPTIMIZER_TENSORS = ("momentum_buffer",)
_RNG = "torch_rng"

#: (dtype name, shape) of every tensor a file must hold, by tensor name
Layout = dict[str, tuple[str, tuple[int, ...]]]


class CheckpointError(ArtifactError):
    """A checkpoint or resume state that is missing, unreadable or does not fit the model."""


# --------------------------------------------------------------------------- legacy files
def refuse_legacy(run_dir: Path) -> None:
    """Raise if ``run_dir`` holds a torch-pickle file of an older version without its successor."""
    for legacy, current in ((LEGACY_CHECKPOINT, "checkpoint"), (LEGACY_TRAIN_STATE, "train_state")):
        if (run_dir / legacy).exists() and not (run_dir / f"{current}.safetensors").exists():
            raise CheckpointError(
                f"{run_dir}: this run directory was made by an older version (torch pickle {legacy}), "
                "which is never loaded because unpickling can run code; re-train it (a new run.dir, or "
                f"delete {LEGACY_CHECKPOINT} and {LEGACY_TRAIN_STATE}) or convert it in a trusted environment")


# --------------------------------------------------------------------------- writing
def _write(path: Path, tensors: Mapping[str, torch.Tensor], doc: dict) -> None:
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(doc)})


def save_checkpoint(path: Path, ckpt: Mapping[str, Any]) -> None:
    """Write ``ckpt`` (the dict :func:`load_checkpoint` returns) atomically to ``path``."""
    doc = {k: ckpt[k] for k in _field_names(CheckpointMeta) if k not in ("format_version", "kind", "source")}
    doc.update(format_version=CHECKPOINT_FORMAT, kind="checkpoint")
    if ckpt.get("source") is not None:  # a registry checkpoint stays as it always was
        doc["source"] = ckpt["source"]
    _write(path, ckpt["state_dict"], doc)


def save_train_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, *,
                     epoch: int, history: list, best: dict, config: dict) -> None:
    """Write the resume point after ``epoch`` (0-based) atomically to ``path``."""
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    json_state: dict[str, dict] = {}
    for index, entries in opt["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor) and key in _OPTIMIZER_TENSORS:
                tensors[f"optimizer/{index}/{key}"] = value
            else:
                json_state.setdefault(str(index), {})[key] = value.item() if isinstance(value, torch.Tensor) \
                    else value
    tensors[_RNG] = torch.get_rng_state()
    doc = {"format_version": TRAIN_STATE_FORMAT, "kind": "train_state", "config": config, "epoch": int(epoch),
           "history": history, "best": best,
           "optimizer": {"param_groups": opt["param_groups"], "state": json_state},
           "scheduler": scheduler.state_dict()}
    _write(path, tensors, doc)


# --------------------------------------------------------------------------- the file's header
def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _foreign_kind(prefix: bytes) -> Optional[str]:
    if prefix.startswith(b"PK\x03\x04"):
        return "a zip archive (torch.save or TorchScript)"
    if prefix[:1] == b"\x80" and prefix[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle"
    if prefix.startswith(b"\x89HDF"):
        return "an HDF5 file"
    return None


def _read_header(path: Path) -> tuple[dict, int]:
    """(header JSON object, size of the data region) of a safetensors file, without reading tensors."""
    try:
        with open_regular(path, MAX_FILE_BYTES) as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            foreign = _foreign_kind(prefix)
            if foreign:
                raise CheckpointError(f"{path}: {foreign}, not a safetensors file; it is never loaded")
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: empty or truncated ({size} bytes), not a safetensors file")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(size - 8, MAX_HEADER_BYTES):
                raise CheckpointError(f"{path}: truncated or not a safetensors file (header of {header_len} "
                                      f"bytes in a file of {size})")
            raw = f.read(header_len)
    except CheckpointError:
        raise
    except ArtifactError as exc:  # not a regular file, too large: the checkpoint's own error type
        raise CheckpointError(str(exc)) from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    header = _parse_json(path, raw, "header")
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is a JSON {type(header).__name__}, not an object")
    return header, size - 8 - header_len


def _parse_json(path: Path, raw: bytes | str, what: str) -> Any:
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text, object_pairs_hook=reject_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0]
        raise CheckpointError(f"{path}: the {what} is not valid JSON ({reason})") from None


def _tensor_entries(path: Path, header: dict, data_bytes: int) -> Layout:
    """Every tensor's (dtype, shape), checked against the bytes the file actually holds."""
    layout: Layout = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not (isinstance(entry, dict) and entry.get("dtype") in _DTYPE_BYTES
                and _is_int_list(entry.get("shape")) and _is_int_list(entry.get("data_offsets"))
                and len(entry["data_offsets"]) == 2):
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry {_show(entry)}")
        shape, (begin, end) = tuple(entry["shape"]), entry["data_offsets"]
        if any(d < 0 for d in shape) or not 0 <= begin <= end <= data_bytes \
                or end - begin != math.prod(shape) * _DTYPE_BYTES[entry["dtype"]]:
            raise CheckpointError(f"{path}: tensor {name!r} (shape {list(shape)}) does not fit the "
                                  f"{data_bytes} data bytes of the file (truncated or corrupt)")
        layout[name] = (entry["dtype"], shape)
    return layout


def _is_int_list(value: Any) -> bool:
    return isinstance(value, list) and all(type(v) is int for v in value)


def _open(path: Path, meta: type[BaseModel]) -> tuple[dict, Layout]:
    """The JSON document (kind, version and field names checked) and the tensor layout of ``path``."""
    # the model's own Literal kind and format_version, so the header check and the model agree
    kind, version = (get_args(meta.model_fields[k].annotation)[0] for k in ("kind", "format_version"))
    header, data_bytes = _read_header(path)
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or not isinstance(metadata.get(METADATA_KEY), str):
        raise CheckpointError(f"{path}: a safetensors file without this project's metadata "
                              f"(__metadata__.{METADATA_KEY}); not a {kind} of this pipeline")
    doc = _parse_json(path, metadata[METADATA_KEY], f"metadata {METADATA_KEY!r}")
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: the metadata is a JSON {type(doc).__name__}, not an object")
    if doc.get("kind") != kind:
        raise CheckpointError(f"{path}: kind {_show(doc.get('kind'))} is not {kind!r}; not a {kind} of this pipeline")
    if doc.get("format_version") != version or type(doc.get("format_version")) is not int:
        raise CheckpointError(f"{path}: format_version {_show(doc.get('format_version'))} is not {version} "
                              "(written by another version of this pipeline); re-train")
    # the field names now, the values when the file is loaded: stored_config reads a file whose
    # config is intact and whose other values are not, but never one of another layout
    required = {field.alias or name for name, field in meta.model_fields.items() if field.is_required()}
    problems = _key_problems(required, set(doc) - (set(_field_names(meta)) - required))
    if problems:
        raise CheckpointError(f"{path}: metadata fields {problems}")
    return doc, _tensor_entries(path, header, data_bytes)


# --------------------------------------------------------------------------- the JSON document's fields
_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)
Finite = Annotated[float, Field(allow_inf_nan=False)]
_Side = Annotated[int, Field(ge=1, le=MAX_INPUT_SIDE)]
_Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
#: (C, H, W) images, or (D,) flat vectors (a user's network on a user's data)
# a JSON array; lax only for the array itself, the items stay strict
InputShape = Union[Annotated[tuple[Annotated[int, Field(ge=1, le=MAX_INPUT_CHANNELS)], _Side, _Side],
                             Field(strict=False)],
                   Annotated[tuple[Annotated[int, Field(ge=1, le=MAX_INPUT_CHANNELS * MAX_INPUT_SIDE ** 2)]],
                             Field(strict=False)]]


class Activation(BaseModel):
    """The hidden layers' activation: :func:`models.architectures.build_model`'s keyword arguments."""

    model_config = _STRICT
    activation: Literal[ACTIVATIONS]
    timesteps: Optional[Annotated[int, Field(ge=1)]]
    cuba_shift: Literal[CUBA_SHIFTS]

    @model_validator(mode="after")
    def _consistent(self) -> "Activation":
        check_activation(self.activation, self.timesteps, self.cuba_shift)  # ActivationError is a ValueError
        return self


class ModelSource(BaseModel):
    """Where a user's network comes from (:attr:`pipeline.user_model.UserModel.record`): a
    factory and its kwargs, an ONNX file, or a Python object given to :mod:`pipeline.api`."""

    model_config = _STRICT
    factory: Optional[str]
    kwargs: dict[str, Any]
    onnx: Optional[str]
    onnx_sha256: Optional[_Sha256]
    object: Optional[str]
    weights: Optional[str]
    weights_sha256: Optional[_Sha256]

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSource":
        if sum(v is not None for v in (self.factory, self.onnx, self.object)) != 1:
            raise ValueError("must name exactly one of factory, onnx and object")
        return self


class CheckpointMeta(BaseModel):
    """The JSON document of ``checkpoint.safetensors`` (the checks that need no model built).
    A registry network has its ``arch``; a user's has ``arch`` null and its ``source``
    (absent from the registry's files)."""

    model_config = _STRICT
    format_version: Literal[CHECKPOINT_FORMAT]
    kind: Literal["checkpoint"]
    config: dict[str, Any]
    arch: Optional[Literal[ARCHITECTURES]]
    input_shape: InputShape
    num_classes: int = Field(ge=2, le=MAX_CLASSES)
    levels: int = Field(ge=1, le=MAX_LEVELS)
    epoch: int = Field(ge=0, le=MAX_EPOCH)
    output_threshold: Finite = Field(gt=0)
    sigma: list[Annotated[Finite, Field(ge=0)]]  # a standard deviation
    lambda_: list[Annotated[Finite, Field(gt=0)]] = Field(alias="lambda")  # a threshold: the converter divides by it
    metrics: dict[str, Finite]
    history: list[dict[str, Any]]
    activation: Activation
    source: Optional[ModelSource] = None

    @model_validator(mode="after")
    def _one_network(self) -> "CheckpointMeta":
        if (self.arch is None) == (self.source is None):
            raise ValueError("arch and source: exactly one names the network (arch for the registry's)")
        return self

    @field_validator("input_shape")
    @classmethod
    def _fits_the_arch(cls, shape: tuple, info: ValidationInfo) -> tuple:
        arch = info.data.get("arch")
        if arch and (len(shape) != 3 or min(shape[1:]) < min_input_side(arch)):
            raise ValueError(f"must be (channels, height, width), height and width at least "
                             f"{min_input_side(arch)} for {arch}")
        return shape

    @field_validator("sigma", "lambda_")
    @classmethod
    def _one_per_layer(cls, values: list, info: ValidationInfo) -> list:
        arch = info.data.get("arch")
        if arch and len(values) != nq_layer_count(arch):
            raise ValueError(f"must hold one number per NQ layer of {arch} ({nq_layer_count(arch)})")
        return values


class BestRecord(BaseModel):
    """The best epoch's record in a resume state (the record's other keys are kept as they are)."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    epoch: int = Field(ge=1)
    snn_val: Finite


class OptimizerMeta(BaseModel):
    """The optimizer's state without its tensors: ``param_groups`` and the per-parameter scalars."""

    model_config = _STRICT
    param_groups: list[dict[str, Any]]
    state: dict[Annotated[str, Field(pattern=r"^[0-9]+$")], dict[str, Any]]


class TrainStateMeta(BaseModel):
    """The JSON document of ``train_state.safetensors``."""

    model_config = _STRICT
    format_version: Literal[TRAIN_STATE_FORMAT]
    kind: Literal["train_state"]
    config: dict[str, Any]
    epoch: int = Field(ge=0, le=MAX_EPOCH - 1)
    history: list[dict[str, Any]]
    best: BestRecord
    optimizer: OptimizerMeta
    scheduler: dict[str, Any]

    @field_validator("history")
    @classmethod
    def _one_record_per_epoch(cls, history: list, info: ValidationInfo) -> list:
        epoch = info.data.get("epoch")
        if epoch is not None and [r.get("epoch") for r in history] != list(range(1, epoch + 2)):
            raise ValueError(f"must hold one record per epoch 1..{epoch + 1}")
        return history

    @field_validator("best")
    @classmethod
    def _not_after_the_last_epoch(cls, best: BestRecord, info: ValidationInfo) -> BestRecord:
        epoch = info.data.get("epoch")
        if epoch is not None and best.epoch > epoch + 1:
            raise ValueError(f"its epoch {best.epoch} comes after the file's last epoch {epoch + 1}")
        return best


class _Stored(BaseModel):
    """The one field :func:`stored_config` needs; the others are checked when the file is loaded."""

    model_config = ConfigDict(strict=True, extra="ignore")
    config: dict[str, Any]


def _field_names(meta: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in meta.model_fields.items()]


def _validated(path: Path, meta: type[BaseModel], doc: dict):
    """``doc`` as ``meta``; otherwise a one-line CheckpointError naming the file and the first bad field."""
    try:
        return meta.model_validate(doc)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        # a union's member is a loc part too ("tuple[...]"): the file knows only its own fields
        field = ".".join(str(part) for part in error["loc"] if "[" not in str(part))
        if not field:  # a rule between fields: the document is the input, too long to show
            raise CheckpointError(f"{path}: {error['msg'].removeprefix('Value error, ')}") from None
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        if error["type"] == "missing":
            raise CheckpointError(f"{path}: field {field!r} is missing{more}") from None
        if error["type"] == "extra_forbidden":
            raise CheckpointError(f"{path}: field {field!r} is not one this pipeline writes{more}") from None
        if error["type"] == "model_type":  # pydantic would name the model class, not the file's terms
            raise CheckpointError(f"{path}: field {field!r} must be a JSON object, got "
                                  f"{_show(error.get('input'))}{more}") from None
        reason = error["msg"].removeprefix("Value error, ").splitlines()[0]
        got = "" if " got " in reason else f", got {_show(error.get('input'))}"  # an ActivationError shows it
        raise CheckpointError(f"{path}: field {field!r}: {reason[:1].lower()}{reason[1:]}{got}{more}") from None


def _is_finite(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


# --------------------------------------------------------------------------- model layout
def model_layout(arch: str, input_shape: tuple[int, ...], num_classes: int, levels: int) -> Layout:
    """Names, dtypes and shapes of the ``state_dict`` :func:`build_model` would build (nothing allocated)."""
    with torch.device("meta"):
        model = build_model(arch, tuple(input_shape), num_classes, levels, noise=False)
    return state_layout(model.state_dict())


def state_layout(state: Mapping[str, torch.Tensor], prefix: str = "") -> Layout:
    return {prefix + k: (_DTYPE_NAMES[v.dtype], tuple(v.shape)) for k, v in state.items()}


def _key_problems(wanted: set, found: set) -> str:
    missing, extra = sorted(wanted - found), sorted(found - wanted)
    return ", ".join(([f"missing {_show(missing)}"] if missing else []) +
                     ([f"unexpected {_show(extra)}"] if extra else []))


def _check_layout(path: Path, found: Layout, expected: Layout) -> None:
    problems = _key_problems(set(expected), set(found))
    if problems:
        raise CheckpointError(f"{path}: the tensors do not match the model: {problems}")
    for name, want in expected.items():
        if found[name] != want:
            raise CheckpointError(f"{path}: tensor {name!r} is {found[name][0]} {list(found[name][1])}, "
                                  f"the model needs {want[0]} {list(want[1])}")


def _load_tensors(path: Path, names) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {name: f.get_tensor(name) for name in names}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = (str(exc).splitlines() or [""])[0].strip("'\"") or type(exc).__name__
        raise CheckpointError(f"{path}: unreadable tensors ({reason})") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: tensor {name!r} holds NaN or infinite values (a diverged training "
                                  "or a damaged file); re-train")
    return tensors


def read_tensor_file(path: Path, expected: Layout, any_dtype: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a plain safetensors file (e.g. pretrained weights), after checking that its
    names and shapes (and dtypes, unless ``any_dtype``) are ``expected``."""
    header, data_bytes = _read_header(path)
    found = _tensor_entries(path, header, data_bytes)
    if any_dtype:
        expected = {name: (found[name][0] if name in found else dtype, shape)
                    for name, (dtype, shape) in expected.items()}
    _check_layout(path, found, expected)
    return _load_tensors(path, found)


# --------------------------------------------------------------------------- checkpoint
def load_checkpoint(path: Path, user: Optional["UserModel"] = None) -> dict:
    """The checkpoint at ``path`` as a dict (``format_version``, ``state_dict``, ``config``, ``arch``,
    ``input_shape``, ``num_classes``, ``levels``, ``epoch``, ``output_threshold``, ``sigma``,
    ``lambda``, ``metrics``, ``history``, ``activation``, ``source``), validated against the model
    it describes. A user's network is rebuilt by ``user`` (the current config's), which must be
    the source the checkpoint records."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():  # a dangling link or a loop is an error
        refuse_legacy(path.parent)
        raise CheckpointError(f"no checkpoint at {path}; run `python -m pipeline train` first")
    doc, found = _open(path, CheckpointMeta)
    meta = _validated(path, CheckpointMeta, doc)
    if meta.arch is not None:
        if user is not None:
            raise CheckpointError(f"{path}: holds the registry's {meta.arch}, but the config names "
                                  f"{_describe(user.record)}; use the config it was trained with")
        expected = model_layout(meta.arch, meta.input_shape, meta.num_classes, meta.levels)
    else:
        expected = _user_layout(path, meta, user)
    _check_layout(path, found, expected)
    ckpt = meta.model_dump(by_alias=True, exclude={"kind"})
    ckpt["input_shape"] = list(meta.input_shape)
    ckpt["state_dict"] = _load_tensors(path, found)
    return ckpt


def _describe(record: Mapping[str, Any]) -> str:
    if record.get("factory"):
        return f"model.factory {record['factory']} with model.kwargs {_show(record.get('kwargs') or {})}"
    if record.get("onnx"):
        return f"model.onnx {record['onnx']} (sha256 {str(record.get('onnx_sha256'))[:12]}...)"
    return f"the Python object of class {record.get('object')} (given to pipeline.api)"


def _user_layout(path: Path, meta: CheckpointMeta, user: Optional["UserModel"]) -> Layout:
    """The state_dict layout of the user's network the checkpoint records, rebuilt by ``user``
    only if it is that network's source (a checkpoint never names code to run)."""
    source = meta.source.model_dump()
    if user is None:
        raise CheckpointError(f"{path}: the network comes from {_describe(source)}; rebuilding it runs "
                              "that code, so only a config (or pipeline.api call) naming it rebuilds it")
    if {k: source.get(k) for k in user.identity()} != user.identity():
        raise CheckpointError(f"{path}: the network comes from {_describe(source)}, but the config names "
                              f"{_describe(user.record)}; use the config it was trained with")
    model = user.rebuilt(tuple(meta.input_shape), meta.levels, meta.activation.model_dump(),
                         normalization_of(meta.config))
    layers = len(nq_layers(model))
    for field in ("sigma", "lambda_"):
        if len(getattr(meta, field)) != layers:
            raise CheckpointError(f"{path}: field {field.rstrip('_')!r} must hold one number per NQ layer of "
                                  f"the network ({layers})")
    return state_layout(model.state_dict())


def normalization_of(config: Mapping[str, Any]) -> Optional[tuple[list, list]]:
    """``(data.mean, data.std)`` of a config dict (a checkpoint's), or None."""
    data = config.get("data") or {}
    return (data["mean"], data["std"]) if data.get("mean") is not None else None


def model_from_checkpoint(ckpt: Mapping[str, Any], user: Optional["UserModel"] = None) -> nn.Module:
    """The model a checkpoint (from :func:`load_checkpoint`, with the same ``user``) describes, in
    eval mode, on the CPU."""
    if ckpt.get("source") is not None:
        if user is None:
            raise CheckpointError(f"the checkpoint's network comes from {_describe(ckpt['source'])}: "
                                  "pass its user model to rebuild it")
        model = user.rebuilt(tuple(ckpt["input_shape"]), ckpt["levels"], ckpt["activation"],
                             normalization_of(ckpt["config"]))
    else:
        model = build_model(ckpt["arch"], tuple(ckpt["input_shape"]), ckpt["num_classes"], ckpt["levels"],
                            noise=False, **ckpt["activation"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"the checkpoint's tensors do not fit {ckpt['arch'] or 'the network'} "
                              f"({str(exc).splitlines()[0]})") from None
    return model.eval()


def checkpoint_from_model(model: nn.Module, *, config: dict, arch: Optional[str], input_shape, num_classes: int,
                          levels: int, record: Mapping[str, Any], history: list,
                          activation: Optional[Mapping[str, Any]] = None,
                          source: Optional[Mapping[str, Any]] = None) -> dict:
    """The checkpoint dict of ``model`` after the epoch ``record`` (as :func:`load_checkpoint` returns it);
    ``arch`` for a registry network, else ``source`` (a user model's record)."""
    return {"format_version": CHECKPOINT_FORMAT, "state_dict": dict(model.state_dict()), "config": config,
            "arch": arch, "input_shape": list(input_shape), "num_classes": int(num_classes),
            "levels": int(levels), "epoch": int(record.get("epoch", 0)),
            "output_threshold": float(record.get("output_threshold", 1.0)),
            "sigma": [float(m.sigma) for m in nq_layers(model)],
            "lambda": [float(m.threshold.detach()) for m in nq_layers(model)],
            "metrics": {k: v for k, v in record.items() if k in ("loss", "ann_val", "snn_val")},
            "history": history,
            "activation": dict(activation or DEFAULT_ACTIVATION),
            "source": dict(source) if source is not None else None}


# --------------------------------------------------------------------------- resume state
@dataclass(frozen=True)
class TrainState:
    """A validated resume point: the state after ``epoch`` (0-based) of the run ``config``."""

    epoch: int
    history: list
    best: dict
    config: dict
    model: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    torch_rng: torch.Tensor


@dataclass(frozen=True)
class ResumePoint:
    history: list
    best: dict
    start_epoch: int


#: the config sections that define a training run
TRAINING_SECTIONS = ("data", "model", "nq", "train", "snn")
#: keys of those sections that do not change what training produces
NOT_TRAINING_KEYS = {"train": ("dist_timeout_s",), "snn": ("calibrate", "calibrate_samples")}


def training_identity(config: Mapping[str, Any]) -> dict:
    """The parts of the config that define a training run (resume only into the same run).

    Stored configs are read in today's keys: a key the stored config lacks takes today's
    default (it was added after that run was trained, whose training the default reproduces,
    e.g. ``train.activity_penalty`` 0), and the removed ``snn.cuba_timesteps`` trained as
    today's config does when it was null or equal to ``snn.timesteps``."""
    defaults = Config().to_dict()
    out = {}
    for section in TRAINING_SECTIONS:
        body = config.get(section)
        if isinstance(body, Mapping):
            body = {**defaults.get(section, {}), **body}
            if section == "snn" and body.get("cuba_timesteps", None) in (None, body.get("timesteps")):
                body.pop("cuba_timesteps", None)
            body = {k: v for k, v in body.items() if k not in NOT_TRAINING_KEYS.get(section, ())}
        out[section] = body
    return out


def stored_config(path: Path) -> dict:
    """The config a checkpoint or resume state (by its file name) was made with; only the header is
    read. :class:`CheckpointError` if the file is not one of ours."""
    path = Path(path)
    doc, _ = _open(path, TrainStateMeta if path.name == TRAIN_STATE else CheckpointMeta)
    return _validated(path, _Stored, doc).config


def _train_state_layout(path: Path, found: Layout, model: nn.Module) -> Layout:
    """The layout the file must have: the model's, the RNG's and one momentum buffer per parameter
    the file has optimizer state for (a parameter without state has not been stepped yet)."""
    expected = state_layout(model.state_dict(), "model/")
    expected[_RNG] = state_layout({_RNG: torch.get_rng_state()})[_RNG]
    params = list(model.parameters())
    for name in found:
        if name.startswith("optimizer/"):
            _, index, key = (name.split("/") + ["", ""])[:3]
            if not (index.isdigit() and int(index) < len(params) and key in _OPTIMIZER_TENSORS):
                raise CheckpointError(f"{path}: unexpected optimizer tensor {name!r}")
            expected[name] = state_layout({name: params[int(index)]})[name]
    return expected


def read_train_state(path: Path, model: nn.Module, opened: Optional[tuple[dict, Layout]] = None) -> TrainState:
    """The resume state at ``path``, validated against ``model`` (its tensors are not loaded into it)."""
    path = Path(path)
    doc, found = opened or _open(path, TrainStateMeta)
    meta = _validated(path, TrainStateMeta, doc)
    _check_layout(path, found, _train_state_layout(path, found, model))
    tensors = _load_tensors(path, found)
    optimizer_state: dict[int, dict] = {}
    for name, tensor in tensors.items():
        if name.startswith("optimizer/"):
            _, index, key = name.split("/")
            optimizer_state.setdefault(int(index), {})[key] = tensor
    for index, entries in doc["optimizer"]["state"].items():
        optimizer_state.setdefault(int(index), {}).update(entries)
    # validated above, the JSON parts are passed on as written
    return TrainState(epoch=meta.epoch, history=doc["history"], best=doc["best"], config=doc["config"],
                      model={k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")},
                      optimizer={"state": optimizer_state, "param_groups": doc["optimizer"]["param_groups"]},
                      scheduler=doc["scheduler"], torch_rng=tensors[_RNG])


def _same_json_shape(live: Any, stored: Any) -> bool:
    """``stored`` has the structure of ``live`` (same keys, list lengths, kinds of leaves; numbers finite)."""
    if isinstance(live, dict):
        return isinstance(stored, dict) and set(live) == set(stored) and \
            all(_same_json_shape(live[k], stored[k]) for k in live)
    if isinstance(live, (list, tuple)):
        return isinstance(stored, list) and len(stored) == len(live) and \
            all(map(_same_json_shape, live, stored))
    if isinstance(live, bool) or live is None or isinstance(live, str):
        return type(stored) is type(live)
    return _is_finite(stored)


def restore_train_state(path: Path, state: TrainState, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler) -> None:
    """Load ``state`` into the model, optimizer, scheduler and torch's RNG (structure checked first)."""
    live_groups = optimizer.state_dict()["param_groups"]
    if not _same_json_shape(live_groups, state.optimizer["param_groups"]) or \
            [g["params"] for g in live_groups] != [g["params"] for g in state.optimizer["param_groups"]]:
        raise CheckpointError(f"{path}: the optimizer's param_groups do not match this model's optimizer")
    if not _same_json_shape(scheduler.state_dict(), state.scheduler) or \
            state.scheduler.get("last_epoch") != state.epoch + 1:
        raise CheckpointError(f"{path}: the scheduler state does not match this run after epoch {state.epoch + 1}")
    try:
        model.load_state_dict(state.model)
        optimizer.load_state_dict(state.optimizer)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot restore it ({str(exc).splitlines()[0]})") from None
    scheduler.load_state_dict(state.scheduler)
    torch.set_rng_state(state.torch_rng)


def load_train_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, *,
                     config: Mapping[str, Any], epochs: int) -> Optional[ResumePoint]:
    """Restore the resume state at ``path`` into the model, optimizer, scheduler and RNG.

    None when there is none; a :class:`CheckpointError` when it belongs to another
    configuration (``train`` refuses that before, see :mod:`pipeline.overwrite`), is
    unreadable, does not fit the model, or claims an epoch beyond ``epochs``."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():  # a dangling link or a loop is an error
        refuse_legacy(path.parent)
        return None
    opened = _open(path, TrainStateMeta)
    if training_identity(_validated(path, _Stored, opened[0]).config) != training_identity(config):
        raise CheckpointError(f"{path} was made with another configuration; it is not resumed "
                              "(delete it, or train into a new run.dir)")
    state = read_train_state(path, model, opened)
    if state.epoch >= epochs:
        raise CheckpointError(f"{path}: resume state after epoch {state.epoch + 1}, but train.epochs is "
                              f"{epochs}; the file does not belong to this run (delete it to start afresh)")
    restore_train_state(path, state, model, optimizer, scheduler)
    return ResumePoint(history=list(state.history), best=dict(state.best), start_epoch=state.epoch + 1)
