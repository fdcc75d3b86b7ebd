"""ECE, NLL and the reliability diagram against hand-computed values."""

from __future__ import annotations

import json
import math

import pytest
import torch

from regablate.metrics.calibration import calibration, ece, nll, reliability


def two_class(confidences: list[float], correct: list[bool]):
    """Probabilities whose max is each confidence on class 0; label 0 when correct, else 1."""
    c = torch.tensor(confidences)
    probs = torch.stack([c, 1 - c], dim=1)
    labels = torch.tensor([0 if ok else 1 for ok in correct])
    return probs, labels


def test_ece_equals_the_hand_computed_value():
    # 15 bins of width 1/15; bins: 0.95 -> 14, 0.85 -> 12, 0.62 and 0.64 -> 9, 0.55 -> 8
    probs, labels = two_class([0.95, 0.85, 0.62, 0.64, 0.55], [True, False, True, False, True])
    by_hand = (abs(1 - 0.95) + abs(0 - 0.85) + 2 * abs(0.5 - 0.63) + abs(1 - 0.55)) / 5  # 0.322
    assert ece(probs, labels) == pytest.approx(by_hand, abs=1e-6)
    assert by_hand == pytest.approx(0.322)


def test_ece_bins_matter():
    """With one bin ECE is |overall accuracy − mean confidence|."""
    probs, labels = two_class([0.95, 0.85, 0.62, 0.64, 0.55], [True, False, True, False, True])
    assert ece(probs, labels, n_bins=1) == pytest.approx(abs(3 / 5 - (0.95 + 0.85 + 0.62 + 0.64 + 0.55) / 5))


def test_ece_extremes():
    probs, labels = two_class([1.0, 1.0, 1.0], [True, True, True])
    assert ece(probs, labels) == 0.0
    probs, labels = two_class([1.0, 1.0], [False, False])
    assert ece(probs, labels) == pytest.approx(1.0)
    uniform = torch.full((4, 4), 0.25)  # confidence 1/4, accuracy 1/4 (ties -> class 0)
    assert ece(uniform, torch.tensor([0, 1, 2, 3])) == pytest.approx(0.0, abs=1e-12)


def test_reliability_diagram_is_per_bin_and_json_friendly():
    probs, labels = two_class([0.95, 0.85, 0.62, 0.64, 0.55], [True, False, True, False, True])
    r = reliability(probs, labels)
    json.dumps(r)
    assert len(r["edges"]) == 16 and r["edges"][0] == 0.0 and r["edges"][-1] == 1.0
    assert sum(r["count"]) == 5
    assert r["count"][9] == 2 and r["accuracy"][9] == 0.5
    assert r["confidence"][9] == pytest.approx(0.63)
    assert r["count"][14] == 1 and r["accuracy"][14] == 1.0
    assert r["count"][0] == 0 and r["accuracy"][0] is None and r["confidence"][0] is None
    weighted = sum(c * abs(a - f) for c, a, f in zip(r["count"], r["accuracy"], r["confidence"]) if c)
    assert weighted / 5 == pytest.approx(ece(probs, labels))


def test_nll_is_the_mean_negative_log_likelihood():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [0.0, math.log(3.0)]])
    labels = torch.tensor([1, 0, 0])
    by_hand = (math.log(2) - math.log(3 / 4) - math.log(1 / 4)) / 3
    assert nll(logits, labels) == pytest.approx(by_hand)
    both = calibration(logits, labels)
    assert both["nll"] == pytest.approx(by_hand)
    # confidences 0.5 (bin 7), 0.75 (bin 11), 0.75 (bin 11): |0−.5| + 2·|.5−.75| over 3
    assert both["ece"] == pytest.approx((0.5 + 2 * 0.25) / 3)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="probs must be"):
        ece(torch.ones(3), torch.zeros(3, dtype=torch.long))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_ece_of_cuda_tensors_is_the_same_number_every_time():
    """Exact resume compares ECEs to the last digit: bin sums must not depend on the order in
    which CUDA threads add them."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(100_000, 10, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 10, (100_000,), generator=g)
    probs = logits.softmax(1)
    on_cpu = ece(probs, labels)
    on_gpu = {ece(probs.cuda(), labels.cuda()) for _ in range(20)}
    assert on_gpu == {on_cpu}
