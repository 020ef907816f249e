"""Activity counts of an SNN run: spikes, synaptic operations, neuron updates.

The reference simulator (:class:`hardware.simulator.SimResult`) and Lava probes give the same
counts: per *spiking layer* (the input neuron layer if the IR has one, then every Conv/Dense
layer, in order) either spike trains ``(T, B, *shape)`` or per-neuron counts ``(B, *shape)``
plus spikes per step ``(T, B)``. Every count is an exact integer; :meth:`ActivityReport.to_dict`
gives means per sample (:class:`MeanActivity`, report.json's ``probes`` section)::

    fan_out[l][n]     = synapses neuron n of layer l drives in the next weighted layer (conv: the
                        exact count given stride/padding/dilation/groups) and in every extra
                        input (``ir.Projection``) reading l; 0 for the output layer
    synops_binary[l]  = Σ_t Σ_n s[l-1][t, n] · fan_out[l-1][n]  + synops_extra[l]
    synops_extra[l]   = Σ_k Σ_t Σ_n s[source_k][t, n] · fan_out_k[n]   (projections k INTO l)
    synops_graded[l]  = Σ_t Σ_i [x[t, i] ≠ 0] · fan_out_in[i]   (first weighted layer, graded input)
    neuron_updates[l] = neurons[l] · T ;  active_updates[l] = Σ_t Σ_n s[l][t, n]

Synaptic ops belong to the receiving layer, spikes to the sending one; every synapse counts
(zero weights are stored and read too). A spike at the last step counts as delivered; a graded
message is sent for a non-zero input only. The output integrator of a potential readout is
flagged ``readout``: it receives synops and makes ``neurons · T`` inactive updates, sends no
spikes, has fan-out 0 and no firing rate (``None``).

``raster.npz`` (run stage writes, report reads; ``np.load(allow_pickle=False)``): ``layer_names``
(a unicode array of the spiking layers in order) and per name a ``(T, n_neurons)`` bool array of
one sample's spikes (neurons flattened in C order).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from hardware.errors import ToolkitError
from hardware.ir import Conv, Dense, Network, Projection, WEIGHTED

PROBES_FORMAT_VERSION = 1
RASTER_NAMES_KEY = "layer_names"


class ActivityError(ToolkitError, ValueError):
    """Spike recordings that do not match the network (shapes, layers)."""


# --------------------------------------------------------------------------- structure
@dataclass(frozen=True)
class SpikingLayer:
    """One population of neurons, as recorded."""

    name: str
    kind: str                 # "input" | "conv" | "dense"
    shape: tuple
    layer_index: Optional[int]  # index in net.layers (None for the input neuron layer)
    readout: bool = False       # the non-firing output integrator of a potential readout

    @property
    def neurons(self) -> int:
        return int(np.prod(self.shape))


def spiking_layers(net: Network) -> list[SpikingLayer]:
    """The spiking layers in recording order (matches ``SimResult.layer_names``)."""
    out = []
    if net.input.neuron is not None:
        out.append(SpikingLayer(net.input.name, "input", tuple(net.input.shape), None))
    readout = net.weighted_layers[-1] if net.readout == "potential" else None
    for i, (layer, shape) in enumerate(zip(net.layers, net.shapes())):
        if isinstance(layer, WEIGHTED):
            out.append(SpikingLayer(layer.name, "conv" if isinstance(layer, Conv) else "dense",
                                    tuple(shape), i, readout=layer is readout))
    return out


def _next_weighted(net: Network, after: Optional[int]):
    """(layer, its input shape) of the first weighted layer after ``net.layers[after]``
    (after=None: after the input), skipping Flatten; (None, None) if there is none."""
    shapes = [tuple(net.input.shape)] + net.shapes()
    start = 0 if after is None else after + 1
    for j in range(start, len(net.layers)):
        if isinstance(net.layers[j], WEIGHTED):
            return net.layers[j], shapes[j]
    return None, None


def _axis_counts(n_in: int, n_out: int, k: int, stride: int, pad: int, dil: int) -> np.ndarray:
    """counts[y] = #{(o, j): 0 ≤ o < n_out, 0 ≤ j < k, o·stride − pad + j·dil = y}."""
    o = np.arange(n_out)[:, None]
    j = np.arange(k)[None, :]
    y = (o * stride - pad + j * dil).ravel()
    y = y[(y >= 0) & (y < n_in)]
    return np.bincount(y, minlength=n_in).astype(np.int64)


