"""Render ``report.md`` and plots from a run directory's ``report.json``.

Nothing is re-run: the report is drawn from ``report.json`` (and
``raster.npz`` when the run stage wrote one); the report stage first fills its
``finetune`` and ``calibration`` sections from ``finetune.json`` and the deployed
``.net``'s provenance (:mod:`pipeline.report_lowlat`). Derived figures that are pure
arithmetic on stored data are computed here when the run stage did not store
them: the energy estimate from ``probes`` (with the config's ``energy``
overrides) and the resource fit and MAC counts from the ``.net`` file, which
is only read. Sections whose data is absent say what is missing and which
stage produces it.
"""
from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from hardware.analysis.activity import load_raster
from hardware.analysis.energy import (LITERATURE_INCLUDES, LOIHI2_CAVEAT, LOIHI_INCLUDES, NOT_COMPARABLE,
                                      PILOTNET_LOIHI2_REFERENCE, count_macs, energy_estimate,
                                      literature_energy, resolve_constants)
from hardware.errors import ToolkitError
from hardware.analysis.resources import check_fit

from . import plots
from .artifacts import RASTER_NPZ, REPORT_JSON, ArtifactError, RunDir, atomic_write_text, sha256_of

log = logging.getLogger(__name__)


class ReportError(ArtifactError):
    """A run directory without a report.json."""


# --------------------------------------------------------------------------- helpers
def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1e5 or abs(v) < 1e-3:
            return f"{v:.3e}"
        return f"{v:.{digits}g}" if abs(v) >= 1 else f"{v:.{digits}f}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x, 3) for x in v) + "]"
    return str(v).replace("|", "\\|")


def _table(header: list, rows: list) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c.replace("|", "\\|")
                              for c in row) + " |" for row in rows]
    return out + [""]


def _missing(what: str, stage: str) -> list[str]:
    return [f"_Not available: {what} is missing from report.json "
            f"(produced by `python -m pipeline {stage}`)._", ""]


def _image(path: Optional[Path], run_dir: Path, alt: str) -> list[str]:
    if path is None:
        return []
    return [f"![{alt}]({Path(path).relative_to(run_dir).as_posix()})", ""]


def _net_path(report: dict, run_dir: Path) -> Optional[Path]:
    for key in ("network_file", "export"):
        p = (report.get(key) or {}).get("path")
        if p:
            for cand in (Path(p), run_dir / Path(p).name):
                if cand.exists():
                    return cand
    return None


def _load_net(report: dict, run_dir: Path, notes: list):
    path = _net_path(report, run_dir)
    if path is None:
        return None
    try:
        from hardware.formats.netx import read_net
        return read_net(path)
    except (ImportError, ToolkitError, OSError) as exc:
        notes.append(f"network file {path} could not be read ({exc}); resource fit and ANN MACs "
                     "are omitted")
        return None


#: how each readout is described in report.md
READOUT_TEXT = {
    "potential": ("potential: the output layer is a non-firing integrator (the paper's readout); "
                  "the class is the argmax of its accumulated membrane after T steps"),
    "spikes": "spikes: the class is the output neuron with the most spikes",
}


def _readout(report: dict) -> Optional[str]:
    """The run's readout: stored by the run stage, else the configured one (None if unknown)."""
    return (report.get("readout") or (report.get("lava") or {}).get("readout")
            or ((report.get("config") or {}).get("snn") or {}).get("readout"))


# --------------------------------------------------------------------------- sections
def _config_section(report: dict) -> list[str]:
    lines = ["## Configuration", ""]
    cfg = report.get("config")
    if not cfg:
        return lines + _missing("the configuration", "train")
    rows = []
    for sec, body in cfg.items():
        if isinstance(body, dict):
            text = ", ".join(f"{k}={_fmt(v)}" for k, v in body.items()) or "(defaults)"
        else:
            text = _fmt(body)
        rows.append([sec, text])
    return lines + _table(["section", "settings"], rows)


def _accuracy_section(report: dict, png: Optional[Path], run_dir: Path) -> list[str]:
    lines = ["## Accuracy vs time steps", ""]
    acc = report.get("accuracy") or {}
    if not acc:
        return lines + _missing("accuracy", "evaluate")
    steps = sorted({int(t) for k in ("snn_float", "snn_fixed", "lava") for t in acc.get(k) or {}})
    lava_n = (report.get("lava") or {}).get("samples")
    header = ["T", "ANN", "SNN float", "SNN fixed point", f"Lava ({lava_n} samples)" if lava_n
              else "Lava"]
    rows = [[str(t), acc.get("ann")] + [(acc.get(k) or {}).get(str(t))
                                         for k in ("snn_float", "snn_fixed", "lava")]
            for t in steps]
    if not rows:
        rows = [["–", acc.get("ann"), None, None, None]]
    lines += [f"Test split: {_fmt(report.get('test_samples'))} samples (Lava: the first "
              f"{_fmt(lava_n)} of them). ANN is evaluated once (no time steps).", ""]
    readout = _readout(report)
    if readout:
        lines += [f"Readout: {READOUT_TEXT.get(readout, readout)}."
                  + (" Lava is read at T only (the membrane is read at the end of each "
                     "sample)." if readout == "potential" else ""), ""]
    lines += _table(header, rows)
    for key, what, stage in (("snn_float", "float-SNN accuracy", "evaluate"),
                             ("snn_fixed", "fixed-point SNN accuracy", "run"),
                             ("lava", "Lava accuracy", "run")):
        if not acc.get(key):
            lines += _missing(what, stage)
    return lines + _image(png, run_dir, "accuracy vs T")


