"""Group means in TensorBoard: `<label>/mean` (train/ and val/ sub-runs under the seeds' tags,
`gap` and `seeds` at the run level) and its 95% t interval `<label>/mean/lo`, `/hi`, asked of
the real TensorBoard server as a browser asks, checked against the runs' metrics.csv."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from report_fixtures import write_run
from scipy import stats
from test_tb import Server, _free_port

from regablate.tensorboard import view as tb_view
from regablate.tensorboard.records import EventsFile, scalars_event

REGS = {"none": (), "dropout": ("dropout",), "weight_decay": ("weight_decay",)}
EPOCHS = 6
STOPPED = {("dropout", 2): 3, ("weight_decay", 1): 4}  # (label, seed) -> its last epoch
COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc", "gap")


def _write_curves(path, rng, epochs: int) -> None:
    """Random curves in metrics.csv, and the same in tb/ as the recorder writes them."""
    files = {split: EventsFile(path / "tb" / split) for split in ("", "train", "val")}
    with open(path / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "lr", *COLUMNS])
        for e in range(1, epochs + 1):
            tr, va = rng.uniform(0.5, 1.0), rng.uniform(0.4, 0.9)
            row = [rng.uniform(0.1, 2.0), tr, rng.uniform(0.1, 2.0), va, tr - va]
            w.writerow([e, 1e-3, *row])
            files["train"].add(scalars_event(e, [("loss", row[0]), ("acc", row[1])]))
            files["val"].add(scalars_event(e, [("loss", row[2]), ("acc", row[3])]))
            files[""].add(scalars_event(e, [("gap", row[4]), ("lr", 1e-3)]))
    for events in files.values():
        events.flush()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """3 regularisers x 3 seeds, two of which stopped early; plus a failed run of `none`,
    which no mean counts."""
    root = tmp_path_factory.mktemp("means") / "sweep"
    rng = np.random.default_rng(28)
    job = 0
    for label, reg in REGS.items():
        for seed in range(3):
            epochs = STOPPED.get((label, seed), EPOCHS)
            path = write_run(root / str(job), reg=reg, seed=seed, epochs=epochs,
                             best_epoch=epochs, config={"trainer": {"max_epochs": EPOCHS}})
            _write_curves(path, rng, epochs)
            job += 1
    path = write_run(root / str(job), reg=(), seed=3, status="failed", epochs=EPOCHS,
                     config={"trainer": {"max_epochs": EPOCHS}})
    _write_curves(path, rng, EPOCHS)
    return root


def _expected(root) -> dict:
    """(label, column) -> {epoch: values over the completed seeds}, read from metrics.csv."""
    out: dict = {}
    for d in sorted(root.iterdir()):
        if not (d / "summary.json").exists():
            continue
        summary = json.loads((d / "summary.json").read_text())
        if summary["status"] != "completed":
            continue
        label = "none" if not summary["reg"] else summary["reg"][0]
        with open(d / "metrics.csv", newline="") as f:
            for row in csv.DictReader(f):
                for column in (*COLUMNS, "seeds"):
                    value = 1.0 if column == "seeds" else float(row[column])
                    out.setdefault((label, column), {}).setdefault(int(row["epoch"]), []).append(value)
    return out


def _interval(values) -> tuple[float, float]:
    x = np.asarray(values)
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return x.mean() - half, x.mean() + half


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    view = tmp_path_factory.mktemp("view")
    assert tb_view.build([runs], view) == (10, 3)
    s = Server(view, _free_port())
    try:
        # 10 seed runs x (run, train, val) + 3 means x (mean, lo, hi) x (run, train, val) + root
        s.wait_for_runs(10 * 3 + 3 * 9 + 1)
        yield s
    finally:
        s.stop()


def _scalars(server, run: str, tag: str) -> dict[int, float]:
    from urllib.parse import urlencode

    points = server.get("/data/plugin/scalars/scalars?" + urlencode({"run": run, "tag": tag}))
    return {step: value for _, step, value in points}


def test_each_group_has_a_mean_run_with_the_seeds_tags(server):
    runs = set(server.get("/data/runs"))
    for label in REGS:
        assert {f"{label}/mean{kind}{split}" for kind in ("", "/lo", "/hi")
                for split in ("", "/train", "/val")} <= runs
    tags = server.get("/data/plugin/scalars/tags")
    for kind in ("", "/lo", "/hi"):
        for split in ("train", "val"):  # the same tags as the seeds': one chart overlays them
            assert set(tags[f"dropout/mean{kind}/{split}"]) == {"loss", "acc"}
    assert set(tags["dropout/mean"]) == {"gap", "seeds"}
    assert set(tags["dropout/mean/lo"]) == set(tags["dropout/mean/hi"]) == {"gap"}
    assert set(tags["dropout/seed=0/val"]) == {"loss", "acc"}
    assert set(tags["dropout/seed=0"]) == {"gap", "lr"}


def test_the_mean_and_its_interval_are_those_of_the_seeds_metrics_csv(server, runs):
    expected = _expected(runs)
    for label in REGS:
        for column in COLUMNS:
            split, _, tag = column.partition("_") if column != "gap" else ("", "", "gap")
            sub = f"/{split}" if split else ""
            by_epoch = expected[label, column]
            mean = _scalars(server, f"{label}/mean{sub}", tag)
            lo = _scalars(server, f"{label}/mean/lo{sub}", tag)
            hi = _scalars(server, f"{label}/mean/hi{sub}", tag)
            assert sorted(mean) == sorted(by_epoch) == list(range(1, EPOCHS + 1))
            for epoch, values in by_epoch.items():
                assert mean[epoch] == pytest.approx(np.mean(values), abs=1e-6, rel=1e-6)
                assert len(values) >= 2  # every epoch here was reached by two seeds or more
                want_lo, want_hi = _interval(values)
                assert lo[epoch] == pytest.approx(want_lo, abs=1e-6, rel=1e-6)
                assert hi[epoch] == pytest.approx(want_hi, abs=1e-6, rel=1e-6)
                assert lo[epoch] < mean[epoch] < hi[epoch]


def test_seeds_counts_drop_where_a_seed_stopped_early(server):
    assert _scalars(server, "none/mean", "seeds") == {e: 3 for e in range(1, EPOCHS + 1)}  # not the failed run
    assert _scalars(server, "dropout/mean", "seeds") == {1: 3, 2: 3, 3: 3, 4: 2, 5: 2, 6: 2}
    assert _scalars(server, "weight_decay/mean", "seeds") == {1: 3, 2: 3, 3: 3, 4: 3, 5: 2, 6: 2}


def test_no_interval_where_one_seed_reached_the_epoch(tmp_path):
    rng = np.random.default_rng(0)
    for seed, epochs in ((0, 2), (1, 4)):
        _write_curves(write_run(tmp_path / "runs" / str(seed), seed=seed, epochs=epochs,
                                config={"trainer": {"max_epochs": 4}}), rng, epochs)
    tb_view.build([tmp_path / "runs"], tmp_path / "view")
    mean = _events(tmp_path / "view" / "none" / "mean")
    assert mean["seeds"] == {1: 2, 2: 2, 3: 1, 4: 1}
    assert sorted(_events(tmp_path / "view" / "none" / "mean" / "val")["acc"]) == [1, 2, 3, 4]
    assert sorted(_events(tmp_path / "view" / "none" / "mean" / "lo" / "val")["acc"]) == [1, 2]


def _events(run_dir) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of the events files directly in `run_dir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_a_finished_sweep_writes_its_means_at_its_root_once(runs, server):
    tb_view.describe_sweep(runs)
    tb_view.describe_sweep(runs)  # the sweep extended, say: replaced, not appended to
    means = runs / tb_view.MEANS
    assert sorted(p.name for p in means.iterdir() if p.is_dir()) == sorted(REGS)
    assert len(list((means / "dropout" / "mean" / "val").glob("events.out.tfevents.*"))) == 1
    for kind in ("", "/lo", "/hi"):
        for split in ("/train", "/val", ""):
            written = _events(means / "dropout" / f"mean{kind}{split}")
            assert written and written == {  # the same float32 values as the view's
                tag: _scalars(server, f"dropout/mean{kind}{split}", tag) for tag in written}


def test_a_means_folder_regablate_did_not_write_is_left_alone(tmp_path):
    rng = np.random.default_rng(1)
    _write_curves(write_run(tmp_path / "0", epochs=3, config={"trainer": {"max_epochs": 3}}),
                  rng, 3)
    (tmp_path / tb_view.MEANS).mkdir()
    (tmp_path / tb_view.MEANS / "notes.txt").write_text("mine")
    tb_view.describe_sweep(tmp_path)
    assert [p.name for p in (tmp_path / tb_view.MEANS).iterdir()] == ["notes.txt"]
    assert (tmp_path / tb_view.EXPERIMENT).exists()


def test_regablate_tb_says_where_the_means_are(tmp_path, monkeypatch, capsys):
    from regablate.cli import tb

    monkeypatch.setenv("REGABLATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tb, "serve", lambda cmd: 0)
    assert tb.main([str(tmp_path), "--port", "6010"]) == 0
    url = "http://localhost:6010/?runFilter=mean.*val&runColorGroup=regex:(.*)/mean&smoothing=0#timeseries"
    assert f"group means with their 95% bands: {url}" in capsys.readouterr().err
    assert tb.means_url("0.0.0.0", 1).startswith("http://localhost:1/")
    assert tb.means_url("::1", 1).startswith("http://[::1]:1/")
