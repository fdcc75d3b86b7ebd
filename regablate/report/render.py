"""Render a Report: rich terminal table, markdown, csv, latex or json.

The best value of a column is highlighted in its direction (higher acc; lower loss, mse, gap),
comparing only rows of the same metric. Columns are hidden, least useful first, until the
terminal table fits its width; the footer says which. Text from run dirs (labels, settings,
paths) is printed with its control characters escaped (regablate.rundir.untrusted.escape_control),
in every format; json escapes them itself.
"""

from __future__ import annotations

import csv
import io
import json
import math

from regablate.errors import escape_control
from regablate.report.collect import SPLITS
from regablate.report.stats import Stat
from regablate.report.table import Column, Report, no_negative_zero

DASH = "–"


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _num(x, metric: str, signed: bool = False) -> str:
    if _missing(x):
        return DASH
    sign = "+" if signed else ""
    return no_negative_zero(f"{x:{sign}.3f}" if metric == "acc" else f"{x:{sign}#.4g}", signed)


def cell(col: Column, row: dict) -> str:
    """A value as text; numbers in the row's metric get 3 decimals (acc) or 4 digits."""
    v, m = row.get(col.key), row.get("metric", "")
    if col.kind == "num" and col.key not in (*SPLITS, "gap"):
        m = ""  # an extra metric such as val_loss
    if col.kind == "stat":
        if v.n == 0:
            return DASH
        std = 0.0 if v.std < 1e-9 * abs(v.mean) else v.std  # float round-off, not spread
        return _num(v.mean, m) + ("" if v.n < 2 else f" ± {_num(std, m)}")
    if col.kind == "ci":
        return DASH if _missing(v.lo) else f"[{_num(v.lo, m)}, {_num(v.hi, m)}]"
    if col.kind == "delta":
        return "baseline" if row.get("is_baseline") and _missing(v) else _num(v, m, signed=True)
    if col.kind == "p":
        return DASH if _missing(v) else "<0.001" if v < 0.001 else f"{v:.3f}"
    if col.kind == "epoch":  # a mean over seeds: 12, 12.5
        return DASH if _missing(v) else f"{v:.1f}".removesuffix(".0")
    if col.kind == "n":
        return f"{v}*" if v < 3 else str(v)
    if col.kind == "num":
        return _num(v, m)
    if col.kind == "interval":  # (lo, hi) of an effect, signed
        return DASH if v is None or _missing(v[0]) else \
            f"[{_num(v[0], m, signed=True)}, {_num(v[1], m, signed=True)}]"
    if col.kind == "share":
        return DASH if _missing(v) else f"{100 * v:.1f}%"
    if col.kind == "seeds":  # (fewest, most) seeds used by a row's estimates
        text = str(v[0]) if v[0] == v[1] else f"{v[0]}{DASH}{v[1]}"
        return f"{text}*" if v[0] < 3 else text
    return DASH if _missing(v) else escape_control(v)


def head(col: Column) -> str:
    """A column's header, two lines, control characters escaped."""
    return "\n".join(escape_control(part) for part in col.head.split("\n"))


def _sortable(v):
    return v.mean if isinstance(v, Stat) else v


def _higher(col: Column, row: dict) -> bool:
    return col.better == "higher" or (col.better == "metric" and row["higher_is_better"])


def best_rows(col: Column, rows: list[dict]) -> set[int]:
    """Indices of the rows holding the column's best value, per metric; none for one row."""
    if col.better is None or col.kind not in ("stat", "num", "delta"):
        return set()
    by_metric: dict[str, list] = {}
    for i, row in enumerate(rows):
        v = _sortable(row.get(col.key))
        if row.get("status", "completed") == "completed" and isinstance(v, (int, float)) \
                and math.isfinite(v):
            by_metric.setdefault(row["metric"], []).append((v if _higher(col, row) else -v, i))
    out = set()
    for values in by_metric.values():
        if len(values) > 1:
            top = max(v for v, _ in values)
            out |= {i for v, i in values if v == top}
    return out


def sort_rows(report: Report, key: str) -> None:
    """Best first for columns with a direction, else ascending; missing values last."""
    col = next(c for c in report.columns if c.key == key)

    def order(row):
        v = _sortable(row.get(key))
        if _missing(v):
            return (1, 0, "")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return (0, -v if _higher(col, row) else v, "")
        return (0, 0, str(v))

    report.rows.sort(key=order)


def _rich_table(report: Report, columns: list[Column]):
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, show_edge=False)
    for c in columns:
        text = c.kind == "text"
        table.add_column(head(c), justify="left" if text else "right", no_wrap=not text,
                         overflow="fold")
    best = {c.key: best_rows(c, report.rows) for c in columns}
    for i, row in enumerate(report.rows):
        style = "dim" if row.get("status", "completed") != "completed" else ""
        table.add_row(*[Text(cell(c, row), style="bold green" if i in best[c.key] else style)
                        for c in columns])
    return table


