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
