"""Network architectures built from conv-BN-NQ blocks with average pooling.

Every architecture is an ``nn.Sequential`` over a closed set of module types
(Conv2d, BatchNorm2d, Linear, BatchNorm1d, NQActivation, AvgPool2d, Flatten)
so that :mod:`models.converter` can fold it into the SNN IR. Max-pooling is
replaced by average pooling, which is linear and folds into the next layer.
The last layer is a plain Linear (no activation, no noise), as in the paper: its
outputs are the logits, and the SNN reads the accumulated input of that layer.
"""
from __future__ import annotations

from torch import nn

from hardware.errors import ToolkitError

from .nq import NQActivation, check_activation


class ArchitectureError(ToolkitError, ValueError):
    """An architecture name, or an input shape the architecture cannot process."""


# "A" = 2x2 average pooling; an int = 3x3 conv with that many channels.
CONV_PLANS = {
    "cnn-small": ([16, 32, "A", 32, "A"], []),
    "vgg-small": ([32, 32, "A", 64, 64, "A", 128, "A"], [256]),
    "vgg16": ([64, 64, "A", 128, 128, "A", 256, 256, 256, "A", 512, 512, 512, "A",
               512, 512, 512, "A"], [4096, 4096]),
}


def min_input_side(arch: str) -> int:
    """The smallest image height/width ``arch`` accepts: each 2×2 pooling halves it (floor)."""
    return 2 ** CONV_PLANS[arch][0].count("A")


def feature_map_shapes(arch: str, input_shape: tuple) -> list[tuple[int, int, int]]:
    """(C, H, W) after every conv/pool of ``arch`` for ``input_shape``, computed without
    building anything; raise :class:`ArchitectureError` naming ``model.arch`` and the input
    shape when the shape is not (C, H, W) of positive ints or the pooling shrinks it below
    one pixel."""
    if arch not in CONV_PLANS:
        raise ArchitectureError(f"model.arch: unknown architecture {arch!r}; choose one of "
                                f"{', '.join(sorted(CONV_PLANS))}")
    if len(input_shape) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                         for d in input_shape):
        raise ArchitectureError(f"model.arch {arch}: input shape {tuple(input_shape)} is not "
                                f"(channels, height, width) of positive integers")
    channels, height, width = input_shape
    shapes = []
    for item in CONV_PLANS[arch][0]:
        if item == "A":
            height, width = height // 2, width // 2
            if height < 1 or width < 1:
                side = min_input_side(arch)
                raise ArchitectureError(
                    f"model.arch {arch} needs images of at least {side}×{side} pixels (its "
                    f"pooling halves them {CONV_PLANS[arch][0].count('A')} times) but the "
                    f"dataset's input shape is {tuple(input_shape)}; choose a smaller "
                    f"architecture (e.g. model.arch: auto)")
        else:
            channels = item
        shapes.append((channels, height, width))
    return shapes


def build_model(arch: str, input_shape: tuple, num_classes: int, levels: int,
                noise: bool = True, init_threshold: float = 8.0, *, activation: str = "qcfs",
                timesteps: int | None = None, cuba_shift: str = "none") -> nn.Sequential:
    """The ``arch`` network for (C, H, W) inputs; the shape is checked before any layer is
    allocated (:func:`feature_map_shapes`).

    ``activation``/``timesteps``/``cuba_shift``: every hidden layer's activation
    (:class:`models.nq.NQActivation`: ``qcfs``, or ``cuba-matched`` to T = ``timesteps``
    with a drive shift). They change no parameter, so a checkpoint's state_dict loads
    into the model whatever they are."""
    check_activation(activation, timesteps, cuba_shift)
    act = dict(activation=activation, timesteps=timesteps, shift=cuba_shift)
    shapes = feature_map_shapes(arch, tuple(input_shape))
    conv_plan, hidden = CONV_PLANS[arch]
    channels = input_shape[0]
    modules: list[nn.Module] = []
    for item in conv_plan:
        if item == "A":
            modules.append(nn.AvgPool2d(2))
        else:
            modules += [nn.Conv2d(channels, item, 3, padding=1, bias=False), nn.BatchNorm2d(item),
                        NQActivation(levels, noise, init_threshold, **act)]
            channels = item
    modules.append(nn.Flatten())
    features = shapes[-1][0] * shapes[-1][1] * shapes[-1][2]
    for size in hidden:
        modules += [nn.Linear(features, size), NQActivation(levels, noise, init_threshold, **act)]
        features = size
    modules.append(nn.Linear(features, num_classes))
    return nn.Sequential(*modules)


def nq_layers(model: nn.Module) -> list[NQActivation]:
    return [m for m in model.modules() if isinstance(m, NQActivation)]


def configure_activations(model: nn.Module, activation: str, timesteps: int | None = None,
                          cuba_shift: str = "none") -> nn.Module:
    """Set every NQ layer's activation function in place (λ and σ unchanged), e.g. on a
    model rebuilt from a checkpoint; returns ``model``."""
    check_activation(activation, timesteps, cuba_shift)
    for layer in nq_layers(model):
        layer.configure(activation, timesteps, cuba_shift)
    return model
