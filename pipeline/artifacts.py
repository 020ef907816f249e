"""The run directory: every file a run reads or writes, named in one place, and the typed
sections of its ``report.json``.

Writes are atomic (:func:`hardware.formats.files.atomic_path`, re-exported here), so a
killed process leaves either the previous complete file or the new complete one, never a
partial one; the temporary files a killed writer leaves are removed when a stage next opens
the run directory (:func:`remove_stale_temporaries`). Files are read only if they are regular
files within a size limit (:func:`open_regular`), else :class:`ArtifactError`.

``report.json`` is one JSON object: ``format_version`` plus one section per
stage result (:class:`Report`). Every section has a typed definition; reading a
report that is not JSON, not an object, of an unknown ``format_version`` or
with a section of the wrong type raises :class:`ArtifactError` naming the file
and the section/key. Unknown top-level keys (e.g. a benchmark's own figures) are
kept as they are.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import tempfile
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ContextManager, Iterable, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, create_model

from hardware.analysis.activity import MeanActivity
from hardware.analysis.energy import CostAtT, EnergyEstimate
from hardware.analysis.resources import FitReport
from hardware.errors import ToolkitError
from hardware.fixed_point.quantize import LayerQuantReport
from hardware.formats import files
from hardware.formats.files import atomic_path, atomic_write_bytes, atomic_write_text  # noqa: F401 (re-exported)
from hardware.kinds import NeuronKind

from .config import Calibrate, Surrogate


class ArtifactError(ToolkitError, ValueError):
    """A run artifact that is missing, unreadable or does not belong to this run."""


#: file names inside ``run.dir``
CHECKPOINT = "checkpoint.safetensors"
TRAIN_STATE = "train_state.safetensors"
#: the network fine-tuning started from, and the record of what fine-tuning did (pipeline.finetune)
FINETUNE_START = "checkpoint.converted.safetensors"
FINETUNE_RECORD = "finetune.json"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
NET_FILE = "model.net"
#: ``export --set export.format=nir``: the float network as a NIR graph (hardware.formats.nir)
NIR_FILE = "model.nir"
#: ``import``: a NIR graph made elsewhere, read and rewritten by this project; export's network
IMPORTED_NIR = "imported.nir"
RASTER_NPZ = "raster.npz"
#: the report's plots: kind -> file name
PLOT_FILES = {"accuracy": "accuracy_vs_t.png", "training": "training.png",
              "firing_rate": "firing_rate.png", "energy": "energy.png", "raster": "raster.png",
              "operating_points": "operating_points.png"}
#: every artifact name: the temporary files of their atomic writes start with one of them
_ARTIFACT_NAMES = tuple(sorted({CHECKPOINT, TRAIN_STATE, REPORT_JSON, REPORT_MD, NET_FILE, NIR_FILE,
                                IMPORTED_NIR, RASTER_NPZ, *PLOT_FILES.values()}, key=len, reverse=True))
#: files of the format before safetensors: recognised only to refuse them with a clear message
LEGACY_CHECKPOINT = "checkpoint.pt"
LEGACY_TRAIN_STATE = "train_state.pt"

#: the report.json format this version reads and writes
REPORT_FORMAT = 1
#: a report.json beyond this is not one of ours (read before parsing, so it cannot exhaust memory)
MAX_REPORT_BYTES = 64 << 20
#: a checkpoint, resume state or network file beyond this is not one of ours (a VGG-16 resume state
#: is about 0.3 GB)
MAX_ARTIFACT_BYTES = 8 << 30
#: Linux limits (PATH_MAX, NAME_MAX): longer paths fail deep inside the first write otherwise
MAX_PATH_BYTES = 4095
MAX_NAME_BYTES = 255


# --------------------------------------------------------------------------- writes and bounded reads
def open_regular(path: Any, limit: int, key: str = "") -> ContextManager[Any]:
    """:func:`hardware.formats.files.open_regular` raising :class:`ArtifactError`."""
    return files.open_regular(path, limit, key, ArtifactError)


def read_regular(path: Any, limit: int, key: str = "") -> bytes:
    """:func:`hardware.formats.files.read_regular` raising :class:`ArtifactError`."""
    return files.read_regular(path, limit, key, ArtifactError)


def check_regular(path: Any, limit: int, key: str = "") -> Path:
    """:func:`hardware.formats.files.check_regular` raising :class:`ArtifactError`."""
    return files.check_regular(path, limit, key, ArtifactError)


def sha256_of(path: Path, limit: int = MAX_ARTIFACT_BYTES) -> str:
    """The SHA-256 of a regular file of at most ``limit`` bytes (see :func:`open_regular`)."""
    digest = hashlib.sha256()
    with open_regular(path, limit) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- path checks
def _check_path_text(path: Any, key: str) -> Path:
    """A usable path: a non-empty string without NUL and within the OS length limits."""
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if not text:
        raise ArtifactError(f"{key} must be a non-empty path, got {path!r}")
    if "\x00" in text:
        raise ArtifactError(f"{key} {text!r} contains a NUL character")
    encoded = os.fsencode(text)
    if len(encoded) > MAX_PATH_BYTES:
        raise ArtifactError(f"{key} is too long ({len(encoded)} bytes; the limit is {MAX_PATH_BYTES})")
    long_parts = [p for p in encoded.split(b"/") if len(p) > MAX_NAME_BYTES]
    if long_parts:
        raise ArtifactError(f"{key}: the path component {os.fsdecode(long_parts[0][:40])}… is "
                            f"{len(long_parts[0])} bytes long (the limit is {MAX_NAME_BYTES})")
    return Path(text)


def _first_existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def prepare_run_dir(path: Any, key: str = "run.dir") -> Path:
    """Check ``path`` can hold a run (create it if needed); raise :class:`ArtifactError` naming
    ``key`` otherwise: a file, under a file, a NUL, too long, not creatable, not writable."""
    root = _check_path_text(path, key)
    if root.exists() and not root.is_dir():
        raise ArtifactError(f"{key} {root} is a file, not a directory")
    ancestor = _first_existing(root)
    if not ancestor.is_dir():
        raise ArtifactError(f"{key} {root} lies under {ancestor}, which is a file, not a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"{key} {root} cannot be created: {exc.strerror or exc}") from None
    try:  # the real test (os.access says yes to root on a read-only file system)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=root)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ArtifactError(f"{key} {root} is not writable: {exc.strerror or exc}") from None
    return root


def check_input_file(path: Any, key: str, hint: str = "", limit: int = MAX_ARTIFACT_BYTES) -> Path:
    """An existing, readable regular file of at most ``limit`` bytes, else :class:`ArtifactError`
    naming ``key``."""
    p = _check_path_text(path, key)
    if not p.exists() and not p.is_symlink():
        raise ArtifactError(f"{key}: no file at {p}{hint}")
    return check_regular(p, limit, key)


# --------------------------------------------------------------------------- stale temporaries
def _writer_pids(name: str, artifact: str) -> list[int]:
    """The pids a temporary file's name carries: atomic_path's ``.{artifact}.{pid}.…``, and
    ``….{pid}.tmp``, the name earlier versions' .net/.nir writer gave (nested in atomic_path by
    export, so a run directory of theirs may hold both in one name)."""
    pids = []
    head = re.match(r"\.(\d+)\.", name[len(artifact) + 1:])
    if name.startswith(".") and head:
        pids.append(int(head.group(1)))
    tail = re.search(r"\.(\d+)\.tmp$", name)
    if tail:
        pids.append(int(tail.group(1)))
    return pids


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid > 0
    return True


def stale_temporaries(root: Path) -> list[Path]:
    """The temporary files our atomic writers left in ``root`` (a killed writer): regular files
    named after one of the run directory's artifacts, ending in ``.tmp``, whose writer (the pid
    in the name, where there is one) is no longer alive."""
    found = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return found
    for entry in entries:
        name = entry.name
        bare = name[1:] if name.startswith(".") else name
        artifact = next((a for a in _ARTIFACT_NAMES if bare.startswith(a + ".")), None)
        if artifact is None or not name.endswith(".tmp") or not entry.is_file(follow_symlinks=False):
            continue
        if not any(_alive(pid) for pid in _writer_pids(name, artifact)):
            found.append(Path(entry.path))
    return found


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Remove :func:`stale_temporaries` of ``root``; the ones removed (a vanished one is skipped)."""
    removed = []
    for path in stale_temporaries(root):
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


