"""Checkpoint and resume-state files: tensors in safetensors, everything else in JSON.

Two files per run directory (names in :mod:`pipeline.artifacts`):

* ``checkpoint.safetensors``: the best epoch's model (its ``state_dict``) plus, as
  JSON, the config, architecture, input shape, classes, levels, epoch, output
  threshold, σ and λ per NQ layer, metrics and the training history;
* ``train_state.safetensors``: the resume point, rewritten after every epoch:
  model tensors (``model/<name>``), SGD momentum buffers
  (``optimizer/<param index>/<key>``), the torch RNG state (``torch_rng``, uint8)
  and, as JSON, the epoch, history, best record, config, the optimizer's
  ``param_groups`` and the scheduler's state.

The JSON document sits in the safetensors ``__metadata__`` under the key
``nqloihi`` with a ``kind`` and a ``format_version``. Files are written
atomically (:func:`pipeline.artifacts.atomic_path`); in a multi-process (DDP) run by
rank 0 alone, from the bare model, so a DDP checkpoint has the tensor names of a
single-process one (no ``module.`` prefix of the DDP wrapper) and loads the same way.
Reading never unpickles and never runs code: the header is parsed here, checked for size, kind,
version, field types and ranges, and the tensor names, dtypes and shapes are
compared with the model that would be built (on the ``meta`` device, so an
absurd shape allocates nothing) before any tensor is read; non-finite tensors
are refused. Every problem is a :class:`CheckpointError` naming the file.
The torch-pickle files of older versions (``checkpoint.pt``,
``train_state.pt``) are recognised only to be refused with a clear message.
"""
from __future__ import annotations

import json
import logging
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from models.architectures import ARCHITECTURES, build_model, min_input_side, nq_layer_count, nq_layers
from models.nq import ActivationError, check_activation

from .artifacts import LEGACY_CHECKPOINT, LEGACY_TRAIN_STATE, TRAIN_STATE, ArtifactError, atomic_path, open_regular

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
_CHECKPOINT_FIELDS = ("format_version", "kind", "config", "arch", "input_shape", "num_classes", "levels",
                      "epoch", "output_threshold", "sigma", "lambda", "metrics", "history", "activation")
#: build_model's activation arguments for a plain QCFS model
DEFAULT_ACTIVATION = {"activation": "qcfs", "timesteps": None, "cuba_shift": "none"}
_TRAIN_STATE_FIELDS = ("format_version", "kind", "config", "epoch", "history", "best", "optimizer",
                       "scheduler")
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
    doc = {k: ckpt[k] for k in _CHECKPOINT_FIELDS if k not in ("format_version", "kind")}
    doc.update(format_version=CHECKPOINT_FORMAT, kind="checkpoint")
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


def _no_duplicates(pairs: list) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _parse_json(path: Path, raw: bytes | str, what: str) -> Any:
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text, object_pairs_hook=_no_duplicates)
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


def _open(path: Path, kind: str, version: int, fields: tuple[str, ...]) -> tuple[dict, Layout]:
    """The JSON document (kind, version and field names checked) and the tensor layout of ``path``."""
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
    problems = _key_problems(set(fields), set(doc))
    if problems:
        raise CheckpointError(f"{path}: metadata fields {problems}")
    return doc, _tensor_entries(path, header, data_bytes)


