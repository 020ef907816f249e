"""Bad NIR graphs for ``import`` (issue 18): NaN and inf where they would change what the
network means, in this project's files and (``foreign``) in the same graph without its
metadata, versions this reader does not know (our ``format_version`` and NIR's own
``version``) and non-finite time steps. Stage: ``import`` with ``import.nir`` set; each must
end in exit 2 and one ``error:`` line naming the node and parameter (or the version), and
nothing written into the run directory that was not there."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import h5py
import numpy as np

from . import Case, default_run
from .base import Workspace

HIDDEN, READOUT = "fc1", "out"


def nir_path(ws: Workspace) -> Path:
    return ws.inputs / "model.nir"


def _base_net():
    """A small dense digits network with a potential readout (every parameter kind present)."""
    from hardware import ir

    rng = np.random.default_rng(0)
    return ir.Network(input=ir.Input(shape=(1, 8, 8)), readout="potential", layers=[
        ir.Flatten(name="flat"),
        ir.Dense(weight=rng.normal(size=(12, 64)), bias=rng.normal(size=12) * 0.1,
                 neuron=ir.Neuron(kind="cuba", threshold=0.7), name=HIDDEN),
        ir.Dense(weight=rng.normal(size=(10, 12)), bias=rng.normal(size=10),
                 neuron=ir.readout_neuron(False), name=READOUT)])


def with_h5(edit: Callable[[h5py.File], None], foreign: bool = False) -> Callable[[Workspace], Sequence[str]]:
    """A plant that writes the base graph with this project's writer, then edits it with h5py
    (``foreign``: without this project's metadata, as another framework's file)."""
    def plant(ws: Workspace) -> Sequence[str]:
        from hardware.formats.nir import write_nir

        path = write_nir(_base_net(), nir_path(ws))
        with h5py.File(path, "r+") as f:
            if foreign:
                del f["node/metadata"]
            edit(f)
        return (f"import.nir={path}",)
    return plant


def poison(node: str, param: str, value: float, where: str = "last"):
    """One value (``where='last'``) or all values of a node's parameter set to ``value``."""
    def edit(f: h5py.File) -> None:
        key = f"node/nodes/{node}/{param}"
        data = np.array(f[key][()], dtype=np.float64)
        if where == "all":
            data[...] = value
        else:
            data.reshape(-1)[-1] = value
        del f[key]
        f.create_dataset(key, data=data)
    return edit


def put(key: str, value: Any, **kw):
    def edit(f: h5py.File) -> None:
        if key in f:
            del f[key]
        if value is not None:
            f.create_dataset(key, data=value, **kw)
    return edit


def _case(id_: str, plant, needles=(), **kw) -> Case:
    return Case(id=f"nir-{id_}", owner=kw.pop("owner", "B"), stage="import", plant=plant,
                base="fresh", needles=("model.nir",) + tuple(needles), timeout=120, **kw)


#: (node, parameter, value, where, what the error says it holds)
NON_FINITE = [
    (HIDDEN, "weight", np.nan, "last", "NaN"), (HIDDEN, "weight", np.inf, "last", "inf"),
    (READOUT, "weight", -np.inf, "last", "inf"), (HIDDEN, "bias", np.inf, "last", "inf"),
    (READOUT, "bias", np.nan, "all", "NaN"),
    (f"{HIDDEN}.neuron", "v_threshold", np.nan, "all", "NaN"),
    (f"{HIDDEN}.neuron", "v_threshold", -np.inf, "all", "inf"),
    (f"{READOUT}.neuron", "v_threshold", np.inf, "last", "inf"),
    (f"{HIDDEN}.neuron", "tau_syn", np.inf, "all", "inf"),
    (f"{HIDDEN}.neuron", "tau_mem", np.nan, "last", "NaN"),
    (f"{HIDDEN}.neuron", "r", np.inf, "all", "inf"),
    (f"{HIDDEN}.neuron", "w_in", np.inf, "last", "inf"),
    (f"{READOUT}.neuron", "v_leak", np.nan, "all", "NaN"),
    (f"{READOUT}.neuron", "v_reset", np.inf, "last", "inf"),
]


def non_finite_cases() -> list[Case]:
    cases = []
    for foreign in (False, True):
        for node, param, value, where, what in NON_FINITE:
            tag = "foreign-" if foreign else ""
            cases.append(_case(f"{tag}{node}-{param}-{value}-{where}",
                               with_h5(poison(node, param, value, where), foreign),
                               needles=(f"node '{node}'", f"{param} holds {what}")))
    return cases


def version_cases() -> list[Case]:
    meta = "node/metadata/format_version"
    ours = [("format-version-2", 2), ("format-version-99", 99), ("format-version-0", 0),
            ("format-version-1.5", 1.5), ("format-version-string", "1"),
            ("format-version-missing", None), ("format-version-array", np.array([1, 1]))]
    cases = [_case(id_, with_h5(put(meta, value)), needles=("format_version",)) for id_, value in ours]
    string = h5py.string_dtype()
    for id_, value in [("nir-version-2", "2.0.0"), ("nir-version-99.1", "99.1"),
                       ("nir-version-words", "latest"), ("nir-version-empty", "")]:
        cases.append(_case(id_, with_h5(put("version", value, dtype=string)), needles=("NIR version",)))
    cases.append(_case("nir-version-number", with_h5(put("version", 2.0)), needles=("NIR version",)))
    cases.append(_case("nir-version-missing", with_h5(put("version", None)), needles=("not a NIR file",)))
    return cases


def time_step_cases() -> list[Case]:
    return [_case(f"dt-{name}", with_h5(put("node/metadata/dt", value)), needles=("dt",))
            for name, value in [("nan", np.nan), ("inf", np.inf), ("zero", 0.0), ("negative", -1e-4)]]


#: the cases of the default run (the rest run in the exhaustive run, -m slow)
DEFAULT = {
    f"nir-{HIDDEN}-weight-nan-last", f"nir-{HIDDEN}-bias-inf-last",
    f"nir-{HIDDEN}.neuron-v_threshold-nan-all", f"nir-{READOUT}.neuron-v_threshold-inf-last",
    f"nir-{HIDDEN}.neuron-r-inf-all", f"nir-foreign-{READOUT}-weight--inf-last",
    f"nir-foreign-{HIDDEN}.neuron-tau_syn-inf-all",
    "nir-format-version-2", "nir-format-version-1.5", "nir-nir-version-2", "nir-nir-version-words",
    "nir-dt-nan",
}


def nir_cases() -> list[Case]:
    cases = non_finite_cases() + version_cases() + time_step_cases()
    return default_run(cases, DEFAULT)
