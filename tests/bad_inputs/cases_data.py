"""Bad datasets: IDX files (MNIST format) that are empty, foreign, truncated, absurdly
sized, gzip bombs or too small for the network; a hostile CIFAR-10 pickle; data.root
pointing nowhere useful; the user's npz files and image folders that are malformed,
hostile or absurdly sized. Stage: ``train`` (the dataset is read before any work)."""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import yaml

from . import Case, default_run
from .base import Workspace, _OpenMarker, gzip_bomb, idx_bytes, tiny_idx_arrays

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)


def idx_dir(ws: Workspace) -> Path:
    return ws.inputs / "mnist"


def write(name: str, make: Callable[[Workspace], bytes]) -> Callable[[Workspace], Sequence[str]]:
    def plant(ws: Workspace) -> Sequence[str]:
        (idx_dir(ws) / name).write_bytes(make(ws))
        return ()
    return plant


def images(n: int, side: int = 28, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side), dtype=np.uint8)


def labels(n: int) -> np.ndarray:
    return (np.arange(n) % 10).astype(np.uint8)


def _case(id_, plant, needles=(), **kw) -> Case:
    return Case(id=f"dataset-{id_}", owner="D", stage="train", plant=plant, base="idx",
                needles=needles, **kw)


def idx_cases() -> list[Case]:
    c = []
    for name in FILES:
        c += [
            _case(f"{name}-empty", write(name, lambda ws: b""), needles=(name,)),
            _case(f"{name}-wrong-magic", write(name, lambda ws: b"\x12\x34\x08\x03" + bytes(64)),
                  needles=(name,)),
            _case(f"{name}-truncated", write(name, lambda ws, n=name: (idx_dir(ws) / n).read_bytes()[:-7]),
                  needles=(name,)),
            _case(f"{name}-is-directory", _replace_with_dir(name), needles=(("mnist", name),)),
        ]
    c += [
        _case("zero-train-images", _pair(TRAIN_IMAGES, images(0), TRAIN_LABELS, labels(0)),
              needles=(("train", "image"),)),
        _case("zero-test-images", _pair(TEST_IMAGES, images(0), TEST_LABELS, labels(0)),
              needles=(("t10k", "test"),)),
        _case("absurd-count", write(TRAIN_IMAGES, lambda ws: idx_bytes(images(2), dims=(2 ** 32 - 1, 28, 28))),
              needles=(TRAIN_IMAGES,), bomb=True),
        _case("absurd-side", write(TRAIN_IMAGES, lambda ws: idx_bytes(images(2), dims=(2, 2 ** 31, 2 ** 31))),
              needles=(TRAIN_IMAGES,), bomb=True),
        _case("ndim-255", write(TRAIN_IMAGES, lambda ws: bytes([0, 0, 8, 255]) + bytes(64)),
              needles=(TRAIN_IMAGES,)),
        _case("ndim-0", write(TRAIN_IMAGES, lambda ws: bytes([0, 0, 8, 0]) + bytes(16)),
              needles=(TRAIN_IMAGES,)),
        _case("float-images", write(TRAIN_IMAGES, lambda ws: idx_bytes(
            images(200).astype(">f4"), type_code=0x0D)), needles=(TRAIN_IMAGES,)),
        _case("labels-out-of-range", write(TRAIN_LABELS, lambda ws: idx_bytes(np.full(200, 10, np.uint8))),
              needles=(TRAIN_LABELS,)),
        _case("labels-255", write(TEST_LABELS, lambda ws: idx_bytes(np.full(50, 255, np.uint8))),
              needles=(TEST_LABELS,)),
        _case("labels-count-mismatch", write(TRAIN_LABELS, lambda ws: idx_bytes(labels(199))),
              needles=(TRAIN_LABELS,)),
        _case("labels-2d", write(TRAIN_LABELS, lambda ws: idx_bytes(labels(200).reshape(20, 10))),
              needles=(TRAIN_LABELS,)),
        _case("train-test-size-mismatch", write(TEST_IMAGES, lambda ws: idx_bytes(images(50, side=20))),
              needles=(("differ", "size", TEST_IMAGES),)),
        _case("images-2x2", _small_images(2), needles=(("2", "small"),)),
        _case("images-1x1", _small_images(1), needles=(("1", "small"),)),
        _case("too-few-images", _pair(TRAIN_IMAGES, images(3), TRAIN_LABELS, labels(3)),
              needles=(("small", "few"),)),
        _case("too-long-payload", write(TRAIN_LABELS, lambda ws: idx_bytes(labels(200)) + b"\0" * 9),
              needles=(TRAIN_LABELS,)),
        _case("gzip-bomb", _gzip_bomb(), needles=(TRAIN_IMAGES,), bomb=True, timeout=60),
        _case("gzip-truncated", _gzip_truncated(), needles=(TRAIN_IMAGES,)),
        _case("gzip-garbage", _gzip_garbage(), needles=(TRAIN_IMAGES,)),
        _case("symlink-loop", _symlink_loop(TRAIN_IMAGES), needles=(TRAIN_IMAGES,)),
        _case("dev-zero", _symlink_to(TRAIN_IMAGES, "/dev/zero"), needles=(TRAIN_IMAGES,),
              bomb=True, timeout=30),
        _case("fifo", _fifo(TRAIN_IMAGES), needles=(TRAIN_IMAGES,), timeout=20),
    ]
    return c