# --------------------------------------------------------------------------- report sections
class _Section(BaseModel):
    """A report section: the keys listed are typed (strictly: no silent conversion), further
    keys are kept as they are so a newer writer's additions survive a merge."""

    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)


def _typed(annotation: Any) -> Any:
    """``annotation`` with every dataclass in it (also inside list, dict, Optional) replaced by
    its section model."""
    if dataclasses.is_dataclass(annotation):
        return section_of(annotation)
    args = typing.get_args(annotation)
    if not args:
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_typed(a) for a in args)]
    return origin[tuple(_typed(a) for a in args)]


@functools.cache
def section_of(result: type) -> type[_Section]:
    """The report section of a hardware result dataclass, written by its ``asdict`` form: the
    dataclass's fields, types and defaults, checked as every section is (so the result type is
    defined once, in hardware/)."""
    hints = typing.get_type_hints(result)
    fields = {}
    for f in dataclasses.fields(result):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = Field(default_factory=f.default_factory)
        else:
            default = ...
        fields[f.name] = (_typed(hints[f.name]), default)
    return create_model(result.__name__, __base__=_Section, __doc__=result.__doc__, **fields)


#: the sections the hardware analysis writes (see the dataclasses for their keys)
QuantLayer = section_of(LayerQuantReport)
Probes = section_of(MeanActivity)
Energy = section_of(EnergyEstimate)
Resources = section_of(FitReport)
Cost = section_of(CostAtT)

