"""The run directory: every file a run reads or writes, named in one place.

Writes are atomic (a temporary file in the same directory, flushed and fsynced,
then renamed over the target), so a killed process leaves either the previous
complete file or the new complete one, never a partial one.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from hardware.errors import ToolkitError


class ArtifactError(ToolkitError):
    """A run artifact that is missing, unreadable or does not belong to this run."""


#: file names inside ``run.dir``
CHECKPOINT = "checkpoint.safetensors"
TRAIN_STATE = "train_state.safetensors"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
NET_FILE = "model.net"
RASTER_NPZ = "raster.npz"
#: files of the format before safetensors: recognised only to refuse them with a clear message
LEGACY_CHECKPOINT = "checkpoint.pt"
LEGACY_TRAIN_STATE = "train_state.pt"


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it over ``path``.

    On any error (or KeyboardInterrupt) the temporary file is removed and ``path`` is untouched.
    ``suffix`` keeps an extension some writers insist on (``np.savez`` appends ``.npz``).
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass(frozen=True)
class RunDir:
    """The files of one run directory (``run.dir``)."""

    root: Path

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT

    @property
    def train_state(self) -> Path:
        return self.root / TRAIN_STATE

    @property
    def report_json(self) -> Path:
        return self.root / REPORT_JSON

    @property
    def report_md(self) -> Path:
        return self.root / REPORT_MD

    @property
    def net(self) -> Path:
        return self.root / NET_FILE

    @property
    def raster(self) -> Path:
        return self.root / RASTER_NPZ
