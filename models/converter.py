"""ANN -> SNN IR conversion.

Folding rules (all exact, linear algebra only):

* Batch-norm after a conv/linear layer:
  ``W' = W · γ/√(var+ε)`` per output channel, ``b' = (b − μ) · γ/√(var+ε) + β``.
* Spikes are binary, so a spike of layer l stands for θ_l: the next layer's
  weights are multiplied by θ_l (θ_l = λ_l, the learned QCFS threshold).
* P×P average pooling (stride P) followed by a k×k conv (stride s, padding p,
  dilation 1) is one conv with kernel ``kron(W, 1_{P×P}) / P²`` of size kP,
  stride sP and padding pP (needs the pooled map's size divisible by P).
  Followed by flatten + linear, the pooling becomes a dense matrix that
  spreads each weight over its P×P window (rows/columns that the floor of the
  pooling drops get weight 0).

* The last layer is a plain Linear (no NQ activation): it becomes the SNN's
  output layer. ``readout='potential'`` (the paper's) makes it a non-firing
  integrator (:func:`hardware.ir.readout_neuron`), so Σ_t (W·s_t + b) / T tends to
  the ANN's logits. ``readout='spikes'`` makes it a spiking layer of the configured
  neuron with threshold ``output_threshold`` (calibrated on data by the training
  loop: a high percentile of the ANN's positive logits), counted by spike votes.

* ``cuba`` shift (:data:`models.nq.CUBA_SHIFTS`): a per-step drive offset θ/(2T)
  (``half-bias``) is added to the layer's bias, where the stock CUBA neuron takes it
  (the quantizer then rounds it with the rest of the bias). A ``cuba-matched``
  activation carries its own shift and T (its ANN function includes the offset, so
  ANN and SNN agree exactly under constant input); a QCFS-trained model can be
  shifted at conversion (``convert(..., neuron='cuba', cuba_shift=..., shift_timesteps=T)``),
  which changes the SNN but not the ANN it came from.

The IR's float forward (:func:`ir_quantized_forward`) with the model's activation
(QCFS, or the CUBA spike count for a cuba-matched model) equals the ANN's forward
with noise off.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hardware.ir import READOUTS, Conv, Dense, Flatten, Input, IRError, Network, Neuron, readout_neuron
from hardware.spec import LOIHI2

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


def _layer_neuron(index: int, module: nn.Module, nq: NQActivation | None, is_output: bool, neuron: str,
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


def _layer_shift(index: int, nq: NQActivation, neuron: str, cuba_shift: str | None,
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
    layers = [m for m in model if isinstance(m, NQActivation)]
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
    pool: int = 1                # pending average-pool factor
    flatten_pending: bool = False
    layers: list = field(default_factory=list)


def convert(model: nn.Sequential, input_shape: tuple, neuron: str = "if_soft",
            metadata: dict | None = None, readout: str = "potential",
            output_threshold: float | None = None, cuba_shift: str | None = None,
            shift_timesteps: int | None = None) -> Network:
    """Fold a trained NQ ``nn.Sequential`` (see :mod:`models.architectures`) into a float IR.

    ``readout``/``output_threshold``: how the final plain Linear is read (module docstring).
    ``cuba_shift``/``shift_timesteps``: the drive offset folded into the hidden biases of a
    QCFS-trained model converted to ``cuba`` (module docstring); a cuba-matched model
    brings its own (``cuba_shift``, if given, must equal it).
    """
    _check_readout(readout, output_threshold)
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
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            raise IRError(f"module {index} ({type(module).__name__}) cannot be converted")
        bn, nq, j = _followers(modules, index)
        weight, bias = _fold_bn(module.weight, module.bias, bn)
        weight = weight * walk.spike_scale
        threshold, layer_neuron = _layer_neuron(index, module, nq, j == len(modules), neuron, readout,
                                                output_threshold)
        if nq is not None:
            shift, steps = _layer_shift(index, nq, neuron, cuba_shift, shift_timesteps)
            if shift != "none":
                bias = bias + cuba_shift_offset(threshold, steps, shift)
        name = f"{'conv' if isinstance(module, nn.Conv2d) else 'dense'}{len(walk.layers)}"
        make = _conv_layer if isinstance(module, nn.Conv2d) else _dense_layer
        layer = make(walk, module, index, weight, bias, layer_neuron, name)
        walk.layers.append(layer)
        walk.pool = 1
        walk.spike_scale = threshold
        walk.shape = layer.output_shape((int(np.prod(walk.shape)),) if isinstance(layer, Dense) else walk.shape)
        index = j
    if walk.pool > 1 or walk.flatten_pending:
        raise IRError("the network ends with pooling or flatten; the last layer must be a plain Linear")
    provenance = {**_shift_metadata(model, neuron, cuba_shift, shift_timesteps), **(metadata or {})}
    return Network(input=Input(shape=tuple(input_shape)), layers=walk.layers, integer=False,
                   metadata=provenance, readout=readout)


def _check_readout(readout: str, output_threshold: float | None) -> None:
    if readout not in READOUTS:
        raise IRError(f"readout {readout!r} is not one of {READOUTS}")
    if readout == "spikes" and not (output_threshold is not None and float(output_threshold) > 0):
        raise IRError("a spike-count readout needs a positive output_threshold for the output layer")


def _absorb_pool(walk: _Walk, module: nn.AvgPool2d, index: int) -> None:
    """Average pooling is linear: remember it and fold it into the next weighted layer."""
    kernel = module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0]
    stride = module.stride if isinstance(module.stride, int) else module.stride[0]
    if kernel != stride or module.padding not in (0, (0, 0)):
        raise IRError(f"module {index}: only non-overlapping average pooling folds exactly")
    if walk.pool == 1:
        walk.pre_pool_shape = walk.shape
    walk.pool *= kernel
    walk.shape = (walk.shape[0], walk.shape[1] // kernel, walk.shape[2] // kernel)


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
    pool = walk.pool
    if pool > 1:
        if dilation != (1, 1) or module.groups != 1:
            raise IRError(f"module {index}: pooling folds only into an undilated, ungrouped conv")
        if walk.pre_pool_shape[1] % pool or walk.pre_pool_shape[2] % pool:
            raise IRError(f"module {index}: pooled map {walk.pre_pool_shape[1:]} is not divisible by "
                          f"the pooling factor {pool}; the fold would not be exact")
        weight = torch.kron(weight, torch.ones(1, 1, pool, pool, dtype=weight.dtype)) / pool ** 2
        stride = (stride[0] * pool, stride[1] * pool)
        padding = (padding[0] * pool, padding[1] * pool)
        walk.shape = walk.pre_pool_shape
    return Conv(weight=weight.numpy(), bias=bias.numpy(), neuron=neuron, stride=stride, padding=padding,
                dilation=dilation, groups=module.groups, name=name)


def _dense_layer(walk: _Walk, module: nn.Linear, index: int, weight, bias, neuron: Neuron, name: str) -> Dense:
    """The dense layer, after a Flatten layer if one is pending, with pending pooling folded
    in (each weight spread over its pooled window; pixels the pooling dropped get zero)."""
    if walk.flatten_pending:
        walk.layers.append(Flatten(name=f"flatten{len(walk.layers)}"))
        walk.flatten_pending = False
        if walk.pool > 1:
            pool, (c, h, w) = walk.pool, walk.pre_pool_shape
            ph, pw = walk.shape[1], walk.shape[2]
            grid = weight.view(weight.shape[0], c, ph, pw)
            spread = torch.zeros(weight.shape[0], c, h, w, dtype=weight.dtype)
            spread[:, :, :ph * pool, :pw * pool] = grid.repeat_interleave(pool, 2).repeat_interleave(pool, 3)
            weight = (spread / pool ** 2).reshape(weight.shape[0], -1)
            walk.shape = walk.pre_pool_shape
    elif walk.pool > 1:
        raise IRError(f"module {index}: pooling before a linear layer needs a flatten in between")
    return Dense(weight=weight.numpy(), bias=bias.numpy(), neuron=neuron, name=name)


def ir_quantized_forward(net: Network, x: torch.Tensor, levels: int, activation: str = "qcfs",
                         timesteps: int | None = None) -> torch.Tensor:
    """The IR's float forward with the ANN's activations: the function it was folded from.

    Hidden layer l computes ``q_l = clip(floor((W_l q_{l−1} + b_l)·L/θ_l + 1/2)/L, 0, 1)``
    (``activation='qcfs'``, ``q_0`` is the input) or ``q_l = count(W_l q_{l−1} + b_l, θ_l, T)/T``
    (``'cuba-matched'``: :func:`models.nq.cuba_spike_count`, T = ``timesteps``; a drive
    shift is already in b_l); the output layer is affine: the result is the logits
    ``W_out q + b_out``, whatever the readout.
    """
    if activation == "cuba-matched" and (not isinstance(timesteps, int) or timesteps < 1):
        raise IRError(f"a cuba-matched forward needs timesteps as a positive integer, got {timesteps!r}")
    if net.integer:
        raise IRError("ir_quantized_forward needs the float IR")
    q = x.double()
    last = net.weighted_layers[-1]
    for layer in net.layers:
        if isinstance(layer, Flatten):
            q = q.flatten(1)
            continue
        w = torch.as_tensor(layer.weight, dtype=torch.float64)
        b = torch.as_tensor(layer.bias, dtype=torch.float64)
        if isinstance(layer, Conv):
            h = F.conv2d(q, w, b, stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                         groups=layer.groups)
        else:
            h = q @ w.T + b
        if layer is last:
            return h
        threshold = float(layer.neuron.threshold)
        if activation == "cuba-matched":
            q = cuba_spike_count(h, threshold, timesteps) / timesteps
            continue
        q = torch.clamp(torch.floor(torch.clamp(h / threshold, 0, 1) * levels + 0.5) / levels, 0, 1)
    raise IRError("the network has no weighted layer")


@torch.no_grad()
def count_ann_macs(model: nn.Module, input_shape: tuple) -> list[int]:
    """Multiply-accumulates per conv/linear layer of the ANN itself (before pooling is
    folded into larger kernels, which would overstate the ANN's cost)."""
    macs: list[int] = []

    def hook(module, _inputs, output):
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            macs.append(per_output * output[0].numel())
        else:
            macs.append(module.in_features * module.out_features)
    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_shape, dtype=next(model.parameters()).dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return macs


__all__ = ["convert", "ir_quantized_forward", "count_ann_macs"]