def _agreement_section(report: dict) -> list[str]:
    lines = ["## Lava vs bit-accurate reference simulator", ""]
    lava = report.get("lava")
    if not lava:
        return lines + _missing("the Lava run", "run")
    agreement = ("agreement (identical output membrane at T and hidden-layer spikes)"
                 if _readout(report) == "potential" else "agreement (identical output spike trains)")
    rows = [["backend", lava.get("backend")], ["samples", lava.get("samples")],
            ["steps per sample", lava.get("steps_per_sample")],
            [agreement, lava.get("agreement")],
            ["wall time (s)", lava.get("wall_time_s")], ["samples / s", lava.get("samples_per_s")]]
    if "probes_equal_reference" in lava:
        rows.append(["Lava probes (spikes, synops, updates per layer and step) equal the reference's",
                     "yes" if lava["probes_equal_reference"] else "NO"])
    dis = lava.get("disagreeing_samples")
    if dis:
        rows.append(["disagreeing samples", ", ".join(str(i) for i in dis[:50])
                     + (" …" if len(dis) > 50 else "")])
    sim = report.get("simulator") or {}
    for k, label in (("float_samples_per_s", "reference simulator, float (samples/s)"),
                     ("fixed_samples_per_s", "reference simulator, fixed point (samples/s)")):
        if sim.get(k) is not None:
            rows.append([label, sim[k]])
    return lines + _table(["", "value"], rows)


def _training_section(report: dict, png: Optional[Path], run_dir: Path) -> list[str]:
    lines = ["## Training", ""]
    tr = report.get("training") or {}
    hist = tr.get("history") or []
    if not hist:
        return lines + _missing("the training history", "train")
    last = hist[-1]
    best = tr.get("best_epoch")
    best_row = next((h for h in hist if h.get("epoch") == best), last)
    lines += [f"{len(hist)} epochs; best epoch {_fmt(best)} (val ANN {_fmt(best_row.get('ann_val'))}, "
              f"val SNN {_fmt(best_row.get('snn_val'))}).", ""]
    pre = tr.get("pretrained")
    if pre:
        lines += [f"Pretrained ANN ({pre['weights']}) before NQ fine-tuning: test {_fmt(pre['ann_test'])}, "
                  f"validation {_fmt(pre['ann_val'])}.", ""]
    sig, lam = best_row.get("sigma") or [], best_row.get("lambda") or []
    if sig or lam:
        n = max(len(sig), len(lam))
        lines += ["σ and λ per layer at the best epoch:", ""]
        lines += _table(["layer", "σ", "λ (threshold)"],
                        [[str(i + 1), sig[i] if i < len(sig) else None,
                          lam[i] if i < len(lam) else None] for i in range(n)])
    return lines + _image(png, run_dir, "sigma and validation accuracy per epoch")


def _corrections(report: dict) -> tuple[Optional[dict], Optional[dict]]:
    """(fine-tuning, calibration) sections that changed the deployed network, each or None; a
    calibration read from another .net than the one exported or run since is not shown."""
    calibration = report.get("calibration") or {}
    known = {(report.get(k) or {}).get("sha256") for k in ("export", "network_file")} - {None}
    stale = bool(known) and calibration.get("sha256") is not None and calibration["sha256"] not in known
    shown = calibration if calibration.get("mode", "none") != "none" and not stale else None
    return report.get("finetune") or None, shown


def _mean_errors(calibration: dict) -> tuple[Optional[float], Optional[float]]:
    layers = calibration.get("layers") or []
    if not layers:
        return None, None
    return (sum(la["error_before"] for la in layers) / len(layers),
            sum(la["error_after"] for la in layers) / len(layers))


def _finetune_lines(tuned: dict) -> list[str]:
    t = tuned["timesteps"]
    lines = [f"**Fine-tuned** (`finetune`) as an SNN at T = {t} with its own neuron ({tuned['neuron']}), "
             f"{tuned['epochs']} epoch(s), {tuned.get('surrogate') or '–'} surrogate, Adam lr "
             f"{_fmt(tuned.get('lr'))}: SNN accuracy at T = {t} on the validation selection set "
             f"({_fmt(tuned.get('select_samples'))} samples, float simulator) **{_fmt(tuned['snn_val_before'])} → "
             f"{_fmt(tuned['snn_val_after'])}**, best epoch {tuned['best_epoch']}"
             + (" (no epoch beat the converted network, which was kept)" if tuned["best_epoch"] == 0 else "")
             + f"; wall time {_fmt(tuned.get('wall_time_s'))} s.", ""]
    history = tuned.get("history") or []
    if history:
        lines += ["Per epoch (validation SNN accuracy at T): " + ", ".join(
            f"{h['epoch']}: {_fmt(h.get('snn_val'))}" for h in history) + ".", ""]
    if tuned.get("deployed") is False:
        lines += ["**The deployed .net was not exported from this fine-tuned checkpoint**: export again "
                  "to deploy it.", ""]
    return lines


