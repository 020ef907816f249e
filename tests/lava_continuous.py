"""Run a built network as one continuous Lava run (no streaming schedule, no resets) and
collect every block's output spikes: the raw Lava timing that the simulator's
``pipelined=True`` mode models."""
from __future__ import annotations

import numpy as np


def continuous_block_spikes(lnet, x0: np.ndarray, timesteps: int) -> list:
    """Feed the (C, H, W) payload ``x0`` every step for ``timesteps`` steps; one
    (*Lava shape, T) spike array per block of ``lnet``."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.proc import io

    from hardware.runtime.runner import sim_run_config

    data = np.repeat(x0.transpose(2, 1, 0)[..., None], timesteps, axis=-1)  # (W, H, C, T)
    src = io.source.RingBuffer(data=data)
    src.s_out.connect(lnet.inp)
    sinks = []
    for block in lnet.layers:
        sink = io.sink.RingBuffer(shape=tuple(block.out.shape), buffer=timesteps)
        block.out.connect(sink.a_in)
        sinks.append(sink)
    try:
        src.run(condition=RunSteps(num_steps=timesteps), run_cfg=sim_run_config())
        return [np.asarray(s.data.get()) for s in sinks]
    finally:
        src.stop()
