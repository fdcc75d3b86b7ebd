"""regablate on one GPU, each figure beside a plain hand-written PyTorch loop on the same device
in the same run (`make bench-gpu`; under 8 minutes on one H100):

  1. CUDA tests: `pytest -q` on the tests that skip without CUDA (found by their skipif marker);
     passed / skipped / failed counts.
  2. resnet20 on CIFAR-10-shaped random uint8 images, bf16 autocast and channels_last: training
     images/s through regablate's own step (`train.train_epoch` on an Experiment from
     `build_experiment`, `model=resnet +reg=augment optim=sgd trainer.amp=true`) against a plain
     loop (the same ResNet class, batch, optimiser, normalisation, and a random crop + flip written
     by hand on the device). Target: within 1.5x of the plain loop (ratio >= 0.67x). Also the
     augmentation share: the crop + flip alone / a training step, both sides (bench_cifar's
     target: < 5%).
  3. The MLP sweep (sparse-synthetic, MLP 50-128-64-4, AdamW, batch 64, no early stopping, no
     TensorBoard or checkpoints) at K = 1, 64, 1024 members through the stacked trainer
     (`VectorizedTrainer(...).fit()`: loop, per-epoch evaluation, run files, closing evaluation;
     members built beforehand) against K plain loops one after another (a few plain members
     are timed; K of them are extrapolated from their median). Figure: members/s.
  4. resnet20 stacked K = 1, 4, 8, 16, 32 (`regablate.vectorized.stacked_conv.StackedModule`,
     float32, per-member batches), a member being S training steps of B images: members/s,
     images/s and peak memory at each K beside one plain resnet20 loop doing the same steps and K
     plain loops one after another (K times one loop: extrapolated, each loop being the same
     work), so the best K for a card is read off one table. Targets: K=8 at >= 5x the members/s
     of one plain loop; K=1 is trained the ordinary way by the launcher on a GPU (1.00x by
     construction), the stacked path alone is shown beside it (>= 0.95x).

  5. The study cifar10_recipe (conf/experiment/cifar10_recipe.yaml: a 2^4 factorial over augment,
     L2, label smoothing and cutout, resnet20, 5 seeds, 80 runs), `regablate run -m` start to exit
     with its stacked launcher, on the shared CIFAR-10 export (converted by `regablate data
     cifar10 --from` from shared/data/ in the checkout or beside it; random images otherwise, said
     so), against the same arms as ordinary runs one after another: two timed (none and the full
     stack), all 80 extrapolated from their mean. Targets: >= 4x faster, <= 480 s. Sections 1-4
     take under 8 minutes; section 5 up to 8 more (`--only 5` runs it alone).

Timing: warm-up first, `torch.cuda.synchronize()` around every timed region, the median of
repeats (regablate and plain alternating). `--smoke` runs the same code paths on the CPU with
tiny sizes in seconds (its figures check the script, not the targets).

    python benchmarks/bench_gpu.py [--device cuda] [--smoke] [--only 1,2,3,4,5]
"""

from __future__ import annotations

import argparse
import ast
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = "no CUDA device; use --smoke to check the script on the CPU"


@dataclass(frozen=True)
class Sizes:
    batch: int  # resnet20 images per step (per member in section 4)
    steps: int  # resnet20 training steps per timed epoch (section 2)
    repeats: int  # timed repeats per figure (median)
    aug_reps: int  # augmentation calls timed for its share
    mlp_ks: tuple[int, ...]
    mlp_epochs: int
    plain_members: int  # plain MLP members timed; more are extrapolated
    stack_ks: tuple[int, ...]
    stack_steps: int  # training steps per member (section 4)
    depth: int = 20  # the ResNet's depth and first-stage width (resnet20: 20, 16)
    width: int = 16


FULL = Sizes(batch=128, steps=40, repeats=3, aug_reps=50, mlp_ks=(1, 64, 1024), mlp_epochs=20,
             plain_members=8, stack_ks=(1, 4, 8, 16, 32), stack_steps=10)
SMOKE = Sizes(batch=8, steps=2, repeats=1, aug_reps=2, mlp_ks=(1, 2, 4), mlp_epochs=1,
              plain_members=1, stack_ks=(1, 2, 4), stack_steps=1, depth=8, width=4)


# -- output ---------------------------------------------------------------------------------------
def row(name: str, ours: str, plain: str = "-", ratio: str = "-", target: str = "-") -> None:
    print(f"{name:34} {ours:>14} {plain:>14} {ratio:>9}  {target}", flush=True)


