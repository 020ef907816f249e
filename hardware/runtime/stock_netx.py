"""Build a stock ``lava.lib.dl.netx.hdf5.Network`` from this project's .net file.

Stock netx reads the layers of the file but needs three arguments the layers cannot tell
it; :func:`hardware.formats.netx.write_net` stores them as root attributes (and the plain
call as ``stock_netx_call``) and this helper passes them on:

* ``input_message_bits``: the graded input's bits (netx's default 0 silently turns the
  graded input into binary spikes and the results are wrong);
* ``reset_interval``: steps per sample T (stored when the writer was given it);
* ``reset_offset``: :data:`hardware.formats.netx.STOCK_RESET_OFFSET` (1), so every block
  resets at the start of its window (:mod:`hardware.runtime.schedule`).

The file is read with :func:`hardware.formats.netx.read_net` first, so a corrupt, out of
range or foreign file raises a one-line :class:`NetxFormatError` before netx sees it.
Stock netx cannot run ``if_soft`` layers (use
:func:`hardware.runtime.network.build_lava_network`) nor residual networks (netx type
``'concat'``: it raises ``NotImplementedError`` after building the blocks before it), so
:func:`stock_netx_arguments` refuses those files first, naming the layers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import h5py

from hardware.errors import NetxFormatError
from hardware.formats.netx import read_net, stock_reset_offset
from hardware.ir.validate import integer_scalar

__all__ = ["stock_netx_arguments", "stock_network"]


def stock_netx_arguments(path: Union[str, Path], reset_interval: Optional[int] = None) -> dict:
    """The keyword arguments of ``netx.hdf5.Network`` for this file.

    ``reset_interval`` overrides (or supplies, for files written without it) the
    steps per sample stored in the file."""
    path = Path(path)
    net = read_net(path)  # validates everything, including the attributes read below
    if not net.is_sequential:
        residual = [layer.name for layer in net.weighted_layers if layer.extra_inputs]
        raise NetxFormatError(f"{path}: a residual network (layers {', '.join(residual)} have "
                              f"extra inputs, stored as netx type 'concat'), which stock netx "
                              f"cannot build; use hardware.runtime.network.build_lava_network")
    if any(layer.neuron.kind != "cuba" for layer in net.weighted_layers):
        raise NetxFormatError(f"{path}: the network has if_soft layers, which stock netx cannot "
                              f"run; use hardware.runtime.network.build_lava_network")
    if net.input_bits is None:
        raise NetxFormatError(f"{path}: no input_bits attribute; not a file this project wrote")
    with h5py.File(path, "r") as f:
        stored = {k: int(f.attrs[k]) for k in ("reset_interval", "reset_offset") if k in f.attrs}
    if reset_interval is not None:
        stored = {"reset_interval": integer_scalar(reset_interval, "input", "reset_interval", 1),
                  "reset_offset": stored.get("reset_offset", stock_reset_offset(net))}
    if "reset_interval" not in stored:
        raise NetxFormatError(f"{path}: the file does not state its steps per sample "
                              f"(reset_interval); pass reset_interval=T")
    return {"net_config": str(path), "input_message_bits": int(net.input_bits), **stored}


def stock_network(path: Union[str, Path], reset_interval: Optional[int] = None):
    """A stock ``lava.lib.dl.netx.hdf5.Network`` built from ``path`` with the right arguments."""
    from lava.lib.dl.netx.hdf5 import Network

    return Network(**stock_netx_arguments(path, reset_interval))
