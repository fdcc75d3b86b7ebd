"""`regablate report --plot DIR`: PNG figures are written and are not empty."""

import json
import re

from report_fixtures import ablation, write_run

from regablate.report.command import main


def test_plots_are_written(tmp_path, capsys):
    rows = [(0.99, 0.80 + s / 100, 0.79) for s in range(3)]
    where = ablation(tmp_path / "multirun", {"none": rows, "dropout": rows[::-1]}, seeds=range(3))
    write_run(where / "9", reg=("dropout",), seed=9, status="failed")
    out = tmp_path / "plots"
    assert main([str(tmp_path / "multirun"), "--plot", str(out), "--format", "csv",
                 "--out", str(tmp_path / "t.csv")]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert [re.sub("_[0-9a-f]{12}.png$", "", f) for f in files] == [
        "curves_dropout", "curves_none", "gap.png", "val_curves.png"]
    for name in files:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    assert "wrote 4 figure(s)" in capsys.readouterr().err


def test_curve_mean_and_band_follow_epochs():
    from regablate.report.collect import Run
    from regablate.report.plots import _mean_curve

    a = Run(None, {}, curves={"epoch": [1, 2, 3], "val_acc": [0.1, 0.2, 0.3]})
    b = Run(None, {}, curves={"epoch": [1, 2], "val_acc": [0.3, 0.4]})  # stopped early
    x, mean, std = _mean_curve([a, b], "val_acc")
    assert list(x) == [1, 2, 3]
    assert [round(v, 6) for v in mean] == [0.2, 0.3, 0.3]
    assert round(std[0], 6) == round((0.02) ** 0.5, 6) and std[2] == 0  # one seed left: no band


def test_pooled_reliability_weights_bins_by_count():
    from regablate.report.collect import Run
    from regablate.report.plots import pooled_reliability

    def run(count, conf, acc):
        table = {"edges": [0, 0.5, 1], "count": count, "confidence": conf, "accuracy": acc}
        return Run(None, {"reliability": {"test": table}})

    pooled = pooled_reliability([run([1, 3], [0.4, 0.8], [0.0, 1.0]),
                                 run([3, 1], [0.2, 0.6], [1 / 3, 0.0])], "test")
    assert list(pooled["count"]) == [4, 4]
    assert pooled["confidence"][0] == (0.4 + 3 * 0.2) / 4 and pooled["accuracy"][0] == 1 / 4
    assert pooled["accuracy"][1] == 3 / 4 and pooled["runs"] == 2
    assert pooled_reliability([Run(None, {})], "test") is None


CIFAR = {"dataset": {"name": "cifar10", "root": "/data/" + "prepared/" * 30 + "cifar10",
                     "val_fraction": 0.1, "n_train": None, "n_ood": 1000},
         "trainer": {"resume": "never", "progress": "none", "threads": 1}}


def test_plot_names_are_stack_and_group_id_whatever_the_labels(tmp_path, capsys):
    """Over several datasets a label grows long; a file name stays `<kind>_<stack>_<id>.png`."""
    runs = tmp_path / "runs"
    for seed in range(2):
        write_run(runs / f"synthetic-{seed}", seed=seed)
        write_run(runs / f"cifar-{seed}", seed=seed, config=CIFAR)
        write_run(runs / f"cifar-dl2-{seed}", reg=("dropout", "l2"), seed=seed, config=CIFAR)
    doc = tmp_path / "r.json"

    def plot(out, *args):
        code = main([str(runs), "--plot", str(out), "--format", "json", "--out", str(doc), *args])
        assert code == 0, capsys.readouterr().err
        groups = json.loads(doc.read_text())["groups"]
        return sorted(p.name for p in out.iterdir()), {g["group"]: g["reg"] for g in groups}

    files, ids = plot(tmp_path / "all")
    stacks = {i: "_".join(reg) or "none" for i, reg in ids.items()}
    assert len(ids) == 3 and sorted(stacks.values()) == ["dropout_l2", "none", "none"]
    assert files == sorted(["gap.png", "val_curves.png",
                            *(f"curves_{s}_{i}.png" for i, s in stacks.items())])
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", f) for f in files), files

    alone, cifar = plot(tmp_path / "cifar", "--filter", "dataset.name=cifar10")
    assert len(cifar) == 2 and set(alone) - {"gap.png"} <= set(files)  # same names, fewer labels
