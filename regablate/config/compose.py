"""The resolved config for a list of overrides, composed exactly as `regablate run` does.

For code that needs a config without launching a run: `regablate lint`, tests, benchmarks.
"""

from __future__ import annotations


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Plain containers, interpolations resolved, without the `hydra` key."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from regablate.config.paths import CONF_DIR

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="regablate"):
        cfg = compose("config", overrides=list(overrides))
    out = OmegaConf.to_container(cfg, resolve=True)
    out.pop("hydra", None)
    return out
