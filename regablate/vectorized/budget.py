"""How many members fit in one stacked chunk: a memory estimate per member against free memory.

Per member, in float32 words: θ and its gradient, two optimiser moments, two snapshots (best
epoch, stopping point) and a few θ-sized temporaries of the update: ~10·P; the training step's
activations, counted as TRAIN_WORDS words per layer output per sample (measured on the CPU for a
stacked resnet20 at batch 128: 242 MiB per member at K = 4 and 353 MiB at K = 1, i.e. 0.67 and
0.98 words per layer output per sample, everything the step holds included); its rows of the
evaluation (`PER_MEMBER_EVAL_ROWS`, as `trainer` gives each member at large K), where under
no_grad a few layer outputs are alive at once, not all of them; and its epoch's permutation
(int64 per training row). Once per chunk, whatever its K: the rest of an evaluation pass of
EVAL_ROWS rows. Once per distinct data set (members of one data set share it, `SharedData`), in
its own dtype (uint8 images are a byte a value): the chunk's stacked copies of the training split
and of training and validation side by side (the splits as built are on the device already when
free memory is read: every member is built before its group is planned).
"""

from __future__ import annotations

import torch

from regablate.data.memory import available_memory
from regablate.vectorized.grouping import Member, data_key

FLOAT = 4
TRAIN_WORDS = 2  # words per layer output per sample in a training step (measured <= 1: twice that)
EVAL_LIVE = 3  # layer outputs alive at once in an evaluation forward (input, output, a temporary)
EVAL_ROWS = 8192  # evaluation rows over all members of a chunk (`trainer`: max(256, EVAL_ROWS // K) each)
PER_MEMBER_EVAL_ROWS = 256


def activation_sizes(m: Member) -> tuple[int, int]:
    """(sum, largest) of the elements of every layer's output for one sample: an MLP's widths;
    for a conv model, by one forward of one sample (on the meta device: nothing is computed)."""
    model = m.x.model
    if not m.conv:
        widths = [p.shape[0] for p in model.parameters() if p.ndim == 2]
        return sum(widths), max(widths)
    import copy

    sizes = []

    def count(_module, _inputs, out) -> None:
        if isinstance(out, torch.Tensor):
            sizes.append(out.numel())

    meta = copy.deepcopy(model).to("meta").eval()
    hooks = [mod.register_forward_hook(count) for mod in meta.modules() if not mod._modules]
    with torch.no_grad():
        meta(torch.empty(1, *m.x.data.in_shape, device="meta"))
    for h in hooks:
        h.remove()
    return sum(sizes), max(sizes)


def bytes_per_member(m: Member, sizes: tuple[int, int] | None = None) -> int:
    """`sizes`: `activation_sizes(m)`, when the caller has them."""
    t = m.s.trainer
    n_params = sum(p.numel() for p in m.x.model.parameters())
    total, largest = sizes or activation_sizes(m)
    eval_rows = min(t.eval_batch_size, PER_MEMBER_EVAL_ROWS)
    words = 10 * n_params + TRAIN_WORDS * t.batch_size * total + EVAL_LIVE * eval_rows * largest
    return FLOAT * words + 8 * len(m.x.data.train)


def bytes_per_data_set(m: Member) -> int:
    """What a chunk adds for `m`'s data set: its stacked copies of the training split and of
    training and validation side by side (`SharedData`; the splits as built are held already)."""
    def nbytes(*splits) -> int:
        return sum(t.numel() * t.element_size() for sp in splits for t in (sp.x, sp.y))

    d = m.x.data
    return nbytes(d.train) + nbytes(d.train, d.val)


def bytes_per_chunk(m: Member, sizes: tuple[int, int] | None = None) -> int:
    """What a chunk of `m`'s members needs once, whatever its K: an evaluation pass of up to
    EVAL_ROWS rows (beyond each member's own `PER_MEMBER_EVAL_ROWS`)."""
    _, largest = sizes or activation_sizes(m)
    return FLOAT * EVAL_LIVE * min(m.s.trainer.eval_batch_size, EVAL_ROWS) * largest


def free_bytes(device: torch.device) -> int:
    """Free memory on the device: CUDA's free memory, or the host's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return available_memory()


def default_max_members(members: list[Member], fraction: float) -> int:
    """Members of a group that fit in `fraction` of the free memory (at least 1): a chunk's own
    share and the group's distinct data sets (at most one a member) taken first."""
    m = members[0]
    sizes = activation_sizes(m)  # one traced forward for both
    budget = fraction * free_bytes(m.x.device) - bytes_per_chunk(m, sizes)
    per, data = bytes_per_member(m, sizes), bytes_per_data_set(m)
    u = len({data_key(x.s, x.x.device) for x in members})
    if budget - u * data >= u * per:  # chunks of u or more members: every data set, once
        return int((budget - u * data) // per)
    return max(1, int(budget // (per + data)))  # smaller chunks: at most a data set a member
