"""regablate's vectorised Hydra launcher: `regablate run -m hydra/launcher=vectorized ...`."""
