"""ANN -> SNN IR conversion (:func:`convert`) of an NQ network: every fold is exact.

The network is a captured GraphModule (:func:`models.capture.capture`) or a registry
model (traced here); :func:`models.capture.plan` lists its spiking layers and the terms
summing into each. A term is one synapse on its source's spikes: the main one (from the
previous layer) or an extra input (:class:`hardware.ir.Projection`: a residual shortcut,
a concatenated branch); two terms from one source merge into one kernel where they can.

* Batch-norm after a conv/linear: ``W' = W · γ/√(var+ε)``, ``b' = (b − μ) · γ/√(var+ε) + β``.
* A spike of layer l stands for θ_l (its NQ λ): the synapses it feeds are × θ_l.
* Ph×Pw average pooling (stride = kernel) before a k×k conv (stride s, padding p) is
  one conv of kernel ``kron(W, 1_{Ph×Pw}) / (Ph·Pw)``, stride sP, padding pP (the map
  must divide by P). Before a Linear, any linear reshaping (pooling of any kind,
  flatten, view, cat) is folded into its weights: non-overlapping pools by spreading each
  weight over its window (pixels the floor drops get 0), others by the exact adjoint.
* A term without a weighted op is an identity (θ·I, 1×1) or pooling (θ·I ⊗ window
  average) synapse; ``torch.cat`` before a weighted op splits its input channels, after
  it places its output channels. Extra inputs' biases join the layer's.
* The last layer is a plain Linear: the integrator :func:`hardware.ir.readout_neuron`
  (``readout='potential'``) or a layer of threshold ``output_threshold`` (``'spikes'``).
* ``cuba`` drive shift (:data:`models.nq.CUBA_SHIFTS`): θ/(2T) added to a hidden bias
  (``half-bias``); a cuba-matched activation brings its own, a QCFS one takes
  ``cuba_shift`` and ``shift_timesteps`` here.

:func:`ir_quantized_forward` (the IR's float forward) equals the ANN's with noise off.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from hardware.ir import (READOUTS, Conv, Dense, Flatten, Input, IRError, Network, Neuron, Projection,
                         readout_neuron)
from hardware.kinds import Readout
from hardware.spec import LOIHI2

from .architectures import nq_layers
from .capture import (Term, TermParts, Unit, as_graph, conv_pool_factor, identity_pool, kind, plan,
                      pool_factor, pools_of, shape_of, term_parts)
from .nq import CUBA_SHIFTS, NQActivation, cuba_shift_offset, cuba_spike_count


def _fold_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.Module | None):
    weight = weight.detach().double()
    bias = torch.zeros(weight.shape[0], dtype=torch.float64) if bias is None else bias.detach().double()
    if bn is None:
        return weight, bias
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return weight * scale.view(shape), (bias - bn.running_mean.detach().double()) * scale + bn.bias.detach().double()


def _neuron(kind: str, threshold: float) -> Neuron:
    return Neuron(kind=kind, threshold=float(threshold), du=LOIHI2.if_du, dv=LOIHI2.if_dv,
                  bias_exp=LOIHI2.netx_bias_exp)


def _layer_neuron(label: str, nq: NQActivation | None, neuron: str, readout: str,
                  output_threshold: float | None) -> tuple[float, Neuron]:
    """(θ, neuron) of a layer: a hidden layer takes its NQ activation's λ; the output layer
    (``nq`` None) is the readout integrator or a spiking vote layer."""
    if nq is None:
        if readout == "potential":
            return math.inf, readout_neuron(False)
        return float(output_threshold), _neuron(neuron, float(output_threshold))
    threshold = float(nq.threshold.detach())
    if threshold <= 0:
        raise IRError(f"{label}: learned threshold λ = {threshold} is not positive")
    return threshold, _neuron(neuron, threshold)


def _layer_shift(label: str, nq: NQActivation, neuron: str, cuba_shift: str | None,
                 shift_timesteps: int | None) -> tuple[str, int | None]:
    """(shift, T) of a hidden layer's cuba drive offset: a cuba-matched activation's own,
    else ``cuba_shift`` (default ``none``) at ``shift_timesteps``."""
    if nq.activation == "cuba-matched":
        if neuron != "cuba":
            raise IRError(f"{label}: the activation is matched to the stock cuba neuron; "
                          f"converting it to {neuron!r} neurons would not reproduce the ANN "
                          f"(convert with neuron='cuba')")
        if cuba_shift is not None and cuba_shift != nq.shift:
            raise IRError(f"{label}: cuba_shift {cuba_shift!r} differs from the shift "
                          f"{nq.shift!r} the activation was trained with")
        return nq.shift, nq.timesteps
    shift = "none" if cuba_shift is None else cuba_shift
    if shift not in CUBA_SHIFTS:
        raise IRError(f"cuba_shift {shift!r} is not one of {', '.join(CUBA_SHIFTS)}")
    if shift != "none" and neuron != "cuba":
        raise IRError(f"cuba_shift {shift!r} applies to cuba neurons only, not {neuron!r}")
    if shift != "none" and (isinstance(shift_timesteps, bool) or not isinstance(shift_timesteps, int)
                            or shift_timesteps < 1):
        raise IRError(f"cuba_shift {shift!r} needs shift_timesteps (the T it is designed for) as a "
                      f"positive integer, got {shift_timesteps!r}")
    return shift, shift_timesteps


def _shift_metadata(model: nn.Module, neuron: str, cuba_shift, shift_timesteps) -> dict:
    """What the hidden layers' activation and drive shift were (provenance for the IR)."""
    layers = nq_layers(model)
    if not layers:
        return {}
    shift, steps = _layer_shift("module 0", layers[0], neuron, cuba_shift, shift_timesteps)
    if layers[0].activation == "qcfs" and shift == "none":
        return {}
    return {"ann_activation": layers[0].activation, "cuba_shift": shift, "cuba_timesteps": steps}




