"""Plots of a run (PNG files in the run directory), drawn from report.json data only.

Every function takes the part of the report it needs (a validated report.json
section, :mod:`pipeline.artifacts`) and the run directory, writes one PNG
atomically under the name :class:`~pipeline.artifacts.RunDir` gives it and
returns its path, or returns ``None`` when its data is absent (so a partial
report still renders). matplotlib runs on the Agg backend (no display needed).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import matplotlib

matplotlib.use("Agg")  # headless: never try to open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .artifacts import RunDir, atomic_path  # noqa: E402

DPI = 110

_OP_LABELS = {
    "synaptic_binary": "synaptic ops (binary spikes)",
    "synaptic_graded": "synaptic ops (graded input)",
    "neuron_update_active": "neuron updates (active)",
    "neuron_update_inactive": "neuron updates (inactive)",
    "spike_routing": "spike routing",
    "static": "static",
}


def _save(fig, run_dir: RunDir, kind: str) -> Path:
    path = run_dir.plot(kind)
    try:
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=DPI, format="png")
    finally:
        plt.close(fig)
    return path


def _series(curve: Optional[Mapping]) -> tuple[list, list]:
    if not curve:
        return [], []
    pts = sorted((int(t), float(v)) for t, v in curve.items() if v is not None)
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_accuracy(accuracy: Optional[Mapping], run_dir: RunDir, lava_samples: Optional[int] = None,
                  deployed: Optional[int] = None) -> Optional[Path]:
    """Test accuracy vs time steps T: ANN line, float SNN, fixed-point SNN, Lava points, the
    deployment T (where known) as a vertical line."""
    if not accuracy:
        return None
    curves = {k: _series(accuracy.get(k)) for k in ("snn_float", "snn_fixed", "lava")}
    if accuracy.get("ann") is None and not any(ts for ts, _ in curves.values()):
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if accuracy.get("ann") is not None:
        ax.axhline(accuracy["ann"], color="black", linestyle="--", linewidth=1.2,
                   label=f"ANN ({accuracy['ann']:.4f})")
    style = {"snn_float": ("SNN float (reference simulator)", "o-", "tab:blue"),
             "snn_fixed": ("SNN fixed point (bit-accurate simulator)", "s-", "tab:orange"),
             "lava": ("Lava" + (f" ({lava_samples} samples)" if lava_samples else "")
                      + (f", T={curves['lava'][0][0]} only" if len(curves["lava"][0]) == 1 else ""),
                      "x", "tab:green")}
    for key, (ts, vs) in curves.items():
        if ts:
            label, fmt, color = style[key]
            ax.plot(ts, vs, fmt, color=color, label=label, markersize=7 if key == "lava" else 5,
                    markeredgewidth=2 if key == "lava" else 1)
    if deployed is not None:
        ax.axvline(deployed, color="tab:red", linestyle=":", linewidth=1.2, label=f"deployed T = {deployed}")
    all_t = sorted({t for ts, _ in curves.values() for t in ts})
    if all_t:
        ax.set_xticks(all_t if len(all_t) <= 16 else all_t[:: max(1, len(all_t) // 16)])
    ax.set_xlabel("time steps T")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy vs time steps")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, run_dir, "accuracy")


def _operating_panel(ax, rows: list, energy_key: str, ann: Optional[float], deployed: int,
                     suggested: Optional[int]) -> None:
    """Accuracy against energy per inference at every T on one axis: points labelled by T, the
    deployment T and the suggested T marked, the ANN's accuracy as a line."""
    xs = [r["cost"][energy_key] for r in rows]
    ys = [r["snn_fixed"] for r in rows]
    ax.plot(xs, ys, "o-", color="tab:orange", markersize=4, label="SNN fixed point, T = 1, 2, …")
    for r, x, y in zip(rows, xs, ys):
        ax.annotate(str(r["timesteps"]), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    marks = [(deployed, "*", 15, "tab:red", f"deployed (T = {deployed})")]
    if suggested is not None and suggested != deployed:
        marks.append((suggested, "D", 8, "tab:green", f"suggested (T = {suggested})"))
    for t, marker, size, color, label in marks:
        if t <= len(rows):
            ax.plot(xs[t - 1], ys[t - 1], marker, color=color, markersize=size, label=label, linestyle="")
    if ann is not None:
        ax.axhline(ann, color="black", linestyle="--", linewidth=1.1, label=f"ANN ({ann:.4f})")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")


def plot_operating_points(points: Optional[Mapping], ann: Optional[float], run_dir: RunDir
                          ) -> Optional[Path]:
    """Accuracy against energy per inference, (a) the Loihi estimate and (b) the literature
    convention side by side (never on one axis), every T of the deployed file; in (b) the
    ANN's own energy too."""
    rows = [r for r in (points or {}).get("rows") or () if r.get("cost")]
    if not rows:
        return None
    deployed, suggested = points["deployment_timesteps"], points.get("suggested_timesteps")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4))
    _operating_panel(ax1, rows, "loihi_uj", ann, deployed, suggested)
    ax1.set_xlabel("µJ per inference, (a) Loihi estimate")
    ax1.set_title("(a) accuracy vs Loihi energy estimate")
    _operating_panel(ax2, rows, "literature_snn_uj", ann, deployed, suggested)
    ann_uj = rows[0]["cost"].get("literature_ann_uj")
    if ann is not None and ann_uj is not None:
        ax2.plot([ann_uj], [ann], "s", color="black", markersize=7, label=f"ANN fp32: {ann_uj:.3g} µJ")
        ax2.legend(fontsize=7, loc="lower right")
    ax2.set_xlabel("µJ per inference, (b) literature convention (compute only)")
    ax2.set_title("(b) accuracy vs compute energy, SNN and ANN")
    fig.text(0.01, 0.01, "Points: the same .net file run for T steps (bit-accurate, test split). "
             "(a) Loihi 1 per-op figures on counted ops; (b) 45 nm fp32 arithmetic only. "
             "Do not compare (a) with (b).", fontsize=7, color="dimgray")
    return _save(fig, run_dir, "operating_points")


