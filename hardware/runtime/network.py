"""Build an integer SNN IR as a Lava network of lava-dl netx blocks (:func:`build_lava_network`).

Why this loader exists: stock ``lava.lib.dl.netx.hdf5.Network`` maps every neuron type it
knows to a stock Lava process and looks ``get_neuron_params`` up by module-level name, so a
subclass cannot add the paper's soft-reset IF neuron, and patching netx globally would
change it for every other user in the process. This module performs the *same*
construction as ``netx.hdf5.Network._create`` (lava-dl 0.6) directly from the IR, with the
same blocks (``lava.lib.dl.netx.blocks.process.Conv``/``Dense``) and parameter
transformations (:func:`_block`, :func:`neuron_params`); only ``if_soft`` layers get
another neuron process (:class:`hardware.runtime.procs.if_soft.process.IFSoftReset`). For
``cuba`` networks the result is identical to stock netx loading the file
:mod:`hardware.formats.netx` writes.

Neuron processes follow each layer's kind: a potential readout's output layer is ``cuba``,
the stock ``LIF``/``LIFReset`` non-firing integrator of :func:`hardware.ir.readout_neuron`,
whose membrane :mod:`hardware.runtime.runner` reads through ``LavaNetwork.out_layer``.

Residual networks: stock netx has no multi-input layer, so every
:class:`hardware.ir.Projection` becomes one ``lava.proc.sparse.process.DelaySparse``
(bit-accurate model under ``fixed_pt``) from the source block's output into the layer's
neurons, which add what arrives (:func:`_connect_projection`), delayed to align with the
main chain (:class:`hardware.runtime.schedule.Schedule`), with weights encoded exactly
(:func:`_projection_process`) and indices in Lava's (W, H, C) order (:func:`projection_matrix`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import sparse
from lava.lib.dl.netx.blocks.process import Conv as ConvBlock
from lava.lib.dl.netx.blocks.process import Dense as DenseBlock
from lava.lib.dl.netx.utils import optimize_weight_bits
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.proc.lif.process import LIF, LIFReset
from lava.proc.sparse.process import DelaySparse
from lava.utils.weightutils import SignMode

from hardware import ir
from hardware.errors import LavaBackendError
from hardware.runtime.procs.if_soft.process import IFSoftReset
from hardware.spec import LOIHI2
from hardware.ir.validate import check_neuron, project_limits, validate_network

__all__ = ["LavaNetwork", "LavaProjection", "build_lava_network", "chw_to_whc",
           "neuron_params", "projection_matrix", "lava_order"]


def chw_to_whc(shape: tuple) -> tuple:
    """IR (C, H, W) → Lava (x, y, z) = (W, H, C); 1-D shapes unchanged."""
    return tuple(int(s) for s in tuple(shape)[::-1])


@dataclass
class LavaProjection:
    """One extra input as built: ``process`` (a DelaySparse) carries the spikes of the
    block of layer ``source`` into the neurons of layer ``layer``, ``delay`` extra steps late."""

    layer: str
    source: str
    delay: int
    process: DelaySparse


@dataclass
class LavaNetwork:
    """The blocks of a built network plus its boundary ports.

    ``inp``: the first block's InPort (connect a source to it); ``out``: the
    last block's OutPort (connect a sink); ``layers``: the netx blocks in
    order. The same members as a stock ``netx.hdf5.Network`` that the runner uses.
    ``projections``: the extra inputs of a residual network (empty for a chain).
    """

    inp: InPort
    out: OutPort
    layers: list
    projections: list = field(default_factory=list)

    @property
    def out_layer(self):
        return self.layers[-1]


def neuron_params(layer_name: str, neuron: ir.Neuron, reset_interval: Optional[int],
                  reset_offset: int) -> dict:
    """netx's ``get_neuron_params`` dictionary for one IR neuron.

    ``cuba`` → ``LIF`` (no reset interval) or ``LIFReset``; ``if_soft`` →
    :class:`IFSoftReset`. Values are checked by :func:`hardware.ir.validate.check_neuron`
    (:func:`~hardware.ir.validate.project_limits`) so a value that does not fit raises
    :class:`LoihiRangeError` instead of being wrapped by Lava.
    """
    check_neuron(neuron, layer_name, project_limits())
    vth = int(neuron.threshold)
    if neuron.kind == "cuba":
        proc = LIF if reset_interval is None else LIFReset
    elif neuron.kind == "if_soft":
        proc = IFSoftReset
    else:  # pragma: no cover - ir.Neuron validates kinds
        raise LavaBackendError(f"layer {layer_name}: unknown neuron kind {neuron.kind!r}")
    params = {"neuron_proc": proc, "bias_key": "bias_mant", "vth": vth,
              "du": int(neuron.du), "dv": int(neuron.dv),
              "bias_exp": LOIHI2.netx_bias_exp, "num_message_bits": 0}
    if reset_interval is not None:
        params["reset_interval"] = int(reset_interval)
        params["reset_offset"] = int(reset_offset)
    elif neuron.kind == "if_soft":
        params["reset_interval"] = None
        params["reset_offset"] = 0
    return params


def _bias_kwargs(layer) -> dict:
    return {} if layer.bias is None else {"bias": np.asarray(layer.bias).astype(int)}


def _block(layer, out_shape: tuple, params: dict, lava_in_shape: tuple,
           input_message_bits: int):
    """The netx Conv/Dense block of one IR layer, with netx's parameter transformations
    (lava-dl 0.6 ``hdf5.py``): Lava shapes are (x, y, z) = (W, H, C), the IR's (C, H, W)
    reversed; conv weights (out, in, kh, kw) become ``w[:, :, ::-1, ::-1].transpose(0, 3, 2, 1)``
    with stride, padding and dilation reversed to (x, y); dense weights go through
    ``netx.utils.optimize_weight_bits`` (for 8-bit integer weights the synaptic input is
    ``W @ s`` exactly). The first block takes ``net.input_bits`` graded spikes, later blocks
    binary ones; a Flatten after a conv is netx's (:func:`build_lava_network`)."""
    w = np.asarray(layer.weight).astype(int)  # NetDict casts 'weight' with astype(int)
    if isinstance(layer, ir.Conv):
        return ConvBlock(
            input_shape=lava_in_shape,
            shape=chw_to_whc(out_shape),
            neuron_params=params,
            weight=w[:, :, ::-1, ::-1].transpose((0, 3, 2, 1)),
            stride=np.asarray(layer.stride)[::-1],
            padding=np.asarray(layer.padding)[::-1],
            dilation=np.asarray(layer.dilation)[::-1],
            groups=int(layer.groups),
            input_message_bits=input_message_bits,
            **_bias_kwargs(layer),
        )
    weight, num_weight_bits, weight_exponent, sign_mode = optimize_weight_bits(w)
    return DenseBlock(
        shape=(int(np.prod(out_shape)),),
        neuron_params=params,
        weight=weight,
        num_weight_bits=num_weight_bits,
        weight_exponent=weight_exponent,
        sign_mode=sign_mode,
        input_message_bits=input_message_bits,
        sparse_synapse=False,
        **_bias_kwargs(layer),
    )


