"""The studies under experiments/: every experiment config composes (each value of each sweep axis
included) and passes the schema check, and each CPU study runs end to end — real `regablate run -m`
sweeps for 1 epoch and 1 seed, the report, the extra figures and the README — through
experiments/make_studies.py --smoke."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from conftest import REPO, write_fake_cifar10
from regablate.config.paths import CONF_DIR
from regablate.training.settings import load_settings

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
STUDIES_PY = REPO / "experiments" / "make_studies.py"
SEARCHES = ("tune_l2_dropout",)  # Optuna studies, run by their own driver
GPU_STUDIES = ("cifar10_small_data", "cifar10_recipe")  # swept on a GPU; make_studies.py --report-only


def _make_studies():
    spec = importlib.util.spec_from_file_location("make_studies", STUDIES_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_studies"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_every_study_has_a_config_and_a_folder():
    studies = _make_studies()
    assert set(studies.CPU_STUDIES) | {*GPU_STUDIES, *SEARCHES} == set(EXPERIMENTS)
    assert set(studies.GPU_STUDIES) == set(GPU_STUDIES)
    for name in EXPERIMENTS:
        assert (REPO / "experiments" / name / "README.template.md").exists() or \
            (REPO / "experiments" / name / "README.md").exists()


@pytest.mark.parametrize("name", SEARCHES)
def test_search_study_composes_under_the_optuna_sweeper(name):
    """A search study runs through its own driver (experiments/<name>/run_study.py)."""
    assert (REPO / "experiments" / name / "run_study.py").exists()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/sweeper=optuna", f"+experiment={name}"],
                      return_hydra_config=True)
        assert str(cfg.hydra.sweep.dir).startswith(f"experiments/{name}/runs")
        assert cfg.hydra.sweeper.seeds_per_trial >= 5  # each trial judged over at least 5 seeds
        assert cfg.hydra.sweeper.params  # something is searched
        task = compose("config", overrides=["hydra/sweeper=optuna", f"+experiment={name}"])
        load_settings(OmegaConf.to_container(task, resolve=True))  # the check every run passes


def _jobs(name: str, cfg) -> list[list[str]]:
    """The overrides of a study's jobs, seeds left out: each arm of a design study as its sweeper
    runs it, else each value of each swept key."""
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    parser = OverridesParser.create()
    if cfg.hydra.sweeper.get("design"):
        from regablate.sweep import designs

        given = parser.parse_overrides([f"{k}={v}" for k, v in params.items()])
        arms, *fixed = parser.parse_overrides(designs.design_arguments(cfg.hydra.sweeper.design, given)[0])
        return [designs.without_absent_settings([f"+reg={arm}", *(o.input_line for o in fixed
                                                                   if o.key_or_group != "seed")])
                for arm in arms.sweep_string_iterator()]
    jobs = []
    for key, values in params.items():
        if key != "seed":
            (override,) = parser.parse_overrides([f"{key}={values}"])
            jobs += [[f"{key}={value}"] for value in override.sweep_string_iterator()]
    return jobs


@pytest.mark.parametrize("name", [e for e in EXPERIMENTS if e not in SEARCHES])
def test_experiment_composes_with_every_sweep_value(name):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={name}"], return_hydra_config=True)
        assert str(cfg.hydra.sweep.dir).startswith(f"experiments/{name}/runs")
        params = OmegaConf.to_container(cfg.hydra.sweeper.params)
        assert "seed" in params and len(params["seed"].split(",")) >= 5  # at least 5 seeds
        for job in _jobs(name, cfg):
            c = compose("config", overrides=[f"+experiment={name}", *job])
            load_settings(OmegaConf.to_container(c, resolve=True))  # the check every run passes


@pytest.mark.parametrize("name", GPU_STUDIES)
def test_every_arm_of_a_gpu_study_trains_in_one_stacked_group(name, tmp_path):
    """A GPU study's config names the vectorized launcher, and its arms (one seed each: seeds
    never split a group) stack together, as that launcher groups them (on a tiny CIFAR-10 cache)."""
    from regablate.vectorized.grouping import group, make_member, not_stackable

    root = write_fake_cifar10(tmp_path / "cifar10")
    tiny = [f"dataset.root={root}", "dataset.n_train=100", "trainer.device=cpu"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={name}"], return_hydra_config=True)
        assert cfg.hydra.launcher._target_.endswith("VectorizedLauncher")
        members, shared = [], {}
        for i, job in enumerate(_jobs(name, cfg)):
            c = OmegaConf.to_container(compose("config", overrides=[f"+experiment={name}", *job, *tiny]), resolve=True)
            s = load_settings(c)
            assert not_stackable(s) is None, (job, not_stackable(s))
            member = make_member(i, c, tmp_path / str(i), s, shared)
            assert not isinstance(member, str), (job, member)
            members.append(member)
    assert len(members) == {"cifar10_recipe": 16, "cifar10_small_data": 6}[name]
    assert len(group(members)) == 1


def test_adam_vs_adamw_method_overrides_compose():
    studies = _make_studies()
    for sweep in studies.STUDIES["adam_vs_adamw"].sweeps:
        fixed = [a.split(",")[0] for a in sweep.args]  # the first value of each swept key
        load_settings(OmegaConf.to_container(_compose("+experiment=adam_vs_adamw", *fixed), resolve=True))


@pytest.mark.parametrize("name", ["classic_table", "tiny_overfit", "sine_sparsity", "adam_vs_adamw",
                                  "dropout_batchnorm", "mc_dropout", "penguins", "rnn_dropout", "vit_dropout_sites",
                                  "which_regulariser"])
def test_cpu_study_smoke(name, tmp_path, monkeypatch):
    if name == "vit_dropout_sites":  # a tiny generated CIFAR-10 cache, found through $REGABLATE_DATA
        write_fake_cifar10(tmp_path / "data" / "cifar10")
        monkeypatch.setenv("REGABLATE_DATA", str(tmp_path / "data"))
    studies = _make_studies()
    assert studies.main(["--smoke", "--root", str(tmp_path), name]) == 0
    out = tmp_path / name
    statuses = [json.loads(p.read_text())["status"] for p in (out / "runs").rglob("summary.json")]
    assert statuses and set(statuses) == {"completed"}
    for ext in ("md", "csv", "json"):
        assert [f for f in out.glob(f"report*.{ext}") if f.stat().st_size > 0]
    meta = json.loads((out / "study.json").read_text())
    assert meta["smoke"] and meta["commands"][0].startswith(f"regablate run -m +experiment={name}")
    if name not in ("classic_table", "which_regulariser"):  # the studies with figures of their own
        assert list((out / "plots").glob("*.png"))


def test_a_gpu_study_is_only_reported_here_and_its_first_report_needs_its_gpu_run(tmp_path, capsys):
    studies = _make_studies()
    (tmp_path / "cifar10_recipe" / "runs").mkdir(parents=True)
    for argv, said in ((["cifar10_recipe"], "cifar10_recipe is swept on a GPU"),
                       (["--report-only", "cifar10_small_data"], "cifar10_small_data: no runs in"),
                       (["--report-only", "cifar10_recipe"], "cifar10_recipe: no study.json in"),
                       (["--report-only", "cifar10_recipe", "--wall-time", "9"], "go together"),
                       (["--report-only", "classic_table", "--wall-time", "9", "--device", "x", "--torch", "y"],
                        "for one GPU study's first report"),
                       (["--report-only", "--wall-time", "9", "--device", "x", "--torch", "y"],
                        "for one GPU study's first report"),
                       (["--report-only", "classic_table"], "classic_table: no study.json in"),
                       (["--report-only"], f"{studies.CPU_STUDIES[0]}: no study.json in")):
        with pytest.raises(SystemExit) as e:
            studies.main(["--root", str(tmp_path), *argv])
        assert e.value.code == 2 and said in capsys.readouterr().err, argv
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cifar10_recipe", "runs"]  # nothing written
    record = tmp_path / "cifar10_recipe" / "runs" / "gpu_run.json"
    real = {"command": "regablate run -m +experiment=cifar10_recipe", "wall_time_s": 300.0, "device": "NVIDIA H100",
            "torch": "2.11.0", "date": "2026-12-07", "smoke": False, "data": "the prepared CIFAR-10 cache in /c",
            "cifar10": True, "ordinary_s": 2400.0}
    for text, argv, said in (("{not json", [], "not a record bench_gpu.py --keep writes (JSONDecodeError"),
                             (json.dumps({k: v for k, v in real.items() if k != "date"}), [], "(KeyError: 'date')"),
                             (json.dumps(real), ["--smoke"], "these are the study's runs; report them without --smoke")):
        record.write_text(text)
        with pytest.raises(SystemExit) as e:
            studies.main(["--root", str(tmp_path), "--report-only", "cifar10_recipe", *argv])
        assert e.value.code == 2 and said in capsys.readouterr().err, text


def test_a_readme_links_only_to_files_the_study_wrote(tmp_path):
    """{{plot:KIND:ARM}} names an arm's report plot (its file name ends in the group id); a README
    whose links name a file that is not there (a plot renamed since the template was written) is
    refused in one line instead of committed with broken images."""
    _make_studies()
    import studylib

    out = tmp_path / "study"
    (out / "plots").mkdir(parents=True)
    for name in ("curves_dropout_weight_decay_f86803ed74fb.png", "curves_dropout_f67c603ef556.png"):
        (out / "plots" / name).write_bytes(b"\x89PNG")
    text = studylib.render("[both]({{plot:curves:dropout+weight_decay}}) ![one]({{plot:curves:dropout}}) "
                           "[elsewhere](https://example.org/x.png) [up](#findings)", out, {}, {})
    assert text == ("[both](plots/curves_dropout_weight_decay_f86803ed74fb.png) "
                    "![one](plots/curves_dropout_f67c603ef556.png) [elsewhere](https://example.org/x.png) [up](#findings)")
    with pytest.raises(FileNotFoundError, match=r"study: README.template.md links to files that are not there: "
                                                r"plots/curves_dropout.png$"):
        studylib.render("![one](plots/curves_dropout.png)", out, {}, {})
    with pytest.raises(KeyError, match="asks for plot curves:none; found 0"):
        studylib.render("{{plot:curves:none}}", out, {}, {})


def test_a_study_on_unprepared_cifar10_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    """`make studies` on a machine without the CIFAR-10 cache: one line naming the study, the
    directory and the command that prepares it, exit 2, before any study's runs are touched (it
    once swept nine studies, deleted the tenth's runs and ended in a traceback)."""
    monkeypatch.setenv("REGABLATE_DATA", str(tmp_path / "nothing"))
    kept = tmp_path / "classic_table" / "runs" / "0"
    kept.mkdir(parents=True)
    studies = _make_studies()
    with pytest.raises(SystemExit) as e:
        studies.main(["--root", str(tmp_path), "classic_table", "vit_dropout_sites"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and "Traceback" not in "\n".join(err)
    assert err[-1].split(": error: ", 1)[1] == (f"vit_dropout_sites trains on CIFAR-10, which is not prepared in "
                       f"{tmp_path / 'nothing' / 'cifar10'}: run `regablate data cifar10 --from "
                       "shared/data/cifar10-jpeg.tar.gz` (the image-folder export) or `--download` first")
    assert kept.is_dir()


def test_a_failed_sweep_ends_make_studies_in_one_line(tmp_path, monkeypatch, capsys):
    import subprocess

    studies = _make_studies()

    def failing(name, study, out, smoke):
        raise subprocess.CalledProcessError(2, [sys.executable, "-m", "regablate", "run", "-m", "+experiment=x y"])

    monkeypatch.setattr(studies, "run_sweeps", failing)
    assert studies.main(["--root", str(tmp_path), "classic_table"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "make_studies: error: classic_table: `regablate run -m '+experiment=x y'` exited with 2")
