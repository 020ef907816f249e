"""A progress bar may come before Lava: Lava's runtime sets the multiprocessing start method on
import, which raises once a tqdm bar's lock has fixed it; :mod:`hardware.runtime.progress`
makes every bar of this project without fixing it. Each check runs in a fresh interpreter, as
the order of first imports is per process."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

BAR_THEN_LAVA = """
import numpy as np
from hardware.runtime.progress import tqdm
for _ in tqdm(range(3), disable=True):  # the process's first bar, as in training
    pass
from hardware.runtime.runner import run_lava
from hardware.simulator import simulate
from tests.test_lava_runner import random_net
net, x = random_net(0, "if_soft", conv=False, n_samples=2, T=4)
lava = run_lava(net, x, 4, backend="loihi2-sim", progress=True)
ref = simulate(net, x, 4).output_spikes.numpy().transpose(1, 0, 2)
assert ref.any(), "no output spike: the comparison would be vacuous"
assert np.array_equal(lava.output_spikes, ref)
print("bit-exact")
"""

PLAIN_TQDM_THEN_LAVA = """
from tqdm.auto import tqdm
for _ in tqdm(range(3), disable=True):
    pass
import hardware.runtime.runner
"""


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.lava
def test_lava_runs_after_a_progress_bar():
    proc = _python(BAR_THEN_LAVA)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bit-exact" in proc.stdout


@pytest.mark.lava
def test_a_plain_tqdm_bar_still_breaks_lava():
    """The trap the progress module avoids is real (if Lava stops setting the start method on
    import, this fails and hardware.runtime.progress can go)."""
    proc = _python(PLAIN_TQDM_THEN_LAVA)
    assert proc.returncode != 0 and "context has already been set" in proc.stderr


def test_no_module_makes_bars_but_the_progress_module():
    """tqdm is imported by hardware.runtime.progress alone, so every bar gets its lock."""
    offenders = []
    for folder in ("hardware", "models", "pipeline", "bench"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path.name != "progress.py" and re.search(r"^\s*(from|import) tqdm", path.read_text(), re.M):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
