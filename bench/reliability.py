"""Reliability benchmark (issue 26): replays the issue's findings against `python app.py` on loopback and prints one
row per finding. Bounded in time (each scenario has its own deadline; the whole run stops by itself).

    python -m bench.reliability [--repo .] [--label after] [--weights-dir DIR] [--out bench/results/reliability.json]

`--repo` is the checkout whose app.py is launched (e.g. a `git worktree` of an older commit, for a before/after
table); by default the app runs on tiny random models (tests/factories.py, built once into a temp folder), so that
a scenario takes seconds on a 2-core CPU; `--weights-dir weights` runs the shipped models (slow to start here).

Scenarios (the issue's findings, in its order), each on a freshly started server (on the code before issue 26, the
estimate scenario poisons the cost model for good, which would refuse every later scenario's jobs):
1. concurrent /run: 6 concurrent POST /run/interpolate (a queued handler): how many ran outside the queue, wall
   time and the server's CPU-seconds; then the same 6 through /call (the queue).
2. estimate under load: the estimate /estimate_cost shows for a fixed request, before and after another session
   runs two Score-field MLP trainings beside eight generations; and whether a request sized to be admitted when
   idle (its typical estimate 25% of the time limit) is still admitted afterwards.
3. unread flood: 6 x /score_train_mlp (the tab's default 1500 steps), posted and never read (after one read
   warm-up call): server CPU-seconds in the following window, RSS growth.
4. one-session flood: one session joins /generate 20 times; a second visitor's normal /generate: refused or not,
   its latency vs idle; and a 40-call /live burst from one client: whether the newest setting is computed.
5. malformed requests: 200 of them (wrong arity, drawings as a string / list / dict without meta, preset 99 / "x" /
   2**63, unknown routes, extra inputs): responses by status, "error": null count, server log growth.
6. upload flood: 40 distinct 5 MB files from one client: accepted, bytes accepted, upload folder size afterwards.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.app_server import MAX_SECONDS, Server, http, parallel, tiny_weights
from diffusion.pipeline import cpu_name

ROOT = Path(__file__).resolve().parent.parent
INTERP = ["pixel-cond", 1, 7, 0.5, 0, 4, "euler_maruyama", 20, 2.0]        # the grid + strip: the costliest tab
GEN_SMALL = ["pixel-cond", 3, "dpmpp_2m", 10, 2.0, 0, 1]
GEN_NORMAL = ["pixel-cond", 3, "dpmpp_2m", 10, 2.0, 0, 16]                  # the app's defaults
GEN_FLOOD = ["pixel-cond", 3, "euler_maruyama", 50, 2.0, 0, 16]
MLP = ["digit 2", 1500, 0.5, 0]                                             # the Score-field tab's default training
FWD = ["test digit", 0, None, 0.5, 0, "none"]
NO_META = {"background": None, "layers": [{"path": "x.png"}] * 250, "composite": None}
MALFORMED = [("call/forward_diffusion", {"data": FWD[:1]}), ("call/forward_diffusion", {"data": FWD + [7]}),
             ("call/forward_diffusion", {"data": ["your drawing", 0, "abc", 0.5, 0, "none"]}),
             ("call/forward_diffusion", {"data": ["your drawing", 0, [1, 2], 0.5, 0, "none"]}),
             ("call/forward_diffusion", {"data": ["your drawing", 0, NO_META, 0.5, 0, "none"]}),
             ("call/generate_preset", {"data": [99]}), ("call/generate_preset", {"data": ["x"]}),
             ("call/generate_preset", {"data": [2**63]}), ("call/nonexistent", {"data": [1]}),
             ("call/generate", {"data": GEN_SMALL + [1]})]


def visitor(k: int) -> dict:
    """Headers of visitor k behind a proxy (the app sees loopback, the proxy's forwarded address says who)."""
    return {"X-Forwarded-For": f"5.5.{k // 250}.{k % 250 + 1}"}


# ---------------------------------------------------------------- the scenarios

def concurrent_run(srv: Server) -> dict:
    srv.quiet()
    cpu0, t0 = srv.cpu(), time.time()
    answers = parallel(lambda k: http(srv.url + "run/interpolate", {"data": INTERP}, visitor(k), timeout=180),
                       [(k,) for k in range(6)])
    run = {"ran_outside_queue": sum(1 for s, _ in answers if s == 200),
           "statuses": sorted(s for s, _ in answers), "wall_s": round(time.time() - t0, 1)}
    srv.quiet()
    run["cpu_s"] = round(srv.cpu() - cpu0, 1)
    cpu0, t0 = srv.cpu(), time.time()
    done = parallel(lambda k: srv.call("interpolate", INTERP, visitor(10 + k), timeout=300), [(k,) for k in range(6)])
    srv.quiet()
    run.update(queued_completed=sum(1 for s, b in done if s == 200 and "event: complete" in b),
               queued_wall_s=round(time.time() - t0, 1), queued_cpu_s=round(srv.cpu() - cpu0, 1))
    alone = []
    for k in range(2):                                 # the same request alone, twice: the one-by-one figure
        cpu0 = srv.cpu()
        srv.call("interpolate", INTERP, visitor(20 + k), timeout=300)
        srv.quiet()
        alone.append(srv.cpu() - cpu0)
    run.update(one_alone_cpu_s=round(min(alone), 2),
               queued_vs_one_by_one=round(run["queued_cpu_s"] / (6 * min(alone)), 2) if min(alone) > 0 else None)
    return run


def _estimate(srv: Server) -> float | None:
    status, body = http(srv.url + "run/estimate_cost", {"data": ["pixel-cond", "dpmpp_2m", 10, 16, 2.0]})
    found = re.search(r"≈ ([\d.]+) (ms|s) here", body.decode("utf-8", "replace"))
    return None if not found else float(found.group(1)) * (0.001 if found.group(2) == "ms" else 1.0)


def _admitted(srv: Server, steps: int) -> bool:
    """Is a 16-image dpmpp_2m request of `steps` steps admitted? (posted, read until its first message, cancelled)"""
    status, event_id = srv.post("generate", ["pixel-cond", 3, "dpmpp_2m", steps, 2.0, 0, 16], visitor(99))
    if status != 200:
        return False
    body = b""
    try:
        with urllib.request.urlopen(srv.url + f"call/generate/{event_id}", timeout=120) as r:
            for line in r:
                body += line
                if line.startswith(b"event: ") and b"heartbeat" not in line:
                    body += r.readline()
                    break
    except Exception:  # noqa: BLE001
        pass
    http(srv.url + "cancel", {"event_id": event_id, "session_hash": event_id, "fn_index": 0})
    return b"Too much work" not in body


def estimate_under_load(srv: Server) -> dict:
    srv.quiet()
    idle = _estimate(srv)
    steps = max(1, int(0.25 * MAX_SECONDS / (idle / 10))) if idle else 100    # typical estimate: 25% of the limit
    admitted_idle = _admitted(srv, steps)
    srv.quiet()
    load = [("score_train_mlp", ["digit 2", 1500, 0.5, k]) for k in range(2)] + \
           [("generate", ["pixel-cond", 3, "dpmpp_2m", 10, 2.0, k, 1]) for k in range(8)]
    parallel(lambda api, data: srv.call(api, data, visitor(50), timeout=120), load, timeout=150)
    loaded = _estimate(srv)
    srv.quiet()
    return {"estimate_idle_s": idle, "estimate_after_load_s": loaded,
            "ratio": round(loaded / idle, 2) if idle and loaded else None, "probe_steps": steps,
            "admitted_idle": admitted_idle, "admitted_after_load": _admitted(srv, steps)}


def unread_flood(srv: Server) -> dict:
    srv.call("score_train_mlp", ["digit 2", 10, 0.5, 0], visitor(59))     # warm-up: the tab's first-use imports
    srv.quiet()
    rss0, cpu0 = srv.rss(), srv.cpu()
    posted = [srv.post("score_train_mlp", MLP, visitor(60 + k))[0] for k in range(6)]
    time.sleep(20.0)                                   # the window the 140 s of work would fall in
    cpu = srv.cpu() - cpu0
    peak = srv.rss()
    waited = srv.quiet(timeout=120)
    return {"posted": posted.count(200), "cpu_s_in_20s": round(cpu, 1), "rss_growth_mib": round(peak - rss0, 1),
            "cpu_s_until_quiet": round(srv.cpu() - cpu0, 1), "quiet_after_s": round(20 + waited, 1)}


def session_flood(srv: Server) -> dict:
    srv.quiet()
    t0 = time.time()
    status, _ = srv.call("generate", GEN_NORMAL, visitor(70))
    idle_latency = time.time() - t0
    t0 = time.time()
    flood_ok = "event: complete" in srv.call("generate", GEN_FLOOD, visitor(70))[1]
    flood_job = time.time() - t0                       # one of the flooder's jobs, alone
    config = json.loads(http(srv.url.replace("gradio_api/", "config"))[1])
    generate = next(d for d in config["dependencies"] if d.get("api_name") == "generate")
    fn_index = generate["id"]
    # queue/join is the browser's route: every input, a session State included (null), in the tree's own count
    flood = GEN_FLOOD + [None] * (len(generate["inputs"]) - len(GEN_FLOOD))
    stream = threading.Thread(target=lambda: http(srv.url + "queue/data?session_hash=flooder", timeout=120),
                              daemon=True)
    stream.start()
    joins = [http(srv.url + "queue/join", {"data": flood, "fn_index": fn_index, "session_hash": "flooder",
                                           "event_data": None, "trigger_id": None}, visitor(71))
             for _ in range(20)]
    accepted = [json.loads(b)["event_id"] for s, b in joins if s == 200]
    t0 = time.time()
    b_status, b_body = srv.call("generate", GEN_NORMAL, visitor(72), timeout=180)
    b_latency = time.time() - t0
    for event_id in accepted:
        http(srv.url + "cancel", {"event_id": event_id, "session_hash": "flooder", "fn_index": fn_index})
    srv.quiet(timeout=120)
    # a burst of 40 /live calls from one API client: is the newest setting computed?
    live = [srv.post("live", [3, 4, 2.0, seed, 4], visitor(80)) for seed in range(40)]
    results = {}
    for seed in (0, 39):
        status, event_id = live[seed]
        results[seed] = http(srv.url + f"call/live/{event_id}", timeout=120)[1].decode() if status == 200 else \
            f"refused {status}"
    others = [live[k] for k in range(1, 39) if live[k][0] == 200]
    for _, event_id in others:                         # read the rest too, so no stream is left unread
        http(srv.url + f"call/live/{event_id}", timeout=60)
    srv.quiet()
    return {"flood_joins_accepted": len(accepted), "flood_refusals": sorted({s for s, _ in joins if s != 200}),
            "b_status": b_status, "b_completed": "event: complete" in b_body, "b_refusal": b_body[:160]
            if b_status != 200 else None, "b_latency_s": round(b_latency, 1), "idle_latency_s": round(idle_latency, 1),
            "flood_job_alone_s": round(flood_job, 1), "flood_job_admitted": flood_ok,
            "live_burst_refused": sum(1 for s, _ in live if s != 200),
            "live_newest_computed": "event: complete" in results[39]}


def malformed(srv: Server) -> dict:
    srv.quiet()
    log0, sent, statuses, nulls, tracebacks0 = srv.log_bytes(), 0, {}, 0, srv.log_path.read_bytes().count(
        b"Traceback")
    t0 = time.time()
    for k in range(200):
        route, body = MALFORMED[k % len(MALFORMED)]
        sent += len(json.dumps(body))
        status, answer = http(srv.url + route, body, visitor(90), timeout=30)
        if status == 200 and route.startswith("call/"):
            event_id = json.loads(answer)["event_id"]
            answer = http(srv.url + f"{route}/{event_id}", timeout=60)[1]
        statuses[status] = statuses.get(status, 0) + 1
        nulls += answer.count(b'"error": null') + answer.count(b'"error":null')
    took = time.time() - t0
    time.sleep(1.0)
    grown = srv.log_bytes() - log0
    return {"requests": 200, "bytes_sent": sent, "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "error_null": nulls, "server_errors_5xx": sum(v for k, v in statuses.items() if k >= 500),
            "log_growth_bytes": grown, "log_growth_per_request_bytes": round(grown / 200),
            "tracebacks_logged": srv.log_path.read_bytes().count(b"Traceback") - tracebacks0,
            "seconds": round(took, 1)}


def upload_flood(srv: Server) -> dict:
    def folder_bytes() -> int:
        return sum(p.stat().st_size for p in srv.uploads.rglob("*") if p.is_file()) if srv.uploads.exists() else 0
    before = folder_bytes()
    boundary = "----reliability"
    accepted = refused = 0
    statuses = {}
    t0 = time.time()
    for k in range(40):
        payload = os.urandom(5 * 10**6 - 4096)
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"f{k}.png\"\r\n"
                "Content-Type: image/png\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()
        status, _ = http(srv.url + "upload", None, {"Content-Type": f"multipart/form-data; boundary={boundary}",
                                                    **visitor(95)}, raw=body, timeout=60)
        statuses[status] = statuses.get(status, 0) + 1
        accepted, refused = accepted + (status == 200), refused + (status != 200)
    took = time.time() - t0
    return {"files": 40, "accepted": accepted, "refused": refused,
            "statuses": {str(k): v for k, v in sorted(statuses.items())}, "seconds": round(took, 1),
            "accepted_mb": round(accepted * 5.0, 1), "upload_folder_mb": round((folder_bytes() - before) / 2**20, 1)}


RUN_ORDER = ["concurrent_run", "estimate_under_load", "unread_flood", "session_flood", "malformed", "upload_flood"]
SCENARIOS = {"concurrent_run": concurrent_run, "estimate_under_load": estimate_under_load,
             "unread_flood": unread_flood, "session_flood": session_flood, "malformed": malformed,
             "upload_flood": upload_flood}


FIGURES = [   # (scenario, key, what the row says, the target)
    ("concurrent_run", "ran_outside_queue", "6 concurrent /run/interpolate: ran outside the queue", "0"),
    ("concurrent_run", "cpu_s", "... server CPU-s they cost", "-"),
    ("concurrent_run", "queued_completed", "the same 6 through /call (queue): completed", "6"),
    ("concurrent_run", "queued_cpu_s", "... server CPU-s (one at a time)", "-"),
    ("concurrent_run", "queued_vs_one_by_one", "... CPU-s / (6 x one run alone)", "<= 1.1"),
    ("estimate_under_load", "ratio", "estimate after another session's load / idle", "<= 1.5x"),
    ("estimate_under_load", "admitted_after_load", "a request admitted idle, admitted after that load", "yes"),
    ("unread_flood", "cpu_s_in_20s", "6 unread /score_train_mlp: server CPU-s in the next 20 s", "<= 6"),
    ("unread_flood", "cpu_s_until_quiet", "... CPU-s until the server is quiet", "<= 6"),
    ("unread_flood", "rss_growth_mib", "... RSS growth (MiB)", "<= 50"),
    ("session_flood", "flood_joins_accepted", "one session joins /generate 20 times: accepted", "small share"),
    ("session_flood", "b_status", "a second visitor's /generate: HTTP status", "200"),
    ("session_flood", "b_latency_s", "... its latency (s)", "<= 2x idle"),
    ("session_flood", "idle_latency_s", "... its latency when idle (s)", "-"),
    ("session_flood", "flood_job_alone_s", "... one flood job alone (s)", "-"),
    ("session_flood", "live_burst_refused", "40 /live calls from one client: refused", "0"),
    ("session_flood", "live_newest_computed", "... the newest setting computed", "yes"),
    ("malformed", "statuses", "200 malformed requests: answers by status", "4xx"),
    ("malformed", "error_null", '... answers with "error": null', "0"),
    ("malformed", "log_growth_bytes", "... server log growth (bytes)", "< bytes sent"),
    ("malformed", "bytes_sent", "... bytes sent", "-"),
    ("malformed", "tracebacks_logged", "... tracebacks in the log", "0"),
    ("upload_flood", "accepted", "40 distinct 5 MB uploads from one client: accepted", "<= 20 MB/min"),
    ("upload_flood", "upload_folder_mb", "... upload folder growth (MiB)", "<= budget"),
    ("upload_flood", "seconds", "... seconds for all 40", "-"),
]


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    return "-" if value is None else str(value)


def report(results: dict) -> str:
    """The before/after table (markdown) of every row in `results`, one column per row's label."""
    rows = results["rows"]
    head = "| finding | " + " | ".join(f"{r['label']} ({r.get('commit', '?')})" for r in rows) + " | target |"
    lines = [head, "|---|" + "---|" * len(rows) + "---|"]
    for scenario, key, what, target in FIGURES:
        cells = [_cell(r.get(scenario, {}).get(key)) for r in rows]
        if key == "b_latency_s":                         # a refused visitor has no latency to show
            cells = [c if r.get(scenario, {}).get("b_status") == 200 else "refused" for c, r in zip(cells, rows)]
        lines.append(f"| {what} | " + " | ".join(cells) + f" | {target} |")
    notes = [f"- {r['label']}: {r['repo']} at {r.get('commit', '?')}, {r['when']}, {r['cpu']} ({r['cores']} cores), "
             f"load average {r['load_avg_start']} at the start and {r['load_avg_end']} at the end (other agents' work "
             f"on the same machine); weights: {r['weights']}; app time limit {MAX_SECONDS:.0f} s"
             + (f"; rerun of {', '.join(r['reran'])}" if r.get("reran") else "") for r in rows]
    return "\n".join(lines + [""] + notes) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, default=ROOT, help="checkout whose app.py is launched")
    parser.add_argument("--label", default="after", help="the row's name in the results (e.g. before / after)")
    parser.add_argument("--weights-dir", type=Path, default=None, help="default: tiny random models")
    parser.add_argument("--only", nargs="*", choices=list(SCENARIOS), default=RUN_ORDER)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "reliability.json")
    parser.add_argument("--report", action="store_true", help="only write the table (<out>.md) from <out>")
    args = parser.parse_args(argv)
    if args.report:
        table = report(json.loads(args.out.read_text()))
        args.out.with_suffix(".md").write_text(table)
        print(table)
        return {}
    work = Path(tempfile.mkdtemp(prefix="reliability-"))
    weights = args.weights_dir or tiny_weights(work / "weights")
    row = {"label": args.label, "repo": str(args.repo.resolve()), "cpu": cpu_name(), "cores": os.cpu_count(),
           "load_avg_start": [round(x, 2) for x in os.getloadavg()], "weights": "tiny random" if args.weights_dir
           is None else str(args.weights_dir), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    commit = subprocess.run(["git", "-C", str(args.repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    row["commit"] = commit
    try:
        for name in args.only:                       # a fresh server per scenario: no scenario sees another's state
            srv = Server(args.repo.resolve(), weights, work / name)
            start = time.time()
            try:
                row[name] = SCENARIOS[name](srv)
            except Exception as e:  # noqa: BLE001 - one scenario failing still leaves the others' rows
                row[name] = {"failed": f"{type(e).__name__}: {e}"[:300]}
            finally:
                row[name]["rss_end_mib"] = round(srv.rss(), 1)
                srv.close()
            row[name]["scenario_s"] = round(time.time() - start, 1)
            print(f"{args.label} {name}: {json.dumps(row[name])}", flush=True)
    finally:
        row["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
        shutil.rmtree(work, ignore_errors=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
    old = next((r for r in results["rows"] if r.get("label") == args.label), None)
    if old is not None and set(args.only) != set(SCENARIOS):      # a partial rerun updates its scenarios only
        row = {**old, **row, "reran": sorted(set(old.get("reran", [])) | set(args.only))}
    results["rows"] = [r for r in results["rows"] if r.get("label") != args.label] + [row]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    return row


if __name__ == "__main__":
    main()
