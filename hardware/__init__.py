"""The Loihi 2 target, one sub-package per concern; imports point down this list only.

- ``spec``, ``errors``: every Loihi 2 number (one frozen object) and the typed exceptions.
- ``ir``: the SNN IR (the pivot every later stage speaks) and ``ir.validate``, its hardware limits.
- ``fixed_point``: the quantizer (float IR → integer IR) and ``dynamics``, the one integer neuron step.
- ``simulator``: the vectorised reference simulator (float and bit-accurate).
- ``formats``: netx HDF5 and NIR readers/writers.
- ``analysis``: activity, synaptic operations, energy and resource estimates.
- ``runtime``: the Lava runtime: network builder, runner, sessions, board hooks, and this
  project's Lava processes (``runtime.procs``).
"""
