"""Training-free calibration of a converted float IR at the deployment T (before quantization).

At small T an SNN layer's mean output over the window differs from its ANN activation
(few spikes per neuron; the order inputs arrive in), and the error grows from layer to
layer. Following Li et al. (ICML 2021, "A free lunch from ANN"), :func:`calibrate_snn`
corrects it layer by layer, in order, on a small set of images: each layer is measured
with every earlier layer already corrected.

* ``bias``: a layer's bias (per channel of a conv, per neuron of a dense layer) is shifted
  until the channel's mean output over the images (and positions) is the ANN's: a few
  simulations of the network up to the layer (:data:`BIAS_STEPS`), each moving the shift
  by the mean error (θ·rate follows the per-step drive with slope ≈ 1) or, where the
  signs of the errors so far bracket the answer and that step would leave the bracket,
  to its middle (a one-step correction overshoots where many neurons share a rounding
  edge); the shift with the smallest error is kept. Outputs are in value units: θ_l·q_l
  for the ANN (its activation, as :func:`models.converter.ir_quantized_forward` computes
  it) and θ_l·count/T for the SNN (float simulator; layers after the first are run alone
  on their recorded input spikes); the output layer compares the ANN's logits with the
  potential readout's mean per-step input v_T/T (or θ·count/T for a spike readout).
* ``bias+threshold``: before a hidden layer's bias, its threshold is scaled by the factor
  of :data:`THRESHOLD_SCALES` whose bias-corrected output is nearest the ANN's (mean
  squared error); the synapses reading the layer scale with it, so a spike still stands
  for the value it carries.

Errors below float32 rounding (:data:`TOLERANCE`, relative) are left alone, so a network
whose SNN already reproduces its ANN comes back unchanged. Deterministic: no random draw.
"""
from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import torch

from hardware.errors import IRError
from hardware.ir import Conv, Dense, Network, readout_neuron
from hardware.simulator import simulate

from .converter import ir_quantized_forward

CALIBRATIONS = ("none", "bias", "bias+threshold")
#: threshold factors ``bias+threshold`` tries per hidden layer (1 first: it wins ties; larger
#: ones were never chosen on digits and Fashion-MNIST at T = 2)
THRESHOLD_SCALES = (1.0, 0.5, 0.625, 0.75, 0.875)
#: simulations per layer the bias search may take (the first measures the layer as it is)
BIAS_STEPS = 5
#: the same while a threshold factor is tried
THRESHOLD_BIAS_STEPS = 2
#: the float simulator's precision here: a measurement, like σ, not a reference (4× faster)
SIM_DTYPE = torch.float32
#: a per-channel mean error below this times the layer's output scale is float32 rounding, not
#: error (far below what the 8-bit weights of the quantized network can express)
TOLERANCE = 1e-5


def calibrate_snn(net: Network, images: torch.Tensor, timesteps: int, mode: str, levels: int,
                  activation: str = "qcfs", activation_timesteps: int | None = None) -> tuple:
    """(calibrated copy of the float ``net``, summary) for ``mode`` (:data:`CALIBRATIONS`) at
    ``timesteps``, measured on ``images`` (B, *input shape) in [0, 1]. ``levels``,
    ``activation`` and ``activation_timesteps`` name the ANN's activation (the targets).
    The summary (plain JSON) gives per layer the mean |error| of its per-channel means
    before and after, and the threshold factor chosen."""
    if mode not in CALIBRATIONS:
        raise IRError(f"calibration {mode!r} is not one of {', '.join(CALIBRATIONS)}")
    if net.integer:
        raise IRError("calibration works on the float IR (before quantization)")
    if not isinstance(timesteps, int) or isinstance(timesteps, bool) or timesteps < 1:
        raise IRError(f"calibration timesteps must be a positive integer, got {timesteps!r}")
    out = copy.deepcopy(net)
    summary = {"mode": mode, "samples": int(len(images)), "timesteps": timesteps, "layers": []}
    if mode == "none":
        return out, summary
    x = torch.as_tensor(images, dtype=torch.float64)
    targets = ann_outputs(net, x, levels, activation, activation_timesteps)
    for k, target in enumerate(targets):
        feed = _feed(out, k, x, timesteps)
        scale, before = 1.0, _mean_error(target, layer_output(out, k, x, timesteps, feed))
        if mode == "bias+threshold" and k < len(targets) - 1:
            out, scale = _best_threshold(out, k, x, timesteps, target, feed)
        after = _correct_bias(out, k, x, timesteps, target, BIAS_STEPS, feed)
        summary["layers"].append({"layer": out.weighted_layers[k].name, "threshold_scale": scale,
                                  "error_before": float(before.abs().mean()),
                                  "error_after": float(after.abs().mean())})
    return out, summary


