"""TensorBoard's HParams dashboard, written the way TensorBoard documents it.

One *experiment* (every hparam with its discrete domain, every metric) at the root of what
TensorBoard is shown; each run writes only its *session start* (its values, its group) and
*end* (its status). Hparams are the settings that identify the science (`reg`, the stack's
readable name, then every non-operational setting, see `regablate.rundir.group`): never operational
settings, never seeds.

Metrics are real curves whose last point is the number the report uses: `best/loss` and
`best/<metric>` in the `train/` and `val/` sub-runs (the value at the best epoch so far; with
trainer.restore_best=false, at the epoch itself, as the run reports its last weights),
`best/<metric>` in `test/` (one point, at the epoch of the weights tested) and the run-level
`best/gap`.

Built from TensorBoard's own protos (no TensorFlow). Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from regablate.rundir.group import science, stack_name

ABSENT = "–"  # a setting a run does not have (another model's width, say)
SESSION_FILE = "events.out.tfevents.session.hparams"  # a run's session start and end, in its tb/


def run_hparams(cfg: dict) -> dict[str, Any]:
    """A run's hparams: `reg` and its science settings as scalars (lists as strings)."""
    reg = cfg.get("reg") if isinstance(cfg.get("reg"), dict) else {}
    values: dict[str, Any] = {"reg": stack_name(reg)}
    for key, v in science(cfg).items():
        if key == "reg":  # the empty mapping of the baseline
            continue
        values[key] = v if isinstance(v, (bool, int, float, str)) else str(v)
    return values


def fill(sessions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every session with every hparam any of them has: a regulariser strength a run does not
    use is 0 (it is not in its stack), any other missing setting is `–`."""
    keys = list(dict.fromkeys(k for s in sessions for k in s))
    numeric = {k for k in keys if any(isinstance(s.get(k), (int, float)) and not isinstance(s.get(k), bool)
                                      for s in sessions)}
    return [{k: s[k] if k in s else (0.0 if k.startswith("reg.") and k in numeric else ABSENT) for k in keys}
            for s in sessions]


def shown(sessions: list[dict[str, Any]]) -> list[str]:
    """The hparams worth a column: `reg`, every regulariser setting some run uses (non-zero),
    and every setting whose value differs among the sessions (constants are noise)."""
    keys = list(dict.fromkeys(k for s in sessions for k in s))

    def used(k: str) -> bool:
        return k.startswith("reg.") and any(s.get(k) not in (0, None, ABSENT, False) for s in sessions)

    return [k for k in keys if k == "reg" or used(k) or len({s.get(k) for s in sessions}) > 1]


def metric_names(metrics: Iterable[str]) -> list[tuple[str, str]]:
    """(tag, sub-run) of every metric of the experiment, for each task metric seen: val and the
    gap first (TensorBoard ticks the first few)."""
    ms = list(dict.fromkeys(metrics))
    return [*((f"best/{m}", "val") for m in ms), ("best/gap", ""),
            *((f"best/{m}", split) for m in ms for split in ("train", "test")),
            ("best/loss", "val"), ("best/loss", "train")]


def _summary(plugin_data) -> Any:
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import metadata

    tag = {"experiment": metadata.EXPERIMENT_TAG, "session_start_info": metadata.SESSION_START_INFO_TAG,
           "session_end_info": metadata.SESSION_END_INFO_TAG}[plugin_data.WhichOneof("data")]
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(plugin_data))])


def _value(v: Any):
    from google.protobuf.struct_pb2 import Value

    if isinstance(v, bool):
        return Value(bool_value=v)
    if isinstance(v, (int, float)):
        return Value(number_value=float(v))
    return Value(string_value=str(v))


def experiment(sessions: list[dict[str, Any]], metrics: Iterable[str]):
    """The experiment summary: the shown hparams with the discrete values the sessions have."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    infos = []
    for key in shown(sessions):
        values = sorted({s[key] for s in sessions if key in s}, key=lambda v: (str(type(v)), v))
        kinds = {type(v) for v in values}
        if kinds <= {bool}:
            kind, domain = api_pb2.DATA_TYPE_BOOL, [_value(v) for v in values]
        elif kinds <= {int, float}:
            kind, domain = api_pb2.DATA_TYPE_FLOAT64, [_value(v) for v in values]
        else:
            kind, domain = api_pb2.DATA_TYPE_STRING, [_value(str(v)) for v in values]
        info = api_pb2.HParamInfo(name=key, type=kind)
        info.domain_discrete.values.extend(domain)
        infos.append(info)
    metric_infos = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag, group=group))
                    for tag, group in metric_names(metrics)]
    exp = api_pb2.Experiment(hparam_infos=infos, metric_infos=metric_infos)
    return _summary(plugin_data_pb2.HParamsPluginData(experiment=exp, version=0))


def session_start(values: dict[str, Any], group: str, start_time_s: float = 0.0):
    from tensorboard.plugins.hparams import plugin_data_pb2

    info = plugin_data_pb2.SessionStartInfo(group_name=group, start_time_secs=start_time_s)
    for k, v in values.items():
        info.hparams[k].CopyFrom(_value(v))
    return _summary(plugin_data_pb2.HParamsPluginData(session_start_info=info, version=0))


def session_end(status: str, end_time_s: float = 0.0):
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    code = {"completed": "STATUS_SUCCESS", "running": "STATUS_RUNNING"}.get(status, "STATUS_FAILURE")
    info = plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value(code), end_time_secs=end_time_s)
    return _summary(plugin_data_pb2.HParamsPluginData(session_end_info=info, version=0))


def write(path, summaries: list, step: int = 0) -> None:
    """An events file holding `summaries`, written atomically (TensorBoard reads any file
    whose name contains `tfevents`)."""
    import time

    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    from regablate.rundir.atomic import write_atomic
    from regablate.tensorboard.records import use_fast_checksums

    use_fast_checksums()

    def records(f) -> None:
        w = RecordWriter(f)
        w.write(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        for s in summaries:
            w.write(Event(wall_time=time.time(), step=step, summary=s).SerializeToString())

    write_atomic(path, records, mode="wb")
