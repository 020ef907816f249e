"""Graph capture: a user's ``nn.Module`` as the NQ network the converter folds (torch.fx).

:func:`capture` symbolic-traces the module, refuses what the converter cannot fold exactly
(:class:`CaptureError`: the operation and the user's ``file:line``) and rewrites it:
ReLU / ReLU6 / Hardtanh(0, x) / clamp(min=0) / F.relu / torch.relu become
:class:`models.nq.NQActivation` (a module keeps its qualified name; a second call of one
module gets ``<name>_1``; a function call ``<module path>.nq_<node>``), MaxPool2d (or F.max_pool2d)
becomes AvgPool2d (warned), Dropout and Identity are dropped (a final softmax too, warned), and an average pooling that would
not fold exactly into what reads it gets its own NQ activation ``<pool>_nq`` (it becomes
a spiking layer). Shapes come from a zero input.

The IR's layers (:func:`plan`) are the NQ activations in forward order plus the output
(the readout). Each one's pre-activation is a sum of terms, one per path from an earlier
spiking layer (or the input): a term is at most one weighted op (Conv2d or Linear, with
an optional BatchNorm right after it), linear reshaping before it (average pooling,
flatten/view/reshape, ``torch.cat`` along channels) and a ``cat`` after it. The term
from the previous spiking layer is the layer's main synapse; the others are its extra
inputs (:class:`hardware.ir.Projection`) from earlier layers, which is how residual
additions and channel concatenations become the IR's graph.

Supported calls: see :data:`MODULES`, :data:`ACTIVATION_FUNCTIONS`, :data:`METHODS`.
"""
from __future__ import annotations

import operator
import os
import re
import traceback
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from hardware.errors import IRError

from .nq import NQActivation, check_activation


class CaptureError(IRError):
    """An operation or a topology the converter cannot fold exactly; the message names the
    operation and the line of the user's code it comes from."""


_MODULE_KINDS = {NQActivation: "nq", nn.Conv2d: "conv", nn.Linear: "linear", nn.BatchNorm1d: "bn",
                 nn.BatchNorm2d: "bn", nn.ReLU: "act", nn.ReLU6: "act", nn.Hardtanh: "act",
                 nn.AvgPool2d: "pool", nn.AdaptiveAvgPool2d: "pool", nn.MaxPool2d: "maxpool",
                 nn.Flatten: "flatten", nn.Dropout: "drop", nn.Dropout2d: "drop", nn.Identity: "drop",
                 nn.Softmax: "softmax", nn.LogSoftmax: "softmax"}
#: Module types a captured network may call (exactly these types; everything else is refused).
MODULES = tuple(_MODULE_KINDS)
#: Functions that become an NQ activation (with their arguments checked: clamp at zero).
ACTIVATION_FUNCTIONS = (F.relu, torch.relu, torch.relu_, F.relu6, F.hardtanh, torch.clamp,
                        torch.clamp_min)
_ADD = (operator.add, torch.add)
#: Functional poolings: each becomes its module (then as the module), with its argument names.
_POOL_FUNCTIONS = {F.max_pool2d: (nn.MaxPool2d, ("kernel_size", "stride", "padding", "dilation",
                                                 "ceil_mode", "return_indices")),
                   F.avg_pool2d: (nn.AvgPool2d, ("kernel_size", "stride", "padding", "ceil_mode",
                                                 "count_include_pad", "divisor_override")),
                   F.adaptive_avg_pool2d: (nn.AdaptiveAvgPool2d, ("output_size",))}