@dataclass(frozen=True)
class _Conversion:
    """The options every hidden layer is converted with."""

    neuron: str
    cuba_shift: str | None
    shift_timesteps: int | None


@dataclass
class _Synapse:
    """One term as weights on its source's spikes (float64); ``bias`` None for an identity."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    conv: bool
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    origin: fx.Node | None = None  # the weighted op (its bias counts once per layer)

    def projection(self, source: str) -> Projection:
        if not self.conv:
            return Projection(source=source, weight=self.weight.numpy(), kind="dense")
        return Projection(source=source, weight=self.weight.numpy(), kind="conv", stride=self.stride,
                          padding=self.padding, dilation=self.dilation, groups=self.groups)


def convert(model: nn.Module, input_shape: tuple, neuron: str = "if_soft",
            metadata: dict | None = None, readout: Readout = "potential",
            output_threshold: float | None = None, cuba_shift: str | None = None,
            shift_timesteps: int | None = None) -> Network:
    """Fold a trained NQ network (a captured GraphModule or a registry model) into a float IR.

    ``readout``/``output_threshold``: how the final plain Linear is read (module docstring).
    ``cuba_shift``/``shift_timesteps``: the drive offset folded into the hidden biases of a
    QCFS-trained model converted to ``cuba`` (module docstring); a cuba-matched model
    brings its own (``cuba_shift``, if given, must equal it).
    """
    _check_readout(readout, output_threshold)
    options = _Conversion(neuron, cuba_shift, shift_timesteps)
    gm = as_graph(model, tuple(input_shape))
    source = next(n for n in gm.graph.nodes if n.op == "placeholder")
    done = {source: ("input", 1.0, tuple(input_shape))}  # node -> (IR name, θ, output shape)
    layers: list = []
    for unit in plan(gm):
        _append_layer(gm, unit, done, layers, options, readout, output_threshold)
    provenance = {**_shift_metadata(gm, neuron, cuba_shift, shift_timesteps), **(metadata or {})}
    return Network(input=Input(shape=tuple(input_shape)), layers=layers, integer=False,
                   metadata=provenance, readout=readout)


def _label(gm: fx.GraphModule, unit: Unit) -> str:
    """``module <name>`` of a layer: its main weighted module, else its activation."""
    weighted = term_parts(gm, unit.terms[0]).weighted
    node = weighted if weighted is not None else unit.node
    return f"module {node.target}" if node.op == "call_module" else f"layer {node.name}"


def _append_layer(gm: fx.GraphModule, unit: Unit, done: dict, layers: list, options: _Conversion,
                  readout: str, output_threshold) -> None:
    """The IR layer of ``unit``: its main synapse, its extra inputs, θ and bias."""
    label = _label(gm, unit)
    threshold, layer_neuron = _layer_neuron(label, unit.nq, options.neuron, readout, output_threshold)
    conv = len(unit.shape) == 3
    name = f"{'conv' if conv else 'dense'}{len(layers)}"
    synapses = [(_synapse(gm, t, done[t.source], conv), done[t.source][0]) for t in unit.terms]
    if not conv and len(done[unit.terms[0].source][2]) == 3:
        layers.append(Flatten(name=f"flatten{len(layers)}"))
    bias, counted = torch.zeros(unit.shape[0], dtype=torch.float64), set()
    for synapse, _source in synapses:  # conv(cat(a, b)) is two terms with one bias
        if synapse.bias is not None and synapse.origin not in counted:
            bias = synapse.bias if not counted else bias + synapse.bias
            counted.add(synapse.origin)
    (synapse, _main), *extras = _merge_same_source(synapses)
    if unit.nq is not None:
        bias = bias + _drive_shift(label, unit.nq, threshold, options)
    projections = tuple(extra.projection(source) for extra, source in extras)
    if conv:
        layer = Conv(weight=synapse.weight.numpy(), bias=bias.numpy(), neuron=layer_neuron,
                     stride=synapse.stride, padding=synapse.padding, dilation=synapse.dilation,
                     groups=synapse.groups, name=name, extra_inputs=projections)
    else:
        layer = Dense(weight=synapse.weight.numpy(), bias=bias.numpy(), neuron=layer_neuron, name=name,
                      extra_inputs=projections)
    layers.append(layer)
    done[unit.node] = (name, threshold, unit.shape)


def _merge_same_source(synapses: list) -> list:
    """Synapses from one source summed into one where their geometry allows (e.g. a conv and
    an identity shortcut both reading the previous layer); the others stay separate."""
    merged: list = []
    for synapse, source in synapses:
        for k, (kept, kept_source) in enumerate(merged):
            both = _merged(kept, synapse) if kept_source == source else None
            if both is not None:
                merged[k] = (both, source)
                break
        else:
            merged.append((synapse, source))
    return merged


def _merged(a: _Synapse, b: _Synapse) -> _Synapse | None:
    """a + b as one synapse: dense weights add; the smaller conv kernel is placed inside
    the larger one where the two sample the same input pixels (equal stride, dilation and
    groups; the padding difference a whole number of dilated taps)."""
    if a.conv != b.conv:
        return None
    if not a.conv:
        return dataclasses.replace(a, weight=a.weight + b.weight)
    big, small = (a, b) if a.weight.shape[2] >= b.weight.shape[2] else (b, a)
    if (big.stride, big.dilation, big.groups) != (small.stride, small.dilation, small.groups) \
            or big.weight.shape[:2] != small.weight.shape[:2]:
        return None
    offsets = []
    for axis in range(2):
        gap = big.padding[axis] - small.padding[axis]
        offset, rest = divmod(gap, big.dilation[axis])
        if rest or offset < 0 or offset + small.weight.shape[2 + axis] > big.weight.shape[2 + axis]:
            return None
        offsets.append(offset)
    weight = big.weight.clone()
    (oh, ow), (kh, kw) = offsets, small.weight.shape[2:]
    weight[:, :, oh:oh + kh, ow:ow + kw] += small.weight
    return dataclasses.replace(big, weight=weight)


def _drive_shift(label: str, nq: NQActivation, threshold: float, options: _Conversion):
    """The cuba drive offset a hidden layer's bias takes (0 without a shift)."""
    shift, steps = _layer_shift(label, nq, options.neuron, options.cuba_shift, options.shift_timesteps)
    return cuba_shift_offset(threshold, steps, shift) if shift != "none" else 0.0


