"""Small user models for tests/test_custom_model.py: with and without regablate.nn blocks."""

from __future__ import annotations

import torch
from torch import nn

import regablate.nn as rnn


class BlockMLP(nn.Module):
    """An MLP for tabular data that places the blocks: Linear → Norm → ReLU → Dropout."""

    def __init__(self, in_shape: tuple[int, ...], out_dim: int, width: int = 32):
        super().__init__()
        (d,) = in_shape
        self.net = nn.Sequential(nn.Linear(d, width), rnn.Norm(width, dims=1), nn.ReLU(), rnn.Dropout(),
                                 nn.Linear(width, width), nn.ReLU(), rnn.Dropout(),
                                 nn.Linear(width, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PlainMLP(nn.Module):
    """An MLP with no regablate.nn block (torch layers only)."""

    def __init__(self, in_shape: tuple[int, ...], out_dim: int, width: int = 32):
        super().__init__()
        self.in_shape, self.width = in_shape, width
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_shape[0], width), nn.ReLU(),
                                 nn.Linear(width, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BlockConvNet(nn.Module):
    """A small residual conv net for any (C, H, W): every spatial block, adaptive pooling."""

    def __init__(self, in_shape: tuple[int, ...], out_dim: int, width: int = 8):
        super().__init__()
        c = in_shape[0]
        self.stem = nn.Sequential(nn.Conv2d(c, width, 3, padding=1, bias=False), rnn.Norm(width),
                                  nn.ReLU(), rnn.Dropout2d())
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), rnn.Norm(width),
                          rnn.DropBlock2d(), rnn.DropPath()) for _ in range(2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), rnn.Dropout(),
                                  nn.Linear(width, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for branch in self.branches:
            x = torch.relu(x + branch(x))
        return self.head(x)


def make_plain(in_shape: tuple[int, ...], out_dim: int, width: int = 32) -> nn.Module:
    """A factory function works as a target too."""
    return PlainMLP(in_shape, out_dim, width)


class Broken(nn.Module):
    def __init__(self, in_shape: tuple[int, ...], out_dim: int):
        super().__init__()
        raise RuntimeError("no such layer")


class FixedWidth(nn.Module):
    """Ignores `in_shape`: built for 7 input features whatever the data has."""

    def __init__(self, in_shape: tuple[int, ...], out_dim: int):
        super().__init__()
        self.net = nn.Linear(7, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SqueezedRegressor(nn.Module):
    """Returns (B,) where the targets are (B, 1): MSE would broadcast to a B×B loss."""

    def __init__(self, in_shape: tuple[int, ...], out_dim: int):
        super().__init__()
        self.net = nn.Linear(in_shape[0], out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class TupleOut(nn.Module):
    """Returns (logits, None), as some models return (logits, aux)."""

    def __init__(self, in_shape: tuple[int, ...], out_dim: int):
        super().__init__()
        self.net = nn.Linear(in_shape[0], out_dim + 3)

    def forward(self, x: torch.Tensor):
        return self.net(x), None


class NoParameters(nn.Module):
    """Nothing to train: a fixed function of the inputs."""

    def __init__(self, in_shape: tuple[int, ...], out_dim: int):
        super().__init__()
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, : self.out_dim]


class NaNOut(nn.Module):
    """A model whose output is NaN from the start (its run diverges)."""

    def __init__(self, in_shape: tuple[int, ...], out_dim: int):
        super().__init__()
        self.net = nn.Linear(in_shape[0], out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * float("nan")


class NaNLater(nn.Module):
    """Trains, then gives NaN in training from its 13th training forward on (epoch 3 of 5
    batches): a run that diverges after finite epochs, its weights finite."""

    def __init__(self, in_shape: tuple[int, ...], out_dim: int):
        super().__init__()
        self.net = nn.Linear(in_shape[0], out_dim)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += self.training
        out = self.net(x)
        return out * float("nan") if self.training and self.calls > 12 else out
