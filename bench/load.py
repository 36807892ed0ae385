"""Load benchmark (issue 24, item 4): N simulated visitors at once against `python app.py` on loopback, today's app
("before", a checkout given by --before) and this checkout ("after") in one run, phases interleaved (for each N:
before, then after), with the shipped weights by default.

    python -m bench.load [--visitors 1,4,8,16] [--requests-per-visitor N | --duration S] [--weights-dir weights]
                         [--before PATH] [--endpoint generate|live|mix] [--out bench/results/load.json]

Each visitor is its own gradio_client Client (its own session) with its own forwarded public address
(X-Forwarded-For 5.5.0.k: the app honours it behind a loopback peer; a documentation range such as 203.0.113.k is not
a public address, so every visitor would share one address and its 8-job share, ui/fair_queue.py); it calls the
endpoint back to back with its own seeds, either N requests or until --duration has passed (a request in flight
then is waited for). Generate runs the app's defaults (pixel-cond, diffusion.pipeline's default sampler, steps and
guidance, 16 images); Live runs the 4-step student on 16 images; "mix" alternates them by visitor. Per N and
checkout: throughput (images completed / the phase's wall window, first submit to last answer), p50 and p95
request latency, refusals and errors by kind (per session 4 jobs, per address 8, the queue 16: with 16 visitors some
may be refused; a refused visitor waits REFUSED_BACKOFF_S and goes on), the server's CPU-seconds. A lone visitor
(N = 1, always run) is the latency reference. Targets (issue 24): at 8 visitors, throughput >= 3x before's, and p95
latency <= 2x a lone visitor's median.

Every phase has a deadline (--phase-timeout): past it no request is submitted and unanswered ones are cancelled.
The servers are stopped on exit, on Ctrl-C and on SIGTERM. Files are not downloaded by the clients (the server's
work is what is measured; the clients share the machine's 2 cores with it).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

import diffusion.pipeline as dp
from bench.app_server import Server
from bench.tables import write_results
from diffusion.pipeline import cpu_name

ROOT = Path(__file__).resolve().parent.parent
DIGIT, IMAGES = 3, 16                            # the Generate tab's default digit and image count
LIVE_STEPS, LIVE_GUIDANCE = 4, 2.0               # the Live tab's 4-step student at its default guidance
REFUSED_BACKOFF_S = 1.0                          # a refused visitor waits this long before its next request
THROUGHPUT_TARGET, P95_TARGET, TARGET_VISITORS = 3.0, 2.0, 8
ENDPOINTS = ("generate", "live", "mix")
REFUSAL_KINDS = [                                # (kind, phrases of the app's messages that name it), first match wins
    ("queue full", ("queue is full",)),
    ("session share", ("this session already has",)),
    ("client share", ("your address already has",)),
    ("too much work", ("too much work", "would take about")),
    ("time limit", ("stopped after",)),
    ("stopped", ("stopped:",)),
]


# ---------------------------------------------------------------- pure pieces (tested by hand values)

def percentile(values, q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between order statistics (numpy's default: rank
    q/100 * (n - 1)); None for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


def latency_summary(latencies) -> dict:
    rounded = [round(v, 3) if v is not None else None for v in
               (percentile(latencies, 50), percentile(latencies, 95), max(latencies, default=None))]
    return dict(zip(("p50", "p95", "max"), rounded), n=len(latencies))


def error_kind(exc: BaseException) -> str:
    """A short name for why a request failed: the app's refusals by their message, the phase deadline, or the
    exception's type."""
    if isinstance(exc, (TimeoutError, concurrent.futures.TimeoutError)):
        return "no answer by the phase deadline"
    response = getattr(exc, "response", None)              # httpx.HTTPStatusError: a refusal of queue/join
    status = getattr(response, "status_code", None)
    try:
        body = response.text if response is not None else ""
    except Exception:  # noqa: BLE001 - a streamed body that was never read
        body = ""
    msg = f"{exc} {body}".lower()
    for kind, phrases in REFUSAL_KINDS:
        if any(p in msg for p in phrases):
            return kind
    if status is not None:
        return f"HTTP {status}"
    return f"other ({type(exc).__name__}: {str(exc)[:80]})"