def _correct_bias(net: Network, k: int, x: torch.Tensor, timesteps: int, target, steps: int,
                  feed=None):
    """Shift layer k's bias per channel towards mean SNN output = mean ANN output, in place;
    the per-channel mean error left. A channel's mean output rises with its bias (slope ≈ 1,
    steeper where many neurons sit at one rounding edge), so each step moves by the error
    unless that leaves the bracket the signs found, then bisects; the best shift is kept."""
    layer = net.weighted_layers[k]
    original = layer.bias
    bias0 = np.zeros(layer.weight.shape[0]) if layer.bias is None else np.asarray(layer.bias, np.float64)
    shift = torch.zeros(len(bias0), dtype=torch.float64)
    lo, hi = torch.full_like(shift, -math.inf), torch.full_like(shift, math.inf)
    best_err, best_shift = None, shift.clone()
    for i in range(steps):
        err = _mean_error(target, layer_output(net, k, x, timesteps, feed))
        better = err.abs() < (best_err.abs() if best_err is not None else math.inf)
        best_err = err if best_err is None else torch.where(better, err, best_err)
        best_shift = torch.where(better, shift, best_shift)
        if i == steps - 1 or not bool((best_err != 0).any()):
            break
        lo, hi = torch.where(err > 0, shift, lo), torch.where(err < 0, shift, hi)
        step = shift + err
        inside = (step > lo) & (step < hi)
        shift = torch.where(inside | ~torch.isfinite(lo + hi), step, (lo + hi) / 2)
        layer.bias = bias0 + shift.numpy()
    # no shift at all: the layer is left exactly as it was (its bias array, or None)
    layer.bias = bias0 + best_shift.numpy() if bool((best_shift != 0).any()) else original
    return best_err


def ann_outputs(net: Network, x: torch.Tensor, levels: int, activation: str = "qcfs",
                activation_timesteps: int | None = None) -> list:
    """Per weighted layer, the ANN's output in value units: θ·q of a hidden layer (read through
    an identity layer appended after it, which returns q exactly), the logits of the last."""
    shapes, outs = net.shapes(), []
    last = net.weighted_layers[-1]
    for i, layer in enumerate(net.layers):
        if not isinstance(layer, (Conv, Dense)):
            continue
        if layer is last:
            outs.append(ir_quantized_forward(net, x, levels, activation, activation_timesteps))
            break
        probe = net.replace(layers=list(net.layers[:i + 1]) + [_identity(shapes[i])])
        q = ir_quantized_forward(probe, x, levels, activation, activation_timesteps)
        outs.append(float(layer.neuron.threshold) * q)
    return outs


def _identity(shape: tuple):
    """A layer whose synaptic input is its input (1×1 identity conv, or identity dense)."""
    channels = int(shape[0])
    eye, neuron = np.eye(channels), readout_neuron(False)
    if len(shape) == 3:
        return Conv(weight=eye.reshape(channels, channels, 1, 1), bias=np.zeros(channels),
                    neuron=neuron, name="calibration_probe")
    return Dense(weight=eye, bias=np.zeros(channels), neuron=neuron, name="calibration_probe")


