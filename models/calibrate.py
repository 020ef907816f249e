"""Initial thresholds from data: each NQ layer's λ set to a high percentile of the values
that reach it, so that λ fits the input scale and the weights (random or pretrained)
instead of a hand-set number.

The percentile is taken over the positive pre-activations only (the QCFS neuron clips
the rest to zero), as Rueckauer et al. (2017) normalise by the p-th percentile of the
non-zero activations: a few outliers above λ are clipped, and the bulk of the values
spreads over the L levels instead of crowding the lowest (:data:`DEFAULT_PERCENTILE`).

Layers are calibrated IN FORWARD ORDER: layer l's inputs are measured with layers
1 … l−1 already quantized at their new λ, because a λ changes what every later layer
sees (with the old λ = 8 on [0, 1] inputs, layer 2 would see mostly zeros). Each pass
stops at the layer it measures.

The network runs in training mode (BatchNorm normalises with the batch's statistics,
as the first SGD steps will), without noise; BatchNorm's running statistics are
restored afterwards. A layer that no sample drives above zero keeps its λ.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from .architectures import nq_layers
from .nq import ActivationError

#: The percentile of each layer's positive pre-activations λ starts from. Rueckauer et al.
#: take 99.9 or 99.99 for rate coding over many steps; at T = 1 to 4 a lower λ matters more
#: than the few values it clips: on the digits demo 99 reaches the λ0 = 2 demo's accuracy
#: and 99.9 loses 5 points at T = 1 (BENCHMARKS.md, "Initial λ from data"). 99 is also
#: the percentile the pipeline's spike-count readout threshold is taken at.
DEFAULT_PERCENTILE = 99.0
#: Training batches the percentile is measured on: a few hundred samples give every
#: conv layer millions of values, and the result moves by a few percent between seeds.
DEFAULT_BATCHES = 4


class _Reached(Exception):
    """Raised by the measuring hook: the rest of the forward pass is not needed."""


def init_thresholds_from_data(model: nn.Module, batches: Sequence[torch.Tensor],
                              percentile: float = DEFAULT_PERCENTILE) -> list[float]:
    """Set every NQ layer's λ, in forward order, to the ``percentile`` (0 < p ≤ 100, numpy's
    linear interpolation) of its positive pre-activations on ``batches`` (input tensors, each
    one forward pass); returns the λ of every layer. See the module docstring."""
    if not 0 < percentile <= 100:
        raise ActivationError(f"percentile must be in (0, 100], got {percentile}")
    if not batches:
        raise ActivationError("thresholds from data need at least one batch of inputs")
    layers = nq_layers(model)
    saved = {name: buf.detach().clone() for name, buf in model.named_buffers()}
    noise, was_training = [layer.noise for layer in layers], model.training
    device = next(model.parameters()).device
    try:
        model.train()
        for layer in layers:
            layer.noise = False
        for layer in layers:
            values = _positive_inputs(model, layer, batches, device)
            if values.size:
                with torch.no_grad():
                    layer.threshold.fill_(float(np.percentile(values, percentile)))
    finally:
        with torch.no_grad():
            for name, buf in model.named_buffers():
                buf.copy_(saved[name])
        for layer, flag in zip(layers, noise):
            layer.noise = flag
        model.train(was_training)
    return [float(layer.threshold) for layer in layers]


@torch.no_grad()
def _positive_inputs(model: nn.Module, layer: nn.Module, batches, device) -> np.ndarray:
    """The positive values of ``layer``'s input over every batch (float64, flattened)."""
    found: list[np.ndarray] = []

    def measure(_module, inputs):
        x = inputs[0].detach()
        found.append(x[x > 0].double().cpu().numpy())
        raise _Reached

    hook = layer.register_forward_pre_hook(measure)
    try:
        for x in batches:
            try:
                model(x.to(device))
            except _Reached:
                pass
    finally:
        hook.remove()
    return np.concatenate(found) if found else np.zeros(0)
