"""Recurrent models (model=lstm, model=gru), their dropout variants and dataset=sine_sequence:
the maths of each mask (where it is shared, where it is not, expectations kept), the unrolled
recurrence against torch's fused kernels, eval-mode no-ops, MC dropout, refusals, and one-epoch
runs of every model × regulariser through the real configs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import regablate.nn as rnn
from conftest import compose_cfg
from regablate.data import DATASETS
from regablate.errors import ConfigError
from regablate.metrics.uncertainty import dropout_modules, mc_dropout
from regablate.models import build_model
from regablate.models.rnn import LSTMSettings, build_rnn
from regablate.nn import ModelSpec
from regablate.regularisers import build_stack
from regablate.training.loop import train
from regablate.training.settings import load_settings

REGS = {"none": {}, "dropout": {"dropout": {"p": 0.3}},
        "variational_dropout": {"variational_dropout": {"p_in": 0.2, "p_hidden": 0.3, "p_out": 0.3}},
        "weight_drop": {"weight_drop": {"p": 0.5}}}


def model(reg: dict, mode: str = "lstm", layers: int = 2, hidden: int = 8) -> nn.Module:
    cfg = {"name": mode, "layers": layers, "hidden": hidden}
    s = load_settings({"dataset": {"name": "sine_sequence"}, "model": cfg, "optim": {"name": "adam"},
                       "reg": reg})
    return build_model(s.model, (6, 1), 1, s.stack)


def test_locked_mask_is_shared_over_time_and_differs_across_sequences():
    torch.manual_seed(0)
    drop = rnn.LockedDropout(0.5).train()
    h = drop(torch.ones(64, 10, 16))
    assert torch.equal(h, h[:, :1].expand_as(h))  # identical at every step
    assert not torch.equal(h[0, 0], h[1, 0])  # another sequence, another mask
    assert set(h.unique().tolist()) == {0.0, 2.0}  # inverted scaling 1/(1-p)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_hidden_mask_is_one_per_sequence_for_all_steps(mode, monkeypatch):
    torch.manual_seed(0)
    layer = rnn.RecurrentLayer(mode, 3, 8, p_hidden=0.5).train()
    drawn = []
    sample = layer.hidden_drop.sample_mask
    monkeypatch.setattr(layer.hidden_drop, "sample_mask", lambda *a: drawn.append(sample(*a)) or drawn[-1])
    x = torch.randn(5, 7, 3)
    out = layer(x)
    assert len(drawn) == 1 and drawn[0].shape == (5, 8)  # one draw for all 7 steps
    assert not torch.equal(drawn[0][0], drawn[0][1])
    # the output is the recurrence with that single mask applied to h_{t-1} at every step
    assert torch.allclose(out, layer.unrolled(x, layer.rnn.weight_hh_l0, drawn[0]), atol=1e-6)
    assert not torch.allclose(out, layer.unrolled(x, layer.rnn.weight_hh_l0), atol=1e-4)


def test_naive_dropout_draws_a_new_mask_at_every_step():
    torch.manual_seed(0)
    m = model(REGS["dropout"], hidden=16).train()
    drops = [d for d in m.drops if isinstance(d, rnn.Dropout)]
    assert len(drops) == 3 and all(d.p == 0.3 for d in drops)  # each layer's input + top output
    seen = {}
    drops[1].register_forward_hook(lambda mod, i, o: seen.update(x=i[0], y=o))
    m(torch.randn(32, 6, 1))
    mask = seen["y"] / seen["x"]  # between layers: (B, T, H)
    assert not torch.equal(mask[:, 0], mask[:, 1])  # steps differ
    assert torch.isclose(mask, torch.tensor(1 / 0.7)).logical_or(mask == 0).all()


def test_expectations_are_preserved():
    torch.manual_seed(0)
    x = torch.ones(20000, 2, 8)
    assert rnn.LockedDropout(0.3).train()(x).mean().item() == pytest.approx(1.0, abs=0.01)
    assert (rnn.LockedDropout(0.3).train()(x) == 0).float().mean().item() == pytest.approx(0.3, abs=0.01)
    w = torch.randn(64, 16)
    mean = torch.stack([rnn.drop_connect(w, 0.5) for _ in range(4000)]).mean(0)
    assert torch.allclose(mean, w, atol=0.1)
    assert rnn.variational_mask((100000, 1), 0.25).mean().item() == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_unrolled_recurrence_matches_torchs_fused_kernel(mode):
    torch.manual_seed(0)
    layer = rnn.RecurrentLayer(mode, 3, 8)
    x = torch.randn(4, 9, 3)
    assert torch.allclose(layer(x), layer.unrolled(x, layer.rnn.weight_hh_l0), atol=1e-5)


def test_weight_drop_masks_only_the_hidden_to_hidden_weights():
    torch.manual_seed(0)
    layer = rnn.RecurrentLayer("lstm", 3, 8, weight_drop=0.5).train()
    seen = []
    layer.weight_drop.register_forward_hook(lambda mod, i, o: seen.append((i[0], o)))
    x = torch.randn(4, 6, 3)
    a, b = layer(x), layer(x)
    assert not torch.equal(a, b)  # one mask per forward
    w, dropped = seen[0]
    assert w is layer.rnn.weight_hh_l0 and dropped.shape == w.shape
    assert ((dropped == 0) | torch.isclose(dropped, 2 * w)).all() and (dropped == 0).any()
    with torch.no_grad():  # without hidden-to-hidden weights nothing is left to drop
        layer.rnn.weight_hh_l0.zero_()
    assert torch.equal(layer(x), layer.eval()(x))
    # the fused path with the dropped weight_hh is the recurrence with that weight
    layer.train()
    with torch.no_grad():
        layer.rnn.weight_hh_l0.normal_()
    seen.clear()
    out = layer(x)
    assert torch.allclose(out, layer.unrolled(x, seen[0][1]), atol=1e-5)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_every_variant_is_a_no_op_in_eval_mode(mode):
    torch.manual_seed(0)
    plain = model({}, mode)
    x = torch.randn(8, 6, 1)
    for reg in REGS.values():
        m = model(reg, mode)
        m.load_state_dict(plain.state_dict())
        m.eval()
        assert torch.equal(m(x), plain.eval()(x))
        if reg:
            m.train()
            assert not torch.equal(m(x), m(x))


def test_mc_dropout_uses_the_recurrent_masks():
    data = DATASETS["sine_sequence"][1](DATASETS["sine_sequence"][0](n_val=16, n_test=16, length=6), 0)
    for name, reg in REGS.items():
        torch.manual_seed(0)
        m = model(reg).eval()
        mc = mc_dropout(m, data, samples=4)
        assert (mc["val_mean_std"] > 0) == (name != "none"), name
        assert not any(mod.training for mod in m.modules())  # modes restored
    names = [n for n, _ in dropout_modules(model(REGS["variational_dropout"]))]
    assert "layers.0.hidden_drop" in names and "drops.0" in names


def test_refusals_name_the_way_out():
    mlp = load_settings(compose_cfg("+reg=weight_drop"))  # the default model is an MLP
    with pytest.raises(ConfigError, match="reg.weight_drop.*recurrent model"):
        build_model(mlp.model, (50,), 4, mlp.stack)
    spec = build_stack({**REGS["dropout"], **REGS["variational_dropout"]}).model_spec(ModelSpec())
    with pytest.raises(ConfigError, match="naive and variational"):
        build_rnn(LSTMSettings(), (6, 1), 1, spec)
    for reg, key in (({"batchnorm": {}}, "reg.batchnorm"), ({"dropconnect": {}}, "reg.dropconnect"),
                     ({"spatial_dropout": {}}, "reg.spatial_dropout")):
        spec = build_stack(reg).model_spec(ModelSpec(norm="batch" if "batchnorm" in reg else "none"))
        with pytest.raises(ConfigError, match=key):
            build_rnn(LSTMSettings(), (6, 1), 1, spec)


def test_sine_sequence_windows():
    s = DATASETS["sine_sequence"][0](n_train=10, n_val=5, n_test=50, length=7, horizon=2, noise=0.0)
    d = DATASETS["sine_sequence"][1](s, 3)
    assert d.train.x.shape == (10, 7, 1) and d.train.y.shape == (10, 2) and d.in_shape == (7, 1)
    assert d.out_dim == 2 and d.task == "regression"
    # without noise the window continues the same sine: sin(a+dx) = sin a cos dx + cos a sin dx
    x, y = d.train.x[:, :, 0], d.train.y
    cos_a = (x[:, 1] - x[:, 0] * torch.cos(torch.tensor(0.3))) / torch.sin(torch.tensor(0.3))
    nxt = x[:, -1] * torch.cos(torch.tensor(0.3)) + (  # one step after the last input
        torch.cos(torch.atan2(x[:, 0], cos_a) + 6 * 0.3)) * torch.sin(torch.tensor(0.3))
    assert torch.allclose(y[:, 0], nxt, atol=1e-4)
    again = DATASETS["sine_sequence"][1](s, 3)
    assert torch.equal(again.val.x, d.val.x)
    noisy = DATASETS["sine_sequence"][1](DATASETS["sine_sequence"][0](n_test=50), 3)
    clean = torch.sin(torch.asin(noisy.test.y.clamp(-1, 1)))  # test targets lie on the sine
    assert torch.allclose(noisy.test.y, clean) and noisy.test.y.abs().max() <= 1.0


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_one_epoch_of_every_regulariser_through_the_real_configs(mode, tmp_path):
    for reg in REGS:
        cfg = compose_cfg("dataset=sine_sequence", f"model={mode}", f"+reg={reg}", "trainer.max_epochs=1",
                          "trainer.progress=none", "trainer.tensorboard=false", "dataset.n_train=32",
                          "dataset.n_val=16", "dataset.n_test=16", "dataset.length=5", "model.hidden=8",
                          "eval.mc_samples=2")
        s = train(cfg, tmp_path / reg)
        assert s["status"] == "completed", (reg, s["error"])
        assert s["reg"] == ([] if reg == "none" else [reg]) and s["model"] == mode
        assert s["mc"]["val_mean_std"] is not None


def test_custom_models_take_the_recurrent_blocks_and_are_refused_without_them():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.out = rnn.LockedDropout(), rnn.LockedDropout()
            self.rec = rnn.RecurrentLayer("gru", 1, 4)  # configurable hidden mask and weight drop

    stack = build_stack({**REGS["variational_dropout"], **REGS["weight_drop"]})
    net = rnn.configure_recurrent(Net(), stack.model_spec(ModelSpec()), stack.names, "model Net")
    assert (net.inp.p, net.out.p, net.rec.hidden_drop.p, net.rec.weight_drop.p) == (0.2, 0.3, 0.3, 0.5)
    plain = nn.Sequential(nn.LSTM(1, 4))
    for name, block in (("variational_dropout", "LockedDropout"), ("weight_drop", "RecurrentLayer")):
        stack = build_stack({name: REGS[name][name]})
        with pytest.raises(ConfigError, match=f"reg.{name}.*regablate.nn.{block}"):
            rnn.configure_recurrent(plain, stack.model_spec(ModelSpec()), stack.names, "model Plain")


def test_the_vectorized_launcher_runs_recurrent_models_the_ordinary_way():
    from regablate.vectorized.grouping import not_stackable

    s = load_settings(compose_cfg("dataset=sine_sequence", "model=lstm", "+reg=variational_dropout"))
    assert not_stackable(s) == "model lstm has no stacked form (mlp, convnet and resnet only)"
