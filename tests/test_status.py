"""`regablate status`: a sweep's state from its run dirs alone (regablate.cli.status)."""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

from regablate.cli.status import main, sweep_status
from regablate.rundir.scan import last_epoch
from regablate.training.loop import train
from tests.conftest import ENV, REPO, compose_cfg, run_cli

TINY = ("dataset=tiny_binary", "trainer.max_epochs=2", "trainer.progress=none",
        "trainer.tensorboard=false")
TASK = ["dataset=tiny_binary", "seed=0,1", "trainer.max_epochs=2", "trainer.progress=none",
        "trainer.tensorboard=false"]
ANSI = "ValueError: bad\x1b[2J\x1b]0;owned\x07 value\nsecond line"


def _edit(run_dir, **fields):
    path = run_dir / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A sweep dir as `regablate run -m` leaves it: two runs by the real trainer, then copies
    of one edited into every other state a run dir can be found in."""
    root = tmp_path_factory.mktemp("status") / "multirun" / "s"
    for seed in (0, 1):
        train(compose_cfg(*TINY, f"seed={seed}"), root / str(seed))
    (root / "multirun.yaml").write_text(
        "hydra:\n  mode: MULTIRUN\n  overrides:\n    hydra:\n    - hydra.sweep.dir=elsewhere\n"
        "    - hydra.mode=MULTIRUN\n    - hydra/launcher=joblib\n    task:\n"
        + "".join(f"    - {t}\n" for t in TASK))
    for n, status, error in ((2, "failed", ANSI), (3, "interrupted", "interrupted by SIGTERM"),
                             (4, "running", None), (5, "running", None), (6, "diverged", None)):
        shutil.copytree(root / "0", root / str(n))
        _edit(root / str(n), status=status, error=error)
    with open(root / "5" / "metrics.csv", "a") as f:
        f.write("3,0.001,0.6")  # the line being written: not read
    (root / "7" / ".hydra").mkdir(parents=True)  # claimed, no summary yet
    (root / "8").mkdir()  # a job dir with nothing in it
    (root / "9").mkdir()
    os.mkfifo(root / "9" / "summary.json")
    (root / "10").mkdir()
    (root / "10" / "summary.json").write_text('{"schema": 1, "status": "running"')
    (root / "11").mkdir()
    (root / "11" / "summary.json").write_text('{"schema": 1, "status": "\\u001b[31mlost"}')
    (root / ".hidden").mkdir()
    (root / "tb").mkdir()  # the sweep's TensorBoard experiment: not a run
    return root


@pytest.fixture
def held(sweep):
    """Run 5's lock held by another live process, as a job's `claim` holds it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom regablate.rundir.claim import claim\n"
         "with claim(sys.argv[1], 'auto'):\n    print('held', flush=True)\n    sys.stdin.read()",
         str(sweep / "5")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV,
        cwd=REPO)
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_counts_running_stale_failed_and_the_command(sweep, held):
    report = sweep_status([sweep])
    assert report["counts"] == {"running": 2, "completed": 2, "diverged": 1, "failed": 1,
                                "interrupted": 1, "no_summary": 2, "unreadable": 3, "stale": 1}
    [group] = report["groups"]
    assert group["sweep"] and group["dir"] == str(sweep)
    runs = {os.path.basename(r["dir"]): r for r in group["runs"]}
    assert list(runs) == [str(n) for n in range(12)]
    live, dead = runs["5"], runs["4"]
    assert live["lock"] == "held" and not live["stale"] and live["last_epoch"] == 2
    assert dead["lock"] == "free" and dead["stale"] and dead["last_epoch"] == 2
    assert 0 <= live["age_s"] < 600 and live["last_write"] == pytest.approx(
        max(os.stat(sweep / "5" / f).st_mtime for f in ("summary.json", "metrics.csv",
                                                          "checkpoints/last.pt")))
    assert runs["2"]["error"] == ANSI and runs["3"]["error"] == "interrupted by SIGTERM"
    assert runs["7"]["status"] == runs["8"]["status"] == "no_summary"
    assert runs["7"]["lock"] == "free"
    assert runs["9"]["reason"] == "summary.json: a FIFO, not a regular file; not read"
    assert runs["10"]["reason"].startswith("summary.json is not valid JSON")
    assert runs["11"]["reason"] == "summary.json has status '\\x1b[31mlost'"
    assert group["command"] == (
        "regablate run -m hydra/launcher=joblib " + " ".join(TASK)
        + f" hydra.sweep.dir={sweep} trainer.resume=auto")


