"""Folding BN and pooling into the IR leaves the network function unchanged."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from hardware.errors import IRError
from hardware.ir import Conv, Dense, Flatten, networks_equal, readout_neuron
from hardware.simulator import simulate
from models.architectures import build_model, nq_layers
from hardware.analysis.energy import count_macs
from models.capture import capture
from models.converter import convert, ir_quantized_forward
from models.nq import NQActivation, qcfs
from tests.random_ann import forward_with_activity, randomise


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    return randomise(model, seed, threshold_low=0.2, threshold_span=0.4)


@pytest.mark.parametrize("arch,shape,levels", [("cnn-small", (1, 8, 8), 4), ("vgg-small", (1, 28, 28), 8)])
@pytest.mark.parametrize("seed", [0, 1])
def test_fold_preserves_function(arch, shape, levels, seed):
    torch.manual_seed(seed)
    model = _randomise(build_model(arch, shape, 10, levels), seed)
    x = torch.rand(8, *shape, dtype=torch.float64)
    expected, active = forward_with_activity(model, x)
    net = convert(model, shape)
    got = ir_quantized_forward(net, x, levels)
    assert (expected > 0).any(), "vacuous: the network output is all zero"
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    # every hidden layer is active too, so the comparison exercises all folds
    assert min(active) > 0.01, active


def test_pool_folds_into_conv_and_dense():
    model = _randomise(build_model("vgg-small", (1, 28, 28), 10, 4), 3)
    net = convert(model, (1, 28, 28))
    convs = [layer for layer in net.layers if isinstance(layer, Conv)]
    # the conv after each 2x2 pooling has a 6x6 kernel with stride 2 and padding 2
    assert [c.weight.shape[-1] for c in convs] == [3, 3, 6, 3, 6]
    assert [tuple(c.stride) for c in convs] == [(1, 1), (1, 1), (2, 2), (1, 1), (2, 2)]
    assert isinstance(net.layers[5], Flatten) and isinstance(net.layers[6], Dense)
    # 7x7 map pooled to 3x3: the dropped row and column get weight 0
    dense = net.layers[6].weight.reshape(256, 128, 7, 7)
    assert np.all(dense[:, :, 6, :] == 0) and np.all(dense[:, :, :, 6] == 0)
    assert net.shapes()[-1] == (10,)
    assert len(count_macs(net)) == len(net.weighted_layers)


def test_threshold_folds_into_next_layer():
    model = nn.Sequential(nn.Linear(3, 2, bias=False), NQActivation(4), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2, 3))
        model[1].threshold.fill_(2.0)
        model[2].weight.copy_(torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    net = convert(model, (3,))
    np.testing.assert_array_equal(net.layers[1].weight, np.array([[2.0, 1.0], [0.0, 2.0]]))
    assert net.layers[0].neuron.threshold == 2.0 and net.layers[0].neuron.kind == "if_soft"
    # the output layer is the paper's non-firing integrator
    assert net.readout == "potential" and net.layers[1].neuron == readout_neuron(integer=False)


def _one_hidden_layer(kind: str, levels: int, seed: int) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 12), NQActivation(levels), nn.Linear(12, 5)).double()
    with torch.no_grad():
        for lin in (model[0], model[2]):
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g, dtype=torch.float64))
            lin.bias.copy_(0.3 * torch.randn(lin.bias.shape, generator=g, dtype=torch.float64))
        model[1].threshold.fill_(1.5)
    return model.eval()


@pytest.mark.parametrize("levels", [1, 2, 4, 8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_potential_readout_is_T_times_the_logits(levels, seed):
    """QCFS equivalence extended to the readout: with constant input and T = L the IF
    neuron's count is exactly the QCFS level, so the accumulated output is T · logits."""
    model = _one_hidden_layer("if_soft", levels, seed)
    x = torch.rand(64, 6, generator=torch.Generator().manual_seed(seed + 10), dtype=torch.float64) * 2
    with torch.no_grad():
        logits = model(x)
    net = convert(model, (6,))
    result = simulate(net, x, levels)
    assert result.layer_counts[0].sum() > 0, "vacuous: the hidden layer never fires"
    assert not result.output_spikes.any(), "the readout layer must never fire"
    torch.testing.assert_close(result.output_potential[-1], levels * logits, rtol=1e-12, atol=1e-9)
    expected = logits.argmax(1)
    assert torch.equal(result.predictions()[-1], expected)


