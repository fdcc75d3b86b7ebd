"""The run dir, the on-disk contract: atomic writes (atomic), the claim lock (claim), group
identity (group), the bounded readers for run dirs from someone else (untrusted) and the tree
of run dirs `regablate status` reads (scan). A run's files are written as it trains by
`regablate.training.recorder`. Torch-free.
"""