def verdict(ok: bool, smoke: bool) -> str:
    return "(smoke: not judged)" if smoke else ("met" if ok else "NOT met")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


# -- 1. the CUDA tests ----------------------------------------------------------------------------
def _needs_cuda(node: ast.AST) -> bool:
    """A `skipif(...)` marker whose condition asks for CUDA."""
    marks = (ast.unparse(d) for d in getattr(node, "decorator_list", []))
    return any("skipif" in m and "cuda" in m for m in marks)


def cuda_tests() -> list[str]:
    """Node ids of the tests marked to skip without CUDA (functions, methods, whole classes)."""
    ids = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            rel = f"tests/{path.name}::{getattr(node, 'name', '')}"
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test") and _needs_cuda(node):
                ids.append(rel)
            elif isinstance(node, ast.ClassDef):
                methods = [m for m in node.body if isinstance(m, ast.FunctionDef) and m.name.startswith("test")]
                ids += [rel] if _needs_cuda(node) else [f"{rel}::{m.name}" for m in methods if _needs_cuda(m)]
    return ids


def section_tests(device: torch.device, sizes: Sizes, smoke: bool) -> None:
    ids = cuda_tests()
    if not ids:
        row("cuda tests", "none found", target="tests marked skipif(not cuda)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            f"--junit-xml={report}", *ids], cwd=ROOT, capture_output=True, text=True)
        suites = ElementTree.parse(report).getroot().iter("testsuite") if report.exists() else []
        total = Counter()
        for suite in suites:
            total.update({k: int(suite.get(k, 0)) for k in ("tests", "skipped", "failures", "errors")})
    bad = total["failures"] + total["errors"]
    passed = total["tests"] - total["skipped"] - bad
    ours = f"{passed} passed, {total['skipped']} skipped" + (f", {bad} failed" if bad else "")
    if bad or r.returncode not in (0, 5) or not total["tests"]:
        print("\n".join((r.stdout + r.stderr).strip().splitlines()[-30:]), flush=True)
    cuda = torch.cuda.is_available()
    row(f"cuda tests ({len(ids)})", ours, target="all pass " + (
        verdict(r.returncode == 0 and passed == total["tests"] > 0, False) if cuda else "(no CUDA: skipped)"))


# -- 2. resnet20 images/s ---------------------------------------------------------------------------
def write_cifar_cache(root: Path, n_train: int, n_test: int) -> Path:
    """A CIFAR-10 cache as `regablate data cifar10` writes it, of random uint8 images."""
    from regablate.data.cifar10 import CLASSES

    g = torch.Generator().manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    torch.save({"train_x": torch.randint(0, 256, (n_train, 3, 32, 32), dtype=torch.uint8, generator=g),
                "train_y": torch.arange(n_train) % 10,
                "test_x": torch.randint(0, 256, (n_test, 3, 32, 32), dtype=torch.uint8, generator=g),
                "test_y": torch.arange(n_test) % 10, "classes": CLASSES, "source": "bench",
                "kind": "bench", "verified": False}, root / "cifar10.pt")
    return root


def plain_crop_flip(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random crop from the zero-padded image + random horizontal flip, by hand: each sample's
    window by advanced indexing into the padded batch."""
    B, C, H, W = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (B, 1), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (B, 1), device=x.device)
    rows = dy + torch.arange(H, device=x.device)
    cols = dx + torch.arange(W, device=x.device)
    cols = torch.where(torch.rand(B, 1, device=x.device) < 0.5, cols.flip(1), cols)
    b = torch.arange(B, device=x.device).view(B, 1, 1, 1)
    c = torch.arange(C, device=x.device).view(1, C, 1, 1)
    out = xp[b, c, rows.view(B, 1, H, 1), cols.view(B, 1, 1, W)]
    return out.contiguous(memory_format=torch.channels_last) if x.is_cuda else out


def resnet(sizes: Sizes, device: torch.device) -> nn.Module:
    """The built-in CIFAR ResNet (resnet20 at full size), as the ordinary runner places it."""
    from regablate.models.resnet import ResNetSettings, build_resnet
    from regablate.regularisers.base import ModelSpec

    s = ResNetSettings(depth=sizes.depth, width=sizes.width)
    model = build_resnet(s, (3, 32, 32), 10, ModelSpec(norm="batch")).to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def section_resnet(device: torch.device, sizes: Sizes, smoke: bool) -> None:
    from regablate.config.compose import compose_config
    from regablate.training.experiment import build_experiment
    from regablate.training.loop import train_epoch
    from regablate.training.optim import decay_groups
    from regablate.training.settings import load_settings

    amp = device.type == "cuda"
    bs, n = sizes.batch, sizes.batch * sizes.steps
    with tempfile.TemporaryDirectory() as tmp:
        root = write_cifar_cache(Path(tmp) / "cifar10", math.ceil(n / 0.9) + 20, 100)
        cfg = compose_config(["dataset=cifar10", f"dataset.root={root}", f"dataset.n_train={n}",
                              "dataset.n_ood=0", "model=resnet", f"model.depth={sizes.depth}",
                              f"model.width={sizes.width}", "+reg=augment", "optim=sgd",
                              f"trainer.batch_size={bs}", f"trainer.amp={str(amp).lower()}",
                              f"trainer.device={device}", "trainer.progress=none"])
        x = build_experiment(load_settings(cfg))
    gen, decay = torch.Generator().manual_seed(0), decay_groups(x.optimizer)

    # the plain loop: same images on the device, same model class, same SGD, all by hand
    xtr, ytr = x.data.train.x, x.data.train.y
    pixels = xtr.float()
    mean, std = pixels.mean((0, 2, 3), keepdim=True), pixels.std((0, 2, 3), keepdim=True)
    torch.manual_seed(0)
    model = resnet(sizes, device)
    assert sum(p.numel() for p in model.parameters()) == x.n_params, "not the same model"
    o = x.s.optim
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)

    def prepare(idx: torch.Tensor) -> torch.Tensor:
        return (xtr[idx].float() - mean) / std

    def plain_epoch() -> None:
        model.train()
        perm = torch.randperm(n, device=device)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(plain_crop_flip(prepare(idx))).float(), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    ours, plain = [], []
    for r in range(sizes.repeats + 1):  # the first pair warms up both (cuDNN, allocator)
        a = timed(lambda: train_epoch(x, gen, decay), device)
        b = timed(plain_epoch, device)
        if r:
            ours.append(a)
            plain.append(b)
    ours_ips, plain_ips = n / statistics.median(ours), n / statistics.median(plain)
    label = "bf16, channels_last" if amp else "fp32"
    ratio = ours_ips / plain_ips
    row(f"resnet{sizes.depth} images/s ({label})", f"{ours_ips:.0f}", f"{plain_ips:.0f}", f"{ratio:.2f}x",
        f">= 0.67x (within 1.5x) {verdict(ratio >= 1 / 1.5, smoke)}")

    # the augmentation alone, on a prepared batch, against the step time of each side
    batch = x.data.prepare(xtr[:bs])
    stack = x.s.stack

    def aug_time(fn: Callable[[], object]) -> float:
        fn()
        return statistics.median(timed(fn, device) for _ in range(sizes.aug_reps))

    a_ours = aug_time(lambda: stack.transform_batch(batch, ytr[:bs]))
    a_plain = aug_time(lambda: plain_crop_flip(batch))
    share_ours = a_ours / (bs / ours_ips)
    share_plain = a_plain / (bs / plain_ips)
    row("augment share of a step", f"{100 * share_ours:.2f}%", f"{100 * share_plain:.2f}%", "-",
        f"< 5% {verdict(share_ours < 0.05, smoke)}")


# -- 3. the MLP sweep, stacked ----------------------------------------------------------------------
def plain_mlp_member(data, epochs: int, seed: int, device: torch.device) -> None:
    """One member by hand: MLP 50-128-64-4, AdamW, batch 64, train and val evaluated every epoch
    (as the trainer does), test at the end."""
    (xtr, ytr), (xva, yva), (xte, yte) = ((s.x, s.y) for s in (data.train, data.val, data.test))
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(xtr.shape[1], 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                          nn.Linear(64, data.out_dim)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    @torch.no_grad()
    def evaluate(xs: torch.Tensor, ys: torch.Tensor) -> tuple[float, float]:
        model.eval()
        out = model(xs)
        model.train()
        return F.cross_entropy(out, ys).item(), (out.argmax(1) == ys).float().mean().item()

    for _ in range(epochs):
        perm = torch.randperm(len(ytr), device=device)
        for i in range(0, len(ytr), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        evaluate(xtr, ytr)
        evaluate(xva, yva)
    evaluate(xte, yte)


def allow_open_files(n: int) -> None:
    """Each member of a fit keeps its metrics.csv open: lift the soft limit on open files to `n`
    (within the hard limit) where it is lower."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n if hard == resource.RLIM_INFINITY else min(n, hard), hard))


def section_mlp(device: torch.device, sizes: Sizes, smoke: bool) -> None:
    from regablate.config.compose import compose_config
    from regablate.training.settings import load_settings
    from regablate.vectorized.grouping import group, make_member
    from regablate.vectorized.trainer import VectorizedTrainer

    cfg = compose_config(["sched=none", f"trainer.max_epochs={sizes.mlp_epochs}",
                          "trainer.early_stopping.patience=0", "trainer.restore_best=false",
                          "trainer.progress=none", "trainer.tensorboard=false",
                          "trainer.checkpoint=false", "eval.histogram_every=0",
                          f"trainer.device={device}"])

    allow_open_files(2 * max(sizes.mlp_ks) + 256)

    def members(k: int, where: Path) -> list:
        out = []
        for i in range(k):
            c = {**cfg, "seed": i, "data_seed": i}
            out.append(make_member(i, c, where / str(i), load_settings(c)))
        (grp,) = group(out)  # one group: the members differ in their seeds only
        return grp

    def fit_time(k: int, where: Path) -> float:
        grp = members(k, where)
        return timed(lambda: VectorizedTrainer(grp).fit(), device)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fit_time(1, tmp / "warmup")
        m0 = members(1, tmp / "data")[0]
        plain_mlp_member(m0.x.data, 1, 0, device)  # warm-up
        per = [timed(lambda seed=seed: plain_mlp_member(m0.x.data, sizes.mlp_epochs, seed, device), device)
               for seed in range(sizes.plain_members)]
        plain_rate = 1 / statistics.median(per)
        for k in sizes.mlp_ks:
            reps = sizes.repeats if k <= 64 else 1  # a 1024-member fit is timed once
            t = statistics.median(fit_time(k, tmp / f"k{k}r{r}") for r in range(reps))
            note = "" if k <= sizes.plain_members else f", plain x{k} from {sizes.plain_members}"
            row(f"mlp sweep K={k} members/s", f"{k / t:.1f}", f"{plain_rate:.1f}",
                f"{k / t / plain_rate:.2f}x", f"({sizes.mlp_epochs} epochs, median of {reps}{note})")


# -- 4. resnet20, stacked -------------------------------------------------------------------------
def section_stacked(device: torch.device, sizes: Sizes, smoke: bool) -> None:
    try:
        from regablate.vectorized.stacked_conv import StackedModule
    except ImportError:
        row(f"resnet{sizes.depth} stacked", "skipped: regablate.vectorized.functional not available")
        return
    from types import SimpleNamespace

    from regablate.vectorized import optim

    bs, steps = sizes.batch, sizes.stack_steps
    g = torch.Generator(device).manual_seed(0)
    pool = torch.randn(8 * bs, 3, 32, 32, device=device, generator=g)
    labels = torch.randint(0, 10, (8 * bs,), device=device, generator=g)

    def batches(k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`steps` batches (K, B, ...) of per-member samples, drawn from the pool."""
        out = []
        for _ in range(steps):
            idx = torch.randint(0, len(pool), (k, bs), device=device, generator=g)
            out.append((pool[idx], labels[idx]))
        return out

    def stacked_run(k: int) -> tuple[float, str]:
        """Median time of `steps` stacked steps of K members, and the stack's layout."""
        models = []
        for i in range(k):
            torch.manual_seed(i)
            models.append(resnet(sizes, device))
        sm = StackedModule(models, device)
        gens = [torch.Generator(device).manual_seed(i) for i in range(k)]
        opt = optim.build("sgd", sm.theta, [0.05] * k, [0.0] * k,
                          SimpleNamespace(momentum=0.9, nesterov=False))
        data = batches(k)

        def run() -> None:
            for xb, yb in data:
                out = sm.forward(xb, True, gens)  # (K, B, 10)
                loss = F.cross_entropy(out.flatten(0, 1), yb.flatten(), reduction="none").view(k, -1).mean(1)
                opt.step(sm.flat_grad(torch.autograd.grad(loss.sum(), sm.leaves)))
                if hasattr(sm, "step_done"):
                    sm.step_done()

        run()  # warm-up
        return statistics.median(timed(run, device) for _ in range(sizes.repeats)), getattr(sm, "mode", "")

    def plain() -> tuple[float, str]:
        """Median time of `steps` steps of one plain resnet loop, and its peak memory (the model
        and its optimiser are freed on return, before the stacked runs)."""
        torch.manual_seed(0)
        model = resnet(sizes, device)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        data = [(xb[0], yb[0]) for xb, yb in batches(1)]

        def plain_run() -> None:
            model.train()
            for xb, yb in data:
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        plain_run()  # warm-up
        reset_peak(device)
        t = statistics.median(timed(plain_run, device) for _ in range(sizes.repeats))
        return t, peak_mib(device)

    plain_t, plain_mem = plain()
    name = f"resnet{sizes.depth}"
    print(f"  {name}, member = {steps} steps of {bs} images, fp32; one plain loop: {1 / plain_t:.2f} "
          f"members/s, {steps * bs / plain_t:,.0f} images/s, peak {plain_mem}; K plain loops one "
          "after another take K times one loop's time (extrapolated: each loop is the same work)",
          flush=True)
    print(f"  {'K':>4} {'members/s':>10} {'images/s':>10} {'peak memory':>12} {'stacked s':>10} "
          f"{'K plain loops s':>16} {'speed-up':>9}", flush=True)
    rates = {}
    for k in sizes.stack_ks:
        try:
            reset_peak(device)
            t, mode = stacked_run(k)
        except torch.cuda.OutOfMemoryError:
            print(f"  {k:>4} out of memory", flush=True)
            torch.cuda.empty_cache()
            continue
        rates[k] = k / t
        print(f"  {k:>4} {rates[k]:>10.2f} {k * steps * bs / t:>10,.0f} {peak_mib(device):>12} {t:>10.3f} "
              f"{k * plain_t:>16.3f} {k * plain_t / t:>8.2f}x{'  (' + mode + ')' if mode else ''}", flush=True)
    for k, r in rates.items():
        row(f"{name} stacked K={k} members/s", f"{r:.2f}", f"{1 / plain_t:.2f}", f"{r * plain_t:.2f}x",
            "vs one plain loop")
    if rates:
        best = max(rates, key=rates.get)
        row(f"{name} best K on this device", f"K={best}", target=f"{rates[best]:.2f} members/s")
    k1, k8 = min(sizes.stack_ks), (8 if 8 in sizes.stack_ks else max(sizes.stack_ks))
    if k1 in rates:
        r = rates[k1] * plain_t
        row(f"{name} stacked K={k1} / plain", f"{r:.2f}x", target=(
            "the launcher trains a conv member alone on a GPU the ordinary way (single=auto): "
            f"1.00x by construction; the stacked path alone >= 0.95x {verdict(r >= 0.95, smoke)}"))
    if k8 in rates and k8 != k1:
        r = rates[k8] * plain_t
        row(f"{name} stacked K={k8} / plain", f"{r:.2f}x", target=f">= 5x (at K=8) {verdict(r >= 5, smoke)}")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> str:
    """Peak memory allocated by torch since `reset_peak`, on CUDA; '-' elsewhere."""
    return f"{torch.cuda.max_memory_allocated(device) / 2**20:,.0f} MiB" if device.type == "cuda" else "-"


# -- 5. the cifar10_recipe factorial, whole processes -------------------------------------------------
RECIPE_SMOKE = ("seed=0,1", "model.depth=8", "model.width=4", "dataset.n_train=64",
                "trainer.max_epochs=1")  # 16 arms x 2 seeds of a tiny resnet, one step each


def cifar_root(tmp: Path, smoke: bool) -> tuple[Path, str]:
    """The prepared CIFAR-10 cache the study reads, and what it holds: the shared JPEG export
    converted by `regablate data cifar10 --from` (shared/data/ in the checkout or beside it),
    else random images (said so)."""
    for archive in (ROOT / "shared" / "data" / "cifar10-jpeg.tar.gz", ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"):
        if archive.is_file() and not smoke:
            root = tmp / "cifar10"
            r = subprocess.run([sys.executable, "-m", "regablate", "data", "cifar10", "--from", str(archive),
                                "--root", str(root)], cwd=ROOT, capture_output=True, text=True)
            if r.returncode == 0:
                return root, f"the shared CIFAR-10 export ({archive.name})"
            print(f"  could not prepare {archive}: {r.stderr.strip()[-300:]}", flush=True)
    n = 256 if smoke else 20000
    return write_cifar_cache(tmp / "random", n, n // 2), f"random uint8 images ({n} train), not CIFAR-10"


def whole_run(args: list[str], cwd: Path) -> tuple[float, str]:
    """Seconds of `regablate run ARGS`, start to exit, and its output."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "regablate", "run", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("regablate run " + " ".join(args) + ": " + (r.stderr.strip().splitlines() or ["?"])[-1])
    return time.perf_counter() - t0, r.stdout + r.stderr


def section_recipe(device: torch.device, sizes: Sizes, smoke: bool) -> None:
    """`regablate run -m +experiment=cifar10_recipe` (the 2^4 factorial, stacked) start to exit,
    against the same arms as ordinary runs one after another: two of them (none and the full
    stack, seed 0, each its own `regablate run` process) timed, all arms x seeds extrapolated from
    their mean. --smoke: the same factorial of a tiny resnet, 2 seeds, one step."""
    from hydra import compose, initialize_config_dir

    from regablate.config.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=cifar10_recipe"], return_hydra_config=True)
    params = dict(cfg.hydra.sweeper.params)
    extra = list(RECIPE_SMOKE) if smoke else []
    if smoke:
        params["seed"] = RECIPE_SMOKE[0].split("=", 1)[1]
    components = params["+reg"].strip("[]").split(",")
    seeds = str(params["seed"]).split(",")
    runs = 2 ** len(components) * len(seeds)
    common = [f"trainer.device={device.type}"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root, what = cifar_root(tmp, smoke)
        common.append(f"dataset.root={root}")
        stacked, log = whole_run(["-m", "+experiment=cifar10_recipe", *extra, *common,
                                  f"hydra.sweep.dir={tmp / 'stacked'}"], tmp)
        full = "+reg=[" + ",".join(components) + "]"
        settings = [f"{k}={v}" for k, v in params.items() if k.startswith("reg.")]
        arms = [["+reg=none"], [full, *settings]]
        fixed = [o for o in extra if not o.startswith(("+reg=", "seed="))]
        times = [whole_run(["+experiment=cifar10_recipe", *arm, *fixed, "seed=0", *common,
                            f"hydra.run.dir={tmp / f'ordinary{i}'}"], tmp)[0] for i, arm in enumerate(arms)]
    one = statistics.mean(times)
    chunks = re.findall(r"chunk \d+/\d+: K=(\d+)", log)
    print(f"  stacked: chunks of K = {', '.join(chunks) or 'none'} "
          f"({sum(map(int, chunks))} of {runs} runs stacked)", flush=True)
    print(f"  {2 ** len(components)} arms x {len(seeds)} seeds = {runs} runs on {what}; ordinary runs one after "
          f"another: {len(times)} timed ({', '.join(f'{t:.1f} s' for t in times)}), {runs} extrapolated", flush=True)
    row("cifar10_recipe factorial (s)", f"{stacked:.1f}", f"{one * runs:.1f}", f"{one * runs / stacked:.2f}x",
        f">= 4x faster {verdict(one * runs / stacked >= 4, smoke)}; wall <= 480 s {verdict(stacked <= 480, smoke)}")


SECTIONS = {1: ("CUDA tests", section_tests), 2: ("resnet images/s", section_resnet),
            3: ("MLP sweep, stacked", section_mlp), 4: ("resnet, stacked", section_stacked),
            5: ("cifar10_recipe factorial", section_recipe)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cuda (the default when present), cuda:N or cpu")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: check the script (CPU is fine)")
    ap.add_argument("--only", default="1,2,3,4,5", help="sections to run, e.g. 2,4")
    args = ap.parse_args()
    name = args.device or ("cuda" if torch.cuda.is_available() or not args.smoke else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        sys.exit(2)
    device = torch.device(name)
    if args.smoke and device.type == "cpu":
        torch.set_num_threads(1)  # tiny sizes: threads would only contend
    sizes = SMOKE if args.smoke else FULL
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"bench_gpu{' --smoke' if args.smoke else ''}: {what}, torch {torch.__version__}", flush=True)
    row("figure", "regablate", "plain loop", "ratio", "target")
    failed, start = [], time.perf_counter()
    sections = sorted(int(s) for s in args.only.split(","))
    for i in sections:
        title, fn = SECTIONS[i]
        t0 = time.perf_counter()
        try:
            fn(device, sizes, args.smoke)
        except Exception as e:  # one section's failure leaves the others' figures
            failed.append(i)
            row(f"{i}. {title}", f"failed: {type(e).__name__}: {e}")
        print(f"  ({i}. {title}: {time.perf_counter() - t0:.1f} s)", flush=True)
    total = time.perf_counter() - start
    judged = not args.smoke and 5 not in sections  # the factorial has its own 480 s
    print(f"total {total:.0f} s" + (f" (target < 480 s: {verdict(total < 480, False)})" if judged else ""))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
