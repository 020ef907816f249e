"""Deploy your own network from Python (a notebook): the CLI's stages on a model object and data.

    from pipeline import api
    report = api.deploy(model, train=(x_train, y_train), test=(x_test, y_test),
                        run_dir="runs/mine", overrides={"train.epochs": 5})

``model``: an ``nn.Module`` of the supported operations (:func:`models.capture.capture`). Its
weights are the starting point NQ training fine-tunes (the report gives its accuracy before);
the object itself is never changed (each stage captures a deep copy).

``train`` / ``test``: the data, as an ``(x, y)`` pair of tensors or arrays, a map-style torch
``Dataset`` of ``(x, y)`` pairs (``TensorDataset``), or a ``DataLoader`` over one (iterated
once). ``x``: float in [0, 1] (or uint8 pixels), channel-first (N, C, H, W) or flat (N, F);
``y``: integer labels 0..K-1. They are written to ``<run_dir>/data.npz`` and the run's config
names it (``data.name: npz``), so every stage reads them as the pipeline reads a user's npz
dataset (same checks; the validation split is held out of ``train``).

``config``: a deploy.yaml to start from (None: the defaults); ``overrides``: ``{"section.key":
value}`` or ``["section.key=value"]``, as ``--set``. ``stages``: which stages to run, in order.
The result is the run's report (report.json as a dict). Training starts afresh: a run_dir
that already holds a trained network is refused (the config cannot tell the objects apart).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from . import stages as pipeline_stages
from .artifacts import CHECKPOINT, TRAIN_STATE, ArtifactError, atomic_path
from .config import Config, load_config
from .data import DatasetError
from .user_model import from_object

__all__ = ["deploy", "configure", "STAGES", "DATA_FILE"]

#: The stages :func:`deploy` runs by default (those that build the network take ``model``).
STAGES = ("train", "evaluate", "export", "run", "report")
_MODEL_STAGES = ("train", "evaluate", "export")
#: The npz file :func:`configure` writes into the run directory.
DATA_FILE = "data.npz"
Overrides = Union[Mapping[str, Any], Sequence[str]]


def _as_arrays(data: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` numpy arrays of one split given as a pair, a Dataset or a DataLoader."""
    if isinstance(data, torch.utils.data.DataLoader):
        batches = list(data)
        pairs = (torch.cat([torch.as_tensor(b[0]) for b in batches]),
                 torch.cat([torch.as_tensor(b[1]) for b in batches])) if batches else None
    elif isinstance(data, torch.utils.data.TensorDataset):
        pairs = tuple(data.tensors)
    elif isinstance(data, torch.utils.data.Dataset):
        items = [data[i] for i in range(len(data))]
        pairs = (torch.stack([torch.as_tensor(x) for x, _ in items]),
                 torch.as_tensor([int(y) for _, y in items])) if items else None
    elif isinstance(data, (tuple, list)):
        pairs = tuple(data)
    else:
        raise DatasetError(f"api: {split} must be an (x, y) pair, a torch Dataset or a DataLoader, "
                           f"got {type(data).__name__}")
    if pairs is None or len(pairs) != 2:
        raise DatasetError(f"api: {split} must give (x, y): inputs and labels, got "
                           f"{'no samples' if pairs is None else f'{len(pairs)} items'}")
    x, y = (t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t) for t in pairs)
    return (x.astype(np.float32) if x.dtype == np.float64 else x), y


def _override_texts(overrides: Overrides) -> list[str]:
    if isinstance(overrides, Mapping):  # JSON is YAML: strings quoted, lists and null as --set reads them
        return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    return [overrides] if isinstance(overrides, str) else list(overrides)


def configure(run_dir: Union[str, Path], train: Any, test: Any, *, config: Optional[Union[str, Path]] = None,
              overrides: Overrides = ()) -> Config:
    """Write the data into ``<run_dir>/data.npz`` and return the validated config of the run
    (``config`` and ``overrides`` applied, then run.dir and the npz data set)."""
    texts = _override_texts(overrides) + [f"run.dir={json.dumps(str(run_dir))}", "data.name=npz",
                                          f"data.root={json.dumps(str(Path(run_dir) / DATA_FILE))}"]
    cfg = load_config(config, texts) if config is not None else Config.from_dict({}, texts)
    x_train, y_train = _as_arrays(train, "train")
    x_test, y_test = _as_arrays(test, "test")
    pipeline_stages.open_run(cfg)  # run.dir checked and created before anything is written
    with atomic_path(Path(cfg.data.root)) as tmp, open(tmp, "wb") as fh:  # a file: savez adds no suffix
        np.savez(fh, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return cfg


def deploy(model: nn.Module, train: Any, test: Any, *, run_dir: Union[str, Path],
           config: Optional[Union[str, Path]] = None, overrides: Overrides = (),
           stages: Sequence[str] = STAGES, progress: bool = False) -> dict:
    """Train ``model`` with NQ on ``train``, evaluate, export and run it (``stages``); the report."""
    unknown = [name for name in stages if name not in STAGES]
    if unknown:
        raise ValueError(f"api.deploy: unknown stage(s) {', '.join(map(repr, unknown))}; "
                         f"stages are {', '.join(STAGES)}")
    from_object(model)  # a non-module is refused before the data is written
    trained = [name for name in (CHECKPOINT, TRAIN_STATE) if (Path(run_dir) / name).exists()]
    if "train" in stages and trained:  # the config cannot tell this object and data from the last ones
        raise ArtifactError(f"api.deploy trains afresh, but {run_dir} already holds {', '.join(trained)} "
                            f"(of an earlier call): pick a new run_dir or delete it")
    cfg = configure(run_dir, train, test, config=config, overrides=overrides)
    if tuple(stages) == STAGES:
        return pipeline_stages.run_all(cfg, progress, module=model)
    for name in stages:
        stage = getattr(pipeline_stages, name)
        stage(cfg, progress, model) if name in _MODEL_STAGES else stage(cfg, progress)
    return pipeline_stages.read_report(cfg.run.dir)
