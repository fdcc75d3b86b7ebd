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
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert "failed:" not in out, out
    figures = [r"cuda tests \(\d+\)\s+\d+ passed, \d+ skipped",
               rf"resnet\d+ images/s \(fp32\)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x",
               rf"augment share of a step\s+{NUMBER}%\s+{NUMBER}%",
               *(rf"mlp sweep K={k} members/s\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x" for k in (1, 2, 4)),
               rf"resnet\d+ stacked( K=2 members/s\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x"
               r"|\s+skipped: regablate\.vectorized\.functional not available)"]
    for figure in figures:
        assert re.search(figure, out), f"{figure!r} not in:\n{out}"
