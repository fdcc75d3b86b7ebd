"""Per-member losses of a stacked chunk, by hand: the training loss and its gradient, evaluation
of every member at once, and weight statistics per member; the regularisers' strengths as
columns (one row per member), which scale the stacked gradients."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from regablate.training.evaluate import autocast
from regablate.vectorized.grouping import Member
from regablate.vectorized.shared_data import SharedData


def _column(values: list[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).view(-1, 1)


def _span(values: list[float]) -> tuple[int, int]:
    """(a, b): the rows from the first non-zero value to the last (0, 0 if none)."""
    rows = [k for k, v in enumerate(values) if v != 0]
    return (rows[0], rows[-1] + 1) if rows else (0, 0)


class Strengths:
    """Per-member regulariser strengths as columns; None where no member uses one."""

    def __init__(self, members: list[Member], device: torch.device):
        def strength(name: str, attr: str, absent: float) -> list[float]:
            return [getattr(m.s.stack[name].s, attr) if m.s.stack[name] is not None else absent
                    for m in members]

        def col(values: list[float], absent: float) -> torch.Tensor | None:
            return None if all(v == absent for v in values) else _column(values, device)

        self.l1 = col(strength("l1", "lam", 0.0), 0.0)
        self.l2 = col(strength("l2", "lam", 0.0), 0.0)
        self.decay = strength("weight_decay", "lam", 0.0)  # decoupled, weight matrices only
        # the rows [a, b) from the first member with the penalty to the last (the others are 0)
        self.l1_rows, self.l2_rows, self.decay_rows = (_span(strength(name, "lam", 0.0))
                                                       for name in ("l1", "l2", "weight_decay"))
        eps = [m.s.stack.loss_spec().label_smoothing if m.x.data.task == "classification" else 0.0
               for m in members]
        self.smoothing = col(eps, 0.0)
        self.max_norm = col(strength("max_norm", "c", math.inf), math.inf)
        clip = strength("grad_clip", "max_norm", math.inf)
        self.clip = None if all(math.isinf(c) for c in clip) else torch.tensor(clip, device=device)
        self.decay_factor: torch.Tensor | None = None

    def set_lr(self, lr: list[float], device: torch.device) -> None:
        """w ← w(1 − lr_k λ_k): the factor in double, then float32 (as torch casts the scalar)."""
        if any(self.decay):
            self.decay_factor = torch.tensor([1 - a * d for a, d in zip(lr, self.decay)],
                                             dtype=torch.float64).to(torch.float32).view(-1, 1).to(device)


@torch.no_grad()
def loss_and_grad(out: torch.Tensor, y: torch.Tensor, task: str, eps: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-member mean loss ℓ (K,) and ∂(Σ_k ℓ_k)/∂out, by hand (F.cross_entropy's and
    F.mse_loss's values; their gradients without autograd's graph). Cross-entropy with smoothing
    ε_k over C classes, lse = log Σ_c exp(o_c):

        ℓ_k = mean_b[lse − (1−ε_k)·o_y − ε_k·mean_c o],  ∂ℓ_k/∂o = (softmax(o) − (1−ε_k)·[c=y] − ε_k/C) / B

    With probability targets y (K, B, C) (mixup, cutmix), t = (1−ε_k)·y + ε_k/C:

        ℓ_k = mean_b[lse − Σ_c t_c·o_c],  ∂ℓ_k/∂o = (softmax(o) − t) / B

    or the mean squared error ℓ_k = mean (o − y)², ∂ℓ_k/∂o = 2(o − y) / (B·D)."""
    k, b = out.shape[:2]
    if task != "classification":
        diff = out - y
        return diff.square().reshape(k, -1).mean(1), diff.mul_(2 / diff[0].numel())
    top = out.amax(-1, keepdim=True)
    p = (out - top).exp_()
    total = p.sum(-1, keepdim=True)
    lse = total.log().add_(top).squeeze(-1)  # (K, B)
    if y.is_floating_point():
        t = y if eps is None else torch.lerp(y, torch.full_like(y, 1 / y.shape[-1]), eps.view(k, 1, 1))
        loss = (lse - torch.linalg.vecdot(t, out)).mean(1)
        return loss, p.div_(total).sub_(t).div_(b)
    target = y.unsqueeze(-1)
    picked = out.gather(-1, target).squeeze(-1)
    p.div_(total)  # softmax
    if eps is None:
        loss = (lse - picked).mean(1)
        p.scatter_add_(-1, target, torch.full_like(picked, -1.0).unsqueeze(-1))
    else:
        e = eps.view(k, 1)
        loss = (lse - (1 - e) * picked - e * out.mean(-1)).mean(1)
        p.scatter_add_(-1, target, (e - 1).expand(k, b).unsqueeze(-1)).sub_(e.unsqueeze(-1) / out.shape[-1])
    return loss, p.div_(b)


