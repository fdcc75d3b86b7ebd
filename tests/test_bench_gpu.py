"""benchmarks/bench_gpu.py --smoke: the GPU benchmark's code paths, on the CPU with tiny sizes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"\d+(\.\d+)?"


def test_smoke_prints_every_section():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--smoke", "--device", "cpu"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
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
