"""Evaluation metrics against hand computations and limiting cases (diffusion/metrics.py)."""
import math

import pytest
import torch

from diffusion.metrics import Classifier, Evaluator, ResNetClassifier, confident_rate, kid, precision_recall, speck_mask
from diffusion.setting_rules import choose_setting


def gaussian(n, d=8, shift=0.0, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) + shift


def kid_by_hand(x, y):
    """The unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3 written as plain loops."""
    d, m = x.shape[1], len(x)
    k = lambda a, b: (float(a @ b) / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_the_formula_on_one_full_subset():
    x, y = gaussian(12, 3, seed=1).double(), gaussian(12, 3, 0.5, seed=2).double()
    mean, std = kid(x, y, subsets=1, subset_size=12)
    assert mean == pytest.approx(kid_by_hand(x, y), rel=1e-9)
    assert std == 0.0


def test_kid_is_unbiased_near_zero_for_one_distribution_and_grows_with_the_shift():
    same, _ = kid(gaussian(2000, seed=1), gaussian(2000, seed=2), subsets=20, subset_size=500)
    near, _ = kid(gaussian(2000, seed=1), gaussian(2000, shift=0.2, seed=2), subsets=20, subset_size=500)
    far, _ = kid(gaussian(2000, seed=1), gaussian(2000, shift=0.6, seed=2), subsets=20, subset_size=500)
    assert abs(same) < 0.2 * near
    assert 0 < near < far


def test_kid_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2"):
        kid(gaussian(1), gaussian(5))


def test_precision_recall_limits():
    real = gaussian(400, 4, seed=1)
    p, r = precision_recall(real, real.clone())
    assert (p, r) == (1.0, 1.0)
    p, r = precision_recall(real, gaussian(400, 4, shift=50.0, seed=2))   # far away: nothing covered
    assert (p, r) == (0.0, 0.0)
    # a collapsed generator (every sample near one real point): precise, but recalls almost nothing
    collapsed = real[:1] + 1e-3 * gaussian(400, 4, seed=3)
    p, r = precision_recall(real, collapsed)
    assert p == 1.0 and r < 0.05


def test_confident_rate_counts_agreeing_confident_pairs():
    a = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.6, 0.4], [0.05, 0.95]])
    b = torch.tensor([[0.91, 0.09], [0.05, 0.95], [0.99, 0.01], [0.02, 0.98]])
    # row 0: both confident in class 0; row 1: disagree; row 2: a not confident; row 3: both confident in 1
    assert confident_rate(a, b) == 0.5


def blank():
    return torch.zeros(1, 28, 28)


def test_speck_definition():
    digit = blank()
    digit[0, 8:20, 12:15] = 1.0                       # a stroke
    assert not speck_mask(digit).item()
    lone = digit.clone()
    lone[0, 3, 3] = 0.9                               # a lone bright pixel far from the stroke
    assert speck_mask(lone).item()
    broken = digit.clone()
    broken[0, 21, 13] = 1.0                           # 1 px gap below the stroke's end (rows 8-19): a broken stroke
    assert not speck_mask(broken).item()
    gap2 = digit.clone()
    gap2[0, 22, 13] = 1.0                             # 2 px of background between: a speck by definition
    assert speck_mask(gap2).item()
    dim = digit.clone()
    dim[0, 3, 3] = 0.3                                # below the ink threshold
    assert not speck_mask(dim).item()
    blob = digit.clone()
    blob[0, 2:4, 2:4] = 1.0                           # 4 px: a second blob, not a speck
    assert not speck_mask(blob).item()
    batch = torch.cat([digit, lone, broken])
    assert speck_mask(batch).tolist() == [False, True, False]


def row(setting, ratios, accs):
    return {"setting": setting, "metrics": {"evaluators": {
        f"c{i}": {"frechet_ratio": r, "conditional_accuracy": a} for i, (r, a) in enumerate(zip(ratios, accs))}}}


def test_choose_setting_takes_the_best_worse_of_two_ratio_subject_to_accuracy():
    rows = [row("w=1", [1.2, 3.0], [0.995, 0.99]),      # worse-of-two 3.0
            row("w=1.5", [1.6, 1.8], [0.996, 0.992]),   # 1.8: the pick
            row("w=2", [1.1, 1.9], [0.999, 0.998]),     # 1.9
            row("w=0.5", [1.0, 1.2], [0.97, 0.99])]     # best ratios but one accuracy below 99%
    assert choose_setting(rows)["setting"] == "w=1.5"
    with pytest.raises(ValueError, match="no setting"):
        choose_setting(rows, min_acc=0.9999)


def test_choose_setting_prefers_settings_that_speck_no_more_than_real_digits_plus_one_point():
    def specked(r, rate):
        r["metrics"]["speck_rate"] = rate
        return r
    rows = [specked(row("ode w=1.5", [1.6, 1.2], [0.995, 0.993]), 0.023),   # best FD, 2.3% specks: too many
            specked(row("sde w=1.375", [2.0, 1.2], [0.996, 0.996]), 0.004),  # the pick
            specked(row("sde w=1.5", [2.6, 1.5], [0.998, 0.997]), 0.002),
            specked(row("sde w=1.25", [1.5, 0.9], [0.992, 0.989]), 0.003)]  # clean, but below 99% accuracy
    assert choose_setting(rows)["setting"] == "sde w=1.375"
    assert choose_setting(rows, max_speck=1.0)["setting"] == "ode w=1.5"    # without the speck limit: FD alone
    all_specked = [specked(row(f"w={w}", [r, r], [0.999, 0.999]), 0.03) for w, r in ((1, 2.0), (2, 1.7))]
    assert choose_setting(all_specked)["setting"] == "w=2"                  # none clean: the best FD still wins


def test_the_rules_real_speck_rate_is_the_measured_one():
    import json
    from pathlib import Path

    from diffusion.setting_rules import REAL_SPECK_RATE
    measured = json.loads((Path(__file__).resolve().parents[2] / "bench" / "results" / "real_rates.json").read_text())
    assert REAL_SPECK_RATE == pytest.approx(measured["speck_rate"], abs=5e-5)


def test_evaluator_on_real_digits_gives_floor_like_figures():
    """Untrained networks still define feature spaces: real images scored against themselves must give a
    ratio of ~1 to the same-N floor drawn from the same source, and full precision/recall."""
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(600, 1, 28, 28, generator=g) > 0.8).float()
    labels = torch.randint(0, 10, (600,), generator=g)
    torch.manual_seed(0)
    ev = Evaluator({"classifier": Classifier().eval(), "classifier-resnet": ResNetClassifier().eval()},
                   images[:300], labels[:300], images[300:])
    out = ev.evaluate(images[:300], labels[:300], kid_subsets=5)
    assert set(out["evaluators"]) == {"classifier", "classifier-resnet"}
    for m in out["evaluators"].values():
        assert m["frechet_distance"] == pytest.approx(0.0, abs=1e-6)      # identical sets
        assert m["precision"] == 1.0 and m["recall"] == 1.0
        assert math.isfinite(m["frechet_floor_same_n"]) and m["frechet_floor_same_n"] > 0
        assert 0.0 <= m["conditional_accuracy"] <= 1.0 and len(m["per_digit_accuracy"]) == 10
    assert 0.0 <= out["confident_rate"] <= 1.0 and out["speck_rate"] >= 0.0
