"""Network architectures built from conv-BN-NQ blocks with average pooling.

Every architecture is an ``nn.Sequential`` of Conv2d, BatchNorm2d, Linear, NQActivation,
AvgPool2d, Flatten and :class:`ResidualBlock`; :mod:`models.converter` traces it as it
traces a user's captured network (:mod:`models.capture`): one front-end for both.
Max-pooling is replaced by average pooling, which is linear and folds into the next
layer. The last layer is a plain Linear (no activation, no noise), as in the paper: its
outputs are the logits, and the SNN reads the accumulated input of that layer.

Plain nets (:data:`CONV_PLANS`): 3×3 conv-BN-NQ layers, 2×2 average pooling, then
Linear-NQ hidden layers.

Residual nets (:data:`RESNET_PLANS`), as in the QCFS/NQ reference code (``ResNet``,
``ResNet4Cifar``): a 3×3 conv-BN-NQ stem, stages of :class:`ResidualBlock` (the first
block of a stage may have stride 2), a global average pooling (an ``AvgPool2d`` whose
kernel is the final feature map, so it folds exactly into the readout), Flatten and a
plain Linear. A block computes::

    out = NQ_out( BN2(conv2( NQ_1( BN1(conv1(x)) ) )) + shortcut(x) )

with the shortcut the identity where the shape is unchanged, else a 1×1 conv (the
block's stride, no bias) followed by BN.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import fx, nn

from hardware.errors import ToolkitError
from hardware.ir import conv_output_size

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


@dataclass(frozen=True)
class ResNetPlan:
    """A residual net: a 3×3 conv stem with ``stem`` channels, then ``stages``, each
    (channels, blocks, stride of its first block)."""

    stem: int
    stages: tuple


RESNET_PLANS = {
    # small enough to train on digits (8×8) and Fashion-MNIST (28×28) on a CPU; one block
    # with an identity shortcut, two with a 1×1 projection shortcut
    "resnet-small": ResNetPlan(16, ((16, 1, 1), (32, 1, 2), (64, 1, 2))),
    # QCFS/NQ ``resnet20`` (ResNet4Cifar, [3, 3, 3]) and ``resnet18`` (ResNet, [2, 2, 2, 2],
    # CIFAR stem: 3×3 conv, no max-pooling)
    "resnet20": ResNetPlan(16, ((16, 3, 1), (32, 3, 2), (64, 3, 2))),
    "resnet18": ResNetPlan(64, ((64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2))),
}

#: Every architecture name :func:`build_model` knows.
ARCHITECTURES = tuple(CONV_PLANS) + tuple(RESNET_PLANS)


def _check_arch(arch: str) -> None:
    if arch not in CONV_PLANS and arch not in RESNET_PLANS:
        raise ArchitectureError(f"model.arch: unknown architecture {arch!r}; choose one of "
                                f"{', '.join(sorted(ARCHITECTURES))}")


def _halvings(arch: str) -> int:
    """How many times ``arch`` halves the image side (2×2 poolings or stride-2 stages)."""
    if arch in RESNET_PLANS:
        return sum(1 for _c, _n, stride in RESNET_PLANS[arch].stages if stride == 2)
    return CONV_PLANS[arch][0].count("A")


def min_input_side(arch: str) -> int:
    """The smallest image height/width ``arch`` accepts: each 2×2 pooling halves it (floor);
    a residual net needs each stride-2 stage to see at least 2 pixels (2^stages)."""
    _check_arch(arch)
    return 2 ** _halvings(arch)


def nq_layer_count(arch: str) -> int:
    """NQ activations (σ/λ entries) of ``arch``: one per hidden conv/linear layer; a
    residual net has its stem's and two per block (NQ_1 and NQ_out)."""
    _check_arch(arch)
    if arch in RESNET_PLANS:
        return 1 + 2 * sum(blocks for _c, blocks, _s in RESNET_PLANS[arch].stages)
    conv_plan, hidden = CONV_PLANS[arch]
    return sum(1 for item in conv_plan if item != "A") + len(hidden)


def _conv_out(side: int, stride: int) -> int:
    """Output side of a 3×3 conv with padding 1 (or a 1×1 conv without padding) at ``stride``."""
    return conv_output_size(side, 3, stride, padding=1)


def feature_map_shapes(arch: str, input_shape: tuple) -> list[tuple[int, int, int]]:
    """(C, H, W) after every conv/pool of ``arch`` for ``input_shape``, computed without
    building anything; raise :class:`ArchitectureError` naming ``model.arch`` and the input
    shape when the shape is not (C, H, W) of positive ints or the network shrinks it below
    one pixel (plain nets) or below its minimum side (:func:`min_input_side`, residual nets).

    Residual nets list the stem, then per block its first conv and its output, then the
    global average pooling (C, 1, 1)."""
    _check_arch(arch)
    if len(input_shape) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                         for d in input_shape):
        raise ArchitectureError(f"model.arch {arch}: input shape {tuple(input_shape)} is not "
                                f"(channels, height, width) of positive integers")
    if arch in RESNET_PLANS:
        return _resnet_shapes(arch, tuple(input_shape))
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


