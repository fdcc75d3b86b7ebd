"""MC dropout (Gal & Ghahramani 2016): predictive spread from stochastic forward passes.

T passes with only the dropout-family modules in training mode; everything else (BatchNorm
above all) stays in eval mode. Calling `model.train()` for this is the classic mistake: BatchNorm
would then normalise with batch statistics and overwrite its running estimates.

For T passes with outputs f_t(x):
  classification  p_t = softmax(f_t(x)); prediction p̄ = (1/T) Σ_t p_t; accuracy of argmax p̄;
                  spread σ(x) = (1/C) Σ_c sqrt((1/T) Σ_t (p_t,c − p̄_c)²), the population std over
                  the T samples of each class probability, averaged over the C classes.
  regression      prediction ȳ = (1/T) Σ_t f_t(x); MSE of ȳ; spread σ(x) = std over the T samples
                  of each output (population std), averaged over the output dimensions.
`val_mean_std` / `ood_mean_std` are σ(x) averaged over the inputs of val / the OOD set.
The std is accumulated with Welford's update, so identical passes give exactly 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from regablate.data import Data
from regablate.metrics.chunks import chunk_size
from regablate.regularisers.dropout import DropConnectLinear


def is_dropout(module: nn.Module) -> bool:
    """A dropout-family module: torch's Dropout/Dropout1d/2d/3d/AlphaDropout (regablate.nn's
    Dropout and Dropout2d among them), DropConnectLinear, or any module whose class sets
    `dropout_family = True` (regablate.nn's DropBlock2d, DropPath, LockedDropout, WeightDrop)."""
    return (isinstance(module, (nn.modules.dropout._DropoutNd, DropConnectLinear))
            or getattr(type(module), "dropout_family", False) is True)


def dropout_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of each dropout-family module, in registration order."""
    return [(name, m) for name, m in model.named_modules() if is_dropout(m)]


def drop_rate(module: nn.Module) -> float | None:
    """The module's drop rate (`p`, `drop_prob` or `drop_rate`), or None if it has none."""
    for attr in ("p", "drop_prob", "drop_rate"):
        value = getattr(module, attr, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


class _Welford:
    """Running mean and population variance over samples, elementwise."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, x: torch.Tensor) -> None:
        self.n += 1
        if self.mean is None:
            self.mean, self.m2 = x.clone(), torch.zeros_like(x)
            return
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    @property
    def std(self) -> torch.Tensor:
        return (self.m2 / self.n).clamp_min(0).sqrt()


def _passes(model: nn.Module, data: Data, x: torch.Tensor, samples: int, batch_size: int,
            classification: bool, y: torch.Tensor | None) -> tuple[float, float | None]:
    """(mean spread over inputs, accuracy or MSE of the mean prediction if `y` is given). Inputs
    go in chunks of `chunk_size` (cache-sized for images on the CPU, as evaluation)."""
    batch_size = chunk_size(x, batch_size)
    spread = torch.zeros((), dtype=torch.float64, device=x.device)
    score = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, len(x), batch_size):
        inputs = data.prepare(x[i : i + batch_size])
        acc = _Welford()
        for _ in range(samples):
            out = model(inputs).float()
            acc.add(F.softmax(out, dim=1) if classification else out)
        spread += acc.std.reshape(len(inputs), -1).mean(1).sum(dtype=torch.float64)
        if y is not None:
            target = y[i : i + batch_size]
            if classification:
                score += (acc.mean.argmax(1) == target).sum()
            else:
                score += F.mse_loss(acc.mean, target, reduction="sum").double() / target[0].numel()
    n = len(x)
    return spread.item() / n, (score.item() / n if y is not None else None)


@torch.no_grad()
def mc_dropout(model: nn.Module, data: Data, samples: int, batch_size: int = 4096) -> dict:
    """MC-dropout summary: {samples, val_acc | val_mse, val_mean_std, ood_mean_std}.

    `ood_mean_std` is None when the data has no OOD set. Every module's training flag is
    restored afterwards (also on error).
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    modes = {m: m.training for m in model.modules()}
    classification = data.task == "classification"
    try:
        model.eval()
        for _, m in dropout_modules(model):
            m.train()
        val_std, val_score = _passes(model, data, data.val.x, samples, batch_size, classification,
                                     data.val.y)
        ood_std = None
        if data.ood is not None and len(data.ood):
            ood_std, _ = _passes(model, data, data.ood, samples, batch_size, classification, None)
    finally:
        for m, mode in modes.items():
            m.training = mode
    return {"samples": samples, f"val_{data.metric}": val_score,
            "val_mean_std": val_std, "ood_mean_std": ood_std}
