"""bench/backends.py on a tiny model: the A/B rows (reference against itself, an exported fp32 backend) and the report."""
from __future__ import annotations

import pytest
from factories import tiny_score

from bench.backends import REFERENCE, ab, write_report
from diffusion.backends import available


def test_ab_rows_and_report(tmp_path):
    if not available("onnxruntime"):
        pytest.skip("onnxruntime is not installed")
    res = ab(tiny_score(num_classes=10), "pixel-cond", [REFERENCE, "onnxruntime fp32"], images=4, reps=2)
    rows = {r["variant"]: r for r in res["rows"]}
    assert res["today"] in (REFERENCE, "eager bf16") and res["defaults"].startswith("dpmpp_2m_sde 10 steps")
    assert rows[REFERENCE]["max_abs_diff"] == 0.0 and rows[REFERENCE]["net_speedup"] == 1.0
    assert rows[REFERENCE]["net_calls"] == rows["onnxruntime fp32"]["net_calls"] == 10      # one call per step
    assert rows["onnxruntime fp32"]["max_abs_diff"] < 1e-3                                  # fp32: reordered sums
    assert rows[REFERENCE]["net_ms"] <= rows[REFERENCE]["total_ms"]
    meta = {"cpu": "test CPU", "threads": 2, "torch": "x", "load_before": "0", "versions": {}, "skipped": []}
    write_report({"generate": {**res, **meta, "load_after": "0"}}, tmp_path / "backends.md")
    text = (tmp_path / "backends.md").read_text()
    assert "## generate: pixel-cond, 4 images, dpmpp_2m_sde 10 steps" in text and "| onnxruntime fp32 |" in text
