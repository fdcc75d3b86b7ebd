"""`regablate tb`: argument handling, the view it builds, and the real TensorBoard server
asked through its HTTP API what a user's browser would be shown."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import run_cli
from regablate.cli import tb
from regablate.rundir.group import OPERATIONAL
from regablate.tensorboard import view as tb_view


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


def test_main_starts_tensorboard_on_the_view(tmp_path, monkeypatch):
    monkeypatch.setenv("REGABLATE_CACHE", str(tmp_path / "cache"))
    seen = []
    monkeypatch.setattr(tb, "serve", lambda cmd: seen.append(cmd) or 0)
    assert tb.main([str(tmp_path), "--port", "6010"]) == 0
    view = tb_view.cache_dir([tmp_path])
    assert seen == [[sys.executable, "-m", "tensorboard.main", "--logdir", str(view),
                     "--host", "localhost", "--port", "6010"]]
    assert (view / tb_view.EXPERIMENT).exists() and view.is_relative_to(tmp_path / "cache")


def test_serve_returns_the_exit_code():
    assert tb.serve([sys.executable, "-c", "raise SystemExit(3)"]) == 3


# -- the real server ------------------------------------------------------------------------------

REGS = ("none", "dropout", "weight_decay")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A 3-regulariser x 2-seed sweep, plus one more run of dropout with another p."""
    root = tmp_path_factory.mktemp("tb")
    tiny = ("dataset=tiny_binary", "trainer.max_epochs=4", "trainer.early_stopping.patience=0",
            "trainer.progress=none", "eval.histogram_every=2")
    r = run_cli("run", "-m", f"+reg={','.join(REGS)}", "seed=0,1", *tiny, "hydra.sweep.dir=sweep", cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli("run", "+reg=dropout", "reg.dropout.p=0.2", "seed=0", *tiny, "hydra.run.dir=sweep/extra", cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    return root / "sweep"


def _free_port() -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 0))
        except OSError:
            pytest.skip("cannot bind a loopback port")
        return s.getsockname()[1]


class Server:
    """`regablate tb`'s TensorBoard command on a loopback port, asked as a browser asks."""

    def __init__(self, view, port: int):
        self.base = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(tb.tensorboard_argv(view, "127.0.0.1", port),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def get(self, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, headers={
            "Content-Type": "application/json", "X-XSRF-Protected": "1"})
        with urllib.request.urlopen(req, timeout=20) as r:
            return json.loads(r.read())

    def wait_for_runs(self, n: int) -> list[str]:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                runs = self.get("/data/runs")
                if len(runs) >= n:
                    return runs
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError("TensorBoard did not list the runs in 90 s")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(sweep, tmp_path_factory):
    view = tmp_path_factory.mktemp("view")
    assert tb_view.build([sweep], view) == (7, 4)
    s = Server(view, _free_port())
    try:
        s.wait_for_runs(7 * 4 + 1)  # each run, its train/val/test sub-runs, and the root
        yield s
    finally:
        s.stop()


def test_runs_are_named_by_label_and_seed_with_train_val_sub_runs(server):
    runs = set(server.get("/data/runs"))
    named = {"none/seed=0", "none/seed=1", "weight_decay/seed=0", "weight_decay/seed=1",
             "dropout p=0.5/seed=0", "dropout p=0.5/seed=1", "dropout p=0.2/seed=0"}
    assert named <= runs
    assert {f"{r}/{split}" for r in named for split in ("train", "val", "test")} <= runs
    tags = server.get("/data/plugin/scalars/tags")
    train, val = tags["dropout p=0.5/seed=1/train"], tags["dropout p=0.5/seed=1/val"]
    assert set(train) == set(val) == {"loss", "acc", "best/loss", "best/acc"}  # charts overlay them
    assert {"gap", "lr", "best/gap", "weights/l2"} <= set(tags["dropout p=0.5/seed=1"])
    assert not any(t.startswith("hparams/") for run in tags.values() for t in run)


def test_hparams_columns_say_which_regulariser_and_nothing_operational(server):
    exp = server.get("/data/plugin/hparams/experiment", {"experimentName": ""})
    columns = {h["name"]: h for h in exp["hparamInfos"]}
    assert list(columns)[:1] == ["reg"]
    assert columns["reg"]["domainDiscrete"] == ["dropout", "none", "weight_decay"]
    assert sorted(columns["reg.dropout.p"]["domainDiscrete"]) == [0.0, 0.2, 0.5]
    assert sorted(columns["reg.weight_decay.lam"]["domainDiscrete"]) == [0.0, 0.05]  # the preset's default
    assert not set(columns) & {*OPERATIONAL, "seed", "data_seed"}
    assert set(columns) == {"reg", "reg.dropout.p", "reg.weight_decay.lam"}  # the rest is constant
    metrics = {(m["name"]["tag"], m["name"].get("group", "")) for m in exp["metricInfos"]}
    assert {("best/acc", "val"), ("best/acc", "train"), ("best/acc", "test"), ("best/gap", "")} <= metrics


def test_one_session_group_per_config_with_a_session_per_seed_at_the_best_epoch(server, sweep):
    body = {"experimentName": "", "allowedStatuses": ["STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING",
                                                      "STATUS_UNKNOWN"],
            "colParams": [], "startIndex": 0, "sliceSize": 100, "aggregationType": "AGGREGATION_AVG"}
    groups = {g["name"]: g for g in server.get("/data/plugin/hparams/session_groups", body)["sessionGroups"]}
    assert set(groups) == {"none", "dropout p=0.5", "dropout p=0.2", "weight_decay"}
    assert {n: len(g["sessions"]) for n, g in groups.items()} == {
        "none": 2, "dropout p=0.5": 2, "dropout p=0.2": 1, "weight_decay": 2}
    assert groups["none"]["hparams"]["reg.dropout.p"] == 0  # not in the stack: 0, so no group is dropped
    # the table's numbers are the best epoch's, averaged over the seeds
    summaries = [json.loads((sweep / j / "summary.json").read_text()) for j in ("2", "3")]
    assert summaries[0]["reg"] == ["dropout"]
    values = {(m["name"]["tag"], m["name"].get("group", "")): m["value"] for m in groups["dropout p=0.5"]["metricValues"]}
    assert values[("best/acc", "val")] == pytest.approx(sum(s["val"]["acc"] for s in summaries) / 2, abs=1e-6)
    assert values[("best/gap", "")] == pytest.approx(sum(s["gap"] for s in summaries) / 2, abs=1e-6)


def test_runs_write_sessions_not_experiments_and_histograms_by_layer_name(sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in sorted((sweep / "2" / "tb").glob("events*")):
        acc = EventAccumulator(str(events), size_guidance={"histograms": 0, "tensors": 0})
        acc.Reload()
        tags |= set(acc.summary_metadata) | set(acc.Tags()["histograms"])
    assert "_hparams_/experiment" not in tags and "_hparams_/session_start_info" in tags
    assert {"weights/hist/linear1.weight", "weights/hist/linear3.weight",
            "weights/final/linear1.weight"} <= tags  # the same names with and without dropout



def test_a_finished_sweep_describes_itself_at_its_root(sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    acc = EventAccumulator(str(sweep / tb_view.EXPERIMENT))
    acc.Reload()
    content = acc.summary_metadata[metadata.EXPERIMENT_TAG].plugin_data.content
    columns = [h.name for h in metadata.parse_experiment_plugin_data(content).hparam_infos]
    assert columns == ["reg", "reg.dropout.p", "reg.weight_decay.lam"]
