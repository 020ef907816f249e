"""The paper's IF neuron (reset by subtraction, v(0) = θ/2) as a Lava process.

Its equations are :mod:`hardware.fixed_point.dynamics`; its CPU models are in
:mod:`hardware.runtime.procs.if_soft.models`. The directory holds nothing but the
process and its models, because Lava's model discovery imports every module next to
a process's module (:mod:`hardware.runtime.procs`).
"""
from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig
from lava.magma.core.process.variable import Var

# Absolute imports only: Lava's model discovery executes every module of this
# directory again as a top-level module, where relative imports fail.
from hardware.errors import LavaBackendError
from hardware.spec import LOIHI2

__all__ = ["IFSoftReset", "fixed_point_v0"]


def fixed_point_v0(vth: ty.Union[int, np.ndarray]) -> np.ndarray:
    """Initial/reset membrane of the bit-accurate model: ``(vth << 6) >> 1``."""
    return np.right_shift(np.left_shift(np.asarray(vth, dtype=np.int64),
                                        LOIHI2.threshold_shift), 1)


class IFSoftReset(AbstractProcess):
    """Integrate-and-fire neuron with reset by subtraction and periodic reset.

    Vars and ports mirror :class:`lava.proc.lif.process.LIFReset` (``a_in``,
    ``s_out``, ``u``, ``v``, ``du``, ``dv``, ``bias_mant``, ``bias_exp``,
    ``vth``; ``reset_interval``/``reset_offset`` as process parameters) so that
    netx blocks can build it with netx's own ``neuron_params``.

    Parameters
    ----------
    shape : tuple of int
        Neuron population shape (Lava's (x, y, z)/WHC order for conv layers).
    u : initial current, default 0.
    v : initial voltage. ``None`` (default) means the paper's ``v0``: the Var
        is initialised to the fixed-point ``(vth << 6) >> 1`` and the float
        model starts from ``vth / 2``.
    du, dv : current and voltage decays (12-bit integers for the fixed-point
        model, fractions for the float model, as Lava's LIF).
    bias_mant, bias_exp : bias mantissa and exponent.
    vth : threshold mantissa (one value for the whole population, as LIF).
    reset_interval : the state is reset to (u, v) = (0, v0) every
        ``reset_interval`` steps; ``None`` means never.
    reset_offset : phase of the reset: at the start of steps with
        ``t % reset_interval == reset_offset % reset_interval``.
    num_message_bits : only 0 (binary spikes) is supported; netx blocks pop
        this key before building the neuron, it is accepted here for callers
        that pass netx's dictionary directly.
    """

    def __init__(
        self,
        *,
        shape: ty.Tuple[int, ...],
        u: ty.Union[float, list, np.ndarray] = 0,
        v: ty.Optional[ty.Union[float, list, np.ndarray]] = None,
        du: float = 0,
        dv: float = 0,
        bias_mant: ty.Union[float, list, np.ndarray] = 0,
        bias_exp: ty.Union[float, list, np.ndarray] = 0,
        vth: float = 10,
        reset_interval: ty.Optional[int] = None,
        reset_offset: int = 0,
        num_message_bits: int = 0,
        name: ty.Optional[str] = None,
        log_config: ty.Optional[LogConfig] = None,
    ) -> None:
        v_is_default = v is None
        if v_is_default:
            # Fixed-point v0, so that the Var reads correctly before a run and
            # the bit-accurate model starts from v0 at step 1 even without a
            # reset there. The float model re-derives vth/2 itself.
            v = np.broadcast_to(fixed_point_v0(vth), shape).astype(np.int64)
        super().__init__(shape=shape, u=u, v=v, du=du, dv=dv, bias_mant=bias_mant,
                         bias_exp=bias_exp, vth=vth, reset_interval=reset_interval,
                         reset_offset=reset_offset, v_is_default=v_is_default,
                         name=name, log_config=log_config)
        # (AbstractProcess stores these keyword arguments in proc_params,
        # where the models read reset_interval, reset_offset, v_is_default.)
        # Validated after AbstractProcess.__init__ so that a refused process
        # is still a complete object when Lava's __del__ stops it.
        if num_message_bits != 0:
            raise LavaBackendError(
                f"IFSoftReset sends binary spikes only (num_message_bits=0), "
                f"got num_message_bits={num_message_bits}")
        if reset_interval is not None and reset_interval < 1:
            raise LavaBackendError(f"reset_interval must be >= 1, got {reset_interval}")
        if reset_offset < 0:
            raise LavaBackendError(f"reset_offset must be >= 0, got {reset_offset}")

        self.a_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        self.u = Var(shape=shape, init=u)
        self.v = Var(shape=shape, init=v)
        self.du = Var(shape=(1,), init=du)
        self.dv = Var(shape=(1,), init=dv)
        self.bias_exp = Var(shape=shape, init=bias_exp)
        self.bias_mant = Var(shape=shape, init=bias_mant)
        self.vth = Var(shape=(1,), init=vth)