def _axis_fan_in(n_in: int, n_out: int, k: int, stride: int, pad: int, dil: int) -> np.ndarray:
    """fan_in[o] = #{j: 0 ≤ o·stride − pad + j·dil < n_in} (non-padding taps)."""
    o = np.arange(n_out)[:, None]
    j = np.arange(k)[None, :]
    y = o * stride - pad + j * dil
    return ((y >= 0) & (y < n_in)).sum(axis=1).astype(np.int64)


def conv_fan_out(layer: Conv, in_shape: tuple) -> np.ndarray:
    """Synapses each input neuron ``(C, H, W)`` drives in ``layer`` (exact).

    The 2-D count separates: an input at (y, x) is tapped by output (oy, ox) iff
    y = oy·s_h − p_h + ky·d_h and x = ox·s_w − p_w + kx·d_w for some kernel tap,
    so count(y, x) = count_h(y) · count_w(x), times the output channels of the
    input channel's group."""
    c, h, w = in_shape
    _, oh, ow = layer.output_shape(in_shape)
    kh, kw = layer.weight.shape[2:]
    ch = _axis_counts(h, oh, kh, layer.stride[0], layer.padding[0], layer.dilation[0])
    cw = _axis_counts(w, ow, kw, layer.stride[1], layer.padding[1], layer.dilation[1])
    per_channel = layer.weight.shape[0] // layer.groups
    return np.broadcast_to(per_channel * np.outer(ch, cw), (c, h, w)).astype(np.int64).copy()


def conv_fan_in(layer: Conv, in_shape: tuple) -> np.ndarray:
    """Synapses (non-padding taps) into each output neuron ``(C_out, OH, OW)``."""
    c, h, w = in_shape
    co, oh, ow = layer.output_shape(in_shape)
    kh, kw = layer.weight.shape[2:]
    fh = _axis_fan_in(h, oh, kh, layer.stride[0], layer.padding[0], layer.dilation[0])
    fw = _axis_fan_in(w, ow, kw, layer.stride[1], layer.padding[1], layer.dilation[1])
    per_group = layer.weight.shape[1]
    return np.broadcast_to(per_group * np.outer(fh, fw), (co, oh, ow)).astype(np.int64).copy()


def _fan_out_into(layer, in_shape: tuple, src_shape: tuple) -> np.ndarray:
    """Fan-out of neurons of shape ``src_shape`` into ``layer`` (through a Flatten if any)."""
    if layer is None:
        return np.zeros(src_shape, dtype=np.int64)
    if isinstance(layer, Dense):
        return np.full(src_shape, layer.weight.shape[0], dtype=np.int64)
    return conv_fan_out(layer, in_shape).reshape(src_shape)


def input_fan_out(net: Network) -> np.ndarray:
    """Fan-out of each input value into the first weighted layer (graded input messages)."""
    layer, in_shape = _next_weighted(net, None)
    return _fan_out_into(layer, in_shape, tuple(net.input.shape))


def _projection_synapse(layer, proj: Projection):
    return proj.synapse(f"{layer.name}, extra input from {proj.source!r}")


def projection_fan_out(layer, proj: Projection, source_shape: tuple) -> np.ndarray:
    """Synapses each neuron of the source (shape ``source_shape``) drives through the
    projection ``proj`` of ``layer`` (conv: exact count; dense: its out size)."""
    syn = _projection_synapse(layer, proj)
    if proj.kind == "dense":
        return np.full(tuple(source_shape), syn.weight.shape[0], dtype=np.int64)
    return conv_fan_out(syn, tuple(source_shape))


def projection_fan_in(layer, proj: Projection, source_shape: tuple,
                      out_shape: tuple) -> np.ndarray:
    """Synapses into each neuron of ``layer`` (shape ``out_shape``) through ``proj``."""
    syn = _projection_synapse(layer, proj)
    if proj.kind == "dense":
        return np.full(tuple(out_shape), syn.weight.shape[1], dtype=np.int64)
    return conv_fan_in(syn, tuple(source_shape))