def _check_readout(readout: str, output_threshold: float | None) -> None:
    if readout not in READOUTS:
        raise IRError(f"readout {readout!r} is not one of {READOUTS}")
    if readout == "spikes" and not (output_threshold is not None and float(output_threshold) > 0):
        raise IRError("a spike-count readout needs a positive output_threshold for the output layer")


def _synapse(gm: fx.GraphModule, term: Term, source: tuple, conv: bool) -> _Synapse:
    """``term`` as weights on the spikes of ``source`` = (IR name, θ, output shape)."""
    _name, scale, source_shape = source
    parts = term_parts(gm, term)
    if parts.weighted is None:
        return _identity_synapse(gm, parts, scale, source_shape, conv)
    module = gm.get_submodule(parts.weighted.target)
    bn = gm.get_submodule(parts.bn.target) if parts.bn is not None else None
    weight, bias = _fold_bn(module.weight, module.bias, bn)
    weight = weight * scale
    if isinstance(module, nn.Conv2d):
        synapse = _conv_synapse(gm, parts, module, weight, bias, source_shape)
    else:
        synapse = _Synapse(_dense_weight(gm, parts, weight, source_shape), bias, conv=False)
    for _node, (offset, width, total) in parts.post:  # a cat after the weighted op
        synapse.weight = _place_rows(synapse.weight, offset, total)
        synapse.bias = _place_rows(synapse.bias, offset, total)
    synapse.origin = parts.weighted
    return synapse


