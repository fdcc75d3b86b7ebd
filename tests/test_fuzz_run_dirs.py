"""Run dirs with random damage — truncations, byte flips, wrong types, huge values, links, FIFOs —
read by `report`, `load_runs`, `tb`'s view builder and `trainer.resume=auto`: no traceback, no
hang, no file of a good run changed, and every damaged run named (read, or skipped with a reason).
Seeded, so a failure is a case to replay: its number and damage are in the assertion message."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import signal
import warnings
from pathlib import Path

import pytest

from conftest import compose_cfg
from regablate.errors import UsageError
from regablate.training.loop import train

TINY = ("dataset=tiny_binary", "trainer.max_epochs=3", "trainer.early_stopping.patience=0",
        "trainer.progress=none", "trainer.tensorboard=true")
CASES = 240          # damaged run dirs read by the readers
RESUME_CASES = 24    # of which resumed too (each builds an experiment: about 0.3 s)
SECONDS = 20         # per case: a reader that blocks (a FIFO) fails the case instead of hanging
HOSTILE = [None, "x", [1, 2], {"a": 1}, True, -1, 10**400, float("nan"), float("inf"), -1e308,
           1e308, "\x1b]0;pwned\x07\x1b[2J", "9" * 5000]


def fingerprint(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, dict]:
    """Two good runs (kept as they are) and one run relabelled `interrupted`, to be damaged."""
    root = tmp_path_factory.mktemp("fuzz")
    cfg = compose_cfg(*TINY, "+reg=dropout")
    for seed in (0, 1):
        train({**cfg, "seed": seed}, root / "good" / f"run{seed}")
    train(cfg, root / "victim")
    summary = root / "victim" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "status": "interrupted"}))
    return root, cfg


def _nested_keys(tree, prefix=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield prefix + (k,)
            yield from _nested_keys(v, prefix + (k,))


def damage(run: Path, rng: random.Random) -> str:
    """One random damage to one file of `run`; returns what was done."""
    files = sorted(p for p in run.rglob("*") if p.is_file())
    target = rng.choice(files + [run / "summary.json"] * 6 + [run / "checkpoints" / "last.pt"] * 4)
    kind = rng.choice(["truncate", "flip", "value", "value", "link", "fifo", "dir", "empty", "garbage"])
    if kind == "value" and target.name != "summary.json":
        kind = "flip"
    name = target.relative_to(run)
    if kind == "truncate":
        data = target.read_bytes()
        target.write_bytes(data[: rng.randrange(len(data) + 1)])
    elif kind == "flip":
        data = bytearray(target.read_bytes())
        for _ in range(rng.randint(1, 8)):
            if data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(data))
    elif kind == "value":
        summary = json.loads(target.read_text())
        path = rng.choice(list(_nested_keys(summary)))
        node = summary
        for k in path[:-1]:
            node = node[k]
        value = rng.choice(HOSTILE)
        node[path[-1]] = value
        target.write_text(json.dumps(summary))
        return f"{name}: {'.'.join(map(str, path))} = {value!r:.40}"
    elif kind in ("link", "fifo", "dir"):
        target.unlink()
        if kind == "fifo":
            os.mkfifo(target)
        elif kind == "dir":
            target.mkdir()
        else:
            target.symlink_to(rng.choice(["/dev/zero", "/etc/passwd", "/nonexistent", "/dev/stdin"]))
    elif kind == "empty":
        target.write_bytes(b"")
    else:
        target.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
    return f"{name}: {kind}"


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    def on_alarm(signum, frame):
        raise Hang(f"no answer in {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def read_everything(root: Path, view: Path) -> tuple[set, dict, str]:
    """The readers over `root`: (run dirs read, skipped dir -> reason, report's output)."""
    import regablate
    from regablate.report.collect import collect
    from regablate.report.command import main as report
    from regablate.tensorboard import view as tb_view

    runs, skipped = collect([root])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = regablate.load_runs(root)
        regablate.load_curves(root)
        regablate.summarize(frame, metric="val")
    tb_view.build([root], view)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = report([str(root), "--format", "markdown"])
    assert code == 0, err.getvalue()
    return ({str(r.path) for r in runs}, {str(p): why for p, why in skipped}, out.getvalue() + err.getvalue())


def check_case(case: int, root: Path, cfg: dict, tmp_path: Path, rng: random.Random, resume: bool,
               good: dict) -> tuple[str, bool]:
    """One damaged copy read by every reader (and resumed, when `resume` and the damage is in
    what resume reads); returns (what was done, whether it was resumed). Raises AssertionError."""
    here = tmp_path / f"case{case}"
    shutil.copytree(root / "good", here / "good", symlinks=True)
    victim = here / "victim"
    shutil.copytree(root / "victim", victim)
    what = damage(victim, rng)
    where = f"case {case} ({what})"
    with time_limit(SECONDS):
        try:
            read, skipped, printed = read_everything(here, tmp_path / "view")
        except Hang as e:
            raise AssertionError(f"{where}: a reader hung: {e}") from None
        except Exception as e:
            raise AssertionError(f"{where}: a reader raised {type(e).__name__}: {e}") from None
    assert {str(here / "good" / "run0"), str(here / "good" / "run1")} <= read, f"{where}: a good run is missing"
    assert str(victim) in read or str(victim) in skipped, f"{where}: the damaged run is not named"
    assert "\x1b" not in printed and "\x07" not in printed, f"{where}: a control character printed raw"
    resumed = resume and what.startswith(("summary.json", "checkpoints"))
    if resumed:
        with time_limit(SECONDS):
            try:
                train({**cfg, "trainer": {**cfg["trainer"], "resume": "auto"}}, victim)
            except UsageError:
                pass  # refused in one line (RunRefused, ConfigError): what damage must get
            except Hang as e:
                raise AssertionError(f"{where}: resume hung: {e}") from None
            except Exception as e:
                raise AssertionError(f"{where}: resume raised {type(e).__name__}: {e}") from None
    assert fingerprint(here / "good") == good, f"{where}: a good run's files changed"
    shutil.rmtree(here)
    return what, resumed


def test_readers_and_resume_survive_random_damage(template, tmp_path):
    root, cfg = template
    good = fingerprint(root / "good")
    rng = random.Random(20261207)
    failures, resumed = [], 0
    for case in range(CASES):
        try:
            _, r = check_case(case, root, cfg, tmp_path, rng, resumed < RESUME_CASES, good)
            resumed += r
        except AssertionError as e:
            failures.append(str(e).splitlines()[0])
    assert fingerprint(root / "good") == good
    assert not failures, "\n".join(failures)
    assert resumed == RESUME_CASES