def parse_visitors(text: str) -> list[int]:
    """'1,4,8,16' -> [1, 4, 8, 16] (sorted, unique, 1 added: the lone visitor is the latency reference)."""
    try:
        counts = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--visitors must be comma-separated whole numbers such as 1,4,8,16, got {text!r}") from None
    if not counts or min(counts) < 1 or max(counts) > 64:
        raise ValueError(f"--visitors must list counts from 1 to 64, got {text!r}")
    return sorted(set(counts) | {1})


def request_args(endpoint: str, visitor: int, seed: int, generate: tuple | None = None) -> tuple[str, list]:
    """(api_name, inputs) of visitor `visitor`'s request with `seed` (generate: model, digit, sampler, steps,
    guidance, seed, num_images; live: digit, steps, guidance, seed, num_images). `generate`: (sampler, steps,
    guidance) for Generate, default this tree's pixel-cond defaults."""
    kind = endpoint if endpoint != "mix" else ("generate", "live")[visitor % 2]
    if kind == "generate":
        sampler, steps, guidance = generate or (dp.DEFAULT_SAMPLER, dp.DEFAULT_STEPS, dp.DEFAULT_GUIDANCE)
        return "/generate", ["pixel-cond", DIGIT, sampler, steps, guidance, seed, IMAGES]
    if kind == "live":
        return "/live", [DIGIT, LIVE_STEPS, LIVE_GUIDANCE, seed, IMAGES]
    raise ValueError(f"--endpoint must be one of {', '.join(ENDPOINTS)}, got {endpoint!r}")


def visitor_headers(k: int) -> dict:
    """Visitor k behind a proxy: its own public forwarded address (5.5.0.1, 5.5.0.2, ...)."""
    return {"X-Forwarded-For": f"5.5.{k // 250}.{k % 250 + 1}"}


def summarise(n: int, records: list[dict], window_s: float, cpu_s: float) -> dict:
    """One phase's figures from its requests' records {ok, latency_s, images, kind}."""
    done = [r for r in records if r["ok"]]
    images = sum(r["images"] for r in done)
    return dict(visitors=n, requests=len(records), completed=len(done), images=images, window_s=round(window_s, 2),
                images_per_s=round(images / window_s, 3) if window_s > 0 else None,
                latency_s=latency_summary([r["latency_s"] for r in done]),
                refused=dict(sorted(Counter(r["kind"] for r in records if not r["ok"]).items())),
                server_cpu_s=round(cpu_s, 2), server_cpu_s_per_image=round(cpu_s / images, 4) if images else None)


def ratio(a, b) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def targets(rows: dict) -> dict:
    """Issue 24's two load targets at TARGET_VISITORS: after's throughput over before's, and after's p95 latency over
    after's lone visitor's median (each None where a phase is missing)."""
    def phase(label, n):
        return rows.get(label, {}).get("phases", {}).get(str(n))
    before, after, lone = phase("before", TARGET_VISITORS), phase("after", TARGET_VISITORS), phase("after", 1)
    speedup = ratio(after and after["images_per_s"], before and before["images_per_s"])
    slowdown = ratio(after and after["latency_s"]["p95"], lone and lone["latency_s"]["p50"])
    return {"visitors": TARGET_VISITORS,
            "throughput_after_over_before": speedup, "throughput_target": THROUGHPUT_TARGET,
            "throughput_met": None if speedup is None else speedup >= THROUGHPUT_TARGET,
            "p95_over_lone_p50": slowdown, "p95_target": P95_TARGET,
            "p95_met": None if slowdown is None else slowdown <= P95_TARGET}


# ---------------------------------------------------------------- one phase: N visitors against one server

