"""model=vit: the maths of its regularisers (DropPath rates, attention dropout on probabilities),
its dropout sites and decay groups, the transformer lint rules, and one-epoch runs through the
real configs and trainer on a tiny prepared CIFAR-10 cache and a generated image folder."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import regablate.nn as rnn
from conftest import write_fake_cifar10
from regablate.checks.lint import lint
from regablate.cli.lint import lint_inputs as lint_build
from regablate.config.compose import compose_config
from regablate.errors import ConfigError
from regablate.models import build_model
from regablate.models.vit import Attention, ViT, ViTSettings
from regablate.regularisers import build_stack
from regablate.training.loop import train
from regablate.training.settings import load_settings
from regablate.vectorized.grouping import not_stackable

SMALL = ("model.patch_size=8", "model.width=16", "model.depth=2", "model.heads=2")


pytestmark = pytest.mark.usefixtures("one_thread")


def vit(reg: dict | None = None, **kw) -> ViT:
    s = ViTSettings(**{"width": 16, "depth": 4, "heads": 2, "patch_size": 8, **kw})
    return build_model(s, (3, 32, 32), 10, build_stack(reg or {}))


# ---------------------------------------------------------------- the maths


@pytest.mark.parametrize("p,depth", [(0.1, 4), (0.3, 6), (0.5, 1)])
def test_droppath_rate_of_each_block_is_the_linear_rule(p, depth):
    m = vit({"droppath": {"p": p}}, depth=depth)
    for i, block in enumerate(m.blocks, start=1):  # both residual branches of block i: p·i/L
        assert block.drop_path1.drop_prob == pytest.approx(p * i / depth)
        assert block.drop_path2.drop_prob == pytest.approx(p * i / depth)
    assert m.blocks[-1].drop_path2.drop_prob == pytest.approx(p)
    assert [b.drop_path1.drop_prob for b in vit(depth=depth).blocks] == [0.0] * depth


def test_droppath_drops_whole_branches_per_sample():
    m = vit({"droppath": {"p": 0.5}}, depth=1)
    block = m.blocks[0].train()
    x = torch.randn(64, 5, 16)
    torch.manual_seed(0)
    branch = block.drop_path1(block.attn.eval()(block.norm1(x)))  # attention itself without dropout
    full = block.attn(block.norm1(x))
    kept = [torch.allclose(b, f * 2, atol=1e-6) for b, f in zip(branch, full, strict=True)]
    dropped = [bool((b == 0).all()) for b in branch]
    assert all(k or d for k, d in zip(kept, dropped, strict=True)) and any(kept) and any(dropped)


def test_attention_dropout_zeroes_probabilities_not_values():
    p = 0.5
    att = Attention(16, 2, attn=p, proj=0.0).train()
    x = torch.randn(8, 10, 16)
    torch.manual_seed(1)
    probs, v = att.probabilities(x)
    att.attn_drop.eval()
    clean, v_clean = att.probabilities(x)
    att.attn_drop.train()
    assert torch.equal(v, v_clean)  # values are never dropped
    assert torch.allclose(clean.sum(-1), torch.ones(8, 2, 10))  # softmax rows
    zero = probs == 0
    assert torch.allclose(probs[~zero], clean[~zero] / (1 - p))  # kept probabilities rescaled
    assert abs(zero.float().mean().item() - p) < 0.05  # about p of the probabilities dropped
    # the forward pass uses exactly these probabilities: same RNG, same output
    torch.manual_seed(1)
    out = att(x)
    torch.manual_seed(1)
    probs2, v2 = att.probabilities(x)
    ref = att.proj((probs2 @ v2).transpose(1, 2).reshape(8, 10, 16))
    assert torch.allclose(out, ref)
    assert isinstance(att.attn_drop, rnn.Dropout) and att.attn_drop.site == "attn"


def test_blocks_are_identity_in_eval_and_rates_land_on_their_sites():
    reg = {"dropout": {"p": 0.3, "attn": 0.1, "proj": 0.2, "embed": 0.05}, "droppath": {"p": 0.2}}
    m = vit(reg)
    sites = {}
    for mod in m.modules():
        if getattr(mod, "site", None) in ("attn", "proj", "embed"):
            sites.setdefault(mod.site, set()).add(mod.p)
    assert sites == {"attn": {0.1}, "proj": {0.2}, "embed": {0.05}}
    assert [mod.p for mod in m.head if isinstance(mod, rnn.Dropout)] == [0.3]  # reg.dropout.p: MLP head
    # 3 proj sites per block (attention projection, MLP hidden, MLP output)
    assert sum(getattr(mod, "site", None) == "proj" for mod in m.modules()) == 3 * 4
    m.eval()
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(m(x), m(x))
    plain = vit({"dropout": {"p": 0.3}})  # the same head, no transformer sites, no DropPath
    plain.load_state_dict(m.state_dict())
    assert torch.allclose(plain.eval()(x), m(x))


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_shapes_pooling_and_settings_checks(pool):
    m = vit(pool=pool, patch_size=4, head_hidden=[8])
    assert m(torch.randn(3, 3, 32, 32)).shape == (3, 10)
    assert m.pos_embed.shape == (1, 64 + (pool == "cls"), 16)
    assert (m.cls_token is not None) == (pool == "cls")
    with pytest.raises(ConfigError, match="model.patch_size"):
        vit(patch_size=5)
    with pytest.raises(ConfigError, match="model.heads"):
        vit(heads=3)
    for reg, key in (({"spatial_dropout": {}}, "reg.spatial_dropout"), ({"dropblock": {}}, "reg.dropblock"),
                     ({"layernorm": {}}, "reg.layernorm")):
        with pytest.raises(ConfigError, match=key):
            vit(reg)


def test_other_models_refuse_the_transformer_sites():
    from regablate.models.mlp import MLPSettings

    with pytest.raises(ConfigError, match="reg.dropout.attn.*transformer"):
        build_model(MLPSettings(), (5,), 2, build_stack({"dropout": {"attn": 0.1}}))
    build_model(MLPSettings(), (5,), 2, build_stack({"dropout": {"p": 0.1}}))  # p alone: as before


# ---------------------------------------------------------------- decay groups and lint


def test_decay_groups_keep_pos_embed_cls_token_norms_and_biases_out():
    m = vit({"weight_decay": {"lam": 0.05}}, pool="cls")
    decay, keep = build_stack({"weight_decay": {"lam": 0.05}}).param_groups(m)
    names = {id(p): n for n, p in m.named_parameters()}
    kept = {names[id(p)] for p in keep["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["decoupled_decay"] == 0.05 and keep["decoupled_decay"] == 0.0
    assert {"pos_embed", "cls_token"} <= kept
    assert all(n.endswith("bias") or ".norm" in n or n.startswith("norm.") for n in kept - {"pos_embed", "cls_token"})
    assert decayed == {n for n, p in m.named_parameters() if p.ndim >= 2} - {"pos_embed", "cls_token"}
    assert "patch_embed.weight" in decayed and "blocks.0.attn.qkv.weight" in decayed
    assert len(kept) + len(decayed) == len(list(m.parameters()))


def test_penalties_and_max_norm_leave_pos_embed_and_cls_token_alone():
    # they are no unit's incoming weights: L1/L2 do not penalise them, max-norm does not cap them
    # (before: the whole (1, T, W) position table was capped as one vector, to c)
    reg = {"l1": {"lam": 0.01}, "l2": {"lam": 0.02}, "max_norm": {"c": 1.0}}
    m = vit(reg, pool="cls")
    stack = build_stack(reg)
    with torch.no_grad():
        m.pos_embed.normal_(0, 0.5)
        m.cls_token.normal_(0, 0.5)
    pos, cls = m.pos_embed.detach().clone(), m.cls_token.detach().clone()
    m.zero_grad()
    stack.penalty(m).backward()
    assert m.pos_embed.grad is None and m.cls_token.grad is None
    w = m.blocks[0].attn.qkv.weight
    assert torch.allclose(w.grad, 0.01 * torch.sign(w.detach()) + 0.02 * w.detach())
    stack.after_step(m)
    assert torch.equal(m.pos_embed, pos) and torch.equal(m.cls_token, cls)
    assert m.blocks[0].mlp.fc1.weight.norm(dim=1).max() <= 1.0 + 1e-6


def settings(*overrides: str):
    return load_settings(compose_config(["dataset=cifar10", "model=vit", *SMALL, *overrides]))


def findings(*overrides: str) -> dict:
    s = settings(*overrides)
    return {f.id: f for f in lint(s, *lint_build(s))}


def test_lint_transformer_rules():
    assert findings("+reg=[dropout,droppath]", "reg.dropout.p=0", "reg.dropout.attn=0.1",
                    "reg.dropout.proj=0.1", "reg.dropout.embed=0.1", "+reg=weight_decay") == {}
    f = findings("+reg=dropout", "reg.dropout.p=0", "reg.dropout.attn=0.3")
    assert set(f) == {"RA009"} and "attn_drop" in f["RA009"].message
    f = findings("optim.weight_decay=0.05")
    assert {"RA004", "RA010"} <= set(f) and "pos_embed" in f["RA010"].message
    assert "RA010" not in findings("+reg=[l1,l2,max_norm]")  # they leave pos_embed and cls_token alone


def test_vectorized_launcher_runs_vit_the_ordinary_way():
    assert not_stackable(settings("+reg=droppath")) == "model vit has no stacked form (mlp, convnet and resnet only)"


# ---------------------------------------------------------------- one-epoch runs


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A prepared CIFAR-10 cache of random images."""
    return write_fake_cifar10(tmp_path_factory.mktemp("cifar10"))


