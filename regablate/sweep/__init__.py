"""Sweeps beyond Hydra's grid: ablation designs (designs: factorial, leave-one-out, add-one-in),
seeds added until the answer is decided (sequential: the stopping rule; seed_rounds: the
rounds a sweeper launches). The Hydra plugins in hydra_plugins/ call into here.
"""
