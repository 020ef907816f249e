"""Datasets: digits splits, the IDX reader on tiny fixtures, the safe CIFAR
reader, and clear errors for missing/malformed files."""
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from hardware.errors import ToolkitError
from pipeline.config import Config
from pipeline.data import (FASHION_MNIST_DEFAULT_ROOT, DatasetError, load_dataset, read_idx,
                           stratified_split)
from tests.cost import time_and_peak as fast_and_small


def data_cfg(**kw):
    return Config.from_dict({"data": kw}).data


# ------------------------------------------------------------------ digits

@pytest.fixture(scope="module")
def digits():
    return load_dataset(data_cfg(), seed=0)


def test_digits_shapes_types_and_range(digits):
    assert digits.name == "digits" and digits.num_classes == 10
    assert digits.input_shape == (1, 8, 8)
    n = 0
    for part in (digits.train, digits.val, digits.test):
        x, y = part.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (1, 8, 8) and x.shape[0] == y.shape[0]
        assert x.min() >= 0 and x.max() <= 1
        # values are k/16 exactly (no normalisation beyond scaling)
        assert torch.equal(x * 16, torch.round(x * 16))
        n += len(y)
    assert n == 1797
    assert len(digits.test) == round(0.2 * 1797) or abs(len(digits.test) - 0.2 * 1797) < 10
    assert abs(len(digits.val) - 0.1 * (1797 - len(digits.test))) < 10


def test_digits_split_is_a_partition(digits):
    from sklearn.datasets import load_digits
    b = load_digits()
    full = sorted((img.astype(np.float32) / 16).tobytes() + bytes([lab])
                  for img, lab in zip(b.images, b.target))
    parts = sorted(x.numpy().tobytes() + bytes([int(lab)])
                   for part in (digits.train, digits.val, digits.test)
                   for x, lab in zip(*part.tensors))
    assert parts == full  # same multiset: nothing lost, nothing duplicated


def test_digits_seeded_and_reproducible(digits):
    again = load_dataset(data_cfg(), seed=0)
    other = load_dataset(data_cfg(), seed=1)
    for a, b in zip(digits.train.tensors + digits.val.tensors,
                    again.train.tensors + again.val.tensors):
        assert torch.equal(a, b)
    assert not torch.equal(digits.val.tensors[0], other.val.tensors[0])
    # the test set does not depend on the training seed
    assert torch.equal(digits.test.tensors[0], other.test.tensors[0])


def test_stratified_split_indices():
    labels = np.repeat(np.arange(5), [10, 20, 30, 40, 7])
    keep, held = stratified_split(labels, 0.1, seed=3)
    assert len(np.intersect1d(keep, held)) == 0
    assert np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(len(labels)))
    assert np.bincount(labels[held]).tolist() == [1, 2, 3, 4, 1]
    k2, h2 = stratified_split(labels, 0.1, seed=3)
    assert np.array_equal(held, h2) and np.array_equal(keep, k2)


# ------------------------------------------------------------------ IDX

def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    return struct.pack(">BBBB", 0, 0, code, arr.ndim) + \
        struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(">u1").tobytes()


def write_idx_dir(root: Path, n_train=40, n_test=10, hw=(5, 4), gz=True, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, *hw), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, *hw), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 10,
    }
    for name, arr in arrays.items():
        raw = idx_bytes(arr)
        if gz:
            (root / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (root / name).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_directory_loads_as_mnist(tmp_path, gz):
    arrays = write_idx_dir(tmp_path / "mnist", gz=gz)
    s = load_dataset(data_cfg(name="mnist", root=str(tmp_path / "mnist"), val_fraction=0.25),
                     seed=0)
    assert s.input_shape == (1, 5, 4) and s.num_classes == 10 and s.name == "mnist"
    assert len(s.train) == 30 and len(s.val) == 10 and len(s.test) == 10
    xt, yt = s.test.tensors
    assert torch.equal(xt, torch.from_numpy(arrays["t10k-images-idx3-ubyte"][:, None]
                                            .astype(np.float32) / 255))
    assert yt.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert np.bincount(s.val.tensors[1].numpy()).tolist() == [1] * 10  # stratified


def test_read_idx_round_trip_and_other_dtypes(tmp_path):
    a = np.arange(24, dtype=">i2").reshape(2, 3, 4)
    p = tmp_path / "x.idx"
    p.write_bytes(struct.pack(">BBBB", 0, 0, 0x0B, 3) + struct.pack(">3I", 2, 3, 4) + a.tobytes())
    out = read_idx(p)
    assert out.shape == (2, 3, 4) and np.array_equal(out, a.astype(np.int16))


def test_truncated_idx_is_a_clear_error(tmp_path):
    write_idx_dir(tmp_path, gz=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-7])
    with pytest.raises(DatasetError, match="truncated") as ei:
        load_dataset(data_cfg(name="mnist", root=str(tmp_path)), seed=0)
    assert str(p) in str(ei.value)


