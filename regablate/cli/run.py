"""`regablate run`: the Hydra entry point. The real work is `train.train(cfg, run_dir)`."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from regablate.config.objective import value as objective_value
from regablate.config.paths import CONF_DIR
from regablate.errors import ConfigError, UsageError, survives_pickling
from regablate.training.job import (
    describe,
    job_cpus,
    returns_interruptions,
    stop_on_cluster_signals,
)


def _remove_if_only_hydra(run_dir: Path) -> None:
    """A run refused before training leaves nothing behind (only Hydra's own files existed),
    nor the folders made for it (`outputs/<date>/`) once they are empty, up to the working dir."""
    if run_dir.is_dir() and all(p.name in (".hydra", "regablate.log") for p in run_dir.iterdir()):
        shutil.rmtree(run_dir)
    cwd, parent = Path.cwd().resolve(), run_dir.resolve().parent
    while parent != cwd and cwd in parent.parents:
        try:
            parent.rmdir()  # only if empty
        except OSError:
            break
        parent = parent.parent


def place_job(cfg: dict, hc) -> None:
    """Share the machine among parallel jobs: torch threads per job, and job k on GPU k mod n.

    threads=0 (auto), out of the CPUs the job was given (`job_cpus`: its SLURM allocation or
    CPU affinity): cores // n_jobs under the joblib launcher, cpus_per_task under submitit
    when set, else cores // (jobs in the batch) under submitit_local, which starts a whole
    batch at once; torch's default otherwise, but never more than the job's CPUs. An explicit
    trainer.device other than auto/cuda is kept.
    """
    import torch

    from regablate.training.settings import MAX_THREADS

    trainer = cfg.setdefault("trainer", {})
    threads = trainer.get("threads", 0)
    if not isinstance(threads, int) or isinstance(threads, bool) or not 0 <= threads <= MAX_THREADS:  # before torch
        raise ConfigError("trainer.threads", threads, f"must be an integer in [0, {MAX_THREADS}] (0 = auto)")
    launcher = hc.launcher if "launcher" in hc else {}
    cores = job_cpus()
    if not threads:
        if launcher.get("n_jobs"):
            n_jobs = launcher["n_jobs"]
            n_jobs = cores if n_jobs < 0 else n_jobs
            threads = max(1, cores // n_jobs)
        elif launcher.get("cpus_per_task"):
            threads = min(launcher["cpus_per_task"], cores)
        elif str(launcher.get("_target_", "")).endswith("submitit_launcher.LocalLauncher"):
            try:
                threads = max(1, cores // batch_size(Path(hc.sweep.dir)))
            except Exception:  # another sweeper's grammar (interval(...)): assume a job per core
                threads = 1
        elif cores < torch.get_num_threads():
            threads = cores
    if threads:
        torch.set_num_threads(threads)
    n_gpus = torch.cuda.device_count()
    if n_gpus > 1 and trainer.get("device", "auto") in ("auto", "cuda") and hc.job.get("num") is not None:
        trainer["device"] = f"cuda:{hc.job.num % n_gpus}"


def batch_size(sweep_dir: Path) -> int:
    """How many jobs one batch of the sweep in `sweep_dir` holds, from its multirun.yaml (the
    sweep's own overrides, expanded as Hydra's basic sweeper expands them)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweep = OmegaConf.load(sweep_dir / "multirun.yaml").hydra
    params = sweep.sweeper.get("params") or {}
    args = [f"{k}={v}" for k, v in params.items()] + list(sweep.overrides.task)
    batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args),
                                           sweep.sweeper.get("max_batch_size"))
    return max(1, *map(len, batches))


def _not_recorded(run_dir: Path) -> bool:
    """True if the job left no summary.json (it failed before training started)."""
    return not (run_dir / "summary.json").exists()


def _failed_summary(run_dir: Path, cfg: dict, error: str, status: str = "failed") -> None:
    """In a sweep, a job refused for its config is recorded as failed (the sweep goes on), and
    a submitit job stopped before training began as interrupted."""
    from regablate.data import DATASETS
    from regablate.rundir.atomic import write_json
    from regablate.training.experiment import group_id

    reg = cfg.get("reg") if isinstance(cfg.get("reg"), dict) else {}
    dataset = (cfg.get("dataset") or {}).get("name")
    task = getattr(DATASETS.get(dataset, (None,))[0], "task", None)
    metric = {"classification": "acc", "regression": "mse"}.get(task)
    write_json(run_dir / "summary.json", {
        "schema": 1, "status": status, "task": task, "metric": metric,
        "higher_is_better": None if task is None else task == "classification",
        **{k: cfg.get(k) if _whole(cfg.get(k)) else None for k in ("seed", "data_seed")},  # data_seed=x: its error says it
        "dataset": (cfg.get("dataset") or {}).get("name"), "model": (cfg.get("model") or {}).get("name"),
        "reg": sorted(reg), "group": group_id(cfg), "warnings": [], "error": error,
    })


def _stopped_while_opening(run_dir: Path, how: str) -> None:
    """A stop that came after the run's summary.json said `running` but before its session could
    record the stop (while it opened its files, built its optimiser): recorded `interrupted` here,
    in the run dir this process holds, as the session records it."""
    from regablate.rundir.atomic import write_json
    from regablate.rundir.scan import read_summary

    summary, _ = read_summary(str(run_dir))
    if summary is not None and summary["status"] == "running":
        write_json(run_dir / "summary.json", {**summary, "status": "interrupted", "error": f"interrupted by {how}"})


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


LAUNCH_DIRS: dict[str, str] = {}  # "run" / "sweep" -> this process's output dir, for the resume hint