_DROP_FUNCTIONS = (F.dropout, F.dropout2d)
_SOFTMAX_FUNCTIONS = (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax)
#: Tensor methods: activations, addition, flattening, and shape queries feeding a view.
METHODS = {"relu": "act", "relu_": "act", "clamp": "act", "clamp_min": "act", "add": "add",
           "view": "flatten", "reshape": "flatten", "flatten": "flatten", "size": "aux",
           "contiguous": "drop", "softmax": "softmax", "log_softmax": "softmax"}
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
#: this package's own frames are never the user's line (architectures.py's are: the registry)
_OWN = tuple(os.path.join(os.path.dirname(os.path.abspath(__file__)), f) for f in ("capture.py", "converter.py"))
_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def user_line(node: fx.Node) -> str:
    """``file:line`` of the innermost frame of the user's code that made ``node``."""
    frames = _FRAME.findall(node.stack_trace or "")
    for path, line in reversed(frames):
        if not path.startswith(_TORCH_DIR) and os.path.abspath(path) not in _OWN:
            return f"{path}:{line}"
    return "an unknown line"


def describe(node: fx.Node, gm: nn.Module | None = None) -> str:
    """The operation of ``node`` as a user would name it."""
    if node.op == "call_module" and gm is not None:
        return f"{type(gm.get_submodule(node.target)).__name__} (module {node.target!r})"
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    if node.op == "get_attr":
        return f"the attribute {node.target!r} used as a tensor"
    target = node.target
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", str(target))
    if module in ("_operator", "operator"):
        return f"operator.{name}"
    if "functional" in module:
        return f"F.{name}"
    return f"torch.{name}" if module.startswith("torch") else name


def fail(node: fx.Node, gm: nn.Module | None, message: str) -> CaptureError:
    return CaptureError(f"{describe(node, gm)} at {user_line(node)}: {message}")


def kind(gm: nn.Module, node: fx.Node) -> str | None:
    """The role of ``node``: input, output, nq, act, conv, linear, bn, pool, maxpool, flatten,
    add, cat, drop, aux; None for an unsupported operation."""
    if node.op in ("placeholder", "output"):
        return "input" if node.op == "placeholder" else "output"
    if node.op == "call_module":
        return _MODULE_KINDS.get(type(gm.get_submodule(node.target)))
    if node.op == "call_method":
        return METHODS.get(node.target)
    if node.op != "call_function":
        return None
    target = node.target
    if target in ACTIVATION_FUNCTIONS:
        return "act"
    if target in _ADD:
        return "add"
    if target is torch.cat:
        return "cat"
    if target is torch.flatten:
        return "flatten"
    if target in _DROP_FUNCTIONS:
        return "drop"
    if target in _SOFTMAX_FUNCTIONS:
        return "softmax"
    if target in (operator.getitem, getattr):
        return "aux"
    return None


class _Tracer(fx.Tracer):
    """Records the user's stack per node; NQ activations stay calls (their noise branch
    reads a buffer)."""

    def __init__(self):
        super().__init__()
        self.record_stack_traces = True

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return isinstance(m, NQActivation) or super().is_leaf_module(m, qualified_name)


def _trace_failure(error: Exception) -> str:
    """The user's ``file:line`` where tracing failed (e.g. a data-dependent ``if``)."""
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if not frame.filename.startswith(_TORCH_DIR) and os.path.abspath(frame.filename) not in _OWN:
            return f"{frame.filename}:{frame.lineno}"
    return "an unknown line"


def trace(module: nn.Module, input_shape: tuple) -> fx.GraphModule:
    """``module`` as a GraphModule with shapes (:func:`shape_of`) for one
    ``input_shape`` sample; an untraceable forward is a :class:`CaptureError`."""
    try:
        graph = _Tracer().trace(module)
    except Exception as e:  # tracing runs the user's forward: any error is theirs
        raise CaptureError(f"{type(module).__name__}.forward cannot be captured at "
                           f"{_trace_failure(e)}: {type(e).__name__}: {e} (data-dependent control "
                           f"flow and Python arithmetic on shapes are not traceable)") from None
    gm = fx.GraphModule(module, graph, class_name=type(module).__name__)
    propagate_shapes(gm, input_shape)
    return gm


def propagate_shapes(gm: fx.GraphModule, input_shape: tuple) -> None:
    """Shapes of every node for a zero sample of ``input_shape`` (eval mode, restored)."""
    param = next(iter(gm.parameters()), None)
    dtype = param.dtype if param is not None else torch.float32
    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            _Shapes(gm).propagate(torch.zeros(1, *input_shape, dtype=dtype))
    finally:
        gm.train(was_training)


