"""Vectorised training: stacked optimisers, per-member masks and statistics, grouping, and each
member against the ordinary trainer run on its own config."""

from __future__ import annotations

import copy
import csv
import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regablate.errors import Terminated
from regablate.training import checkpoint
from regablate.training.experiment import build_experiment
from regablate.training.loop import EarlyStopper, train
from regablate.training.settings import load_settings
from regablate.vectorized import optim
from regablate.vectorized.budget import bytes_per_member, default_max_members
from regablate.vectorized.grouping import chunks, group, make_member, not_stackable
from regablate.vectorized.stacked import StackedMLP, plan
from regablate.vectorized.trainer import VectorizedTrainer


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def members_of(cfgs: list[dict], root: Path) -> list:
    return [make_member(i, c, root / f"v{i}", load_settings(c)) for i, c in enumerate(cfgs)]


def fit(cfgs: list[dict], root: Path) -> list[dict]:
    (grp,) = group(members_of(cfgs, root))
    assert len(grp) == len(cfgs)
    summaries, _ = VectorizedTrainer(grp).fit()
    return summaries


def rows(run_dir: Path) -> list[dict]:
    return list(csv.DictReader(open(run_dir / "metrics.csv")))


def assert_same_run(vec: Path, ordinary: Path, tol: float, acc_tol: float, state_tol: float,
                    drift: dict[str, float] | None = None) -> None:
    """The same files, keys, columns, epochs and statuses; numbers equal to `tol` (accuracy and
    ECE, which a tiny difference in a logit can move by a whole sample, to `acc_tol`; best.pt's
    tensors to `state_tol`, those named in `drift` to their own tolerance)."""
    a, b = (json.loads((d / "summary.json").read_text()) for d in (vec, ordinary))
    assert set(a) == set(b)
    for key in ("status", "best_epoch", "epochs_run", "stopped_early", "metrics_epoch", "seed",
                "data_seed", "group", "reg", "n_params", "metric", "error"):
        assert a[key] == b[key], key
    for split in ("train", "val", "test"):
        for m, v in b[split].items():
            assert a[split][m] == pytest.approx(v, abs=acc_tol if m in ("acc", "ece") else tol), m
    ra, rb = rows(vec), rows(ordinary)
    assert list(ra[0]) == list(rb[0]) and len(ra) == len(rb)
    for x, y in zip(ra, rb):
        for col in x:
            if col != "epoch_time_s":
                t = acc_tol if col.endswith("_acc") or col == "gap" else tol
                assert float(x[col]) == pytest.approx(float(y[col]), abs=t, rel=tol), col
    assert sorted(p.name for p in (vec / "checkpoints").iterdir()) == \
        sorted(p.name for p in (ordinary / "checkpoints").iterdir())
    sa, sb = (checkpoint.load(d / "checkpoints" / "best.pt") for d in (vec, ordinary))
    assert list(sa) == list(sb)
    for k in sb:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=(drift or {}).get(k, state_tol)), k


