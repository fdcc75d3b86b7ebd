"""Your own table: a CSV or Parquet file read with pandas, one `target` column, any features.

- task: `classification` or `regression`; inferred when unambiguous (a text/boolean target, or
  one with exactly two values, is classification; a numeric target with fractional values is
  regression); an integer target with more than two values must be named with `dataset.task`.
- features: every column but the target, less `exclude`, unless `features` names them. Columns
  that cannot be features are refused in one line naming the column and the setting that drops
  it: dates (datetime values, or text whose sampled values all parse as dates with a year) and,
  among the columns not named in `features`, identifiers (an integer or text column whose values
  are all distinct, one per row, in a table of at least ID_MIN_ROWS rows: `id`, `customer_id`).
- splits: `val_fraction` and `test_fraction` of the rows, drawn from `data_seed`, stratified by
  class for classification; `n_train` optionally keeps a (stratified) subset of the rest.
- numeric features are standardised with the training split's mean and std; non-numeric
  features are one-hot encoded over the training split's categories (unseen ones: all zeros).
- missing values are refused, naming the columns, unless `impute=median`: numeric columns get
  the training split's median, categorical ones its most frequent value, and rows without a
  target are dropped.
- a regression target is standardised with training statistics (`scale_target`), so `mse` is
  in units of the training target's variance.
- a file without data rows, and an infinite number (or one too large to standardise) in a
  numeric feature or the target, are refused naming the column and the first such row; rows
  are data rows counted from 1, the header excluded (data row 1 is line 2 of a CSV).

`path` may name a file inside an installed package, `pkg:<package>/<file>`
(e.g. `pkg:palmerpenguins/data/penguins.csv`), found without importing the package.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from regablate.config.schema import check, fraction, positive
from regablate.data.base import Data, Split
from regablate.data.splits import keep_n_train, stratified
from regablate.errors import ConfigError, UsageError


@dataclass
class TabularSettings:
    name: Literal["tabular"] = "tabular"
    path: str | None = None  # a .csv or .parquet file, or pkg:<package>/<file>; required
    target: str | None = None  # the column to predict; required
    task: Literal["classification", "regression"] | None = None  # null = inferred
    features: list[str] | None = None  # input columns; null = every column but the target
    exclude: list[str] | None = None  # columns left out of the features (an id, a date, ...)
    impute: Literal["none", "median"] = "none"  # none = refuse missing values
    val_fraction: float = fraction(0.2)  # share of the rows held out for validation
    test_fraction: float = fraction(0.2)  # share of the rows held out for the test split
    n_train: int | None = check(lambda v: v > 0, "must be > 0 or null", None)  # null = all the rest
    max_categories: int = positive(50)  # a non-numeric column with more distinct values is refused
    scale_target: bool = True  # regression: standardise the target with training statistics


def resolve_path(path: str) -> Path:
    """`path` as a file: `~` expanded, `pkg:<package>/<file>` looked up in the installed package."""
    if not path.startswith("pkg:"):
        return Path(path).expanduser()
    package, _, inner = path[4:].partition("/")
    if not (inner and all(part.isidentifier() for part in package.split("."))):
        raise UsageError(f"{path}: not a file in a package (dataset.path=pkg:<package>/<file>, e.g. "
                         "pkg:palmerpenguins/data/penguins.csv)")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"{path}: package {package!r} is not installed (pip install {package}; "
                         "dataset.path)")
    return Path(list(spec.submodule_search_locations)[0]) / inner


def read_table(path: str):
    """The file as a pandas DataFrame; UsageError for a missing file or an unknown format."""
    import pandas as pd

    p = resolve_path(path)
    if p.is_dir():
        raise UsageError(f"{path}: a directory (dataset.path takes a .csv or .parquet file)")
    if not p.is_file():
        raise UsageError(f"{path}: no such file (dataset.path)")
    suffix = p.suffix.lower()
    try:
        if suffix == ".csv":
            header = pd.read_csv(p, header=None, nrows=1, dtype=str).iloc[0].tolist() if p.stat().st_size else []
            twice = sorted({str(c) for c in header if header.count(c) > 1})
            if twice:  # pandas would rename the second one (`a.1`) and keep both as features
                raise UsageError(f"{path}: column {twice[0]!r} appears twice in the header; give each column "
                                 "its own name")
            return pd.read_csv(p)
        if suffix in (".parquet", ".pq"):
            if importlib.util.find_spec("pyarrow") is None:
                raise UsageError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow")
            return pd.read_parquet(p)
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise UsageError(f"{path}: cannot read the table ({type(e).__name__}: {e})") from e
    raise UsageError(f"{path}: not a .csv or .parquet file (dataset.path)")


def check_finite(values, rows, path: str, what: str, shown=None) -> None:
    """UsageError naming `what`, the value (as `shown` holds it, default `values`) and the
    first data row (`rows`, 1-based) where `values` is not a finite number."""
    bad = ~np.isfinite(np.asarray(values, dtype="float64"))
    if bad.any():
        i = int(bad.argmax())
        refuse(path, what, np.asarray(values if shown is None else shown)[i], rows[i],
               int(bad.sum()) - 1)


def refuse(path: str, what: str, value, row, more: int = 0) -> None:
    """UsageError: `what` (`value`) in data `row` (and `more` rows)."""
    others = f" (and {more} more row{'s' if more > 1 else ''})" if more else ""
    raise UsageError(f"{path}: {what} ({value}) in data row {row}{others}; data rows count from 1, "
                     "the header excluded: values must be finite numbers")


def check_scale(mean, std, values, rows, path: str, what: str) -> None:
    """UsageError naming the largest of `values` when their training `mean` or `std` overflowed
    (values near the float64 limit)."""
    if not (np.isfinite(float(mean)) and np.isfinite(float(std))):
        v = np.asarray(values, dtype="float64")
        i = int(np.abs(v).argmax())
        refuse(path, f"{what} is too large to standardise", v[i], rows[i])


def _is_numeric(col) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)


def _columns(df, s: TabularSettings, path: str) -> list[str]:
    """The feature columns, checked against the file's columns."""
    listing = ", ".join(map(str, df.columns))
    if s.target is None:
        raise ConfigError("dataset.target", None, f"is required: one of the columns of {path}: {listing}")
    if s.target not in df.columns:
        raise ConfigError("dataset.target", s.target, f"not a column of {path}; columns: {listing}")
    twice = sorted({str(c) for c in df.columns[df.columns.duplicated()]})
    if twice:
        raise UsageError(f"{path}: column {twice[0]!r} appears twice in the header; give each column its own name")
    features = [c for c in df.columns if c != s.target] if s.features is None else list(s.features)
    twice = sorted({str(c) for c in features if features.count(c) > 1})
    if twice:
        raise ConfigError("dataset.features", s.features, f"lists {twice[0]!r} twice; name each column once")
    unknown = [c for c in features if c not in df.columns]
    if unknown:
        raise ConfigError("dataset.features", unknown, f"not columns of {path}; columns: {listing}")
    if s.target in features:
        raise ConfigError("dataset.features", s.target, "includes the target column")
    exclude = list(s.exclude or [])
    unknown = [c for c in exclude if c not in df.columns]
    if unknown:
        raise ConfigError("dataset.exclude", unknown, f"not columns of {path}; columns: {listing}")
    if s.target in exclude:
        raise ConfigError("dataset.exclude", s.target, "includes the target column (dataset.target)")
    features = [c for c in features if c not in exclude]
    if not features:
        key, value = ("dataset.exclude", exclude) if exclude else ("dataset.features", s.features)
        raise ConfigError(key, value, f"leaves no input columns of {path}")
    for c in features:
        _not_nested(df[c], c, s, path)
        _not_a_date(df[c], c, s, path)
        if s.features is None:  # a column named in dataset.features is used as given
            _not_an_identifier(df[c], c, s, path)
    return features


