"""The NQ activation: QCFS quantization plus residual noise.

Forward (Huang et al., TNNLS 2025; QCFS from Bu et al., ICLR 2022)::

    y = λ · clip(floor(x · L / λ + 1/2) / L, 0, 1)          (eval, and the SNN target)
    y = λ · clip(floor(x · L / λ + 1/2) / L, 0, 1) + σ · ε,  ε ~ N(0, 1)   (training, noise on)

λ is a learnable threshold per layer, L the number of levels. ``floor`` passes
gradients straight through. σ is a buffer (saved in checkpoints), not learned:
the training loop re-estimates it after every epoch as the standard deviation
of (ANN activation − SNN rate · θ) measured with the reference simulator.
"""
from __future__ import annotations

import torch
from torch import nn


class _FloorSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # noqa: D401
        return torch.floor(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def qcfs(x: torch.Tensor, threshold: torch.Tensor, levels: int) -> torch.Tensor:
    """λ · clip(floor(x·L/λ + 0.5)/L, 0, 1) with straight-through floor."""
    scaled = torch.clamp(x / threshold, 0.0, 1.0)
    return _FloorSTE.apply(scaled * levels + 0.5) / levels * threshold


class NQActivation(nn.Module):
    """QCFS activation with learnable threshold λ and optional training noise σ·N(0,1)."""

    def __init__(self, levels: int, noise: bool = True, init_threshold: float = 8.0):
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        if not init_threshold > 0:
            raise ValueError(f"init_threshold must be positive, got {init_threshold}")
        self.levels = int(levels)
        self.noise = bool(noise)
        self.threshold = nn.Parameter(torch.tensor(float(init_threshold)))
        self.register_buffer("sigma", torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = qcfs(x, self.threshold, self.levels)
        if self.training and self.noise and float(self.sigma) > 0:
            y = y + self.sigma * torch.randn_like(y)
        return y

    def extra_repr(self) -> str:
        return f"levels={self.levels}, noise={self.noise}"
