"""One run's training: the experiment built from settings (experiment: data, model,
optimiser, schedule, regulariser stack), parameter groups and decoupled decay (optim), the
loop (loop: `train(cfg, run_dir)`), evaluation (evaluate), checkpoints (checkpoint) and the
progress display (progress).
"""
