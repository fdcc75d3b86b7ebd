"""benchmarks/bench_gpu.py --smoke: the GPU benchmark's code paths, on the CPU with tiny sizes."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"\d+(\.\d+)?"


def test_smoke_prints_every_section_and_keeps_the_factorial_as_asked(tmp_path):
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
    # the kept runs are the study's: make_studies reports them as a GPU study's first report
    sys.path.insert(0, str(ROOT / "experiments"))
    spec = importlib.util.spec_from_file_location("make_studies", ROOT / "experiments" / "make_studies.py")
    studies = importlib.util.module_from_spec(spec)
    sys.modules["make_studies"] = studies
    spec.loader.exec_module(studies)
    assert studies.main(["--report-only", "--root", str(tmp_path), "cifar10_recipe", "--wall-time", "8.2",
                         "--device", "cpu", "--torch", "2.x"]) == 0
    out = tmp_path / "cifar10_recipe"
    readme = (out / "README.md").read_text()
    assert "On cpu (torch 2.x): all 32 runs in 8 s" in readme and "{{" not in readme
    assert re.search(r"\| augment \| [+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\] \(test ", readme)
    assert (out / "plots" / "effects.png").stat().st_size > 0
    meta = json.loads((out / "study.json").read_text())
    assert (meta["wall_time_s"], meta["device"], meta["torch"]) == (8.2, "cpu", "2.x")
