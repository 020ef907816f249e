"""The layout of a lava-dl netx ``.net`` file (HDF5) as this project writes and reads it, its
limits, and the arithmetic netx + Lava apply to dense weights. Keys as stock
``lava.lib.dl.netx.hdf5.Network`` reads them (``create_input``/``create_conv``/``create_dense``)::

    layer/0/{type='input', shape=(C, H, W) or (N,)}      (+ neuron/ if the IR input has one)
    layer/i/{type='conv', shape=(C_out, H_out, W_out), weight=(out, in/groups, kh, kw),
             bias=(C_out,), stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), groups,
             neuron/{type, vThMant, iDecay, vDecay, refDelay, gradedSpike}}
    layer/i/{type='flatten'}
    layer/i/{type='dense', shape=(N_out,), weight=(out, in), bias=(N_out,), neuron/{...}}
    layer/i/{type='concat', layer_type='conv'|'dense', <every key of that layer>,
             inputs/k/{source=j, kind='conv'|'dense', weight, (conv: stride, padding, dilation,
                       groups); attribute weight_exp}}   (a layer with extra inputs)

Shapes are CHW (netx's WHC reversed); conv weights are PyTorch cross-correlation kernels;
stride/padding/dilation are in (h, w) order. Neuron: ``vThMant = threshold``, ``iDecay = du + 1``,
``vDecay = dv`` (netx computes ``du = iDecay - 1``, ``dv = vDecay``, and uses ``bias_exp = 6``).
What netx does not read is kept in HDF5 attributes, which netx ignores: on the root
``format_version``, ``project``, ``ir_version``, ``input_bits``, ``readout``, ``provenance``
(JSON text), the stock netx arguments (:mod:`hardware.formats.netx`) and, for a network with
extra inputs, ``graph_format``/``graph_version`` (:data:`GRAPH_FORMAT`); on every layer group
``name``, ``neuron_kind``, ``weight_exp`` and ``bias_exp``.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Union

import numpy as np

from hardware.errors import NetxFormatError
from hardware.ir import Network
from hardware.ir.validate import integer_array
from hardware.spec import LOIHI2

__all__ = ["NETX_FORMAT_VERSION", "PROJECT_NAME", "NEURON_TYPE_OF_KIND", "STOCK_RESET_OFFSET",
           "MAX_DATASET_ELEMENTS", "MAX_TOTAL_ELEMENTS", "GRAPH_FORMAT", "GRAPH_VERSION",
           "netx_dense_effective", "stock_reset_offset"]


NETX_FORMAT_VERSION = "1"
PROJECT_NAME = "nqloihi"
# READABLE_IR_VERSIONS (imported from hardware.ir, re-exported): the IR versions this
# reader understands: 1.0 (no readout attribute: spike-count readout), 1.1 (``readout``
# attribute), 1.2 (extra inputs). A newer file may carry meaning this reader would
# silently drop, so it is refused.
#: IR versions without extra inputs: a ``concat`` layer in such a file is an error.
_SEQUENTIAL_IR_VERSIONS = ("1.0", "1.1")

#: root attributes of a network with extra inputs (:class:`hardware.ir.Projection`, IR >= 1.2).
#: Such a layer computes ``a = W·s_prev + Σ_k P_k·s_k = [W P_1 ...]·concat(s_prev, s_1, ...)``,
#: netx's ``concat`` idea, hence its type ``'concat'``: its real kind in ``layer_type``, one
#: ``inputs/k`` group per extra input (k = 0 .. K-1), whose ``source`` is the file index of an
#: earlier conv/dense/concat layer (a dense projection reads its source flattened in (C, H, W)
#: C order). Why ``concat``: stock netx (``hdf5.Network._create``) silently *skips* layer types
#: it does not know, so an invented type would load as a wrong sequential network, while it
#: refuses ``'concat'`` (``NotImplementedError``). Sequential networks carry no graph attributes
#: and keep loading in stock netx; :func:`hardware.runtime.stock_netx.stock_network` refuses a
#: residual file before netx sees it.
GRAPH_FORMAT = "nqloihi-residual"
GRAPH_VERSION = 1
#: graph versions this reader understands
_READABLE_GRAPH_VERSIONS = (1,)
#: at most this many extra inputs per layer
_MAX_EXTRA_INPUTS = 64

#: netx neuron ``type`` written for each IR neuron kind. ``CUBA`` runs unchanged in stock netx
#: (Lava ``LIF``/``LIFReset``). ``IF_SOFT`` (reset by subtraction, v(0) = θ/2) is deliberately
#: unknown to stock netx: its ``get_neuron_params`` returns None and ``AbstractBlock.__init__``
#: then fails (``'NoneType' object has no attribute 'pop'``), so stock netx never silently runs
#: an if_soft file with its reset-to-zero dynamics; this project's runner supplies the neuron.
NEURON_TYPE_OF_KIND = {"cuba": "CUBA", "if_soft": "IF_SOFT"}
#: netx neuron types read back into IR kinds (``LOIHI`` is netx's alias of CUBA).
_KIND_OF_NEURON_TYPE = {"CUBA": "cuba", "LOIHI": "cuba", "IF_SOFT": "if_soft"}

#: layer types stock netx raises NotImplementedError for, or that the IR has
#: no counterpart of.
_UNSUPPORTED_LAYER_TYPES = ("pool", "average", "concat", "convT", "unpool",
                            "dense_rec", "dense_comp")

#: netx's neuron for a dense layer whose file has no ``neuron`` group
#: (``Network.create_dense``: "Non-leaky integrator by default"). Note netx's
#: own expression ``1 << 18 - 1`` is ``1 << 17``.
_NETX_DEFAULT_DENSE_NEURON = {"type": "CUBA", "iDecay": 0, "vDecay": 4096,
                              "vThMant": 1 << 17}
#: what netx's slayer-style writers put in the neuron group besides the parameters
#: (netx ignores ``refDelay``; ``gradedSpike`` False means binary output spikes).
_NETX_REF_DELAY = 1

#: ``reset_offset`` a stock netx user passes with ``reset_interval = T`` when
#: sample k occupies source columns kT .. kT+T-1 (a RingBuffer sends column c at
#: step c + 1): netx resets block i at steps t = offset + 1 + i (mod T), which is
#: then the first step of block i's window (see :mod:`hardware.runtime.runner`).
STOCK_RESET_OFFSET = 1

def stock_reset_offset(net: Network) -> int:
    """The ``reset_offset`` stock netx needs for ``net`` (see :data:`STOCK_RESET_OFFSET`).

    An input neuron layer is netx's block 0 and takes sample k at steps kT+1 .. kT+T (no
    synapse in front of it), so every block's window starts one step earlier: offset 0."""
    return STOCK_RESET_OFFSET - (net.input.neuron is not None)