def run(tmp_path, *overrides: str) -> dict:
    name = "_".join(overrides).replace("/", "-").replace("=", "-").replace(",", "-")[:80]
    cfg = compose_config(["model=vit", *SMALL, "trainer.max_epochs=1", "trainer.batch_size=32",
                          "trainer.progress=none", "trainer.tensorboard=false", "trainer.device=cpu",
                          *overrides])
    summary = train(cfg, tmp_path / name)
    assert summary["status"] == "completed", summary.get("error")
    assert all(math.isfinite(summary[s]["loss"]) for s in ("train", "val", "test"))
    assert json.loads((tmp_path / name / "summary.json").read_text())["status"] == "completed"
    return summary


REGS = ["+reg=none", "+reg=dropout", "+reg=droppath", "+reg=weight_decay",
        "+reg=[droppath,dropout]", "+reg=[augment,mixup,label_smoothing]", "+reg=dropconnect"]


@pytest.mark.parametrize("reg", REGS)
def test_one_epoch_with_each_regulariser(tmp_path, root, reg):
    s = run(tmp_path, "dataset=cifar10", f"dataset.root={root}", "dataset.n_train=100", reg,
            "reg.dropout.attn=0.1" if "dropout" in reg else "model.pool=cls")
    assert s["model"] == "vit" and s["n_params"] > 0


def test_the_issue_command_runs(tmp_path, root):
    """`regablate run dataset=cifar10 model=vit '+reg=[droppath,dropout]' reg.dropout.attn=0.1`."""
    s = run(tmp_path, "dataset=cifar10", f"dataset.root={root}", "+reg=[droppath,dropout]",
            "reg.dropout.attn=0.1")
    assert s["reg"] == ["dropout", "droppath"] and not s["warnings"]


def test_one_epoch_on_an_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for cls in ("a", "b", "c"):
            (tmp_path / "img" / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(
                    tmp_path / "img" / split / cls / f"{i}.png")
    s = run(tmp_path, "dataset=image_folder", f"dataset.path={tmp_path / 'img'}",
            f"dataset.root={tmp_path / 'cache'}", "dataset.image_size=16", "model.patch_size=4",
            "model.pool=mean", "+reg=[droppath,dropout]", "reg.dropout.proj=0.1", "reg.dropout.embed=0.1")
    assert s["dataset"] == "image_folder"
