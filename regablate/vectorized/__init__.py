"""Vectorised sweeps: K members of a sweep trained as one stacked model.

grouping.py      which jobs can stack, grouped by everything that fixes shapes and the loop;
                 `stack_model` builds a group's stacked model
stacked.py       the stacked MLP (member axis first: batched matmuls, per-member masks and norms)
functional.py    conv models (convnet, resnet): the template, its regulariser sites and grouped layers
stacked_conv.py  `StackedModule`: K conv members as one model (grouped convs, or vmap)
state.py         `StackState`: θ, BatchNorm statistics and step counts per member
optim.py         AdamW / Adam / SGD over stacked parameters with per-member hyper-parameters
budget.py        members per chunk from free memory
trainer.py       the loop: per-member batch order, the stacked step, regularisers, schedules
losses.py        per-member losses and their gradients by hand, evaluation, regulariser strengths
shared_data.py   the members' split tensors, one copy per distinct data set
member_run.py    each member's run session (training.session) and its generators
chunk_checkpoints.py  the chunk's best.pt and shared last.pt, written on a timer and read back
resume.py        trainer.resume=auto: the members of an interrupted chunk, stacked again from last.pt
remote.py        a chunk as one SLURM job (executor=slurm)

The Hydra launcher that uses them is `hydra_plugins/regablate_vectorized`.
"""
