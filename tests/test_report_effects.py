"""The report on a design sweep (a sweep root with ablation.json): the components table after
the groups table, in every format, with the numbers of regablate.effects; effects.png; and
load_runs / the TensorBoard view reading such a sweep as any other."""

from __future__ import annotations

import csv
import io
import json
import math
import random
import re
import shutil
import warnings

import pytest
from report_fixtures import write_run

import regablate
from regablate.report.command import main
from regablate.report.designs import arms
from regablate.sweep.designs import write_ablation_json
from regablate.tensorboard import view as tb_view

S3 = ("dropout", "l2", "weight_decay")
EFFECT = {"dropout": 0.04, "l2": 0.01, "weight_decay": 0.0}
LABELS = {"leave_one_out": "leave-one-out", "add_one_in": "add-one-in", "main": "factorial",
          "interaction": "factorial", "shapley": "Shapley φ"}


def _sweep(root, design, comps, seeds, *, config=None, skip=(), lift=0.0, jobs=0):
    """Hand-written run dirs of every arm x seed (`skip`: (arm, seed) left out), and the
    sweep root's ablation.json."""
    rng = random.Random(f"{design}{lift}")
    job = jobs
    for arm in arms(design, comps):
        for seed in seeds:
            if (frozenset(arm), seed) in skip:
                continue
            v = 0.8 + lift + sum(EFFECT.get(c, 0.02) for c in arm) + 0.003 * seed \
                + (0.01 if {"dropout", "l2"} <= set(arm) else 0.0) + rng.gauss(0, 0.005)
            write_run(root / str(job), reg=tuple(sorted(arm)), seed=seed, val=round(v, 4),
                      test=round(v - 0.01, 4), train=0.99, config=config)
            job += 1
    write_ablation_json(root, design, comps, list(seeds))
    return job


@pytest.fixture(scope="module")
def factorial(tmp_path_factory):
    root = tmp_path_factory.mktemp("fx") / "multirun" / "2026-12-07" / "10-00-00"
    # seed 4 of dropout+l2 failed: estimates that need that arm use 4 seeds, the others 5
    _sweep(root, "factorial", S3, range(5), skip={(frozenset({"dropout", "l2"}), 4)})
    return root


@pytest.fixture(scope="module")
def frame(factorial):
    return regablate.effects(regablate.load_runs(factorial), metric="val")


def _report(tmp_path, root, fmt, *extra):
    out = tmp_path / f"out.{fmt}"
    assert main([str(root), "--format", fmt, "--out", str(out), *extra]) == 0
    return out.read_text()


def _signed(x: float) -> str:
    """Signed to 3 decimals; a value that rounds to zero is +0.000 (no minus from float noise)."""
    text = f"{x:+.3f}"
    return "–" if math.isnan(x) else "+" + text[1:] if float(text) == 0 else text


def _p(x: float) -> str:
    return "–" if math.isnan(x) else "<0.001" if x < 0.001 else f"{x:.3f}"


def _markdown_tables(text: str) -> list[list[dict]]:
    """Every github table in the text as rows of {header: cell}."""
    tables, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|-"):
            heads = [h.strip() for h in lines[i].strip("|").split("|")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in re.split(r"(?<!\\)\|", lines[i].strip("|"))]
                rows.append(dict(zip(heads, cells, strict=True)))
                i += 1
            tables.append(rows)
        i += 1
    return tables


def test_markdown_table_shows_the_numbers_of_effects(factorial, frame, tmp_path):
    groups, components = _markdown_tables(_report(tmp_path, factorial, "markdown"))
    assert len(groups) == 8  # the groups table as before, then the components table
    by_name = {r["component"]: r for r in components}
    assert list(by_name) == [*S3, "dropout×l2", "dropout×weight_decay", "l2×weight_decay"]
    phi = frame[frame.kind == "shapley"].set_index("component")["delta"]
    checked = 0
    for rec in frame.to_dict("records"):
        row, label = by_name[rec["component"]], LABELS[rec["kind"]]
        assert row[f"{label} Δ"] == _signed(rec["delta"])
        assert row[f"{label} 95% CI"] == f"[{_signed(rec['lo'])}, {_signed(rec['hi'])}]"
        assert row[f"{label} p (Holm)"] == _p(rec["p_holm"])
        checked += 1
    assert checked == len(frame) == 3 * 4 + 3
    for c in S3:
        assert by_name[c]["share of full − none"] == f"{100 * phi[c] / phi.sum():.1f}%"
        assert by_name[c]["Shapley φ Δ"] == _signed(phi[c])
    # dropout's estimates all need a dropout+l2 arm somewhere except add-one-in
    assert frame.set_index(["kind", "component"]).loc[("add_one_in", "dropout"), "n"] == 5
    assert by_name["dropout"]["n"] == "4–5" and by_name["weight_decay"]["n"] == "4–5"
    assert by_name["l2×weight_decay"]["n"] == "4"
    assert by_name["dropout×l2"]["Shapley φ Δ"] == "–"
    assert frame.loc[(frame.kind == "shapley") & (frame.component == "dropout"), "p"].item() < 0.05