def test_spike_vote_readout_stays_available():
    model = _one_hidden_layer("if_soft", 4, 3)
    x = torch.rand(200, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 2
    net = convert(model, (6,), readout="spikes", output_threshold=2.0)
    assert net.readout == "spikes"
    out = net.layers[-1].neuron
    assert out.kind == "if_soft" and out.threshold == 2.0
    result = simulate(net, x, 16)
    counts = result.output_spikes.sum(0)
    assert counts.sum() > 0
    votes = result.predictions()[-1]
    # ties go to the lowest index; otherwise the class with the most spikes
    best = counts.max(1, keepdim=True).values
    first = torch.tensor([int(torch.nonzero(row == b)[0]) for row, b in zip(counts, best)])
    assert torch.equal(votes, first)
    # with enough steps the vote mostly agrees with the ANN's argmax
    with torch.no_grad():
        agree = float((votes == model(x).argmax(1)).double().mean())
    assert agree > 0.7
    with pytest.raises(IRError, match="output_threshold"):
        convert(model, (6,), readout="spikes")


def test_last_layer_with_activation_is_refused():
    model = nn.Sequential(nn.Linear(3, 2), NQActivation(4), nn.Linear(2, 2), NQActivation(4))
    with pytest.raises(IRError, match="plain Linear"):
        convert(model, (3,))


def test_odd_pooled_map_before_conv_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), NQActivation(4), nn.AvgPool2d(2),
                          nn.Conv2d(2, 2, 3, padding=1), NQActivation(4), nn.Flatten(), nn.Linear(18, 2))
    with pytest.raises(IRError, match="not divisible"):
        convert(model, (1, 7, 7))


def test_qcfs_definition():
    x = torch.tensor([-1.0, 0.0, 0.124, 0.126, 0.5, 0.99, 2.0])
    y = qcfs(x, torch.tensor(1.0), 4)
    # λ·clip(floor(x·L/λ + 0.5)/L, 0, 1)
    expected = torch.clamp(torch.floor(x * 4 + 0.5) / 4, 0, 1)
    torch.testing.assert_close(y, expected)


def test_noise_only_while_training():
    act = NQActivation(4, noise=True, init_threshold=1.0)
    act.sigma.fill_(0.5)
    x = torch.full((1000,), 0.5)
    act.eval()
    assert torch.equal(act(x), qcfs(x, act.threshold, 4))
    act.train()
    noisy = act(x) - qcfs(x, act.threshold, 4)
    assert 0.4 < float(noisy.std()) < 0.6 and abs(float(noisy.mean())) < 0.1
    plain = NQActivation(4, noise=False, init_threshold=1.0).train()
    plain.sigma.fill_(0.5)
    assert torch.equal(plain(x), qcfs(x, plain.threshold, 4))


@pytest.mark.parametrize("arch,shape", [("cnn-small", (1, 8, 8)), ("vgg-small", (1, 28, 28)),
                                        ("resnet-small", (1, 8, 8))])
def test_a_captured_relu_twin_of_a_registry_model_converts_to_the_same_ir(arch, shape):
    """One front-end: the registry network written with plain ReLUs, captured, with the
    registry model's state_dict loaded (strict: the NQ activations sit at the ReLUs' names),
    converts to exactly the registry model's IR."""
    model = _randomise(build_model(arch, shape, 10, 4), 0)
    twin = copy.deepcopy(model)
    for name, module in list(twin.named_modules()):
        if isinstance(module, NQActivation):
            parent, _, leaf = name.rpartition(".")
            setattr(twin.get_submodule(parent), leaf, nn.ReLU())
    gm = capture(twin, shape, levels=4)
    gm.load_state_dict(model.state_dict())
    assert networks_equal(convert(gm.eval(), shape), convert(model, shape))
