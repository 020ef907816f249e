"""Command-line front end: ``nqloihi <stage> --config deploy.yaml [--set k=v ...]`` (the console
script of :func:`script`; ``python -m pipeline`` is the same command).

Each subcommand validates the whole config first (so a typo fails before any
work), then calls the stage of the same name in :mod:`pipeline.stages`
(``all`` calls ``run_all``, ``import`` calls ``import_nir``). On stdout it prints the
accuracy table of the run directory's report.json; with ``--json`` stdout carries exactly one JSON
document instead, the stage's result (``all``: the whole report), and
anything else written to stdout while the stage runs goes to stderr. Logs and
progress bars go to stderr.

Under ``torchrun`` with several processes (:mod:`pipeline.distributed`) only ``train``
runs (any other stage is refused: they run in one process); rank 0 alone logs, shows
progress and prints, the other ranks report errors only.

Exit codes: 0 success; 2 a :class:`~hardware.errors.ToolkitError` (printed
as ``error: <message>``, no traceback) or a command-line usage error; 130
interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import math
import os
import sys
from typing import TYPE_CHECKING, Any, Iterator, NoReturn, Optional, Sequence

from hardware.runtime.progress import logging_redirect_tqdm

from hardware.errors import ToolkitError
from pipeline.distributed import launch_from_env, require_single_process

if TYPE_CHECKING:  # the config module is imported when a command runs, not for --help
    from pipeline.config import Config

log = logging.getLogger("pipeline")

#: subcommand -> (module, function, help); ``report`` needs neither torch nor Lava, so it
#: does not import pipeline.stages (seconds instead of half a minute on a busy machine)
STAGES = {
    "train": ("pipeline.stages", "train",
              "train the NQ ANN (sigma re-estimated each epoch), save the checkpoint"),
    "finetune": ("pipeline.finetune", "finetune",
                 "train the converted SNN through time at snn.timesteps with a surrogate gradient "
                 "(finetune.epochs > 0), keep the best on the validation split"),
    "evaluate": ("pipeline.stages", "evaluate",
                 "ANN and SNN accuracy for T = 1..eval.timesteps (reference simulator)"),
    "export": ("pipeline.stages", "export",
               "convert, quantize to Loihi 2 fixed point and write the netx .net file "
               "(export.format=nir: the float SNN as a NIR graph, model.nir)"),
    "import": ("pipeline.stages", "import_nir",
               "read the NIR graph import.nir (e.g. from snnTorch) into run.dir; export and run "
               "then take it"),
    "run": ("pipeline.stages", "run",
            "run the .net file in Lava and compare it bit for bit with the simulator"),
    "bundle": ("pipeline.bundle", "bundle",
               "write run.dir/bundle/: what a Loihi 2 board machine (INRC) needs to run the .net "
               "file and check the chip against the simulator's golden outputs"),
    "report": ("pipeline.report", "report_stage", "write report.md and plots from report.json"),
    "all": ("pipeline.stages", "run_all",
            "train, finetune (if finetune.epochs > 0), evaluate, export, run and report in one go"),
}

EXIT_TOOLKIT_ERROR = 2
EXIT_INTERRUPTED = 130


def build_parser(prog: str = "python -m pipeline") -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default="deploy.yaml", metavar="PATH",
                        help="YAML config file (default: deploy.yaml)")
    common.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="override one config key, value parsed as YAML "
                             "(repeatable), e.g. --set nq.noise=false")
    common.add_argument("--overwrite", action="store_true",
                        help="let train/export replace a checkpoint or model.net of run.dir that was made "
                             "with another configuration (same as --set run.overwrite=true)")
    common.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    common.add_argument("--json", action="store_true",
                        help="print the stage's result as JSON on stdout instead of the summary table")
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train NQ ANNs, convert them to SNNs and run them bit-exactly on "
                    "Loihi 2 via Lava.")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(STAGES) + "}",
                                required=True)
    for name, (_, _, help_text) in STAGES.items():
        stage = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        if name == "report":
            stage.add_argument("--board-result", metavar="FILE", default=None,
                               help="the result JSON a bundle's run_on_loihi.py wrote: stored in report.json "
                                    "(board_run) and shown as measured (same as --set bundle.board_result=FILE)")
    return parser


def _configure_logging(quiet: bool, main_process: bool = True) -> None:
    """INFO (WARNING with --quiet) to stderr; the other ranks of a torchrun job log errors only."""
    level = (logging.WARNING if quiet else logging.INFO) if main_process else logging.ERROR
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def _run(args: argparse.Namespace) -> tuple[Config, dict]:
    """(config, the stage's result)."""
    from pipeline.config import load_config

    overrides = list(args.overrides) + (["run.overwrite=true"] if args.overwrite else [])
    if getattr(args, "board_result", None) is not None:  # a JSON string is a YAML string: any path
        overrides.append(f"bundle.board_result={json.dumps(args.board_result)}")
    cfg = load_config(args.config, overrides)
    log.info("config %s valid (data=%s, arch=%s, run.dir=%s)", args.config, cfg.data.name,
             cfg.arch, cfg.run.dir)
    _preflight(cfg, args.command)
    # Imported here so that config and run-directory errors are reported even before the
    # heavy stage modules (torch, lava) are imported.
    module, fn_name, _ = STAGES[args.command]
    stage = getattr(importlib.import_module(module), fn_name)
    # log lines go above the progress bars instead of through them (after the stages'
    # import: tqdm's lock fixes the multiprocessing start method Lava sets on import)
    with logging_redirect_tqdm():
        return cfg, stage(cfg)


def _preflight(cfg: Config, command: str) -> None:
    """The run directory, its report.json and the .net file to run, checked before any work
    (the stages check again: they are called from scripts too)."""
    from pipeline.artifacts import ArtifactError, RunDir, check_input_file

    run_dir = RunDir.prepared(cfg.run.dir)
    run_dir.read_report()
    if command == "run":
        run_dir.net_to_run(cfg.run.net)
    elif command == "import":
        if cfg.import_.nir is None:
            raise ArtifactError("import.nir is not set: name the NIR graph to import "
                                "(--set import.nir=path/to/graph.nir)")
        check_input_file(cfg.import_.nir, "import.nir")
    elif command == "all" and cfg.run.net:
        check_input_file(cfg.run.net, "run.net")
    elif command == "bundle":
        run_dir.net_to_run(cfg.run.net)
    elif command == "report" and cfg.bundle.board_result:
        check_input_file(cfg.bundle.board_result, "bundle.board_result")


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout (by Python code, C code or forked Lava workers) to
    stderr while the stage runs: with --json, stdout carries the one JSON document only."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1 (embedded): Python-level redirection only
        saved = None
    try:
        if saved is not None:
            os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def _strict_json(value: Any) -> Any:
    """``value`` with non-finite floats as null: the output is standard JSON, not Python's dialect."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def _summary(args: argparse.Namespace, cfg: Config, result: dict) -> str:
    """The accuracy table of the run directory (``all``: with the wall time)."""
    from pipeline.artifacts import RunDir
    from pipeline.report import format_summary

    report = result if args.command == "all" else RunDir(cfg.run_dir).read_report().to_json_dict()
    text = format_summary(report)
    if args.command == "all" and report.get("wall_time_s") is not None:
        text += f"\nwall time: {report['wall_time_s']:.0f} s"
    return text


def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m pipeline") -> int:
    """Run one sub-command; returns the exit code."""
    args = build_parser(prog).parse_args(argv)
    try:
        # under torchrun (several processes): only `train` runs, rank 0 alone logs and prints
        launch = launch_from_env()
        _configure_logging(args.quiet, main_process=launch.is_main)
        require_single_process(args.command, launch)
        with _stdout_to_stderr() if args.json else contextlib.nullcontext():
            cfg, result = _run(args)
            output = (json.dumps(_strict_json(result), indent=2, sort_keys=True, default=str) if args.json
                      else _summary(args, cfg, result))
    except ToolkitError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_TOOLKIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if launch.is_main:
        print(output)
    return 0


def _one_line(exc: BaseException) -> str:
    """The error message on one line (a config with several problems lists them after ';')."""
    parts = [part.strip(" -") for part in str(exc).splitlines() if part.strip()]
    return "; ".join(parts).replace(":;", ":")


def script(prog: str = "nqloihi") -> NoReturn:
    """The console entry point ``nqloihi`` and ``python -m pipeline``: :func:`main`, then exit
    without the interpreter's module teardown, which spends 6-10 s in garbage collection once
    lava.lib.dl is imported. Every artifact is written atomically and Lava's runtime is stopped
    by then; what is buffered is flushed."""
    code = main(prog=prog)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
