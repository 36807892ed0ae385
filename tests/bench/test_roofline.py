"""bench/roofline.py and its two helpers: FLOP counts against hand computations, the rate arithmetic, the report's
columns, the request breakdown's arithmetic and timers on a tiny app, the backend adapter, bad arguments.
No timing assertions: only that times are positive and add up."""
import json
import sys

import pytest
import torch
from torch import nn

from bench import roofline as rl
from bench import roofline_backends as rb
from bench import roofline_requests as rr
from diffusion.autoguidance import AutoGuided
from diffusion.pipeline import Pipeline
from factories import tiny_model, tiny_score, tiny_students


def test_flops_of_a_conv_and_a_linear_are_twice_their_macs():
    conv = nn.Conv2d(1, 8, 3, padding=1, bias=False)
    # MACs = output pixels (28 x 28) x out channels (8) x in channels (1) x kernel (3 x 3)
    assert rl.count_flops(conv, torch.zeros(1, 1, 28, 28)) == 2 * 28 * 28 * 8 * 1 * 9
    linear = nn.Linear(16, 32)
    assert rl.count_flops(linear, torch.zeros(4, 16)) == 2 * 4 * 16 * 32


def test_decoder_flops_match_the_hand_count_of_its_transposed_convolutions():
    ae = tiny_model("autoencoder")                    # hidden 8, latents (4, 10, 10)
    net = rl.decoder_network("ae decoder", ae)
    # a transposed conv's MACs: input pixels x C_in x C_out x k^2; the last layer is a plain conv at 28 x 28
    macs = 10 * 10 * 4 * 8 * 9 + 12 * 12 * 8 * 8 * 9 + 14 * 14 * 8 * 4 * 16 + 28 * 28 * 4 * 1 * 9
    assert net.flops_per_image() == 2 * macs


def _pipelines():
    cond = tiny_model("pixel-cond")
    guided = AutoGuided(tiny_score(0, autoguide="pixel-uncond-guide"), tiny_model("pixel-uncond", seed=1))
    student = tiny_students(cond, names=["pixel-cond-distilled"])["pixel-cond-distilled"]
    return {"pixel-cond": Pipeline(cond, name="pixel-cond"),
            "latent-cond": Pipeline(tiny_model("latent-cond"), tiny_model("autoencoder"), name="latent-cond"),
            "pixel-uncond": Pipeline(guided, name="pixel-uncond"),
            "pixel-cond-distilled": Pipeline(student, name="pixel-cond-distilled")}


def test_networks_of_lists_every_network_once_and_scales_flops_with_the_batch(one_thread):
    nets = rl.networks_of(_pipelines())
    assert [(n.name, n.role) for n in nets] == [
        ("pixel-cond", "score"), ("latent-cond", "score"), ("latent-cond decoder", "decoder"),
        ("pixel-uncond", "score"), ("pixel-uncond-guide", "guide"), ("pixel-cond-distilled", "student")]
    for net in nets:
        assert rl.count_flops(net.call(3)) == 3 * net.flops_per_image() > 0
    # the student takes w as an input: one call on B images, a few more FLOPs than its teacher (the w embedding)
    assert nets[5].flops_per_image() > nets[0].flops_per_image()


def test_rate_arithmetic_and_its_errors():
    assert rl.gflops(2e9, 0.5) == 4.0
    assert rl.percent_of(25.0, 200.0) == 12.5
    with pytest.raises(ValueError, match=r"seconds must be > 0, got 0"):
        rl.gflops(1e9, 0)
    with pytest.raises(ValueError, match=r"flops must be >= 0, got -1"):
        rl.gflops(-1, 1.0)
    with pytest.raises(ValueError, match=r"peak must be > 0, got 0"):
        rl.percent_of(1.0, 0)
    with pytest.raises(ValueError, match=r"precision must be one of fp32, bf16, got 'fp16'"):
        rl.precision_context("fp16")
    with pytest.raises(ValueError, match=r"precision must be one of fp32, bf16, got 'int8'"):
        rl.matmul_rate("int8")
    with pytest.raises(ValueError, match=r"reps must be >= 1, got 0"):
        rl.time_call(lambda: None, 0)
    with pytest.raises(ValueError, match=r"reps must be >= 1, got 0"):
        rl.time_interleaved({"a": lambda: None}, 0)


def test_interleaved_timing_calls_every_run_in_turn_and_drops_one_that_fails():
    calls = []

    def failing():
        calls.append("b")
        raise RuntimeError("b broke")
    timed, errors = rl.time_interleaved({"a": lambda: calls.append("a"), "b": failing,
                                         "c": lambda: calls.append("c")}, reps=2, warmup=1)
    assert calls == ["a", "b", "c", "a", "c", "a", "c"]
    assert set(timed) == {"a", "c"} and errors == {"b": {"error": "RuntimeError: b broke"}}
    assert all(median >= best >= 0 for best, median in timed.values())


