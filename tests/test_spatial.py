"""The maths of spatial dropout, DropBlock and DropPath, and how the stack inserts them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from regablate.errors import ConfigError
from regablate.models.convnet import ConvNetSettings, build_convnet
from regablate.models.mlp import MLPSettings, build_mlp
from regablate.models.resnet import ResNetSettings, build_resnet
from regablate.nn import ModelSpec
from regablate.regularisers import build_stack
from regablate.regularisers.spatial import DropBlock2d, DropPath, depth_rates, drop_block, drop_path


def _expected_block_rate(p: float, b: int, H: int, W: int) -> float:
    """Exact E[dropped share]: pixel (r, c) is dropped unless none of the seed positions whose
    block covers it fires; n(r) = #valid seed rows covering row r."""
    gamma = p / b**2 * H * W / ((H - b + 1) * (W - b + 1))
    r = torch.arange(H)
    n_r = (torch.minimum(r, torch.tensor(H - b)) - torch.clamp(r - b + 1, min=0) + 1).double()
    c = torch.arange(W)
    n_c = (torch.minimum(c, torch.tensor(W - b)) - torch.clamp(c - b + 1, min=0) + 1).double()
    n = n_r[:, None] * n_c[None, :]
    return float((1 - (1 - gamma) ** n).mean())


@pytest.mark.parametrize("p,b,size", [(0.1, 5, 32), (0.2, 3, 16), (0.3, 7, 8)])
def test_dropblock_drops_p_of_the_map(p, b, size):
    torch.manual_seed(0)
    x = torch.ones(64, 16, size, size)
    out = drop_block(x, p, b)
    dropped = (out == 0).double().mean().item()
    assert dropped == pytest.approx(_expected_block_rate(p, b, size, size), abs=0.01)
    assert dropped == pytest.approx(p, abs=0.03)  # γ is chosen so that the rate is about p
    # kept units are rescaled by count(M)/count_ones(M): the total is unchanged
    assert out.sum().item() == pytest.approx(x.numel(), rel=1e-5)


def test_dropblock_drops_contiguous_blocks_and_shares_masks():
    torch.manual_seed(1)
    x = torch.ones(256, 4, 9, 9)
    out = drop_block(x, 0.02, 3, per_channel=False)
    zero = out == 0
    assert torch.equal(zero, zero[:, :1].expand_as(zero))  # one mask for all channels
    # each dropped region is a union of 3x3 squares: a lone dropped pixel cannot occur
    z = zero[:, 0].float()
    neighbours = nn.functional.conv2d(z[:, None], torch.ones(1, 1, 3, 3), padding=1)[:, 0]
    assert (neighbours[zero[:, 0]] >= 4).all()  # a 3x3 block's corner sees 4 dropped pixels
    assert zero.any()
    per_channel = drop_block(torch.ones(256, 4, 9, 9), 0.1, 3) == 0
    assert not torch.equal(per_channel, per_channel[:, :1].expand_as(per_channel))


def test_dropblock_block_larger_than_map_drops_whole_maps():
    torch.manual_seed(2)
    out = drop_block(torch.ones(4000, 1, 5, 5), 0.25, block_size=7)
    per_map = (out == 0).flatten(1)
    assert torch.equal(per_map.all(1), per_map.any(1))  # all or nothing
    assert per_map.all(1).double().mean().item() == pytest.approx(0.25, abs=0.03)


def test_dropblock_module_identity_in_eval_and_at_zero():
    x = torch.randn(8, 4, 16, 16)
    m = DropBlock2d(0.3, 5)
    m.eval()
    assert m(x) is x
    m.train()
    m.drop_prob = 0.0
    assert m(x) is x
    m.drop_prob = 0.3
    assert not torch.equal(m(x), x)


