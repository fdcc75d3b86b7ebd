"""regablate: regularisation ablations in PyTorch.

Results in Python (pandas DataFrames; pandas is imported on the first call):

    load_runs(*paths, status=("completed",))  one row per run dir: config, summary metrics
    load_curves(*paths)                       one row per run and epoch (metrics.csv)
    summarize(runs, metric="val", baseline=None, paired=True, test="t")
                                              the report's group table (n, mean ± std, CI,
                                              Δ vs baseline: paired t, sign-flip or Wilcoxon,
                                              or Welch; Holm; no p below 3 seeds or from
                                              differences equal up to float rounding)
    effects(runs, metric="val", design=None)  each regulariser's share of a stack (ablation
                                              designs: leave-one-out, add-one-in, factorial
                                              main effects, interactions, Shapley; t intervals
                                              over seeds, Holm per kind)

The command line is `regablate run` / `regablate report` (see `regablate --help`).
"""

from regablate.report.frames import effects, load_curves, load_runs, summarize

__version__ = "0.1.0"
__all__ = ["load_runs", "load_curves", "summarize", "effects", "__version__"]
