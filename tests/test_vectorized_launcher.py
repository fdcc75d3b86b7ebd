"""`regablate run -m hydra/launcher=vectorized`: the same sweep dirs as the ordinary launcher,
stacked groups in chunks, and the jobs that cannot stack run the ordinary way in the same sweep."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ENV, FAST, run_cli, run_patched
from regablate.config.paths import CONF_DIR
from regablate.report.command import main as report_main

# dataset.k=60 > d=50 is refused when the data is built: those jobs are recorded as failed
SWEEP = ("+reg=none,dropout,batchnorm,mixup", "dataset.k=10,60", "dataset.n=300", "dataset.n_test=100",
         "trainer.max_epochs=2", "trainer.tensorboard=true", *FAST[:1], *FAST[2:])


def tree(root: Path) -> list[str]:
    """Relative paths under a sweep dir, TensorBoard event file names reduced to their kind."""
    names = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            names.append(re.sub(r"events\.out\.tfevents\..*", "events.out.tfevents", str(p.relative_to(root))))
    return names


def test_mixed_sweep_writes_the_ordinary_launchers_run_dirs(tmp_path, capsys):
    vec = run_cli("run", "-m", "hydra/launcher=vectorized", "hydra.launcher.max_members=1", *SWEEP,
                  "hydra.sweep.dir=vec", cwd=tmp_path)
    ordinary = run_cli("run", "-m", *SWEEP, "hydra.sweep.dir=ord", cwd=tmp_path)
    assert vec.returncode == ordinary.returncode == 2  # the invalid jobs, after the others ran
    assert vec.stderr.splitlines()[-1] == ordinary.stderr.splitlines()[-1].replace("ord/", "vec/") == (
        "regablate: error: 4 of 8 jobs did not complete: 4 failed (vec/1, vec/3, vec/5 and 1 more: "
        "invalid config: dataset.k=60: must be <= dataset.d (50))")
    out = vec.stdout + vec.stderr
    # grouping: none+dropout (chunks of one member), batchnorm, mixup and the invalid jobs the
    # ordinary way, each with its note
    assert "Stacked group 1: K=2 members in 2 chunk(s) of <= 1: #0 #2" in out
    assert "Stacked group 2: K=1 members in 1 chunk(s) of <= 1: #4" in out
    assert re.search(r"chunk 2/2: K=1, \d+ steps in [\d.]+ s: [\d.]+ ms per member-step", out)
    assert len(re.findall(r"#[67] : \+reg=mixup .*\[ordinary: reg mixup has no stacked form\]", out)) == 2
    assert len(re.findall(r"#[135] : .*dataset.k=60 .*\[ordinary: invalid config \(recorded in its run dir\)\]",
                          out)) == 3
    v, o = tmp_path / "vec", tmp_path / "ord"
    assert tree(v) == tree(o)
    for job in range(8):
        for name in ("config.yaml", "overrides.yaml"):
            assert (v / str(job) / ".hydra" / name).read_text() == (o / str(job) / ".hydra" / name).read_text()
        a, b = (json.loads((d / str(job) / "summary.json").read_text()) for d in (v, o))
        assert set(a) == set(b) and a["group"] == b["group"] and a["reg"] == b["reg"]
        assert a["status"] == b["status"] == ("failed" if job % 2 else "completed")
        if job % 2 == 0:
            heads = [(d / str(job) / "metrics.csv").read_text().splitlines()[0] for d in (v, o)]
            assert heads[0] == heads[1]
    assert "hydra/launcher: vectorized" in (v / "0" / ".hydra" / "hydra.yaml").read_text()
    # the report reads both sweeps alike: the same groups, columns and run counts
    tables = []
    for d in (v, o):
        assert report_main([str(d), "--format", "csv"]) == 0
        lines = capsys.readouterr().out.splitlines()
        tables.append((lines[0], sorted(line.split(",")[0] for line in lines[1:])))
    assert tables[0] == tables[1]


# A Hydra app of the user's own on regablate's configs. `python app.py foreign|regablate ARGS`
# runs its own task function or regablate's; a Hydra callback can lock job 1's run dir when job 0
# starts (as another process writing it would), and the resolver `${count:}` counts its calls.
APP = '''
import fcntl, os, sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

held = []


def count():
    with open("resolver_calls", "a") as f:
        f.write("call\\n")
    return "cpu"


OmegaConf.register_new_resolver("count", count)


class LockJobOne(Callback):
    def on_job_start(self, config, **kwargs):
        if config.hydra.job.num == 0:
            run_dir = Path(config.hydra.sweep.dir) / "1"
            run_dir.mkdir(parents=True)
            held.append(os.open(run_dir, os.O_RDONLY))
            fcntl.flock(held[-1], fcntl.LOCK_EX)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def foreign(cfg):
    resolved = OmegaConf.to_container(cfg, resolve=True)
    (Path(HydraConfig.get().runtime.output_dir) / "foreign.txt").write_text(resolved["trainer"]["device"])


if __name__ == "__main__":
    from regablate.cli.run import hydra_main

    {"foreign": foreign, "regablate": hydra_main}[sys.argv.pop(1)]()
'''
TINY = ("dataset=tiny_binary", "trainer.max_epochs=2", "trainer.progress=none", "trainer.tensorboard=false")


def run_app(tmp_path: Path, task: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    app = tmp_path / "app.py"
    if not app.exists():
        app.write_text(f"CONF_DIR = {str(CONF_DIR)!r}\n" + APP)
    cwd.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, str(app), task, "-m", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


def resolver_calls(cwd: Path) -> int:
    return len((cwd / "resolver_calls").read_text().splitlines())


def test_a_foreign_task_function_runs_for_every_job_as_under_the_basic_launcher(tmp_path):
    args = (*TINY, "+reg=none,dropout", "trainer.device=${count:}", "hydra.sweep.dir=sweep")
    basic = run_app(tmp_path, "foreign", *args, cwd=tmp_path / "basic")
    vec = run_app(tmp_path, "foreign", "hydra/launcher=vectorized", *args, cwd=tmp_path / "vec")
    assert basic.returncode == vec.returncode == 0, vec.stderr
    sweep = tmp_path / "vec" / "sweep"
    assert sorted(p.name for p in sweep.glob("*/foreign.txt")) == ["foreign.txt"] * 2
    assert (sweep / "0" / "foreign.txt").read_text() == "cpu"
    assert not list(sweep.rglob("summary.json"))
    assert resolver_calls(tmp_path / "vec") == resolver_calls(tmp_path / "basic") == 2


def test_regablates_jobs_resolve_their_config_once_stacked_or_not(tmp_path):
    args = (*TINY, "+reg=none,mixup", "trainer.device=${count:}", "hydra.sweep.dir=sweep")
    basic = run_app(tmp_path, "regablate", *args, cwd=tmp_path / "basic")
    vec = run_app(tmp_path, "regablate", "hydra/launcher=vectorized", *args, cwd=tmp_path / "vec")
    assert basic.returncode == vec.returncode == 0, vec.stderr
    out = vec.stdout + vec.stderr
    assert "Stacked group 1: K=1" in out and "[ordinary: reg mixup has no stacked form]" in out
    for job in ("0", "1"):
        assert json.loads((tmp_path / "vec" / "sweep" / job / "summary.json").read_text())["status"] == "completed"
    assert resolver_calls(tmp_path / "vec") == resolver_calls(tmp_path / "basic") == 2


def digest(root: Path) -> dict[str, str]:
    """Every file under a sweep dir by its hash, except the multirun.yaml each launch writes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "multirun.yaml"}


