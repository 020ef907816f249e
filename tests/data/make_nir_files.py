"""Writes the NIR files in this folder (run from the repository root):

    .venv/bin/python tests/data/make_nir_files.py

``snntorch_digits.nir``: a network built and trained in snnTorch 1.0.0 (8×8 digits, Flatten,
Linear 64→32 without bias, ``Synaptic(α = 0.5, β = 1)``, Linear 32→10, ``Synaptic(α = 0,
β = 1 − 256/4096)``, reset to zero, 10 epochs of BPTT at T = 8, seed 0; about 95 % on the
digits test split), written by snnTorch's own ``export_to_nir`` and ``nir.write``. The tests
read it as a file another framework made (tests/test_nir.py, tests/test_nir_cli.py), so the
reader stays checked against what snnTorch 1.0.0 writes even if a later snnTorch writes
differently.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nir
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root: bench/ is not an installed package

from bench.nir_agreement import digits, export_snntorch, snntorch_digits_net, train_snntorch  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    x_train, y_train, _, _ = digits()
    net = snntorch_digits_net(hidden=32, seed=0)
    train_snntorch(net, x_train, y_train, steps=8, epochs=10, seed=0)
    nir.write(HERE / "snntorch_digits.nir", export_snntorch(net, (1, 8, 8)))


if __name__ == "__main__":
    main()
