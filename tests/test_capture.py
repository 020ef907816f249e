"""A user's own networks through capture and the one converter: the captured QCFS network's
forward equals the IR's float forward, the integer IR runs bit-exactly in Lava, torchvision's
ResNet and VGG export, and every unsupported operation is refused by name and line."""
from __future__ import annotations

import inspect
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hardware.fixed_point.quantize import quantize
from hardware.formats.netx import write_net
from hardware.ir import Conv, Dense
from hardware.simulator import encode_input, simulate
from models.architectures import nq_layers
from models.capture import CaptureError, capture
from models.converter import convert, ir_quantized_forward
from tests.random_ann import forward_with_activity, randomise

LEVELS = 4


class ResidualNet(nn.Module):
    """Residual sums by ``+`` (identity shortcut) and ``torch.add`` (1×1 stride-2 projection),
    a sum of a conv and an identity on one source (merged into one kernel), an overlapping
    3×3 max-pooling (a spiking pooling layer), functional ReLUs, adaptive pooling."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv1, self.bn1, self.conv1b = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1)
        self.conv2, self.act = nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU6()
        self.conv2b, self.proj = nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(4, 6, 1, stride=2)
        self.conv3 = nn.Conv2d(6, 6, 3, padding=1)
        self.gap, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(6, 3)

    def forward(self, x):
        x = self.pool(self.stem(x))
        x = F.relu(self.conv1b(F.relu(self.bn1(self.conv1(x)))) + x)
        x = torch.relu(torch.add(self.conv2b(self.act(self.conv2(x))), self.proj(x)))
        x = F.relu(self.conv3(x) + x)
        return self.fc(torch.flatten(self.gap(x), 1))


class ConcatNet(nn.Module):
    """Channel concatenation (DenseNet-style), Hardtanh(0, 1), 2×2 max-pooling, flatten by
    ``view``, BatchNorm1d, clamp at zero, dropout, an adaptive pooling into a Linear, and a
    final log-softmax (dropped: the captured network returns the logits)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(2, 3, 3, padding=1), nn.Hardtanh(0.0, 1.0)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.conv3, self.bn3 = nn.Conv2d(6, 4, 1), nn.BatchNorm2d(4)
        self.pool, self.grow = nn.MaxPool2d(2), nn.AdaptiveAvgPool2d((4, 4))
        self.fc, self.bn = nn.Linear(4 * 4 * 4, 8), nn.BatchNorm1d(8)
        self.drop, self.out = nn.Dropout(0.3), nn.Linear(8, 3)

    def forward(self, x):
        a = self.act1(self.conv1(x))
        b = torch.relu(self.conv2(a))
        c = self.pool(torch.clamp(self.bn3(self.conv3(torch.cat([a, b], dim=1))), min=0))
        c = self.grow(c)
        h = F.relu(self.bn(self.fc(c.view(c.size(0), -1))))
        return F.log_softmax(self.out(self.drop(h)), dim=1)


class MixedNet(nn.Module):
    """Functional poolings; a 2×2 pooling before a depthwise conv (which cannot take it into
    its kernel: the pooling becomes a spiking layer); a residual sum of dense layers."""

    def __init__(self):
        super().__init__()
        self.stem, self.depthwise = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.pointwise = nn.Conv2d(4, 4, 1)
        self.fc1, self.fc2, self.fc3, self.out = nn.Linear(16, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.stem(x)), 2)
        x = F.relu(self.pointwise(F.relu(self.depthwise(x))))
        h1 = F.relu(self.fc1(F.avg_pool2d(x, 2).flatten(1)))
        h3 = F.relu(self.fc3(F.relu(self.fc2(h1))) + h1)
        return self.out(h3)


NETS = {"residual": (ResidualNet, (1, 8, 8)), "concat": (ConcatNet, (2, 6, 6)), "mixed": (MixedNet, (1, 8, 8))}