def tb_events(run_dir: Path) -> dict:
    """{sub-run ("" for tb/ itself): EventAccumulator} of a run's TensorBoard dir."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for sub in ("", "train", "val", "test"):
        out[sub] = EventAccumulator(str(run_dir / "tb" / sub), size_guidance={"histograms": 0})
        out[sub].Reload()
    return out


def assert_same_tb(vec: Path, ordinary: Path, tol: float) -> None:
    """The same scalar tags, steps and values (to `tol`) in tb/, tb/train, tb/val and tb/test, the
    same histogram tags (weights/hist/<layer>, weights/final/<layer>) and steps, and `best/<metric>`
    ending on the val row of the epoch whose weights the run reports (the summary's numbers)."""
    a, b = tb_events(vec), tb_events(ordinary)
    summary = json.loads((vec / "summary.json").read_text())
    m = summary["metric"]
    for sub in b:
        tags = b[sub].Tags()
        assert set(a[sub].Tags()["scalars"]) == set(tags["scalars"]) and tags["scalars"], sub
        assert set(a[sub].Tags()["histograms"]) == set(tags["histograms"]), sub
        for tag in tags["scalars"]:
            x, y = a[sub].Scalars(tag), b[sub].Scalars(tag)
            assert [e.step for e in x] == [e.step for e in y], (sub, tag)
            assert [e.value for e in x] == pytest.approx([e.value for e in y], abs=tol, rel=tol), (sub, tag)
        for tag in tags["histograms"]:
            assert [e.step for e in a[sub].Histograms(tag)] == [e.step for e in b[sub].Histograms(tag)], tag
    hists = set(a[""].Tags()["histograms"])
    assert any(t.startswith("weights/final/") for t in hists) and any(t.startswith("weights/hist/") for t in hists)
    best = a["val"].Scalars(f"best/{m}")
    assert len(best) == summary["epochs_run"]
    assert best[-1].value == pytest.approx(float(rows(vec)[summary["metrics_epoch"] - 1][f"val_{m}"]))
    if summary["metrics_epoch"] == summary["best_epoch"]:
        assert best[-1].value == pytest.approx(summary["val"][m], abs=1e-6)
        assert a[""].Scalars("best/gap")[-1].value == pytest.approx(summary["gap"], abs=1e-6)


# -- stacked optimisers ------------------------------------------------------------------------
@pytest.mark.parametrize("name,settings", [
    ("adamw", SimpleNamespace(betas=[0.9, 0.999], eps=1e-8)),
    ("adam", SimpleNamespace(betas=[0.8, 0.99], eps=1e-6)),
    ("sgd", SimpleNamespace(momentum=0.9, nesterov=False)),
    ("sgd", SimpleNamespace(momentum=0.9, nesterov=True)),
])
def test_stacked_optimisers_follow_torch_per_member(name, settings):
    """K=3 members with their own lr and weight decay: each follows its torch optimiser step by
    step (K=1 is the first member)."""
    torch.manual_seed(0)
    lrs, wds = [0.01, 0.003, 0.01], [0.1, 0.0, 0.02]
    shapes = [(5, 3), (5,)]
    start = [[torch.randn(s) for s in shapes] for _ in lrs]
    refs, params = [], []
    for init, lr, wd in zip(start, lrs, wds):
        ps = [t.clone().requires_grad_() for t in init]
        if name == "sgd":
            refs.append(torch.optim.SGD(ps, lr=lr, weight_decay=wd, momentum=settings.momentum,
                                        nesterov=settings.nesterov))
        else:
            cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
            refs.append(cls(ps, lr=lr, weight_decay=wd, betas=tuple(settings.betas), eps=settings.eps))
        params.append(ps)
    theta = torch.stack([torch.cat([t.flatten() for t in init]) for init in start])
    stacked = optim.build(name, theta, lrs, wds, settings)
    for step in range(40):
        if step == 20:  # a schedule changes one member's lr
            lrs[1] = 0.001
            refs[1].param_groups[0]["lr"] = 0.001
            stacked.set_lr(lrs)
        grads = [[torch.randn(s) for s in shapes] for _ in lrs]
        for ps, gs, ref in zip(params, grads, refs):
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            ref.step()
        stacked.step(torch.stack([torch.cat([g.flatten() for g in gs]) for gs in grads]))
        want = torch.stack([torch.cat([p.detach().flatten() for p in ps]) for ps in params])
        torch.testing.assert_close(theta, want, rtol=1e-6, atol=1e-7)


# -- per-member dropout and BatchNorm -----------------------------------------------------------
def _stack(model: nn.Sequential, rates: list[list[float]], k: int) -> StackedMLP:
    layers, drops = plan(model)
    s = StackedMLP(layers, rates, sorted(drops), k, torch.device("cpu"))
    for i in range(k):
        s.load_member(i, model)
    return s


def _dropout(s: StackedMLP, h: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
    """Inverted dropout at slot 0 as a training forward applies it: h·[u < 1−p_k]/(1−p_k)."""
    return h * s._masks(0, *h.shape[1:], gens)


def test_dropout_masks_are_per_member_independent_and_their_own():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 2))
    x = torch.randn(1, 64, 8).expand(3, 64, 8)  # the same inputs and weights for every member
    s = _stack(model, [[0.5], [0.5], [0.0]], 3)
    gens = [torch.Generator().manual_seed(i) for i in (10, 11, 12)]
    masks = []
    h = torch.relu(torch.baddbmm(s.views[0, "bias"].unsqueeze(1), x, s.views[0, "weight"]))
    with torch.no_grad():
        dropped = _dropout(s, h, gens)
    for k in range(3):
        masks.append((dropped[k] != 0) | (h[k] == 0))
    kept0, kept1 = masks[0][h[0] > 0].float(), masks[1][h[1] > 0].float()
    assert abs(kept0.mean().item() - 0.5) < 0.02 and abs(kept1.mean().item() - 0.5) < 0.02
    corr = torch.corrcoef(torch.stack([kept0, kept1]))[0, 1].item()
    assert abs(corr) < 0.05  # independent masks
    torch.testing.assert_close(dropped[2], h[2])  # p = 0: untouched
    torch.testing.assert_close(dropped[0][masks[0]], 2 * h[0][masks[0]])  # kept units scaled 1/(1-p)
    # member 0's mask depends only on its own generator, not on the group around it
    alone = _stack(model, [[0.5]], 1)
    with torch.no_grad():
        solo = _dropout(alone, h[:1].clone(), [torch.Generator().manual_seed(10)])
    torch.testing.assert_close(solo[0], dropped[0])
    # ... over many steps too (masks are drawn in blocks of rows): step by step the same masks,
    # and each step's mask a new one
    pair = _stack(model, [[0.0], [0.5]], 2)
    gens_pair, gen_solo = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(10)], \
        torch.Generator().manual_seed(10)
    alone = _stack(model, [[0.5]], 1)
    previous = None
    with torch.no_grad():
        for _ in range(40):  # 40 x 64 rows: three blocks
            a = _dropout(pair, h[:2].clone(), gens_pair)[1]
            b = _dropout(alone, h[:1].clone(), [gen_solo])[0]
            torch.testing.assert_close(a, b)
            assert previous is None or not torch.equal(a, previous)
            previous = a


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
@pytest.mark.parametrize("rates", [[0.5, 0.0, 0.3], [0.0, 0.4, 0.4]])  # dropping rows apart / one run
def test_hand_written_backward_matches_autograd_through_each_members_module(rates, device):
    """StackedMLP's gradients by hand equal autograd's through each member's own module (with
    the masks its forward drew), for every layer kind, dropout after each kind of layer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(16, 16, bias=False), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 16),
                          nn.LayerNorm(16), nn.SiLU(), nn.Dropout(0.5), nn.Linear(16, 16),
                          nn.GELU(approximate="tanh"), nn.Linear(16, 3), nn.Dropout(0.5))
    layers, drops = plan(model)
    k = len(rates)
    s = StackedMLP(layers, [[r] * len(drops) for r in rates], sorted(drops), k, torch.device(device))
    members = []
    for i in range(k):
        members.append(copy.deepcopy(model).to(device))
        for p in members[i].parameters():
            p.data.normal_(0, 0.5)
        s.load_member(i, members[i])
    x = torch.randn(k, 24, 3, 4, device=device)
    grad_out = torch.randn(k, 24, 3, device=device)
    out = s.forward(x, True, [torch.Generator(device).manual_seed(i) for i in range(k)])
    masks = [s._tape[j][-1] for j in sorted(drops)]  # each dropout slot's mask, last on its layer's entry
    g = s.backward(grad_out.clone())
    for i, ref in enumerate(members):
        h, slot = x[i], 0
        for m in ref.train():
            if isinstance(m, nn.Dropout):
                h = h * masks[slot][i]
                slot += 1
            else:
                h = m(h)
        torch.testing.assert_close(out[i], h, rtol=1e-5, atol=1e-5)
        want = torch.autograd.grad(h, list(ref.parameters()), grad_out[i])
        got = s.unflatten(g[i], ref)
        for p, w in zip(ref.parameters(), want):
            torch.testing.assert_close(got[p], w, rtol=1e-4, atol=1e-5)
    for i, r in enumerate(rates):  # members at rate 0 were not masked; the others were
        assert all(torch.equal(mk[i], torch.ones_like(mk[i])) == (r == 0) for mk in masks)


@pytest.mark.parametrize("smoothing", [None, [0.0, 0.1, 0.3]])
def test_loss_and_its_gradient_by_hand_match_torch(smoothing):
    from regablate.vectorized.losses import loss_and_grad as _loss_and_grad

    torch.manual_seed(0)
    out = torch.randn(3, 16, 5, requires_grad=True)
    y = torch.randint(0, 5, (3, 16))
    eps = None if smoothing is None else torch.tensor(smoothing).view(-1, 1)
    loss, grad = _loss_and_grad(out.detach(), y, "classification", eps)
    want = torch.stack([nn.functional.cross_entropy(out[i], y[i], label_smoothing=0.0 if eps is None
                                                    else smoothing[i]) for i in range(3)])
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(grad, torch.autograd.grad(want.sum(), out)[0])
    q = torch.softmax(torch.randn(3, 16, 5), -1)  # probability targets (mixup, cutmix)
    loss, grad = _loss_and_grad(out.detach(), q, "classification", eps)
    want = torch.stack([nn.functional.cross_entropy(out[i], q[i], label_smoothing=0.0 if eps is None
                                                    else smoothing[i]) for i in range(3)])
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(grad, torch.autograd.grad(want.sum(), out)[0])
    target = torch.randn(3, 16, 2)
    pred = torch.randn(3, 16, 2, requires_grad=True)
    loss, grad = _loss_and_grad(pred.detach(), target, "regression", None)
    want = torch.stack([nn.functional.mse_loss(pred[i], target[i]) for i in range(3)])
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(grad, torch.autograd.grad(want.sum(), pred)[0])


def test_batchnorm_normalises_each_member_over_its_own_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    s = _stack(model, [[], []], 2)
    xs = torch.randn(2, 32, 4)
    xs[1] = 10 * xs[1] + 5  # very different statistics in member 1
    out = s.forward(xs, train=True)
    for k in range(2):
        ref = copy.deepcopy(model).train()
        torch.testing.assert_close(out[k], ref(xs[k]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s.buffers[1].running_mean[k], ref[1].running_mean)
        torch.testing.assert_close(s.buffers[1].running_var[k], ref[1].running_var)
        ref.eval()
        torch.testing.assert_close(s.forward(xs, train=False)[k], ref(xs[k]), rtol=1e-5, atol=1e-5)


# -- grouping ------------------------------------------------------------------------------------
def test_grouping_decisions(small_cfg, tmp_path):
    cfgs = [small_cfg("+reg=none"), small_cfg("+reg=dropout", "seed=1"), small_cfg("+reg=l2", "optim.lr=0.01"),
            small_cfg("+reg=batchnorm"), small_cfg("+reg=batchnorm_l2", "seed=2"),
            small_cfg("model.hidden=[32]"), small_cfg("optim=sgd"), small_cfg("trainer.batch_size=32"),
            small_cfg("+reg=layernorm")]
    groups = [[m.job for m in g] for g in group(members_of(cfgs, tmp_path))]
    assert groups == [[0, 1, 2], [3, 4], [5], [6], [7], [8]]
    assert not_stackable(load_settings(small_cfg("+reg=mixup"))) == "reg mixup has no stacked form"
    assert "model vit" in not_stackable(load_settings(small_cfg("model=vit")))
    assert "dataset cifar10" in not_stackable(load_settings(small_cfg("dataset=cifar10")))
    assert "dataset tabular" in not_stackable(load_settings(small_cfg("model=convnet", "dataset=tabular")))
    conv = ("model=resnet", "dataset=cifar10")
    assert not_stackable(load_settings(small_cfg(*conv, "+reg=[dropblock,droppath,spatial_dropout,l2]"))) is None
    assert not_stackable(load_settings(small_cfg(*conv, "+reg=[augment,cutout,mixup,cutmix]"))) is None
    assert not_stackable(load_settings(small_cfg("+reg=dropblock"))) == "reg dropblock has no stacked form"
    assert not_stackable(load_settings(small_cfg("+reg=[dropout,l1,max_norm,grad_clip]"))) is None
    assert not_stackable(load_settings(small_cfg("trainer.amp=true"))) == "trainer.amp runs an MLP the ordinary way"
    assert not_stackable(load_settings(small_cfg(*conv, "trainer.amp=true"))) is None


def test_each_conv_member_transforms_its_own_batch_from_its_own_generator(small_cfg, tmp_path):
    """Batch transforms in a stacked group: member k's rows are what its own stack's
    transform_batch makes of them with its own generator (whatever the others do), the global RNG
    is not touched, and the targets are probabilities for all once a member mixes."""
    from conftest import write_fake_cifar10

    root = write_fake_cifar10(tmp_path / "data")
    conv = ("model=convnet", "model.widths=[4]", "model.hidden=[8]", "dataset=cifar10",
            f"dataset.root={root}", "dataset.n_train=100", "trainer.device=cpu")
    cfgs = [small_cfg(*conv, "+reg=augment"), small_cfg(*conv, "+reg=none", "seed=1"),
            small_cfg(*conv, "+reg=[augment,mixup]", "seed=2"), small_cfg(*conv, "+reg=[cutout,cutmix]", "seed=3")]
    (grp,) = group(members_of(cfgs, tmp_path))
    trainer = VectorizedTrainer(grp)
    data = trainer.data
    perm = torch.stack([torch.randperm(100, generator=gen(k)) for k in range(4)])[:, :16]
    xb, yb = data.batch(data.rows_of(perm))
    xb = data.prepare(xb, data.index)
    gens, cpu_gens = [gen(10 + k) for k in range(4)], [gen(20 + k) for k in range(4)]
    before = torch.get_rng_state()
    x, y = trainer._transform(xb, yb, gens, cpu_gens)
    assert torch.equal(torch.get_rng_state(), before)
    assert x.shape == xb.shape and y.shape == (4, 16, 10) and y.dtype == torch.float32
    for k, m in enumerate(grp):
        want_x, want_y = m.s.stack.transform_batch(xb[k], yb[k], gen(10 + k), gen(20 + k))
        assert torch.equal(x[k], want_x)
        assert torch.equal(y[k], want_y if want_y.is_floating_point() else F.one_hot(want_y, 10).float())
    assert torch.equal(x[1], xb[1]) and not torch.equal(x[0], xb[0])  # none untouched, augment not
    assert not torch.equal(y[2], F.one_hot(yb[2], 10).float())  # mixup mixed its targets


def test_chunks_and_memory_budget(small_cfg, tmp_path):
    assert [len(c) for c in chunks(list(range(7)), 3)] == [3, 2, 2]
    assert [len(c) for c in chunks(list(range(4)), 10)] == [4]
    (m,) = members_of([small_cfg()], tmp_path)
    n_params = sum(p.numel() for p in m.x.model.parameters())
    assert bytes_per_member(m) > 4 * 10 * n_params
    assert 1 <= default_max_members([m], 0.1) <= default_max_members([m], 0.5)


def test_a_resnet20_chunk_on_an_80_gib_card_holds_dozens_of_members(small_cfg, tmp_path, monkeypatch):
    """The budget counts a conv member's training step as measured (a stacked resnet20 step at
    batch 128 holds under one float32 word per layer output per sample) and its evaluation rows
    as the trainer gives them, so 80 GiB free fits dozens of resnet20 members: it once counted
    4,096 evaluation rows of every layer's output at once, 24 GiB a member, and sent each alone."""
    from conftest import write_fake_cifar10
    from regablate.vectorized import budget

    root = write_fake_cifar10(tmp_path / "data")
    (m,) = members_of([small_cfg("model=resnet", "model.depth=20", "dataset=cifar10", f"dataset.root={root}",
                                 "trainer.batch_size=128")], tmp_path)
    total, largest = budget.activation_sizes(m)
    assert (total, largest) == (737418, 16 * 32 * 32)  # resnet20's layer outputs for one 32x32 image
    assert bytes_per_member(m) >= 4 * 128 * total  # at least the step's measured footprint
    # what a chunk adds for its data set, at a byte a pixel (180 train and 20 val images, int64
    # labels): the stacked copies of train, and of train and val side by side
    assert budget.bytes_per_data_set(m) == (2 * 180 + 20) * (3 * 32 * 32 + 8)
    monkeypatch.setattr(budget, "free_bytes", lambda device: 80 * 2**30)
    assert 32 <= default_max_members([m], 0.5) <= 64
    # 8 GiB data sets: one shared by the group is counted once; six of them do not all fit beside
    # their members, so a chunk plans on a data set a member
    monkeypatch.setattr(budget, "bytes_per_data_set", lambda m: 8 * 2**30)
    room, per = 40 * 2**30 - budget.bytes_per_chunk(m), bytes_per_member(m)
    assert default_max_members([m], 0.5) == (room - 8 * 2**30) // per

    def members(data_seeds) -> list:
        return members_of([small_cfg("model=resnet", "model.depth=20", "dataset=cifar10", f"dataset.root={root}",
                                     "trainer.batch_size=128", f"seed={i}", f"data_seed={d}")
                           for i, d in enumerate(data_seeds)],
                          tmp_path / "-".join(map(str, data_seeds)))

    assert default_max_members(members([0] * 6), 0.5) == (room - 8 * 2**30) // per  # six seeds, one data set
    assert default_max_members(members(range(6)), 0.5) == room // (per + 8 * 2**30) == 4