def to_terminal(report: Report, console, fit: bool = True) -> None:
    """Print the table and its footer; hide columns (by `drop`) until it fits `console.width`."""
    from rich.measure import Measurement

    columns, hidden = list(report.columns), []
    table = _rich_table(report, columns)
    while fit and any(c.drop for c in columns):
        if Measurement.get(console, console.options.update_width(10**5), table).maximum \
                <= console.width:
            break
        worst = max(c.drop for c in columns)
        victim = [c for c in columns if c.drop == worst][-1]
        columns.remove(victim)
        hidden.insert(0, " ".join(head(victim).replace("-\n", "").split()))
        table = _rich_table(report, columns)
    console.print(table)
    notes = list(report.footer)
    if hidden:
        notes.append(f"hidden to fit the terminal: {', '.join(hidden)} "
                     "(widen it, or use --format markdown/csv/json)")
    for line in notes:
        console.print(escape_control(line), style="dim", highlight=False, markup=False)


def _cells(report: Report, escape, bold) -> tuple[list, list]:
    heads = [escape(" ".join(head(c).replace("-\n", "").split())) for c in report.columns]
    best = {c.key: best_rows(c, report.rows) for c in report.columns}
    body = [[bold(escape(cell(c, row))) if i in best[c.key] else escape(cell(c, row))
             for c in report.columns] for i, row in enumerate(report.rows)]
    return heads, body


def _align(report: Report) -> list[str]:
    return ["left" if c.kind == "text" else "right" for c in report.columns]


def to_markdown(report: Report) -> str:
    from tabulate import tabulate

    def escape(s: str) -> str:
        return s.replace("|", "\\|").replace("*", "\\*")

    heads, body = _cells(report, escape, lambda s: f"**{s}**")
    table = tabulate(body, heads, tablefmt="github", colalign=_align(report),
                     disable_numparse=True)
    return table + "\n\n" + "  \n".join(escape(escape_control(line))
                                         for line in report.footer) + "\n"


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
          "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
          "±": r"$\pm$", "Δ": r"$\Delta$", "−": "$-$", DASH: "--", "<": "$<$", "*": "$^*$",
          "×": r"$\times$", "φ": r"$\varphi$", "∖": r"$\setminus$", "∅": r"$\emptyset$",
          "Σ": r"$\Sigma$"}


def to_latex(report: Report) -> str:
    """A tabular environment (booktabs-free); the footer follows as % comments."""
    from tabulate import tabulate

    def escape(s: str) -> str:
        return "".join(_LATEX.get(ch, ch) for ch in s)

    heads, body = _cells(report, escape, lambda s: rf"\textbf{{{s}}}")
    table = tabulate(body, heads, tablefmt="latex_raw", colalign=_align(report),
                     disable_numparse=True)
    return table + "\n" + "".join(f"% {escape_control(line)}\n" for line in report.footer)


def _flat(row: dict, key: str) -> dict:
    v = row.get(key)
    if isinstance(v, Stat):
        return {f"{key}_mean": v.mean, f"{key}_std": v.std, f"{key}_ci_low": v.lo,
                f"{key}_ci_high": v.hi, f"{key}_n": v.n}
    return {key: "" if _missing(v) else v}


CSV_EXTRA = ("group", "metric", "baseline", "p_raw", "p_gap_raw", "method", "method_gap")
CSV_WHERE_SET = ("p_reason", "p_gap_reason", "p_floor", "p_gap_floor")  # when a row has one


def to_csv(report: Report) -> str:
    """Raw numbers, full precision, one flat column per number (mean, std, CI, n); why a p is
    missing and the test's floor (p_reason, p_floor, ...) when some row has them."""
    keys = [c.key for c in report.columns if c.kind != "ci"]
    keys += [k for k in CSV_EXTRA if k not in keys and report.rows and k in report.rows[0]]
    keys += [k for k in CSV_WHERE_SET if any(row.get(k) is not None for row in report.rows)]
    flat = [{k: v for key in keys for k, v in _flat(row, key).items()} for row in report.rows]
    out = io.StringIO()
    fields = list(flat[0]) if flat else keys
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(map(escape_control, fields))
    writer.writerows(["" if _missing(v) else escape_control(v) if isinstance(v, str) else v
                      for v in (row.get(k, "") for k in fields)] for row in flat)
    return out.getvalue()


def effects_csv(frame) -> str:
    """The `regablate.effects` frame as csv: its columns and raw numbers, full precision."""
    from regablate.report.table import effect_records

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(map(escape_control, frame.columns))
    writer.writerows(["" if _missing(v) else escape_control(v) if isinstance(v, str) else v
                      for v in rec.values()] for rec in effect_records(frame))
    return out.getvalue()


def clean(x):
    """JSON has no NaN: NaN and infinities become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    return x


def to_json(doc: dict) -> str:
    return json.dumps(clean(doc), indent=1, allow_nan=False) + "\n"