#: Sane limits checked before anything is read: no dataset (weights, biases) may
#: declare more elements than this, nor all of them together more than
#: MAX_TOTAL_ELEMENTS (a 784-512-512-10 net holds 0.7 M, a VGG-16 for CIFAR 15 M;
#: one Loihi 2 chip holds 120 M synapses); a layer may not have more neurons than
#: MAX_DATASET_ELEMENTS either.
MAX_DATASET_ELEMENTS = 1 << 25
MAX_TOTAL_ELEMENTS = 1 << 26
#: at most this many layers, characters in a string attribute or dataset and
#: values in a small dataset (shape, stride, a neuron parameter).
_MAX_LAYERS = 4096
_MAX_TEXT = 1 << 24
_SMALL = 8
#: at most this many attributes on one object (this project writes at most 13), bytes in a
#: fixed-size attribute other than the provenance, and keys in one layer group
_MAX_ATTRS = 64
_MAX_ATTR_BYTES = 4096
_MAX_LAYER_KEYS = 64

#: the keys each layer type may hold: this project's writer's, and slayer's (``inChannels``,
#: ``outChannels``, ``kernelSize``, ``inFeatures``, ``outFeatures``, which netx ignores);
#: ``delay`` is refused with its own message. A key of another type means the type disagrees
#: with the contents (a relabelled layer): refused in every file. Any other key is refused in
#: this project's files (its writer writes none) and left alone in others' (netx ignores it).
_LAYER_KEYS = {
    "input": frozenset({"type", "shape", "neuron", "weight", "bias"}),
    "flatten": frozenset({"type", "shape"}),
    "conv": frozenset({"type", "shape", "weight", "bias", "stride", "padding", "dilation", "groups",
                       "neuron", "inChannels", "outChannels", "kernelSize", "delay"}),
    "dense": frozenset({"type", "shape", "weight", "bias", "neuron", "inFeatures", "outFeatures",
                        "delay"}),
    "concat": frozenset({"layer_type", "inputs"}),  # + the keys of its layer_type
}

PathLike = Union[str, Path]


# --------------------------------------------------------------------------
# netx + Lava dense weight pipeline
# --------------------------------------------------------------------------

def netx_dense_effective(weight: np.ndarray, layer: str = "dense"
                         ) -> tuple[np.ndarray, int]:
    """Integer weights and exponent Lava's bit-accurate Dense ends up with.

    Runs the very functions netx and Lava run: ``netx.utils.
    optimize_weight_bits`` (as called by ``hdf5.Network.create_dense``), then
    ``lava.utils.weightutils.determine_sign_mode``, ``clip_weights`` and
    ``truncate_weights`` (as ``AbstractPyDenseModelBitAcc.run_spk`` does,
    with the ``weight_clip_bits`` of :data:`hardware.spec.LOIHI2`). Lava then
    computes ``a = W_eff @ s`` shifted by the returned exponent (``<<`` if
    positive, arithmetic ``>>`` if negative).

    Raises :class:`NetxFormatError` for an all-zero matrix, on which
    ``optimize_weight_bits`` fails (``255 / 0`` -> ``int(inf)``).
    """
    from lava.lib.dl.netx.utils import optimize_weight_bits
    from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights

    weight = integer_array(weight, layer, "weight")
    if not np.any(weight):
        raise NetxFormatError(
            f"layer {layer}: all-zero dense weight matrix; netx's "
            f"optimize_weight_bits cannot scale it (OverflowError on int(inf))")
    printed = io.StringIO()
    # netx prints its clipping warnings; a one-signed matrix divides by zero harmlessly
    with contextlib.redirect_stdout(printed), np.errstate(divide="ignore"):
        w, num_weight_bits, weight_exp, _ = optimize_weight_bits(weight)
    if printed.getvalue().strip():
        warnings.warn(f"layer {layer}: netx: {' '.join(printed.getvalue().split())}")
    sign_mode = determine_sign_mode(w)
    w = clip_weights(w, sign_mode, num_bits=LOIHI2.weight_clip_bits)
    w = truncate_weights(w, sign_mode, num_weight_bits)
    return np.asarray(w).astype(np.int64), int(weight_exp)
