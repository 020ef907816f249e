"""Files written whole or not at all, and files read only if they are what they claim to be.

:func:`atomic_path` is the one atomic writer of the toolkit (.net, .nir, report.json,
checkpoints, plots): the data goes to a temporary file next to the target, named
``.{target name}.{writer pid}.{random}{suffix}.tmp``, which is fsynced and renamed over the
target, and the rename is made durable by an fsync of the directory. A killed process leaves
the previous complete file or the new complete one, never a partial one; on an exception
(KeyboardInterrupt included) the temporary file is removed, and after a kill -9 the pid in
its name tells :func:`pipeline.artifacts.remove_stale_temporaries` its writer is gone. The
file gets the mode any new file gets (``0666 & ~umask``), not mkstemp's private 0600.

:func:`open_regular` (and :func:`read_regular`, :func:`check_regular`) open a file only if
it is a regular file within a size limit, so a FIFO, a device, a directory or a link to one
is refused with a message naming the file, never read or waited on; the caller names the
error class it raises (each layer has its own typed error).
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

from hardware.errors import ToolkitError

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "open_regular", "read_regular",
           "check_regular"]


# --------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it over ``path``.

    The parent directory is created if needed. On any error (or KeyboardInterrupt) the
    temporary file is removed and ``path`` is untouched. ``suffix`` keeps an extension some
    writers insist on (``np.savez`` appends ``.npz``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the writer's pid in the name: a later stage removes the file only once its writer is gone
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=suffix + ".tmp",
                                    dir=path.parent)
    tmp = Path(tmp_name)
    try:
        try:  # mkstemp makes the file private (0600); a run's artifacts get the mode any new file gets
            os.fchmod(fd, 0o666 & ~_umask())
        finally:
            os.close(fd)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    """The process umask, read without changing it (Linux), else the common 022."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


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


# --------------------------------------------------------------------------- bounded reads
def _kind_of(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def _open_fd(path: Any, name: str, error: type[ToolkitError]) -> int:
    """A read-only descriptor of ``path``; ``error`` saying why there is none."""
    try:
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(f"{name} is a loop of symbolic links") from None
        if exc.errno == errno.ENOENT:
            raise error(f"{name}: no such file") from None
        with contextlib.suppress(OSError):  # a socket cannot be opened at all (ENXIO): say what it is
            mode = os.stat(path).st_mode
            if not stat.S_ISREG(mode):
                raise error(f"{name} is {_kind_of(mode)}, not a regular file; it is not read") from None
        raise error(f"{name} is not readable: {exc.strerror or exc}") from None


@contextlib.contextmanager
def open_regular(path: Any, limit: int, key: str = "",
                 error: type[ToolkitError] = ToolkitError) -> Iterator[Any]:
    """``path`` opened for binary reading, only if it is a regular file of at most ``limit`` bytes.

    A symbolic link is followed (a run directory may link to a file elsewhere), but what it
    leads to is checked after opening (``fstat``), so a link to /dev/zero is refused like the
    device itself; O_NONBLOCK makes the open of a FIFO return at once instead of waiting for
    a writer. Everything else (a directory, a device, a socket, a loop of links, a file
    beyond ``limit``) raises ``error`` naming the file (and ``key``).
    """
    name = f"{key} {path}" if key else str(path)
    fd = _open_fd(path, name, error)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{name} is {_kind_of(info.st_mode)}, not a regular file; it is not read")
        if info.st_size > limit:
            raise error(f"{name} is {info.st_size} bytes, more than the limit of {limit} bytes for a "
                        "file of this kind; it is not read")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def read_regular(path: Any, limit: int, key: str = "", error: type[ToolkitError] = ToolkitError) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (see :func:`open_regular`); a file
    that grows while it is read is cut at ``limit + 1`` bytes and refused."""
    name = f"{key} {path}" if key else str(path)
    with open_regular(path, limit, key, error) as f:
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise error(f"{name} is not readable: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise error(f"{name} grew beyond {limit} bytes while it was read")
    return data


def check_regular(path: Any, limit: int, key: str = "", error: type[ToolkitError] = ToolkitError) -> Path:
    """``path`` if it is a regular file within ``limit`` (for files a library opens by name)."""
    with open_regular(path, limit, key, error):
        pass
    return Path(path)
