"""The unrolled SNN (models.snn_unroll) is the converted network: on the same weights it fires
the same spikes as the float reference simulator and reads out the same potential, for both
neurons, a cuba drive shift and a residual net; its surrogate gradient reaches every weight
and λ."""
import pytest
import torch

from hardware.errors import IRError
from hardware.simulator import first_argmax, simulate
from models.architectures import build_model, nq_layers
from models.converter import convert
from models.snn_unroll import Unrolled, accumulated
from tests.random_ann import randomise

T = 4


def _model(arch: str, shape: tuple, seed: int, **activation):
    torch.manual_seed(seed)
    model = build_model(arch, shape, 10, levels=4, noise=False, **activation)
    return randomise(model, seed, threshold_low=0.4, threshold_span=0.6)


CASES = [  # (arch, input shape, neuron, activation kwargs, conversion kwargs)
    ("cnn-small", (1, 8, 8), "if_soft", {}, {}),
    ("cnn-small", (1, 8, 8), "cuba", {}, {}),
    ("cnn-small", (1, 8, 8), "cuba", {}, {"cuba_shift": "half-bias", "shift_timesteps": T}),
    ("cnn-small", (1, 8, 8), "cuba", {"activation": "cuba-matched", "timesteps": T,
                                      "cuba_shift": "half-bias"}, {}),
    ("resnet-small", (1, 8, 8), "if_soft", {}, {}),
]


@pytest.mark.parametrize("arch,shape,neuron,activation,conversion", CASES)
def test_forward_equals_the_float_simulator(arch, shape, neuron, activation, conversion):
    model = _model(arch, shape, seed=3, **activation)
    x = torch.rand((32,) + shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    net = convert(model, shape, neuron=neuron, **conversion)
    ref = simulate(net, x, T, record_spikes=True)
    unrolled = Unrolled(model, T, neuron, record=True, **conversion)
    with torch.no_grad():
        potential = accumulated(unrolled(x))
    trains = unrolled.spike_trains
    assert len(trains) == len(nq_layers(model)) == len(ref.layer_spike_trains) - 1
    for k, (mine, theirs) in enumerate(zip(trains, ref.layer_spike_trains)):
        assert torch.equal(mine, theirs), f"NQ layer {k}: {int((mine != theirs).sum())} spikes differ"
    assert any(bool(t.any()) for t in trains)  # not vacuous
    # the same spikes through the same (folded, in float64) weights: equal up to rounding
    torch.testing.assert_close(potential, ref.output_potential.view_as(potential), rtol=1e-9, atol=1e-9)
    assert torch.equal(first_argmax(potential), ref.predictions())


@pytest.mark.parametrize("neuron", ["if_soft", "cuba"])
@pytest.mark.parametrize("surrogate", ["rectangle", "sigmoid"])
def test_surrogate_gradient_reaches_weights_and_thresholds(neuron, surrogate):
    model = _model("cnn-small", (1, 8, 8), seed=4)
    x = torch.rand((16, 1, 8, 8), generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    out = accumulated(Unrolled(model, 2, neuron, surrogate=surrogate)(x))[-1]
    torch.nn.functional.cross_entropy(out, torch.arange(16) % 10).backward()
    for nq in nq_layers(model):
        assert nq.threshold.grad is not None and torch.isfinite(nq.threshold.grad)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)
    assert not any("forward" in vars(nq) for nq in nq_layers(model))  # the ANN is itself again


def test_bad_arguments_are_refused():
    model = _model("cnn-small", (1, 8, 8), seed=1)
    with pytest.raises(IRError, match="neuron 'lif'"):
        Unrolled(model, 2, "lif")
    with pytest.raises(IRError, match="surrogate 'step'"):
        Unrolled(model, 2, surrogate="step")
    with pytest.raises(IRError, match="timesteps"):
        Unrolled(model, 0)
