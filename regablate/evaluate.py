"""Evaluation: eval mode, no grad, over a full split in large chunks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from regablate.data import Data, Split


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when `trainer.amp` is on; a no-op context otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, split: Split, batch_size: int = 4096,
             amp: bool = False, calibration_bins: int = 0) -> dict:
    """{"loss", "acc"} (mean cross-entropy, accuracy) or {"loss", "mse"} on the whole split.

    Losses are the plain objective (no label smoothing, no penalties). Sums stay on the device
    and are read once at the end. With `calibration_bins` (classification) the result also has
    "ece", "nll" and "reliability" (per-bin confidence, accuracy and count).
    """
    keep = calibration_bins > 0 and data.task == "classification"
    logits = []
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=split.y.device)
    hit_sum = torch.zeros((), device=split.y.device)
    for i in range(0, len(split), batch_size):
        with autocast(split.y.device, amp):
            out = model(data.prepare(split.x[i : i + batch_size])).float()
        y = split.y[i : i + batch_size]
        if keep:
            logits.append(out)
        if data.task == "classification":
            loss_sum += F.cross_entropy(out, y, reduction="sum")
            hit_sum += (out.argmax(1) == y).sum()
        else:
            loss_sum += F.mse_loss(out, y, reduction="sum") / y[0].numel()
    model.train(was_training)
    n = len(split)
    loss = loss_sum.item() / n
    if data.task == "regression":
        return {"loss": loss, "mse": loss}
    result = {"loss": loss, "acc": hit_sum.item() / n}
    if keep:
        from regablate.calibration import calibration, reliability

        out = torch.cat(logits)
        result.update(calibration(out, split.y, calibration_bins))
        result["reliability"] = reliability(out.softmax(1), split.y, calibration_bins)
    return result


def gap(train: dict, val: dict, metric: str) -> float:
    """Overfitting gap of the primary metric, positive = overfit."""
    if metric == "acc":
        return train["acc"] - val["acc"]
    return val[metric] - train[metric]
