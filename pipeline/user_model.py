"""The user's own network: where it comes from, and how it becomes the NQ network.

A :class:`UserModel` makes a fresh copy of the user's ``nn.Module``: from ``model.factory``
(``package.module:function`` called with ``model.kwargs``; importing it runs that code, as
any import does, from the working directory or ``sys.path``), from ``model.onnx``
(:func:`models.onnx_import.module_from_onnx`: read as data, never run), or from a Python
object given to :mod:`pipeline.api` (deep-copied: the caller's object is never trained).
``model.weights`` is a safetensors file of that module's ``state_dict`` (pretrained):
read by safetensors (never unpickled), every key and shape checked first, strictly.

:meth:`UserModel.nq_network` captures the module (:func:`models.capture.capture`) into the
NQ network that is trained, converted and saved. Its :attr:`UserModel.record` is what a
checkpoint stores about the source (factory and kwargs, the ONNX file and its sha256, the
object's class, the weights and their sha256); a checkpoint is rebuilt only by the user
model of the current config whose :meth:`UserModel.identity` matches: a checkpoint never
names code to run. Every problem is one line of :class:`UserModelError` naming the key.
"""
from __future__ import annotations

import copy
import importlib
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import nn

from hardware.errors import ToolkitError
from models.capture import capture
from models.normalize import fold_input_normalization

from .artifacts import sha256_of
from .checkpoints import CheckpointError, read_tensor_file, state_layout


#: ``(data.mean, data.std)``: the per-channel input normalisation a pretrained module expects
Normalization = tuple[Sequence[float], Sequence[float]]


class UserModelError(ToolkitError, ValueError):
    """A model.factory, model.kwargs, model.weights or model.onnx that cannot give the network."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def import_factory(spec: str) -> Callable[..., Any]:
    """The callable ``package.module:function`` names (the module imported as Python would)."""
    module_name, _, function = spec.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, "")  # as `python -m` does: the working directory's packages import
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
            raise UserModelError(f"model.factory {spec}: importing {module_name} raised {_one_line(exc)}") from None
        raise UserModelError(f"model.factory {spec}: no module named {exc.name!r} (run from the directory "
                             f"that holds it, or put it on PYTHONPATH)") from None
    except Exception as exc:  # the user's module ran and failed: any exception at all
        raise UserModelError(f"model.factory {spec}: importing {module_name} raised {_one_line(exc)}") from None
    factory = getattr(module, function, None)
    if not callable(factory):
        raise UserModelError(f"model.factory {spec}: module {module_name} has no function {function!r}")
    return factory


def call_factory(spec: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """``factory(**kwargs)``, which must return an ``nn.Module``."""
    factory = import_factory(spec)
    try:
        module = factory(**kwargs)
    except Exception as exc:
        raise UserModelError(f"model.factory {spec}(**model.kwargs {dict(kwargs)!r}) raised "
                             f"{_one_line(exc)}") from None
    if not isinstance(module, nn.Module):
        raise UserModelError(f"model.factory {spec} returned {type(module).__name__}, not a torch nn.Module")
    return module


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load the safetensors ``state_dict`` at ``path`` into ``module`` (strict: the same keys and
    shapes; a dtype of another float width is converted)."""
    expected = state_layout(module.state_dict())
    try:
        tensors = read_tensor_file(Path(path), expected, any_dtype=True)
    except CheckpointError as exc:
        raise UserModelError(f"model.weights: {exc}") from None
    module.load_state_dict(tensors, strict=True)


@dataclass(frozen=True)
class UserModel:
    """A source of the user's module: ``make()`` returns a fresh copy, without ``weights``.
    ``starts_from`` names the pretrained weights fine-tuning starts from (``model.weights``, or
    the object's own), None for a fresh init."""

    record: dict[str, Any]
    make: Callable[[], nn.Module] = field(repr=False)
    weights: Optional[Path] = None
    starts_from: Optional[str] = None

    @property
    def name(self) -> str:
        """The source as the config names it (for messages)."""
        record = self.record
        return (f"model.factory {record['factory']}" if record["factory"] else
                f"model.onnx {record['onnx']}" if record["onnx"] else f"the model object {record['object']}")

    def identity(self) -> dict[str, Any]:
        """What must be equal for a checkpoint to be rebuilt by this source (not the weights:
        the checkpoint holds the trained tensors)."""
        return {k: self.record.get(k) for k in ("factory", "kwargs", "onnx_sha256", "object")}

    def pretrained(self) -> nn.Module:
        """A fresh module with ``model.weights`` loaded (as made when there are none)."""
        module = self.make()
        if self.weights is not None:
            load_weights(module, self.weights)
        return module

    def nq_network(self, module: nn.Module, input_shape: tuple, *, levels: int, noise: bool = True,
                   init_threshold: float = 8.0, normalization: Optional[Normalization] = None,
                   **activation) -> nn.Module:
        """``module`` captured into the NQ network (operations checked, activations NQ), with the
        input normalisation ``(mean, std)`` folded into its first layers: it takes [0, 1] pixels."""
        model = capture(module, tuple(input_shape), levels=levels, noise=noise, init_threshold=init_threshold,
                        **activation)
        if normalization is not None:
            fold_input_normalization(model, *normalization)
        return model

    def rebuilt(self, input_shape: tuple, levels: int, activation: Mapping[str, Any],
                normalization: Optional[Normalization] = None) -> nn.Module:
        """The NQ network a checkpoint of this source holds, freshly initialised (noise off)."""
        with warnings.catch_warnings():  # what capture and the fold warn about was said at training
            warnings.simplefilter("ignore", UserWarning)
            return self.nq_network(self.make(), input_shape, levels=levels, noise=False,
                                   normalization=normalization, **activation)


