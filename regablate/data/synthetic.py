"""Synthetic data sets, generated deterministically from `data_seed` on the CPU.

- `sine`: y = sin(x) + N(0, noise²), x ~ U[0, 2π]; noisy train and val, test = the clean
  function on a dense grid (so test MSE measures distance to the truth).
- `sparse_synthetic`: X ~ N(0, I_d), labels = argmax(X W) with W ~ N(0, 1) on the first k rows
  and 0 elsewhere: only k of the d features carry signal. Optional label noise on train labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from regablate.config.schema import check, fraction, nonneg, positive
from regablate.data.base import Data, Split


@dataclass
class SineSettings:
    task: ClassVar[str] = "regression"
    name: Literal["sine"] = "sine"
    n_train: int = positive(80)  # noisy training points
    n_val: int = positive(80)  # noisy validation points
    n_test: int = positive(1000)  # clean grid points for the test split
    noise: float = nonneg(0.3)  # standard deviation of the Gaussian noise


def make_sine(s: SineSettings, data_seed: int) -> Data:
    g = torch.Generator().manual_seed(data_seed)

    def noisy(n: int) -> Split:
        x = torch.rand(n, 1, generator=g) * 2 * math.pi
        return Split(x, torch.sin(x) + s.noise * torch.randn(n, 1, generator=g))

    train, val = noisy(s.n_train), noisy(s.n_val)
    grid = torch.linspace(0, 2 * math.pi, s.n_test).unsqueeze(1)
    test = Split(grid, torch.sin(grid))
    ood = torch.rand(s.n_test, 1, generator=g) * 2 * math.pi * 5  # inputs scaled x5
    return Data("regression", train, val, test, in_shape=(1,), out_dim=1, ood=ood)


@dataclass
class SparseSyntheticSettings:
    task: ClassVar[str] = "classification"
    name: Literal["sparse_synthetic"] = "sparse_synthetic"
    n: int = positive(2000)  # samples split into train and val
    val_fraction: float = fraction(0.3)  # share of `n` held out for validation
    n_test: int = positive(2000)  # a separate test set from the same distribution
    d: int = positive(50)  # features
    k: int = positive(10)  # informative features (the first k)
    classes: int = check(lambda v: v >= 2, "must be >= 2", 4)
    label_noise: float = check(lambda v: 0 <= v <= 1, "must be in [0, 1]", 0.0)  # train only


def make_sparse_synthetic(s: SparseSyntheticSettings, data_seed: int) -> Data:
    from regablate.errors import ConfigError

    if s.k > s.d:
        raise ConfigError("dataset.k", s.k, f"must be <= dataset.d ({s.d})")
    n_val = round(s.n * s.val_fraction)
    if n_val < 1 or s.n - n_val < 1:
        raise ConfigError("dataset.n", s.n, "too small for dataset.val_fraction to leave both splits non-empty")
    g = torch.Generator().manual_seed(data_seed)
    w = torch.zeros(s.d, s.classes)
    w[: s.k] = torch.randn(s.k, s.classes, generator=g)

    def sample(n: int) -> Split:
        x = torch.randn(n, s.d, generator=g)
        return Split(x, (x @ w).argmax(1))

    pool, test = sample(s.n), sample(s.n_test)
    train, val = Split(pool.x[n_val:], pool.y[n_val:]), Split(pool.x[:n_val], pool.y[:n_val])
    if s.label_noise > 0:
        flip = torch.rand(len(train), generator=g) < s.label_noise
        noisy = torch.randint(0, s.classes, (len(train),), generator=g)
        train = Split(train.x, torch.where(flip, noisy, train.y))
    ood = 5 * torch.randn(s.n_test, s.d, generator=g)  # inputs scaled x5
    return Data("classification", train, val, test, in_shape=(s.d,), out_dim=s.classes, ood=ood)
