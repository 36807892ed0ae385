"""bench/compare_candidates.py: candidate weights against shipped ones, by setting and at each one's rule-v3 pick."""
import json

import pytest

from bench import compare_candidates as cc

CLASSIFIERS = ("classifier", "classifier-resnet")
VIEWS = ("pixel-pca", "autoencoder-latent")
REAL_FD = {"classifier": 2.0, "classifier-resnet": 0.05, "pixel-pca": 0.5, "autoencoder-latent": 3.0}


def _spread(mean, tolerance):
    return {"mean": mean, "sd": tolerance / 2, "tolerance": tolerance, "subsets": 5}


def metrics(fd_ratio, accuracy=0.995, speck=0.007, recall=0.87):
    """An Evaluator result whose FD is fd_ratio x real digits' in every space (a float) or per space (a dict)."""
    ratio = fd_ratio if isinstance(fd_ratio, dict) else dict.fromkeys(REAL_FD, fd_ratio)
    space = lambda n: {"frechet_distance": ratio[n] * REAL_FD[n], "recall": recall}   # noqa: E731
    real_space = lambda n: {"frechet_distance": _spread(REAL_FD[n], 0.1), "recall": _spread(0.87, 0.02)}  # noqa: E731
    return {"samples": 100,
            "evaluators": {n: {**space(n), "conditional_accuracy": accuracy} for n in CLASSIFIERS},
            "views": {n: space(n) for n in VIEWS}, "speck_rate": speck,
            "real": {"evaluators": {n: {**real_space(n), "conditional_accuracy": _spread(0.995, 0.004)}
                                    for n in CLASSIFIERS},
                     "views": {n: real_space(n) for n in VIEWS}, "speck_rate": _spread(0.007, 0.012)}}


def row(w, m, model="pixel-cond", samples=100, **extra):
    return {"model": model, "samples": samples, "setting": {"sampler": "dpmpp_2m_sde", "steps": 10, "guidance": w,
                                                            **extra}, "metrics": m}


def test_fd_ratios_divide_by_real_digits_mean_fd_in_every_space():
    assert cc.fd_ratios(metrics(1.5)) == pytest.approx(dict.fromkeys(REAL_FD, 1.5))


def test_a_candidate_better_everywhere_ships():
    better, reasons = cc.verdict(row(1.0, metrics(1.4)), row(1.0, metrics(1.2)))
    assert better and reasons == []


def test_each_reason_a_candidate_is_not_better_is_named():
    worse_pca = metrics({**dict.fromkeys(REAL_FD, 1.2), "pixel-pca": 1.5}, accuracy=0.97, speck=0.03)
    better, reasons = cc.verdict(row(1.0, metrics(1.4)), row(1.0, worse_pca))
    assert not better
    assert reasons[0] == "FD ratio in pixel-pca not lower (1.50 against 1.40)"
    assert "fails 'accuracy classifier', which the shipped default meets" in reasons
    assert reasons[-1].startswith("specks 3.00% against 0.70%")
    # a check the shipped default fails too is not held against the candidate
    better, reasons = cc.verdict(row(1.0, metrics(1.4, accuracy=0.97)), row(1.0, metrics(1.2, accuracy=0.97)))
    assert better


def test_same_settings_counts_where_the_candidate_is_lower():
    shipped = [row(1.0, metrics(1.4)), row(1.25, metrics(2.0, speck=0.01)), row(1.5, metrics(3.0))]
    candidate = [row(1.0, metrics(1.2)), row(1.25, metrics(2.2, speck=0.02)), row(1.75, metrics(1.0))]
    same = cc.same_settings(shipped, candidate)
    assert same["pairs"] == 2                      # w = 1.5 and 1.75 are in one store only
    assert same["spaces"]["classifier"] == {"lower": 1, "of": 2, "mean_ratio": pytest.approx((1.2 / 1.4 + 2.2 / 2) / 2)}
    assert same["speck_diff_mean"] == pytest.approx(0.005)


def test_compare_picks_each_default_by_rule_v3_and_reports_the_verdict():
    shipped = [row(1.0, metrics(1.1, accuracy=0.975)), row(1.25, metrics(1.6))]     # pick: 1.25 (w = 1 misses accuracy)
    candidate = [row(1.0, metrics(1.05)), row(1.25, metrics(1.5))]                  # pick: 1.0, meets every check
    better, text = cc.compare(shipped, candidate, "pixel-cond")
    assert better and "**Verdict: better by every evaluator: ships**" in text
    assert "| shipped | dpmpp_2m_sde 10, w = 1.25 | 1.60 |" in text
    assert "| candidate | dpmpp_2m_sde 10, w = 1 | 1.05 |" in text
    assert "- classifier: FD ratio lower in 2 of 2" in text
    with pytest.raises(ValueError, match="no rows in the candidate store"):
        cc.compare(shipped, [row(1.0, metrics(1.0), model="latent-cond")], "pixel-cond")
    with pytest.raises(ValueError, match="no rows at N = 2000"):
        cc.compare(shipped, [row(1.0, metrics(1.0), samples=2000)], "pixel-cond")


def test_cli_writes_the_comparison_beside_the_candidate_store(tmp_path):
    shipped, candidate = tmp_path / "shipped.json", tmp_path / "cand.json"
    shipped.write_text(json.dumps([row(1.0, metrics(1.2))]))
    candidate.write_text(json.dumps([row(1.0, metrics(1.3))]))
    assert cc.main(["--model", "pixel-cond", "--candidate", str(candidate), "--shipped", str(shipped)]) == 0
    text = (tmp_path / "cand_pixel-cond_vs_shipped_compare.md").read_text()     # another store than the shipped one
    assert "not better by every evaluator" in text and "FD ratio in classifier not lower (1.30 against 1.20)" in text
    assert text.startswith("# pixel-cond: candidate against shipped (N = 100)")   # the baseline named by its file
    assert "| shipped | " in text and "candidate / shipped " in text
    other = tmp_path / "narrow.json"
    other.write_text(shipped.read_text())
    assert cc.main(["--model", "pixel-cond", "--candidate", str(candidate), "--shipped", str(other)]) == 0
    text = (tmp_path / "cand_pixel-cond_vs_narrow_compare.md").read_text()
    assert text.startswith("# pixel-cond: candidate against narrow (") and "| narrow | " in text
    with pytest.raises(SystemExit, match="no such store"):
        cc.main(["--model", "pixel-cond", "--candidate", str(tmp_path / "missing.json"), "--shipped", str(shipped)])