def lava_order(shape: tuple) -> np.ndarray:
    """Position in Lava's flat order of every IR flat index: ``lava_order(shape)[i_ir]``.

    A (C, H, W) map is (W, H, C) in Lava, flattened in C order there; a 1-D shape is
    the same in both."""
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape))
    if len(shape) != 3:
        return np.arange(n)
    ir_index_in_lava_order = np.arange(n).reshape(shape).transpose(2, 1, 0).ravel()
    order = np.empty(n, dtype=np.int64)
    order[ir_index_in_lava_order] = np.arange(n)
    return order


def _conv_synapses(proj: ir.Projection, in_shape: tuple, out_shape: tuple) -> tuple:
    """(rows, cols, weights) in IR flat indices of the non-zero synapses of a conv projection.

    Output (o, y, x) reads input (g·ipg + i, y·s_h − p_h + k_y·d_h, x·s_w − p_w + k_x·d_w)
    with weight w[o, i, k_y, k_x], g = o // (C_out / groups); taps in the padding have no
    synapse. Each (output, input) pair occurs once (k_y, k_x follow from y, x and the input)."""
    w = np.asarray(proj.weight, dtype=np.int64)
    c_out, in_per_group, _, _ = w.shape
    _, h, wd = in_shape
    _, oh, ow = out_shape
    out_per_group = c_out // int(proj.groups)
    o, i, ky, kx = np.nonzero(w)
    values = w[o, i, ky, kx]
    channel = (o // out_per_group) * in_per_group + i
    (sh, sw), (ph, pw), (dh, dw) = proj.stride, proj.padding, proj.dilation
    iy = np.arange(oh)[None, :] * sh - ph + ky[:, None] * dh  # (taps, oh)
    ix = np.arange(ow)[None, :] * sw - pw + kx[:, None] * dw  # (taps, ow)
    valid = ((iy >= 0) & (iy < h))[:, :, None] & ((ix >= 0) & (ix < wd))[:, None, :]
    rows = (o[:, None, None] * oh + np.arange(oh)[None, :, None]) * ow \
        + np.arange(ow)[None, None, :]
    cols = (channel[:, None, None] * h + iy[:, :, None]) * wd + ix[:, None, :]
    full = valid.shape
    return (np.broadcast_to(rows, full)[valid], np.broadcast_to(cols, full)[valid],
            np.broadcast_to(values[:, None, None], full)[valid])


def projection_matrix(proj: ir.Projection, source_shape: tuple, out_shape: tuple
                      ) -> sparse.csr_matrix:
    """The projection as a sparse (n_out, n_source) int64 matrix in Lava's flat orders.

    Row r is the receiving neuron at Lava flat index r (of its (W, H, C) population),
    column c the source neuron at Lava flat index c of the source's flattened (W, H, C)
    output, so ``a_lava = M @ s_lava`` equals the IR's ``P ⊛ s`` renumbered. Only the
    non-zero weights are stored."""
    n_out, n_src = int(np.prod(out_shape)), int(np.prod(source_shape))
    if proj.kind == "conv":
        rows, cols, values = _conv_synapses(proj, tuple(source_shape), tuple(out_shape))
    else:
        w = np.asarray(proj.weight, dtype=np.int64)
        rows, cols = np.nonzero(w)
        values = w[rows, cols]
    m = sparse.coo_matrix((values, (lava_order(out_shape)[rows], lava_order(source_shape)[cols])),
                          shape=(n_out, n_src), dtype=np.int64)
    return m.tocsr()


def _projection_process(proj: ir.Projection, source_shape: tuple, out_shape: tuple,
                        delay: int, name: str) -> DelaySparse:
    """The DelaySparse of one projection, delaying every synapse by ``delay`` steps.

    The bit-accurate model clips and truncates like ``Dense`` and shifts by ``weight_exp``.
    Each 8-bit weight w is stored as 2w with ``weight_exp = -1``, 8 weight bits and
    ``sign_mode = MIXED`` given explicitly: MIXED's range [-256, 255] holds 2w, truncating the
    lowest bit keeps it, and (Σ 2w·s) >> 1 = Σ w·s exactly for every 8-bit matrix (all-zero
    and single-signed ones included, unlike ``optimize_weight_bits``); netx itself produces
    this encoding for a mixed-sign matrix spanning [-128, 127]. Measured: a fan-in of 300
    spikes into weights 127 / -128 gives 38100 / -38400 (no 16-bit wrap). The delay matrix
    has the weights' sparsity pattern (an integer ``delays`` would make Lava hold a dense
    n_out × n_in matrix). Cost: the model rebuilds its per-delay weight matrices every step,
    measured at delay 1: 1.3 ms per step for a 16-channel 28×28 identity shortcut (12.5 k
    synapses), 13 ms for a 1×1 stride-2 16→32-channel projection on 28×28 (99 k synapses)."""
    weights = projection_matrix(proj, source_shape, out_shape) * 2
    delays = weights.copy()
    delays.data = np.full(delays.nnz, int(delay), dtype=np.int64)
    return DelaySparse(weights=weights, delays=delays, max_delay=int(delay), weight_exp=-1,
                       num_weight_bits=LOIHI2.weight_bits, sign_mode=SignMode.MIXED,
                       num_message_bits=0, name=name)


def _connect_projection(process: DelaySparse, source_block, block) -> None:
    """source spikes (flattened (W, H, C)) -> process -> the block's neurons (reshaped).

    The neurons' InPort then has several OutPorts, and ``PyInPortVectorDense.recv`` adds what
    arrives in its int32 container: a = wrap32(a_main + Σ a_proj), so the neuron integrates
    W ⊛ s_prev + Σ_k P_k ⊛ s_source_k."""
    src_out = source_block.out
    (src_out.flatten() if len(src_out.shape) > 1 else src_out).connect(process.s_in)
    target = block.neuron.a_in
    a_out = process.a_out
    (a_out.reshape(target.shape) if len(target.shape) > 1 else a_out).connect(target)


def _check_buildable(net: ir.Network, reset_interval: Optional[int], reset_offset: int) -> None:
    """Refuse what this loader cannot build, before any Lava process exists."""
    if net.input.neuron is not None:
        raise LavaBackendError("this loader feeds the input straight into the first weighted "
                               "layer; an IR with an input neuron layer must be loaded with "
                               "stock netx (lava.lib.dl.netx.hdf5.Network)")
    validate_network(net, project_limits())
    if reset_interval is not None and int(reset_interval) < 1:
        raise LavaBackendError(f"reset_interval must be >= 1, got {reset_interval}")
    if reset_offset < 0:
        raise LavaBackendError(f"reset_offset must be >= 0, got {reset_offset}")


def build_lava_network(net: ir.Network, reset_interval: Optional[int],
                       reset_offset: int = 0, align_extra_inputs: bool = True) -> LavaNetwork:
    """Build the integer IR ``net`` out of netx blocks, wired like netx.

    Layer i (0-based among Conv/Dense) resets at the start of steps ``t`` with
    ``t % reset_interval == (reset_offset + 1 + i) % reset_interval``
    (``reset_interval=None``: never; cuba layers then use ``LIF``). Every value is
    checked first by :func:`hardware.ir.validate.validate_network` (``project_limits``:
    8-bit weights, weight exponent 0 since netx derives the dense exponent itself;
    the same for every extra input, whose delay must fit Loihi 2's). Each extra input
    becomes a DelaySparse with delay ``net.extra_delay(layer, proj)`` (module
    docstring); ``LavaNetwork.projections`` lists them. ``align_extra_inputs=False`` gives
    every extra input delay 0 instead (the misaligned, undelayed wiring: the shortcut arrives
    ``extra_delay`` steps early; only to measure what the delays buy, never what we deploy).
    """
    _check_buildable(net, reset_interval, reset_offset)
    input_message_bits = int(net.input_bits)
    in_shape = tuple(net.input.shape)
    lava_in_shape = chw_to_whc(in_shape)
    offset = reset_offset + 1  # netx: "time starts from 1 in hardware"
    flatten_next = False
    layers: list = []
    projections: list = []
    built: dict = {}  # layer name -> (block, IR output shape)
    shapes = net.shapes()
    for layer, out_shape in zip(net.layers, shapes):
        if isinstance(layer, ir.Flatten):
            flatten_next = True
            continue
        params = neuron_params(layer.name, layer.neuron, reset_interval, offset)
        block = _block(layer, out_shape, params,
                       layers[-1].shape if layers else lava_in_shape, input_message_bits)
        for k, proj in enumerate(layer.extra_inputs):
            # in 0..63: validate_network checked it
            delay = net.extra_delay(layer, proj) if align_extra_inputs else 0
            source_block, source_shape = built[proj.source]
            process = _projection_process(proj, source_shape, out_shape, delay,
                                          name=f"{layer.name}.extra_input{k}")
            _connect_projection(process, source_block, block)
            projections.append(LavaProjection(layer.name, proj.source, delay, process))
        built[layer.name] = (block, out_shape)
        layers.append(block)
        offset += 1
        input_message_bits = block.output_message_bits
        if len(layers) > 1:
            prev_out = layers[-2].out
            if flatten_next and len(prev_out.shape) == 3:
                # netx's flatten: read the (W, H, C) output in (C, H, W) C order.
                prev_out.transpose([2, 1, 0]).flatten().connect(block.inp)
            else:
                prev_out.connect(block.inp)
        flatten_next = False
    if not layers:
        raise LavaBackendError("the network has no Conv/Dense layer")
    return LavaNetwork(inp=layers[0].inp, out=layers[-1].out, layers=layers,
                       projections=projections)
