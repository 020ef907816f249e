"""Energy **estimate** of an SNN inference on Loihi, next to an ANN baseline.

Intel has published no per-operation energy figures for Loihi 2: the constants are the Loihi 1
(14 nm) figures of Davies et al., IEEE Micro 38(1), 2018, Table 1, so every figure here is an
estimate; a measured Loihi 2 figure (lava-dl's PilotNet LIF benchmark) is reported beside it.
Per sample (counts from :mod:`hardware.analysis.activity`, means over samples)::

    E = synops_binary · E_synop + synops_graded · E_graded_synop
      + active_updates · E_update_active + (neuron_updates − active_updates) · E_update_inactive
      + (spikes + graded_messages) · E_spike
      + P_static · t_step · steps_per_sample  (only when P_static and t_step are both set)

    ANN baseline:  E_ANN = MACs · E_MAC   (E_MAC = 4.6 pJ fp32, 0.23 pJ int8; Horowitz 2014)

A projection's (residual network's) synaptic ops are in its receiving layer's
``synops_binary``; :func:`count_macs` adds each projection's MACs to that layer, except an
identity shortcut (an addition in the ANN: 0 MACs, as ``models.converter.count_ann_macs``).
Each spike is charged the within-tile routing energy only (a lower bound: the core placement,
hence the hops, is unknown before mapping). Static energy needs the cores' static power
(``static_power_w``) and the chip's time per step (``step_time_s``, measured on a board by
lava-loihi's profiler, see ``energy_measured``); both default to 0 (unknown) and the static
term is added only when both are set. :class:`EnergyEstimate` is report.json's ``energy``.
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


@dataclass
class AnnBaseline:
    """The equivalent ANN's MACs and their energy (pJ per sample)."""

    macs: int
    fp32_pj: float
    int8_pj: float
    source: str
    estimate: bool
    fp32_over_snn: Optional[float]
    int8_over_snn: Optional[float]


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
                   HOROWITZ_2014 + ": 32-bit float multiply 3.7 pJ + add 0.9 pJ"),
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
    row = EnergyLayer(la["name"], **ops, total=sum(ops[op] for op in _OPERATIONS))
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


def _ann_baseline(macs_per_layer: Sequence[int], k: Mapping[str, float], snn_total: float
                  ) -> AnnBaseline:
    total_macs = int(sum(macs_per_layer))
    fp32 = total_macs * k["ann_mac_fp32_pj"]
    int8 = total_macs * k["ann_mac_int8_pj"]
    return AnnBaseline(total_macs, fp32, int8, source=HOROWITZ_2014, estimate=True,
                       fp32_over_snn=fp32 / snn_total if snn_total > 0 else None,
                       int8_over_snn=int8 / snn_total if snn_total > 0 else None)


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
    """Energy estimate per sample, per layer and per operation (pJ), with the ANN baseline.

    ``activity``: an :class:`hardware.analysis.activity.ActivityReport` or its
    ``to_dict()`` form (``report.json["probes"]``). ``macs_per_layer``: one
    entry per weighted (non-input) layer, e.g. :func:`count_macs`; without it
    the ANN baseline is omitted. ``steps_per_sample``: algorithmic steps the
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
        ann_baseline=None if macs_per_layer is None else _ann_baseline(macs_per_layer, k, total))
    return _without_absent(asdict(result))


def _without_absent(estimate: dict) -> dict:
    """The dict form of an :class:`EnergyEstimate`: an ANN baseline that is not known (no MAC
    counts) is left out rather than written as null, in the whole and in each layer."""
    rows = [(estimate, ("ann_baseline",))] + [(row, ("ann_macs", "ann_fp32", "ann_int8"))
                                             for row in estimate["layers"]]
    for row, keys in rows:
        for key in keys:
            if row[key] is None:
                del row[key]
    return estimate

__all__ = ["EnergyConstant", "EnergyReference", "EnergyLayer", "AnnBaseline", "EnergyEstimate", "ENERGY_CONSTANTS", "ENERGY_CONSTANT_NAMES", "EnergyConfigError",
           "PILOTNET_LOIHI2_REFERENCE", "LOIHI2_CAVEAT", "FORMULA", "check_override", "resolve_constants",
           "count_macs", "energy_estimate"]
