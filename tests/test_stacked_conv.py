"""StackedModule: K conv members (convnet, resnet) as one vmapped model, against the ordinary
modules: forward, gradients, BatchNorm statistics, weight round trips, per-member drop rates."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regablate.models.convnet import ConvNetSettings, build_convnet
from regablate.models.resnet import ResNetSettings, build_resnet
from regablate.models.vit import ViTSettings, build_vit
from regablate.nn import ModelSpec
from regablate.vectorized.functional import skeleton, stack_reason
from regablate.vectorized.stacked_conv import StackedModule

CPU = torch.device("cpu")
SHAPE = (3, 8, 8)
DB = {"p": 0.3, "block_size": 3, "per_channel": True}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def convnet(seed: int, norm: str = "batch", dropout: float = 0.0, **extra) -> nn.Module:
    torch.manual_seed(seed)
    spec = ModelSpec(out_dim=5, norm=norm, dropout=dropout, extra=extra)
    return build_convnet(ConvNetSettings(widths=[4, 6], hidden=[8], norm=norm), SHAPE, 5, spec)


def resnet(seed: int, norm: str = "batch", dropout: float = 0.0, **extra) -> nn.Module:
    torch.manual_seed(seed)
    spec = ModelSpec(out_dim=5, norm=norm, dropout=dropout, extra=extra)
    return build_resnet(ResNetSettings(depth=8, width=4, norm=norm), SHAPE, 5, spec)


def assert_near(got: list[torch.Tensor] | torch.Tensor, want: list[torch.Tensor] | torch.Tensor,
                rel: float = 1e-5) -> None:
    """‖got − want‖ <= rel·‖want‖ over all tensors together: float tolerance of a sum that
    the stacked and the ordinary kernels reduce in different orders."""
    flat = [torch.cat([t.flatten() for t in ([x] if isinstance(x, torch.Tensor) else x)])
            for x in (got, want)]
    err, scale = torch.linalg.vector_norm(flat[0] - flat[1]), torch.linalg.vector_norm(flat[1])
    assert err <= rel * scale, f"relative error {err / scale:.3g} > {rel:g}"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ordinary(model: nn.Module, x: torch.Tensor, train: bool, g: torch.Generator) -> torch.Tensor:
    """The module's own forward, drawing from the global RNG set to `g`'s state (as the ordinary
    CPU runner draws dropout right after init)."""
    torch.set_rng_state(g.get_state())
    return model.train(train)(x)


CASES = {
    "convnet": lambda: convnet(0),
    "convnet-dropout": lambda: convnet(0, dropout=0.4),
    "convnet-spatial-dropblock": lambda: convnet(0, spatial_dropout=0.2, dropblock=DB),
    "convnet-layernorm-dropout": lambda: convnet(0, norm="layer", dropout=0.3, spatial_dropout=0.2),
    "resnet": lambda: resnet(0),
    "resnet-droppath": lambda: resnet(0, droppath=0.5),
    "resnet-all": lambda: resnet(0, dropout=0.3, droppath=0.4, spatial_dropout=0.2,
                                 dropblock={"p": 0.2, "block_size": 2, "per_channel": False}),
    "resnet-nonorm": lambda: resnet(0, norm="none", droppath=0.3),
}


MODES = ["grouped", "vmap"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("train", [True, False])
def test_group_of_one_is_the_ordinary_module(case, train, mode):
    model = CASES[case]()
    stack = StackedModule([model], CPU, mode)
    x = torch.randn(6, *SHAPE)
    g = gen(7)
    want = ordinary(model, x, train, gen(7))
    got = stack.forward(x[None], train, [g])
    assert got.shape == (1, 6, 5)
    assert_near(got[0], want, 5e-6)
    # the member's generator consumed exactly what the module drew from the global RNG
    assert torch.equal(g.get_state(), torch.get_rng_state())
    if train:  # and the regularisers did act: another stream gives another output
        other = stack.forward(x[None], True, [gen(8)])
        active = any(r > 0 for s in stack.sites for r in [s.rate(0)])
        assert active == (not torch.allclose(other, got))


def _three(kind: str, norm: str = "batch") -> list[nn.Module]:
    """Three members: different inits, and rate 0 (no block) / different blocks and rates."""
    if kind == "convnet":
        return [convnet(1, norm), convnet(2, norm, dropout=0.5, spatial_dropout=0.1),
                convnet(3, norm, dropout=0.2, dropblock=DB)]
    return [resnet(1, norm), resnet(2, norm, droppath=0.5, spatial_dropout=0.2),
            resnet(3, norm, dropout=0.3, dropblock=DB)]


def _step(stack: StackedModule, models: list[nn.Module], seeds: list[int]):
    """One training forward/backward both ways on per-member batches; (stacked grads as
    module-shaped tensors per member, the ordinary modules' grads)."""
    k = len(models)
    torch.manual_seed(11)
    x, y = torch.randn(k, 6, *SHAPE), torch.randint(0, 5, (k, 6))
    out = stack.forward(x, True, [gen(s) for s in seeds])
    loss = F.cross_entropy(out.reshape(k * 6, -1), y.reshape(-1), reduction="none").view(k, 6).mean(1)
    g = stack.flat_grad(torch.autograd.grad(loss.sum(), stack.leaves))
    stack.step_done()
    stacked, plain = [], []
    for i, m in enumerate(models):
        m.zero_grad()
        F.cross_entropy(ordinary(m, x[i], True, gen(seeds[i])), y[i]).backward()
        stacked.append(list(stack.unflatten(g[i], m).values()))
        plain.append([p.grad for p in stack.unflatten(g[i], m)])
    return stacked, plain


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["convnet", "resnet"])
def test_gradients_and_batchnorm_statistics_are_each_members_own(kind, mode):
    models = _three(kind)
    stack = StackedModule(models, CPU, mode)
    stacked, plain = _step(stack, models, [5, 6, 7])
    for k in range(3):
        assert_near(stacked[k], plain[k])
    # per-member BatchNorm: member k's running statistics are its module's after the same step
    for k, m in enumerate(models):
        norms = [n for n in m.modules() if isinstance(n, nn.BatchNorm2d | nn.BatchNorm1d)]
        assert len(norms) == len(stack.running) > 0
        for i, n in enumerate(norms):
            torch.testing.assert_close(stack.running[i][0][k], n.running_mean, rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(stack.running[i][1][k], n.running_var, rtol=1e-5, atol=1e-7)
    assert stack.state().batches.tolist() == [1, 1, 1]
    # and evaluation uses each member's own running statistics
    x = torch.randn(3, 4, *SHAPE)
    with torch.no_grad():
        assert_near(stack.forward(x, False), torch.stack([m.eval()(x[k]) for k, m in enumerate(models)]), 5e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind,norm", [("convnet", "layer"), ("resnet", "layer"), ("resnet", "none")])
def test_gradients_with_layer_norm_or_none(kind, norm, mode):
    models = _three(kind, norm)
    stack = StackedModule(models, CPU, mode)
    assert not stack.running
    stacked, plain = _step(stack, models, [5, 6, 7])
    for k in range(3):
        assert_near(stacked[k], plain[k])


@pytest.mark.parametrize("mode", MODES)
def test_without_dropping_the_step_is_deterministic(mode):
    models = [resnet(1), resnet(2), resnet(3)]
    grads = []
    for _ in range(2):
        stack = StackedModule(models, CPU, mode)
        stacked, plain = _step(stack, models, [5, 6, 7])
        grads.append(stacked)
        for k in range(3):
            assert_near(stacked[k], plain[k])
    for a, b in zip(sum(grads[0], []), sum(grads[1], []), strict=True):
        assert torch.equal(a, b)


def test_theta_layout_weights_first_and_views():
    models = _three("resnet")
    stack = StackedModule(models, CPU)
    m = models[1]
    weights = [p for p in m.parameters() if p.ndim >= 2]
    assert stack.n_matrix == sum(p.numel() for p in weights)
    assert stack.theta.shape == (3, sum(p.numel() for p in m.parameters()))
    # the prefix θ[:, :P_w] is exactly the member's conv kernels and Linear weights
    row = stack.theta[1, : stack.n_matrix]
    torch.testing.assert_close(row, torch.cat([p.detach().flatten() for p in weights]))
    for leaf in stack.leaves:  # views of θ: an update of θ is an update of the leaves
        assert leaf.requires_grad and leaf.untyped_storage().data_ptr() == stack.theta.untyped_storage().data_ptr()
    # matrices: unit j's incoming weights are wm[:, :, j], so the trainer's max-norm is renorm
    c = 0.05
    with torch.no_grad():
        for wm in stack.matrices:
            norm = torch.linalg.vector_norm(wm, dim=1, keepdim=True)
            wm.mul_(torch.where(norm > c, c / (norm + 1e-7), torch.ones_like(norm)))
    stack.export_member(1, m)
    for w, w0 in zip([p for p in m.parameters() if p.ndim >= 2], weights, strict=True):
        torch.testing.assert_close(w, torch.renorm(w0, 2, 0, c), rtol=1e-5, atol=1e-7)


def test_load_export_round_trip_keeps_state_dict_keys():
    models = _three("convnet")
    before = [{n: t.clone() for n, t in m.state_dict().items()} for m in models]
    stack = StackedModule(models, CPU)
    _step(stack, models, [1, 2, 3])  # moves the statistics of both
    snapshot = stack.state().clone()
    fresh = _three("convnet")
    for k, m in enumerate(fresh):
        with torch.no_grad():
            for p in m.parameters():
                p.normal_()
        stack.export_member(k, m, snapshot)
        sd = m.state_dict()
        assert list(sd) == list(before[k])  # the member's own keys, in order
        for name, t in models[k].state_dict().items():  # the ordinary module after the same step
            tol = {} if t.dtype == torch.long else {"rtol": 1e-5, "atol": 1e-7}
            torch.testing.assert_close(sd[name], t, **tol)
        assert int(sd[next(n for n in sd if n.endswith("num_batches_tracked"))]) == 1
    # back: a new stack loaded from the exported modules holds the same state
    again = StackedModule(fresh, CPU)
    assert torch.equal(again.theta, snapshot.theta)
    for i, (mean, var) in snapshot.running.items():
        assert torch.equal(again.running[i][0], mean) and torch.equal(again.running[i][1], var)
    # load_state / copy_rows move whole members
    with torch.no_grad():
        stack.theta.zero_()
    stack.load_state(snapshot)
    assert torch.equal(stack.theta, snapshot.theta)


def _rates(masks: torch.Tensor) -> list[float]:
    return [(row == 0).double().mean().item() for row in masks]


def test_members_drop_at_their_own_rates():
    members = [resnet(0), resnet(1, droppath=0.2, spatial_dropout=0.1),
               resnet(2, droppath=0.6, spatial_dropout=0.4, dropblock=DB)]
    stack = StackedModule(members, CPU)
    active, masks = stack.masks(2000, SHAPE, [gen(1), gen(2), gen(3)])
    by_kind: dict[str, list] = {}
    for site, m in zip(active, masks, strict=True):
        by_kind.setdefault(site.kind, []).append(m)
    # dropout2d: one Bernoulli per sample and channel; 2,000 × 4..16 draws per member
    for m in by_kind["dropout2d"]:
        assert _rates(m) == pytest.approx([0.0, 0.1, 0.4], abs=0.03)
    # DropPath: block l of L = 3 drops with p·l/L
    for level, m in enumerate(by_kind["droppath"], 1):
        assert _rates(m) == pytest.approx([0.0, 0.2 * level / 3, 0.6 * level / 3], abs=0.04)
        assert m.shape[2:] == (1, 1, 1)
    # DropBlock (member 2 only): about p of each map, kept units rescaled to keep the mean
    for m in by_kind["dropblock"]:
        rates = _rates(m)
        assert rates[:2] == [0.0, 0.0] and rates[2] == pytest.approx(DB["p"], abs=0.1)
        assert m[2].mean().item() == pytest.approx(1.0, rel=1e-5)
    # a member's masks are its own: the same alone as in the group
    alone = StackedModule([members[2]], CPU)
    _, solo = alone.masks(2000, SHAPE, [gen(3)])
    for a, b in zip(solo, masks, strict=True):
        assert torch.equal(a[0], b[2])
    # rates are read from the members' blocks at each forward (DropBlock's ramp sets them there)
    for blk in members[2].modules():
        if type(blk).__name__ == "DropBlock2d":
            blk.drop_prob = 0.0
    active, _ = stack.masks(8, SHAPE, [gen(1), gen(2), gen(3)])
    assert "dropblock" not in {s.kind for s in active}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["convnet", "resnet"])
def test_shared_batch_is_the_same_batch_for_every_member(kind, mode):
    stack = StackedModule(_three(kind), CPU, mode)
    x = torch.randn(4, *SHAPE)
    for train in (False, True):
        shared = stack.forward(x, train, [gen(1), gen(2), gen(3)], shared=True)
        copies = stack.forward(x.expand(3, *x.shape), train, [gen(1), gen(2), gen(3)])
        assert shared.shape == (3, 4, 5)
        assert_near(shared, copies, 5e-6)


@pytest.mark.parametrize("kind", ["convnet", "resnet"])
def test_grouped_and_vmap_layouts_agree(kind):
    """The grouped layout (members side by side in the channels) computes what vmap does."""
    models = _three(kind)
    a, b = StackedModule(models, CPU, "grouped"), StackedModule(models, CPU, "vmap")
    x = torch.randn(3, 4, *SHAPE)
    for train in (True, False):
        out = [s.forward(x, train, [gen(1), gen(2), gen(3)]) for s in (a, b)]
        assert_near(out[0], out[1])
        ga, gb = (s.flat_grad(torch.autograd.grad(o.square().sum(), s.leaves)) for s, o in zip((a, b), out))
        assert_near(ga, gb)
    for i in a.running:
        torch.testing.assert_close(a.running[i][0], b.running[i][0])
        torch.testing.assert_close(a.running[i][1], b.running[i][1])


def test_stack_reason_says_what_cannot_stack():
    assert stack_reason(convnet(0)) is None and stack_reason(resnet(0, droppath=0.1)) is None

    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(4, 8, batch_first=True)
            self.out = nn.Linear(8, 2)

    reason = stack_reason(Recurrent())
    assert "LSTM at 'rnn'" in reason and "recurrent" in reason
    spec = ModelSpec(out_dim=5, norm="batch", dropconnect=0.3)
    dropconnect = build_convnet(ConvNetSettings(widths=[4], hidden=[8]), SHAPE, 5, spec)
    assert "DropConnectLinear" in stack_reason(dropconnect)
    with pytest.raises(ValueError, match="LSTM"):
        StackedModule([Recurrent()], CPU)
    vit = build_vit(ViTSettings(width=8, depth=1, heads=2), SHAPE, 5, ModelSpec(out_dim=5))
    assert "Attention at 'blocks.0.attn' has no stacked form" in stack_reason(vit)
    grouped_conv = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 2))
    assert "ungrouped" in stack_reason(grouped_conv)
    # members must share the architecture; their regulariser blocks may differ
    assert skeleton(convnet(0)) == skeleton(convnet(1, dropout=0.3, spatial_dropout=0.2, dropblock=DB))
    narrow = build_convnet(ConvNetSettings(widths=[4, 4], hidden=[8]), SHAPE, 5, ModelSpec(out_dim=5, norm="batch"))
    with pytest.raises(ValueError, match="architecture"):
        StackedModule([convnet(0), narrow], CPU)


