"""The run directory (pipeline.artifacts): atomic writes, typed report.json sections, every
unreadable report.json or unusable run.dir / run.net a one-line error before any work, and
``--json`` printing exactly one JSON document."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import artifacts, cli
from pipeline.artifacts import ArtifactError, Report, RunDir, atomic_path, merge_report, prepare_run_dir
from tests.test_report import full_report, training_and_eval

REPO = Path(__file__).resolve().parents[1]
DEPLOY = str(REPO / "deploy.yaml")


# --------------------------------------------------------------------------- atomic writes
def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    for exc in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(exc):
            with atomic_path(target) as tmp:
                tmp.write_text("half")
                raise exc
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["report.json"]
    with atomic_path(target, suffix=".npz") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".npz.tmp")
        tmp.write_text("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["report.json"]


def test_atomic_files_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        artifacts.atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


# --------------------------------------------------------------------------- report.json round trips
def test_report_round_trip_keeps_documented_keys_and_unknown_ones(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_report().to_json_dict() == {"format_version": artifacts.REPORT_FORMAT}
    written = {**training_and_eval(), "bench_wall_time_s": 12.5}
    run.update_report(written)
    on_disk = json.loads(run.report_json.read_text())
    assert on_disk == {**written, "format_version": artifacts.REPORT_FORMAT}
    assert "lambda" in on_disk["training"]["history"][0]          # the alias, not lambda_
    assert run.read_report().training.history[-1].lambda_[1] == pytest.approx(2.0)


def test_hardware_sections_are_their_dataclasses_json_key_by_key(tmp_path, rng):
    """quantization, probes, energy and resources (each section typed by its hardware result
    dataclass, not a copy) read back as written; a key a newer writer added inside one is kept,
    a missing or mistyped key of the dataclass is refused naming it."""
    run = RunDir(tmp_path)
    sections = {k: v for k, v in full_report(rng, tmp_path).items()
                if k in ("quantization", "probes", "energy", "resources")}
    sections["resources"]["layers"][0]["newer_key"] = [1, 2]
    run.update_report(sections)
    written = json.loads(json.dumps(sections))
    assert json.loads(run.report_json.read_text()) == {**written, "format_version": artifacts.REPORT_FORMAT}
    assert run.read_report().to_json_dict() == {**written, "format_version": artifacts.REPORT_FORMAT}
    del written["energy"]["layers"][1]["spike_routing"]
    with pytest.raises(ArtifactError, match=r"section energy.layers.1.spike_routing: Field required"):
        merge_report(Report(), written)
    written["probes"]["layers"][0]["fan_in_max"] = 1.5
    with pytest.raises(ArtifactError, match=r"section probes.layers.0.fan_in_max"):
        merge_report(Report(), {"probes": written["probes"]})


def test_merge_accuracy_key_by_key_replace_other_sections_and_clear_owned_ones():
    base = merge_report(Report(), {"accuracy": {"ann": 0.9, "snn_float": {"1": 0.5}},
                                   "lava": {"samples": 3, "agreement": 1.0, "backend": "loihi2-sim",
                                            "probes_equal_reference": True},
                                   "raster": {"path": "raster.npz", "sha256": "ab"}})
    new = merge_report(base, {"accuracy": {"lava": {"4": 0.75}},
                              "lava": {"samples": 2, "agreement": 0.5, "backend": "loihi2-sim"}},
                       replace=("lava", "raster"))
    out = new.to_json_dict()
    assert out["accuracy"] == {"ann": 0.9, "snn_float": {"1": 0.5}, "lava": {"4": 0.75}}
    assert out["lava"] == {"samples": 2, "agreement": 0.5, "backend": "loihi2-sim"}  # no stale probes flag
    assert "raster" not in out


def test_a_stage_producing_a_bad_section_is_refused():
    with pytest.raises(ArtifactError, match=r"section lava.agreement"):
        merge_report(Report(), {"lava": {"samples": 1, "agreement": "all", "backend": "x"}})


BAD_REPORTS = {
    "truncated": ('{"accuracy": {"ann": 0.9', "not readable JSON"),
    "empty file": ("", "not readable JSON"),
    "list": ("[1, 2]", "expected a JSON object, got list"),
    "number": ("3", "expected a JSON object, got int"),
    "string": ('"report"', "expected a JSON object, got str"),
    "null": ("null", "expected a JSON object, got NoneType"),
    "unknown format": ('{"format_version": 2}', "format_version 2"),
    "format as text": ('{"format_version": "1"}', "format_version '1'"),
    "format as bool": ('{"format_version": true}', "format_version True"),
    "duplicate key": ('{"accuracy": {}, "accuracy": {}}', "duplicate key 'accuracy'"),
    "accuracy list": ('{"accuracy": []}', "section accuracy"),
    "accuracy by t text": ('{"accuracy": {"snn_float": {"1": "high"}}}', "section accuracy.snn_float.1"),
    "accuracy bad t": ('{"accuracy": {"lava": {"T": 0.5}}}', "section accuracy.lava.T"),
    "ann as bool": ('{"accuracy": {"ann": true}}', "section accuracy.ann"),
    "history dict": ('{"training": {"history": {}}}', "section training.history"),
    "epoch text": ('{"training": {"history": [{"epoch": "one"}]}}', "section training.history.0.epoch"),
    "lava samples text": ('{"lava": {"samples": "3", "agreement": 1.0, "backend": "x"}}',
                          "section lava.samples"),
    "lava without agreement": ('{"lava": {"samples": 3, "backend": "x"}}', "section lava.agreement"),
    "probes layers missing": ('{"probes": {"samples": 1, "timesteps": 4}}', "section probes.layers"),
    "probe layer neurons text": ('{"probes": {"samples": 1, "timesteps": 4, "layers": [{"name": "a", '
                                 '"kind": "dense", "neurons": "many"}]}}', "section probes.layers.0"),
    "quantization dict": ('{"quantization": {"layers": []}}', "section quantization"),
    "energy total text": ('{"energy": {"total_pj": "x"}}', "section energy"),
    "resources fits text": ('{"resources": {"fits": "yes"}}', "section resources"),
    "readout unknown": ('{"readout": "votes"}', "section readout"),
    "config not sections": ('{"config": {"train": 3}}', "section config.train"),
    "test_samples float": ('{"test_samples": 1.5}', "section test_samples"),
    "wall time text": ('{"wall_time_s": "long"}', "section wall_time_s"),
    "deep nesting": ("[" * 100_000 + "]" * 100_000, "not readable JSON"),
    "not utf-8": (b"\xff\xfe{}", "not UTF-8"),
}


@pytest.mark.parametrize("name", list(BAD_REPORTS))
def test_every_corrupt_report_json_is_one_clean_error(tmp_path, name):
    content, needle = BAD_REPORTS[name]
    path = tmp_path / "report.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ArtifactError) as info:
        RunDir(tmp_path).read_report()
    message = str(info.value)
    assert str(path) in message and needle in message and "\n" not in message


def test_report_json_too_big_or_a_directory_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "report.json"
    with open(path, "wb") as f:  # sparse: costs no disk and must never be read into memory
        f.truncate(artifacts.MAX_REPORT_BYTES + 1)
    with pytest.raises(ArtifactError, match="more than the"):
        RunDir(tmp_path).read_report()
    path.unlink()
    path.mkdir()
    with pytest.raises(ArtifactError, match="is a directory"):
        RunDir(tmp_path).read_report()


# --------------------------------------------------------------------------- before any work, via the CLI
def _main_error(capsys, *argv) -> str:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    assert code == 2, captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in captured.err and captured.out == ""
    return errors[0]


@pytest.mark.parametrize("stage", ["train", "evaluate", "export", "run", "all"])
@pytest.mark.parametrize("content", ['{"accuracy": {"ann": 0.9', '{"lava": []}', '{"format_version": 9}'])
def test_corrupt_report_stops_a_stage_before_its_work(tmp_path, capsys, stage, content):
    (tmp_path / "report.json").write_text(content)
    error = _main_error(capsys, stage, "--config", DEPLOY, "--set", f"run.dir={tmp_path}",
                        "--set", "train.epochs=1")
    assert "report.json" in error
    assert sorted(os.listdir(tmp_path)) == ["report.json"]          # no checkpoint, no .net, nothing


def _run_dir_cases(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    return {
        "a file": (str(a_file), "is a file, not a directory"),
        "under a file": (str(a_file / "run"), "which is a file"),
        "a NUL": ('"' + str(tmp_path) + '/a\\0b"', "NUL"),
        "a long name": (str(tmp_path / ("r" * 300)), "255"),
    }


@pytest.mark.parametrize("case", ["a file", "under a file", "a NUL", "a long name"])
def test_bad_run_dir_is_a_clean_error_naming_run_dir(tmp_path, capsys, case):
    value, needle = _run_dir_cases(tmp_path)[case]
    before = sorted(os.listdir(tmp_path))
    error = _main_error(capsys, "train", "--config", DEPLOY, "--set", f"run.dir={value}")
    assert "run.dir" in error and needle in error
    assert sorted(os.listdir(tmp_path)) == before


def test_run_dir_path_beyond_path_max(tmp_path):
    with pytest.raises(ArtifactError, match="run.dir is too long"):
        prepare_run_dir(str(tmp_path) + "/d" * 2100)
    assert os.listdir(tmp_path) == []


def test_run_dir_that_cannot_be_written():
    for unwritable in ("/proc/nqloihi-run", "/sys/nqloihi-run"):
        if Path(unwritable).parent.is_dir():
            with pytest.raises(ArtifactError, match=f"run.dir {unwritable} (cannot be created|is not writable)"):
                prepare_run_dir(unwritable)
            return
    pytest.skip("no read-only file system (/proc, /sys) here")


@pytest.mark.parametrize("case", ["missing", "a directory", "a NUL"])
def test_bad_run_net_is_a_clean_error_naming_run_net(tmp_path, capsys, case):
    value = {"missing": str(tmp_path / "none.net"), "a directory": str(tmp_path),
             "a NUL": '"' + str(tmp_path) + '/a\\0.net"'}[case]
    needle = {"missing": "no file at", "a directory": "not a regular file", "a NUL": "NUL"}[case]
    error = _main_error(capsys, "run", "--config", DEPLOY, "--set", f"run.dir={tmp_path / 'run'}",
                        "--set", f"run.net={value}")
    assert "run.net" in error and needle in error


def test_run_without_a_net_file_says_what_to_run(tmp_path, capsys):
    error = _main_error(capsys, "run", "--config", DEPLOY, "--set", f"run.dir={tmp_path}")
    assert "run.net" in error and "model.net" in error and "pipeline export" in error


# --------------------------------------------------------------------------- --json
def _written_report(run_dir: Path) -> None:
    RunDir(run_dir).update_report(training_and_eval())


def test_report_json_output_is_one_document(tmp_path, capsys):
    _written_report(tmp_path)
    assert cli.main(["report", "--json", "--config", DEPLOY, "--set", f"run.dir={tmp_path}"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["report_md"].endswith("report.md") and "lava" in out["missing"]


def noisy_stage(cfg, progress=True):
    print("a library talking on stdout")
    os.write(1, b"a C library talking on fd 1\n")
    return {"accuracy": {"ann": float("nan")}}


def test_json_mode_sends_anything_a_stage_prints_to_stderr(tmp_path, capfd, monkeypatch):
    monkeypatch.setitem(cli.STAGES, "evaluate", (__name__, "noisy_stage", ""))
    assert cli.main(["evaluate", "--json", "--config", DEPLOY, "--set", f"run.dir={tmp_path}"]) == 0
    captured = capfd.readouterr()
    assert json.loads(captured.out) == {"accuracy": {"ann": None}}   # strict JSON: NaN is null
    assert "a library talking" in captured.err and "a C library" in captured.err


def test_summary_table_without_json(tmp_path, capsys):
    _written_report(tmp_path)
    assert cli.main(["report", "--config", DEPLOY, "--set", f"run.dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "SNN float" in out and "| 0.9500 |" in out


def test_report_json_subprocess(tmp_path):
    _written_report(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "report", "--json", "--config", DEPLOY,
                           "--set", f"run.dir={tmp_path}"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["plots"]["training"].endswith("training.png")
