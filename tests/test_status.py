"""`regablate status`: a sweep's state from its run dirs alone (regablate.cli.status)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from regablate.cli.status import main, sweep_status
from regablate.rundir.scan import last_epoch
from regablate.training.loop import train
from tests.conftest import ENV, REPO, compose_cfg

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
    assert group["command_missing"].startswith("an Optuna study: run the command that started it")
