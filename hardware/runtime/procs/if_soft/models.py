"""CPU process models of :class:`hardware.runtime.procs.if_soft.process.IFSoftReset`,
the paper's IF neuron (reset by subtraction, v0 = θ/2).

* :class:`PyIFSoftResetModelBitAcc` (tags ``bit_accurate_loihi``/``fixed_pt``): every step
  is :func:`hardware.fixed_point.dynamics.step` of an ``if_soft`` population, after the
  periodic reset of :func:`hardware.fixed_point.dynamics.is_reset_step` (the equations
  live there; ``tests/test_dynamics.py`` runs this model in Lava against them). It
  subclasses Lava's ``AbstractPyLifModelFixed``, so Lava casts the synaptic input and
  the state as for its LIF.
* :class:`PyIFSoftResetModelFloat` (tag ``floating_pt``): the float form of the same
  update in Lava's float-LIF conventions (``du``/``dv`` fractions in [0, 1], bias =
  ``bias_mant`` unscaled, ``vth`` unshifted, v0 = vth / 2).
"""
from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.lif.models import AbstractPyLifModelFixed

# Absolute imports only: Lava's model discovery executes this file again as a
# top-level module named ``models``, where a relative import fails.
from hardware.fixed_point import dynamics
from hardware.runtime.procs.if_soft.process import IFSoftReset

__all__ = ["PyIFSoftResetModelBitAcc", "PyIFSoftResetModelFloat"]


class _SoftResetSchedule:
    """What both models do at the start of a step, before the update: v0 on the first
    step (unless the caller gave v) and the periodic reset to (u, v) = (0, v0) of
    :func:`hardware.fixed_point.dynamics.is_reset_step` (where ``PyLifResetModelBitAcc``
    resets to 0). A mixin, not a process model, so Lava's discovery passes it by."""

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.reset_interval = proc_params["reset_interval"]
        self.reset_offset = proc_params["reset_offset"]
        self.v_is_default = proc_params["v_is_default"]
        self.started = False

    def _start_step(self, v0) -> None:
        if not self.started:
            # The process already initialised v to v0; doing it again here
            # guards against a vth changed with set() before the first run.
            if self.v_is_default:
                self.v[:] = v0
            self.started = True
        if dynamics.is_reset_step(self.time_step, self.reset_interval, self.reset_offset):
            self.u[:] = 0
            self.v[:] = v0


@implements(proc=IFSoftReset, protocol=LoihiProtocol)
@requires(CPU)
@tag("bit_accurate_loihi", "fixed_pt")
class PyIFSoftResetModelBitAcc(_SoftResetSchedule, AbstractPyLifModelFixed):
    """Bit-accurate IF neuron with soft reset: :func:`hardware.fixed_point.dynamics.step`.

    Port and Var types are those of ``PyLifResetModelBitAcc`` (inherited from
    ``AbstractPyLifModelFixed`` plus the same ``s_out``/``vth`` types), so
    Lava applies the same casts to the synaptic input and the state.
    """

    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    vth: int = LavaPyType(int, np.int32, precision=17)

    def _params(self) -> dynamics.NeuronParams:
        return dynamics.NeuronParams("if_soft", vth=int(self.vth), du=int(self.du),
                                     dv=int(self.dv), bias_mant=self.bias_mant,
                                     bias_exp=self.bias_exp)

    def run_spk(self):
        a_in_data = self.a_in.recv()
        self._start_step(dynamics.initial_v("if_soft", int(self.vth)))
        u, v, s_out = dynamics.step(self.u, self.v, a_in_data, self._params())
        self.u[:] = u
        self.v[:] = v
        self.s_out.send(s_out)


@implements(proc=IFSoftReset, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyIFSoftResetModelFloat(_SoftResetSchedule, PyLoihiProcessModel):
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

    def run_spk(self):
        a_in_data = self.a_in.recv()
        self._start_step(self.vth / 2)
        self.u[:] = self.u * (1 - self.du) + a_in_data
        self.v[:] = self.v * (1 - self.dv) + self.u + self.bias_mant
        s_out = self.v >= self.vth
        self.v[s_out] -= self.vth
        self.s_out.send(s_out)