def extra_inputs(net: Network) -> list[list]:
    """Per spiking layer: ``(source spiking-layer index, fan-out array of the source's
    shape)`` for every projection INTO it (empty for a sequential network)."""
    layers = spiking_layers(net)
    index = {sl.name: i for i, sl in enumerate(layers) if sl.layer_index is not None}
    out = []
    for sl in layers:
        layer = net.layers[sl.layer_index] if sl.layer_index is not None else None
        out.append([(index[p.source], projection_fan_out(layer, p, layers[index[p.source]].shape))
                    for p in getattr(layer, "extra_inputs", ())])
    return out


def _main_fan_out(net: Network) -> list[np.ndarray]:
    """Per spiking layer: synapses each neuron drives in the next weighted layer."""
    out = []
    for sl in spiking_layers(net):
        layer, in_shape = _next_weighted(net, sl.layer_index)
        out.append(_fan_out_into(layer, in_shape, sl.shape))
    return out


def fan_out(net: Network) -> list[np.ndarray]:
    """Per spiking layer: synapses each neuron drives in the next weighted layer and in
    every projection that reads it (array of the layer's output shape; zeros for the
    output layer)."""
    out = _main_fan_out(net)
    for receiving in extra_inputs(net):
        for src, fo in receiving:
            out[src] = out[src] + fo
    return out


def fan_in(net: Network) -> list[np.ndarray]:
    """Per spiking layer: synapses into each neuron, main synapse plus every projection
    (0 for an input neuron layer)."""
    shapes = [tuple(net.input.shape)] + net.shapes()
    named = {layer.name: shape for layer, shape in zip(net.layers, shapes[1:])
             if isinstance(layer, WEIGHTED)}
    out = []
    for sl in spiking_layers(net):
        if sl.layer_index is None:
            out.append(np.zeros(sl.shape, dtype=np.int64))
            continue
        layer = net.layers[sl.layer_index]
        if isinstance(layer, Dense):
            fi = np.full(sl.shape, layer.weight.shape[1], dtype=np.int64)
        else:
            fi = conv_fan_in(layer, shapes[sl.layer_index])
        for proj in getattr(layer, "extra_inputs", ()):
            fi = fi + projection_fan_in(layer, proj, named[proj.source], sl.shape)
        out.append(fi)
    return out


# --------------------------------------------------------------------------- counts
@dataclass
class LayerActivity:
    """Counts of one spiking layer, summed over all samples (integers)."""

    name: str
    kind: str
    shape: tuple
    neurons: int
    spikes_per_step: np.ndarray   # (T,) int64, summed over samples
    synops_binary: int            # received from binary spikes (previous layer + extra inputs)
    synops_graded: int            # received from graded input messages
    graded_messages: int          # graded input messages received
    fan_in_max: int
    fan_out_max: int
    readout: bool = False         # non-firing output integrator (module docstring)
    synops_extra: int = 0         # the part of synops_binary received through extra inputs

    @property
    def spikes(self) -> int:
        return int(self.spikes_per_step.sum())


@dataclass
class ActivityReport:
    """Activity of ``samples`` samples over ``timesteps`` steps (sums; see module doc)."""

    source: str
    samples: int
    timesteps: int
    layers: list = field(default_factory=list)

    def merge(self, other: "ActivityReport") -> "ActivityReport":
        """Sum of two reports over disjoint samples of the same network and T (batches)."""
        if (self.timesteps != other.timesteps
                or [la.name for la in self.layers] != [lb.name for lb in other.layers]):
            raise ActivityError("cannot merge activity of different networks or step counts "
                                f"(T={self.timesteps} vs {other.timesteps})")
        layers = [replace(a, spikes_per_step=a.spikes_per_step + b.spikes_per_step,
                          synops_binary=a.synops_binary + b.synops_binary,
                          synops_extra=a.synops_extra + b.synops_extra,
                          synops_graded=a.synops_graded + b.synops_graded,
                          graded_messages=a.graded_messages + b.graded_messages)
                  for a, b in zip(self.layers, other.layers)]
        return ActivityReport(self.source, self.samples + other.samples, self.timesteps, layers)

    def to_dict(self) -> dict:
        """JSON-friendly ``report.json["probes"]``: every count is a mean per sample."""
        n = max(self.samples, 1)
        layers = [_layer_means(la, n, self.timesteps) for la in self.layers]
        keys = ("spikes", "synops_binary", "synops_extra", "synops_graded", "graded_messages",
                "neuron_updates", "active_updates", "neurons")
        totals = {k: float(sum(getattr(layer, k) for layer in layers)) for k in keys}
        totals["synops"] = totals["synops_binary"] + totals["synops_graded"]
        return asdict(MeanActivity(source=self.source, samples=self.samples,
                                   timesteps=self.timesteps, layers=layers, totals=totals))


