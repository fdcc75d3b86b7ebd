"""Ablation designs: the arms each design runs, one-line refusals, ablation.json written once
and read as untrusted data."""

from __future__ import annotations

import json
import os

import pytest

from regablate.errors import ConfigError, UsageError
from regablate.report.designs import (
    ABLATION_JSON,
    KEY,
    arms,
    find_ablation_json,
    infer_design,
    read_ablation_json,
    validate,
)
from regablate.sweep.designs import ablation_doc, reg_override, write_ablation_json

S3 = ["dropout", "l2", "mixup"]


def test_factorial_runs_every_subset_by_size():
    got = arms("factorial", S3)
    assert got == [(), ("dropout",), ("l2",), ("mixup",), ("dropout", "l2"),
                   ("dropout", "mixup"), ("l2", "mixup"), ("dropout", "l2", "mixup")]
    assert len(arms("factorial", [f"r{i}" for i in range(8)])) == 256


def test_leave_one_out_and_add_one_in():
    assert arms("leave_one_out", S3) == [("dropout", "l2", "mixup"), ("l2", "mixup"),
                                         ("dropout", "mixup"), ("dropout", "l2"), ()]
    assert arms("add_one_in", S3) == [(), ("dropout",), ("l2",), ("mixup",),
                                      ("dropout", "l2", "mixup")]
    # the order given is kept (the command's order)
    assert arms("add_one_in", ["l2", "dropout"])[-1] == ("l2", "dropout")


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_factorial_over_more_than_eight_is_refused_suggesting_leave_one_out():
    comps = [f"r{i}" for i in range(9)]
    with pytest.raises(UsageError) as e:
        arms("factorial", comps)
    msg = _one_line(e)
    assert "512 arms" in msg and f"{KEY}=leave_one_out" in msg
    assert len(arms("leave_one_out", comps)) == 11


@pytest.mark.parametrize("design", ["factorial", "leave_one_out", "add_one_in"])
def test_a_stack_of_one_or_none_is_refused(design):
    with pytest.raises(UsageError) as e:
        arms(design, ["dropout"])
    assert "+reg=none,dropout" in _one_line(e)
    with pytest.raises(UsageError) as e:
        arms(design, [])
    assert "not +reg=none" in _one_line(e)
    with pytest.raises(UsageError) as e:
        arms(design, ["l2", "l2", "dropout"])
    assert "l2 named twice" in _one_line(e)
    with pytest.raises(UsageError):
        arms(design, ["l2", "none"])


def test_unknown_design_names_the_key_and_the_choices():
    with pytest.raises(ConfigError) as e:
        arms("fractional", S3)
    assert e.value.key == KEY
    assert "factorial, leave_one_out, add_one_in" in _one_line(e)


def test_validate_wants_a_seed_sweep():
    assert validate("factorial", S3, seeds=[0, 1, 2]) == tuple(S3)
    for seeds, said in ((None, "no seed= sweep"), ([3], "seed=3")):
        with pytest.raises(UsageError) as e:
            validate("factorial", S3, seeds=seeds)
        msg = _one_line(e)
        assert said in msg and "seed=0,1,2,3,4" in msg
    with pytest.raises(UsageError) as e:
        validate("leave_one_out", S3, seeds=[1, 1])
    assert "twice" in _one_line(e)
    with pytest.raises(UsageError):
        validate("factorial", ["dropout"], seeds=[0, 1, 2])


def test_infer_design_from_the_arms_present():
    assert infer_design(arms("factorial", S3)) == "factorial"
    assert infer_design(arms("leave_one_out", S3)) == "leave_one_out"
    assert infer_design(arms("add_one_in", S3)) == "add_one_in"
    assert infer_design(arms("leave_one_out", ["a", "b"])) == "factorial"  # k = 2: the same
    assert infer_design([*arms("leave_one_out", S3), ("dropout",)]) is None
    assert infer_design(arms("factorial", S3)[:-1]) is None
    assert infer_design([(), ("a",)]) is None
    assert infer_design(arms("add_one_in", S3), components=[*S3, "l1"]) is None


