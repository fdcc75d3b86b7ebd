"""Batch transforms for images, run on the device on whole (normalised) batches:
augment (random crop + flip), cutout, mixup, cutmix.

They act through `transform_batch(x, y, generator, cpu_generator)` in training only (evaluation
never calls it): tensors are drawn on x's device from `generator`, the scalars of mixup and cutmix
(λ, the box centre) on the CPU from `cpu_generator`; None is the global RNG of that device, as an
ordinary run draws (a stacked member passes its own generators). The
stack applies them in name order: augment, cutmix, cutout, mixup. Mixup and cutmix return
probability targets of shape (B, C); label smoothing is left to the training loss, which
applies it once to whatever targets it gets: CE with smoothing ε on q is CE on (1−ε)q + ε/C.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from regablate.config.schema import check, nonneg, positive
from regablate.nn import ModelSpec
from regablate.regularisers.base import Regulariser, register


def crop_flip(x: torch.Tensor, pad: int, flip: bool = True, generator: torch.Generator | None = None
              ) -> torch.Tensor:
    """Random crop with `pad` pixels of zero padding, then a random horizontal flip, per sample.

    Zero is the mean pixel after normalisation. Sample i's H×W window starts at
    (dy_i, dx_i) ~ U{0..2·pad}² in the padded (H+2p)×(W+2p) map; a flip reverses its column
    index. Output pixel (r, c) reads padded pixel (r + dy, c' + dx), c' = W−1−c if flipped else
    c: one gather over the flattened map, shared by the channels. Draws from `generator` (on
    x's device), or the global RNG.
    """
    B, C, H, W = x.shape
    cols = torch.arange(W, device=x.device).expand(B, 1, W)
    if flip:
        cols = torch.where(torch.rand(B, 1, 1, device=x.device, generator=generator) < 0.5, W - 1 - cols, cols)
    rows = torch.arange(H, device=x.device).view(1, H, 1)
    xp = x
    if pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad))
        rows = rows + torch.randint(0, 2 * pad + 1, (B, 1, 1), device=x.device, generator=generator)
        cols = cols + torch.randint(0, 2 * pad + 1, (B, 1, 1), device=x.device, generator=generator)
    index = (rows * (W + 2 * pad) + cols).view(B, 1, H * W).expand(B, C, H * W)
    return _format_like(xp.flatten(2).gather(2, index).view(B, C, H, W), x)


def _format_like(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Keep a channels_last input channels_last (gather returns the default layout)."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return out.contiguous(memory_format=torch.channels_last)
    return out


def cutout(x: torch.Tensor, size: int, cy: torch.Tensor, cx: torch.Tensor) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): zero a size×size square centred at (cy_i, cx_i) in each
    sample, rows cy−⌊size/2⌋ … cy−⌊size/2⌋+size−1 (likewise columns), clipped at the border,
    so a centre near the edge removes less. Centres are uniform over the image."""
    H, W = x.shape[2:]
    top, left = cy - size // 2, cx - size // 2
    r = torch.arange(H, device=x.device)
    c = torch.arange(W, device=x.device)
    in_rows = (r >= top[:, None]) & (r < top[:, None] + size)  # (B, H)
    in_cols = (c >= left[:, None]) & (c < left[:, None] + size)  # (B, W)
    hole = in_rows[:, None, :, None] & in_cols[:, None, None, :]
    return x.masked_fill(hole, 0.0)


def mixup(x: torch.Tensor, q: torch.Tensor, lam: float, perm: torch.Tensor):
    """Mixup (Zhang et al. 2018), batch mode: x ← λx + (1−λ)x[π], q ← λq + (1−λ)q[π] with one
    λ ~ Beta(α, α) and one permutation π per batch; q are probability targets (B, C)."""
    return lam * x + (1.0 - lam) * x[perm], lam * q + (1.0 - lam) * q[perm]


def cutmix_box(lam: float, H: int, W: int, cy: int, cx: int) -> tuple[int, int, int, int]:
    """CutMix's box for λ: sides ⌊H√(1−λ)⌋ × ⌊W√(1−λ)⌋ centred at (cy, cx), clipped to the
    image; returns (top, bottom, left, right), bottom/right exclusive."""
    h, w = int(H * math.sqrt(1.0 - lam)), int(W * math.sqrt(1.0 - lam))
    top, left = cy - h // 2, cx - w // 2
    return max(top, 0), min(top + h, H), max(left, 0), min(left + w, W)


def cutmix(x: torch.Tensor, q: torch.Tensor, box: tuple[int, int, int, int], perm: torch.Tensor):
    """CutMix (Yun et al. 2019), batch mode: the box of each image is replaced by the same box
    of image π(i); the targets mix with the *realised* share of pixels, λ = 1 − area/(H·W),
    which differs from the sampled λ when the box was clipped at the border.
    Returns (x, q, λ)."""
    top, bottom, left, right = box
    H, W = x.shape[2:]
    lam = 1.0 - (bottom - top) * (right - left) / (H * W)
    x = x.clone()
    x[:, :, top:bottom, left:right] = x[perm, :, top:bottom, left:right]
    return x, lam * q + (1.0 - lam) * q[perm], lam


def probs(y: torch.Tensor, classes: int) -> torch.Tensor:
    """Class indices (B,) as one-hot probabilities (B, C); probability targets pass through."""
    return y if y.is_floating_point() else F.one_hot(y, classes).float()


@dataclass
class AugmentSettings:
    pad: int = nonneg(4)  # random crop: zero padding on each side (0: no crop)
    flip: bool = True  # random horizontal flip


@register
class Augment(Regulariser):
    """Standard CIFAR augmentation, batched on the device: see `crop_flip`."""

    key, Settings = "augment", AugmentSettings

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None,
                        cpu_generator: torch.Generator | None = None):
        if self.s.pad == 0 and not self.s.flip:
            return x, y
        return crop_flip(x, self.s.pad, self.s.flip, generator), y


@dataclass
class CutoutSettings:
    size: int = positive(16)  # side of the zeroed square (16 for CIFAR-10 in the paper)


@register
class Cutout(Regulariser):
    """Cutout, see `cutout`: one square per image, centre uniform over the image."""

    key, Settings = "cutout", CutoutSettings

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None,
                        cpu_generator: torch.Generator | None = None):
        B, _, H, W = x.shape
        cy = torch.randint(0, H, (B,), device=x.device, generator=generator)
        cx = torch.randint(0, W, (B,), device=x.device, generator=generator)
        return cutout(x, self.s.size, cy, cx), y


