"""Composition of every preset and stacked selection; schema checks and their messages."""

from __future__ import annotations

import pytest

from conftest import compose_cfg
from regablate.config.paths import CONF_DIR
from regablate.errors import ConfigError
from regablate.regularisers import REGISTRY
from regablate.training.settings import load_settings

PRESETS = sorted(p.stem for p in (CONF_DIR / "reg").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_reg_preset_composes_and_validates(preset):
    cfg = compose_cfg(f"+reg={preset}")
    s = load_settings(cfg)
    expected = {"none": [], "dropout_l2": ["dropout", "l2"], "batchnorm_l2": ["batchnorm", "l2"]}
    assert s.stack.names == expected.get(preset, [preset])


def test_every_registered_regulariser_has_a_config():
    assert set(REGISTRY) <= set(PRESETS)


def test_stacked_selection_and_override():
    cfg = compose_cfg("+reg=[dropout,l1]", "reg.dropout.p=0.3")
    assert cfg["reg"] == {"dropout": {"p": 0.3, "attn": 0.0, "proj": 0.0, "embed": 0.0}, "l1": {"lam": 1e-4}}
    assert load_settings(cfg).stack.names == ["dropout", "l1"]


def test_preset_plus_more():
    cfg = compose_cfg("+reg=[dropout_l2,max_norm]")
    assert sorted(cfg["reg"]) == ["dropout", "l2", "max_norm"]


def test_baseline_has_empty_stack_and_data_seed_follows_seed():
    cfg = compose_cfg("seed=7")
    assert cfg["reg"] == {} and cfg["data_seed"] == 7
    assert compose_cfg("seed=7", "data_seed=3")["data_seed"] == 3


@pytest.mark.parametrize("group,option", [("dataset", "sine"), ("dataset", "tiny_binary"),
                                          ("optim", "adam"), ("optim", "sgd"),
                                          ("sched", "cosine"), ("sched", "none")])
def test_group_options_validate(group, option):
    load_settings(compose_cfg(f"{group}={option}"))


@pytest.mark.parametrize("overrides,key,allowed", [
    (["+reg=dropout", "reg.dropout.p=1.0"], "reg.dropout.p", "[0, 1)"),
    (["+reg=dropout", "reg.dropout.p=-0.1"], "reg.dropout.p", "[0, 1)"),
    (["+reg=dropout", "reg.dropout.p=[0.1,1.2]"], "reg.dropout.p", "[0, 1)"),
    (["+reg=l1", "reg.l1.lam=-1"], "reg.l1.lam", ">= 0"),
    (["+reg=label_smoothing", "reg.label_smoothing.eps=1"], "reg.label_smoothing.eps", "[0, 1)"),
    (["optim.lr=0"], "optim.lr", "> 0"),
    (["trainer.batch_size=0"], "trainer.batch_size", "> 0"),
    (["trainer.max_epochs=-3"], "trainer.max_epochs", "> 0"),
    (["+trainer.foo=1"], "trainer.foo", "unknown key; allowed: max_epochs"),
    (["+reg=dropout", "+reg.dropout.q=1"], "reg.dropout.q", "unknown key; allowed: p"),
    (["+bogus=1"], "bogus", "unknown key"),
    (["trainer.device=tpu"], "trainer.device", "auto, cpu, cuda"),
    (["optim.lr=fast"], "optim.lr", "must be a number"),
    (["+reg=l2", "reg.l2.lam=inf"], "reg.l2.lam", "must be a finite number"),
    (["optim.lr=-inf"], "optim.lr", "must be a finite number"),
    (["+reg=l2", "reg.l2.lam=nan"], "reg.l2.lam", "must be a finite number"),
    (["+reg=dropout", "reg.dropout.p=inf"], "reg.dropout.p", "must be a finite number"),  # float | list
])
def test_bad_values_name_key_value_and_what_is_allowed(overrides, key, allowed):
    with pytest.raises(ConfigError) as err:
        load_settings(compose_cfg(*overrides))
    assert err.value.key == key
    assert allowed in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_regulariser_lists_the_allowed_ones():
    with pytest.raises(ConfigError, match="unknown regulariser; allowed: .*dropout"):
        load_settings({**compose_cfg(), "reg": {"dropuot": {"p": 0.1}}})


def test_two_norms_and_norm_conflict_are_refused():
    from regablate.training.experiment import build_experiment

    with pytest.raises(ConfigError, match="conflicts with model.norm"):
        build_experiment(load_settings(compose_cfg("+reg=[batchnorm,layernorm]")))
    with pytest.raises(ConfigError, match="one rate per hidden layer"):
        build_experiment(load_settings(compose_cfg("+reg=dropout", "reg.dropout.p=[0.1,0.2,0.3]")))


def test_classification_only_regularisers_are_refused_on_regression():
    from regablate.training.experiment import build_experiment

    with pytest.raises(ConfigError, match="reg.label_smoothing.*needs a classification dataset"):
        build_experiment(load_settings(compose_cfg("dataset=sine", "+reg=label_smoothing")))


def test_spatial_regularisers_on_the_mlp_are_refused_at_build():
    from regablate.training.experiment import build_experiment

    with pytest.raises(ConfigError, match="reg.dropblock.*needs a conv model"):
        build_experiment(load_settings(compose_cfg("+reg=dropblock")))