def test_reg_override():
    assert reg_override(()) == "+reg=none"
    assert reg_override(("dropout",)) == "+reg=dropout"
    assert reg_override(("dropout", "l2")) == "+reg=[dropout,l2]"


def test_ablation_json_is_written_once(tmp_path):
    root = tmp_path / "sweep"
    path = write_ablation_json(root, "leave_one_out", S3, [0, 1, 2], ["model=mlp,convnet"])
    assert path == root / ABLATION_JSON
    doc = json.loads(path.read_text())
    assert doc == {"schema": 1, "design": "leave_one_out", "components": S3,
                   "arms": [list(a) for a in arms("leave_one_out", S3)], "seeds": [0, 1, 2],
                   "overrides": ["model=mlp,convnet"]}
    assert read_ablation_json(root) == doc
    assert not [p for p in root.iterdir() if p.name != ABLATION_JSON]  # no temp file left
    before = path.stat().st_mtime_ns
    write_ablation_json(root, "leave_one_out", S3, [0, 1, 2], ["model=mlp,convnet"])
    assert path.stat().st_mtime_ns == before
    with pytest.raises(UsageError) as e:
        write_ablation_json(root, "factorial", S3, [0, 1, 2])
    assert "already holds another ablation (design=leave_one_out over dropout+l2+mixup)" \
        in _one_line(e)
    assert json.loads(path.read_text()) == doc
    assert not [p for p in root.iterdir() if p.name != ABLATION_JSON]


def test_a_refused_design_writes_nothing(tmp_path):
    with pytest.raises(UsageError):
        write_ablation_json(tmp_path, "factorial", ["dropout"], [0, 1])
    assert not (tmp_path / ABLATION_JSON).exists()
    assert ablation_doc("add_one_in", ["a", "b"], [0, 1])["arms"] == [[], ["a"], ["b"], ["a", "b"]]


def test_read_is_none_without_one(tmp_path):
    assert read_ablation_json(tmp_path) is None


@pytest.mark.parametrize("content, said", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "a JSON object is expected"),
    (json.dumps({"schema": 2}).encode(), "schema 2"),
    (json.dumps({"schema": 1, "design": "factorial", "components": ["a"], "arms": []}).encode(),
     "not a valid ablation"),
    (json.dumps({"schema": 1, "design": "add_one_in", "components": ["a", "b", "c"],
                 "arms": [[], ["a"]]}).encode(), "arms are not those of add_one_in"),
    (json.dumps({"schema": 1, "design": "zig", "components": ["a", "b"], "arms": []}).encode(),
     "not a valid ablation"),
    (b'{"schema": 1, "design": "factorial\\u001b[2J", "components": ["a", "b"], "arms": []}',
     "\\x1b[2J"),
])
def test_a_damaged_ablation_json_is_refused_in_one_line(tmp_path, content, said):
    (tmp_path / ABLATION_JSON).write_bytes(content)
    with pytest.raises(UsageError) as e:
        read_ablation_json(tmp_path)
    msg = _one_line(e)
    assert said in msg and ABLATION_JSON in msg and "\x1b" not in msg


def test_links_out_and_fifos_are_not_read(tmp_path):
    outside = tmp_path / "elsewhere.json"
    outside.write_text(json.dumps(ablation_doc("factorial", ["a", "b"], [0, 1])))
    root = tmp_path / "sweep"
    root.mkdir()
    (root / ABLATION_JSON).symlink_to(outside)
    with pytest.raises(UsageError) as e:
        read_ablation_json(root)
    assert "out of its run dir" in _one_line(e)
    fifo_root = tmp_path / "fifo"
    fifo_root.mkdir()
    os.mkfifo(fifo_root / ABLATION_JSON)
    with pytest.raises(UsageError) as e:
        read_ablation_json(fifo_root)
    assert "FIFO" in _one_line(e)


def test_find_ablation_json_above_a_run_dir(tmp_path):
    root = tmp_path / "multirun" / "2026-12-07" / "10-00-00"
    write_ablation_json(root, "factorial", ["a", "b"], [0, 1])
    assert find_ablation_json(root / "3") == root
    assert find_ablation_json(root / "sub" / "3") == root
    assert find_ablation_json(tmp_path / "other" / "3") is None