def test_dropblock_ramp_is_linear_over_training():
    stack = build_stack({"dropblock": {"p": 0.2}})
    reg = stack["dropblock"]
    assert [reg.rate(e, 4) for e in (1, 2, 4)] == pytest.approx([0.05, 0.1, 0.2])
    ramp2 = build_stack({"dropblock": {"p": 0.2, "ramp_epochs": 2}})["dropblock"]
    assert [ramp2.rate(e, 10) for e in (1, 2, 9)] == pytest.approx([0.1, 0.2, 0.2])
    assert build_stack({"dropblock": {"p": 0.2, "ramp_epochs": 0}})["dropblock"].rate(1, 10) == 0.2
    model = build_convnet(ConvNetSettings(widths=[4, 4, 4], hidden=[8]), (3, 32, 32), 10,
                          stack.model_spec(ModelSpec(norm="batch")))
    blocks = [m for m in model.modules() if isinstance(m, DropBlock2d)]
    assert len(blocks) == 4  # two conv layers in each stage but the first
    stack.on_epoch(model, 3, 4)
    assert all(m.drop_prob == pytest.approx(0.15) for m in blocks)


def test_drop_path_expectation_and_per_sample_masks():
    torch.manual_seed(3)
    x = torch.ones(20000, 3, 2, 2)
    out = drop_path(x, 0.3)
    per_sample = out.flatten(1)
    assert torch.equal(per_sample.min(1).values, per_sample.max(1).values)  # whole samples
    assert per_sample[:, 0].unique().tolist() == pytest.approx([0.0, 1 / 0.7])
    assert (per_sample[:, 0] == 0).double().mean().item() == pytest.approx(0.3, abs=0.01)
    assert out.mean().item() == pytest.approx(1.0, abs=0.02)  # E[out] = x
    m = DropPath(0.3).eval()
    assert m(x) is x


def test_drop_path_rates_grow_linearly_with_depth():
    assert depth_rates(0.3, 3) == pytest.approx([0.1, 0.2, 0.3])
    spec = build_stack({"droppath": {"p": 0.18}}).model_spec(ModelSpec(norm="batch"))
    model = build_resnet(ResNetSettings(depth=20, width=4), (3, 32, 32), 10, spec)
    rates = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    assert rates == pytest.approx([0.18 * i / 9 for i in range(1, 10)])


def test_spatial_dropout_follows_conv_activations():
    spec = build_stack({"spatial_dropout": {"p": 0.2}}).model_spec(ModelSpec(norm="batch"))
    convnet = build_convnet(ConvNetSettings(widths=[4, 4, 4], hidden=[8]), (3, 32, 32), 10, spec)
    layers = list(convnet)
    drops = [i for i, m in enumerate(layers) if isinstance(m, nn.Dropout2d)]
    assert len(drops) == 6 and all(isinstance(layers[i - 1], nn.ReLU) for i in drops)
    resnet = build_resnet(ResNetSettings(depth=8, width=4), (3, 32, 32), 10, spec)
    assert sum(isinstance(m, nn.Dropout2d) for m in resnet.modules()) == 3  # one per block
    torch.manual_seed(0)
    h = nn.Dropout2d(0.5).train()(torch.ones(200, 8, 4, 4)).flatten(2)
    assert torch.equal(h.min(2).values, h.max(2).values)  # whole channels at once


def test_spatial_regularisers_refuse_models_without_their_layers():
    # each names the models that have its layers: DropPath residual branches (not the plain convnet)
    with pytest.raises(ConfigError, match="reg.droppath.*needs residual branches: model=resnet or model=vit"):
        build_convnet(ConvNetSettings(), (3, 32, 32), 10, build_stack({"droppath": {}}).model_spec(
            ModelSpec(norm="batch")))
    for name, needs in (("dropblock", "needs a conv model"), ("spatial_dropout", "needs a conv model"),
                        ("droppath", "needs residual branches: model=resnet or model=vit")):
        stack = build_stack({name: {}})
        with pytest.raises(ConfigError, match=f"reg.{name}.*{needs}"):
            build_mlp(MLPSettings(), (3, 32, 32), 10, stack.model_spec(ModelSpec()))


def test_spatial_layers_are_no_ops_in_eval_mode():
    stack = build_stack({"dropblock": {"p": 0.3}, "droppath": {"p": 0.5},
                         "spatial_dropout": {"p": 0.3}, "dropout": {"p": 0.5}})
    model = build_resnet(ResNetSettings(depth=8, width=4), (3, 32, 32), 10,
                         stack.model_spec(ModelSpec(norm="batch")))
    stack.on_epoch(model, 1, 1)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))
