"""The GPU benchmark's stacked sections (`bench_gpu.py`): 4, resnet20 stacked at each K beside one
plain loop and K plain loops; 5, the cifar10_recipe factorial start to exit beside the same arms
as ordinary runs."""

from __future__ import annotations

import gc
import json
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from gpu_common import peak_mib, reset_peak, resnet, row, timed, verdict, write_cifar_cache

ROOT = Path(__file__).resolve().parents[1]


def section_stacked(device: torch.device, sizes, smoke: bool) -> None:
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
            "the stacked path alone, for reference: the launcher trains a conv member alone on a GPU "
            "the ordinary way (single=auto), so K=1's target (>= 0.95x) is judged on section 2's ratio"))
    if k8 in rates and k8 != k1:
        r = rates[k8] * plain_t
        row(f"{name} stacked K={k8} / plain", f"{r:.2f}x", target=f">= 5x (at K=8) {verdict(r >= 5, smoke)}")


RUN_RECORD = "gpu_run.json"  # written beside a kept sweep's runs: its command, wall time, card, data
RECIPE_SMOKE = ("seed=0,1", "model.depth=8", "model.width=4", "dataset.n_train=64",
                "trainer.max_epochs=1")  # 16 arms x 2 seeds of a tiny resnet, one step each


def cifar_root(tmp: Path, smoke: bool, prepared: Path | None = None,
               keep: bool = False) -> tuple[Path, str, bool]:
    """The CIFAR-10 cache the study reads, what it holds, and whether it is CIFAR-10: `prepared`
    (a cache that `regablate data cifar10` wrote, checked by bench_gpu's main), else the one in
    dataset.root's default place, else the shared JPEG export converted by `regablate data cifar10
    --from` (shared/data/ in the checkout or beside it) into `tmp` (`keep`: into that default
    place, so kept runs can resume), else random images (said so). --smoke: random images."""
    from regablate.data.cifar10 import default_root

    if prepared is None and not smoke and (default_root() / "cifar10.pt").is_file():
        prepared = default_root()
    if prepared is not None:
        return prepared, f"the prepared CIFAR-10 cache in {prepared}", True
    for archive in (ROOT / "shared" / "data" / "cifar10-jpeg.tar.gz", ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"):
        if archive.is_file() and not smoke:
            root = default_root() if keep else tmp / "cifar10"
            r = subprocess.run([sys.executable, "-m", "regablate", "data", "cifar10", "--from", str(archive),
                                "--root", str(root)], cwd=ROOT, capture_output=True, text=True)
            if r.returncode == 0:
                return root, f"the shared CIFAR-10 export ({archive.name})", True
            print(f"  could not prepare {archive}: {r.stderr.strip()[-300:]}", flush=True)
    n = 256 if smoke else 20000
    return write_cifar_cache(tmp / "random", n, n // 2), f"random uint8 images ({n} train), not CIFAR-10", False


def whole_run(args: list[str], cwd: Path) -> tuple[float, str]:
    """Seconds of `regablate run ARGS`, start to exit, and its output."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "regablate", "run", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("regablate run " + " ".join(args) + ": " + (r.stderr.strip().splitlines() or ["?"])[-1])
    return time.perf_counter() - t0, r.stdout + r.stderr


def start_up(device: torch.device) -> float:
    """Seconds of a process that only starts: imports the trainer and opens the device."""
    code = f"import torch, regablate.training.loop; torch.zeros(1, device={str(device)!r})"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - t0


def section_recipe(device: torch.device, sizes, smoke: bool, keep: Path | None = None,
                   prepared: Path | None = None) -> None:
    """`regablate run -m +experiment=cifar10_recipe` (the 2^4 factorial, stacked) start to exit,
    against the same arms as ordinary runs one after another: two of them (none and the full
    stack, seed 0, each its own `regablate run`) timed, and all arms x seeds extrapolated from
    their mean with the process start-up (imports, the device; measured alone) counted once, as
    one `regablate run -m` pays it. --smoke: the same factorial of a tiny resnet, 2 seeds, one step.
    `keep`: the factorial's sweep dir (new: bench_gpu's main refuses one that exists), kept as the
    study's runs; else a temporary one. `prepared`: a CIFAR-10 cache to read (`cifar_root`)."""
    from hydra import compose, initialize_config_dir

    from regablate.config.paths import CONF_DIR

    gc.collect()
    if device.type == "cuda":  # what this process still holds would shrink the sweep's chunks
        torch.cuda.empty_cache()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=cifar10_recipe"], return_hydra_config=True)
    params = dict(cfg.hydra.sweeper.params)
    extra = list(RECIPE_SMOKE) if smoke else []
    if smoke:
        params["seed"] = RECIPE_SMOKE[0].split("=", 1)[1]
    components = params["+reg"].strip("[]").split(",")
    seeds = str(params["seed"]).split(",")
    runs = 2 ** len(components) * len(seeds)
    common = [f"trainer.device={device}"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root, what, real = cifar_root(tmp, smoke, prepared, keep=keep is not None)
        common.append(f"dataset.root={root.resolve()}")
        sweep_dir = keep.resolve() if keep is not None else tmp / "stacked"
        sweep = ["-m", "+experiment=cifar10_recipe", *extra, *common, f"hydra.sweep.dir={sweep_dir}"]
        stacked, log = whole_run(sweep, tmp)
        record = {"command": shlex.join(["regablate", "run", *sweep]), "wall_time_s": round(stacked, 1),
                  "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "smoke": smoke, "data": what,
                  "cifar10": real, "ordinary_s": None}
        if keep is not None:  # what the kept runs are, for make_studies.py --report-only to read
            (keep / RUN_RECORD).write_text(json.dumps(record, indent=1) + "\n")
        full = "+reg=[" + ",".join(components) + "]"
        settings = [f"{k}={v}" for k, v in params.items() if k.startswith("reg.")]
        arms = [["+reg=none"], [full, *settings]]
        fixed = [o for o in extra if not o.startswith(("+reg=", "seed="))]
        times = [whole_run(["+experiment=cifar10_recipe", *arm, *fixed, "seed=0", *common,
                            f"hydra.run.dir={tmp / f'ordinary{i}'}"], tmp)[0] for i, arm in enumerate(arms)]
    s0 = start_up(device)
    ordinary = s0 + runs * (statistics.mean(times) - s0)
    stacked_chunks = [int(k) for k in re.findall(r"chunk \d+/\d+: K=(\d+), \d+ steps in", log)]
    alone = len(re.findall(r"chunk \d+/\d+: K=1, #\d+ trains the ordinary way", log))
    print(f"  stacked: chunks of K = {', '.join(map(str, stacked_chunks)) or 'none'} "
          f"({sum(stacked_chunks)} of {runs} runs stacked, {alone} chunks of one the ordinary way)", flush=True)
    print(f"  {2 ** len(components)} arms x {len(seeds)} seeds = {runs} runs on {what}; ordinary runs one after "
          f"another: {len(times)} timed ({', '.join(f'{t:.1f} s' for t in times)}), {runs} extrapolated with the "
          f"start-up ({s0:.1f} s) once", flush=True)
    row("cifar10_recipe factorial (s)", f"{stacked:.1f}", f"{ordinary:.1f}", f"{ordinary / stacked:.2f}x",
        f">= 4x faster {verdict(ordinary / stacked >= 4, smoke)}; wall <= 480 s {verdict(stacked <= 480, smoke)}")
    if keep is not None:  # and the ordinary runs' extrapolated time, beside it
        record.update(ordinary_s=round(ordinary, 1), chunks=stacked_chunks)
        (keep / RUN_RECORD).write_text(json.dumps(record, indent=1) + "\n")
        print(f"  kept: {keep} ({RUN_RECORD} says what they are)", flush=True)
