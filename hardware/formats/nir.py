"""Float SNN IR <-> NIR graphs (``.nir`` files, the Neuromorphic Intermediate Representation).

NIR (package ``nir``, pinned 1.0.8) is how SNNs move between frameworks (snnTorch, Norse,
SpikingJelly, Sinabs, Rockpool, Lava-dl) and chips. :func:`write_nir` / :func:`to_nir_graph`
write a float IR (Loihi's fixed point is the ``.net``'s job) as a NIR graph; :func:`read_nir` /
:func:`from_nir_graph` read a NIR graph, ours or another framework's, into a float IR that the
quantizer, the netx writer and Lava then take as any converted network.

Time. NIR is continuous-time; a graph becomes a discrete SNN only with a time step ``dt``: this
module uses forward Euler with ``dt`` (:data:`DEFAULT_DT` = 1e-4, the one snnTorch's
``export_to_nir``/``import_from_nir`` hard-code). NIR's CubaLIF then is, with
``α = 1 − dt/τ_syn``, ``β = 1 − dt/τ_mem`` and unit gains, the IR's ``cuba`` neuron (float
form; exactly snnTorch's ``Synaptic`` with ``reset_mechanism='zero'``, ``reset_delay=False``)::

    I ← α·I + (dt·w_in/τ_syn)·x;   v ← β·v + (dt·R/τ_mem)·I;   z = v > v_threshold;  v ← 0 where z
    u ← u·(1 − (du+1)/4096) + a;   v ← v·(1 − dv/4096) + u + b; s = v > θ;           v ← 0 where s

Each step the graph is evaluated input to output (a node sees its sources' outputs of the same
step): :func:`hardware.simulator.simulate` with ``pipelined=False``. The mapping is documented
where it is made: export in :func:`_synapse_node`, :func:`_neuron_node`, :func:`_projection_nodes`,
:func:`_check_exportable`; import in :class:`_Topology` (the graphs the IR holds) and
:func:`_dynamics` (the neurons). No file holds inf or NaN (:data:`NO_LEAK_TAU_STEPS`,
:data:`NEVER_FIRES`). Write -> read -> write gives the same graph, read(write(net)) the same IR.
Writing is atomic; files are checked before ``nir.read`` sees them (:func:`_check_file`).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import h5py
import nir
import numpy as np

from hardware.errors import IRError, NirFormatError
from hardware.ir import (IR_VERSION, READABLE_IR_VERSIONS, Conv, Dense, Flatten, Input, Network, Neuron, Projection,
                 readout_neuron)
from hardware.formats.files import atomic_path
from hardware.formats.netx_layout import MAX_DATASET_ELEMENTS, MAX_TOTAL_ELEMENTS, PROJECT_NAME
from hardware.spec import LOIHI2

__all__ = ["NIR_FORMAT", "NIR_FORMAT_VERSION", "DEFAULT_DT", "DECAY_TOLERANCE", "GAIN_TOLERANCE",
           "READ_NODE_TYPES", "to_nir_graph", "write_nir", "from_nir_graph", "read_nir"]

NIR_FORMAT = "nqloihi-nir"
NIR_FORMAT_VERSION = 1
#: the time step of the discretisation (snnTorch's hard-coded 1e-4)
DEFAULT_DT = 1e-4
#: a decay 4096·dt/τ within this of an integer is that integer (float32 τ in others' files)
DECAY_TOLERANCE = 4e-3
#: an input gain within this of 1 is 1
GAIN_TOLERANCE = 1e-6
#: τ_mem/dt (and R) written for dv = 0, a membrane that does not leak (inf, as snnTorch writes
#: it, makes Norse 1.1.0 compute inf·I and (1/inf)·inf: every membrane NaN, nothing fires). At
#: 2**64, dt/τ_mem is exactly 2**-64 (a power of two: no rounding in float32 or float64), so
#: snnTorch's β = 1 − dt/τ_mem is exactly 1.0 in both, our reader's dv is 0 and its gain
#: dt·R/τ_mem exactly 1. Norse steps v + (dt·(1/τ_mem))·(R·I − v); at dt = 1e-4 its float32
#: coefficient is exactly 2**-64 (tested), R·I is exact, and the v·2**-64 term changes the
#: result only where |I| ≤ |v|·2**-39, where v + I rounds to v anyway: v + I rounded once, the
#: IR's arithmetic. R·I overflows float32 only for |I| ≥ 2**64.
NO_LEAK_TAU_STEPS = 2.0 ** 64
#: v_threshold written for a neuron that never fires (the potential readout): float32's largest
#: value, which no finite float32 membrane exceeds (``v > θ`` is never true); a float64 membrane
#: driven by spikes grows by at most max_j(Σ_i |W_ji| + |b_j|) a step, so it needs more than
#: 3.4e38 / that many steps to reach it. On import +inf (what older files wrote) means the same.
NEVER_FIRES = float(np.finfo(np.float32).max)
#: NIR file versions (the file's own ``version``) this reader takes: major version 0 or 1
NIR_FILE_MAJOR_VERSIONS = (0, 1)
#: NIR node types :func:`from_nir_graph` reads
SYNAPSE_TYPES = ("Conv2d", "Affine", "Linear")
NEURON_TYPES = ("CubaLIF", "LIF", "IF", "I")
READ_NODE_TYPES = ("Input", "Output", "Flatten") + SYNAPSE_TYPES + NEURON_TYPES
#: what the graph metadata says about the neuron model
NEURON_MODEL_TEXT = (
    "Loihi 2 CUBA (reset to zero), forward Euler with time step dt: "
    "I <- (1 - dt/tau_syn) I + (dt w_in/tau_syn) x; v <- (1 - dt/tau_mem) v + (dt r/tau_mem) I; "
    "z = v > v_threshold; v <- 0 where z; tau_syn = dt 4096/(du+1), tau_mem = dt 4096/dv "
    "(dv = 0, no leak: tau_mem = dt 2**64), w_in = tau_syn/dt, r = tau_mem/dt; the synapse bias "
    "enters I (du = 4095: I = W x + b). v_threshold = 3.4028235e38 (float32 max): a non-firing "
    "integrator whose v after the last step is the readout. Each step the graph is evaluated input to output (no per-layer delay).")

_UNITY = LOIHI2.decay_unity  # 4096
_NO_CURRENT_DECAY = LOIHI2.decay_max  # du = 4095: u = a, no memory
_MAX_GRAPH_DEPTH = 8
_MAX_NODES = 4096

PathLike = Union[str, Path]


# ----------------------------------------------------------------------------- export
@dataclass
class _Builder:
    """Nodes and edges of the graph being written, in order."""

    nodes: dict = field(default_factory=dict)
    edges: list = field(default_factory=list)

    def add(self, name: str, node) -> str:
        if name in self.nodes:
            raise NirFormatError(f"node name {name!r} is used twice (rename the IR layer)")
        self.nodes[name] = node
        return name

    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.nodes:
            name, k = f"{base}_{k}", k + 1
        return name

    def edge(self, source: str, target: str) -> None:
        self.edges.append((source, target))


def _numeric_arrays(node):
    """(parameter, float array) of every floating-point value a NIR node holds."""
    for f in dataclasses.fields(node):
        value = getattr(node, f.name, None)
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for key, v in items:
            if isinstance(v, (str, bytes)) or v is None:
                continue
            try:
                a = np.asarray(v)
            except (ValueError, TypeError):
                continue  # ragged or odd: the node's own checks name it
            if a.dtype.kind in "fc":
                yield (f.name if key is None else f"{f.name}[{key}]"), a


def _check_exportable(net: Network, dt: float) -> None:
    """Refuse what NIR export does not write: an integer IR (Loihi's fixed point is the
    ``.net``'s job), an input neuron layer, a dt that is not a positive number, and ``if_soft``
    neurons (reset by subtraction, v(0) = θ/2: every NIR neuron resets to ``v_reset``, and a
    consumer would silently run another neuron)."""
    if net.integer:
        raise NirFormatError("NIR export takes the float IR (the integer IR is Loihi 2's fixed "
                             "point, written as .net); export the network before quantizing it")
    if net.input.neuron is not None:
        raise NirFormatError("the network has an input neuron layer, which NIR export does not "
                             "write (this project's converter never makes one)")
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise NirFormatError(f"dt must be a positive number, got {dt!r}")
    for layer in net.weighted_layers:
        if layer.neuron.kind == "if_soft":
            raise NirFormatError(
                f"layer {layer.name}: if_soft neurons (reset by subtraction, v(0) = θ/2) have no "
                f"NIR counterpart (every NIR neuron resets to v_reset) and would run as another "
                f"neuron elsewhere; export a cuba network (snn.neuron: cuba)")


def _float(weight, weight_exp: int) -> np.ndarray:
    return np.asarray(weight, dtype=np.float64) * 2.0 ** int(weight_exp)


def _conv_bias(layer: Conv, out_shape: tuple) -> np.ndarray:
    """One bias per output channel (NIR's Conv2d), zeros for none."""
    if layer.bias is None:
        return np.zeros(out_shape[0])
    bias = np.asarray(layer.bias, dtype=np.float64)
    if bias.shape == (out_shape[0],):
        return bias
    try:
        full = np.broadcast_to(bias if bias.ndim == 3 else bias.reshape(-1, 1, 1), out_shape)
    except ValueError:
        raise NirFormatError(f"layer {layer.name}: bias shape {bias.shape} does not fit its "
                             f"output {out_shape}") from None
    per_channel = full[:, :1, :1]
    if not np.array_equal(full, np.broadcast_to(per_channel, out_shape)):
        raise NirFormatError(f"layer {layer.name}: its bias differs within a channel; NIR's "
                             f"Conv2d has one bias per output channel")
    return per_channel.reshape(-1).copy()


def _conv_node(weight, exp, stride, padding, dilation, groups, bias, in_shape, where: str) -> nir.Conv2d:
    if int(groups) != 1:
        raise NirFormatError(f"{where}: a grouped convolution (groups = {groups}) fails NIR 1.0's own "
                             f"type check (its Conv2d takes weight.shape[1] as the input channels)")
    if np.shape(weight)[2] != np.shape(weight)[3]:
        raise NirFormatError(f"{where}: a {np.shape(weight)[2]}x{np.shape(weight)[3]} kernel fails NIR "
                             f"1.0's own type check (its Conv2d sizes both dimensions by weight.shape[2])")
    return nir.Conv2d(input_shape=tuple(int(s) for s in in_shape[1:]), weight=_float(weight, exp),
                      stride=np.array(stride, dtype=np.int64),
                      padding=np.array(padding, dtype=np.int64),
                      dilation=np.array(dilation, dtype=np.int64), groups=int(groups), bias=bias)


def _synapse_node(layer, in_shape: tuple, out_shape: tuple):
    """The synapse node "L" of a Conv or Dense layer ``L``::

        Conv  -> Conv2d(weight·2**weight_exp, stride, padding, dilation, groups, bias b or zeros)
        Dense -> Affine(weight·2**weight_exp, b), Linear if b is None

    (a Flatten layer is Flatten(start_dim=0, end_dim=-1): every non-batch dimension, C order; the
    graph starts with "input", an Input of the IR's input shape, and ends with "output", an
    Output fed by the last neuron). The bias travels in the synapse (NIR neurons have no bias
    but ``v_leak``), so it enters the current: exact when the current does not accumulate,
    du = 4095 (u = a + b, this project's every network). Refused naming the layer: conv biases
    that differ within a channel, grouped convolutions and non-square kernels (NIR 1.0.8's
    Conv2d takes ``weight.shape[1]`` as its input channels and ``weight.shape[2]`` as the
    kernel size in both dimensions, so its own type check fails them)."""
    if isinstance(layer, Conv):
        return _conv_node(layer.weight, layer.weight_exp, layer.stride, layer.padding,
                          layer.dilation, layer.groups, _conv_bias(layer, out_shape), in_shape,
                          f"layer {layer.name}")
    weight = _float(layer.weight, layer.weight_exp)
    if layer.bias is None:
        return nir.Linear(weight=weight)
    return nir.Affine(weight=weight, bias=np.asarray(layer.bias, dtype=np.float64).reshape(-1))


def _neuron_node(layer, out_shape: tuple, dt: float) -> nir.CubaLIF:
    """The CubaLIF "L.neuron" of a cuba neuron (refused: a non-zero bias with du < 4095)::

        τ_syn = dt·4096/(du+1), w_in = 4096/(du+1), τ_mem = dt·4096/dv, R = 4096/dv,
        v_threshold = θ, v_leak = 0, v_reset = 0      (dv = 0: τ_mem/dt = R = NO_LEAK_TAU_STEPS)

    The potential readout (:func:`hardware.ir.readout_neuron`) is what the IR says it is:
    τ_syn = dt (α = 0), no leak (β = 1), ``v_threshold =`` :data:`NEVER_FIRES`, so
    ``v[T] = Σ_t (W·s_t + b)``: read its membrane after the last step (snnTorch: the imported
    ``Synaptic`` module's ``mem``; Norse: the node's ``LIFBoxFeedForwardState.v``). It runs
    unchanged in snnTorch's ``import_from_nir``, which has no mapping for NIR's ``I`` node."""
    n = layer.neuron
    if int(n.du) != _NO_CURRENT_DECAY and layer.bias is not None and np.any(np.asarray(layer.bias)):
        raise NirFormatError(
            f"layer {layer.name}: a bias with a decaying synaptic current (du = {n.du}) has no "
            f"exact NIR form: Loihi adds it to v, NIR's synapse bias enters the current")
    def full(value: float) -> np.ndarray:
        return np.full(out_shape, value, dtype=np.float64)

    w_in = _UNITY / (int(n.du) + LOIHI2.current_decay_offset)
    mem = _UNITY / int(n.dv) if int(n.dv) else NO_LEAK_TAU_STEPS  # τ_mem / dt
    threshold = NEVER_FIRES if n.threshold == math.inf else float(n.threshold)  # NaN: refused below
    return nir.CubaLIF(tau_syn=full(dt * w_in), tau_mem=full(dt * mem), r=full(mem),
                       v_leak=full(0.0), v_threshold=full(threshold), v_reset=full(0.0),
                       w_in=full(w_in))


def _projection_nodes(b: _Builder, layer, k: int, proj: Projection, source: str,
                      source_shape: tuple, out_shape: tuple) -> str:
    """Nodes of extra input k (a :class:`hardware.ir.Projection` from layer S) of layer L:
    "L.extra<k>", a Conv2d (zero bias) or Linear fed by "S.neuron" (a dense projection of a
    (C, H, W) source through a Flatten node "L.extra<k>.flatten"); returns it. It feeds
    "L.neuron": NIR sums every input of a node."""
    name = f"{layer.name}.extra{k}"
    if proj.kind == "conv":
        node = _conv_node(proj.weight, proj.weight_exp, proj.stride, proj.padding, proj.dilation,
                          proj.groups, np.zeros(out_shape[0]), source_shape,
                          f"layer {layer.name}, extra input {k}")
    else:
        if len(source_shape) != 1:
            flat = b.add(f"{name}.flatten", nir.Flatten(
                input_type={"input": np.array(source_shape)}, start_dim=0, end_dim=-1))
            b.edge(source, flat)
            source = flat
        node = nir.Linear(weight=_float(proj.weight, proj.weight_exp))
    b.add(name, node)
    b.edge(source, name)
    return name


def _graph_metadata(net: Network, dt: float, provenance: Optional[dict]) -> dict:
    """The graph's metadata: format, versions, dt, readout, the neuron model as text, and the
    provenance (the IR's metadata plus ``provenance``, a JSON object as a string)."""
    record = {**net.metadata, **(provenance or {})}
    try:
        text = json.dumps(record, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise NirFormatError(f"provenance is not JSON-serialisable: {e}") from None
    return {"format": NIR_FORMAT, "format_version": NIR_FORMAT_VERSION, "project": PROJECT_NAME,
            "ir_version": str(net.version), "nir_version": str(getattr(nir, "__version__", "?")),
            "dt": float(dt), "readout": net.readout, "neuron_model": NEURON_MODEL_TEXT,
            "provenance": text}


def to_nir_graph(net: Network, *, dt: float = DEFAULT_DT,
                 provenance: Optional[dict] = None) -> nir.NIRGraph:
    """The NIR graph of a float IR ``net`` (:func:`_synapse_node`, :func:`_neuron_node`);
    :class:`NirFormatError` for what NIR cannot hold exactly (if_soft neurons, integer IRs, ...)."""
    _check_exportable(net, dt)
    b = _Builder()
    shape = tuple(int(s) for s in net.input.shape)
    prev = b.add("input", nir.Input(input_type={"input": np.array(shape)}))
    neuron_of: dict = {}  # IR layer name -> (neuron node, output shape)
    for layer, out_shape in zip(net.layers, net.shapes()):
        if isinstance(layer, Flatten):
            node = nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1)
            name = b.add(b.unique(layer.name), node)
        else:
            syn = b.add(layer.name, _synapse_node(layer, shape, out_shape))
            b.edge(prev, syn)
            name = b.add(f"{layer.name}.neuron", _neuron_node(layer, out_shape, dt))
            b.edge(syn, name)
            for k, proj in enumerate(layer.extra_inputs):
                source, source_shape = neuron_of[proj.source]
                b.edge(_projection_nodes(b, layer, k, proj, source, source_shape, out_shape), name)
            neuron_of[layer.name] = (name, out_shape)
            prev, shape = name, out_shape
            continue
        b.edge(prev, name)
        prev, shape = name, out_shape
    b.add("output", nir.Output(output_type={"output": np.array(shape)}))
    b.edge(prev, "output")
    for name, node in b.nodes.items():
        for param, values in _numeric_arrays(node):
            if not np.all(np.isfinite(values)):
                raise NirFormatError(f"node {name!r}: {param} holds NaN or inf; a NIR file of this "
                                     f"project holds finite numbers only (other readers run NaN)")
    try:
        return nir.NIRGraph(nodes=b.nodes, edges=b.edges, metadata=_graph_metadata(net, dt, provenance))
    except (ValueError, AssertionError) as e:  # NIR's own type check: a bug, said plainly
        raise NirFormatError(f"the NIR graph does not type-check: {e}") from None


def write_nir(net: Network, path: PathLike, *, dt: float = DEFAULT_DT,
              provenance: Optional[dict] = None) -> Path:
    """Write ``net`` as a NIR file at ``path`` (atomically); returns the path."""
    path = Path(path)
    graph = to_nir_graph(net, dt=dt, provenance=provenance)
    with atomic_path(path) as tmp:
        nir.write(tmp, graph)
    return path


# ----------------------------------------------------------------------------- file checks
_H5_ERRORS = (OSError, KeyError, ValueError, TypeError, IndexError, AttributeError,
              RuntimeError, RecursionError, OverflowError, AssertionError)


def _text(value) -> str:
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(-1)[0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _check_tree(group: h5py.Group, where: str, depth: int, total: list) -> None:
    """Hard links only, sane dataset sizes (before anything large is read)."""
    if depth > _MAX_GRAPH_DEPTH:
        raise NirFormatError(f"{where}: nested deeper than {_MAX_GRAPH_DEPTH} groups")
    if len(group) > _MAX_NODES:
        raise NirFormatError(f"{where}: {len(group)} entries, more than {_MAX_NODES}")
    for key in group:
        link = group.get(key, getlink=True)
        if not isinstance(link, h5py.HardLink):
            raise NirFormatError(f"{where}/{key}: a {type(link).__name__}; only hard links are read")
        item = group[key]
        if isinstance(item, h5py.Group):
            _check_tree(item, f"{where}/{key}", depth + 1, total)
            continue
        size = int(np.prod(item.shape)) if item.shape else 1
        if size > MAX_DATASET_ELEMENTS:
            raise NirFormatError(f"{where}/{key}: {size} elements, more than {MAX_DATASET_ELEMENTS}")
        total[0] += size
        if total[0] > MAX_TOTAL_ELEMENTS:
            raise NirFormatError(f"{where}: more than {MAX_TOTAL_ELEMENTS} values in all")


def _check_node_types(graph: h5py.Group, where: str) -> None:
    """Every node type one this project reads, named with its node otherwise."""
    if "nodes" not in graph or "edges" not in graph:
        raise NirFormatError(f"{where}: a NIR graph needs 'nodes' and 'edges'")
    for name in graph["nodes"]:
        node = graph["nodes"][name]
        kind = _text(node["type"][()]) if isinstance(node, h5py.Group) and "type" in node else None
        if kind is None:
            raise NirFormatError(f"{where}: node {name!r} has no type")
        _refuse_node_type(name, kind)


def _refuse_node_type(name: str, kind: str) -> None:
    if kind == "NIRGraph":
        raise NirFormatError(f"node {name!r} is a NIR subgraph (snnTorch writes recurrent layers "
                             f"so); recurrent and nested graphs are not supported")
    if kind not in READ_NODE_TYPES:
        raise NirFormatError(f"node {name!r} is a NIR {kind} node, which this project cannot run "
                             f"exactly on Loihi 2 (supported: {', '.join(READ_NODE_TYPES)})")


def _check_nir_version(path: Path, dataset) -> None:
    """The file's own NIR version: ``major.minor...`` with a major version this reader knows."""
    text = _text(dataset[()]) if isinstance(dataset, h5py.Dataset) and dataset.size == 1 else None
    major = (text or "").split(".")[0]
    if not (major.isdigit() and int(major) in NIR_FILE_MAJOR_VERSIONS and "." in text):
        raise NirFormatError(f"{path}: NIR version {text!r} is not one this reader takes (major "
                             f"version {' or '.join(map(str, NIR_FILE_MAJOR_VERSIONS))}, nir "
                             f"{getattr(nir, '__version__', '?')} installed)")


def _check_file(path: Path) -> None:
    """Before ``nir.read`` sees the file: HDF5 readable, only hard links, every dataset within
    :data:`~hardware.formats.netx_layout.MAX_DATASET_ELEMENTS` and all of them within
    ``MAX_TOTAL_ELEMENTS``, the file's NIR version one this reader takes, every node type known."""
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError, RuntimeError) as e:
        raise NirFormatError(f"{path}: not a readable HDF5 file ({' '.join(str(e).split())})") from None
    with f:
        if "node" not in f or not isinstance(f["node"], h5py.Group) or "version" not in f:
            raise NirFormatError(f"{path}: not a NIR file (no 'version' and 'node' entries)")
        _check_tree(f, str(path), 0, [0])
        _check_nir_version(path, f["version"])
        root = f["node"]
        if "type" not in root or _text(root["type"][()]) != "NIRGraph":
            raise NirFormatError(f"{path}: the root node is not a NIRGraph")
        _check_node_types(root, str(path))


def read_nir(path: PathLike, *, dt: Optional[float] = None) -> Network:
    """Read a NIR file into a float IR (module docstring).

    ``dt``: the time step for a graph written by another framework (default
    :data:`DEFAULT_DT`, snnTorch's); a graph written by this project carries its own.
    Raises :class:`NirFormatError` (one line, naming the file, and the node where there is one)
    for a missing, non-HDF5, corrupt or oversized file and for anything the IR cannot hold.
    """
    path = Path(path)
    if not path.is_file():
        raise NirFormatError(f"{path}: no such file")
    try:
        _check_file(path)
        graph = nir.read(path)
    except NirFormatError as e:
        raise NirFormatError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None
    except _H5_ERRORS as e:
        raise NirFormatError(f"{path}: corrupt or inconsistent NIR file "
                             f"({type(e).__name__}: {' '.join(str(e).split())[:300]})") from None
    try:
        return from_nir_graph(graph, dt=dt, source=path.name)
    except NirFormatError as e:
        raise NirFormatError(f"{path}: {e}") from None
    except (ValueError, TypeError, AttributeError, IndexError) as e:  # values of the wrong kind
        raise NirFormatError(f"{path}: inconsistent NIR graph ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:300]})") from None


# ----------------------------------------------------------------------------- import
@dataclass
class _Dynamics:
    """A NIR neuron as the IR's cuba neuron: decays, threshold, input gain."""

    du: int
    dv: int
    threshold: float
    gain: float
    integrator: bool = False  # NIR's I: the potential readout


def _uniform(node_name: str, node, attr: str) -> float:
    """The one value of a per-neuron parameter array."""
    values = np.unique(np.asarray(getattr(node, attr), dtype=np.float64))
    if values.size != 1:
        raise NirFormatError(f"node {node_name!r}: {attr} takes {values.size} different values; "
                             f"the IR has one neuron model per layer")
    value = float(values[0])
    if math.isnan(value):
        raise NirFormatError(f"node {node_name!r}: {attr} is NaN")
    return value


def _grid(node_name: str, what: str, fraction: float, lo: int, hi: int) -> int:
    """round(4096·fraction), which must be an integer in lo..hi (Loihi's 12-bit decays)."""
    scaled = _UNITY * fraction
    k = round(scaled) if math.isfinite(scaled) else None
    if k is None or abs(scaled - k) > DECAY_TOLERANCE or not lo <= k <= hi:
        raise NirFormatError(f"node {node_name!r}: {what} = {fraction:.9g} is not a Loihi 2 decay "
                             f"(k/4096 with k in {lo}..{hi}, 12 bits)")
    return int(k)


def _leak_gain(node_name: str, tau: float, r: float, dt: float, what: str) -> tuple:
    """(dv, dt·R/τ) of a membrane with time constant τ and resistance R (τ = R = inf: no
    leak, gain 1, the limit of R/τ = 1/dt that snnTorch writes for β = 1)."""
    if tau <= 0:
        raise NirFormatError(f"node {node_name!r}: {what} = {tau} must be positive")
    if math.isinf(tau):
        if not math.isinf(r):
            raise NirFormatError(f"node {node_name!r}: {what} = inf with a finite r = {r} never "
                                 f"integrates its input")
        return 0, 1.0
    return _grid(node_name, f"dt/{what}", dt / tau, 0, _UNITY - 1), dt * r / tau


def _check_resets(name: str, node) -> None:
    if hasattr(node, "v_leak") and np.any(np.asarray(node.v_leak) != 0):
        raise NirFormatError(f"node {name!r}: v_leak ≠ 0 is not supported (Loihi's bias is "
                             f"written in the synapse's bias)")
    if hasattr(node, "v_reset") and np.any(np.asarray(node.v_reset) != 0):
        raise NirFormatError(f"node {name!r}: v_reset ≠ 0; Loihi 2's CUBA neuron resets to 0")


def _dynamics(name: str, node, dt: float) -> _Dynamics:
    """The cuba neuron a NIR neuron node is under forward Euler with step ``dt``::

        CubaLIF  du = 4096·dt/τ_syn − 1, dv = 4096·dt/τ_mem, gain dt·w_in/τ_syn · dt·R/τ_mem
        LIF      du = 4095,              dv = 4096·dt/τ,     gain dt·R/τ
        IF       du = 4095,              dv = 0,             gain dt·R
        I        the potential readout (only as the last neuron), gain dt·R

    The decays must lie on Loihi's 12-bit grid (within :data:`DECAY_TOLERANCE` of an integer, the
    float32 rounding of others' files; du and dv in 0..4095); ``v_leak`` and ``v_reset`` zero;
    the threshold positive (:data:`NEVER_FIRES` or +inf only on the last neuron, du = 4095,
    dv = 0: the potential readout). A gain within :data:`GAIN_TOLERANCE` of 1 is 1; any other is
    folded into the weights and biases of every synapse into the neuron."""
    _check_resets(name, node)
    if isinstance(node, nir.I):
        return _Dynamics(_NO_CURRENT_DECAY, 0, math.inf, dt * _uniform(name, node, "r"), True)
    threshold = _uniform(name, node, "v_threshold")
    if not threshold > 0:
        raise NirFormatError(f"node {name!r}: v_threshold = {threshold} must be positive")
    if isinstance(node, nir.IF):
        return _Dynamics(_NO_CURRENT_DECAY, 0, threshold, dt * _uniform(name, node, "r"))
    if isinstance(node, nir.LIF):
        dv, gain = _leak_gain(name, _uniform(name, node, "tau"), _uniform(name, node, "r"), dt, "tau")
        return _Dynamics(_NO_CURRENT_DECAY, dv, threshold, gain)
    tau_syn = _uniform(name, node, "tau_syn")
    if not (tau_syn > 0 and math.isfinite(tau_syn)):
        raise NirFormatError(f"node {name!r}: tau_syn = {tau_syn} must be a positive number "
                             f"(Loihi's current decays by at least 1/4096 per step)")
    du = _grid(name, "dt/tau_syn", dt / tau_syn, 1, _UNITY) - LOIHI2.current_decay_offset
    dv, gain = _leak_gain(name, _uniform(name, node, "tau_mem"), _uniform(name, node, "r"), dt,
                          "tau_mem")
    return _Dynamics(du, dv, threshold, gain * dt * _uniform(name, node, "w_in") / tau_syn)


#: the membrane time constant of each leaky node type; +inf in it and in r (both, everywhere)
#: is the no-leak membrane older files of this project and snnTorch's β = 1 write
_LEAK_TAU = {"CubaLIF": "tau_mem", "LIF": "tau"}


def _legacy_inf(node, param: str, values: np.ndarray) -> bool:
    """Whether +inf in ``param`` means what older writers meant: never fires, or no leak."""
    kind = type(node).__name__
    if not np.all(np.isposinf(values)):
        return False
    if param == "v_threshold":
        return kind in NEURON_TYPES
    tau = _LEAK_TAU.get(kind)
    if tau is None or param not in (tau, "r"):
        return False
    return all(np.all(np.isposinf(np.asarray(getattr(node, p), dtype=np.float64))) for p in (tau, "r"))


def _check_finite(name: str, node) -> None:
    """NaN anywhere, and inf other than :func:`_legacy_inf`'s, refused naming node and parameter."""
    for param, values in _numeric_arrays(node):
        if np.any(np.isnan(values)):
            raise NirFormatError(f"node {name!r}: {param} holds NaN")
        if np.any(np.isinf(values)) and not _legacy_inf(node, param, values):
            raise NirFormatError(
                f"node {name!r}: {param} holds inf; inf is read only as v_threshold = +inf "
                f"(never fires) and tau/tau_mem = r = +inf together (no leak)")


@dataclass
class _Synapse:
    name: str
    node: Any
    source: str             # a neuron node or "input"
    flattens: list          # Flatten nodes between the source and this synapse, in order


class _Topology:
    """The graph's nodes by role, the synapses' sources and the neurons' chain order.

    Node types read: :data:`READ_NODE_TYPES` (Flatten of all non-batch dimensions only); any
    other (LI, CubaLI, Delay, Scale, Threshold, AvgPool2d, SumPool2d, Conv1d, a recurrent
    subgraph, ...) is refused naming the node and its type. The graph must be what the IR can
    hold: one Input, one Output fed by the last neuron, each synapse (Conv2d/Affine/Linear) fed
    by the Input or a neuron (possibly through Flatten nodes) and feeding one neuron, neurons
    fed only by synapses, the neurons a chain (one order) in which every neuron's first synapse
    reads the previous one (or the input) and further synapses read earlier neurons (extra
    inputs); no cycle. Every parameter must be one value for the whole node (the IR has one
    neuron per layer). NaN and inf are refused naming the node and parameter, except +inf as
    v_threshold (never fires) and as τ_mem (τ) and R together (no leak: older files of this
    project, snnTorch's export of β = 1). The IR's layer names are the names of each neuron's
    first synapse node; a layer's bias is the sum of the biases of its synapses; a bias into a
    neuron with du < 4095 is refused (Loihi adds biases to v)."""

    def __init__(self, graph: nir.NIRGraph):
        self.nodes = dict(graph.nodes)
        if len(self.nodes) > _MAX_NODES:
            raise NirFormatError(f"{len(self.nodes)} nodes, more than {_MAX_NODES}")
        for name, node in self.nodes.items():
            _refuse_node_type(name, type(node).__name__)
            _check_finite(name, node)
        self.edges = [(str(a), str(b)) for a, b in graph.edges]
        if len(set(self.edges)) != len(self.edges):
            raise NirFormatError("the graph lists an edge twice")
        self.preds = {n: [] for n in self.nodes}
        self.succs = {n: [] for n in self.nodes}
        for a, b in self.edges:
            if a not in self.nodes or b not in self.nodes:
                raise NirFormatError(f"edge ({a!r}, {b!r}) names a node the graph does not have")
            self.preds[b].append(a)
            self.succs[a].append(b)
        self.input = self._one("Input")
        self.output = self._one("Output")
        self.synapses = {n: self._synapse(n) for n, node in self.nodes.items()
                         if type(node).__name__ in SYNAPSE_TYPES}
        self.neurons = self._chain()
        for name in self.nodes:
            if name != self.output and not self.succs[name]:
                raise NirFormatError(f"node {name!r} ({self.kind(name)}) leads nowhere")

    def kind(self, name: str) -> str:
        return type(self.nodes[name]).__name__

    def _one(self, kind: str) -> str:
        found = [n for n in self.nodes if self.kind(n) == kind]
        if len(found) != 1:
            raise NirFormatError(f"the graph has {len(found)} {kind} nodes; the IR needs exactly one")
        return found[0]

    def _synapse(self, name: str) -> _Synapse:
        if len(self.preds[name]) != 1 or len(self.succs[name]) != 1:
            raise NirFormatError(f"node {name!r} ({self.kind(name)}) must have one input and one "
                                 f"output edge, has {len(self.preds[name])} and {len(self.succs[name])}")
        target = self.succs[name][0]
        if self.kind(target) not in NEURON_TYPES:
            raise NirFormatError(f"node {name!r} ({self.kind(name)}) feeds {target!r} "
                                 f"({self.kind(target)}); a synapse must feed a neuron")
        flattens, source = [], self.preds[name][0]
        while self.kind(source) == "Flatten":
            if len(self.preds[source]) != 1:
                raise NirFormatError(f"node {source!r} (Flatten) must have one input edge")
            flattens.insert(0, source)
            source = self.preds[source][0]
        if self.kind(source) not in NEURON_TYPES + ("Input",):
            raise NirFormatError(f"node {name!r} ({self.kind(name)}) reads {source!r} "
                                 f"({self.kind(source)}); synapses read the input or a neuron")
        return _Synapse(name, self.nodes[name], source, flattens)

    def inputs_of(self, neuron: str) -> list:
        """The synapses into ``neuron``, in edge order."""
        out = []
        for p in self.preds[neuron]:
            if p not in self.synapses:
                raise NirFormatError(f"neuron {neuron!r} is fed by {p!r} ({self.kind(p)}); a "
                                     f"neuron's inputs must be Conv2d/Affine/Linear nodes")
            out.append(self.synapses[p])
        if not out:
            raise NirFormatError(f"neuron {neuron!r} has no input")
        return out

    def _chain(self) -> list:
        """The neurons in their one topological order (a chain with skips), else an error."""
        neurons = [n for n in self.nodes if self.kind(n) in NEURON_TYPES]
        if not neurons:
            raise NirFormatError("the graph has no neuron node")
        sources = {n: {s.source for s in self.inputs_of(n)} for n in neurons}
        if sum(s.source == self.input for s in self.synapses.values()) != 1:
            raise NirFormatError(f"the input {self.input!r} must feed exactly one synapse (the first "
                                 f"layer's); skip connections from the input are not supported")
        order, done = [], {self.input}
        while len(order) < len(neurons):
            ready = [n for n in neurons if n not in done and sources[n] <= done]
            if not ready:
                rest = sorted(set(neurons) - done)
                raise NirFormatError(f"nodes {rest[:4]} form a cycle (recurrence is not supported)")
            if len(ready) > 1:
                raise NirFormatError(f"neurons {sorted(ready)[:4]} run in parallel branches; the IR "
                                     f"is a chain of layers with skip connections")
            order.append(ready[0])
            done.add(ready[0])
        if self.preds[self.output] != [order[-1]]:
            raise NirFormatError(f"the output must be fed by the last neuron {order[-1]!r} alone, "
                                 f"is fed by {self.preds[self.output]}")
        return order


def _shape_of(node, key: str) -> tuple:
    types = node.input_type if key == "input" else node.output_type
    value = (types or {}).get(key)
    if value is None:
        raise NirFormatError(f"a {type(node).__name__} node has no {key} shape")
    return tuple(int(v) for v in np.asarray(value).reshape(-1))


def _pair(name: str, value, what: str) -> tuple:
    v = np.asarray(value).reshape(-1)
    if v.size == 1:
        v = np.repeat(v, 2)
    if v.size != 2 or not np.all(v == np.round(v)):
        raise NirFormatError(f"node {name!r}: {what} {value!r} is not one or two integers")
    return tuple(int(x) for x in v)


def _padding(name: str, node) -> tuple:
    """Conv2d padding: 'valid' is 0, 'same' is (dilation·(k − 1))/2 where that is exact."""
    pad = node.padding
    if isinstance(pad, bytes):
        pad = pad.decode()
    if isinstance(pad, str):
        if pad == "valid":
            return (0, 0)
        kernel = np.asarray(node.weight.shape[2:])
        span = np.asarray(_pair(name, node.dilation, "dilation")) * (kernel - 1)
        if pad != "same" or np.any(span % 2) or _pair(name, node.stride, "stride") != (1, 1):
            raise NirFormatError(f"node {name!r}: padding {pad!r} has no exact symmetric form here")
        return tuple(int(s) // 2 for s in span)
    return _pair(name, pad, "padding")


def _weighted(syn: _Synapse, in_shape: tuple, gain: float):
    """(kind, weight, bias or None, conv geometry) of one synapse, its input gain folded in."""
    node, name = syn.node, syn.name
    weight = np.asarray(node.weight, dtype=np.float64) * gain
    bias = getattr(node, "bias", None)
    bias = None if bias is None else np.asarray(bias, dtype=np.float64).reshape(-1) * gain
    if isinstance(node, nir.Conv2d):
        if len(in_shape) != 3 or weight.ndim != 4:
            raise NirFormatError(f"node {name!r}: a Conv2d needs a (C, H, W) input and a 4-D "
                                 f"weight, got input {in_shape} and weight {weight.shape}")
        geometry = dict(stride=_pair(name, node.stride, "stride"), padding=_padding(name, node),
                        dilation=_pair(name, node.dilation, "dilation"), groups=int(node.groups))
        return "conv", weight, bias, geometry
    if len(in_shape) != 1 or weight.ndim != 2:
        raise NirFormatError(f"node {name!r}: a {type(node).__name__} needs a flat input (add a "
                             f"Flatten) and a 2-D weight, got input {in_shape} and weight "
                             f"{weight.shape}")
    return "dense", weight, bias, {}


class _Importer:
    """Builds the IR layers from a :class:`_Topology` (module docstring)."""

    def __init__(self, topo: _Topology, dt: float):
        self.topo, self.dt = topo, dt
        self.layers: list = []
        self.layer_of: dict = {}   # neuron node -> IR layer name
        self.shape_of: dict = {topo.input: _shape_of(topo.nodes[topo.input], "input")}
        self.readout = "spikes"

    def flatten(self, name: str, shape: tuple) -> tuple:
        node = self.topo.nodes[name]
        start, end = int(node.start_dim), int(node.end_dim)
        if start not in (0, -len(shape)) or end not in (-1, len(shape) - 1):
            raise NirFormatError(f"node {name!r}: Flatten(start_dim={start}, end_dim={end}) of a "
                                 f"{shape} input keeps dimensions; the IR flattens all of them")
        return (int(np.prod(shape)),)

    def source_shape(self, syn: _Synapse, add_layers: bool) -> tuple:
        shape = self.shape_of[syn.source]
        for name in syn.flattens:
            shape = self.flatten(name, shape)
            if add_layers:
                self.layers.append(Flatten(name=name))
        return shape

    def layer(self, index: int, neuron: str) -> None:
        """The IR layer of the ``index``-th neuron of the chain (its Flatten layers first)."""
        topo = self.topo
        previous = topo.neurons[index - 1] if index else topo.input
        synapses = topo.inputs_of(neuron)
        main = next((s for s in synapses if s.source == previous), None)
        if main is None:
            raise NirFormatError(f"neuron {neuron!r} has no synapse from {previous!r}, the layer "
                                 f"before it in the chain")
        dyn = _dynamics(neuron, topo.nodes[neuron], self.dt)
        ir_neuron = self.neuron(neuron, dyn, index == len(topo.neurons) - 1)
        gain = 1.0 if abs(dyn.gain - 1.0) <= GAIN_TOLERANCE else dyn.gain
        in_shape = self.source_shape(main, True)
        kind, weight, bias, geometry = _weighted(main, in_shape, gain)
        extras = [self.projection(s, gain) for s in synapses if s is not main]
        bias = self.total_bias(neuron, dyn, [bias] + [b for _, b in extras])
        layer = (Conv if kind == "conv" else Dense)(
            weight=weight, bias=bias, neuron=ir_neuron, name=main.name,
            extra_inputs=tuple(p for p, _ in extras), **geometry)
        try:
            out_shape = tuple(int(s) for s in layer.output_shape(in_shape))
        except IRError as e:
            raise NirFormatError(f"node {main.name!r}: {e}") from None
        population = np.asarray(getattr(topo.nodes[neuron], "v_threshold", topo.nodes[neuron].r))
        if population.size not in (1, int(np.prod(out_shape))):
            raise NirFormatError(f"neuron {neuron!r} has {population.size} neurons, its synapse "
                                 f"{main.name!r} outputs {out_shape}")
        self.layers.append(layer)
        self.layer_of[neuron] = main.name
        self.shape_of[neuron] = out_shape

    def neuron(self, name: str, dyn: _Dynamics, last: bool) -> Neuron:
        if dyn.threshold >= NEVER_FIRES:
            if not (last and dyn.du == _NO_CURRENT_DECAY and dyn.dv == 0):
                raise NirFormatError(f"node {name!r} never fires (threshold >= {NEVER_FIRES:.8g}); only the last "
                                     f"neuron may, as a non-leaky integrator (the potential readout)")
            self.readout = "potential"
            return readout_neuron(False)
        return Neuron(kind="cuba", threshold=dyn.threshold, du=dyn.du, dv=dyn.dv)

    def projection(self, syn: _Synapse, gain: float) -> tuple:
        if syn.source not in self.layer_of:
            raise NirFormatError(f"node {syn.name!r} reads {syn.source!r}, which is not an earlier "
                                 f"neuron of the chain")
        kind, weight, bias, geometry = _weighted(syn, self.source_shape(syn, False), gain)
        return Projection(source=self.layer_of[syn.source], weight=weight, kind=kind,
                          **geometry), bias

    def total_bias(self, neuron: str, dyn: _Dynamics, biases: list) -> Optional[np.ndarray]:
        present = [b for b in biases if b is not None]
        if not present:
            return None
        total = present[0].copy()
        for b in present[1:]:
            if b.shape != total.shape:
                raise NirFormatError(f"neuron {neuron!r}: its synapses' biases have shapes "
                                     f"{b.shape} and {total.shape}")
            total = total + b
        if dyn.du != _NO_CURRENT_DECAY and np.any(total):
            raise NirFormatError(f"neuron {neuron!r}: a bias into a decaying synaptic current "
                                 f"(du = {dyn.du}) accumulates in the current; Loihi 2 adds "
                                 f"biases to v, so only du = 4095 (tau_syn = dt) takes one")
        return total


def _graph_dt(graph: nir.NIRGraph, dt: Optional[float]) -> tuple:
    """(dt, our own metadata or None): a graph of this project carries its dt."""
    meta = graph.metadata if isinstance(graph.metadata, dict) else {}
    ours = _text(meta.get("format", "")) == NIR_FORMAT
    if ours:
        raw = np.asarray(meta.get("format_version", "missing")).reshape(-1)
        version = raw[0] if raw.size == 1 else raw
        if not (isinstance(version, np.integer) and int(version) == NIR_FORMAT_VERSION):
            raise NirFormatError(f"metadata format_version = {_text(version)!r}: this code reads "
                                 f"{NIR_FORMAT} format version {NIR_FORMAT_VERSION} only (a newer "
                                 f"file needs a newer nqloihi)")
        dt = float(np.asarray(meta["dt"]).reshape(-1)[0])
    dt = DEFAULT_DT if dt is None else float(dt)
    if not (math.isfinite(dt) and dt > 0):
        raise NirFormatError(f"dt must be a positive number, got {dt!r}")
    return dt, (meta if ours else None)


def _metadata(meta: Optional[dict], graph: nir.NIRGraph, source: str, dt: float) -> dict:
    if meta is not None:
        try:
            record = json.loads(_text(meta.get("provenance", "{}")))
        except ValueError as e:
            raise NirFormatError(f"the provenance metadata is not JSON ({e})") from None
        return record if isinstance(record, dict) else {}
    foreign = {str(k): _text(v) for k, v in (graph.metadata or {}).items()} \
        if isinstance(graph.metadata, dict) else {}
    return {"source": "nir", "file": source, "dt": dt, "nir_metadata": foreign}


def from_nir_graph(graph: nir.NIRGraph, *, dt: Optional[float] = None,
                   source: str = "graph") -> Network:
    """The float IR of a NIR graph (see :class:`_Topology`, :func:`_dynamics`);
    :class:`NirFormatError` naming the node for anything the IR cannot hold exactly. A graph of
    ours must say ``format_version`` :data:`NIR_FORMAT_VERSION`. Conv biases always come back as
    arrays; ``weight_exp`` is folded into the weights, so it comes back as 0."""
    if not isinstance(graph, nir.NIRGraph):
        raise NirFormatError(f"expected a NIRGraph, got {type(graph).__name__}")
    dt, meta = _graph_dt(graph, dt)
    topo = _Topology(graph)
    imp = _Importer(topo, dt)
    for i, neuron in enumerate(topo.neurons):
        imp.layer(i, neuron)
    input_shape = imp.shape_of[topo.input]
    if len(input_shape) not in (1, 3):
        raise NirFormatError(f"input {topo.input!r} has shape {input_shape}; the IR takes (C, H, W) "
                             f"or (N,)")
    version = _text(meta.get("ir_version", IR_VERSION)) if meta is not None else IR_VERSION
    if version not in READABLE_IR_VERSIONS:
        raise NirFormatError(f"IR version {version!r} is not one this code reads "
                             f"({', '.join(READABLE_IR_VERSIONS)})")
    try:
        return Network(input=Input(shape=input_shape), layers=imp.layers, integer=False,
                       metadata=_metadata(meta, graph, source, dt), readout=imp.readout,
                       version=version)
    except IRError as e:
        raise NirFormatError(f"inconsistent network: {e}") from None
