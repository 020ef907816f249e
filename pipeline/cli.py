"""Command-line front end: ``python -m pipeline <stage> --config deploy.yaml [--set k=v ...]``.

Each subcommand validates the whole config first (so a typo fails before any
work), then calls the stage of the same name in :mod:`pipeline.stages`
(``all`` calls ``run_all``). On stdout it prints the accuracy table of the
run directory's report.json (``--json``: the stage's result dict as JSON
instead). Logs go to stderr.

Exit codes: 0 success; 2 a :class:`~hardware.errors.ToolkitError` (printed
as ``error: <message>``, no traceback) or a command-line usage error; 130
interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional, Sequence

from tqdm.contrib.logging import logging_redirect_tqdm

from hardware.errors import ToolkitError

log = logging.getLogger("pipeline")

#: subcommand -> (function name in pipeline.stages, help)
STAGES = {
    "train": ("train", "train the NQ ANN (sigma re-estimated each epoch), save the checkpoint"),
    "evaluate": ("evaluate",
                 "ANN and SNN accuracy for T = 1..eval.timesteps (reference simulator)"),
    "export": ("export", "convert, quantize to Loihi 2 fixed point and write the netx .net file"),
    "run": ("run", "run the .net file in Lava and compare it bit for bit with the simulator"),
    "report": ("report", "write report.json and plots from the stages' outputs"),
    "all": ("run_all", "train, evaluate, export, run and report in one go"),
}

EXIT_TOOLKIT_ERROR = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default="deploy.yaml", metavar="PATH",
                        help="YAML config file (default: deploy.yaml)")
    common.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="override one config key, value parsed as YAML "
                             "(repeatable), e.g. --set nq.noise=false")
    common.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    common.add_argument("--json", action="store_true",
                        help="print the stage's result as JSON on stdout instead of the summary table")
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Train NQ ANNs, convert them to SNNs and run them bit-exactly on "
                    "Loihi 2 via Lava.")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(STAGES) + "}",
                                required=True)
    for name, (_, help_text) in STAGES.items():
        sub.add_parser(name, parents=[common], help=help_text, description=help_text)
    return parser


def _configure_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def _run(args: argparse.Namespace) -> dict:
    from pipeline.config import load_config

    cfg = load_config(args.config, args.overrides)
    log.info("config %s valid (data=%s, arch=%s, run.dir=%s)", args.config, cfg.data.name,
             cfg.arch, cfg.run.dir)
    # Imported here so that config errors are reported even before the heavy
    # stage modules (torch, lava) are imported.
    from pipeline import stages

    fn_name = STAGES[args.command][0]
    # log lines go above the progress bars instead of through them (after the stages'
    # import: tqdm's lock fixes the multiprocessing start method Lava sets on import)
    with logging_redirect_tqdm():
        return getattr(stages, fn_name)(cfg)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.quiet)
    try:
        result = _run(args)
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_TOOLKIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
    elif args.command != "all":  # run_all prints its own summary
        from pipeline.stages import format_summary, read_report

        print(format_summary(read_report(result_dir(args))))
    return 0


def result_dir(args: argparse.Namespace):
    from pipeline.config import load_config

    return load_config(args.config, args.overrides).run_dir
