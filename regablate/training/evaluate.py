"""Evaluation: eval mode, no grad, over a full split in chunks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from regablate.data import Data, Split
from regablate.metrics.chunks import chunk_size

AMP_DEVICES = ("cuda",)  # where trainer.amp autocasts (torch's CPU autocast takes bf16 too: tests add "cpu")


def amp_on(device: torch.device, amp: bool) -> bool:
    """Whether `trainer.amp` autocasts on this device."""
    return amp and device.type in AMP_DEVICES


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when `trainer.amp` is on; a no-op context otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp_on(device, enabled))


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, split: Split, batch_size: int = 4096,
             amp: bool = False, calibration_bins: int = 0, progress=None) -> dict:
    """{"loss", "acc"} (mean cross-entropy, accuracy) or {"loss", "mse"} on the whole split.

    Losses are the plain objective (no label smoothing, no penalties). Sums stay on the device
    and are read once at the end. With `calibration_bins` (classification) the result also has
    "ece", "nll" and "reliability" (per-bin confidence, accuracy and count). Chunks hold at most
    `batch_size` inputs (see `chunk_size`). `progress`: a task of `regablate.training.progress` (anything
    with `advance(n)`), advanced by the inputs of each chunk.

    No grad rather than inference mode: evaluation runs between training epochs, and a module
    that caches a tensor in its forward would otherwise keep an inference tensor that training
    cannot use. Speed is the same: over the same 1,750 CIFAR images in chunks of 256, one thread,
    this takes 7.37 s and the plain inference_mode loop of benchmarks/bench_eval.py 7.37 s.
    """
    classification = data.task == "classification"
    keep = calibration_bins > 0 and classification
    logits = []
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=split.y.device)
    hit_sum = torch.zeros((), device=split.y.device)
    step = chunk_size(split.x, batch_size)
    try:
        for i in range(0, len(split), step):
            with autocast(split.y.device, amp):
                out = model(data.prepare(split.x[i : i + step])).float()
            y = split.y[i : i + step]
            if keep:
                logits.append(out)
            if classification:
                loss_sum += F.cross_entropy(out, y, reduction="sum")
                hit_sum += (out.argmax(1) == y).sum()
            else:
                loss_sum += F.mse_loss(out, y, reduction="sum") / y[0].numel()
            if progress is not None:
                progress.advance(len(y))
    finally:
        model.train(was_training)
    n = len(split)
    loss = loss_sum.item() / n
    if not classification:
        return {"loss": loss, "mse": loss}
    result = {"loss": loss, "acc": hit_sum.item() / n}
    if keep:
        from regablate.metrics.calibration import calibration, reliability

        out = torch.cat(logits)
        result.update(calibration(out, split.y, calibration_bins))
        result["reliability"] = reliability(out.softmax(1), split.y, calibration_bins)
    return result


def gap(train: dict, val: dict, metric: str) -> float:
    """Overfitting gap of the primary metric, positive = overfit."""
    if metric == "acc":
        return train["acc"] - val["acc"]
    return val[metric] - train[metric]