def test_matmul_rate_is_positive_for_both_precisions():
    assert rl.matmul_rate("fp32", n=64, reps=1) > 0
    assert rl.matmul_rate("bf16", n=64, reps=1) > 0


def test_every_cell_is_flops_over_the_best_time_against_its_precisions_matmul(one_thread):
    nets = rl.networks_of({"pixel-cond": _pipelines()["pixel-cond"]})
    rates = {"fp32": 50.0, "bf16": 200.0}
    rows = rl.measure_networks(nets, [2, 4], 1, rates, log=lambda *_: None)
    assert [(r["network"], r["batch"]) for r in rows] == [("pixel-cond", 2), ("pixel-cond", 4)]
    for r in rows:
        assert r["gflop_per_call"] == pytest.approx(r["mflop_per_image"] * r["batch"] / 1e3)
        for col, precision in (("fp32", "fp32"), ("bf16", "bf16")):
            c = r["columns"][col]
            assert c["median_s"] >= c["best_s"] > 0
            assert c["gflops"] == pytest.approx(r["gflop_per_call"] / c["best_s"])
            assert c["pct_of_matmul"] == pytest.approx(100 * c["gflops"] / rates[precision])


def test_a_column_that_fails_records_its_error_and_the_others_still_run(one_thread):
    def broken(net, batch):
        raise RuntimeError("no such backend here\nsecond line")

    def fails_when_run(net, batch):
        def run():
            raise ValueError("cannot run this")
        return run
    nets = rl.networks_of({"pixel-cond": _pipelines()["pixel-cond"]})
    rows = rl.measure_networks(nets, [2], 1, {"fp32": 1.0, "bf16": 1.0}, rl.variants({"broken": ("fp32", broken), "late": ("bf16", fails_when_run)}), log=lambda *_: None)
    assert list(rows[0]["columns"]) == ["fp32", "bf16", "broken", "late"]
    assert rows[0]["columns"]["broken"] == {"error": "RuntimeError: no such backend here"}
    assert rows[0]["columns"]["late"] == {"error": "ValueError: cannot run this"}
    assert rows[0]["columns"]["fp32"]["gflops"] > 0
    table = rl.network_table(rows, ["fp32", "bf16", "broken", "late"])
    assert "| RuntimeError: no such backend here | ValueError: cannot run this |" in table[2]


def _fake_requests():
    s = {"network": 0.5, "decode": 0.0, "bookkeeping": 0.1, "images": 0.05, "gif": 0.1, "classifier": 0.02,
         "handler other": 0.03, "handler": 0.8, "png": 0.04, "wall": 0.81, "e2e": 1.0, "e2e_median": 0.9,
         "gradio": 0.16}
    return {"Generate": {"settings": "pixel-cond, 16 images", "runs": [s], "e2e_runs": [s], "summary": s}}


def test_report_has_every_column_and_round_trips_as_json(tmp_path):
    decoder_error = {"error": "ValueError: a backend accelerates score networks, not the decoder"}
    rows = [{"network": "pixel-cond", "role": "score", "batch": 16, "mflop_per_image": 101.6,
             "gflop_per_call": 1.6256, "columns": {
                 c: {"best_s": 0.02, "median_s": 0.03, "gflops": 81.28, "pct_of_matmul": 40.0, "peak": "fp32"}
                 for c in ("fp32", "bf16", "openvino bf16")}},
            {"network": "latent-cond decoder", "role": "decoder", "batch": 16, "mflop_per_image": 6.3,
             "gflop_per_call": 0.1, "columns": {
                 "fp32": {"best_s": 0.002, "median_s": 0.003, "gflops": 50.0, "pct_of_matmul": 50.0, "peak": "fp32"},
                 "bf16": {"error": "RuntimeError: " + "x" * 100}, "openvino bf16": decoder_error}}]
    rates = {"fp32": 80.0, "bf16": 350.0}
    result = {"argv": ["--quick"], "reps": 2, "batches": [16], "matmul_reps": 8, "matmul_gflops": rates,
              "matmul_start": rates, "matmul_end": {"fp32": 70.0, "bf16": 300.0},
              "machine": {"cpu": "Test CPU", "torch": "2.x", "threads": 2, "cores": 2,
                          "load_start": [0.5, 0.4, 0.3], "load_end": [0.6, 0.5, 0.4]},
              "backends": ["openvino"], "columns": ["fp32", "bf16", "openvino bf16"], "networks": rows,
              "missing": [], "wall_s": 12.0, "requests": _fake_requests()}
    text = rl.write_report(result, tmp_path)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| network |"))
    assert header == "| network | batch | MFLOP / image | GFLOP / call | fp32 | bf16 | openvino bf16 |"
    row = next(line for line in lines if line.startswith("| pixel-cond |"))
    assert row.count("|") == header.count("|")
    assert row.endswith("| 20.0 ms (30.0) · 81.3 GFLOP/s · 40% |")
    dec = next(line for line in lines if line.startswith("| latent-cond decoder |"))
    assert dec.count("|") == header.count("|")
    assert f"| RuntimeError: {'x' * 46} | n/a (score networks only) |" in dec
    assert "fp32 80.0 GFLOP/s" in text and "bf16 350.0 GFLOP/s" in text and "Test CPU" in text
    assert "end 70.0 / 300.0" in text and "0.5 / 0.4 / 0.3" in text
    for label in rr.LABELS.values():
        assert f"| {label} |" in text
    assert "| network (score U-Net forward) | 500.0 ms (50%) |" in text
    assert json.loads((tmp_path / "roofline.json").read_text()) == result
    assert (tmp_path / "roofline.md").read_text() == text


