"""benchmarks/bench_gpu.py --smoke: the GPU benchmark's code paths, on the CPU with tiny sizes."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"\d+(\.\d+)?"


def test_smoke_prints_every_section_and_keeps_the_factorial_as_asked(tmp_path, capsys):
    keep = tmp_path / "cifar10_recipe" / "runs"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--smoke", "--device", "cpu",
                        "--keep", str(keep)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert "failed:" not in out, out
    figures = [r"cuda tests \(\d+\)\s+\d+ passed, \d+ skipped",
               rf"resnet\d+ images/s \(fp32\)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x",
               rf"augment share of a step\s+{NUMBER}%\s+{NUMBER}%",
               *(rf"mlp sweep K={k} members/s\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x" for k in (1, 2, 4)),
               *(rf"resnet\d+ stacked K={k} members/s\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x" for k in (1, 2, 4)),
               rf"\n\s+4\s+{NUMBER}\s+[\d,]+\s+-\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x",  # K=4: members/s, images/s, memory, s, s
               r"resnet\d+ best K on this device\s+K=\d",
               r"stacked: chunks of K = 32 \(32 of 32 runs stacked, 0 chunks of one the ordinary way\)",
               rf"cifar10_recipe factorial \(s\)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x"]
    for figure in figures:
        assert re.search(figure, out), f"{figure!r} not in:\n{out}"
    # the timed factorial is kept as the study's sweep: 16 arms x 2 seeds, all completed
    statuses = [json.loads((d / "summary.json").read_text())["status"] for d in keep.iterdir() if d.is_dir()]
    assert statuses == ["completed"] * 32, statuses
    assert json.loads((keep / "ablation.json").read_text())["design"] == "factorial"
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--smoke", "--device", "cpu",
                            "--only", "5", "--keep", str(keep)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and again.stderr.strip().endswith("exists; section 5 writes a new sweep dir"), again
    # the kept runs say what they are: a smoke run on random images, which make_studies refuses
    # to report as the study and reports as a check with --smoke, from the record
    record = json.loads((keep / "gpu_run.json").read_text())
    assert record["smoke"] is True and record["cifar10"] is False and record["device"] == "cpu"
    assert record["command"].startswith("regablate run -m +experiment=cifar10_recipe seed=0,1 model.depth=8")
    sys.path.insert(0, str(ROOT / "experiments"))
    spec = importlib.util.spec_from_file_location("make_studies", ROOT / "experiments" / "make_studies.py")
    studies = importlib.util.module_from_spec(spec)
    sys.modules["make_studies"] = studies
    spec.loader.exec_module(studies)
    for extra, said in (([], "these runs are a smoke run and random uint8 images (256 train), not CIFAR-10, not the "
                             "study; --smoke reports them as a check"),
                        (["--smoke", "--wall-time", "1", "--device", "x", "--torch", "y"], "already says how")):
        with pytest.raises(SystemExit) as e:
            studies.main(["--report-only", "--root", str(tmp_path), "cifar10_recipe", *extra])
        assert e.value.code == 2 and said in capsys.readouterr().err
    assert studies.main(["--report-only", "--smoke", "--root", str(tmp_path), "cifar10_recipe"]) == 0
    out = tmp_path / "cifar10_recipe"
    readme = (out / "README.md").read_text()
    assert f"On cpu (torch {record['torch']}), on {record['data']}: 32 completed runs in\n{record['wall_time_s']:.0f} s" in readme
    assert record["command"] in readme and "{{" not in readme
    assert re.search(r"\| augment \| [+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\] \(test ", readme)
    assert all((out / f).stat().st_size > 0 for f in ("report.md", "report_test.md", "report.json"))
    meta = json.loads((out / "study.json").read_text())
    assert (meta["wall_time_s"], meta["device"], meta["smoke"]) == (record["wall_time_s"], "cpu", True)