DATE_SAMPLE = 100  # values of a text column tried as dates
# a year written in the text: 2021, 04/03/21, 4-Mar-21, Mar 4, 21 (not 12:30, not 3rd)
DATE_WITH_YEAR = (r"\d{4}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2}|\d{1,2}[-/ ][A-Za-z]{3,}[-/ ,]+\d{2}\b"
                  r"|[A-Za-z]{3,} \d{1,2},? \d{2}\b")
ID_MIN_ROWS = 10  # fewer rows: all-distinct values say nothing


def _drop_hint(c, s: TabularSettings) -> str:
    """How to leave column `c` out: the setting, with what it holds already."""
    if s.features is not None:
        return "drop it from dataset.features"
    return f"leave it out with dataset.exclude=[{','.join(map(str, [*(s.exclude or []), c]))}]"


def _not_nested(col, c, s: TabularSettings, path: str) -> None:
    """UsageError for a column of lists, arrays or mappings (Parquet keeps them): one value is
    not one number or one category."""
    if col.dtype != object:
        return
    nested = next((v for v in col.dropna() if isinstance(v, (list, tuple, dict, set, np.ndarray))), None)
    if nested is not None:
        shown = str(nested if not isinstance(nested, np.ndarray) else nested.tolist())[:40]
        raise UsageError(f"{path}: column {c!r} holds lists or arrays (e.g. {shown}), which are not "
                         f"a feature; {_drop_hint(c, s)} (or spread it into columns of its own)")


