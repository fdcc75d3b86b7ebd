"""benchmarks/bench_gpu.py --smoke: the GPU benchmark's code paths, on the CPU with tiny sizes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"\d+(\.\d+)?"


def test_smoke_prints_every_section_and_keeps_the_factorial_as_asked(tmp_path):
    keep = tmp_path / "recipe"
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
