"""`regablate run`: the Hydra entry point. The real work is `train.train(cfg, run_dir)`."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from regablate.errors import ConfigError, UsageError
from regablate.objective import value as objective_value
from regablate.paths import CONF_DIR


def _remove_if_only_hydra(run_dir: Path) -> None:
    """A run refused before training leaves nothing behind (only Hydra's own files existed)."""
    if run_dir.is_dir() and all(p.name in (".hydra", "regablate.log") for p in run_dir.iterdir()):
        shutil.rmtree(run_dir)


def place_job(cfg: dict, hc) -> None:
    """Share the machine among parallel jobs: torch threads per job, and job k on GPU k mod n.

    threads=0 (auto): cores // n_jobs under the joblib launcher, cpus_per_task under submitit
    when set, else cores // (jobs in the batch) under submitit_local, which starts a whole
    batch at once; torch's default otherwise. An explicit trainer.device other than
    auto/cuda is kept.
    """
    import os

    import torch

    trainer = cfg.setdefault("trainer", {})
    threads = trainer.get("threads", 0)
    launcher = hc.launcher if "launcher" in hc else {}
    cores = os.cpu_count() or 1
    if not threads:
        if launcher.get("n_jobs"):
            n_jobs = launcher["n_jobs"]
            n_jobs = cores if n_jobs < 0 else n_jobs
            threads = max(1, cores // n_jobs)
        elif launcher.get("cpus_per_task"):
            threads = launcher["cpus_per_task"]
        elif str(launcher.get("_target_", "")).endswith("submitit_launcher.LocalLauncher"):
            try:
                threads = max(1, cores // batch_size(Path(hc.sweep.dir)))
            except Exception:  # another sweeper's grammar (interval(...)): assume a job per core
                threads = 1
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


def _failed_summary(run_dir: Path, cfg: dict, error: str) -> None:
    """In a sweep, a job refused for its config is recorded as failed; the sweep goes on."""
    from regablate.atomic import write_json
    from regablate.data import DATASETS
    from regablate.experiment import group_id

    reg = cfg.get("reg") if isinstance(cfg.get("reg"), dict) else {}
    dataset = (cfg.get("dataset") or {}).get("name")
    task = getattr(DATASETS.get(dataset, (None,))[0], "task", None)
    metric = {"classification": "acc", "regression": "mse"}.get(task)
    write_json(run_dir / "summary.json", {
        "schema": 1, "status": "failed", "task": task, "metric": metric,
        "higher_is_better": None if task is None else task == "classification",
        "seed": cfg.get("seed"), "data_seed": cfg.get("data_seed"),
        "dataset": (cfg.get("dataset") or {}).get("name"), "model": (cfg.get("model") or {}).get("name"),
        "reg": sorted(reg), "group": group_id(cfg), "warnings": [], "error": error,
    })


LAUNCH_DIRS: dict[str, str] = {}  # "run" / "sweep" -> this process's output dir, for the resume hint


class RememberDir(Callback):
    """Keeps the run or sweep dir as Hydra resolves it, for the hint printed after Ctrl-C."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        LAUNCH_DIRS["run"] = str(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        LAUNCH_DIRS["sweep"] = str(config.hydra.sweep.dir)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from regablate.claim import RunRefused, claim
    from regablate.train import train

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    sweep = hc.mode == RunMode.MULTIRUN
    container: dict = {}
    try:
        with claim(run_dir, cfg.trainer.resume):
            container = OmegaConf.to_container(cfg, resolve=True)
            place_job(container, hc)
            summary = train(container, run_dir)
    except RunRefused as e:  # nothing was written: the sweeper counts it, a single run says it
        if sweep:
            raise
        refuse(str(e))
    except (ConfigError, UsageError) as e:
        message = f"invalid config: {e}" if isinstance(e, ConfigError) else str(e)
        if sweep:  # recorded as failed; Hydra runs the other jobs and raises at the end
            if _not_recorded(run_dir):
                _failed_summary(run_dir, container, message)
            raise
        _remove_if_only_hydra(run_dir)
        refuse(message)
    except Exception as e:
        if sweep and _not_recorded(run_dir):
            _failed_summary(run_dir, container, f"{type(e).__name__}: {e}")
        if not sweep and isinstance(e, OSError) and e.filename:  # recorded as failed by train()
            refuse(f"cannot write {e.filename}: {e.strerror}")
        raise
    if cfg.trainer.progress != "none":
        print(describe(summary, run_dir), flush=True)
    return objective_value(summary, container["trainer"].get("objective", "val_loss"))  # for sweepers


def describe(summary: dict, run_dir: Path) -> str:
    """One line: where the run is, how it ended, its metrics at the best epoch."""
    m = summary.get("metric")
    parts = [f"{summary['status']}: {run_dir}"]
    if summary.get("val"):
        parts.append(f"best epoch {summary['best_epoch']}/{summary['epochs_run']}")
        parts += [f"{split} {m} {summary[split][m]:.4f}" for split in ("train", "val", "test")]
        parts.append(f"gap {summary['gap']:+.4f}")
    if summary.get("error"):
        parts.append(summary["error"])
    return "  ".join(parts)


def refuse(message: str) -> None:
    """One line on stderr and exit code 2 (SystemExit passes through Hydra untouched)."""
    print(f"regablate: error: {message}", file=sys.stderr)
    raise SystemExit(2)
