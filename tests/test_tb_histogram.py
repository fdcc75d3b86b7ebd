"""Weight histograms are torch's own: the same HistogramProto, byte for byte, as
`make_histogram` with SummaryWriter's default bins, for any values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import histogram as torch_histogram
from torch.utils.tensorboard.summary import make_histogram

from regablate.tensorboard.histogram import EDGES, histogram


def torchs(values: np.ndarray) -> bytes | str:
    try:
        return make_histogram(values, EDGES.tolist()).SerializeToString()
    except ValueError as e:
        return f"ValueError: {e}"


def ours(values: np.ndarray) -> bytes | str:
    try:
        return histogram(values).SerializeToString()
    except ValueError as e:
        return f"ValueError: {e}"


def test_the_edges_are_summary_writers_default_bins(tmp_path):
    with SummaryWriter(str(tmp_path)) as w:
        assert EDGES.tolist() == w.default_bins


@pytest.mark.parametrize("seed", range(6))
def test_random_values_of_every_scale(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        n = int(rng.integers(1, 3000))
        x = rng.standard_normal(n) * 10.0 ** rng.uniform(-15, 22)  # beyond the outer edges too
        if rng.random() < 0.5:
            x = x.astype(np.float32).astype(np.float64)  # weights are float32
        assert ours(x) == torchs(x)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf - inf, in torch too
@pytest.mark.parametrize("values", [
    [0.0], [-0.0, 0.0], [1.0], [-1.0, 1.0], [5.0] * 7, [1e-13, -1e-13], [1e21, 1.0], [-1e21],
    [np.nan, 1.0], [np.inf, -np.inf, 0.5], [np.nan] * 3, [np.inf], [],
    EDGES[[0, 1, 773, 774, 775, 1547, 1548]].tolist(),  # exactly on edges, both outer ones included
    EDGES[-1:].tolist(), EDGES[:1].tolist(), (EDGES[-1] * (1 + 1e-16),), (np.nextafter(EDGES[-1], np.inf),),
], ids=str)
def test_edge_cases_and_errors(values):
    x = np.array(values, dtype=np.float64)
    assert ours(x) == torchs(x)


def test_many_values_are_counted_in_blocks_as_numpy_does():
    x = (torch.randn(300_001, generator=torch.Generator().manual_seed(0)) * 0.05).double().numpy()
    x[::7] = 0
    assert ours(x) == torchs(x)


def test_any_shape_and_tensor_as_add_histogram_gets_it():
    w = torch.randn(64, 3, 3, generator=torch.Generator().manual_seed(1))
    want = torch_histogram("t", w, EDGES.tolist()).value[0].histo
    assert histogram(w.numpy()) == want