def _resnet_shapes(arch: str, input_shape: tuple) -> list[tuple[int, int, int]]:
    plan = RESNET_PLANS[arch]
    side = min_input_side(arch)
    if min(input_shape[1:]) < side:
        raise ArchitectureError(
            f"model.arch {arch} needs images of at least {side}×{side} pixels (its stride-2 "
            f"stages halve them {_halvings(arch)} times) but the dataset's input shape is "
            f"{input_shape}; choose a smaller architecture (e.g. model.arch: resnet-small)")
    _, height, width = input_shape
    shapes = [(plan.stem, height, width)]
    for channels, blocks, first_stride in plan.stages:
        for stride in [first_stride] + [1] * (blocks - 1):
            height, width = _conv_out(height, stride), _conv_out(width, stride)
            shapes += [(channels, height, width)] * 2
    shapes.append((shapes[-1][0], 1, 1))
    return shapes


class ResidualBlock(nn.Module):
    """A QCFS/NQ basic block (module docstring)::

        out = NQ_out( BN2(conv2( NQ_1( BN1(conv1(x)) ) )) + shortcut(x) )

    conv1: 3×3, padding 1, stride ``stride``; conv2: 3×3, padding 1; both without bias.
    ``shortcut``: an empty ``nn.Sequential`` (identity) when ``stride == 1`` and the
    channels are unchanged, else ``nn.Sequential(Conv2d 1×1 stride s, BatchNorm2d)``.
    Modules are registered in forward order, so ``modules()`` yields ``nq1`` before
    ``nq_out`` (σ measurement pairs NQ layers with the IR's weighted layers in order)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, levels: int,
                 noise: bool = True, init_threshold: float = 8.0, **activation):
        super().__init__()
        if stride not in (1, 2):
            raise ArchitectureError(f"residual block {in_channels}->{out_channels}: stride must be "
                                    f"1 or 2, got {stride!r}")
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.nq1 = NQActivation(levels, noise, init_threshold, **activation)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Sequential()
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))
        self.nq_out = NQActivation(levels, noise, init_threshold, **activation)

    @property
    def identity_shortcut(self) -> bool:
        return len(self.shortcut) == 0

    def forward(self, x):
        main = self.bn2(self.conv2(self.nq1(self.bn1(self.conv1(x)))))
        return self.nq_out(main + self.shortcut(x))


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
    if arch in RESNET_PLANS:
        return _build_resnet(RESNET_PLANS[arch], input_shape, shapes, num_classes, levels, noise,
                             init_threshold, act)
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


def _build_resnet(plan: ResNetPlan, input_shape: tuple, shapes: list, num_classes: int, levels: int,
                  noise: bool, init_threshold: float, act: dict) -> nn.Sequential:
    """Stem conv-BN-NQ, the blocks, global average pooling over the final (H, W), Flatten, Linear."""
    modules: list[nn.Module] = [nn.Conv2d(input_shape[0], plan.stem, 3, padding=1, bias=False),
                                nn.BatchNorm2d(plan.stem), NQActivation(levels, noise, init_threshold, **act)]
    channels = plan.stem
    for out_channels, blocks, first_stride in plan.stages:
        for stride in [first_stride] + [1] * (blocks - 1):
            modules.append(ResidualBlock(channels, out_channels, stride, levels, noise, init_threshold, **act))
            channels = out_channels
    final = shapes[-2]  # the last block's output; shapes[-1] is the pooled (C, 1, 1)
    modules += [nn.AvgPool2d((final[1], final[2])), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*modules)


def nq_layers(model: nn.Module) -> list[NQActivation]:
    """The model's NQ activations in forward order (= the IR's spiking layers): a captured
    GraphModule's in call order, a registry model's in module order (which is forward order)."""
    if isinstance(model, fx.GraphModule):
        calls = [model.get_submodule(n.target) for n in model.graph.nodes if n.op == "call_module"]
        return [m for m in calls if isinstance(m, NQActivation)]
    return [m for m in model.modules() if isinstance(m, NQActivation)]


def configure_activations(model: nn.Module, activation: str, timesteps: int | None = None,
                          cuba_shift: str = "none") -> nn.Module:
    """Set every NQ layer's activation function in place (λ and σ unchanged), e.g. on a
    model rebuilt from a checkpoint; returns ``model``."""
    check_activation(activation, timesteps, cuba_shift)
    for layer in nq_layers(model):
        layer.configure(activation, timesteps, cuba_shift)
    return model
