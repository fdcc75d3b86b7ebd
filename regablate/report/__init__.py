"""`regablate report`: read run dirs, group them over seeds, render tables and plots.

Modules: collect (run dirs -> Run records), select (filters, groups, names, baselines;
`choose` is the one selection shared with regablate.summarize),
stats (means, t-intervals, tests, Holm), table (rows and columns), render (terminal, markdown,
csv, latex, json), plots (PNG figures), cli (argument handling). Only the on-disk contract is
read; training code is never imported. Heavy libraries are imported inside these modules only.
The pandas API (regablate.report.frames: load_runs, load_curves, summarize) is built on the same
collect, select and table code, so a notebook and the CLI get the same numbers.
"""
