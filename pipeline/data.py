"""Datasets, read from local files only (nothing is downloaded).

Every dataset is float32 images in [0, 1], shaped (N, C, H, W), and int64 labels. The
only transform is ``x = pixel / pixel_max``: the image goes to Loihi 2 as unsigned graded
spikes, so no mean/std normalisation (which would make inputs signed).

Splits:

* ``test`` is the dataset's own test set (digits has none: a stratified 20 % split with a
  fixed seed, so every training seed is scored on the same test images);
* ``val`` is carved from the training set only, stratified per class and seeded with
  ``train.seed``: ``round(n_c * val_fraction)`` of each class's ``n_c`` images.

Sources:

* ``digits``: :func:`sklearn.datasets.load_digits` (8x8, values 0..16, /16);
* ``fashion-mnist``: IDX files, default ``/usr/share/datasets/fashion-mnist`` (Debian
  package ``dataset-fashion-mnist``, which installs the four ``*-ubyte.gz`` files there);
* ``mnist``: IDX files in ``data.root`` (same reader);
* ``cifar10``: the ``cifar-10-batches-py`` pickles, read with a restricted unpickler that
  can only rebuild dicts/lists/str/bytes/ints and numpy arrays: a pickle referring to
  anything else is refused, never executed.
"""
from __future__ import annotations

import gzip
import logging
import math
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional

import numpy as np
import torch
from torch.utils.data import TensorDataset

from hardware.errors import ToolkitError
from hardware.formats.files import open_regular
from models.architectures import CONV_PLANS, min_input_side

log = logging.getLogger(__name__)


class DatasetError(ToolkitError, OSError):
    """A dataset that is missing, incomplete or malformed."""


