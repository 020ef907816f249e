"""models.normalize: a per-channel (x - mean) / std folded into the first weighted layers equals
the original network on normalised inputs (exactly up to float rounding without zero padding;
with zero padding, the original on inputs padded with -mean/std), and misfits are refused."""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from models.architectures import build_model
from models.normalize import NormalizationError, fold_input_normalization

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def normalise(x, mean=MEAN, std=STD):
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return (x - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)


def folded_copy(model, mean=MEAN, std=STD):
    return fold_input_normalization(copy.deepcopy(model), mean, std)


def check_equal(model, x, mean=MEAN, std=STD):
    model.eval()
    with torch.no_grad():
        want = model(normalise(x, mean, std))
        got = folded_copy(model, mean, std).eval()(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def test_conv_without_padding_and_linear_fold_exactly():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 2 * 2, 5))
    check_equal(net, torch.rand(6, 3, 8, 8))


def test_pooling_and_flatten_before_the_first_layer():
    check_equal(nn.Sequential(nn.MaxPool2d(2), nn.AvgPool2d(2), nn.Conv2d(3, 4, 1)),
                torch.rand(4, 3, 8, 8))
    # a Linear after flatten: each channel is a block of H*W features
    check_equal(nn.Sequential(nn.Flatten(), nn.Dropout(), nn.Linear(3 * 2 * 2, 5)),
                torch.rand(4, 3, 2, 2))


def test_flat_vectors_per_feature_and_shared():
    net = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    x = torch.rand(5, 6)
    mean, std = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    with torch.no_grad():
        want = net((x - torch.tensor(mean)) / torch.tensor(std))
        got = folded_copy(net, mean, std)(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    check_equal(nn.Sequential(nn.Linear(6, 2)), x, [0.3], [0.2])   # one value for every feature


def test_grouped_conv_and_conv_without_bias_before_batchnorm():
    check_equal(nn.Sequential(nn.Conv2d(3, 6, 3, groups=3), nn.ReLU()), torch.rand(4, 3, 7, 7))
    net = nn.Sequential(nn.Conv2d(3, 5, 3, bias=False), nn.BatchNorm2d(5), nn.ReLU())
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.5, 2)
    check_equal(net, torch.rand(4, 3, 7, 7))
    keys = set(net.state_dict())
    assert set(fold_input_normalization(copy.deepcopy(net), MEAN, STD).state_dict()) == keys
    # no BatchNorm after it: the layer gets a bias
    lone = fold_input_normalization(nn.Sequential(nn.Conv2d(3, 2, 1, bias=False)), MEAN, STD)
    assert lone[0].bias is not None


def test_on_a_graph_module_and_a_registry_model():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    gm = fx.symbolic_trace(net)
    check_equal(gm, torch.rand(2, 3, 6, 6))
    model = build_model("cnn-small", (3, 8, 8), 10, 4, noise=False)
    keys = set(model.state_dict())
    with pytest.warns(UserWarning, match="zero-pad"):
        fold_input_normalization(model, MEAN, STD)
    assert set(model.state_dict()) == keys


def test_zero_padding_equals_the_original_on_input_padded_with_minus_mean_over_std():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.rand(3, 3, 6, 6)
    with torch.no_grad():
        padded = normalise(F.pad(x, (1, 1, 1, 1)))   # raw 0 at the border = -m/s normalised
        want = F.conv2d(padded, conv.weight, conv.bias)
        plain = conv(normalise(x))
        with pytest.warns(UserWarning, match="zero-pad"):
            folded = folded_copy(nn.Sequential(conv))
        got = folded(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the interior is the original's; the border is not
    torch.testing.assert_close(got[..., 1:-1, 1:-1], plain[..., 1:-1, 1:-1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got[..., 0, :], plain[..., 0, :], atol=1e-3)


def test_reflect_padding_is_exact_and_silent():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_equal(net, torch.rand(2, 3, 5, 5))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(x) + x


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(torch.relu(self.conv(x)))


@pytest.mark.parametrize("net, mean, std, needle", [
    (Residual(), MEAN, STD, "add"),
    (Twice(), MEAN, STD, "called 2 times"),
    (nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 2, 1)), MEAN, STD, "before any"),
    (nn.Sequential(nn.Conv2d(2, 2, 1)), MEAN, STD, "2 input channels"),
    (nn.Sequential(nn.Linear(7, 2)), [0.5, 0.5], [0.2, 0.2], "do not divide"),
    (nn.Sequential(nn.Conv2d(3, 2, 1)), MEAN, [0.2, 0.0, 0.2], "std > 0"),
    (nn.Sequential(nn.Conv2d(3, 2, 1)), MEAN, [0.2], "same length"),
])
def test_misfits_are_refused_with_a_one_line_error(net, mean, std, needle):
    with pytest.raises(NormalizationError, match=needle) as info:
        fold_input_normalization(net, mean, std)
    assert "\n" not in str(info.value) and "data.mean" in str(info.value)


def test_on_a_captured_network():
    from models.capture import capture
    net = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 3 * 3, 4))
    gm = capture(net, (3, 8, 8), levels=4, noise=False)
    check_equal(gm, torch.rand(4, 3, 8, 8))
