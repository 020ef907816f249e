"""The named choices shared by the config, the IR, the files and the runtime, each once.

Each is a ``Literal`` type (for annotations and pydantic models) and the tuple of its
values (for membership checks and messages), derived from the type so they cannot drift.
"""
from __future__ import annotations

from typing import Literal, get_args

#: ``if_soft``: the paper's IF neuron (reset by subtraction, this project's Lava process);
#: ``cuba``: Loihi's stock CUBA LIF neuron (reset to zero). Equations: :mod:`hardware.fixed_point.dynamics`.
NeuronKind = Literal["if_soft", "cuba"]
#: How the SNN's class is read out: ``potential`` (argmax of the output integrator at T, the
#: paper's) or ``spikes`` (most output spikes, ties to the lowest index).
Readout = Literal["potential", "spikes"]
#: The synapse of a weighted layer or of a residual projection.
ProjectionKind = Literal["conv", "dense"]
#: Where Lava runs the network: ``Loihi2SimCfg`` on the CPU or ``Loihi2HwCfg`` on a board.
Backend = Literal["loihi2-sim", "loihi2-hw"]
#: The file ``export`` writes: quantized netx HDF5 (``net``) or the float network as NIR (``nir``).
ExportFormat = Literal["net", "nir"]

NEURON_KINDS: tuple[str, ...] = get_args(NeuronKind)
READOUTS: tuple[str, ...] = get_args(Readout)
PROJECTION_KINDS: tuple[str, ...] = get_args(ProjectionKind)
BACKENDS: tuple[str, ...] = get_args(Backend)
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
