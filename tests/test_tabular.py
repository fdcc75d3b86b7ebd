"""dataset=tabular: CSVs written here (categorical columns, missing values, a text target), the
statistics taken from the training split only, stratified splits, and every refusal as one line
and exit 2 through the real CLI."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_cli
from regablate.data.tabular import TabularSettings, encode, make_tabular, split_rows
from regablate.errors import ConfigError, UsageError


def patients(n: int = 100, seed: int = 0) -> pd.DataFrame:
    """age (numeric), ward (text, 3 values), smoker (true/false), readmitted (yes/no, 60/40)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "age": rng.normal(60, 10, n).round(1),
        "ward": rng.choice(["cardio", "neuro", "ortho"], n),
        "smoker": rng.choice([True, False], n),
        "readmitted": np.where(np.arange(n) < 0.6 * n, "yes", "no"),
    })


@pytest.fixture
def csv(tmp_path):
    def write(df: pd.DataFrame, name: str = "patients.csv"):
        path = tmp_path / name
        df.to_csv(path, index=False)
        return path
    return write


def settings(path, **kw) -> TabularSettings:
    return TabularSettings(path=str(path), **{"target": "readmitted", **kw})


def test_text_target_categorical_columns_shapes_and_task(csv):
    d = make_tabular(settings(csv(patients())), 0)
    assert d.task == "classification" and d.out_dim == 2
    assert d.in_shape == (1 + 3 + 2,)  # age, one-hot ward, one-hot smoker
    assert (len(d.train), len(d.val), len(d.test)) == (60, 20, 20)
    onehot = d.train.x[:, 1:]
    assert set(onehot.unique().tolist()) == {0.0, 1.0} and (onehot.sum(1) == 2).all()
    assert d.train.y.dtype == torch.long


def test_numeric_standardised_with_training_statistics_only(csv):
    df = patients()
    d = make_tabular(settings(csv(df)), 3)
    y = torch.tensor((df.readmitted == "yes").to_numpy()).long()  # classes sorted: no=0, yes=1
    train, val, _ = split_rows(y, len(df), settings("x"), 3)
    age = df.age.to_numpy()
    mean, std = age[train.numpy()].mean(), age[train.numpy()].std()
    assert torch.allclose(d.val.x[:, 0].double(), torch.tensor((age[val.numpy()] - mean) / std),
                          atol=1e-5)
    assert abs(d.train.x[:, 0].mean()) < 1e-5 and abs(d.train.x[:, 0].std(unbiased=False) - 1) < 1e-5
    assert abs(d.val.x[:, 0].mean()) > 1e-3  # the val split's own statistics were not used


def test_unseen_categories_are_all_zero():
    df = pd.DataFrame({"ward": ["a", "b", "a", "b", "c", "c"], "y": [0, 1, 0, 1, 0, 1]})
    x = encode(df, ["ward"], np.array([0, 1, 2, 3]), settings("t.csv", target="y"), "t.csv")
    assert x.tolist() == [[1, 0], [0, 1], [1, 0], [0, 1], [0, 0], [0, 0]]


def test_impute_median_uses_training_medians_and_most_frequent():
    df = pd.DataFrame({"v": [1.0, 2.0, 3.0, np.nan, 100.0, 200.0],
                       "ward": ["a", "a", "b", None, "b", "b"], "y": [0, 1, 0, 1, 0, 1]})
    train = np.array([0, 1, 2, 3])  # median of v over train: 2 (over every row: 3)
    x = encode(df, ["v", "ward"], train, settings("t.csv", target="y", impute="median"), "t.csv")
    v = np.array([1.0, 2.0, 3.0, 2.0])
    assert x[3, 0].item() == pytest.approx((2.0 - v.mean()) / v.std(), abs=1e-6)
    assert x[3, 1:].tolist() == [1.0, 0.0]  # most frequent in train: "a" (2 of 3), not "b"


def test_impute_drops_rows_without_target(csv):
    df = patients()
    df.loc[[0, 1], "age"] = np.nan
    df.loc[5, "readmitted"] = np.nan
    d = make_tabular(settings(csv(df), impute="median"), 0)
    assert len(d.train) + len(d.val) + len(d.test) == 99
    assert not torch.isnan(d.train.x).any()


