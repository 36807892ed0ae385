"""bench/load.py: percentiles on hand values, refusals named by kind, the targets and the table, bad arguments, and
2 visitors x 2 requests against one launched app on tiny random models."""
import inspect
from pathlib import Path
import json
import types

import pytest

import diffusion.pipeline as dp
from bench import load as bl
from bench.app_server import tiny_weights
from ui.fair_queue import client_address
from ui.tab_generate import GenerateTab
from ui.tab_live import LiveTab


def test_percentiles_interpolate_between_order_statistics():
    # rank q/100 * (n - 1): p50 of 1..4 sits halfway between 2 and 3, p95 at 2.85 -> 3 + 0.85 * (4 - 3)
    assert bl.percentile([4, 1, 3, 2], 50) == pytest.approx(2.5)
    assert bl.percentile([4, 1, 3, 2], 95) == pytest.approx(3.85)
    assert bl.percentile([4, 1, 3, 2], 0) == 1 and bl.percentile([4, 1, 3, 2], 100) == 4
    # 21 values 0, 1, ..., 20: p95 is exactly the 20th order statistic (rank 19)
    assert bl.percentile(list(range(21)), 95) == pytest.approx(19.0)
    assert bl.percentile([7.0], 95) == 7.0
    assert bl.percentile([], 50) is None
    with pytest.raises(ValueError, match=r"q must be in \[0, 100\], got 101"):
        bl.percentile([1.0], 101)
    assert bl.latency_summary([1.0, 2.0, 3.0, 4.0]) == {"p50": 2.5, "p95": 3.85, "max": 4.0, "n": 4}
    assert bl.latency_summary([]) == {"p50": None, "p95": None, "max": None, "n": 0}


def test_a_phase_counts_completed_images_over_its_window_and_refusals_by_kind():
    records = [{"ok": True, "latency_s": s, "images": 16, "kind": None} for s in (1.0, 3.0)] + \
              [{"ok": False, "latency_s": None, "images": 16, "kind": k} for k in ("queue full", "queue full",
                                                                                   "client share")]
    phase = bl.summarise(4, records, window_s=8.0, cpu_s=12.0)
    assert phase["requests"] == 5 and phase["completed"] == 2 and phase["images"] == 32
    assert phase["images_per_s"] == 4.0                           # 32 images / 8 s, refused ones not counted
    assert phase["latency_s"]["p50"] == 2.0 and phase["latency_s"]["p95"] == 2.9
    assert phase["refused"] == {"client share": 1, "queue full": 2}
    assert phase["server_cpu_s_per_image"] == 0.375


def test_refusals_are_named_by_the_apps_messages_and_the_http_status():
    class HTTPStatusError(Exception):
        def __init__(self, status, text):
            super().__init__(f"Client error '{status}' for url 'http://127.0.0.1/gradio_api/queue/join'")
            self.response = types.SimpleNamespace(status_code=status, text=text)

    assert bl.error_kind(Exception("Queue is full: 15 requests are waiting")) == "queue full"
    assert bl.error_kind(HTTPStatusError(429, '{"detail": "Your address already has 8 requests waiting"}')) == \
        "client share"
    assert bl.error_kind(HTTPStatusError(429, '{"detail": "This session already has 4 requests"}')) == "session share"
    assert bl.error_kind(HTTPStatusError(502, "")) == "HTTP 502"
    assert bl.error_kind(Exception("steps / num_images: this request would take about 90 s here")) == "too much work"
    assert bl.error_kind(Exception("Stopped after 61 s: the app's limit per request is 60 s.")) == "time limit"
    assert bl.error_kind(TimeoutError()) == "no answer by the phase deadline"
    assert bl.error_kind(KeyError("x")).startswith("other (KeyError")


def test_requests_follow_the_handlers_argument_order_and_the_apps_defaults():
    api, inputs = bl.request_args("generate", 0, 1234)
    names = list(inspect.signature(GenerateTab.generate).parameters)[1:]
    assert api == "/generate"
    assert dict(zip(names, inputs)) == {"model": "pixel-cond", "digit": 3, "sampler": dp.DEFAULT_SAMPLER,
                                        "steps": dp.DEFAULT_STEPS, "guidance": dp.DEFAULT_GUIDANCE, "seed": 1234,
                                        "num_images": 16}
    api, inputs = bl.request_args("live", 0, 7)
    names = list(inspect.signature(LiveTab.live).parameters)[1:]
    assert api == "/live" and dict(zip(names, inputs)) == {"digit": 3, "steps": 4, "guidance": 2.0, "seed": 7,
                                                           "num_images": 16}
    assert [bl.request_args("mix", k, 0)[0] for k in range(4)] == ["/generate", "/live", "/generate", "/live"]
    # --settings tree: a checkout's own defaults, read from that checkout
    assert bl.tree_defaults(Path(__file__).resolve().parents[2]) == (dp.DEFAULT_SAMPLER, dp.DEFAULT_STEPS,
                                                                    dp.DEFAULT_GUIDANCE)
    assert bl.request_args("generate", 0, 5, ("heun", 7, 2.5))[1][2:5] == ["heun", 7, 2.5]


def test_each_visitor_is_its_own_public_address_to_the_fair_queue():
    seen = {client_address({k.lower(): v for k, v in bl.visitor_headers(k).items()}, "127.0.0.1")
            for k in range(300)}
    assert len(seen) == 300 and "127.0.0.1" not in seen