def test_printed_lines_are_escaped_and_readable(sweep, held, capsys):
    assert main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    lines = out.splitlines()
    assert lines[0] == (f"{sweep}: 12 runs: 2 completed, 2 running (1 stale), 1 diverged, "
                        "1 failed, 1 interrupted, 2 no summary, 3 unreadable")
    line = {ln.replace("no summary", "no_summary").split()[1]: ln
            for ln in lines[1:] if ln.startswith("  ") and len(ln.split()) > 1}
    assert line["5"].split() == ["running", "5", "epoch", "2,", "last", "write",
                                 *line["5"].split()[6:8]] and "stale" not in line["5"]
    assert line["4"].startswith("  stale ") and "no process holds its lock" in line["4"]
    assert line["2"].endswith("ValueError: bad\\x1b[2J\\x1b]0;owned\\x07 value second line")
    assert line["3"].endswith("interrupted by SIGTERM")
    assert "never got going" in line["7"]
    assert "a FIFO" in line["9"] and "\\x1b[31mlost" in line["11"]
    assert lines[-2] == ("  continue with: regablate run -m hydra/launcher=joblib "
                         f"{' '.join(TASK)} hydra.sweep.dir={sweep} trainer.resume=auto")
    assert lines[-1] == "  (1 run is still being written: its job is refused until it ends)"