# -- members against the ordinary trainer ---------------------------------------------------------
def test_bf16_conv_members_stacked_match_their_ordinary_bf16_runs(small_cfg, tmp_path, monkeypatch):
    """trainer.amp for stacked conv members, on the CPU (torch's CPU autocast takes bf16 as
    CUDA's does; the GPU test checks it there): resnet members with BatchNorm, batch transforms,
    DropBlock, label smoothing and a penalty, stacked in one chunk, have their ordinary bf16 runs'
    losses at every epoch within bf16's rounding; the stacked steps and evaluations did autocast."""
    from conftest import write_fake_cifar10
    from regablate.training import evaluate

    monkeypatch.setattr(evaluate, "AMP_DEVICES", ("cuda", "cpu"))
    real_amp_on, autocast_on = evaluate.amp_on, []
    monkeypatch.setattr(evaluate, "amp_on", lambda device, amp: autocast_on.append(real_amp_on(device, amp))
                        or autocast_on[-1])
    root = write_fake_cifar10(tmp_path / "data")
    conv = ("model=resnet", "model.depth=8", "model.width=4", "dataset=cifar10", f"dataset.root={root}",
            "dataset.n_train=100", "trainer.batch_size=32", "optim=sgd", "trainer.device=cpu",
            "trainer.max_epochs=2", "trainer.restore_best=false", "trainer.checkpoint=false")
    regs = ("+reg=none", "+reg=[augment,cutout]", "+reg=[dropblock,label_smoothing]", "+reg=l2")
    cfgs = [small_cfg(*conv, "trainer.amp=true", reg, f"seed={i}") for i, reg in enumerate(regs)]
    fit(cfgs, tmp_path)
    assert autocast_on and all(autocast_on)  # every stacked step and evaluation in bf16
    for i, cfg in enumerate(cfgs):
        train(cfg, tmp_path / f"o{i}")
        ours, theirs = rows(tmp_path / f"v{i}"), rows(tmp_path / f"o{i}")
        assert [r["epoch"] for r in ours] == [r["epoch"] for r in theirs] == ["1", "2"]
        for a, b in zip(ours, theirs):
            for key in ("train_loss", "val_loss"):
                assert float(a[key]) == pytest.approx(float(b[key]), rel=5e-3), (i, a["epoch"], key)


