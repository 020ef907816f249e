"""The report's low-latency corrections on digits: a fine-tuned run's ``finetune`` section is its
finetune.json (and says whether the deployed .net is the fine-tuned one), a calibrated export's
``calibration`` is its .net's provenance, a plain run has neither; report.md and the CLI's
summary show them; a report.json without the sections still loads."""
import json
import shutil

import pytest

from hardware.formats.netx import read_provenance
from pipeline import stages
from pipeline.artifacts import (NET_FILE, REPORT_JSON, ArtifactError, RunDir, sha256_of, validate_report)
from pipeline.config import Config
from pipeline.finetune import RECORD, finetune
from pipeline.report import format_summary
from tests.bad_inputs.base import TINY_CONFIG

HEADING = "## Low-latency corrections"


def _cfg(run_dir, *overrides: str) -> Config:
    raw = {k: dict(v) for k, v in TINY_CONFIG.items()}
    raw["run"]["dir"] = str(run_dir)
    return Config.from_dict(raw, list(overrides))


def _report(run_dir) -> dict:
    return RunDir(run_dir).read_report().to_json_dict()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    stages.train(_cfg(root), progress=False)
    return root


@pytest.fixture
def run_dir(trained, tmp_path):
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def test_a_plain_run_has_neither(run_dir):
    cfg = _cfg(run_dir)
    stages.export(cfg, progress=False)
    stages.report(cfg, progress=False)
    report = _report(run_dir)
    assert report["finetune"] is None and report["calibration"] is None
    assert HEADING not in (run_dir / "report.md").read_text()
    assert "fine-tuned" not in format_summary(report) and "calibrated" not in format_summary(report)
    # a record that is not one says nothing and does not stop the report
    (run_dir / RECORD).write_text("{}")
    stages.report(cfg, progress=False)
    assert _report(run_dir)["finetune"] is None


def test_a_finetuned_run_reports_its_record(run_dir):
    stages.export(_cfg(run_dir), progress=False)  # the converted network, before fine-tuning
    tuned_cfg = _cfg(run_dir, "finetune.epochs=1", "finetune.lr=0.003", "run.overwrite=true")
    finetune(tuned_cfg, progress=False)
    stages.report(tuned_cfg, progress=False)
    assert _report(run_dir)["finetune"]["deployed"] is False  # model.net is the converted network
    assert "not exported from this fine-tuned checkpoint" in (run_dir / "report.md").read_text()

    stages.export(tuned_cfg, progress=False)
    stages.report(tuned_cfg, progress=False)
    record = json.loads((run_dir / RECORD).read_text())
    section, result = _report(run_dir)["finetune"], record["result"]
    for key in ("epochs", "timesteps", "neuron", "snn_val_before", "snn_val_after", "best_epoch",
                "select_samples", "wall_time_s"):
        assert section[key] == result[key], key
    for key in ("lr", "surrogate", "batch_size"):
        assert section[key] == record["settings"]["finetune"][key], key
    assert [h["snn_val"] for h in section["history"]] == [h["snn_val"] for h in result["history"]]
    assert section["finetuned_sha256"] == record["finetuned_sha256"] and section["deployed"] is True
    md = (run_dir / "report.md").read_text()
    assert HEADING in md and f"Fine-tuned** (`finetune`) as an SNN at T = {result['timesteps']}" in md
    assert "not exported from this fine-tuned checkpoint" not in md
    assert f"fine-tuned at T = {result['timesteps']} (1 epoch(s)" in format_summary(_report(run_dir))

    # fine-tuning put back: the record no longer describes the checkpoint's network
    finetune(_cfg(run_dir, "finetune.epochs=0"), progress=False)
    stages.report(tuned_cfg, progress=False)
    if record["finetuned_sha256"] != record["converted_sha256"]:
        assert _report(run_dir)["finetune"] is None


def test_a_calibrated_export_reports_its_provenance(run_dir):
    cfg = _cfg(run_dir, "snn.calibrate=bias", "snn.calibrate_samples=64")
    stages.export(cfg, progress=False)
    stages.report(cfg, progress=False)
    recorded = read_provenance(run_dir / NET_FILE)["calibration"]
    section = _report(run_dir)["calibration"]
    assert section == {**recorded, "path": str(run_dir / NET_FILE), "sha256": sha256_of(run_dir / NET_FILE)}
    assert section["mode"] == "bias" and section["samples"] == 64 and section["layers"]
    assert _report(run_dir)["finetune"] is None
    md = (run_dir / "report.md").read_text()
    assert HEADING in md and "`snn.calibrate=bias`" in md
    for layer in section["layers"]:
        assert f"| {layer['layer']} |" in md
    assert "calibrated (bias) at T = 2 on 64 training images" in format_summary(_report(run_dir))
    # exported again without calibration: the section goes with the file
    plain = _cfg(run_dir, "run.overwrite=true")
    stages.export(plain, progress=False)
    assert "calibrated" not in format_summary(_report(run_dir))  # read from the former file: not shown
    stages.report(plain, progress=False)
    assert _report(run_dir)["calibration"] is None


def test_reports_without_the_sections_still_load_and_bad_ones_are_named(tmp_path):
    assert validate_report({"format_version": 1, "accuracy": {"ann": 0.9}}, "old").finetune is None
    assert validate_report({"finetune": None, "calibration": None}, "new").calibration is None
    bad = {"calibration": {"mode": "scale", "timesteps": 2, "samples": 4}}
    with pytest.raises(ArtifactError, match="calibration.mode"):
        validate_report(bad, str(tmp_path / REPORT_JSON))
