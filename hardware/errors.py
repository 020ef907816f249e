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


class LavaBackendError(ToolkitError, RuntimeError):
    """A Lava backend that cannot run the requested network here."""


class ResourceError(ToolkitError, ValueError):
    """A network that cannot be mapped onto Loihi 2 cores/chips."""
