"""Inference backends A/B (issue 24, item 2): speed and sample quality of each diffusion.backends variant.

Two workloads, each end to end through `Pipeline.generate` with the model's registry defaults, same seeds:
  generate  pixel-cond (Generate's default: 16 images, its sampler / steps / guidance)
  live      pixel-cond-distilled (the Live tab's 4-step student, 16 images)
Variants (backend x precision; each on its own deep copy of the model, so no variant rebuilds another's runtime):
eager fp32 (the reference), eager bf16 (autocast), channels_last, torch.compile (dynamic batch; first call timed
apart as compile time), onnxruntime (fp32), openvino f32 and bf16. Reps are interleaved (variant order rotates)
after one warm-up call each; figures are medians. "net ms" is the time inside the U-Net (forward pre-hook to
forward hook, i.e. every network call including the runtime's own overhead), "total ms" the whole request; their
difference is the sampler's per-step arithmetic and the pipeline's bookkeeping. max |diff| compares the final
images (in [0, 1]) with eager fp32's from the same seed. `--fd-samples N` adds the project's FD (and accuracy) at
N samples (bench/samplers.py's evaluator, chunks of 100 seeded 1000 + k) for the variants in `--fd-variants`.

    flock /tmp/bench.lock python -m bench.backends [--reps 7] [--fd-samples 1000 --fd-variants "eager fp32" ...]
Writes bench/results/backends.md and backends.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import torch

from diffusion.backends import available
from diffusion.pipeline import Pipeline, cpu_name
from diffusion.registry import EVALUATOR_NAMES, FLAGSHIP, defaults_for

RESULTS = Path(__file__).resolve().parent / "results"
STUDENT = "pixel-cond-distilled"
REFERENCE = "eager fp32"
# workload -> model; live-2step / live-1step: the fewer-step students, whose bf16 quality is the question
WORKLOADS = {"generate": FLAGSHIP, "live": STUDENT, "live-2step": f"{STUDENT}-2step", "live-1step": f"{STUDENT}-1step"}
VARIANTS = {  # name -> (backend, precision)
    "eager fp32": ("eager", "fp32"), "eager bf16": ("eager", "bf16"),
    "channels_last fp32": ("channels_last", "fp32"), "channels_last bf16": ("channels_last", "bf16"),
    "compile fp32": ("compile", "fp32"), "compile bf16": ("compile", "bf16"),
    "onnxruntime fp32": ("onnxruntime", "fp32"),
    "openvino f32": ("openvino", "fp32"), "openvino bf16": ("openvino", "bf16"),
}


def load_avg() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


class NetTimer:
    """Sums the wall time spent inside every U-Net call of a score model (forward pre-hook -> forward hook)."""

    def __init__(self, score_model):
        from diffusion.score import networks
        self.total, self.calls, self._start = 0.0, 0, None
        for net in networks(score_model):
            net.register_forward_pre_hook(self._pre)
            net.register_forward_hook(self._post)

    def _pre(self, module, args):
        self._start = time.perf_counter()

    def _post(self, module, args, out):
        self.total += time.perf_counter() - self._start
        self.calls += 1

    def reset(self):
        self.total, self.calls = 0.0, 0


class Arm:
    """One variant of one workload: its own copy of the model, a Pipeline on it, and its timings."""

    def __init__(self, model, name: str, variant: str, images: int):
        backend, precision = VARIANTS[variant]
        self.model = copy.deepcopy(model)
        self.pipe = Pipeline(self.model, name=name, precision=precision, backend=backend)
        self.timer = NetTimer(self.model)
        self.labels = torch.arange(images) % 10
        self.net_s, self.total_s, self.images, self.calls = [], [], None, 0

    def run(self, seed: int = 0):
        self.timer.reset()
        t0 = time.perf_counter()
        images, _ = self.pipe.generate(self.labels, seed=seed)
        return images, time.perf_counter() - t0, self.timer.total, self.timer.calls

    def first_call(self) -> float:
        """The warm-up request (builds the runtime: export, conversion or compilation); its wall time."""
        self.images, total, _, self.calls = self.run()
        return total

    def rep(self):
        _, total, net, _ = self.run()
        self.total_s.append(total)
        self.net_s.append(net)


def ab(model, name: str, variants: list[str], images: int, reps: int) -> dict:
    arms = {v: Arm(model, name, v, images) for v in variants}
    first = {v: arm.first_call() for v, arm in arms.items()}
    for _ in range(2):                                # a second warm-up: oneDNN/ORT caches, compile recompiles
        for arm in arms.values():
            arm.run()
    order = list(arms)
    for r in range(reps):
        for v in order[r % len(order):] + order[:r % len(order)]:     # rotate, so no variant always runs first
            arms[v].rep()
    ref = arms[REFERENCE]
    today = f"eager {Pipeline(model, name=name, precision='auto', backend='eager').compute_precision}"
    base = arms.get(today, ref)                       # today's path: Pipeline's "auto" precision on eager
    rows = []
    for v, arm in arms.items():
        net, total = statistics.median(arm.net_s), statistics.median(arm.total_s)
        rows.append({"variant": v, "backend": VARIANTS[v][0], "precision": arm.pipe.compute_precision,
                     "net_ms": net * 1e3, "total_ms": total * 1e3, "net_calls": arm.calls,
                     "net_min_ms": min(arm.net_s) * 1e3, "net_min_speedup": min(ref.net_s) / min(arm.net_s),
                     "net_ms_per_call": net * 1e3 / max(arm.calls, 1), "overhead_ms": (total - net) * 1e3,
                     "net_speedup": statistics.median(ref.net_s) / net,
                     "total_speedup": statistics.median(ref.total_s) / total,
                     "net_vs_today": statistics.median(base.net_s) / net,
                     "first_call_s": first[v], "build_s": first[v] - total,
                     "max_abs_diff": float((arm.images - ref.images).abs().max()),
                     "mean_abs_diff": float((arm.images - ref.images).abs().mean())})
    d = defaults_for(name)
    return {"model": name, "images": images, "reps": reps, "today": today if today in arms else REFERENCE,
            "defaults": f"{d.sampler} {d.steps} steps, guidance {d.guidance:g}", "rows": rows}


def quality(model, name: str, variants: list[str], n: int, classifier) -> dict:
    """FD / accuracy of n samples per variant (balanced digits, chunk k of 100 seeded 1000 + k), same seeds."""
    from bench.samplers import load_evaluator, run_metrics
    ev = load_evaluator(classifier)
    out, ref_imgs = {}, None
    for v in variants:
        backend, precision = VARIANTS[v]
        pipe = Pipeline(copy.deepcopy(model), name=name, precision=precision, backend=backend)
        chunks = [min(100, n - k) for k in range(0, n, 100)]
        imgs = torch.cat([pipe.generate(torch.arange(c) % 10, seed=1000 + k)[0] for k, c in enumerate(chunks)])
        labels = torch.cat([torch.arange(c) % 10 for c in chunks])
        m = run_metrics(ev, imgs, labels, [n])
        ref_imgs = imgs if ref_imgs is None else ref_imgs
        out[v] = {"fd": m["fd"], "accuracy": m["accuracy"], "max_abs_diff": float((imgs - ref_imgs).abs().max()),
                  "mean_abs_diff": float((imgs - ref_imgs).abs().mean())}
        print(f"  quality {name} {v}: FD {m['fd']:.3f}, accuracy {m['accuracy']:.4f}  (load {load_avg()})", flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", nargs="+", default=["generate", "live"], choices=list(WORKLOADS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--fd-samples", type=int, default=0)
    p.add_argument("--fd-variants", nargs="+", default=[REFERENCE], choices=list(VARIANTS))
    p.add_argument("--quality-only", action="store_true",
                   help="only the FD runs, added to the stored A/B of each workload (its speed rows kept)")
    p.add_argument("--cold-compile", action="store_true",
                   help="torch.compile from an empty inductor cache (a fresh Space's first request); default: the "
                        "on-disk cache of earlier runs, if any")
    p.add_argument("--tag", default="", help="results key suffix, e.g. ' (compile)' for a separate run")
    p.add_argument("--weights-dir", default=None)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)

    from diffusion.hub import load_model
    if args.cold_compile:
        import tempfile
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")
    variants = [REFERENCE, *(v for v in args.variants if v != REFERENCE and available(VARIANTS[v][0]))]
    skipped = [v for v in args.variants if not available(VARIANTS[v][0])]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "backends.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    meta = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_before": load_avg(), "versions": _versions(), "skipped": skipped,
            "inductor_cache": "cold (empty)" if args.cold_compile else "warm (on-disk cache of earlier runs, if any)"}
    names = WORKLOADS
    for workload in args.workloads:
        model = load_model(names[workload], weights_dir=args.weights_dir).eval()
        if args.quality_only:
            res = results[workload + args.tag]
        else:
            res = ab(model, names[workload], variants, args.images, args.reps)
            res["load_after"] = load_avg()
            res.update(meta)
            print_table(workload, res)
        if args.fd_samples:
            classifier = load_model(EVALUATOR_NAMES[0], weights_dir=args.weights_dir)
            fd_variants = [REFERENCE, *(v for v in args.fd_variants if v != REFERENCE and v in variants)]
            res["quality"] = {"n": args.fd_samples, "load_before": load_avg(),
                              **quality(model, names[workload], fd_variants, args.fd_samples, classifier)}
            res["quality"]["load_after"] = load_avg()
        results[workload + args.tag] = res
    path.write_text(json.dumps(results, indent=1))
    write_report(results, out / "backends.md")
    print(f"wrote {out / 'backends.md'}")


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for pkg in ("onnxruntime", "onnx", "openvino"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def print_table(workload: str, res: dict) -> None:
    print(f"\n{workload}: {res['model']}, {res['images']} images, {res['defaults']}, median of {res['reps']}, "
          f"{cpu_name()}, load {load_avg()}")
    print(f"{'variant':20s} {'net ms':>8s} {'total ms':>9s} {'net x':>6s} {'total x':>7s} {'min x':>6s} {'build s':>8s} "
          f"{'max|diff|':>9s}")
    for r in res["rows"]:
        print(f"{r['variant']:20s} {r['net_ms']:8.1f} {r['total_ms']:9.1f} {r['net_speedup']:6.2f} "
              f"{r['total_speedup']:7.2f} {r['net_min_speedup']:6.2f} {r['build_s']:8.1f} {r['max_abs_diff']:9.2e}",
              flush=True)


def write_report(results: dict, path: Path) -> None:
    lines = ["# Inference backends: speed and quality (issue 24, item 2)", "",
             "`python -m bench.backends` (diffusion/backends.py). Each workload end to end through `Pipeline.generate` "
             "with the model's defaults, same seeds; median of interleaved reps (variant order rotated) after "
             "warm-ups; \"net min\": the fastest rep (the least disturbed by other load). net = time inside the U-Net calls; total = the whole request (net + the sampler's per-step "
             "arithmetic + bookkeeping); build = first call minus a warm call (export / conversion / compilation). "
             "max |diff|: largest pixel difference of the final images from eager fp32's (images in [0, 1]). "
             "Adopt at >= 1.3x without a quality loss. A section with a tag in its title is a separate run "
             "(`--tag`), compared only within itself.", ""]
    for workload, res in results.items():
        if not isinstance(res, dict) or "rows" not in res:
            continue
        lines += [f"## {workload}: {res['model']}, {res['images']} images, {res['defaults']}", "",
                  f"{res['cpu']}, {res['threads']} threads, torch {res['torch']}, "
                  + ", ".join(f"{k} {v}" for k, v in res["versions"].items() if v)
                  + f"; load average (1/5/15 min) {res['load_before']} before, {res['load_after']} after; "
                  f"{res['reps']} reps." + (f" Not installed: {', '.join(res['skipped'])}." if res["skipped"] else "")
                  + f" torch.compile's inductor cache: {res.get('inductor_cache', 'not recorded')}."
                  + f" Today's path: {res.get('today', REFERENCE)} (Pipeline's \"auto\" precision for this model).",
                  "", "| variant | net ms | net calls | total ms | net speed-up | total speed-up | net vs today | "
                  "net min ms | min vs min | build s | max abs diff | mean abs diff |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in res["rows"]:
            lines.append(f"| {r['variant']} | {r['net_ms']:.1f} | {r['net_calls']} | {r['total_ms']:.1f} | "
                         f"{r['net_speedup']:.2f}x | {r['total_speedup']:.2f}x | {r.get('net_vs_today', 0):.2f}x | "
                         f"{r.get('net_min_ms', 0):.1f} | {r.get('net_min_speedup', 0):.2f}x | {r['build_s']:.1f} | "
                         f"{r['max_abs_diff']:.1e} | {r['mean_abs_diff']:.1e} |")
        fast = [r for r in res["rows"] if r.get("net_vs_today", 0) >= 1.3]
        lines += ["", "At >= 1.3x the network time of today's path: " + (", ".join(
            f"{r['variant']} ({r['net_vs_today']:.2f}x" + (f", FD {res['quality'][r['variant']]['fd']:.3f}"
                                                         if r["variant"] in res.get("quality", {}) else "") + ")"
            for r in fast) or "none") + "."]
        today = next((r for r in res["rows"] if r["variant"] == res.get("today")), res["rows"][0])
        lines += ["", f"Outside the network on today's path ({today['variant']}): {today['overhead_ms']:.1f} ms of "
                  f"{today['total_ms']:.1f} ({100 * today['overhead_ms'] / today['total_ms']:.1f}% of the request: the "
                  "sampler's per-step tensor arithmetic, prior, clamping); folding it into fewer calls cannot pay "
                  "more than that share."]
        q = res.get("quality")
        if q:
            lines += ["", f"Quality at {q['n']} samples (same seeds; FD on the project classifier's features against "
                      f"the MNIST test set, lower is better; load {q.get('load_before', '?')} before, "
                      f"{q.get('load_after', '?')} after):", "",
                      "| variant | FD | accuracy | max abs diff | mean abs diff |", "|---|---:|---:|---:|---:|"]
            lines += [f"| {v} | {m['fd']:.3f} | {m['accuracy']:.4f} | {m['max_abs_diff']:.2e} | "
                      f"{m['mean_abs_diff']:.1e} |" for v, m in q.items() if isinstance(m, dict)]
        lines.append("")
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
