"""Datasets, read from local files only (nothing is downloaded).

Every dataset is float32 images in [0, 1], (N, C, H, W) (or flat vectors (N, F) from an npz
file), and int64 labels. The only transform is ``x = pixel / pixel_max``: the input goes to
Loihi 2 as unsigned graded spikes; a pretrained model's mean/std normalisation is folded into
its first layer instead (models.normalize).

Splits: ``test`` is the dataset's own (digits has none: a stratified 20 % split with a fixed
seed); ``val`` is carved from the training set, stratified per class, seeded by ``train.seed``.

Sources:

* ``digits``: scikit-learn's bundled 8x8 digits (values 0..16, /16);
* ``fashion-mnist`` / ``mnist``: the four IDX files (``*-ubyte[.gz]``), by default
  ``/usr/share/datasets/fashion-mnist`` for Fashion-MNIST (Debian ``dataset-fashion-mnist``);
* ``cifar10``: the ``cifar-10-batches-py`` pickles, through a restricted unpickler that can
  only rebuild dicts, lists, str, bytes, ints and numpy arrays (anything else is refused);
* ``npz``: the user's ``x_train, y_train, x_test, y_test`` arrays (:func:`load_npz`);
* ``folder``: ``train/<class>/`` and ``test/<class>/`` PNG/JPEG images (:func:`load_folder`).

Every file is size-checked before anything is allocated or decoded; a bad file raises a
one-line :class:`DatasetError` naming it.
"""
from __future__ import annotations

import gzip
import logging
import math
import pickle
import zipfile
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
    """train/val/test TensorDatasets of (float32 inputs in [0,1], (N,C,H,W) or (N,F),
    int64 labels); ``classes`` names the classes of a folder dataset (else empty)."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, ...]
    name: str
    classes: tuple[str, ...] = ()


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
                 seed: int, classes: tuple[str, ...] = ()) -> DatasetSplits:
    """Scale raw (N, C, H, W) or (N, F) inputs by ``pixel_max`` and carve the seeded,
    stratified validation split out of the training set."""
    tr, va = stratified_split(y_train, val_fraction, seed)
    if len(va) == 0 or len(tr) == 0:
        raise DatasetError(f"{name}: the training set ({len(y_train)} images) is too small "
                           f"for data.val_fraction={val_fraction}")
    splits = DatasetSplits(
        train=_tensors(x_train[tr], y_train[tr], pixel_max),
        val=_tensors(x_train[va], y_train[va], pixel_max),
        test=_tensors(x_test, y_test, pixel_max), num_classes=num_classes,
        input_shape=tuple(int(d) for d in x_train.shape[1:]), name=name, classes=classes)
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
# npz (the user's arrays)
# --------------------------------------------------------------------------

NPZ_MEMBERS = ("x_train", "y_train", "x_test", "y_test")
#: Largest .npz file read, in bytes.
MAX_NPZ_BYTES = 1 << 32
#: Most memory a user's dataset may take once decoded as float32 (every split), in bytes.
MAX_DATASET_BYTES = 1 << 32


def _npz_header(npz, path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of member ``key`` from its .npy header alone (no data is read)."""
    if key not in npz.files:
        raise DatasetError(f"{path}: no member {key!r} (found {', '.join(npz.files) or 'none'}); "
                           f"an npz dataset holds {', '.join(NPZ_MEMBERS)}")
    with npz.zip.open(key + ".npy") as fh:
        version = np.lib.format.read_magic(fh)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy format version {version}")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) \
            else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = read(fh)
    if dtype.hasobject or dtype.fields is not None:
        raise DatasetError(f"{path}: member {key} holds {dtype} values; only plain numeric "
                           f"arrays are read (no objects, no pickles)")
    return tuple(int(d) for d in shape), dtype