def test_conv_members_of_every_regulariser_and_three_data_seeds_in_one_chunk_are_their_ordinary_runs(
        small_cfg, tmp_path):
    """Eleven conv members in one chunk (every structural regulariser and batch transform, label
    smoothing with and without mixup, a penalty; three data seeds): each member's files are its
    ordinary run's to float tolerance, so nothing of one member reaches another. Each member's
    images are normalised by its own training split's channel statistics (normalised by the first
    data set's, as they once were, a member of seed 1 left its ordinary run by 1e-3 in the loss
    within an epoch). Without BatchNorm (its NHWC kernel rounds differently when stacked)."""
    from conftest import write_fake_cifar10

    root = write_fake_cifar10(tmp_path / "data")
    conv = ("model=convnet", "model.widths=[4]", "model.hidden=[8]", "model.norm=none", "dataset=cifar10",
            f"dataset.root={root}", "dataset.n_train=64", "trainer.batch_size=32", "trainer.device=cpu",
            "trainer.max_epochs=2", "trainer.checkpoint=false")
    regs = ("+reg=none", "+reg=dropout", "+reg=spatial_dropout", "+reg=dropblock", "+reg=augment", "+reg=cutout",
            "+reg=mixup", "+reg=cutmix", "+reg=label_smoothing", "+reg=l2", "+reg=[mixup,label_smoothing]")
    cfgs = [small_cfg(*conv, f"seed={i % 3}", reg) for i, reg in enumerate(regs)]
    (grp,) = group(members_of(cfgs, tmp_path))
    trainer = VectorizedTrainer(grp)
    means = [m.x.data.prepare.mean for m in grp[:3]]
    assert trainer.data.u == 3 and not torch.equal(means[0], means[1])  # three splits, other statistics
    trainer.fit()
    for i, cfg in enumerate(cfgs):
        train(cfg, tmp_path / f"o{i}")
        assert_same_run(tmp_path / f"v{i}", tmp_path / f"o{i}", tol=2e-5, acc_tol=2e-5, state_tol=2e-4)


