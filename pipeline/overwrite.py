"""Good work is never replaced by accident: a stage that would overwrite a trained checkpoint
(``train``) or an exported network (``export``) made with another configuration refuses,
unless the user says so (``--overwrite``, i.e. ``run.overwrite: true``) or picks a new run.dir.

"Another configuration" is decided on the keys that change the artifact, nothing else:

* a checkpoint and its resume state: every key of the sections data, model, nq, train and
  snn (:func:`pipeline.checkpoints.training_identity`), except how long the ranks of a
  distributed run wait for each other; the same configuration resumes (or finds the
  training complete) as before;
* model.net: the network it was made from (architecture, levels, activation of the
  checkpoint) and what export does with it: the snn and quant sections and the deployment T
  the file records (``snn.timesteps``: its reset interval and its readout and state bounds);
  model.nir (the float network): the network and the snn section. How far the accuracy curve
  goes (``eval.timesteps``), the evaluation batch size, the Lava sample count, the run
  directory and the like do not count. The
  identity is read from the file's own provenance, so a file an interrupted export
  renamed into place before its report was updated is judged by what it is.

* imported.nir: the source graph (its SHA-256) and the dt it was read with.

With ``--overwrite``, ``train`` (``import``) removes the old checkpoint (imported graph) and
everything made from it (resume state, model.net, model.nir, raster, report.json and
report.md, plots), so the directory never mixes two networks.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from .artifacts import (CHECKPOINT, FINETUNE_RECORD, FINETUNE_START, IMPORTED_NIR, NET_FILE, NIR_FILE, PLOT_FILES,
                        RASTER_NPZ, REPORT_JSON, REPORT_MD, TRAIN_STATE, ArtifactError)
from .checkpoints import CheckpointError, stored_config, training_identity

#: what the user is told to do about a refusal
HOW_TO_REPLACE = ("pass --overwrite (or --set run.overwrite=true) to replace it, or set a new run.dir "
                  "(--set run.dir=...) to keep it")
#: the files made from a run directory's network (removed with it by ``--overwrite``)
DERIVED_FILES = (NET_FILE, NIR_FILE, RASTER_NPZ, REPORT_JSON, REPORT_MD, *PLOT_FILES.values())
#: the files a trained checkpoint makes
DERIVED_FROM_CHECKPOINT = (TRAIN_STATE, FINETUNE_START, FINETUNE_RECORD, *DERIVED_FILES)
#: how many differing keys an error lists
_SHOWN = 4


class OverwriteError(ArtifactError):
    """A stage would replace an artifact made with another configuration."""


def _flatten(identity: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in identity.items():
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: stored -> current`` for every (dotted) key whose value differs (linear in the keys)."""
    old, new = _flatten(stored), _flatten(current)
    missing = object()
    return [f"{key}: {_short(old.get(key, missing))} -> {_short(new.get(key, missing))}"
            for key in sorted(set(old) | set(new)) if old.get(key, missing) != new.get(key, missing)]


def _short(value: Any) -> str:
    if not isinstance(value, (str, int, float, bool, type(None), list, dict)):
        return "(absent)"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _listed(diffs: list[str]) -> str:
    more = f"; and {len(diffs) - _SHOWN} more" if len(diffs) > _SHOWN else ""
    return "; ".join(diffs[:_SHOWN]) + more


# --------------------------------------------------------------------------- train
def training_replaces(run_dir: Path, config: Mapping[str, Any], overwrite: bool) -> bool:
    """True if ``run_dir`` holds a checkpoint or resume state of another configuration and
    ``overwrite`` allows replacing it; False if there is none or it is this configuration's;
    :class:`OverwriteError` otherwise (also for one that cannot be read: its configuration is
    unknown)."""
    wanted = training_identity(config)
    for name in (CHECKPOINT, TRAIN_STATE):
        path = run_dir / name
        if not path.exists() and not path.is_symlink():
            continue
        try:
            diffs = differences(training_identity(stored_config(path)), wanted)
        except CheckpointError as exc:
            if overwrite:
                return True
            raise OverwriteError(f"{exc}; train would replace it: {HOW_TO_REPLACE}") from None
        if diffs and not overwrite:
            raise OverwriteError(f"{path} was trained with another configuration ({_listed(diffs)}); "
                                 f"train would replace it and the files made from it: {HOW_TO_REPLACE}")
        if diffs:
            return True
    return False


