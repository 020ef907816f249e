"""SpikeRecorder: binary spikes of up to MAX_LAYERS ports into one ring of packed words.

Why a process of our own: run_lava's probes must be exact and cheap. Lava's
stock sinks cost, per probed layer, one more OS process to synchronise at
every step, and reading them back goes through ``Var.get``, which Lava 0.10
sends one array element at a time (``PyLoihiProcessModel._get_var``), so a
``(neurons, steps)`` buffer costs ``neurons·steps`` channel messages. This
process takes every layer on its own InPort (Lava 0.10 has no concatenating
virtual port: ``ConcatPort`` transforms raise NotImplementedError) and stores,
per step, all layers' spikes packed ``WORD_BITS`` to a word::

    bits  = concat_l( ravel_C( s_l[t] ≠ 0 ) )            (Lava (x, y, z) order)
    words[w, (t − 1) mod buffer] = Σ_{b<WORD_BITS} bits[w·WORD_BITS + b] · 2**b

so one process and ⌈Σ_l n_l / WORD_BITS⌉ values per step, whatever the
number of layers. WORD_BITS = 32 keeps every word exact through the float64
that ``Var.get`` transmits.

The model declares ports ``in_0 .. in_{MAX_LAYERS−1}`` (Lava requires a
LavaPyType per port, so their number is fixed); unused ones get shape (1,) and
are never read.
"""
from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.process.ports.ports import InPort
from lava.magma.core.process.process import AbstractProcess, LogConfig
from lava.magma.core.process.variable import Var

# Absolute import only: Lava's model discovery executes this file again as a
# top-level module, where a relative import fails.
from hardware.errors import LavaBackendError

__all__ = ["SpikeRecorder", "MAX_LAYERS", "WORD_BITS", "unpack"]

#: ports of the recorder (more than any network of this project has layers)
MAX_LAYERS = 32
#: spikes per stored word (exact in float64, which Var.get transmits)
WORD_BITS = 32


class SpikeRecorder(AbstractProcess):
    """Records binary spikes of ``len(shapes)`` ports into ``data`` (words, buffer).

    Connect layer j's OutPort to ``in_<j>`` (see :meth:`port`); read ``data``
    and decode it with :func:`unpack`.
    """

    def __init__(self, *, shapes: ty.Sequence[tuple], buffer: int,
                 name: ty.Optional[str] = None, log_config: ty.Optional[LogConfig] = None):
        shapes = [tuple(int(v) for v in s) for s in shapes]
        sizes = [int(np.prod(s)) for s in shapes]
        words = max(1, -(-sum(sizes) // WORD_BITS))
        super().__init__(shapes=shapes, sizes=sizes, buffer=int(buffer), n_layers=len(shapes),
                         name=name, log_config=log_config)
        # validated after AbstractProcess.__init__ so a refused process is complete
        if not 1 <= len(shapes) <= MAX_LAYERS:
            raise LavaBackendError(f"SpikeRecorder records 1 to {MAX_LAYERS} layers, "
                                   f"got {len(shapes)}")
        if int(buffer) < 1:
            raise LavaBackendError(f"SpikeRecorder buffer must be >= 1, got {buffer}")
        for j in range(MAX_LAYERS):
            setattr(self, f"in_{j}", InPort(shape=shapes[j] if j < len(shapes) else (1,)))
        self.data = Var(shape=(words, int(buffer)), init=0)

    def port(self, j: int) -> InPort:
        return getattr(self, f"in_{j}")


def unpack(words: np.ndarray, shapes: ty.Sequence[tuple]) -> list:
    """Inverse of the packing: (n_words, n_steps) -> per layer (n_steps, *shape) int64."""
    w = np.rint(np.asarray(words, dtype=np.float64)).astype(np.int64)
    bits = (w[:, None, :] >> np.arange(WORD_BITS, dtype=np.int64)[None, :, None]) & 1
    bits = bits.reshape(-1, w.shape[1])  # (n_words·WORD_BITS, steps), bit order as packed
    out, start = [], 0
    for s in shapes:
        n = int(np.prod(s))
        out.append(np.moveaxis(bits[start:start + n], 0, -1).reshape((w.shape[1],) + tuple(s)))
        start += n
    return out
