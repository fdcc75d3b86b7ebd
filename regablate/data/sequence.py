"""`sine_sequence`: windows of the noisy sine mapped to the next value(s), regression.

The sine data set's function and noise: the series is v(x) = sin(x) + N(0, noise²) sampled at
steps of `dx`. A sample is a window starting at a random phase φ ~ U[0, 2π]: inputs
v(φ), v(φ+dx), …, v(φ+(length−1)·dx), shape (length, 1); targets the next `horizon` values
v(φ+length·dx), …, shape (horizon,). Train and val are noisy throughout; test windows have noisy
inputs and *clean* targets sin(·) (so test MSE is the distance to the true next values, with the
noise-free optimum limited only by the noise in the inputs). OOD: test inputs scaled ×5.
Generated deterministically from `data_seed` on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from regablate.config.schema import nonneg, positive
from regablate.data.base import Data, Split


@dataclass
class SineSequenceSettings:
    task: ClassVar[str] = "regression"
    name: Literal["sine_sequence"] = "sine_sequence"
    n_train: int = positive(128)  # training windows
    n_val: int = positive(128)  # validation windows
    n_test: int = positive(1000)  # test windows (clean targets)
    length: int = positive(20)  # input steps per window
    horizon: int = positive(1)  # next values to predict
    dx: float = positive(0.3)  # step between consecutive values (radians)
    noise: float = nonneg(0.3)  # standard deviation of the Gaussian noise


def make_sine_sequence(s: SineSequenceSettings, data_seed: int) -> Data:
    g = torch.Generator().manual_seed(data_seed)
    steps = torch.arange(s.length + s.horizon) * s.dx

    def windows(n: int, clean_targets: bool = False) -> Split:
        clean = torch.sin(torch.rand(n, 1, generator=g) * 2 * math.pi + steps)  # (n, length+horizon)
        noisy = clean + s.noise * torch.randn(clean.shape, generator=g)
        y = (clean if clean_targets else noisy)[:, s.length:]
        return Split(noisy[:, : s.length].unsqueeze(-1), y)

    train, val, test = windows(s.n_train), windows(s.n_val), windows(s.n_test, clean_targets=True)
    return Data("regression", train, val, test, in_shape=(s.length, 1), out_dim=s.horizon,
                ood=5 * test.x)
