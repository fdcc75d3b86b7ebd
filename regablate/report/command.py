"""`regablate report [DIR ...]`: one honest table of train / val / test and the gap.

On a design sweep (an ablation.json at the sweep root, regablate.report.designs) a components table
follows the groups table: each regulariser's effect by the design's kinds, with 95% intervals,
Holm p and its Shapley share of the full gain (regablate.report.effects); `--format json`
carries effects' records under "effects"; csv and parquet written to `--out F.csv` put its frame in
a file of its own beside it, `F.components.csv` (one table per file, as pandas reads them; csv on
stdout appends it after a blank line), and `--plot` adds effects.png. Any other sweep prints exactly the groups table.

Exit codes: 0 done; 2 bad input or no runs (one line on stderr, no traceback). A run dir
that cannot be read safely is skipped with one warning line naming it and why; what is printed
has its control characters escaped.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from regablate.errors import OneLineParser, UsageError, escape_control
from regablate.report.collect import SPLITS

DEFAULT_ROOTS = ("multirun", "outputs")
FORMATS = ("table", "markdown", "csv", "latex", "json", "parquet")
TESTS = ("t", "signflip", "wilcoxon")  # regablate.report.paired.TESTS, which imports scipy


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="regablate report", hint=" (see --help)", description=(
        "Group runs over seeds and compare each group's train/val/test metric and train-val "
        "gap with the baseline (mean ± std, t-based 95% CI, Welch's or paired t-test or "
        "--test, Holm-adjusted; no p below 3 seeds or from a spread that is float rounding). "
        "Only completed runs are averaged."))
    p.add_argument("paths", nargs="*", metavar="DIR",
                   help="run dirs or folders holding them (default: ./multirun and ./outputs)")
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="output format; parquet (needs --out and pyarrow: pip install "
                        "'regablate[parquet]') writes the regablate.summarize frame, or with "
                        "--runs the regablate.load_runs frame")
    p.add_argument("--out", metavar="FILE", help="write the output to FILE instead of stdout")
    p.add_argument("--sort", metavar="COLUMN",
                   help="sort by a column, best first (e.g. gap, val, p, n, name, or a setting that differs "
                        "between the groups shown, such as optim.lr)")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=V[,V...]",
                   help="keep runs whose KEY is one of the values; repeat to combine (AND). "
                        "KEY: reg (e.g. dropout+l2, none), status, seed, dataset, model, or a "
                        "config key such as optim.lr. Baselines ignore reg filters.")
    p.add_argument("--metric", choices=SPLITS, default="val",
                   help="split compared with the baseline (default: val)")
    p.add_argument("--runs", action="store_true", help="one row per run instead of per group")
    p.add_argument("--baseline", metavar="NAME",
                   help="group (name or id) every group is compared with; default: the group "
                        "with an empty stack, or with several (say one per lr), the one whose "
                        "settings outside reg.* match")
    p.add_argument("--unpaired", action="store_true",
                   help="always use Welch's t-test, even when both groups ran the same seeds")
    p.add_argument("--test", choices=TESTS, default="t",
                   help="test of each group against the baseline: t (default: paired t-test, "
                        "Welch's when the seeds differ), signflip (exact paired sign-flip "
                        "permutation test; its smallest p is 2/2^n, 1/16 at 5 seeds) or wilcoxon "
                        "(signed-rank); the last two need the baseline's seeds")
    p.add_argument("--plot", metavar="DIR",
                   help="also write PNG figures into DIR: per-group curves, the gap, every "
                        "group's mean val curve on one axes (val_curves.png), reliability; on a design "
                        "sweep (ablation.json) each component's effects (effects.png)")
    return p


def _roots(paths: list[str]) -> list[Path]:
    if paths:
        for p in paths:
            if not Path(p).exists():
                raise UsageError(f"DIR {p!r}: no such file or directory")
        return [Path(p) for p in paths]
    roots = [Path(d) for d in DEFAULT_ROOTS if Path(d).is_dir()]
    if not roots:
        raise UsageError("no runs found: no ./multirun or ./outputs here; pass a DIR "
                         "holding run dirs (each with a summary.json)")
    return roots


SWEEP_RECORDS = ("multirun.yaml", "ablation.json", "sequential.json", "optuna_study.json")  # a sweep root's


def _check_out(flag: str, out: str | None, folder: bool = False) -> None:
    """Refuse an --out (or a --plot folder) that would write over or into what a run or a sweep
    wrote: a path inside a run dir (`regablate.rundir.claim.is_run_dir`), or a sweep root's own
    record (multirun.yaml, ablation.json, sequential.json, optuna_study.json). Links and `..` are
    followed to where the file would really be written."""
    from regablate.rundir.claim import enclosing_run, is_run_dir

    if out is None:
        return
    path = Path(os.path.realpath(Path(out).expanduser()))
    run = path if folder and is_run_dir(path) else enclosing_run(path)
    if run is not None:
        raise UsageError(f"{flag} {out!r} is inside the run dir {run}: a run dir holds only what "
                         f"its run wrote; write outside it, e.g. {flag} {'plots' if folder else 'report.md'}")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if folder and not existing.is_dir():  # the folder, or one it would be made in, is a file
        raise UsageError(f"{flag} {out!r}: {existing} is a file; {flag} names a folder for the "
                         "figures (made if missing)")
    if not folder and path.name in SWEEP_RECORDS and (path.parent / "multirun.yaml").exists():
        raise UsageError(f"{flag} {out!r} is the sweep's own {path.name}: it is never written "
                         "over; name another file, e.g. --out report.md")


def _write(text: str, out: str | None) -> None:
    if out is None:
        sys.stdout.write(text)
        return
    try:
        with open(out, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise UsageError(f"--out {out!r}: {e.strerror}") from None


def components_path(out: str) -> str:
    """Where `--out` F.csv (or .parquet) puts the components table: F.components.csv."""
    root, ext = os.path.splitext(out)
    return f"{root}.components{ext}"


def _write_components(frame, fmt: str, out: str) -> None:
    """The effects frame into `components_path(out)`, as csv or parquet; a line on stderr names it."""
    path = components_path(out)
    if fmt == "csv":
        from regablate.report.render import effects_csv

        _write(effects_csv(frame), path)
    else:
        try:
            frame.to_parquet(path, index=False)
        except OSError as e:
            raise UsageError(f"--out {path!r}: {e.strerror or e}") from None
    print(escape_control(f"regablate report: components table in {path}"), file=sys.stderr)


def _terminal(report, out: str | None, extra=None) -> None:
    """The table (and `extra`, a second table such as the components', after a blank line)."""
    from rich.console import Console

    from regablate.report.render import to_terminal

    def show(console, fit: bool) -> None:
        to_terminal(report, console, fit=fit)
        if extra is not None:
            console.print()
            to_terminal(extra, console, fit=fit)

    if out is None:
        console = Console(highlight=False)
        fit = console.is_terminal
        if not fit:  # piped: fit $COLUMNS when set, else every column at full width
            width = os.environ.get("COLUMNS", "")
            fit = width.isdigit() and int(width) > 0
            console = Console(highlight=False, width=int(width) if fit else 10_000)
        show(console, fit)
        return
    try:
        with open(out, "w", encoding="utf-8") as f:
            show(Console(file=f, width=10_000, color_system=None), False)
    except OSError as e:
        raise UsageError(f"--out {out!r}: {e.strerror}") from None


def _sequential(shown) -> tuple[list, list[str]] | None:
    """A seeds=auto sweep's decisions (its sequential.json, read bounded): (per-arm records,
    footer lines naming each arm's decision and n, the procedure and its error rate); None for
    any other sweep; a damaged file is a warning line."""
    from regablate.report.designs import read_ablation_json
    from regablate.report.sequential_state import FILE, SequentialState

    roots = {r.path.parent for g in shown for r in g.runs if (r.path.parent / FILE).exists()}
    if len(roots) != 1:
        return None
    (root,) = roots
    try:
        state = SequentialState.load(root / FILE)
    except (OSError, ValueError) as e:
        print(escape_control(f"regablate report: warning: {root / FILE} not read: {e}"), file=sys.stderr)
        return None
    s, arms = state.settings, state.summary()
    try:
        design = (read_ablation_json(root) or {}).get("design")
    except UsageError:  # a damaged ablation.json: the components' own warning says so
        design = None
    tables = "the groups and components tables' p values are" if design else "the table's p values are"
    main = s.contrast == "main_effect"
    what = ("on the factorial's main effects (per seed, the arms with each component minus those "
            f"without; better: it {'raises' if s.higher_is_better else 'lowers'} {s.metric})" if main
            else f"vs {s.reference}")
    simulated = "0.0499 for 3 components" if main else "0.047 for 3 arms"
    lines = [f"seeds=auto ({s.metric}) {what}: group-sequential paired t-tests, "
             f"O'Brien–Fleming-type alpha spending over looks at {s.schedule} seeds, Bonferroni "
             f"over {len(arms)} {'component' if main else 'arm'}(s): family-wise "
             f"error ≤ {s.alpha:g} over them and the looks "
             f"(simulated: {simulated} at 0.05); p and CI are repeated (valid at every look); "
             f"{tables} fixed-n tests that ignore when each arm stopped: decide by these"]
    if design == "leave_one_out":
        lines.append("  leave_one_out: each arm S∖c against the full stack S, Δ = −(v(S) − v(S∖c)): "
                     "an arm decided worse means its missing component helps")
    for a in arms:
        est = "" if a["delta"] is None else f", Δ {a['delta']:+.4g}"
        ci = "" if a["ci95"][0] is None else f" [{a['ci95'][0]:+.4g}, {a['ci95'][1]:+.4g}]"
        p = "" if a["p"] is None else f", p {a['p']:.3g}"
        why = f" ({a['reason']})" if a["reason"] else ""
        lines.append(f"  {a['label']}: {a['decision']} after {a['n']} seeds{est}{ci}{p}{why}")
    return arms, lines


def _effects(shown, metric: str):
    """The `regablate.effects` frame of the runs shown that belong to a design sweep (an
    ablation.json in their sweep root), else None; a sweep whose effects cannot be computed gets a warning line
    and no components table."""
    import warnings

    from regablate.errors import ConfigError
    from regablate.report.designs import find_ablation_json

    parents: dict = {}
    for r in (r for g in shown for r in g.runs):
        if r.path.parent not in parents:
            parents[r.path.parent] = find_ablation_json(r.path) is not None
    runs = [r for g in shown for r in g.runs if parents[r.path.parent]]  # design sweeps only
    if not runs:
        return None
    from regablate.report.effects import effects
    from regablate.report.frames import runs_frame

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            frame = effects(runs_frame(runs, status=None, groups=shown), metric=metric)
    except (UsageError, ConfigError) as e:
        print(escape_control(f"regablate report: warning: no components table: {e}"),
              file=sys.stderr)
        return None
    for w in caught:
        print(escape_control(f"regablate report: warning: {w.message}"), file=sys.stderr)
    if frame.empty:
        print("regablate report: warning: no components table: the design sweep has no "
              "estimate to show", file=sys.stderr)
        return None
    return frame


def _parquet(report, groups, args) -> None:
    """The API's frame (summarize's, or load_runs' with --runs) of what the report shows."""
    if args.out is None:
        raise UsageError("--format parquet writes a binary file: name it with --out FILE")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise UsageError("--format parquet needs pyarrow: pip install 'regablate[parquet]' "
                         "(or use --format csv)") from None
    from regablate.report.frames import report_frame, runs_frame

    if args.runs:
        frame = runs_frame([r for g in groups for r in g.runs], status=None, groups=groups)
    else:
        frame = report_frame(report, groups)
    try:
        frame.to_parquet(args.out, index=False)
    except OSError as e:
        raise UsageError(f"--out {args.out!r}: {e.strerror or e}") from None


def run(args: argparse.Namespace) -> int:
    from regablate.report import render
    from regablate.report.collect import REPEAT, collect
    from regablate.report.select import SelectError, choose, parse_filter
    from regablate.report.study import find_study, rank
    from regablate.report.table import group_report, run_report

    try:
        filters = [parse_filter(f) for f in args.filter]
    except SelectError as e:
        raise UsageError(str(e)) from None
    if args.unpaired and args.test != "t":
        raise UsageError(f"--unpaired is Welch's t-test: it does not go with --test {args.test} "
                         "(a paired test)")
    roots = _roots(args.paths)
    _check_out("--out", args.out)
    if args.out is not None and args.format in ("csv", "parquet"):  # a design's components go beside it
        _check_out("--out", components_path(args.out))
    _check_out("--plot", args.plot, folder=True)
    runs, skipped = collect(roots)
    for path, reason in skipped:
        print(escape_control(f"regablate report: warning: skipped {path}: {reason}"),
              file=sys.stderr)
    where = ", ".join(map(str, roots))
    repeats = sum(reason.startswith(REPEAT) for _, reason in skipped)
    unreadable = len(skipped) - repeats
    if not runs:
        raise UsageError(f"no runs found under {where}" +
                         (f" ({unreadable} unreadable, see warnings)" if unreadable else ""))
    try:
        shown = choose(runs, filters, args.baseline)
    except SelectError as e:
        raise UsageError(str(e)) from None
    if not shown:
        raise UsageError(f"no runs under {where} match --filter {' '.join(args.filter)}")

    report = run_report(shown) if args.runs else group_report(shown, args.metric, not args.unpaired,
                                                                  args.test)
    if skipped:
        report.footer.insert(1, "run dir(s) skipped (see warnings): " + ", ".join(
            part for part in (f"{unreadable} unreadable" if unreadable else "",
                              f"{repeats} repeat(s) of a run on the same seeds, counted once" if repeats else "")
            if part))
    study = None if args.runs else find_study(roots)  # an Optuna sweep dir: trials ranked, best marked
    if study:
        rank(report, shown, study)
    if args.sort:
        keys = [c.key for c in report.columns]
        if args.sort not in keys:
            raise UsageError(f"--sort {args.sort!r}: unknown column; allowed: {', '.join(keys)}")
        render.sort_rows(report, args.sort)

    sequential = None if args.runs else _sequential(shown)
    if sequential is not None:
        report.footer.extend(sequential[1])
    frame = components = None
    if not args.runs:
        # an effect needs every arm of its design: reg filters pick the groups shown above,
        # never the arms of the components table (as they never pick a baseline's runs)
        rest = [f for f in filters if f.key != "reg"]
        frame = _effects(shown if len(rest) == len(filters) else choose(runs, rest, None),
                         args.metric)
    if frame is not None:
        from regablate.report.table import effects_report

        components = effects_report(frame)
        if len(rest) < len(filters):
            components.footer.append("every arm of the design is used: --filter reg=... picks "
                                     "the groups above, not the arms an effect needs")

    if args.format == "parquet":
        _parquet(report, shown, args)
        if components is not None:
            _write_components(frame, "parquet", args.out)
    elif args.format == "table":
        _terminal(report, args.out, components)
    elif args.format == "json":
        kind = "runs" if args.runs else "groups"
        doc = {"schema": 1, **report.doc, kind: [row["doc"] for row in report.rows],
               "footer": report.footer, "skipped": [{"dir": str(p), "reason": r}
                                                    for p, r in skipped]}
        if not args.runs:
            doc["runs"] = [row["doc"] for row in run_report(shown).rows]
        if sequential is not None:
            doc["sequential"] = sequential[0]
        if components is not None:
            from regablate.report.table import effect_records

            doc["effects"] = effect_records(frame)
            doc["effects_footer"] = components.footer
        _write(render.to_json(doc), args.out)
    else:
        to_text = {"markdown": render.to_markdown, "csv": render.to_csv,
                   "latex": render.to_latex}[args.format]
        text = to_text(report)
        if components is not None and args.format == "csv" and args.out is not None:
            _write_components(frame, "csv", args.out)  # a table a file
        elif components is not None:
            text += "\n" + (render.effects_csv(frame) if args.format == "csv" else to_text(components))
        _write(text, args.out)

    if args.plot:
        from regablate.report.plots import write_plots
        from regablate.report.study import plot as plot_study

        paths = write_plots(shown, Path(args.plot))
        if frame is not None:
            from regablate.report.plots import write_effects_plot

            paths.append(write_effects_plot(frame, Path(args.plot)))
        paths += plot_study(study, Path(args.plot)) if study else []
        print(escape_control(f"regablate report: wrote {len(paths)} figure(s) to {args.plot}"),
              file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    """Entry point for `regablate report ...`; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        return run(args)
    except UsageError as e:
        print(escape_control(f"regablate report: error: {e}"), file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
