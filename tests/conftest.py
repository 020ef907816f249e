import os

# Lava and torch each start thread pools; on 2 cores more threads only slow tests.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch

from tests import property_profiles

torch.set_num_threads(int(os.environ.get("NQ_TEST_TORCH_THREADS", "1")))
property_profiles.load()  # derandomize=True in the default run (property_profiles.py)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def warm_stage_imports():
    """Import the stages (torch, Lava, and what they import lazily) once per module that forks
    CLI children, before the first fork, so that no child pays for them (``usefixtures``)."""
    from tests.bad_inputs.harness import warm_imports

    warm_imports()