@pytest.mark.parametrize("payload, needle", [
    (b"", "not an IDX"),
    (b"\x01\x02\x08\x01", "not an IDX"),
    (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
    (struct.pack(">BBBBI", 0, 0, 8, 1, 3) + b"\x01\x02\x03\x04", "too long"),
    (b"\x1f\x8b\x08garbage", "cannot read"),
])
def test_malformed_idx_files(tmp_path, payload, needle):
    p = tmp_path / "bad"
    p.write_bytes(payload)
    with pytest.raises(DatasetError, match=needle):
        read_idx(p)


def test_label_count_mismatch(tmp_path):
    write_idx_dir(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(DatasetError, match="expected 10 integer labels"):
        load_dataset(data_cfg(name="mnist", root=str(tmp_path)), seed=0)


def test_missing_mnist_says_where_what_and_how(tmp_path):
    with pytest.raises(DatasetError) as ei:
        load_dataset(data_cfg(name="mnist", root=str(tmp_path)), seed=0)
    msg = str(ei.value)
    assert str(tmp_path) in msg
    for stem in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert stem in msg
    assert "data.root" in msg and "Nothing is downloaded" in msg
    assert isinstance(ei.value, ToolkitError)


def test_mnist_without_root_is_a_clear_error():
    with pytest.raises(DatasetError, match="data.root"):
        load_dataset(data_cfg(name="mnist"), seed=0)


def test_missing_fashion_mnist_names_the_debian_package(tmp_path):
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(data_cfg(name="fashion-mnist", root=str(tmp_path)), seed=0)


@pytest.mark.skipif(not FASHION_MNIST_DEFAULT_ROOT.is_dir(),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_from_the_debian_package():
    s = load_dataset(data_cfg(name="fashion-mnist"), seed=0)
    assert s.input_shape == (1, 28, 28)
    assert (len(s.train), len(s.val), len(s.test)) == (54000, 6000, 10000)
    assert s.test.tensors[1].bincount().tolist() == [1000] * 10
    assert s.val.tensors[1].bincount().tolist() == [600] * 10
    x = s.train.tensors[0]
    assert x.dtype == torch.float32 and x.min() == 0 and x.max() == 1


# ------------------------------------------------------------------ CIFAR-10

def write_cifar(root: Path, n=20, protocol=2, str_keys=False):
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [i % 10 for i in range(n)]
        k = (lambda s: s) if str_keys else (lambda s: s.encode())
        obj = {k("batch_label"): b"batch", k("data"): data, k("labels"): labels,
               k("filenames"): [b"f.png"] * n}
        (base / name).write_bytes(pickle.dumps(obj, protocol=protocol))
        batches[name] = (data, labels)
    return batches


@pytest.mark.parametrize("protocol, str_keys", [(2, False), (4, True), (5, False)])
def test_cifar10_tiny_batches(tmp_path, protocol, str_keys):
    batches = write_cifar(tmp_path, protocol=protocol, str_keys=str_keys)
    s = load_dataset(data_cfg(name="cifar10", root=str(tmp_path)), seed=0)
    assert s.input_shape == (3, 32, 32) and s.num_classes == 10
    assert len(s.train) + len(s.val) == 100 and len(s.test) == 20
    data, labels = batches["test_batch"]
    x, y = s.test.tensors
    assert torch.equal(x, torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32) / 255))
    assert y.tolist() == labels


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os
        return (os.mkdir, (self.path,))


def test_cifar10_refuses_pickles_with_foreign_globals(tmp_path):
    write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(pickle.dumps({b"data": _Evil(str(marker)), b"labels": []}, protocol=2))
    with pytest.raises(DatasetError, match="refusing to load global") as ei:
        load_dataset(data_cfg(name="cifar10", root=str(tmp_path)), seed=0)
    assert str(bad) in str(ei.value)
    assert not marker.exists()  # the payload never ran


def test_cifar10_missing_and_malformed(tmp_path):
    with pytest.raises(DatasetError, match="data_batch_1"):
        load_dataset(data_cfg(name="cifar10", root=str(tmp_path)), seed=0)
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x02}q")
    with pytest.raises(DatasetError, match="malformed"):
        load_dataset(data_cfg(name="cifar10", root=str(tmp_path)), seed=0)