def _stacked_grad(stack: StackedModule, x: torch.Tensor, y: torch.Tensor,
                  gens: list[torch.Generator]) -> torch.Tensor:
    """∂(Σ_k mean cross-entropy_k)/∂θ of one stacked training forward on (K, B, ...) inputs."""
    out = stack.forward(x, True, gens)
    k, b = y.shape
    loss = F.cross_entropy(out.reshape(k * b, -1), y.reshape(-1), reduction="none").view(k, b).mean(1)
    return stack.flat_grad(torch.autograd.grad(loss.sum(), stack.leaves))


def _ordinary_backward(m: nn.Module, x: torch.Tensor, y: torch.Tensor, stream: torch.Generator) -> None:
    """The ordinary module's gradients in .grad, its masks drawn from the global RNG set to `stream`
    (whose state then moves on as the draws did)."""
    torch.set_rng_state(stream.get_state())
    m.zero_grad()
    F.cross_entropy(m.train()(x), y).backward()
    stream.set_state(torch.get_rng_state())


@pytest.mark.parametrize("mode", MODES)
def test_a_few_sgd_steps_follow_each_members_ordinary_trajectory(mode):
    """Three steps of plain SGD, stacked and member by member: weights, BatchNorm statistics
    and the members' generators (dropout streams) stay together."""
    models = [resnet(1, droppath=0.5, spatial_dropout=0.2), resnet(2)]
    stack = StackedModule(models, CPU, mode)
    gens, streams = [gen(3), gen(4)], [gen(3), gen(4)]
    lr = 0.1
    for step in range(3):
        torch.manual_seed(100 + step)
        x, y = torch.randn(2, 6, *SHAPE), torch.randint(0, 5, (2, 6))
        g = _stacked_grad(stack, x, y, gens)
        with torch.no_grad():
            stack.theta.sub_(lr * g)
        stack.step_done()
        for k, m in enumerate(models):
            _ordinary_backward(m, x[k], y[k], streams[k])
            with torch.no_grad():
                for p in m.parameters():
                    p.sub_(lr * p.grad)
    for k, m in enumerate(models):
        assert torch.equal(gens[k].get_state(), streams[k].get_state())
        mine = resnet(9)
        stack.export_member(k, mine)
        assert_near(list(mine.parameters()), list(m.parameters()))
        assert_near([b for b in mine.buffers() if b.is_floating_point()],
                    [b for b in m.buffers() if b.is_floating_point()])
        assert [int(b) for b in mine.buffers() if not b.is_floating_point()] == \
            [int(b) for b in m.buffers() if not b.is_floating_point()]


