"""Typed errors. Each carries a message meant for the user; the CLI prints
``error: <message>`` without a traceback for any :class:`ToolkitError`."""


class ToolkitError(Exception):
    """Base of every error this toolkit raises on purpose."""


class IRError(ToolkitError, ValueError):
    """An inconsistent SNN IR (shapes, kinds, missing fields)."""


class QuantizationError(ToolkitError, ValueError):
    """A value that cannot be represented in Loihi 2 fixed point."""


class NetxFormatError(ToolkitError, ValueError):
    """A .net (netx HDF5) file that is missing, corrupt or not loadable."""


class LoihiRangeError(IRError, QuantizationError):
    """An integer network value or shape that Loihi 2 (or netx + Lava) cannot hold.

    The one error :mod:`hardware.ir.validate` raises; its message names the layer,
    the field, the value and the limit. It is an :class:`IRError` and a
    :class:`QuantizationError` so that ``except`` sites written for either keep
    working; :func:`hardware.formats.netx.read_net` re-raises it as a
    :class:`NetxFormatError` naming the file (the original is its ``__cause__``).
    """


class LavaBackendError(ToolkitError, RuntimeError):
    """A Lava backend that cannot run the requested network here."""


class ResourceError(ToolkitError, ValueError):
    """A network that cannot be mapped onto Loihi 2 cores/chips."""


class NirFormatError(ToolkitError, ValueError):
    """A NIR graph (``.nir`` file) that is missing, corrupt, or uses what this project cannot
    represent exactly (a node type, a neuron or a parameter); the message names the node."""
