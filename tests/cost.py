"""What running a function costs: for tests that bound hostile inputs' time and memory."""
from __future__ import annotations

import time
import tracemalloc
from typing import Callable


def time_and_peak(fn: Callable[[], object]) -> tuple[float, int]:
    """(seconds, peak bytes allocated by Python) while ``fn`` runs."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        fn()
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return elapsed, peak
