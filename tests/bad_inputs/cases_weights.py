"""Bad checkpoints (stages ``evaluate`` and ``export``) and resume states (stage
``train``): damaged bytes, foreign formats, code-execution payloads, the format before
safetensors, header and metadata that do not match the tensors, non-finite weights.

Each starts from a copy of a run directory the CLI itself trained (``base='trained'``)
and edits its safetensors file by hand (:func:`base.read_safetensors`), so the cases
do not depend on how the checkpoint module writes its metadata, only on its names.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pipeline.artifacts import CHECKPOINT, LEGACY_CHECKPOINT, LEGACY_TRAIN_STATE, TRAIN_STATE

from . import Case, default_run
from .base import (NOT_REGULAR_KINDS, Workspace, edit_safetensors, fill_tensor, float_tensor_names,
                   legacy_checkpoint, metadata_find, metadata_set, not_regular, pickle_payload, tensor_names,
                   torch_zip_payload, torchscript_archive)

Plant = Callable[[Workspace], Sequence[str]]


def bytes_of(name: str, make: Callable[[bytes, Workspace], bytes]) -> Plant:
    """Replace run/<name> by ``make(current bytes, ws)``."""
    def plant(ws: Workspace) -> Sequence[str]:
        p = ws.run / name
        old = p.read_bytes() if p.exists() else b""
        p.write_bytes(make(old, ws))
        return ()
    return plant


def file_of(name: str, write: Callable[[Path, Workspace], None], remove: str = "") -> Plant:
    """Write run/<name> with ``write``; optionally remove run/<remove> (the current format)."""
    def plant(ws: Workspace) -> Sequence[str]:
        if remove:
            (ws.run / remove).unlink(missing_ok=True)
        write(ws.run / name, ws)
        return ()
    return plant


def header_edit(name: str, edit: Callable[[dict, bytes], tuple[dict, bytes]]) -> Plant:
    def plant(ws: Workspace) -> Sequence[str]:
        p = ws.run / name
        assert p.exists(), f"the trained base run has no {name} (train wrote {sorted(x.name for x in ws.run.iterdir())})"
        edit_safetensors(p, edit)
        return ()
    return plant


def meta(name: str, key: str, value: Any = None, delete: bool = False) -> Plant:
    def edit(header: dict, data: bytes):
        metadata_set(header, key, value, delete=delete)
        return header, data
    return header_edit(name, edit)


def meta_list(name: str, key: str, index: int, value: float) -> Plant:
    """Set element ``index`` of the list field ``key`` (σ or λ per layer, as many as the file has)."""
    def edit(header: dict, data: bytes):
        entry, path = metadata_find(header, key)
        node = json.loads(header["__metadata__"][entry])
        for part in path:
            node = node[part]
        values = list(node)
        values[index] = value
        metadata_set(header, key, values)
        return header, data
    return header_edit(name, edit)


def replaced_by(name: str, kind: str) -> Plant:
    def plant(ws: Workspace) -> Sequence[str]:
        not_regular(kind)(ws.run / name)
        return ()
    return plant


def overrides(*settings: str) -> Plant:
    return lambda ws: settings


def raw_header(header_len: int, body: bytes = b"") -> Callable[[bytes, Workspace], bytes]:
    return lambda old, ws: struct.pack("<Q", header_len) + body


# --------------------------------------------------------------------------- tensor edits
def _first_2d(header: dict) -> str:
    return next(k for k in float_tensor_names(header) if len(header[k]["shape"]) >= 2)


def drop_tensor(header, data):
    del header[tensor_names(header)[0]]
    return header, data


def rename_tensor(header, data):
    name = tensor_names(header)[0]
    header["renamed." + name] = header.pop(name)
    return header, data


def extra_tensor(header, data):
    header["extra.weight"] = {"dtype": "F32", "shape": [1], "data_offsets": [len(data), len(data) + 4]}
    return header, data + b"\0\0\0\0"


def transposed_tensor(header, data):
    name = _first_2d(header)
    shape = header[name]["shape"]
    header[name]["shape"] = [shape[1], shape[0], *shape[2:]]
    if shape[0] == shape[1]:
        header[name]["shape"] = [shape[0] * shape[1], 1, *shape[2:]]
    return header, data


def int_dtype(header, data):
    header[_first_2d(header)]["dtype"] = "I32"
    return header, data


def offsets_beyond_file(header, data):
    name = tensor_names(header)[-1]
    begin, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [begin, end + 10 ** 6]
    return header, data


def offsets_reversed(header, data):
    name = tensor_names(header)[0]
    header[name]["data_offsets"] = header[name]["data_offsets"][::-1]
    return header, data


def dtype_unknown(header, data):
    header[tensor_names(header)[0]]["dtype"] = "F99"
    return header, data


def shape_negative(header, data):
    header[tensor_names(header)[0]]["shape"] = [-1, 4]
    return header, data


def shape_huge(header, data):
    header[_first_2d(header)]["shape"] = [100000, 100000]
    return header, data


def metadata_list(header, data):
    header["__metadata__"] = ["not", "a", "mapping"]
    return header, data


def metadata_int_value(header, data):
    key = next(iter(header["__metadata__"]))
    header["__metadata__"][key] = 5
    return header, data


def metadata_missing(header, data):
    header.pop("__metadata__", None)
    return header, data


def filled(value: float):
    """Every float tensor filled with ``value``."""
    def edit(header, data):
        for name in float_tensor_names(header):
            data = fill_tensor(header, data, name, value)
        return header, data
    return edit


def one_nan(header, data):
    name = _first_2d(header)
    begin = header[name]["data_offsets"][0]
    return header, data[:begin] + np.float32(np.nan).tobytes() + data[begin + 4:]


# --------------------------------------------------------------------------- cases
def _byte_variants() -> dict[str, Callable[[bytes, Workspace], bytes]]:
    rng = np.random.default_rng(5)
    return {
        "empty": lambda old, ws: b"",
        "one-byte": lambda old, ws: b"\x01",
        "length-only": lambda old, ws: old[:8],
        "truncated-25pct": lambda old, ws: old[:len(old) // 4],
        "truncated-50pct": lambda old, ws: old[:len(old) // 2],
        "truncated-90pct": lambda old, ws: old[:len(old) * 9 // 10],
        "last-byte-dropped": lambda old, ws: old[:-1],
        "random-bytes": lambda old, ws: rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "all-zeros": lambda old, ws: bytes(len(old) or 4096),
        "json-text": lambda old, ws: b'{"arch": "cnn-small", "levels": 4}',
        "header-len-2^63": raw_header(1 << 63, b"{}"),
        "header-len-beyond-file": raw_header(10 ** 6, b'{"a": 1}'),
        "header-not-json": raw_header(16, b"this is not json"),
        "header-json-list": raw_header(8, b"[1,2,3]"),
        "header-100MB-claimed": raw_header(100 << 20, b"{" + b" " * 64),
        "pickle-payload": lambda old, ws: pickle_payload(ws.marker),
        "zip-file": lambda old, ws: b"PK\x03\x04" + bytes(64),
        "hdf5-file": lambda old, ws: b"\x89HDF\r\n\x1a\n" + bytes(64),
    }


def _header_variants() -> dict[str, Callable]:
    return {"drop-tensor": drop_tensor, "rename-tensor": rename_tensor, "extra-tensor": extra_tensor,
            "transposed-tensor": transposed_tensor, "int-dtype": int_dtype,
            "offsets-beyond-file": offsets_beyond_file, "offsets-reversed": offsets_reversed,
            "dtype-unknown": dtype_unknown, "shape-negative": shape_negative,
            "metadata-list": metadata_list, "metadata-int-value": metadata_int_value,
            "metadata-missing": metadata_missing, "all-nan": filled(float("nan")),
            "all-inf": filled(float("inf")), "one-nan": one_nan}


#: (metadata field, value) a checkpoint cannot carry; None = delete the field
CHECKPOINT_META = [("arch", "vgg16"), ("arch", "no-such-arch"), ("arch", 5), ("levels", 0),
                   ("levels", 300), ("levels", "4"), ("num_classes", 11), ("num_classes", 0),
                   ("input_shape", [1, 16, 16]), ("input_shape", [3, 8, 8]),
                   ("input_shape", "8x8"), ("input_shape", []), ("format_version", 999),
                   ("format_version", None), ("epoch", -1), ("epoch", "x"),
                   ("output_threshold", -1.0), ("output_threshold", "x"), ("sigma", [1.0]),
                   ("lambda", [1.0]), ("arch", None), ("levels", None)]
#: (metadata field, value) a resume state cannot carry
TRAIN_STATE_META = [("epoch", 10 ** 9), ("epoch", -1), ("epoch", "x"), ("epoch", 1.5),
                    ("epoch", None), ("format_version", 999), ("history", "x"), ("best", 5)]


#: checkpoint cases in the exhaustive run only
CHECKPOINT_SLOW = {
    "one-byte", "truncated-25pct", "truncated-90pct", "all-zeros", "zip-file", "hdf5-file",
    "header-json-list", "offsets-reversed", "shape-negative", "metadata-int-value", "all-inf",
    "int-dtype", 'meta-arch-5', "meta-levels-300", 'meta-levels-"4"', "meta-num_classes-0",
    "meta-input_shape-[3,8,8]", 'meta-input_shape-"8x8"', "meta-input_shape-[]",
    "meta-format_version-deleted", 'meta-epoch-"x"', "meta-output_threshold--1.0",
    "meta-lambda-[1.0]", "meta-arch-deleted", "meta-levels-deleted",
}


def _id(value: Any) -> str:
    return "deleted" if value is None else json.dumps(value).replace(" ", "")


#: λ (a firing threshold: > 0) and σ (a standard deviation: >= 0) that mean nothing
BAD_LAYER_VALUES = [("lambda", 0, 0.0), ("lambda", -1, -1.0), ("lambda", 0, float("nan")),
                    ("lambda", 0, float("inf")), ("lambda", -1, 1e-320 * -1), ("sigma", 0, -0.25),
                    ("sigma", -1, float("nan"))]
#: another configuration than the trained base's: train and export must not replace its work
OTHER_TRAINING = {"seed": "train.seed=5", "epochs": "train.epochs=2", "arch": "model.arch=cnn-small",
                  "levels": "nq.levels=8", "neuron": "snn.neuron=cuba", "lr": "train.lr=0.01"}
OTHER_EXPORT = {"neuron": "snn.neuron=cuba", "input-bits": "quant.input_bits=6", "timesteps": "snn.timesteps=1",
                "readout": "snn.readout=spikes"}
#: issue-18 cases in the exhaustive run only
ISSUE18_SLOW = {f"checkpoint-evaluate-meta-{k}[{i}]={_v}" for k, i, _v in (
    ("lambda", -1, "-1.0"), ("lambda", 0, "inf"), ("lambda", -1, "-1e-320"), ("sigma", -1, "nan"))} | {
    f"checkpoint-{stage}-{kind}" for stage in ("evaluate", "export") for kind in NOT_REGULAR_KINDS
    if (stage, kind) not in {("evaluate", "dev-zero"), ("evaluate", "fifo"), ("export", "huge-sparse")}} | {
    f"checkpoint-train-other-{k}" for k in ("epochs", "levels", "lr")} | {
    f"checkpoint-export-other-{k}" for k in ("timesteps", "readout")}


def _issue18_checkpoint_cases(case) -> list[Case]:
    cases = [case(f"meta-{key}[{index}]={value!r}".replace("'", ""), meta_list(CHECKPOINT, key, index, value),
                  needles=(CHECKPOINT, key)) for key, index, value in BAD_LAYER_VALUES]
    cases += [case(kind, replaced_by(CHECKPOINT, kind), stage=stage, bomb=kind != "socket", timeout=30)
              for stage in ("evaluate", "export") for kind in NOT_REGULAR_KINDS]
    cases += [case(f"other-{k}", overrides(v), stage="train", needles=(CHECKPOINT, "--overwrite", "run.dir"))
              for k, v in OTHER_TRAINING.items()]
    cases += [case(f"other-{k}", overrides(v), stage="export", needles=("model.net", "--overwrite", "run.dir"))
              for k, v in OTHER_EXPORT.items()]
    return cases


def _torch_file_cases(case, name: str, legacy: str, legacy_needles: tuple) -> list[Case]:
    """torch archives (one with a payload) as ``name``; the older version's torch-pickle ``legacy``
    (a real one, a TorchScript archive, a payload) in a run directory without ``name``."""
    def in_legacy(write):
        return file_of(legacy, write, remove=name)
    return [
        case("torchscript", file_of(name, lambda p, ws: torchscript_archive(p))),
        case("torch-zip-payload", file_of(name, lambda p, ws: torch_zip_payload(ws.marker, p)), payload=True),
        case(f"legacy-{legacy}", in_legacy(lambda p, ws: legacy_checkpoint(p)), needles=legacy_needles),
        case("legacy-torchscript", in_legacy(lambda p, ws: torchscript_archive(p)), needles=(legacy,)),
        case("legacy-pickle-payload", in_legacy(lambda p, ws: p.write_bytes(pickle_payload(ws.marker))),
             needles=(legacy,), payload=True),
    ]


def checkpoint_cases() -> list[Case]:
    def case(id_, plant, stage="evaluate", needles=(CHECKPOINT,), **kw):
        return Case(id=f"checkpoint-{stage}-{id_}", owner="A1", stage=stage, plant=plant,
                    base="trained", needles=needles, **kw)

    cases = [case(k, bytes_of(CHECKPOINT, v), payload=k == "pickle-payload",
                  bomb=k.startswith("header-len") or k.startswith("header-100"))
             for k, v in _byte_variants().items()]
    cases += [case(k, header_edit(CHECKPOINT, v)) for k, v in _header_variants().items()]
    cases.append(case("shape-huge", header_edit(CHECKPOINT, shape_huge), bomb=True))
    cases += [case(f"meta-{key}-{_id(value)}", meta(CHECKPOINT, key, value, delete=value is None))
              for key, value in CHECKPOINT_META]
    cases += _torch_file_cases(case, CHECKPOINT, LEGACY_CHECKPOINT,
                               (LEGACY_CHECKPOINT, ("re-train", "retrain", "convert")))
    cases.append(case("missing", file_of("unrelated.txt", lambda p, ws: p.write_text("x"), remove=CHECKPOINT)))
    cases += _issue18_checkpoint_cases(case)
    cases = default_run(cases, {c.id for c in cases} - {f"checkpoint-evaluate-{k}" for k in CHECKPOINT_SLOW}
                        - ISSUE18_SLOW)
    for id_, plant, payload in [
            ("torchscript", file_of(CHECKPOINT, lambda p, ws: torchscript_archive(p)), False),
            ("pickle-payload", bytes_of(CHECKPOINT, lambda old, ws: pickle_payload(ws.marker)), True),
            ("all-nan", header_edit(CHECKPOINT, filled(float("nan"))), False),
            ("meta-arch-vgg16", meta(CHECKPOINT, "arch", "vgg16"), False),
            ("truncated-50pct", bytes_of(CHECKPOINT, lambda old, ws: old[:len(old) // 2]), False)]:
        cases.append(case(id_, plant, stage="export", payload=payload,
                          slow=id_ not in ("torchscript", "pickle-payload")))
    return cases


def train_state_cases() -> list[Case]:
    def case(id_, plant, needles=(TRAIN_STATE,), **kw):
        return Case(id=f"train-state-{id_}", owner="A1", stage="train", plant=plant, base="trained",
                    needles=needles, **kw)

    variants = _byte_variants()
    keep = ("empty", "length-only", "truncated-50pct", "last-byte-dropped", "random-bytes",
            "json-text", "header-len-2^63", "header-not-json", "pickle-payload", "zip-file")
    # train loads the dataset and builds the model before it reads the resume state
    cases = [case(k, bytes_of(TRAIN_STATE, variants[k]), payload=k == "pickle-payload",
                  bomb=k.startswith("header-len"), bomb_seconds=3.0) for k in keep]
    cases += [case(k, header_edit(TRAIN_STATE, v)) for k, v in _header_variants().items()
              if k in ("drop-tensor", "rename-tensor", "transposed-tensor", "offsets-beyond-file",
                       "dtype-unknown", "metadata-missing", "all-nan")]
    cases += [case(f"meta-{key}-{_id(value)}", meta(TRAIN_STATE, key, value, delete=value is None))
              for key, value in TRAIN_STATE_META]
    cases += _torch_file_cases(case, TRAIN_STATE, LEGACY_TRAIN_STATE, (LEGACY_TRAIN_STATE,))
    cases += [case(kind, replaced_by(TRAIN_STATE, kind), bomb=kind != "socket", bomb_seconds=3.0, timeout=30)
              for kind in NOT_REGULAR_KINDS]
    default = {f"train-state-{k}" for k in ("dev-zero", "fifo",
        "empty", "truncated-50pct", "pickle-payload", "header-len-2^63", "random-bytes", "drop-tensor",
        "transposed-tensor", "all-nan", "meta-epoch-1000000000", "meta-epoch--1",
        "meta-format_version-999", "torchscript", "torch-zip-payload", "legacy-train_state.pt")}
    return default_run(cases, default)