def run_phase(srv: Server, n: int, endpoint: str, *, requests: int | None, duration: float | None,
              timeout: float, seed0: int = 0, generate: tuple | None = None) -> dict:
    """N visitors (threads, each its own Client) calling back to back: `requests` each, or until `duration` s have
    passed; nothing is submitted after `timeout` s and what is unanswered then is cancelled."""
    from gradio_client import Client

    base = srv.url.removesuffix("gradio_api/")
    clients = [Client(base, verbose=False, headers=visitor_headers(k), download_files=False,
                      analytics_enabled=False) for k in range(n)]
    records: list[list[dict]] = [[] for _ in range(n)]
    start_gate = threading.Barrier(n + 1)
    t0 = [0.0]

    def visit(k: int) -> None:
        start_gate.wait()
        for i in range(requests or 10**9):
            now = time.perf_counter() - t0[0]
            if now >= timeout or (duration is not None and now >= duration):
                break
            api, inputs = request_args(endpoint, k, seed0 + 1000 * k + i, generate)
            sent = time.perf_counter()
            record = {"ok": False, "images": inputs[-1], "latency_s": None, "kind": None}
            job = None
            try:
                job = clients[k].submit(*inputs, api_name=api)
                job.result(timeout=max(0.1, timeout - (sent - t0[0])))
                record.update(ok=True, latency_s=time.perf_counter() - sent)
            except Exception as e:  # noqa: BLE001 - a load test counts failures, it does not stop on them
                record["kind"] = error_kind(e)
                if job is not None and record["kind"] == "no answer by the phase deadline":
                    job.cancel()
            records[k].append(record)
            if not record["ok"] and record["kind"] != "no answer by the phase deadline":
                time.sleep(REFUSED_BACKOFF_S)

    threads = [threading.Thread(target=visit, args=(k,), daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    cpu0, client_cpu0 = srv.cpu(), time.process_time()
    t0[0] = time.perf_counter()
    start_gate.wait()
    for t in threads:
        t.join(timeout + 30)
    window = time.perf_counter() - t0[0]
    cpu, client_cpu = srv.cpu() - cpu0, time.process_time() - client_cpu0
    for c in clients:
        c.close()
    # the clients' own CPU (this process, every thread): the load generator shares the cores with the server
    return {**summarise(n, [r for rs in records for r in rs], window, cpu), "client_cpu_s": round(client_cpu, 2)}


# ---------------------------------------------------------------- servers, the run, the report

def launch(repo: Path, weights: Path, work: Path) -> Server:
    """bench/app_server.py's Server, stopped again if start-up is interrupted (Ctrl-C while it loads)."""
    srv = Server.__new__(Server)
    try:
        srv.__init__(repo, weights, work)
    except BaseException:
        if getattr(srv, "proc", None) is not None:
            srv.close()
        raise
    return srv


def commit_of(repo: Path) -> str:
    out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + ("+uncommitted" if dirty else "") if out.returncode == 0 else "?"


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cell(value, fmt="{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def report(results: dict) -> str:
    """The markdown table: one line per visitor count, before | after side by side, then the targets and the
    machine."""
    rows, labels = results["rows"], [label for label in ("before", "after") if label in results["rows"]]
    counts = sorted({int(n) for r in rows.values() for n in r["phases"]})
    cols = [("images/s", lambda p: _cell(p["images_per_s"])), ("p50 s", lambda p: _cell(p["latency_s"]["p50"])),
            ("p95 s", lambda p: _cell(p["latency_s"]["p95"])), ("done/sent", lambda p: f"{p['completed']}/"
                                                                                      f"{p['requests']}"),
            ("refused / errors", lambda p: ", ".join(f"{k}: {v}" for k, v in p["refused"].items()) or "0"),
            ("server CPU-s", lambda p: _cell(p["server_cpu_s"], "{:.1f}")),
            ("clients' CPU-s", lambda p: _cell(p.get("client_cpu_s"), "{:.1f}"))]
    head = ["visitors"] + [f"{name} {label}" for name, _ in cols for label in labels]
    if len(labels) == 2:
        head.append("throughput after/before")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in counts:
        phases = [rows[label]["phases"].get(str(n)) for label in labels]
        cells = [str(n)] + [fn(p) if p else "-" for _, fn in cols for p in phases]
        if len(labels) == 2:
            cells.append(_cell(ratio(*(p and p["images_per_s"] for p in reversed(phases)))) + "x")
        lines.append("| " + " | ".join(cells) + " |")
    t = results["targets"]
    verdict = {True: "met", False: "MISSED", None: "not measured"}
    lines += ["", f"Targets at {t['visitors']} visitors (issue 24): throughput after/before = "
                  f"{_cell(t['throughput_after_over_before'])}x (target >= {t['throughput_target']:g}x: "
                  f"{verdict[t['throughput_met']]}); after's p95 / a lone visitor's p50 = "
                  f"{_cell(t['p95_over_lone_p50'])}x (target <= {t['p95_target']:g}x: {verdict[t['p95_met']]}).", ""]
    s = results["settings"]
    lines.append("- images/s: images of the completed requests / the phase's wall window (first submit to last answer); "
                 "latency: submit to the final answer (queue wait included); server CPU-s: the app's process over the "
                 "window; clients' CPU-s: the load generator's (it shares the cores)")
    lines.append(f"- requests: {s['endpoint']} ({s['request']}), {s['stop']}, phase deadline {s['phase_timeout_s']:g} s"
                 f"; each visitor its own session and forwarded address; weights: {s['weights']}")
    if any(isinstance(g, list) for g in s.get("generate", {}).values()):   # --settings tree: each checkout's own
        lines.append("- Generate's (sampler, steps, w) per checkout, its own defaults: "
                     + ", ".join(f"{label} {tuple(g)}" for label, g in s["generate"].items()))
    m = results["machine"]
    lines.append(f"- machine: {m['cpu']} ({m['cores']} cores), load average {m['load_avg_start']} at the start and "
                 f"{m['load_avg_end']} at the end, {m['when']}")
    for label in labels:
        r = rows[label]
        lines.append(f"- {label}: {r['repo']} at {r['commit']}; load average per phase (start): "
                     + ", ".join(f"{n}: {p['load_avg_start'][0]}" for n, p in r["phases"].items()))
    return "\n".join(lines) + "\n"


TREE_DEFAULTS = ("import json; from diffusion.pipeline import defaults_for; d = defaults_for('pixel-cond'); "
                 "print(json.dumps([d.sampler, d.steps, d.guidance]))")


def tree_defaults(repo: Path) -> tuple:
    """(sampler, steps, guidance) of pixel-cond's defaults as the checkout at `repo` ships them."""
    out = subprocess.run([sys.executable, "-c", TREE_DEFAULTS], cwd=repo, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(repo)})
    return tuple(json.loads(out.stdout.strip().splitlines()[-1]))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--visitors", default="1,4,8,16", help="visitor counts, comma-separated (1 is always run)")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--requests-per-visitor", type=int, default=None, help="requests each visitor makes "
                      "(default 4 unless --duration)")
    stop.add_argument("--duration", type=float, default=None, help="seconds each phase submits requests for")
    p.add_argument("--weights-dir", type=Path, default=ROOT / "weights")
    p.add_argument("--before", type=Path, default=None, help="checkout of today's app (e.g. a git worktree of "
                   "0b4bb63); without it only this checkout is measured")
    p.add_argument("--after", type=Path, default=ROOT, help="checkout of the changed app (default: this one)")
    p.add_argument("--endpoint", default="generate", choices=ENDPOINTS)
    p.add_argument("--settings", default="this", choices=("this", "tree"),
                   help="Generate's sampler, steps and w: this checkout's defaults for every server (the same work), "
                        "or each checkout's own (what a visitor of that version asked for by default)")
    p.add_argument("--phase-timeout", type=float, default=300.0, help="seconds after which a phase stops")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "load.json")
    args = p.parse_args(argv)
    try:
        args.visitors = parse_visitors(args.visitors)
    except ValueError as e:
        p.error(str(e))
    if args.requests_per_visitor is not None and args.requests_per_visitor < 1:
        p.error(f"--requests-per-visitor must be >= 1, got {args.requests_per_visitor}")
    if args.duration is not None and not 0 < args.duration <= 3600:
        p.error(f"--duration must be in (0, 3600] seconds, got {args.duration:g}")
    if not 0 < args.phase_timeout <= 3600:
        p.error(f"--phase-timeout must be in (0, 3600] seconds, got {args.phase_timeout:g}")
    if args.duration is None and args.requests_per_visitor is None:
        args.requests_per_visitor = 4
    for flag, repo in (("--before", args.before), ("--after", args.after)):
        if repo is not None and not (repo / "app.py").is_file():
            p.error(f"{flag}: {repo} is not a checkout of the app (no app.py there)")
    if not (args.weights_dir / "pixel-cond" / "model.safetensors").is_file():
        p.error(f"--weights-dir: {args.weights_dir} has no pixel-cond/model.safetensors")
    return args


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop_on_sigterm)         # the finally below stops the servers
    checkouts = {"before": args.before, "after": args.after} if args.before else {"after": args.after}
    stop = (f"{args.requests_per_visitor} requests per visitor" if args.duration is None else
            f"back to back for {args.duration:g} s")
    api, inputs = request_args(args.endpoint, 0, 0)
    results = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "load_avg_start": _load(),
                           "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
               "settings": {"endpoint": args.endpoint, "request": f"{api} {inputs} (seed per visitor and request)",
                            "visitors": args.visitors, "stop": stop, "phase_timeout_s": args.phase_timeout,
                            "weights": str(args.weights_dir.resolve()), "refused_backoff_s": REFUSED_BACKOFF_S},
               "rows": {label: {"repo": str(repo.resolve()), "commit": commit_of(repo), "phases": {}}
                        for label, repo in checkouts.items()}}
    work = Path(tempfile.mkdtemp(prefix="load-"))
    servers: dict[str, Server] = {}
    try:
        for label, repo in checkouts.items():                  # one after the other: start-up calibrates the cost
            t0 = time.perf_counter()
            servers[label] = launch(repo.resolve(), args.weights_dir.resolve(), work / label)
            print(f"{label}: {repo} ({results['rows'][label]['commit']}) ready in {time.perf_counter() - t0:.0f} s",
                  flush=True)
        generate = {label: tree_defaults(repo.resolve()) if args.settings == "tree" else None
                    for label, repo in checkouts.items()}
        results["settings"]["generate"] = {label: g or "this checkout's" for label, g in generate.items()}
        for label, srv in servers.items():                     # warm-up: first-call overheads
            run_phase(srv, 1, args.endpoint, requests=1, duration=None, timeout=args.phase_timeout,
                      generate=generate[label])
        for n in args.visitors:
            for label, srv in servers.items():                 # interleaved: before and after see the same load
                srv.quiet(timeout=30)
                load0 = _load()
                phase = run_phase(srv, n, args.endpoint, requests=args.requests_per_visitor, duration=args.duration,
                                  timeout=args.phase_timeout, generate=generate[label])
                phase.update(load_avg_start=load0, load_avg_end=_load(), rss_end_mib=round(srv.rss(), 1))
                results["rows"][label]["phases"][str(n)] = phase
                print(f"{label} x{n}: {json.dumps(phase)}", flush=True)
    finally:
        for srv in servers.values():
            srv.close()
        shutil.rmtree(work, ignore_errors=True)
        results["machine"]["load_avg_end"] = _load()
    results["targets"] = targets(results["rows"])
    write_results(results, args.out, f"Load: {len(args.visitors)} visitor counts, before | after", report(results))
    return results


if __name__ == "__main__":
    main()