def test_without_generators_members_draw_from_the_global_rng():
    model = resnet(0, droppath=0.5, spatial_dropout=0.3)
    stack = StackedModule([model], CPU)
    x = torch.randn(6, *SHAPE)
    want = ordinary(model, x, True, gen(5))
    torch.manual_seed(5)
    assert_near(stack.forward(x[None], True)[0], want, 5e-6)


@pytest.mark.parametrize("shared", [False, True])
def test_evaluation_in_slices_is_evaluation_of_the_whole_batch(monkeypatch, shared):
    import regablate.vectorized.stacked_conv as stacked_conv

    stack = StackedModule(_three("resnet"), CPU)
    x = torch.randn(7, *SHAPE) if shared else torch.randn(3, 7, *SHAPE)
    with torch.no_grad():
        whole = stack.forward(x, False, shared=shared)
        monkeypatch.setattr(stacked_conv, "CPU_EVAL_SAMPLES", 6)  # slices of 2 samples per member
        sliced = stack.forward(x, False, shared=shared)
    assert sliced.shape == whole.shape == (3, 7, 5)
    assert_near(sliced, whole, 5e-6)


def _train_both(stack: StackedModule, models: list[nn.Module], batches: list[int], lr: float,
                momentum: float, seeds: list[int]) -> None:
    """SGD with momentum, stacked and member by member, over per-member batches of the sizes
    `batches` (train-mode BatchNorm, the members' drop masks from their own streams)."""
    k = len(models)
    gens, streams = [gen(s) for s in seeds], [gen(s) for s in seeds]
    buf, bufs = torch.zeros_like(stack.theta), [[torch.zeros_like(p) for p in m.parameters()] for m in models]
    for step, b in enumerate(batches):
        torch.manual_seed(200 + step)
        x = torch.randn(k, b, *SHAPE, dtype=stack.dtype)
        y = torch.randint(0, 5, (k, b))
        g = _stacked_grad(stack, x, y, gens)
        with torch.no_grad():
            buf.mul_(momentum).add_(g)
            stack.theta.sub_(lr * buf)
        stack.step_done()
        for i, m in enumerate(models):
            _ordinary_backward(m, x[i], y[i], streams[i])
            with torch.no_grad():
                for p, v in zip(m.parameters(), bufs[i], strict=True):
                    v.mul_(momentum).add_(p.grad)
                    p.sub_(lr * v)
    for i in range(k):
        assert torch.equal(gens[i].get_state(), streams[i].get_state())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["convnet", "resnet"])