TimeStep = Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]*$")]
Readout = Literal["potential", "spikes"]
#: an accuracy: a fraction in [0, 1] (so no NaN or infinity either)
Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
#: an NQ layer's noise σ (a standard deviation) and threshold λ (a firing threshold)
Sigma = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
Threshold = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]


class Accuracy(_Section):
    """Test accuracy (fractions); per T as ``{"1": acc, …}``."""

    ann: Optional[Fraction] = None
    #: the ANN on the validation split (for the suggested T; the test split chooses nothing)
    ann_val: Optional[Fraction] = None
    snn_float: Optional[dict[TimeStep, Fraction]] = None
    snn_fixed: Optional[dict[TimeStep, Fraction]] = None
    lava: Optional[dict[TimeStep, Fraction]] = None


class EpochRecord(_Section):
    epoch: int
    loss: Optional[float] = None
    ann_val: Optional[Fraction] = None
    snn_val: Optional[Fraction] = None
    # as training measured them (a diverged epoch's NaN is history too); the checkpoint's are checked
    sigma: list[float] = []
    lambda_: list[float] = Field(default=[], alias="lambda")
    lr: Optional[float] = None


class Pretrained(_Section):
    """The pretrained ANN (``model.weights``) before NQ fine-tuning: its test and validation accuracy."""

    weights: str
    sha256: Optional[str] = None
    ann_test: Fraction
    ann_val: Fraction


class Training(_Section):
    best_epoch: Optional[int] = None
    history: list[EpochRecord] = []
    pretrained: Optional[Pretrained] = None


class Simulator(_Section):
    float_samples_per_s: Optional[float] = None
    fixed_samples_per_s: Optional[float] = None


class CheckpointInfo(_Section):
    epoch: Optional[int] = None
    sigma: list[Sigma] = []
    lambda_: list[Threshold] = Field(default=[], alias="lambda")
    sha256: Optional[str] = None


class ExportInfo(_Section):
    path: str
    sha256: Optional[str] = None
    neuron: Optional[str] = None
    readout: Optional[Readout] = None
    input_bits: Optional[int] = None
    format: Optional[Literal["net", "nir"]] = None
    #: where the network came from: "checkpoint" (train) or "imported-nir" (import)
    source: Optional[str] = None


class ImportInfo(_Section):
    """The NIR graph ``import`` read (``source``) and the copy export reads (``path``)."""

    source: str
    source_sha256: str
    path: str
    sha256: str
    readout: Readout
    #: the time step the graph was read with (None: the graph's own, written by this project)
    dt: Optional[float] = None
    layers: list[str] = []


class NetworkFile(_Section):
    path: str
    sha256: Optional[str] = None


class Lava(_Section):
    samples: int
    agreement: Fraction
    backend: str
    readout: Optional[Readout] = None
    steps_per_sample: Optional[int] = None
    wall_time_s: Optional[float] = None
    samples_per_s: Optional[float] = None
    disagreeing_samples: list[int] = []
    probes: Optional[Probes] = None
    probes_equal_reference: Optional[bool] = None


