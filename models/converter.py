"""ANN -> SNN IR conversion (:func:`convert`): every fold is exact linear algebra.

* Batch-norm after a conv/linear layer: ``W' = W · γ/√(var+ε)`` per output channel,
  ``b' = (b − μ) · γ/√(var+ε) + β``.
* Spikes are binary, so a spike of layer l stands for θ_l (its NQ activation's λ): the
  next layer's weights are multiplied by θ_l.
* Ph×Pw average pooling (stride = kernel) before a k×k conv (stride s, padding p,
  dilation 1) is one conv with kernel ``kron(W, 1_{Ph×Pw}) / (Ph·Pw)``, stride sP and
  padding pP (the pooled map must divide by P). Before flatten + linear, each weight is
  spread over its pooling window (pixels the pooling's floor drops get weight 0).
* Residual block (:class:`models.architectures.ResidualBlock`) whose input is the spikes
  of IR layer ``src``: conv1 → Conv (``fold(W1, BN1) · θ_in``, threshold λ_1); conv2 →
  Conv (``fold(W2, BN2) · θ_1``, threshold λ_out) with one extra input
  ``Projection(source=src)``: ``θ_in · I`` for an identity shortcut, else the shortcut's
  1×1 conv with its BN folded (× θ_in; its bias joins conv2's). A block reading the
  network input directly, or right after pooling or flatten, is refused.
* The last layer is a plain Linear: ``readout='potential'`` (the paper's) makes it the
  non-firing integrator :func:`hardware.ir.readout_neuron`; ``readout='spikes'`` a
  spiking layer of threshold ``output_threshold``.
* ``cuba`` drive shift (:data:`models.nq.CUBA_SHIFTS`): θ/(2T) per step (``half-bias``)
  added to a hidden layer's bias; a cuba-matched activation brings its own shift and T,
  a QCFS-trained model may be shifted at conversion (``cuba_shift``, ``shift_timesteps``).

:func:`ir_quantized_forward` (the IR's float forward with the model's activation) equals
the ANN's forward with noise off, residual nets included.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hardware.ir import (READOUTS, Conv, Dense, Flatten, Input, IRError, Network, Neuron, Projection,
                         readout_neuron)
from hardware.kinds import Readout
from hardware.spec import LOIHI2

from .architectures import ResidualBlock
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


def _layer_neuron(index: int | str, module: nn.Module, nq: NQActivation | None, is_output: bool, neuron: str,
                  readout: str, output_threshold: float | None) -> tuple[float, Neuron]:
    """(θ, neuron) of a conv/linear layer: hidden layers take their NQ activation's λ; the
    output layer (a plain Linear) is the readout integrator or a spiking vote layer."""
    if nq is None and not is_output:
        raise IRError(f"module {index} ({type(module).__name__}) is not followed by an NQ activation")
    if nq is not None and is_output:
        raise IRError("the last layer has an NQ activation; the paper's output layer is a plain "
                      "Linear (rebuild the model with models.architectures.build_model)")
    if is_output:
        if readout == "potential":
            return math.inf, readout_neuron(False)
        return float(output_threshold), _neuron(neuron, float(output_threshold))
    threshold = float(nq.threshold.detach())
    if threshold <= 0:
        raise IRError(f"module {index}: learned threshold λ = {threshold} is not positive")
    return threshold, _neuron(neuron, threshold)


def _layer_shift(index: int | str, nq: NQActivation, neuron: str, cuba_shift: str | None,
                 shift_timesteps: int | None) -> tuple[str, int | None]:
    """(shift, T) of a hidden layer's cuba drive offset: a cuba-matched activation's own,
    else ``cuba_shift`` (default ``none``) at ``shift_timesteps``."""
    if nq.activation == "cuba-matched":
        if neuron != "cuba":
            raise IRError(f"module {index}: the activation is matched to the stock cuba neuron; "
                          f"converting it to {neuron!r} neurons would not reproduce the ANN "
                          f"(convert with neuron='cuba')")
        if cuba_shift is not None and cuba_shift != nq.shift:
            raise IRError(f"module {index}: cuba_shift {cuba_shift!r} differs from the shift "
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


def _shift_metadata(model: nn.Sequential, neuron: str, cuba_shift, shift_timesteps) -> dict:
    """What the hidden layers' activation and drive shift were (provenance for the IR)."""
    layers = [m for m in model.modules() if isinstance(m, NQActivation)]
    if not layers:
        return {}
    shift, steps = _layer_shift(0, layers[0], neuron, cuba_shift, shift_timesteps)
    if layers[0].activation == "qcfs" and shift == "none":
        return {}
    return {"ann_activation": layers[0].activation, "cuba_shift": shift, "cuba_timesteps": steps}


