"""Run one CLI invocation the way a user would, and observe everything it does.

Two ways, same observations (:class:`Outcome`):

* :func:`run_forked`: ``os.fork`` of the test process (torch, Lava and the stages are
  imported once, by the parent), then ``pipeline.cli.main(argv)`` in the child with its
  own session, stdout/stderr on files, an address-space limit and a wall-clock timeout.
  A child that raises instead of returning prints the traceback, as the interpreter
  would. Costs milliseconds, so the generated suite can afford hundreds of cases.
* :class:`LightForkServer`: the same, forked from a helper process that has imported
  only the config layer (forking a process that holds torch costs ~0.1 s): for cases
  refused while the config is read, before any heavy import.
* :func:`run_subprocess`: the real ``python -m pipeline`` in a new session, with
  ``RLIMIT_AS`` set in ``preexec_fn``: the representative subset.

Either way the child leads its own session, so every process it starts (Lava workers,
multiprocessing's resource tracker) can be found afterwards by session id, even when
re-parented to PID 1.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
#: exit status of a forked child whose run reached the Lava phase (see ``stop_before_lava``)
EXIT_REACHED_LAVA = 97
#: exit status of a forked child that raised instead of returning
EXIT_UNCAUGHT = 98
#: the address-space limit of a real CLI subprocess (the brief's 4 GB)
SUBPROCESS_ADDRESS_SPACE = 4 << 30
#: extra address space a forked child may map beyond what the test process already has
FORK_HEADROOM = 2 << 30
#: a JSON object of environment variables a case wants its CLI call to see (e.g. torchrun's),
#: read from the workspace (the call's cwd) by the forked child only: the test process's own
#: environment is never changed
LAUNCH_ENV_FILE = "launch-env.json"


@dataclass
class Outcome:
    returncode: Optional[int]
    stdout: str
    stderr: str
    seconds: Optional[float]  # the CLI call's own time (forked: measured in the child)
    timed_out: bool = False
    leftover: list[str] = field(default_factory=list)  # processes of the child's session still alive

    def describe(self) -> str:
        tail = "\n".join(self.stderr.splitlines()[-12:])
        return (f"exit {self.returncode}, {self.seconds if self.seconds is None else round(self.seconds, 3)} s"
                f"{', TIMED OUT' if self.timed_out else ''}; stdout {self.stdout[:200]!r}; stderr tail:\n{tail}")


class LavaStarted(BaseException):
    """Raised in a forked child when the run constructs its first Lava process.

    A BaseException, so that no ``except Exception`` in the product turns it into an
    ordinary error message: the test must see that the input was accepted."""


def stop_before_lava() -> None:
    """In a forked child only: make the first Lava process construction raise LavaStarted."""
    from lava.magma.core.process.process import AbstractProcess

    def refuse(self, *args, **kwargs):
        raise LavaStarted("the run reached the Lava phase")

    AbstractProcess.__init__ = refuse
    AbstractProcess.__del__ = lambda self: None  # a half-built process has nothing to stop


def warm_imports() -> None:
    """Import, in the parent, what the stages import lazily (the .net reader, the Lava
    runner, the report and its plots, scikit-learn's digits), so that no forked child
    pays for it (seconds each on a loaded machine)."""
    import importlib

    for name in ("pipeline.stages", "pipeline.report", "hardware.formats.netx", "hardware.runtime.runner",
                 "sklearn.datasets"):
        importlib.import_module(name)


# --------------------------------------------------------------------------- processes
def session_members(sid: int) -> list[str]:
    """'pid cmdline' of every live (non-zombie) process whose session id is ``sid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        state, session = fields[0], int(fields[3])
        if session == sid and state != "Z":
            found.append(f"{entry.name} {cmd.strip()[:120]}")
    return found


def reap_session(sid: int, grace: float = 5.0) -> list[str]:
    """Processes of session ``sid`` alive ``grace`` seconds after its leader ended; then
    SIGKILL them (by pid: they were started by this test) so one failure does not leak."""
    deadline = time.monotonic() + grace
    alive = session_members(sid)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = session_members(sid)
    for member in alive:
        try:
            os.kill(int(member.split()[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass
    return alive


# --------------------------------------------------------------------------- forked run
def _child(argv: Sequence[str], cwd: Path, out: Path, err: Path, result: Path,
           before_main: Optional[Callable[[], None]], headroom: int) -> None:
    """Body of the forked child; never returns."""
    code = EXIT_UNCAUGHT
    try:
        os.setsid()
        os.chdir(cwd)
        if (cwd / LAUNCH_ENV_FILE).exists():
            os.environ.update(json.loads((cwd / LAUNCH_ENV_FILE).read_text()))
        vm = _vm_size()
        resource.setrlimit(resource.RLIMIT_AS, (vm + headroom, vm + headroom))
        for fd, path in ((1, out), (2, err)):
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(handle, fd)
            os.close(handle)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False)
        import logging
        root = logging.getLogger()
        for handler in list(root.handlers):  # pytest's capture handlers: the CLI installs its own
            root.removeHandler(handler)
        root.setLevel(logging.WARNING)
        if before_main is not None:
            before_main()
        from pipeline import cli

        start = time.perf_counter()
        try:
            code = cli.main(list(argv))
        except LavaStarted:
            code = EXIT_REACHED_LAVA
            print("[harness] the run reached the Lava phase", file=sys.stderr)
        except SystemExit as exc:  # argparse usage errors
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = EXIT_UNCAUGHT
        result.write_text(json.dumps({"seconds": time.perf_counter() - start}))
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def run_forked(argv: Sequence[str], cwd: Path, scratch: Path, timeout: float = 120.0,
               before_main: Optional[Callable[[], None]] = stop_before_lava,
               headroom: int = FORK_HEADROOM) -> Outcome:
    """``pipeline.cli.main(argv)`` in a forked child (see module docstring)."""
    scratch.mkdir(parents=True, exist_ok=True)
    out, err, result = scratch / "stdout", scratch / "stderr", scratch / "result.json"
    for p in (out, err, result):
        p.unlink(missing_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(argv, cwd, out, err, result, before_main, headroom)
    deadline = time.monotonic() + timeout
    timed_out, status = False, None
    while status is None:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = raw
        elif time.monotonic() > deadline:
            timed_out = True
            os.killpg(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        else:
            time.sleep(0.02)
    leftover = reap_session(pid)
    seconds = json.loads(result.read_text())["seconds"] if result.exists() else None
    return Outcome(os.waitstatus_to_exitcode(status), _text(out), _text(err), seconds,
                   timed_out, leftover)


class LightForkServer:
    """A helper process (``python -c``, config layer imported) that runs
    :func:`run_forked` for each request: one JSON line in, one JSON line out."""

    def __init__(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from tests.bad_inputs.harness import serve; serve()"],
            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, argv: Sequence[str], cwd: Path, scratch: Path, timeout: float = 120.0) -> Outcome:
        request = {"argv": list(argv), "cwd": str(cwd), "scratch": str(scratch), "timeout": timeout}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server ended (exit {self.proc.poll()})")
        return Outcome(**json.loads(line))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def serve() -> None:
    """Body of the :class:`LightForkServer` process."""
    import dataclasses

    import pipeline.cli  # noqa: F401  (what every forked child needs, imported once)
    import pipeline.config  # noqa: F401

    for line in sys.stdin:
        req = json.loads(line)
        outcome = run_forked(req["argv"], Path(req["cwd"]), Path(req["scratch"]), req["timeout"],
                             before_main=None)
        sys.stdout.write(json.dumps(dataclasses.asdict(outcome)) + "\n")
        sys.stdout.flush()


def _text(path: Path) -> str:
    return path.read_bytes().decode(errors="replace") if path.exists() else ""


# --------------------------------------------------------------------------- real CLI
def run_subprocess(argv: Sequence[str], cwd: Path, timeout: float = 300.0,
                   address_space: int = SUBPROCESS_ADDRESS_SPACE) -> Outcome:
    """``python -m pipeline argv`` in a new session under ``RLIMIT_AS``."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    if (Path(cwd) / LAUNCH_ENV_FILE).exists():
        env.update(json.loads((Path(cwd) / LAUNCH_ENV_FILE).read_text()))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *argv], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=limit)
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - start
    return Outcome(proc.returncode, stdout, stderr, seconds, timed_out, reap_session(proc.pid))


# --------------------------------------------------------------------------- files
def snapshot(root: Path, exclude: Path) -> dict[str, tuple]:
    """{relative path: (kind, size, mtime_ns)} of everything under ``root`` except ``exclude``."""
    exclude = exclude.resolve() if exclude.exists() else exclude
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if (here / d) != exclude and (here / d).resolve() != exclude]
        for name in dirnames + filenames:
            p = here / name
            try:
                st = p.lstat()
            except OSError:
                continue
            state[str(p.relative_to(root))] = (st.st_mode >> 12, st.st_size, st.st_mtime_ns)
    return state