def _npz_check_sizes(path: Path, headers: dict) -> None:
    """Refuse, before anything is read, arrays whose headers promise more than the limits."""
    total = sum(math.prod(shape) * max(dtype.itemsize, 4) for shape, dtype in headers.values())
    if total > MAX_DATASET_BYTES:
        sizes = ", ".join(f"{k} {shape}" for k, (shape, _d) in headers.items())
        raise DatasetError(f"{path}: the arrays ({sizes}) need {total} bytes as float32, more "
                           f"than the {MAX_DATASET_BYTES}-byte limit of a dataset")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The four arrays of an npz dataset, each read only after its header was checked."""
    with open_regular(path, MAX_NPZ_BYTES, "data.root", DatasetError) as fh:
        magic, key = fh.read(6), "the file"
        fh.seek(0)
        if not magic.startswith(b"PK"):   # what numpy.savez writes is a zip archive
            what = "a single .npy array" if magic == b"\x93NUMPY" else "not a zip archive"
            raise DatasetError(f"{path}: {what}, not an npz dataset; save one with "
                               f"numpy.savez(path, {'=..., '.join(NPZ_MEMBERS)}=...)")
        try:
            with np.load(fh, allow_pickle=False) as npz:
                headers, arrays = {}, {}
                for key in NPZ_MEMBERS:
                    headers[key] = _npz_header(npz, path, key)
                _npz_check_sizes(path, headers)
                for key in NPZ_MEMBERS:
                    arrays[key] = npz[key]
                return arrays
        except DatasetError:
            raise
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            where = "" if key == "the file" else f" member {key}:"
            raise DatasetError(f"{path}:{where} not a readable npz dataset "
                               f"({type(exc).__name__}: {' '.join(str(exc).split())})") from None


def _check_npz_images(path: Path, x_train: np.ndarray, x_test: np.ndarray) -> float:
    """Both splits (N, C, H, W) or (N, F) of the same sample shape, at least one sample each,
    uint8 or float in [0, 1]; return the pixel maximum (255 or 1)."""
    for key, x in (("x_train", x_train), ("x_test", x_test)):
        if x.ndim not in (2, 4) or len(x) == 0:
            hint = " (grayscale images: add a channel axis, x[:, None])" if x.ndim == 3 else ""
            raise DatasetError(f"{path}: member {key} has shape {x.shape}; expected channel-first "
                               f"images (N, C, H, W) or flat vectors (N, F), N >= 1{hint}")
        if x.ndim == 4 and x.shape[3] in (1, 3, 4) and x.shape[1] > 4:
            raise DatasetError(f"{path}: member {key} has shape {x.shape}, which looks channel-"
                               f"last (N, H, W, C); store it channel-first: x.transpose(0, 3, 1, 2)")
        if x.dtype != np.uint8 and x.dtype.kind != "f":
            raise DatasetError(f"{path}: member {key} is {x.dtype}; expected uint8 pixels (divided "
                               f"by 255) or floats in [0, 1]")
    if x_train.shape[1:] != x_test.shape[1:] or x_train.dtype != x_test.dtype:
        raise DatasetError(f"{path}: x_train {x_train.dtype} {x_train.shape[1:]} and x_test "
                           f"{x_test.dtype} {x_test.shape[1:]} differ in sample shape or dtype")
    if x_train.dtype == np.uint8:
        return 255.0
    for key, x in (("x_train", x_train), ("x_test", x_test)):
        lo, hi = float(np.min(x)), float(np.max(x))
        if not (0.0 <= lo and hi <= 1.0):   # also false for NaN
            raise DatasetError(
                f"{path}: member {key} spans {lo:g}..{hi:g}; float inputs must lie in [0, 1] (the "
                f"chip receives unsigned graded spikes): divide by the pixel maximum, and if they "
                f"were normalised, undo it and set data.mean / data.std instead")
    return 1.0


def _check_npz_labels(path: Path, y_train: np.ndarray, y_test: np.ndarray, n_train: int,
                      n_test: int) -> int:
    """Integer labels 0..K-1, one per sample, every class present in the training split;
    return K."""
    for key, y, n in (("y_train", y_train, n_train), ("y_test", y_test, n_test)):
        if y.shape != (n,) or y.dtype.kind not in "iu":
            raise DatasetError(f"{path}: member {key} is {y.dtype} {y.shape}; expected {n} "
                               f"integer labels (shape ({n},)), one per sample")
        if y.min() < 0:
            raise DatasetError(f"{path}: member {key} holds the label {int(y.min())}; labels are "
                               f"0..K-1")
    k = int(y_train.max()) + 1
    if k < 2 or k > n_train:
        raise DatasetError(f"{path}: y_train's labels run 0..{k - 1} over {n_train} samples; "
                           f"expected K >= 2 classes, every one present in the training split")
    missing = np.flatnonzero(np.bincount(y_train.astype(np.int64), minlength=k) == 0)
    if len(missing):
        raise DatasetError(f"{path}: y_train has no sample of class(es) "
                           f"{', '.join(map(str, missing[:10]))}{' ...' * (len(missing) > 10)}; "
                           f"labels must be 0..K-1 with every class present in the training split")
    if y_test.max() >= k:
        raise DatasetError(f"{path}: y_test holds the label {int(y_test.max())} but y_train's "
                           f"classes are 0..{k - 1}")
    return k


def load_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, int]:
    """``(x_train, y_train, x_test, y_test, pixel_max, num_classes)`` of an npz dataset.

    The file (as ``numpy.savez`` writes it) holds ``x_train, y_train, x_test, y_test``: inputs
    channel-first (N, C, H, W) or flat (N, F), uint8 (pixel_max 255) or float within [0, 1]
    (pixel_max 1); integer labels 0..K-1 with every class in the training split. It is read
    with ``allow_pickle=False``, and each member's shape is checked from its header before
    its data is allocated."""
    path = Path(path).expanduser()
    a = _read_npz(path)
    pixel_max = _check_npz_images(path, a["x_train"], a["x_test"])
    k = _check_npz_labels(path, a["y_train"], a["y_test"], len(a["x_train"]), len(a["x_test"]))
    return (a["x_train"], a["y_train"].astype(np.int64), a["x_test"],
            a["y_test"].astype(np.int64), pixel_max, k)


# --------------------------------------------------------------------------
# folder (one sub-folder of images per class)
# --------------------------------------------------------------------------

FOLDER_SPLITS = ("train", "test")
#: Most images read from a folder dataset (both splits), counted before any is decoded.
MAX_FOLDER_IMAGES = 1 << 20
#: Largest image file read, in bytes, and most pixels one image may declare before decoding.
MAX_IMAGE_FILE_BYTES = 1 << 26
MAX_IMAGE_PIXELS = 1 << 26
#: PIL modes read, 8 bits per channel; the grayscale ones give one channel.
_GRAY_MODES = {"1", "L", "LA", "La"}
_COLOR_MODES = {"P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}


def _visible(d: Path) -> list[Path]:
    """The entries of directory ``d`` not starting with a dot, sorted by name."""
    try:
        return sorted((e for e in d.iterdir() if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        raise DatasetError(f"data.root: cannot list {d}: {exc.strerror or exc}") from None


def _class_names(root: Path, split: str) -> list[str]:
    d = root / split
    if not d.is_dir():
        raise DatasetError(f"data.root {root}: no {split}/ folder; a folder dataset holds "
                           f"train/<class>/ and test/<class>/ sub-folders of images")
    entries = _visible(d)
    stray = [e.name for e in entries if not e.is_dir()]
    if stray or not entries:
        raise DatasetError(f"{d}: expected only class sub-folders, found "
                           f"{'the file ' + stray[0] if stray else 'nothing'}")
    return [e.name for e in entries]


def _image_files(root: Path, classes: list[str]) -> dict[str, list[tuple[Path, int]]]:
    """``{split: [(file, label), ...]}``, counted against :data:`MAX_FOLDER_IMAGES`."""
    found, count = {}, 0
    for split in FOLDER_SPLITS:
        found[split] = []
        for label, name in enumerate(classes):
            files = _visible(root / split / name)
            if not files:
                raise DatasetError(f"{root / split / name}: the class {name!r} has no images")
            count += len(files)
            if count > MAX_FOLDER_IMAGES:
                raise DatasetError(f"data.root {root}: more than {MAX_FOLDER_IMAGES} images; "
                                   f"a folder dataset is capped there (use an npz file)")
            found[split] += [(f, label) for f in files]
    return found


def _decode_image(path: Path, size: int, channels: Optional[int]) -> np.ndarray:
    """One PNG/JPEG file as uint8 (c, size, size), c = ``channels`` or its own (1 or 3):
    size and pixel count checked before decoding, alpha dropped, stretched to a square."""
    from PIL import Image, UnidentifiedImageError
    with open_regular(path, MAX_IMAGE_FILE_BYTES, "image", DatasetError) as fh:
        try:
            with Image.open(fh, formats=["PNG", "JPEG"]) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:
                    raise DatasetError(f"{path}: {im.width}×{im.height} pixels, more than the "
                                       f"{MAX_IMAGE_PIXELS}-pixel limit of one image")
                if im.mode not in _GRAY_MODES | _COLOR_MODES:
                    raise DatasetError(f"{path}: {im.mode} image; only 8-bit grayscale, palette "
                                       f"and colour images are read (convert it to 8 bits)")
                c = channels or (1 if im.mode in _GRAY_MODES else 3)
                im = im.convert("L" if c == 1 else "RGB").resize((size, size), Image.BILINEAR)
                pixels = np.asarray(im, dtype=np.uint8)
        except DatasetError:
            raise
        except UnidentifiedImageError:
            raise DatasetError(f"{path}: not a PNG or JPEG image") from None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise DatasetError(f"{path}: cannot decode the image ({type(exc).__name__}: "
                               f"{' '.join(str(exc).split())})") from None
    return pixels[None] if c == 1 else pixels.transpose(2, 0, 1)


def load_folder(root: str | Path, image_size: int, channels: Optional[int] = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """``(x_train, y_train, x_test, y_test, classes)`` of a folder dataset: ``root/train/<class>/``
    and ``root/test/<class>/`` with the same class names (labels in name order), PNG/JPEG
    images converted to ``channels`` (1: grayscale, 3: RGB, None: 1 if every image is
    grayscale, else 3) and resized to ``image_size``²; uint8 (N, C, size, size)."""
    from importlib.util import find_spec
    if find_spec("PIL") is None:
        raise DatasetError("data.name folder decodes images with Pillow, which is not installed "
                           "(pip install pillow)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"data.root {root} is not a directory holding train/ and test/")
    classes = _class_names(root, "train")
    if _class_names(root, "test") != classes:
        raise DatasetError(f"data.root {root}: train/ has the classes {classes} but test/ has "
                           f"{_class_names(root, 'test')}; both need the same class folders")
    files = _image_files(root, classes)
    need = sum(map(len, files.values())) * (channels or 3) * image_size ** 2 * 4
    if need > MAX_DATASET_BYTES:
        raise DatasetError(f"data.root {root}: {sum(map(len, files.values()))} images of "
                           f"{image_size}² pixels need {need} bytes as float32, more than the "
                           f"{MAX_DATASET_BYTES}-byte limit of a dataset; lower data.image_size")
    decoded = {s: [_decode_image(f, image_size, channels) for f, _ in files[s]] for s in files}
    c = channels or max(x.shape[0] for xs in decoded.values() for x in xs)
    x = {s: np.stack([np.broadcast_to(a, (c, image_size, image_size)) for a in decoded[s]])
         for s in decoded}
    y = {s: np.array([label for _, label in files[s]], dtype=np.int64) for s in files}
    return x["train"], y["train"], x["test"], y["test"], classes


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------

def _from_digits(data_cfg, root: Optional[Path]) -> tuple:
    if root is not None:
        raise DatasetError("digits ships inside scikit-learn: data.root must be null")
    from sklearn.datasets import load_digits
    bunch = load_digits()
    x = bunch.images[:, None, :, :]  # values 0..16
    y = bunch.target.astype(np.int64)
    tr, te = stratified_split(y, DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
    return x[tr], y[tr], x[te], y[te], 16.0, 10, ()


def _from_idx(data_cfg, root: Optional[Path]) -> tuple:
    if root is None:
        if data_cfg.name == "mnist":
            raise DatasetError(
                "mnist has no default location: set data.root to a directory holding "
                f"{', '.join(s + '[.gz]' for s in IDX_FILES.values())}. Nothing is downloaded.")
        root = FASHION_MNIST_DEFAULT_ROOT
    xtr, ytr, xte, yte = load_idx_dataset(root, data_cfg.name)
    return xtr[:, None], ytr, xte[:, None], yte, 255.0, 10, ()


def _from_cifar(data_cfg, root: Optional[Path]) -> tuple:
    if root is None:
        raise DatasetError(
            "cifar10 has no default location: set data.root to the directory holding "
            "cifar-10-batches-py (data_batch_1..5, test_batch). Nothing is downloaded.")
    return (*load_cifar10(root), 255.0, 10, ())


def _from_npz(data_cfg, root: Optional[Path]) -> tuple:
    if root is None:
        raise DatasetError("data.name npz reads one .npz file: set data.root to it")
    return (*load_npz(root), ())


def _from_folder(data_cfg, root: Optional[Path]) -> tuple:
    if root is None:
        raise DatasetError("data.name folder reads a directory holding train/<class>/ and "
                           "test/<class>/: set data.root to it")
    xtr, ytr, xte, yte, classes = load_folder(root, data_cfg.image_size, data_cfg.channels)
    return xtr, ytr, xte, yte, 255.0, len(classes), tuple(classes)


_SOURCES = {"digits": _from_digits, "fashion-mnist": _from_idx, "mnist": _from_idx,
            "cifar10": _from_cifar, "npz": _from_npz, "folder": _from_folder}


def _check_normalization(data_cfg, shape: tuple[int, ...]) -> None:
    """data.mean / data.std hold one value per input channel ((C, H, W)), or a number of
    values that divides the features ((F,): one per feature, or per equal block)."""
    mean = getattr(data_cfg, "mean", None)
    if mean is None:
        return
    if len(shape) == 3 and len(mean) != shape[0]:
        raise DatasetError(f"data.mean and data.std have {len(mean)} values but the images have "
                           f"{shape[0]} channel(s): give one value per channel")
    if len(shape) == 1 and shape[0] % len(mean):
        raise DatasetError(f"data.mean and data.std have {len(mean)} values, which do not divide "
                           f"the {shape[0]} input features: give 1, one per feature, or one per "
                           f"equal block of features")


def load_dataset(data_cfg, seed: int) -> DatasetSplits:
    """Load ``data_cfg.name`` from ``data_cfg.root`` (or its default location)
    and split it; ``seed`` (``train.seed``) seeds the validation split."""
    if data_cfg.name not in _SOURCES:
        raise DatasetError(f"unknown dataset {data_cfg.name!r}")
    root: Optional[Path] = Path(data_cfg.root).expanduser() if data_cfg.root else None
    xtr, ytr, xte, yte, pixel_max, k, classes = _SOURCES[data_cfg.name](data_cfg, root)
    _check_normalization(data_cfg, xtr.shape[1:])
    return _make_splits(data_cfg.name, xtr, ytr, xte, yte, pixel_max, k, data_cfg.val_fraction,
                        seed, classes)


# --------------------------------------------------------------------------
# Training augmentation
# --------------------------------------------------------------------------

#: Datasets whose classes survive a horizontal flip (a flipped digit is not a digit; a user's
#: classes may not either).
FLIP_SAFE = {"digits": False, "mnist": False, "fashion-mnist": True, "cifar10": True,
             "npz": False, "folder": False}


def augment_batch(x: torch.Tensor, dataset: str, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding (pad = H // 8: 4 px on 32×32, 3 on 28×28, 1 on 8×8)
    and, where :data:`FLIP_SAFE` allows it, a horizontal flip with probability 1/2.

    ``x``: (B, C, H, W) on any device; the random draws come from ``generator`` (CPU)
    so a run is reproducible from ``train.seed``. Flat vectors (B, F) are refused."""
    if x.dim() != 4:
        raise DatasetError(f"train.augment crops images, but the {dataset} inputs are flat "
                           f"vectors {tuple(x.shape[1:])}: set train.augment: false")
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
