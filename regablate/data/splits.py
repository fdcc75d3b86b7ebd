"""Splits drawn from labelled data: stratified subsets (each class its share) and
`dataset.n_train`, shared by the CIFAR-10, image-folder and table data sets."""

from __future__ import annotations

import torch

from regablate.errors import ConfigError


def stratified(labels: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """Sorted indices of `n` items, each class taking its share (largest remainder), drawn
    at random within the class."""
    classes, counts = labels.unique(return_counts=True)
    exact = counts.double() * n / len(labels)
    quota = exact.floor().long()
    rest = n - int(quota.sum())
    if rest:
        order = sorted(range(len(classes)), key=lambda i: (-(exact[i] - quota[i]).item(), i))
        for i in order[:rest]:
            quota[i] += 1
    picks = []
    for c, q in zip(classes, quota, strict=True):
        idx = (labels == c).nonzero().squeeze(1)
        picks.append(idx[torch.randperm(len(idx), generator=gen)[:q]])
    return torch.cat(picks).sort().values


def keep_n_train(train: torch.Tensor, labels: torch.Tensor, n_train: int | None, gen: torch.Generator,
                 left: str) -> torch.Tensor:
    """`dataset.n_train` of the training indices `train` (stratified by `labels`), all if null;
    `left` says what `train` is, for the error when there are fewer."""
    if n_train is None:
        return train
    if n_train > len(train):
        raise ConfigError("dataset.n_train", n_train, f"must be <= {len(train)} ({left}) or null")
    return train[stratified(labels[train], n_train, gen)]
