import os

# Lava and torch each start thread pools; on 2 cores more threads only slow tests.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