class Normalized(nn.Module):
    """``module((x - mean) / std)``: a pretrained module on the [0, 1] data, as it was trained."""

    def __init__(self, module: nn.Module, normalization: Normalization, input_shape: tuple):
        super().__init__()
        mean, std = (torch.tensor(v, dtype=torch.float32) for v in normalization)
        if len(input_shape) == 1:  # k values cover F/k features each
            mean, std = (v.repeat_interleave(input_shape[0] // len(v)) for v in (mean, std))
        else:
            mean, std = mean.view(-1, 1, 1), std.view(-1, 1, 1)
        self.module, self.mean, self.std = module, mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module((x - self.mean) / self.std)


def _record(**fields: Any) -> dict[str, Any]:
    base = {"factory": None, "kwargs": {}, "onnx": None, "onnx_sha256": None, "object": None,
            "weights": None, "weights_sha256": None}
    return {**base, **fields}


def from_factory(spec: str, kwargs: Mapping[str, Any], weights: Optional[str] = None) -> UserModel:
    """The user model ``model.factory`` / ``model.kwargs`` / ``model.weights`` describe."""
    weights_sha = _sha256(weights, "model.weights") if weights else None
    return UserModel(_record(factory=spec, kwargs=dict(kwargs), weights=weights, weights_sha256=weights_sha),
                     lambda: call_factory(spec, kwargs), Path(weights) if weights else None, weights)


def from_onnx(path: str) -> UserModel:
    """The user model of the ONNX file ``model.onnx``."""
    from models.onnx_import import OnnxImportError, module_from_onnx

    def make() -> nn.Module:
        try:
            return module_from_onnx(path)
        except OnnxImportError as exc:
            raise UserModelError(f"model.onnx: {exc}") from None
    return UserModel(_record(onnx=path, onnx_sha256=_sha256(path, "model.onnx")), make)


def from_object(module: nn.Module) -> UserModel:
    """The user model of a Python object (each copy a deep copy of it)."""
    if not isinstance(module, nn.Module):
        raise UserModelError(f"the model must be a torch nn.Module, got {type(module).__name__}")
    name = f"{type(module).__module__}.{type(module).__qualname__}"
    return UserModel(_record(object=name), lambda: copy.deepcopy(module), starts_from=f"the weights of the {name}")


def _sha256(path: str, key: str) -> str:
    try:
        return sha256_of(Path(path))
    except FileNotFoundError:
        raise UserModelError(f"{key}: no such file {path}") from None
    except (OSError, ToolkitError) as exc:
        raise UserModelError(f"{key}: {path}: {_one_line(exc)}") from None


def user_model(model_cfg, module: Optional[nn.Module] = None) -> Optional[UserModel]:
    """The user model of the config's model section (or of ``module``, given by
    :mod:`pipeline.api`); None for an architecture of the registry."""
    if module is not None:
        return from_object(module)
    if model_cfg.factory is not None:
        return from_factory(model_cfg.factory, model_cfg.kwargs, model_cfg.weights)
    if model_cfg.onnx is not None:
        return from_onnx(model_cfg.onnx)
    return None


def check_outputs(module: nn.Module, input_shape: tuple, num_classes: int, where: str) -> None:
    """The module maps (N, *input_shape) to (N, num_classes) logits (one forward of zeros)."""
    was_training = module.training
    try:
        with torch.no_grad():
            out = module.eval()(torch.zeros((2, *input_shape)))
    except Exception as exc:
        raise UserModelError(f"{where}: the network fails on inputs of shape {tuple(input_shape)} "
                             f"({_one_line(exc)})") from None
    finally:
        module.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserModelError(f"{where}: the network maps inputs {tuple(input_shape)} to {shape} per batch "
                             f"of 2; the data has {num_classes} classes, so it must give (2, {num_classes})")