def _phase(images_per_s, p50, p95):
    return {"visitors": 0, "requests": 4, "completed": 4, "images_per_s": images_per_s, "refused": {"queue full": 1},
            "latency_s": {"p50": p50, "p95": p95, "max": p95, "n": 4}, "server_cpu_s": 3.0,
            "load_avg_start": [1.0, 1.0, 1.0]}


def test_targets_and_the_side_by_side_table():
    rows = {"before": {"repo": "/tmp/before-24", "commit": "0b4bb63",
                       "phases": {"1": _phase(16.0, 1.0, 1.1), "8": _phase(10.0, 12.0, 13.0)}},
            "after": {"repo": "/work/main", "commit": "abc1234",
                      "phases": {"1": _phase(16.0, 1.0, 1.2), "8": _phase(35.0, 2.5, 3.0)}}}
    t = bl.targets(rows)
    assert t["throughput_after_over_before"] == 3.5 and t["throughput_met"] is True
    assert t["p95_over_lone_p50"] == 3.0 and t["p95_met"] is False            # 3.0 s p95 vs a lone 1.0 s
    results = {"rows": rows, "targets": t, "settings": {"endpoint": "generate", "request": "/generate [...]",
                                                        "stop": "4 requests per visitor", "phase_timeout_s": 300,
                                                        "weights": "weights"},
               "machine": {"cpu": "AMD EPYC", "cores": 2, "load_avg_start": [1, 1, 1], "load_avg_end": [2, 2, 2],
                           "when": "now"}}
    table = bl.report(results)
    assert "| visitors | images/s before | images/s after |" in table
    assert "| 8 | 10.00 | 35.00 | 12.00 | 2.50 | 13.00 | 3.00 |" in table and table.count("| 3.50x |") == 1
    assert "3.50x (target >= 3x: met)" in table and "3.00x (target <= 2x: MISSED)" in table
    assert "0b4bb63" in table and "AMD EPYC (2 cores)" in table
    only_after = bl.targets({"after": rows["after"]})
    assert only_after["throughput_met"] is None and only_after["p95_met"] is False


@pytest.mark.parametrize("argv, message", [
    (["--visitors", "0,4"], "--visitors must list counts from 1 to 64, got '0,4'"),
    (["--visitors", "4,eight"], "--visitors must be comma-separated whole numbers such as 1,4,8,16, got '4,eight'"),
    (["--requests-per-visitor", "0"], "--requests-per-visitor must be >= 1, got 0"),
    (["--duration", "-5"], "--duration must be in (0, 3600] seconds, got -5"),
    (["--duration", "5", "--requests-per-visitor", "2"], "not allowed with argument"),
    (["--phase-timeout", "0"], "--phase-timeout must be in (0, 3600] seconds, got 0"),
    (["--before", "/nonexistent/checkout"], "--before: /nonexistent/checkout is not a checkout of the app"),
    (["--endpoint", "browse"], "argument --endpoint: invalid choice: 'browse'"),
])
def test_bad_arguments_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        bl.parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_weights_without_the_generate_model_are_refused_by_name(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bl.parse_args(["--weights-dir", str(tmp_path)])
    assert f"--weights-dir: {tmp_path} has no pixel-cond/model.safetensors" in capsys.readouterr().err
    args = bl.parse_args(["--visitors", "8,4", "--weights-dir", str(tiny_weights(tmp_path / "w"))])
    assert args.visitors == [1, 4, 8] and args.requests_per_visitor == 4     # the lone visitor always runs


@pytest.mark.slow
def test_two_visitors_two_requests_against_a_launched_app(tmp_path):
    out = tmp_path / "load.json"
    weights = tiny_weights(tmp_path / "weights")
    returned = bl.main(["--visitors", "2", "--requests-per-visitor", "2", "--weights-dir", str(weights),
                        "--out", str(out), "--phase-timeout", "120"])
    results = json.loads(out.read_text())
    assert results == json.loads(json.dumps(returned))
    assert set(results) == {"machine", "settings", "rows", "targets"}
    assert set(results["machine"]) == {"cpu", "cores", "load_avg_start", "load_avg_end", "when"}
    assert list(results["rows"]) == ["after"] and set(results["rows"]["after"]["phases"]) == {"1", "2"}
    for n, phase in results["rows"]["after"]["phases"].items():
        assert set(phase) == {"visitors", "requests", "completed", "images", "window_s", "images_per_s",
                              "latency_s", "refused", "server_cpu_s", "server_cpu_s_per_image", "load_avg_start",
                              "load_avg_end", "rss_end_mib", "client_cpu_s"}
        assert phase["requests"] == phase["completed"] == 2 * int(n) and phase["refused"] == {}
        assert phase["images"] == 16 * phase["completed"] and phase["images_per_s"] > 0
        assert 0 < phase["latency_s"]["p50"] <= phase["latency_s"]["p95"] <= phase["latency_s"]["max"]
        assert phase["server_cpu_s"] > 0
    assert results["targets"]["throughput_met"] is None                    # no --before: nothing to compare
    table = out.with_suffix(".md").read_text()
    assert "| 2 |" in table and "| 1 |" in table and "2/2" in table and "4/4" in table