def _calibration_lines(calibration: dict) -> list[str]:
    before, after = _mean_errors(calibration)
    lines = [f"**Calibrated** at export (`snn.calibrate={calibration['mode']}`) at T = {calibration['timesteps']} "
             f"on {calibration['samples']} training images: mean per-layer error |ANN − SNN| of the "
             f"per-channel mean outputs **{_fmt(before)} → {_fmt(after)}** (value units; recorded in "
             f"`{calibration.get('path')}`).", ""]
    return lines + _table(["layer", "threshold factor", "error before", "error after"],
                          [[la["layer"], la["threshold_scale"], la["error_before"], la["error_after"]]
                           for la in calibration.get("layers") or []])


def _corrections_section(report: dict) -> list[str]:
    """What changed the network after training (fine-tuning, calibration); nothing if neither did."""
    tuned, calibration = _corrections(report)
    if not tuned and not calibration:
        return []
    lines = ["## Low-latency corrections", "",
             "The deployed network is not the converted network alone: it was changed after training.", ""]
    if tuned:
        lines += _finetune_lines(tuned)
    if calibration:
        lines += _calibration_lines(calibration)
    return lines


def _activity_section(report: dict, probes: Optional[dict], firing: Optional[Path],
                      raster: Optional[Path], run_dir: Path) -> list[str]:
    lines = ["## Activity per layer", ""]
    if not probes:
        lines += _missing("probe counts (`probes`)", "run")
    else:
        lines += [f"Source: {probes.get('source')}; mean per sample over {probes.get('samples')} "
                  f"samples, T = {probes.get('timesteps')} steps. Synaptic ops are attributed to "
                  "the receiving layer; graded ops are the input image sent as graded spikes.", ""]
        rows = [[la["name"] + (" (readout, no spikes)" if la.get("readout") else ""),
                 la["neurons"], la["spikes"], la.get("firing_rate"), la["synops_binary"],
                 la["synops_graded"], la["neuron_updates"], la["active_updates"], la["fan_in_max"],
                 la["fan_out_max"]] for la in probes["layers"]]
        t = probes.get("totals") or {}
        rows.append(["**total**", t.get("neurons"), t.get("spikes"), None, t.get("synops_binary"),
                     t.get("synops_graded"), t.get("neuron_updates"), t.get("active_updates"),
                     None, None])
        lines += _table(["layer", "neurons", "spikes", "firing rate", "synops (binary)",
                         "synops (graded)", "neuron updates", "active updates", "max fan-in",
                         "max fan-out"], rows)
        lines += _image(firing, run_dir, "firing rate per layer")
    if raster is None:
        lines += [f"_No spike raster: `{RASTER_NPZ}` (one sample's spike trains) is not in the "
                  "run directory._", ""]
    else:
        lines += _image(raster, run_dir, "spike raster of one sample")
    return lines


def _measured_energy_section(measured: Optional[dict]) -> list[str]:
    """Board measurement by lava-loihi's profilers (runs with run.backend = loihi2-hw)."""
    lines = ["### Measured on a Loihi 2 board", ""]
    if not measured:
        return lines + ["Not measured: this run did not use a Loihi 2 board with lava-loihi "
                        "(`run.backend: loihi2-hw`); the figures above are estimates.", ""]
    rows = [[key.replace("_", " "), value] for key, value in measured.items() if key != "source"]
    return lines + [f"Source: {measured.get('source')}.", ""] + _table(["", "value"], rows)


def _reference_line(energy: Optional[dict]) -> str:
    ref = (energy or {}).get("reference") or asdict(PILOTNET_LOIHI2_REFERENCE)
    return (f"> Measured Loihi 2 reference for scale ({ref['network']}): "
            f"{ref['total_power_w']} W total, {ref['energy_per_inference_mj']} mJ per inference "
            f"at {ref['frames_per_s']} frames/s, {ref['steps_per_sample']} steps per sample "
            f"(source: {ref['source']}). A different network: compare orders of magnitude with "
            "(a) only.")


def _loihi_estimate_lines(energy: dict) -> list[str]:
    """Convention (a): the Loihi estimate per operation and per layer."""
    total = energy["total_pj"]
    lines = ["### (a) Loihi estimate, per operation (ESTIMATE)", "", f"> **{LOIHI2_CAVEAT}**", "",
             f"Includes: {energy.get('includes') or LOIHI_INCLUDES}.", "",
             f"Formula: `{energy['formula']}`", "",
             f"**(a) Estimated SNN energy per inference on Loihi: {_fmt(total * 1e-6)} µJ** "
             f"({_fmt(total)} pJ; {energy.get('source')} counts, T = {energy.get('timesteps')}).", "",
             _reference_line(energy), "", "By operation (estimate):", ""]
    lines += _table(["operation", "pJ", "share"],
                    [[op, v, v / total if total else None] for op, v in energy["by_operation"].items()])
    cols = ["synaptic_binary", "synaptic_graded", "neuron_update_active",
            "neuron_update_inactive", "spike_routing"]
    lines += ["By layer (pJ, estimate):", ""]
    return lines + _table(["layer"] + cols + ["total"],
                          [[la["name"]] + [la.get(c) for c in cols] + [la["total"]]
                           for la in energy["layers"]])


