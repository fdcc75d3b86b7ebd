"""Real `regablate` processes, checked through their exit codes, messages and files."""

from __future__ import annotations

import json
import shlex

import pytest
import yaml

from conftest import FAST, run_cli

SMALL = ("dataset.n=300", "dataset.n_test=100", *FAST)


def test_single_run_writes_the_run_dir(tmp_path):
    r = run_cli("run", "+reg=dropout_l2", *SMALL, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["reg"] == ["dropout", "l2"]
    assert (run_dir / "metrics.csv").exists() and (run_dir / "checkpoints").is_dir()
    assert yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())[0] == "+reg=dropout_l2"
    assert yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["reg"]["dropout"] == {"p": 0.5, "attn": 0.0, "proj": 0.0, "embed": 0.0}


def test_multirun_2x2_shares_groups_across_seeds(tmp_path):
    r = run_cli("run", "-m", "+reg=none,dropout", "seed=0,1", *SMALL,
                "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summaries = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/summary.json"))]
    assert len(summaries) == 4 and all(s["status"] == "completed" for s in summaries)
    by_group: dict[str, set] = {}
    for s in summaries:
        by_group.setdefault(s["group"], set()).add((tuple(s["reg"]), s["seed"]))
    assert sorted(by_group.values(), key=str) == sorted(
        [{((), 0), ((), 1)}, {(("dropout",), 0), (("dropout",), 1)}], key=str)


