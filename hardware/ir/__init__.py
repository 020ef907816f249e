"""SNN IR: the single, typed, versioned description of a converted network.

The converter emits it (float form), the quantizer maps float → integer IR, the netx and
NIR readers/writers map it to files and the reference simulator executes it.

* Tensors are in PyTorch order: activations (C, H, W), conv weights (out, in/groups,
  kh, kw) used as cross-correlation, dense weights (out, in); Flatten flattens in C order.
* Spikes between layers are binary (value 1); in the float form the previous layer's θ
  is folded into the next layer's weights. The first weighted layer receives the input
  directly every step (integer form: an unsigned ``input_bits`` graded spike,
  ``round(x · (2**input_bits − 1))``).
* Neurons (:class:`Neuron`): ``if_soft`` (the paper's IF neuron) or ``cuba`` (Loihi's
  stock LIF); their update, float and integer, is :mod:`hardware.fixed_point.dynamics`.
  In the integer form θ is the threshold mantissa and b the bias mantissa.
* Extra inputs (residual networks, IR 1.2): a Conv/Dense layer's synaptic input is its
  main synapse on the previous layer's output plus, per :class:`Projection` in
  ``extra_inputs``, that synapse on the spikes of an earlier weighted layer ``source``
  (``a = W ⊛ s_prev + Σ_k P_k ⊛ s_source_k``). On Lava every hop adds one step, so a
  projection is delayed by :meth:`Network.extra_delay` more steps to arrive aligned.
  A network without extra inputs is exactly IR 1.1.
* Readout (``Network.readout``; default ``potential``, the paper's): the last weighted
  layer is a non-firing integrator (:func:`readout_neuron`) whose v at T is argmax-ed;
  ``spikes``: the class with the most output spikes (ties: lowest index).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Union

import numpy as np

IR_VERSION = "1.2"
#: IR versions this code reads (1.2 added :class:`Projection` extra inputs).
READABLE_IR_VERSIONS = ("1.0", "1.1", "1.2")


from hardware.errors import IRError  # noqa: E402  (re-exported)
from hardware.kinds import NEURON_KINDS, PROJECTION_KINDS, READOUTS, Readout  # noqa: E402,F401  (re-exported)
from hardware.spec import LOIHI2  # noqa: E402


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0,
                     dilation: int = 1) -> int:
    """Output length of a convolution along one axis (PyTorch's and Lava's floor rule);
    below 1 when the dilated kernel does not fit the padded input."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@dataclass
class Neuron:
    """Neuron parameters of one layer.

    ``threshold``: θ (float form) or the threshold mantissa ``vThMant``
    (integer form). ``du``/``dv``: Loihi 12-bit decays (:mod:`hardware.fixed_point.dynamics`).
    ``bias_exp``: exponent applied to the integer bias mantissa.
    """

    kind: str
    threshold: Union[float, int]
    du: int = LOIHI2.if_du
    dv: int = LOIHI2.if_dv
    bias_exp: int = LOIHI2.netx_bias_exp

    def __post_init__(self) -> None:
        if self.kind not in NEURON_KINDS:
            raise IRError(f"neuron kind {self.kind!r} is not one of {NEURON_KINDS}")

    @property
    def initial_fraction(self) -> float:
        """v(0) as a fraction of θ: 0.5 for the paper's IF neuron, 0 for LIF."""
        return 0.5 if self.kind == "if_soft" else 0.0


@dataclass
class Input:
    """Network input of shape ``(C, H, W)`` or ``(N,)``.

    ``neuron`` is set only for networks written by others (lava-dl's shipped
    nets have an input layer of neurons); this project's networks feed the
    input straight into the first weighted layer.
    """

    shape: tuple
    neuron: Optional[Neuron] = None
    name: str = "input"


@dataclass
class Projection:
    """An extra synaptic input of a Conv/Dense layer: the spikes of the earlier weighted
    layer named ``source`` through their own weights, added to the layer's synaptic input.

    ``kind='conv'``: ``weight`` is (out, in/groups, kh, kw) over the source's (C, H, W)
    output with ``stride``/``padding``/``dilation``/``groups``, e.g. a ResNet identity
    shortcut (1×1, weight θ_source·I) or a 1×1 stride-2 projection shortcut with its BN
    folded. ``kind='dense'``: ``weight`` is (out, in) over the source output flattened in
    C order. Its output shape must equal the receiving layer's.
    """

    source: str
    weight: np.ndarray
    kind: str = "conv"
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    weight_exp: int = 0

    def __post_init__(self) -> None:
        if self.kind not in PROJECTION_KINDS:
            raise IRError(f"projection from {self.source!r}: kind {self.kind!r} is not one of "
                          f"{PROJECTION_KINDS}")

    def synapse(self, name: str):
        """The projection as a neuron-less Conv/Dense (for shape and kernel code)."""
        placeholder = Neuron(kind="if_soft", threshold=1)
        if self.kind == "conv":
            return Conv(weight=self.weight, bias=None, neuron=placeholder, stride=self.stride,
                        padding=self.padding, dilation=self.dilation, groups=self.groups,
                        weight_exp=self.weight_exp, name=name)
        return Dense(weight=self.weight, bias=None, neuron=placeholder,
                     weight_exp=self.weight_exp, name=name)

    def output_shape(self, source_shape: tuple, name: str) -> tuple:
        if self.kind == "dense":
            return self.synapse(name).output_shape((int(np.prod(source_shape)),))
        if len(source_shape) != 3:
            raise IRError(f"{name}: a conv projection needs a (C, H, W) source, "
                          f"{self.source!r} outputs {tuple(source_shape)}")
        return self.synapse(name).output_shape(tuple(source_shape))



