"""bench/defaults_v3.py: the queue, a run end to end on tiny models with a real (tiny) Evaluator, and the report."""
import pytest
import torch

from bench import defaults_v3 as dv


def test_queue_lines_parse_with_extras_and_comments():
    assert dv.parse_setting("pixel-cond dpmpp_2m_sde 10 1.0625  # the first grid point") == (
        "pixel-cond", {"sampler": "dpmpp_2m_sde", "steps": 10, "guidance": 1.0625})
    assert dv.parse_setting("latent-cond dpmpp_2m_sde 10 1.5 eta=0.5")[1]["eta"] == 0.5
    assert dv.parse_setting("   # only a comment") is None
    with pytest.raises(ValueError, match="needs 'model sampler steps w"):
        dv.parse_setting("pixel-cond dpmpp_2m 10")
    with pytest.raises(ValueError, match="extra must be key=value, got 'eta'"):
        dv.parse_setting("pixel-cond dpmpp_2m 10 1.0 eta")


def test_a_queue_runs_once_per_setting_and_the_report_puts_real_digits_first(tiny_weights, tmp_path, monkeypatch):
    import train.evaluate
    from diffusion.metrics import Classifier, Evaluator, PixelPCA, ResNetClassifier

    g = torch.Generator().manual_seed(0)
    real = torch.rand(40, 1, 28, 28, generator=g)
    torch.manual_seed(0)
    evaluator = Evaluator({"classifier": Classifier(width=4).eval(), "classifier-resnet": ResNetClassifier(width=4).eval()},
                          real[:20], torch.arange(20) % 10, real[20:], views={"pixel-pca": PixelPCA(real[20:], 4)})
    monkeypatch.setattr(train.evaluate, "load_evaluator", lambda weights_dir: evaluator)
    queue = tmp_path / "queue.txt"
    queue.write_text("pixel-cond euler_maruyama 2 1.0\npixel-cond euler_maruyama 2 1.5\n"
                     "pixel-cond dpmpp_2m_sde 2 1.5 eta=0.5\npixel-cond euler_maruyama 2 1.0\n"
                     "pixel-cond dpmpp_2m 2 3.0 w_hi=0.5\n")
    store = tmp_path / "v3.json"
    dv.run_queue(queue, 10, tiny_weights, None, store=store)
    rows = dv.load_rows(store)
    assert sorted((r["setting"]["sampler"], r["setting"]["guidance"], r["setting"].get("eta")) for r in rows) == [
        ("dpmpp_2m", 3.0, None), ("dpmpp_2m_sde", 1.5, 0.5), ("euler_maruyama", 1.0, None), ("euler_maruyama", 1.5, None)]
    assert dv.next_setting(queue, 10, rows) is None                       # all done: a rerun samples nothing
    assert all(r["metrics"]["real"]["samples"] == 10 and "pixel-pca" in r["metrics"]["views"] for r in rows)
    text = dv.report(rows, out=None)
    table = text.split("## pixel-cond")[1]
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert len(lines) == 7 and lines[2].startswith("| **real digits** (N = 10, 2 subsets) |")   # header, rule, real, 3
    pick = dv.pick_v3(rows, "pixel-cond")
    assert f"**Pick: {dv._setting_text(pick['setting'])}**" in table
    assert sum(line.startswith(f"| **{dv._setting_text(pick['setting'])}**") for line in lines) == 1
    assert any(line.startswith("| dpmpp_2m_sde 2, w = 1.5, eta = 0.5 |") for line in lines) or \
        pick["setting"].get("eta") == 0.5
    assert any("dpmpp_2m 2, w = 3 on sigma in (0, 0.5]" in line for line in lines)   # the schedule row, named

    # the card's compact table and the README's line: every row, the pick once in bold, the closest loser named
    compact = dv.compact_table(rows, "pixel-cond")
    assert compact[0] == dv.COMPACT and compact[2].startswith("| real digits (N = 10) |") and len(compact) == 3 + 4
    assert [line.startswith(f"| **{dv._setting_text(pick['setting'])}** |") for line in compact[3:]].count(True) == 1
    assert dv.compact_table(rows, "latent-cond") == []
    head, rule, line = dv.readme_table(rows, ["pixel-cond", "latent-cond"])
    assert line.startswith(f"| `pixel-cond` | {dv._setting_text(pick['setting'])} (misses ") and "| 4 |" in line
    runner = dv.choose_setting_v3([r for r in rows if r is not pick])
    assert line.rstrip(" |").split("| ")[-1].startswith(dv._setting_text(runner["setting"]))


