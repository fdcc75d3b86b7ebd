"""How many members fit in one stacked chunk: a memory estimate per member against free memory.

Per member, in float32 words: θ and its gradient, two optimiser moments, two snapshots (best
epoch, stopping point) and a few θ-sized temporaries of the update: ~10·P; the three splits and
the per-epoch permuted copy of the training inputs; training activations (about 6 tensors of
batch × a layer's output per layer, forward and backward) and one evaluation chunk (2 per layer).
"""

from __future__ import annotations

import torch

from regablate.data.memory import available_memory
from regablate.vectorized.grouping import Member

FLOAT = 4


def activations_per_sample(m: Member) -> int:
    """Elements of every layer's output for one sample: an MLP's widths; for a conv model, by
    one forward of one sample (on the meta device: nothing is computed)."""
    model = m.x.model
    if not m.conv:
        return sum(p.shape[0] for p in model.parameters() if p.ndim == 2)
    import copy

    total = 0

    def count(_module, _inputs, out) -> None:
        nonlocal total
        total += out.numel() if isinstance(out, torch.Tensor) else 0

    meta = copy.deepcopy(model).to("meta").eval()
    hooks = [mod.register_forward_hook(count) for mod in meta.modules() if not mod._modules]
    with torch.no_grad():
        meta(torch.empty(1, *m.x.data.in_shape, device="meta"))
    for h in hooks:
        h.remove()
    return total


def bytes_per_member(m: Member) -> int:
    d, t = m.x.data, m.s.trainer
    n_params = sum(p.numel() for p in m.x.model.parameters())
    widths = activations_per_sample(m)
    splits = sum(sp.x.numel() + sp.y.numel() for sp in (d.train, d.val, d.test))
    eval_rows = min(t.eval_batch_size, max(len(d.train), len(d.val), len(d.test)))
    words = (10 * n_params + splits + d.train.x.numel()
             + 6 * t.batch_size * widths + 2 * eval_rows * widths)
    return FLOAT * words


def free_bytes(device: torch.device) -> int:
    """Free memory on the device: CUDA's free memory, or the host's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return available_memory()


def default_max_members(m: Member, fraction: float) -> int:
    """Members of `m`'s shape that fit in `fraction` of the free memory (at least 1)."""
    return max(1, int(fraction * free_bytes(m.x.device) // bytes_per_member(m)))