def _literature_lines(energy: dict) -> list[str]:
    """Convention (b): the SNN's synaptic ops against the ANN's MACs, compute only."""
    lit = energy.get("literature")
    lines = ["### (b) Conversion-literature convention (compute only)", ""]
    if not lit:
        return lines + ["_Not available: this energy section has no literature figure and the "
                        "probes to compute it are missing._", ""]
    lines += [f"Includes: {lit['includes']}.", "", f"Formula: `{lit['formula']}` "
              f"(source: {lit['source']}).", ""]
    rows = [["SNN binary synaptic ops (adds, E_AC)", lit["synops_binary"], lit["e_ac_pj"],
             lit["synops_binary"] * lit["e_ac_pj"] * 1e-6],
            ["SNN graded synaptic ops, first layer (multiply-adds, E_MAC)", lit["synops_graded"],
             lit["e_mac_pj"], lit["synops_graded"] * lit["e_mac_pj"] * 1e-6],
            ["**SNN total (b)**", None, None, lit["snn_pj"] * 1e-6]]
    if lit.get("ann_pj") is not None:
        rows.append(["**ANN, MACs (fp32, E_MAC) (b)**", lit["ann_macs"], lit["e_mac_pj"],
                     lit["ann_pj"] * 1e-6])
    base = energy.get("ann_baseline")
    if base:
        rows.append(["ANN, MACs (int8; for scale, the SNN side is fp32)", base["macs"],
                     base["int8_pj"] / base["macs"] if base["macs"] else None, base["int8_pj"] * 1e-6])
    lines += _table(["(b) per inference", "count", "pJ each", "µJ"], rows)
    if lit.get("ann_over_snn") is not None:
        lines += [f"**(b) ANN / SNN energy: {_fmt(lit['ann_over_snn'])}×** (T = "
                  f"{energy.get('timesteps')}).", ""]
    elif lit.get("ann_pj") is None:
        lines += ["_ANN side omitted: MAC counts need the network (.net) file._", ""]
    lines += ["By layer (pJ, convention (b)):", ""]
    return lines + _table(["layer", "SNN (b)", "ANN fp32 (b)", "ANN int8"],
                          [[la["name"], la.get("literature_pj"), la.get("ann_fp32"), la.get("ann_int8")]
                           for la in energy["layers"]])


def _energy_section(energy: Optional[dict], png: Optional[Path], run_dir: Path) -> list[str]:
    lines = ["## Energy per inference: two conventions", "",
             f"> **{(energy or {}).get('not_comparable') or NOT_COMPARABLE}**", ""]
    if not energy:
        return lines + [f"> **{LOIHI2_CAVEAT}**", "", f"(a) includes: {LOIHI_INCLUDES}.", "",
                        f"(b) includes: {LITERATURE_INCLUDES}.", "", _reference_line(energy), ""] + \
            _missing("probe counts for the energy estimate", "run")
    lines += _loihi_estimate_lines(energy) + _literature_lines(energy)
    lines += ["Constants used (both conventions):", ""]
    lines += _table(["name", "value", "unit", "source", "overridden"],
                    [[c["name"], c["value"], c["unit"], c["source"], c["overridden"]]
                     for c in energy["constants"]])
    return lines + _image(png, run_dir, "energy per inference (estimate)")


def _t_label(t: int, points: dict) -> str:
    marks = [m for m, at in (("deployed", points["deployment_timesteps"]),
                             ("suggested", points.get("suggested_timesteps"))) if at == t]
    return f"**{t}** ({', '.join(marks)})" if marks else str(t)


