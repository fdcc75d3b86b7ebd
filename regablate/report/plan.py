"""`regablate plan DIR --delta D [--power 0.8] [--alpha 0.05] [--format table|json]`: how many
seeds a sweep needs, from a pilot sweep's paired differences.

Per comparison of a group with its baseline (the empty-stack group, as the report picks it; or
`--baseline LABEL`), over the seeds both ran (paired by seed and data_seed), on the `--split`
metric (default val): s = the sd of the differences d_i = v_group − v_baseline; then for a
two-sided paired t-test at level a = α/m, m the comparisons (the smallest level Holm's procedure
uses, so the plan holds for every comparison), with T ~ noncentral t(n−1, λ = D√n/s):

    power(n) = P(T > t_{n−1,1−a/2}) + P(T < −t_{n−1,1−a/2})        (scipy.stats.nct)
    n_needed = the smallest n ≥ 3 with power(n) ≥ the power asked (3: the fewest seeds the report tests)
    detectable_delta = the D at which power(n_pilot) = the power asked

(close to the normal approximation n ≈ ((z_{1−a/2} + z_power)·s/D)² + z_{1−a/2}²/2). No number
where the pilot cannot give one: under 2 paired seeds, or differences equal up to float rounding
(regablate.report.paired); the `reason` says which. JSON: a list of {label, n_pilot, sd_diff,
n_needed, detectable_delta, reason}. User errors: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings

from scipy import optimize, stats

from regablate.errors import OneLineParser, UsageError, escape_control

USAGE = "regablate plan DIR --delta D [--power 0.8] [--alpha 0.05] [--format table|json]"
N_CAP = 1_000_000


def t_power(n: int, effect: float, alpha: float) -> float:
    """Power of the two-sided paired t-test at level alpha with n pairs, effect = D/s."""
    df = n - 1
    c = float(stats.t.isf(alpha / 2, df))
    nc = effect * math.sqrt(n)
    # P(T<−c|λ) = P(T>c|−λ); scipy's nct gives nan far in a tail (|λ| ≳ 1e10): there P(T>c|λ)
    # is 1 for a λ above c, else 0
    upper, lower = (p if not math.isnan(p := float(stats.nct.sf(c, df, x))) else float(x > c)
                    for x in (nc, -nc))
    return upper + lower


def n_needed(sd: float, delta: float, power: float = 0.8, alpha: float = 0.05) -> int:
    """Smallest n ≥ 3 (the fewest seeds the report tests: `regablate.report.paired.MIN_SEEDS`)
    whose paired t-test (level alpha, two-sided) detects delta with `power` when the differences
    have sd `sd`. Raises ValueError above N_CAP."""
    from regablate.report.paired import MIN_SEEDS

    if not (sd > 0 and delta > 0 and 0 < power < 1 and 0 < alpha < 1):
        raise ValueError("n_needed: sd, delta > 0 and power, alpha in (0, 1)")
    effect = abs(delta) / sd
    z = float(stats.norm.isf(alpha / 2) + stats.norm.ppf(power))
    if not effect * math.sqrt(N_CAP) >= z:  # (z/effect)² > N_CAP, asked without overflowing
        raise ValueError(f"n_needed: more than {N_CAP} seeds")
    guess = max(2, int((z / effect) ** 2))  # the normal answer; the t-test's is at least this
    lo, hi = 1, guess  # power(lo) < target (or lo = 1); search hi upward, then bisect
    while t_power(hi, effect, alpha) < power:
        lo, hi = hi, hi * 2
        if hi > N_CAP:
            raise ValueError(f"n_needed: more than {N_CAP} seeds")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if mid >= 2 and t_power(mid, effect, alpha) >= power else (mid, hi)
    return max(hi, MIN_SEEDS)


def detectable_delta(sd: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The difference a paired t-test with n pairs detects with `power` (level alpha)."""
    if n < 2 or not sd > 0:
        raise ValueError("detectable_delta: n >= 2 and sd > 0")
    top = 1.0
    while t_power(n, top, alpha) < power:
        top *= 2
    effect = optimize.brentq(lambda e: t_power(n, e, alpha) - power, 0.0, top, xtol=1e-12)
    return float(effect * sd)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="regablate plan", usage=USAGE, description=__doc__.split("\n")[1].strip())
    p.add_argument("dir", metavar="DIR", help="the pilot sweep's run dirs")
    p.add_argument("--delta", type=float, required=True, metavar="D",
                   help="the difference to detect, in the metric's units")
    p.add_argument("--power", type=float, default=0.8)
    p.add_argument("--alpha", type=float, default=0.05, help="family-wise, over the comparisons")
    p.add_argument("--split", choices=("train", "val", "test"), default="val")
    p.add_argument("--baseline", metavar="LABEL", help="compare with this group (default: the "
                   "empty-stack group)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    return p


def _ok(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _key(row) -> tuple:
    return tuple(None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)
                 for v in (row["seed"], row["data_seed"]))


def pilot_comparisons(frame, split: str = "val", baseline: str | None = None) -> list[dict]:
    """[{label, baseline, diffs, scale}] per group with a baseline, from a `load_runs` frame."""
    from regablate.rundir.group import NOT_IN_GROUP

    if frame.empty:
        raise UsageError("no completed runs found")
    metrics = sorted(set(frame["metric"].dropna().astype(str)))
    if len(metrics) != 1:
        raise UsageError(f"runs with {len(metrics)} different metrics ({', '.join(metrics)}); "
                         "plan one task at a time")
    col = f"{split}_{metrics[0]}"
    if col not in frame:
        raise UsageError(f"no run reports {col}")
    other = [c for c in frame.columns if "." in c and not c.startswith("reg.")
             and c not in NOT_IN_GROUP]
    groups = {}
    for label in frame["label"].cat.categories if hasattr(frame["label"], "cat") \
            else dict.fromkeys(frame["label"]):
        rows = frame[frame["label"] == label]
        if len(rows):
            first = rows.iloc[0]
            groups[str(label)] = {
                "empty": str(first["reg"]) == "none",
                "config": tuple(repr(None if _na(first[c]) else first[c]) for c in other),
                "values": {_key(r): float(r[col]) for _, r in rows.iterrows() if _ok(r[col])}}
    if baseline is not None:
        if baseline not in groups:
            raise UsageError(f"--baseline {baseline!r}: no such group; groups: "
                             + ", ".join(map(repr, groups)))
        chosen = {g: baseline for g in groups}
    else:
        empty = [g for g, v in groups.items() if v["empty"]]
        if not empty:
            raise UsageError("no baseline group (empty stack) in the pilot; name one with "
                             "--baseline")
        chosen = {}
        for g, v in groups.items():
            match = empty if len(empty) == 1 else [b for b in empty
                                                   if groups[b]["config"] == v["config"]]
            chosen[g] = match[0] if len(match) == 1 else None
    out = []
    for g, b in chosen.items():
        if b is None or b == g:
            continue
        a, r = groups[g]["values"], groups[b]["values"]
        keys = [k for k in a if k in r]
        out.append({"label": g, "baseline": b, "diffs": [a[k] - r[k] for k in keys],
                    "scale": max((abs(x) for k in keys for x in (a[k], r[k])), default=0.0)})
    if not out:
        raise UsageError("no group to compare with a baseline")
    return out


def _na(v) -> bool:
    try:
        return v is None or bool(v != v)
    except (TypeError, ValueError):
        return False


def plan(comparisons: list[dict], delta: float, power: float = 0.8, alpha: float = 0.05) -> list:
    """One row per comparison: label, n_pilot, sd_diff, n_needed, detectable_delta, reason
    (see the module doc); the level is alpha / len(comparisons)."""
    import numpy as np

    from regablate.report.paired import equal_reason

    level = alpha / len(comparisons)
    rows = []
    for c in comparisons:
        d = np.asarray(c["diffs"], dtype=float)
        n = len(d)
        row = {"label": c["label"], "n_pilot": n, "sd_diff": None, "n_needed": None,
               "detectable_delta": None, "reason": None}
        if n < 2:
            row["reason"] = f"{n} paired seed{'s' * (n != 1)} in the pilot: no sd (2 at least)"
        elif reason := equal_reason(d, c.get("scale", 0.0)):
            row["sd_diff"], row["reason"] = 0.0, f"{reason}: no spread to plan from"
        else:
            sd = float(d.std(ddof=1))
            row["sd_diff"] = sd
            try:
                row["n_needed"] = n_needed(sd, delta, power, level)
            except ValueError as e:
                row["reason"] = str(e).removeprefix("n_needed: ")
            row["detectable_delta"] = detectable_delta(sd, n, power, level)
            if n < 3 and row["reason"] is None:
                row["reason"] = "sd from 2 seeds: rough"
        rows.append(row)
    return rows


def render(rows: list, delta: float, power: float, alpha: float) -> str:
    def num(v, spec):
        return "-" if v is None else format(v, spec)

    head = ("group", "pilot n", "sd of diff", "n needed", "detectable Δ")
    body = [(escape_control(r["label"]), str(r["n_pilot"]), num(r["sd_diff"], ".4g"),
             num(r["n_needed"], "d"), num(r["detectable_delta"], ".4g")) for r in rows]
    widths = [max(len(x[i]) for x in (head, *body)) for i in range(len(head))]
    lines = ["  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w)
                       in enumerate(zip(line, widths, strict=True))).rstrip()
             for line in (head, *body)]
    m = len(rows)
    lines.append(f"seeds per arm for a two-sided paired t-test to detect |Δ| = {delta:g} with "
                 f"power {power:g} at α/{m} = {alpha / m:.4g} (the smallest Holm level over {m} "
                 f"comparison{'s' * (m != 1)}); detectable Δ: with the pilot's seeds")
    lines += [f"{escape_control(r['label'])}: {r['reason']}" for r in rows if r["reason"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """`regablate plan`: 0, or 2 with one line on stderr."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        return _fail(str(e))
    except SystemExit as e:  # --help
        return int(e.code or 0)
    if not (math.isfinite(args.delta) and args.delta > 0):
        return _fail(f"--delta {args.delta}: a finite positive number (the difference to detect, "
                     "in the metric's units)")
    for name in ("power", "alpha"):
        if not 0 < getattr(args, name) < 1:
            return _fail(f"--{name} {getattr(args, name)}: a number in (0, 1)")
    from regablate.report.frames import SkippedRunWarning, load_runs

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SkippedRunWarning)
            frame = load_runs(args.dir)
        for w in caught:
            print(f"regablate plan: warning: {escape_control(w.message)}", file=sys.stderr)
        rows = plan(pilot_comparisons(frame, args.split, args.baseline), args.delta,
                    args.power, args.alpha)
    except (UsageError, FileNotFoundError) as e:
        return _fail(str(e))
    if args.format == "json":
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
    else:
        sys.stdout.write(render(rows, args.delta, args.power, args.alpha))
    return 0


def _fail(message: str) -> int:
    print(escape_control(f"regablate plan: error: {message}"), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