def test_apply_rates_reads_each_cell_against_its_own_precision():
    rows = [{"columns": {"fp32": {"gflops": 40.0, "peak": "fp32"}, "ov": {"gflops": 40.0, "peak": "bf16"},
                         "broken": {"error": "x"}}}]
    rl.apply_rates(rows, {"fp32": 80.0, "bf16": 160.0})
    assert rows[0]["columns"]["fp32"]["pct_of_matmul"] == 50.0 and rows[0]["columns"]["ov"]["pct_of_matmul"] == 25.0
    assert rows[0]["columns"]["broken"] == {"error": "x"}


def test_split_and_summary_arithmetic():
    raw = {"stream": 1.0, "network": 0.6, "decode": 0.1, "handler": 1.5, "images": 0.2, "gif": 0.1, "classifier": 0.05}
    parts = rr.split(raw)
    assert parts["bookkeeping"] == pytest.approx(0.3)            # stream - network - decode
    assert parts["handler other"] == pytest.approx(0.15)         # handler - stream - images - gif - classifier
    runs = [{**parts, "png": 0.1, "wall": 1.6}, {**parts, "png": 0.3, "wall": 1.8}, {**parts, "png": 0.2, "wall": 8.6}]
    e2e = [{**parts, "handler": 1.5, "e2e": 2.0}, {**parts, "handler": 1.4, "e2e": 3.0},
           {**parts, "handler": 1.6, "e2e": 2.2}]
    s = rr.summarise(runs, e2e)
    assert s["png"] == pytest.approx(0.2) and s["wall"] == pytest.approx(4.0) and s["e2e"] == pytest.approx(2.4)
    assert s["e2e_median"] == 2.2 and s["handler"] == pytest.approx(1.5)
    assert s["gradio"] == pytest.approx((0.5 + 1.6 + 0.6) / 3 - 0.2)      # mean(e2e - handler) - png
    # the parts add up to the end-to-end time
    inside = sum(s[k] for k in ("network", "decode", "bookkeeping", "images", "gif", "classifier", "handler other"))
    assert inside == pytest.approx(s["handler"])
    assert s["handler"] + s["png"] + s["gradio"] == pytest.approx(s["e2e"])
    alone = rr.summarise(runs, [])                               # no gradio: the in-process runs' parts
    assert "gradio" not in alone and alone["handler"] == pytest.approx(1.5)