def test_augmentation_crops_flips_only_where_allowed_and_is_seeded():
    import torch

    from pipeline.data import augment_batch

    x = torch.rand(64, 1, 28, 28)
    a = augment_batch(x, "fashion-mnist", torch.Generator().manual_seed(3))
    b = augment_batch(x, "fashion-mnist", torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, b)          # reproducible from the seed
    assert not torch.equal(a, x)
    pad = 28 // 8
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    flipped = 0
    for img, src in zip(a, padded):
        # every output is a 28×28 window of the zero-padded input, mirrored or not
        windows = [src[:, i:i + 28, j:j + 28] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]
        plain = any(torch.equal(img, w) for w in windows)
        mirrored = any(torch.equal(img, w.flip(-1)) for w in windows)
        assert plain or mirrored
        flipped += mirrored and not plain
    assert 10 < flipped < 54
    # digits: a mirrored digit is another symbol, so no flip
    d = augment_batch(torch.rand(32, 1, 8, 8), "digits", torch.Generator().manual_seed(0))
    assert d.shape == (32, 1, 8, 8)
    src = torch.rand(32, 1, 8, 8)
    d = augment_batch(src, "digits", torch.Generator().manual_seed(1))
    pd = torch.nn.functional.pad(src, (1,) * 4)
    for img, p in zip(d, pd):
        assert any(torch.equal(img, p[:, i:i + 8, j:j + 8]) for i in range(3) for j in range(3))


# ------------------------------------------------------------------ hostile IDX files

def idx_header(code: int, shape) -> bytes:
    return struct.pack(">BBBB", 0, 0, code, len(shape)) + struct.pack(f">{len(shape)}I", *shape)


def refused_read(p, match=None) -> tuple[str, float, int]:
    """read_idx(p) must raise DatasetError: (its message, seconds, peak bytes) of the refusal."""
    box = {}

    def read():
        with pytest.raises(DatasetError, match=match) as ei:
            read_idx(p)
        box["msg"] = str(ei.value)

    elapsed, peak = fast_and_small(read)
    return box["msg"], elapsed, peak


@pytest.mark.parametrize("shape", [(10**6, 10**4, 10**4), (2**32 - 1,) * 3, (2**32 - 1,) * 8])
@pytest.mark.parametrize("gz", [False, True])
def test_absurd_idx_header_is_refused_before_reading(tmp_path, shape, gz):
    p = tmp_path / "train-images-idx3-ubyte"
    raw = idx_header(0x08, shape) + b"\x00" * 64
    p.write_bytes(gzip.compress(raw) if gz else raw)
    msg, elapsed, peak = refused_read(p)
    assert str(p) in msg and "limit" in msg
    assert elapsed < 0.5 and peak < 1 << 20, (elapsed, peak)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_header_larger_than_the_file_is_truncated_not_allocated(tmp_path, gz):
    p = tmp_path / "x"
    raw = idx_header(0x08, (300_000, 28, 28)) + b"\x01" * 10   # claims 235 MB, holds 10 bytes
    p.write_bytes(gzip.compress(raw) if gz else raw)
    msg, _, peak = refused_read(p, match="truncated")
    assert str(p) in msg and peak < 8 << 20, peak