def _place_rows(value: torch.Tensor, offset: int, total: int) -> torch.Tensor:
    """``value``'s rows (output channels) at ``offset`` of ``total`` zero rows."""
    out = torch.zeros((total,) + tuple(value.shape[1:]), dtype=value.dtype)
    out[offset:offset + value.shape[0]] = value
    return out


def _conv_synapse(gm: fx.GraphModule, parts: TermParts, module: nn.Conv2d, weight, bias,
                  source_shape: tuple) -> _Synapse:
    """A conv with its input-channel slice (cats before it) and the pooling before it
    folded in (kernel spread over the pooled window, stride and padding × the factor)."""
    stride, padding, dilation = tuple(module.stride), tuple(module.padding), tuple(module.dilation)
    for _node, slot in reversed(parts.pre):  # the cat nearest the conv slices first
        if slot is not None:
            weight = weight[:, slot[0]:slot[0] + slot[1]]
    ph, pw = conv_pool_factor(gm, parts, source_shape)
    if (ph, pw) != (1, 1):
        weight = torch.kron(weight, torch.ones(1, 1, ph, pw, dtype=weight.dtype)) / (ph * pw)
        stride = (stride[0] * ph, stride[1] * pw)
        padding = (padding[0] * ph, padding[1] * pw)
    return _Synapse(weight, bias, True, stride, padding, dilation, module.groups)