def _pair(img_name, img, lab_name, lab):
    def plant(ws: Workspace) -> Sequence[str]:
        (idx_dir(ws) / img_name).write_bytes(idx_bytes(img))
        (idx_dir(ws) / lab_name).write_bytes(idx_bytes(lab))
        return ()
    return plant


def _small_images(side: int):
    def plant(ws: Workspace) -> Sequence[str]:
        for name, array in tiny_idx_arrays(side=side).items():
            (idx_dir(ws) / name).write_bytes(idx_bytes(array))
        return ("model.arch=auto",)
    return plant


def _replace_with_dir(name: str):
    def plant(ws: Workspace) -> Sequence[str]:
        (idx_dir(ws) / name).unlink()
        (idx_dir(ws) / name).mkdir()
        return ()
    return plant


def _symlink_loop(name: str):
    def plant(ws: Workspace) -> Sequence[str]:
        d = idx_dir(ws)
        (d / name).unlink()
        os.symlink(d / (name + ".gz"), d / name)
        os.symlink(d / name, d / (name + ".gz"))
        return ()
    return plant


def _symlink_to(name: str, target: str):
    def plant(ws: Workspace) -> Sequence[str]:
        (idx_dir(ws) / name).unlink()
        os.symlink(target, idx_dir(ws) / name)
        return ()
    return plant


def _fifo(name: str):
    def plant(ws: Workspace) -> Sequence[str]:
        (idx_dir(ws) / name).unlink()
        os.mkfifo(idx_dir(ws) / name)
        return ()
    return plant


def _gzip_bomb():
    header = bytes([0, 0, 8, 3]) + (200).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2

    def plant(ws: Workspace) -> Sequence[str]:
        (idx_dir(ws) / TRAIN_IMAGES).unlink()
        (idx_dir(ws) / (TRAIN_IMAGES + ".gz")).write_bytes(gzip_bomb(header))
        return ()
    return plant


def _gzip_truncated():
    import gzip

    def plant(ws: Workspace) -> Sequence[str]:
        raw = (idx_dir(ws) / TRAIN_IMAGES).read_bytes()
        (idx_dir(ws) / TRAIN_IMAGES).unlink()
        (idx_dir(ws) / (TRAIN_IMAGES + ".gz")).write_bytes(gzip.compress(raw)[:-20])
        return ()
    return plant


def _gzip_garbage():
    def plant(ws: Workspace) -> Sequence[str]:
        (idx_dir(ws) / TRAIN_IMAGES).write_bytes(b"\x1f\x8b" + bytes(range(256)))
        return ()
    return plant