def test_split_stratified_and_reproducible_from_data_seed(csv):
    path = csv(patients())
    a, b, c = (make_tabular(settings(path), s) for s in (7, 7, 8))
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)
    assert not torch.equal(a.train.x, c.train.x)
    for split in (a.train, a.val, a.test):  # 60 % "yes" (class 1) in every split
        assert split.y.float().mean().item() == pytest.approx(0.6)


def test_regression_target_scaled_and_task_inferred(csv):
    df = patients()
    df["los"] = np.random.default_rng(1).gamma(2.0, 3.0, len(df)).round(2)  # fractional days
    d = make_tabular(settings(csv(df), target="los"), 0)
    assert d.task == "regression" and d.out_dim == 1 and d.train.y.shape == (60, 1)
    assert abs(d.train.y.mean()) < 1e-5 and d.in_shape == (1 + 3 + 2 + 2,)  # + readmitted one-hot
    df["visits"] = np.arange(len(df)) % 7  # integers: ambiguous
    with pytest.raises(ConfigError, match="dataset.task=classification or dataset.task=regression"):
        make_tabular(settings(csv(df), target="visits"), 0)
    d = make_tabular(settings(csv(df), target="visits", task="classification"), 0)
    assert d.out_dim == 7


def _bad(tmp_path, *overrides: str):
    out = run_cli("run", "dataset=tabular", "trainer.max_epochs=1", "trainer.progress=none",
                  *overrides, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    return out.stderr


CASES = {
    "unknown target": (["dataset.target=readmited"],
                       ["dataset.target='readmited'", "patients.csv", "age, ward, smoker, readmitted"]),
    "unknown feature": (["dataset.target=readmitted", "dataset.features=[age,weight]"],
                        ["dataset.features", "'weight'", "age, ward, smoker, readmitted"]),
    "one class": (["dataset.target=ward"], ["one class", "'cardio'"]),
    "missing values": (["dataset.target=readmitted", "+bad=missing"],
                       ["patients.csv", "age (2)", "ward (1)", "dataset.impute=median"]),
    "not categorical": (["dataset.target=readmitted", "dataset.max_categories=2"],
                        ["patients.csv", "'ward'", "3 distinct", "dataset.max_categories=2"]),
    "no such file": (["dataset.path=nothere.csv", "dataset.target=readmitted"],
                     ["nothere.csv: no such file (dataset.path)"]),
    "a directory": (["dataset.path=.", "dataset.target=readmitted"],
                    [".: a directory (dataset.path takes a .csv or .parquet file)"]),
    "regression on text": (["dataset.target=readmitted", "dataset.task=regression"],
                           ["dataset.task='regression'", "'readmitted'", "not numeric"]),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_2(case, tmp_path):
    overrides, needles = CASES[case]
    df = patients()
    if case == "one class":
        df["ward"] = "cardio"
    if "+bad=missing" in overrides:
        overrides = [o for o in overrides if o != "+bad=missing"]
        df.loc[[3, 4], "age"], df.loc[9, "ward"] = np.nan, None
    df.to_csv(tmp_path / "patients.csv", index=False)
    if not any(o.startswith("dataset.path=") for o in overrides):
        overrides = ["dataset.path=patients.csv", *overrides]
    err = _bad(tmp_path, *overrides)
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize("path,message", [
    ("{d}", "{d}: a directory (dataset.path takes a .csv or .parquet file)"),
    ("{d}/nothere.csv", "{d}/nothere.csv: no such file (dataset.path)"),
    ("{d}/t.txt", "{d}/t.txt: not a .csv or .parquet file (dataset.path)"),
    ("pkg:", "pkg:: not a file in a package (dataset.path=pkg:<package>/<file>, e.g. "
             "pkg:palmerpenguins/data/penguins.csv)"),
    ("pkg:pandas", "pkg:pandas: not a file in a package (dataset.path=pkg:<package>/<file>"),
    ("pkg:../x.csv", "pkg:../x.csv: not a file in a package"),
    ("pkg:no_such_package_here/x.csv", "pkg:no_such_package_here/x.csv: package 'no_such_package_here' is not "
                                       "installed (pip install no_such_package_here; dataset.path)"),
])
def test_a_path_that_is_no_table_names_dataset_path(tmp_path, path, message):
    (tmp_path / "t.txt").write_text("a,y\n1,0\n")
    with pytest.raises(UsageError) as e:
        make_tabular(settings(path.format(d=tmp_path), target="y"), 0)
    assert str(e.value).startswith(message.format(d=tmp_path)), e.value


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow installed")
def test_parquet_without_pyarrow_names_the_install(tmp_path):
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    err = _bad(tmp_path, "dataset.path=t.parquet", "dataset.target=y")
    assert "t.parquet" in err and "pip install pyarrow" in err


def test_end_to_end_run_and_report(tmp_path):
    patients(60).to_csv(tmp_path / "patients.csv", index=False)
    out = run_cli("run", "dataset=tabular", "dataset.path=patients.csv", "dataset.target=readmitted",
                  "trainer.max_epochs=2", "trainer.progress=none", "trainer.tensorboard=false",
                  "hydra.run.dir=run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (s["status"], s["dataset"], s["task"], s["epochs_run"]) == ("completed", "tabular",
                                                                       "classification", 2)
    rep = run_cli("report", "run", "--format", "json", cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    assert json.loads(rep.stdout)["groups"][0]["n"] == 1


# ---- real tables: identifiers, dates, dataset.exclude

def customers(n: int = 100) -> pd.DataFrame:
    """patients() with what an export carries too: a row id, a customer id, a signup date."""
    df = patients(n)
    df.insert(0, "id", np.arange(1, n + 1))
    df.insert(1, "customer_id", [f"C{7000 + 13 * i}" for i in range(n)])
    df["signup"] = pd.date_range("2021-01-04", periods=n, freq="D").strftime("%Y-%m-%d")
    return df


@pytest.mark.parametrize("column, kind", [("id", "an identifier"), ("customer_id", "an identifier"),
                                          ("signup", "dates")])
def test_an_identifier_or_date_column_is_refused_with_a_hint(csv, column, kind):
    df = customers()[["age", "ward", column, "readmitted"]]
    with pytest.raises(UsageError) as e:
        make_tabular(settings(csv(df)), 0)
    msg = str(e.value)
    assert f"column {column!r}" in msg and kind in msg and "\n" not in msg
    assert f"dataset.exclude=[{column}]" in msg


def test_exclude_drops_columns_and_the_rest_are_features(csv):
    path = csv(customers())
    d = make_tabular(settings(path, exclude=["id", "customer_id", "signup"]), 0)
    assert d.in_shape == (1 + 3 + 2,)  # age, ward, smoker: as patients() alone
    same = make_tabular(settings(csv(patients(), "plain.csv")), 0)
    assert torch.equal(d.train.x, same.train.x) and torch.equal(d.test.y, same.test.y)


def test_the_hint_adds_to_the_columns_already_excluded(csv):
    with pytest.raises(UsageError, match=r"dataset\.exclude=\[id,customer_id\]"):
        make_tabular(settings(csv(customers()), exclude=["id"]), 0)


def test_exclude_with_features_and_its_refusals(csv):
    path = csv(customers())
    d = make_tabular(settings(path, features=["age", "ward", "id"], exclude=["id"]), 0)
    assert d.in_shape == (1 + 3,)
    with pytest.raises(ConfigError, match=r"^dataset\.exclude=\['nope'\]: not columns of .*patients\.csv"):
        make_tabular(settings(path, exclude=["nope"]), 0)
    with pytest.raises(ConfigError, match=r"^dataset\.exclude='readmitted': includes the target"):
        make_tabular(settings(path, exclude=["readmitted"]), 0)


def test_a_named_feature_is_used_even_if_unique_but_never_a_date(csv):
    path = csv(customers())
    d = make_tabular(settings(path, features=["age", "id"]), 0)  # a unique integer, asked for
    assert d.in_shape == (2,)
    with pytest.raises(UsageError, match=r"column 'signup' holds dates .*drop it from dataset\.features"):
        make_tabular(settings(path, features=["age", "signup"]), 0)


def test_what_is_not_an_identifier_or_a_date(csv):
    df = patients()
    df["score"] = np.random.default_rng(1).normal(size=len(df))  # unique floats: a measurement
    df["visits"] = np.arange(len(df)) % 7  # integers that repeat
    df["room"] = [f"R{i % 9}" for i in range(len(df))]  # text codes with digits, not dates
    df["month"] = np.where(np.arange(len(df)) % 2, "March", "May")  # no year: a category
    d = make_tabular(settings(csv(df)), 0)
    assert d.in_shape == (1 + 3 + 2 + 1 + 1 + 9 + 2,)
    small = patients(8)
    without = make_tabular(settings(csv(small, "small.csv"), val_fraction=0.25,
                                    test_fraction=0.25), 0)
    small["id"] = np.arange(8)  # too few rows to tell
    d = make_tabular(settings(csv(small, "small.csv"), val_fraction=0.25, test_fraction=0.25), 0)
    assert d.in_shape[0] == without.in_shape[0] + 1


def test_cli_refuses_an_id_column_in_one_line_and_runs_with_exclude(tmp_path):
    customers(60).to_csv(tmp_path / "customers.csv", index=False)
    err = _bad(tmp_path, "dataset.path=customers.csv", "dataset.target=readmitted")
    assert "column 'id' looks like an identifier" in err and "dataset.exclude=[id]" in err
    out = run_cli("run", "dataset=tabular", "dataset.path=customers.csv",
                  "dataset.target=readmitted", "dataset.exclude=[id,customer_id,signup]",
                  "trainer.max_epochs=1", "trainer.progress=none", "trainer.tensorboard=false",
                  "hydra.run.dir=run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"


def test_tables_a_user_sends_that_would_have_crashed_or_trained_on_nothing(csv, tmp_path):
    df = patients()
    (tmp_path / "twice.csv").write_text("age,ward,age,readmitted\n" + "1,a,2,yes\n" * 20 + "2,b,3,no\n" * 20)
    with pytest.raises(UsageError, match=r"twice.csv: column 'age' appears twice in the header"):
        make_tabular(settings(tmp_path / "twice.csv"), 0)
    with pytest.raises(ConfigError, match=r"dataset.features=\['age', 'age'\]: lists 'age' twice"):
        make_tabular(settings(csv(df), features=["age", "age"]), 0)
    with pytest.raises(ConfigError, match=r"dataset.exclude=\['age', 'ward', 'smoker'\]: leaves no input columns"):
        make_tabular(settings(csv(df), exclude=["age", "ward", "smoker"]), 0)
    rare = df.copy()
    rare.loc[0, "readmitted"] = "maybe"  # one rare class among common ones: it trains
    assert make_tabular(settings(csv(rare)), 0).out_dim == 3
    scores = df.assign(score=np.linspace(0, 1, len(df)))  # a measurement taken as classes: one row each
    with pytest.raises(ConfigError, match=r"dataset.target='score': has 100 of 100 classes with fewer than 3 rows "
                                          r".*; a class needs rows in train, val and test: merge or drop them, "
                                          r"or set dataset.task=regression"):
        make_tabular(settings(csv(scores), target="score", task="classification"), 0)
    dates = ["2021-03-04", "03/04/2021", "4 Mar 2021", "2021-03-04 12:30", "4-Mar-21", "Mar 4, 21"]
    for i, day in enumerate(dates):  # each way of writing a date is still one
        with pytest.raises(UsageError, match="holds dates"):
            make_tabular(settings(csv(df.assign(day=[day] * len(df)), f"d{i}.csv")), 0)
    slots = df.assign(slot=np.resize(["08:00", "12:30", "17:45"], len(df)))  # times of day: categories
    assert make_tabular(settings(csv(slots)), 0).in_shape == (1 + 3 + 2 + 3,)
    if importlib.util.find_spec("pyarrow") is not None:  # Parquet keeps lists, CSV cannot
        df.assign(lst=[[1, 2]] * len(df)).to_parquet(tmp_path / "list.parquet")
        with pytest.raises(UsageError, match=r"column 'lst' holds lists or arrays \(e.g. \[1, 2\]\), which are not a "
                                             r"feature; leave it out with dataset.exclude=\[lst\]"):
            make_tabular(settings(tmp_path / "list.parquet"), 0)