def test_json_for_machines(sweep, capsys):
    assert main(["--json", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert out.isascii() and "\x1b" not in out
    report = json.loads(out)
    assert report["counts"]["stale"] == 2  # nobody holds run 5 now
    assert report["groups"][0]["runs"][2]["error"] == ANSI


def test_a_fifo_summary_does_not_hang_a_fresh_process(sweep):
    done = subprocess.run([sys.executable, "-m", "regablate.cli.status", str(sweep)], cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == ""
    assert "Traceback" not in done.stdout and "a FIFO" in done.stdout


def test_missing_dir_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err == f"regablate status: error: DIR '{tmp_path / 'nope'}': no such directory\n"
    (tmp_path / "file").write_text("")
    assert main([str(tmp_path / "file")]) == 2
    assert "not a directory" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert main([]) == 2 and "no ./multirun or ./outputs" in capsys.readouterr().err
    assert main(["--bogus"]) == 2 and "unknown option '--bogus'" in capsys.readouterr().err


def test_default_roots_and_single_runs(sweep, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(sweep / "0", "outputs/day/ok")
    shutil.copytree(sweep / "3", "outputs/day/cut")
    (tmp_path / "outputs/day/cut/.hydra").mkdir()
    (tmp_path / "outputs/day/cut/.hydra/overrides.yaml").write_text(
        "- dataset=tiny_binary\n- seed=3\n")
    hostile = tmp_path / "outputs/day" / "evil\x1b[2J"
    shutil.copytree(sweep / "2", hostile)
    shutil.copytree(sweep / "3", tmp_path / "outputs/day" / os.fsdecode(b"not-utf8-\xff"))
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "outputs/day/not-utf8-\\xff  interrupted by SIGTERM" in out
    assert "\x1b" not in out
    assert "outputs (single runs): 4 runs: 1 completed, 0 running, 1 failed, 2 interrupted" in out
    assert ("continue with: regablate run dataset=tiny_binary seed=3 "
            "hydra.run.dir=outputs/day/cut trainer.resume=auto") in out
    assert "outputs/day/evil\\x1b[2J" in out  # a run with no overrides file: no command
    runs = {os.path.basename(r["dir"]): r for r in sweep_status(["outputs"])["groups"][0]["runs"]}
    assert runs["evil\x1b[2J"]["command_missing"] == ".hydra/overrides.yaml is missing"


def test_a_run_dir_inside_a_sweep_is_counted_with_its_sweep(sweep):
    [group] = sweep_status([sweep / "3"])["groups"]
    assert group["dir"] == str(sweep) and group["sweep"] and group["counts"]["interrupted"] == 1
    assert "hydra.sweep.dir=" in group["command"]


def test_last_epoch_reads_only_whole_lines_of_a_bounded_tail(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert last_epoch(str(run)) == (None, "no metrics.csv yet")
    (run / "metrics.csv").write_text("lr,epoch,val_acc\n")
    assert last_epoch(str(run)) == (None, "no epoch yet")
    with open(run / "metrics.csv", "a") as f:  # 20 MB: only its head and tail are read
        f.writelines(f"0.1,{e},0.5\n" for e in range(1, 1_000_001))
        f.write("0.1,1000001,0.")
    assert last_epoch(str(run)) == (1_000_000, None)
    (run / "metrics.csv").write_text("lr,epoch\n0.1,\x1b[2J\n")
    assert last_epoch(str(run)) == (None, "metrics.csv: the last epoch is '\\x1b[2J', not a number")
    (run / "metrics.csv").unlink()
    os.mkfifo(run / "metrics.csv")
    assert last_epoch(str(run)) == (None, "metrics.csv: a FIFO, not a regular file; not read")
    (run / "metrics.csv").unlink()
    (run / "metrics.csv").symlink_to("/dev/zero")
    why = last_epoch(str(run))[1]
    assert why.startswith("metrics.csv: a symbolic link out of its run dir")


def test_links_are_never_followed_and_an_empty_tree_has_no_groups(tmp_path, capsys):
    deep = tmp_path
    for i in range(50):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    (tmp_path / "loop").symlink_to(tmp_path)
    assert sweep_status([tmp_path])["groups"] == []
    assert main([str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"no run dirs below {tmp_path}\n"


def test_an_optuna_sweep_is_one_sweep_continued_by_its_own_command(sweep, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(sweep / "0", study / "trial_0" / "seed_0")
    shutil.copytree(sweep / "3", study / "trial_1" / "seed_0")
    [group] = sweep_status([study])["groups"]
    assert group["sweep"] and group["counts"]["interrupted"] == 1 and group["command"] is None
    # without its record (a study writes optuna_study.json as it ends) both ways are said; with it, the one that holds
    assert group["command_missing"].startswith("an Optuna study: if it had hydra.sweeper.storage, run the command that "
                                               "started it again") and "one in memory cannot be continued" in \
        group["command_missing"]
    for storage, says in (("sqlite:///s.db", "an Optuna study: run the command that started it again (same storage"),
                          (None, "an Optuna study kept in memory: its trials went with its process and cannot be "
                                 "continued; run it again into a new hydra.sweep.dir")):
        (study / "optuna_study.json").write_text(json.dumps({"schema": 1, "storage": storage, "trials": []}))
        [group] = sweep_status([study])["groups"]
        assert group["command_missing"].startswith(says), group["command_missing"]


@pytest.fixture(scope="module")
def three_jobs(tmp_path_factory):
    """A complete sweep of three jobs as `regablate run -m` leaves it (the tests copy it)."""
    cwd = tmp_path_factory.mktemp("jobs")
    done = run_cli("run", "-m", "seed=0,1,2", *TINY, "hydra.sweep.dir=sw", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return cwd / "sw"


def _group(path) -> dict:
    [group] = sweep_status([path])["groups"]
    return group


def test_jobs_that_never_started_are_counted_and_continued(three_jobs, tmp_path, capsys):
    sw = tmp_path / "sw"
    shutil.copytree(three_jobs, sw)
    shutil.rmtree(sw / "1")  # the sweep was killed before job 1 made its dir
    assert main([str(sw)]) == 0
    lines = capsys.readouterr().out.splitlines()
    command = (f"regablate run -m seed=0,1,2 {' '.join(TINY)} hydra.sweep.dir={sw} "
               "trainer.resume=auto")
    assert lines == [f"{sw}: 3 jobs: 2 completed, 0 running, 1 not started",
                     "  not started 1", f"  continue with: {command}"]
    assert main(["--json", str(sw)]) == 0
    report = json.loads(capsys.readouterr().out)
    [group] = report["groups"]
    assert (group["jobs"], group["not_started"], group["not_started_jobs"]) == (3, 1, [1])
    assert report["not_started"] == 1 and group["command"] == command

    done = run_cli(*shlex.split(command)[1:], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert main([str(sw)]) == 0
    assert capsys.readouterr().out == f"{sw}: 3 runs: 3 completed, 0 running\n"
    group = _group(sw)
    assert (group["jobs"], group["not_started"], group["not_started_jobs"], group["command"]) == (3, 0, [], None)


def test_a_sweep_killed_before_any_job_made_its_dir_is_all_not_started(three_jobs, tmp_path, capsys):
    # before: "no run dirs below sw", as if there were no sweep
    sw = tmp_path / "multirun" / "sw"
    sw.mkdir(parents=True)
    shutil.copy(three_jobs / "multirun.yaml", sw)
    assert main([str(tmp_path / "multirun")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{sw}: 3 jobs: 0 completed, 0 running, 3 not started"
    assert lines[-1].startswith("  continue with: regablate run -m seed=0,1,2 ")


def test_a_sweep_whose_process_holds_its_dir_is_said_to_be_running(three_jobs, tmp_path, capsys):
    from regablate.rundir.claim import hold_sweep_dir

    sw = tmp_path / "sw"
    shutil.copytree(three_jobs, sw)
    shutil.rmtree(sw / "2")
    with hold_sweep_dir(sw):  # as the sweep's own process holds it while it runs
        assert main([str(sw)]) == 0
        out = capsys.readouterr().out
        assert _group(sw)["being_swept"] is True
    assert "  (its sweep is running: a process holds the sweep dir; continue it once that has ended)" in out
    assert main([str(sw)]) == 0
    assert "its sweep is running" not in capsys.readouterr().out and _group(sw)["being_swept"] is False


def test_a_complete_sweep_shows_no_jobs_not_started(three_jobs, capsys):
    assert main([str(three_jobs)]) == 0
    assert capsys.readouterr().out == f"{three_jobs}: 3 runs: 3 completed, 0 running\n"


def _variant(three_jobs, where, task=None, params=None, **hydra):
    """A copy of the three-job sweep whose multirun.yaml says another sweep: `task` overrides,
    sweeper `params`, and other settings as `sweeper__seeds="auto"` (hydra.sweeper.seeds)."""
    shutil.copytree(three_jobs, where)
    tree = yaml.safe_load((where / "multirun.yaml").read_text())
    if task is not None:
        tree["hydra"]["overrides"]["task"] = list(task)
    tree["hydra"]["sweeper"]["params"] = params
    for key, value in hydra.items():
        outer, inner = key.split("__")
        tree["hydra"][outer][inner] = value
    (where / "multirun.yaml").write_text(yaml.safe_dump(tree))
    return where


@pytest.mark.parametrize(("task", "params", "jobs"), [
    (["seed=range(0,5)", *TINY], None, 5),
    (["seed=choice(0,1,2,3)", "+reg=none,dropout", *TINY], None, 8),
    (["seed=range(0,3)", *TINY], {"+reg": "none,dropout,l2"}, 9),
    (["seed=0,1", *TINY], {"seed": "0,1,2,3", "trainer.lr": 0.1}, 2),  # the command's seed= wins
])
def test_the_jobs_of_a_sweep_are_counted(three_jobs, tmp_path, task, params, jobs):
    group = _group(_variant(three_jobs, tmp_path / "sw", task, params))
    missing = list(range(3, jobs))
    assert (group["jobs"], group["not_started"], group["not_started_jobs"]) == (jobs, len(missing), missing)
    assert (group["command"] is None) == (not missing)


def test_a_design_sweep_counts_its_arms_as_its_ablation_json_lists_them(three_jobs, tmp_path):
    from regablate.sweep.designs import write_ablation_json

    task = ["+reg=[dropout,l2]", "seed=0,1", *TINY]
    sw = _variant(three_jobs, tmp_path / "sw", task, sweeper__design="factorial")
    assert _group(sw)["jobs"] is None  # no ablation.json: the arms are not known for sure
    write_ablation_json(sw, "factorial", ["dropout", "l2"], [0, 1], task[1:])
    group = _group(sw)
    assert (group["jobs"], group["not_started_jobs"]) == (8, [3, 4, 5, 6, 7])
    other = _variant(three_jobs, tmp_path / "other", task, sweeper__design="factorial")
    write_ablation_json(other, "factorial", ["dropout", "l2"], [0, 1, 2], task[1:])
    assert _group(other)["jobs"] is None  # it says other seeds


@pytest.mark.parametrize("change", [
    {"task": ["seed=shuffle(0,1,2,3)", *TINY]},
    {"task": ["+reg=glob(*)", "seed=0,1,2,3", *TINY]},
    {"task": ["seed=0,1,2,3", "trainer.lr=interval(0.01,0.1)", *TINY]},
    {"task": ["seed=range(0,10**9)", *TINY]},
    {"task": ["seed=range(0,2000000)", *TINY]},
    {"task": ["seed=0,1,2,3", *TINY], "sweep__subdir": "${hydra.job.override_dirname}"},
    {"task": ["+reg=none,dropout", *TINY], "sweeper__seeds": "auto"},
    {"task": ["seed=0,1,2,3", *TINY], "sweeper___target_": "hydra_plugins.regablate_optuna.optuna_sweeper.OptunaSweeper"},
    {"task": ["seed=0,1,2,3", *TINY], "file": "sequential.json"},
    {"task": ["seed=0,1,2,3", *TINY], "file": "optuna_study.json"},
], ids=["shuffle", "glob", "interval", "unparsed", "too-many", "subdir", "seeds-auto", "optuna",
        "rounds", "study"])
def test_a_sweep_whose_jobs_cannot_be_counted_exactly_gets_no_count(three_jobs, tmp_path, change, capsys):
    change = dict(change)
    file = change.pop("file", None)
    sw = _variant(three_jobs, tmp_path / "sw", **change)
    if file:
        (sw / file).write_text("{}")
    group = _group(sw)
    assert (group["jobs"], group["not_started"], group["not_started_jobs"]) == (None, None, None)
    assert main([str(sw)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"{sw}: 3 runs: 3 completed, 0 running"


def test_jobs_not_started_beside_a_live_run_and_the_total(three_jobs, tmp_path, capsys):
    sw = _variant(three_jobs, tmp_path / "m" / "sw", ["seed=range(0,30)", *TINY])
    shutil.copytree(three_jobs, tmp_path / "m" / "done")
    _edit(sw / "2", status="running")
    fd = os.open(sw / "2", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as the job writing it holds it
        assert main([str(tmp_path / "m")]) == 0
    finally:
        os.close(fd)
    lines = capsys.readouterr().out.splitlines()
    assert lines[lines.index(f"{sw}: 30 jobs: 2 completed, 1 running, 27 not started") + 1].startswith("  running")
    assert lines.count("  not started 3") == 1 and "  not started 22" in lines
    assert "  not started 23" not in lines and "  ... and 7 more not started (--all lists them)" in lines
    assert "  (the sweep may still be running and start the jobs not started itself: continue it " \
           "once it has ended)" in lines
    assert lines[-1] == "total: 33 jobs: 5 completed, 1 running, 27 not started"


def test_the_continue_command_keeps_the_flags_that_chose_the_configs():
    # before: a sweep run with --config-dir (a user's own config groups) got a command without it,
    # which could not find them
    from regablate.cli.status import _sweep_command

    multirun = {"hydra": {"overrides": {"task": ["dataset=mine", "seed=0,1"], "hydra": ["hydra.mode=MULTIRUN"]},
                          "job": {"config_name": "mine"},
                          "runtime": {"config_sources": [
                              {"path": "hydra.conf", "schema": "pkg", "provider": "hydra"},
                              {"path": "/work/conf", "schema": "file", "provider": "main"},
                              {"path": "/home/me/cfg", "schema": "file", "provider": "command-line"}]}}}
    command, why = _sweep_command("/tmp/sw", multirun)
    assert why is None and command == ("regablate run -m --config-dir /home/me/cfg --config-name mine dataset=mine "
                                       "seed=0,1 hydra.sweep.dir=/tmp/sw trainer.resume=auto")