def _remove(run_dir: Path, names: tuple) -> list[str]:
    """Remove the files (or links) of ``run_dir`` named ``names``; the names of those removed."""
    removed = []
    for name in names:
        path = run_dir / name
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed.append(name)
    return removed


def clear_trained(run_dir: Path) -> list[str]:
    """Remove the checkpoint and every file made from it (``train --overwrite``); their names."""
    return _remove(run_dir, (CHECKPOINT, *DERIVED_FROM_CHECKPOINT))


# --------------------------------------------------------------------------- import
def import_replaces(run_dir: Path, metadata: Mapping[str, Any], overwrite: bool) -> bool:
    """True if ``run_dir`` holds an imported graph of another source (or read with another dt)
    than the one ``metadata`` describes and ``overwrite`` allows replacing it (the caller then
    clears what was made from it); False if there is none or it is the same; OverwriteError
    otherwise."""
    path = run_dir / IMPORTED_NIR
    if not (path.exists() or path.is_symlink()):
        return False
    stored = _provenance(path, "nir") or {}
    keys = ("imported_sha256", "dt")
    diffs = differences({k: stored.get(k) for k in keys}, {k: metadata.get(k) for k in keys})
    if diffs and not overwrite:
        raise OverwriteError(f"{path} holds another imported graph ({_listed(diffs)}); import would replace "
                             f"it and the files made from it: {HOW_TO_REPLACE}")
    return bool(diffs)


def clear_imported(run_dir: Path) -> list[str]:
    """Remove the imported graph and every file made from it (``import --overwrite``)."""
    return _remove(run_dir, (IMPORTED_NIR, *DERIVED_FILES))


# --------------------------------------------------------------------------- export
def export_identity(provenance: Mapping[str, Any], fmt: str = "net") -> dict[str, Any]:
    """What makes an exported file what it is, from its provenance (see the module docstring);
    ``fmt`` ``nir``: the float network, which quantization and the deployment T do not touch."""
    config = provenance.get("config") if isinstance(provenance.get("config"), Mapping) else {}
    identity = {"network": {"arch": provenance.get("arch"), "levels": provenance.get("levels"),
                            "activation": provenance.get("activation"),
                            "imported": "imported_nir_sha256" in provenance},
                "snn": config.get("snn")}
    if fmt == "net":
        identity.update(quant=config.get("quant"), timesteps=provenance.get("timesteps"))
    return identity


def check_net_replacement(path: Path, provenance: Mapping[str, Any], overwrite: bool, fmt: str = "net") -> None:
    """Refuse (:class:`OverwriteError`) to replace the exported file at ``path`` (model.net, or
    model.nir with ``fmt`` ``nir``) by an export with ``provenance`` when the file was made with
    another configuration or is not one this toolkit's export wrote, unless ``overwrite``."""
    if overwrite or not (path.exists() or path.is_symlink()):
        return
    stored = _provenance(path, fmt)
    if stored is None or "config" not in stored:
        raise OverwriteError(f"{path} is not a network this toolkit's export wrote (it has no provenance "
                             f"of an export); export would replace it: {HOW_TO_REPLACE}")
    diffs = differences(export_identity(stored, fmt), export_identity(provenance, fmt))
    if diffs:
        raise OverwriteError(f"{path} was exported with another configuration ({_listed(diffs)}); export "
                             f"would replace it: {HOW_TO_REPLACE}")


def _provenance(path: Path, fmt: str) -> Optional[dict]:
    """The provenance of the exported file at ``path``; None if it cannot be read as one."""
    from hardware.errors import ToolkitError

    from .artifacts import MAX_ARTIFACT_BYTES, check_regular

    try:
        check_regular(path, MAX_ARTIFACT_BYTES)
        if fmt == "nir":
            from hardware.formats.nir import read_nir
            record = read_nir(path).metadata
        else:
            from hardware.formats.netx import read_provenance
            record = read_provenance(path)  # the reader's checks: a damaged heap cannot hang it
    except ToolkitError:
        return None
    return dict(record) if isinstance(record, Mapping) else None


__all__ = ["OverwriteError", "training_replaces", "clear_trained", "import_replaces", "clear_imported", "export_identity", "check_net_replacement",
           "differences", "HOW_TO_REPLACE"]
