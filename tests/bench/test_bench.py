"""bench/samplers.py: the rule that sets the defaults, the reports, and one end-to-end run on tiny models."""
import json

import pytest

from bench import samplers as bs
from diffusion.pipeline import DEFAULT_GUIDANCE


def _run(sampler, steps, nfe, fd1000, fd200=None, n=1000, ms=10.0, note="", tol=None):
    fd_at = {"200": fd200 if fd200 is not None else 2 * fd1000}
    if n >= 1000:
        fd_at["1000"] = fd1000
    return {"model": "pixel-cond", "sampler": sampler, "steps": steps, "tol": tol, "nfe": float(nfe), "guidance": 2.0,
            "n": n, "seed": 0, "chunk": 200, "fd": fd1000 if n >= 1000 else fd_at["200"], "fd_at": fd_at,
            "accuracy": 0.99, "per_class": [0.99] * 10, "acc_at": {"200": 0.99}, "class_hist": [0.1] * 10,
            "wall_s": ms * n / 1e3, "ms_per_image": ms, "note": note}


def _store():
    return {"floor": {"200": 10.0, "1000": 2.4}, "machine": "test", "runs": [
        _run("euler_maruyama", 500, 500, 10.0, ms=2000.0),
        _run("dpmpp_2m", 5, 5, 10.5),           # below the grid, passes (5% worse)
        _run("dpmpp_2m", 10, 10, 6.0),
        _run("heun", 5, 9, 7.0),                # the same 10-NFE grid point, worse FD
        _run("heun", 10, 19, 5.0),
        _run("euler_maruyama", 10, 10, 30.0, n=200),   # N=200 only: cannot be judged at N=1000
        _run("predictor_corrector", 5, 10, 11.5),     # 15% worse: fails the 10% rule
        _run("rk45", None, 81, 5.5, tol=1e-3),         # adaptive: never a default
    ]}


def test_grid_nfe_maps_steps_to_the_issue_grid():
    assert bs.grid_nfe({"sampler": "dpmpp_2m", "steps": 10}) == 10
    assert bs.grid_nfe({"sampler": "heun", "steps": 10}) == 20          # 19 NFE realises the 20 budget
    assert bs.grid_nfe({"sampler": "predictor_corrector", "steps": 25}) == 50
    assert bs.grid_nfe({"sampler": "dpmpp_2m", "steps": 7}) is None
    assert bs.grid_nfe({"sampler": "rk45", "steps": None}) is None


def test_cheapest_within_picks_the_smallest_budget_then_the_lowest_fd():
    runs = _store()["runs"]
    ref = bs.reference_run(runs, 200)
    assert ref["sampler"] == "euler_maruyama" and ref["steps"] == 500
    best, ratio, below = bs.cheapest_within(runs, ref)
    # dpmpp_2m 10 and heun 5 share the 10 budget; dpmpp_2m has the lower FD (6.0 vs 7.0)
    assert (best["sampler"], best["steps"]) == ("dpmpp_2m", 10)
    assert ratio == pytest.approx(0.6)
    assert [(b["sampler"], b["steps"]) for b, _ in below] == [("dpmpp_2m", 5)]
    # a 10% tolerance excludes predictor-corrector at 1.15x; a looser one would make it a candidate
    passing = {(r["sampler"], r["steps"]) for r in runs if r["fd_at"].get("1000", 1e9) <= 1.1 * ref["fd"]}
    assert ("predictor_corrector", 5) not in passing


def test_cheapest_within_needs_a_reference_and_a_passing_grid_run():
    runs = [r for r in _store()["runs"] if r["sampler"] != "euler_maruyama"]
    assert bs.cheapest_within(runs, None) is None
    ref = _run("euler_maruyama", 500, 500, 1.0)
    assert bs.cheapest_within(runs + [ref], ref) is None          # nothing within 10% of FD 1.0


