"""Energy per SNN inference in two conventions that must not be compared with each other.

(a) **Loihi estimate** (:class:`EnergyEstimate`): counted operations × Loihi 1 (14 nm) per-operation
figures (Davies et al. 2018; Intel has published none for Loihi 2), so an estimate. It includes
synaptic ops, neuron updates and within-tile spike routing (a lower bound: placement unknown),
and static energy only when ``static_power_w`` and ``step_time_s`` are both set::

    E = synops_binary · synop_pj + synops_graded · graded_synop_pj
      + active_updates · neuron_update_active_pj + inactive updates · neuron_update_inactive_pj
      + (spikes + graded_messages) · spike_pj  [+ static_power_w · step_time_s · steps]

(b) **Conversion-literature convention** (:class:`LiteratureEnergy`): arithmetic only (no memory,
routing, neuron updates or static power), 45 nm fp32 figures of Horowitz 2014::

    E_SNN = synops_binary · E_AC + synops_graded · E_MAC     E_ANN = MACs · E_MAC
    E_AC = ac_fp32_pj = 0.9 pJ (add),  E_MAC = ann_mac_fp32_pj = 3.7 + 0.9 = 4.6 pJ

Graded synops are the first layer's graded input (each non-zero input value, every step, times
its fan-out): a multiply, so MACs. Only (b)'s SNN and ANN figures compare with each other; a
measured Loihi 2 figure (lava-dl's PilotNet) is reported beside (a) for scale. Counts come from
:mod:`hardware.analysis.activity` at one T (means per sample); :func:`count_macs` gives the ANN's
MACs (an identity shortcut is an addition: 0 MACs). Constants are overridable by name (the
config's ``energy`` section). :class:`EnergyEstimate` is report.json's ``energy``.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, replace
from typing import Mapping, Optional, Sequence

import numpy as np

from hardware.errors import ToolkitError
from hardware.ir import Conv, Dense, Network

DAVIES_2018 = ("Davies et al., 'Loihi: A Neuromorphic Manycore Processor with On-Chip Learning', "
               "IEEE Micro 38(1), 2018, Table 1 (Loihi 1, 14 nm)")
HOROWITZ_2014 = ("Horowitz, 'Computing's Energy Problem (and what we can do about it)', "
                 "ISSCC 2014 (45 nm, 0.9 V)")

LOIHI2_CAVEAT = ("Estimate only: Intel has published no per-operation energy figures for Loihi 2; "
                 "these are Loihi 1 (14 nm) figures from Davies et al. 2018 applied to counted "
                 "operations. Loihi 2 (Intel 4) is expected to differ.")
LOIHI_INCLUDES = ("synaptic ops, neuron updates and within-tile spike routing on the chip "
                  "(Loihi 1 per-operation energies, which include their memory access); static "
                  "energy only where static_power_w and step_time_s are set")
LITERATURE_INCLUDES = ("arithmetic only, 45 nm fp32: each binary synaptic op is one add (E_AC), "
                       "each graded one (the first layer's input, every step) one multiply-add "
                       "(E_MAC), each ANN MAC one multiply-add; no memory access, routing, neuron "
                       "updates or static power")
NOT_COMPARABLE = ("The Loihi estimate (a) and the literature convention (b) count different things: "
                  "do not compare a figure of one with a figure of the other. Compare the SNN with "
                  "the ANN within (b) only; the measured Loihi 2 reference is for scale beside (a).")


class EnergyConfigError(ToolkitError, ValueError):
    """An energy-constant override that is unknown or not a positive number."""


@dataclass(frozen=True)
class EnergyConstant:
    """One energy figure and where it comes from (an entry of report.json's ``energy.constants``)."""

    name: str
    value: float
    unit: str
    source: str
    overridden: bool = False   # set by the config's ``energy`` section


@dataclass(frozen=True)
class EnergyReference:
    """A measured figure of another network, reported beside the estimate for scale."""

    network: str
    total_power_w: float
    energy_per_inference_mj: float
    frames_per_s: float
    steps_per_sample: int
    source: str
    measured: bool


@dataclass
class EnergyLayer:
    """One layer's energy by operation (pJ per sample), with its ANN MACs where known."""

    name: str
    synaptic_binary: float
    synaptic_graded: float
    neuron_update_active: float
    neuron_update_inactive: float
    spike_routing: float
    total: float
    ann_macs: Optional[int] = None      # the ann_* keys are left out of the dict when None
    ann_fp32: Optional[float] = None
    ann_int8: Optional[float] = None
    literature_pj: Optional[float] = None   # this layer's SNN figure in convention (b)


@dataclass
class AnnBaseline:
    """The equivalent ANN's MACs and their compute-only energy (pJ per sample), convention (b)."""

    macs: int
    fp32_pj: float
    int8_pj: float
    source: str
    estimate: bool


@dataclass
class LiteratureEnergy:
    """Convention (b), pJ per sample: the SNN's synaptic ops as adds (binary) and multiply-adds
    (graded) against the ANN's MACs, at the same E_MAC (:func:`literature_energy`)."""

    formula: str
    includes: str
    synops_binary: float
    synops_graded: float
    e_ac_pj: float
    e_mac_pj: float
    snn_pj: float
    source: str

    # the ANN's side, where its MACs are known (else left out of the dict)
    ann_macs: Optional[int] = None
    ann_pj: Optional[float] = None
    ann_over_snn: Optional[float] = None


@dataclass
class EnergyEstimate:
    """report.json's ``energy`` section (:func:`energy_estimate`)."""

    estimate: bool
    unit: str
    caveat: str
    formula: str
    source: Optional[str]
    samples: Optional[int]
    timesteps: Optional[int]
    steps_per_sample: Optional[int]
    constants: list[EnergyConstant]
    layers: list[EnergyLayer]
    by_operation: dict[str, float]
    static_included: bool
    static_note: str
    total_pj: float
    total_uj: float
    reference: EnergyReference
    ann_baseline: Optional[AnnBaseline] = None   # left out of the dict when None
    includes: Optional[str] = None               # what (a) counts
    literature: Optional[LiteratureEnergy] = None
    not_comparable: Optional[str] = None


ENERGY_CONSTANTS: tuple = (
    EnergyConstant("synop_pj", 23.6, "pJ", DAVIES_2018 + ": synaptic spike op (minimum)"),
    EnergyConstant("graded_synop_pj", 23.6, "pJ",
                   "no published figure for a graded-spike synaptic op; assumed equal to "
                   "synop_pj (Loihi 1 had binary spikes only)"),
    EnergyConstant("neuron_update_active_pj", 81.0, "pJ",
                   DAVIES_2018 + ": neuron update, active (neuron spikes)"),
    EnergyConstant("neuron_update_inactive_pj", 52.0, "pJ",
                   DAVIES_2018 + ": neuron update, inactive"),
    EnergyConstant("spike_pj", 1.7, "pJ", DAVIES_2018 + ": within-tile spike energy"),
    EnergyConstant("hop_ew_pj", 3.0, "pJ",
                   DAVIES_2018 + ": east-west tile hop (listed; not used, placement unknown)"),
    EnergyConstant("hop_ns_pj", 4.0, "pJ",
                   DAVIES_2018 + ": north-south tile hop (listed; not used, placement unknown)"),
    EnergyConstant("ann_mac_fp32_pj", 4.6, "pJ",
                   HOROWITZ_2014 + ": 32-bit float multiply 3.7 pJ + add 0.9 pJ (E_MAC of "
                   "convention (b): the ANN's MACs and the SNN's graded synaptic ops)"),
    EnergyConstant("ac_fp32_pj", 0.9, "pJ",
                   HOROWITZ_2014 + ": 32-bit float add (E_AC of convention (b): the SNN's binary "
                   "synaptic ops)"),
    EnergyConstant("ann_mac_int8_pj", 0.23, "pJ",
                   HOROWITZ_2014 + ": 8-bit integer multiply 0.2 pJ + add 0.03 pJ"),
    EnergyConstant("static_power_w", 0.0, "W",
                   "no published Loihi 2 static power per core; 0 = unknown, static energy not "
                   "counted. With step_time_s set, adds static_power_w × step_time_s × steps "
                   "per sample"),
    EnergyConstant("step_time_s", 0.0, "s",
                   "no published Loihi 2 time per algorithmic step (it depends on the network "
                   "and its placement; lava-loihi's profiler measures it on a board); 0 = "
                   "unknown, static energy not counted"),
)
ENERGY_CONSTANT_NAMES: tuple = tuple(c.name for c in ENERGY_CONSTANTS)

#: Measured Loihi 2 figure reported by lava-dl's PilotNet LIF benchmark notebook
#: (tutorials/lava/lib/dl/netx/pilotnet_lif/benchmark.ipynb), shown beside the estimate.
PILOTNET_LOIHI2_REFERENCE = EnergyReference(
    network="PilotNet LIF (lava-dl netx benchmark)", total_power_w=0.679,
    energy_per_inference_mj=1.66, frames_per_s=408.91, steps_per_sample=16,
    source="lava-dl PilotNet LIF benchmark notebook (Loihi 2 board measurement, as reported there)",
    measured=True)

LITERATURE_FORMULA = ("E_SNN = synops_binary·ac_fp32_pj + synops_graded·ann_mac_fp32_pj; "
                      "E_ANN = MACs·ann_mac_fp32_pj")
FORMULA = ("E = synops_binary·synop_pj + synops_graded·graded_synop_pj "
           "+ active_updates·neuron_update_active_pj "
           "+ (neuron_updates − active_updates)·neuron_update_inactive_pj "
           "+ (spikes + graded_messages)·spike_pj "
           "[+ static_power_w·step_time_s·steps_per_sample]")


def check_override(name: str, value) -> float:
    """``value`` as a float if ``energy.<name>`` is a valid override, else raise
    :class:`EnergyConfigError` naming the key (unknown name, or not a finite number > 0)."""
    if name not in ENERGY_CONSTANT_NAMES:
        close = difflib.get_close_matches(str(name), ENERGY_CONSTANT_NAMES, n=1, cutoff=0.6)
        hint = f" (did you mean energy.{close[0]}?)" if close else ""
        raise EnergyConfigError(f"energy.{str(name)[:60]}: unknown energy constant{hint}; known: "
                                f"{', '.join(ENERGY_CONSTANT_NAMES)}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:59] + "…"
        raise EnergyConfigError(f"energy.{name} must be a number > 0, got {shown}")
    return float(value)


def resolve_constants(overrides: Optional[Mapping] = None) -> dict[str, float]:
    """Default constants with ``overrides`` applied; raise :class:`EnergyConfigError`
    naming the key (``energy.<name>``) for an unknown name or a non-positive value."""
    values = {c.name: c.value for c in ENERGY_CONSTANTS}
    for name, value in (overrides or {}).items():
        values[name] = check_override(name, value)
    return values


def count_macs(net: Network) -> list[int]:
    """Multiply-accumulates per weighted layer of the equivalent ANN (one pass):
    conv: (C_in/groups · kh · kw) · C_out·OH·OW (padding taps included); dense: out · in;
    plus, per layer, its extra inputs (projections) by the same rule, except an identity
    shortcut (:func:`_is_identity`): an addition, 0 MACs."""
    macs = []
    shapes = net.shapes()
    for layer, out_shape in zip(net.layers, shapes):
        if isinstance(layer, Conv):
            n = int(np.prod(layer.weight.shape[1:])) * int(np.prod(out_shape))
        elif isinstance(layer, Dense):
            n = int(np.prod(layer.weight.shape))
        else:
            continue
        for proj in getattr(layer, "extra_inputs", ()):
            w = np.asarray(proj.weight)
            if _is_identity(proj):
                continue
            if proj.kind == "conv":
                n += int(np.prod(w.shape[1:])) * int(np.prod(out_shape))
            else:
                n += int(np.prod(w.shape))
        macs.append(n)
    return macs


def _is_identity(proj) -> bool:
    """A ResNet identity shortcut in the IR: a 1×1, stride-1, unpadded, ungrouped conv
    projection with as many inputs as outputs whose weight is diagonal (θ_source·I)."""
    w = np.asarray(proj.weight)
    if proj.kind != "conv" or w.ndim != 4 or w.shape[2:] != (1, 1) or w.shape[0] != w.shape[1]:
        return False
    if (tuple(proj.stride), tuple(proj.padding), tuple(proj.dilation), proj.groups) != (
            (1, 1), (0, 0), (1, 1), 1):
        return False
    m = w[:, :, 0, 0]
    return not np.any(m - np.diag(np.diag(m)))


_OPERATIONS = ("synaptic_binary", "synaptic_graded", "neuron_update_active",
               "neuron_update_inactive", "spike_routing")


def _layer_row(la: Mapping, k: Mapping[str, float], macs: Optional[int]) -> EnergyLayer:
    """One layer's energy by operation (pJ per sample), with its ANN MACs where known."""
    ops = {
        "synaptic_binary": la["synops_binary"] * k["synop_pj"],
        "synaptic_graded": la["synops_graded"] * k["graded_synop_pj"],
        "neuron_update_active": la["active_updates"] * k["neuron_update_active_pj"],
        "neuron_update_inactive": (la["neuron_updates"] - la["active_updates"])
        * k["neuron_update_inactive_pj"],
        "spike_routing": (la["spikes"] + la.get("graded_messages", 0.0)) * k["spike_pj"],
    }
    row = EnergyLayer(la["name"], **ops, total=sum(ops[op] for op in _OPERATIONS),
                      literature_pj=la["synops_binary"] * k["ac_fp32_pj"]
                      + la["synops_graded"] * k["ann_mac_fp32_pj"])
    if macs is not None:
        row.ann_macs = int(macs)
        row.ann_fp32 = macs * k["ann_mac_fp32_pj"]
        row.ann_int8 = macs * k["ann_mac_int8_pj"]
    return row


def _static_energy(k: Mapping[str, float], steps_per_sample: Optional[int]
                   ) -> tuple[Optional[float], str]:
    """(static pJ per sample or None, a sentence saying what was or was not included)."""
    missing = [name for name in ("static_power_w", "step_time_s") if k[name] <= 0]
    if missing:
        return None, (f"static energy not included: {' and '.join('energy.' + m for m in missing)} "
                      f"not set (no published Loihi 2 figure)")
    if steps_per_sample is None or steps_per_sample <= 0:
        return None, "static energy not included: the steps per sample are not known"
    pj = k["static_power_w"] * k["step_time_s"] * steps_per_sample * 1e12   # W·s -> pJ
    return pj, (f"static energy included: static_power_w × step_time_s × {steps_per_sample} "
                f"steps per sample")


def _ann_baseline(macs_per_layer: Sequence[int], k: Mapping[str, float]) -> AnnBaseline:
    total_macs = int(sum(macs_per_layer))
    return AnnBaseline(total_macs, total_macs * k["ann_mac_fp32_pj"],
                       total_macs * k["ann_mac_int8_pj"], source=HOROWITZ_2014, estimate=True)


def literature_energy(activity, constants: Mapping[str, float],
                      ann_macs: Optional[int] = None) -> LiteratureEnergy:
    """Convention (b) for the activity of one run at one T (an ``ActivityReport`` or its
    ``to_dict()`` form): binary synops × E_AC + graded synops × E_MAC, against ``ann_macs`` ×
    E_MAC when the ANN's MACs are known. ``constants``: resolved values by name
    (:func:`resolve_constants`)."""
    probes = activity.to_dict() if hasattr(activity, "to_dict") else activity
    binary = float(sum(la["synops_binary"] for la in probes["layers"]))
    graded = float(sum(la["synops_graded"] for la in probes["layers"]))
    e_ac, e_mac = constants["ac_fp32_pj"], constants["ann_mac_fp32_pj"]
    snn = binary * e_ac + graded * e_mac
    result = LiteratureEnergy(LITERATURE_FORMULA, LITERATURE_INCLUDES, synops_binary=binary,
                              synops_graded=graded, e_ac_pj=e_ac, e_mac_pj=e_mac, snn_pj=snn,
                              source=HOROWITZ_2014)
    if ann_macs is not None:
        result.ann_macs = int(ann_macs)
        result.ann_pj = int(ann_macs) * e_mac
        result.ann_over_snn = result.ann_pj / snn if snn > 0 else None
    return result


def _weighted_macs(probes: Mapping, macs_per_layer: Optional[Sequence[int]]) -> dict[str, int]:
    weighted = [la["name"] for la in probes["layers"] if la.get("kind") != "input"]
    if macs_per_layer is None:
        return {}
    if len(macs_per_layer) != len(weighted):
        raise EnergyConfigError(f"{len(macs_per_layer)} MAC counts given for "
                                f"{len(weighted)} weighted layers")
    return dict(zip(weighted, macs_per_layer))


def energy_estimate(activity, constants_overrides: Optional[Mapping] = None,
                    macs_per_layer: Optional[Sequence[int]] = None, *,
                    steps_per_sample: Optional[int] = None) -> dict:
    """Energy per sample at one T in both conventions: (a) the Loihi estimate per layer and per
    operation (pJ), (b) the literature convention with the ANN's MACs (``literature``).

    ``activity``: an :class:`hardware.analysis.activity.ActivityReport` or its
    ``to_dict()`` form (``report.json["probes"]``). ``macs_per_layer``: one
    entry per weighted (non-input) layer, e.g. :func:`count_macs`; without it
    the ANN figures are omitted. ``steps_per_sample``: algorithmic steps the
    chip runs per sample; with ``static_power_w`` and ``step_time_s`` set it
    gives the static term (``static_included`` and ``static_note`` say whether).
    """
    k = resolve_constants(constants_overrides)
    probes = activity.to_dict() if hasattr(activity, "to_dict") else activity
    macs = _weighted_macs(probes, macs_per_layer)
    layers = [_layer_row(la, k, macs.get(la["name"])) for la in probes["layers"]]
    ops = {op: sum(getattr(row, op) for row in layers) for op in _OPERATIONS}
    static, static_note = _static_energy(k, steps_per_sample)
    if static is not None:
        ops["static"] = static
    total = sum(ops.values())
    result = EnergyEstimate(
        estimate=True, unit="pJ per sample", caveat=LOIHI2_CAVEAT, formula=FORMULA,
        source=probes.get("source"), samples=probes.get("samples"),
        timesteps=probes.get("timesteps"), steps_per_sample=steps_per_sample,
        constants=[replace(c, value=k[c.name], overridden=c.name in (constants_overrides or {}))
                   for c in ENERGY_CONSTANTS],
        layers=layers, by_operation=ops, static_included=static is not None,
        static_note=static_note, total_pj=total, total_uj=total * 1e-6,
        reference=PILOTNET_LOIHI2_REFERENCE,
        ann_baseline=None if macs_per_layer is None else _ann_baseline(macs_per_layer, k),
        includes=LOIHI_INCLUDES, not_comparable=NOT_COMPARABLE,
        literature=literature_energy(probes, k, None if macs_per_layer is None
                                     else sum(macs_per_layer)))
    return _without_absent(asdict(result))



@dataclass
class CostAtT:
    """Work and energy per inference (means per sample) over the first ``timesteps`` steps: one
    row of the report's operating points (:func:`cost_by_t`)."""

    timesteps: int
    spikes: float
    synops_binary: float
    synops_graded: float
    synops: float
    neuron_updates: float
    active_updates: float
    loihi_uj: float                        # convention (a), its static term as energy_estimate's
    literature_snn_uj: float               # convention (b), the SNN
    literature_ann_uj: Optional[float] = None   # convention (b), the ANN (its MACs known)
    synops_per_ann_mac: Optional[float] = None  # all synops (binary + graded) per ANN MAC


def cost_by_t(activities: Sequence, constants_overrides: Optional[Mapping] = None,
              macs_per_layer: Optional[Sequence[int]] = None) -> list[CostAtT]:
    """One :class:`CostAtT` per activity (e.g. :func:`hardware.analysis.activity.activity_by_t`),
    each at its own T, in both energy conventions of :func:`energy_estimate`."""
    rows = []
    for activity in activities:
        probes = activity.to_dict() if hasattr(activity, "to_dict") else activity
        estimate = energy_estimate(probes, constants_overrides, macs_per_layer,
                                   steps_per_sample=probes["timesteps"])
        totals, lit = probes["totals"], estimate["literature"]
        ann_macs = lit.get("ann_macs")
        rows.append(CostAtT(
            timesteps=probes["timesteps"], spikes=totals["spikes"], synops_binary=totals["synops_binary"],
            synops_graded=totals["synops_graded"], synops=totals["synops"],
            neuron_updates=totals["neuron_updates"], active_updates=totals["active_updates"],
            loihi_uj=estimate["total_uj"], literature_snn_uj=lit["snn_pj"] * 1e-6,
            literature_ann_uj=None if lit.get("ann_pj") is None else lit["ann_pj"] * 1e-6,
            synops_per_ann_mac=totals["synops"] / ann_macs if ann_macs else None))
    return rows


def _without_absent(estimate: dict) -> dict:
    """The dict form of an :class:`EnergyEstimate`: ANN figures that are not known (no MAC
    counts) are left out rather than written as null, in the whole, in (b) and in each layer."""
    rows = [(estimate, ("ann_baseline",)),
            (estimate["literature"] or {}, ("ann_macs", "ann_pj", "ann_over_snn"))]
    rows += [(row, ("ann_macs", "ann_fp32", "ann_int8")) for row in estimate["layers"]]
    for row, keys in rows:
        for key in keys:
            if key in row and row[key] is None:
                del row[key]
    return estimate


__all__ = ["CostAtT", "cost_by_t", "EnergyConstant", "EnergyReference", "EnergyLayer", "AnnBaseline", "LiteratureEnergy",
           "EnergyEstimate", "ENERGY_CONSTANTS", "ENERGY_CONSTANT_NAMES", "EnergyConfigError",
           "PILOTNET_LOIHI2_REFERENCE", "LOIHI2_CAVEAT", "LOIHI_INCLUDES", "LITERATURE_INCLUDES",
           "NOT_COMPARABLE", "FORMULA", "LITERATURE_FORMULA", "check_override",
           "resolve_constants", "count_macs", "energy_estimate", "literature_energy"]
