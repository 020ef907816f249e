"""Fold a per-channel input normalisation ``y = (x - mean) / std`` into a network's first layers.

Pretrained networks expect normalised inputs; the chip receives [0, 1] pixels as unsigned
graded spikes. With per-channel ``s = std`` and ``m = mean``, a weighted layer on ``y`` is
``W·y + b = (W/s)·x + (b - (W/s)·m)``: :func:`fold_input_normalization` rewrites the first
weighted layers (every Conv2d / Linear the input reaches through per-channel operations:
pooling, flatten/view/reshape, dropout, identity) so the network takes raw pixels. If such a
layer has no bias and a BatchNorm reads it, the constant goes into the BatchNorm's running
mean (same state_dict keys); otherwise a bias is added.

Exact (up to float rounding) for Linear layers and for convolutions without zero padding.
Zero padding is not: the normalised network pads y with 0, i.e. x = m, the folded one pads x
with 0, i.e. y = -m/s, so outputs whose window touches the border differ (the folded network
equals the original on the normalised input padded with -m/s). The pipeline folds once, when
the pretrained model is built and before NQ fine-tuning: training, conversion and the chip
all see the folded network on raw pixels and agree exactly; only the pretrained starting
point differs at the borders (a warning names the layers): on a small pretrained conv net,
0.6 accuracy points on Fashion-MNIST, 1.9 on 8×8 digits (BENCHMARKS.md, bench/normalize_fold.py).

A Linear reached through a flatten of (C, H, W) sees each channel as a block of H·W features;
on flat inputs (F,) the k values of mean/std cover F/k features each (k = F: per feature).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn

from hardware.errors import ToolkitError


class NormalizationError(ToolkitError, ValueError):
    """A mean/std that does not fit the network, or a network whose input reaches something
    other than per-channel operations before its first weighted layer."""


#: Modules between the input and the first weighted layers that act on each channel alone.
PASS_MODULES = (nn.Flatten, nn.Dropout, nn.Dropout2d, nn.Identity, nn.AvgPool2d, nn.MaxPool2d,
                nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
PASS_FUNCTIONS = (torch.flatten, F.avg_pool2d, F.max_pool2d, F.adaptive_avg_pool2d, F.dropout)
PASS_METHODS = ("flatten", "view", "reshape", "contiguous")
#: Uses of a tensor that read only its shape.
_SHAPE_USES = (("call_method", "size"), ("call_function", getattr))


class _LeafTracer(fx.Tracer):
    """Traces into containers only: a module without children is a leaf (its forward, e.g.
    an NQ activation's, needs no tracing to find the first weighted layers)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return not any(True for _ in m.children()) or super().is_leaf_module(m, qualname)


def _graph(model: nn.Module) -> fx.Graph:
    if isinstance(model, fx.GraphModule):
        return model.graph
    try:
        return _LeafTracer().trace(model)
    except Exception as exc:  # torch.fx raises many types for untraceable code
        raise NormalizationError(f"data.mean/data.std: cannot trace {type(model).__name__} to find "
                                 f"its first weighted layer ({type(exc).__name__}: {exc})") from None


def _passes(model: nn.Module, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(model.get_submodule(node.target), PASS_MODULES)
    if node.op == "call_function":
        return node.target in PASS_FUNCTIONS
    return node.op == "call_method" and node.target in PASS_METHODS


def first_weighted_layers(model: nn.Module) -> list[tuple[str, fx.Node]]:
    """``(qualified name, node)`` of every Conv2d / Linear the input reaches through
    :data:`PASS_MODULES` / functions / methods only; raise :class:`NormalizationError` if the
    input reaches anything else first (a residual addition, a BatchNorm, the output ...)."""
    graph = _graph(model)
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    frontier, seen, found = list(inputs[:1]), set(), []
    while frontier:
        node = frontier.pop()
        for user in node.users:
            if user in seen or (user.op, user.target) in _SHAPE_USES:
                continue
            seen.add(user)
            module = model.get_submodule(user.target) if user.op == "call_module" else None
            if isinstance(module, (nn.Conv2d, nn.Linear)) and user.args[0] is node:
                found.append((user.target, user))
            elif _passes(model, user) and user.args[0] is node:
                frontier.append(user)
            else:
                raise NormalizationError(
                    f"data.mean/data.std: the input reaches {user.format_node()} before any "
                    f"Conv2d/Linear; the normalisation folds only through pooling, flatten and "
                    f"dropout into the first weighted layers")
    calls = [n.target for n in graph.nodes if n.op == "call_module"]
    for name, _ in found:
        if calls.count(name) > 1:
            raise NormalizationError(f"data.mean/data.std: {name} is called {calls.count(name)} "
                                     f"times; folding the input normalisation into it would "
                                     f"change its other calls")
    if not found:
        raise NormalizationError("data.mean/data.std: the network has no input")
    return found


def _per_input(layer: nn.Module, name: str, values: torch.Tensor) -> torch.Tensor:
    """The mean/std value of each input channel (Conv2d) or feature (Linear) of ``layer``."""
    k = len(values)
    if isinstance(layer, nn.Conv2d):
        if k != layer.in_channels:
            raise NormalizationError(f"data.mean/data.std have {k} values but {name} takes "
                                     f"{layer.in_channels} input channels: one value per channel")
        return values
    if layer.in_features % k:
        raise NormalizationError(f"data.mean/data.std have {k} values, which do not divide the "
                                 f"{layer.in_features} input features of {name}")
    return values.repeat_interleave(layer.in_features // k)


def _scaled_weight(layer: nn.Module, name: str, mean: torch.Tensor, std: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(W/s, (W/s)·m summed per output), float64, for the layer's weight layout."""
    m, s = _per_input(layer, name, mean), _per_input(layer, name, std)
    w = layer.weight.detach().double()
    if isinstance(layer, nn.Linear):
        w = w / s
        return w, w @ m
    per_group = layer.in_channels // layer.groups
    group = torch.arange(layer.out_channels) // (layer.out_channels // layer.groups)
    channel = group[:, None] * per_group + torch.arange(per_group)[None, :]   # (out, in/groups)
    w = w / s[channel][:, :, None, None]
    return w, (w * m[channel][:, :, None, None]).sum(dim=(1, 2, 3))


def _zero_padded(layer: nn.Module) -> bool:
    if not isinstance(layer, nn.Conv2d) or layer.padding_mode != "zeros":
        return False
    if isinstance(layer.padding, str):
        return layer.padding == "same" and any(k > 1 for k in layer.kernel_size)
    return any(p > 0 for p in layer.padding)


def _batchnorm_after(model: nn.Module, node: fx.Node):
    users = list(node.users)
    if len(users) == 1 and users[0].op == "call_module":
        bn = model.get_submodule(users[0].target)
        if isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)) and users[0].args[0] is node:
            return bn
    return None


def _fold_layer(model: nn.Module, name: str, node: fx.Node, mean: torch.Tensor,
                std: torch.Tensor) -> None:
    layer = model.get_submodule(name)
    w, shift = _scaled_weight(layer, name, mean, std)
    weight = layer.weight
    with torch.no_grad():
        weight.copy_(w.to(weight.dtype))
        bn = _batchnorm_after(model, node) if layer.bias is None else None
        if layer.bias is not None:
            layer.bias.copy_((layer.bias.double() - shift).to(weight.dtype))
        elif bn is not None:
            # the layer now outputs its old output + shift; BatchNorm subtracts its mean
            if bn.running_mean is not None:
                bn.running_mean.copy_((bn.running_mean.double() + shift).to(bn.running_mean.dtype))
        else:
            layer.bias = nn.Parameter((-shift).to(device=weight.device, dtype=weight.dtype))


def fold_input_normalization(model: nn.Module, mean: Sequence[float], std: Sequence[float]
                             ) -> nn.Module:
    """``model`` (changed in place and returned) such that ``model(x) == old(((x - mean) / std))``
    for [0, 1] inputs x, up to float rounding, except at zero-padded borders (module docstring).

    ``model``: a captured network (models.capture.capture) or any traceable nn.Module; its first
    weighted layers are found in the graph (:func:`first_weighted_layers`). ``mean``/``std``:
    one value per input channel (data.mean, data.std). Call it once, after the pretrained
    weights are loaded and before the optimizer is made (a layer without bias may gain one);
    a network rebuilt to load a checkpoint saved after the fold must be folded again first,
    so its state_dict keys match (the loaded values then replace the folded ones).
    Warns when a folded layer zero-pads its input; raises :class:`NormalizationError` when
    the values do not fit the layer or the input reaches something else first."""
    mean_t = torch.as_tensor(list(mean), dtype=torch.float64)
    std_t = torch.as_tensor(list(std), dtype=torch.float64)
    if mean_t.shape != std_t.shape or mean_t.dim() != 1 or not bool((std_t > 0).all()):
        raise NormalizationError(f"data.mean/data.std: expected two lists of the same length with "
                                 f"std > 0, got {list(mean)} and {list(std)}")
    layers = first_weighted_layers(model)
    for name, node in layers:
        _fold_layer(model, name, node, mean_t, std_t)
    padded = [name for name, _ in layers if _zero_padded(model.get_submodule(name))]
    if padded:
        warnings.warn(f"data.mean/data.std folded into {', '.join(padded)}, which zero-pad their "
                      f"input: at the borders the folded network pads raw pixels with 0 where the "
                      f"pretrained one saw the mean, so its starting point differs there (NQ "
                      f"fine-tuning trains the folded network)", stacklevel=2)
    return model
