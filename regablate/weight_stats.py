"""Statistics of a model's weight matrices (parameters with ndim >= 2: Linear and conv weights;
never biases or norm parameters), over all of them as one vector w:

  sparsity = |{i : |w_i| < threshold}| / |w|     (threshold 1e-3)
  l1       = Σ_i |w_i|
  l2       = sqrt(Σ_i w_i²)                        (the Euclidean / Frobenius norm)
"""

from __future__ import annotations

import torch
from torch import nn


def named_weight_matrices(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, parameter) for each parameter with ndim >= 2 (e.g. for weight histograms)."""
    return [(name, p) for name, p in model.named_parameters() if p.ndim >= 2]


@torch.no_grad()
def weight_stats(model: nn.Module, threshold: float = 1e-3) -> dict[str, float]:
    """{"sparsity", "l1", "l2"} of the model's weight matrices (zeros if it has none)."""
    weights = [p.detach() for _, p in named_weight_matrices(model)]
    if not weights:
        return {"sparsity": 0.0, "l1": 0.0, "l2": 0.0}
    total = sum(w.numel() for w in weights)
    small = sum((w.abs() < threshold).sum(dtype=torch.float64) for w in weights)
    l1 = sum(w.abs().sum(dtype=torch.float64) for w in weights)
    sq = sum(w.double().pow(2).sum() for w in weights)
    small, l1, l2 = torch.stack([small, l1, sq.sqrt()]).tolist()  # one device sync
    return {"sparsity": small / total, "l1": l1, "l2": l2}