@dataclass
class Conv:
    weight: np.ndarray
    bias: Optional[np.ndarray]
    neuron: Neuron
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    weight_exp: int = 0
    name: str = "conv"
    extra_inputs: tuple = ()

    def output_shape(self, in_shape: tuple) -> tuple:
        c, h, w = in_shape
        if np.ndim(self.weight) != 4:
            raise IRError(f"layer {self.name}: conv weight must be 4-D, got shape "
                          f"{np.shape(self.weight)}")
        if min(self.stride) < 1 or min(self.dilation) < 1 or min(self.padding) < 0 \
                or self.groups < 1:
            raise IRError(f"layer {self.name}: stride {tuple(self.stride)}, dilation "
                          f"{tuple(self.dilation)} and groups {self.groups} must be >= 1 and "
                          f"padding {tuple(self.padding)} >= 0")
        kh, kw = self.weight.shape[2:]
        oh, ow = (conv_output_size(size, k, s, p, d) for size, k, s, p, d in
                  zip((h, w), (kh, kw), self.stride, self.padding, self.dilation))
        if c != self.weight.shape[1] * self.groups:
            raise IRError(f"layer {self.name}: input has {c} channels, weight expects "
                          f"{self.weight.shape[1] * self.groups}")
        if oh < 1 or ow < 1:
            raise IRError(f"layer {self.name}: a {kh}x{kw} kernel does not fit the input "
                          f"{tuple(in_shape)}")
        return (self.weight.shape[0], oh, ow)


@dataclass
class Dense:
    weight: np.ndarray
    bias: Optional[np.ndarray]
    neuron: Neuron
    weight_exp: int = 0
    name: str = "dense"
    extra_inputs: tuple = ()

    def output_shape(self, in_shape: tuple) -> tuple:
        if len(in_shape) != 1 or in_shape[0] != self.weight.shape[1]:
            raise IRError(f"layer {self.name}: input shape {in_shape} does not match "
                          f"weight {self.weight.shape}")
        return (self.weight.shape[0],)


@dataclass
class Flatten:
    name: str = "flatten"

    def output_shape(self, in_shape: tuple) -> tuple:
        return (int(np.prod(in_shape)),)


Layer = Union[Conv, Dense, Flatten]
WEIGHTED = (Conv, Dense)


