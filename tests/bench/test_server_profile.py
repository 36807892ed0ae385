"""bench/server_profile.py's pure pieces: py-spy's raw lines parsed, stacks put in categories, each thread's CPU split
over its busy samples, the summary's shares and ceiling (hand values); and /proc's thread times of this process."""
import os
import threading
import time

import pytest

from bench import server_profile as sp

RAW = """\
thread (101): MainThread;<module> (app.py:28);Server.run (uvicorn/server.py:86);EpollSelector.select (selectors.py:468) 30
thread (101): MainThread;<module> (app.py:28);Blocks.postprocess_data (gradio/blocks.py:2338);SessionState._update_config (gradio/state_holder.py:120) 5
thread (101): MainThread;<module> (app.py:28);Queue.process_events (gradio/queueing.py:973) 15
thread (202): Thread-3;Thread.run (threading.py:982);NetworkBroker._serve (diffusion/batching.py:230);NetworkBroker._run_pass (diffusion/batching.py:250);UNet.forward (diffusion/unet.py:138) 60
thread (202): Thread-3;Thread.run (threading.py:982);NetworkBroker._serve (diffusion/batching.py:230);Condition.wait (threading.py:327) 40
thread (303): AnyIO worker;GenerateTab.generate (ui/tab_generate.py:80);Lab.write_gif (ui/lab.py:300);gif_bytes (ui/pictures.py:90) 10
thread (303): AnyIO worker;GenerateTab.generate (ui/tab_generate.py:80);Lab.classifier_line (ui/lab.py:200);classify (diffusion/metrics.py:50) 10
thread (303): AnyIO worker;GenerateTab.generate (ui/tab_generate.py:80);Event.wait (threading.py:629) 80
"""


def test_raw_lines_are_parsed_by_thread_with_their_counts():
    got = sp.parse_raw(RAW + "garbage line\n")
    assert set(got) == {101, 202, 303}
    assert sum(got[101].values()) == 50 and sum(got[202].values()) == 100 and sum(got[303].values()) == 100
    assert ("<module> (app.py:28)", "Queue.process_events (gradio/queueing.py:973)") in got[101]


def test_categories_first_match_and_idle_leaves():
    assert sp.category(("Server.run (uvicorn/server.py:86)", "EpollSelector.select (selectors.py:468)")) is None
    assert sp.category(("NetworkBroker._run_pass (diffusion/batching.py:250)", "Conv2d._conv_forward (x.py:1)")) == \
        sp.NETWORK
    # the handler's own frames (ui/) win over gradio's that run it; a gradio-only stack is gradio's
    assert sp.category(("run_sync (anyio/x.py:1)", "GenerateTab.generate (ui/tab_generate.py:80)")) == \
        "sampler, guidance, handler"
    assert sp.category(("Queue.process_events (gradio/queueing.py:973)",)) == "gradio: queue, HTTP, events"
    assert sp.category(("Blocks.postprocess_data (gradio/blocks.py:1)", "save_pil_to_cache (ui/image_cache.py:45)",
                        "Image.save (PIL/Image.py:1)")) == "PNG encoding (gradio's, through ui/image_cache.py)"
    assert sp.category(("f (mystery.py:1)",)) == sp.OTHER and sp.category(()) is None


def test_each_threads_cpu_is_split_over_its_busy_samples_and_unseen_threads_are_the_network():
    cpu = {101: 2.0, 202: 6.0, 303: 1.0, 404: 5.0, 505: 0.5}       # 404 never sampled: an OpenMP worker
    samples = sp.parse_raw(RAW)
    samples[505] = sp.parse_raw("thread (505): idle;Event.wait (threading.py:629) 9\n")[505]
    got = sp.attribute(samples, cpu)
    # thread 101: 20 busy samples, 5 unchanged-output updates and 15 queue work; thread 202: all busy samples network
    assert got["gradio: unchanged outputs (gr.skip)"] == pytest.approx(2.0 * 5 / 20)
    assert got["gradio: queue, HTTP, events"] == pytest.approx(2.0 * 15 / 20)
    assert got[sp.NETWORK] == pytest.approx(6.0)
    assert got["GIF"] == pytest.approx(0.5) and got["classifier check"] == pytest.approx(0.5)
    assert got[sp.NATIVE] == pytest.approx(5.0)
    assert got[sp.OTHER] == pytest.approx(0.5)                      # CPU with no busy sample: not lost
    assert sum(got.values()) == pytest.approx(sum(cpu.values()))


def test_summary_shares_per_image_and_the_ceiling():
    s = sp.summary({sp.NETWORK: 3.0, sp.NATIVE: 3.0, "GIF": 2.0, "gradio: queue, HTTP, events": 4.0}, images=100,
                   process_cpu_s=12.5)
    assert [r["part"] for r in s["rows"]][:2] == ["gradio: queue, HTTP, events", sp.NETWORK]
    gif = next(r for r in s["rows"] if r["part"] == "GIF")
    assert gif["core_ms_per_image"] == 20.0 and gif["share"] == pytest.approx(2 / 12, abs=1e-4)
    assert s["network_share"] == 0.5 and s["ceiling"] == 2.0 and s["process_cpu_s"] == 12.5
    assert sp.summary({"GIF": 1.0}, images=0, process_cpu_s=1.0)["ceiling"] is None


def test_thread_cpu_times_of_this_process_see_a_busy_thread():
    done = threading.Event()
    worker = threading.Thread(target=lambda: [None for _ in iter(lambda: done.is_set(), True)])
    worker.start()
    time.sleep(0.4)
    try:
        times = sp.thread_cpu_s(os.getpid())
    finally:
        done.set()
        worker.join()
    assert threading.get_native_id() in times and worker.native_id in times
    assert times[worker.native_id] > 0.05 and all(v >= 0 for v in times.values())


@pytest.mark.parametrize("argv, message", [(["--visitors", "0"], "--visitors must list counts from 1 to 64"),
                                           (["--seconds", "1"], "--seconds must be in")])
def test_bad_arguments_get_a_clear_error_before_any_server_starts(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(sp, "launch", lambda *a, **k: pytest.fail("a server was started"))
    with pytest.raises(SystemExit):
        sp.main(argv)
    assert message in capsys.readouterr().err