# --------------------------------------------------------------------------- field checks
@dataclass(frozen=True)
class _Fields:
    """Typed reads of the JSON document's fields; each failure names the file and the field."""

    path: Path
    doc: Mapping[str, Any]

    def fail(self, key: str, wanted: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: field {key!r} must be {wanted}, got {_show(self.doc.get(key))}")

    def integer(self, key: str, lo: int, hi: int) -> int:
        value = self.doc.get(key)
        if type(value) is not int or not lo <= value <= hi:
            raise self.fail(key, f"an integer in {lo}..{hi}")
        return value

    def number(self, key: str, positive: bool = False) -> float:
        value = self.doc.get(key)
        if not _is_finite(value) or (positive and not value > 0):
            raise self.fail(key, "a finite number" + (" > 0" if positive else ""))
        return float(value)

    def numbers(self, key: str, length: int, lowest: float = -math.inf, strict: bool = False) -> list[float]:
        """A list of ``length`` finite numbers, each ``>= lowest`` (``> lowest`` when ``strict``)."""
        value = self.doc.get(key)
        if not isinstance(value, list) or len(value) != length or not all(
                _is_finite(v) and (v > lowest if strict else v >= lowest) for v in value):
            bound = "" if lowest == -math.inf else f" {'>' if strict else '>='} {lowest:g}"
            raise self.fail(key, f"a list of {length} finite numbers{bound}")
        return [float(v) for v in value]

    def of_type(self, key: str, kind: type, check: Callable[[Any], bool] = lambda _: True) -> Any:
        value = self.doc.get(key)
        if not isinstance(value, kind) or not check(value):
            raise self.fail(key, f"a JSON {'object' if kind is dict else 'array'} as this pipeline writes it")
        return value


def _is_finite(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _is_history(value: list) -> bool:
    return all(isinstance(r, dict) for r in value)


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


# --------------------------------------------------------------------------- checkpoint
def _checkpoint_fields(path: Path, doc: dict) -> dict:
    """The checkpoint's fields, type- and range-checked (the model is not built yet)."""
    f = _Fields(path, doc)
    arch = doc.get("arch")
    if arch not in ARCHITECTURES:
        raise f.fail("arch", f"one of {sorted(ARCHITECTURES)}")
    shape = doc.get("input_shape")
    side = min_input_side(arch)
    if not (_is_int_list(shape) and len(shape) == 3 and 1 <= shape[0] <= MAX_INPUT_CHANNELS
            and all(side <= s <= MAX_INPUT_SIDE for s in shape[1:])):
        raise f.fail("input_shape", f"[channels 1..{MAX_INPUT_CHANNELS}, height, width "
                                    f"{side}..{MAX_INPUT_SIDE}] (as {arch} needs)")
    layers = nq_layer_count(arch)
    return {"format_version": CHECKPOINT_FORMAT, "config": f.of_type("config", dict), "arch": arch,
            "input_shape": list(shape), "num_classes": f.integer("num_classes", 2, MAX_CLASSES),
            "levels": f.integer("levels", 1, MAX_LEVELS), "epoch": f.integer("epoch", 0, MAX_EPOCH),
            "output_threshold": f.number("output_threshold", positive=True),
            # σ is a standard deviation; λ a firing threshold (the converter divides by it)
            "sigma": f.numbers("sigma", layers, lowest=0.0),
            "lambda": f.numbers("lambda", layers, lowest=0.0, strict=True),
            "metrics": f.of_type("metrics", dict, lambda m: all(map(_is_finite, m.values()))),
            "history": f.of_type("history", list, _is_history),
            "activation": _activation_field(path, f)}


def _activation_field(path: Path, f: "_Fields") -> dict:
    """The hidden layers' activation (``build_model``'s keyword arguments), checked."""
    activation = f.of_type("activation", dict)
    if set(activation) != {"activation", "timesteps", "cuba_shift"}:
        raise f.fail("activation", "an object with keys activation, timesteps, cuba_shift")
    try:
        check_activation(activation["activation"], activation["timesteps"], activation["cuba_shift"])
    except ActivationError as exc:
        raise CheckpointError(f"{path}: field 'activation': {exc}") from None
    return dict(activation)


def load_checkpoint(path: Path) -> dict:
    """The checkpoint at ``path`` as a dict (``format_version``, ``state_dict``, ``config``, ``arch``,
    ``input_shape``, ``num_classes``, ``levels``, ``epoch``, ``output_threshold``, ``sigma``,
    ``lambda``, ``metrics``, ``history``), validated against the model it describes."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():  # a dangling link or a loop is an error
        refuse_legacy(path.parent)
        raise CheckpointError(f"no checkpoint at {path}; run `python -m pipeline train` first")
    doc, found = _open(path, "checkpoint", CHECKPOINT_FORMAT, _CHECKPOINT_FIELDS)
    ckpt = _checkpoint_fields(path, doc)
    _check_layout(path, found, model_layout(ckpt["arch"], tuple(ckpt["input_shape"]), ckpt["num_classes"],
                                            ckpt["levels"]))
    ckpt["state_dict"] = _load_tensors(path, found)
    return ckpt


def model_from_checkpoint(ckpt: Mapping[str, Any]) -> nn.Module:
    """The model a checkpoint (from :func:`load_checkpoint`) describes, in eval mode, on the CPU."""
    model = build_model(ckpt["arch"], tuple(ckpt["input_shape"]), ckpt["num_classes"], ckpt["levels"],
                        noise=False, **ckpt["activation"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"the checkpoint's tensors do not fit {ckpt['arch']} "
                              f"({str(exc).splitlines()[0]})") from None
    return model.eval()


def checkpoint_from_model(model: nn.Module, *, config: dict, arch: str, input_shape, num_classes: int,
                          levels: int, record: Mapping[str, Any], history: list,
                          activation: Optional[Mapping[str, Any]] = None) -> dict:
    """The checkpoint dict of ``model`` after the epoch ``record`` (as :func:`load_checkpoint` returns it)."""
    return {"format_version": CHECKPOINT_FORMAT, "state_dict": dict(model.state_dict()), "config": config,
            "arch": arch, "input_shape": list(input_shape), "num_classes": int(num_classes),
            "levels": int(levels), "epoch": int(record.get("epoch", 0)),
            "output_threshold": float(record.get("output_threshold", 1.0)),
            "sigma": [float(m.sigma) for m in nq_layers(model)],
            "lambda": [float(m.threshold.detach()) for m in nq_layers(model)],
            "metrics": {k: v for k, v in record.items() if k in ("loss", "ann_val", "snn_val")},
            "history": history,
            "activation": dict(activation or DEFAULT_ACTIVATION)}


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
NOT_TRAINING_KEYS = {"train": ("dist_timeout_s",)}


def training_identity(config: Mapping[str, Any]) -> dict:
    """The parts of the config that define a training run (resume only into the same run)."""
    out = {}
    for section in TRAINING_SECTIONS:
        body = config.get(section)
        if isinstance(body, Mapping):
            body = {k: v for k, v in body.items() if k not in NOT_TRAINING_KEYS.get(section, ())}
        out[section] = body
    return out


def stored_config(path: Path) -> dict:
    """The config a checkpoint or resume state (by its file name) was made with; only the header is
    read. :class:`CheckpointError` if the file is not one of ours."""
    path = Path(path)
    if path.name == TRAIN_STATE:
        doc, _ = _open_train_state(path)
    else:
        doc, _ = _open(path, "checkpoint", CHECKPOINT_FORMAT, _CHECKPOINT_FIELDS)
    return _Fields(path, doc).of_type("config", dict)


def _train_state_fields(path: Path, doc: dict) -> tuple[int, list, dict]:
    f = _Fields(path, doc)
    epoch = f.integer("epoch", 0, MAX_EPOCH - 1)
    history = f.of_type("history", list, _is_history)
    if [r.get("epoch") for r in history] != list(range(1, epoch + 2)):
        raise f.fail("history", f"one record per epoch 1..{epoch + 1}")
    best = f.of_type("best", dict, lambda b: _is_finite(b.get("snn_val")) and type(b.get("epoch")) is int
                    and 1 <= b["epoch"] <= epoch + 1)
    f.of_type("optimizer", dict, lambda o: set(o) == {"param_groups", "state"})
    f.of_type("scheduler", dict)
    return epoch, history, best


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


def _open_train_state(path: Path) -> tuple[dict, Layout]:
    return _open(path, "train_state", TRAIN_STATE_FORMAT, _TRAIN_STATE_FIELDS)


def read_train_state(path: Path, model: nn.Module, opened: Optional[tuple[dict, Layout]] = None) -> TrainState:
    """The resume state at ``path``, validated against ``model`` (its tensors are not loaded into it)."""
    path = Path(path)
    doc, found = opened or _open_train_state(path)
    epoch, history, best = _train_state_fields(path, doc)
    _check_layout(path, found, _train_state_layout(path, found, model))
    tensors = _load_tensors(path, found)
    optimizer_state: dict[int, dict] = {}
    for name, tensor in tensors.items():
        if name.startswith("optimizer/"):
            _, index, key = name.split("/")
            optimizer_state.setdefault(int(index), {})[key] = tensor
    for index, entries in doc["optimizer"]["state"].items():
        if not (isinstance(index, str) and index.isdigit() and isinstance(entries, dict)):
            raise CheckpointError(f"{path}: malformed optimizer state entry {_show(index)}")
        optimizer_state.setdefault(int(index), {}).update(entries)
    return TrainState(epoch=epoch, history=history, best=best, config=_Fields(path, doc).of_type("config", dict),
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
    opened = _open_train_state(path)
    if training_identity(_Fields(path, opened[0]).of_type("config", dict)) != training_identity(config):
        raise CheckpointError(f"{path} was made with another configuration; it is not resumed "
                              "(delete it, or train into a new run.dir)")
    state = read_train_state(path, model, opened)
    if state.epoch >= epochs:
        raise CheckpointError(f"{path}: resume state after epoch {state.epoch + 1}, but train.epochs is "
                              f"{epochs}; the file does not belong to this run (delete it to start afresh)")
    restore_train_state(path, state, model, optimizer, scheduler)
    return ResumePoint(history=list(state.history), best=dict(state.best), start_epoch=state.epoch + 1)
