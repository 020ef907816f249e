"""Generated bad inputs for the CLI (issue 8): each case plants one bad input in a fresh
workspace; ``tests/test_bad_inputs.py`` runs the stage it reaches and checks the refusal.

Modules: :mod:`.harness` (how a CLI call is run and observed), :mod:`.base` (the valid
inputs every case starts from, payloads), and one module of cases per kind of input.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence, Union

from .base import Workspace

Needle = Union[str, tuple]  # a substring, or a tuple of alternatives (any one suffices)


@dataclass(frozen=True)
class Case:
    """One bad input and what the refusal must look like.

    ``plant`` writes the bad input into the workspace and returns extra ``--set``
    overrides. ``base``: what the workspace starts from: ``fresh`` (the tiny config
    only), ``trained`` (a copy of a run directory trained, evaluated and exported by the
    CLI), ``net`` (a valid .net for digits in ``inputs/model.net``) or ``idx`` (a valid
    tiny MNIST-format dataset in ``inputs/mnist``). ``owner`` is the engineer whose
    code must refuse it (A1 checkpoints, A2 run artifacts, B .net files, C Lava,
    D config and datasets). ``needles`` must appear in the error line (case-insensitive).
    ``bomb``: a memory bomb, refused in under a second without allocating. ``payload``:
    would create ``ws.marker`` if it ran. ``may_be_valid``: a random mutation (bit flips)
    that may leave a valid file, which then reaches the Lava phase; refused or accepted,
    never a traceback, a hang or an OOM. ``slow``: in the exhaustive run only (``-m slow``).
    ``light``: refused while the config is read, so run from the light fork server.
    """

    id: str
    owner: str
    stage: str
    plant: Callable[[Workspace], Sequence[str]]
    base: str = "fresh"
    needles: tuple = ()
    bomb: bool = False
    payload: bool = False
    timeout: float = 120.0
    may_be_valid: bool = False
    slow: bool = False
    light: bool = False
    bomb_seconds: float = 1.0


def default_run(cases: list[Case], keep: set[str]) -> list[Case]:
    """Mark every case whose id is not in ``keep`` slow (exhaustive run only)."""
    unknown = keep - {c.id for c in cases}
    assert not unknown, f"unknown case ids {sorted(unknown)}"
    return [c if c.id in keep else replace(c, slow=True) for c in cases]


def text_config(text: str | bytes) -> Callable[[Workspace], Sequence[str]]:
    """A plant that replaces the config file's content."""
    def plant(ws: Workspace) -> Sequence[str]:
        data = text.encode() if isinstance(text, str) else text
        ws.config.write_bytes(data.replace(b"@RUN@", str(ws.run).encode())
                              .replace(b"@MARKER@", str(ws.marker).encode()))
        return ()
    return plant
