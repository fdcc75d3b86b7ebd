"""How many inputs one forward pass takes when a whole split is measured (evaluation, MC dropout)."""

from __future__ import annotations

import math

import torch

# Image inputs on the CPU go through the model in chunks of about this many input values (256
# CIFAR images), whatever `trainer.eval_batch_size` allows: at 4,096 images a chunk, each of a
# conv net's feature maps is hundreds of MB to a GB and the evaluation is memory-bound. Measured
# on a 2-core Xeon (one thread, CPU time, steady): resnet20 evaluates 402 images/s in chunks of
# 1,024 and 695 in chunks of 256. Smaller chunks are faster still on one quiet thread (1,016
# images/s at 32) but lose with two threads on a busy machine, where each op's thread barrier
# waits for a descheduled thread; 256 is the steady middle.
CPU_IMAGE_CHUNK_VALUES = 2**20


def chunk_size(x: torch.Tensor, batch_size: int) -> int:
    """Inputs per forward pass when evaluating `x`: `batch_size` (`trainer.eval_batch_size`), or
    fewer for images (N, C, H, W) on the CPU: the largest power of two with at most
    CPU_IMAGE_CHUNK_VALUES input values per chunk (at least 8 images)."""
    if x.device.type != "cpu" or x.ndim != 4:
        return batch_size
    fits = max(8, CPU_IMAGE_CHUNK_VALUES // max(math.prod(x.shape[1:]), 1))
    return min(batch_size, 1 << (fits.bit_length() - 1))
