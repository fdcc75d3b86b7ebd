"""`regablate export mlflow DIR... --tracking-uri URI [--experiment NAME]`: finished runs into an
MLflow tracking store (needs `pip install 'regablate[mlflow]'`).

One writer, after the runs: the export reads run dirs with regablate's own readers (the
discovery and checks of `regablate.load_runs`, the report's groups and labels from
regablate.report.select, `regablate.load_curves` for the curves) and writes them through
`mlflow.tracking.MlflowClient` in batches; nothing is logged live from the jobs of a sweep.

What lands in the experiment:

- one parent run per group (runs that differ only by seed): run name the group's label;
  params the group's settings (the flattened config without seeds and operational settings)
  and `reg`, the stack (`none`, `dropout+l2`); tags `regablate.label`, `regablate.group` (the
  group id), `regablate.kind=group`; artifacts `plots/curves_*.png` (and `reliability_*.png`
  where the runs have calibration tables), the report's figures for the group.
- one child run per completed run dir: run name `<label>/seed=<s>`; tag `mlflow.parentRunId`,
  `regablate.run_dir` (the resolved path), `regablate.group`, `regablate.label`,
  `regablate.kind=seed`; params `seed`, `data_seed`, `reg`; metrics named as `load_runs`'
  columns (`train_acc`, `val_acc`, `val_loss`, `test_acc`, `gap`, `val_ece`, ..., `best_epoch`,
  `epochs_run`, `wall_time_s`, `n_params`) at step 0, each the value at the best epoch as
  summary.json has it; every metrics.csv column as `curve/<column>` with the epoch as the step;
  artifact `summary.json` (the checked summary, written anew, never the file copied).

Exporting again adds no run and changes none: children are matched by `regablate.run_dir`,
parents by `regablate.group` (searched in the experiment, never by name). Runs completed since
are added, under their group's parent (created when new); a parent that gains runs gets its
plots redrawn. Only completed runs are exported: running, interrupted, diverged and failed ones
are counted and left out, and a running run is exported by the first export after it completes.
A run dir changed after it was exported is not updated (delete its run in MLflow and export
again). A run that an export created but did not finish (the export was killed) is deleted and
written again by the next export. A name MLflow does not allow (it takes letters, digits and
`_ - . / space`) has its other characters replaced by `_`; a value that is not finite is not
logged (MLflow stores none). A new experiment in a sqlite store keeps its artifacts in
`mlartifacts/` beside the database file unless `--artifact-location` says otherwise (MLflow's
default would be ./mlruns in whatever dir the export is run from). A store or artifact location
on this machine inside a run dir is refused, as are an empty URI or name and a URI of a scheme
MLflow has no store for (one line, exit 2).
"""

from __future__ import annotations

import argparse
import math
import os
import posixpath
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

from regablate.errors import UsageError, escape_control

INSTALL = "pip install 'regablate[mlflow]'"
USAGE = """usage: regablate export mlflow [DIR ...] --tracking-uri URI [--experiment NAME]
                               [--artifact-location URI] [--no-plots]

Completed runs under the DIRs (default ./multirun and ./outputs) into an MLflow tracking store:
one parent run per group, one child run per seed. Exporting again adds only runs completed
since. Needs: """ + INSTALL + "\n"

KIND, DIR, GROUP, LABEL = "regablate.kind", "regablate.run_dir", "regablate.group", "regablate.label"
PARENT = "mlflow.parentRunId"
MAX_PARAMS, MAX_METRICS = 100, 1000  # MLflow's log_batch limits (params and tags; metrics)
MAX_KEY, MAX_PARAM, MAX_TAG = 250, 6000, 8000
NOT_METRICS = {"run_dir", "status", "group", "label", "seed", "data_seed", "dataset", "model",
               "reg", "task", "metric", "higher_is_better", "stopped_early", "device",
               "warnings", "error", "summary_group"}