@dataclass(kw_only=True)
class MeanLayerActivity:
    """One layer of report.json's ``probes``: :class:`LayerActivity` as means per sample."""

    name: str
    kind: str
    shape: list[int]
    neurons: int
    readout: bool
    spikes_per_step: list[float]
    spikes: float
    firing_rate: Optional[float]   # spikes per neuron and step; None for a readout integrator
    synops_binary: float
    synops_extra: float = 0.0      # (a report.json from before extra inputs has none)
    synops_graded: float
    graded_messages: float
    neuron_updates: float
    active_updates: float
    fan_in_max: int
    fan_out_max: int


@dataclass(kw_only=True)
class MeanActivity:
    """report.json's ``probes`` section (:meth:`ActivityReport.to_dict`)."""

    format_version: int = PROBES_FORMAT_VERSION
    source: Optional[str] = None   # whose spikes: "reference" (the simulator) or "lava"
    samples: int
    timesteps: int
    per: str = "sample (mean over samples)"
    synops_attribution: str = "receiving layer"
    layers: list[MeanLayerActivity]
    totals: dict[str, float] = field(default_factory=dict)


def _layer_means(la: LayerActivity, n: int, t: int) -> MeanLayerActivity:
    """``la``'s counts divided by ``n`` samples (``t`` steps each)."""
    spikes = la.spikes / n
    rate = spikes / (la.neurons * t) if la.neurons and t else 0.0
    return MeanLayerActivity(
        name=la.name, kind=la.kind, shape=list(la.shape), neurons=la.neurons, readout=la.readout,
        spikes_per_step=[float(v) / n for v in la.spikes_per_step], spikes=spikes,
        firing_rate=None if la.readout else rate, synops_binary=la.synops_binary / n,
        synops_extra=la.synops_extra / n, synops_graded=la.synops_graded / n,
        graded_messages=la.graded_messages / n, neuron_updates=float(la.neurons * t),
        active_updates=spikes, fan_in_max=la.fan_in_max, fan_out_max=la.fan_out_max)


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor (no torch import needed here)
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _input_messages(net: Network, input_int, timesteps: int, fanout: np.ndarray):
    """(messages, synops) of the graded input over all samples and steps."""
    x = _np(input_int)
    in_shape = tuple(net.input.shape)
    if x.shape[1:] == in_shape:                                # (B, *shape), held constant
        nz = (x != 0).reshape(x.shape[0], -1)
        messages = int(nz.sum()) * timesteps
        synops = int((nz * fanout.reshape(1, -1)).sum()) * timesteps
    elif x.ndim == len(in_shape) + 2 and x.shape[2:] == in_shape:  # (B, T, *shape)
        if x.shape[1] != timesteps:
            raise ActivityError(f"input has {x.shape[1]} steps, the spikes {timesteps}")
        nz = (x != 0).reshape(x.shape[0], x.shape[1], -1)
        messages = int(nz.sum())
        synops = int((nz * fanout.reshape(1, 1, -1)).sum())
    else:
        raise ActivityError(f"input of shape {x.shape} does not match the network input "
                            f"{in_shape} (expected (B, *shape) or (B, T, *shape))")
    return messages, synops, x.shape[0]