def plot_firing_rates(probes: Optional[Mapping], run_dir: RunDir) -> Optional[Path]:
    """Mean firing rate (spikes per neuron per step) of each spiking layer (the non-firing
    output integrator of a potential readout has no firing rate and is left out)."""
    if not probes or not probes.get("layers"):
        return None
    layers = [la for la in probes["layers"]
              if not la.get("readout") and la.get("firing_rate") is not None]
    if not layers:
        return None
    names = [la["name"] for la in layers]
    rates = [la["firing_rate"] for la in layers]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(names) + 2), 3.8))
    bars = ax.bar(range(len(names)), rates, color="tab:purple")
    for b, r in zip(bars, rates):
        ax.annotate(f"{r:.3f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("spikes / neuron / step")
    ax.set_ylim(0, max(max(rates) * 1.2, 1e-3))
    ax.set_title(f"Firing rate per layer ({probes.get('source', '?')}, "
                 f"{probes.get('samples', '?')} samples, T={probes.get('timesteps', '?')})")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, run_dir, "firing_rate")


def plot_energy(energy: Optional[Mapping], run_dir: RunDir) -> Optional[Path]:
    """Energy per inference: (a) the Loihi estimate stacked by operation per layer; (b) the
    literature convention's SNN and ANN totals, apart from (a)."""
    if not energy or not energy.get("layers"):
        return None
    layers = energy["layers"]
    ops = [op for op in _OP_LABELS if op != "static" and any(la.get(op, 0) for la in layers)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4),
                                   gridspec_kw={"width_ratios": [max(len(layers), 2), 2]})
    x = np.arange(len(layers))
    bottom = np.zeros(len(layers))
    colors = plt.get_cmap("tab10")
    for i, op in enumerate(ops):
        vals = np.array([la.get(op, 0.0) for la in layers]) * 1e-6  # pJ -> µJ
        ax1.bar(x, vals, bottom=bottom, label=_OP_LABELS[op], color=colors(i))
        bottom += vals
    ax1.set_xticks(x)
    ax1.set_xticklabels([la["name"] for la in layers], rotation=30, ha="right")
    ax1.set_ylabel("µJ per inference (estimate)")
    ax1.set_title("(a) Loihi estimate by layer and operation")
    ax1.legend(fontsize=7)
    ax1.grid(axis="y", alpha=0.3)

    # the ANN's compute-only figures stand only beside the SNN's in the same convention (b),
    # never beside the Loihi estimate (a) of the left panel
    lit = energy.get("literature") or {}
    names, vals, cols = ["SNN (b)"], [lit.get("snn_pj", 0.0) * 1e-6], ["tab:blue"]
    if lit.get("ann_pj") is not None:
        names.append("ANN fp32 (b)")
        vals.append(lit["ann_pj"] * 1e-6)
        cols.append("tab:red")
    bars = ax2.bar(range(len(names)), vals, color=cols)
    for b, v in zip(bars, vals):
        ax2.annotate(f"{v:.3g}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                     va="bottom", fontsize=8)
    ax2.set_xticks(range(len(names)))
    ax2.set_xticklabels(names, rotation=20, ha="right")
    ax2.set_ylabel("µJ per inference")
    ax2.set_title("(b) literature convention, compute only")
    ax2.grid(axis="y", alpha=0.3)
    fig.text(0.01, 0.01, "Left (a): Loihi 1 per-op figures (Davies 2018) applied to counted ops; "
             "no Loihi 2 per-op figures are published. Right (b): 45 nm fp32 arithmetic only "
             "(Horowitz 2014). Do not compare (a) with (b).", fontsize=7, color="dimgray")
    return _save(fig, run_dir, "energy")


def plot_raster(raster: Optional[Mapping[str, np.ndarray]], run_dir: RunDir,
                max_neurons: int = 2048) -> Optional[Path]:
    """Spike raster of one sample: one panel per layer, time step vs neuron index
    (at most ``max_neurons`` neurons per layer, evenly subsampled, are drawn)."""
    if not raster:
        return None
    names = list(raster)
    heights = [max(1.0, min(3.0, raster[n].shape[1] / 200)) for n in names]
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 1.2 + 1.3 * sum(heights)), sharex=True,
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        spikes = np.asarray(raster[name], dtype=bool)
        steps, n = spikes.shape
        idx = np.arange(n) if n <= max_neurons else np.linspace(0, n - 1, max_neurons).astype(int)
        # neurons × steps image, one cell per (neuron, step): readable for any T
        ax.imshow(spikes[:, idx].T, aspect="auto", interpolation="nearest", cmap="Greys",
                  vmin=0, vmax=1, origin="lower", extent=(0.5, steps + 0.5, -0.5, n - 0.5))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
        rate = spikes.mean() if spikes.size else 0.0
        ax.set_ylabel(f"{name}\n{n} neurons\nrate {rate:.3f}", fontsize=8)
    axes[-1, 0].set_xlabel("time step")
    if steps <= 32:
        axes[-1, 0].set_xticks(range(1, steps + 1))
    axes[0, 0].set_title("Spike raster of one sample (black = spike; neuron index per layer)")
    return _save(fig, run_dir, "raster")


