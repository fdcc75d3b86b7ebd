"""model=custom: a user's nn.Module, reached by structural regularisers only through regablate.nn
blocks (refused with one line naming the block otherwise), by every other regulariser directly."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import regablate.nn as rnn
from regablate.checks.lint import lint
from regablate.cli.lint import lint_inputs as lint_build
from regablate.errors import ConfigError
from regablate.metrics.uncertainty import is_dropout
from regablate.models import build_model
from regablate.models.convnet import ConvNetSettings, build_convnet
from regablate.models.custom import CustomSettings
from regablate.models.resnet import ResNetSettings, build_resnet
from regablate.nn import ModelSpec
from regablate.regularisers import build_stack
from regablate.training.experiment import build_experiment
from regablate.training.settings import load_settings
from regablate.vectorized.grouping import not_stackable
from tests.conftest import FAST, REPO, run_cli

sys.path.insert(0, str(REPO / "tests"))  # `custom_models` as a user's own module

SMALL = ("dataset.n=300", "dataset.n_test=100")


def custom(target: str, *overrides: str) -> tuple[str, ...]:
    return ("model=custom", f"model.target=custom_models:{target}", *overrides)


def build(small_cfg, *overrides: str) -> nn.Module:
    return build_experiment(load_settings(small_cfg(*overrides))).model


def test_blocks_take_the_configs_strength(small_cfg):
    model = build(small_cfg, *custom("BlockMLP", "+reg=[dropout,batchnorm]", "reg.dropout.p=0.3"))
    drops = [m for m in model.modules() if isinstance(m, rnn.Dropout)]
    assert [m.p for m in drops] == [0.3, 0.3]
    assert isinstance(model.net[1], nn.BatchNorm1d)
    per_layer = build(small_cfg, *custom("BlockMLP", "+reg=dropout", "reg.dropout.p=[0.1,0.4]"))
    assert [m.p for m in per_layer.modules() if isinstance(m, rnn.Dropout)] == [0.1, 0.4]
    off = build(small_cfg, *custom("BlockMLP"))  # no regulariser: identity blocks
    assert [m.p for m in off.modules() if isinstance(m, rnn.Dropout)] == [0.0, 0.0]
    assert isinstance(off.net[1], nn.Identity)
    layer = build(small_cfg, *custom("BlockMLP", "model.norm=layer"))
    assert isinstance(layer.net[1], nn.LayerNorm)
    with pytest.raises(ConfigError, match=r"one rate per regablate.nn.Dropout\(\) block .* \(2\)"):
        build(small_cfg, *custom("BlockMLP", "+reg=dropout", "reg.dropout.p=[0.1,0.2,0.3]"))


def test_blocks_outside_a_run_are_the_identity():
    x = torch.randn(4, 3, 6, 6)
    for block in (rnn.Dropout(), rnn.Dropout2d(), rnn.DropBlock2d(), rnn.DropPath()):
        assert torch.equal(block.train()(x), x) and is_dropout(block)
    assert isinstance(rnn.Norm(3), nn.Identity)
    assert isinstance(rnn.Norm(3, kind="batch"), nn.BatchNorm2d)
    assert isinstance(rnn.Norm(3, dims=1, kind="layer"), nn.LayerNorm)
    assert rnn.Dropout(0.2).p == 0.2 and not rnn.Dropout(0.2).configurable


def test_spatial_blocks_in_a_custom_conv_net():
    import custom_models

    stack = build_stack({"spatial_dropout": {"p": 0.2}, "dropblock": {"p": 0.3, "block_size": 3},
                         "droppath": {"p": 0.4}, "layernorm": {}, "dropout": {"p": 0.1}})
    s = CustomSettings(target="custom_models:BlockConvNet", kwargs={"width": 4})
    model = build_model(s, (1, 20, 20), 3, stack)
    assert isinstance(model, custom_models.BlockConvNet)
    assert model.stem[3].p == 0.2 and isinstance(model.stem[1], nn.GroupNorm)
    blocks = [m for m in model.modules() if isinstance(m, rnn.DropBlock2d)]
    assert [(m.drop_prob, m.block_size, m.per_channel) for m in blocks] == [(0.3, 3, True)] * 2
    assert [m.drop_prob for m in model.modules() if isinstance(m, rnn.DropPath)] == [0.2, 0.4]
    assert model.head[2].p == 0.1
    assert model(torch.randn(2, 1, 20, 20)).shape == (2, 3)


def test_a_block_given_its_strength_keeps_it_through_a_schedule():
    """reg.dropblock's ramp sets the configurable DropBlock2d() blocks each epoch, never a
    DropBlock2d(0.3) the model fixed (as Dropout(0.2) and DropPath(0.25) are left alone)."""
    model = nn.Sequential(rnn.DropBlock2d(0.3, block_size=2), rnn.DropBlock2d(), rnn.DropPath(0.25))
    stack = build_stack({"dropblock": {"p": 0.2, "block_size": 3}})
    rnn.configure(model, stack.model_spec(ModelSpec()), stack.names, "model test")
    for epoch in (1, 2):
        stack.on_epoch(model, epoch, 4)
        assert [(m.drop_prob, m.block_size) for m in model[:2]] == [(0.3, 2), (pytest.approx(0.05 * epoch), 3)]
    assert model[2].drop_prob == 0.25


@pytest.mark.parametrize(("reg", "block"), [("dropout", "Dropout"), ("spatial_dropout", "Dropout2d"),
                                            ("dropblock", "DropBlock2d"), ("droppath", "DropPath"),
                                            ("batchnorm", "Norm"), ("layernorm", "Norm")])
def test_structural_regulariser_without_its_block_is_refused(reg, block):
    s = CustomSettings(target="custom_models:PlainMLP")
    with pytest.raises(ConfigError) as e:
        build_model(s, (5,), 2, build_stack({reg: {}}))
    msg = str(e.value)
    assert msg.startswith(f"reg.{reg}=") and f"has no regablate.nn.{block} block" in msg
    assert "custom_models:PlainMLP" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match=r"reg.dropconnect=.*no DropConnect block"):
        build_model(s, (5,), 2, build_stack({"dropconnect": {}}))


def test_bad_targets_are_one_line_naming_them():
    def error(target, **kwargs) -> str:
        with pytest.raises(ConfigError) as e:
            build_model(CustomSettings(target=target, kwargs=kwargs), (5,), 2, build_stack({}))
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "cannot import no_such_pkg.nets" in error("no_such_pkg.nets:XrayNet")
    assert "module custom_models has no Nope" in error("custom_models:Nope")
    assert "RuntimeError: no such layer" in error("custom_models:Broken")
    assert "TypeError" in error("custom_models:PlainMLP", depth=3)
    assert "required" in error(None)
    # a factory function and a dotted path work too; kwargs reach it
    model = build_model(CustomSettings(target="custom_models.make_plain", kwargs={"width": 7}), (5,), 2,
                        build_stack({}))
    assert model.width == 7 and model.in_shape == (5,)


def test_builtin_conv_models_take_any_input_size_and_channels():
    spec = ModelSpec(norm="batch")
    convnet = build_convnet(ConvNetSettings(widths=[4, 8], hidden=[8]), (1, 20, 20), 3, spec)
    resnet = build_resnet(ResNetSettings(depth=8, width=4), (1, 20, 20), 3, spec)
    odd = build_resnet(ResNetSettings(depth=8, width=4), (2, 13, 9), 3, spec)
    x = torch.randn(2, 1, 20, 20)
    assert convnet(x).shape == resnet(x).shape == (2, 3)
    assert odd(torch.randn(2, 2, 13, 9)).shape == (2, 3)


def test_lint_and_vectorized_on_a_custom_model(small_cfg):
    s = load_settings(small_cfg(*custom("BlockMLP", "+reg=dropout", "reg.dropout.p=0.8")))
    assert [f.id for f in lint(s, *lint_build(s))] == ["RA005"]
    assert not_stackable(s) == "model=custom (custom_models:BlockMLP) has no stacked form (built-in MLPs and conv models only)"


def _cli(tmp_path: Path, *args: str):
    shutil.copy(REPO / "tests" / "custom_models.py", tmp_path)  # the user's module, next to the run
    return run_cli("run", *args, *SMALL, "trainer.progress=none", "trainer.max_epochs=2",
                   "hydra.run.dir=run", cwd=tmp_path)


def test_cli_custom_model_with_blocks(tmp_path):
    r = _cli(tmp_path, *custom("BlockMLP", "+reg=dropout", "reg.dropout.p=0.3", "model.kwargs.width=16",
                               "eval.mc_samples=2"))
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "completed" and s["model"] == "custom" and s["reg"] == ["dropout"]
    assert s["n_params"] == 50 * 16 + 16 + 16 * 16 + 16 + 16 * 4 + 4
    assert s["mc"]["samples"] == 2 and s["mc"]["val_mean_std"] > 0  # MC dropout found the blocks
    assert any((tmp_path / "run" / "tb").rglob("events.out.tfevents.*"))


def test_cli_refuses_dropout_without_block(tmp_path):
    r = _cli(tmp_path, *custom("PlainMLP", "+reg=dropout"))
    assert r.returncode == 2
    line = r.stderr.strip()
    assert "\n" not in line and "regablate.nn.Dropout" in line and "custom_models:PlainMLP" in line


def test_cli_bad_target(tmp_path):
    r = _cli(tmp_path, "model=custom", "model.target=my_pkg.nets:XrayNet")
    assert r.returncode == 2 and "\n" not in r.stderr.strip()
    assert "model.target='my_pkg.nets:XrayNet'" in r.stderr and "cannot import my_pkg.nets" in r.stderr


def test_cli_non_structural_regularisers_on_a_plain_custom_model(tmp_path):
    r = _cli(tmp_path, *custom("PlainMLP", "+reg=[l2,weight_decay,label_smoothing,max_norm,grad_clip,mixup]",
                               *FAST[2:]))
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "completed"
    assert s["reg"] == ["grad_clip", "l2", "label_smoothing", "max_norm", "mixup", "weight_decay"]


def test_cli_custom_conv_net_on_an_image_folder(tmp_path):
    from tests.test_image_folder import cli, write_images

    write_images(tmp_path / "img", {"train": 6})
    shutil.copy(REPO / "tests" / "custom_models.py", tmp_path)
    r = cli(tmp_path, "run", "dataset=image_folder", f"dataset.path={tmp_path / 'img'}",
            "dataset.image_size=20", "dataset.channels=1", "dataset.n_ood=4",
            *custom("BlockConvNet", "+model.kwargs.width=4",
                    "+reg=[dropblock,droppath,spatial_dropout,batchnorm,cutout]"),
            "trainer.max_epochs=2", "trainer.progress=none", "trainer.tensorboard=false",
            "hydra.run.dir=run")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "completed" and s["dataset"] == "image_folder"
    assert s["reg"] == ["batchnorm", "cutout", "dropblock", "droppath", "spatial_dropout"]


FIXED_WIDTH = ("model=custom (custom_models:FixedWidth) fails on the data's inputs: a batch of shape (2, 50) "
               "(samples of shape (50,)) raised RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x50 and 7x4)")


def test_lint_command_on_a_model_that_fails_on_the_datas_shape(capsys):
    from regablate.cli.lint import main

    assert main([*custom("FixedWidth"), *SMALL]) == 2
    assert capsys.readouterr().err == f"regablate: error: {FIXED_WIDTH}\n"


def test_cli_a_model_that_fails_on_the_datas_shape_is_one_line_and_in_a_sweep_failed_runs(tmp_path):
    r = _cli(tmp_path, *custom("FixedWidth"))
    assert (r.returncode, r.stderr) == (2, f"regablate: error: {FIXED_WIDTH}\n")
    r = run_cli("run", "-m", *custom("FixedWidth"), *SMALL, "trainer.progress=none", "trainer.max_epochs=2",
                "seed=0,1", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and FIXED_WIDTH in r.stderr
    for seed in (0, 1):
        s = json.loads((tmp_path / "sweep" / str(seed) / "summary.json").read_text())
        assert (s["status"], s["error"], s["model"], s["seed"]) == ("failed", FIXED_WIDTH, "custom", seed)


@pytest.mark.parametrize("target, data, said", [
    ("SqueezedRegressor", ("dataset=sine",), "raised ValueError: it returned a tensor of shape (2,); the loss and "
                                             "metrics need one tensor of shape (2, 1)"),
    ("TupleOut", (), "raised ValueError: it returned a tuple; the loss and metrics need one tensor of shape (2, 4)"),
])
def test_a_model_whose_output_is_not_batch_by_out_dim_is_refused_before_training(small_cfg, tmp_path, target, data,
                                                                                 said):
    from regablate.checks.lint import ModelInputError
    from regablate.training.loop import train

    cfg = small_cfg(*data, *custom(target))
    with pytest.raises(ModelInputError) as e:
        train(cfg, tmp_path)
    assert said in str(e.value) and "\n" not in str(e.value)
    assert not list(tmp_path.iterdir())  # found before any file is written (the CLI records it failed)


def test_a_model_with_nothing_to_train_is_refused_and_one_whose_output_is_nan_diverges(small_cfg, tmp_path):
    # before: a RuntimeError from backward, and an eval-determinism error blaming self.training (NaN != NaN)
    with pytest.raises(ConfigError, match="model.target='custom_models:NoParameters': has no parameter to train"):
        build(small_cfg, *custom("NoParameters"))
    from regablate.training.loop import train

    s = train(small_cfg(*custom("NaNOut")), tmp_path / "nan")
    assert s["status"] == "diverged" and s["error"] == "non-finite loss at epoch 1"


def test_cli_a_single_run_of_a_model_that_fails_on_the_datas_shape_is_recorded_as_failed(tmp_path):
    r = _cli(tmp_path, *custom("FixedWidth"))
    assert r.returncode == 2
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (s["status"], s["error"]) == ("failed", FIXED_WIDTH)
