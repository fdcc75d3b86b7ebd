"""`regablate export mlflow`: a 3 regularisers x 3 seeds sweep into a real MLflow server (read
back through its REST API) and into a sqlite store; exporting again changes nothing; runs that
finish later are added. Skipped where mlflow is not installed (`pip install 'regablate[mlflow]'`)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from report_fixtures import write_run

from regablate.report.export import _key, main

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network from the tests

REGS = ((), ("dropout",), ("l2",))
START_S = 90  # a busy 2-core machine: ~45 s to start (imports, migrations, uvicorn)


def _sweep(root: Path) -> Path:
    """3 stacks x 3 seeds, completed, with metrics.csv curves; and one l2 run still running."""
    for i, reg in enumerate(REGS):
        for seed in range(3):
            write_run(root / f"{i}_{seed}", reg=reg, seed=seed, train=0.95 - 0.01 * i,
                      val=0.8 + 0.01 * seed + 0.02 * i, test=0.79 + 0.01 * seed,
                      best_epoch=6 + seed, epochs=8 + seed)
    write_run(root / "2_3", reg=("l2",), seed=3, status="running")
    return root


def _summary(run_dir: str) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def _expected(summary: dict) -> dict:
    m = summary["metric"]
    return {f"{split}_{k}": summary[split][k] for split in ("train", "val", "test")
            for k in ("loss", m)} | {"gap": summary["gap"], "best_epoch": summary["best_epoch"],
                                     "epochs_run": summary["epochs_run"]}


def _column(run_dir: str, name: str) -> tuple[list, list]:
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [int(r["epoch"]) for r in rows], [float(r[name]) for r in rows]


def _export(*args) -> int:
    return main(["mlflow", *map(str, args)])


# ---- without mlflow, and names ----

def test_without_mlflow_one_line_and_exit_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    assert _export(tmp_path, "--tracking-uri", "sqlite:///x.db") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'regablate[mlflow]'" in err[0]


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["wandb", str(tmp_path)]) == 2
    assert _export(tmp_path) == 2  # no --tracking-uri
    assert main([]) == 2
    assert "--tracking-uri" in capsys.readouterr().err


def test_no_target_is_one_line(capsys):
    assert main([]) == 2
    assert capsys.readouterr().err == ("regablate export: error: no target; allowed: mlflow (regablate "
                                       "export mlflow [DIR ...] --tracking-uri URI)\n")


@pytest.mark.parametrize("args,said", [
    (["--tracking-uri", ""], "--tracking-uri '': empty; a store's URI, e.g. sqlite:///mlflow.db"),
    (["--tracking-uri", " "], "--tracking-uri ' ': empty;"),
    (["--tracking-uri", "bogus://x"], "--tracking-uri 'bogus://x': not a store MLflow knows; allowed: "
                                      "a folder, or a URI of scheme file, "),
    (["--tracking-uri", "sqlite:///{d}/m.db", "--experiment", ""],
     "--experiment '': empty; a name (default regablate)"),
    (["--tracking-uri", "sqlite:///{d}/m.db", "--artifact-location", ""], "--artifact-location '': empty"),
])
def test_bad_store_or_name_is_one_line_exit_2(tmp_path, capsys, args, said):
    pytest.importorskip("mlflow")
    _sweep(tmp_path / "sweep")
    before = sorted(tmp_path.rglob("*"))
    assert _export(tmp_path / "sweep", *[a.format(d=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"regablate export: error: {said}") and err.count("\n") == 1, err
    assert sorted(tmp_path.rglob("*")) == before  # no store made


def test_a_store_or_artifacts_in_a_run_dir_are_refused(tmp_path, monkeypatch, capsys):
    """A run dir holds only what its run wrote: an export never puts a store or its artifacts
    there (a sqlite:/// database made its file and mlartifacts/ beside it in the run dir)."""
    pytest.importorskip("mlflow")
    root = _sweep(tmp_path / "sweep")
    monkeypatch.chdir(tmp_path)
    run = root / "0_0"
    before = sorted(tmp_path.rglob("*"))
    for args, said in (
            (["--tracking-uri", "sqlite:///sweep/0_0/m.db"],
             f"--tracking-uri 'sqlite:///sweep/0_0/m.db': sweep/0_0/m.db is inside the run dir {run}, "
             "which holds only what its run wrote; put it outside, e.g. --tracking-uri sqlite:///mlflow.db"),
            (["--tracking-uri", f"sqlite:///{run}/deeper/m.db"], f"is inside the run dir {run}"),
            (["--tracking-uri", "file:sweep/0_0"], "--tracking-uri 'file:sweep/0_0': sweep/0_0 is a run dir"),
            (["--tracking-uri", run.as_uri() + "/store"], f"{run}/store is inside the run dir {run}"),
            (["--tracking-uri", "sweep/0_0/store"], f"sweep/0_0/store is inside the run dir {run}"),
            (["--tracking-uri", "sqlite:///m.db", "--artifact-location", "sweep/0_0/a"],
             f"--artifact-location 'sweep/0_0/a': sweep/0_0/a is inside the run dir {run}, which holds "
             "only what its run wrote; put it outside, e.g. --artifact-location mlartifacts"),
            (["--tracking-uri", "sqlite:///m.db", "--artifact-location", run.as_uri()],
             f"{run} is a run dir")):
        assert _export(root, *args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith(f"regablate export: error: {args[-2]} ") and said in err, err
        assert err.count("\n") == 1, err
    assert sorted(tmp_path.rglob("*")) == before


def test_keys_mlflow_accepts():
    assert _key("reg.dropout.p") == "reg.dropout.p"
    assert _key("val_acc", "curve/") == "curve/val_acc"
    for hostile in ("../../x", "/abs", "a//b", "a/", "é:x\n$", "", ".", "a/../b", "x" * 300):
        k = _key(hostile, "curve/") if hostile else _key(hostile)
        assert len(k) <= 250 and all(c.isalnum() or c in "_-./ " for c in k)
        assert not k.startswith(("/", "..")) and os.path.normpath(k) == k


# ---- a sqlite store, no server ----

@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory):
    """One sqlite store for the module (MLflow creates its tables once: seconds)."""
    pytest.importorskip("mlflow")
    return f"sqlite:///{tmp_path_factory.mktemp('sqlite_store')}/mlflow.db"


def test_sqlite_store_once_and_again(sqlite_uri, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    root = _sweep(tmp_path / "sweep")
    uri = sqlite_uri
    args = (root, "--tracking-uri", uri, "--artifact-location", tmp_path / "artifacts",
            "--no-plots")
    assert _export(*args) == 0
    out = capsys.readouterr().out
    assert "exported 9 run(s) (3 new group(s))" in out and "1 running" in out
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("regablate").experiment_id

    def runs():
        return {r.info.run_id: r for r in client.search_runs([exp], max_results=1000)}

    first = runs()
    kids = [r for r in first.values() if r.data.tags["regablate.kind"] == "seed"]
    assert len(first) == 12 and len(kids) == 9
    for r in kids:
        summary = _summary(r.data.tags["regablate.run_dir"])
        assert r.data.metrics.items() >= _expected(summary).items()
        assert r.data.params["seed"] == str(summary["seed"])
        assert r.data.tags["mlflow.parentRunId"] in first
        assert r.info.status == "FINISHED"

    # an export killed while writing a run left it RUNNING: the next one writes it anew
    stray = kids[0]
    client.set_terminated(stray.info.run_id, "RUNNING")
    assert _export(*args) == 0
    again = runs()
    assert len(again) == 12 and stray.info.run_id not in again
    assert "exported 1 run(s) (0 new group(s))" in capsys.readouterr().out
    before = {k: (r.info.end_time, r.data.metrics, r.data.params, r.data.tags)
              for k, r in again.items()}
    assert _export(*args) == 0
    assert {k: (r.info.end_time, r.data.metrics, r.data.params, r.data.tags)
            for k, r in runs().items()} == before
    assert "exported 0 run(s) (0 new group(s))" in capsys.readouterr().out


def test_hostile_names_are_made_mlflow_keys(sqlite_uri, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    run = write_run(tmp_path / "odd", config={"we:ird": {"../k": 1, "$x": "a\nb"}})
    text = (run / "metrics.csv").read_text().replace("weights/norm", "x/../../y:z", 1)
    (run / "metrics.csv").write_text(text)
    assert _export(run, "--tracking-uri", sqlite_uri, "--experiment", "odd",
                   "--artifact-location", tmp_path / "artifacts", "--no-plots") == 0
    client = MlflowClient(sqlite_uri)
    exp = client.get_experiment_by_name("odd").experiment_id
    by_kind = {r.data.tags["regablate.kind"]: r for r in client.search_runs([exp])}
    assert by_kind["group"].data.params["we_ird.../k"] == "1"
    assert by_kind["group"].data.params["we_ird._x"] == "a\nb"
    curves = [k for k in by_kind["seed"].data.metrics if k.startswith("curve/")]
    assert "curve/x_.._.._y_z" in curves and "curve/val_acc" in curves


def test_a_sqlite_stores_plots_go_beside_it_not_into_the_working_dir(tmp_path, monkeypatch, capsys):
    # MLflow's default artifact root is ./mlruns: an export run from inside a sweep dir wrote there
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    root = _sweep(tmp_path / "sweep")
    monkeypatch.chdir(root)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    assert _export(".", "--tracking-uri", uri) == 0
    assert not (root / "mlruns").exists() and not (root / "mlartifacts").exists()
    exp = MlflowClient(uri).get_experiment_by_name("regablate")
    assert exp.artifact_location == (tmp_path / "store" / "mlartifacts").as_uri()
    plots = list((tmp_path / "store" / "mlartifacts").rglob("curves_*.png"))
    assert len(plots) == 3 and all(p.stat().st_size > 0 for p in plots)


def test_a_server_that_does_not_answer_is_one_line(tmp_path, capsys):
    pytest.importorskip("mlflow")
    write_run(tmp_path / "r")
    start = time.monotonic()
    assert _export(tmp_path, "--tracking-uri", f"http://127.0.0.1:{_free_port()}") == 1
    assert time.monotonic() - start < 30  # not MLflow's minutes of retries
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach 127.0.0.1:" in err[0]


# ---- a real server, read back through its REST API ----

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """A real `mlflow server` on a free loopback port (sqlite backend, artifacts in tmp),
    started once; stopped with the uvicorn worker it starts (its own process group)."""

    def __init__(self, tmp: Path):
        self.tmp, self.proc = tmp, None

    def start(self) -> None:
        if self.proc is not None:
            return
        port = _free_port()
        self.url, self.log = f"http://127.0.0.1:{port}", self.tmp / "server.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
                 str(port), "--backend-store-uri", f"sqlite:///{self.tmp}/server.db",
                 "--default-artifact-root", str(self.tmp / "artifacts"), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
                     "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        self.started = time.monotonic()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module", autouse=True)
def _mlflow_server(tmp_path_factory):
    """Started as the module begins, so that its start-up (tens of seconds on a busy machine)
    overlaps the tests before the one that needs it; under pytest-xdist, where that test may
    run on another worker, only when that test asks for it."""
    if importlib.util.find_spec("mlflow") is None:
        yield None
        return
    srv = _Server(tmp_path_factory.mktemp("mlflow_server"))
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def server(_mlflow_server):
    """The server's URL once /health answers; skipped when it does not within START_S of its
    start."""
    pytest.importorskip("mlflow")
    srv = _mlflow_server
    srv.start()
    while True:
        try:
            with urllib.request.urlopen(f"{srv.url}/health", timeout=2) as r:
                if r.status == 200:
                    return srv.url
        except OSError:
            pass
        if srv.proc.poll() is not None or time.monotonic() - srv.started > START_S:
            pytest.skip(f"mlflow server did not answer /health within {START_S} s: "
                        + srv.log.read_text(errors="replace")[-300:])
        time.sleep(0.3)


def _rest(url: str, endpoint: str, body: dict | None = None, **query) -> dict:
    full = f"{url}/api/2.0/mlflow/{endpoint}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(full, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _runs(url: str, name: str) -> dict:
    exp = _rest(url, "experiments/get-by-name", experiment_name=name)["experiment"]
    found = _rest(url, "runs/search", {"experiment_ids": [exp["experiment_id"]],
                                       "max_results": 1000}).get("runs", [])
    out = {}
    for r in found:
        data = r["data"]
        out[r["info"]["run_id"]] = {
            "info": r["info"],
            "metrics": {m["key"]: m["value"] for m in data.get("metrics", [])},
            "steps": {m["key"]: m["step"] for m in data.get("metrics", [])},
            "params": {p["key"]: p["value"] for p in data.get("params", [])},
            "tags": {t["key"]: t["value"] for t in data.get("tags", [])}}
    return out


def test_server_sweep_parents_children_and_again(server, tmp_path, capsys):
    root = _sweep(tmp_path / "sweep")
    args = (root, "--tracking-uri", server, "--experiment", "sweep")
    assert _export(*args) == 0
    assert "exported 9 run(s) (3 new group(s))" in capsys.readouterr().out
    runs = _runs(server, "sweep")
    parents = {k: r for k, r in runs.items() if r["tags"]["regablate.kind"] == "group"}
    kids = {k: r for k, r in runs.items() if r["tags"]["regablate.kind"] == "seed"}
    assert len(parents) == 3 and len(kids) == 9
    assert sorted(p["params"]["reg"] for p in parents.values()) == ["dropout", "l2", "none"]
    assert sorted(p["tags"]["mlflow.runName"] for p in parents.values()) == ["dropout", "l2",
                                                                           "none"]
    for r in kids.values():
        parent = parents[r["tags"]["mlflow.parentRunId"]]
        assert r["tags"]["regablate.group"] == parent["tags"]["regablate.group"]
        assert r["params"]["reg"] == parent["params"]["reg"]
        run_dir = r["tags"]["regablate.run_dir"]
        summary = _summary(run_dir)
        assert {k: r["metrics"][k] for k in _expected(summary)} == _expected(summary)
        assert r["params"]["seed"] == str(summary["seed"])
        assert r["tags"]["mlflow.runName"] == f"{parent['params']['reg']}/seed={summary['seed']}"
        epochs, values = _column(run_dir, "val_acc")
        history = _rest(server, "metrics/get-history", run_id=r["info"]["run_id"],
                        metric_key="curve/val_acc")["metrics"]
        assert [m["step"] for m in history] == epochs
        assert [m["value"] for m in history] == pytest.approx(values, rel=1e-12)
        files = _rest(server, "artifacts/list", run_id=r["info"]["run_id"]).get("files", [])
        assert [f["path"] for f in files] == ["summary.json"]
    for p in parents.values():
        files = _rest(server, "artifacts/list", run_id=p["info"]["run_id"],
                      path="plots").get("files", [])
        assert [f["path"] for f in files] == [f"plots/curves_{p['params']['reg']}_"
                                              f"{p['tags']['regablate.group']}.png"]

    # again: no run added, none changed
    assert _export(*args) == 0
    assert "exported 0 run(s) (0 new group(s)) " in capsys.readouterr().out
    assert _runs(server, "sweep") == runs

    # the running run completes and another seed is added: both are added, nothing else moves
    write_run(root / "2_3", reg=("l2",), seed=3, val=0.9)
    write_run(root / "1_3", reg=("dropout",), seed=3, val=0.7)
    assert _export(*args, "--no-plots") == 0
    out = capsys.readouterr().out
    assert out.startswith("exported 2 run(s) (0 new group(s))") and out.endswith(
        "; 9 already there\n")  # one line: nothing left running
    now = _runs(server, "sweep")
    assert len(now) == 14 and {k: now[k] for k in runs} == runs
    added = [r for k, r in now.items() if k not in runs]
    by_dir = {r["tags"]["regablate.run_dir"]: r for r in added}
    assert set(by_dir) == {str((root / "2_3").resolve()), str((root / "1_3").resolve())}
    for run_dir, r in by_dir.items():
        assert r["tags"]["mlflow.parentRunId"] in parents
        assert r["metrics"]["val_acc"] == _summary(run_dir)["val"]["acc"]


def test_an_optuna_runs_trial_number_is_no_curve():
    """load_curves joins `trial` to an Optuna sweep's rows, as it joins seed: not a metrics.csv column."""
    pytest.importorskip("mlflow")
    import pandas as pd

    from regablate.report.export import _curve_metrics

    curves = pd.DataFrame({"run_dir": ["r", "r"], "trial": [7, 7], "seed": [0, 0], "epoch": [1, 2],
                           "val_acc": [0.5, 0.6]})
    points = _curve_metrics(curves, now=0)
    assert sorted({m.key for m in points}) == ["curve/val_acc"]
    assert [(m.step, m.value) for m in points] == [(1, 0.5), (2, 0.6)]
