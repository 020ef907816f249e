"""Process model of :class:`hardware.runtime.procs.spike_recorder.process.SpikeRecorder`
(packing documented there)."""
from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

# Absolute imports only: Lava's model discovery executes this file again as a
# top-level module named ``models``, where a relative import fails.
from hardware.runtime.procs.spike_recorder.process import MAX_LAYERS, WORD_BITS, SpikeRecorder

__all__ = ["PySpikeRecorderModel"]


@implements(proc=SpikeRecorder, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt", "bit_accurate_loihi", "floating_pt")
class PySpikeRecorderModel(PyLoihiProcessModel):
    """Packs the spikes of every connected port into ``data[:, (t−1) mod buffer]``."""

    data: np.ndarray = LavaPyType(np.ndarray, np.int64)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.n_layers = int(proc_params["n_layers"])
        total = int(sum(proc_params["sizes"]))
        self.pad = -total % WORD_BITS
        self.weights = np.left_shift(np.int64(1), np.arange(WORD_BITS, dtype=np.int64))

    def run_spk(self):
        parts = [getattr(self, f"in_{j}").recv().ravel() != 0 for j in range(self.n_layers)]
        bits = np.concatenate(parts + [np.zeros(self.pad, dtype=bool)])
        words = bits.reshape(-1, WORD_BITS).astype(np.int64) @ self.weights
        self.data[:, (self.time_step - 1) % self.data.shape[1]] = words


# One port type per possible layer: Lava needs a LavaPyType for every port of
# the process (same type as the stock fixed-point sink RingBuffer's a_in).
for _j in range(MAX_LAYERS):
    setattr(PySpikeRecorderModel, f"in_{_j}", LavaPyType(PyInPort.VEC_DENSE, np.int32))
del _j