@pytest.mark.parametrize("args,message", [
    (("+reg=dropout", "reg.dropout.p=1.5"), "reg.dropout.p=1.5: must be in [0, 1)"),
    (("optim.lr=0",), "optim.lr=0: must be > 0"),
    (("+reg=nope",), "Could not find 'reg/nope'"),
    (("+reg=[dropout,cutmx]",), "Could not load 'reg/cutmx'. Available options in 'reg': augment "),
    (("optim=sgd", "optim.momentum=0", "optim.nesterov=true"),
     "optim.nesterov=True: needs optim.momentum > 0 (it is 0)"),
    (("reg.dropout.p=0.3",), "reg.dropout.p=0.3: dropout is not in the run's stack; add it: +reg=dropout"),
    (("+reg=dropout", "+reg.dropout.q=1"), "reg.dropout.q=1: unknown key; allowed: p"),
    (("trainer.threads=-2",), "trainer.threads=-2: must be an integer in [0, 1024] (0 = auto)"),
    (("trainer.threads=1.5",), "trainer.threads=1.5: must be an integer in [0, 1024]"),
    (("trainer.threads=2147483648",), "trainer.threads=2147483648: must be an integer in [0, 1024]"),
    (("seed=18446744073709551616",), "seed=18446744073709551616: must be an integer in [0, 2^64)"),
    (("optim.lr=1e39",), "optim.lr=1e+39: must be a number within float32's range"),
    ((f"optim.lr=1{'0' * 400}",), "optim.lr=1000000000000000000000000000000000000000000000000000000000000"),
    ((f"dataset.n=1{'0' * 30}",), "dataset.n=1000000000000000000000000000000: must be an integer within int64's range"),
    (("eval.calibration_bins=1000000000000",), "eval.calibration_bins=1000000000000: must be in [1, 10000]"),
    (("seed=${oc.env:REGABLATE_NO_SUCH_VAR}",), "seed='${oc.env:REGABLATE_NO_SUCH_VAR}': does not resolve: "
                                                "KeyError raised while resolving interpolation"),
    (("+reg=dropout", "reg.dropout.pp=0.1"), "reg.dropout.pp=0.1: unknown key; allowed: p, attn, proj, embed"),
    (("trainer.early_stopping.patiense=3",), "trainer.early_stopping.patiense=3: unknown key; allowed: patience, "
                                             "min_delta, monitor"),
    (("optim.name=sgd",), "optim.name='sgd': changes the name, not the group: optim.betas is"),
    (("dataset.d=100000000000",), "the dataset does not fit in memory ("),
    (("model.hidden=[100000000000]",), "its largest sizes: model.hidden=[100000000000]; lower them"),
    (("trainer.batch_size=${nope}",), "trainer.batch_size='${nope}': does not resolve: Interpolation key 'nope' not found"),
    (("+reg=augment",), "reg.augment='on': needs image inputs (channels, height, width): dataset=cifar10 or "
                        "dataset=image_folder; the dataset chosen (dataset.name='sparse_synthetic') gives inputs of shape (50,)"),
    (("dataset=sine_sequence", "model=lstm", "+reg=cutout"), "reg.cutout='on': needs image inputs"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, args, message):
    r = run_cli("run", *args, *FAST, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("summary.json"))
    assert not list(tmp_path.rglob(".hydra"))  # no half-made run dir


def test_no_trainer_group_is_one_line(tmp_path):
    r = run_cli("run", "trainer=null", cwd=tmp_path)  # before: AttributeError from reading trainer.resume
    assert r.returncode == 2 and r.stderr == "regablate: error: invalid config: trainer=None: must be the trainer's settings (trainer.max_epochs=..., ...)\n"
    assert not list(tmp_path.rglob(".hydra"))


def test_bad_job_in_a_sweep_is_recorded_and_the_others_run(tmp_path):
    r = run_cli("run", "-m", "+reg=dropout", "reg.dropout.p=0.2,1.5", *SMALL,
                "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        "regablate: error: 1 of 2 jobs did not complete: 1 failed "
        "(sweep/1: invalid config: reg.dropout.p=1.5: must be in [0, 1))")
    assert "Error executing job" not in r.stderr and "Traceback" not in r.stderr
    statuses = {json.loads(p.read_text())["status"] for p in (tmp_path / "sweep").glob("*/summary.json")}
    assert statuses == {"completed", "failed"}


def test_hydra_flags_keep_working_and_unknown_command(tmp_path):
    r = run_cli("run", "optim=adam", "optim.weight_decay=1e-3", "--cfg", "job", cwd=tmp_path)
    assert r.returncode == 0 and "name: adam" in r.stdout and "weight_decay: 0.001" in r.stdout
    r = run_cli("frobnicate", cwd=tmp_path)
    assert r.returncode == 2 and "unknown command 'frobnicate'; allowed: run, report" in r.stderr


@pytest.mark.parametrize("argv", [["--cfg", "job", "seed=1"], ["seed=1", "--cfg", "job"], ["-m", "a=1", "b=2"],
                                  ["a=1", "b=2", "-m"], ["--info"], ["--info", "plugins", "a=1"],
                                  ["-c", "job", "-p", "optim", "optim=adam"], ["--cfg=job", "--resolve"]])
def test_hydras_flags_pass_the_check(argv):
    from regablate.cli.main import _check_flags

    _check_flags(argv)


FLAGS = ("--cfg, --config-dir, --config-name, --config-path, --experimental-rerun, --help, --hydra-help, "
         "--info, --multirun, --package, --resolve, --run, --shell-completion, --version")


@pytest.mark.parametrize("argv,message", [
    (["trainer.max_epochs=1", "-m", "seed=0,1"],
     "seed=0,1: an override after -m, which follows other overrides; Hydra takes the overrides together, "
     "before or after its flags: regablate run -m trainer.max_epochs=1 seed=0,1"),
    (["a=1", "--cfg", "job", "b=2", "-m", "c=3"], "b=2: an override after --cfg, which follows other "
     "overrides; Hydra takes the overrides together, before or after its flags: regablate run --cfg job -m "
     "a=1 b=2 c=3"),
    (["--cfg", "jobs"], "argument --cfg/-c: invalid choice: 'jobs' (choose from 'job', 'hydra', 'all')"),
    (["--info", "bogus"], "argument --info/-i: invalid choice: 'bogus' (choose from 'all', 'config', "
                          "'defaults', 'defaults-tree', 'plugins', 'searchpath')"),
    (["a=1", "--trainer.max_epochs=1"], f"--trainer.max_epochs=1: not a flag of regablate run; its flags: "
                                        f"{FLAGS} (settings are overrides: key=value)"),
])
def test_a_bad_or_misplaced_hydra_flag_is_refused(argv, message):
    from regablate.cli.main import _check_flags
    from regablate.errors import UsageError

    with pytest.raises(UsageError) as e:
        _check_flags(argv)
    assert str(e.value) == message


@pytest.mark.parametrize("argv", [["+reg=dropout", "seed=0,1", "-m"], ["-m", "+reg=dropout", "seed=0,1"],
                                  ["+reg=dropout", "-m", "seed=0,1", "hydra.sweep.dir=old", "trainer.resume=never"]])
def test_the_printed_continue_command_is_one_hydra_takes(argv):
    # before: `+reg=dropout seed=0,1 -m` was continued with overrides after -m, which Hydra refuses
    from regablate.cli.main import _check_flags, resume_command

    command = resume_command(argv, {"sweep": "/tmp/s"})
    assert command == "regablate run -m +reg=dropout seed=0,1 hydra.sweep.dir=/tmp/s trainer.resume=auto"
    _check_flags(shlex.split(command)[2:])
    # Hydra takes an abbreviated --multirun too: still a sweep, continued in its dir
    assert resume_command(["--multi", "seed=0,1"], {"sweep": "/tmp/s"}) == \
        "regablate run --multi seed=0,1 hydra.sweep.dir=/tmp/s trainer.resume=auto"


def test_a_misplaced_flag_is_one_line_exit_2_and_runs_nothing(tmp_path):
    r = run_cli("run", "trainer.max_epochs=1", "-m", "seed=0,1", cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == "" and r.stderr == (
        "regablate: error: seed=0,1: an override after -m, which follows other overrides; Hydra takes the "
        "overrides together, before or after its flags: regablate run -m trainer.max_epochs=1 seed=0,1\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["status", "plan", "export"])
def test_status_and_plan_are_commands(tmp_path, capsys, command):
    """`regablate status`, `plan` and `export` reach their modules through the one entry point."""
    from regablate import cli

    (tmp_path / "sweep").mkdir()
    with pytest.raises(SystemExit) as e:
        args = {"status": [], "plan": ["--delta", "0.1"], "export": ["--tracking-uri", "sqlite:///x.db"]}[command]
        cli.main([*([command, "mlflow"] if command == "export" else [command]), str(tmp_path / "nowhere"), *args])
    assert e.value.code == 2 and "nowhere" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert f"  {command} " in capsys.readouterr().out