def test_members_of_a_group_match_their_ordinary_runs(small_cfg, tmp_path):
    """One group of members that differ in seed, lr, decay, penalties, smoothing, constraints and
    early stopping: each member's files are its ordinary run's, to float tolerance, TensorBoard's
    (on for three of them, which does not split the group) included."""
    extra = ("trainer.max_epochs=4", "trainer.checkpoint=false")
    tb = ("trainer.tensorboard=true", "eval.histogram_every=2")
    cfgs = [small_cfg(*extra),
            small_cfg(*extra, *tb, "seed=1", "+reg=[l1,l2]", "reg.l1.lam=0.001", "reg.l2.lam=0.01"),
            small_cfg(*extra, "seed=2", "+reg=weight_decay", "reg.weight_decay.lam=0.5", "optim.lr=0.01"),
            small_cfg(*extra, "+reg=[label_smoothing,max_norm]", "reg.max_norm.c=0.5"),
            small_cfg(*extra, "+reg=grad_clip", "reg.grad_clip.max_norm=0.05", "optim.weight_decay=0.1"),
            small_cfg(*extra, *tb, "seed=3", "trainer.early_stopping.patience=2",
                      "trainer.early_stopping.min_delta=0.5", "sched.patience=0", "sched.threshold=0.5"),
            small_cfg(*extra, *tb, "seed=3", "trainer.early_stopping.patience=1",
                      "trainer.early_stopping.min_delta=0.5", "trainer.restore_best=false"),
            small_cfg(*extra, "seed=4", "sched=cosine"),
            small_cfg(*extra, "seed=4", "sched=none", "+reg=weight_decay")]  # no torch optimiser
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(cfgs, tmp_path)
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]  # its lr holder never steps
    for i, cfg in enumerate(cfgs):
        train(cfg, tmp_path / f"o{i}")
        assert_same_run(tmp_path / f"v{i}", tmp_path / f"o{i}", tol=2e-5, acc_tol=2e-5, state_tol=2e-4)
        if cfg["trainer"]["tensorboard"]:
            assert_same_tb(tmp_path / f"v{i}", tmp_path / f"o{i}", tol=2e-5)
        else:
            assert not (tmp_path / f"v{i}" / "tb").exists()
    epochs = [json.loads((tmp_path / f"v{i}" / "summary.json").read_text())["epochs_run"] for i in (4, 5, 6)]
    assert epochs == [4, 3, 2]  # each member stopped at its own epoch, the others went on
    assert [float(r["lr"]) for r in rows(tmp_path / "v5")] == [1e-3, 1e-3, 5e-4]  # its own plateau
    assert [float(r["lr"]) for r in rows(tmp_path / "v7")] == pytest.approx(
        [1e-3 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])  # cosine over 4 epochs