def test_gzip_bomb_is_not_decompressed_beyond_the_declared_size(tmp_path):
    # first gzip member: a valid header and payload for 10 images of 8x8; then 300 members of
    # 1 MiB of zeros each (a 300 MiB stream in a file of a few hundred kB)
    zeros = gzip.compress(b"\x00" * (1 << 20), compresslevel=9)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(idx_header(0x08, (10, 8, 8)) + b"\x07" * 640) + zeros * 300)
    assert p.stat().st_size < 1 << 20
    msg, elapsed, peak = refused_read(p)
    assert "too long" in msg and str(p) in msg
    assert elapsed < 1.0 and peak < 8 << 20, (elapsed, peak)


def test_zero_byte_bomb_without_header_fails_at_the_magic(tmp_path):
    p = tmp_path / "bomb.gz"
    p.write_bytes(gzip.compress(b"\x00" * (1 << 20)) * 100)
    elapsed, _ = fast_and_small(lambda: pytest.raises(DatasetError, read_idx, p))
    assert elapsed < 1.0


def _mnist_dir_with(tmp_path, name, payload):
    write_idx_dir(tmp_path, gz=False, hw=(8, 8))
    (tmp_path / name).write_bytes(payload)
    return tmp_path / name


@pytest.mark.parametrize("name, payload, needle", [
    ("t10k-images-idx3-ubyte", idx_header(0x08, (0, 8, 8)), "no images"),
    ("train-images-idx3-ubyte", idx_header(0x08, (0, 8, 8)), "no images"),
    ("train-images-idx3-ubyte", idx_header(0x08, (40, 2, 2)) + bytes(160), "2×2 pixels"),
    ("train-images-idx3-ubyte", idx_header(0x08, (40, 8, 3)) + bytes(960), "8×3 pixels"),
    ("train-images-idx3-ubyte", idx_header(0x0D, (40, 8, 8)) + bytes(40 * 64 * 4), "uint8 images"),
    ("train-images-idx3-ubyte", idx_header(0x08, (40, 64)) + bytes(40 * 64), "uint8 images"),
    ("train-labels-idx1-ubyte", idx_header(0x0D, (40,)) + bytes(160), "integer labels"),
    ("train-labels-idx1-ubyte", idx_header(0x08, (40,)) + bytes([12] * 40), "0..9"),
    ("train-labels-idx1-ubyte", b"\x00\x00\x07\x01" + bytes(44), "not an IDX"),
    ("train-labels-idx1-ubyte", gzip.compress(idx_header(0x08, (40,)) + bytes(40))[:-9],
     "cannot read IDX"),
])
def test_bad_idx_dataset_files_name_the_file(tmp_path, name, payload, needle):
    bad = _mnist_dir_with(tmp_path, name, payload)
    with pytest.raises(DatasetError) as ei:
        load_dataset(data_cfg(name="mnist", root=str(tmp_path)), seed=0)
    msg = str(ei.value)
    assert needle in msg and str(bad) in msg and "\n" not in msg, msg


