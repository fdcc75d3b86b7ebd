"""regablate: regularisation ablations in PyTorch."""

__version__ = "0.1.0"
