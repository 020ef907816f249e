"""Bad report.json files: damaged or foreign JSON, wrong-typed sections, unknown format
versions. Stage ``report`` reads it; ``evaluate``, ``export`` and ``train`` update it
(and must refuse a bad one, not crash after their work is done)."""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Sequence

from pipeline.artifacts import RASTER_NPZ, REPORT_JSON

from . import Case, default_run
from .base import NOT_REGULAR_KINDS, Workspace, deep_json, many_keys_json, not_regular


def report_text(make: Callable[[str], str | bytes]) -> Callable[[Workspace], Sequence[str]]:
    def plant(ws: Workspace) -> Sequence[str]:
        p = ws.run / REPORT_JSON
        new = make(p.read_text() if p.exists() else "{}")
        p.write_bytes(new.encode() if isinstance(new, str) else new)
        return ()
    return plant


def report_edit(edit: Callable[[dict], None]) -> Callable[[Workspace], Sequence[str]]:
    def make(text: str) -> str:
        doc = json.loads(text)
        edit(doc)
        return json.dumps(doc, allow_nan=True)
    return report_text(make)


def set_path(path: str, value: Any) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return edit


TEXT = {
    "empty": lambda t: "",
    "truncated-half": lambda t: t[:len(t) // 2],
    "truncated-last-brace": lambda t: t.rstrip()[:-1],
    "list": lambda t: "[1, 2, 3]",
    "null": lambda t: "null",
    "number": lambda t: "42",
    "string": lambda t: '"report"',
    "binary": lambda t: b"\x89PNG\r\n\x1a\n" + bytes(32),
    "invalid-utf8": lambda t: b'{"format_version": 1, "x": "\xff\xfe"}',
    "deeply-nested": lambda t: '{"format_version": 1, "accuracy": ' + deep_json(100000) + "}",
    "duplicate-keys": lambda t: t.rstrip()[:-1] + ', "format_version": 1, "format_version": 7}',
    # issue 18: a quadratic duplicate-key check spun for over a minute on these
    "100k-keys-one-duplicate": lambda t: many_keys_json(100_000),
    "100k-keys-duplicate-first": lambda t: many_keys_json(100_000, duplicate="k0"),
}
#: texts whose refusal must be fast (bomb: under a second)
FAST_TEXT = ("deeply-nested", "100k-keys-one-duplicate", "100k-keys-duplicate-first")
#: (dotted path, wrong value) for sections the stages and the report read
WRONG = [
    ("format_version", 99), ("format_version", "1"), ("format_version", None),
    ("format_version", 1.5), ("accuracy", "high"), ("accuracy", [0.9]), ("accuracy.ann", "x"),
    ("accuracy.ann", [1]), ("accuracy.snn_float", [0.1, 0.2]), ("accuracy.snn_float", {"1": "x"}),
    ("accuracy.snn_float", {"one": 0.5}), ("training", 5), ("training.history", "x"),
    ("training.history", [1, 2]), ("checkpoint", []), ("checkpoint.sigma", "x"), ("export", 5),
    ("export.path", 7), ("quantization", "x"), ("config", []), ("lava", "x"),
    ("lava.agreement", "all"), ("energy", [1]), ("probes", "x"), ("accuracy.ann", 1e999),
    # issue 18: values that do not mean what they say
    ("lava.agreement", float("nan")), ("lava.agreement", float("inf")), ("lava.agreement", 1.5),
    ("lava.agreement", -0.1), ("accuracy.ann", float("nan")), ("accuracy.snn_float", {"2": float("nan")}),
    ("checkpoint.lambda", [0.0]), ("checkpoint.lambda", [-1.0]), ("checkpoint.lambda", [float("nan")]),
    ("checkpoint.sigma", [-0.5]), ("format_version", 2), ("format_version", 0),
]


WRONG_SLOW = [("format_version", None), ("format_version", 1.5), ("accuracy", [0.9]),
              ("accuracy.ann", [1]), ("accuracy.snn_float", {"1": "x"}),
              ("accuracy.snn_float", {"one": 0.5}), ("training.history", [1, 2]),
              ("checkpoint.sigma", "x"), ("export.path", 7), ("quantization", "x"), ("config", []),
              ("lava.agreement", "all"), ("energy", [1]), ("probes", "x"), ("training", 5),
              ("export", 5), ("checkpoint", []), ("lava", "x")]


def _id(path: str, value: Any) -> str:
    return f"{path}={json.dumps(value, allow_nan=True).replace(' ', '')[:16]}"


#: (stage, kind) of the not-regular report.json cases in the default run (the rest: -m slow)
NOT_REGULAR_DEFAULT = {("report", "dev-zero"), ("report", "fifo"), ("evaluate", "dev-zero"),
                       ("evaluate", "fifo"), ("evaluate", "huge-sparse"), ("train", "fifo"),
                       ("report", "socket"), ("report", "directory")}


def _not_regular_cases(case) -> list[Case]:
    """report.json that is not a regular file: every stage reads it first (issue 18: a link to
    /dev/zero was read without limit, a FIFO blocked forever). Refused at once, without reading."""
    def plant(kind: str):
        def put(ws: Workspace) -> Sequence[str]:
            not_regular(kind)(ws.run / REPORT_JSON)
            return ()
        return put

    def net_file(kind: str):
        """run.dir's model.net (the file run executes, the file export would replace) as
        something that is not a regular file."""
        def put(ws: Workspace) -> Sequence[str]:
            not_regular(kind)(ws.run / "model.net")
            return ()
        return put

    def raster(kind: str):
        """A report that names a raster, and in the raster's place something endless or blocking."""
        named = report_edit(set_path("raster", {"path": RASTER_NPZ, "sha256": "0" * 64}))

        def put(ws: Workspace) -> Sequence[str]:
            named(ws)
            not_regular(kind)(ws.run / RASTER_NPZ)
            return ()
        return put

    return [case(kind, plant(kind), stage=stage, bomb=kind != "socket", timeout=30)
            for stage in ("report", "evaluate", "export", "train", "run") for kind in NOT_REGULAR_KINDS] + [
        Case(id=f"raster-report-{kind}", owner="A2", stage="report", plant=raster(kind), base="trained",
             needles=(RASTER_NPZ,), bomb=True, bomb_seconds=5.0, timeout=30, slow=kind not in ("fifo", "dev-zero"))
        for kind in ("fifo", "dev-zero", "huge-sparse", "directory")] + [
        Case(id=f"net-in-run-dir-{stage}-{kind}", owner="A2", stage=stage, plant=net_file(kind), base="trained",
             needles=("model.net",), bomb=kind != "socket", bomb_seconds=5.0, timeout=30,
             slow=(stage, kind) not in (("run", "fifo"), ("export", "dev-zero")))
        for stage in ("run", "export") for kind in NOT_REGULAR_KINDS]


def report_cases() -> list[Case]:
    def case(id_, plant, stage="report", **kw):
        return Case(id=f"report-{stage}-{id_}", owner="A2", stage=stage, plant=plant, base="trained",
                    needles=(REPORT_JSON,), **kw)

    cases = [case(k, report_text(v), bomb=k in FAST_TEXT) for k, v in TEXT.items()]
    cases += [case(_id(p, v), report_edit(set_path(p, v))) for p, v in WRONG]

    def directory(ws: Workspace) -> Sequence[str]:
        (ws.run / REPORT_JSON).unlink()
        (ws.run / REPORT_JSON).mkdir()
        return ()

    def symlink_loop(ws: Workspace) -> Sequence[str]:
        (ws.run / REPORT_JSON).unlink()
        os.symlink(ws.run / REPORT_JSON, ws.run / REPORT_JSON)
        return ()

    cases += [case("is-a-directory", directory), case("symlink-loop", symlink_loop)]
    cases += _not_regular_cases(case)
    # stages that update report.json: refused before their work, not after it
    for stage in ("evaluate", "export", "train"):
        cases.append(case("truncated-half", report_text(TEXT["truncated-half"]), stage=stage))
        cases.append(case("list", report_text(TEXT["list"]), stage=stage))
    cases.append(case(_id("accuracy", "high"), report_edit(set_path("accuracy", "high")),
                      stage="evaluate"))
    cases.append(case(_id("format_version", 99), report_edit(set_path("format_version", 99)),
                      stage="export"))
    slow = {f"report-report-{_id(p, v)}" for p, v in WRONG_SLOW} | {
        "report-evaluate-list", "report-export-truncated-half", "report-train-list",
        "report-report-null", "report-report-number", "report-report-string",
        "report-report-truncated-last-brace",
        f"report-evaluate-{_id('accuracy', 'high')}", f"report-export-{_id('format_version', 99)}",
        "report-report-100k-keys-duplicate-first"} | {
        f"report-report-{_id(p, v)}" for p, v in WRONG[-10:]}  # the issue-18 values: two in the default run
    slow |= {f"report-{stage}-{kind}" for stage in ("report", "evaluate", "export", "train", "run")
             for kind in NOT_REGULAR_KINDS if (stage, kind) not in NOT_REGULAR_DEFAULT}
    return default_run(cases, {c.id for c in cases} - slow)