@dataclass(frozen=True)
class DatasetSplits:
    """train/val/test TensorDatasets of (float32 images in [0,1] (N,C,H,W),
    int64 labels)."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, int, int]
    name: str


#: Seed of digits' fixed test split (independent of train.seed on purpose).
DIGITS_TEST_SEED = 20240601
DIGITS_TEST_FRACTION = 0.2
FASHION_MNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

#: Largest IDX payload read, in bytes (Fashion-MNIST's training images are 47 MB).
MAX_IDX_BYTES = 1 << 28
#: Largest CIFAR-10 batch file read, in bytes (the real ones are 31 MB).
MAX_CIFAR_BATCH_BYTES = 1 << 27
#: The smallest image side any architecture accepts (its pooling must leave at least a pixel).
MIN_IMAGE_SIDE = min(min_input_side(arch) for arch in CONV_PLANS)

# IDX type codes (http://yann.lecun.com/exdb/mnist/ format description):
# data are big-endian.
_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


# --------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------

def stratified_split(labels: np.ndarray, fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (keep, held_out), per class ``round(n_c*fraction)``
    held out, chosen by a permutation seeded with ``seed``. Both index arrays
    are sorted; they are disjoint and cover ``range(len(labels))``."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = int(round(len(idx) * fraction))
        held.append(idx[:n])
        keep.append(idx[n:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def _tensors(x: np.ndarray, y: np.ndarray, pixel_max: float) -> TensorDataset:
    """Raw pixels -> float32 ``x / pixel_max`` in [0, 1]; labels -> int64."""
    xf = x.astype(np.float32)
    xf /= np.float32(pixel_max)
    return TensorDataset(torch.from_numpy(np.ascontiguousarray(xf)),
                         torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)))


def _make_splits(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                 y_test: np.ndarray, pixel_max: float, num_classes: int, val_fraction: float,
                 seed: int) -> DatasetSplits:
    """Scale raw (N, C, H, W) pixels by ``pixel_max`` and carve the seeded,
    stratified validation split out of the training set."""
    tr, va = stratified_split(y_train, val_fraction, seed)
    if len(va) == 0 or len(tr) == 0:
        raise DatasetError(f"{name}: the training set ({len(y_train)} images) is too small "
                           f"for data.val_fraction={val_fraction}")
    splits = DatasetSplits(
        train=_tensors(x_train[tr], y_train[tr], pixel_max),
        val=_tensors(x_train[va], y_train[va], pixel_max),
        test=_tensors(x_test, y_test, pixel_max), num_classes=num_classes,
        input_shape=tuple(int(d) for d in x_train.shape[1:]), name=name)
    log.info("%s: %d train, %d val, %d test images of shape %s", name, len(tr), len(va),
             len(y_test), splits.input_shape)
    return splits


# --------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------

def _open_maybe_gzip(fh: BinaryIO) -> BinaryIO:
    """``fh`` itself, or a decompressing reader over it if it starts with the gzip magic.

    The reader decompresses only as much as is read from it, so a gzip bomb
    costs no more than the (capped) size its IDX header declares."""
    magic = fh.read(2)
    fh.seek(0)
    return gzip.GzipFile(fileobj=fh, mode="rb") if magic == b"\x1f\x8b" else fh


def _idx_header(stream: BinaryIO, p: Path) -> tuple[np.dtype, tuple[int, ...]]:
    head = stream.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
        raise DatasetError(f"{p} is not an IDX file (bad magic {head.hex() or 'empty'})")
    dtype, ndim = _IDX_DTYPES[head[2]], head[3]
    dims = stream.read(4 * ndim)
    if ndim == 0 or len(dims) < 4 * ndim:
        raise DatasetError(f"{p}: truncated IDX header ({4 + len(dims)} bytes, ndim={ndim})")
    return dtype, tuple(int(d) for d in np.frombuffer(dims, dtype=">u4"))


def _read_up_to(stream: BinaryIO, size: int, chunk: int = 1 << 20) -> bytes:
    """At most ``size`` bytes, read in chunks: memory follows what the file really holds, not
    what its header claims (``read(size)`` would allocate ``size`` bytes up front)."""
    out = bytearray()
    while len(out) < size:
        part = stream.read(min(chunk, size - len(out)))
        if not part:
            break
        out += part
    return bytes(out)


def _idx_payload(stream: BinaryIO, p: Path, expected: int, shape: tuple, dtype: np.dtype) -> bytes:
    if expected > MAX_IDX_BYTES:
        raise DatasetError(f"{p}: the IDX header declares shape {shape} of {dtype.name}, "
                           f"{expected} bytes, more than the {MAX_IDX_BYTES}-byte limit "
                           f"of one dataset file")
    raw = _read_up_to(stream, expected)
    extra = len(stream.read(1))   # one byte more is enough to know the file is too long
    if len(raw) != expected or extra:
        raise DatasetError(f"{p}: IDX payload is {len(raw) + extra}{'+' * extra} bytes but the "
                           f"header (shape {shape}, {dtype.name}) needs {expected}: the file is "
                           f"{'too long' if extra else 'truncated'}")
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed, detected by its magic).

    Layout: 2 zero bytes, a type code, the number of dimensions d, d
    big-endian uint32 sizes, then prod(sizes) big-endian values. A file whose
    payload is shorter or longer than its header says is malformed; a header
    declaring more than :data:`MAX_IDX_BYTES` is refused before anything is
    allocated or decompressed."""
    p = Path(path)
    try:
        if not p.is_file():
            raise DatasetError(f"IDX file {p} is not a regular file")
        with p.open("rb") as fh:
            stream = _open_maybe_gzip(fh)
            dtype, shape = _idx_header(stream, p)
            expected = math.prod(shape) * dtype.itemsize   # Python ints: no overflow
            raw = _idx_payload(stream, p, expected, shape, dtype)
    except DatasetError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"cannot read IDX file {p}: {exc}") from None
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_candidates(root: Path, stem: str) -> list[Path]:
    # Accept the names of the original site (with and without .gz), the
    # dotted variant some mirrors use (train-images.idx3-ubyte), and
    # torchvision's raw/ folders, so a user's existing copy is found as is.
    names = [stem, stem + ".gz", stem.replace("-idx", ".idx"),
             stem.replace("-idx", ".idx") + ".gz"]
    dirs = [root, root / "raw", root / "MNIST" / "raw", root / "FashionMNIST" / "raw"]
    return [d / n for d in dirs for n in names]


def _how_to_get(name: str) -> str:
    if name == "fashion-mnist":
        return ("install them with `apt-get install dataset-fashion-mnist` (files go to "
                f"{FASHION_MNIST_DEFAULT_ROOT}) or place the IDX files in a directory and "
                "set data.root to it")
    return "place the IDX files (as .gz or uncompressed) in a directory and set data.root to it"