CURVE_KEYS = {"run_dir", "status", "group", "label", "trial", "reg", "seed", "data_seed", "epoch"}
_BAD = re.compile(r"[^\w.\- /]")
WANTED = {"--tracking-uri": "a store's URI, e.g. sqlite:///mlflow.db, http://HOST:5000 or a folder",
          "--experiment": "a name (default regablate)",
          "--artifact-location": "a URI or folder for the artifacts"}


class ExportError(Exception):
    """A problem for one line on stderr (the store refused, the experiment is deleted)."""


class ExportWarning(UserWarning):
    """A completed run left out of the export; the message names it and says why."""


def _key(name: str, prefix: str = "") -> str:
    """`name` as an MLflow param/metric key: letters, digits, `_ - . / space`, not a path that
    normalises to another name, at most 250 characters."""
    body = _BAD.sub("_", str(name))
    flat = body.replace("/", "_")
    for k in (prefix + body, prefix + flat, f"{prefix}_{flat}"):
        k = k[:MAX_KEY]
        if posixpath.normpath(k) == k and not k.startswith(("/", "..")) and k != ".":
            return k
    raise AssertionError(k)  # not reached: "<prefix>_<no slash>" is always a plain name


def _text(value, limit: int) -> str:
    return str(value)[:limit]


def _finite(x) -> float | None:
    try:
        if x is None or isinstance(x, bool):
            return None
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _log(client, run_id: str, metrics=(), params=None, tags=None) -> None:
    """As few log_batch calls as MLflow's limits allow: each at most 100 params, 100 tags and
    1000 entities in all."""
    from mlflow.entities import Param, RunTag

    params = [Param(k, _text(v, MAX_PARAM)) for k, v in (params or {}).items()]
    tags = [RunTag(k, _text(v, MAX_TAG)) for k, v in (tags or {}).items()]
    metrics = list(metrics)
    while params or tags or metrics:
        p, t = params[:MAX_PARAMS], tags[:MAX_PARAMS]
        m = metrics[:MAX_METRICS - len(p) - len(t)]
        client.log_batch(run_id, metrics=m, params=p, tags=t)
        params, tags, metrics = params[len(p):], tags[len(t):], metrics[len(m):]


def _existing(client, experiment_id: str, kind: str, key: str) -> dict:
    """Runs of the experiment tagged `regablate.kind=<kind>`, by their `key` tag (a finished
    one where an interrupted export left two)."""
    from mlflow.entities import ViewType

    out: dict = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], f"tags.`{KIND}` = '{kind}'",
                                  run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                  page_token=token)
        for run in page:
            value = run.data.tags.get(key)
            if value is not None and (value not in out or run.info.status == "FINISHED"):
                out[value] = run
        token = page.token
        if not token:
            return out


