"""`hydra/sweeper=optuna`: Optuna searches a regulariser's strength, each trial judged over seeds."""
