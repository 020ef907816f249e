"""Random BN statistics, BN affine parameters and λ for conversion tests: every fold the
converter makes is then exercised with values a freshly built model would not have."""
import torch
from torch import nn

from models.nq import NQActivation


def randomise(model: nn.Module, seed: int, threshold_low: float,
              threshold_span: float) -> nn.Module:
    """``model`` in eval mode and float64, with random BN running statistics and affine
    parameters and every λ drawn from [threshold_low, threshold_low + threshold_span)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) * 0.6 - 0.3)
        if isinstance(m, NQActivation):
            m.threshold.data.fill_(threshold_low + threshold_span * float(torch.rand(1, generator=g)))
    return model.eval().double()


def forward_with_activity(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """``model(x)`` without gradients, and the fraction of positive outputs of each NQ
    activation (forward order): a conversion test is vacuous where a layer is silent."""
    from models.architectures import nq_layers

    acts = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: acts.append(o)) for m in nq_layers(model)]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    return out, [float((a > 0).double().mean()) for a in acts]