def test_idx_path_that_is_a_directory(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(DatasetError, match="not a regular file"):
        read_idx(tmp_path / "d")


def test_oversized_cifar_batch_is_refused_by_size(tmp_path):
    write_cifar(tmp_path)
    big = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    with big.open("r+b") as fh:   # sparse: nothing is written, the size is what is checked
        fh.truncate(1 << 30)
    with pytest.raises(DatasetError, match="limit") as ei:
        load_dataset(data_cfg(name="cifar10", root=str(tmp_path)), seed=0)
    assert str(big) in str(ei.value)


# ------------------------------------------------------------------ architecture vs. input shape

def test_feature_map_shapes_without_building():
    from models.architectures import feature_map_shapes, min_input_side

    assert feature_map_shapes("cnn-small", (1, 8, 8)) == [
        (16, 8, 8), (32, 8, 8), (32, 4, 4), (32, 4, 4), (32, 2, 2)]
    assert feature_map_shapes("vgg-small", (1, 28, 28))[-1] == (128, 3, 3)
    assert (min_input_side("cnn-small"), min_input_side("vgg-small"),
            min_input_side("vgg16")) == (4, 8, 32)


@pytest.mark.parametrize("arch, shape", [("vgg16", (1, 8, 8)), ("vgg16", (3, 31, 32)),
                                         ("vgg-small", (1, 7, 28)), ("cnn-small", (1, 2, 2))])
def test_arch_too_deep_for_the_input_is_refused_before_building(monkeypatch, arch, shape):
    from models import architectures

    def no_layers(*_a, **_k):
        raise AssertionError("a layer was built before the shape check")

    monkeypatch.setattr(architectures.nn, "Conv2d", no_layers)
    monkeypatch.setattr(architectures.nn, "Linear", no_layers)
    with pytest.raises(architectures.ArchitectureError) as ei:
        architectures.build_model(arch, shape, 10, 4)
    msg = str(ei.value)
    assert f"model.arch {arch}" in msg and str(shape) in msg and "\n" not in msg
    assert isinstance(ei.value, ToolkitError)


@pytest.mark.parametrize("arch, shape, needle", [("resnet", (1, 8, 8), "unknown architecture"),
                                                 ("cnn-small", (8, 8), "(channels, height"),
                                                 ("cnn-small", (1, 8.5, 8), "positive integers"),
                                                 ("cnn-small", (0, 8, 8), "positive integers")])
def test_bad_arch_or_shape(arch, shape, needle):
    from models.architectures import ArchitectureError, build_model

    with pytest.raises(ArchitectureError, match=needle.replace("(", r"\(")):
        build_model(arch, shape, 10, 4)


def test_smallest_accepted_inputs_build():
    from models.architectures import build_model

    assert build_model("cnn-small", (1, 4, 4), 10, 4)[-1].in_features == 32
    assert build_model("vgg-small", (1, 8, 8), 10, 4)[-1].in_features == 256


# ------------------------------------------------------------------ npz (the user's arrays)

def npz_arrays(n_train=40, n_test=12, shape=(3, 6, 6), k=4, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    def x(n):
        return (rng.integers(0, 256, (n, *shape), dtype=np.uint8) if dtype == np.uint8
                else rng.random((n, *shape)).astype(dtype))
    return {"x_train": x(n_train), "y_train": np.arange(n_train) % k,
            "x_test": x(n_test), "y_test": np.arange(n_test) % k}


def write_npz(path, compressed=False, **arrays):
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return str(path)


@pytest.mark.parametrize("shape, dtype, compressed", [
    ((3, 6, 6), np.uint8, False), ((1, 5, 7), np.float32, True), ((10,), np.float64, False)])
def test_npz_loads_images_or_flat_vectors(tmp_path, shape, dtype, compressed):
    a = npz_arrays(shape=shape, dtype=dtype)
    d = load_dataset(data_cfg(name="npz", root=write_npz(tmp_path / "d.npz", compressed, **a)), seed=0)
    assert d.name == "npz" and d.num_classes == 4 and d.input_shape == shape
    x, y = d.train.tensors
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and 0 <= x.min() and x.max() <= 1
    assert len(d.train) + len(d.val) == 40 and len(d.test) == 12
    assert np.bincount(d.val.tensors[1].numpy()).tolist() == [1, 1, 1, 1]   # stratified
    scale = 255 if dtype == np.uint8 else 1
    want = torch.from_numpy(a["x_test"].astype(np.float32) / scale)
    torch.testing.assert_close(d.test.tensors[0], want, rtol=0, atol=0)


def _npz_with(**changes):
    def make(tmp_path):
        a = npz_arrays()
        a.update(changes)
        return write_npz(tmp_path / "bad.npz", **{k: v for k, v in a.items() if v is not None})
    return make


def _raw_file(data: bytes):
    def make(tmp_path):
        (tmp_path / "bad.npz").write_bytes(data)
        return str(tmp_path / "bad.npz")
    return make


def _single_npy(tmp_path):
    np.save(tmp_path / "bad.npz", np.zeros(3))
    (tmp_path / "bad.npz.npy").rename(tmp_path / "bad.npz")
    return str(tmp_path / "bad.npz")


BAD_NPZ = {
    "missing-member": (_npz_with(y_test=None), "y_test"),
    "object-array": (_npz_with(y_train=np.array([1, "a"] * 20, dtype=object)), "y_train"),
    "three-dims": (_npz_with(x_train=np.zeros((40, 6, 6), np.uint8)), "channel axis"),
    "channel-last": (_npz_with(x_train=np.zeros((40, 6, 6, 3), np.uint8),
                               x_test=np.zeros((12, 6, 6, 3), np.uint8)), "channel-last"),
    "int16-pixels": (_npz_with(x_train=np.zeros((40, 3, 6, 6), np.int16)), "int16"),
    "float-beyond-1": (_npz_with(x_train=np.full((40, 3, 6, 6), 2.5, np.float32),
                                 x_test=np.zeros((12, 3, 6, 6), np.float32)), r"\[0, 1\]"),
    "float-nan": (_npz_with(x_train=np.full((40, 3, 6, 6), np.nan, np.float32),
                            x_test=np.zeros((12, 3, 6, 6), np.float32)), r"\[0, 1\]"),
    "shape-mismatch": (_npz_with(x_test=np.zeros((12, 3, 5, 5), np.uint8)), "differ"),
    "no-samples": (_npz_with(x_test=np.zeros((0, 3, 6, 6), np.uint8)), "x_test"),
    "float-labels": (_npz_with(y_train=np.zeros(40, np.float32)), "integer labels"),
    "label-count": (_npz_with(y_train=np.arange(39) % 4), "y_train"),
    "negative-label": (_npz_with(y_test=-np.ones(12, np.int64)), "y_test"),
    "class-missing": (_npz_with(y_train=np.array([0, 1, 3] * 13 + [0])), "class\\(es\\) 2"),
    "one-class": (_npz_with(y_train=np.zeros(40, np.int64)), "K >= 2"),
    "huge-label": (_npz_with(y_train=np.array([0] * 39 + [2**62])), "every one present"),
    "test-label-unknown": (_npz_with(y_test=np.full(12, 4)), "0..3"),
    "not-a-zip": (_raw_file(b"hello, not an archive"), "not a zip archive"),
    "truncated": (lambda p: _raw_file(Path(write_npz(p / "ok.npz", **npz_arrays())).read_bytes()[:-300])(p),
                  "bad.npz"),
    "single-npy": (_single_npy, "single .npy"),
}


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_bad_npz_is_a_one_line_error_naming_file_and_member(tmp_path, case):
    make, needle = BAD_NPZ[case]
    with pytest.raises(DatasetError, match=needle) as info:
        load_dataset(data_cfg(name="npz", root=make(tmp_path)), seed=0)
    assert "bad.npz" in str(info.value) and "\n" not in str(info.value)


def test_absurd_npz_header_is_refused_before_allocation(tmp_path):
    import io
    import zipfile
    arrays = npz_arrays()
    p = tmp_path / "bad.npz"
    with zipfile.ZipFile(p, "w") as z:
        for key, a in arrays.items():
            buf = io.BytesIO()
            if key == "x_train":   # a header promising 3 TB, then 16 bytes
                np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False,
                                                           "shape": (10**6, 3, 1000, 1000)})
                buf.write(bytes(16))
            else:
                np.lib.format.write_array(buf, a)
            z.writestr(key + ".npy", buf.getvalue())
    box = {}

    def read():
        with pytest.raises(DatasetError, match="x_train") as ei:
            load_dataset(data_cfg(name="npz", root=str(p)), seed=0)
        box["msg"] = str(ei.value)
    elapsed, peak = fast_and_small(read)
    assert "limit" in box["msg"] and elapsed < 1 and peak < 10 << 20


