"""bench/widths.py: narrower U-Nets' FLOPs and time (parsing, the FLOP count's scaling, the report)."""
import pytest

from bench import widths as bw


def test_parse_width_reads_three_channel_counts_and_names_bad_input():
    assert bw.parse_width("12,24,48") == (12, 24, 48)
    with pytest.raises(ValueError, match="comma-separated"):
        bw.parse_width("12;24;48")
    with pytest.raises(ValueError, match="multiple of 4"):
        bw.parse_width("10,20,42")          # the attention level: 4 heads
    assert bw.parse_width("10,20,40") == (10, 20, 40)
    for bad in ("16,32", "2,16,32"):
        with pytest.raises(ValueError, match="three channel counts of at least 4"):
            bw.parse_width(bad)


def test_measure_counts_the_shipped_unet_and_fewer_flops_for_half_the_channels():
    rows = bw.measure([bw.SHIPPED, (8, 16, 32)], batch=2, reps=1)
    shipped, half = rows
    assert shipped["params"] == 678817                     # the shipped pixel-cond's count (train/records)
    assert shipped["mflop"] == pytest.approx(101.6, abs=0.1)   # docs/performance.md's figure
    # convolutions and matmuls scale with channels^2: half the channels, between 3x and 4x fewer FLOPs
    assert 3.0 < shipped["mflop"] / half["mflop"] < 4.0
    assert all(r["best_s"] <= r["median_s"] for r in rows)
    text = bw.report(rows, 2, 1, "test CPU")
    assert "| 16,32,64 | 0.679 M | 101.6 |" in text and "| 1.00x | 1.00x |" in text


def test_cli_refuses_a_bad_width(tmp_path):
    with pytest.raises(SystemExit, match="multiple of 4"):
        bw.main(["--widths", "16,32,63", "--out", str(tmp_path / "w.md")])
