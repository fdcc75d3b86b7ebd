"""An Optuna study's sweep dir in the report: trials ranked by the objective, the best marked.

`hydra/sweeper=optuna` leaves `optuna_study.json` at the sweep dir; every trial is an ordinary
group of run dirs (one per seed), so the table is the usual group table with three columns
added: the trial number, and the objective's mean ± std and 95% interval over the trial's
completed seeds, computed here from each run's summary.json (`regablate.config.objective`). Rows are
ordered best first in the study's direction; the best trial's name is marked with a star.
A study file that is not a regular file under the size cap, or not of the shape written by the
sweeper, is ignored (the table is then the usual group table).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from regablate.report.stats import describe
from regablate.report.table import Column, Report
from regablate.rundir.untrusted import (
    SMALL_CAP,
    escape_control,
    is_sane_number,
    load_json_safe,
    read_bounded,
)

STUDY_FILE = "optuna_study.json"
BEST = "★ "


def find_study(roots: list[Path]) -> dict | None:
    """The study of the first root that is a study's sweep dir, else None."""
    for root in roots:
        path = Path(root) / STUDY_FILE
        if path.is_file():
            try:
                study = load_json_safe(read_bounded(path, SMALL_CAP, within=root))
            except (OSError, ValueError):
                return None
            return study if _valid(study) else None
    return None


def _valid(study) -> bool:
    """The fields `rank` and `plot` use, of the types the sweeper writes."""
    if not isinstance(study, dict) or not isinstance(study.get("objective"), str) \
            or study.get("direction") not in ("minimize", "maximize"):
        return False
    if not isinstance(study.get("trials", []), list) \
            or not isinstance(study.get("log_params") or {}, dict):
        return False
    for t in study.get("trials", []):
        if not (isinstance(t, dict) and isinstance(t.get("state"), str)
                and isinstance(t.get("number"), int) and isinstance(t.get("params"), dict)
                and isinstance(t.get("values") or [], list)
                and all(v is None or is_sane_number(v) for v in t.get("values") or [])):
            return False
    return True


def _trial(path: Path) -> str | None:
    m = re.fullmatch(r"trial_(\d+)", Path(path).parent.name)
    return m.group(1) if m else None


def rank(report: Report, groups: list, study: dict) -> None:
    """Add the trial and objective columns to a group report, best trial first (in place)."""
    from regablate.config.objective import value

    objective, direction = study["objective"], study["direction"]
    by_id = {g.id: g for g in groups}
    for row in report.rows:
        g = by_id[row["group"]]
        values = [value(r.summary, objective) for r in g.done]
        row["objective"] = row["objective_ci"] = describe(v for v in values if v is not None)
        row["trial"] = ",".join(sorted({t for r in g.runs if (t := _trial(r.path))}, key=int))
        row["doc"]["trial"] = row["trial"]
        row["doc"]["objective"] = {"name": objective, "direction": direction,
                                   "n": row["objective"].n, "mean": row["objective"].mean,
                                   "std": row["objective"].std,
                                   "ci95": [row["objective"].lo, row["objective"].hi]}
    sign = 1 if direction == "minimize" else -1
    report.rows.sort(key=lambda r: (math.isnan(r["objective"].mean),
                                    sign * r["objective"].mean if r["objective"].n else 0))
    if report.rows and report.rows[0]["objective"].n:
        report.rows[0]["name"] = BEST + report.rows[0]["name"]
        report.rows[0]["doc"]["best"] = True
    at = next((i + 1 for i, c in enumerate(report.columns) if c.key == "name"), 0)
    better = "lower" if direction == "minimize" else "higher"
    report.columns[at:at] = [Column("trial", "\ntrial"),
                             Column("objective", f"{objective}\nmean ± std", "stat", better),
                             Column("objective_ci", f"{objective}\n95% CI", "ci", drop=2)]
    states = [t["state"] for t in study.get("trials", [])]
    counts = ", ".join(f"{states.count(s)} {s.lower()}" for s in dict.fromkeys(states))
    best = next((t for t in study.get("trials", []) if t["number"] == study.get("best")), None)
    report.footer.insert(0, (
        f"Optuna study {study.get('study_name')!r}: {len(states)} trials ({counts}); ranked by "
        f"{objective} ({direction}), mean over seeds {study.get('seeds')}, t-based 95% CI; "
        + (f"{BEST}best: trial {best['number']} {best['params']}" if best else "no trial completed")))
    report.doc["study"] = {k: study.get(k) for k in ("study_name", "objective", "direction", "seeds",
                                                     "best", "sampler")}


def plot(study: dict, out: Path) -> list[Path]:
    """objective_vs_<param>.png for each searched parameter: every seed's value (dots), each
    trial's mean with its 95% interval, the best trial marked; log axes where the search was."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = [t for t in study.get("trials", []) if t.get("values")]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, log in (study.get("log_params") or {}).items():
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for t in trials:
            x = t["params"].get(name)
            vals = [v for v in t["values"] if v is not None]
            if x is None or not isinstance(x, (int, float)) or not vals:
                continue
            ax.scatter([x] * len(vals), vals, s=8, color="0.6", zorder=1)
            s = describe(vals)
            err = None if math.isnan(s.lo) else [[s.mean - s.lo], [s.hi - s.mean]]
            best = t["number"] == study.get("best")
            ax.errorbar([x], [s.mean], yerr=err, fmt="*" if best else "o", ms=12 if best else 5,
                        color="C3" if best else "C0", capsize=3, zorder=2)
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(escape_control(name + (" (log)" if log else "")), parse_math=False)
        ax.set_ylabel(escape_control(f"{study['objective']} ({study['direction']})"),
                      parse_math=False)
        ax.set_title(escape_control(f"{study.get('study_name')}: mean ± 95% CI over seeds "
                                    f"{study.get('seeds')}"), fontsize=9, parse_math=False)
        fig.tight_layout()
        path = out / f"objective_vs_{name.replace('/', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