def test_npz_mean_std_must_fit_the_channels(tmp_path):
    root = write_npz(tmp_path / "d.npz", **npz_arrays())
    with pytest.raises(DatasetError, match="3 channel"):
        load_dataset(data_cfg(name="npz", root=root, mean=[0.5], std=[0.2]), seed=0)
    d = load_dataset(data_cfg(name="npz", root=root, mean=[0.5] * 3, std=[0.2] * 3), seed=0)
    assert d.train.tensors[0].max() <= 1   # the data stay [0, 1]: the fold is the model's


def test_augmentation_refuses_flat_vectors():
    from pipeline.data import augment_batch
    with pytest.raises(DatasetError, match="train.augment"):
        augment_batch(torch.rand(4, 10), "npz", torch.Generator())


# ------------------------------------------------------------------ folder (images per class)

def write_folder(root: Path, classes=("cat", "dog", "ant"), n=(6, 2), modes=("L",), size=(9, 7)):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "test"), n):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                mode = modes[i % len(modes)]
                shape = size[::-1] + ((3,) if mode == "RGB" else ())
                img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
                img.save(root / split / c / f"{i}.{'jpg' if i % 2 else 'png'}")
    return str(root)


@pytest.mark.parametrize("modes, channels, want_c", [
    (("L",), None, 1), (("L", "RGB"), None, 3), (("RGB",), 1, 1), (("L",), 3, 3)])