def is_ours(task_function) -> bool:
    """Whether `task_function` is regablate's own task (`hydra_main`), also as a process pool
    sends it to its workers: by value (pickle cannot find the undecorated function under its
    name), so known by its module and name, not by identity."""
    f = getattr(task_function, "__wrapped__", task_function)
    return (getattr(f, "__module__", None), getattr(f, "__qualname__", None)) == (__name__, "hydra_main")


class RememberDir(Callback):
    """Keeps the run or sweep dir as Hydra resolves it, for the hint printed after Ctrl-C; and
    writes `.hydra/` for another Hydra app's task on regablate's configs (regablate's own task
    writes it once it holds the run dir's lock: `hydra.output_subdir` is null)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        LAUNCH_DIRS["run"] = str(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        LAUNCH_DIRS["sweep"] = str(config.hydra.sweep.dir)

    def on_job_start(self, config: DictConfig, *, task_function=None, **kwargs) -> None:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import open_dict, read_write

        from regablate.rundir.claim import write_hydra_files

        if task_function is None or config.hydra.output_subdir is not None or is_ours(task_function):
            return
        task_cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        with read_write(task_cfg), open_dict(task_cfg):
            OmegaConf.set_struct(task_cfg, OmegaConf.is_struct(config))
        write_hydra_files(Path(config.hydra.runtime.output_dir), task_cfg, HydraConfig.instance().cfg,
                          config.hydra.overrides.task)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig, files_cfg: DictConfig | None = None) -> float | None:
    """One job. `files_cfg`: the config to write as .hydra/config.yaml where `cfg` was resolved
    beforehand (the vectorized launcher's ordinary jobs); `cfg` itself otherwise."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from regablate.checks.lint import ModelInputError
    from regablate.errors import JobFailed, RunInterrupted
    from regablate.rundir.claim import RunRefused, claim, write_hydra_files
    from regablate.training.loop import train

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    sweep = hc.mode == RunMode.MULTIRUN
    container: dict = {}
    try:
        with claim(run_dir, _resume_of(cfg)):
            try:  # a sweep's job that ends here is recorded while its run dir is held
                with stop_on_cluster_signals():
                    container = resolved(cfg)  # before anything is written
                    write_hydra_files(run_dir, cfg if files_cfg is None else files_cfg,
                                      HydraConfig.instance().cfg, hc.overrides.task)
                    place_job(container, hc)
                    summary = train(container, run_dir)
            except KeyboardInterrupt as e:
                how = getattr(e, "signal_name", "the user (Ctrl-C)")
                _stopped_while_opening(run_dir, how)
                if _not_recorded(run_dir):  # stopped before training began (even before its config was read)
                    try:
                        container = container or resolved(cfg)
                    except ConfigError:  # a config that does not resolve: its own error later
                        container = {}
                    if container:
                        _failed_summary(run_dir, container, f"interrupted by {how} before training began",
                                        status="interrupted")
                if not (sweep and returns_interruptions()):
                    raise
                raise RunInterrupted(run_dir, getattr(e, "signal_name", "SIGINT")) from None  # the launcher reads it
            except RunRefused:
                raise
            except (ConfigError, UsageError) as e:
                # a sweep's job: the sweeper counts it in its closing line; a model that fails on
                # the data's inputs is a run that failed, single or not (its config was valid)
                if (sweep or isinstance(e, ModelInputError)) and _not_recorded(run_dir):
                    _failed_summary(run_dir, container, f"invalid config: {e}" if isinstance(e, ConfigError) else str(e))
                raise
            except Exception as e:
                if sweep and _not_recorded(run_dir):
                    _failed_summary(run_dir, container, f"{type(e).__name__}: {e}")
                if sweep and not survives_pickling(e):  # joblib and submitit return it pickled
                    raise JobFailed(f"{type(e).__name__}: {e}") from None
                raise
    except RunRefused as e:  # nothing was written: the sweeper counts it, a single run says it
        if sweep:
            raise
        refuse(str(e))
    except (ConfigError, UsageError) as e:
        if sweep:
            raise
        if not isinstance(e, ModelInputError):  # recorded as failed: its run dir stays
            _remove_if_only_hydra(run_dir)
        refuse(f"invalid config: {e}" if isinstance(e, ConfigError) else str(e))
    except Exception as e:
        if not sweep and isinstance(e, OSError) and e.filename:  # recorded as failed by train()
            refuse(f"cannot write {e.filename}: {e.strerror}")
        raise
    if cfg.trainer.progress != "none":
        print(describe(summary, run_dir), flush=True)
    return objective_value(summary, container["trainer"].get("objective", "val_loss"))  # for sweepers


def _resume_of(cfg: DictConfig) -> str:
    """trainer.resume, read before the settings are checked (`trainer=null` is no trainer)."""
    trainer = cfg.get("trainer")
    if not isinstance(trainer, DictConfig):
        raise ConfigError("trainer", trainer, "must be the trainer's settings (trainer.max_epochs=..., ...)")
    resume = trainer.get("resume", "never")
    return resume if isinstance(resume, str) else str(resume)


def resolved(cfg: DictConfig) -> dict:
    """The job's config with its interpolations resolved; one that does not resolve
    (`seed=${oc.env:NOPE}`) is a ConfigError naming its key."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "config"
        raw: object = OmegaConf.to_container(cfg, resolve=False)  # the interpolation as written
        for part in key.split("."):
            raw = raw.get(part) if isinstance(raw, dict) else None
        raise ConfigError(key, raw, f"does not resolve: {' '.join(str(e.msg).split('full_key:')[0].split())}") from None


def refuse(message: str) -> None:
    """One line on stderr and exit code 2 (SystemExit passes through Hydra untouched)."""
    print(f"regablate: error: {message}", file=sys.stderr)
    raise SystemExit(2)