def root_cases() -> list[Case]:
    def root(make: Callable[[Workspace], str], name: str = "mnist"):
        def plant(ws: Workspace) -> Sequence[str]:
            cfg = yaml.safe_load(ws.config.read_text())
            cfg["data"] = {"name": name, "root": make(ws)}
            ws.config.write_text(yaml.safe_dump(cfg))
            return ()
        return plant

    def a_file(ws):
        (ws.inputs / "afile").write_text("x")
        return str(ws.inputs / "afile")

    def empty_dir(ws):
        (ws.inputs / "empty").mkdir()
        return str(ws.inputs / "empty")

    variants = {"missing": lambda ws: str(ws.inputs / "nowhere"), "a-file": a_file,
                "empty-dir": empty_dir, "nul": lambda ws: str(ws.inputs / "mn\0ist"),
                "too-long": lambda ws: "/".join(["r" * 250] * 20)}
    cases = [_case(f"root-{k}", root(v), needles=(("data.root", "mnist"),)) for k, v in variants.items()]
    cases.append(_case("root-for-digits", root(lambda ws: str(idx_dir(ws)), "digits"),
                       needles=("data.root",)))
    cases.append(_case("root-missing-fashion", root(lambda ws: str(ws.inputs / "nowhere"), "fashion-mnist"),
                       needles=(("data.root", "fashion"),)))
    return cases


def cifar_cases() -> list[Case]:
    def batches(make: Callable[[Workspace], bytes], which: str = "data_batch_1"):
        def plant(ws: Workspace) -> Sequence[str]:
            d = ws.inputs / "cifar-10-batches-py"
            d.mkdir()
            good = pickle.dumps({b"data": np.zeros((10, 3072), np.uint8), b"labels": list(range(10))})
            for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
                (d / name).write_bytes(make(ws) if name == which else good)
            cfg = yaml.safe_load(ws.config.read_text())
            cfg["data"] = {"name": "cifar10", "root": str(ws.inputs)}
            cfg["model"] = {"arch": "cnn-small"}
            ws.config.write_text(yaml.safe_dump(cfg))
            return ()
        return plant

    variants = {
        "payload": (lambda ws: pickle.dumps({b"data": _OpenMarker(ws.marker)}), True),
        "garbage": (lambda ws: b"\x80\x04garbage", False),
        "not-a-dict": (lambda ws: pickle.dumps([1, 2, 3]), False),
        "wrong-data-shape": (lambda ws: pickle.dumps({b"data": np.zeros((10, 10), np.uint8),
                                                      b"labels": list(range(10))}), False),
        "labels-out-of-range": (lambda ws: pickle.dumps({b"data": np.zeros((2, 3072), np.uint8),
                                                         b"labels": [10, 11]}), False),
        "empty": (lambda ws: b"", False),
    }
    return [_case(f"cifar10-{k}", batches(make), needles=("data_batch_1",), payload=payload)
            for k, (make, payload) in variants.items()]


def _own_data(name: str, make: Callable[[Path], str], **data):
    """A plant: ``make(inputs)`` writes the user's dataset and returns data.root."""
    def plant(ws: Workspace) -> Sequence[str]:
        cfg = yaml.safe_load(ws.config.read_text())
        cfg["data"] = {"name": name, "root": make(ws.inputs), **data}
        cfg["model"] = {"arch": "cnn-small"}
        ws.config.write_text(yaml.safe_dump(cfg))
        return ()
    return plant


def _npz(**changes):
    def make(inputs: Path) -> str:
        rng = np.random.default_rng(0)
        arrays = {"x_train": rng.integers(0, 256, (40, 1, 8, 8), dtype=np.uint8),
                  "y_train": np.arange(40) % 4, "x_test": rng.integers(0, 256, (8, 1, 8, 8), dtype=np.uint8),
                  "y_test": np.arange(8) % 4}
        arrays.update(changes)
        np.savez(inputs / "mine.npz", **{k: v for k, v in arrays.items() if v is not None})
        return str(inputs / "mine.npz")
    return make


def _not_a_zip(inputs: Path) -> str:
    (inputs / "mine.npz").write_bytes(b"x" * 99)
    return str(inputs / "mine.npz")