def _operating_points_section(points: Optional[dict], snn_float: Optional[dict], png: Optional[Path],
                              run_dir: Path) -> list[str]:
    lines = ["## Operating points: accuracy, work and energy at every T", ""]
    if not points:
        return lines + _missing("the accuracy and cost at every T", "run")
    deployed = points["deployment_timesteps"]
    lines += [f"The deployed file (made for T = {deployed}, `snn.timesteps`) run for T steps on the "
              f"{points['split']} split, bit-accurate (the float SNN column: the reference simulator in "
              f"float, evaluate stage); means per inference. Entries past T = {deployed} "
              "run the file beyond the T its bounds are checked for. Steps to decision: the first step "
              "from which a sample's prediction no longer changes up to T. Energy (a) and (b) are "
              "different conventions (see Energy below): compare within a column only.", ""]
    header = ["T", "accuracy (test)", "float SNN (test)",
              f"accuracy (validation, {_fmt(points.get('validation_samples'))})",
              "steps to decision", "spikes", "SynOps (binary)", "SynOps (graded)", "SynOps per ANN MAC",
              "neuron updates", "(a) Loihi µJ", "(b) SNN µJ"]
    rows = []
    for r in points["rows"]:
        cost = r.get("cost") or {}
        rows.append([_t_label(r["timesteps"], points), r["snn_fixed"], (snn_float or {}).get(str(r["timesteps"])),
                     r.get("snn_fixed_val"),
                     r["steps_to_decision"]] + [cost.get(k) for k in (
                         "spikes", "synops_binary", "synops_graded", "synops_per_ann_mac", "neuron_updates",
                         "loihi_uj", "literature_snn_uj")])
    lines += _table(header, rows)
    ann_uj = next((r["cost"].get("literature_ann_uj") for r in points["rows"] if r.get("cost")), None)
    if ann_uj is not None:
        lines += ["", f"(b) the ANN, for comparison with the (b) column only: {_fmt(ann_uj)} µJ per inference "
                      "(its MACs × E_MAC)."]
    if not any(r.get("cost") for r in points["rows"]):
        lines += ["", "Work and energy per T need the spike counts: set run.probes=true."]
    lines += ["", f"**Suggested T**: {points.get('suggestion')}. The file is deployed at T = {deployed}; "
                  "to deploy at another T, set snn.timesteps and export again.", ""]
    return lines + _image(png, run_dir, "accuracy against energy per inference at every T")


def _resources_section(resources: Optional[dict]) -> list[str]:
    lines = ["## Resource fit on Loihi 2", ""]
    if not resources:
        return lines + _missing("the network (.net file) for the resource fit", "export")
    verdict = "fits" if resources["fits"] else "does NOT fit"
    lines += [f"**The network {verdict}**: {_fmt(resources['cores'])} neuro-cores on "
              f"{_fmt(resources['chips'])} chip(s); {_fmt(resources['neurons'])} neurons, "
              f"{_fmt(resources['synapses'])} synapses, {_fmt(resources['synaptic_memory_bits'])} bits "
              f"of synaptic memory at {resources['weight_bits']}-bit weights.", "",
              f"Model: {resources.get('model', resources.get('conv_synapses'))}.", ""]
    rows = [[la["name"], la["kind"] + (" (readout)" if la.get("readout") else ""), la["neurons"],
             la["synapses"], la["synaptic_memory_bits"],
             la["fan_in_max"], la["fan_out_max"], la["cores"], la["limited_by"],
             "yes" if la["fits"] else "**no**"] for la in resources["layers"]]
    lines += _table(["layer", "kind", "neurons", "synapses", "synaptic memory (bits)", "max fan-in",
                     "max fan-out", "cores", "binding per-core limit", "fits"], rows)
    for p in resources.get("problems") or []:
        lines.append(f"- {p}")
    lim = resources.get("limits") or {}
    lines += ["", "Limits: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in lim.items()) +
              ". Per chip and neurons per core: Intel Loihi 2 technology brief (2021); per-core "
              "synaptic memory and input axons: Loihi 1 figures (Davies et al. 2018, nengo-loihi), "
              "no Loihi 2 figure confirmed (see hardware/spec.py).", ""]
    return lines


def _quantization_section(report: dict) -> list[str]:
    lines = ["## Quantization error (Loihi 2 fixed point)", ""]
    q = report.get("quantization")
    if not q:
        return lines + _missing("the quantization report", "export")
    keys = ["name", "scale", "limited_by", "weight_bits_used", "weight_max_abs_error",
            "weight_rms_rel_error", "threshold_float", "threshold_mantissa", "threshold_rel_error",
            "bias_max_abs_error", "worst_case_input"]
    layers = q
    if any(la.get("readout_steps") is not None for la in layers):
        keys.append("readout_steps")  # the T up to which the output integrator provably fits
    lines += _table(keys, [[la.get(k) for k in keys] for la in layers])
    exp = report.get("export") or {}
    if exp:
        lines += [f"Exported to `{exp.get('path')}` (neuron {exp.get('neuron')}, "
                  f"{exp.get('input_bits')}-bit graded input).", ""]
    return lines


def _network_files_section(report: dict) -> list[str]:
    """Where the network came from (an imported NIR graph) and the NIR graph export wrote;
    nothing when the run has neither."""
    imported, nir_out = report.get("import"), report.get("export_nir")
    if not imported and not nir_out:
        return []
    lines = ["## Network files (NIR)", ""]
    if imported:
        dt = imported.get("dt")
        lines += [f"Imported from the NIR graph `{imported.get('source')}` (sha256 "
                  f"`{str(imported.get('source_sha256'))[:16]}…`), kept as `{imported.get('path')}`: "
                  f"{len(imported.get('layers') or [])} layers, {imported.get('readout')} readout, "
                  + (f"time step dt = {_fmt(dt)}." if dt is not None else "the graph's own time step."), ""]
    if nir_out:
        lines += [f"NIR graph written to `{nir_out.get('path')}` (neuron {nir_out.get('neuron')}, "
                  f"{nir_out.get('readout')} readout, from the {nir_out.get('source')}).", ""]
    return lines


