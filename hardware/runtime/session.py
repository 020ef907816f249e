"""One Lava run whose worker processes never outlive it (:class:`LavaSession`).

Lava 0.10's runtime forks, from the calling thread, one OS process per process model and
per runtime service, plus a ``multiprocessing`` manager for its shared memory (watched by
``multiprocessing``'s resource tracker). Left alone, ``kill -9`` or SIGTERM of the parent
leaves every worker waiting forever under PID 1, and Ctrl-C in a terminal (SIGINT to the
whole process group) makes every worker print a traceback while the parent's
``runtime.stop()`` may wait forever for workers that are gone or mid-step.

:class:`LavaSession` closes these holes:

* every process forked while the session is open (only those) asks the kernel to SIGKILL
  it when its parent dies (``prctl(PR_SET_PDEATHSIG)``), ignores SIGINT (the parent handles
  Ctrl-C) and restores SIGTERM's default action; the resource tracker exits by itself once
  the parent and the workers are dead;
* SIGTERM of the parent raises :class:`Terminated` (``SystemExit(143)``) in the main
  thread, so the clean-up runs and the process exits 143;
* on leaving the session, whatever the reason, the runtime is stopped in a helper thread
  bounded by ``stop_timeout_s``; processes forked during the session that are still alive
  after it are killed. SIGINT/SIGTERM arriving during that clean-up are held back and
  re-raised after it, so a second Ctrl-C cannot abandon it half way.
"""
from __future__ import annotations

import contextvars
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Optional

log = logging.getLogger(__name__)

__all__ = ["LavaSession", "Terminated", "STOP_TIMEOUT_S"]

#: bound on ``runtime.stop()`` before the session kills the workers itself
STOP_TIMEOUT_S = 2.0
#: <linux/prctl.h>
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

# The PID of the process whose forks must die with it, in the context of the
# thread running a session; None elsewhere. A ContextVar rather than a global
# flag: fork hooks cannot be unregistered, and a session on one thread must not
# arm forks made by another.
_GUARDING_PARENT: contextvars.ContextVar[Optional[int]] = contextvars.ContextVar(
    "lava_session_guarding_parent", default=None)


class Terminated(SystemExit):
    """SIGTERM during a Lava run: the runtime was stopped, the process exits 128 + 15."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def _die_with_parent() -> None:
    """Fork hook (child side): tie a Lava worker's life to the parent that forked it."""
    parent = _GUARDING_PARENT.get()
    if parent is None:
        return
    _GUARDING_PARENT.set(None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if _LIBC is not None and _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
        if os.getppid() != parent:  # the parent died between fork() and prctl()
            os._exit(1)


os.register_at_fork(after_in_child=_die_with_parent)


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


class _HeldSignals:
    """While active, SIGINT and SIGTERM are recorded instead of acted upon."""

    def __init__(self) -> None:
        self.received: list = []
        self.previous: dict = {}

    def __enter__(self) -> "_HeldSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, lambda s, f: self.received.append(s))
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def reraise(self) -> None:
        """Act on the first held signal as its handler would have."""
        if signal.SIGTERM in self.received:
            raise Terminated()
        if signal.SIGINT in self.received:
            raise KeyboardInterrupt


class LavaSession:
    """Context manager around the RunSteps calls of one Lava network.

    ::

        with LavaSession() as session:
            for n in chunks:
                session.run(sink, n, run_cfg)
                ...read Vars...

    ``run`` must be called on the same process object every time (its runtime
    is the one stopped). Use only from one thread; signal handling is active
    only when that thread is the main thread.
    """

    def __init__(self, stop_timeout_s: float = STOP_TIMEOUT_S) -> None:
        self.stop_timeout_s = float(stop_timeout_s)
        self._proc = None
        self._token = None
        self._children_before: set = set()
        self._previous_sigterm = None

    def __enter__(self) -> "LavaSession":
        self._children_before = {p.pid for p in multiprocessing.active_children()}
        self._token = _GUARDING_PARENT.set(os.getpid())
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
        return self

    def run(self, proc, num_steps: int, run_cfg) -> None:
        """``proc.run(RunSteps(num_steps), run_cfg)``; the first call compiles and starts."""
        from lava.magma.core.run_conditions import RunSteps
        if self._proc is not None and proc is not self._proc:
            raise ValueError("a LavaSession runs one network: call run() on the same process")
        self._proc = proc
        proc.run(condition=RunSteps(num_steps=int(num_steps)), run_cfg=run_cfg)

    def __exit__(self, exc_type, exc, tb) -> None:
        with _HeldSignals() as held:
            try:
                self._stop_runtime()
                self._kill_leftovers()
            finally:
                _GUARDING_PARENT.reset(self._token)
                if self._previous_sigterm is not None:
                    signal.signal(signal.SIGTERM, self._previous_sigterm)
        if exc_type is None:
            held.reraise()

    def _stop_runtime(self) -> None:
        runtime = getattr(self._proc, "runtime", None) if self._proc is not None else None
        if runtime is None:
            return
        if getattr(runtime, "_is_running", False) or not getattr(runtime, "_is_started", True):
            # interrupted inside a RunSteps call, or while the runtime was starting its
            # workers: Lava's stop protocol would wait for replies that may never come
            self._abandon(runtime)
        elif not self._graceful_stop(runtime):
            log.warning("Lava's runtime did not stop within %.1f s; killing its workers",
                        self.stop_timeout_s)
            self._abandon(runtime)

    def _graceful_stop(self, runtime) -> bool:
        """``runtime.stop()`` in a helper thread; False if it did not finish in time."""
        stopped = threading.Event()

        def stop() -> None:
            try:
                runtime.stop()
            except Exception as exc:  # a worker already gone: the kill below finishes the job
                log.debug("Lava runtime.stop() failed: %s", exc)
            finally:
                stopped.set()

        threading.Thread(target=stop, name="lava-runtime-stop", daemon=True).start()
        return stopped.wait(self.stop_timeout_s)

    def _abandon(self, runtime) -> None:
        """Kill the workers, free the shared memory, and mark the runtime stopped."""
        self._kill_leftovers()
        smm = getattr(getattr(runtime, "_messaging_infrastructure", None), "smm", None)
        for handle in list(getattr(smm, "_shared_memory_handles", ())):
            # the killed manager process would have unlinked these; unlinking here
            # also spares the resource tracker's "leaked shared_memory" warning
            try:
                handle.close()
                handle.unlink()
            except OSError as exc:
                log.debug("shared memory %s: %s", handle.name, exc)
        if smm is not None:
            smm._shared_memory_handles.clear()
        # Runtime.__del__ calls stop() on a started runtime: with its workers gone
        # that would wait forever at interpreter exit
        runtime._is_started = runtime._is_running = False

    def _kill_leftovers(self) -> None:
        """SIGKILL every process forked during the session that is still alive."""
        leftovers = [p for p in multiprocessing.active_children()
                     if p.pid not in self._children_before]
        for proc in leftovers:
            log.debug("killing Lava worker %s (pid %d)", proc.name, proc.pid)
            proc.kill()
        deadline = time.monotonic() + 1.0
        # (Lava's SystemProcess.join takes no timeout; is_alive() reaps without blocking)
        while any(p.is_alive() for p in leftovers) and time.monotonic() < deadline:
            time.sleep(0.01)