def beside_the_store(tracking_uri: str) -> str | None:
    """Where a new experiment in a sqlite store keeps its artifacts (the plots) when no
    --artifact-location is given: `mlartifacts/` beside the database file, as a file URI.
    MLflow's own default is ./mlruns in the working dir: an export run from inside a sweep or
    run dir would write there, and one from elsewhere would scatter a store's plots."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri[len("sqlite:///"):]).resolve()
    return (database.parent / "mlartifacts").as_uri()


def _local_path(uri: str) -> Path | None:
    """Where on this machine a store or artifact URI writes: a `sqlite:///` database file, a
    `file:` URI's or a plain path's folder; None for a server or another remote store."""
    from urllib.parse import unquote, urlsplit

    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    scheme = urlsplit(uri).scheme
    if scheme == "file":
        return Path(unquote(urlsplit(uri).path))
    return Path(uri) if not scheme else None


def check_args(tracking_uri: str, experiment: str, artifact_location: str | None) -> None:
    """Refuse, before anything is written, an empty --tracking-uri, --experiment or
    --artifact-location, and a store or artifact location on this machine that is a run dir or
    lies inside one (a run dir holds only what its run wrote)."""
    from regablate.rundir.claim import within_run

    given = {"--tracking-uri": tracking_uri, "--experiment": experiment,
             "--artifact-location": artifact_location}
    for flag, value in given.items():
        if value is not None and not value.strip():
            raise UsageError(f"{flag} {value!r}: empty; {WANTED[flag]}")
    for flag, outside in (("--tracking-uri", "sqlite:///mlflow.db"), ("--artifact-location", "mlartifacts")):
        path = given[flag] and _local_path(given[flag])
        where = path and within_run(path)
        if where:
            raise UsageError(f"{flag} {given[flag]!r}: {path} {where}, which holds only what its "
                             f"run wrote; put it outside, e.g. {flag} {outside}")


def _client(tracking_uri: str):
    """MLflow's client for the store; a URI of a scheme MLflow has no store for is a usage error."""
    from mlflow.tracking import MlflowClient
    from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException

    try:
        return MlflowClient(tracking_uri=tracking_uri)
    except UnsupportedModelRegistryStoreURIException as e:
        schemes = ", ".join(s for s in e.supported_uri_schemes if s)
        raise UsageError(f"--tracking-uri {tracking_uri!r}: not a store MLflow knows; allowed: a "
                         f"folder, or a URI of scheme {schemes} (e.g. sqlite:///mlflow.db, "
                         "http://HOST:5000)") from None


def _experiment(client, name: str, artifact_location: str | None) -> str:
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name, artifact_location=artifact_location)
    if found.lifecycle_stage != "active":
        raise ExportError(f"experiment {name!r} is deleted in this store; restore it or pass "
                          "another --experiment")
    return found.experiment_id


def _reach(tracking_uri: str) -> None:
    """A server URI whose host does not answer is said in one line at once, not after the
    minutes of retries MLflow's client spends on it (which stay, for a server that falters)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=10).close()
    except OSError as e:
        raise ExportError(f"cannot reach {parts.hostname}:{port}: "
                          f"{e.strerror or e.__class__.__name__}") from None


def _read(paths: list[str]):
    """Run records, their groups (the report's) and the `load_runs` frame of every run (any
    status), read once; skipped dirs come back as warnings."""
    from regablate.report.frames import _collect, runs_frame
    from regablate.report.select import make_groups

    runs, _ = _collect(paths)
    groups = make_groups(runs)
    return runs, groups, runs_frame(runs, status=None, groups=groups)


def _group_params(run, stack: str) -> dict:
    from regablate.rundir.group import NOT_IN_GROUP

    params = {_key(k): v for k, v in run.config.items() if k not in NOT_IN_GROUP}
    params["reg"] = stack
    return params


def _curve_metrics(curves, now: int) -> list:
    """`curve/<column>` points of one run's metrics.csv rows, the epoch as the step."""
    from mlflow.entities import Metric

    if curves is None or "epoch" not in curves or curves.empty:
        return []
    epochs = curves["epoch"].tolist()
    out = []
    for col in curves.columns:
        if col in CURVE_KEYS:
            continue
        key = _key(col, "curve/")
        for epoch, value in zip(epochs, curves[col].tolist(), strict=True):
            v, e = _finite(value), _finite(epoch)
            if v is not None and e is not None and e == int(e):
                out.append(Metric(key, v, now, int(e)))
    return out


def export_mlflow(paths: list[str], tracking_uri: str, experiment: str = "regablate",
                  artifact_location: str | None = None, plots: bool = True) -> dict:
    """Export the completed runs under `paths` (see the module doc); returns counts:
    `added`, `present` (already exported), `parents_added`, `left_out` (status -> count of runs
    not exported) and `experiment_id`."""
    quiet = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"  # a "View run" link per run, else
    before = os.environ.get(quiet)
    os.environ[quiet] = "true"
    try:
        return _export(paths, tracking_uri, experiment, artifact_location, plots)
    finally:
        if before is None:
            os.environ.pop(quiet, None)
        else:
            os.environ[quiet] = before


