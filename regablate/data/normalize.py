"""Images as the network sees them: uint8 pixels normalised per channel with the training
split's statistics (shared by CIFAR-10 and the user's image folders)."""

from __future__ import annotations

import torch


class Normalize:
    """uint8 (B, 3, H, W) pixels -> float32 (x − mean) / std per channel, on x's device;
    channels_last on CUDA. Already-float inputs are taken as pixel values (0..255) too."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean, self.inv_std = mean.view(1, -1, 1, 1).float(), (1 / std).view(1, -1, 1, 1).float()
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device not in self._on:
            self._on[x.device] = (self.mean.to(x.device), self.inv_std.to(x.device))
        mean, inv_std = self._on[x.device]
        out = (x.float() - mean) * inv_std
        return out.contiguous(memory_format=torch.channels_last) if x.is_cuda else out


def channel_stats(x: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (pixel units) of uint8 images, accumulated in float64."""
    s = torch.zeros(x.shape[1], dtype=torch.float64)
    s2 = torch.zeros_like(s)
    for i in range(0, len(x), chunk):
        v = x[i : i + chunk].double()
        s += v.sum((0, 2, 3))
        s2 += v.pow(2).sum((0, 2, 3))
    n = len(x) * x.shape[2] * x.shape[3]
    mean = s / n
    return mean, (s2 / n - mean**2).clamp_min(1e-12).sqrt()
