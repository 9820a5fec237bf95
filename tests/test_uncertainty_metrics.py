"""kwh.metrics: NLL, Brier, ECE, reliability data, AUROC and temperature scaling against hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kwh import metrics

# Four two-class predictions; top-1 confidence 0.9 (right), 0.75 (wrong), 0.7 (right), 0.55 (wrong).
P = torch.tensor([[0.9, 0.1], [0.75, 0.25], [0.3, 0.7], [0.45, 0.55]], dtype=torch.float64)
Y = torch.tensor([0, 1, 1, 0])


def test_nll_by_hand():
    want = -(math.log(0.9) + math.log(0.25) + math.log(0.7) + math.log(0.45)) / 4
    assert metrics.nll(P, Y) == pytest.approx(want, abs=1e-12)
    assert metrics.nll(P.numpy(), Y.numpy()) == pytest.approx(want, abs=1e-12)


def test_brier_by_hand():
    # rows: 0.1^2 + 0.1^2; 0.75^2 + 0.75^2; 0.3^2 + 0.3^2; 0.55^2 + 0.55^2 -> mean over rows
    want = (0.02 + 1.125 + 0.18 + 0.605) / 4
    assert metrics.brier_score(P, Y) == pytest.approx(want, abs=1e-12)
    assert metrics.brier_score(F.one_hot(Y, 2).double(), Y) == 0.0
    assert metrics.brier_score(1 - F.one_hot(Y, 2).double(), Y) == pytest.approx(2.0)


def test_ece_by_hand_15_bins():
    # 15 bins of width 1/15: 0.9 -> bin 13, 0.75 -> 11, 0.7 -> 10, 0.55 -> 8, one example each.
    want = (abs(1 - 0.9) + abs(0 - 0.75) + abs(1 - 0.7) + abs(0 - 0.55)) / 4  # 0.425
    assert metrics.expected_calibration_error(P, Y) == pytest.approx(want, abs=1e-12)
    rel = metrics.reliability_data(P, Y, bins=15)
    assert rel.count.tolist() == [0] * 8 + [1, 0, 1, 1, 0, 1, 0]
    assert rel.accuracy[13] == 1.0 and rel.accuracy[11] == 0.0
    assert rel.confidence[10] == pytest.approx(0.7)
    assert np.isnan(rel.accuracy[0]) and np.isnan(rel.confidence[14])
    assert len(rel.edges) == 16 and rel.edges[0] == 0.0 and rel.edges[-1] == 1.0


def test_ece_shared_bins_weighted_by_count():
    # 5 bins: (0.8, 1] holds 0.9; (0.6, 0.8] holds 0.75 and 0.7 (acc 1/2, conf 0.725); (0.4, 0.6] 0.55.
    want = 0.25 * 0.1 + 0.5 * abs(0.5 - 0.725) + 0.25 * 0.55
    assert metrics.expected_calibration_error(P, Y, bins=5) == pytest.approx(want, abs=1e-12)
    assert metrics.expected_calibration_error(P, Y, bins=1) == pytest.approx(abs(0.5 - 0.725), abs=1e-12)


def test_bins_are_closed_on_the_right():
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    rel = metrics.reliability_data(p, torch.tensor([0, 0, 0]), bins=2)
    assert rel.count.tolist() == [1, 2]  # 0.5 in (0, 0.5]; 1.0 in (0.5, 1]
    assert rel.accuracy.tolist() == [1.0, 0.5]  # tie 0.5/0.5 -> class 0 (first index)
    d = rel.to_dict()
    assert d["count"] == [1, 2] and d["accuracy"] == [1.0, 0.5]


def test_reliability_to_dict_marks_empty_bins():
    d = metrics.reliability_data(P, Y).to_dict()
    assert d["accuracy"][0] is None and d["confidence"][0] is None and d["count"][0] == 0


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="sum to 1"):
        metrics.nll(torch.tensor([[2.0, -1.0]]).abs(), torch.tensor([0]))
    with pytest.raises(ValueError, match="labels must lie"):
        metrics.brier_score(P, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"shape \(N, C\)"):
        metrics.expected_calibration_error(P[0], Y)
    with pytest.raises(ValueError, match="bins"):
        metrics.reliability_data(P, Y, bins=0)


def test_auroc_perfect_reversed_and_tied():
    assert metrics.auroc([0.1, 0.2, 0.3], [0.5, 0.9]) == 1.0
    assert metrics.auroc([0.5, 0.9], [0.1, 0.2, 0.3]) == 0.0
    assert metrics.auroc([1.0, 1.0], [1.0, 1.0, 1.0]) == 0.5
    assert metrics.ood_auroc(torch.zeros(5), torch.ones(7)) == 1.0
    with pytest.raises(ValueError, match="both kinds"):
        metrics.auroc([], [1.0])


def test_auroc_matches_sklearn_with_ties():
    sk = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(1)
    neg = torch.randint(0, 20, (300,), generator=g).double()  # many ties
    pos = torch.randint(5, 25, (200,), generator=g).double()
    want = sk.roc_auc_score(np.r_[np.zeros(300), np.ones(200)], np.r_[neg.numpy(), pos.numpy()])
    assert metrics.auroc(neg, pos) == pytest.approx(want, abs=1e-12)


def test_temperature_scaling_fixes_overconfidence():
    g = torch.Generator().manual_seed(0)
    true = 2.0 * torch.randn(6000, 5, generator=g, dtype=torch.float64)  # (N, C) true logits
    y = torch.multinomial(torch.softmax(true, 1), 1, generator=g).squeeze(1)
    logits = 3.0 * true  # overconfident by a factor 3
    t = metrics.fit_temperature(logits[:3000], y[:3000])
    assert t == pytest.approx(3.0, rel=0.1)
    before = metrics.nll(torch.softmax(logits[3000:], 1), y[3000:])
    after = metrics.nll(metrics.apply_temperature(logits[3000:], t), y[3000:])
    oracle = metrics.nll(torch.softmax(true[3000:], 1), y[3000:])
    assert after < before - 0.1
    assert after == pytest.approx(oracle, abs=0.02)
    ece_before = metrics.expected_calibration_error(torch.softmax(logits[3000:], 1), y[3000:])
    ece_after = metrics.expected_calibration_error(metrics.apply_temperature(logits[3000:], t), y[3000:])
    assert ece_after < ece_before


def test_temperature_rejects_bad_values():
    with pytest.raises(ValueError, match="temperature must be positive"):
        metrics.apply_temperature(torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError, match="logits"):
        metrics.fit_temperature(torch.zeros(3), torch.zeros(3, dtype=torch.long))
