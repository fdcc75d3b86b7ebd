"""`regablate run -m hydra/launcher=vectorized`: the same sweep dirs as the ordinary launcher,
stacked groups in chunks, and the jobs that cannot stack run the ordinary way in the same sweep."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import FAST, run_cli
from regablate.report.cli import main as report_main

# dataset.k=60 > d=50 is refused when the data is built: those jobs are recorded as failed
SWEEP = ("+reg=none,dropout,batchnorm,mixup", "dataset.k=10,60", "dataset.n=300", "dataset.n_test=100",
         "trainer.max_epochs=2", "trainer.tensorboard=true", *FAST[:1], *FAST[2:])


def tree(root: Path) -> list[str]:
    """Relative paths under a sweep dir, TensorBoard event file names reduced to their kind."""
    names = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            names.append(re.sub(r"events\.out\.tfevents\..*", "events.out.tfevents", str(p.relative_to(root))))
    return names


def test_mixed_sweep_writes_the_ordinary_launchers_run_dirs(tmp_path, capsys):
    vec = run_cli("run", "-m", "hydra/launcher=vectorized", "hydra.launcher.max_members=1", *SWEEP,
                  "hydra.sweep.dir=vec", cwd=tmp_path)
    ordinary = run_cli("run", "-m", *SWEEP, "hydra.sweep.dir=ord", cwd=tmp_path)
    assert vec.returncode == ordinary.returncode == 2  # the invalid jobs, after the others ran
    assert vec.stderr.splitlines()[-1] == ordinary.stderr.splitlines()[-1] == \
        "regablate: error: invalid config: dataset.k=60: must be <= dataset.d (50)"
    out = vec.stdout + vec.stderr
    # grouping: none+dropout (chunks of one member), batchnorm, mixup and the invalid jobs the
    # ordinary way, each with its note
    assert "Stacked group 1: K=2 members in 2 chunk(s) of <= 1: #0 #2" in out
    assert "Stacked group 2: K=1 members in 1 chunk(s) of <= 1: #4" in out
    assert re.search(r"chunk 2/2: K=1, \d+ steps in [\d.]+ s: [\d.]+ ms per member-step", out)
    assert len(re.findall(r"#[67] : \+reg=mixup .*\[ordinary: reg mixup has no stacked form\]", out)) == 2
    assert len(re.findall(r"#[135] : .*dataset.k=60 .*\[ordinary: invalid config \(recorded in its run dir\)\]",
                          out)) == 3
    v, o = tmp_path / "vec", tmp_path / "ord"
    assert tree(v) == tree(o)
    for job in range(8):
        for name in ("config.yaml", "overrides.yaml"):
            assert (v / str(job) / ".hydra" / name).read_text() == (o / str(job) / ".hydra" / name).read_text()
        a, b = (json.loads((d / str(job) / "summary.json").read_text()) for d in (v, o))
        assert set(a) == set(b) and a["group"] == b["group"] and a["reg"] == b["reg"]
        assert a["status"] == b["status"] == ("failed" if job % 2 else "completed")
        if job % 2 == 0:
            heads = [(d / str(job) / "metrics.csv").read_text().splitlines()[0] for d in (v, o)]
            assert heads[0] == heads[1]
    assert "hydra/launcher: vectorized" in (v / "0" / ".hydra" / "hydra.yaml").read_text()
    # the report reads both sweeps alike: the same groups, columns and run counts
    tables = []
    for d in (v, o):
        assert report_main([str(d), "--format", "csv"]) == 0
        lines = capsys.readouterr().out.splitlines()
        tables.append((lines[0], sorted(line.split(",")[0] for line in lines[1:])))
    assert tables[0] == tables[1]
