"""ViT training step time: regablate (`model=vit '+reg=[droppath,dropout]'` with attention,
projection and embedding dropout 0.1) against a plain hand-written PyTorch loop of the same model.

Both train the same architecture (patch embedding, class token, learned position embeddings,
pre-norm blocks with written-out attention, DropPath rising linearly with depth) on the same
CIFAR-shaped random uint8 images (a generated cache, so no data set is needed), AdamW, batch 64,
one torch thread, and per epoch evaluate the train and validation splits in eval mode (as the
trainer does, for the gap curve); at the end train/val/test. Figures,
each the median of alternating repeats: ms per training step (whole run time / training steps,
evaluation and regablate's files included) and the ratio;  target <= 1.15x.

    python benchmarks/bench_vit.py [--repeats 3] [--epochs 2] [--n-train 1000]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

SIZE = {"patch": 4, "width": 64, "depth": 4, "heads": 4, "mlp_ratio": 2.0}
P = 0.1  # attention, projection, embedding dropout and the last block's DropPath rate


class PlainBlock(nn.Module):
    def __init__(self, d: int, heads: int, hidden: int, dp: float):
        super().__init__()
        self.heads, self.dp = heads, dp
        self.n1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.n2, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, hidden), nn.Linear(hidden, d)

    def drop_path(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.dp == 0:
            return x
        mask = torch.empty(x.shape[0], 1, 1).bernoulli_(1 - self.dp)
        return x * mask / (1 - self.dp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(self.n1(x)).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        a = F.dropout((q @ k.transpose(-2, -1) * (C // self.heads) ** -0.5).softmax(-1), P, self.training)
        a = F.dropout(self.proj((a @ v).transpose(1, 2).reshape(B, N, C)), P, self.training)
        x = x + self.drop_path(a)
        h = F.dropout(F.gelu(self.fc1(self.n2(x))), P, self.training)
        return x + self.drop_path(F.dropout(self.fc2(h), P, self.training))


class PlainViT(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        d, n = SIZE["width"], (32 // SIZE["patch"]) ** 2
        self.embed = nn.Conv2d(3, d, SIZE["patch"], stride=SIZE["patch"])
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, n + 1, d) * 0.02)
        depth = SIZE["depth"]
        self.blocks = nn.Sequential(*(PlainBlock(d, SIZE["heads"], int(d * SIZE["mlp_ratio"]), P * (i + 1) / depth)
                                      for i in range(depth)))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1)
        x = self.blocks(F.dropout(x + self.pos, P, self.training))
        return self.head(self.norm(x)[:, 0])


def make_cache(root: Path, n: int) -> None:
    from regablate.data.cifar10 import CLASSES

    g = torch.Generator().manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    torch.save({"train_x": torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                "train_y": torch.arange(n) % 10,
                "test_x": torch.randint(0, 256, (n // 2, 3, 32, 32), dtype=torch.uint8, generator=g),
                "test_y": torch.arange(n // 2) % 10, "classes": CLASSES, "source": "bench",
                "kind": "bench", "verified": False}, root / "cifar10.pt")


def overrides(root: Path, epochs: int, n_train: int) -> list[str]:
    return ["dataset=cifar10", f"dataset.root={root}", f"dataset.n_train={n_train}", "dataset.n_ood=0",
            "model=vit", f"model.patch_size={SIZE['patch']}", f"model.width={SIZE['width']}",
            f"model.depth={SIZE['depth']}", f"model.heads={SIZE['heads']}",
            f"model.mlp_ratio={SIZE['mlp_ratio']}", "+reg=[droppath,dropout]", "reg.dropout.p=0",
            f"reg.dropout.attn={P}", f"reg.dropout.proj={P}", f"reg.dropout.embed={P}",
            f"reg.droppath.p={P}", "sched=none", f"trainer.max_epochs={epochs}",
            "trainer.batch_size=64", "trainer.early_stopping.patience=0", "trainer.restore_best=false",
            "trainer.progress=none", "trainer.tensorboard=false", "trainer.checkpoint=false",
            "trainer.threads=1", "trainer.device=cpu", "eval.histogram_every=0"]


def ours(root: Path, epochs: int, n_train: int, out: Path) -> float:
    from regablate.config.compose import compose_config
    from regablate.training.loop import train

    summary = train(compose_config(overrides(root, epochs, n_train)), out)
    assert summary["status"] == "completed", summary.get("error")
    return summary["wall_time_s"]


def plain(root: Path, epochs: int, n_train: int) -> float:
    """The same work by hand: normalise, train, evaluate train and val each epoch, all three at the end."""
    data = torch.load(root / "cifar10.pt")
    x, y = data["train_x"], data["train_y"]
    xtr, ytr, xval, yval = x[:n_train], y[:n_train], x[n_train:n_train + len(x) // 10], y[n_train:n_train + len(x) // 10]
    mean = xtr.float().mean((0, 2, 3), keepdim=True)
    std = xtr.float().std((0, 2, 3), keepdim=True)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = PlainViT()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)

    @torch.no_grad()
    def evaluate(xs: torch.Tensor, ys: torch.Tensor) -> float:
        model.eval()
        out = torch.cat([model((xs[i:i + 4096].float() - mean) / std) for i in range(0, len(xs), 4096)])
        model.train()
        return F.cross_entropy(out, ys).item()

    for _ in range(epochs):
        perm = torch.randperm(n_train)
        for i in range(0, n_train, 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model((xtr[idx].float() - mean) / std), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        evaluate(xtr, ytr)
        evaluate(xval, yval)
    for xs, ys in ((xtr, ytr), (xval, yval), (data["test_x"], data["test_y"])):
        evaluate(xs, ys)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--n-train", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    steps = args.epochs * math.ceil(args.n_train / 64)
    a, b = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cifar10"
        make_cache(root, 2 * args.n_train)
        for r in range(args.repeats):  # alternating, so drifting machine load hits both alike
            a.append(ours(root, args.epochs, args.n_train, Path(tmp) / f"run{r}"))
            b.append(plain(root, args.epochs, args.n_train))
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"vit: patch {SIZE['patch']}, width {SIZE['width']}, depth {SIZE['depth']}, "
          f"heads {SIZE['heads']}; droppath + attn/proj/embed dropout {P}; {steps} steps of 64, 1 thread")
    print(f"vit_step_ms_regablate: {1000 * ma / steps:.1f}")
    print(f"vit_step_ms_plain: {1000 * mb / steps:.1f}")
    print(f"vit_step_ratio: {ma / mb:.2f}x (target <= 1.15x; median of {args.repeats} alternating repeats)")


if __name__ == "__main__":
    main()