def plot_training(training: Optional[Mapping], run_dir: RunDir) -> Optional[Path]:
    """σ per layer and validation accuracy (ANN, SNN) across training epochs."""
    history = (training or {}).get("history") or []
    if not history:
        return None
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    sigmas = [h.get("sigma") or [] for h in history]
    n_layers = max((len(s) for s in sigmas), default=0)
    for layer in range(n_layers):
        ys = [s[layer] if layer < len(s) else np.nan for s in sigmas]
        ax1.plot(epochs, ys, "-", marker="." if len(epochs) < 40 else None, label=f"layer {layer + 1}")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("σ (residual-noise std)")
    ax1.set_title("σ per layer")
    ax1.grid(alpha=0.3)
    if n_layers:
        ax1.legend(fontsize=7, ncol=2 if n_layers > 6 else 1)
    for key, label, color in (("ann_val", "ANN (val)", "black"), ("snn_val", "SNN (val)", "tab:blue")):
        ys = [h.get(key) for h in history]
        if any(y is not None for y in ys):
            ax2.plot(epochs, [np.nan if y is None else y for y in ys], "-o", markersize=3,
                     label=label, color=color)
    best = (training or {}).get("best_epoch")
    if best is not None:
        ax2.axvline(best, color="gray", linestyle=":", label=f"best epoch {best}")
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation accuracy")
    ax2.set_title("Validation accuracy")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8, loc="lower right")
    return _save(fig, run_dir, "training")


__all__ = ["plot_accuracy", "plot_firing_rates", "plot_energy", "plot_raster", "plot_training"]