def test_a_second_sweep_into_the_same_dir_changes_nothing_and_resume_continues_it(tmp_path):
    args = ("-m", "hydra/launcher=vectorized", *TINY, "+reg=none,dropout", "seed=0,1", "hydra.sweep.dir=sweep")
    assert run_cli("run", *args, cwd=tmp_path).returncode == 0
    sweep = tmp_path / "sweep"
    before = digest(sweep)
    assert len([name for name in before if name.endswith("summary.json")]) == 4
    again = run_cli("run", *args, cwd=tmp_path)
    assert again.returncode != 0
    assert "already holds a run (summary.json)" in again.stderr
    assert digest(sweep) == before  # not even a job log
    # job 2 "died" while running: trainer.resume=auto trains it again, the finished jobs are skipped
    cut = json.loads((sweep / "2" / "summary.json").read_text())
    (sweep / "2" / "summary.json").write_text(json.dumps({**cut, "status": "running"}))
    resumed = run_cli("run", *args, "trainer.resume=auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    def others(files: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in files.items() if not k.startswith("2/") and not k.endswith(".log")}

    assert others(digest(sweep)) == others(before)
    assert json.loads((sweep / "2" / "summary.json").read_text())["status"] == "completed"


def test_a_member_whose_run_dir_is_taken_is_refused_untouched_and_the_others_train(tmp_path):
    # job 1's dir is locked when job 0 starts, after the launcher planned the chunks
    r = run_app(tmp_path, "regablate", "hydra/launcher=vectorized", "hydra.launcher.max_members=1", *TINY,
                "+reg=none,dropout", "hydra.sweep.dir=sweep", "+hydra.callbacks.lock._target_=__main__.LockJobOne",
                cwd=tmp_path)
    assert r.returncode != 0
    assert "is being written by another process" in r.stderr
    sweep = tmp_path / "sweep"
    assert "Stacked group 1: K=2 members in 2 chunk(s)" in r.stdout + r.stderr
    assert json.loads((sweep / "0" / "summary.json").read_text())["status"] == "completed"
    assert list((sweep / "1").iterdir()) == []


def test_a_job_that_does_not_compose_stops_the_sweep_before_any_job_runs(tmp_path):
    """The vectorized launcher composes every job before it runs any (the sweeper does not
    compose the batch again to check it): a job that does not compose is the same one-line
    error and exit code 2 as under the basic launcher, and no job's run dir is written."""
    args = ("-m", *TINY, "+reg=none,nope", "hydra.sweep.dir=sweep")
    (tmp_path / "basic").mkdir()
    (tmp_path / "vec").mkdir()
    basic = run_cli("run", *args, cwd=tmp_path / "basic")
    vec = run_cli("run", *args, "hydra/launcher=vectorized", cwd=tmp_path / "vec")
    assert basic.returncode == vec.returncode == 2
    assert vec.stderr == basic.stderr and vec.stderr.startswith("regablate: error: In 'config': Could not find 'reg/nope'")
    assert len(vec.stderr.splitlines()) == 1 and "Launching" not in vec.stdout + vec.stderr
    assert [p.name for p in (tmp_path / "vec" / "sweep").iterdir()] == ["multirun.yaml"]


def state_differences(a: object, b: object, path: str = "") -> list[str]:
    """Where two configs' nodes differ in any attribute (value, flags, type, metadata), each
    node's parent being the node that holds it; not the flags cache."""
    from omegaconf import Node

    if type(a) is not type(b):
        return [f"{path}: {type(a).__name__} != {type(b).__name__}"]
    if isinstance(a, Node) or (hasattr(a, "__dict__") and not isinstance(a, type)):
        da, db = dict(vars(a)), dict(vars(b))
        if set(da) != set(db):
            return [f"{path}: attributes {sorted(set(da) ^ set(db))}"]
        out = []
        for k in sorted(set(da) - {"_parent", "_flags_cache"}):
            out += state_differences(da[k], db[k], f"{path}.{k}")
        if isinstance(da.get("_content"), (dict, list)):
            kids_a = da["_content"].values() if isinstance(da["_content"], dict) else da["_content"]
            kids_b = db["_content"].values() if isinstance(db["_content"], dict) else db["_content"]
            out += [f"{path}: parent" for x, y in zip(kids_a, kids_b)
                    if isinstance(x, Node) and (x._get_parent() is not a or y._get_parent() is not b)]
        return out
    if isinstance(a, dict):
        if list(a) != list(b):
            return [f"{path}: keys {list(a)} != {list(b)}"]
        return [d for k in a for d in state_differences(a[k], b[k], f"{path}[{k!r}]")]
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: {len(a)} != {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in state_differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_jobs_that_differ_in_plain_values_are_derived_as_hydra_composes_them():
    """A job whose overrides differ from an already composed job's only in plain values is that
    composition with the values applied: the same config, task overrides and override_dirname
    as Hydra's own composition; group overrides (`+reg`, `sched`) make another shape."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from regablate.sweep.vectorized_compose import _copy, _derive, _shape

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="regablate"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", ["hydra.sweep.dir=x"], RunMode.MULTIRUN)
        base = ["+reg=dropout", "seed=0", "sched=none", "optim.lr=0.01", "reg.dropout.p=0.1"]
        for other in (["+reg=dropout", "seed=3", "sched=none", "optim.lr=0.003", "reg.dropout.p=0.5"],
                      ["+reg=dropout", "seed=0", "sched=none", "optim.lr=1", "reg.dropout.p=0.1"]):
            assert _shape(loader, other) == _shape(loader, base)
            derived = _derive(base, loader.load_sweep_config(master, base), other)
            real = loader.load_sweep_config(master, other)
            assert OmegaConf.to_yaml(derived) == OmegaConf.to_yaml(real)
            assert state_differences(derived, real) == []  # flags, types, metadata too
            assert derived.data_seed == int(other[1][5:])
        composed = loader.load_sweep_config(master, base)
        assert state_differences(_copy(composed), composed) == []
        assert _shape(loader, ["+reg=none", *base[1:]]) != _shape(loader, base)
        assert _shape(loader, [*base[:2], "sched=plateau", *base[3:]]) != _shape(loader, base)
    GlobalHydra.instance().clear()


def test_conv_members_stack_and_a_group_of_one_matches_the_ordinary_run(tmp_path):
    """convnet on a tiny fake CIFAR-10: dropout, spatial dropout, DropBlock, the batch transforms
    (augment, cutout, mixup, cutmix) and a member without any (rate 0) stack as one group. In
    chunks of one member, each run's numbers are the ordinary launcher's to float tolerance (masks
    and transforms drawn in the same order from the same RNG stream; mixing members' probability
    targets through the stacked loss).
    Without BatchNorm: its NHWC kernel in the stacked model rounds differently, and on random
    images with batches of 4 that grows to 1e-2 in the loss by epoch 3 (both stacked modes)."""
    from conftest import write_fake_cifar10

    root = write_fake_cifar10(tmp_path / "data")
    sweep = ("model=convnet", "model.widths=[4,8,8]", "model.hidden=[16]", "model.norm=none", "dataset=cifar10",
             f"dataset.root={root}", "dataset.n_train=100", "trainer.batch_size=32", "optim=sgd",
             "optim.lr=0.01", "trainer.device=cpu", "+reg=none,dropout,spatial_dropout,dropblock,augment,cutout,mixup,cutmix", *FAST)
    vec = run_cli("run", "-m", "hydra/launcher=vectorized", "hydra.launcher.max_members=1", *sweep,
                  "hydra.sweep.dir=vec", cwd=tmp_path)
    ordinary = run_cli("run", "-m", *sweep, "hydra.sweep.dir=ord", cwd=tmp_path)
    assert vec.returncode == ordinary.returncode == 0, vec.stderr[-2000:]
    out = vec.stdout + vec.stderr
    assert "Stacked group 1: K=8 members in 8 chunk(s) of <= 1: #0 #1 #2 #3 #4 #5 #6 #7" in out
    assert "ordinary:" not in out
    assert tree(tmp_path / "vec") == tree(tmp_path / "ord")
    for job in range(8):
        a, b = (json.loads((tmp_path / d / str(job) / "summary.json").read_text()) for d in ("vec", "ord"))
        assert a["status"] == b["status"] == "completed" and a["epochs_run"] == b["epochs_run"] == 3
        for split in ("train", "val", "test"):
            assert a[split]["loss"] == pytest.approx(b[split]["loss"], abs=1e-5), (job, split)
            # random images give near-tied logits: a rounding difference may flip one sample
            assert a[split]["acc"] == pytest.approx(b[split]["acc"], abs=0.02), (job, split)
        ra, rb = (list(csv.DictReader(open(tmp_path / d / str(job) / "metrics.csv"))) for d in ("vec", "ord"))
        assert [float(r["val_loss"]) for r in ra] == pytest.approx([float(r["val_loss"]) for r in rb], abs=1e-5), job


def test_a_chunk_of_one_member_trained_the_ordinary_way_is_its_ordinary_run(tmp_path):
    """single=ordinary: each chunk of one is the member's ordinary run (the same files and the
    same numbers to the bit), logged as such. (single=auto on the CPU stacks an MLP alone, the
    faster way there: test_mixed_sweep_writes_the_ordinary_launchers_run_dirs' chunks of one.)"""
    sweep = ("+reg=none,dropout", "dataset.n=300", "dataset.n_test=100", *FAST)
    single = run_cli("run", "-m", "hydra/launcher=vectorized", "hydra.launcher.max_members=1",
                     "hydra.launcher.single=ordinary", *sweep, "hydra.sweep.dir=single", cwd=tmp_path)
    ordinary = run_cli("run", "-m", *sweep, "hydra.sweep.dir=ord", cwd=tmp_path)
    assert single.returncode == ordinary.returncode == 0, single.stderr[-2000:]
    out = single.stdout + single.stderr
    assert "Stacked group 1: K=2 members in 2 chunk(s) of <= 1: #0 #1" in out
    for c in (1, 2):
        assert f"chunk {c}/2: K=1, #{c - 1} trains the ordinary way (hydra.launcher.single=ordinary)" in out
    assert "ms per member-step" not in out
    assert tree(tmp_path / "single") == tree(tmp_path / "ord")
    for job in range(2):
        a, b = (json.loads((tmp_path / d / str(job) / "summary.json").read_text()) for d in ("single", "ord"))
        assert a["status"] == b["status"] == "completed"
        assert [a[k] for k in ("train", "val", "test", "best_epoch")] == [b[k] for k in ("train", "val", "test", "best_epoch")]
        rows = [[{k: v for k, v in r.items() if k != "epoch_time_s"} for r in rows_of(tmp_path / d / str(job))]
                for d in ("single", "ord")]
        assert rows[0] == rows[1] and len(rows[0]) == 3
        assert "hydra/launcher: vectorized" in (tmp_path / "single" / str(job) / ".hydra" / "hydra.yaml").read_text()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_a_conv_member_alone_trains_the_ordinary_way_and_an_mlp_stays_stacked(tmp_path):
    from conftest import write_fake_cifar10

    root = write_fake_cifar10(tmp_path / "data")
    conv = ("model=resnet", "model.depth=8", "model.width=4", "dataset=cifar10", f"dataset.root={root}",
            "dataset.n_train=100", "trainer.batch_size=32", "optim=sgd", "trainer.device=cuda", "+reg=none", *FAST)
    r = run_cli("run", "-m", "hydra/launcher=vectorized", *conv, "hydra.sweep.dir=conv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "chunk 1/1: K=1, #0 trains the ordinary way (hydra.launcher.single=auto)" in r.stdout + r.stderr
    r = run_cli("run", "-m", "hydra/launcher=vectorized", "+reg=none", "trainer.device=cuda", *TINY,
                "hydra.sweep.dir=mlp", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert re.search(r"chunk 1/1: K=1, \d+ steps in", r.stdout + r.stderr)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_stacked_amp_members_match_their_ordinary_amp_runs(tmp_path):
    """bf16 conv members stacked (K=4, nothing that drops) against the same runs the ordinary
    way with trainer.amp: the same losses within bf16's rounding at every epoch and at the end
    (the final model on both sides, so a rounding cannot pick another best epoch; accuracies of
    20 random-label images are left out: one near-tie flipped is 0.05)."""
    from conftest import write_fake_cifar10

    root = write_fake_cifar10(tmp_path / "data")
    sweep = ("model=resnet", "model.depth=8", "model.width=4", "dataset=cifar10", f"dataset.root={root}",
             "dataset.n_train=100", "trainer.batch_size=32", "optim=sgd", "trainer.device=cuda",
             "trainer.amp=true", "+reg=none,l2", "seed=0,1", *FAST, "trainer.max_epochs=2",
             "trainer.restore_best=false")
    vec = run_cli("run", "-m", "hydra/launcher=vectorized", *sweep, "hydra.sweep.dir=vec", cwd=tmp_path)
    ordinary = run_cli("run", "-m", *sweep, "hydra.sweep.dir=ord", cwd=tmp_path)
    assert vec.returncode == ordinary.returncode == 0, vec.stderr[-2000:]
    assert "Stacked group 1: K=4 members in 1 chunk(s)" in vec.stdout + vec.stderr
    for job in range(4):
        a, b = (json.loads((tmp_path / d / str(job) / "summary.json").read_text()) for d in ("vec", "ord"))
        assert a["status"] == b["status"] == "completed"
        for split in ("train", "val", "test"):
            assert a[split]["loss"] == pytest.approx(b[split]["loss"], rel=5e-2), (job, split)
        rows = [rows_of(tmp_path / d / str(job)) for d in ("vec", "ord")]
        assert [r["epoch"] for r in rows[0]] == [r["epoch"] for r in rows[1]] == ["1", "2"]
        for x, y in zip(*rows):
            for key in ("train_loss", "val_loss"):
                assert float(x[key]) == pytest.approx(float(y[key]), rel=5e-2), (job, x["epoch"], key)


def test_conv_members_of_one_group_train_as_one_stacked_model(tmp_path):
    """Four resnet members (seeds, DropPath and a penalty) in one chunk: one stacked model, one
    shared last.pt; each member's files are complete and its numbers near its ordinary run's."""
    from conftest import write_fake_cifar10

    root = write_fake_cifar10(tmp_path / "data")
    sweep = ("model=resnet", "model.depth=8", "model.width=4", "dataset=cifar10", f"dataset.root={root}",
             "dataset.n_train=100", "trainer.batch_size=32", "optim=sgd", "trainer.device=cpu",
             "+reg=none,droppath,l2", "seed=0,1", *FAST)
    vec = run_cli("run", "-m", "hydra/launcher=vectorized", *sweep, "hydra.sweep.dir=vec", cwd=tmp_path)
    assert vec.returncode == 0, vec.stderr[-2000:]
    assert "Stacked group 1: K=6 members in 1 chunk(s)" in vec.stdout + vec.stderr
    lasts = {(tmp_path / "vec" / str(j) / "checkpoints" / "last.pt").stat().st_ino for j in range(6)}
    assert len(lasts) == 1
    for job in range(6):
        s = json.loads((tmp_path / "vec" / str(job) / "summary.json").read_text())
        assert s["status"] == "completed" and s["model"] == "resnet" and len(rows_of(tmp_path / "vec" / str(job))) == 3
        assert math.isfinite(s["test"]["loss"])


def rows_of(run_dir: Path) -> list[dict]:
    return list(csv.DictReader(open(run_dir / "metrics.csv")))


def test_job_files_are_emitted_as_omegaconf_emits_them():
    """The .hydra files go through libyaml's emitter: the same text as OmegaConf.to_yaml, awkward
    strings, a whole composed config with its hydra node, and a list included."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from regablate.sweep.vectorized_compose import to_yaml as _to_yaml

    awkward = OmegaConf.create({
        "long": "x" * 200, "words": "a " * 60, "colon": "key: value", "unicode": "ünïcödé ✓", "lines": "a\nb",
        "lead": "  lead", "yes": "yes", "num": "123", "empty": "", "interp": "${x.y}", "esc": "\\${esc}",
        "tab": "t\tx", "dash": "- item", "hash": "#c", "null": "null", "sci": "1e-3", "tilde": "~", "at": "@a",
        "tick": "`b`", "sep": "a\u2028b", "bell": "\x07", "float": 1e-10, "inf": float("inf"), "none": None,
        "list": ["x y", "z:", "long " * 30], "nested": {"q": "'q'", "dq": '"dq"', "trail": "t "}})
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base=None):
        cfg = compose("config", overrides=["+reg=dropout_l2", "seed=3"], return_hydra_config=True)
    for node in (awkward, cfg, cfg.hydra, cfg.hydra.overrides.task):
        assert _to_yaml(node) == OmegaConf.to_yaml(node)


def test_a_bad_executor_or_slurm_setting_is_one_line_and_exit_2(tmp_path):
    r = run_cli("run", "-m", "hydra/launcher=vectorized", "hydra.launcher.executor=ssh", "+reg=none", *TINY,
                "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == ("regablate: error: invalid config: "
                                                 "hydra.launcher.executor='ssh': allowed: local, slurm")
    r = run_cli("run", "-m", "hydra/launcher=vectorized", "hydra.launcher.single=sometimes", "+reg=none", *TINY,
                "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == ("regablate: error: invalid config: "
                                                 "hydra.launcher.single='sometimes': allowed: auto, stacked, ordinary")
    r = run_cli("run", "-m", "hydra/launcher=vectorized", "hydra.launcher.executor=slurm",
                "+hydra.launcher.slurm.partitio=gpu", "+reg=none", *TINY, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith(
        "regablate: error: invalid config: hydra.launcher.slurm.partitio='gpu': not a setting of submitit's")
    for setting, says in (("max_members=0", "max_members=0: must be >= 1 (or null: as many as fit)"),
                          ("memory_fraction=2", "memory_fraction=2.0: must be in (0, 1]")):
        r = run_cli("run", "-m", "hydra/launcher=vectorized", f"hydra.launcher.{setting}", "+reg=none", *TINY,
                    "hydra.sweep.dir=sweep", cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-2000:]
        assert r.stderr == f"regablate: error: invalid config: hydra.launcher.{says}\n", r.stderr
    assert not (tmp_path / "sweep").exists()  # refused before any job was composed or written


OUT_OF_MEMORY = """
import gc, os, sys, weakref
import torch
from regablate.cli.main import main
from regablate.vectorized.trainer import VectorizedTrainer

real, trainers, epochs = VectorizedTrainer._epoch, [], []

def epoch(self, runs):  # the first chunk runs out of memory in epoch OOM_EPOCH; the next one looks for its trainer
    if not trainers or trainers[0]() is self:
        trainers[:] = [weakref.ref(self)]
        epochs.append(1)
        if len(epochs) == int(os.environ["OOM_EPOCH"]):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, runs)
    if len(trainers) == 1:
        trainers.append(self)
        print("first chunk's trainer freed:", trainers[0]() is None, flush=True)
    return real(self, runs)

VectorizedTrainer._epoch = epoch
sys.argv = ["regablate", *sys.argv[1:]]
sys.exit(main())
"""


@pytest.mark.parametrize("oom_epoch", [1, 2])
def test_a_chunk_out_of_memory_frees_what_it_held_and_says_how_to_continue(oom_epoch, tmp_path):
    """A chunk that runs out of memory fails its members with one log line that names the
    settings that continue the sweep in smaller chunks; what it held (its frames: the stacked
    model, data and step) is freed before the next chunk starts, which then trains; the printed
    settings complete the sweep. Out of memory in epoch 2, after its checkpoint of epoch 1, the
    chunk goes on from there split in two, each member from its own state: to the very numbers
    of the sweep that never ran out."""
    args = ["run", "-m", "hydra/launcher=vectorized", "hydra.launcher.max_members=2", "+reg=none,dropout",
            "seed=0,1", "dataset.n=200", "dataset.n_test=50", "trainer.max_epochs=2", *FAST[1:],
            "trainer.checkpoint_every_s=0"]
    r = subprocess.run([sys.executable, "-c", OUT_OF_MEMORY, *args, "hydra.sweep.dir=s"], cwd=tmp_path,
                       env={**ENV, "OOM_EPOCH": str(oom_epoch)}, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out  # failed runs
    assert ("chunk 1/2 failed: OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (K=2 members did "
            "not fit; continue with hydra.launcher.max_members=1 trainer.resume=auto)") in out
    assert "first chunk's trainer freed: True" in out
    status = {d.name: json.loads((d / "summary.json").read_text())["status"] for d in (tmp_path / "s").iterdir()
              if d.is_dir()}
    assert status == {"0": "failed", "1": "failed", "2": "completed", "3": "completed"}, status
    printed = r.stderr.strip().splitlines()[-1].split("; continue them with: ")[1]
    assert "hydra.launcher.max_members=1" in printed and "max_members=2" not in printed
    again = run_cli(*shlex.split(printed)[1:], cwd=tmp_path)  # the printed command, as typed
    assert again.returncode == 0, again.stderr
    # the failed members start again stacked, in chunks of one; the completed ones are skipped
    assert "Stacked group 1: K=2 members in 2 chunk(s) of <= 1: #0 #1" in again.stdout + again.stderr
    assert len(re.findall(r"#[23] : .*\[ordinary: .*\(already completed\)\]", again.stdout + again.stderr)) == 2
    assert {json.loads((tmp_path / "s" / str(i) / "summary.json").read_text())["status"] for i in range(4)} == {
        "completed"}
    assert [[r["epoch"] for r in rows_of(tmp_path / "s" / str(i))] for i in range(4)] == [["1", "2"]] * 4
    out = again.stdout + again.stderr
    if oom_epoch == 1:
        assert "continues a chunk interrupted" not in out
        return
    assert "continues a chunk interrupted after epoch 1 in 2 smaller chunks" in out
    whole = run_cli(*args, "hydra.sweep.dir=whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-2000:]
    for i in range(4):
        a, b = (json.loads((tmp_path / d / str(i) / "summary.json").read_text()) for d in ("s", "whole"))
        assert {k: v for k, v in a.items() if k != "wall_time_s"} == {k: v for k, v in b.items() if k != "wall_time_s"}
        assert [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in rows_of(tmp_path / "s" / str(i))] == \
            [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in rows_of(tmp_path / "whole" / str(i))]


def test_out_of_memory_is_recognised_on_cuda_and_on_the_cpu_and_a_lone_member_is_told_what_to_lower():
    from regablate.sweep.vectorized_launch import _memory_hint, _without_frames

    for e in (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
              RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory"),
              RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
              MemoryError()):
        assert _memory_hint(e, 8).endswith("continue with hydra.launcher.max_members=4 trainer.resume=auto)"), e
        assert "lower trainer.batch_size" in _memory_hint(e, 1)
    assert _memory_hint(RuntimeError("shape mismatch"), 8) == ""
    try:
        try:
            raise ValueError("inner")
        except ValueError:
            raise RuntimeError("out of memory")  # noqa: B904  (chained as the launcher meets it)
    except RuntimeError as e:
        caught = e
    assert caught.__traceback__ is not None and caught.__context__.__traceback__ is not None
    kept = _without_frames(caught)
    assert kept is caught and kept.__traceback__ is None and kept.__context__.__traceback__ is None


SECOND_MEMBER_FAILS = """
import regablate.training.session as session
real, calls = session.closing_fields, []
def closing(*args, **kwargs):  # the second member's closing evaluation fails, after the first's run ended
    calls.append(1)
    if len(calls) == 2:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 TB")
    return real(*args, **kwargs)
session.closing_fields = closing
"""


def test_a_chunk_that_fails_after_a_members_run_ended_counts_that_member_as_it_ended(tmp_path):
    # before: every member of the chunk was counted failed, the one whose summary said completed too
    r = run_patched(SECOND_MEMBER_FAILS, "run", "-m", "hydra/launcher=vectorized", "seed=0,1", *FAST,
                    "hydra.sweep.dir=sw", cwd=tmp_path)
    status = {p.parent.name: json.loads(p.read_text())["status"] for p in (tmp_path / "sw").glob("*/summary.json")}
    assert status == {"0": "completed", "1": "failed"}, (status, r.stderr[-2000:])
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("regablate: error: 1 of 2 jobs did not complete: 1 failed (sw/1: ")
