"""Does an integer SNN fit on Loihi 2 neuro-cores and chips? A planning estimate, not Lava's
compiler; limits from :data:`hardware.spec.LOIHI2` (its comments give their sources).

* A core holds neurons of one layer only (as Lava's partitioner does for one process), and
  every neuron's incoming synapses, one ``weight_bits`` word each (index/delay bits not
  counted: the synaptic memory is a lower bound).
* Synapses of a conv layer (``conv_synapses``): ``"pairs"`` (default, conservative) stores
  every (input, output) pair a kernel tap connects, padding taps excluded; ``"shared"`` stores
  the kernel once per core (Loihi 2 convolutional connectivity). Dense layers store every weight.
* Extra inputs (``ir.Projection``): a projection's synapses live in the cores of the layer it
  feeds, so fan-in (and the memory per neuron) is the main fan-in plus every projection's;
  ``"shared"`` adds each projection's kernel; fan-out counts every projection reading a source.

Per layer::

    per_core = min(neurons_per_core, ⌊synaptic_memory_bits_per_core / (fan_in_max · weight_bits)⌋)
    cores    = ⌈neurons / per_core⌉      ("shared": per_core = neurons_per_core)
    chips    = max(⌈Σ cores / cores_per_chip⌉, ⌈Σ neurons / neurons_per_chip⌉,
                   ⌈Σ synapses / synapses_per_chip⌉)

A layer cannot be mapped when one neuron's fan-in exceeds ``max_fan_in_per_core`` or one
core's synaptic memory (checked per neuron: necessary, not sufficient, for conv layers). The
graded input is sent by the host and needs no core; a potential readout's integrator
(``readout``) is mapped like any layer and sends no spikes. :class:`FitReport` is also the
type of report.json's ``resources`` section (its ``asdict`` form).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from hardware.analysis.activity import fan_in, fan_out, spiking_layers
from hardware.errors import ResourceError
from hardware.ir import Conv, Dense, Network
from hardware.spec import LOIHI2, Loihi2Spec

CONV_SYNAPSE_MODELS = ("pairs", "shared")
_COMMON = ("one layer per core group; each neuron's incoming synapses stored in its core at "
           "weight_bits per synapse (index bits not counted); dense layers store every weight")
MODEL_SUMMARY = {
    "pairs": _COMMON + "; conv layers counted conservatively as every connected "
                       "(input, output) pair (no weight sharing)",
    "shared": _COMMON + "; conv layers use Loihi 2 convolutional connectivity: the kernel is "
                        "stored once per core",
}


@dataclass
class LayerFit:
    """One layer's share of the mapping (an entry of report.json's ``resources.layers``)."""

    name: str
    kind: str
    neurons: int
    synapses: int
    synaptic_memory_bits: int
    fan_in_max: int
    fan_out_max: int
    cores: int
    limited_by: str              # "neurons per core" | "synaptic memory per core" | "-"
    problem: Optional[str] = None
    readout: bool = False        # the non-firing output integrator of a potential readout
    fits: bool = field(init=False)  # no problem

    def __post_init__(self) -> None:
        self.fits = self.problem is None


@dataclass
class FitReport:
    """The whole fit (report.json's ``resources`` section, as :meth:`to_dict`)."""

    layers: list[LayerFit]
    cores: int
    chips: int
    neurons: int
    synapses: int
    synaptic_memory_bits: int
    weight_bits: int
    conv_synapses: str
    limits: dict[str, float]
    problems: list[str] = field(default_factory=list)
    fits: bool = field(init=False)   # no problems
    model: str = field(init=False)   # the mapping model in words (:data:`MODEL_SUMMARY`)

    def __post_init__(self) -> None:
        self.fits = not self.problems
        self.model = MODEL_SUMMARY[self.conv_synapses]

    def to_dict(self) -> dict:
        """JSON-friendly form for ``report.json["resources"]``."""
        return asdict(self)


def _limits(spec: Loihi2Spec) -> dict:
    return {"neurons_per_core": spec.neurons_per_core, "cores_per_chip": spec.cores_per_chip,
            "neurons_per_chip": spec.neurons_per_chip, "synapses_per_chip": spec.synapses_per_chip,
            "synaptic_memory_bits_per_core": spec.synaptic_memory_bits_per_core,
            "max_fan_in_per_core": spec.max_fan_in_per_core}


def _with_fan_in_problem(problem: Optional[str], name: str, fi_max: int,
                         spec: Loihi2Spec) -> Optional[str]:
    """``problem`` with the input-axon limit's complaint added when the fan-in exceeds it."""
    if fi_max <= spec.max_fan_in_per_core:
        return problem
    msg = (f"layer {name}: fan-in of {fi_max} exceeds the {spec.max_fan_in_per_core} "
           "input axons one core accepts")
    return msg if problem is None else problem + "; " + msg[len(f"layer {name}: "):]


def check_fit(net: Network, spec: Loihi2Spec = LOIHI2, *, weight_bits: Optional[int] = None,
              conv_synapses: str = "pairs", max_chips: Optional[int] = None) -> FitReport:
    """Per-layer neurons, synapses, synaptic memory, fan-in/out and cores; chips in total.

    ``max_chips``: chips available (None: any number, as on multi-chip
    systems); a network needing more is reported as not fitting.
    Never raises for a network that does not fit: the report lists the
    problems (see :func:`require_fit`)."""
    if conv_synapses not in CONV_SYNAPSE_MODELS:
        raise ResourceError(f"conv_synapses must be one of {CONV_SYNAPSE_MODELS}, "
                            f"got {conv_synapses!r}")
    bits = spec.weight_bits if weight_bits is None else int(weight_bits)
    mem = spec.synaptic_memory_bits_per_core
    fan_ins, fan_outs = fan_in(net), fan_out(net)
    layers, problems = [], []
    for sl, fi, fo in zip(spiking_layers(net), fan_ins, fan_outs):
        layer = net.layers[sl.layer_index] if sl.layer_index is not None else None
        fi_max = int(fi.max()) if fi.size else 0
        problem = None
        if isinstance(layer, Conv) and conv_synapses == "shared":
            # (every extra input of a conv layer is a conv: a dense one cannot output (C, H, W))
            kernel = int(layer.weight.size) + sum(int(np.size(p.weight))
                                                  for p in getattr(layer, "extra_inputs", ()))
            cores = math.ceil(sl.neurons / spec.neurons_per_core)
            synapses, limited = kernel * cores, "neurons per core"
            if kernel * bits > mem:
                problem = (f"layer {sl.name}: the shared kernel needs {kernel * bits} bits of "
                           f"synaptic memory, one core has {mem}")
        else:
            synapses = int(fi.sum()) if isinstance(layer, (Conv, Dense)) else 0
            per_core_mem = mem // (fi_max * bits) if fi_max else spec.neurons_per_core
            per_core = min(spec.neurons_per_core, per_core_mem)
            limited = ("synaptic memory per core" if per_core_mem < spec.neurons_per_core
                       else "neurons per core")
            if per_core == 0:
                problem = (f"layer {sl.name}: one neuron's fan-in of {fi_max} synapses needs "
                           f"{fi_max * bits} bits of synaptic memory, one core has {mem}")
                cores = 0
            else:
                cores = math.ceil(sl.neurons / per_core)
        problem = _with_fan_in_problem(problem, sl.name, fi_max, spec)
        if problem:
            problems.append(problem)
        layers.append(LayerFit(sl.name, sl.kind, sl.neurons, synapses, synapses * bits, fi_max,
                               int(fo.max()) if fo.size else 0, cores,
                               limited if sl.kind != "input" else "-", problem,
                               readout=sl.readout))

    neurons = sum(la.neurons for la in layers)
    synapses = sum(la.synapses for la in layers)
    cores = sum(la.cores for la in layers)
    chips = max(math.ceil(cores / spec.cores_per_chip),
                math.ceil(neurons / spec.neurons_per_chip),
                math.ceil(synapses / spec.synapses_per_chip), 1 if layers else 0)
    if max_chips is not None and chips > max_chips:
        problems.append(f"network needs {chips} chips ({cores} cores, {neurons} neurons, "
                        f"{synapses} synapses), {max_chips} available")
    return FitReport(layers, cores, chips, neurons, synapses, synapses * bits, bits, conv_synapses,
                     _limits(spec), problems)


def require_fit(net: Network, spec: Loihi2Spec = LOIHI2, **kwargs) -> FitReport:
    """:func:`check_fit`, raising :class:`ResourceError` (naming the layer and the
    number) when a layer cannot be mapped onto cores at all."""
    report = check_fit(net, spec, **kwargs)
    if report.problems:
        raise ResourceError("network does not fit on Loihi 2: " + "; ".join(report.problems))
    return report


__all__ = ["LayerFit", "FitReport", "check_fit", "require_fit", "CONV_SYNAPSE_MODELS"]
