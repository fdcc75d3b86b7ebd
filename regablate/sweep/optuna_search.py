"""What `hydra/sweeper=optuna` does (the plugin is `hydra_plugins.regablate_optuna`): Optuna's
ask-and-tell search, each trial the mean over seeds.

    regablate run -m hydra/sweeper=optuna +reg=l2 'reg.l2.lam=tag(log, interval(1e-6, 1e-1))' \\
        hydra.sweeper.n_trials=24 hydra.sweeper.seeds_per_trial=5 trainer.objective=val_loss

A thin plugin over current Optuna (the official hydra-optuna-sweeper 1.3 pins optuna<3, whose
sqlite storage breaks under SQLAlchemy 2). Optuna does the search; this module only maps Hydra's
sweep grammar to Optuna distributions, as the official plugin does:

    interval(a, b)            float uniform (Hydra reads an interval's bounds as floats)
    tag(log, interval(a, b))  float log-uniform
    choice(x, y, ...) / x,y   categorical
    range(a, b[, s])          int (or float) with step s, b excluded as in Hydra

Every other override is fixed for every trial. A trial is `seeds_per_trial` jobs (seeds 0..n-1, the
same for every trial, so trials are paired), run dirs `trial_<number>/seed_<seed>` under the sweep
dir; `n_jobs` trials are asked at once and their trials x seeds jobs go to the launcher as one
batch (under hydra/launcher=vectorized a batch trains as one stacked group). Each job's objective
(`trainer.objective`, `regablate.config.objective`) is read from its summary.json; Optuna is told the
mean over the seeds, and the per-seed values, statuses and run dir are the trial's user
attributes. A trial with a seed that did not complete (diverged or failed) is told FAIL: a
mean over the seeds that survived would flatter it, and a penalty value would be invented; TPE
then learns nothing from it. Refused jobs (their run dir holds a run, or is being written) are
counted as regablate's sweeper counts them, their trial told FAIL and marked refused, and the
sweep ends after the batch with one line. A trial with a job that failed (an invalid value of the
search space, say) is told FAIL too, and the sweep ends with one line counting them (exit 2).

Direction: `direction=auto` minimises, except `trainer.objective=val_metric` on a task whose
metric is higher-is-better (acc), from the dataset's task. Storage: in memory by default;
`storage=sqlite:///study.db` (with `study_name`) makes the study resumable: `n_trials` is the
study's total, so re-running the command runs only the trials still missing (finished ones are
kept, none repeated; trials a killed process left running are run again under their own number,
with trainer.resume=auto). A stored study keeps the problem it was made for (its `problem` user
attribute: the config's science as regablate.rundir.group defines it, with the searched keys replaced by
their ranges or choices, and the objective, direction and seeds); another is refused in one line
naming what differs, before anything is added to the study. With `sampler_seed`, the sampler's
random states are seeded again before each trial from (sampler_seed, trial number): a continued
study proposes new trials, the same ones a single run of all of them would (given the same
results of the trials before).

At the end, or when stopped, the sweep dir gets `optuna_study.json` (every trial of the study, and
the best), which `regablate report` uses to rank the trials. Optuna is imported only when a sweep starts.
"""

import functools
import json
import logging
import math
import re
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from hydra.core.plugins import Plugins
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from regablate.sweep.refusing import closing_error, refusals, refused_message

# the plugin's logger, as before this logic left hydra_plugins/: log configs and job logs name it
log = logging.getLogger("hydra_plugins.regablate_optuna.optuna_sweeper")

SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "cmaes": "CmaEsSampler",
            "qmc": "QMCSampler", "gp": "GPSampler", "grid": "GridSampler",
            "bruteforce": "BruteForceSampler", "nsga2": "NSGAIISampler"}
STUDY_FILE = "optuna_study.json"
PROBLEM = "problem"  # the study user attribute that keeps what its trials searched


def _prefix(override: Any) -> str:
    from hydra.core.override_parser.types import OverrideType

    return {OverrideType.ADD: "+", OverrideType.FORCE_ADD: "++"}.get(override.type, "")


