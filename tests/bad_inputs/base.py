"""Valid inputs the cases start from, and the hostile payloads they plant.

Every bad input is one small change to something that works: the tiny config, a
small integer network for 8x8 digits written by the project's own writer, a tiny
IDX dataset, and a run directory trained and exported by the CLI itself. The tests
in ``test_bad_inputs.py`` also check that these bases are accepted, so a refusal in a
case is the case's doing.
"""
from __future__ import annotations

import builtins
import gzip
import json
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

#: the tiny run every stage can afford (about a second of training on digits)
TINY_CONFIG: dict[str, dict[str, Any]] = {
    "data": {"name": "digits"},
    "nq": {"sigma_samples": 16, "init_threshold": 2.0},
    "train": {"epochs": 1, "select_samples": 16, "batch_size": 64},
    "snn": {"timesteps": 2},
    "eval": {"timesteps": 2, "batch_size": 512},
    "run": {"lava_samples": 1, "probes": False},
}


@dataclass(frozen=True)
class Workspace:
    """One case's directory: the config, the run directory, the other inputs."""

    root: Path

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def config(self) -> Path:
        return self.root / "deploy.yaml"

    @property
    def marker(self) -> Path:
        """The file a code-execution payload would create (it must never exist)."""
        return self.root / "PAYLOAD_RAN"

    def config_dict(self) -> dict:
        cfg = {k: dict(v) for k, v in TINY_CONFIG.items()}
        cfg["run"]["dir"] = str(self.run)
        return cfg

    def write_config(self, cfg: dict | None = None) -> None:
        self.config.write_text(yaml.safe_dump(cfg if cfg is not None else self.config_dict(),
                                              sort_keys=False))

    def argv(self, stage: str, *overrides: str) -> list[str]:
        args = [stage, "--config", str(self.config)]
        for ov in overrides:
            args += ["--set", ov]
        return args


# --------------------------------------------------------------------------- not regular files
def not_regular(kind: str) -> Callable[[Path], None]:
    """Replace the file at a path by something that is not a regular file (issue 18): a link to
    /dev/zero or /dev/urandom (endless), a FIFO (an open would wait for a writer), a directory,
    a socket, or a sparse file far beyond any artifact's size (no disk, never to be read)."""
    def make(path: Path) -> None:
        if path.exists() or path.is_symlink():
            path.unlink()
        if kind in ("dev-zero", "dev-urandom"):
            path.symlink_to(f"/dev/{kind[4:]}")
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "directory":
            path.mkdir()
        elif kind == "socket":
            import socket
            with socket.socket(socket.AF_UNIX) as s:
                s.bind(str(path))
        elif kind == "huge-sparse":
            with open(path, "wb") as f:
                f.truncate(16 << 30)
        else:
            raise ValueError(kind)
    return make


NOT_REGULAR_KINDS = ("dev-zero", "dev-urandom", "fifo", "directory", "socket", "huge-sparse")


def many_keys_json(n: int = 100_000, duplicate: str | None = None) -> str:
    """A JSON object of ``n`` keys whose last one repeats ``duplicate`` (default: the key before it,
    which a check that counts each key's occurrences in turn reaches last: quadratic)."""
    duplicate = f"k{n - 1}" if duplicate is None else duplicate
    return "{" + ", ".join(f'"k{i}": {i}' for i in range(n)) + f', "{duplicate}": 0}}'


# --------------------------------------------------------------------------- payloads
class _OpenMarker:
    """Unpickling this calls ``open(path, 'w')``: the file appears iff the payload ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def pickle_payload(marker: Path) -> bytes:
    return pickle.dumps({"format_version": 2, "state_dict": _OpenMarker(marker)}, protocol=2)


def torch_zip_payload(marker: Path, dest: Path) -> None:
    """A torch.save archive whose unpickling creates ``marker``."""
    import torch

    torch.save({"format_version": 2, "model": _OpenMarker(marker)}, dest)


def torchscript_archive(dest: Path) -> None:
    """A TorchScript archive (``torch.jit.save``): torch 2.3.1's ``torch.load`` runs it."""
    import torch

    class Tiny(torch.nn.Module):
        def forward(self, x):
            return x * 2

    torch.jit.save(torch.jit.script(Tiny()), str(dest))


def legacy_checkpoint(dest: Path) -> None:
    """A plain checkpoint of the format before safetensors (``torch.save`` of a dict)."""
    import torch

    torch.save({"format_version": 2, "state_dict": {"0.weight": torch.zeros(2, 2)},
                "arch": "cnn-small", "input_shape": [1, 8, 8], "num_classes": 10, "levels": 4,
                "epoch": 1}, dest)