# --------------------------------------------------------------------------- board bundle result
def _board_rows(run: dict, report: dict, energy: Optional[dict]) -> list:
    """[figure, estimate or reference from this report, measured] rows of the board run."""
    t = str(run["timesteps"])
    fixed = ((report.get("accuracy") or {}).get("snn_fixed") or {}).get(t)
    lava = report.get("lava") or {}
    lava_time = 1 / lava["samples_per_s"] if lava.get("samples_per_s") else None
    bad = run.get("mismatching_samples") or []
    rows = [["agreement with the golden outputs (exact integers)", "1.000 (bit-exact)",
             f"{run['agreement']:.3f}" + (f" (differ: {', '.join(map(str, bad[:20]))})" if bad else "")],
            [f"accuracy at T = {t}", f"{_fmt(run['golden_accuracy'])} (simulator, same samples); "
             f"{_fmt(fixed)} (simulator, test split)", _fmt(run["accuracy"])],
            ["time per sample (s)", f"{_fmt(lava_time)} (Lava {lava.get('backend', '–')}, run stage)",
             _fmt(run["time_per_sample_s"])]]
    measured = run.get("board_measurement") or {}
    estimate_uj = energy["total_pj"] * 1e-6 if (energy or {}).get("total_pj") is not None else None
    rows += [["time per step (µs)", "–", _fmt(measured.get("time_per_step_us"))],
             ["total power (W)", "–", _fmt(measured.get("total_power_w"))],
             ["energy per inference (µJ)", f"{_fmt(estimate_uj)} (estimate (a), T = "
              f"{(energy or {}).get('timesteps', '–')})",
              _fmt(measured["energy_per_sample_j"] * 1e6) if measured else "–"]]
    return rows


def _board_run_section(run: Optional[dict], report: dict, energy: Optional[dict]) -> list[str]:
    """The figures run_on_loihi.py measured (``report --board-result``) beside the estimates."""
    lines = ["## Measured with the board bundle (run_on_loihi.py)", ""]
    if not run:
        return lines + ["Not measured: write a bundle (`nqloihi bundle`), run its `run_on_loihi.py` "
                        "on a Loihi 2 board, then `nqloihi report --board-result result_hw.json`.", ""]
    known = {(report.get(k) or {}).get("sha256") for k in ("export", "network_file")} - {None}
    if known and run["net_sha256"] not in known:
        return lines + [f"_Omitted: the board result in {REPORT_JSON} (`{run.get('source')}`) was measured on "
                        "another model.net than this report's; bundle the current one and run it again._", ""]
    where = ("**MEASURED on a Loihi 2 board**" if run["backend"] == "hw" else
             "**MEASURED in the CPU rehearsal** (Loihi2SimCfg, not a board: times are this CPU's)")
    lines += [f"{where}: host `{run['host']}`"
              + "".join(f", {k} `{v}`" for k, v in (run.get("board") or {}).items())
              + f", {run['date']} ({run['run_config']}; {run['samples']} bundle samples, T = "
              f"{run['timesteps']}, from `{run.get('source')}`).", ""]
    if run["backend"] == "hw" and not run.get("board_measurement"):
        lines += ["lava-loihi's profiler was not available on the board: no power or time per step.", ""]
    return lines + _table(["", "estimate / reference (this report)", "measured"],
                          _board_rows(run, report, energy))


# --------------------------------------------------------------------------- entry point
def _derived_sections(report: dict, run_dir: Path, notes: list) -> tuple[Optional[dict], Optional[dict]]:
    """(energy, resources): stored, or computed from the probes and the .net file when absent."""
    probes, energy, resources = report.get("probes"), report.get("energy"), report.get("resources")
    net = None
    if (probes and not energy) or not resources:
        net = _load_net(report, run_dir, notes)
    if probes and not energy:
        overrides = ((report.get("config") or {}).get("energy")) or {}
        try:
            energy = energy_estimate(probes, overrides, count_macs(net) if net is not None else None,
                                    steps_per_sample=(report.get("lava") or {}).get("steps_per_sample"))
        except ToolkitError as exc:
            notes.append(f"energy estimate not computed: {exc}")
    elif probes and not energy.get("literature"):
        energy = {**energy, "literature": _stored_literature(energy, probes)}
    if not resources and net is not None:
        resources = check_fit(net).to_dict()
    return energy, resources


def _stored_literature(energy: dict, probes: dict) -> dict:
    """Convention (b) for an energy section written without it, from the stored probes, the
    stored constants (their overrides kept) and the stored ANN MAC count."""
    overrides = {c["name"]: c["value"] for c in energy.get("constants") or () if c.get("overridden")}
    lit = literature_energy(probes, resolve_constants(overrides),
                            (energy.get("ann_baseline") or {}).get("macs"))
    return {key: value for key, value in asdict(lit).items() if value is not None}


