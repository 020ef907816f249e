"""Training-free calibration of a converted float IR at the deployment T (before quantization).

At small T an SNN layer's mean output over the window differs from its ANN activation
(few spikes per neuron; the order inputs arrive in), and the error grows from layer to
layer. Following Li et al. (ICML 2021, "A free lunch from ANN"), :func:`calibrate_snn`
corrects it layer by layer, in order, on a small set of images: each layer is measured
with every earlier layer already corrected.

* ``bias``: a layer's bias (per channel of a conv, per neuron of a dense layer) moves by
  the mean of (ANN output − SNN output) over the images (and positions): a neuron's
  output θ·rate follows its per-step drive with slope ≈ 1, so that shift matches the
  means. Outputs are in value units: θ_l·q_l for the ANN (its activation, as
  :func:`models.converter.ir_quantized_forward` computes it) and θ_l·count/T for the SNN
  (float reference simulator); the output layer compares the ANN's logits with the
  potential readout's mean per-step input v_T/T (or θ·count/T for a spike readout).
* ``bias+threshold``: before a hidden layer's bias, its threshold is scaled by the factor
  of :data:`THRESHOLD_SCALES` whose bias-corrected output is nearest the ANN's (mean
  squared error); the synapses reading the layer scale with it, so a spike still stands
  for the value it carries.

Errors below float rounding (:data:`TOLERANCE`, relative) are left alone, so a network
whose SNN already reproduces its ANN comes back unchanged. Deterministic: no random draw.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch

from hardware.errors import IRError
from hardware.ir import Conv, Dense, Network, readout_neuron
from hardware.simulator import simulate

from .converter import ir_quantized_forward

CALIBRATIONS = ("none", "bias", "bias+threshold")
#: threshold factors ``bias+threshold`` tries per hidden layer (1 first: it wins ties)
THRESHOLD_SCALES = (1.0, 0.5, 0.625, 0.75, 0.875, 1.125, 1.25)
#: a per-channel mean error below this times the layer's output scale is rounding, not error
TOLERANCE = 1e-9


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
        layer, scale = out.weighted_layers[k], 1.0
        if mode == "bias+threshold" and k < len(targets) - 1:
            out, scale = _best_threshold(out, k, x, timesteps, target)
        before = _mean_error(target, snn_outputs(out, x, timesteps)[k])
        _shift_bias(out.weighted_layers[k], before)
        after = _mean_error(target, snn_outputs(out, x, timesteps)[k])
        summary["layers"].append({"layer": layer.name, "threshold_scale": scale,
                                  "error_before": float(before.abs().mean()),
                                  "error_after": float(after.abs().mean())})
    return out, summary


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


def snn_outputs(net: Network, x: torch.Tensor, timesteps: int) -> list:
    """Per weighted layer, the float SNN's mean output per step over ``timesteps`` in value
    units: θ·count/T, or v_T/T of a potential readout's integrator."""
    res = simulate(net, x, timesteps)
    counts = res.layer_counts[1:] if net.input.neuron is not None else res.layer_counts
    outs = [float(layer.neuron.threshold) * c.double() / timesteps
            for layer, c in zip(net.weighted_layers[:-1], counts[:-1])]
    last = net.weighted_layers[-1]
    if net.readout == "potential":
        final = res.output_potential[-1].double() / timesteps
    else:
        final = float(last.neuron.threshold) * res.layer_counts[-1].double() / timesteps
    return outs + [final.reshape(res.layer_counts[-1].shape)]


def _mean_error(target: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Per channel (or neuron), mean of target − value over samples and positions; entries below
    rounding (:data:`TOLERANCE` × the layer's output scale) are 0."""
    diff = (target - value).double()
    err = diff.mean(dim=(0, 2, 3)) if diff.dim() == 4 else diff.mean(dim=0)
    scale = max(float(target.abs().max()), float(value.abs().max()), 1.0)
    return torch.where(err.abs() < TOLERANCE * scale, torch.zeros_like(err), err)


def _shift_bias(layer, err: torch.Tensor) -> None:
    if not bool((err != 0).any()):
        return  # nothing to correct: the layer is left exactly as it was
    bias = np.zeros(len(err)) if layer.bias is None else np.asarray(layer.bias, dtype=np.float64)
    layer.bias = bias + err.numpy()


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
            _replace_weight(p, np.asarray(p.weight) * factor) if p.source == layer.name else p
            for p in other.extra_inputs)
    return out


def _replace_weight(projection, weight):
    return dataclasses.replace(projection, weight=weight)


def _best_threshold(net: Network, k: int, x: torch.Tensor, timesteps: int, target) -> tuple:
    """(network, factor) of the :data:`THRESHOLD_SCALES` factor whose bias-corrected layer k is
    nearest the ANN (mean squared error; the first of equals, so 1 when nothing is better)."""
    best = None
    for factor in THRESHOLD_SCALES:
        trial = _scaled(net, k, factor) if factor != 1.0 else copy.deepcopy(net)
        _shift_bias(trial.weighted_layers[k], _mean_error(target, snn_outputs(trial, x, timesteps)[k]))
        mse = float(((target - snn_outputs(trial, x, timesteps)[k]) ** 2).mean())
        if best is None or mse < best[0]:
            best = (mse, net if factor == 1.0 else _scaled(net, k, factor), factor)
    return best[1], best[2]


__all__ = ["CALIBRATIONS", "THRESHOLD_SCALES", "calibrate_snn", "ann_outputs", "snn_outputs"]
