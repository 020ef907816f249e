"""Soft-reset IF neuron: :class:`IFSoftReset` and its CPU process models."""
from hardware.runtime.procs.if_soft.models import PyIFSoftResetModelBitAcc, PyIFSoftResetModelFloat
from hardware.runtime.procs.if_soft.process import IFSoftReset, fixed_point_v0

__all__ = ["IFSoftReset", "PyIFSoftResetModelBitAcc", "PyIFSoftResetModelFloat",
           "fixed_point_v0"]
