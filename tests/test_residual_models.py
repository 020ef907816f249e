"""Residual networks on the ANN side: the architectures, their shapes, and their exact
conversion to the IR (residual shortcuts as extra inputs, BN folded on both branches)."""
import numpy as np
import pytest
import torch
from torch import nn

from hardware.errors import IRError, ToolkitError
from hardware.ir import Conv, Dense, Flatten
from models.architectures import (ARCHITECTURES, RESNET_PLANS, ArchitectureError, ResidualBlock, build_model,
                                  feature_map_shapes, min_input_side, nq_layer_count, nq_layers)
from models.converter import convert, count_ann_macs, ir_quantized_forward
from models.nq import NQActivation
from tests.random_ann import forward_with_activity, randomise

DIGITS, FASHION, CIFAR = (1, 8, 8), (1, 28, 28), (3, 32, 32)


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    return randomise(model, seed, threshold_low=0.4, threshold_span=0.8)


def _blocks(model: nn.Module) -> list:
    return [m for m in model if isinstance(m, ResidualBlock)]


# ------------------------------------------------------------------ architectures and shapes

@pytest.mark.parametrize("arch, shape, final", [
    ("resnet-small", DIGITS, (64, 2, 2)), ("resnet-small", FASHION, (64, 7, 7)),
    ("resnet-small", CIFAR, (64, 8, 8)), ("resnet20", DIGITS, (64, 2, 2)),
    ("resnet20", FASHION, (64, 7, 7)), ("resnet20", CIFAR, (64, 8, 8)),
    ("resnet18", FASHION, (512, 4, 4)), ("resnet18", CIFAR, (512, 4, 4))])
def test_resnet_shapes(arch, shape, final):
    shapes = feature_map_shapes(arch, shape)
    assert shapes[-2] == final and shapes[-1] == (final[0], 1, 1)
    # built on the meta device: the structure and the forward's shapes, without the compute
    with torch.device("meta"):
        model = build_model(arch, shape, 10, 4).eval()
        out = model(torch.zeros(2, *shape))
    assert isinstance(model, nn.Sequential) and tuple(out.shape) == (2, 10)
    pool, flatten, readout = model[-3:]
    assert isinstance(pool, nn.AvgPool2d) and pool.kernel_size == final[1:]
    assert isinstance(flatten, nn.Flatten) and isinstance(readout, nn.Linear)
    assert readout.in_features == final[0]
    layers = nq_layers(model)
    assert len(layers) == nq_layer_count(arch) == 1 + 2 * len(_blocks(model))
    # NQ_1 comes before NQ_out in module order (σ pairs NQ layers with IR layers in order)
    for block in _blocks(model):
        assert layers.index(block.nq1) + 1 == layers.index(block.nq_out)


def test_resnet_plans_match_the_reference_models():
    """QCFS/NQ: resnet18 = [2, 2, 2, 2] basic blocks of 64..512 with a 3×3 stem (11.17 M
    parameters at 10 classes), resnet20 = [3, 3, 3] of 16/32/64."""
    counts = {}
    for arch in ("resnet18", "resnet20"):
        with torch.device("meta"):
            model = build_model(arch, CIFAR, 10, 4)
        counts[arch] = sum(p.numel() for n, p in model.named_parameters() if not n.endswith("threshold"))
        stem = model[0]
        assert (stem.kernel_size, stem.stride, stem.padding) == ((3, 3), (1, 1), (1, 1))
    assert counts == {"resnet18": 11_173_962, "resnet20": 272_474}
    assert [len(_blocks(build_model("resnet-small", DIGITS, 10, 4)))] == [3]
    small = _blocks(build_model("resnet-small", DIGITS, 10, 4))
    assert [b.identity_shortcut for b in small] == [True, False, False]
    assert [b.conv1.stride for b in small] == [(1, 1), (2, 2), (2, 2)]


def test_config_offers_every_architecture():
    from pipeline.config import ARCHS

    assert set(ARCHS) == {"auto", *ARCHITECTURES} and set(RESNET_PLANS) <= set(ARCHS)


@pytest.mark.parametrize("arch, shape", [("resnet18", (3, 4, 4)), ("resnet-small", (1, 3, 8)),
                                         ("resnet20", (1, 2, 2))])
def test_input_too_small_is_refused_before_building(monkeypatch, arch, shape):
    from models import architectures

    def no_layers(*_a, **_k):
        raise AssertionError("a layer was built before the shape check")

    monkeypatch.setattr(architectures.nn, "Conv2d", no_layers)
    monkeypatch.setattr(architectures.nn, "Linear", no_layers)
    with pytest.raises(ArchitectureError) as ei:
        build_model(arch, shape, 10, 4)
    msg = str(ei.value)
    assert f"model.arch {arch}" in msg and str(shape) in msg and f"{min_input_side(arch)}×" in msg
    assert isinstance(ei.value, ToolkitError)