def _export(paths, tracking_uri, experiment, artifact_location, plots) -> dict:
    from mlflow.entities import Metric

    from regablate.report.frames import load_curves
    from regablate.report.select import stack_name

    check_args(tracking_uri, experiment, artifact_location)
    _reach(tracking_uri)
    runs, groups, frame = _read(paths)
    by_path = {str(r.path): r for r in runs}
    group_of = {id(r): g for g in groups for r in g.runs}
    config_keys = {k for r in runs for k in r.config if "." in k}
    metric_cols = [c for c in frame.columns if c not in NOT_METRICS and c not in config_keys]

    client = _client(tracking_uri)  # makes a sqlite store's database
    experiment_id = _experiment(client, experiment, artifact_location or beside_the_store(tracking_uri))
    children = _existing(client, experiment_id, "seed", DIR)
    parents = _existing(client, experiment_id, "group", GROUP)

    counts = {"added": 0, "present": 0, "parents_added": 0, "left_out": {},
              "experiment_id": experiment_id}
    todo = []  # (row, Run, resolved dir)
    for row in frame.to_dict("records"):
        status = str(row["status"])
        if status != "completed":
            counts["left_out"][status] = counts["left_out"].get(status, 0) + 1
            continue
        resolved = str(Path(row["run_dir"]).resolve())
        try:
            resolved.encode("utf-8")
        except UnicodeEncodeError:
            warnings.warn(f"skipped {resolved!a}: its path is not UTF-8 text, which MLflow "
                          "cannot store", ExportWarning, stacklevel=2)
            continue
        done = children.get(resolved)
        if done is not None and done.info.status == "FINISHED":
            counts["present"] += 1
            continue
        if done is not None:  # an export stopped while writing it: write it again
            client.delete_run(done.info.run_id)
        todo.append((row, by_path[row["run_dir"]], resolved))

    curves = {}
    if todo:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # these dirs were read a moment ago
            frame_c = load_curves(*[row["run_dir"] for row, _, _ in todo], status=("completed",))
        if not frame_c.empty:
            curves = {k: v for k, v in frame_c.groupby("run_dir", observed=True, sort=False)}

    grown = {}  # group id -> (Group, parent run id)
    unfinished = []  # parent runs to finish once their children and plots are written
    for row, run, resolved in todo:
        g = group_of[id(run)]
        label, stack = str(row["label"]), stack_name(g.stack)
        if g.id not in grown:
            parent = parents.get(g.id)
            if parent is None:
                parent = client.create_run(experiment_id, run_name=_text(label, MAX_KEY), tags={
                    KIND: "group", GROUP: g.id, LABEL: _text(label, MAX_TAG)})
                counts["parents_added"] += 1
                parents[g.id] = parent
            if parent.info.status != "FINISHED":  # new, or an export stopped while writing it
                _log(client, parent.info.run_id, params=_group_params(run, stack))
                unfinished.append(parent.info.run_id)
            grown[g.id] = (g, parent.info.run_id)
        parent_id = grown[g.id][1]
        seed = row["seed"]
        child = client.create_run(
            experiment_id, run_name=_text(f"{label}/seed={seed}", MAX_KEY), tags={
                KIND: "seed", DIR: _text(resolved, MAX_TAG), GROUP: g.id,
                LABEL: _text(label, MAX_TAG), PARENT: parent_id})
        now = int(time.time() * 1000)
        metrics = [Metric(_key(c), v, now, 0) for c in metric_cols
                   if (v := _finite(row[c])) is not None]
        metrics += _curve_metrics(curves.get(row["run_dir"]), now)
        _log(client, child.info.run_id, metrics,
             params={"seed": seed, "data_seed": row["data_seed"], "reg": stack})
        client.log_dict(child.info.run_id, run.summary, "summary.json")
        client.set_terminated(child.info.run_id, "FINISHED")
        counts["added"] += 1

    if plots and grown:
        _log_plots(client, list(grown.values()))
    for parent_id in unfinished:
        client.set_terminated(parent_id, "FINISHED")
    return counts