def layer_output(net: Network, k: int, x: torch.Tensor, timesteps: int, feed=None) -> torch.Tensor:
    """Weighted layer k's mean output per step over ``timesteps`` in value units (the float
    simulator): θ·count/T, or v_T/T of a potential readout. ``feed`` (:func:`_feed`): the
    spikes arriving at the layer, recorded once, so only the layer itself is simulated."""
    layer = net.weighted_layers[k]
    start, inputs = feed if feed is not None else (0, x)
    end = next(i for i, other in enumerate(net.layers) if other is layer) + 1
    last = end == len(net.layers)
    shape = net.shapes()[start - 1] if start else tuple(net.input.shape)
    sub = net.replace(input=dataclasses.replace(net.input, shape=tuple(shape)),
                      layers=list(net.layers[start:end]), readout=net.readout if last else "spikes")
    res = simulate(sub, inputs, timesteps, dtype=SIM_DTYPE)
    counts = res.layer_counts[-1]
    if last and net.readout == "potential":
        return (res.output_potential[-1].double() / timesteps).reshape(counts.shape)
    return float(layer.neuron.threshold) * counts.double() / timesteps


def _feed(net: Network, k: int, x: torch.Tensor, timesteps: int) -> tuple | None:
    """(index of the first layer after weighted layer k − 1, its spikes as time-varying input
    (B, T, *shape)) when layer k reads only that layer; None (simulate from the input) for the
    first layer and for a layer with extra inputs (a residual block)."""
    if k == 0 or net.weighted_layers[k].extra_inputs:
        return None
    previous = net.weighted_layers[k - 1]
    end = next(i for i, other in enumerate(net.layers) if other is previous) + 1
    sub = net.replace(layers=list(net.layers[:end]), readout="spikes")
    trains = simulate(sub, x, timesteps, dtype=SIM_DTYPE, record_spikes=True).layer_spike_trains[-1]
    return end, trains.transpose(0, 1).to(SIM_DTYPE)


def _mean_error(target: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Per channel (or neuron), mean of target − value over samples and positions; entries below
    rounding (:data:`TOLERANCE` × the layer's output scale) are 0."""
    diff = (target - value).double()
    err = diff.mean(dim=(0, 2, 3)) if diff.dim() == 4 else diff.mean(dim=0)
    scale = max(float(target.abs().max()), float(value.abs().max()), 1.0)
    return torch.where(err.abs() < TOLERANCE * scale, torch.zeros_like(err), err)


def _scaled(net: Network, k: int, factor: float) -> Network:
    """A copy of ``net`` with hidden layer k's threshold × factor and every synapse reading it
    (the next weighted layer's main synapse, projections from it) × factor."""
    out = copy.deepcopy(net)
    layers = out.weighted_layers
    layer = layers[k]
    layer.neuron.threshold = float(layer.neuron.threshold) * factor
    layers[k + 1].weight = np.asarray(layers[k + 1].weight) * factor
    for other in layers:
        other.extra_inputs = tuple(
            dataclasses.replace(p, weight=np.asarray(p.weight) * factor) if p.source == layer.name else p
            for p in other.extra_inputs)
    return out


def _best_threshold(net: Network, k: int, x: torch.Tensor, timesteps: int, target, feed) -> tuple:
    """(network, factor) of the :data:`THRESHOLD_SCALES` factor whose layer k, bias-corrected
    (:data:`THRESHOLD_BIAS_STEPS` steps), is nearest the ANN (mean squared error; the first of
    equals, so 1 when nothing is better). The bias is corrected again afterwards."""
    best = None
    for factor in THRESHOLD_SCALES:
        trial = _scaled(net, k, factor) if factor != 1.0 else copy.deepcopy(net)
        _correct_bias(trial, k, x, timesteps, target, THRESHOLD_BIAS_STEPS, feed)
        mse = float(((target - layer_output(trial, k, x, timesteps, feed)) ** 2).mean())
        if best is None or mse < best[0]:
            best = (mse, factor)
    return (net if best[1] == 1.0 else _scaled(net, k, best[1])), best[1]


__all__ = ["CALIBRATIONS", "THRESHOLD_SCALES", "ann_outputs", "calibrate_snn", "layer_output"]
