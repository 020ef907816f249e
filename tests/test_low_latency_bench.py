"""bench/low_latency.py's report (per neuron, every arm present, the gap to the ANN, the paired
differences against the converted arm of the same seed, the goal) and its resumable Lava pass
(one digits run)."""
from __future__ import annotations

import json

import pytest

from bench import low_latency


def _row(arm: str, seed: int, acc: float, neuron: str = "if_soft") -> dict:
    return {"arm": arm, "neuron": neuron, "seed": seed, "ann": 0.9, "ann_macs": 1000,
            "snn_fixed": {str(t): acc + 0.01 * t for t in low_latency.STEPS},
            "synops": {str(t): 100.0 * t for t in low_latency.STEPS},
            "finetune_s": None, "calibrate_s": 2.0}


def test_the_report_pairs_each_arm_with_the_converted_run_of_its_seed():
    rows = [_row("converted", 0, 0.5), _row("converted", 1, 0.6),
            _row("bias", 0, 0.7), _row("bias", 1, 0.7), _row("converted", 0, 0.1, "cuba")]
    text = low_latency.report(rows)
    assert "**if_soft**" in text and "**cuba**" in text
    assert "| bias | 0,1 | 90.00 ± 0.00 | 71.00 ± 0.00 |" in text
    assert "| bias | 2 | 15.00 ± 7.07 | 15.00 ± 7.07 | 15.00 ± 7.07 |" in text  # paired, points
    assert "| converted | 0 | 90.00 ± 0.00 | 11.00 ± 0.00 | 12.00 ± 0.00 | 14.00 ± 0.00 | -79.00" in text
    assert "ANN MACs per inference: 1000" in text


def test_the_goal_is_judged_against_the_trained_ann_on_every_seed():
    tuned = [_row("finetuned", 0, 0.88), _row("finetuned", 1, 0.80)]
    for row in tuned:
        row["ann"] = 0.5  # the fine-tuned checkpoint's own ANN is not the reference
    text = low_latency.report([_row("converted", 0, 0.5), _row("converted", 1, 0.6), *tuned])
    # T=1: 0.89 and 0.81 against 0.9 -> -1 and -9 points; T=2: 0.90, 0.82 -> 0, -8
    assert "| finetuned | 0,1 | -5.00 ± 5.66 (-9.00): missed | -4.00 ± 5.66 (-8.00): missed |" in text
    # 0.90 at T=1 and 0.91 at T=2 against 0.9: both met
    text = low_latency.report([_row("converted", 0, 0.89)])
    assert "| converted | 0 | 0.00 ± 0.00 (0.00): met | 1.00 ± 0.00 (1.00): met |" in text


def test_arm_calibrations():
    args = low_latency.parse_args(["--calibrate", "bias"])
    assert [low_latency.arm_calibration(args, a) for a in low_latency.ARMS] == [
        "none", "bias", "bias+threshold", "bias", "bias+threshold", "none", "bias"]


@pytest.mark.lava
def test_the_lava_pass_checks_each_finished_row_once(tmp_path, capsys):
    common = ["--dataset", "digits", "--epochs", "1", "--seeds", "0", "--neurons", "if_soft", "--arms",
              "converted", "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "r.jsonl"),
              "--lava-samples", "3"]
    low_latency.main(common)
    low_latency.main([*common, "--lava"])
    low_latency.main([*common, "--lava"])  # resumable: nothing left to check
    lava_rows = [json.loads(line) for line in (tmp_path / "r_lava.jsonl").read_text().splitlines()]
    assert [(r["arm"], r["timesteps"], r["samples"], r["agreement"]) for r in lava_rows] == [("converted", 2, 3, 1.0)]
    assert "| if_soft | converted | 2 | 0 | 3 / 3 |" in capsys.readouterr().out
