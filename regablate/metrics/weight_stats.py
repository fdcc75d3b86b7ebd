"""Statistics of a model's weight matrices (parameters with ndim >= 2: Linear and conv weights;
never biases or norm parameters), over all of them as one vector w:

  sparsity = |{i : |w_i| < threshold}| / |w|     (threshold 1e-3)
  l1       = Σ_i |w_i|
  l2       = sqrt(Σ_i w_i²)                        (the Euclidean / Frobenius norm)
"""

from __future__ import annotations

import torch
from torch import nn


def _kind(module: nn.Module) -> str:
    """The torch.nn class a layer is (DropConnectLinear -> linear)."""
    return next((c for c in type(module).__mro__ if c.__module__.startswith("torch.nn")),
                type(module)).__name__.lower()


def stable_names(model: nn.Module) -> dict[str, str]:
    """Module path -> a name that does not shift when parameter-free layers (dropout,
    activations) are inserted: a numbered child of a Sequential or ModuleList is named by its
    kind and its rank among siblings of that kind (`0` -> `linear1`, `3` -> `linear2`)."""
    stable = {"": ""}
    for path, module in model.named_modules():  # a parent comes before its children
        seen: dict[str, int] = {}
        for child_name, child in module.named_children():
            label = child_name
            if child_name.isdigit():
                kind = _kind(child)
                seen[kind] = seen.get(kind, 0) + 1
                label = f"{kind}{seen[kind]}"
            full = f"{path}.{child_name}" if path else child_name
            stable[full] = f"{stable[path]}.{label}" if stable[path] else label
    return stable


def named_weight_matrices(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(stable name, parameter) for each parameter with ndim >= 2, e.g. for weight histograms:
    `linear2.weight` whether or not dropout layers sit between the layers."""
    stable = stable_names(model)
    out = []
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            module, _, leaf = name.rpartition(".")
            out.append((f"{stable[module]}.{leaf}" if module else leaf, p))
    return out


@torch.no_grad()
def weight_stats(model: nn.Module, threshold: float = 1e-3) -> dict[str, float]:
    """{"sparsity", "l1", "l2"} of the model's weight matrices (zeros if it has none)."""
    weights = [p.detach() for p in model.parameters() if p.ndim >= 2]
    if not weights:
        return {"sparsity": 0.0, "l1": 0.0, "l2": 0.0}
    total = sum(w.numel() for w in weights)
    small = sum((w.abs() < threshold).sum(dtype=torch.float64) for w in weights)
    l1 = sum(w.abs().sum(dtype=torch.float64) for w in weights)
    sq = sum(w.double().pow(2).sum() for w in weights)
    small, l1, l2 = torch.stack([small, l1, sq.sqrt()]).tolist()  # one device sync
    return {"sparsity": small / total, "l1": l1, "l2": l2}