def test_regression_members_match_their_ordinary_runs(small_cfg, tmp_path):
    """A regression group (sine, MSE; tanh MLPs, one with an L2 penalty): each member's files
    are its ordinary run's, to float tolerance."""
    extra = ("dataset=sine", "trainer.max_epochs=3", "trainer.checkpoint=false")
    cfgs = [small_cfg(*extra, "model.activation=tanh"), small_cfg(*extra, "model.activation=tanh", "seed=1",
                                                                 "+reg=l2", "reg.l2.lam=0.01")]
    fit(cfgs, tmp_path)
    for i, cfg in enumerate(cfgs):
        train(cfg, tmp_path / f"o{i}")
        assert_same_run(tmp_path / f"v{i}", tmp_path / f"o{i}", tol=2e-5, acc_tol=2e-5, state_tol=2e-4)
    summary = json.loads((tmp_path / "v0" / "summary.json").read_text())
    assert summary["task"] == "regression" and summary["metric"] == "mse"


def _fed_to_batchnorm(model: nn.Sequential) -> list[str]:
    """best.pt keys of each Linear bias that feeds a BatchNorm, and of that BatchNorm's running mean."""
    mods = list(model)
    return [key for i, (m, nxt) in enumerate(zip(mods, mods[1:]))
            if type(m) is nn.Linear and type(nxt) is nn.BatchNorm1d
            for key in (f"{i}.bias", f"{i + 1}.running_mean")]


def test_norm_members_match_their_ordinary_runs_and_checkpoints_resume(small_cfg, tmp_path):
    """BatchNorm members under AdamW and SGD and LayerNorm members under AdamW, each group against
    the ordinary runs; then the stacked last.pt loads into the ordinary trainer's objects."""
    cfgs = [small_cfg("+reg=batchnorm_l2"), small_cfg("+reg=batchnorm", "seed=1", "optim.lr=0.003")]
    fit(cfgs, tmp_path)
    for i, cfg in enumerate(cfgs):
        train(cfg, tmp_path / f"o{i}")
        # A Linear bias that feeds BatchNorm has a zero gradient up to rounding, which Adam scales
        # to steps of about ±lr, their signs set by rounding noise: any other summation order (the
        # stacked model's, or the ordinary run with its batch reversed) sends these biases on
        # another random walk. Training outputs ignore them, but in eval mode BatchNorm subtracts
        # a running mean that lags the bias by ~1/momentum steps, so every eval loss moves with
        # the walk. Measured over 40 seeds, for both configs here (15 steps): stacked vs
        # ordinary up to 5.5e-4, ordinary vs ordinary with its batch reversed up to 9.2e-4, both
        # for lr=3e-3 (2e-4 for lr=1e-3); with those biases held fixed in both runs, 3e-7. Hence
        # 2e-3 on the losses here, and 0.05 (15 steps of ±lr, twice) on those biases and running
        # means; every other tensor, running variances included, to 1e-5.
        drift = dict.fromkeys(_fed_to_batchnorm(build_experiment(load_settings(cfg)).model), 0.05)
        assert_same_run(tmp_path / f"v{i}", tmp_path / f"o{i}", tol=2e-3, acc_tol=0.02,
                        state_tol=1e-5, drift=drift)
    # no such noise without Adam's rescaling, nor without BatchNorm: the same to rounding
    tight = [small_cfg("optim=sgd", "+reg=batchnorm_l2"),
             small_cfg("optim=sgd", "+reg=batchnorm", "seed=1", "optim.lr=0.01"),
             small_cfg("+reg=layernorm"), small_cfg("+reg=layernorm", "seed=1", "optim.lr=0.003")]
    for j in (0, 2):
        fit(tight[j : j + 2], tmp_path / f"t{j}")
        for i in (0, 1):
            train(tight[j + i], tmp_path / f"t{j}" / f"o{i}")
            assert_same_run(tmp_path / f"t{j}" / f"v{i}", tmp_path / f"t{j}" / f"o{i}",
                            tol=2e-5, acc_tol=2e-5, state_tol=1e-5)
    # one last.pt file for the chunk (a hard link in each run dir), each member's state in it in
    # the ordinary trainer's format: its model, optimiser and schedule load it
    files = [tmp_path / f"v{i}" / "checkpoints" / "last.pt" for i in (0, 1)]
    assert files[0].stat().st_ino == files[1].stat().st_ino
    assert checkpoint.load_last(tmp_path / "v1")["model"].keys() == checkpoint.load_last(tmp_path / "v0")["model"].keys()
    state = checkpoint.load_last(tmp_path / "v0")
    x = build_experiment(load_settings(cfgs[0]))
    x.model.load_state_dict(state["model"])
    x.optimizer.load_state_dict(state["optimizer"])
    x.schedule.load_state_dict(state["schedule"])
    ordinary = checkpoint.load(tmp_path / "o0" / "checkpoints" / "last.pt")
    # the ordinary trainer's keys, and what only a stacked chunk reads (`VectorizedTrainer._start`)
    assert set(state) == {*ordinary, "stacked"} and state["epoch"] == ordinary["epoch"]
    for p_state, o_state in zip(state["optimizer"]["state"].values(), ordinary["optimizer"]["state"].values()):
        for key in o_state:
            torch.testing.assert_close(p_state[key], o_state[key], rtol=1e-3, atol=1e-5)