def test_bad_arguments_are_clear_errors(capsys, tmp_path):
    cases = [(["--reps", "0"], "argument --reps: must be a whole number >= 1, got '0'"),
             (["--batches", "16", "x"], "argument --batches: must be a whole number >= 1, got 'x'"),
             (["--weights-dir", str(tmp_path / "nope")], f"--weights-dir: {tmp_path / 'nope'} is not a folder")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            rl.parse_args(argv)
        assert e.value.code == 2
        assert message in capsys.readouterr().err
    quick = rl.parse_args(["--quick", "--weights-dir", str(tmp_path)])
    assert (quick.reps, quick.batches) == (2, list(rl.QUICK_BATCHES))


def test_backend_adapter_without_and_with_a_backends_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusion.backends", None)          # import raises ImportError
    assert rb.choose_backends(None) == [] and rb.choose_backends(["all"]) == []
    with pytest.raises(ValueError, match=r"--backends: openvino not offered; valid: all, none \(there is no "):
        rb.choose_backends(["openvino"])
    fake = type(sys)("diffusion.backends")
    fake.BACKENDS = ("auto", "eager", "channels_last", "onnxruntime", "openvino")
    fake.available = lambda name: name != "openvino"
    monkeypatch.setitem(sys.modules, "diffusion.backends", fake)
    assert rb.choose_backends(["all"]) == ["channels_last", "onnxruntime"]
    with pytest.raises(ValueError, match=r"--backends: tvm not offered; valid: all, channels_last, onnxruntime, "
                                         r"openvino"):
        rb.choose_backends(["tvm"])
    columns = rb.backend_columns(["channels_last", "onnxruntime"])
    assert {name: peak for name, (peak, _) in columns.items()} == {
        "channels_last fp32": "fp32", "channels_last bf16": "bf16", "onnxruntime fp32": "fp32"}
    decoder = rl.decoder_network("d", tiny_model("autoencoder"))
    with pytest.raises(ValueError, match="not the decoder"):
        columns["channels_last fp32"][1](decoder, 2)


def test_a_backend_column_runs_the_network_as_the_pipeline_does(one_thread):
    pytest.importorskip("diffusion.backends")
    net = rl.networks_of({"pixel-cond": _pipelines()["pixel-cond"]})[0]
    make = rb.backend_columns(["channels_last"])["channels_last fp32"][1]
    run = make(net, 3)                    # built outside inference_mode, as measure_networks builds it
    with torch.inference_mode():
        assert torch.allclose(run(), net.call(3)(), atol=1e-4)
    assert "forward" not in net.module.net.__dict__          # the backend went into a copy, not the model measured


def test_timers_on_a_tiny_app_add_up_and_the_handlers_are_restored(tiny_weights, one_thread):
    import app
    import ui

    original = ui.GenerateTab.__dict__["generate"]
    timers, records = rr.Timers(), []
    with rr.timed_handlers(timers, lambda request, parts: records.append((request, parts))):
        demo = app.create_demo(weights_dir=tiny_weights, device=torch.device("cpu"), max_seconds=60)
        with rr.instrument(demo.lab, timers):
            reqs = {r.name: r for r in rr.default_requests(demo)}
            assert list(reqs) == ["Generate", "Live", "Pixel vs latent"]
            gen = rr.in_process(reqs["Generate"], demo, records, seed=1)
            cmp = rr.in_process(reqs["Pixel vs latent"], demo, records, seed=1)
            live = rr.in_process(reqs["Live"], demo, records, seed=1)
    assert [name for name, _ in records] == ["Generate", "Pixel vs latent", "Live"]
    assert ui.GenerateTab.__dict__["generate"] is original
    assert "stream" not in demo.lab.pipelines["pixel-cond"].__dict__ and "write_gif" not in demo.lab.__dict__
    for r in (gen, cmp, live):
        assert r["network"] > 0 and r["images"] > 0 and r["png"] > 0 and r["bookkeeping"] > 0
        assert r["handler"] >= r["network"] + r["decode"] + r["images"]
        assert r["wall"] >= r["handler"]
    assert gen["gif"] > 0 and gen["decode"] == 0
    assert cmp["decode"] > 0 and cmp["gif"] == 0                 # latent-cond decodes its previews; no GIF
    assert live["gif"] == live["decode"] == live["classifier"] == 0


@pytest.mark.slow
def test_end_to_end_breakdown_through_a_served_tiny_app(tiny_weights):
    from bench.roofline_gradio import measure_requests

    result = measure_requests(tiny_weights, reps=1, log=lambda *_: None)
    assert list(result) == ["Generate", "Live", "Pixel vs latent"]
    for r in result.values():
        s = r["summary"]
        assert len(r["e2e_runs"]) == 1 and s["e2e"] >= s["handler"] > s["network"] > 0
        assert s["handler"] + s["png"] + s["gradio"] == pytest.approx(s["e2e"])
    lines = rr.breakdown_table(result)
    assert lines[-1].startswith("| **end to end** |") and lines[-1].count("ms**") == 3


def test_a_picture_helper_called_inside_another_is_counted_once():
    import ui.tab_generate

    timers, adds = rr.Timers(), []
    timers.add = lambda name, seconds: adds.append(name)
    inner = rr.timed_function(lambda: 1, timers, "images")
    outer = rr.timed_function(lambda: inner() + inner(), timers, "images")
    assert outer() == 2 and adds == ["images"]
    assert inner() == 1 and adds == ["images", "images"]
    helpers = rr.picture_helpers(ui.tab_generate)
    assert helpers and all(getattr(ui.tab_generate, n).__module__ == "ui.pictures" for n in helpers)