def test_footer_names_design_test_and_the_full_gain(factorial, frame, tmp_path):
    text = _report(tmp_path, factorial, "table")
    assert "leave-one-out" in text and "share of" in text and "dropout×l2" in text
    assert text.index("\ncomponent") > text.index("gap")  # after the groups table
    assert "factorial design" in text and "p: paired t-test, two-sided, Holm-adjusted" in text
    phi = frame[frame.kind == "shapley"]["delta"].sum()
    assert f"full − none (Σφ): {phi:+.3f}" in text
    # its interval is over the seeds the φ use (every arm ran them), so it is Σφ's: n=4, not 5
    (whole,) = frame.attrs["totals"]
    assert whole["n"] == 4 and set(frame[frame.kind == "shapley"]["n"]) == {4}
    assert whole["delta"] == pytest.approx(phi, abs=1e-12) and "], n=4" in text
    assert "n: seeds used by the row's estimates" in text


def test_json_carries_the_records_of_effects(factorial, frame, tmp_path):
    doc = json.loads(_report(tmp_path, factorial, "json"))
    want = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in frame.to_dict("records")]
    assert doc["effects"] == want
    assert list(doc["effects"][0]) == list(frame.columns)
    assert any("paired t-test" in line for line in doc["effects_footer"])
    assert len(doc["groups"]) == 8 and doc["schema"] == 1


def test_csv_on_stdout_appends_the_effects_frame_after_a_blank_line(factorial, frame, capsys):
    assert main([str(factorial), "--format", "csv"]) == 0
    text = capsys.readouterr().out
    groups, effects = text.split("\n\n")
    assert len(list(csv.reader(io.StringIO(groups)))) == 9
    rows = list(csv.DictReader(io.StringIO(effects)))
    assert list(rows[0]) == list(frame.columns) and len(rows) == len(frame)
    for row, rec in zip(rows, frame.to_dict("records"), strict=True):
        assert row["component"] == rec["component"] and row["kind"] == rec["kind"]
        for key in ("delta", "lo", "hi", "p", "p_holm"):
            assert (row[key] == "" and math.isnan(rec[key])) or float(row[key]) == rec[key]
        assert int(row["n"]) == rec["n"]


def test_csv_out_puts_the_components_in_a_file_of_their_own(factorial, frame, tmp_path, capsys):
    import pandas as pd

    out = tmp_path / "results.csv"
    assert main([str(factorial), "--format", "csv", "--out", str(out)]) == 0
    assert f"components table in {tmp_path / 'results.components.csv'}" in capsys.readouterr().err
    groups = pd.read_csv(out)  # one table per file: pandas reads each as it is
    assert len(groups) == 8 and groups["n"].dtype.kind == "i" and "component" not in groups
    components = pd.read_csv(tmp_path / "results.components.csv")
    assert list(components.columns) == list(frame.columns)
    assert components["delta"].tolist() == pytest.approx(frame["delta"].tolist())


def test_a_component_against_the_whole_gain_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(EFFECT, "weight_decay", -0.015)  # dropout +0.04, weight decay −0.015
    root = tmp_path / "sweep"
    _sweep(root, "factorial", ("dropout", "weight_decay"), range(5))
    text = _report(tmp_path, root, "markdown")
    _, components = _markdown_tables(text)
    shares = {r["component"]: r["share of full − none"] for r in components if r["share of full − none"] != "–"}
    assert shares["weight_decay"].startswith("-") and float(shares["dropout"][:-1]) > 100
    assert "share: weight_decay worked against the whole effect (φ of the other sign, its 95% CI off 0)" in text
    assert "dropout worked against" not in text
    # one whose φ has the other sign but an interval that includes 0 is not named
    monkeypatch.setitem(EFFECT, "label_smoothing", -0.0004)
    root3 = tmp_path / "sweep3"
    _sweep(root3, "factorial", ("dropout", "weight_decay", "label_smoothing"), range(5))
    phi = regablate.effects(regablate.load_runs(root3)).query("kind == 'shapley'").set_index("component")
    assert phi.loc["label_smoothing", "delta"] < 0 < phi.loc["label_smoothing", "hi"] and phi["delta"].sum() > 0
    text = _report(tmp_path, root3, "markdown")
    assert "share: weight_decay worked against" in text and "label_smoothing worked against" not in text


