"""One run's training: the run's typed settings (settings: `load_settings`), the experiment
built from them (experiment: data, model, optimiser, schedule, regulariser stack), parameter
groups and decoupled decay (optim), the loop (loop: `train(cfg, run_dir)`), the run around it
that both trainers share (session: `RunSession`, the last.pt layout), which state a run
continues from (resuming), the run's files as it goes (recorder: summary.json, metrics.csv and
the TensorBoard events), evaluation (evaluate), checkpoint files (checkpoint) and the progress
display (progress).
"""