def test_many_steps_with_batchnorm_follow_the_ordinary_module_in_float64(kind, mode):
    """Twelve SGD steps (momentum 0.9) over batches of 8, 8, 2 (train-mode BatchNorm: batch
    statistics, running mean and unbiased running variance, num_batches_tracked), then
    evaluation on the running statistics: a group of one, and each member of a group of three
    (with dropout, spatial dropout, DropBlock, DropPath), against its ordinary module.

    In float64, so that what is compared is the algorithm and not the rounding: with BatchNorm
    this training amplifies rounding quickly (a max-pool window whose two largest inputs are
    within rounding of each other picks the other one, and BatchNorm spreads the changed
    gradient over the whole batch). In float32 the same twelve steps leave the convnet's
    weights 1e-4 and its outputs 6e-4 (relative) away from the ordinary module's; the ordinary
    runner on the fake CIFAR-10 perturbed by one ulp in one weight moves its epoch-3 loss by
    3e-3 to 6e-3, as much as the stacked model differs from it. In float64 the errors are
    1e-15 to 5e-13, i.e. they scale with the precision: 1e-10 leaves room for rounding only,
    while a BatchNorm momentum off by 1% (3e-3) or eps off by 0.1% (3e-8) fails."""
    models = [m.double() for m in _three(kind)]
    alone = copy.deepcopy(models[0])
    for group in ([alone], models):
        stack = StackedModule(group, CPU, mode)
        assert stack.theta.dtype == torch.float64
        _train_both(stack, group, [8, 8, 2] * 4, lr=0.1, momentum=0.9, seeds=[3, 4, 5][: len(group)])
        for k, m in enumerate(group):
            mine = (convnet if kind == "convnet" else resnet)(9).double()
            stack.export_member(k, mine)
            assert_near(list(mine.parameters()), list(m.parameters()), 1e-10)
            floats = [(a, b) for a, b in zip(mine.buffers(), m.buffers(), strict=True) if b.is_floating_point()]
            assert floats and all(a.dtype == torch.float64 for a, _ in floats)
            assert_near([a for a, _ in floats], [b for _, b in floats], 1e-10)
            assert [int(b) for b in mine.buffers() if not b.is_floating_point()] == \
                [int(b) for b in m.buffers() if not b.is_floating_point()] == [12] * len(stack.running)
        # evaluation on each member's running statistics (K = 3: in slices of 42 samples)
        x = torch.randn(len(group), 100, *SHAPE, dtype=torch.float64)
        with torch.no_grad():
            want = torch.stack([m.eval()(x[k]) for k, m in enumerate(group)])
            assert_near(stack.forward(x, False), want, 1e-10)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
