"""The maths of the batch transforms: crop + flip, cutout, mixup, cutmix, and label smoothing
on mixed targets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from regablate.nn import ModelSpec
from regablate.regularisers import build_stack
from regablate.regularisers.mixing import crop_flip, cutmix, cutmix_box, cutout, mixup, probs
from regablate.training.experiment import training_loss


def test_crop_flip_takes_a_window_of_the_padded_image():
    torch.manual_seed(0)
    x = torch.arange(400 * 2 * 6 * 6, dtype=torch.float32).view(400, 2, 6, 6) + 1
    out = crop_flip(x, pad=2)
    xp = F.pad(x, (2, 2, 2, 2))
    seen = set()
    windows = {(dy, dx, f): xp[:, :, dy:dy + 6, dx:dx + 6].flip(3) if f else xp[:, :, dy:dy + 6, dx:dx + 6]
               for dy in range(5) for dx in range(5) for f in (0, 1)}
    for i in range(len(x)):
        found = [k for k, w in windows.items() if torch.equal(out[i], w[i])]
        assert len(found) == 1
        seen.add(found[0])
    assert len(seen) == 50  # every offset, flipped or not, occurs


def test_crop_flip_without_padding_only_flips_and_keeps_layout():
    torch.manual_seed(1)
    x = torch.randn(64, 3, 8, 8)
    out = crop_flip(x, pad=0)
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(3)).flatten(1).all(1)
    assert (same | flipped).all() and 10 < flipped.sum() < 54
    cl = x.contiguous(memory_format=torch.channels_last)
    assert crop_flip(cl, pad=4).is_contiguous(memory_format=torch.channels_last)


def test_cutout_zeroes_the_square_around_the_centre():
    x = torch.ones(3, 2, 12, 12)
    out = cutout(x, 4, cy=torch.tensor([6, 0, 11]), cx=torch.tensor([5, 0, 3]))
    hole = out == 0
    assert torch.equal(hole[:, 0], hole[:, 1])  # the same square in every channel
    expect = torch.zeros(3, 12, 12, dtype=torch.bool)
    expect[0, 4:8, 3:7] = True  # rows 6-2 .. 6+1, columns 5-2 .. 5+1
    expect[1, 0:2, 0:2] = True  # clipped at the top-left corner
    expect[2, 9:12, 1:5] = True  # clipped at the bottom
    assert torch.equal(hole[:, 0], expect)


def test_mixup_mixes_inputs_and_targets_with_one_lambda():
    x, y = torch.randn(6, 3, 4, 4), torch.tensor([0, 1, 2, 3, 4, 5])
    perm = torch.tensor([5, 4, 3, 2, 1, 0])
    xm, q = mixup(x, probs(y, 7), 0.3, perm)
    assert torch.allclose(xm, 0.3 * x + 0.7 * x[perm])
    expect = 0.3 * F.one_hot(y, 7) + 0.7 * F.one_hot(y[perm], 7)
    assert torch.allclose(q, expect.float()) and torch.allclose(q.sum(1), torch.ones(6))


def test_mixup_regulariser_returns_probability_targets():
    torch.manual_seed(0)
    stack = build_stack({"mixup": {"alpha": 0.4}})
    stack.model_spec(ModelSpec(out_dim=10))  # classes = 10
    y = torch.randint(0, 10, (32,))
    _, q = stack.transform_batch(torch.randn(32, 3, 4, 4), y)
    assert q.shape == (32, 10) and torch.allclose(q.sum(1), torch.ones(32))
    assert (q.gather(1, y[:, None]) > 0).all()  # the own class keeps its weight


def test_label_smoothing_is_applied_once_to_mixed_targets():
    torch.manual_seed(0)
    out, eps, C = torch.randn(8, 5), 0.1, 5
    q = mixup(torch.zeros(8, 1), probs(torch.arange(8) % C, C), 0.6, torch.randperm(8))[1]
    loss = training_loss("classification", eps)(out, q)
    once = -(((1 - eps) * q + eps / C) * out.log_softmax(1)).sum(1).mean()
    q2 = (1 - eps) * q + eps / C
    twice = -(((1 - eps) * q2 + eps / C) * out.log_softmax(1)).sum(1).mean()
    assert loss.item() == pytest.approx(once.item(), rel=1e-6)
    assert loss.item() != pytest.approx(twice.item(), rel=1e-6)


def test_cutmix_box_and_lambda_correction():
    assert cutmix_box(0.75, 32, 32, 16, 16) == (8, 24, 8, 24)  # 16x16 = 1/4 of the image
    assert cutmix_box(0.75, 32, 32, 2, 30) == (0, 10, 22, 32)  # clipped: 10x10
    x = torch.randn(4, 3, 32, 32)
    y = probs(torch.tensor([0, 1, 2, 3]), 4)
    perm = torch.tensor([1, 2, 3, 0])
    xm, q, lam = cutmix(x, y, (0, 10, 22, 32), perm)
    assert lam == pytest.approx(1 - 100 / 1024)  # not the sampled 0.75
    from_partner = (xm == x[perm]) & (xm != x)
    assert from_partner.double().mean().item() == pytest.approx(1 - lam, abs=1e-3)
    assert torch.equal(xm[:, :, 0:10, 22:32], x[perm][:, :, 0:10, 22:32])
    assert torch.allclose(q, lam * y + (1 - lam) * y[perm])


def test_cutmix_then_mixup_keep_probability_targets():
    torch.manual_seed(4)
    stack = build_stack({"cutmix": {}, "mixup": {}, "cutout": {"size": 8}, "augment": {}})
    stack.model_spec(ModelSpec(out_dim=10))
    x, q = stack.transform_batch(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))
    assert x.shape == (16, 3, 32, 32) and q.shape == (16, 10)
    assert torch.allclose(q.sum(1), torch.ones(16)) and (q >= 0).all()


def test_transforms_that_do_nothing():
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    reg = build_stack({"augment": {"pad": 0, "flip": False}})["augment"]
    assert reg.transform_batch(x, y)[0] is x
    assert torch.equal(cutout(x, 3, torch.tensor([-10] * 4), torch.tensor([-10] * 4)), x)
    xm, q, lam = cutmix(x, probs(y, 4), cutmix_box(1.0, 8, 8, 4, 4), torch.tensor([1, 2, 3, 0]))
    assert lam == 1.0 and torch.equal(xm, x) and torch.equal(q, probs(y, 4))


TRANSFORMS = [{"augment": {}}, {"cutout": {"size": 2}}, {"mixup": {"alpha": 0.4}}, {"cutmix": {"alpha": 1.0}}]


@pytest.mark.parametrize("names", TRANSFORMS)
def test_a_generator_gives_the_global_rngs_draws_and_leaves_it_alone(names):
    """A stacked member's transforms draw from its own generator: the same numbers the global RNG
    gives from the same state (so a member alone is its ordinary run), the global RNG untouched.
    Mixup's λ is still Beta(α, α) as torch.distributions draws it."""
    stack = build_stack(names)
    stack.model_spec(ModelSpec(out_dim=10))
    x, y = torch.randn(16, 3, 6, 6), torch.randint(0, 10, (16,))
    torch.manual_seed(7)
    want = stack.transform_batch(x, y)
    before = torch.get_rng_state()
    g = torch.Generator().manual_seed(7)  # on the CPU one generator for both, as the global RNG
    got = stack.transform_batch(x, y, g, g)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert not torch.equal(got[0], x)