# ------------------------------------------------------------------ conversion

CASES = [("qcfs", "if_soft", "none"), ("cuba-matched", "cuba", "none"), ("cuba-matched", "cuba", "half-bias")]


def _model(shape, activation, shift, seed):
    torch.manual_seed(seed)
    kwargs = dict(activation=activation, timesteps=4, cuba_shift=shift) if activation != "qcfs" else {}
    return _randomise(build_model("resnet-small", shape, 10, 4, **kwargs), seed)


@pytest.mark.parametrize("activation, neuron, shift", CASES)
@pytest.mark.parametrize("shape, seed", [(DIGITS, 0), (DIGITS, 1), ((1, 12, 12), 2), ((1, 8, 12), 3)])
def test_ir_forward_equals_the_ann(activation, neuron, shift, shape, seed):
    """Noise off, eval mode: the IR's float forward is the ANN's forward, through an identity
    and two 1×1 projection shortcuts, with BN folded on both branches."""
    model = _model(shape, activation, shift, seed)
    x = torch.rand(16, *shape, generator=torch.Generator().manual_seed(seed + 10), dtype=torch.float64)
    expected, active = forward_with_activity(model, x)
    # not vacuous: every NQ layer (each block's input and output) is active
    assert min(active) > 0.02, active
    net = convert(model, shape, neuron=neuron)
    got = ir_quantized_forward(net, x, 4, activation=activation, timesteps=4)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    # the shortcuts matter: without them the IR computes something else
    cut = net.replace(layers=[_without_extra_inputs(layer) for layer in net.layers])
    assert not torch.allclose(ir_quantized_forward(cut, x, 4, activation=activation, timesteps=4), expected)


def _without_extra_inputs(layer):
    return layer if isinstance(layer, Flatten) else type(layer)(**{**layer.__dict__, "extra_inputs": ()})


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d):
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    return conv.weight.detach() * scale.view(-1, 1, 1, 1), bn.bias.detach() - bn.running_mean * scale


@pytest.mark.parametrize("shift", ["none", "half-bias"])
def test_conversion_names_sources_and_folds(shift):
    model = _model(DIGITS, "cuba-matched", shift, 4)
    net = convert(model, DIGITS, neuron="cuba")
    assert [layer.name for layer in net.layers] == [f"conv{i}" for i in range(7)] + ["flatten7", "dense7"]
    assert [type(layer) for layer in net.layers] == [Conv] * 7 + [Flatten, Dense]
    assert not net.is_sequential
    sources = {layer.name: [p.source for p in layer.extra_inputs] for layer in net.weighted_layers}
    assert sources == {"conv0": [], "conv1": [], "conv2": ["conv0"], "conv3": [], "conv4": ["conv2"],
                       "conv5": [], "conv6": ["conv4"], "dense7": []}
    lam = [float(m.threshold) for m in nq_layers(model)]
    assert [layer.neuron.threshold for layer in net.weighted_layers[:-1]] == lam
    offset = [v / 8 if shift == "half-bias" else 0.0 for v in lam]  # θ/(2T), T = 4
    stem_out, (identity_block, projection_block, _) = lam[0], _blocks(model)

    # identity shortcut: a 1×1 conv θ_in·I from the stem; conv2's bias is BN2's alone
    proj = net.layers[2].extra_inputs[0]
    assert (proj.kind, tuple(proj.stride), tuple(proj.padding)) == ("conv", (1, 1), (0, 0))
    np.testing.assert_array_equal(proj.weight[:, :, 0, 0], stem_out * np.eye(16))
    w2, b2 = _fold(identity_block.conv2, identity_block.bn2)
    np.testing.assert_allclose(net.layers[2].weight, (w2 * lam[1]).numpy(), rtol=1e-12)
    np.testing.assert_allclose(net.layers[2].bias, (b2 + offset[2]).numpy(), rtol=1e-12, atol=1e-15)

    # projection shortcut: its folded 1×1 stride-2 conv × θ_in; its BN bias joins conv4's bias
    proj = net.layers[4].extra_inputs[0]
    assert tuple(proj.stride) == (2, 2) and proj.weight.shape == (32, 16, 1, 1)
    ws, bs = _fold(*projection_block.shortcut)
    np.testing.assert_allclose(proj.weight, (ws * lam[2]).numpy(), rtol=1e-12)
    w2, b2 = _fold(projection_block.conv2, projection_block.bn2)
    np.testing.assert_allclose(net.layers[4].bias, (b2 + bs + offset[4]).numpy(), rtol=1e-12, atol=1e-15)
    w1, _ = _fold(projection_block.conv1, projection_block.bn1)
    np.testing.assert_allclose(net.layers[3].weight, (w1 * lam[2]).numpy(), rtol=1e-12)
    assert tuple(net.layers[3].stride) == (2, 2)

    # on Lava each shortcut skips one hop: one extra synaptic delay step
    assert [net.extra_delay(net.layers[i], net.layers[i].extra_inputs[0]) for i in (2, 4, 6)] == [1, 1, 1]
    # the 2×2 global pooling folded into the readout: each weight spread over its window / 4
    readout = net.layers[-1].weight.reshape(10, 64, 2, 2)
    np.testing.assert_allclose(readout, np.repeat(np.repeat(
        model[-1].weight.detach().numpy()[:, :, None, None] * lam[-1] / 4, 2, 2), 2, 3), rtol=1e-12)


