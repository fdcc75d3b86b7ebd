"""Evaluation determinism self-check: in eval mode a model is a fixed function.

Two eval-mode passes over the same batch must give bit-identical outputs, and must leave every
buffer (BatchNorm running statistics, its batch counter) untouched. Either failure means a module
is still behaving as in training: one whose `train()` ignores the mode, one that calls
`F.dropout(..., training=True)` or samples noise regardless of `self.training`, or a BatchNorm
updating its running statistics.
"""

from __future__ import annotations

import torch
from torch import nn

from regablate.data import Data


class EvalNondeterminismError(RuntimeError):
    """Evaluation is not a deterministic function of the inputs (a module stuck in training)."""


def _names(modules: list[tuple[str, nn.Module]]) -> str:
    return ", ".join(f"{name or '<model>'} ({type(m).__name__})" for name, m in modules)


def _tensors(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x.detach().clone()]
    if isinstance(x, (tuple, list)):
        return [t for item in x for t in _tensors(item)]
    if isinstance(x, dict):
        return [t for item in x.values() for t in _tensors(item)]
    return []


def _equal(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Bit for bit, NaN equal to NaN (a model whose output is NaN is not nondeterministic for it:
    its run diverges)."""
    return torch.equal(x, y) or (x.shape == y.shape and x.is_floating_point() and y.is_floating_point()
                                 and torch.allclose(x, y, rtol=0.0, atol=0.0, equal_nan=True))


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))


def _culprits(model: nn.Module, inputs: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """Innermost modules whose output differs between two eval passes although their inputs
    were identical (found with forward hooks; the model is in eval mode)."""
    calls: dict[str, list] = {}
    hooks = [m.register_forward_hook(
        lambda m, args, out, name=name: calls.setdefault(name, []).append((_tensors(args), _tensors(out))))
        for name, m in model.named_modules()]
    try:
        model(inputs)
        first = {name: list(c) for name, c in calls.items()}
        calls.clear()
        model(inputs)
    finally:
        for h in hooks:
            h.remove()
    bad = {name for name, c in calls.items() if name in first
           for (i1, o1), (i2, o2) in zip(first[name], c) if _same(i1, i2) and not _same(o1, o2)}
    modules = dict(model.named_modules())
    return [(n, modules[n]) for n in sorted(bad, key=list(modules).index)
            if not any(o != n and o.startswith(f"{n}.") or (n == "" and o) for o in bad)]


@torch.no_grad()  # an evaluation: no autograd graph (two passes of a graph cost ~2x)
def check_eval_determinism(model: nn.Module, data: Data, batch_size: int = 64) -> None:
    """Run two eval-mode passes over the first `batch_size` validation inputs; raise
    EvalNondeterminismError if the outputs differ or any buffer changed. Every module's training
    flag and every buffer are restored afterwards.

    64 inputs are plenty: a dropout left in training mode draws thousands of mask elements per
    pass (two passes agree with probability ~0), a per-sample drop (DropPath at p = 0.01 in 9
    blocks) agrees over 64 inputs with probability 0.98^576 < 1e-5, and a BatchNorm updating
    its statistics changes its buffers with any batch of two or more. A larger batch only makes
    the check as slow as a real evaluation (it runs before training and again at the end)."""
    modes = {m: m.training for m in model.modules()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    inputs = data.prepare(data.val.x[:batch_size])
    try:
        model.eval()
        stuck = [(name, m) for name, m in model.named_modules() if m.training]
        same = _same(_tensors(model(inputs)), _tensors(model(inputs)))
        changed = [name for name, b in model.named_buffers() if not _equal(b, buffers[name])]
        culprits = [] if same or stuck else _culprits(model, inputs)
    finally:
        for m, mode in modes.items():
            m.training = mode
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    if same and not changed:
        return
    what = "two eval passes over the same batch differ" if not same else \
        "an eval pass changed the model's buffers (" + ", ".join(changed) + ")"
    if stuck:
        raise EvalNondeterminismError(
            f"evaluation is not deterministic: {what}; still in training mode after "
            f"model.eval(): {_names(stuck)}")
    where = f": {_names(culprits)} gives different outputs for the same inputs" if culprits else ""
    raise EvalNondeterminismError(
        f"evaluation is not deterministic: {what}, although every module reports eval mode; a "
        f"module ignores self.training (e.g. F.dropout(..., training=True)){where}")