def _not_a_date(col, c, s: TabularSettings, path: str) -> None:
    """UsageError for a column of dates or times (datetime values, or text that parses as dates
    with a year: the first DATE_SAMPLE distinct values tried): as text it would be one-hot
    encoded, one category per day."""
    import warnings

    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(col):
        example = col.dropna().iloc[0] if col.notna().any() else None
    elif _is_numeric(col) or pd.api.types.is_bool_dtype(col):
        return
    else:
        values = pd.Series(col.dropna().unique()[:DATE_SAMPLE])
        if values.empty or not all(isinstance(v, str) for v in values) \
                or not values.str.contains(DATE_WITH_YEAR).all():
            return  # no year written in it ("12:30", "3rd"): pandas would make today's date of it
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                parsed = pd.to_datetime(values, errors="coerce", format="mixed")
        except (ValueError, TypeError, OverflowError):  # mixed time zones, say: not one kind
            return
        if parsed.isna().any() or not (parsed.dt.year > 1).all():  # "1st", "March": no year
            return
        example = values.iloc[0]
    raise UsageError(f"{path}: column {c!r} holds dates (e.g. {str(example)!r}), which are not a "
                     f"feature; {_drop_hint(c, s)} (or add numeric columns made from it to the file)")


def _not_an_identifier(col, c, s: TabularSettings, path: str) -> None:
    """UsageError for an integer or text column whose values are all distinct, one per row (an
    `id`, a `customer_id`): it identifies rows, it tells nothing about new ones."""
    import pandas as pd

    n = len(col)
    if n < ID_MIN_ROWS or col.isna().any():
        return
    if not (pd.api.types.is_integer_dtype(col) and not pd.api.types.is_bool_dtype(col)) \
            and not all(isinstance(v, str) for v in col):
        return
    if col.nunique() == n:
        raise UsageError(f"{path}: column {c!r} looks like an identifier ({n} distinct values in "
                         f"{n} rows), which is not a feature; {_drop_hint(c, s)} (or name the "
                         "columns to use with dataset.features=[...])")


def infer_task(y, s: TabularSettings, path: str) -> str:
    """classification | regression, from `dataset.task` or the target's values."""
    numeric = _is_numeric(y)
    if s.task == "regression" and not numeric:
        raise ConfigError("dataset.task", "regression", f"target {s.target!r} of {path} is not "
                          "numeric; use dataset.task=classification")
    if s.task is not None:
        return s.task
    values = y.dropna().unique()
    if not numeric or len(values) == 2:
        return "classification"
    if not np.all(np.mod(values.astype(float), 1) == 0):
        return "regression"
    raise ConfigError("dataset.task", None, f"cannot be inferred: target {s.target!r} of {path} "
                      f"has {len(values)} integer values; set dataset.task=classification or "
                      "dataset.task=regression")


def split_rows(y: torch.Tensor | None, n: int, s: TabularSettings, data_seed: int):
    """(train, val, test) row indices from `data_seed`; stratified by class when `y` is given."""
    g = torch.Generator().manual_seed(data_seed)
    n_val, n_test = round(n * s.val_fraction), round(n * s.test_fraction)
    if n_val < 1 or n_test < 1 or n - n_val - n_test < 1:
        raise ConfigError("dataset.val_fraction", s.val_fraction, f"with dataset.test_fraction="
                          f"{s.test_fraction} leaves an empty split of {n} rows")
    labels = torch.zeros(n, dtype=torch.long) if y is None else y  # one "class": a plain draw
    val = stratified(labels, n_val, g)
    rest = torch.ones(n, dtype=torch.bool)
    rest[val] = False
    rest_idx = rest.nonzero().squeeze(1)
    test = rest_idx[stratified(labels[rest_idx], n_test, g)]
    rest[test] = False
    train = rest.nonzero().squeeze(1)
    return keep_n_train(train, labels, s.n_train, g, "the rows left after validation and test"), val, test


