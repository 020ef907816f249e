"""Several training processes with PyTorch's own distributed data parallel (``torchrun``).

``torchrun --nproc_per_node=N -m pipeline train ...`` starts N copies of the CLI and
hands each its place in the job through environment variables (:data:`TORCHRUN_VARS`):
``RANK`` (0..WORLD_SIZE-1 over all machines), ``LOCAL_RANK`` (its index on this
machine: the GPU it drives), ``WORLD_SIZE``, and ``MASTER_ADDR``/``MASTER_PORT``
(where the processes meet). This module turns them into a :class:`DistContext`:

* :func:`launch_from_env` reads them (no torch import: the CLI asks before it knows
  whether it will need torch); without ``WORLD_SIZE`` it is a single process;
* :func:`process_group` initialises ``torch.distributed`` (``env://``) with the backend
  the device calls for, gloo on CPU, NCCL on CUDA (``cuda:LOCAL_RANK``), and always
  destroys the group again, also on an error, Ctrl-C (SIGINT: torchrun forwards it to
  its workers) and SIGTERM (torchrun's way of stopping workers); a single process gets
  a context with no group at all, so nothing changes for a plain ``python -m pipeline``;
* :class:`DistContext` carries rank, world size, device and backend, and the few
  collectives training needs: float64 sums, a gather of row blocks, buffer broadcast,
  barrier. In a single process each of them is the identity.

Seeds: every random stream of a rank derives from ``train.seed``, the rank and the
epoch (:func:`derived_seed`, a :class:`numpy.random.SeedSequence`), drawn when the
epoch starts, never at import time.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Mapping, Optional, Sequence

from hardware.errors import ToolkitError

if TYPE_CHECKING:  # torch is imported where it is used: the CLI reads the launch without it
    import torch
    from torch import nn

    from pipeline.config import Config

#: the variables torchrun (torch.distributed.run) sets for every worker it starts
TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
#: the random streams of one rank (see :func:`derived_seed`)
STREAM_NOISE, STREAM_AUGMENT = 1, 2


class DistributedError(ToolkitError, RuntimeError):
    """A multi-process launch that cannot work (bad torchrun variables, a stage that runs in
    one process only, a config that cannot be split over the processes)."""


@dataclass(frozen=True)
class Launch:
    """Where this process stands in a torchrun job (world_size 1: a plain single process)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


log = logging.getLogger(__name__)

#: the largest job this accepts (a sanity bound: torch's own types overflow far beyond it)
MAX_WORLD_SIZE = 1 << 16
#: how long a process waits for a missing peer (the first meeting and every collective) unless
#: ``train.dist_timeout_s`` says otherwise
DEFAULT_PEER_TIMEOUT = datetime.timedelta(minutes=3)
#: a DNS name is at most 253 characters
MAX_HOST_CHARS = 253
#: how often the launcher watchdog looks at its parent, and how long the main thread has to
#: stop cleanly once told before the process ends itself
WATCHDOG_POLL_S = 0.5
WATCHDOG_GRACE_S = 10.0
#: exit status of a worker whose launcher died (as a shell reports SIGTERM)
EXIT_LAUNCHER_GONE = 128 + signal.SIGTERM


def _int_var(environ: Mapping[str, str], name: str, lowest: int, highest: int, why: str = "") -> int:
    """The integer environment variable ``name`` in ``lowest..highest``; DistributedError naming it."""
    text = environ.get(name)
    if text is None:
        raise DistributedError(f"{name} is not set, but WORLD_SIZE is: start several processes with "
                               "torchrun (it sets " + ", ".join(TORCHRUN_VARS) + ")")
    try:
        value = int(text.strip()) if len(text) <= 20 else None
    except ValueError:
        value = None
    if value is None:
        raise DistributedError(f"{name}={_shown(text)} is not an integer")
    if not lowest <= value <= highest:
        raise DistributedError(f"{name}={value} must be in {lowest}..{highest}{why}")
    return value


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37]) + "..."


def _check_master(environ: Mapping[str, str]) -> None:
    """MASTER_ADDR (a host name or address) and MASTER_PORT (1..65535), where the processes meet."""
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not environ.get(name)]
    if missing:
        raise DistributedError(f"{' and '.join(missing)} not set: the processes cannot meet; "
                               "launch them with torchrun")
    addr = environ["MASTER_ADDR"]
    if len(addr) > MAX_HOST_CHARS or any(c.isspace() or not c.isprintable() for c in addr):
        raise DistributedError(f"MASTER_ADDR={_shown(addr)} is not a host name or address")
    _int_var(environ, "MASTER_PORT", 1, 65535, " (a TCP port)")