def _captured(name: str, seed: int = 0):
    cls, shape = NETS[name]
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = capture(cls(), shape, levels=LEVELS)
    return randomise(gm, seed, threshold_low=0.3, threshold_span=0.5), shape


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("seed", [0, 1])
def test_ir_forward_equals_the_captured_network(name, seed):
    gm, shape = _captured(name, seed)
    x = torch.rand(16, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    expected, active = forward_with_activity(gm, x)
    assert min(active) > 0.02, f"vacuous: a silent layer {active}"
    net = convert(gm, shape)
    assert len(net.weighted_layers) == len(nq_layers(gm)) + 1
    torch.testing.assert_close(ir_quantized_forward(net, x, LEVELS), expected, rtol=1e-9, atol=1e-9)
    # the shortcuts and concatenated branches are extra inputs, and they matter
    assert any(layer.extra_inputs for layer in net.weighted_layers)


def test_residual_net_structure():
    gm, shape = _captured("residual")
    # activations keep their module names; the overlapping pooling got its own NQ activation
    names = [n for n, m in gm.named_modules() if type(m).__name__ == "NQActivation"]
    assert names == ["stem.2", "pool_nq", "nq_relu", "nq_relu_1", "act", "nq_relu_2", "nq_relu_3"]
    net = convert(gm, shape)
    pool = net.layers[1]
    assert isinstance(pool, Conv) and pool.weight.shape == (4, 4, 3, 3) and tuple(pool.stride) == (2, 2)
    identity, projection = net.layers[3].extra_inputs[0], net.layers[5].extra_inputs[0]
    assert identity.source == "conv1" and identity.weight.shape == (4, 4, 1, 1)
    assert projection.source == "conv3" and tuple(projection.stride) == (2, 2)
    # conv3(x) + x on one source: one kernel, the identity θ·I added at its centre
    theta = float(nq_layers(gm)[5].threshold)
    merged, conv3 = net.layers[6], gm.conv3.weight.detach().double().numpy() * theta
    assert not merged.extra_inputs
    np.testing.assert_allclose(merged.weight[:, :, 1, 1] - conv3[:, :, 1, 1], theta * np.eye(6), atol=1e-12)


def test_concat_splits_the_receiving_conv():
    gm, shape = _captured("concat")
    net = convert(gm, shape)
    conv3 = net.layers[2]
    assert conv3.weight.shape == (4, 3, 1, 1) and conv3.extra_inputs[0].source == "conv0"
    theta = [float(m.threshold) for m in nq_layers(gm)]
    w, b = gm.conv3.weight.detach().double(), gm.bn3
    scale = (b.weight / torch.sqrt(b.running_var + b.eps)).detach().double().view(-1, 1, 1, 1)
    np.testing.assert_allclose(conv3.weight, (w * scale)[:, 3:].numpy() * theta[1], rtol=1e-12)
    np.testing.assert_allclose(conv3.extra_inputs[0].weight, (w * scale)[:, :3].numpy() * theta[0],
                               rtol=1e-12)
    # the 2×2 pooling and the 3×3 → 4×4 adaptive pooling fold into the Linear's weights
    assert isinstance(net.layers[-2], Dense) and net.layers[-2].weight.shape == (8, 4 * 6 * 6)


def test_state_dict_of_the_original_loads_and_maxpool_warns():
    model = ConcatNet()
    with pytest.warns(UserWarning) as records:
        gm = capture(model, (2, 6, 6), levels=LEVELS)
    messages = [str(r.message) for r in records]
    assert any(re.search(r"max-pooling 'pool'.*test_capture.py:\d+.*average pooling", m) for m in messages)
    assert any(re.search(r"final F.log_softmax.*test_capture.py:\d+.*dropped", m) for m in messages)
    missing, unexpected = gm.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.endswith(("threshold", "sigma")) for k in missing)
    assert sorted(missing) == sorted(f"{n}.{p}" for n in ("act1", "nq_relu", "nq_clamp", "nq_relu_1")
                                     for p in ("threshold", "sigma"))


@pytest.mark.lava
@pytest.mark.parametrize("name", sorted(NETS))
def test_captured_network_runs_bit_exactly_in_lava(name):
    from hardware.runtime.runner import run_lava

    T = 4
    gm, shape = _captured(name, 4)  # a seed where every layer spikes within T
    qnet = quantize(convert(gm, shape), input_bits=8, readout_steps=T)
    x = encode_input(torch.rand(2, *shape, generator=torch.Generator().manual_seed(3)), 8)
    sim = simulate(qnet, x, T)
    res = run_lava(qnet, x, T, progress=False, probes="counts")
    assert np.abs(sim.output_potential[-1].numpy()).max() > 0
    assert np.array_equal(res.output_potential, sim.output_potential[-1].numpy())
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(res.layer_counts, sim.layer_counts))
    assert all(c.sum() > 0 for c in res.layer_counts[:-1]), "vacuous: a silent layer"


# ------------------------------------------------------------------ torchvision