@pytest.mark.parametrize("kind", ["convnet", "resnet"])
def test_under_bf16_autocast_each_member_is_its_own_module_under_it(kind, device):
    """`trainer.amp` on stacked conv members: the stacked forward under bf16 autocast and its
    gradients through `backward` (∂L/∂out of the float32 loss, cast to the bf16 output as autograd
    casts it through `model(x).float()`) agree with each member's own module under the same
    autocast, within bf16's rounding. CPU autocast stands in for CUDA's here."""
    dev = torch.device(device)
    models = [(convnet if kind == "convnet" else resnet)(seed).to(dev) for seed in (1, 2, 3)]  # nothing drops
    stack = StackedModule(models, dev)
    torch.manual_seed(11)
    x, y = torch.randn(3, 6, *SHAPE, device=dev), torch.randint(0, 5, (3, 6), device=dev)
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        out = stack.forward(x, True, None)
    assert out.dtype == torch.bfloat16
    logits = out.float().detach().requires_grad_()
    loss = F.cross_entropy(logits.reshape(18, -1), y.reshape(-1), reduction="none").view(3, 6).mean(1)
    g = stack.backward(torch.autograd.grad(loss.sum(), logits)[0])
    assert g.dtype == torch.float32
    for k, m in enumerate(models):
        m.zero_grad()
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            want = m.train()(x[k])
        F.cross_entropy(want.float(), y[k]).backward()
        # on the CPU they agree to 1e-7; in float32 the same gradients differ from these by 5-20 %
        assert_near(out[k].float(), want.float(), 1e-2)
        assert_near(list(stack.unflatten(g[k], m).values()), [p.grad for p in stack.unflatten(g[k], m)], 1e-2)


@pytest.mark.parametrize("case", CASES)
def test_a_group_of_one_under_bf16_autocast_is_the_ordinary_module_under_it(case):
    """Under `trainer.amp` a member's dropout, spatial dropout, DropBlock and DropPath masks
    multiply in the activation's dtype, as its own blocks do: the stacked member is exactly its
    ordinary module without DropPath or LayerNorm (a float32 DropBlock mask once promoted every
    later activation to float32: 3e-3 off), and within bf16's rounding with them (DropPath rounds
    x·m/(1−p) once where the block rounds twice)."""
    model = CASES[case]()
    stack = StackedModule([model], CPU)
    x = torch.randn(6, *SHAPE)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = ordinary(model, x, True, gen(7))
        got = stack.forward(x[None], True, [gen(7)])
    assert got.dtype == want.dtype == torch.bfloat16
    exact = case in ("convnet", "convnet-dropout", "convnet-spatial-dropblock", "resnet")
    assert_near(got[0].float(), want.float(), 1e-6 if exact else 2e-2)
