"""Everything of a Lava run that is specific to a Loihi 2 board (``Loihi2HwCfg``).

It needs Intel's lava-loihi package and a reachable board, neither of which
exists on the machines this project is tested on: the board-only lines are
marked ``pragma: no cover`` and follow lava-dl's own benchmark notebooks.
"""
from __future__ import annotations

import os
from typing import AbstractSet, Optional

import numpy as np

from hardware.errors import LavaBackendError
from hardware.kinds import NeuronKind

__all__ = ["hardware_available", "board_profilers_available", "board_profilers",
           "board_measurement", "board_io", "refuse_on_board", "board_refusal"]

IF_SOFT_ON_BOARD = (
    "backend 'loihi2-hw' cannot run 'if_soft' neurons: lava-loihi ships Loihi 2 "
    "microcode only for its own neuron models (e.g. the CUBA LIF), none of which "
    "resets by subtraction, and running the soft-reset IF neuron on the host CPU "
    "would not be a hardware run. Train/convert with `snn.neuron: cuba` to deploy "
    "on the board, or use backend 'loihi2-sim'.")


def hardware_available() -> tuple:
    """(ok, reason): whether lava-loihi is importable and a board reachable."""
    from lava.utils import loihi, slurm
    if not loihi.is_installed():
        return False, ("backend 'loihi2-hw' needs Intel's lava-loihi package (the Loihi 2 "
                       "compiler and runtime), which is not installed in this environment; "
                       "use backend 'loihi2-sim' to run the bit-accurate CPU models")
    if "NXSDKHOST" not in os.environ and not slurm.is_available():
        return False, ("lava-loihi is installed but no Loihi 2 board is reachable (no SLURM "
                       "controller and NXSDKHOST is not set); see lava.utils.loihi."
                       "use_slurm_host / use_ethernet_host")
    return True, ""


RESIDUAL_ON_BOARD = (
    "backend 'loihi2-hw' cannot run residual networks here yet: their extra inputs are "
    "lava.proc.sparse DelaySparse processes (see hardware.runtime.network), and whether "
    "lava-loihi compiles DelaySparse with these delays onto Loihi 2 cores is unverified "
    "(no board on the machines this project is tested on); a projection left on the host "
    "CPU would not be a hardware run. Use backend 'loihi2-sim'.")


INPUT_NEURONS_ON_BOARD = (
    "a network with an input neuron layer (a netx file made elsewhere) runs on loihi2-sim "
    "only: feeding its input neurons through lava-loihi's adapters on the board is unverified")


def board_refusal(neuron_kinds: AbstractSet[NeuronKind], residual: bool = False,
                  input_neurons: bool = False) -> Optional[str]:
    """Why a network cannot run on the board, whatever the machine (None: it can).

    ``residual``: the network has extra inputs; ``input_neurons``: its input is a neuron
    layer (a file made elsewhere)."""
    if input_neurons:
        return INPUT_NEURONS_ON_BOARD
    if residual:
        return RESIDUAL_ON_BOARD
    if "if_soft" in neuron_kinds:
        return IF_SOFT_ON_BOARD
    return None


def refuse_on_board(neuron_kinds: AbstractSet[NeuronKind], probes, residual: bool = False,
                    input_neurons: bool = False) -> None:
    """Raise unless a network with these neuron kinds (and probes) can run on the board here
    (:func:`board_refusal`, then the probes, then lava-loihi and a reachable board)."""
    reason = board_refusal(neuron_kinds, residual, input_neurons)
    if reason is not None:
        raise LavaBackendError(reason)
    if probes:
        raise LavaBackendError(
            "probes are implemented for backend 'loihi2-sim' only: on the board every layer "
            "would need its own lava-loihi NxToPyAdapter, which is untested here")
    ok, reason = hardware_available()
    if not ok:
        raise LavaBackendError(reason)


def board_profilers_available() -> tuple:
    """(ok, reason): whether lava-loihi's power/time profilers can be used here."""
    try:
        from lava.utils import loihi2_profiler  # noqa: F401  (ships with lava-loihi only)
    except ImportError:
        return False, ("lava-loihi is not installed: its loihi2_profiler (board power and "
                       "execution-time measurement) is unavailable; energy stays an estimate")
    return True, "lava-loihi's loihi2_profiler is available"


def board_profilers(num_steps: int):
    """lava-loihi's (Loihi2Power, Loihi2ExecutionTime) for a run of ``num_steps``, or None.

    They are passed to ``Loihi2HwCfg(callback_fxs=...)`` as lava-dl's own
    benchmark notebooks do; selected automatically whenever lava-loihi is installed.
    """
    ok, _ = board_profilers_available()
    if not ok:
        return None
    from lava.utils import loihi2_profiler  # pragma: no cover - board only
    return (loihi2_profiler.Loihi2Power(num_steps=num_steps),  # pragma: no cover
            loihi2_profiler.Loihi2ExecutionTime())


def board_measurement(power_logger, time_logger, timesteps: int) -> dict:  # pragma: no cover
    """Measured figures from lava-loihi's profilers (as lava-dl's benchmark notebooks read them).

    ``time_per_step_us`` from ``avg_time_per_step``; ``total_power_w`` the mean of
    ``total_power``; ``static_power_w`` ``static_total_power``; energy per sample =
    total power × time per step × T (dynamic: with static power removed).
    """
    time_per_step_us = float(time_logger.avg_time_per_step)
    total_w = float(np.mean(power_logger.total_power))
    static_w = float(power_logger.static_total_power)
    sample_s = time_per_step_us * 1e-6 * timesteps
    return {"source": "lava-loihi loihi2_profiler (measured on the board)",
            "time_per_step_us": time_per_step_us,
            "samples_per_s": 1.0 / sample_s if sample_s else None,
            "total_power_w": total_w, "static_power_w": static_w,
            "dynamic_power_w": total_w - static_w,
            "energy_per_sample_j": total_w * sample_s,
            "dynamic_energy_per_sample_j": (total_w - static_w) * sample_s}


def board_io(lnet, data: np.ndarray, steps: int, input_bits: int):  # pragma: no cover
    """(source, sink, run config, profilers or None) on the board: host ring buffers
    through lava-loihi's adapters, profilers attached when lava-loihi has them."""
    from lava.magma.core.run_configs import Loihi2HwCfg
    from lava.proc import io
    from lava.proc.embedded_io.spike import NxToPyAdapter, PyToNxAdapter  # lava-loihi
    out_shape = tuple(lnet.out.shape)
    src = io.source.RingBuffer(data=data)
    sink = io.sink.RingBuffer(shape=out_shape, buffer=steps)
    to_nx = PyToNxAdapter(shape=data.shape[:-1], num_message_bits=input_bits)
    to_py = NxToPyAdapter(shape=out_shape)
    src.s_out.connect(to_nx.inp)
    to_nx.out.connect(lnet.inp)
    lnet.out.connect(to_py.inp)
    to_py.out.connect(sink.a_in)
    profilers = board_profilers(steps)
    run_cfg = Loihi2HwCfg(select_sub_proc_model=True,
                          callback_fxs=list(profilers) if profilers is not None else [])
    return src, sink, run_cfg, profilers