def _torchvision_export(model: nn.Module, tmp_path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = capture(model, (3, 32, 32), levels=LEVELS)
    gm = randomise(gm, 0, threshold_low=0.5, threshold_span=0.5)
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    net = convert(gm, (3, 32, 32))
    with torch.no_grad():
        torch.testing.assert_close(ir_quantized_forward(net, x, LEVELS), gm(x), rtol=1e-9, atol=1e-9)
    assert write_net(quantize(net, input_bits=8, readout_steps=4), tmp_path / "net.net").stat().st_size > 0


def test_torchvision_resnet18_converts_and_exports(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    _torchvision_export(torchvision.models.resnet18(weights=None, num_classes=10), tmp_path)


def test_torchvision_vgg_features_convert_and_export(tmp_path):
    """vgg11's features and its 7×7 adaptive pooling (a 1×1 map replicated, folded into the
    first Linear by its adjoint); the 25088×4096 classifier is shrunk to keep this fast."""
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.vgg11(weights=None, num_classes=10)
    model.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 32), nn.ReLU(True), nn.Dropout(),
                                     nn.Linear(32, 10))
    _torchvision_export(model, tmp_path)


@pytest.mark.slow
def test_torchvision_vgg11_converts_and_exports(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    _torchvision_export(torchvision.models.vgg11(weights=None, num_classes=10), tmp_path)


# ------------------------------------------------------------------ refusals

class _Linear4(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)


class Sigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.act = nn.Linear(4, 4), nn.Sigmoid()

    def forward(self, x):
        return self.fc(self.act(self.fc(x)))  # refused


class TorchSigmoid(_Linear4):
    def forward(self, x):
        return self.fc(torch.sigmoid(self.fc(x)))  # refused


class Scale(_Linear4):
    def forward(self, x):
        return self.fc(F.relu(self.fc(x)) * 2)  # refused


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm, self.fc = nn.LSTM(4, 4, batch_first=True), nn.Linear(4, 2)

    def forward(self, x):
        out, _ = self.lstm(x)  # refused
        return self.fc(out[:, -1])


class Upsample(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.up, self.fc = nn.Conv2d(1, 2, 3, padding=1), nn.Upsample(scale_factor=2), nn.Linear(128, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.up(F.relu(self.conv(x))), 1))  # refused


class Branching(_Linear4):
    def forward(self, x):
        if x.sum() > 0:  # refused
            x = -x
        return self.fc(F.relu(self.fc(x)))


class LeakyClip(_Linear4):
    def forward(self, x):
        return self.fc(F.hardtanh(self.fc(x)))  # refused


class TwoLinears(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.c(F.relu(self.b(self.a(x))))  # refused


class WidthCat(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 2, 3, padding=1), nn.Linear(64, 2)

    def forward(self, x):
        y = F.relu(self.conv(x))
        return self.fc(torch.cat([y, y], dim=3).flatten(1))  # refused


class LinearOnMap(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 2, 3, padding=1), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)))  # refused


class SamePadding(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 2, 3, padding="same"), nn.Linear(32, 2)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).flatten(1))  # refused


class MidSoftmax(_Linear4):
    def forward(self, x):
        return self.fc(F.softmax(self.fc(x), dim=1))  # refused


class Parallel(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.a, self.b = nn.Conv2d(1, 2, 1), nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1)
        self.fc = nn.Linear(64, 2)

    def forward(self, x):
        s = F.relu(self.stem(x))
        a = F.relu(self.a(s))
        b = F.relu(self.b(s))  # refused
        return self.fc(torch.cat([a, b], 1).flatten(1))


@pytest.mark.parametrize("cls, shape, name", [
    (LinearOnMap, (1, 4, 4), "Linear (module 'fc')"), (SamePadding, (1, 4, 4), "Conv2d (module 'conv')"),
    (Parallel, (1, 4, 4), "NQActivation (module 'nq_relu_2')"), (MidSoftmax, (4,), "F.softmax"),
    (Sigmoid, (4,), "Sigmoid (module 'act')"), (TorchSigmoid, (4,), "torch.sigmoid"),
    (Scale, (4,), "operator.mul"), (Recurrent, (3, 4), "LSTM (module 'lstm')"),
    (Upsample, (1, 4, 4), "Upsample (module 'up')"), (Branching, (4,), "Branching.forward"),
    (LeakyClip, (4,), "F.hardtanh"), (TwoLinears, (4,), "Linear (module 'b')"),
    (WidthCat, (1, 4, 4), "torch.cat")])
def test_unsupported_operation_is_refused_with_its_name_and_line(cls, shape, name):
    lines, start = inspect.getsourcelines(cls.forward)
    line = start + next(i for i, text in enumerate(lines) if "# refused" in text)
    with pytest.raises(CaptureError) as error:
        capture(cls(), shape, levels=LEVELS)
    message = str(error.value)
    assert name in message and f"test_capture.py:{line}" in message, message


def test_a_wrong_input_shape_names_the_layer_that_fails():
    with pytest.raises(CaptureError, match=r"Linear \(module 'fc'\) at .*test_capture.py:\d+: does not "
                                           r"run on a \(5,\) input"):
        capture(LeakyClip(), (5,), levels=LEVELS)
