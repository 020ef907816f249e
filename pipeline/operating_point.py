"""The operating points of a deployed network: accuracy, work and energy at every T, and the T to
suggest.

A network is deployed at one T (``snn.timesteps``); the run stage also reports every T = 1 …
``eval.timesteps`` from the same file, so a user sees what fewer or more steps would buy. Each
row is the fixed-point (bit-accurate) result on the test split: accuracy, steps to decision,
and the reference simulator's work and energy per inference in both conventions
(:class:`hardware.analysis.energy.CostAtT`). The suggested T is the smallest whose fixed-point
accuracy on the *validation* split is within ``eval.max_drop`` of the ANN's validation accuracy:
the test split never chooses anything.

Steps to decision of a sample at T: the first step s ≤ T from which the prediction (argmax of
the readout so far) no longer changes up to T; a decision at step s could stop the chip there.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Optional, Sequence

import numpy as np

from hardware.analysis.energy import CostAtT


def steps_to_decision(predictions: np.ndarray) -> list[float]:
    """predictions (T, N) by step -> for every t = 1 … T the mean over samples of the first step
    from which the prediction stays the one at t."""
    result = []
    for t in range(1, predictions.shape[0] + 1):
        final = predictions[t - 1]
        decided = np.full(final.shape, t)
        stable = np.ones(final.shape, dtype=bool)
        for s in range(t - 1, 0, -1):
            stable &= predictions[s - 1] == final
            decided[stable] = s
        result.append(float(decided.mean()))
    return result


def suggest_timesteps(ann_val: Optional[float], snn_val: Optional[dict], max_drop: float
                      ) -> tuple[Optional[int], str]:
    """(the smallest T whose validation accuracy is ≥ ann_val − max_drop or None, why)."""
    if ann_val is None or not snn_val:
        missing = "the ANN's validation accuracy (evaluate stage)" if ann_val is None else \
            "the SNN's validation accuracy"
        return None, f"no suggestion: {missing} is not known"
    floor = ann_val - max_drop
    for t in sorted(int(k) for k in snn_val):
        if snn_val[str(t)] >= floor:
            return t, (f"T = {t} is the smallest T whose fixed-point validation accuracy "
                       f"({snn_val[str(t)]:.4f}) is within {max_drop:g} (eval.max_drop) of the ANN's "
                       f"validation accuracy ({ann_val:.4f})")
    largest = max(int(k) for k in snn_val)
    return None, (f"no T ≤ {largest} is within {max_drop:g} (eval.max_drop) of the ANN's validation "
                  f"accuracy ({ann_val:.4f}); the best is {max(snn_val.values()):.4f}")


def operating_points(deployment_t: int, test_predictions: np.ndarray, test_labels: np.ndarray,
                     costs: Optional[Sequence[CostAtT]], validation: Optional[dict],
                     ann_val: Optional[float], max_drop: float) -> dict:
    """report.json's ``operating_points`` section.

    ``test_predictions``: (T, N) fixed-point predictions by step; ``costs``: one per t (None
    without probes); ``validation``: ``{"samples": n, "snn_fixed": {t: accuracy}}`` or None."""
    accuracy = (test_predictions == test_labels[None]).mean(axis=1)
    decision = steps_to_decision(test_predictions)
    val_acc = (validation or {}).get("snn_fixed") or {}
    rows = [{"timesteps": t, "snn_fixed": float(accuracy[t - 1]), "snn_fixed_val": val_acc.get(str(t)),
             "steps_to_decision": decision[t - 1],
             "cost": asdict(costs[t - 1]) if costs else None}
            for t in range(1, len(accuracy) + 1)]
    suggested, why = suggest_timesteps(ann_val, val_acc, max_drop)
    return {"deployment_timesteps": deployment_t, "split": "test", "rows": rows,
            "validation_samples": (validation or {}).get("samples"), "ann_val": ann_val,
            "max_drop": max_drop, "suggested_timesteps": suggested, "suggestion": why}


__all__ = ["steps_to_decision", "suggest_timesteps", "operating_points"]