def test_parquet_out_puts_the_components_in_a_file_of_their_own(factorial, frame, tmp_path, capsys):
    pytest.importorskip("pyarrow")
    import pandas as pd

    assert main([str(factorial), "--format", "parquet", "--out", str(tmp_path / "t.parquet")]) == 0
    components = pd.read_parquet(tmp_path / "t.components.parquet")
    assert list(components.columns) == list(frame.columns) and len(components) == len(frame)
    assert len(pd.read_parquet(tmp_path / "t.parquet")) == 8


def test_latex_escapes_the_new_symbols(factorial, frame, tmp_path):
    text = _report(tmp_path, factorial, "latex")
    tail = text[text.rindex(r"\begin{tabular}"):]
    assert r"dropout$\times$l2" in tail and r"Shapley $\varphi$" in tail
    d = frame.set_index(["kind", "component"]).loc[("main", "dropout"), "delta"]
    assert f"{d:+.3f}" in tail
    assert "φ" not in tail.split("\n%")[0] and "×" not in tail.split("\n%")[0]


def test_missing_p_and_cells(tmp_path):
    """Two learning rates are two cells; two seeds give intervals but no p, and the footer
    says why; a hostile setting is printed escaped."""
    root = tmp_path / "sweep"
    jobs = _sweep(root, "leave_one_out", ("dropout", "l2"), range(2),
                  config={"optim": {"lr": 0.01}, "dataset": {"name": "a\x1b[2Jb"}})
    _sweep(root, "leave_one_out", ("dropout", "l2"), range(2), jobs=jobs, lift=0.05,
           config={"optim": {"lr": 0.1}, "dataset": {"name": "a\x1b[2Jb"}})
    frame = regablate.effects(regablate.load_runs(root))
    assert set(frame["optim.lr"]) == {0.01, 0.1} and frame["p"].isna().all()
    text = _report(tmp_path, root, "markdown")
    _, components = _markdown_tables(text)
    assert [(r["optim lr"], r["component"]) for r in components] == \
        [("0.01", "dropout"), ("0.01", "l2"), ("0.1", "dropout"), ("0.1", "l2")]
    row = components[2]
    rec = frame[(frame["optim.lr"] == 0.1) & (frame.component == "dropout")
                & (frame.kind == "leave_one_out")].iloc[0]
    assert row["leave-one-out Δ"] == _signed(rec["delta"]) and row["leave-one-out p (Holm)"] == "–"
    assert row["n"] == "2\\*"
    assert "no p for 12 estimates: fewer than 3 seeds (n = 2)" in text
    assert "full − none (Σφ) at optim.lr=0.01:" in text
    for fmt in ("table", "markdown", "latex", "csv", "json"):
        out = _report(tmp_path, root, fmt)
        assert "\x1b" not in out


def test_plot_writes_effects_png(factorial, tmp_path):
    plots = tmp_path / "plots"
    assert main([str(factorial), "--format", "csv", "--out", str(tmp_path / "t.csv"),
                 "--plot", str(plots)]) == 0
    png = plots / "effects.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert (plots / "gap.png").exists()


def test_plain_sweep_has_no_components_table(tmp_path):
    root = tmp_path / "plain"
    _sweep(root, "factorial", ("dropout", "l2"), range(3))
    (root / "ablation.json").unlink()
    assert "effects" not in json.loads(_report(tmp_path, root, "json"))
    assert len(_markdown_tables(_report(tmp_path, root, "markdown"))) == 1
    assert main([str(root), "--plot", str(tmp_path / "p"), "--out", str(tmp_path / "o")]) == 0
    assert not (tmp_path / "p" / "effects.png").exists()


