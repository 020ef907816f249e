"""Folding BN and pooling into the IR leaves the network function unchanged."""
import numpy as np
import pytest
import torch
from torch import nn

from hardware.errors import IRError
from hardware.ir import Conv, Dense, Flatten
from models.architectures import build_model, nq_layers
from hardware.energy import count_macs
from models.converter import convert, ir_quantized_forward
from models.nq import NQActivation, qcfs


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) * 0.6 - 0.3)
        if isinstance(m, NQActivation):
            m.threshold.data.fill_(0.2 + 0.4 * float(torch.rand(1, generator=g)))
    return model.eval().double()


@pytest.mark.parametrize("arch,shape,levels", [("cnn-small", (1, 8, 8), 4), ("vgg-small", (1, 28, 28), 8)])
@pytest.mark.parametrize("seed", [0, 1])
def test_fold_preserves_function(arch, shape, levels, seed):
    torch.manual_seed(seed)
    model = _randomise(build_model(arch, shape, 10, levels), seed)
    x = torch.rand(8, *shape, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
    net = convert(model, shape)
    got = ir_quantized_forward(net, x, levels)
    assert (expected > 0).any(), "vacuous: the network output is all zero"
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    # every hidden layer is active too, so the comparison exercises all folds
    acts = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: acts.append(o)) for m in nq_layers(model)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert all(float((a > 0).double().mean()) > 0.01 for a in acts)


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
    model = nn.Sequential(nn.Linear(3, 2, bias=False), NQActivation(4), nn.Linear(2, 2, bias=False), NQActivation(4))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2, 3))
        model[1].threshold.fill_(2.0)
        model[2].weight.copy_(torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    net = convert(model, (3,))
    np.testing.assert_array_equal(net.layers[1].weight, np.array([[2.0, 1.0], [0.0, 2.0]]))
    assert net.layers[0].neuron.threshold == 2.0 and net.layers[0].neuron.kind == "if_soft"


def test_odd_pooled_map_before_conv_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), NQActivation(4), nn.AvgPool2d(2),
                          nn.Conv2d(2, 2, 3, padding=1), NQActivation(4))
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