def layer_activity(net: Network, spikes: Sequence, input_int=None, *,
                   step_counts: Optional[Sequence] = None, source: str = "reference"
                   ) -> ActivityReport:
    """Count spikes, synaptic ops and neuron updates (exact integers, summed over samples).

    ``spikes``: one entry per spiking layer (see :func:`spiking_layers`), each
    either spike trains ``(T, B, *shape)`` (bool/int), or per-neuron spike counts
    ``(B, *shape)`` summed over the run. With counts, ``step_counts`` (one
    ``(T, B)`` per layer, e.g. ``SimResult.layer_step_spikes`` or Lava probes)
    gives the spikes per step. Either form gives exact synaptic-op counts,
    since Σ_t Σ_n s[t,n]·f[n] = Σ_n count[n]·f[n].

    ``input_int``: the integer graded-spike input ``(B, *input_shape)`` (sent
    every step) or ``(B, T, *input_shape)``; needed for the graded synaptic ops
    of the first weighted layer when the IR has no input neuron layer.
    """
    layers = spiking_layers(net)
    if len(spikes) != len(layers):
        raise ActivityError(f"got spikes for {len(spikes)} layers, the network has "
                            f"{len(layers)} spiking layers ({', '.join(s.name for s in layers)})")
    per_step, counts = [], []
    for i, (sl, rec) in enumerate(zip(layers, spikes)):
        steps, count = _layer_counts(sl, _np(rec), None if step_counts is None else step_counts[i])
        if per_step and steps.shape != per_step[0].shape:
            raise ActivityError(f"layer {sl.name}: {steps.shape} (T, B) differs from the first "
                                f"layer's {per_step[0].shape}")
        per_step.append(steps)
        counts.append(count)
    timesteps, batch = per_step[0].shape

    messages = graded = 0
    if net.input.neuron is None and input_int is not None:
        messages, graded, in_batch = _input_messages(net, input_int, timesteps, input_fan_out(net))
        if in_batch != batch:
            raise ActivityError(f"input has {in_batch} samples, the spikes {batch}")

    fan_outs, fan_ins, extras = fan_out(net), fan_in(net), extra_inputs(net)
    main_fan_outs = _main_fan_out(net)  # into the next weighted layer only
    result = []
    for i, sl in enumerate(layers):
        received = 0
        if i > 0:  # binary spikes of the previous spiking layer × their fan-out
            received = int((counts[i - 1] * main_fan_outs[i - 1][None]).sum())
        # ... and of every projection's source × its fan-out through that projection
        extra = sum(int((counts[src] * fo[None]).sum()) for src, fo in extras[i])
        first_weighted = i == 0 and sl.kind != "input"
        result.append(LayerActivity(
            name=sl.name, kind=sl.kind, shape=sl.shape, neurons=sl.neurons,
            spikes_per_step=per_step[i].sum(axis=1),
            synops_binary=received + extra, synops_extra=extra,
            synops_graded=graded if first_weighted else 0,
            graded_messages=messages if first_weighted else 0,
            fan_in_max=int(fan_ins[i].max()) if fan_ins[i].size else 0,
            fan_out_max=int(fan_outs[i].max()) if fan_outs[i].size else 0,
            readout=sl.readout))
    return ActivityReport(source, int(batch), int(timesteps), result)


def _layer_counts(sl, rec: np.ndarray, step_counts) -> tuple[np.ndarray, np.ndarray]:
    """(spikes per step (T, B), spikes per neuron (B, *shape)) of one layer, from spike trains
    ``(T, B, *shape)`` or from per-neuron counts plus ``step_counts`` (T, B)."""
    if rec.ndim == len(sl.shape) + 2 and rec.shape[2:] == sl.shape:      # trains
        rec = rec.astype(np.int64)
        return rec.reshape(rec.shape[0], rec.shape[1], -1).sum(axis=2), rec.sum(axis=0)
    if not (rec.ndim == len(sl.shape) + 1 and rec.shape[1:] == sl.shape):
        raise ActivityError(f"layer {sl.name}: spikes of shape {rec.shape} match neither "
                            f"trains (T, B, *{sl.shape}) nor counts (B, *{sl.shape})")
    if step_counts is None:
        raise ActivityError(f"layer {sl.name}: per-neuron counts need step_counts "
                            "(T, B) per layer for the spikes per step")
    count = rec.astype(np.int64)
    steps = _np(step_counts).astype(np.int64)
    if steps.ndim != 2 or steps.shape[1] != count.shape[0]:
        raise ActivityError(f"layer {sl.name}: step counts of shape {steps.shape} do not "
                            f"match {count.shape[0]} samples (expected (T, B))")
    if not np.array_equal(steps.sum(axis=0), count.reshape(count.shape[0], -1).sum(axis=1)):
        raise ActivityError(f"layer {sl.name}: per-step counts and per-neuron counts "
                            "disagree on the total number of spikes")
    return steps, count


