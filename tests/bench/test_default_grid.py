"""bench/default_grid.py: a tree's own default grid timed in a subprocess of that tree, and the verdicts."""
from pathlib import Path

from bench import default_grid as dg

ROOT = Path(__file__).resolve().parents[2]


def test_a_round_samples_the_trees_own_default_grid():
    from diffusion.pipeline import defaults_for

    r = dg.network_round(ROOT, repeats=1)
    d = defaults_for("pixel-cond")
    assert (r["sampler"], r["steps"], r["guidance"]) == (d.sampler, d.steps, d.guidance)
    assert len(r["times"]) == 1 and 0 < r["times"][0] < 60 and r["precision"] in ("fp32", "bf16")


def test_the_report_names_both_settings_and_the_verdicts():
    settings = {"sampler": "dpmpp_2m_sde", "steps": 10, "precision": "bf16"}
    rows = {"machine": "cpu", "rounds": 3, "repeats": 5, "e2e": 8,
            "before": {"settings": {**settings, "guidance": 1.375}, "network_best": 0.30, "network_median": 0.31,
                       "e2e_best": 0.80, "e2e_median": 0.9},
            "after": {"settings": {**settings, "guidance": 1.0}, "network_best": 0.15, "network_median": 0.16,
                      "e2e_best": 0.35, "e2e_median": 0.4}}
    text = dg.report(rows, "before", "after")
    assert "w = 1.375, bf16" in text and "w = 1, bf16" in text
    assert "Network: **2.00x** faster (target >= 2.5x: MISSED)" in text
    assert "End to end: **2.29x** faster (target >= 2x: met)" in text