def _dense_weight(gm: fx.GraphModule, parts: TermParts, weight, source_shape: tuple):
    """A Linear's weight on its source's flattened spikes: non-overlapping pooling spread
    over its windows (pixels the floor drops get 0), any other reshaping by its adjoint."""
    factor = pool_factor(pools_of(gm, parts.pre))
    if factor is None or any(slot is not None for _n, slot in parts.pre):
        return _pullback(gm, parts.pre, weight, source_shape)
    if factor == (1, 1):
        return weight
    (ph, pw), (c, h, w) = factor, source_shape
    oh, ow = h // ph, w // pw
    grid = weight.view(weight.shape[0], c, oh, ow)
    spread = torch.zeros(weight.shape[0], c, h, w, dtype=weight.dtype)
    spread[:, :, :oh * ph, :ow * pw] = grid.repeat_interleave(ph, 2).repeat_interleave(pw, 3)
    return (spread / (ph * pw)).reshape(weight.shape[0], -1)


def _apply_ops(gm: fx.GraphModule, ops: tuple, x: torch.Tensor) -> torch.Tensor:
    """The linear reshaping ``ops`` (pooling, flatten, cat as zero-padded channels) on ``x``."""
    for node, slot in ops:
        if slot is not None:
            offset, width, total = slot
            pad = (offset, total - offset - width)
            x = F.pad(x, (0, 0, 0, 0) + pad if x.dim() == 4 else pad)
        elif kind(gm, node) == "flatten":
            x = x.flatten(1)
        else:
            x = gm.get_submodule(node.target)(x)
    return x.flatten(1)


def _pullback(gm: fx.GraphModule, ops: tuple, weight: torch.Tensor, source_shape: tuple,
              rows: int = 256) -> torch.Tensor:
    """``weight ∘ ops`` as a matrix on the flattened source: the adjoint of the linear map
    ``ops`` applied to each row of ``weight`` (exact; in blocks of ``rows``)."""
    blocks = []
    for start in range(0, weight.shape[0], rows):
        block = weight[start:start + rows]
        x = torch.zeros((block.shape[0],) + tuple(source_shape), dtype=torch.float64, requires_grad=True)
        with torch.enable_grad():
            y = _apply_ops(gm, ops, x)
            if y.shape[1] != block.shape[1]:
                raise IRError(f"a reshaping gives {y.shape[1]} features, the Linear takes {block.shape[1]}")
            (grad,) = torch.autograd.grad((y * block).sum(), x)
        blocks.append(grad.flatten(1))
    return torch.cat(blocks)


def _identity_synapse(gm: fx.GraphModule, parts: TermParts, scale: float, source_shape: tuple,
                      conv: bool) -> _Synapse:
    """A term without weights: θ·I (1×1 conv), the pooling as a conv of θ·I ⊗ window average,
    cats placing it among the receiving channels; into a dense layer, its adjoint."""
    if not conv:
        out = int(torch.Size(shape_of(parts.pre[-1][0]) if parts.pre else source_shape).numel())
        return _Synapse(_pullback(gm, parts.pre, torch.eye(out, dtype=torch.float64) * scale,
                                  source_shape), None, conv=False)
    channels = source_shape[0]
    weight = torch.eye(channels, dtype=torch.float64).view(channels, channels, 1, 1) * scale
    kernel, stride, padding = identity_pool(gm, parts)
    if kernel != (1, 1):
        weight = torch.kron(weight, torch.ones(1, 1, *kernel, dtype=weight.dtype)) / (kernel[0] * kernel[1])
    for _node, slot in parts.pre:
        if slot is not None:
            weight = _place_rows(weight, slot[0], slot[2])
    return _Synapse(weight, None, True, tuple(stride), tuple(padding))