def _check_idx_pair(x: np.ndarray, y: np.ndarray, x_path: Path, y_path: Path) -> None:
    """Images (N, H, W) uint8, at least one, each side >= :data:`MIN_IMAGE_SIDE`;
    N integer labels in 0..9."""
    if x.ndim != 3 or x.dtype != np.uint8:
        raise DatasetError(f"{x_path}: expected uint8 images (N, H, W), got {x.dtype} {x.shape}")
    if len(x) == 0:
        raise DatasetError(f"{x_path}: the file holds no images (shape {x.shape})")
    if min(x.shape[1:]) < MIN_IMAGE_SIDE:
        raise DatasetError(f"{x_path}: images are {x.shape[1]}×{x.shape[2]} pixels; every "
                           f"architecture needs at least {MIN_IMAGE_SIDE}×{MIN_IMAGE_SIDE}")
    if y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu":
        raise DatasetError(f"{y_path}: expected {len(x)} integer labels, got {y.dtype} "
                           f"shape {y.shape}")
    if y.min() < 0 or y.max() > 9:
        raise DatasetError(f"{y_path}: labels must be 0..9, found {int(y.min())}..{int(y.max())}")


def load_idx_dataset(root: str | Path, name: str) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test) from an IDX directory; images as
    uint8 (N, 28, 28)-like arrays, labels as int64."""
    root = Path(root).expanduser()
    found, missing = {}, []
    for key, stem in IDX_FILES.items():
        hit = next((c for c in _idx_candidates(root, stem) if c.is_file()), None)
        if hit is None:
            missing.append(stem + "[.gz]")
        else:
            found[key] = hit
    if missing:
        raise DatasetError(
            f"{name}: looked in {root} (and its raw/ subfolders) and did not find "
            f"{', '.join(missing)}; expected the four files "
            f"{', '.join(s + '[.gz]' for s in IDX_FILES.values())}; {_how_to_get(name)}. "
            f"Nothing is downloaded.")
    arrays = {k: read_idx(p) for k, p in found.items()}
    for part in ("train", "test"):
        _check_idx_pair(arrays[f"{part}_images"], arrays[f"{part}_labels"],
                        found[part + "_images"], found[part + "_labels"])
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise DatasetError(f"{name}: train images {arrays['train_images'].shape[1:]} and test "
                           f"images {arrays['test_images'].shape[1:]} differ in size")
    return (arrays["train_images"], arrays["train_labels"].astype(np.int64),
            arrays["test_images"], arrays["test_labels"].astype(np.int64))


# --------------------------------------------------------------------------
# CIFAR-10 (restricted unpickling)
# --------------------------------------------------------------------------

class _Refused(pickle.UnpicklingError):
    """A pickle asked for something the restricted unpickler does not allow."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Only the globals numpy needs to rebuild an ndarray are resolvable;
    dict/list/str/bytes/int are pickle opcodes and need no global. Any other
    global (os.system, builtins.eval, ...) is refused before it is called."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),  # pickles written by numpy 2
        ("numpy.core.numeric", "_frombuffer"),  # pickle protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            # Python 3 writes bytes under protocol 2 as _codecs.encode(str,
            # 'latin1'); only that exact use is let through.
            return _latin1_encode
        if (module, name) in self._ALLOWED:
            if name == "_reconstruct":
                return np.core.multiarray._reconstruct
            if name == "_frombuffer":
                return np.core.numeric._frombuffer
            return getattr(np, name)
        raise _Refused(f"refusing to load global {module}.{name}")


def _latin1_encode(text, encoding="utf-8"):
    if not isinstance(text, str) or encoding != "latin1":
        raise _Refused(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _unpickle_batch(path: Path):
    """The object in a CIFAR-10 batch file: a regular file within MAX_CIFAR_BATCH_BYTES (a FIFO
    or a device is refused, not waited on), unpickled by the restricted unpickler."""
    with open_regular(path, MAX_CIFAR_BATCH_BYTES, "CIFAR-10 batch", DatasetError) as fh:
        try:
            # The official batches were written by Python 2: encoding="bytes"
            # keeps their str keys as bytes instead of guessing a codec.
            return _RestrictedUnpickler(fh, encoding="bytes").load()
        except OSError as exc:
            raise DatasetError(f"cannot read CIFAR-10 batch {path}: {exc}") from None
        except _Refused as exc:
            raise DatasetError(f"{path}: not loaded, it is not a plain CIFAR-10 batch ({exc}); "
                               "only dicts, lists, strings, ints and numpy arrays are accepted"
                               ) from None
        except Exception as exc:  # any malformed pickle: EOFError, ValueError, TypeError ...
            raise DatasetError(f"{path}: malformed CIFAR-10 batch "
                               f"({type(exc).__name__}: {exc})") from None


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    obj = _unpickle_batch(path)
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a dict, got {type(obj).__name__}")
    d = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    data, labels = d.get("data"), d.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{path}: 'data' must be a uint8 array (N, 3072), got "
                           f"{type(data).__name__} {getattr(data, 'shape', '')}")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: 'labels' must be a list of ints") from None
    if y.shape != (len(data),) or (len(y) and (y.min() < 0 or y.max() > 9)):
        raise DatasetError(f"{path}: expected {len(data)} labels in 0..9, got shape {y.shape}")
    # rows are the R, G, B planes of a 32x32 image, row-major: CHW as is.
    return data.reshape(-1, 3, 32, 32), y


CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"


def load_cifar10(root: str | Path) -> tuple[np.ndarray, ...]:
    root = Path(root).expanduser()
    base = root if (root / CIFAR_TEST).is_file() else root / "cifar-10-batches-py"
    missing = [n for n in CIFAR_TRAIN + (CIFAR_TEST,) if not (base / n).is_file()]
    if missing:
        raise DatasetError(
            f"cifar10: looked in {root} and {root / 'cifar-10-batches-py'} and did not find "
            f"{', '.join(missing)}; expected {', '.join(CIFAR_TRAIN)} and {CIFAR_TEST} "
            f"(the python version of CIFAR-10, as torchvision stores it); place the "
            f"cifar-10-batches-py folder in data.root. Nothing is downloaded.")
    parts = [_load_cifar_batch(base / n) for n in CIFAR_TRAIN]
    x_test, y_test = _load_cifar_batch(base / CIFAR_TEST)
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            x_test, y_test)


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------

def load_dataset(data_cfg, seed: int) -> DatasetSplits:
    """Load ``data_cfg.name`` from ``data_cfg.root`` (or its default location)
    and split it; ``seed`` (``train.seed``) seeds the validation split."""
    name, frac = data_cfg.name, data_cfg.val_fraction
    root: Optional[Path] = Path(data_cfg.root).expanduser() if data_cfg.root else None
    if name == "digits":
        if root is not None:
            raise DatasetError("digits ships inside scikit-learn: data.root must be null")
        from sklearn.datasets import load_digits
        bunch = load_digits()
        x = bunch.images[:, None, :, :]  # values 0..16
        y = bunch.target.astype(np.int64)
        tr, te = stratified_split(y, DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
        return _make_splits(name, x[tr], y[tr], x[te], y[te], 16.0, 10, frac, seed)
    if name in ("fashion-mnist", "mnist"):
        if root is None:
            if name == "mnist":
                raise DatasetError(
                    "mnist has no default location: set data.root to a directory holding "
                    f"{', '.join(s + '[.gz]' for s in IDX_FILES.values())}. "
                    "Nothing is downloaded.")
            root = FASHION_MNIST_DEFAULT_ROOT
        xtr, ytr, xte, yte = load_idx_dataset(root, name)
        return _make_splits(name, xtr[:, None], ytr, xte[:, None], yte, 255.0, 10, frac, seed)
    if name == "cifar10":
        if root is None:
            raise DatasetError(
                "cifar10 has no default location: set data.root to the directory holding "
                "cifar-10-batches-py (data_batch_1..5, test_batch). Nothing is downloaded.")
        xtr, ytr, xte, yte = load_cifar10(root)
        return _make_splits(name, xtr, ytr, xte, yte, 255.0, 10, frac, seed)
    raise DatasetError(f"unknown dataset {name!r}")


# --------------------------------------------------------------------------
# Training augmentation
# --------------------------------------------------------------------------

#: Datasets whose classes survive a horizontal flip (a flipped digit is not a digit).
FLIP_SAFE = {"digits": False, "mnist": False, "fashion-mnist": True, "cifar10": True}


def augment_batch(x: torch.Tensor, dataset: str, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding (pad = H // 8: 4 px on 32×32, 3 on 28×28, 1 on 8×8)
    and, where :data:`FLIP_SAFE` allows it, a horizontal flip with probability 1/2.

    ``x``: (B, C, H, W) on any device; the random draws come from ``generator`` (CPU)
    so a run is reproducible from ``train.seed``."""
    b, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :]).to(x.device)        # (B, H)
    cols = (dx[:, None] + torch.arange(w)[None, :]).to(x.device)        # (B, W)
    if FLIP_SAFE.get(dataset, False):
        flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=x.device)[:, None, None]
    # gather (B, C, H, W) from padded with per-sample row/col index grids
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
