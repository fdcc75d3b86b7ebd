"""Sweeps beyond Hydra's grid: ablation designs (designs: factorial, leave-one-out, add-one-in),
seeds added until the answer is decided (sequential: the stopping rule; boundaries: its
group-sequential boundaries; seed_rounds: the rounds a sweeper launches).

The Hydra plugins in hydra_plugins/ are shells (their settings, ConfigStore entry and a short
class); what they do lives here, imported only when a sweep uses it:

    refusing            hydra/sweeper=regablate: Hydra's basic sweep, every batch run, one
                        closing line for the jobs that did not complete
    submitit_jobs       the submitit launchers' batches, waiting for every job; sbatch and
                        SLURM refusals as one line
    optuna_search       hydra/sweeper=optuna: Optuna's search, each trial the mean over seeds
    vectorized_launch   hydra/launcher=vectorized: compatible jobs trained as one stacked model
    vectorized_compose  its job configs: composed once, derived, .hydra files emitted
    vectorized_slurm    its chunks as SLURM jobs (hydra.launcher.executor=slurm)
"""