def test_dropout_members_same_distribution_as_ordinary_runs(small_cfg, tmp_path):
    """Dropout masks come from other generators, so runs differ one by one; over seeds the
    final training loss has the same mean (within 4 standard errors), and a different rate
    is told apart by the same test."""
    seeds = range(12)
    opts = ("+reg=dropout", "reg.dropout.p=0.5", "trainer.max_epochs=2", "trainer.checkpoint=false",
            "sched=none", "trainer.early_stopping.patience=0", "trainer.restore_best=false")
    vec = [s["train"]["loss"] for s in fit([small_cfg(*opts, f"seed={i}") for i in seeds], tmp_path)]
    ordinary = [train(small_cfg(*opts, f"seed={i}"), tmp_path / f"o{i}")["train"]["loss"] for i in seeds]
    other = [s["train"]["loss"] for s in fit([small_cfg(*opts, "reg.dropout.p=0.0", f"seed={i}")
                                               for i in seeds], tmp_path / "p0")]

    def close(a: list[float], b: list[float]) -> bool:
        diffs = [x - y for x, y in zip(a, b)]  # paired by seed: the same data and init
        mean = sum(diffs) / len(diffs)
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
        return abs(mean) < 4 * sd / math.sqrt(len(diffs)) + 1e-6

    assert close(vec, ordinary)
    assert not close(other, ordinary)


def test_a_group_trained_twice_writes_the_same_files(small_cfg, tmp_path):
    cfgs = [small_cfg("+reg=dropout_l2", f"seed={i}") for i in range(3)]
    fit(cfgs, tmp_path / "a")
    fit(cfgs, tmp_path / "b")
    for i in range(3):
        a, b = (json.loads((tmp_path / d / f"v{i}" / "summary.json").read_text()) for d in "ab")
        a.pop("wall_time_s"), b.pop("wall_time_s")
        assert a == b
        strip = [[{k: v for k, v in r.items() if k != "epoch_time_s"} for r in rows(tmp_path / d / f"v{i}")]
                 for d in "ab"]
        assert strip[0] == strip[1]
        sa, sb = (checkpoint.load(tmp_path / d / f"v{i}" / "checkpoints" / "best.pt") for d in "ab")
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_diverging_member_is_recorded_and_the_others_are_untouched(small_cfg, tmp_path):
    cfgs = [small_cfg("optim=sgd", "trainer.checkpoint=false"),
            small_cfg("optim=sgd", "optim.lr=1e6", "trainer.checkpoint=false")]
    fit(cfgs, tmp_path)
    for i, cfg in enumerate(cfgs):
        train(cfg, tmp_path / f"o{i}")
    assert_same_run(tmp_path / "v0", tmp_path / "o0", tol=2e-5, acc_tol=2e-5, state_tol=2e-4)
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("v1", "o1"))
    assert set(a) == set(b)
    for key in ("status", "epochs_run", "best_epoch", "train", "gap", "error"):
        assert a[key] == b[key], key
    assert a["status"] == "diverged" and a["error"] == "non-finite loss at epoch 1"
    assert sorted(p.name for p in (tmp_path / "v1").rglob("*")) == \
        sorted(p.name for p in (tmp_path / "o1").rglob("*"))


def _stop_in_epoch(epoch: int, signal: type, monkeypatch) -> None:
    """The stacked trainer's `epoch`-th epoch raises `signal` (Ctrl-C or SIGTERM) as it starts."""
    real, calls = VectorizedTrainer._epoch, []

    def stopping(self, runs):
        calls.append(1)
        if len(calls) == epoch:
            raise signal()
        return real(self, runs)

    monkeypatch.setattr(VectorizedTrainer, "_epoch", stopping)


@pytest.mark.parametrize("signal", [KeyboardInterrupt, Terminated])
def test_an_interrupted_group_records_every_member_as_the_ordinary_trainer_does(signal, small_cfg, tmp_path,
                                                                                monkeypatch):
    _stop_in_epoch(2, signal, monkeypatch)
    with pytest.raises(signal):
        fit([small_cfg("trainer.checkpoint=false"), small_cfg("seed=1", "trainer.checkpoint=false")], tmp_path)
    how = "SIGTERM" if signal is Terminated else "the user (Ctrl-C)"
    for i in (0, 1):
        s = json.loads((tmp_path / f"v{i}" / "summary.json").read_text())
        assert s["status"] == "interrupted" and s["error"] == f"interrupted by {how}"
        assert len(rows(tmp_path / f"v{i}")) == 1


