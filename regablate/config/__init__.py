"""The configuration: where the Hydra configs live (paths), composing them as `regablate run`
does (compose), the typed, validated settings a run is built from (settings, schema), and the
objective a sweeper tunes (objective). Torch-free.
"""
