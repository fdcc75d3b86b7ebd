"""Re-run the CPU studies through the real CLI and regenerate their reports, plots and READMEs.

    python experiments/make_studies.py                  # every CPU study, one after another
    python experiments/make_studies.py tiny_overfit     # one study
    python experiments/make_studies.py --report-only    # keep the runs, redo reports/plots/READMEs
    python experiments/make_studies.py --smoke --root /tmp/s   # 1 epoch, 1 seed, small grids (tests)
    python experiments/make_studies.py --report-only cifar10_recipe --wall-time 251 \
        --device "NVIDIA H100 80GB HBM3" --torch 2.11.0+cu130   # a GPU study's runs, swept there

For each study: delete experiments/<name>/runs, run `regablate run -m +experiment=<name>` (one or
more sweeps), then `regablate report` into report.md / report.csv / report.json (+ plots/), the
study's extra figures, and README.md from README.template.md. The template holds the prose;
{{...}} blocks are replaced by what this script computed:

  {{commands}}       the exact commands run          {{wall_time}}  how long the sweeps took
  {{table}}          report.md, verbatim              {{table:KEY}}  another report, verbatim
  {{fact:KEY}}       a number taken from report.json or the runs' summary.json (never typed)
  {{plot:KIND:ARM}}  the path of one arm's `regablate report --plot` file (its name ends in the group id)
A README whose links name a file that is not there is refused.

The GPU studies (GPU_STUDIES) are swept on a GPU machine (their READMEs say how); with their runs
in experiments/<name>/runs, --report-only writes their outputs here, the sweep's wall time, card
and torch version given the first time (they go into study.json).

Run dirs stay out of git (experiments/.gitignore); study.json records commands and timing.
Each study's sweeps, reports, figures and facts are in experiments/<name>/study.py (STUDY and
extras); what the studies share is in experiments/studylib.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the study modules import studylib from here
    sys.path.insert(0, str(HERE))

import studylib  # noqa: E402
from studylib import commands, rel, render, run_sweeps, say, shell, write_reports  # noqa: E402

CPU_STUDIES = ("classic_table", "tiny_overfit", "sine_sparsity", "adam_vs_adamw",
               "dropout_batchnorm", "mc_dropout", "penguins", "rnn_dropout",
               "vit_dropout_sites", "which_regulariser")


def load(name: str):
    """experiments/<name>/study.py, as a module (the study folders are not packages)."""
    spec = importlib.util.spec_from_file_location(f"{name}_study", HERE / name / "study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GPU_STUDIES = ("cifar10_recipe", "cifar10_small_data")  # swept on a GPU; reported here (--report-only)
MODULES = {name: load(name) for name in (*CPU_STUDIES, *GPU_STUDIES)}
STUDIES = {name: module.STUDY for name, module in MODULES.items()}


def make(name: str, root: Path, smoke: bool, report_only: bool, gpu_run: dict | None = None) -> dict:
    """`gpu_run`: a GPU study's sweep as it ran there (commands, wall_time_s, device, torch, ...),
    recorded in its study.json the first time its runs are reported."""
    import torch

    studylib.SMOKE_RUN = smoke
    study = STUDIES[name]
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "study.json"
    if report_only and gpu_run:
        meta = {"study": name, "commands": [shell(c) for c in commands(name, study)], "smoke": smoke,
                "date": time.strftime("%Y-%m-%d"), **gpu_run}
    elif report_only:
        meta = json.loads(meta_path.read_text())
    else:
        wall = run_sweeps(name, study, out, smoke)
        meta = {"study": name, "commands": [shell(c) for c in commands(name, study)],
                "wall_time_s": round(wall, 1), "smoke": smoke, "torch": torch.__version__,
                "date": time.strftime("%Y-%m-%d")}
    if (out / "plots").exists():
        shutil.rmtree(out / "plots")
    for stale in [*out.glob("report*.md"), *out.glob("report*.csv"), *out.glob("report*.json")]:
        stale.unlink()
    write_reports(study, out, smoke)
    facts = MODULES[name].extras(out)
    meta["facts"] = {k: v for k, v in facts.items() if k != "_claims"}
    meta["claims"] = [{"claim": c, "holds": ok} for c, ok in facts.get("_claims", [])]
    meta_path.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    template = HERE / name / "README.template.md"
    if template.exists():
        try:
            (out / "README.md").write_text(render(template.read_text(), out, facts, meta))
        except (KeyError, FileNotFoundError) as e:
            if not smoke:
                raise
            say(f"{name}: README not rendered in the smoke run ({e})")
    say(f"{name}: done in {meta['wall_time_s']:.0f} s of sweeps -> {rel(out)}")
    return meta


def unprepared_data(name: str) -> str | None:
    """Why study `name`'s sweep cannot start on this machine (CIFAR-10 not prepared where its
    config reads it), or None; asked of every study before the first one runs."""
    from hydra import compose, initialize_config_dir

    from regablate.config.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={name}"])
    if cfg.dataset.name != "cifar10":
        return None
    root = Path(str(cfg.dataset.root)).expanduser()
    if (root / "cifar10.pt").is_file():
        return None
    return (f"{name} trains on CIFAR-10, which is not prepared in {root}: run `regablate data cifar10 "
            "--from shared/data/cifar10-jpeg.tar.gz` (the image-folder export) or `--download` first")


RUN_RECORD = "gpu_run.json"  # what `bench_gpu.py --keep` writes beside the runs it kept


def gpu_record(ap: argparse.ArgumentParser, path: Path, smoke: bool, flags: bool) -> dict:
    """A GPU study's sweep as `bench_gpu.py --keep` recorded it; refused (one line) where it is not
    such a record, where it is a smoke run or ran on random images (unless --smoke), where
    --smoke would report the study's own runs as a check, or where the flags would say otherwise."""
    if flags:
        ap.error(f"{path} already says how these runs ran; leave out --wall-time, --device and --torch")
    try:
        record = json.loads(path.read_text())
        run = {"commands": [record["command"]], "wall_time_s": float(record["wall_time_s"]),
               "device": record["device"], "torch": record["torch"], "data": record["data"],
               "ordinary_s": record["ordinary_s"], "smoke": bool(record["smoke"]), "date": record["date"]}
        not_study = [why for why, bad in (("a smoke run", record["smoke"]), (record["data"], not record["cifar10"]))
                     if bad]
    except (OSError, ValueError, KeyError, TypeError) as e:
        ap.error(f"{path}: not a record bench_gpu.py --keep writes ({type(e).__name__}: {e})")
    if not_study and not smoke:
        ap.error(f"{path}: these runs are {' and '.join(not_study)}, not the study; --smoke reports them as a check")
    if smoke and not not_study:
        ap.error(f"{path}: these are the study's runs; report them without --smoke")
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("studies", nargs="*", metavar="STUDY",
                    help=f"default: all CPU studies ({', '.join(CPU_STUDIES)})")
    ap.add_argument("--root", type=Path, default=HERE, help="where the study folders go")
    ap.add_argument("--smoke", action="store_true", help="1 epoch, seed 0, shrunk grids (a test)")
    ap.add_argument("--report-only", action="store_true", help="keep the runs; redo the outputs")
    gpu = ap.add_argument_group("a GPU study's first report (its sweep as it ran on the GPU)")
    gpu.add_argument("--wall-time", type=float, metavar="S", help="the sweep's wall time in seconds")
    gpu.add_argument("--device", metavar="NAME", help="the card, e.g. 'NVIDIA H100 80GB HBM3'")
    gpu.add_argument("--torch", metavar="V", help="torch's version there")
    args = ap.parse_args(argv)
    unknown = [s for s in args.studies if s not in (*CPU_STUDIES, *GPU_STUDIES)]
    if unknown:
        ap.error(f"unknown study {unknown[0]!r}; CPU studies: {', '.join(CPU_STUDIES)}; "
                 f"GPU studies (--report-only): {', '.join(GPU_STUDIES)}")
    given = [args.wall_time is not None, args.device is not None, args.torch is not None]
    if any(given) and not all(given):
        ap.error("--wall-time, --device and --torch go together (a GPU study's first report)")
    if any(given) and (len(args.studies) != 1 or args.studies[0] not in GPU_STUDIES or not args.report_only):
        ap.error("--wall-time, --device and --torch are for one GPU study's first report: "
                 "--report-only and the study's name")
    gpu_runs = {}  # a GPU study's sweep as it ran there: from its record, or the flags
    for name in args.studies or CPU_STUDIES:
        runs = args.root / name / "runs"
        if name in GPU_STUDIES and not args.report_only:
            ap.error(f"{name} is swept on a GPU (experiments/{name}/README.md); report its runs with --report-only")
        if name in GPU_STUDIES and not runs.is_dir():
            ap.error(f"{name}: no runs in {runs}; sweep it on a GPU first")
        if name in GPU_STUDIES and (runs / RUN_RECORD).is_file():
            gpu_runs[name] = gpu_record(ap, runs / RUN_RECORD, args.smoke, any(given))
        elif all(given):
            gpu_runs[name] = {"wall_time_s": args.wall_time, "device": args.device, "torch": args.torch,
                              "data": "the prepared CIFAR-10 cache its config's dataset.root names"}
        elif args.report_only and not (args.root / name / "study.json").exists():
            ap.error(f"{name}: no study.json in {args.root / name}; "
                     + (f"give --wall-time, --device and --torch of its GPU sweep (or keep {RUN_RECORD} "
                        "in its runs)" if name in GPU_STUDIES else "run it without --report-only first"))
    if not args.report_only:  # before any study deletes its runs to sweep again
        for why in filter(None, map(unprepared_data, args.studies or CPU_STUDIES)):
            ap.error(why)
    for name in args.studies or CPU_STUDIES:
        try:
            make(name, args.root.resolve(), args.smoke, args.report_only, gpu_runs.get(name))
        except subprocess.CalledProcessError as e:  # its own error line is above
            print(f"make_studies: error: {name}: `{shell(e.cmd[3:])}` exited with {e.returncode}",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