class OperatingPointRow(_Section):
    """One T of the deployed file on the test split (fixed point); ``cost`` needs run.probes."""

    timesteps: int = Field(ge=1)
    snn_fixed: Fraction
    snn_fixed_val: Optional[Fraction] = None
    steps_to_decision: float
    cost: Optional[Cost] = None


class OperatingPoints(_Section):
    """Every T = 1 … eval.timesteps of the deployed file, and the suggested T
    (:func:`pipeline.operating_point.operating_points`)."""

    deployment_timesteps: int = Field(ge=1)
    split: str = "test"
    rows: list[OperatingPointRow] = []
    validation_samples: Optional[int] = None
    ann_val: Optional[Fraction] = None
    max_drop: Optional[float] = None
    suggested_timesteps: Optional[int] = None
    suggestion: Optional[str] = None


class EnergyMeasured(_Section):
    source: Optional[str] = None


class Raster(_Section):
    """Which ``raster.npz`` belongs to this report (a raster without a matching hash is not shown)."""

    path: str
    sha256: str
    layers: list[str] = []


# --- the board bundle (``bundle`` stage) and the result run_on_loihi.py brings back
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Seconds = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
Measured = Annotated[float, Field(allow_inf_nan=False)]


class BundleInfo(_Section):
    """``<run.dir>/bundle/`` as the bundle stage wrote it."""

    path: str
    samples: int
    timesteps: int
    readout: Readout
    bytes: int
    net_sha256: Sha256
    golden_accuracy: Fraction


class BoardMeasurement(_Section):
    """lava-loihi's profilers, as run_on_loihi.py read them on the board."""

    source: str
    time_per_step_us: Seconds
    total_power_w: Measured
    static_power_w: Measured
    dynamic_power_w: Measured
    energy_per_sample_j: Measured
    dynamic_energy_per_sample_j: Measured


