"""Readers of run dirs (`regablate report`, `load_runs` / `load_curves`, `regablate tb`'s view)
on run dirs that may come from someone else: every one of them ends, in bounded memory, skips
what it cannot read safely with its reason, keeps the good runs' numbers, changes no file, and
prints no control character from the data."""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from report_fixtures import DROPOUT, NONE, ablation, write_run

from conftest import ENV, REPO
from regablate.rundir.untrusted import (
    RefusedFile,
    RefusedValue,
    check_tree,
    escape_control,
    is_sane_number,
    load_json_safe,
    load_yaml_safe,
    read_bounded,
)

MEMORY = 3 << 30  # address space of a reader's process: a bomb fails fast instead of swapping
TIMEOUT = 180     # seconds; the readers take a few on a busy machine

# 1.7 KB of YAML that expands to 10^9 strings when aliases are followed ("billion laughs")
BOMB = "lol: &a0 [" + ", ".join(['"lolololololololololol"'] * 9) + "]\n" + "".join(
    f"l{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n" for i in range(1, 10))
BOMB = BOMB.replace("lol: ", "model:\n  name: mlp\n  lol: ", 1)


_ENV = {k: v for k, v in ENV.items() if k != "COLUMNS"}  # piped output: every column, unwrapped


def _limits():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def _python(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """python ARGS in a fresh process with bounded memory; a hang fails the test."""
    try:
        return subprocess.run([sys.executable, *args], cwd=cwd, env=_ENV, capture_output=True,
                              text=True, timeout=TIMEOUT, preexec_fn=_limits)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {TIMEOUT} s: {' '.join(args)}")


READERS = r"""
import json, sys, warnings
from pathlib import Path

import regablate
from regablate.tensorboard import view as tb_view
from regablate.report.command import main

root, out, view = map(Path, sys.argv[1:4])
rc = main([str(root), "--format", "json", "--out", str(out), *sys.argv[4:]])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    runs = regablate.load_runs(root)
    curves = regablate.load_curves(root)
said = []
shown = tb_view.build([root], view, warn=said.append)
print(json.dumps({
    "rc": rc, "runs": sorted(Path(d).name for d in runs.run_dir),
    "val": {k: v.tolist() for k, v in runs.groupby("reg", observed=True)["val_acc"]},
    "warned": [str(w.message) for w in caught
               if issubclass(w.category, regablate.report.frames.SkippedRunWarning)],
    "curves": sorted({Path(d).name for d in curves.run_dir}), "tb": list(shown), "tb_warn": said}))
"""


def _good(root: Path) -> Path:
    """Three seeds each of none and dropout: the runs whose numbers must come out right."""
    ablation(root, {"none": NONE[:3], "dropout": DROPOUT[:3]}, seeds=range(3))
    return root


def _snapshot(root: Path) -> dict:
    """Every entry under root: its kind and, for files and links, their content."""
    out = {}
    for here, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(here) / name
            st = p.lstat()
            out[str(p)] = (st.st_mode, os.readlink(p) if p.is_symlink() else
                           p.read_bytes() if p.is_file() else None, st.st_mtime_ns)
    return out


def _rewrite(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _replace_with_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _symlink(path: Path, target) -> None:
    path.unlink()
    path.symlink_to(target)


def _set(key, value, split=None):
    def change(doc):
        (doc[split] if split else doc)[key] = value
    return lambda run: _rewrite(run / "summary.json", change)


def _huge_int(run: Path) -> None:
    text = (run / "summary.json").read_text()
    doc = json.loads(text)
    doc["val"]["acc"] = 0
    (run / "summary.json").write_text(json.dumps(doc).replace('"acc": 0}', '"acc": ' + "7" * 400 + "}"))


def _elsewhere(run: Path) -> None:
    outside = run.parents[2] / "elsewhere"
    outside.mkdir()
    (outside / "summary.json").write_bytes((run / "summary.json").read_bytes())
    _symlink(run / "summary.json", outside / "summary.json")


def _hydra_link_out(run: Path) -> None:
    outside = run.parents[2] / "elsewhere_hydra"
    (run / ".hydra").rename(outside)
    (run / ".hydra").symlink_to(outside)


def _padded(run: Path) -> None:
    text = (run / "summary.json").read_text()
    (run / "summary.json").write_text(text[:-1] + " " * (5 << 20) + "}")


CASES = {  # how a dropout run (seed 9, val 0.5: it would change the dropout mean) is spoiled
    "alias_bomb": (lambda run: (run / ".hydra" / "config.yaml").write_text(BOMB), "alias"),
    "summary_fifo": (lambda run: _replace_with_fifo(run / "summary.json"), "summary.json: a FIFO"),
    "config_fifo": (lambda run: _replace_with_fifo(run / ".hydra" / "config.yaml"), "a FIFO"),
    "metrics_fifo": (lambda run: _replace_with_fifo(run / "metrics.csv"), "metrics.csv: a FIFO"),
    "summary_dev_zero": (lambda run: _symlink(run / "summary.json", "/dev/zero"), "/dev/zero"),
    "summary_link_out": (_elsewhere, "out of its run dir"),
    "hydra_link_out": (_hydra_link_out, "out of its run dir"),
    "summary_too_large": (_padded, "over the 4.0 MiB limit"),
    "int_of_400_digits": (_huge_int, "400 digits"),
    "list_as_seed": (_set("seed", [1, 2]), "'seed' is a list"),
    "text_as_epoch": (_set("best_epoch", "8"), "'best_epoch' is text"),
    "bool_as_metric": (_set("acc", True, "val"), "not a number"),
    "metric_1e308": (_set("acc", 1e308, "val"), "out of range"),
    "curve_1e308": (lambda run: (run / "metrics.csv").write_text(
        (run / "metrics.csv").read_text().replace("\n1,", "\n1e308,", 1)), "out of range"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hostile_run_is_skipped_with_its_reason_and_the_good_runs_are_read(tmp_path, case):
    spoil, reason = CASES[case]
    root = _good(tmp_path / "multirun")
    bad = write_run(root / "bad" / case, reg=("dropout",), seed=9, train=0.6, val=0.5, test=0.5)
    spoil(bad)
    before = _snapshot(root)
    r = _python("-c", READERS, str(root), str(tmp_path / "report.json"), str(tmp_path / "view"),
                "--plot", str(tmp_path / "plots"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout)
    assert got["rc"] == 0
    # the report: the good runs with their numbers, the bad one skipped with its reason
    doc = json.loads((tmp_path / "report.json").read_text())
    groups = {g["name"]: g for g in doc["groups"]}
    assert {n: g["n"] for n, g in groups.items()} == {"none": 3, "dropout": 3}
    for name, rows in (("none", NONE[:3]), ("dropout", DROPOUT[:3])):
        assert groups[name]["val"]["acc"]["mean"] == pytest.approx(sum(v for _, v, _ in rows) / 3)
    assert [s["dir"] for s in doc["skipped"]] == [str(bad)]
    assert reason in doc["skipped"][0]["reason"]
    warning = [line for line in r.stderr.splitlines() if "warning: skipped" in line]
    assert len(warning) == 1 and case in warning[0] and reason in warning[0]
    assert "figure(s)" in r.stderr  # --plot went through
    # load_runs / load_curves: the same six runs, one warning naming the bad dir
    assert got["runs"] == ["0", "1", "2", "3", "4", "5"] == got["curves"]
    assert got["val"]["dropout"] == pytest.approx([v for _, v, _ in DROPOUT[:3]])
    assert len(got["warned"]) == 2 and all(case in w and reason in w for w in got["warned"])
    # tb's view: the six runs in two groups, the bad dir named
    assert got["tb"] == [6, 2]
    assert len(got["tb_warn"]) == 1 and case in got["tb_warn"][0]
    assert _snapshot(root) == before  # not a file changed, added or removed


def test_a_fifo_summary_does_not_hang_the_report_command(tmp_path):
    root = _good(tmp_path / "multirun")
    bad = write_run(root / "bad" / "fifo", reg=("dropout",), seed=9)
    _replace_with_fifo(bad / "summary.json")
    r = _python("-m", "regablate", "report", "multirun", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "0.844" not in r.stdout and "0.840 ± 0.010" in r.stdout  # dropout's three seeds
    assert r.stderr.splitlines()[0] == (f"regablate report: warning: skipped {Path('multirun/bad/fifo')}: "
                                        "summary.json: a FIFO, not a regular file; not read")


def test_non_finite_metrics_are_not_averaged_and_the_runs_are_named(tmp_path, capsys,
                                                                    monkeypatch):
    import regablate
    from regablate.report.command import main

    root = _good(tmp_path / "multirun")
    nan = write_run(root / "odd" / "nan", reg=("dropout",), seed=7)
    inf = write_run(root / "odd" / "inf", reg=("dropout",), seed=8)
    _set("acc", math.nan, "val")(nan)
    _set("acc", math.inf, "val")(inf)
    assert "NaN" in (nan / "summary.json").read_text()
    assert "Infinity" in (inf / "summary.json").read_text()
    out = tmp_path / "report.json"
    assert main([str(root), "--format", "json", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    dropout = next(g for g in doc["groups"] if g["name"] == "dropout")
    mean = sum(v for _, v, _ in DROPOUT[:3]) / 3
    assert dropout["n"] == 3 and dropout["val"]["acc"]["mean"] == pytest.approx(mean)
    assert dropout["gap"]["mean"] == pytest.approx(sum(t - v for t, v, _ in DROPOUT[:3]) / 3)
    assert dropout["statuses"] == {"completed": 5}
    assert sorted(dropout["non_finite"]) == sorted([str(inf), str(nan)])
    note = next(line for line in doc["footer"] if "non-finite" in line)
    assert note.startswith("2 runs with non-finite metrics left out: ")
    assert "odd/inf (val.acc)" in note and "odd/nan (val.acc)" in note
    # the terminal table: finite numbers only, the runs counted in "not averaged"
    monkeypatch.delenv("COLUMNS", raising=False)
    assert main([str(root)]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.lstrip().startswith("dropout"))
    assert "inf" not in row and "nan" not in row
    assert f"{mean:.3f} ± 0.010" in row and row.rstrip().endswith("2 non-finite")
    assert "2 runs with non-finite metrics left out: " in table
    # the API: summarize leaves them out the same way
    frame = regablate.summarize(regablate.load_runs(root))
    row = frame.set_index("label").loc["dropout"]
    assert row["n"] == 3 and row["val_mean"] == pytest.approx(mean)
    assert row["not_averaged"] == "2 non-finite"


HOSTILE_TEXT = "relu\x1b]0;pwned\x07\x1b[2J"


def _escape_tree(root: Path) -> Path:
    _good(root)
    for seed in range(2):
        write_run(root / "esc" / str(seed), reg=("dropout",), seed=seed,
                  config={"model": {"act": HOSTILE_TEXT}})
        write_run(root / "plain" / str(seed), reg=("dropout",), seed=seed,
                  config={"model": {"act": "gelu"}})
    odd = write_run(root / "esc_reg" / "0", reg=("l2",), seed=0)
    _set("reg", ["l2\x1b[31m"])(odd)
    (root / "broken\x1b[2J").mkdir()
    (root / "broken\x1b[2J" / "summary.json").write_text("{not json")
    return root


@pytest.mark.parametrize("args", [[], ["--runs"], ["--format", "markdown"], ["--format", "csv"],
                                  ["--format", "latex"], ["--format", "json"]])
def test_control_characters_from_run_dirs_are_printed_escaped(tmp_path, args):
    _escape_tree(tmp_path / "multirun")
    r = _python("-m", "regablate", "report", "multirun", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    for stream in (r.stdout, r.stderr):
        assert not any(c in stream for c in "\x1b\x07\x9b"), stream[:2000]
    fmt = args[-1] if args[-1:] in (["json"], ["latex"]) else "text"
    label, reg = {"json": (json.dumps(HOSTILE_TEXT)[1:-1], "l2\\u001b[31m"),
                  "latex": (r"relu\textbackslash{}x1b]0;pwned\textbackslash{}x07",
                            r"l2\textbackslash{}x1b[31m"),
                  "text": (escape_control(HOSTILE_TEXT), "l2\\x1b[31m")}[fmt]
    assert label in r.stdout and reg in r.stdout
    assert "broken\\x1b[2J: summary.json is not valid JSON" in r.stderr


def test_tb_messages_and_view_names_are_escaped_and_short(tmp_path, monkeypatch, capsys):
    from regablate.cli import tb
    from regablate.tensorboard import view as tb_view

    root = _escape_tree(tmp_path / "multirun")
    for seed in range(2):  # a label far longer than a file name may be
        write_run(root / "long" / str(seed), reg=("dropout",), seed=seed,
                  config={"model": {"act": "x" * 400}})
    monkeypatch.setenv("REGABLATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tb, "serve", lambda cmd: 0)
    assert tb.main([str(root)]) == 0
    err = capsys.readouterr().err
    assert not any(c in err for c in "\x1b\x07")
    assert "warning: skipped" in err and "broken\\x1b[2J" in err
    assert "13 runs in 6 groups" in err
    view = tb_view.cache_dir([root])
    names = [p.name for p in view.iterdir() if p.is_dir()]
    assert len(names) == 6 and max(map(len, names)) <= tb_view.MAX_NAME
    assert not any("\x1b" in n for n in names)
    assert any(n.startswith("dropout act=relu\\x1b]0;pwned\\x07") for n in names)


def test_tb_view_links_only_regular_files_inside_the_run(tmp_path):
    from regablate.tensorboard import view as tb_view

    root = _good(tmp_path / "multirun")
    run = root / "2026-11-23" / "10-00-00" / "0"
    (run / "tb" / "val").mkdir()
    (run / "tb" / "events.out.tfevents.1").write_bytes(b"")
    (run / "tb" / "val" / "events.out.tfevents.2").write_bytes(b"")
    (tmp_path / "secret").write_text("not a run's")
    (run / "tb" / "events.out.tfevents.3").symlink_to(tmp_path / "secret")
    os.mkfifo(run / "tb" / "val" / "events.out.tfevents.4")
    other = root / "2026-11-23" / "10-00-00" / "1"
    (other / "tb").rmdir()
    (other / "tb").symlink_to(tmp_path)  # the whole tmp dir as a run's tb/
    said = []
    assert tb_view.build([root], tmp_path / "view", warn=said.append) == (5, 2)
    linked = sorted(str(p.relative_to(tmp_path / "view")) for p in (tmp_path / "view").rglob("*")
                    if p.is_symlink())
    assert linked == ["none/seed=0/events.out.tfevents.1", "none/seed=0/val/events.out.tfevents.2"]
    assert len(said) == 2 and any("tfevents.3 (a symbolic link)" in s for s in said)
    assert any("tfevents.4 (not a regular file)" in s for s in said)


# -- the helpers themselves -------------------------------------------------------------------

def test_read_bounded_refuses_what_is_not_a_small_regular_file_inside(tmp_path):
    (tmp_path / "run").mkdir()
    ok = tmp_path / "run" / "ok.json"
    ok.write_text('{"a": 1}')
    assert read_bounded(ok, within=tmp_path / "run") == b'{"a": 1}'
    os.mkfifo(tmp_path / "run" / "fifo")
    (tmp_path / "run" / "zero").symlink_to("/dev/zero")
    (tmp_path / "run" / "inner").symlink_to("ok.json")
    (tmp_path / "outside").write_text("{}")
    (tmp_path / "run" / "out").symlink_to(tmp_path / "outside")
    assert read_bounded(tmp_path / "run" / "inner", within=tmp_path / "run") == b'{"a": 1}'
    for name, why in (("fifo", "a FIFO"), ("zero", "symbolic link"), ("out", "out of its run dir")):
        with pytest.raises(RefusedFile, match=why) as e:
            read_bounded(tmp_path / "run" / name, within=tmp_path / "run")
        assert isinstance(e.value, OSError) and e.value.reason in str(e.value)
    with pytest.raises(RefusedFile, match="symbolic link"):
        read_bounded(tmp_path / "run" / "inner")  # without `within`, no link is followed
    with pytest.raises(RefusedFile, match="over the 4 bytes limit"):
        read_bounded(ok, cap=4)
    with pytest.raises(FileNotFoundError):
        read_bounded(tmp_path / "run" / "missing", within=tmp_path / "run")


def test_load_yaml_safe_refuses_aliases_and_odd_values():
    with pytest.raises(RefusedValue, match=r"YAML alias \(\*a0\) on line 4"):
        load_yaml_safe(BOMB)
    assert len(BOMB) < 1800
    assert load_yaml_safe("a: {b: [1, 2.5, x]}\nwhen: 2026-11-23\nglob: '*.png'\n") == {
        "a": {"b": [1, 2.5, "x"]}, "when": "2026-11-23", "glob": "*.png"}
    for text, why in (("x: !!binary aGk=\n", "type bytes"), ("x: !!set {a}\n", "type set"),
                      ("x: " + "9" * 400 + "\n", "400 digits"), ("x: 1.0e+308\n", "out of range"),
                      ("x: [unclosed\n", "line 2"), ("x: !!python/object:os.system {}\n", "tag")):
        with pytest.raises(RefusedValue, match=why):
            load_yaml_safe(text)


def test_load_json_safe_and_number_checks():
    assert load_json_safe(b'{"a": [1, 2.5], "b": null}') == {"a": [1, 2.5], "b": None}
    assert math.isnan(load_json_safe("NaN")) and load_json_safe("-Infinity") == -math.inf
    for text, why in (("1" * 400, "400 digits"), ("1e308", "out of range"), ("[" * 5000, "deep"),
                      ('{"a": ', "not valid JSON"), (b"\xff", "UTF-8")):
        with pytest.raises(RefusedValue, match=why):
            load_json_safe(text)
    assert [is_sane_number(x) for x in (1, -2.5, 10**15 - 1, 10**15, 1e100, math.nan, True, "1")] \
        == [True, True, True, False, False, False, False, False]
    with pytest.raises(RefusedValue, match=r"a\.b\[1\]: an integer of 16 digits"):
        check_tree({"a": {"b": [0, 10**15]}})


def test_escape_control_makes_every_control_character_visible():
    assert escape_control("a\x1b]0;pwned\x07b\x1b[2J\tc\nd\x9b\u202e é ±") == \
        "a\\x1b]0;pwned\\x07b\\x1b[2J\\x09c\\x0ad\\x9b\\u202e é ±"
    assert escape_control(3) == "3" and escape_control("plain") == "plain"


def test_import_regablate_stays_light():
    code = "import sys, regablate; print(sorted({'pandas', 'numpy', 'torch', 'scipy'} & set(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True,
                       text=True, timeout=TIMEOUT)
    assert r.returncode == 0 and r.stdout.strip() == "[]"
