"""Progress bars: the one place this project makes them (tqdm), made so that Lava may be
imported before or after any bar.

tqdm guards its output with a multiprocessing lock, made on the first bar from the default
context, which fixes the process's start method; Lava's runtime calls
``multiprocessing.set_start_method('fork')`` (without ``force``) when it is first imported,
which raises once the method is fixed. The lock here is made from the fork context by name
(the lock tqdm itself would make on Linux) before any bar exists, so no bar fixes the start
method. Import ``tqdm`` and ``logging_redirect_tqdm`` from here, never from tqdm.
"""
from __future__ import annotations

import multiprocessing

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from tqdm.std import TqdmDefaultWriteLock

if not hasattr(TqdmDefaultWriteLock, "mp_lock"):  # no bar yet: tqdm would make it from the default context
    TqdmDefaultWriteLock.mp_lock = multiprocessing.get_context("fork").RLock()

__all__ = ["tqdm", "logging_redirect_tqdm"]