def test_ann_macs_count_the_projection_shortcut_with_its_receiving_layer():
    model = build_model("resnet-small", DIGITS, 10, 4)
    macs = count_ann_macs(model, DIGITS)
    assert len(macs) == len(convert(model.eval(), DIGITS).weighted_layers) == 8
    # stem 1→16 at 8×8; identity block: two 16→16 convs, the shortcut adds no MAC
    assert macs[:3] == [9 * 64 * 16, 9 * 16 * 64 * 16, 9 * 16 * 64 * 16]
    # stride-2 block at 4×4: conv1 16→32, conv2 32→32 plus the 1×1 16→32 projection
    assert macs[3:5] == [9 * 16 * 16 * 32, 9 * 32 * 16 * 32 + 16 * 16 * 32]
    assert macs[-1] == 64 * 10


def _stem(levels=4):
    return [nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), NQActivation(levels)]


def _head(channels, side):
    return [nn.AvgPool2d(side), nn.Flatten(), nn.Linear(channels, 3)]


def test_block_straight_after_the_input_is_refused():
    model = nn.Sequential(ResidualBlock(1, 4, 1, 4), *_head(4, 6)).eval()
    with pytest.raises(IRError, match=r"module '0.nq_out'.*architectures.py:\d+: reads the network "
                                      r"input directly.*stem"):
        convert(model, (1, 6, 6))


def test_block_ending_the_network_is_refused():
    model = nn.Sequential(*_stem(), ResidualBlock(4, 4, 1, 4)).eval()
    with pytest.raises(IRError, match=r"module '3.nq_out'.*ends the network.*plain Linear"):
        convert(model, (1, 6, 6))


def _equal_forward(model: nn.Module, shape: tuple) -> None:
    model = _randomise(model, 5)
    x = torch.rand(8, *shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(ir_quantized_forward(convert(model, shape), x, 4), expected,
                               rtol=1e-9, atol=1e-9)


def test_pooling_right_before_a_block_folds_into_both_branches():
    """conv1 takes the pooling in its kernel; the identity shortcut becomes the pooling as a
    stride-2 conv of θ·I ⊗ 1/4 from the stem."""
    model = nn.Sequential(*_stem(), nn.AvgPool2d(2), ResidualBlock(4, 4, 1, 4), *_head(4, 3))
    _equal_forward(model, (1, 6, 6))
    proj = convert(model, (1, 6, 6)).layers[2].extra_inputs[0]
    assert proj.weight.shape == (4, 4, 2, 2) and tuple(proj.stride) == (2, 2)


def test_any_conv_shortcut_and_an_overlapping_global_pool_fold():
    block = ResidualBlock(4, 8, 2, 4)
    block.shortcut = nn.Sequential(nn.Conv2d(4, 8, 1, stride=2, bias=True))  # no BN
    _equal_forward(nn.Sequential(*_stem(), block, *_head(8, 3)), (1, 6, 6))
    # an overlapping pooling before flatten + Linear folds into the Linear by its adjoint
    _equal_forward(nn.Sequential(*_stem(), ResidualBlock(4, 4, 1, 4), nn.AvgPool2d(3, stride=1),
                                 nn.Flatten(), nn.Linear(4 * 4 * 4, 3)), (1, 6, 6))


# ------------------------------------------------------------------ training

def test_training_a_residual_net_measures_sigma_per_nq_layer(tmp_path):
    """One short epoch of resnet-small on digits: σ is measured through the simulator
    (which runs the shortcuts) and there is one σ per NQ layer."""
    from pipeline.config import load_config
    from pipeline.training import train

    cfg = load_config("deploy.yaml", [f"run.dir={tmp_path}", "model.arch=resnet-small", "train.epochs=1",
                                      "nq.sigma_samples=64", "train.select_samples=64"])
    result = train(cfg, progress=False)
    record = result["history"][-1]
    assert len(record["sigma"]) == len(record["lambda"]) == nq_layer_count("resnet-small") == 7
    assert all(np.isfinite(record["sigma"])) and record["sigma"][-1] > 0
    assert 0.0 <= record["snn_val"] <= 1.0
