"""regablate on one GPU, each figure beside a plain hand-written PyTorch loop on the same device
in the same run (`make bench-gpu`; sections 1-4 under 8 minutes on one H100, section 5 up to 8
more):

  1. CUDA tests: `pytest -q` on the tests that skip without CUDA (found by their skipif marker);
     passed / skipped / failed counts.
  2. resnet20 on CIFAR-10-shaped random uint8 images, bf16 autocast and channels_last: training
     images/s through regablate's own step (`train.train_epoch` on an Experiment from
     `build_experiment`, `model=resnet +reg=augment optim=sgd trainer.amp=true`) against a plain
     loop (the same ResNet class, batch, optimiser, normalisation, and a random crop + flip written
     by hand on the device). Target: within 1.5x of the plain loop (ratio >= 0.67x); and, since a
     conv member alone on a GPU trains this way (the launcher's single=auto), stacked K=1's target
     (>= 0.95x) is judged on this ratio. Also the
     augmentation share: the crop + flip alone / a training step, both sides (bench_cifar's
     target: < 5%).
  3. The MLP sweep (sparse-synthetic, MLP 50-128-64-4, AdamW, batch 64, no early stopping, no
     TensorBoard or checkpoints) at K = 1, 64, 1024 members through the stacked trainer
     (`VectorizedTrainer(...).fit()`: loop, per-epoch evaluation, run files, closing evaluation;
     members built beforehand) against K plain loops one after another (a few plain members
     are timed; K of them are extrapolated from their median). Figure: members/s.
  4. resnet20 stacked K = 1, 4, 8, 16, 32, 64 (`regablate.vectorized.stacked_conv.StackedModule`,
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
     stack, each its own `regablate run`), all 80 extrapolated from their mean with the process
     start-up (imports and the device, measured alone) counted once, as one `regablate run -m`
     pays it; the chunks that stacked are counted from the sweep's log. Targets: >= 4x faster,
     <= 480 s. `--only 5` runs it alone (sections 1-4 stay under 8 minutes). `--keep DIR` keeps
     the factorial's sweep in DIR (new), so the timed sweep is the study's result:
     `--only 5 --keep experiments/cifar10_recipe/runs`; `--cifar-root DIR` reads a cache that
     `regablate data cifar10` prepared (default: the one in dataset.root's default place, if
     there, else the export converted into a temporary folder; with --keep into that default
     place, so the kept runs can resume). Kept runs get `gpu_run.json`
     beside them (the sweep's command, wall time, card, torch, data) for `make_studies.py
     --report-only cifar10_recipe` to read.

Timing: warm-up first, `torch.cuda.synchronize()` around every timed region, the median of
repeats (regablate and plain alternating). `--smoke` runs the same code paths on the CPU with
tiny sizes in seconds (its figures check the script, not the targets).

    python benchmarks/bench_gpu.py [--device cuda] [--smoke] [--only 1,2,3,4,5] [--keep DIR]
                                   [--cifar-root DIR]
"""

from __future__ import annotations

import argparse
import ast
import math
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
from gpu_common import resnet, row, timed, verdict, write_cifar_cache
from gpu_stacked import section_recipe, section_stacked
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
             plain_members=8, stack_ks=(1, 4, 8, 16, 32, 64), stack_steps=10)
SMOKE = Sizes(batch=8, steps=2, repeats=1, aug_reps=2, mlp_ks=(1, 2, 4), mlp_epochs=1,
              plain_members=1, stack_ks=(1, 2, 4), stack_steps=1, depth=8, width=4)


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
    row("stacked K=1 as launched / plain", f"{ratio:.2f}x", "-", "-",
        "a conv member alone on a GPU trains the ordinary way (single=auto): this step; "
        f">= 0.95x {verdict(ratio >= 0.95, smoke)}")

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
SECTIONS = {1: ("CUDA tests", section_tests), 2: ("resnet images/s", section_resnet),
            3: ("MLP sweep, stacked", section_mlp), 4: ("resnet, stacked", section_stacked),
            5: ("cifar10_recipe factorial", section_recipe)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cuda (the default when present), cuda:N or cpu")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: check the script (CPU is fine)")
    ap.add_argument("--only", default="1,2,3,4,5", help="sections to run, e.g. 2,4")
    ap.add_argument("--keep", type=Path, default=None,
                    help="section 5: write the factorial's sweep into this new dir and keep it")
    ap.add_argument("--cifar-root", type=Path, default=None,
                    help="section 5: a CIFAR-10 cache prepared by `regablate data cifar10`")
    args = ap.parse_args()
    if args.keep is not None and "5" not in args.only.split(","):
        print("bench_gpu: --keep keeps section 5's factorial; add 5 to --only", file=sys.stderr)
        sys.exit(2)
    if args.keep is not None and args.keep.exists():  # refused before any section spends time
        print(f"bench_gpu: --keep {args.keep}: exists; section 5 writes a new sweep dir", file=sys.stderr)
        sys.exit(2)
    if args.cifar_root is not None and not (args.cifar_root / "cifar10.pt").is_file():
        print(f"bench_gpu: --cifar-root {args.cifar_root}: no cifar10.pt there", file=sys.stderr)
        sys.exit(2)
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
            if i == 5:
                fn(device, sizes, args.smoke, keep=args.keep, prepared=args.cifar_root)
            else:
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
