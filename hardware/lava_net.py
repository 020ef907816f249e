"""Build an integer SNN IR as a Lava network of lava-dl netx blocks.

Why this loader exists: stock ``lava.lib.dl.netx.hdf5.Network`` maps every
neuron type it knows to a stock Lava process (``CUBA``/``LOIHI`` → ``LIF`` /
``LIFReset``) and looks its ``get_neuron_params`` up by module-level class name
from ``create_dense``/``create_conv``, so a subclass cannot add the paper's
soft-reset IF neuron. Patching netx globally would change every other user of
it in the process, so instead this module performs the *same* construction as
``netx.hdf5.Network._create`` directly from the IR, with the same blocks
(``lava.lib.dl.netx.blocks.process.Conv``/``Dense``) and the same parameter
transformations; only the neuron process differs for ``if_soft`` layers
(:class:`hardware.lava_procs.if_soft.process.IFSoftReset`). For ``cuba`` networks the result
is identical to stock netx loading the file written by ``hardware.netx_io``.

What netx does and this module mirrors (lava-dl 0.6, ``hdf5.py``):

* Lava shapes are (x, y, z) = (W, H, C): ``shape = file_shape[::-1]``; the IR
  is (C, H, W).
* conv weights: ``w[:, :, ::-1, ::-1].transpose(0, 3, 2, 1)`` (IR/file layout
  (out, in, kh, kw) → Lava (out, kw, kh, in)); stride/padding/dilation
  reversed to (x, y).
* dense weights: passed through ``netx.utils.optimize_weight_bits`` (rescale
  + weight exponent; for integer weights in [-128, 127] the synaptic input is
  ``W @ s`` exactly).
* neuron params: ``vth = vThMant``, ``du``, ``dv``, ``bias_exp = 6``,
  ``bias_key = 'bias_mant'``, ``num_message_bits = 0``; with a reset interval,
  layer i (0-based among weighted blocks) gets
  ``reset_offset = user_offset + 1 + i`` (netx: "time starts from 1").
* the first block accepts ``input_message_bits = net.input_bits`` graded
  spikes; later blocks binary spikes.
* a Flatten after a conv connects ``prev.out.transpose([2, 1, 0]).flatten()``
  to the dense block, i.e. the (W, H, C) output is read in (C, H, W) C order,
  which is the IR's ``Flatten``.

Neuron processes are chosen per layer, from that layer's kind: an ``if_soft``
network with a potential readout (``net.readout == 'potential'``) has
:class:`IFSoftReset` hidden layers and a ``cuba`` output layer, which becomes
the stock ``LIF``/``LIFReset`` with vth = 131071, du = 4095, dv = 0 (the
non-firing integrator of :func:`hardware.ir.readout_neuron`), exactly what
stock netx builds for that layer of the file. Its membrane is read by
:mod:`hardware.lava_runner` through ``LavaNetwork.out_layer.neuron.v``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from lava.lib.dl.netx.blocks.process import Conv as ConvBlock
from lava.lib.dl.netx.blocks.process import Dense as DenseBlock
from lava.lib.dl.netx.utils import optimize_weight_bits
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.proc.lif.process import LIF, LIFReset

from . import ir
from .errors import LavaBackendError
from .lava_procs.if_soft.process import IFSoftReset
from .spec import LOIHI2
from .validate import check_neuron, project_limits, validate_network

__all__ = ["LavaNetwork", "build_lava_network", "chw_to_whc", "neuron_params"]


def chw_to_whc(shape: tuple) -> tuple:
    """IR (C, H, W) → Lava (x, y, z) = (W, H, C); 1-D shapes unchanged."""
    return tuple(int(s) for s in tuple(shape)[::-1])


@dataclass
class LavaNetwork:
    """The blocks of a built network plus its boundary ports.

    ``inp``: the first block's InPort (connect a source to it); ``out``: the
    last block's OutPort (connect a sink); ``layers``: the netx blocks in
    order. The same members as a stock ``netx.hdf5.Network`` that the runner uses.
    """

    inp: InPort
    out: OutPort
    layers: list

    @property
    def out_layer(self):
        return self.layers[-1]


def neuron_params(layer_name: str, neuron: ir.Neuron, reset_interval: Optional[int],
                  reset_offset: int) -> dict:
    """netx's ``get_neuron_params`` dictionary for one IR neuron.

    ``cuba`` → ``LIF`` (no reset interval) or ``LIFReset``; ``if_soft`` →
    :class:`IFSoftReset`. Values are checked by :func:`hardware.validate.check_neuron`
    (:func:`~hardware.validate.project_limits`) so a value that does not fit raises
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
    """The netx Conv/Dense block of one IR layer, with netx's parameter transformations."""
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


def build_lava_network(net: ir.Network, reset_interval: Optional[int],
                       reset_offset: int = 0) -> LavaNetwork:
    """Build the integer IR ``net`` out of netx blocks, wired like netx.

    Layer i (0-based among Conv/Dense) resets at the start of steps ``t`` with
    ``t % reset_interval == (reset_offset + 1 + i) % reset_interval``
    (``reset_interval=None``: never; cuba layers then use ``LIF``). Every value is
    checked first by :func:`hardware.validate.validate_network` (``project_limits``:
    8-bit weights, weight exponent 0 since netx derives the dense exponent itself).
    """
    if net.input.neuron is not None:
        raise LavaBackendError("this loader feeds the input straight into the first weighted "
                               "layer; an IR with an input neuron layer must be loaded with "
                               "stock netx (lava.lib.dl.netx.hdf5.Network)")
    validate_network(net, project_limits())
    if reset_interval is not None and int(reset_interval) < 1:
        raise LavaBackendError(f"reset_interval must be >= 1, got {reset_interval}")
    if reset_offset < 0:
        raise LavaBackendError(f"reset_offset must be >= 0, got {reset_offset}")

    input_message_bits = int(net.input_bits)
    in_shape = tuple(net.input.shape)
    lava_in_shape = chw_to_whc(in_shape)
    offset = reset_offset + 1  # netx: "time starts from 1 in hardware"
    flatten_next = False
    layers: list = []
    shapes = net.shapes()
    for layer, out_shape in zip(net.layers, shapes):
        if isinstance(layer, ir.Flatten):
            flatten_next = True
            continue
        params = neuron_params(layer.name, layer.neuron, reset_interval, offset)
        block = _block(layer, out_shape, params,
                       layers[-1].shape if layers else lava_in_shape, input_message_bits)
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
    return LavaNetwork(inp=layers[0].inp, out=layers[-1].out, layers=layers)
