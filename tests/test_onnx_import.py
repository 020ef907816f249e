"""ONNX in: networks exported by torch.onnx come back as plain-torch modules that compute the
same function; damaged, unsupported and oversized files are refused in one line naming the file."""
from __future__ import annotations

import operator
import warnings

import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnx2torch")

from models import onnx_import  # noqa: E402
from models.onnx_import import OnnxImportError, module_from_onnx  # noqa: E402


class Residual(nn.Module):
    """Residual addition, channel concatenation, ReLU6, global pooling and flatten-by-view."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(4, 2, 1)
        self.clip = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        a = torch.relu(self.stem(x))
        b = torch.relu(self.conv2(torch.relu(self.conv1(a))) + a)
        c = torch.cat([b, self.clip(self.conv3(b))], 1)
        return self.fc(self.pool(c).view(x.shape[0], -1))


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 10))


def exported(module: nn.Module, path, x: torch.Tensor):
    torch.manual_seed(0)
    module.eval()
    torch.onnx.export(module, x, str(path))
    return path


@pytest.mark.parametrize("build", [small_cnn, Residual])
def test_forward_equals_the_original(tmp_path, build):
    torch.manual_seed(0)
    original = build()
    if isinstance(original, nn.Sequential):  # trained-like BN statistics, not the identity
        original[1].running_mean.uniform_(-0.5, 0.5)
        original[1].running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, 1, 8, 8)
    module = module_from_onnx(exported(original, tmp_path / "m.onnx", x))
    kinds = {type(m).__module__.split(".")[0] for m in module.modules()}
    assert kinds == {"torch"}, kinds  # onnx2torch's own modules rewritten into torch's
    with torch.no_grad():
        torch.testing.assert_close(module(x), original(x), rtol=1e-5, atol=1e-5)
        # the batch size the exporter baked into the reshape is gone
        torch.testing.assert_close(module(x[:1]), original(x[:1]), rtol=1e-5, atol=1e-5)


def test_plain_torch_operations_and_names(tmp_path):
    x = torch.rand(2, 1, 8, 8)
    module = module_from_onnx(exported(Residual(), tmp_path / "r.onnx", x))
    functions = {n.target for n in module.graph.nodes if n.op == "call_function"}
    assert functions == {operator.add, torch.cat, torch.flatten}
    names = [name for name, _ in module.named_children()]
    assert all(name.isidentifier() for name in names), names
    assert any(isinstance(m, nn.Hardtanh) for m in module.modules())  # ReLU6 = Clip(0, 6)
    assert any(isinstance(m, nn.AdaptiveAvgPool2d) for m in module.modules())


@pytest.mark.parametrize("build", [small_cnn, Residual])
def test_capture_takes_the_module(tmp_path, build):
    capture = pytest.importorskip("models.capture")
    from models.converter import convert
    module = module_from_onnx(exported(build(), tmp_path / "m.onnx", torch.rand(2, 1, 8, 8)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MaxPool2d becomes average pooling, said in a warning
        gm = capture.capture(module, (1, 8, 8), levels=4, noise=False)
    net = convert(gm, (1, 8, 8), "if_soft")
    from hardware import ir
    relus = sum(isinstance(m, (nn.ReLU, nn.Hardtanh)) for m in module.modules())
    weighted = [layer for layer in net.layers if isinstance(layer, (ir.Conv, ir.Dense))]
    assert len(weighted) == relus + 1  # a spiking layer per activation, and the readout


class Unsupported(nn.Module):
    def forward(self, x):
        return torch.sigmoid(x) * 2.0


@pytest.mark.parametrize("content, words", [
    (b"not a protobuf \xff\xfe", "not an ONNX model"),
    (b"", "the ONNX checker rejects the model"),
])
def test_damaged_files_are_refused(tmp_path, content, words):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(OnnxImportError, match=words) as err:
        module_from_onnx(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_unsupported_and_missing_are_refused(tmp_path):
    path = exported(Unsupported(), tmp_path / "u.onnx", torch.rand(2, 3))
    with pytest.raises(OnnxImportError, match="not an operation this project converts") as err:
        module_from_onnx(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(OnnxImportError, match="no such file"):
        module_from_onnx(tmp_path / "absent.onnx")


def test_size_cap(tmp_path, monkeypatch):
    path = exported(small_cnn(), tmp_path / "m.onnx", torch.rand(2, 1, 8, 8))
    monkeypatch.setattr(onnx_import, "MAX_ONNX_BYTES", 100)
    with pytest.raises(OnnxImportError, match="more than the limit"):
        module_from_onnx(path)