@dataclass
class Network:
    """An ordered SNN.

    ``integer``: False for the float form (converter output), True for the
    Loihi 2 fixed-point form (quantizer output, netx files).
    ``input_bits``: bits of the graded input spikes (integer form only).
    ``metadata``: provenance (config, checkpoint hash, quantization report);
    JSON-serialisable values only.
    ``readout``: ``'potential'`` (the last weighted layer is a non-firing
    integrator whose membrane is read at the end of a sample; see
    :func:`readout_neuron`) or ``'spikes'`` (output spike counts).
    """

    input: Input
    layers: list
    integer: bool = False
    input_bits: Optional[int] = None
    metadata: dict = field(default_factory=dict)
    version: str = IR_VERSION
    readout: Readout = "potential"

    def __post_init__(self) -> None:
        self.shapes()  # validates the chain of shapes
        if self.readout not in READOUTS:
            raise IRError(f"readout {self.readout!r} is not one of {READOUTS}")
        if self.readout == "potential":
            weighted = self.weighted_layers
            if not weighted or not isinstance(self.layers[-1], WEIGHTED):
                raise IRError("readout 'potential' needs a network that ends with a conv/dense layer")
            want = readout_neuron(self.integer)
            if weighted[-1].neuron != want:
                raise IRError(f"layer {weighted[-1].name}: a potential readout layer must be a "
                              f"non-firing integrator {want}, got {weighted[-1].neuron}")

    @property
    def weighted_layers(self) -> list:
        return [layer for layer in self.layers if isinstance(layer, WEIGHTED)]

    def shapes(self) -> list:
        """Output shape of every layer, in order."""
        shape = tuple(self.input.shape)
        out = []
        earlier: dict = {}  # weighted layer name -> output shape
        for layer in self.layers:
            if isinstance(layer, Conv) and len(shape) != 3:
                raise IRError(f"layer {layer.name}: conv needs a (C, H, W) input, got {shape}")
            shape = tuple(int(s) for s in layer.output_shape(shape))
            for k, proj in enumerate(getattr(layer, "extra_inputs", ())):
                where = f"layer {layer.name}, extra input {k}"
                if not isinstance(proj, Projection):
                    raise IRError(f"{where}: expected a Projection, got {type(proj).__name__}")
                if proj.source not in earlier:
                    raise IRError(f"{where}: source {proj.source!r} is not an earlier conv/dense "
                                  f"layer (extra inputs come from spiking layers listed before "
                                  f"the layer they feed)")
                got = tuple(int(s) for s in proj.output_shape(earlier[proj.source], where))
                if got != shape:
                    raise IRError(f"{where}: projection from {proj.source!r} outputs {got}, the "
                                  f"layer outputs {shape}")
            if isinstance(layer, WEIGHTED):
                if layer.name in earlier:
                    raise IRError(f"layer name {layer.name!r} is used twice")
                earlier[layer.name] = shape
            out.append(shape)
        return out

    @property
    def is_sequential(self) -> bool:
        """True when no layer has extra inputs (a plain chain, IR 1.1 semantics)."""
        return not any(getattr(layer, "extra_inputs", ()) for layer in self.layers)

    def depths(self) -> dict:
        """Synaptic hops from the input to each weighted layer along the main chain
        (the first weighted layer: 1); on Lava a layer's neuron integrates, at its window
        step τ, what arrived over exactly this many hops."""
        return {layer.name: i + 1 for i, layer in enumerate(self.weighted_layers)}

    def extra_delay(self, layer, projection: Projection) -> int:
        """Extra synaptic delay (steps) that aligns ``projection`` with ``layer``'s main
        input on Lava: depth(layer) − depth(source) − 1 (0 from the previous layer)."""
        depths = self.depths()
        return depths[layer.name] - depths[projection.source] - 1

    @property
    def output_size(self) -> int:
        return int(np.prod(self.shapes()[-1]))

    def replace(self, **changes: Any) -> "Network":
        return replace(self, **changes)


def readout_neuron(integer: bool) -> Neuron:
    """The output layer of a potential readout: on Loihi 2 a CUBA compartment with
    du = 4095 (u = synaptic input, no memory), dv = 0 (v integrates) and a threshold it
    never reaches: +inf in the float form, the largest threshold mantissa in the integer
    form (the quantizer keeps |v| below it for every T it was quantized for)."""
    return Neuron(kind="cuba", threshold=LOIHI2.threshold_max if integer else math.inf,
                  du=LOIHI2.if_du, dv=LOIHI2.if_dv, bias_exp=LOIHI2.netx_bias_exp)


def networks_equal(a: Network, b: Network) -> bool:
    """Exact structural and numerical equality (integers compared with ==)."""
    if (a.integer, a.input_bits, tuple(a.input.shape), len(a.layers), a.readout) != (
            b.integer, b.input_bits, tuple(b.input.shape), len(b.layers), b.readout):
        return False
    if (a.input.neuron is None) != (b.input.neuron is None):
        return False
    if a.input.neuron is not None and a.input.neuron != b.input.neuron:
        return False
    for la, lb in zip(a.layers, b.layers):
        if type(la) is not type(lb):
            return False
        if isinstance(la, Flatten):
            continue
        if la.neuron != lb.neuron or la.weight_exp != lb.weight_exp:
            return False
        if la.weight.shape != lb.weight.shape or not np.array_equal(la.weight, lb.weight):
            return False
        if (la.bias is None) != (lb.bias is None):
            return False
        if la.bias is not None and not np.array_equal(la.bias, lb.bias):
            return False
        if isinstance(la, Conv) and not _same_geometry(la, lb):
            return False
        if len(la.extra_inputs) != len(lb.extra_inputs):
            return False
        if la.extra_inputs and la.name != lb.name:  # sources refer to layers by name
            return False
        for pa, pb in zip(la.extra_inputs, lb.extra_inputs):
            if (pa.source, pa.kind, pa.weight_exp) != (pb.source, pb.kind, pb.weight_exp):
                return False
            if pa.weight.shape != pb.weight.shape or not np.array_equal(pa.weight, pb.weight):
                return False
            if pa.kind == "conv" and not _same_geometry(pa, pb):
                return False
    return True


def _same_geometry(a, b) -> bool:
    return (tuple(a.stride), tuple(a.padding), tuple(a.dilation), a.groups) == (
        tuple(b.stride), tuple(b.padding), tuple(b.dilation), b.groups)
