"""ONNX in: a network saved as ONNX (by PyTorch, Keras via tf2onnx, TensorFlow ...) as a torch module.

:func:`module_from_onnx` reads the file (a regular file of at most :data:`MAX_ONNX_BYTES`,
read once into memory), checks it with ``onnx.checker`` and converts it with onnx2torch
into a ``torch.fx.GraphModule``. That module then goes through :func:`models.capture.capture`
like any user network. Reading an ONNX file runs no code: it is a protobuf message that is
parsed, never executed (unlike a pickle). Weights kept in side files (ONNX "external data")
are refused: only the one named file is read.

onnx2torch turns most ONNX nodes into torch's modules (Conv2d, BatchNorm, ReLU, ReLU6,
MaxPool2d, AvgPool2d, Flatten, Linear for a Gemm of constant weights) and the rest into its
own; :func:`module_from_onnx` rewrites those into plain torch so the capture sees the
operations it knows: ``Add`` -> ``+``, ``Concat`` -> ``torch.cat``, ``GlobalAveragePool`` ->
``AdaptiveAvgPool2d(1)``, ``Clip(0, m)`` -> ``Hardtanh(0, m)``, a ``Reshape`` to a constant
2-D shape -> ``torch.flatten(x, 1)`` (the exporter bakes the batch size into that shape).
Any other onnx2torch node is refused here, named by its ONNX operation and node. Module
names are made plain identifiers (onnx2torch names them after ONNX nodes, e.g. ``0/Conv``).
Both packages are the ``onnx`` extra (``pip install -e '.[onnx]'``).

Every failure (no such file, not ONNX, a model the checker rejects, an operation onnx2torch
cannot convert) is one :class:`OnnxImportError` whose message names the file.
"""
from __future__ import annotations

import operator
import re
from pathlib import Path

import torch
from torch import fx, nn

from hardware.errors import ToolkitError
from hardware.formats.files import read_regular

#: Largest .onnx file read, in bytes (protobuf's own limit is 2 GiB; VGG-16 for ImageNet is 0.55 GB).
MAX_ONNX_BYTES = 1 << 30


class OnnxImportError(ToolkitError, ValueError):
    """An ONNX file that is missing, corrupt, or not convertible to a torch module; the message
    names the file."""


def _parse(path: Path):
    """The checked ``onnx.ModelProto`` of ``path``."""
    try:
        import onnx
        from onnx.external_data_helper import uses_external_data
    except ImportError:
        raise OnnxImportError(f"{path}: reading ONNX needs the onnx and onnx2torch packages "
                              "(pip install -e '.[onnx]')") from None
    data = read_regular(path, MAX_ONNX_BYTES, "model.onnx", OnnxImportError)
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and whatever else a damaged file raises
        raise OnnxImportError(f"{path}: not an ONNX model ({_one_line(exc)})") from None
    if any(uses_external_data(t) for t in model.graph.initializer):
        raise OnnxImportError(f"{path}: the model keeps its weights in external data files; "
                              "save it with the weights inside the .onnx file")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx.checker.ValidationError and its C++ relatives
        raise OnnxImportError(f"{path}: the ONNX checker rejects the model ({_one_line(exc)})") from None
    return model


def module_from_onnx(path: str | Path) -> fx.GraphModule:
    """The network in the ONNX file ``path`` as a torch module of plain torch operations (see
    the module doc), in eval mode."""
    path = Path(path)
    model = _parse(path)
    from onnx2torch import convert
    try:
        module = convert(model)
    except Exception as exc:  # NotImplementedError for an operation without a converter, and others
        raise OnnxImportError(f"{path}: onnx2torch cannot convert the model ({_one_line(exc)})") from None
    return _plain_torch(module, path).eval()


def _plain_torch(gm: fx.GraphModule, path: Path) -> fx.GraphModule:
    """``gm`` with onnx2torch's own modules rewritten into plain torch and plain module names."""
    from onnx2torch.node_converters.constant import OnnxConstant
    modules = dict(gm.named_modules())
    graph, root, env = fx.Graph(), {}, {}
    constants = {n for n in gm.graph.nodes if n.op == "call_module" and isinstance(modules[n.target], OnnxConstant)}
    for node in gm.graph.nodes:
        if node in constants:
            continue
        if any(arg in constants for arg in node.all_input_nodes) and not _is(modules, node, "OnnxReshape"):
            raise _refused(path, node, modules, "with a constant tensor operand")
        if node.op == "placeholder":
            env[node] = graph.placeholder(_plain_name(node.target, {}))
        elif node.op == "output":
            graph.output(fx.map_arg(node.args[0], env.__getitem__))
        elif node.op == "call_module":
            env[node] = _rewrite(node, modules, graph, root, env, path)
        else:
            raise _refused(path, node, modules, "a weight tensor outside Conv, Gemm and BatchNorm")
    return fx.GraphModule(root, graph, class_name="OnnxModel")


def _rewrite(node: fx.Node, modules: dict, graph: fx.Graph, root: dict, env: dict, path: Path) -> fx.Node:
    """The plain-torch node that replaces the call of one onnx2torch module."""
    module = modules[node.target]
    args = [env.get(a) for a in node.args]
    kind = type(module).__name__
    if kind == "OnnxReshape":
        shape = modules[node.args[1].target].value if node.args[1].op == "call_module" else None
        if shape is None or len(shape) != 2 or not isinstance(node.args[0], fx.Node):
            raise _refused(path, node, modules, "to a shape other than a constant (batch, features)")
        return graph.call_function(torch.flatten, (args[0], 1))
    if kind == "OnnxBinaryMathOperation":
        if module.math_op_function is not torch.add or module.broadcast:
            raise _refused(path, node, modules, "Sub, Mul, Div or a broadcast Add")
        return graph.call_function(operator.add, tuple(args))
    if kind == "OnnxConcat":
        return graph.call_function(torch.cat, (args,), {"dim": module.axis})
    if kind.startswith("OnnxGlobalAveragePool"):
        module = nn.AdaptiveAvgPool2d(1)
    elif kind == "OnnxClip" and module.min_val == 0 and module.max_val is not None:
        module = nn.Hardtanh(0.0, float(module.max_val))
    elif kind.startswith("Onnx"):
        raise _refused(path, node, modules, "")
    name = _plain_name(node.target, root)
    root[name] = module
    return graph.call_module(name, tuple(args))


def _is(modules: dict, node: fx.Node, kind: str) -> bool:
    return node.op == "call_module" and type(modules[node.target]).__name__ == kind


def _plain_name(target: str, taken: dict) -> str:
    """``target`` as an identifier (ONNX node names hold '/', ':' or '.'), not a key of ``taken``."""
    name = re.sub(r"\W", "_", str(target)).strip("_") or "node"
    name = name if name[0].isalpha() else f"n_{name}"
    unique, k = name, 1
    while unique in taken:
        unique, k = f"{name}_{k}", k + 1
    return unique


def _refused(path: Path, node: fx.Node, modules: dict, detail: str) -> OnnxImportError:
    kind = [type(modules[node.target]).__name__] if node.op == "call_module" else []
    return OnnxImportError(f"{path}: ONNX node {node.target!r} ({', '.join(kind + [detail] if detail else kind)}): "
                           "not an operation this project converts")


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
