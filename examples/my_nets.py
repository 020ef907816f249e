"""A user's own networks, outside the pipeline's registry: the worked example of the README's
"Deploy your own model" (``--set model.factory=examples.my_nets:build``).

A factory is any function returning an ``nn.Module`` of the supported operations; its keyword
arguments come from ``model.kwargs``. The network is plain PyTorch: ReLU (each becomes an NQ
activation), max-pooling (replaced by average pooling), a residual addition, BatchNorm and
Dropout are all taken as they are.
"""
from __future__ import annotations

import torch
from torch import nn


class SmallNet(nn.Module):
    """conv-BN-ReLU, a residual block (two convs and an identity shortcut), max-pooling, then a two-layer classifier."""

    def __init__(self, in_channels: int = 1, width: int = 16, classes: int = 10, side: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout(0.1)
        self.fc1 = nn.Linear(width * (side // 2) ** 2, 64)
        self.fc2 = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))) + x)  # a residual block
        x = self.pool(x).flatten(1)
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


def build(width: int = 16, classes: int = 10, in_channels: int = 1, side: int = 8) -> nn.Module:
    """The factory ``model.factory`` names (``model.kwargs`` are its arguments)."""
    return SmallNet(in_channels, width, classes, side)
