"""Process models of :class:`hardware.runtime.procs.if_soft.process.IFSoftReset`,
the paper's IF neuron (reset by subtraction, v0 = θ/2).

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
``bit_accurate_loihi``/``fixed_pt``): every step is
:func:`hardware.fixed_point.dynamics.step` of an ``if_soft`` population (the equations are
in :mod:`hardware.fixed_point.dynamics`; ``tests/test_dynamics.py`` checks this model and
Lava's stock LIF against them), with the periodic reset to (u, v) = (0, v0) of
:func:`hardware.fixed_point.dynamics.is_reset_step` at the start of the step. It subclasses
Lava's ``AbstractPyLifModelFixed`` for its Var and port types, so Lava applies
the same casts to the synaptic input and the state as for its LIF.

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
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.lif.models import AbstractPyLifModelFixed

# Absolute imports only: Lava's model discovery executes this file again as a
# top-level module named ``models``, where a relative import fails.
from hardware.fixed_point import dynamics
from hardware.runtime.procs.if_soft.process import IFSoftReset

__all__ = ["PyIFSoftResetModelBitAcc", "PyIFSoftResetModelFloat"]


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
        self.reset_interval = proc_params["reset_interval"]
        self.reset_offset = proc_params["reset_offset"]
        self.v_is_default = proc_params["v_is_default"]
        self.started = False

    def _params(self) -> dynamics.NeuronParams:
        return dynamics.NeuronParams("if_soft", vth=int(self.vth), du=int(self.du),
                                     dv=int(self.dv), bias_mant=self.bias_mant,
                                     bias_exp=self.bias_exp)

    def run_spk(self):
        a_in_data = self.a_in.recv()
        v0 = dynamics.initial_v("if_soft", int(self.vth))
        if not self.started:
            # The process already initialised v to v0; doing it again here
            # guards against a vth changed with set() before the first run.
            if self.v_is_default:
                self.v[:] = v0
            self.started = True
        # Checked at the start of the step, exactly where PyLifResetModelBitAcc
        # resets u and v to 0.
        if dynamics.is_reset_step(self.time_step, self.reset_interval, self.reset_offset):
            self.u[:] = 0
            self.v[:] = v0
        u, v, s_out = dynamics.step(self.u, self.v, a_in_data, self._params())
        self.u[:] = u
        self.v[:] = v
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
        if dynamics.is_reset_step(self.time_step, self.reset_interval, self.reset_offset):
            self.u[:] = 0
            self.v[:] = v0
        self.u[:] = self.u * (1 - self.du) + a_in_data
        self.v[:] = self.v * (1 - self.dv) + self.u + self.bias_mant
        s_out = self.v >= self.vth
        self.v[s_out] -= self.vth
        self.s_out.send(s_out)
