"""The converted SNN as a differentiable PyTorch computation: the NQ network unrolled over T
steps with every NQ activation replaced by the neuron that runs on the chip.

:class:`Unrolled` calls the ANN's own modules once per time step on the same (constant)
input. Each NQ activation becomes a stateful population with the float IR's dynamics
(:mod:`hardware.fixed_point.dynamics`, du = 4095, dv = 0, so v ← v + h_t, h_t the
module's pre-activation with its bias and folded batch-norm): ``if_soft`` starts at
v0 = θ/2, fires where v ≥ θ and subtracts θ; ``cuba`` starts at 0, fires where v > θ
(strict) and resets to 0, with the cuba drive offset the converter folds into the bias
(:func:`models.converter.convert`'s ``cuba_shift``). θ is the layer's λ and a spike
leaves the population as θ·s: the value the converter folds into the next layer's
weights. The last (plain) layer's output at step t is the readout integrator's input, so
``cumsum`` over steps is the potential the simulator reads (argmax = the prediction).

Forward: the same spikes as :func:`hardware.simulator.simulate` (float IR, not
pipelined) on the converted network, up to float rounding of the folded weights.
Backward (surrogate gradient): ∂s/∂v = w((v − θ)/θ)/θ and ∂s/∂θ = −∂s/∂v, with the
window w of :data:`SURROGATES` (``rectangle``: 1 on |x| < 1/2; ``sigmoid``: 4σ'(4x),
peak 1), so θ·s has slope ≈ 1 in v across the threshold, as QCFS's straight-through
ramp; the reset uses the spike value without its gradient. The trainable parameters are
the ANN's (weights, batch-norm, λ): a trained network converts exactly as before.
Batch-norm must be in eval mode (its running statistics are what conversion folds).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from hardware.errors import IRError

from .architectures import nq_layers
from .converter import _layer_shift
from .nq import NQActivation, cuba_shift_offset

#: Surrogate windows of the spike's derivative (module docstring).
SURROGATES = ("rectangle", "sigmoid")
#: The neurons the unrolled network can stand in for.
NEURONS = ("if_soft", "cuba")


def _window(x: torch.Tensor, surrogate: str) -> torch.Tensor:
    if surrogate == "rectangle":
        return (x.abs() < 0.5).to(x.dtype)
    sig = torch.sigmoid(4.0 * x)
    return 4.0 * sig * (1.0 - sig)


class _Spike(torch.autograd.Function):
    """s = v > θ (``strict``) or v ≥ θ, compared exactly; surrogate gradient backward."""

    @staticmethod
    def forward(ctx, v, theta, strict: bool, surrogate: str):  # noqa: D401
        ctx.save_for_backward(v, theta)
        ctx.surrogate = surrogate
        return (v > theta if strict else v >= theta).to(v.dtype)

    @staticmethod
    def backward(ctx, grad):
        v, theta = ctx.saved_tensors
        grad_v = grad * _window((v - theta) / theta, ctx.surrogate) / theta
        return grad_v, (-grad_v).sum().reshape(theta.shape), None, None


@dataclass
class _Population:
    """One NQ layer as spiking neurons: its λ, drive offset and membrane (per forward)."""

    nq: NQActivation
    soft: bool
    surrogate: str
    shift: tuple = ("none", None)  # (cuba drive shift, the T it is designed for)
    v: torch.Tensor | None = None
    spikes: list = field(default_factory=list)
    record: bool = False

    def step(self, h: torch.Tensor) -> torch.Tensor:
        theta = self.nq.threshold.to(h.dtype)
        if self.v is None:
            self.v = (theta * 0.5 if self.soft else theta * 0.0).expand_as(h)
        shift, steps = self.shift
        # from λ at every step: λ is trained, and the offset moves with it as in conversion
        v = self.v + (h if shift == "none" else h + cuba_shift_offset(theta, steps, shift))
        s = _Spike.apply(v, theta, not self.soft, self.surrogate)
        fired = s.detach()
        self.v = v - theta * fired if self.soft else v * (1.0 - fired)
        if self.record:
            self.spikes.append(fired.bool())
        return theta * s


class Unrolled:
    """``model`` (an NQ network) run as its converted SNN for ``timesteps`` steps.

    ``neuron``: ``if_soft`` or ``cuba``; ``cuba_shift``/``shift_timesteps``: the drive offset
    of a QCFS model converted to cuba (as :func:`models.converter.convert`; a cuba-matched
    model brings its own). Calling it on a batch ``x`` returns the output layer's input at
    every step, (T, B, n_out); ``record=True`` keeps every layer's spikes
    (:attr:`spike_trains` after a call: per NQ layer, (T, B, *shape) bool)."""

    def __init__(self, model: nn.Module, timesteps: int, neuron: str = "if_soft", *,
                 surrogate: str = "rectangle", cuba_shift: str | None = None,
                 shift_timesteps: int | None = None, record: bool = False):
        if neuron not in NEURONS:
            raise IRError(f"neuron {neuron!r} is not one of {', '.join(NEURONS)}")
        if surrogate not in SURROGATES:
            raise IRError(f"surrogate {surrogate!r} is not one of {', '.join(SURROGATES)}")
        if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
            raise IRError(f"timesteps must be a positive integer, got {timesteps!r}")
        self.model, self.timesteps = model, timesteps
        layers = nq_layers(model)
        if not layers:
            raise IRError("the network has no NQ activation to run as spiking neurons")
        self.populations = []
        for k, nq in enumerate(layers):
            shift = _layer_shift(f"NQ layer {k}", nq, neuron, cuba_shift, shift_timesteps)
            self.populations.append(_Population(nq, neuron == "if_soft", surrogate, shift,
                                                record=record))
        self.spike_trains: list | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for pop in self.populations:
            pop.v, pop.spikes = None, []
        outputs = []
        with self._spiking():
            for _ in range(self.timesteps):
                outputs.append(self.model(x))
        if self.populations[0].record:
            self.spike_trains = [torch.stack(p.spikes) for p in self.populations]
        for pop in self.populations:
            pop.v, pop.spikes = None, []  # no graph kept alive between calls
        return torch.stack(outputs)

    @contextlib.contextmanager
    def _spiking(self):
        """Every NQ module's forward replaced by its population's step while open."""
        for pop in self.populations:
            pop.nq.forward = pop.step
        try:
            yield
        finally:
            for pop in self.populations:
                del pop.nq.forward


def accumulated(outputs: torch.Tensor) -> torch.Tensor:
    """The readout integrator's potential after each step, (T, B, n_out): Σ_{τ≤t} output_τ."""
    return torch.cumsum(outputs, dim=0)


__all__ = ["SURROGATES", "NEURONS", "Unrolled", "accumulated"]