def test_checkpoints_go_by_time_as_one_file_per_chunk(small_cfg, tmp_path, monkeypatch):
    """checkpoint_every_s=0: one shared last.pt write per epoch (never one per member); a period
    longer than the run: one write, at the end. best.pt only when it changed."""
    shared, best = [], []
    real_shared, real_save = checkpoint.save_shared, checkpoint.save
    monkeypatch.setattr(checkpoint, "save_shared", lambda states: (
        shared.append(sorted(s["epoch"] for s in states.values())), real_shared(states)))
    monkeypatch.setattr(checkpoint, "save", lambda path, obj: (best.append(path.parent.parent.name),
                                                               real_save(path, obj)))
    opts = ("trainer.max_epochs=4", "sched=none", "trainer.early_stopping.patience=0")
    fit([small_cfg(*opts, "trainer.checkpoint_every_s=0"), small_cfg(*opts, "seed=1")], tmp_path / "a")
    assert shared == [[1, 1], [2, 2], [3, 3], [4, 4]]
    es = small_cfg()["trainer"]["early_stopping"]
    column = "val_acc" if es["monitor"] == "metric" else "val_loss"
    for i in (0, 1):  # the chunk writes at its shortest period: both members' best.pt when it changed
        stopper = EarlyStopper(0, es["min_delta"], column == "val_acc")
        improved = sum(stopper.update(float(r[column]), e) for e, r in enumerate(rows(tmp_path / "a" / f"v{i}"), 1))
        assert best.count(f"v{i}") == improved
    shared.clear(), best.clear()
    fit([small_cfg(*opts, "trainer.checkpoint_every_s=3600"), small_cfg(*opts, "seed=1")], tmp_path / "b")
    assert shared == [[4, 4]] and sorted(best) == ["v0", "v1"]
    for i in (0, 1):
        assert checkpoint.load_last(tmp_path / "b" / f"v{i}")["epoch"] == 4
        assert (tmp_path / "b" / f"v{i}" / "checkpoints" / "best.pt").exists()
    shared.clear()
    fit([small_cfg(*opts, "trainer.checkpoint=false"), small_cfg(*opts, "seed=1", "trainer.checkpoint=false")],
        tmp_path / "c")
    assert shared == []
    assert sorted(p.name for p in (tmp_path / "c" / "v0" / "checkpoints").iterdir()) == ["best.pt"]


@pytest.mark.parametrize("signal", [KeyboardInterrupt, Terminated])
def test_an_interrupted_chunk_checkpoints_its_last_completed_epoch_and_each_member_resumes(
        signal, small_cfg, tmp_path, monkeypatch):
    """Interrupted in epoch 3 with no timed checkpoint yet: the shared last.pt holds epoch 2 for
    every member, and `trainer.resume=auto` (the ordinary trainer, job by job) recomputes the
    rest and ends with the uninterrupted run's numbers."""
    opts = ("trainer.max_epochs=4", "trainer.checkpoint_every_s=3600")
    # the third member has no schedule: its last.pt's optimiser state is written without a torch
    # optimiser (two parameter groups: decay on weight matrices only)
    cfgs = [small_cfg(*opts), small_cfg(*opts, "seed=1", "+reg=l2"),
            small_cfg(*opts, "seed=2", "+reg=weight_decay", "sched=none")]
    _stop_in_epoch(3, signal, monkeypatch)
    with pytest.raises(signal):
        fit(cfgs, tmp_path)
    monkeypatch.undo()
    for i, cfg in enumerate(cfgs):
        run = tmp_path / f"v{i}"
        assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
        assert checkpoint.load_last(run)["epoch"] == 2 and len(rows(run)) == 2
        resumed = train({**cfg, "trainer": {**cfg["trainer"], "resume": "auto"}}, run)
        assert resumed["status"] == "completed" and resumed["epochs_run"] == 4
        train(cfg, tmp_path / f"o{i}")
        assert_same_run(run, tmp_path / f"o{i}", tol=2e-5, acc_tol=2e-5, state_tol=2e-4)


def test_members_with_the_same_data_share_one_copy_of_it(small_cfg, tmp_path):
    """Data sets are stacked once per distinct (dataset, data_seed): members 0 and 2 train on one
    copy, and each member's batches are rows of its own data set."""
    cfgs = [small_cfg("seed=0"), small_cfg("seed=1"), small_cfg("seed=2", "data_seed=0"),
            small_cfg("seed=3", "+reg=l2", "data_seed=0")]
    (grp,) = group(members_of(cfgs, tmp_path))
    trainer = VectorizedTrainer(grp)
    data = trainer.data
    assert data.u == 2 and data.index.tolist() == [0, 1, 0, 0]
    assert grp[0].x.data is grp[2].x.data is grp[3].x.data and grp[1].x.data is not grp[0].x.data
    assert data.train_x.shape[0] == 2
    n, device = len(grp[0].x.data.train), data.train_x.device  # the GPU where there is one
    perm = torch.stack([torch.randperm(n, device=device) for _ in grp])[:, :16]
    xb, yb = data.batch(data.rows_of(perm))
    for k, m in enumerate(grp):
        assert torch.equal(xb[k], m.x.data.train.x[perm[k]]) and torch.equal(yb[k], m.x.data.train.y[perm[k]])
    assert torch.equal(data.rows(data.eval_y)[3], torch.cat([grp[3].x.data.train.y, grp[3].x.data.val.y]))
    # as the launcher builds them: one copy per data set from the start
    shared: dict = {}
    built = [make_member(i, c, tmp_path / f"s{i}", load_settings(c), shared) for i, c in enumerate(cfgs)]
    assert len(shared) == 2 and built[0].x.data is built[2].x.data is built[3].x.data
