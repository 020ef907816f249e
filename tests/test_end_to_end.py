"""End to end on digits: train -> evaluate -> export -> run (Lava) -> report.

Lava and the bit-accurate reference simulator must agree on every sample Lava ran."""
import json

import pytest

from pipeline import stages
from pipeline.config import load_config


@pytest.mark.lava
@pytest.mark.parametrize("neuron", ["if_soft", "cuba"])
def test_digits_end_to_end(tmp_path, neuron):
    # cuba floors where QCFS rounds (issue 9): with the paper's L = 4, λ0 = 8 a 6-epoch run
    # stays near chance on it, so its pipeline check trains with L = 8, λ0 = 4, where it does not
    extra = ["nq.levels=8", "nq.init_threshold=4"] if neuron == "cuba" else []
    cfg = load_config("deploy.yaml", [f"run.dir={tmp_path}", "train.epochs=6", f"snn.neuron={neuron}",
                                      "run.lava_samples=6", "eval.timesteps=6", *extra])
    stages.train(cfg, progress=False)
    evaluated = stages.evaluate(cfg, progress=False)
    stages.export(cfg, progress=False)
    ran = stages.run(cfg, progress=False)
    rendered = stages.report(cfg, progress=False)

    report = json.loads((tmp_path / "report.json").read_text())
    assert 0.9 <= report["accuracy"]["ann"] <= 1.0
    assert set(report["accuracy"]["snn_float"]) == {str(t) for t in range(1, 7)}
    # cuba (v0 = 0, strict >, reset to zero) needs many more steps and epochs than this
    # short run gives it: only ask for clearly better than chance (0.1)
    floor = 0.8 if neuron == "if_soft" else 0.2
    assert report["accuracy"]["snn_fixed"]["6"] > floor
    assert report["lava"]["samples"] == 6
    assert report["lava"]["agreement"] == 1.0, report["lava"]["disagreeing_samples"]
    assert evaluated["accuracy"]["snn_float"]["6"] > floor
    assert ran["probes"]["totals"]["spikes"] > 0
    # Lava's own probes (per layer and step) count exactly what the reference simulator counts
    assert report["lava"]["probes_equal_reference"] is True
    assert report["energy"]["estimate"] is True and report["resources"]["fits"] is True
    assert (tmp_path / "report.md").exists() and rendered["plots"]
    assert (tmp_path / "model.net").exists()