def distribution(override: Any) -> Any:
    """The Optuna distribution of one sweep override (see the module docstring)."""
    from hydra.core.override_parser.types import Glob, IntervalSweep, RangeSweep, Transformer
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from regablate.errors import UsageError

    value = override.value()
    if isinstance(value, IntervalSweep):
        log_ = "log" in value.tags
        try:  # optuna's own checks: low <= high, low > 0 on a log scale
            if isinstance(value.start, int) and isinstance(value.end, int):
                return IntDistribution(value.start, value.end, log=log_)
            return FloatDistribution(float(value.start), float(value.end), log=log_)
        except ValueError as e:
            raise UsageError(f"{override.input_line}: not a range Optuna can search ({e})") from None
    if isinstance(value, Glob):
        raise UsageError(f"{override.input_line}: glob() is not searchable; list the choices")
    values = list(override.sweep_iterator(transformer=Transformer.encode))
    if isinstance(value, RangeSweep) and not value.shuffle and values:
        if all(isinstance(v, int) for v in values):
            return IntDistribution(values[0], values[-1], step=int(value.step))
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(value.step))
    return CategoricalDistribution(values)


def search_space(arguments: list[str]) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """(name -> distribution, name -> override key, fixed overrides as written)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    space, keys, fixed = {}, {}, []
    for o in OverridesParser.create().parse_overrides(arguments):
        if o.is_sweep_override():
            name = o.get_key_element().lstrip("+~")
            space[name], keys[name] = distribution(o), f"{_prefix(o)}{name}"
        else:
            fixed.append(o.input_line)
    return space, keys, fixed


def _grid(space: dict[str, Any]) -> dict[str, list]:
    from optuna.distributions import CategoricalDistribution

    from regablate.errors import UsageError

    out = {}
    for name, d in space.items():
        if isinstance(d, CategoricalDistribution):
            out[name] = list(d.choices)
        elif getattr(d, "step", None) is not None:
            n = int(round((d.high - d.low) / d.step)) + 1
            out[name] = [d.low + i * d.step for i in range(n)]
        else:
            raise UsageError(f"sampler=grid needs choices or ranges; {name} is an interval")
    return out


def _shown(d: Any) -> str:
    """A searched parameter's distribution in one stable line: `interval(1e-06, 0.1) log`,
    `int interval(1, 4)`, `interval(0.0, 0.75) step 0.25`, `choice(2, 'x')`."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(d, CategoricalDistribution):
        return f"choice({', '.join(map(repr, d.choices))})"
    kind = "int " if isinstance(d, IntDistribution) else ""
    step = "" if d.step is None or (kind and d.step == 1) else f" step {d.step!r}"
    return f"{kind}interval({d.low!r}, {d.high!r}){' log' if d.log else ''}{step}"


def _differences(stored: dict[str, str], now: dict[str, str], show: int = 3) -> str:
    """`key=old stored, new now; ...` for the keys whose values differ (the first `show`)."""
    keys = [k for k in dict.fromkeys([*stored, *now]) if stored.get(k) != now.get(k)]

    def shown(d: dict[str, str], k: str) -> str:  # a whole number kept as a float (1 == 1.0) shown as typed
        v = d.get(k, "unset")
        if k == "hydra.sweeper.seeds" and v == repr(list(range(n := v.count(",") + 1))):
            return f"{v} (seeds_per_trial={n})"  # what the user typed: seeds 0..n-1
        return v[:-2] if re.fullmatch(r"-?\d+\.0", v) else v

    parts = [f"{k}={shown(stored, k)} stored, {shown(now, k)} now" for k in keys[:show]]
    return "; ".join(parts) + (f"; and {len(keys) - show} more" if len(keys) > show else "")


def _pool_broke(ret: Any) -> bool:
    """Whether a job's return says its worker pool broke under it (regablate.sweep.joblib_jobs):
    its trial is no result, failed or not, but one to continue."""
    from hydra.core.utils import JobStatus

    from regablate.errors import JobLost

    lost = ret._return_value if ret.status == JobStatus.FAILED else None
    return isinstance(lost, JobLost) and lost.label in ("stopped", "not started")