def _raster(report: dict, run_dir: RunDir, notes: list) -> Optional[dict]:
    """raster.npz, if report.json names it by hash (a raster it does not name was left by an
    interrupted run and may describe another network)."""
    path = run_dir.raster
    if not path.exists():
        return None
    named = (report.get("raster") or {}).get("sha256")
    if named is None or named != sha256_of(path):
        notes.append(f"{RASTER_NPZ} is not the raster {REPORT_JSON} names (left by an interrupted or "
                     "older run); raster omitted")
        return None
    try:
        return load_raster(path)
    except (ToolkitError, OSError, ValueError) as exc:
        notes.append(f"{RASTER_NPZ} not readable ({exc}); raster omitted")
        return None


def _missing_sections(report: dict, energy, resources) -> list[str]:
    present = {**report, "energy": energy, "resources": resources}
    return [k for k in ("config", "training", "accuracy", "lava", "probes", "energy", "resources",
                        "quantization") if present.get(k) in (None, {}, [])]


def _preamble(run_dir: Path, missing: list, notes: list) -> list[str]:
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = ["# NQ-SNN → Loihi 2 run report", "",
             f"Run directory `{run_dir}`; rendered {now} from `{REPORT_JSON}` (nothing was re-run).", ""]
    if missing:
        lines += ["**Incomplete run**: no data yet for " + ", ".join(missing) +
                  ". Sections below say which stage produces them.", ""]
    lines += [f"- Note: {n}" for n in notes]
    return lines + ([""] if notes else [])


def _deployed_t(report: dict) -> Optional[int]:
    """The deployment T: the run's, else the file's, else the config's."""
    points, made_for = report.get("operating_points") or {}, (report.get("network_file") or {}).get("timesteps")
    return points.get("deployment_timesteps") or made_for or \
        ((report.get("config") or {}).get("snn") or {}).get("timesteps")


def _read(run_dir: RunDir) -> dict:
    """The validated report.json as JSON types (every section's shape guaranteed by its definition)."""
    if not run_dir.report_json.exists():
        raise ReportError(f"no {REPORT_JSON} in {run_dir.root}; run a pipeline stage first "
                          "(e.g. `python -m pipeline train`)")
    return run_dir.read_report().to_json_dict()


def render_report(run_dir: Path) -> dict:
    """Write ``run_dir/report.md`` and the PNG plots; return what was written and what is missing."""
    rd = RunDir(Path(run_dir))
    report = _read(rd)
    notes: list[str] = []
    energy, resources = _derived_sections(report, rd.root, notes)
    probes = report.get("probes")
    pngs = {
        "accuracy": plots.plot_accuracy(report.get("accuracy"), rd, (report.get("lava") or {}).get("samples"),
                                        _deployed_t(report)),
        "operating_points": plots.plot_operating_points(report.get("operating_points"),
                                                        (report.get("accuracy") or {}).get("ann"), rd),
        "training": plots.plot_training(report.get("training"), rd),
        "firing_rate": plots.plot_firing_rates(probes, rd),
        "energy": plots.plot_energy(energy, rd),
        "raster": plots.plot_raster(_raster(report, rd, notes), rd),
    }
    missing = _missing_sections(report, energy, resources)
    lines = _preamble(rd.root, missing, notes)
    lines += _config_section(report)
    lines += _accuracy_section(report, pngs["accuracy"], rd.root)
    lines += _agreement_section(report)
    lines += _training_section(report, pngs["training"], rd.root)
    lines += _corrections_section(report)
    lines += _activity_section(report, probes, pngs["firing_rate"], pngs["raster"], rd.root)
    lines += _operating_points_section(report.get("operating_points"), (report.get("accuracy") or {}).get("snn_float"),
                                       pngs["operating_points"], rd.root)
    lines += _energy_section(energy, pngs["energy"], rd.root)
    lines += _measured_energy_section(report.get("energy_measured"))
    lines += _board_run_section(report.get("board_run"), report, energy)
    lines += _resources_section(resources)
    lines += _quantization_section(report)
    lines += _network_files_section(report)
    atomic_write_text(rd.report_md, "\n".join(lines) + "\n")
    log.info("wrote %s", rd.report_md)
    return {"report_md": str(rd.report_md), "plots": {k: (str(v) if v else None) for k, v in pngs.items()},
            "missing": missing, "notes": notes}


def report_stage(cfg, progress: bool = True) -> dict:
    """The ``report`` stage: render ``run.dir``'s report.md and plots (no re-running); first
    report.json's ``finetune`` and ``calibration`` are drawn from finetune.json and the deployed
    .net (:mod:`pipeline.report_lowlat`), and with ``bundle.board_result`` that board result is
    stored as ``board_run``."""
    run_dir = RunDir.prepared(cfg.run.dir)
    if cfg.bundle.board_result:
        from .bundle import board_run_section
        run_dir.update_report({"board_run": board_run_section(cfg, run_dir)})
    if run_dir.report_json.exists():  # else render_report says which stage to run
        from .report_lowlat import lowlat_sections
        stored = run_dir.read_report().to_json_dict()
        net = _net_path(stored, run_dir.root) or (run_dir.net if run_dir.net.is_file() else None)
        run_dir.update_report(lowlat_sections(run_dir, net))
    return render_report(run_dir.root)