def activity_from_sim(net: Network, result, input_int=None, source: str = "reference"
                      ) -> ActivityReport:
    """:func:`layer_activity` from a :class:`hardware.simulator.SimResult`
    (uses its spike trains if recorded, else its per-neuron and per-step counts)."""
    if getattr(result, "layer_spike_trains", None) is not None:
        return layer_activity(net, result.layer_spike_trains, input_int, source=source)
    return layer_activity(net, result.layer_counts, input_int,
                          step_counts=result.layer_step_spikes, source=source)



def activity_by_t(net: Network, result, input_int=None, source: str = "reference"
                  ) -> list[ActivityReport]:
    """The activity of the first t steps for every t = 1 … T of a :class:`SimResult` with spike
    trains: entry t − 1 equals :func:`activity_from_sim` of a run of t steps (the simulator is
    causal: its first t steps do not depend on how long it runs)."""
    trains = getattr(result, "layer_spike_trains", None)
    if trains is None:
        raise ActivityError("the activity at every T needs the spike trains (simulate(..., "
                            "record_spikes=True))")
    trains = [_np(tr) for tr in trains]
    step_totals = [tr.reshape(tr.shape[0], tr.shape[1], -1).sum(axis=2, dtype=np.int64) for tr in trains]
    counts = [np.zeros(tr.shape[1:], np.int64) for tr in trains]
    reports = []
    for t in range(trains[0].shape[0]):
        for count, tr in zip(counts, trains):
            count += tr[t]
        reports.append(layer_activity(net, counts, input_int, step_counts=[s[:t + 1] for s in step_totals],
                                      source=source))
    return reports


# --------------------------------------------------------------------------- raster file
def save_raster(path, layer_names: Sequence[str], trains: Sequence, sample: int = 0) -> Path:
    """Write one sample's spikes of every layer to ``path`` (npz, see module doc).

    ``trains``: per layer ``(T, B, *shape)`` spike trains."""
    names = list(layer_names)
    if len(set(names)) != len(names) or RASTER_NAMES_KEY in names:
        raise ActivityError(f"raster layer names must be unique and not {RASTER_NAMES_KEY!r}: {names}")
    arrays = {RASTER_NAMES_KEY: np.array(names, dtype=str)}
    for name, tr in zip(names, trains):
        tr = _np(tr)
        arrays[name] = (tr[:, sample].reshape(tr.shape[0], -1) != 0)
    path = Path(path)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path


def load_raster(path) -> dict[str, np.ndarray]:
    """``{layer name: (T, n_neurons) bool}`` in layer order, from :func:`save_raster`'s file."""
    with np.load(path, allow_pickle=False) as data:
        if RASTER_NAMES_KEY not in data.files:
            raise ActivityError(f"{path}: not a raster file (no {RASTER_NAMES_KEY!r} array)")
        names = [str(n) for n in data[RASTER_NAMES_KEY]]
        missing = [n for n in names if n not in data.files]
        if missing:
            raise ActivityError(f"{path}: raster arrays missing for layers {missing}")
        return {n: np.asarray(data[n], dtype=bool) for n in names}


__all__ = ["ActivityError", "ActivityReport", "LayerActivity", "MeanActivity", "MeanLayerActivity", "SpikingLayer", "spiking_layers",
           "fan_out", "fan_in", "extra_inputs", "projection_fan_out", "projection_fan_in", "input_fan_out", "conv_fan_out", "conv_fan_in", "layer_activity",
           "activity_from_sim", "activity_by_t", "save_raster", "load_raster", "PROBES_FORMAT_VERSION"]