def trial_seed(seed: int, number: int) -> int:
    """The sampler's seed for trial `number` of a study searched with `sampler_seed=seed`."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}:{number}".encode()).digest()[:4], "little")


def _reseed(sampler: Any, seed: int, seen: Optional[set] = None) -> None:  # noqa: UP045
    """Seed every random state of `sampler` and of the samplers inside it (TPE's random sampler
    for its start-up trials, CMA-ES's independent sampler...) in place, so that states they
    share stay shared and what a sampler fixed at construction (a grid's order, QMC's
    scrambling) stays as it is."""
    from optuna.samplers import BaseSampler
    from optuna.samplers._lazy_random_state import LazyRandomState

    seen = set() if seen is None else seen
    if id(sampler) in seen:
        return
    seen.add(id(sampler))
    for value in vars(sampler).values():
        if isinstance(value, LazyRandomState):
            value.rng.seed(seed)
        elif isinstance(value, BaseSampler):
            _reseed(value, seed, seen)


def make_sampler(name: str, seed: Optional[int], space: dict) -> Any:  # noqa: UP045
    """The Optuna sampler `name`. With a seed, its random states are seeded again before each
    trial from (seed, the trial's number): the trials a study proposes depend on their numbers
    and the study's history only, so a continued study proposes new trials (one sampler
    seeded once would propose the first trials again) and the same ones as a single run."""
    import optuna

    kwargs: dict[str, Any] = {} if seed is None else {"seed": seed}
    if name == "grid":
        kwargs["search_space"] = _grid(space)
    sampler = getattr(optuna.samplers, SAMPLERS[name])(**kwargs)
    if seed is not None:
        before_trial = sampler.before_trial

        def seeded(study: Any, trial: Any) -> None:  # optuna calls it first thing in every trial
            _reseed(sampler, trial_seed(seed, trial.number))
            before_trial(study, trial)

        sampler.before_trial = seeded
    return sampler


def _read_summary(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _tell(study: Any, number: int, **kwargs: Any) -> None:
    try:
        study.tell(number, **kwargs)
    except RuntimeError as e:  # GridSampler stops the study when the grid is done: outside
        if "Study.stop" not in str(e):  # optimize() that raises after the trial was told
            raise


class OptunaSearch:
    """The sweep of the plugin's OptunaSweeper, which hands it its settings, setup and sweep."""

    def __init__(self, n_trials: int = 20, seeds_per_trial: int = 3, seeds: Any = None, n_jobs: int = 2,
                 sampler: str = "tpe", sampler_seed: Any = None, direction: str = "auto",
                 storage: Any = None, study_name: Any = None, params: Any = None, design: Any = None) -> None:
        seeds = list(range(seeds_per_trial)) if seeds is None else [int(s) for s in seeds]
        # refused in setup(): an error raised here reaches the user wrapped in Hydra's
        # "Error in call to target ..." instead of as its own one line
        self.refusal = None
        if design is not None:
            self.refusal = (f"hydra.sweeper.design={design} and hydra/sweeper=optuna do not mix: a design "
                            "runs fixed arms of a stack over seeds, Optuna searches strengths; run the "
                            "design on the default sweeper (drop hydra/sweeper=optuna)")
        for key, value, allowed, ok in (
                ("n_trials", n_trials, "must be >= 1", n_trials >= 1),
                ("n_jobs", n_jobs, "must be >= 1", n_jobs >= 1),
                ("seeds_per_trial", seeds_per_trial, "must be >= 1", seeds_per_trial >= 1),
                ("seeds", seeds, "must be distinct integers >= 0",
                 bool(seeds) and len(set(seeds)) == len(seeds) and min(seeds) >= 0),
                ("direction", direction, "allowed: auto, minimize, maximize",
                 direction in ("auto", "minimize", "maximize")),
                ("sampler", sampler, f"allowed: {', '.join(SAMPLERS)}", sampler in SAMPLERS)):
            if not ok and self.refusal is None:
                self.refusal = f"hydra.sweeper.{key}={value!r}: {allowed}"
        self.n_trials, self.seeds, self.n_jobs = n_trials, seeds, n_jobs
        self.sampler, self.sampler_seed, self.direction = sampler, sampler_seed, direction
        self.storage, self.study_name, self.params = storage, study_name, params
        self.config: Optional[DictConfig] = None  # noqa: UP045
        self.space: dict = {}
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        if self.refusal is not None:
            from regablate.errors import UsageError

            raise UsageError(self.refusal)
        from regablate.rundir.claim import check_sweep_dir

        check_sweep_dir(Path(str(config.hydra.sweep.dir)))  # before its study record is written
        self.config, self.hydra_context, self.job_idx = config, hydra_context, 0
        self.failed: list[tuple[int, str]] = []  # (trial, its failed job's error), this command's
        self.launched = 0
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        from regablate.sweep import joblib_jobs

        if joblib_jobs.is_joblib(self.launcher):  # its jobs' ends said as under regablate's sweeper
            joblib_jobs.check_settings(dict(self.launcher.joblib))
            self.launcher.launch = functools.partial(joblib_jobs.launch, self.launcher)
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    # -- what is searched, and which way -----------------------------------------------------
    def _objective(self) -> tuple[str, str]:
        """(trainer.objective, minimize | maximize)."""
        from regablate.config.objective import is_valid, maximised
        from regablate.data import DATASETS
        from regablate.errors import UsageError

        assert self.config is not None
        objective = str(OmegaConf.select(self.config, "trainer.objective", default="val_loss"))
        if not is_valid(objective):
            raise UsageError(f"invalid config: trainer.objective={objective!r}: val_loss, val_metric, "
                             "gap, or a sum such as val_loss+0.5*gap")
        if self.direction != "auto":
            return objective, self.direction
        dataset = OmegaConf.select(self.config, "dataset.name")
        task = getattr(DATASETS.get(dataset, (None,))[0], "task", None)
        if objective == "val_metric" and task is None:
            raise UsageError(f"direction of val_metric unknown for dataset {dataset!r}; "
                             "set hydra.sweeper.direction=minimize or maximize")
        return objective, "maximize" if maximised(objective, task == "classification") else "minimize"

    def _problem(self, objective: str, direction: str, space: dict) -> dict[str, str]:
        """What makes the study's trials comparable, as `key -> value as shown`: the composed
        config's science (`regablate.rundir.group.science`: dataset, model, regularisers, optimiser, the
        fixed overrides...; operational settings and the searched keys left out), data_seed as
        written, every searched parameter's range or choices, the objective, direction and seeds."""
        from regablate.rundir.group import science

        assert self.config is not None
        task = OmegaConf.masked_copy(self.config, [k for k in self.config if k != "hydra"])
        flat = science(OmegaConf.to_container(task, resolve=True))
        searched = tuple(space)
        out = {k: repr(float(v) if isinstance(v, int) and not isinstance(v, bool) else v)  # 1 == 1.0
               for k, v in flat.items() if not any(k == n or k.startswith(f"{n}.") for n in searched)}
        out["data_seed"] = repr(OmegaConf.to_container(task, resolve=False).get("data_seed"))  # ${seed}: follows it
        out.update({n: _shown(d) for n, d in space.items()})
        out.update({"trainer.objective": repr(objective), "hydra.sweeper.direction": repr(direction),
                    "hydra.sweeper.seeds": repr(self.seeds)})
        return out

    def _study(self, objective: str, direction: str, space: dict) -> Any:
        """The study, made or loaded. A stored study continues only the problem it was made for
        (its `problem` user attribute): another one is refused in one line naming what differs,
        before anything is added to it."""
        import optuna

        from regablate.errors import UsageError

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:  # a storage optuna (SQLAlchemy) cannot open: one line (sqlite makes the file, not its folder)
            if str(self.storage or "").startswith("sqlite:///"):
                Path(str(self.storage)[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            study = optuna.create_study(storage=self.storage, study_name=self.study_name, direction=direction,
                                        sampler=make_sampler(self.sampler, self.sampler_seed, space), load_if_exists=True)
        except Exception as e:  # noqa: BLE001 — SQLAlchemy's and the file system's errors alike
            raise UsageError(f"hydra.sweeper.storage={self.storage!r}: {type(e).__name__}: {' '.join(str(e).split())[:300]}") from None
        problem = self._problem(objective, direction, space)
        stored = study.user_attrs.get(PROBLEM)
        if stored is None:  # a new study, or one stored before its problem was kept: what it says
            stored = {"hydra.sweeper.direction": repr(study.direction.name.lower()),
                      **{k: repr(study.user_attrs[a]) for k, a in (("trainer.objective", "objective"),
                                                                   ("hydra.sweeper.seeds", "seeds"))
                         if a in study.user_attrs}}
        now = problem if PROBLEM in study.user_attrs else {k: problem[k] for k in stored}
        if stored != now:
            raise UsageError(f"study {study.study_name!r} in {self.storage or 'memory'} was made for another "
                             f"problem: {_differences(stored, now)}; its trials would not be comparable: "
                             "choose another hydra.sweeper.study_name")
        if PROBLEM not in study.user_attrs:
            for k, v in ((PROBLEM, problem), ("objective", objective), ("seeds", self.seeds)):
                study.set_user_attr(k, v)
        return study

    # -- the sweep ---------------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> Any:
        from regablate.errors import UsageError

        params = [f"{k}={v}" for k, v in (self.params or {}).items()]
        space, keys, fixed = search_space(params + list(arguments))
        if not space:
            raise UsageError("nothing to search: give a sweep such as 'reg.l2.lam=tag(log, interval(1e-6, 1e-1))'")
        if "seed" in space or any(f.lstrip("+").split("=", 1)[0] == "seed" for f in fixed):
            raise UsageError("seeds are the sweeper's: use hydra.sweeper.seeds_per_trial or hydra.sweeper.seeds")
        from regablate.rundir.claim import hold_sweep_dir

        with hold_sweep_dir(self.sweep_dir):  # another sweep into it meanwhile is refused
            return self._search(space, keys, fixed)

    def _search(self, space: dict, keys: dict, fixed: list) -> Any:
        """The rest of `sweep`, while this process holds the sweep dir."""
        from optuna.trial import TrialState

        from regablate.errors import UsageError

        objective, direction = self._objective()
        study = self._study(objective, direction, space)
        self.space = space
        log.info(f"Optuna study {study.study_name!r} ({self.storage or 'in memory'}): {self.sampler}, "
                 f"{direction} {objective}, mean over seeds {self.seeds}; searching {', '.join(space)}")

        # trials a killed process left running: run again under their own numbers (resume=auto)
        stale = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        for i in range(0, len(stale), self.n_jobs):
            self._run_batch(study, stale[i:i + self.n_jobs], keys, fixed, objective, resume=True)

        def counted() -> int:
            return sum(1 for t in study.get_trials(deepcopy=False, states=(
                TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)) if not t.user_attrs.get("refused"))

        done = counted()
        if done >= self.n_trials:
            log.info(f"the study already holds {done} finished trials (n_trials={self.n_trials}): nothing to run")
        try:
            while done < self.n_trials:
                trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - done))]
                self._run_batch(study, trials, keys, fixed, objective, resume=False)
                done = counted()
        finally:  # stopped too: the study as it stands (its storage, its trials) for status and the report
            self._write(study, objective, direction, space)
        self._describe()
        if self.failed:  # as every regablate sweep: one closing line counting them, exit 2
            shown = "; ".join(f"trial {n}: {why}" for n, why in self.failed[:2])
            raise UsageError(f"{len(self.failed)} of {self.launched} trials ran a job that failed ({shown}"
                             f"{' ...' if len(self.failed) > 2 else ''}); the study holds them as FAIL: "
                             "narrow the search space or fix the settings")
        return study

    def _run_batch(self, study: Any, trials: Sequence[Any], keys: dict, fixed: list[str], objective: str,
                   resume: bool) -> None:
        from optuna.trial import TrialState

        from regablate.errors import UsageError

        overrides, dirs = [], []
        for t in trials:
            chosen = [f"{keys.get(n, n)}={_fmt(v)}" for n, v in t.params.items()]
            for s in self.seeds:
                sub = f"trial_{t.number}/seed_{s}"
                overrides.append(tuple(fixed + chosen + [f"seed={s}", f"hydra.sweep.subdir={sub}"]
                                       + (["trainer.resume=auto"] if resume else [])))
                dirs.append(self.sweep_dir / sub)
        returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
        self.job_idx += len(returns)
        if any(_pool_broke(r) for r in returns):  # a joblib worker died: its trials stay RUNNING
            raise closing_error(returns)         # and run again, resumed, on the next launch
        refused = refusals(returns)
        refused_dirs = {Path(e.run_dir).resolve() for e in refused}
        n = len(self.seeds)
        for i, t in enumerate(trials):
            mine = dirs[i * n:(i + 1) * n]
            summaries = [_read_summary(d) for d in mine]
            values = [self._value(s, objective) for s in summaries]
            statuses = ["refused" if d.resolve() in refused_dirs else s.get("status", "missing")
                        for d, s in zip(mine, summaries)]
            number = t.number
            for k, v in (("seeds", self.seeds), ("values", values), ("statuses", statuses),
                         ("dir", str(self.sweep_dir / f"trial_{number}"))):
                study._storage.set_trial_user_attr(t._trial_id, k, v)
            if "refused" in statuses:
                study._storage.set_trial_user_attr(t._trial_id, "refused", True)
            if all(v is not None for v in values):
                mean = statistics.fmean(values)
                _tell(study, number, values=mean)
                log.info(f"trial {number}: {objective} {mean:.4g} (mean of {n}) {dict(t.params)}")
            else:
                _tell(study, number, state=TrialState.FAIL)
                log.warning(f"trial {number} FAIL: seeds {dict(zip(self.seeds, statuses))} {dict(t.params)}")
            self.launched += 1
            why = next((str(sm.get("error")) if st == "failed" else "no summary.json: the job ended without one"
                        for sm, st in zip(summaries, statuses) if st in ("failed", "missing")), None)
            if why is not None:  # diverged is a result (told FAIL); failed is a fault to report
                self.failed.append((number, " ".join(why.split())[:200]))
        if refused:
            self._write(study, objective, study.direction.name.lower(), self.space)
            raise UsageError(refused_message(refused, len(returns)))

    @staticmethod
    def _value(summary: dict, objective: str) -> Optional[float]:  # noqa: UP045
        from regablate.config.objective import value

        v = value(summary, objective)
        return v if v is not None and math.isfinite(v) else None

    # -- what the sweep leaves ---------------------------------------------------------------
    def _write(self, study: Any, objective: str, direction: str, space: Optional[dict]) -> None:  # noqa: UP045
        from regablate.rundir.atomic import write_json

        trials = []
        for t in study.get_trials(deepcopy=False):
            trials.append({"number": t.number, "state": t.state.name, "params": t.params,
                           "value": t.value, **{k: t.user_attrs.get(k) for k in
                                                ("values", "statuses", "seeds", "dir")}})
        done = [t for t in trials if t["state"] == "COMPLETE"]
        best = (min if direction == "minimize" else max)(done, key=lambda t: t["value"]) if done else None
        log_params = {n: bool(getattr(d, "log", False)) for n, d in (space or {}).items()}
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.sweep_dir / STUDY_FILE, {
            "schema": 1, "study_name": study.study_name, "storage": self.storage, "sampler": self.sampler,
            "objective": objective, "direction": direction, "seeds": self.seeds,
            "n_trials": self.n_trials, "log_params": log_params,
            "best": None if best is None else best["number"], "trials": trials})

    def _describe(self) -> None:
        from regablate.tensorboard.view import describe_sweep

        try:
            describe_sweep(self.sweep_dir)
        except Exception as e:  # best effort, as regablate's sweeper
            print(f"regablate: warning: no TensorBoard experiment written for the sweep: {e}", file=sys.stderr)