def test_folder_loads_sorted_classes_resized(tmp_path, modes, channels, want_c):
    root = write_folder(tmp_path, modes=modes)
    d = load_dataset(data_cfg(name="folder", root=root, image_size=5, channels=channels), seed=0)
    assert d.classes == ("ant", "cat", "dog") and d.num_classes == 3
    assert d.input_shape == (want_c, 5, 5) and len(d.test) == 6 and len(d.train) + len(d.val) == 18
    assert d.test.tensors[1].tolist() == [0, 0, 1, 1, 2, 2]
    x = d.train.tensors[0]
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.equal(x * 255, torch.round(x * 255))


def _folder_plant(fn):
    def make(tmp_path, monkeypatch):
        root = Path(write_folder(tmp_path / "data"))
        fn(root, monkeypatch)
        return str(root)
    return make


def _write(rel, data):
    return _folder_plant(lambda root, mp: (root / rel).write_bytes(data))


def _rmtree(rel):
    import shutil
    return _folder_plant(lambda root, mp: shutil.rmtree(root / rel))


def _sixteen_bit(root, mp):
    from PIL import Image
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(root / "train" / "ant" / "deep.png")


BAD_FOLDER = {
    "no-test": (_rmtree("test"), "no test/"),
    "class-mismatch": (_folder_plant(lambda root, mp: (root / "test" / "cat").rename(
        root / "test" / "cow")), "same class"),
    "empty-class": (_folder_plant(lambda root, mp: [f.unlink() for f in (root / "test" / "dog").iterdir()]),
                    "no images"),
    "not-an-image": (_write("train/cat/notes.txt", b"just text"), "not a PNG or JPEG"),
    "truncated-png": (_folder_plant(lambda root, mp: (root / "train/cat/0.png").write_bytes(
        (root / "train/cat/0.png").read_bytes()[:40])), "0.png"),
    "stray-file": (_write("train/README", b"hi"), "README"),
    "sixteen-bit": (_folder_plant(_sixteen_bit), "8-bit"),
    "file-too-large": (_folder_plant(lambda root, mp: mp.setattr("pipeline.data.MAX_IMAGE_FILE_BYTES", 60)),
                       "limit"),
    "too-many-pixels": (_folder_plant(lambda root, mp: mp.setattr("pipeline.data.MAX_IMAGE_PIXELS", 62)),
                        "pixel limit"),
    "too-many-images": (_folder_plant(lambda root, mp: mp.setattr("pipeline.data.MAX_FOLDER_IMAGES", 10)),
                        "more than 10 images"),
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDER))
def test_bad_folder_is_a_one_line_error_naming_the_file(tmp_path, monkeypatch, case):
    make, needle = BAD_FOLDER[case]
    root = make(tmp_path, monkeypatch)
    with pytest.raises(DatasetError, match=needle) as info:
        load_dataset(data_cfg(name="folder", root=root, image_size=4), seed=0)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)