@dataclass
class AlphaSettings:
    alpha: float = check(lambda v: v > 0, "must be > 0", 1.0)  # λ ~ Beta(alpha, alpha)


class _Mixing(Regulariser):
    """Shared by mixup and cutmix: class indices become probability targets (B, C)."""

    Settings = AlphaSettings
    classes: int | None = None

    def shape_model(self, spec: ModelSpec) -> None:
        self.classes = spec.out_dim

    def _targets(self, y: torch.Tensor) -> torch.Tensor:
        if self.classes is None and not y.is_floating_point():
            raise RuntimeError(f"reg.{self.key}: number of classes unknown (shape_model not called)")
        return probs(y, self.classes or 0)

    def _lam(self, cpu_generator: torch.Generator | None = None) -> float:
        """λ ~ Beta(α, α), drawn on the CPU as `torch.distributions.Beta(α, α).sample()` draws it
        (the first coordinate of a Dirichlet(α, α) sample), from `cpu_generator` (which
        torch.distributions does not take), or the global RNG: the same number from the same
        RNG state."""
        alpha = torch.full((2,), float(self.s.alpha))
        return torch._sample_dirichlet(alpha, generator=cpu_generator)[0].item()


@register
class Mixup(_Mixing):
    """Mixup, see `mixup`."""

    key = "mixup"

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None,
                        cpu_generator: torch.Generator | None = None):
        perm = torch.randperm(len(x), device=x.device, generator=generator)
        return mixup(x, self._targets(y), self._lam(cpu_generator), perm)


@register
class CutMix(_Mixing):
    """CutMix, see `cutmix`: λ ~ Beta(α, α), box centre uniform over the image, λ corrected."""

    key = "cutmix"

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None,
                        cpu_generator: torch.Generator | None = None):
        H, W = x.shape[2:]
        cy = torch.randint(0, H, (), generator=cpu_generator).item()  # scalars: on the CPU
        cx = torch.randint(0, W, (), generator=cpu_generator).item()
        box = cutmix_box(self._lam(cpu_generator), H, W, cy, cx)
        perm = torch.randperm(len(x), device=x.device, generator=generator)
        x, q, _ = cutmix(x, self._targets(y), box, perm)
        return x, q