def _log_plots(client, grown: list) -> None:
    """The report's figures of each group that gained runs (its curves, and its reliability
    diagram where the runs have calibration tables), drawn by regablate.report.plots, on the
    group's parent run under plots/."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from regablate.report.plots import _curves, _reliability, file_name, pooled_reliability

    with tempfile.TemporaryDirectory(prefix="regablate-export-") as tmp, \
            matplotlib.rc_context({"text.parse_math": False}):  # a "$" in a label is a "$"
        for g, parent_id in grown:
            figures = []
            if g.done and any(r.curves.get("epoch") for r in g.done):
                figures.append(Path(tmp) / file_name("curves", g))
                _curves(plt, g, figures[-1])
            for split in ("test", "val"):
                table = pooled_reliability(g.done, split)
                if table is not None:
                    figures.append(Path(tmp) / file_name("reliability", g))
                    _reliability(plt, g, split, table, figures[-1])
                    break
            for path in figures:
                client.log_artifact(parent_id, str(path), "plots")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ExportError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="regablate export mlflow", add_help=False)
    p.add_argument("dirs", nargs="*")
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--experiment", default="regablate")
    p.add_argument("--artifact-location", default=None)
    p.add_argument("--no-plots", action="store_true")
    return p


def _fail(message: str, code: int) -> int:
    print(escape_control(f"regablate export: error: {' '.join(str(message).split())}"),
          file=sys.stderr)
    return code


def main(argv: list[str]) -> int:
    """`regablate export mlflow ...`: 0; 2 with one line for a usage error (a bad flag, a store
    MLflow has none for or one in a run dir) or without mlflow;
    1 with one line when the store refuses or cannot be reached."""
    if not argv:
        return _fail("no target; allowed: mlflow (regablate export mlflow [DIR ...] "
                     "--tracking-uri URI)", 2)
    if argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    if argv[0] != "mlflow":
        return _fail(f"unknown target {argv[0]!r}; allowed: mlflow", 2)
    if any(a in ("-h", "--help") for a in argv[1:]):
        print(USAGE, end="")
        return 0
    try:
        args = build_parser().parse_args(argv[1:])
    except ExportError as e:
        return _fail(e, 2)
    try:
        import mlflow  # noqa: F401
    except ImportError:
        return _fail(f"exporting to MLflow needs mlflow: {INSTALL}", 2)
    from mlflow.exceptions import MlflowException

    paths = args.dirs or [d for d in ("multirun", "outputs") if os.path.isdir(d)]
    if not paths:
        return _fail("no runs found: no ./multirun or ./outputs here; pass a DIR holding run "
                     "dirs", 2)
    from regablate.report.frames import SkippedRunWarning

    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SkippedRunWarning)
            warnings.simplefilter("always", ExportWarning)
            counts = export_mlflow(paths, args.tracking_uri, args.experiment,
                                   args.artifact_location, plots=not args.no_plots)
    except (FileNotFoundError, UsageError) as e:
        return _fail(str(e), 2)
    except (ExportError, MlflowException, OSError) as e:  # requests' errors are OSErrors
        return _fail(f"{args.tracking_uri}: {e}", 1)
    finally:
        for w in caught:
            if issubclass(w.category, (SkippedRunWarning, ExportWarning)):
                print(f"regablate export: warning: {escape_control(w.message)}", file=sys.stderr)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    left = ", ".join(f"{n} {s}" for s, n in sorted(counts["left_out"].items()))
    line = (f"exported {counts['added']} run(s) ({counts['parents_added']} new group(s)) to "
            f"experiment {args.experiment!r} at {args.tracking_uri}; {counts['present']} "
            "already there")
    if left:
        line += (f"; not exported: {left} (only completed runs are; a running one is "
                 "exported by an export after it completes)")
    print(escape_control(line))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
