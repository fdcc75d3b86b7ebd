"""What a run measures beyond loss and accuracy: calibration (ECE, reliability), MC-dropout
uncertainty (uncertainty) and weight statistics (weight_stats); how many inputs each forward
pass over a whole split takes (chunks).
"""
