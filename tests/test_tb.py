"""`regablate tb`: argument handling, the TensorBoard command line, and the no-dir error."""

import sys

import pytest

from regablate import tb


def test_no_dir_is_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert tb.main([]) == 2
    assert "no ./multirun or ./outputs" in capsys.readouterr().err
    assert tb.main(["missing"]) == 2
    assert "'missing': no such directory" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--port", "http"], ["--port", "70000"], ["--colour"]])
def test_bad_options_are_one_line(tmp_path, capsys, args):
    assert tb.main([str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and args[0] in err


def test_argv_for_one_and_several_dirs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    assert tb.tensorboard_argv(tb.logdirs([]), "localhost", 6006) == [
        sys.executable, "-m", "tensorboard.main", "--logdir", "outputs",
        "--host", "localhost", "--port", "6006"]
    (tmp_path / "multirun").mkdir()
    (tmp_path / "x" / "multirun").mkdir(parents=True)
    cmd = tb.tensorboard_argv(tb.logdirs(["multirun", "outputs", "x/multirun"]), "0.0.0.0", 7)
    spec = cmd[cmd.index("--logdir_spec") + 1].split(",")
    assert spec == [f"multirun:{tmp_path / 'multirun'}", f"outputs:{tmp_path / 'outputs'}",
                    f"multirun_2:{tmp_path / 'x' / 'multirun'}"]
    assert cmd[-4:] == ["--host", "0.0.0.0", "--port", "7"]


def test_main_starts_tensorboard_with_the_built_argv(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(tb, "serve", lambda cmd: seen.append(cmd) or 0)
    assert tb.main([str(tmp_path), "--port", "6010"]) == 0
    assert seen == [[sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path),
                     "--host", "localhost", "--port", "6010"]]


def test_serve_returns_the_exit_code():
    assert tb.serve([sys.executable, "-c", "raise SystemExit(3)"]) == 3
