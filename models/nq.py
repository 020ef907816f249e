"""The NQ activation: a quantized activation equal to the SNN neuron's constant-input
response, plus residual noise (``NQActivation(..., activation=...)``).

``qcfs`` (Huang et al., TNNLS 2025; QCFS from Bu et al., ICLR 2022): the paper's IF
neuron over L steps, ``y = λ · clip(floor(x · L / λ + 1/2) / L, 0, 1)``.

``cuba-matched``: Loihi 2's stock CUBA neuron (du = 4095, dv = 0, v0 = 0, strict
``v > θ``, reset to zero; :mod:`hardware.fixed_point.dynamics`) over the T steps it is
matched to. A per-step drive z first exceeds θ after k = floor(θ/z) + 1 steps, so
(:func:`cuba_spike_count`) ``count = floor(T / k)`` for z > 0 (else 0) and
``y = λ · count / T`` (θ = λ); at T = 4 the levels are 0, 1, 2, 4 (never 3).
``cuba_shift`` (:func:`cuba_shift_offset`): a per-step drive offset that stock Loihi
takes as a bias (the converter folds it into the layer's bias): ``none`` (z = x) or
``half-bias`` (z = x + θ/(2T): θ/2 spread over the window, as stock Loihi cannot start
v at θ/2; at T = 4 the steps move to the QCFS rounding points θ/8, 3θ/8, 7θ/8).

Gradients are straight through, as QCFS: the quantized value forward, the clipped ramp
``λ · clip(z/λ, 0, 1)`` backward (∂y/∂z = 1 on 0 < z < λ; ∂y/∂λ = count/T − z/λ there,
1 above).

Training noise (both activations): ``y + σ · ε``, ε ~ N(0, 1), fresh per element. λ is
learnable, one per layer. σ is a buffer (saved in checkpoints), not learned: the training
loop re-estimates it after every epoch as the standard deviation of (ANN activation −
SNN rate · θ) measured with the reference simulator.
"""
from __future__ import annotations

import torch
from torch import nn

from hardware.errors import ToolkitError

#: ANN activations: the IF neuron's response (QCFS) or the stock CUBA neuron's.
ACTIVATIONS = ("qcfs", "cuba-matched")
#: Per-step drive offsets of a cuba-matched activation (module docstring).
CUBA_SHIFTS = ("none", "half-bias")


class ActivationError(ToolkitError, ValueError):
    """An activation parameter that is out of range or inconsistent."""


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


def cuba_spike_count(drive: torch.Tensor, threshold, timesteps: int) -> torch.Tensor:
    """Spikes of the stock CUBA neuron in ``timesteps`` steps of constant per-step ``drive``
    (module docstring): ``floor(T / (floor(θ/z) + 1))`` for z > 0, else 0.

    Integer ``drive`` and ``threshold`` (e.g. Loihi mantissas) are counted in exact
    integer arithmetic; floats in their own dtype (no gradient)."""
    drive = torch.as_tensor(drive)
    threshold = torch.as_tensor(threshold, device=drive.device)
    positive = drive > 0
    if not drive.is_floating_point() and not threshold.is_floating_point():
        steps = threshold // torch.where(positive, drive, torch.ones_like(drive)) + 1
        return torch.where(positive, timesteps // steps, torch.zeros_like(drive))
    drive, threshold = drive.detach(), threshold.detach().to(drive.dtype)
    # θ/z, not 1/(z/θ): one rounding; z ≤ 0 gives a huge or negative quotient, masked below
    steps = torch.floor(threshold / torch.where(positive, drive, torch.ones_like(drive))) + 1
    return torch.where(positive, torch.floor(timesteps / steps), torch.zeros_like(drive))


def cuba_shift_offset(threshold, timesteps: int, shift: str):
    """The per-step drive offset of ``shift`` for threshold θ over ``timesteps`` steps:
    0 for ``none``, θ/(2T) for ``half-bias`` (a tensor θ keeps its gradient)."""
    if shift not in CUBA_SHIFTS:
        raise ActivationError(f"cuba shift {shift!r} is not one of {', '.join(CUBA_SHIFTS)}")
    _check_timesteps(timesteps)
    return threshold * 0.0 if shift == "none" else threshold / (2 * timesteps)


def cuba_matched(x: torch.Tensor, threshold: torch.Tensor, timesteps: int,
                 shift: str = "none") -> torch.Tensor:
    """λ · count/T of the stock CUBA neuron driven by x + offset (module docstring), with
    the clipped-ramp straight-through gradient."""
    drive = x + cuba_shift_offset(threshold, timesteps, shift)
    ramp = torch.clamp(drive / threshold, 0.0, 1.0)
    level = cuba_spike_count(drive, threshold, timesteps) / timesteps
    return (ramp + (level - ramp).detach()) * threshold


def _check_timesteps(timesteps) -> None:
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise ActivationError(f"a cuba-matched activation needs timesteps T as a positive "
                              f"integer, got {timesteps!r}")


def check_activation(activation: str, timesteps, shift: str) -> None:
    """Raise :class:`ActivationError` unless (activation, timesteps, shift) is valid."""
    if activation not in ACTIVATIONS:
        raise ActivationError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
    if shift not in CUBA_SHIFTS:
        raise ActivationError(f"cuba shift {shift!r} is not one of {', '.join(CUBA_SHIFTS)}")
    if activation == "cuba-matched":
        _check_timesteps(timesteps)
    elif shift != "none":
        raise ActivationError(f"cuba shift {shift!r} belongs to a cuba-matched activation; a QCFS "
                              f"activation is shifted at conversion (convert(..., cuba_shift=...))")


class NQActivation(nn.Module):
    """QCFS or cuba-matched activation with learnable threshold λ and optional training
    noise σ·N(0,1). ``levels`` is QCFS's L (kept, unused, by a cuba-matched activation);
    ``timesteps`` and ``shift`` belong to a cuba-matched one (module docstring)."""

    def __init__(self, levels: int, noise: bool = True, init_threshold: float = 8.0,
                 activation: str = "qcfs", timesteps: int | None = None, shift: str = "none"):
        super().__init__()
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ActivationError(f"levels must be an integer >= 1, got {levels!r}")
        if not init_threshold > 0:
            raise ActivationError(f"init_threshold must be positive, got {init_threshold}")
        self.levels = int(levels)
        self.noise = bool(noise)
        self.configure(activation, timesteps, shift)
        self.threshold = nn.Parameter(torch.tensor(float(init_threshold)))
        self.register_buffer("sigma", torch.tensor(0.0))

    def configure(self, activation: str, timesteps: int | None = None, shift: str = "none") -> None:
        """Select the activation function (the parameters λ and σ are unchanged)."""
        check_activation(activation, timesteps, shift)
        self.activation = activation
        self.timesteps = int(timesteps) if activation == "cuba-matched" else None
        self.shift = shift

    def quantized(self, x: torch.Tensor) -> torch.Tensor:
        """The activation without noise (the SNN's constant-input target)."""
        if self.activation == "cuba-matched":
            return cuba_matched(x, self.threshold, self.timesteps, self.shift)
        return qcfs(x, self.threshold, self.levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.quantized(x)
        if self.training and self.noise and float(self.sigma) > 0:
            y = y + self.sigma * torch.randn_like(y)
        return y

    def extra_repr(self) -> str:
        if self.activation == "cuba-matched":
            return f"cuba-matched, timesteps={self.timesteps}, shift={self.shift}, noise={self.noise}"
        return f"levels={self.levels}, noise={self.noise}"