def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy −log softmax(out)_y = logsumexp(out) − out_y over the last dim, for
    evaluation (F.cross_entropy with reduction="none"; for a few classes its log_softmax is 3-4x
    slower). Training keeps F.cross_entropy: as an autograd Function this measured slower there."""
    m = out.amax(-1)
    lse = (out - m.unsqueeze(-1)).exp_().sum(-1).log_().add_(m)
    return lse.sub_(out.gather(-1, y.unsqueeze(-1)).squeeze(-1))


@torch.no_grad()
def evaluate(model, data: SharedData, sizes: list[int], task: str, chunk: int,
             amp: bool = False) -> list[list[dict[str, float]]]:
    """Per split, per member {"loss", "acc"} or {"loss", "mse"}, in eval mode: the plain objective
    (no smoothing, no penalty), as `regablate.training.evaluate.evaluate` (bf16 autocast on CUDA
    with `amp`, the loss in float32). `data.eval_x`, `data.eval_y` hold the splits one after
    another along dim 1 (`sizes` samples each), so they share passes."""
    k = len(data.index)
    n = data.eval_y.shape[1]
    losses, hits = [], []
    for i in range(0, n, chunk):
        xb, yb = data.eval_rows(i, i + chunk)
        with autocast(xb.device, amp):
            out = model.forward(xb, train=False).float()
        if task == "classification":
            losses.append(cross_entropy(out, yb))
            hits.append(out.argmax(-1) == yb)
        else:
            losses.append(F.mse_loss(out, yb, reduction="none").reshape(k, yb.shape[1], -1).mean(2))
    loss = torch.cat(losses, 1)
    hit = torch.cat(hits, 1) if hits else None
    sums, counts, start = [], [], 0
    for size in sizes:
        sums.append(loss[:, start : start + size].sum(1))
        if hit is not None:
            counts.append(hit[:, start : start + size].sum(1))
        start += size
    sums_l = torch.stack(sums).tolist()
    counts_l = torch.stack(counts).tolist() if counts else None
    out_l = []
    for j, size in enumerate(sizes):
        if task == "classification":
            out_l.append([{"loss": s / size, "acc": c / size} for s, c in zip(sums_l[j], counts_l[j])])
        else:
            out_l.append([{"loss": s / size, "mse": s / size} for s in sums_l[j]])
    return out_l


@torch.no_grad()
def stacked_weight_stats(w: torch.Tensor, threshold: float = 1e-3) -> dict[str, list[float]]:
    """`regablate.metrics.weight_stats.weight_stats` for every member at once: w is (K, P_w), all weight
    matrices of each member; sparsity = share of |w| < threshold, l1 = Σ|w|, l2 = √Σw²."""
    a = w.abs()
    small = (a < threshold).sum(1).double() / w.shape[1]
    l1 = a.sum(1, dtype=torch.float64)
    l2 = torch.linalg.vector_norm(w, dim=1, dtype=torch.float64)  # summed in double, as weight_stats
    return dict(zip(("sparsity", "l1", "l2"), torch.stack([small, l1, l2]).tolist()))
