"""convnet and resnet: architecture, and one-epoch runs through the real configs and trainer on
a tiny prepared CIFAR-10 cache with every spatial regulariser and the existing ones."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from conftest import write_fake_cifar10
from regablate.config.compose import compose_config
from regablate.errors import ConfigError
from regablate.models.convnet import ConvNetSettings, build_convnet
from regablate.models.resnet import ResNetSettings, build_resnet
from regablate.nn import ModelSpec
from regablate.regularisers.dropout import DropConnectLinear
from regablate.training.loop import train

SMALL = {"convnet": ["model.widths=[4,8,8]", "model.hidden=[16]"],
         "resnet": ["model.depth=8", "model.width=4"]}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A prepared cache: 200 training images, 60 test images (as `regablate data` writes it)."""
    return write_fake_cifar10(tmp_path_factory.mktemp("cifar10"))


def config(root, model: str, *overrides: str) -> dict:
    return compose_config([
        "dataset=cifar10", f"dataset.root={root}", "dataset.n_train=100", f"model={model}",
        *SMALL[model], "trainer.max_epochs=1", "trainer.batch_size=32",
        "trainer.progress=none", "trainer.tensorboard=false", "trainer.device=cpu", *overrides])


def run(tmp_path, root, model: str, *overrides: str) -> dict:
    name = "_".join([model, *overrides]).replace("/", "-").replace("=", "-")[:80]
    summary = train(config(root, model, *overrides), tmp_path / name)
    assert summary["status"] == "completed", summary.get("error")
    assert all(math.isfinite(summary[s]["loss"]) for s in ("train", "val", "test"))
    assert json.loads((tmp_path / name / "summary.json").read_text())["status"] == "completed"
    return summary


SPATIAL = ["+reg=none", "+reg=spatial_dropout", "+reg=dropblock", "+reg=cutout", "+reg=mixup",
           "+reg=cutmix", "+reg=augment", "+reg=[augment,mixup,label_smoothing]"]


@pytest.mark.parametrize("model", ["convnet", "resnet"])
@pytest.mark.parametrize("reg", SPATIAL)
def test_one_epoch_with_each_spatial_regulariser(tmp_path, root, model, reg):
    s = run(tmp_path, root, model, reg)
    assert s["dataset"] == "cifar10" and s["model"] == model
    assert s["n_params"] > 0


def test_resnet_with_droppath_and_dropblock(tmp_path, root):
    s = run(tmp_path, root, "resnet", "+reg=[augment,droppath,dropblock]", "trainer.max_epochs=2")
    assert s["reg"] == ["augment", "dropblock", "droppath"] and s["epochs_run"] == 2


@pytest.mark.parametrize("reg", ["l1", "l2", "weight_decay", "dropconnect", "dropout", "max_norm",
                                 "grad_clip", "batchnorm", "label_smoothing"])
@pytest.mark.parametrize("model", ["convnet", "resnet"])
def test_existing_regularisers_work_on_conv_models(tmp_path, root, model, reg):
    run(tmp_path, root, model, f"+reg={reg}")


@pytest.mark.parametrize("model", ["convnet", "resnet"])
def test_layernorm_switches_the_norm(tmp_path, root, model):
    run(tmp_path, root, model, "model.norm=none", "+reg=layernorm")
    with pytest.raises(ConfigError, match="conflicts with model.norm"):
        train(config(root, model, "+reg=layernorm"), tmp_path / "refused")


def test_droppath_on_convnet_is_refused(tmp_path, root):
    with pytest.raises(ConfigError, match="reg.droppath.*needs residual branches: model=resnet or model=vit"):
        train(config(root, "convnet", "+reg=droppath"), tmp_path / "refused")


def test_resnet_sizes_match_the_paper():
    def n_params(depth):
        m = build_resnet(ResNetSettings(depth=depth), (3, 32, 32), 10, ModelSpec(norm="batch"))
        return sum(p.numel() for p in m.parameters())

    # He et al. 2016, Table 6: 0.27M, 0.46M, 0.85M (option A shortcuts: no parameters)
    assert [round(n_params(d) / 1e6, 2) for d in (20, 32, 56)] == [0.27, 0.46, 0.85]
    with pytest.raises(ConfigError, match="model.depth"):
        from regablate.config.schema import parse
        from regablate.models.resnet import ResNetSettings as S

        parse(S, {"depth": 21}, "model")


def test_model_shapes_norms_and_heads():
    x = torch.randn(2, 3, 32, 32)
    spec = ModelSpec(norm="layer", dropout=0.5, dropconnect=0.3)
    convnet = build_convnet(ConvNetSettings(widths=[4, 8, 8], hidden=[16]), (3, 32, 32), 10, spec)
    assert convnet(x).shape == (2, 10)
    assert sum(isinstance(m, nn.Conv2d) for m in convnet.modules()) == 6
    assert sum(isinstance(m, nn.MaxPool2d) for m in convnet.modules()) == 3
    assert sum(isinstance(m, nn.GroupNorm) for m in convnet.modules()) == 6
    assert sum(isinstance(m, DropConnectLinear) for m in convnet.modules()) == 2
    assert sum(isinstance(m, nn.Dropout) for m in convnet.modules()) == 1
    resnet = build_resnet(ResNetSettings(depth=8, width=4), (3, 32, 32), 10,
                          ModelSpec(norm="batch", dropout=0.2, dropconnect=0.1))
    assert resnet(x).shape == (2, 10)
    head = list(resnet.head)
    assert isinstance(head[-2], nn.Dropout) and isinstance(head[-1], DropConnectLinear)
    with pytest.raises(ConfigError, match="needs image inputs"):
        build_resnet(ResNetSettings(), (20,), 4, ModelSpec())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_channels_last(tmp_path, root):
    s = run(tmp_path, root, "resnet", "+reg=[augment,cutmix,dropblock,droppath]",
            "trainer.device=cuda", "trainer.amp=true")
    assert s["device"].startswith("cuda")
