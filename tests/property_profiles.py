"""Hypothesis profiles for the property tests (loaded by tests/conftest.py).

``default`` (every ``make test`` and CI run): derandomized, so each machine and each run draws the
same examples, and no example database is written into the tree: a red run is a defect, not luck.
``explore`` draws new random examples, ``EXPLORE_FACTOR`` times as many per test::

    HYPOTHESIS_PROFILE=explore .venv/bin/python -m pytest -q -m "not lava" tests/

A case ``explore`` finds is pinned with ``@example`` in the test, so the default run keeps it.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
EXPLORE_FACTOR = 10

settings.register_profile("default", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])


def examples(n: int) -> int:
    """A test's ``max_examples``: ``n`` in the default run, more when exploring."""
    return n * EXPLORE_FACTOR if PROFILE == "explore" else n


def load() -> None:
    if PROFILE not in ("default", "explore"):
        raise ValueError(f"HYPOTHESIS_PROFILE={PROFILE!r}: use 'default' or 'explore'")
    settings.load_profile(PROFILE)
