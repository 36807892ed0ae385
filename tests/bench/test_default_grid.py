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


def test_a_live_round_samples_the_student_the_trees_live_tab_opens_on():
    """The tree's own app decides: with the shipped students and no start-up timing slower than the target, the
    best student by registry.LIVE_PREFERENCE at its own default w."""
    from diffusion.pipeline import defaults_for
    from diffusion.registry import LIVE_PREFERENCE

    r = dg.network_round(ROOT, repeats=1, tab="live")
    assert r["model"] in LIVE_PREFERENCE and r["guidance"] == defaults_for(r["model"]).guidance
    assert r["steps"] == defaults_for(r["model"]).steps and r["sampler"] == defaults_for(r["model"]).sampler
    assert len(r["times"]) == 1 and 0 < r["times"][0] < 60


def test_the_live_report_names_the_students_and_halving_is_its_target():
    rows = {"machine": "cpu", "tab": "live", "rounds": 3, "repeats": 5, "e2e": 0,
            "before": {"settings": {"model": "pixel-cond-distilled", "sampler": "euler_ancestral", "steps": 4,
                                    "guidance": 1.5, "precision": "fp32"}, "network_best": 0.12, "network_median": 0.13},
            "after": {"settings": {"model": "pixel-cond-distilled-2step", "sampler": "ddim", "steps": 2,
                                   "guidance": 1.4375, "precision": "bf16"}, "network_best": 0.05, "network_median": 0.06}}
    text = dg.report(rows, "before", "after")
    assert text.startswith("# Live's default grid") and "pixel-cond-distilled: euler_ancestral, 4, w = 1.5, fp32" in text
    assert "pixel-cond-distilled-2step: ddim, 2, w = 1.4375, bf16" in text
    assert "Network: **2.40x** faster (target >= 2x: met)" in text and "End to end" not in text