class BoardRun(_Section):
    """The result JSON of a bundle's run_on_loihi.py (``report --board-result``): measured on a
    board (backend ``hw``) or in its CPU rehearsal (``sim``), never an estimate."""

    format: Literal["nqloihi-board-result"]
    format_version: Literal[1]
    backend: Literal["hw", "sim"]
    run_config: Annotated[str, StringConstraints(max_length=200)]
    host: Annotated[str, StringConstraints(max_length=256)]
    date: Annotated[str, StringConstraints(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", max_length=40)]
    board: dict[str, Annotated[str, StringConstraints(max_length=256)]] = {}
    net_sha256: Sha256
    bundle_commit: Optional[Annotated[str, StringConstraints(max_length=80)]] = None
    timesteps: Annotated[int, Field(ge=1)]
    readout: Readout
    samples: Annotated[int, Field(ge=1)]
    agreement: Fraction
    mismatching_samples: list[Annotated[int, Field(ge=0)]] = []
    predictions_agree: bool
    accuracy: Fraction
    golden_accuracy: Fraction
    wall_time_s: Seconds
    first_sample_s: Seconds
    time_per_sample_s: Seconds
    board_measurement: Optional[BoardMeasurement] = None
    versions: dict[str, Annotated[str, StringConstraints(max_length=80)]] = {}
    #: the file report read it from
    source: Optional[str] = None


# --- the low-latency corrections applied after training (the report stage fills them)
class FinetuneEpoch(_Section):
    epoch: int = Field(ge=1)
    loss: Optional[float] = None
    snn_val: Optional[Fraction] = None
    train_s: Optional[Seconds] = None
    select_s: Optional[Seconds] = None


class Finetune(_Section):
    """The converted SNN fine-tuned at T (pipeline.finetune), as ``finetune.json`` records it;
    only while the checkpoint is that record's fine-tuned network. ``snn_val_*``: the SNN's
    accuracy at ``timesteps`` on the validation selection set (float simulator); ``deployed``:
    whether the .net the report describes was exported from this checkpoint (None: no .net)."""

    epochs: int = Field(ge=1)
    timesteps: int = Field(ge=1)
    neuron: NeuronKind
    surrogate: Optional[Surrogate] = None
    lr: Optional[float] = None
    batch_size: Optional[int] = None
    snn_val_before: Fraction
    snn_val_after: Fraction
    best_epoch: int = Field(ge=0)
    select_samples: Optional[int] = None
    wall_time_s: Optional[Seconds] = None
    history: list[FinetuneEpoch] = []
    finetuned_sha256: Optional[Sha256] = None
    deployed: Optional[bool] = None


class CalibrationLayer(_Section):
    """One layer of ``snn.calibrate``: mean |ANN − SNN| of its per-channel mean outputs (value
    units) before and after, and the threshold factor chosen (1: unchanged)."""

    layer: str
    threshold_scale: float
    error_before: Annotated[float, Field(ge=0.0)]
    error_after: Annotated[float, Field(ge=0.0)]


class Calibration(_Section):
    """The ``calibration`` the deployed .net records in its provenance (export, snn.calibrate)."""

    mode: Calibrate
    timesteps: int = Field(ge=1)
    samples: int = Field(ge=0)
    layers: list[CalibrationLayer] = []
    #: the .net it was read from
    path: Optional[str] = None
    sha256: Optional[Sha256] = None


def validate_section(model: type[_Section], raw: Any, source: str) -> dict:
    """``raw`` checked as the section ``model`` (JSON types back); :class:`ArtifactError` naming
    ``source`` and the key otherwise."""
    if not isinstance(raw, dict):
        raise ArtifactError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    try:
        return model.model_validate(raw).model_dump(mode="json", exclude_unset=True)
    except ValidationError as exc:
        raise ArtifactError(f"{source}: {_describe(exc)}") from None


class Report(_Section):
    """The whole report.json: one optional section per stage result."""

    format_version: int = REPORT_FORMAT
    config: Optional[dict[str, dict[str, Any]]] = None
    training: Optional[Training] = None
    accuracy: Optional[Accuracy] = None
    readout: Optional[Readout] = None
    test_samples: Optional[int] = None
    simulator: Optional[Simulator] = None
    checkpoint: Optional[CheckpointInfo] = None
    export: Optional[ExportInfo] = None
    #: ``export`` with export.format=nir (model.nir; the "export" section stays model.net's)
    export_nir: Optional[ExportInfo] = None
    import_: Optional[ImportInfo] = Field(default=None, alias="import")
    network_file: Optional[NetworkFile] = None
    quantization: Optional[list[QuantLayer]] = None
    lava: Optional[Lava] = None
    probes: Optional[Probes] = None
    energy: Optional[Energy] = None
    operating_points: Optional[OperatingPoints] = None
    energy_measured: Optional[EnergyMeasured] = None
    resources: Optional[Resources] = None
    raster: Optional[Raster] = None
    bundle: Optional[BundleInfo] = None
    board_run: Optional[BoardRun] = None
    finetune: Optional[Finetune] = None
    calibration: Optional[Calibration] = None
    wall_time_s: Optional[float] = None

    def to_json_dict(self) -> dict:
        """The JSON form (only the keys that were set; documented key names)."""
        out = self.model_dump(mode="json", by_alias=True, exclude_unset=True)
        out["format_version"] = self.format_version
        return out


#: sections whose dict value is merged key by key (several stages fill them)
MERGED_SECTIONS = ("accuracy", "simulator")


def _jsonable(value: Any) -> Any:
    """Plain JSON types (numpy scalars and arrays become numbers and lists)."""
    def default(obj):
        if hasattr(obj, "tolist"):
            return obj.tolist()
        raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")
    return json.loads(json.dumps(value, default=default))


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    got = repr(first.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']} (got {got}){more}"


def validate_report(raw: Any, source: str) -> Report:
    """A :class:`Report` from a parsed JSON value; :class:`ArtifactError` naming ``source`` and
    the section/key otherwise."""
    if not isinstance(raw, dict):
        raise ArtifactError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    version = raw.get("format_version", REPORT_FORMAT)
    if version != REPORT_FORMAT or isinstance(version, bool):
        raise ArtifactError(f"{source}: format_version {version!r} is not one this version reads "
                            f"({REPORT_FORMAT}); re-run the stages into a new run.dir")
    try:
        return Report.model_validate(raw)
    except ValidationError as exc:
        raise ArtifactError(f"{source}: section {_describe(exc)}") from None


def reject_duplicate_keys(pairs: list) -> dict:
    """A JSON object's pairs as a dict, refusing a repeated key (linear: one dict, one pass)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_report_json(path: Path) -> Any:
    """The parsed JSON of ``path`` (a regular file, size-checked before reading); ArtifactError
    if it is anything else or not JSON."""
    data = read_regular(path, MAX_REPORT_BYTES)
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=reject_duplicate_keys)
    except UnicodeDecodeError:
        raise ArtifactError(f"{path} is not readable JSON (not UTF-8 text)") from None
    except RecursionError:
        raise ArtifactError(f"{path} is not readable JSON (nested too deeply)") from None
    except ValueError as exc:  # json.JSONDecodeError and duplicate keys
        raise ArtifactError(f"{path} is not readable JSON ({exc}); delete it or re-run the "
                            "stages into a new run.dir") from None


def merge_report(report: Report, updates: Mapping[str, Any], replace: Iterable[str] = ()) -> Report:
    """``report`` with ``updates`` applied: sections in :data:`MERGED_SECTIONS` merge key by key,
    every other section is replaced; sections named in ``replace`` and absent from ``updates``
    are removed (a stage's results that belong together never mix two runs)."""
    merged = report.to_json_dict()
    for key in replace:
        merged.pop(key, None)
    for key, value in _jsonable(dict(updates)).items():
        if key in MERGED_SECTIONS and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    merged["format_version"] = REPORT_FORMAT
    try:
        return Report.model_validate(merged)
    except ValidationError as exc:  # a stage produced a section its definition does not allow
        raise ArtifactError(f"{REPORT_JSON} update: section {_describe(exc)}") from None


# --------------------------------------------------------------------------- the run directory
def _file(name: str) -> property:
    """A :class:`RunDir` property: the path of the artifact ``name`` in the run directory."""
    return property(lambda self: self.root / name, doc=f"``run.dir``/{name}")


@dataclass(frozen=True)
class RunDir:
    """The files of one run directory (``run.dir``)."""

    root: Path

    @classmethod
    def prepared(cls, path: Any, key: str = "run.dir") -> "RunDir":
        """The run directory at ``path``, checked and created (see :func:`prepare_run_dir`), without
        the temporary files a killed writer left (see :func:`remove_stale_temporaries`)."""
        run_dir = cls(prepare_run_dir(path, key))
        remove_stale_temporaries(run_dir.root)
        return run_dir

    checkpoint = _file(CHECKPOINT)
    train_state = _file(TRAIN_STATE)
    report_json = _file(REPORT_JSON)
    report_md = _file(REPORT_MD)
    net = _file(NET_FILE)
    nir = _file(NIR_FILE)
    imported_nir = _file(IMPORTED_NIR)
    raster = _file(RASTER_NPZ)

    def net_to_run(self, run_net: Optional[str]) -> Path:
        """The .net file ``run`` executes (``run.net``, else this directory's), checked readable."""
        if run_net:
            return check_input_file(run_net, "run.net")
        return check_input_file(self.net, "run.net", hint="; run `python -m pipeline export` first "
                                "or set run.net to a .net file")

    def plot(self, kind: str) -> Path:
        """The PNG of one of the report's plots (a key of :data:`PLOT_FILES`)."""
        return self.root / PLOT_FILES[kind]

    def read_report(self) -> Report:
        """The validated report.json (an empty report if there is none yet)."""
        path = self.report_json
        if not path.exists() and not path.is_symlink():
            return Report()
        return validate_report(parse_report_json(path), str(path))

    def write_report(self, report: Report) -> None:
        text = json.dumps(report.to_json_dict(), indent=2, sort_keys=True, allow_nan=True)
        atomic_write_text(self.report_json, text + "\n")

    def update_report(self, updates: Mapping[str, Any], replace: Iterable[str] = ()) -> Report:
        """Merge ``updates`` into report.json atomically (see :func:`merge_report`)."""
        report = merge_report(self.read_report(), updates, replace)
        self.write_report(report)
        return report


__all__ = ["ArtifactError", "RunDir", "Report", "BoardRun", "validate_section", "atomic_path", "atomic_write_bytes", "atomic_write_text",
           "prepare_run_dir", "check_input_file", "validate_report", "merge_report", "sha256_of",
           "CHECKPOINT", "TRAIN_STATE", "REPORT_JSON", "REPORT_MD", "NET_FILE", "NIR_FILE", "IMPORTED_NIR",
           "RASTER_NPZ", "PLOT_FILES",
           "LEGACY_CHECKPOINT", "LEGACY_TRAIN_STATE", "REPORT_FORMAT"]
