"""The run dir, the on-disk contract: atomic writes (atomic), the claim lock (claim), group
identity (group), the recorder that writes summary.json, metrics.csv and the event files
(recorder), and the bounded readers for run dirs from someone else (untrusted). Torch is
imported only where a checkpoint's history or a histogram is written.
"""