def test_report_only_rewrites_tables_and_plot(tmp_path):
    store = _store()
    store["runs"][2]["note"] = "contended"
    (tmp_path / "samplers.json").write_text(json.dumps(store))
    bs.main(["--report-only", "--out", str(tmp_path)])
    md = (tmp_path / "samplers.md").read_text()
    assert "**Cheapest grid point" in md and "dpmpp_2m, 10 steps (10 NFE; grid point 10), FD 6.00 = 0.60×" in md
    assert "Below the grid, also within 10%: dpmpp_2m 5 steps (5 NFE, FD 10.50)" in md
    assert "* contended" in md and "| 10.0* |" in md                    # the timing condition marks its row
    row = next(line for line in md.splitlines() if line.startswith("| heun | 10 |"))
    assert "| 0.50 |" in row                                            # FD@1000 / EM-500 = 5 / 10
    png = (tmp_path / "quality_vs_nfe.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.slow
def test_end_to_end_on_tiny_models(tiny_weights, tmp_path):
    # N=20 in chunks of 10, then N=10: the smaller run is exactly the first chunk of the larger one
    common = ["--weights-dir", str(tiny_weights), "--out", str(tmp_path), "--models", "pixel-cond",
              "--samplers", "dpmpp_2m", "euler_maruyama", "--chunk", "10", "--note", "test"]
    bs.main(common + ["--nfe", "3", "--samples", "20"])
    bs.main(common + ["--nfe", "3", "--samples", "10"])
    store = json.loads((tmp_path / "samplers.json").read_text())
    runs = {(r["sampler"], r["n"]): r for r in store["runs"]}
    assert set(runs) == {("dpmpp_2m", 20), ("euler_maruyama", 20), ("dpmpp_2m", 10), ("euler_maruyama", 10)}
    for (sampler, n), r in runs.items():
        assert r["nfe"] == 3 and r["steps"] == 3 and r["guidance"] == DEFAULT_GUIDANCE and r["note"] == "test"
        assert len(r["per_class"]) == 10 and 0 <= r["accuracy"] <= 1
        assert r["ms_per_image"] > 0 and r["fd"] > 0
    for sampler in ("dpmpp_2m", "euler_maruyama"):   # same images; FD ~1e-4 here is a difference of O(1) traces,
        # so classifier features from a batch of 20 vs 10 (float rounding) move it by ~1e-10
        assert runs[(sampler, 20)]["fd_at"]["10"] == pytest.approx(runs[(sampler, 10)]["fd"], rel=1e-6, abs=1e-9)
    assert {"10", "20", "10000"} <= set(store["floor"])
    assert (tmp_path / "samplers.md").is_file() and (tmp_path / "quality_vs_nfe.png").is_file()


def test_every_score_models_default_is_checked_against_a_sweep():
    """Every non-student entry of MODEL_DEFAULTS was chosen by the two-evaluator sweep (bench/defaults.py), so the test
    below checks it; the students' are checked in test_distill. (bench/results/samplers.json, the v1-era
    one-classifier benchmark, no longer sets a default: its rule, `cheapest_within`, is tested above on its own.)"""
    from bench import defaults as bd
    from diffusion.pipeline import MODEL_DEFAULTS

    from diffusion.registry import model_spec

    swept = {r["model"] for r in bd.load_rows()}
    unchecked = [m for m in MODEL_DEFAULTS if model_spec(m).role != "student" and m not in swept]
    assert not unchecked, f"defaults with no sweep in bench/results/defaults.json: {unchecked}"


def test_a_larger_run_of_the_same_point_supersedes_the_smaller():
    store = {"floor": {}, "runs": []}
    small, other = _run("euler_maruyama", 20, 20, 30.0, n=200), _run("euler_maruyama", 50, 50, 20.0, n=200)
    for r in (small, other):
        bs.merge(store, r)
    bs.merge(store, _run("euler_maruyama", 20, 20, 25.0, n=1000))     # same seed and chunk: holds the 200 images
    assert sorted((r["steps"], r["n"]) for r in store["runs"]) == [(20, 1000), (50, 200)]
    bs.merge(store, _run("euler_maruyama", 20, 20, 31.0, n=200))      # a smaller rerun does not drop the larger
    assert sorted((r["steps"], r["n"]) for r in store["runs"]) == [(20, 200), (20, 1000), (50, 200)]


def test_defaults_follow_the_two_evaluator_rule_on_the_shipped_sweep():
    """For every model swept by bench/defaults.py (both feature spaces), MODEL_DEFAULTS is the rule's pick:
    rerunning the sweep and changing a default without the other fails here."""
    from bench import defaults as bd
    from diffusion.pipeline import MODEL_DEFAULTS

    from bench import defaults_v3 as dv

    rows = bd.load_rows()
    swept = sorted({r["model"] for r in rows} & set(MODEL_DEFAULTS))
    assert swept, "bench/results/defaults.json holds no sweep of a shipped model"
    v3_rows = dv.load_rows(dv.STORE)
    decided_by_v3 = {m for m in {r["model"] for r in v3_rows} if not dv.coverage_gaps(v3_rows, m)}
    for model in sorted(set(swept) - decided_by_v3):       # a model rule v3 has covered is checked below instead
        best = bd.pick(rows, model)["setting"]
        d = MODEL_DEFAULTS[model]
        assert (best["sampler"], best["steps"], best["guidance"]) == (d.sampler, d.steps, d.guidance), model


def test_defaults_are_rule_v3s_pick_wherever_its_sweep_covers_the_grid():
    """Rule v3 (bench/defaults_v3.py, bench/results/defaults_v3.json): a model whose sweep covers the guidance grid
    (w = 1 to the pick + 0.5 by 0.0625, the pick's sampler and steps) ships the pick; a model not yet covered keeps
    its earlier default (checked above), and the gaps are what the sweep must still measure."""
    from bench import defaults_v3 as dv
    from diffusion.guidance import SCHEDULE_KEYS, GuidanceSchedule
    from diffusion.pipeline import MODEL_DEFAULTS

    rows = dv.load_rows(dv.STORE)
    assert "pixel-cond" in {r["model"] for r in rows}, "bench/results/defaults_v3.json holds no pixel-cond sweep"
    for model in sorted({r["model"] for r in rows} & set(MODEL_DEFAULTS)):
        gaps = dv.coverage_gaps(rows, model)
        assert all(1.0 <= w and (w - 1.0) / dv.GRID == round((w - 1.0) / dv.GRID) for w in gaps), gaps
        if not gaps:
            best, d = dv.pick_v3(rows, model)["setting"], MODEL_DEFAULTS[model]
            assert (best["sampler"], best["steps"], best["guidance"], GuidanceSchedule.from_setting(best)) == (
                d.sampler, d.steps, d.guidance, d.schedule), model
            options = {k: v for k, v in best.items() if k not in ("sampler", "steps", "guidance", *SCHEDULE_KEYS)}
            assert options == dict(d.options), model


def test_autoguidance_report_picks_the_rules_best_and_lists_the_unguided_images_once():
    from bench import autoguidance as ag

    def r(bad, w, ratios):
        ev = {name: {"frechet_ratio": x, "kid_mean": 0.001, "precision": 0.8, "recall": 0.8,
                     "conditional_accuracy": float("nan")} for name, x in zip(("classifier", "classifier-resnet"), ratios)}
        return {"label": "m", "good": "/runs/x/ckpt-00009000", "bad": f"/runs/x/{bad}", "sampler": "dpmpp_2m_sde",
                "steps": 10, "guidance": w, "samples": 1000, "cpu": "cpu", "metrics": {
                    "evaluators": ev, "confident_rate": 0.8, "speck_rate": 0.01}}
    rows = [r("ckpt-00000500", 1.0, [3.0, 4.0]), r("ckpt-00001000", 1.0, [3.0, 4.0]),   # the same images twice
            r("ckpt-00000500", 2.0, [2.0, 3.5]), r("ckpt-00001000", 2.0, [3.0, 2.0]),   # worse-of-two 3.5 / 3.0
            r("ckpt-00001000", 3.0, [1.0, 3.2])]
    text = ag.report(rows, out=None)
    assert "**Pick at N = 1000: guide ckpt-00001000, w = 2** (worst FD ratio 3.00)" in text
    assert text.count("(none: w = 1 is the model alone)") == 1 and text.count("| ckpt-0000") == 3
    assert "/runs/x" not in text.split("## m")[1]                   # folder names, not the machine's paths


def test_batch_size_arms_see_the_same_images_at_the_same_checkpoints():
    from bench import batch_size as bsz

    def flag(flags, name):
        return flags[flags.index(name) + 1]
    for arm, (batch, lr) in bsz.ARMS.items():
        flags = bsz.arm_flags(arm, 128_000, 16_000)
        steps, every, warmup = (int(flag(flags, f)) for f in ("--steps", "--ckpt-every", "--warmup"))
        assert steps * batch == 128_000 and every * batch == 16_000 and warmup * batch == 200 * 64
        assert float(flag(flags, "--lr")) == pytest.approx(lr, rel=1e-5)
        assert flag(flags, "--guide-step") == "0" and int(flag(flags, "--keep")) == steps // every + 1
    assert bsz.ARMS["b128-sqrt-lr"][1] == pytest.approx(2e-3 * 2 ** 0.5)
    with pytest.raises(ValueError, match="multiple of every arm's batch size"):
        bsz.arm_flags("b128", 1000, 256)


def test_held_out_loss_is_the_fixed_draw_dsm_loss_in_any_chunking():
    import torch

    from bench import batch_size as bsz
    from diffusion.losses import dsm_loss, dsm_noise
    from diffusion.score import ScoreModel
    torch.manual_seed(0)
    model = ScoreModel(channels=(8, 16, 16), attention_levels=(), precond="edm").eval()
    x = torch.rand(12, 1, 28, 28)
    noise = dsm_noise(x, torch.Generator().manual_seed(3), t_sampling="edm", sde=model.sde)
    with torch.no_grad():
        whole = float(dsm_loss(model, x, noise=noise))
    assert bsz.held_out_loss(model, x, noise, chunk=4) == pytest.approx(whole, rel=1e-5)
    assert bsz.held_out_loss(model, x, noise, chunk=12) == pytest.approx(whole, rel=1e-5)


def test_defaults_store_keeps_rows_written_by_a_concurrent_sweep(tmp_path):
    """Two sweeps side by side: each write re-reads the store under a lock, so neither drops the other's rows."""
    from bench import defaults as bd

    def row(model, w, fd):
        return {"model": model, "samples": 1000, "setting": {"sampler": "dpmpp_2m", "steps": 10, "guidance": w},
                "metrics": {"fd": fd}}
    store = tmp_path / "defaults.json"
    bd.store_row(row("a", 1.0, 3.0), store)
    bd.store_row(row("b", 2.0, 4.0), store)         # the other sweep, started before "a" wrote
    rows = bd.store_row(row("a", 1.0, 2.5), store)  # a rerun of the same point replaces it
    assert sorted((r["model"], r["setting"]["guidance"], r["metrics"]["fd"]) for r in rows) == [
        ("a", 1.0, 2.5), ("b", 2.0, 4.0)]
    assert bd.load_rows(store) == rows and not store.with_suffix(".tmp").exists()


def test_defaults_sweep_samples_at_the_asked_precision_and_records_it(tiny_weights, tmp_path, monkeypatch):
    import train.evaluate
    from bench import defaults as bd

    class StubEvaluator:                      # the real one needs the shipped classifiers' 10k-image features
        def evaluate(self, images, labels):
            assert images.shape == (4, 1, 28, 28) and labels.tolist() == [0, 1, 2, 3]
            return {"evaluators": {"c": {"frechet_ratio": 1.0, "conditional_accuracy": 1.0}}, "speck_rate": 0.0}
    monkeypatch.setattr(train.evaluate, "load_evaluator", StubEvaluator)
    monkeypatch.setattr(bd, "STORE", tmp_path / "defaults.json")
    for precision in ("fp32", "bf16"):
        rows = bd.run("pixel-cond", tiny_weights, [("euler_maruyama", 2, 1.5)], samples=4, label=f"tiny-{precision}",
                      precision=precision)
        assert rows[-1]["precision"] == precision and rows[-1]["model"] == f"tiny-{precision}"
    assert len(bd.load_rows(tmp_path / "defaults.json")) == 2
