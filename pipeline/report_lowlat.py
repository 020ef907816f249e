"""The report's low-latency corrections: what changed the deployed network after training.

The report stage fills two report.json sections from the run's files (only read, nothing is
re-run), so a reader can tell that the network was changed after conversion, by how much it
helped and what it cost:

* ``finetune`` (:class:`pipeline.artifacts.Finetune`) from ``finetune.json``, only while the
  checkpoint is the network that record made (its tensors' hash, as the finetune stage
  checks it): a record beside a checkpoint trained since, or put back by finetune.epochs 0,
  describes no network of this run. ``deployed`` says whether the .net was exported from it.
* ``calibration`` (:class:`pipeline.artifacts.Calibration`) from the ``calibration`` the
  deployed .net records in its provenance (export with snn.calibrate), as recorded.

Each is null when it does not apply; a record or file that cannot be read is logged and
left out rather than failing the report.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from safetensors import SafetensorError, safe_open

from hardware.errors import ToolkitError

from .artifacts import ArtifactError, RunDir, sha256_of
from .finetune import RECORD, read_record, tensors_sha256

log = logging.getLogger(__name__)

#: the keys of finetune.json's ``result`` a report keeps (the rest, e.g. the action, is the stage's)
_RESULT_KEYS = ("epochs", "timesteps", "neuron", "snn_val_before", "snn_val_after", "best_epoch",
                "select_samples", "wall_time_s")
_EPOCH_KEYS = ("epoch", "loss", "snn_val", "train_s", "select_s")


def _checkpoint_hash(path: Path) -> Optional[str]:
    """:func:`pipeline.finetune.tensors_sha256` of the checkpoint's tensors (no model is built,
    so a user's network needs no code to run); None if there is no readable checkpoint."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return tensors_sha256({name: f.get_tensor(name) for name in f.keys()})
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        log.warning("%s not readable (%s): the report says nothing of fine-tuning", path, exc)
        return None


def finetune_section(run_dir: RunDir, provenance: Optional[dict]) -> Optional[dict]:
    """The ``finetune`` section, or None (no record, or not this checkpoint's); ``provenance``:
    the deployed .net's (None: no .net), which says whether it was exported from it."""
    try:
        record = read_record(run_dir.root / RECORD)
    except ArtifactError as exc:
        log.warning("%s; the report says nothing of fine-tuning", exc)
        return None
    if record is None or _checkpoint_hash(run_dir.checkpoint) != record["finetuned_sha256"]:
        return None
    result, settings = record["result"], record["settings"].get("finetune") or {}
    section = {key: result.get(key) for key in _RESULT_KEYS}
    section.update({key: settings.get(key) for key in ("surrogate", "lr", "batch_size")})
    section["history"] = [{key: epoch.get(key) for key in _EPOCH_KEYS} for epoch in result.get("history") or []]
    section["finetuned_sha256"] = record["finetuned_sha256"]
    if provenance is not None:
        section["deployed"] = provenance.get("checkpoint_sha256") == sha256_of(run_dir.checkpoint)
    return section


def calibration_section(net_path: Path, provenance: dict) -> Optional[dict]:
    """The ``calibration`` section of the .net at ``net_path`` (None if it records none)."""
    recorded = provenance.get("calibration")
    if not isinstance(recorded, dict):
        return None
    return {**recorded, "path": str(net_path), "sha256": sha256_of(net_path)}


def _provenance(net_path: Optional[Path]) -> Optional[dict]:
    if net_path is None:
        return None
    from hardware.formats.netx import read_provenance

    try:
        return read_provenance(net_path)
    except (ToolkitError, OSError) as exc:
        log.warning("%s: provenance not readable (%s); the report says nothing of calibration", net_path, exc)
        return None


def lowlat_sections(run_dir: RunDir, net_path: Optional[Path]) -> dict:
    """``{"finetune": …, "calibration": …}`` for report.json (each None when it does not apply);
    ``net_path``: the deployed .net (the one run ran, else the one exported), or None."""
    provenance = _provenance(net_path)
    calibration = calibration_section(net_path, provenance) if provenance is not None else None
    return {"finetune": finetune_section(run_dir, provenance), "calibration": calibration}


__all__ = ["lowlat_sections", "finetune_section", "calibration_section"]
