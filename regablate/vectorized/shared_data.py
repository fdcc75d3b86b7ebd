"""The data a stacked chunk's members train on, one copy per distinct data set."""

from __future__ import annotations

import torch

from regablate.data.base import unchanged
from regablate.data.normalize import Normalize
from regablate.vectorized.grouping import Member, data_key


class SharedData:
    """The members' splits, one copy per distinct data set: `train_x` (U, N, ...) etc., and
    `index` (K,), member k's data set u_k. `rows(t)` gives each member its data set's rows of a
    (U, B, ...) tensor as (K, B, ...) (a view when all members share one data set). Images are
    normalised by their own data set's statistics (each split its own training split's channel
    mean and std: members of other data seeds differ in them)."""

    def __init__(self, members: list[Member]):
        keys: dict[tuple, int] = {}
        firsts = []
        for m in members:
            key = data_key(m.s, m.x.device)
            if key not in keys:
                keys[key] = len(firsts)
                firsts.append(m.x.data)
            m.x.data = firsts[keys[key]]  # members keep one copy, not K
        self.index = torch.tensor([keys[data_key(m.s, m.x.device)] for m in members], device=members[0].x.device)
        self.k, self.u = len(members), len(firsts)
        self.sets = torch.arange(self.u, device=self.index.device)  # the data sets, in order
        self.prepare_one = firsts[0].prepare
        if self.u > 1 and self.prepare_one is not unchanged:
            if not all(isinstance(d.prepare, Normalize) for d in firsts):
                raise ValueError("members of several data sets stack only with unchanged or normalised inputs")
            device = members[0].x.device  # (U, 1, C, 1, 1): data set u's Normalize, as stored
            self.mean = torch.stack([d.prepare.mean for d in firsts]).to(device)
            self.inv_std = torch.stack([d.prepare.inv_std for d in firsts]).to(device)
        self.train_x = torch.stack([d.train.x for d in firsts])
        self.train_y = torch.stack([d.train.y for d in firsts])
        # train and val side by side: each epoch's evaluation is one pass over both
        self.eval_x = torch.stack([torch.cat([d.train.x, d.val.x]) for d in firsts])
        self.eval_y = torch.stack([torch.cat([d.train.y, d.val.y]) for d in firsts])
        self.sizes = [len(firsts[0].train), len(firsts[0].val)]

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        if self.u == 1:
            return t.expand(self.k, *t.shape[1:])
        return t.index_select(0, self.index)

    def rows_of(self, perm: torch.Tensor) -> torch.Tensor:
        """Member k's rows perm[k] of its data set as rows of the data sets laid end to end."""
        return perm + self.index.view(-1, 1) * self.train_x.shape[1]

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training rows (K, B) from `rows_of`: (K, B, ...) inputs and targets (one index_select
        each over the flattened splits: a third of advanced indexing's time)."""
        idx = rows.reshape(-1)
        x = self.train_x.flatten(0, 1).index_select(0, idx)
        y = self.train_y.flatten(0, 1).index_select(0, idx)
        return x.view(*rows.shape, *x.shape[1:]), y.view(*rows.shape, *y.shape[1:])

    def prepare(self, x: torch.Tensor, sets: torch.Tensor) -> torch.Tensor:
        """`data.prepare` on (n, B, ...) stored inputs, block i by its data set sets[i]'s
        (unchanged for features; images (x − mean_u) / std_u per channel, as `Normalize`)."""
        if self.prepare_one is unchanged:
            return x
        k, b = x.shape[:2]
        if self.u == 1:
            out = self.prepare_one(x.reshape(k * b, *x.shape[2:]))
        else:
            out = ((x.float() - self.mean[sets]) * self.inv_std[sets]).flatten(0, 1)
            if out.is_cuda:
                out = out.contiguous(memory_format=torch.channels_last)
        return out.reshape(k, b, *out.shape[1:])

    def eval_rows(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows [start, stop) of the evaluation splits, prepared, as (K, B, ...) inputs and
        targets: each data set prepared once, then spread to its members."""
        x = self.prepare(self.eval_x[:, start:stop], self.sets)
        return self.rows(x), self.rows(self.eval_y[:, start:stop])