def launch_from_env(environ: Optional[Mapping[str, str]] = None) -> Launch:
    """The :class:`Launch` torchrun's variables describe; a single process without ``WORLD_SIZE``.
    Every variable is range-checked; a bad one is a DistributedError naming it."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        return Launch()
    world_size = _int_var(environ, "WORLD_SIZE", 1, MAX_WORLD_SIZE)
    rank = _int_var(environ, "RANK", 0, MAX_WORLD_SIZE - 1)
    if rank >= world_size:
        raise DistributedError(f"RANK={rank} must be below WORLD_SIZE={world_size}")
    local_world = world_size
    if "LOCAL_WORLD_SIZE" in environ:
        local_world = _int_var(environ, "LOCAL_WORLD_SIZE", 1, world_size, f" (WORLD_SIZE={world_size})")
    local_rank = _int_var(environ, "LOCAL_RANK", 0, local_world - 1,
                          f" (LOCAL_WORLD_SIZE={local_world})" if "LOCAL_WORLD_SIZE" in environ
                          else f" (WORLD_SIZE={world_size})")
    if world_size > 1:
        _check_master(environ)
    return Launch(rank=rank, local_rank=local_rank, world_size=world_size)


def require_single_process(stage: str, launch: Launch) -> None:
    """Refuse a stage other than ``train`` under a multi-process launch (they run in one process)."""
    if launch.world_size > 1 and stage != "train":
        raise DistributedError(
            f"`{stage}` runs in one process; only `train` runs under torchrun with several "
            f"processes (WORLD_SIZE={launch.world_size}). Train with torchrun, then run "
            f"`python -m pipeline {stage} ...` without torchrun")


def peer_timeout(cfg: Optional[Config] = None) -> datetime.timedelta:
    """How long to wait for a missing peer: ``train.dist_timeout_s`` of ``cfg`` (default 3 minutes)."""
    seconds = None if cfg is None else cfg.train.dist_timeout_s
    return DEFAULT_PEER_TIMEOUT if seconds is None else datetime.timedelta(seconds=float(seconds))


def derived_seed(seed: int, stream: int, rank: int, epoch: int) -> int:
    """A 63-bit seed for one random ``stream`` of one ``rank`` in one ``epoch``, from ``train.seed``
    (well mixed: neighbouring ranks or epochs get unrelated streams)."""
    import numpy as np

    state = np.random.SeedSequence([seed, stream, rank, epoch]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def shard_bounds(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """[start, stop) of ``rank``'s contiguous share of ``n`` items: the first ``n % world_size``
    ranks take one more (as :func:`torch.tensor_split`), so the shards in rank order are the whole."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


@dataclass(frozen=True)
class DistContext:
    """This process's part in a training job; ``backend`` None: a single process, no group."""

    rank: int
    world_size: int
    local_rank: int
    device: "torch.device"
    backend: Optional[str] = None

    @property
    def distributed(self) -> bool:
        return self.backend is not None and self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def collective_device(self) -> "torch.device":
        """Where collective tensors must live: NCCL reduces CUDA tensors only, gloo CPU ones."""
        import torch

        return self.device if self.backend == "nccl" else torch.device("cpu")

    def shard(self, n: int) -> slice:
        """This rank's contiguous slice of ``n`` items (all of them in a single process)."""
        return slice(*shard_bounds(n, self.world_size, self.rank))

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def sum(self, values: Sequence[float] | "torch.Tensor") -> "torch.Tensor":
        """Element-wise float64 sum over the ranks (on the CPU); in a single process ``values``."""
        import torch
        import torch.distributed as dist

        total = torch.as_tensor(values, dtype=torch.float64).clone()
        if self.distributed:
            total = total.to(self.collective_device)
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.cpu()

    def gather_rows(self, local: "torch.Tensor", total_rows: int) -> "torch.Tensor":
        """The row blocks every rank holds for its :meth:`shard` of ``total_rows``, concatenated in
        rank order (the whole, in its original order); in a single process ``local``."""
        import torch
        import torch.distributed as dist

        if not self.distributed:
            return local
        bounds = [shard_bounds(total_rows, self.world_size, r) for r in range(self.world_size)]
        sizes = [stop - start for start, stop in bounds]
        # all_gather needs equal shapes: pad every block to the largest, cut after
        padded = local.new_zeros((max(sizes), *local.shape[1:]), device=self.collective_device)
        padded[:len(local)] = local.to(self.collective_device)
        blocks = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(blocks, padded)
        return torch.cat([block[:size].cpu() for block, size in zip(blocks, sizes)])

    def broadcast_buffers(self, module: "nn.Module", src: int = 0) -> None:
        """Give every rank ``src``'s buffers (BN running statistics, σ): one model everywhere."""
        import torch.distributed as dist

        if self.distributed:
            for buffer in module.buffers():
                dist.broadcast(buffer.data, src=src)


