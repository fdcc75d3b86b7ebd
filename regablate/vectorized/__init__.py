"""Vectorised sweeps: K members of a sweep trained as one stacked model.

stacked.py   the stacked MLP (member axis first: batched matmuls, per-member masks and norms)
optim.py     AdamW / Adam / SGD over stacked parameters with per-member hyper-parameters
grouping.py  which jobs can stack, grouped by everything that fixes shapes and the loop
budget.py    members per chunk from free memory
trainer.py   the loop: per-member order, losses, regularisers, early stopping, schedules, files
resume.py    trainer.resume=auto: the members of an interrupted chunk, stacked again from last.pt

The Hydra launcher that uses them is `hydra_plugins/regablate_vectorized`.
"""