def test_mixup_lambda_from_a_generator_is_beta_distributed():
    from scipy import stats

    stack = build_stack({"mixup": {"alpha": 0.4}})
    g = torch.Generator().manual_seed(0)
    lams = [stack.regs[0]._lam(g) for _ in range(2000)]  # drawn as torch.distributions.Beta draws
    assert stats.kstest(lams, stats.beta(0.4, 0.4).cdf).pvalue > 0.01


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("names", TRANSFORMS)
def test_transforms_draw_from_a_cuda_generator_as_from_the_global_rngs(names):
    """On the GPU a stacked member's tensors come from a CUDA generator and mixup's and cutmix's
    scalars from a CPU one: the numbers the global CUDA and CPU RNGs give from the same states,
    neither global RNG moved."""
    stack = build_stack(names)
    stack.model_spec(ModelSpec(out_dim=10))
    x, y = torch.randn(16, 3, 6, 6, device="cuda"), torch.randint(0, 10, (16,), device="cuda")
    torch.manual_seed(3)  # both global RNGs
    want = stack.transform_batch(x, y)
    before = torch.get_rng_state(), torch.cuda.get_rng_state()
    got = stack.transform_batch(x, y, torch.Generator("cuda").manual_seed(3), torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), before[0]) and torch.equal(torch.cuda.get_rng_state(), before[1])
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and got[0].is_cuda


def test_a_cutout_that_hides_the_whole_image_from_every_centre_is_refused(tmp_path):
    """On an HxH image a square of side 2H-1 covers every pixel wherever it is centred (every
    training image blank); 2H-2 leaves some pixels for a centre at the border."""
    from conftest import compose_cfg, write_fake_cifar10
    from regablate.errors import ConfigError
    from regablate.training.experiment import build_experiment
    from regablate.training.settings import load_settings

    x = torch.ones(64, 1, 8, 8)
    cy = torch.arange(64) // 8
    cx = torch.arange(64) % 8
    assert cutout(x, 15, cy, cx).sum() == 0 and cutout(x, 14, cy, cx).sum() > 0
    root = write_fake_cifar10(tmp_path / "c")
    base = ("dataset=cifar10", f"dataset.root={root}", "model=convnet", "+reg=cutout")
    with pytest.raises(ConfigError, match=r"reg.cutout.size=63: covers the whole 32x32 image wherever it is "
                                          r"centred \(every training image blank\); use a size below 63"):
        build_experiment(load_settings(compose_cfg(*base, "reg.cutout.size=63")))
    build_experiment(load_settings(compose_cfg(*base, "reg.cutout.size=62")))  # a corner stays
    crop = (*base[:3], "+reg=augment")  # a crop padded past the image's side: allocations, not augmentation
    with pytest.raises(ConfigError, match=r"reg.augment.pad=33: must be at most the image's side, 32"):
        build_experiment(load_settings(compose_cfg(*crop, "reg.augment.pad=33")))
    build_experiment(load_settings(compose_cfg(*crop, "reg.augment.pad=32")))