def ir_quantized_forward(net: Network, x: torch.Tensor, levels: int, activation: str = "qcfs",
                         timesteps: int | None = None) -> torch.Tensor:
    """The IR's float forward with the ANN's activations: the function it was folded from.

    Hidden layer l computes, with ``h_l = W_l q_{l−1} + Σ_k P_k q_{source_k} + b_l`` (the
    sum over its extra inputs, e.g. a residual shortcut),
    ``q_l = clip(floor(h_l·L/θ_l + 1/2)/L, 0, 1)`` (``activation='qcfs'``, ``q_0`` is the
    input) or ``q_l = count(h_l, θ_l, T)/T`` (``'cuba-matched'``:
    :func:`models.nq.cuba_spike_count`, T = ``timesteps``; a drive shift is already in
    b_l); the output layer is affine: the result is the logits ``h_out``, whatever the
    readout. A QCFS network given a cuba drive shift at conversion (``net.metadata``) has
    the offset in b_l, which its ANN never saw: QCFS reads ``h_l`` less the offset.
    """
    if activation == "cuba-matched" and (not isinstance(timesteps, int) or timesteps < 1):
        raise IRError(f"a cuba-matched forward needs timesteps as a positive integer, got {timesteps!r}")
    if net.integer:
        raise IRError("ir_quantized_forward needs the float IR")
    q = x.double()
    shift, shift_timesteps = _conversion_shift(net, activation)
    outputs: dict[str, torch.Tensor] = {}  # weighted layer name -> its q (extra inputs read them)
    last = net.weighted_layers[-1]
    for layer in net.layers:
        if isinstance(layer, Flatten):
            q = q.flatten(1)
            continue
        h = _synapse_forward(layer, q, with_bias=True)
        for proj in layer.extra_inputs:
            h = h + _synapse_forward(proj.synapse(f"{layer.name}<-{proj.source}"), outputs[proj.source],
                                     with_bias=False)
        if layer is last:
            return h
        threshold = float(layer.neuron.threshold)
        if activation == "cuba-matched":
            q = cuba_spike_count(h, threshold, timesteps) / timesteps
        else:
            if shift != "none":
                h = h - cuba_shift_offset(threshold, shift_timesteps, shift)
            q = torch.clamp(torch.floor(torch.clamp(h / threshold, 0, 1) * levels + 0.5) / levels, 0, 1)
        outputs[layer.name] = q
    raise IRError("the network has no weighted layer")


def _conversion_shift(net: Network, activation: str) -> tuple[str, int | None]:
    """(shift, T) that conversion added to the hidden biases of a QCFS ANN (``'none'`` when
    the activation is not QCFS, or the shift is the cuba-matched activation's own)."""
    meta = net.metadata or {}
    shift = meta.get("cuba_shift", "none")
    if activation != "qcfs" or meta.get("ann_activation", "qcfs") != "qcfs" or shift == "none":
        return "none", None
    return shift, meta.get("cuba_timesteps")


def _synapse_forward(layer, q: torch.Tensor, with_bias: bool) -> torch.Tensor:
    """``layer``'s weights (and bias) applied to ``q`` in float64; a Dense layer reads ``q``
    flattened in C order."""
    w = torch.as_tensor(layer.weight, dtype=torch.float64)
    b = torch.as_tensor(layer.bias, dtype=torch.float64) if with_bias and layer.bias is not None else None
    if isinstance(layer, Conv):
        return F.conv2d(q, w, b, stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                        groups=layer.groups)
    h = q.flatten(1) @ w.T
    return h if b is None else h + b


@torch.no_grad()
def count_ann_macs(model: nn.Module, input_shape: tuple) -> list[int]:
    """Multiply-accumulates per IR weighted layer of the ANN itself (before pooling is
    folded into larger kernels, which would overstate the ANN's cost): the conv/linear
    modules whose terms sum into that layer, e.g. a residual block's conv2 and its 1×1
    projection shortcut; an identity shortcut is an addition and counts 0."""
    gm = as_graph(model, tuple(input_shape))
    macs = []
    for unit in plan(gm):
        total = 0
        for term in unit.terms:
            node = term_parts(gm, term).weighted
            if node is None:
                continue
            module = gm.get_submodule(node.target)
            if isinstance(module, nn.Conv2d):
                per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
                total += per_output * int(torch.Size(shape_of(node)).numel())
            else:
                total += module.in_features * module.out_features
        macs.append(total)
    return macs


__all__ = ["convert", "ir_quantized_forward", "count_ann_macs"]
