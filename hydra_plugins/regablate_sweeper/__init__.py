"""regablate's default Hydra sweeper: Hydra's basic sweeper that reports refused jobs as one count."""