def test_load_runs_and_tb_view_read_a_design_sweep_as_any_sweep(factorial, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runs = regablate.load_runs(factorial.parent.parent)
    assert len(runs) == 8 * 5 - 1 and "ablation.json" not in "".join(runs["run_dir"])
    told: list[str] = []
    view = tmp_path / "view"
    assert tb_view.build([factorial], view, warn=told.append) == (39, 8)
    assert told == []
    assert main([str(factorial), "--runs", "--out", str(tmp_path / "r.txt")]) == 0


def test_reg_filters_and_plain_sweeps_beside_a_design_sweep(factorial, frame, tmp_path):
    """--filter reg=... picks the groups shown, not the arms an effect needs; a plain sweep
    under the same folder is left out of the components table (it has no ablation.json)."""
    _, components = _markdown_tables(_report(tmp_path, factorial, "markdown",
                                             "--filter", "reg=dropout"))
    loo = frame[frame.kind == "leave_one_out"].set_index("component")["delta"]
    assert [r["leave-one-out Δ"] for r in components[:3]] == [_signed(loo[c]) for c in S3]
    plain = factorial.parent / "11-00-00"
    _sweep(plain, "leave_one_out", ("dropout", "mixup"), range(3))
    (plain / "ablation.json").unlink()
    try:
        doc = json.loads(_report(tmp_path, factorial.parent, "json"))
    finally:
        shutil.rmtree(plain)
    assert len(doc["effects"]) == len(frame)
    assert {r["component"] for r in doc["effects"]} == set(frame["component"])


def test_float_noise_around_zero_prints_without_a_minus():
    from regablate.report.table import no_negative_zero

    assert [no_negative_zero(f"{x:+.3f}", True) for x in (-1e-17, -0.0004, -0.0006, 0.0)] == [
        "+0.000", "+0.000", "-0.001", "+0.000"]
    assert no_negative_zero(f"{-1e-17:.3f}", False) == "0.000"
    assert no_negative_zero(f"{-2e-17:+#.4g}", True) == "-2.000e-17"  # not zero at 4 digits


def test_effects_plot_fills_only_intervals_that_exclude_0_over_at_least_3_seeds(frame, tmp_path, monkeypatch):
    """A filled marker says the 95% CI excludes 0 on at least 3 seeds; a two-seed interval that
    excludes 0 is drawn open, as the report gives it no p. The legend sits below the axes, off
    the data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from regablate.report import plots

    root = tmp_path / "two"
    _sweep(root, "factorial", S3, range(2))
    two = regablate.effects(regablate.load_runs(root), metric="val")
    figures, close = [], plt.close
    monkeypatch.setattr(plt, "close", figures.append)  # _effects closes its figure: keep it to read
    for f, name in ((frame, "five"), (two, "two")):
        plots._effects(plt, f, tmp_path / f"{name}.png")

    def filled(fig, f) -> list[tuple[bool, bool]]:
        """(drawn filled, CI excludes 0) of each estimate, found by its row's label and its Δ."""
        ax = fig.axes[0]
        labels = {float(y): t.get_text() for y, t in zip(ax.get_yticks(), ax.get_yticklabels())}
        names = {kind: what for kind, (what, _) in plots.KIND_STYLE.items()}
        out = []
        for mark in (line for line in ax.lines if line.get_marker() == "o"):
            (x,), (y,) = mark.get_xdata(), mark.get_ydata()
            (rec,) = [r for r in f.to_dict("records") if labels[float(y)].startswith(
                f"{r['component']} · {names[r['kind']]} (n=") and r["delta"] == pytest.approx(x)]
            out.append((mark.get_markerfacecolor() != "white", rec["lo"] > 0 or rec["hi"] < 0))
        assert len(out) == sum(math.isfinite(d) for d in f["delta"])
        return out

    five, pairs = filled(figures[0], frame), filled(figures[1], two)
    assert five == [(excludes, excludes) for _, excludes in five] and any(excludes for _, excludes in five)
    assert any(excludes for _, excludes in pairs) and not any(drawn for drawn, _ in pairs)
    for fig in figures:
        legend, ax = fig.legends[0], fig.axes[0]
        fig.canvas.draw()
        assert legend.get_window_extent().y1 < ax.get_window_extent().y0  # below the axes
        assert "95% CI excludes 0 (n ≥ 3)" in [t.get_text() for t in legend.get_texts()]
    for fig in figures:
        close(fig)
