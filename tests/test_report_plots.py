"""`regablate report --plot DIR`: PNG figures are written and are not empty."""

from report_fixtures import ablation, write_run

from regablate.report.cli import main


def test_plots_are_written(tmp_path, capsys):
    rows = [(0.99, 0.80 + s / 100, 0.79) for s in range(3)]
    where = ablation(tmp_path / "multirun", {"none": rows, "dropout": rows[::-1]}, seeds=range(3))
    write_run(where / "9", reg=("dropout",), seed=9, status="failed")
    out = tmp_path / "plots"
    assert main([str(tmp_path / "multirun"), "--plot", str(out), "--format", "csv",
                 "--out", str(tmp_path / "t.csv")]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["curves_dropout.png", "curves_none.png", "gap.png"]
    for name in files:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    assert "wrote 3 figure(s)" in capsys.readouterr().err


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
