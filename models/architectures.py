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

from .nq import NQActivation

# "A" = 2x2 average pooling; an int = 3x3 conv with that many channels.
CONV_PLANS = {
    "cnn-small": ([16, 32, "A", 32, "A"], []),
    "vgg-small": ([32, 32, "A", 64, 64, "A", 128, "A"], [256]),
    "vgg16": ([64, 64, "A", 128, 128, "A", 256, 256, 256, "A", 512, 512, 512, "A",
               512, 512, 512, "A"], [4096, 4096]),
}
ARCH_FOR_DATASET = {"digits": "cnn-small", "fashion-mnist": "vgg-small", "mnist": "vgg-small",
                    "cifar10": "vgg16"}


def build_model(arch: str, input_shape: tuple, num_classes: int, levels: int,
                noise: bool = True, init_threshold: float = 8.0) -> nn.Sequential:
    if arch not in CONV_PLANS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(CONV_PLANS)}")
    conv_plan, hidden = CONV_PLANS[arch]
    channels, height, width = input_shape
    modules: list[nn.Module] = []
    for item in conv_plan:
        if item == "A":
            modules.append(nn.AvgPool2d(2))
            height, width = height // 2, width // 2
        else:
            modules += [nn.Conv2d(channels, item, 3, padding=1, bias=False), nn.BatchNorm2d(item),
                        NQActivation(levels, noise, init_threshold)]
            channels = item
    modules.append(nn.Flatten())
    features = channels * height * width
    for size in hidden:
        modules += [nn.Linear(features, size), NQActivation(levels, noise, init_threshold)]
        features = size
    modules.append(nn.Linear(features, num_classes))
    return nn.Sequential(*modules)


def nq_layers(model: nn.Module) -> list[NQActivation]:
    return [m for m in model.modules() if isinstance(m, NQActivation)]
