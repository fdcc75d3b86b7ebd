"""The configuration: where the Hydra configs live (paths), composing them as `regablate run`
does (compose), checking a config node against a settings dataclass (schema), and the
objective a sweeper tunes (objective). Torch-free, and below every other subpackage: it imports
only `regablate.errors`.
"""