class _Shapes(fx.Interpreter):
    """Records each node's output shape (``Interpreter.run`` is avoided: its progress bar
    fixes the multiprocessing start method before Lava sets its own)."""

    def propagate(self, x: torch.Tensor) -> None:
        self.env, self.args_iter = {}, iter([x])
        for node in self.module.graph.nodes:
            try:
                self.env[node] = self.run_node(node)
            except Exception as e:  # the user's module failing on the declared input shape
                raise fail(node, self.module, f"does not run on a {tuple(x.shape[1:])} input: "
                                              f"{type(e).__name__}: {e}") from None
            shape = getattr(self.env[node], "shape", None)
            node.meta["shape"] = None if shape is None else tuple(int(s) for s in shape[1:])


def shape_of(node) -> tuple | None:
    """(C, H, W) or (N,) of a tensor node (without the batch axis); None for non-tensors."""
    return node.meta.get("shape") if isinstance(node, fx.Node) else None


# --------------------------------------------------------------------------
# refusal of what does not fold
# --------------------------------------------------------------------------

def _argument(node: fx.Node, position: int, name: str, default=None):
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(name, default)


def _is_zero(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0


def _check_activation_call(gm: nn.Module, node: fx.Node) -> None:
    """An activation call must be a ReLU clipped at zero (ReLU6/Hardtanh/clamp with min 0)."""
    target = node.target
    if node.op == "call_module":
        module = gm.get_submodule(target)
        if isinstance(module, nn.Hardtanh) and not isinstance(module, nn.ReLU6) and module.min_val != 0:
            raise fail(node, gm, f"min_val {module.min_val} is not 0; only a ReLU-like clip at "
                                 f"zero becomes an NQ activation")
        return
    if target is F.hardtanh:
        low = _argument(node, 1, "min_val", -1.0)
    elif target in (torch.clamp, torch.clamp_min) or node.target in ("clamp", "clamp_min"):
        low = _argument(node, 1, "min")
    else:
        return
    if not _is_zero(low):
        raise fail(node, gm, f"the lower bound {low!r} is not 0; only a clip at zero becomes an "
                             f"NQ activation")


def _check_geometry(gm: nn.Module, node: fx.Node) -> None:
    """Conv padding as numbers; pooling without dilation or returned indices."""
    module = gm.get_submodule(node.target)
    if isinstance(module, nn.Conv2d) and (isinstance(module.padding, str)
                                          or module.padding_mode != "zeros"):
        raise fail(node, gm, f"padding {module.padding!r} / padding_mode {module.padding_mode!r}: "
                             f"only numeric zero padding folds")
    if isinstance(module, nn.MaxPool2d) and (module.return_indices or
                                             _pair(module.dilation) != (1, 1)):
        raise fail(node, gm, "a dilated max-pooling or one returning indices has no average-"
                             "pooling equivalent")
    if isinstance(module, nn.AvgPool2d) and module.divisor_override is not None:
        raise fail(node, gm, "a divisor override is not an average")


def _check_data_node(gm: nn.Module, node: fx.Node, k: str) -> None:
    """Arguments of additions, concatenations, flattens and shape queries."""
    if k == "add":
        operands = [a for a in node.args[:2]]
        if len(operands) != 2 or not all(shape_of(a) is not None for a in operands) \
                or _argument(node, 2, "alpha", 1) != 1:
            raise fail(node, gm, "only the sum of two tensors (residual addition) is supported")
        if shape_of(operands[0]) != shape_of(operands[1]):
            raise fail(node, gm, f"the branches have shapes {shape_of(operands[0])} and "
                                 f"{shape_of(operands[1])}; broadcasting does not fold")
    elif k == "cat":
        tensors, dim = _argument(node, 0, "tensors"), _argument(node, 1, "dim", 0)
        rank = len(shape_of(node)) + 1
        if dim not in (1, 1 - rank) or not all(shape_of(t) is not None for t in tensors):
            raise fail(node, gm, f"concatenation along dim {dim}: only channels (dim 1) fold")
    elif k == "flatten":
        source = shape_of(node.args[0])
        size = 1
        for s in source:
            size *= s
        if shape_of(node) != (size,):
            raise fail(node, gm, f"reshapes {source} to {shape_of(node)}; only flattening each "
                                 f"sample to a vector folds")
    elif k == "softmax":
        if len(shape_of(node)) != 1 or [u.op for u in node.users] != ["output"]:
            raise fail(node, gm, "a softmax is dropped only where it makes the returned logits "
                                 "probabilities (the last operation, on a vector)")
    elif k == "aux":
        for user in node.users:
            if kind(gm, user) not in ("aux", "flatten"):
                raise fail(user, gm, "uses a tensor's size as data; only view/reshape may read it")


def check_nodes(gm: fx.GraphModule) -> None:
    """Refuse the first node (in forward order) the converter cannot fold."""
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise CaptureError(f"forward takes {len(inputs)} inputs; a captured network takes one tensor")
    for node in gm.graph.nodes:
        k = kind(gm, node)
        if k is None:
            raise fail(node, gm, "is not a supported operation (supported: Conv2d, Linear, "
                                 "BatchNorm, ReLU/ReLU6/Hardtanh(0)/clamp(min=0), AvgPool2d, "
                                 "AdaptiveAvgPool2d, MaxPool2d, Flatten/view/reshape, Dropout, "
                                 "Identity, + of two branches, torch.cat along channels)")
        if k == "output" and not isinstance(node.args[0], fx.Node):
            raise fail(node, gm, "forward must return one tensor (the logits)")
        if k == "act":
            _check_activation_call(gm, node)
        elif node.op == "call_module" and k != "softmax":
            _check_geometry(gm, node)
        else:
            _check_data_node(gm, node, k)


def _pair(value) -> tuple:
    return (value, value) if isinstance(value, int) else tuple(value)


# --------------------------------------------------------------------------
# rewriting into the NQ network
# --------------------------------------------------------------------------

def _free_name(gm: nn.Module, path: str, stem: str) -> str:
    """``path.stem`` (or ``path.stem_k``) not yet taken in ``gm``."""
    parent = gm.get_submodule(path) if path else gm
    name, k = stem, 0
    while hasattr(parent, name):
        k += 1
        name = f"{stem}_{k}"
    return f"{path}.{name}" if path else name


def _install(gm: fx.GraphModule, qualified: str, module: nn.Module) -> None:
    path, _, name = qualified.rpartition(".")
    parent = gm.get_submodule(path) if path else gm
    setattr(parent, name, module)


def _module_path(node: fx.Node) -> str:
    """The qualified name of the module whose forward made ``node`` ('' for the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else ""


def _modular_pools(gm: fx.GraphModule) -> None:
    """Each functional pooling (``F.max_pool2d`` …) becomes a call of its module at
    ``<module path>.<node name>``, so that it is checked and rewritten as a module."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _POOL_FUNCTIONS:
            continue
        cls, names = _POOL_FUNCTIONS[node.target]
        params = {**dict(zip(names, node.args[1:])), **node.kwargs}
        if any(isinstance(v, fx.Node) for v in params.values()):
            raise fail(node, gm, "pooling parameters computed from tensors do not fold")
        _replace_with_module(gm, node, _free_name(gm, _module_path(node), node.name), cls(**params))
    gm.recompile()


def _replace_with_module(gm: fx.GraphModule, node: fx.Node, qualified: str, module: nn.Module) -> None:
    """``node`` becomes a call of ``module`` installed at ``qualified`` on its first argument."""
    _install(gm, qualified, module)
    with gm.graph.inserting_after(node):
        call = gm.graph.call_module(qualified, (node.args[0],))
    call.meta = dict(node.meta)
    node.replace_all_uses_with(call)
    gm.graph.erase_node(node)


def _rewrite(gm: fx.GraphModule, make_nq) -> None:
    """Activations → NQ, MaxPool2d → AvgPool2d (warned), Dropout/Identity dropped."""
    replaced: set = set()
    kinds = {node: kind(gm, node) for node in gm.graph.nodes}  # before any module is replaced
    for node in list(gm.graph.nodes):
        k = kinds[node]
        if k in ("drop", "softmax"):
            if k == "softmax":
                warnings.warn(f"the final {describe(node, gm)} ({user_line(node)}) is dropped: the "
                              f"network returns the logits (argmax, and cross-entropy over a "
                              f"log-softmax, are unchanged)", stacklevel=3)
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
        elif k == "act":
            if node.op == "call_module" and node.target not in replaced:
                replaced.add(node.target)
                _replace_with_module(gm, node, node.target, make_nq())
            elif node.op == "call_module":
                path, _, stem = node.target.rpartition(".")
                _replace_with_module(gm, node, _free_name(gm, path, stem), make_nq())
            else:
                _replace_with_module(gm, node, _free_name(gm, _module_path(node), f"nq_{node.name}"),
                                     make_nq())
        elif k == "maxpool":
            pool = gm.get_submodule(node.target)
            warnings.warn(f"max-pooling {node.target!r} ({user_line(node)}) is replaced by average "
                          f"pooling of the same window, as the NQ conversion method does "
                          f"(max-pooling has no exact spiking equivalent)", stacklevel=3)
            _install(gm, node.target, nn.AvgPool2d(pool.kernel_size, pool.stride, pool.padding,
                                                   ceil_mode=pool.ceil_mode))
    gm.graph.lint()
    gm.recompile()


def pool_geometry(module: nn.Module, in_shape: tuple) -> tuple | None:
    """(kernel, stride, padding) of an average pooling, as pairs; None for an adaptive one
    whose output does not divide its input (only a Linear can absorb it)."""
    if isinstance(module, nn.AdaptiveAvgPool2d):
        out = tuple(in_shape[1 + i] if s is None else s for i, s in enumerate(_pair(module.output_size)))
        if in_shape[1] % out[0] or in_shape[2] % out[1]:
            return None
        kernel = (in_shape[1] // out[0], in_shape[2] // out[1])
        return kernel, kernel, (0, 0)
    return _pair(module.kernel_size), _pair(module.stride or module.kernel_size), _pair(module.padding)


def structured_pool(module: nn.Module, in_shape: tuple) -> bool:
    """A non-overlapping, unpadded, floor-mode pooling: the fold the converter does exactly
    by kernel expansion (into a conv it must also divide the map)."""
    geometry = pool_geometry(module, in_shape)
    if geometry is None or getattr(module, "ceil_mode", False):
        return False
    kernel, stride, padding = geometry
    return kernel == stride and padding == (0, 0)


def conv_pool(module: nn.Module, in_shape: tuple) -> bool:
    """An average pooling that is one fixed depthwise convolution (floor mode, padding
    counted in the average, an adaptive output dividing the input)."""
    geometry = pool_geometry(module, in_shape)
    return geometry is not None and not getattr(module, "ceil_mode", False) and \
        (getattr(module, "count_include_pad", True) or geometry[2] == (0, 0))


def _divides(module: nn.Module, in_shape: tuple) -> bool:
    kernel = pool_geometry(module, in_shape)[0]
    return in_shape[1] % kernel[0] == 0 and in_shape[2] % kernel[1] == 0


def _consumers(gm: fx.GraphModule, node: fx.Node) -> set:
    """The weighted ops, activations and outputs that ``node``'s value reaches through
    linear reshaping and sums (the ops whose synapse a pooling before them must join)."""
    found: set = set()
    for user in node.users:
        k = kind(gm, user)
        if k in ("pool", "flatten", "cat", "add"):
            found |= _consumers(gm, user)
        elif k != "aux":  # aux: a size feeding a view
            found.add(user)
    return found


def _pool_needs_spikes(gm: fx.GraphModule, node: fx.Node) -> bool:
    """True when a conv reads the pooling and cannot take it into its kernel (it overlaps,
    pads, does not divide the map, or the conv is grouped or dilated); a Linear absorbs
    any pooling and an activation reads it as its synapse."""
    module, in_shape = gm.get_submodule(node.target), shape_of(node.args[0])
    expands = structured_pool(module, in_shape) and _divides(module, in_shape)
    for user in _consumers(gm, node):
        if kind(gm, user) != "conv":
            continue
        conv = gm.get_submodule(user.target)
        if not expands or conv.groups != 1 or _pair(conv.dilation) != (1, 1):
            return True
    return False


def _spiking_pools(gm: fx.GraphModule, make_nq) -> None:
    """A pooling that a conv reads but cannot take in (:func:`_pool_needs_spikes`) gets its
    own NQ activation: a spiking layer whose synapse is the pooling itself."""
    for node in list(gm.graph.nodes):
        if kind(gm, node) != "pool" or not _pool_needs_spikes(gm, node):
            continue
        module, in_shape = gm.get_submodule(node.target), shape_of(node.args[0])
        if not conv_pool(module, in_shape):
            raise fail(node, gm, "a conv reads this pooling, which is not a fixed convolution "
                                 "(ceil mode, padding not counted, or an adaptive size that does "
                                 "not divide the input); only a Linear can absorb it")
        users = list(node.users)
        path, _, name = node.target.rpartition(".")
        qualified = _free_name(gm, path, f"{name}_nq")
        _install(gm, qualified, make_nq())
        with gm.graph.inserting_after(node):
            call = gm.graph.call_module(qualified, (node,))
        call.meta = {"stack_trace": node.stack_trace}
        for user in users:
            user.replace_input_with(node, call)
    gm.graph.lint()
    gm.recompile()


# --------------------------------------------------------------------------
# the spiking layers and their synaptic terms
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Term:
    """One path into a spiking layer: ``source`` (an NQ call or the input) through ``ops``,
    each ``(node, slot)``; ``slot`` is ``(offset, width, total)`` channels for a cat."""

    source: fx.Node
    ops: tuple = ()


@dataclass
class Unit:
    """A spiking layer (``nq`` its activation) or the readout (``nq`` None): the IR layer
    whose pre-activation is the sum of ``terms``; ``shape`` its output shape."""

    node: fx.Node
    nq: NQActivation | None
    terms: list
    shape: tuple


@dataclass(frozen=True)
class TermParts:
    pre: tuple          # ops before the weighted op (all ops for an identity term)
    weighted: fx.Node | None
    bn: fx.Node | None
    post: tuple         # cats after the weighted op (and its BN)


def term_parts(gm: fx.GraphModule, term: Term) -> TermParts:
    """Split a term into (before, weighted op, BN, cats after), refusing what does not fold."""
    weighted = [i for i, (n, _) in enumerate(term.ops) if kind(gm, n) in ("conv", "linear")]
    if len(weighted) > 1:
        raise fail(term.ops[weighted[1]][0], gm, "follows another Conv2d/Linear without an "
                   "activation in between; each weighted layer needs its own activation")
    if not weighted:
        pre, node, rest = term.ops, None, ()
    else:
        pre, node, rest = term.ops[:weighted[0]], term.ops[weighted[0]][0], term.ops[weighted[0] + 1:]
    bn = None
    if rest and kind(gm, rest[0][0]) == "bn":
        bn, rest = rest[0][0], rest[1:]
    for op, _slot in pre + rest:
        k = kind(gm, op)
        if k == "bn":
            raise fail(op, gm, "BatchNorm folds only right after a Conv2d or Linear")
        if op in [o for o, _ in rest] and k != "cat":
            raise fail(op, gm, "sits between a Conv2d/Linear and its activation; only BatchNorm "
                               "(and concatenation) may (pool after the activation)")
    parts = TermParts(tuple(pre), node, bn, tuple(rest))
    if node is not None and kind(gm, node) == "linear" and len(shape_of(node.args[0])) != 1:
        raise fail(node, gm, f"a Linear on a {shape_of(node.args[0])} tensor; flatten it first")
    if node is not None and kind(gm, node) == "conv":
        conv_pool_factor(gm, parts, shape_of(term.source))
    elif node is None and not any(kind(gm, op) == "flatten" for op, _ in pre):
        identity_pool(gm, parts)
    return parts


def pools_of(gm: fx.GraphModule, ops: tuple) -> list:
    """(module, input shape, node) of each pooling among ``ops``."""
    return [(gm.get_submodule(n.target), shape_of(n.args[0]), n) for n, _ in ops if kind(gm, n) == "pool"]


def pool_factor(pools: list) -> tuple | None:
    """The one non-overlapping pooling that ``pools`` compose to (kernel = stride), or None
    when one of them overlaps, pads or rounds up."""
    factor = (1, 1)
    for module, in_shape, _node in pools:
        if not structured_pool(module, in_shape):
            return None
        kernel = pool_geometry(module, in_shape)[0]
        factor = (factor[0] * kernel[0], factor[1] * kernel[1])
    return factor


def conv_pool_factor(gm: fx.GraphModule, parts: TermParts, source_shape: tuple) -> tuple:
    """The pooling factor a conv term's kernel expands by (1, 1 without pooling); refuses
    poolings and concatenations the conv cannot take in."""
    conv = gm.get_submodule(parts.weighted.target)
    cats = [op for op, slot in parts.pre if slot is not None]
    if cats and conv.groups != 1:
        raise fail(cats[0], gm, "a concatenation folds only into an ungrouped conv")
    pools = pools_of(gm, parts.pre)
    factor = pool_factor(pools)
    if factor is None:
        raise fail(pools[0][2], gm, "only non-overlapping, unpadded average pooling (floor mode) "
                                    "folds into a conv")
    ph, pw = factor
    if (ph, pw) != (1, 1) and (_pair(conv.dilation) != (1, 1) or conv.groups != 1):
        raise fail(pools[0][2], gm, "pooling folds only into an undilated, ungrouped conv")
    if source_shape[1] % ph or source_shape[2] % pw:
        raise fail(pools[0][2], gm, f"pooled map {source_shape[1:]} is not divisible by the pooling "
                                    f"factor {ph if ph == pw else factor}; the fold into "
                                    f"{parts.weighted.target!r} would not be exact")
    return factor


def identity_pool(gm: fx.GraphModule, parts: TermParts) -> tuple:
    """(kernel, stride, padding) of the one convolution an identity term's poolings are."""
    pools = pools_of(gm, parts.pre)
    factor = pool_factor(pools)
    if factor is not None:
        return factor, factor, (0, 0)
    if len(pools) == 1 and conv_pool(pools[0][0], pools[0][1]):
        return pool_geometry(pools[0][0], pools[0][1])
    raise fail(pools[-1][2], gm, "these poolings do not compose into one convolution (a shortcut "
                                 "through them needs its own activation after the pooling)")


def _terms(values: dict, node) -> list:
    if node not in values:
        raise CaptureError(f"{node} is not a tensor of the network")
    return values[node]


def _values(gm: fx.GraphModule) -> tuple[list, dict]:
    """Units (module docstring) and each node's value as a list of terms."""
    values: dict = {}
    units: list = []
    for node in gm.graph.nodes:
        k = kind(gm, node)
        if k in ("act", "maxpool", None):
            raise fail(node, gm, "is not an NQ network operation; capture the model first "
                                 "(models.capture.capture)")
        if k in ("input", "nq"):
            if k == "nq":
                units.append(Unit(node, gm.get_submodule(node.target), _terms(values, node.args[0]),
                                  shape_of(node)))
            values[node] = [Term(node)]
        elif k in ("conv", "linear", "bn", "pool", "flatten"):
            values[node] = [Term(t.source, t.ops + ((node, None),)) for t in _terms(values, node.args[0])]
        elif k == "drop":
            values[node] = _terms(values, node.args[0])
        elif k == "add":
            values[node] = _terms(values, node.args[0]) + _terms(values, node.args[1])
        elif k == "cat":
            values[node] = _cat_terms(values, node)
        elif k == "output":
            units.append(Unit(node, None, _terms(values, node.args[0]), shape_of(node.args[0])))
    return units, values


def _cat_terms(values: dict, node: fx.Node) -> list:
    offset, total, out = 0, shape_of(node)[0], []
    for part in _argument(node, 0, "tensors"):
        width = shape_of(part)[0]
        out += [Term(t.source, t.ops + ((node, (offset, width, total)),)) for t in _terms(values, part)]
        offset += width
    return out


def plan(gm: fx.GraphModule) -> list[Unit]:
    """The IR's layers in order (module docstring), each term checked to fold; a main
    term (from the previous layer) first in each unit's ``terms``."""
    units, _ = _values(gm)
    seen: set = set()
    previous = next(n for n in gm.graph.nodes if n.op == "placeholder")
    for unit in units:
        if unit.nq is not None and id(unit.nq) in seen:
            raise fail(unit.node, gm, "one NQ activation is called twice; each call site needs "
                                      "its own (its own threshold)")
        seen.add(id(unit.nq))
        _order_terms(gm, unit, previous)
        for term in unit.terms:
            term_parts(gm, term)
        previous = unit.node
    readout = units[-1]
    if term_parts(gm, readout.terms[0]).weighted is None:
        raise fail(readout.node.args[0], gm, "ends the network; the last layer must be a plain "
                   "Linear (the readout, no activation after it)")
    return units


def _order_terms(gm: fx.GraphModule, unit: Unit, previous: fx.Node) -> None:
    main = [t for t in unit.terms if t.source is previous]
    sources = {t.source for t in unit.terms}
    where = unit.node if unit.nq is not None else unit.node.args[0]
    if any(s.op == "placeholder" for s in sources) and previous.op != "placeholder":
        raise fail(where, gm, "reads the network input directly, but a shortcut needs the spikes "
                              "of an earlier spiking layer; put a conv-BN-activation stem first")
    if not main:
        raise fail(where, gm, f"does not read the layer before it in forward order "
                              f"({previous.name}); parallel branches are supported only as "
                              f"shortcuts into a later sum or concatenation")
    unit.terms = main + [t for t in unit.terms if t.source is not previous]  # main first


def capture(module: nn.Module, input_shape: tuple, *, levels: int, noise: bool = True,
            init_threshold: float = 8.0, activation: str = "qcfs", timesteps: int | None = None,
            cuba_shift: str = "none") -> fx.GraphModule:
    """The NQ network of ``module`` for ``input_shape`` samples (module docstring);
    raises :class:`CaptureError` for anything the converter cannot fold, before training."""
    check_activation(activation, timesteps, cuba_shift)
    gm = trace(module, tuple(input_shape))
    _modular_pools(gm)
    check_nodes(gm)
    param = next(iter(gm.parameters()), None)

    def make_nq() -> NQActivation:
        nq = NQActivation(levels, noise, init_threshold, activation=activation, timesteps=timesteps,
                          shift=cuba_shift)
        return nq if param is None else nq.to(device=param.device, dtype=param.dtype)
    _rewrite(gm, make_nq)
    propagate_shapes(gm, input_shape)
    _spiking_pools(gm, make_nq)
    # a fresh GraphModule registers the submodules in forward order
    gm = fx.GraphModule(gm, gm.graph, class_name=type(module).__name__)
    gm.train(module.training)
    propagate_shapes(gm, input_shape)
    plan(gm)
    return gm


def as_graph(model: nn.Module, input_shape: tuple) -> fx.GraphModule:
    """``model`` traced with shapes for ``input_shape`` (a captured model is re-shaped, not
    re-traced): the converter's view of any NQ network."""
    gm = model if isinstance(model, fx.GraphModule) else trace(model, tuple(input_shape))
    if gm is model:
        propagate_shapes(gm, tuple(input_shape))
    check_nodes(gm)
    return gm
