"""Checks before and during a run: the lint rules for regularisation pitfalls and
`regablate lint` (lint), and the eval-mode determinism self-check (selfcheck).
"""