# --------------------------------------------------------------------------- safetensors
def read_safetensors(path: Path) -> tuple[dict, bytes]:
    """(header dict, data bytes) of a safetensors file, parsed by hand."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_safetensors(path: Path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def metadata_find(header: dict, key: str) -> tuple[str, list] | None:
    """Where ``key`` lives in the (possibly JSON-encoded) ``__metadata__`` values:
    (metadata entry, path inside its decoded JSON), or None."""
    meta = header.get("__metadata__") or {}
    if key in meta:
        return key, []
    for entry, value in meta.items():
        try:
            decoded = json.loads(value)
        except (TypeError, ValueError):
            continue
        path = _find_path(decoded, key)
        if path is not None:
            return entry, path
    return None


def _find_path(obj: Any, key: str, depth: int = 0) -> list | None:
    if depth > 3:
        return None
    if isinstance(obj, dict):
        if key in obj:
            return [key]
        for k, v in obj.items():
            if k == "config":  # the run's config is not the artifact's own description
                continue
            sub = _find_path(v, key, depth + 1)
            if sub is not None:
                return [k, *sub]
    return None


def metadata_set(header: dict, key: str, value: Any, delete: bool = False) -> None:
    """Set (or delete) ``key`` wherever :func:`metadata_find` finds it; AssertionError if absent."""
    where = metadata_find(header, key)
    assert where is not None, (f"the safetensors metadata has no field {key!r} "
                               f"(entries: {sorted((header.get('__metadata__') or {}))})")
    entry, path = where
    meta = header["__metadata__"]
    if not path:
        if delete:
            del meta[entry]
        else:
            meta[entry] = value if isinstance(value, str) else json.dumps(value)
        return
    decoded = json.loads(meta[entry])
    node = decoded
    for k in path[:-1]:
        node = node[k]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    meta[entry] = json.dumps(decoded)


def edit_safetensors(path: Path, edit: Callable[[dict, bytes], tuple[dict, bytes]]) -> None:
    header, data = read_safetensors(path)
    header, data = edit(header, data)
    write_safetensors(path, header, data)


def tensor_names(header: dict) -> list[str]:
    return sorted(k for k in header if k != "__metadata__")


def float_tensor_names(header: dict) -> list[str]:
    return [k for k in tensor_names(header) if header[k]["dtype"] in ("F32", "F64", "F16", "BF16")]


def fill_tensor(header: dict, data: bytes, name: str, value: float) -> bytes:
    spec = header[name]
    begin, end = spec["data_offsets"]
    dtype = {"F32": "<f4", "F64": "<f8"}[spec["dtype"]]
    block = np.full((end - begin) // np.dtype(dtype).itemsize, value, dtype=dtype).tobytes()
    return data[:begin] + block + data[end:]


# --------------------------------------------------------------------------- IDX
def idx_bytes(array: np.ndarray, type_code: int = 0x08, dims: tuple | None = None,
              payload: bytes | None = None) -> bytes:
    dims = array.shape if dims is None else dims
    head = bytes([0, 0, type_code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
    return head + (array.astype(">u1" if type_code == 0x08 else array.dtype).tobytes()
                   if payload is None else payload)


def tiny_idx_arrays(n_train: int = 200, n_test: int = 50, side: int = 28, seed: int = 0):
    rng = np.random.default_rng(seed)
    x_tr = rng.integers(0, 256, size=(n_train, side, side), dtype=np.uint8)
    x_te = rng.integers(0, 256, size=(n_test, side, side), dtype=np.uint8)
    y_tr = np.arange(n_train, dtype=np.uint8) % 10
    y_te = np.arange(n_test, dtype=np.uint8) % 10
    return {"train-images-idx3-ubyte": x_tr, "train-labels-idx1-ubyte": y_tr,
            "t10k-images-idx3-ubyte": x_te, "t10k-labels-idx1-ubyte": y_te}


def write_idx_dataset(root: Path, side: int = 28) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, array in tiny_idx_arrays(side=side).items():
        (root / name).write_bytes(idx_bytes(array))


def gzip_bomb(header: bytes, decompressed_gib: int = 8) -> bytes:
    """A gzip file of a few MB that decompresses to ``header`` + ``decompressed_gib`` GiB of
    zeros: one member for the header, then the same 64 MiB-of-zeros member repeated."""
    zeros = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
    return gzip.compress(header) + zeros * (decompressed_gib * 16)


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


# --------------------------------------------------------------------------- .net
def valid_digits_net(path: Path) -> Path:
    """A small integer network for 8x8 digits written by ``hardware.formats.netx.write_net``:
    conv 1->4 (3x3, pad 1, IF soft reset), flatten, dense 256->10 (potential readout)."""
    from hardware.ir import Conv, Dense, Flatten, Input, Network, Neuron, readout_neuron
    from hardware.formats.netx import write_net

    rng = np.random.default_rng(8)
    conv_w = rng.integers(-40, 41, size=(4, 1, 3, 3))
    conv_w.flat[0], conv_w.flat[1] = 37, -29
    dense_w = rng.integers(-20, 21, size=(10, 256))
    dense_w.flat[0], dense_w.flat[1] = 17, -13
    net = Network(
        input=Input((1, 8, 8), name="image"),
        layers=[Conv(weight=conv_w, bias=rng.integers(-50, 51, size=4),
                     neuron=Neuron("if_soft", threshold=300), padding=(1, 1), name="conv1"),
                Flatten(name="flat"),
                Dense(weight=dense_w, bias=rng.integers(-50, 51, size=10),
                      neuron=readout_neuron(True), name="fc_out")],
        integer=True, input_bits=8, readout="potential", metadata={"made_by": "tests"})
    return write_net(net, path, provenance={"purpose": "bad-input base"})