def _npz_absurd_header(inputs: Path) -> str:
    import io
    import zipfile
    with zipfile.ZipFile(inputs / "mine.npz", "w") as z:
        for key in ("x_train", "y_train", "x_test", "y_test"):
            buf = io.BytesIO()
            np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False,
                                                       "shape": (2 ** 40, 3, 224, 224)})
            z.writestr(key + ".npy", buf.getvalue() + bytes(64))
    return str(inputs / "mine.npz")


def _folder(edit: Callable[[Path], None]):
    def make(inputs: Path) -> str:
        from PIL import Image
        for split in ("train", "test"):
            for c in ("a", "b"):
                (inputs / "imgs" / split / c).mkdir(parents=True)
                for i in range(3):
                    Image.new("L", (8, 8), 40 * i).save(inputs / "imgs" / split / c / f"{i}.png")
        edit(inputs / "imgs")
        return str(inputs / "imgs")
    return make


def own_data_cases() -> list[Case]:
    payload = lambda ws: np.array([_OpenMarker(ws.marker)] * 40, dtype=object)  # noqa: E731
    cases = [_case(f"npz-{k}", _own_data("npz", make), needles=("mine.npz",) + extra)
             for k, (make, extra) in {
                 "missing-member": (_npz(y_test=None), ("y_test",)),
                 "channel-last": (_npz(x_train=np.zeros((40, 8, 8, 1), np.uint8),
                                       x_test=np.zeros((8, 8, 8, 1), np.uint8)), ("channel",)),
                 "float-out-of-range": (_npz(x_train=np.full((40, 1, 8, 8), 255.0, np.float32),
                                             x_test=np.zeros((8, 1, 8, 8), np.float32)), ("[0, 1]",)),
                 "class-missing": (_npz(y_train=np.arange(40) % 4 * (np.arange(40) % 4 != 2)), ("class",)),
                 "not-a-zip": (_not_a_zip, ("zip",))}.items()]
    cases.append(Case(id="dataset-npz-pickled-payload", owner="D", stage="train", payload=True,
                      plant=lambda ws: _own_data("npz", _npz(y_train=payload(ws)))(ws),
                      needles=("mine.npz", "y_train")))
    cases.append(_case("npz-absurd-header", _own_data("npz", _npz_absurd_header),
                       needles=("mine.npz",), bomb=True))
    cases += [_case(f"folder-{k}", _own_data("folder", _folder(edit), image_size=8), needles=needle)
              for k, (edit, needle) in {
                  "empty-class": (lambda r: [f.unlink() for f in (r / "test" / "b").iterdir()], ("b",)),
                  "not-an-image": (lambda r: (r / "train" / "a" / "x.png").write_bytes(b"GIF89a"),
                                   ("x.png",)),
                  "class-mismatch": (lambda r: (r / "test" / "b").rename(r / "test" / "c"), ("class",)),
              }.items()]
    cases.append(_case("folder-without-image-size", _own_data("folder", _folder(lambda r: None)),
                       needles=("data.image_size",), light=True))
    return cases


SLOW = {f"dataset-{k}" for k in (
    f"{TRAIN_IMAGES}-truncated", f"{TRAIN_IMAGES}-is-directory", f"{TRAIN_LABELS}-empty",
    f"{TRAIN_LABELS}-wrong-magic", f"{TRAIN_LABELS}-is-directory", f"{TEST_IMAGES}-empty",
    f"{TEST_IMAGES}-wrong-magic", f"{TEST_IMAGES}-truncated", f"{TEST_LABELS}-wrong-magic",
    f"{TEST_LABELS}-truncated", f"{TEST_LABELS}-is-directory", "labels-255", "ndim-0",
    "too-long-payload", "images-1x1", "root-empty-dir", "root-too-long", "root-missing-fashion",
    "cifar10-not-a-dict", "cifar10-wrong-data-shape", "cifar10-labels-out-of-range", "cifar10-empty",
    "npz-channel-last", "npz-class-missing", "npz-not-a-zip", "folder-class-mismatch")}


def dataset_cases() -> list[Case]:
    cases = idx_cases() + root_cases() + cifar_cases() + own_data_cases()
    return default_run(cases, {c.id for c in cases} - SLOW)