@dataclass
class _Walk:
    """Where the conversion stands in the module list."""

    shape: tuple                 # shape of the current activation (after pending pooling)
    pre_pool_shape: tuple        # shape before the pending pooling
    spike_scale: float = 1.0     # value one input unit stands for (θ of the previous layer)
    pool: tuple = (1, 1)         # pending average-pool factor per axis (height, width)
    flatten_pending: bool = False
    layers: list = field(default_factory=list)


@dataclass(frozen=True)
class _Conversion:
    """The options every hidden layer is converted with."""

    neuron: str
    cuba_shift: str | None
    shift_timesteps: int | None


def convert(model: nn.Sequential, input_shape: tuple, neuron: str = "if_soft",
            metadata: dict | None = None, readout: Readout = "potential",
            output_threshold: float | None = None, cuba_shift: str | None = None,
            shift_timesteps: int | None = None) -> Network:
    """Fold a trained NQ ``nn.Sequential`` (see :mod:`models.architectures`, residual nets
    included) into a float IR.

    ``readout``/``output_threshold``: how the final plain Linear is read (module docstring).
    ``cuba_shift``/``shift_timesteps``: the drive offset folded into the hidden biases of a
    QCFS-trained model converted to ``cuba`` (module docstring); a cuba-matched model
    brings its own (``cuba_shift``, if given, must equal it).
    """
    _check_readout(readout, output_threshold)
    options = _Conversion(neuron, cuba_shift, shift_timesteps)
    modules = list(model)
    walk = _Walk(shape=tuple(input_shape), pre_pool_shape=tuple(input_shape))
    index = 0
    while index < len(modules):
        module = modules[index]
        if isinstance(module, nn.AvgPool2d):
            _absorb_pool(walk, module, index)
            index += 1
            continue
        if isinstance(module, nn.Flatten):
            walk.flatten_pending = True
            index += 1
            continue
        if isinstance(module, ResidualBlock):
            _residual_layers(walk, module, index, options, last=index == len(modules) - 1)
            index += 1
            continue
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            raise IRError(f"module {index} ({type(module).__name__}) cannot be converted")
        bn, nq, j = _followers(modules, index)
        weight, bias = _fold_bn(module.weight, module.bias, bn)
        weight = weight * walk.spike_scale
        threshold, layer_neuron = _layer_neuron(index, module, nq, j == len(modules), neuron, readout,
                                                output_threshold)
        if nq is not None:
            bias = bias + _drive_shift(index, nq, threshold, options)
        name = f"{'conv' if isinstance(module, nn.Conv2d) else 'dense'}{len(walk.layers)}"
        make = _conv_layer if isinstance(module, nn.Conv2d) else _dense_layer
        layer = make(walk, module, index, weight, bias, layer_neuron, name)
        walk.layers.append(layer)
        walk.pool = (1, 1)
        walk.spike_scale = threshold
        walk.shape = layer.output_shape((int(np.prod(walk.shape)),) if isinstance(layer, Dense) else walk.shape)
        index = j
    if walk.pool != (1, 1) or walk.flatten_pending:
        raise IRError("the network ends with pooling or flatten; the last layer must be a plain Linear")
    provenance = {**_shift_metadata(model, neuron, cuba_shift, shift_timesteps), **(metadata or {})}
    return Network(input=Input(shape=tuple(input_shape)), layers=walk.layers, integer=False,
                   metadata=provenance, readout=readout)


def _drive_shift(label: int | str, nq: NQActivation, threshold: float, options: _Conversion):
    """The cuba drive offset a hidden layer's bias takes (0 without a shift)."""
    shift, steps = _layer_shift(label, nq, options.neuron, options.cuba_shift, options.shift_timesteps)
    return cuba_shift_offset(threshold, steps, shift) if shift != "none" else 0.0