def test_a_schedule_row_samples_what_the_pipeline_samples_with_that_schedule(tiny_weights, tmp_path, monkeypatch):
    """The queue's w_lo / w_hi / w_ramp keys reach the pipeline as a GuidanceSchedule, not the sampler."""
    import train.evaluate
    from diffusion.guidance import GuidanceSchedule

    seen = []

    def fake_generate(pipe, n, sampler, steps, guidance, seed, **extras):
        seen.append(extras)
        raise SystemExit("stop after the first row")
    monkeypatch.setattr(train.evaluate, "generate", fake_generate)
    monkeypatch.setattr(train.evaluate, "load_evaluator", lambda weights_dir: None)
    queue = tmp_path / "queue.txt"
    queue.write_text("pixel-cond dpmpp_2m_sde 2 2.0 w_lo=0.3 w_hi=5 w_ramp=1 eta=0.5\n")
    with pytest.raises(SystemExit):
        dv.run_queue(queue, 10, tiny_weights, None, store=tmp_path / "v3.json")
    assert seen == [{"eta": 0.5, "guidance_schedule": GuidanceSchedule(0.3, 5.0, True)}]


def test_coverage_gaps_list_the_grid_from_one_to_the_pick_plus_half_not_yet_measured():
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "diffusion"))
    from test_metrics_v3 import v3_row   # rows whose metrics rule v3 reads, built by hand

    def at(w, fd, **extras):
        r = v3_row(w, (0.995, 0.995), 0.005, 0.80, (fd, 0.1 * fd, 2 * fd))
        r["model"], r["samples"] = "m", 2000
        r["setting"].update(extras)
        return r
    rows = [at(1.0, 1.3), at(1.125, 1.1), at(1.25, 1.2), at(1.1875, 1.4, eta=0.5)]   # pick: w = 1.125, eta = 1
    assert dv.pick_v3(rows, "m")["setting"]["guidance"] == 1.125 and "eta" not in dv.pick_v3(rows, "m")["setting"]
    # the grid 1 .. 1.625 by 0.0625, less 1, 1.125 and 1.25 (the eta = 0.5 row is another setting)
    assert dv.coverage_gaps(rows, "m") == [1.0625, 1.1875, 1.3125, 1.375, 1.4375, 1.5, 1.5625, 1.625]
    rows += [at(w, 1.5) for w in (1.0625, 1.1875, 1.3125, 1.375, 1.4375, 1.5, 1.5625, 1.625)]
    assert dv.coverage_gaps(rows, "m") == []


def test_the_cards_tables_file_is_the_stored_sweeps_rendering():
    """bench/results/defaults_v3_cards.json (what the model cards show) is rewritten with every report: stale if not."""
    import json

    rows = dv.load_rows(dv.STORE)
    assert json.loads(dv.CARD_TABLES.read_text(encoding="utf-8")) == dv.card_tables(rows)


def test_a_candidate_store_gets_its_own_report_and_leaves_the_shipped_one_alone(tmp_path):
    """--store: candidate weights' rows are reported beside their file; the shipped report and card tables stay."""
    import json
    shipped = [r for r in dv.load_rows(dv.STORE) if r["model"] == "pixel-cond-distilled-1step"]
    store = tmp_path / "candidates.json"
    store.write_text(json.dumps(shipped))
    before = {p: p.stat().st_mtime_ns for p in (dv.STORE.with_suffix(".md"), dv.CARD_TABLES)}
    dv.main(["--report-only", "--store", str(store)])
    text = store.with_suffix(".md").read_text()
    assert "## pixel-cond-distilled-1step" in text and "## pixel-cond\n" not in text
    assert text.startswith("# Candidate weights") and f"(rows in {store})" in text
    assert f"**Pick: {dv._setting_text(dv.pick_v3(shipped, 'pixel-cond-distilled-1step')['setting'])}**" in text
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_a_row_that_names_no_eta_measures_the_samplers_own_not_the_models_default(tiny_weights, tmp_path,
                                                                                   monkeypatch):
    """The 2-step student's default sampler carries eta = 0.5 (its SamplingDefaults.options): a row `ddim 2 1.5`
    must still run ddim's own eta = 0, and a row naming eta runs that; another sampler gets nothing added."""
    import train.evaluate
    seen = []

    def fake_generate(pipe, n, sampler, steps, guidance, seed, **extras):
        seen.append({k: v for k, v in extras.items() if k != "guidance_schedule"})
        raise SystemExit("one row is enough")
    monkeypatch.setattr(train.evaluate, "generate", fake_generate)
    monkeypatch.setattr(train.evaluate, "load_evaluator", lambda weights_dir: None)
    for line in ("pixel-cond-distilled-2step ddim 2 1.5", "pixel-cond-distilled-2step ddim 2 1.5 eta=0.25",
                 "pixel-cond-distilled-2step euler_ancestral 2 1.5"):
        (tmp_path / "q.txt").write_text(line + "\n")
        with pytest.raises(SystemExit):
            dv.run_queue(tmp_path / "q.txt", 10, tiny_weights, None, store=tmp_path / "v3.json")
    assert seen == [{"eta": 0.0}, {"eta": 0.25}, {}]


def test_a_report_of_a_missing_store_is_refused_by_name(tmp_path):
    with pytest.raises(SystemExit, match="no such rows file"):
        dv.main(["--report-only", "--store", str(tmp_path / "nope.json")])
