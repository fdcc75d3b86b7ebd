"""A plain hand-written PyTorch script: the baseline regablate is measured against.

Sparse-synthetic data (X ~ N(0, I_50), labels = argmax(X W), 10 informative features,
4 classes, 1400/600 train/val, 2000 test), MLP 50-128-64-4, AdamW lr 1e-3, batch 64, a fixed
number of epochs, train/val evaluated in eval mode every epoch, test at the end. It imports
nothing but torch, as a script written by hand would.

    python benchmarks/plain_mlp.py --seed 0 --epochs 60
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn


def make_data(seed: int, n=2000, n_val=600, n_test=2000, d=50, k=10, classes=4):
    g = torch.Generator().manual_seed(seed)
    w = torch.zeros(d, classes)
    w[:k] = torch.randn(k, classes, generator=g)
    x = torch.randn(n, d, generator=g)
    y = (x @ w).argmax(1)
    xt = torch.randn(n_test, d, generator=g)
    yt = (xt @ w).argmax(1)
    return (x[n_val:], y[n_val:]), (x[:n_val], y[:n_val]), (xt, yt)


@torch.no_grad()
def accuracy(model, x, y):
    model.eval()
    out = model(x)
    return F.cross_entropy(out, y).item(), (out.argmax(1) == y).float().mean().item()


def main(seed: int = 0, epochs: int = 60, batch_size: int = 64, lr: float = 1e-3) -> dict:
    (xtr, ytr), (xva, yva), (xte, yte) = make_data(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(50, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    order = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(ytr), generator=order)
        for i in range(0, len(ytr), batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        train_loss, train_acc = accuracy(model, xtr, ytr)
        val_loss, val_acc = accuracy(model, xva, yva)
    train_time = time.perf_counter() - t0
    _, test_acc = accuracy(model, xte, yte)
    return {"train_acc": train_acc, "val_acc": val_acc, "test_acc": test_acc, "val_loss": val_loss,
            "train_time_s": train_time}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=60)
    args = p.parse_args()
    print(json.dumps(main(args.seed, args.epochs)))