def _check_readout(readout: str, output_threshold: float | None) -> None:
    if readout not in READOUTS:
        raise IRError(f"readout {readout!r} is not one of {READOUTS}")
    if readout == "spikes" and not (output_threshold is not None and float(output_threshold) > 0):
        raise IRError("a spike-count readout needs a positive output_threshold for the output layer")


def _pair(value) -> tuple:
    return (value, value) if isinstance(value, int) else tuple(value)


def _absorb_pool(walk: _Walk, module: nn.AvgPool2d, index: int) -> None:
    """Average pooling is linear: remember it and fold it into the next weighted layer."""
    kernel, stride = _pair(module.kernel_size), _pair(module.stride)
    if kernel != stride or _pair(module.padding) != (0, 0) or module.ceil_mode \
            or module.divisor_override is not None:
        raise IRError(f"module {index}: only non-overlapping, unpadded average pooling (floor mode, "
                      f"no divisor override) folds exactly")
    if walk.pool == (1, 1):
        walk.pre_pool_shape = walk.shape
    walk.pool = (walk.pool[0] * kernel[0], walk.pool[1] * kernel[1])
    walk.shape = (walk.shape[0], walk.shape[1] // kernel[0], walk.shape[2] // kernel[1])
    if walk.shape[1] < 1 or walk.shape[2] < 1:
        raise IRError(f"module {index}: a {kernel[0]}×{kernel[1]} pooling does not fit the "
                      f"{walk.pre_pool_shape} map")


def _followers(modules: list, index: int) -> tuple:
    """(BatchNorm or None, NQActivation or None, index after them) following ``modules[index]``."""
    bn = nq = None
    j = index + 1
    if j < len(modules) and isinstance(modules[j], (nn.BatchNorm2d, nn.BatchNorm1d)):
        bn = modules[j]
        j += 1
    if j < len(modules) and isinstance(modules[j], NQActivation):
        nq = modules[j]
        j += 1
    return bn, nq, j


def _conv_layer(walk: _Walk, module: nn.Conv2d, index: int, weight, bias, neuron: Neuron, name: str) -> Conv:
    """The conv layer, with pending pooling folded in (kernel spread over the pooled window,
    stride and padding scaled by the pooling factor)."""
    if walk.flatten_pending:
        raise IRError(f"module {index}: conv after flatten")
    stride, padding, dilation = tuple(module.stride), tuple(module.padding), tuple(module.dilation)
    ph, pw = walk.pool
    if (ph, pw) != (1, 1):
        if dilation != (1, 1) or module.groups != 1:
            raise IRError(f"module {index}: pooling folds only into an undilated, ungrouped conv")
        if walk.pre_pool_shape[1] % ph or walk.pre_pool_shape[2] % pw:
            raise IRError(f"module {index}: pooled map {walk.pre_pool_shape[1:]} is not divisible by "
                          f"the pooling factor {_factor(walk.pool)}; the fold would not be exact")
        weight = torch.kron(weight, torch.ones(1, 1, ph, pw, dtype=weight.dtype)) / (ph * pw)
        stride = (stride[0] * ph, stride[1] * pw)
        padding = (padding[0] * ph, padding[1] * pw)
        walk.shape = walk.pre_pool_shape
    return Conv(weight=weight.numpy(), bias=bias.numpy(), neuron=neuron, stride=stride, padding=padding,
                dilation=dilation, groups=module.groups, name=name)


def _factor(pool: tuple):
    """A pooling factor as the user wrote it: P for square P×P, else (Ph, Pw)."""
    return pool[0] if pool[0] == pool[1] else pool


def _dense_layer(walk: _Walk, module: nn.Linear, index: int, weight, bias, neuron: Neuron, name: str) -> Dense:
    """The dense layer, after a Flatten layer if one is pending, with pending pooling folded
    in (each weight spread over its pooled window; pixels the pooling dropped get zero)."""
    if walk.flatten_pending:
        walk.layers.append(Flatten(name=f"flatten{len(walk.layers)}"))
        walk.flatten_pending = False
        if walk.pool != (1, 1):
            (ph, pw), (c, h, w) = walk.pool, walk.pre_pool_shape
            oh, ow = walk.shape[1], walk.shape[2]
            grid = weight.view(weight.shape[0], c, oh, ow)
            spread = torch.zeros(weight.shape[0], c, h, w, dtype=weight.dtype)
            spread[:, :, :oh * ph, :ow * pw] = grid.repeat_interleave(ph, 2).repeat_interleave(pw, 3)
            weight = (spread / (ph * pw)).reshape(weight.shape[0], -1)
            walk.shape = walk.pre_pool_shape
    elif walk.pool != (1, 1):
        raise IRError(f"module {index}: pooling before a linear layer needs a flatten in between")
    return Dense(weight=weight.numpy(), bias=bias.numpy(), neuron=neuron, name=name)


def _residual_layers(walk: _Walk, block: ResidualBlock, index: int, options: _Conversion,
                     last: bool) -> None:
    """Append a residual block's two IR layers (module docstring): conv1, then conv2 with
    the shortcut as an extra input from the block's input layer."""
    where = f"module {index} (residual block)"
    if last:
        raise IRError(f"{where} ends the network; the last layer must be a plain Linear (the "
                      f"readout), after global average pooling and flatten")
    if not walk.layers:
        raise IRError(f"{where}: the block reads the network input directly, but its shortcut needs "
                      f"the spikes of an earlier spiking layer; put a conv-BN-NQ stem before the "
                      f"first residual block")
    if walk.pool != (1, 1) or walk.flatten_pending:
        raise IRError(f"{where}: {'average pooling' if walk.pool != (1, 1) else 'a flatten'} right "
                      f"before a residual block does not fold: the shortcut reads the previous "
                      f"layer's spikes as they are (pool after the block instead)")
    source = walk.layers[-1]
    if not isinstance(source, Conv):
        raise IRError(f"{where}: the block's input must be a conv layer's (C, H, W) spikes, not "
                      f"{type(source).__name__} {source.name!r}")
    theta_in = walk.spike_scale
    conv1 = _block_conv(f"{index}.conv1", block.conv1, block.bn1, block.nq1, theta_in, options,
                        name=f"conv{len(walk.layers)}")
    walk.layers.append(conv1)
    walk.shape = conv1.output_shape(walk.shape)
    theta_1 = float(conv1.neuron.threshold)
    projection, shortcut_bias = _shortcut(where, block, source, theta_in)
    conv2 = _block_conv(f"{index}.conv2", block.conv2, block.bn2, block.nq_out, theta_1, options,
                        name=f"conv{len(walk.layers)}", extra_bias=shortcut_bias, extra_inputs=(projection,))
    walk.layers.append(conv2)
    walk.shape = conv2.output_shape(walk.shape)
    walk.spike_scale = float(conv2.neuron.threshold)


def _block_conv(label: str, module, bn, nq, spike_scale: float, options: _Conversion, *,
                name: str, extra_bias=None, extra_inputs: tuple = ()) -> Conv:
    """A conv of a residual block: BN folded, × the θ of its input spikes, the NQ's λ as
    threshold, the cuba drive shift (and a projection shortcut's folded BN bias) in the bias."""
    if not isinstance(module, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d) \
            or not isinstance(nq, NQActivation):
        raise IRError(f"module {label}: expected Conv2d, BatchNorm2d and NQActivation, got "
                      f"{type(module).__name__}, {type(bn).__name__}, {type(nq).__name__}")
    weight, bias = _fold_bn(module.weight, module.bias, bn)
    threshold, neuron = _layer_neuron(label, module, nq, False, options.neuron, "potential", None)
    if extra_bias is not None:
        bias = bias + extra_bias
    bias = bias + _drive_shift(label, nq, threshold, options)
    return Conv(weight=(weight * spike_scale).numpy(), bias=bias.numpy(), neuron=neuron,
                stride=tuple(module.stride), padding=tuple(module.padding), dilation=tuple(module.dilation),
                groups=module.groups, name=name, extra_inputs=extra_inputs)


def _shortcut(where: str, block: ResidualBlock, source: Conv, theta_in: float):
    """(Projection from ``source``, bias it adds to the receiving layer or None) of the
    block's shortcut: θ_in·I for the identity, the folded 1×1 conv-BN × θ_in otherwise."""
    shortcut = list(block.shortcut)
    if not shortcut:
        channels = block.conv2.out_channels
        eye = torch.eye(channels, dtype=torch.float64).view(channels, channels, 1, 1)
        return Projection(source=source.name, weight=(eye * theta_in).numpy()), None
    if len(shortcut) != 2 or not isinstance(shortcut[0], nn.Conv2d) \
            or not isinstance(shortcut[1], nn.BatchNorm2d):
        raise IRError(f"{where}: the shortcut must be the identity (an empty nn.Sequential) or "
                      f"nn.Sequential(Conv2d, BatchNorm2d), got "
                      f"{', '.join(type(m).__name__ for m in shortcut)}")
    conv, bn = shortcut
    weight, bias = _fold_bn(conv.weight, conv.bias, bn)
    projection = Projection(source=source.name, weight=(weight * theta_in).numpy(), kind="conv",
                            stride=tuple(conv.stride), padding=tuple(conv.padding),
                            dilation=tuple(conv.dilation), groups=conv.groups)
    return projection, bias


def ir_quantized_forward(net: Network, x: torch.Tensor, levels: int, activation: str = "qcfs",
                         timesteps: int | None = None) -> torch.Tensor:
    """The IR's float forward with the ANN's activations: the function it was folded from.

    Hidden layer l computes, with ``h_l = W_l q_{l−1} + Σ_k P_k q_{source_k} + b_l`` (the
    sum over its extra inputs, e.g. a residual shortcut),
    ``q_l = clip(floor(h_l·L/θ_l + 1/2)/L, 0, 1)`` (``activation='qcfs'``, ``q_0`` is the
    input) or ``q_l = count(h_l, θ_l, T)/T`` (``'cuba-matched'``:
    :func:`models.nq.cuba_spike_count`, T = ``timesteps``; a drive shift is already in
    b_l); the output layer is affine: the result is the logits ``h_out``, whatever the
    readout.
    """
    if activation == "cuba-matched" and (not isinstance(timesteps, int) or timesteps < 1):
        raise IRError(f"a cuba-matched forward needs timesteps as a positive integer, got {timesteps!r}")
    if net.integer:
        raise IRError("ir_quantized_forward needs the float IR")
    q = x.double()
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
            q = torch.clamp(torch.floor(torch.clamp(h / threshold, 0, 1) * levels + 0.5) / levels, 0, 1)
        outputs[layer.name] = q
    raise IRError("the network has no weighted layer")


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


def _ann_weighted_units(model: nn.Module) -> list[list[nn.Module]]:
    """The ANN's conv/linear modules grouped as the IR's weighted layers: one per module,
    except that a residual block's projection-shortcut conv joins the block's conv2 (the
    IR layer that receives it). ``modules()`` yields a block's conv2 before its shortcut."""
    units: list[list[nn.Module]] = []
    unit_of: dict[int, list] = {}     # id(module) -> its unit
    receiver: dict[int, nn.Module] = {}  # id(shortcut conv) -> the block's conv2
    for module in model.modules():
        if isinstance(module, ResidualBlock):
            receiver.update({id(m): module.conv2 for m in module.shortcut})
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            if id(module) in receiver:
                unit_of[id(receiver[id(module)])].append(module)
            else:
                units.append([module])
                unit_of[id(module)] = units[-1]
    return units


@torch.no_grad()
def count_ann_macs(model: nn.Module, input_shape: tuple) -> list[int]:
    """Multiply-accumulates per IR weighted layer of the ANN itself (before pooling is
    folded into larger kernels, which would overstate the ANN's cost). A residual block's
    1×1 projection shortcut counts with the block's conv2, which receives it in the IR;
    an identity shortcut is an addition, not a multiply-accumulate, and counts 0."""
    macs: dict[int, int] = {}

    def hook(module, _inputs, output):
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            macs[id(module)] = per_output * output[0].numel()
        else:
            macs[id(module)] = module.in_features * module.out_features
    units = _ann_weighted_units(model)
    hooks = [m.register_forward_hook(hook) for unit in units for m in unit]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_shape, dtype=next(model.parameters()).dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return [sum(macs[id(m)] for m in unit) for unit in units]


__all__ = ["convert", "ir_quantized_forward", "count_ann_macs"]