def default_device() -> "torch.device":
    """A single process's device: the (first) GPU if there is one, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def single_process(device: Optional["torch.device"] = None) -> DistContext:
    return DistContext(rank=0, world_size=1, local_rank=0, device=device or default_device())


def _device_and_backend(launch: Launch) -> tuple["torch.device", str]:
    """``cuda:LOCAL_RANK`` with NCCL where CUDA is available, else the CPU with gloo."""
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu"), "gloo"
    if launch.local_rank >= torch.cuda.device_count():
        raise DistributedError(f"LOCAL_RANK={launch.local_rank}, but this machine shows "
                               f"{torch.cuda.device_count()} CUDA device(s): start at most one "
                               "process per GPU (--nproc_per_node)")
    device = torch.device("cuda", launch.local_rank)
    torch.cuda.set_device(device)
    return device, "nccl"


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (torchrun stopping its workers) raises KeyboardInterrupt, so ``finally`` blocks
    run (the process group is destroyed, temporary files removed); restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def interrupt(signum, _frame):
        raise KeyboardInterrupt(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _LauncherWatchdog:
    """A daemon thread that ends this process when its launcher dies.

    torchrun starts its workers as its own children; when torchrun is killed (kill -9, a lost
    terminal) nothing tells them, and they would train on unsupervised and write the run
    directory. The thread notices that the parent changed (the orphan was re-parented) and
    sends this process SIGTERM (a KeyboardInterrupt in the main thread: ``finally`` blocks
    run, temporary files are removed); if the main thread has not ended after ``grace``
    seconds (stuck in a C call, a collective) the process exits at once. A poll, not
    PR_SET_PDEATHSIG: that one fires when the *thread* that started the child ends, which
    for a launcher is not necessarily the launcher's end.
    """

    def __init__(self, poll: float = WATCHDOG_POLL_S, grace: float = WATCHDOG_GRACE_S) -> None:
        self.parent = os.getppid()
        self.poll, self.grace = poll, grace
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="launcher-watchdog", daemon=True)

    def __enter__(self) -> "_LauncherWatchdog":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()

    def _watch(self) -> None:
        while not self.stopped.wait(self.poll):
            if os.getppid() != self.parent:
                break
        else:
            return
        log.error("the launcher (pid %d) is gone; this process stops", self.parent)
        os.kill(os.getpid(), signal.SIGTERM)
        if not self.stopped.wait(self.grace):
            os._exit(EXIT_LAUNCHER_GONE)


def watch_launcher(poll: float = WATCHDOG_POLL_S, grace: float = WATCHDOG_GRACE_S) -> _LauncherWatchdog:
    """A context manager: while inside it, this process ends when its parent dies (see
    :class:`_LauncherWatchdog`)."""
    return _LauncherWatchdog(poll, grace)


#: RuntimeError texts of torch.distributed that mean a peer is gone or late
_PEER_TROUBLE = ("timed out", "timeout", "connection", "gloo", "nccl", "store", "peer", "broken pipe")


def _peer_error(exc: BaseException, launch: Launch, timeout: datetime.timedelta) -> DistributedError:
    reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
    return DistributedError(f"rank {launch.rank} of {launch.world_size}: a peer process did not answer "
                            f"within {timeout.total_seconds():g} s or is gone (train.dist_timeout_s; "
                            f"{reason})")


@contextlib.contextmanager
def process_group(timeout: datetime.timedelta = DEFAULT_PEER_TIMEOUT) -> Iterator[DistContext]:
    """The :class:`DistContext` of this process: with torchrun's variables and WORLD_SIZE > 1 the
    ``torch.distributed`` group is initialised here (waiting at most ``timeout`` for the peers, at
    the start and at every collective) and destroyed on leaving (whatever happens), and the process
    ends when its launcher dies; otherwise a single-process context. A group someone else
    initialised is used, not destroyed."""
    import torch.distributed as dist

    launch = launch_from_env()
    if launch.world_size == 1:
        yield single_process()
        return
    if dist.is_initialized():
        device, _ = _device_and_backend(launch)
        yield DistContext(launch.rank, launch.world_size, launch.local_rank, device, dist.get_backend())
        return
    device, backend = _device_and_backend(launch)
    with _sigterm_as_interrupt(), watch_launcher():
        try:
            dist.init_process_group(backend, init_method="env://", rank=launch.rank,
                                    world_size=launch.world_size, timeout=timeout)
        except (RuntimeError, ValueError, TypeError, OverflowError) as exc:  # no master, timeout, no backend
            where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise DistributedError(f"rank {launch.rank} of {launch.world_size} could not join the {backend} "
                                   f"process group at {where} within {timeout.total_seconds():g} s "
                                   f"(train.dist_timeout_s; {reason})") from None
        try:
            yield DistContext(launch.rank, launch.world_size, launch.local_rank, device, backend)
        except RuntimeError as exc:
            if any(word in str(exc).lower() for word in _PEER_TROUBLE):
                raise _peer_error(exc, launch, timeout) from None
            raise
        finally:
            dist.destroy_process_group()


__all__ = ["TORCHRUN_VARS", "DistributedError", "Launch", "DistContext", "launch_from_env",
           "require_single_process", "derived_seed", "shard_bounds", "process_group", "single_process",
           "default_device", "STREAM_NOISE", "STREAM_AUGMENT", "watch_launcher", "peer_timeout",
           "DEFAULT_PEER_TIMEOUT", "MAX_WORLD_SIZE"]