# --------------------------------------------------------------------------- terminal summary
def _summary_table(acc: dict) -> list[str]:
    steps = sorted({int(t) for key in ("snn_float", "snn_fixed", "lava") for t in acc.get(key) or {}})
    # the powers of two and the largest T (where a potential readout's Lava accuracy lives)
    shown = sorted({t for t in (1, 2, 4, 8, 16, 32) if t in steps} | set(steps[-1:]))
    lines = ["", f"{'T':>4} | {'ANN':>6} | {'SNN float':>9} | {'SNN fixed':>9} | {'Lava':>6}"]
    lines.append("-" * len(lines[-1]))

    def cell(key, t, width):
        value = (acc.get(key) or {}).get(str(t))
        return f"{value:>{width}.4f}" if value is not None else f"{'-':>{width}}"
    ann = acc.get("ann")
    ann_cell = f"{ann:>6.4f}" if ann is not None else f"{'-':>6}"
    for t in shown:
        lines.append(f"{t:>4} | {ann_cell} | {cell('snn_float', t, 9)} | {cell('snn_fixed', t, 9)} | "
                     f"{cell('lava', t, 6)}")
    if not shown:
        lines.append("(no accuracies yet: run `python -m pipeline evaluate`)")
    return lines


def _energy_summary(energy: dict) -> list[str]:
    """Energy per inference in both conventions, each labelled, never as a ratio of the two."""
    if energy.get("total_pj") is None:
        return []
    lines = [f"energy per inference at T = {energy.get('timesteps')}, two conventions (do not compare "
             "one with the other):",
             f"  (a) Loihi estimate: {energy['total_pj'] / 1e6:.4g} µJ (Loihi 1 per-operation figures; "
             "Intel has published none for Loihi 2)"]
    lit = energy.get("literature")
    if lit:
        ann = (f" against the ANN's {lit['ann_macs']:,} MACs: {lit['ann_pj'] / 1e6:.4g} µJ"
               if lit.get("ann_pj") is not None else "")
        lines.append(f"  (b) literature, compute only: SNN {lit['snn_pj'] / 1e6:.4g} µJ "
                     f"({lit['synops_binary']:,.0f} synops × {lit['e_ac_pj']:g} pJ + "
                     f"{lit['synops_graded']:,.0f} graded × {lit['e_mac_pj']:g} pJ){ann}")
    return lines


def _headline(points: dict) -> list[str]:
    """Accuracy and synaptic work at the deployment T, and the suggested T."""
    deployed = points["deployment_timesteps"]
    row = next((r for r in points["rows"] if r["timesteps"] == deployed), None)
    if row is None:
        return []
    cost = row.get("cost") or {}
    work = "" if not cost else f", {cost['synops']:,.0f} SynOps per inference" + (
        f" ({cost['synops_per_ann_mac']:.2f} per ANN MAC)" if cost.get("synops_per_ann_mac") is not None else "")
    return [f"deployed at T = {deployed}: accuracy {row['snn_fixed']:.4f} (fixed point, test){work}",
            f"suggested T: {points.get('suggestion')}"]


def _corrections_summary(report: dict) -> list[str]:
    tuned, calibration = _corrections(report)
    lines = []
    if tuned:
        lines.append(f"fine-tuned at T = {tuned['timesteps']} ({tuned['epochs']} epoch(s), "
                     f"{_fmt(tuned.get('wall_time_s'))} s): SNN validation accuracy {tuned['snn_val_before']:.4f} "
                     f"-> {tuned['snn_val_after']:.4f}" + (" (NOT the deployed .net: export again)"
                                                            if tuned.get("deployed") is False else ""))
    if calibration:
        before, after = _mean_errors(calibration)
        lines.append(f"calibrated ({calibration['mode']}) at T = {calibration['timesteps']} on "
                     f"{calibration['samples']} training images: mean layer error {_fmt(before)} -> {_fmt(after)}")
    return lines


def format_summary(report: dict) -> str:
    """The accuracy table, the headline at the deployment T (accuracy, SynOps, energy in both
    conventions), the low-latency corrections (fine-tuning, calibration) and the Lava agreement, printed by the CLI; ``report`` is a validated report's
    JSON form (:meth:`pipeline.artifacts.Report.to_json_dict`)."""
    lines = _summary_table(report.get("accuracy") or {})
    if report.get("operating_points"):
        lines += _headline(report["operating_points"])
    lines += _corrections_summary(report)
    lines += _energy_summary(report.get("energy") or {})
    lava = report.get("lava")
    if lava:
        lines.append(f"Lava ({lava['backend']}): {lava['samples']} test samples, agreement with the "
                     f"bit-accurate reference simulator: {lava['agreement']:.3f}")
    board = report.get("board_run")
    if board:
        where = "Loihi 2 board" if board["backend"] == "hw" else "CPU rehearsal"
        lines.append(f"board bundle, measured ({where}, {board['date']}): {board['samples']} samples, agreement "
                     f"with the golden outputs {board['agreement']:.3f}, accuracy {board['accuracy']:.4f}")
    return "\n".join(lines)


__all__ = ["render_report", "report_stage", "format_summary", "ReportError"]
