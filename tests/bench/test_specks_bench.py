"""bench/specks.py: the deterministic-vs-stochastic speck table (parsing, same-noise rows, merging, the CLI)."""
import json
import math

import pytest
import torch

from bench import specks
from diffusion.metrics import speck_mask
from tests.factories import tiny_score


def test_parse_run_reads_sampler_and_steps_and_names_bad_input():
    assert specks.parse_run("ddim:16") == ("ddim", 16)
    assert specks.parse_run("dpmpp_2m_sde:10") == ("dpmpp_2m_sde", 10)
    for bad in ("ddim", "ddim:", "ddim:0", "ddim:x", "ddim:-2"):
        with pytest.raises(ValueError, match="SAMPLER:STEPS"):
            specks.parse_run(bad)
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        specks.parse_run("nope:4")


def test_speck_row_is_the_speck_rate_of_the_seeded_samples():
    model = tiny_score(num_classes=10)
    row = specks.speck_row(model, "ddim", 3, 1.0, n=30, seed=7)
    assert (row["sampler"], row["steps"], row["nfe"], row["n"], row["seed"]) == ("ddim", 3, 3, 30, 7)
    # the same images by hand: noise from the seed, labels i % 10, one chunk (n < CHUNK)
    from diffusion.samplers import sample
    x_T = torch.randn(30, 1, 28, 28, generator=torch.Generator().manual_seed(7)) * model.sde.std_max
    x, _ = sample("ddim", model, x_T, torch.arange(30) % 10, num_steps=3, guidance=1.0,
                  generator=torch.Generator().manual_seed(8))
    expected = float(speck_mask(x.clamp(0, 1)).double().mean())
    assert row["speck_rate"] == pytest.approx(expected)
    assert row["sd"] == pytest.approx(math.sqrt(expected * (1 - expected) / 30))
    assert specks.speck_row(model, "ddim", 3, 1.0, n=30, seed=7)["speck_rate"] == row["speck_rate"]


def test_speck_row_finds_a_planted_speck():
    """A 'model' whose denoiser returns a blank image with one lone dot in every other image specks 50%."""
    model = tiny_score(num_classes=10)

    def denoise(x, sigma, labels=None, guidance=1.0):
        out = torch.zeros_like(x)
        out[:, :, 10:18, 12:14] = 1.0                  # the digit: a bar
        out[::2, :, 2, 2] = 1.0                        # a one-pixel speck far from it, in images 0, 2, 4, ...
        return out
    model.denoise = denoise
    row = specks.speck_row(model, "ddim", 2, 1.0, n=20)
    assert row["speck_rate"] == pytest.approx(0.5)


def test_merge_replaces_a_measured_row_and_appends_new_ones():
    a = {"source": "m", "checkpoint": "weights", "sampler": "ddim", "steps": 16, "guidance": 1.0, "n": 10, "seed": 1,
         "speck_rate": 0.1}
    b = {**a, "steps": 32, "speck_rate": 0.2}
    a2, c = {**a, "speck_rate": 0.05}, {**a, "sampler": "heun"}
    assert specks.merge([a, b], [a2, c]) == [a2, b, c]


def test_load_source_refuses_a_folder_that_is_neither(tmp_path):
    with pytest.raises(SystemExit, match="neither a weights folder"):
        specks.load_source(tmp_path)


def test_cli_writes_the_store_and_report_and_names_bad_input(tmp_path, capsys):
    weights = tmp_path / "tiny-cond"
    tiny_score(num_classes=10).save_pretrained(weights)
    store = tmp_path / "specks.json"
    store.write_text(json.dumps({"rows": [], "real": {"source": "real test digits", "n": 10000,
                                                       "speck_rate": 0.007, "sd": 0.0008}}))
    args = ["--source", str(weights), "--runs", "ddim:2", "euler_ancestral:2", "--n", "20", "--store", str(store)]
    assert specks.main(args) == 0
    rows = json.loads(store.read_text())["rows"]
    assert [(r["source"], r["checkpoint"], r["sampler"], r["steps"]) for r in rows] == [
        ("tiny-cond", "weights", "ddim", 2), ("tiny-cond", "weights", "euler_ancestral", 2)]
    report = store.with_suffix(".md").read_text()
    assert "Real test digits: **0.70%**" in report and "| tiny-cond | weights | euler_ancestral | 2 | 2 | 1 | 20 |" in report
    assert specks.main(args[:3] + ["ddim:2", "--n", "20", "--store", str(store)]) == 0     # measured again: replaced
    assert len(json.loads(store.read_text())["rows"]) == 2

    with pytest.raises(SystemExit, match="SAMPLER:STEPS"):
        specks.main(["--source", str(weights), "--runs", "ddim16", "--store", str(store)])
    with pytest.raises(SystemExit, match="--source is required"):
        specks.main(["--store", str(store)])
    with pytest.raises(SystemExit, match="no store at"):
        specks.main(["--report-only", "--store", str(tmp_path / "missing.json")])
