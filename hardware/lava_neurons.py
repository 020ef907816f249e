"""The paper's IF neuron (reset by subtraction, v(0) = θ/2) as a Lava process.

Lava's stock ``LIF``/``LIFReset`` reset the membrane to zero after a spike and
start from v = 0. The NQ-SNN conversion needs the IF neuron of the paper:
reset by *subtraction* and an initial membrane of half the threshold. This
module defines it as :class:`IFSoftReset`, a Lava process whose Vars and ports
mirror :class:`lava.proc.lif.process.LIFReset` so that lava-dl's netx blocks
(``lava.lib.dl.netx.blocks.process.Dense``/``Conv``) can build it from the
same ``neuron_params`` dictionary netx uses for ``LIFReset``::

    {'neuron_proc': IFSoftReset, 'bias_key': 'bias_mant', 'vth': θ,
     'du': du, 'dv': dv, 'bias_exp': 6, 'num_message_bits': 0,
     'reset_interval': T, 'reset_offset': r}

Bit-accurate model (:class:`PyIFSoftResetModelBitAcc`, tags
``bit_accurate_loihi``/``fixed_pt``) — it subclasses Lava's
``AbstractPyLifModelFixed`` and so reuses its sub-threshold dynamics, wrap of
u and clip of v unchanged; only threshold, reset and initial state differ::

    at the start of a step with  t mod reset_interval == reset_offset mod reset_interval:
        u ← 0,  v ← v0
    u ← wrap24( sign(u)·(|u·(4096 − (du+1))| >> 12) + (a << 6) )
    v ← clip24( sign(v)·(|v·(4096 − dv)| >> 12) + u + (bias_mant << bias_exp) )
    s = v ≥ θ_eff          with θ_eff = vth << 6
    v ← v − s·θ_eff
    v0 = θ_eff >> 1        (also the state before the first step)

Floating-point model (:class:`PyIFSoftResetModelFloat`, tag ``floating_pt``)
follows Lava's float LIF conventions (``du``/``dv`` are fractions in [0, 1],
the bias is ``bias_mant`` unscaled, ``vth`` is not shifted)::

    u ← u·(1 − du) + a;  v ← v·(1 − dv) + u + bias_mant;
    s = v ≥ vth;  v ← v − s·vth;  v0 = vth / 2
"""
from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.lif.models import AbstractPyLifModelFixed

from .errors import LavaBackendError
from .spec import LOIHI2

__all__ = ["IFSoftReset", "PyIFSoftResetModelBitAcc", "PyIFSoftResetModelFloat",
           "fixed_point_v0"]


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


def _is_reset_step(time_step: int, interval: ty.Optional[int], offset: int) -> bool:
    """LIFReset's rule: reset at the start of steps with t % I == offset % I."""
    return interval is not None and time_step % interval == offset % interval


@implements(proc=IFSoftReset, protocol=LoihiProtocol)
@requires(CPU)
@tag("bit_accurate_loihi", "fixed_pt")
class PyIFSoftResetModelBitAcc(AbstractPyLifModelFixed):
    """Bit-accurate IF neuron with soft reset (see the module docstring).

    Port and Var types are those of ``PyLifResetModelBitAcc`` (inherited from
    ``AbstractPyLifModelFixed`` plus the same ``s_out``/``vth`` types), so
    Lava applies the same casts to the synaptic input and the state.
    """

    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    vth: int = LavaPyType(int, np.int32, precision=17)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.effective_vth = 0
        self.reset_interval = proc_params["reset_interval"]
        self.reset_offset = proc_params["reset_offset"]
        self.v_is_default = proc_params["v_is_default"]
        self.started = False

    def scale_threshold(self):
        """θ_eff = vth << 6 (MSB alignment with the 24-bit state, as LIF)."""
        self.effective_vth = np.left_shift(self.vth, self.vth_shift)
        self.isthrscaled = True

    def v0(self) -> np.ndarray:
        return np.right_shift(self.effective_vth, 1)

    def spiking_activation(self):
        """Spike when the voltage reaches the threshold (≥, the paper's IF)."""
        return self.v >= self.effective_vth

    def reset_voltage(self, spike_vector: np.ndarray):
        """Reset by subtraction: v ← v − θ_eff where a spike was emitted."""
        self.v[spike_vector] -= self.effective_vth

    def run_spk(self):
        a_in_data = self.a_in.recv()
        if not self.isthrscaled:
            self.scale_threshold()
        if not self.started:
            # The process already initialised v to v0; doing it again here
            # guards against a vth changed with set() before the first run.
            if self.v_is_default:
                self.v[:] = self.v0()
            self.started = True
        # Checked at the start of the step, exactly where PyLifResetModelBitAcc
        # resets u and v to 0.
        if _is_reset_step(self.time_step, self.reset_interval, self.reset_offset):
            self.u[:] = 0
            self.v[:] = self.v0()
        self.scale_bias()
        self.subthr_dynamics(activation_in=a_in_data)
        s_out = self.spiking_activation()
        self.reset_voltage(spike_vector=s_out)
        self.s_out.send(s_out)


@implements(proc=IFSoftReset, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyIFSoftResetModelFloat(PyLoihiProcessModel):
    """Floating-point IF neuron with soft reset (Lava float-LIF conventions)."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    u: np.ndarray = LavaPyType(np.ndarray, float)
    v: np.ndarray = LavaPyType(np.ndarray, float)
    bias_mant: np.ndarray = LavaPyType(np.ndarray, float)
    bias_exp: np.ndarray = LavaPyType(np.ndarray, float)
    du: float = LavaPyType(float, float)
    dv: float = LavaPyType(float, float)
    vth: float = LavaPyType(float, float)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.reset_interval = proc_params["reset_interval"]
        self.reset_offset = proc_params["reset_offset"]
        self.v_is_default = proc_params["v_is_default"]
        self.started = False

    def run_spk(self):
        a_in_data = self.a_in.recv()
        v0 = self.vth / 2
        if not self.started:
            if self.v_is_default:
                self.v[:] = v0
            self.started = True
        if _is_reset_step(self.time_step, self.reset_interval, self.reset_offset):
            self.u[:] = 0
            self.v[:] = v0
        self.u[:] = self.u * (1 - self.du) + a_in_data
        self.v[:] = self.v * (1 - self.dv) + self.u + self.bias_mant
        s_out = self.v >= self.vth
        self.v[s_out] -= self.vth
        self.s_out.send(s_out)
