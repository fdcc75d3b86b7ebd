"""Calibration of a classifier: expected calibration error, NLL and the reliability diagram.

With confidence c_i = max_k p_ik, prediction ŷ_i = argmax_k p_ik and M equal-width bins
B_m = ((m−1)/M, m/M] over [0, 1] (a confidence of exactly 0 goes to the first bin):
  acc(B_m)  = (1/|B_m|) Σ_{i∈B_m} 1[ŷ_i = y_i]
  conf(B_m) = (1/|B_m|) Σ_{i∈B_m} c_i
  ECE       = Σ_m (|B_m|/n) · |acc(B_m) − conf(B_m)|          (Guo et al. 2017, M = 15)
  NLL       = −(1/n) Σ_i log softmax(z_i)_{y_i}                (mean cross-entropy of the logits)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int):
    """Per-bin (count, sum of confidences, sum of hits) as float64 tensors of length n_bins."""
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"probs must be (n, classes) and labels (n,); got {tuple(probs.shape)} "
                         f"and {tuple(labels.shape)}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf, pred = probs.detach().double().max(1)
    # summed on the CPU: index_add_ on CUDA adds atomically in no fixed order, and an ECE that
    # moves in its last digit between two evaluations of the same weights breaks exact resume
    hits = (pred == labels).double().cpu()
    conf = conf.cpu()
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64, device=conf.device)
    idx = torch.bucketize(conf, edges[1:-1], right=False)  # edges[m-1] < c <= edges[m] -> m
    count = torch.zeros(n_bins, dtype=torch.float64, device=conf.device).index_add_(
        0, idx, torch.ones_like(conf))
    conf_sum = torch.zeros_like(count).index_add_(0, idx, conf)
    hit_sum = torch.zeros_like(count).index_add_(0, idx, hits)
    return count, conf_sum, hit_sum


def ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error of class probabilities `probs` (n, C) against `labels` (n,)."""
    count, conf_sum, hit_sum = _bins(probs, labels, n_bins)
    n = count.sum()
    if n == 0:
        return float("nan")
    return ((hit_sum - conf_sum).abs().sum() / n).item()  # Σ_m |B_m|/n · |acc − conf|


def nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of `labels` under softmax(`logits`)."""
    return F.cross_entropy(logits.detach().double(), labels).item()


def reliability(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict:
    """The reliability diagram as plain lists: bin `edges` (n_bins + 1), and per bin `count`,
    mean `confidence` and `accuracy` (null for an empty bin)."""
    count, conf_sum, hit_sum = _bins(probs, labels, n_bins)
    counts = [int(c) for c in count.tolist()]
    return {
        "edges": [round(m / n_bins, 6) for m in range(n_bins + 1)],
        "count": counts,
        "confidence": [s / c if c else None for s, c in zip(conf_sum.tolist(), counts)],
        "accuracy": [s / c if c else None for s, c in zip(hit_sum.tolist(), counts)],
    }


def calibration(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict:
    """{"ece", "nll"} of a classifier's `logits` (n, C) on `labels` (n,)."""
    return {"ece": ece(F.softmax(logits.detach().double(), dim=1), labels, n_bins),
            "nll": nll(logits, labels)}