def encode(df, features: list[str], train_rows, s: TabularSettings, path: str):
    """Feature matrix (float32, all rows) with every statistic taken from `train_rows`."""
    import pandas as pd

    tr = df.iloc[train_rows]
    blocks = []
    for c in features:
        col = df[c]
        if _is_numeric(col):
            x = col.astype("float64")
            if s.impute == "median":
                x = x.fillna(tr[c].astype("float64").median())
            check_finite(x, x.index, path, f"column {c!r} has a non-finite value")
            with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused below
                mean, std = x.iloc[train_rows].mean(), x.iloc[train_rows].std(ddof=0)
                check_scale(mean, std, x, x.index, path, f"column {c!r}")
                z = ((x - mean) / (std if std > 0 else 1.0)).astype("float32")
            check_finite(z, x.index, path, f"column {c!r} is too large to standardise", x)
            blocks.append(z.to_numpy()[:, None])
            continue
        kind = col.dtype
        if not isinstance(kind, pd.CategoricalDtype) and not all(
                isinstance(v, (str, bool, np.bool_)) for v in col.dropna().unique()):
            raise UsageError(f"{path}: column {c!r} ({kind}) is neither numeric nor categorical "
                             "(text/boolean values); drop it from dataset.features")
        if s.impute == "median" and col.isna().any():
            col = col.fillna(tr[c].mode().iloc[0])
        cats = sorted(col.iloc[train_rows].dropna().unique(), key=str)
        if len(cats) > s.max_categories:
            raise UsageError(f"{path}: column {c!r} is not numeric and has {len(cats)} distinct "
                             f"values in the training split (more than dataset.max_categories="
                             f"{s.max_categories}); drop it from dataset.features or raise the limit")
        values = col.to_numpy()
        blocks.append(np.stack([values == v for v in cats], axis=1).astype("float64"))
    return torch.from_numpy(np.concatenate(blocks, axis=1)).float()


def make_tabular(s: TabularSettings, data_seed: int) -> Data:
    import pandas as pd

    if s.path is None:
        raise ConfigError("dataset.path", None, "is required: a .csv or .parquet file")
    path = s.path
    df = read_table(path)
    if len(df) == 0:
        raise UsageError(f"{path}: no rows (only a header: {', '.join(map(str, df.columns)) or '-'})")
    df.index = pd.RangeIndex(1, len(df) + 1)  # data rows as a user counts them, header excluded
    features = _columns(df, s, path)
    df = df[[*features, s.target]]
    missing = {c: int(n) for c, n in df.isna().sum().items() if n}
    if missing and s.impute == "none":
        listing = ", ".join(f"{c} ({n})" for c, n in missing.items())
        raise UsageError(f"{path}: missing values in {listing}; clean the file or set "
                         "dataset.impute=median (training-split medians / most frequent values)")
    df = df[df[s.target].notna()]  # rows without a target cannot be learnt (labels kept: data rows)
    if len(df) == 0:
        raise UsageError(f"{path}: no rows with a value of the target {s.target!r}")
    if _is_numeric(df[s.target]):
        check_finite(df[s.target], df.index, path, f"target column {s.target!r} has a "
                     "non-finite value")
    task = infer_task(df[s.target], s, path)
    if task == "classification":
        classes = sorted(df[s.target].unique(), key=str)
        if len(classes) < 2:
            raise ConfigError("dataset.target", s.target, f"has one class ({classes[0]!r}) in "
                              f"{path}; classification needs at least two")
        counts = df[s.target].value_counts()
        few = counts[counts < 3]
        if 2 * len(few) >= len(counts):  # most classes cannot reach train, val and test: no task to learn
            shown = ", ".join(f"{k!r} ({n})" for k, n in list(few.items())[:3])
            raise ConfigError("dataset.target", s.target, f"has {len(few)} of {len(counts)} classes with fewer "
                              f"than 3 rows in {path}: {shown}{' ...' if len(few) > 3 else ''}; a class needs "
                              "rows in train, val and test: merge or drop them" +
                              (", or set dataset.task=regression" if _is_numeric(df[s.target]) else ""))
        index = {v: i for i, v in enumerate(classes)}
        y = torch.tensor([index[v] for v in df[s.target]], dtype=torch.long)
        train, val, test = split_rows(y, len(df), s, data_seed)
        out_dim = len(classes)
    else:
        values = torch.tensor(df[s.target].to_numpy(dtype="float64"))
        train, val, test = split_rows(None, len(df), s, data_seed)
        if s.scale_target:
            mean, std = values[train].mean(), values[train].std(unbiased=False)
            check_scale(mean, std, values, df.index, path, f"target column {s.target!r}")
            values = (values - mean) / (std if std > 0 else 1.0)
        y, out_dim = values.float().unsqueeze(1), 1
        check_finite(y[:, 0], df.index, path, f"target column {s.target!r} is too large to "
                     f"{'standardise' if s.scale_target else 'hold in float32'}", df[s.target])
    x = encode(df, features, train.numpy(), s, path)
    return Data(task, Split(x[train], y[train]), Split(x[val], y[val]), Split(x[test], y[test]),
                in_shape=(x.shape[1],), out_dim=out_dim)
