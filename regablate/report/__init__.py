"""`regablate report`: read run dirs, group them over seeds, render tables and plots.

Modules: collect (run dirs -> Run records), select (filters, groups, names, baselines;
`choose` is the one selection shared with regablate.summarize),
stats (means, t-intervals, tests, Holm), paired (paired tests), table (rows and columns), render
(terminal, markdown, csv, latex, json), plots (PNG figures), effects (each component's effect in
an ablation design; designs: the designs' arms and ablation.json), sequential_state (a seeds=auto
sweep's decisions), study (an Optuna study's trials), command (`regablate report`, also `python -m
regablate.report`: argument handling); plan and export are `regablate plan` and `regablate export`.
Only the on-disk contract is read; training code, the sweeps and the command line are never
imported. Heavy libraries are imported inside these modules only.
The pandas API (regablate.report.frames: load_runs, load_curves, summarize) is built on the same
collect, select and table code, so a notebook and the CLI get the same numbers.
"""
