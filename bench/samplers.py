"""Sampler benchmark: sample quality against network evaluations (NFE) for every trained score model.

For each model x sampler x NFE (rk45: x tolerance, NFE measured) and guidance weight:
  - conditional accuracy (the project classifier's prediction == the digit asked for; conditional models),
  - Frechet distance on classifier features (diffusion/metrics.py) against the 10k MNIST test images,
  - wall time per image (2-CPU build machine unless stated).
Images come in chunks of CHUNK (CHUNK/10 per digit), chunk k seeded with seed + k, so a run with N=200
holds exactly the first 200 images of a run with N=1000: FD on a common prefix compares runs of any N
(FD is biased upward at small N; compare only figures at the same N). The floor is 10k train images
against the test set, and N train images against it at each N used.

Results accumulate in bench/results/samplers.json (one record per model/sampler/steps/guidance/N/seed,
replaced when re-run); each invocation rewrites samplers.md, guidance.md and quality_vs_nfe.png from it.

    python -m bench.samplers --quick                                   # smoke test, writes bench/results/quick/
    python -m bench.samplers --models pixel-cond --samplers dpmpp_2m heun --nfe 10 20 35 50 --samples 1000
    python -m bench.samplers --models pixel-cond --samplers euler_maruyama --nfe 500 --samples 200
    python -m bench.samplers --models pixel-cond --samplers dpmpp_2m --nfe 20 --guidance 0 1 2 3 5
    python -m bench.samplers ... --dry-run                             # plan + estimated wall time only
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from diffusion.metrics import class_histogram, classify, conditional_accuracy, feature_stats, frechet_distance
from diffusion.pipeline import DEFAULT_GUIDANCE, PRECISIONS
from diffusion.cost import seconds_per_nfe
from diffusion.samplers import SAMPLERS, sampler_spec

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK = 200
DEFAULT_NFE = (10, 20, 35, 50, 100, 250, 500)
REFERENCE = ("euler_maruyama", 500)


# ---------------------------------------------------------------- data and metrics


def feature_cache(classifier, n_floor: int) -> Path:
    """Cache file for the test/train features, keyed by a hash of the classifier's weights."""
    import hashlib
    h = hashlib.sha256()
    for k, v in sorted(classifier.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    from train.data import CACHE
    return CACHE / "bench" / f"features-{h.hexdigest()[:16]}-{n_floor}.npz"


class Evaluator:
    """Classifier features of the 10k test images, and FD / accuracy of a batch of samples against them."""

    def __init__(self, classifier, n_floor: int = 10_000):
        self.classifier = classifier
        cache = feature_cache(classifier, n_floor)
        if cache.is_file():
            with np.load(cache) as d:
                f_test, self.f_train = torch.from_numpy(d["test"]), torch.from_numpy(d["train"])
        else:
            from train.data import load_mnist
            x_test, _ = load_mnist("test")
            _, f_test = classify(classifier, x_test)
            x_train, _ = load_mnist("train")
            perm = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))
            _, self.f_train = classify(classifier, x_train[perm[:n_floor]])
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, test=f_test.numpy(), train=self.f_train.numpy())
        self.test_stats = feature_stats(f_test)

    def fd(self, features: torch.Tensor) -> float:
        return frechet_distance(*feature_stats(features), *self.test_stats)

    def floor(self, n: int) -> float:
        """FD of n (random) training images against the test set: the best any sampler can score at this n."""
        return self.fd(self.f_train[:n])

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor | None, prefixes) -> dict:
        preds, feats = classify(self.classifier, images[:, None] if images.ndim == 3 else images)
        out = {"fd": self.fd(feats), "fd_at": {str(n): self.fd(feats[:n]) for n in prefixes if n < len(feats)},
               "class_hist": [round(v, 4) for v in class_histogram(preds)]}
        out["fd_at"][str(len(feats))] = out["fd"]
        if labels is not None:
            acc, per_class = conditional_accuracy(preds, labels)
            out.update(accuracy=acc, per_class=[round(v, 4) for v in per_class],
                       acc_at={str(n): conditional_accuracy(preds[:n], labels[:n])[0] for n in prefixes if n <= len(preds)})
        return out


# ---------------------------------------------------------------- generation


def chunk_labels(n: int, conditional: bool):
    return torch.arange(10).repeat(n // 10) if conditional else None


def generate(pipe, sampler: str, steps: int | None, n: int, guidance: float, seed: int, chunk: int, extras: dict):
    """n images in chunks of `chunk` (chunk k seeded seed + k); returns images (n, 28, 28), labels, wall s, mean NFE."""
    images, labels, nfes, wall = [], [], [], 0.0
    generate.cpu_s = 0.0
    for k in range(math.ceil(n / chunk)):
        m = min(chunk, n - k * chunk)
        lab = chunk_labels(m, pipe.conditional)
        t0, c0 = time.perf_counter(), time.process_time()
        imgs, last = pipe.generate(lab, num_images=m, sampler=sampler, num_steps=steps, guidance=guidance,
                                   seed=seed + k, **extras)
        wall += time.perf_counter() - t0
        generate.cpu_s += time.process_time() - c0
        images.append(imgs)
        labels.append(lab if lab is not None else torch.full((m,), -1))
        nfes.append(last.nfe)
        print(f"    chunk {k}: {m} images, NFE {last.nfe}, {time.perf_counter() - t0:.1f} s", flush=True)
    return torch.cat(images), torch.cat(labels), wall, float(np.mean(nfes))


def plan(models, samplers, nfes, tols, guidances):
    """(model, sampler, steps, nominal NFE, guidance, extras) for every point of the grid."""
    for model in models:
        for w in guidances:
            for s in samplers:
                spec = sampler_spec(s)
                if spec.adaptive:
                    for tol in tols:
                        yield model, s, None, None, w, {"rtol": tol, "atol": tol}
                    continue
                seen = set()
                for nfe in nfes:
                    steps = spec.steps_for(nfe)
                    if steps in seen:
                        continue
                    seen.add(steps)
                    yield model, s, steps, spec.nfe_for(steps), w, {}


# ---------------------------------------------------------------- results store and reports


def record_key(r: dict) -> tuple:
    return (r["model"], r["sampler"], r["steps"], r.get("tol"), r["guidance"], r["n"], r["seed"])


def load_store(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"floor": {}, "runs": []}


def merge(store: dict, rec: dict) -> None:
    """Add `rec`, replacing its own earlier run and any smaller run of the same point: with the same seed and chunk
    size a run's first n images are exactly the smaller run's images, so the larger run holds all it measured."""
    def same_point(r):
        return record_key(r)[:5] + record_key(r)[6:] == record_key(rec)[:5] + record_key(rec)[6:]
    def superseded(r):
        return same_point(r) and r["n"] <= rec["n"] and r.get("chunk") == rec.get("chunk")
    store["runs"] = [r for r in store["runs"] if not superseded(r)] + [rec]


def _fmt(v, nd=2):
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{nd}f}"


def common_n(runs) -> int:
    return min(r["n"] for r in runs)


def reference_run(runs, n: int):
    refs = [r for r in runs if (r["sampler"], r["steps"]) == REFERENCE and r["n"] >= n]
    return min(refs, key=lambda r: r["n"]) if refs else None


def groups(store: dict):
    """Runs grouped by (model, guidance), in a stable order."""
    out: dict = {}
    for r in store["runs"]:
        out.setdefault((r["model"], r["guidance"]), []).append(r)
    order = {"pixel-cond": 0, "latent-cond": 1, "pixel-uncond": 2}
    return dict(sorted(out.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1] if kv[0][1] is not None else 1)))


def timing_marks(store: dict) -> dict:
    """note -> '*', '**', ...: the machine and load each timing was taken under."""
    notes = sorted({r.get("note") for r in store["runs"] if r.get("note")})
    return {n: "*" * (i + 1) for i, n in enumerate(notes)}


def timing_legend(store: dict) -> list[str]:
    mark = timing_marks(store)
    if not mark:
        return []
    return ["Timing conditions (marked after the ms / image figure): " + "; ".join(f"{m} {n}" for n, m in mark.items()),
            ""]


def sampler_table(store: dict) -> str:
    floor = store.get("floor", {})
    chunks = "/".join(str(c) for c in sorted({r.get("chunk", CHUNK) for r in store["runs"]})) or CHUNK
    lines = ["# Sampler benchmark: quality vs NFE", "",
             "Fréchet distance (FD) on the project classifier's 128-d penultimate features against the 10k MNIST "
             "test images (lower is better; comparable only within this project and only at equal N, since FD is "
             "biased upward at small N). Accuracy: fraction of samples the classifier reads as the digit asked for "
             "(conditional models); worst: the lowest per-digit accuracy. `FD@Nc` is the FD of the first Nc images "
             "of every run (the same prior noise for every sampler: images are generated in seeded chunks), which is "
             "what the EM-500 comparison and the plot use. Wall time: generation only, per finished image, "
             f"batched {chunks} images per call (a guided call evaluates a doubled batch), "
             f"{store.get('machine', 'CPU')}.", ""]
    lines += timing_legend(store)
    mark = timing_marks(store)
    if floor:
        lines += ["Floor (real data against the test set): " + ", ".join(
            f"N={n}: {_fmt(v)}" for n, v in sorted(floor.items(), key=lambda kv: int(kv[0]))) +
            " (training images, a random subset).", ""]
    for (model, w), runs in groups(store).items():
        if len(runs) < 2:
            continue  # a lone point (e.g. of a guidance sweep): see guidance.md
        nc = common_n(runs)
        ref = reference_run(runs, nc)
        ref_fd = ref["fd_at"].get(str(nc)) if ref else None
        nr = ref["n"] if ref else None                      # the reference's own N: the decisive comparison
        title = f"## {model}" + (f", guidance w = {w:g}" if w is not None else "")
        lines += [title, "", f"Nc = {nc}; floor at Nc: {_fmt(floor.get(str(nc)))}; EM-500 FD@Nc: {_fmt(ref_fd)}"
                  + (f"; EM-500 FD@{nr}: {_fmt(ref['fd'])} (floor at {nr}: {_fmt(floor.get(str(nr)))})"
                     if ref and nr > nc else ""), ""]
        best = cheapest_within(runs, ref)
        if best:
            r, ratio, below = best
            lines += [f"**Cheapest grid point (NFE {', '.join(map(str, DEFAULT_NFE))}) within 10% of EM-500's FD at "
                      f"N = {nr}:** {r['sampler']}, {r['steps']} steps ({r['nfe']:.0f} NFE; grid point {grid_nfe(r)}), FD "
                      f"{_fmt(r['fd_at'][str(nr)])} = {_fmt(ratio)}× EM-500, "
                      + (f"{_fmt(ref['ms_per_image'] / r['ms_per_image'], 0)}× faster." if ref.get("note") == r.get("note")
                         else f"{ref['nfe'] / r['nfe']:.0f}× fewer network evaluations (timed under different "
                              "conditions, see the marks).")
                      + ("" if not below else " Below the grid, also within 10%: " + ", ".join(
                          f"{b['sampler']} {b['steps']} steps ({b['nfe']:.0f} NFE, FD {_fmt(b['fd_at'][str(nr)])})"
                          for b, _ in below) + "."), ""]
        ratio_at = f"FD@{nr} / EM-500" if ref and nr > nc else "—"
        lines += ["| sampler | steps | NFE | N | FD (N) | FD@Nc | FD@Nc / EM-500 | " + ratio_at
                  + " | accuracy | worst digit | ms / image | wall s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in sorted(runs, key=lambda r: (list(SAMPLERS).index(r["sampler"]), r["nfe"], r["n"])):
            fdc = r["fd_at"].get(str(nc))
            ratio = fdc / ref_fd if (fdc is not None and ref_fd) else None
            fdr = r["fd_at"].get(str(nr)) if ref and nr > nc else None
            ratio_r = fdr / ref["fd"] if fdr is not None else None
            steps = f"tol {r['tol']:g}" if r.get("tol") else str(r["steps"])
            worst = min(r["per_class"]) if r.get("per_class") else None
            lines.append(f"| {r['sampler']} | {steps} | {r['nfe']:.0f} | {r['n']} | {_fmt(r['fd'])} | {_fmt(fdc)} | "
                         f"{_fmt(ratio)} | {_fmt(ratio_r)} | {_fmt(r.get('accuracy'), 3)} | {_fmt(worst, 2)} | "
                         f"{_fmt(r['ms_per_image'], 1)}{mark.get(r.get('note'), '')} | {_fmt(r['wall_s'], 0)} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def grid_nfe(r: dict, grid=DEFAULT_NFE) -> int | None:
    """The NFE budget of the grid a fixed-step run realises (heun 10 steps = 19 NFE is the 20 point), else None."""
    if not r.get("steps"):
        return None
    spec = sampler_spec(r["sampler"])
    return next((g for g in grid if spec.steps_for(g) == r["steps"]), None)


def on_grid(r: dict, grid=DEFAULT_NFE) -> bool:
    return grid_nfe(r, grid) is not None


def cheapest_within(runs, ref, tolerance: float = 0.10, grid=DEFAULT_NFE):
    """The rule the defaults follow: among the grid runs whose FD, on the reference's N images, is within
    `tolerance` of EM-500's, the one at the smallest grid budget, the lowest FD breaking ties. Returns (run, FD ratio, [(run, ratio) of cheaper off-grid runs that also pass])
    or None."""
    if not ref:
        return None
    key = str(ref["n"])
    ok = [(r, r["fd_at"][key] / ref["fd"]) for r in runs
          if r is not ref and r.get("steps") and key in r["fd_at"] and r["fd_at"][key] <= (1 + tolerance) * ref["fd"]]
    # cost = the grid budget (heun's 9 NFE and dpmpp_2m's 10 are both the 10 point); ties go to the lower FD
    on = sorted((rr for rr in ok if on_grid(rr[0], grid)), key=lambda rr: (grid_nfe(rr[0], grid), rr[1]))
    if not on:
        return None
    below = sorted((rr for rr in ok if not on_grid(rr[0], grid) and rr[0]["nfe"] < grid_nfe(on[0][0], grid)),
                   key=lambda rr: rr[0]["nfe"])
    return on[0][0], on[0][1], below


def guidance_table(store: dict) -> str | None:
    sweeps: dict = {}
    for r in store["runs"]:
        if r["guidance"] is not None:
            sweeps.setdefault((r["model"], r["sampler"], r["steps"], r.get("tol")), []).append(r)
    sweeps = {k: v for k, v in sweeps.items() if len({r["guidance"] for r in v}) >= 3}
    if not sweeps:
        return None
    lines = ["# Classifier-free guidance sweep", "",
             "s = s_uncond + w (s_cond - s_uncond); w = 0 is the unconditional model, w = 1 the plain conditional "
             "one (a single, not doubled, batch: half the cost per step). FD against the 10k test images and accuracy "
             "(the classifier reads the digit asked for) on the first Nc images of each run (same seeds for every w); "
             "the last columns give the run's own N where it is larger.", "", *timing_legend(store)]
    floor = store.get("floor", {})
    mark = timing_marks(store)
    for (model, sampler, steps, tol), runs in sweeps.items():
        best = {}
        for r in runs:
            if r["guidance"] not in best or r["n"] > best[r["guidance"]]["n"]:
                best[r["guidance"]] = r
        nc = min(r["n"] for r in best.values())
        lines += [f"## {model}, {sampler}, {steps} steps (NFE {runs[0]['nfe']:.0f}), Nc = {nc} "
                  f"(train-vs-test floor at Nc: {_fmt(floor.get(str(nc)))})", "",
                  "| guidance w | accuracy@Nc | worst digit | FD@Nc | ms / image | N | accuracy (N) | FD (N) |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for w, r in sorted(best.items()):
            lines.append(f"| {w:g} | {_fmt(r.get('acc_at', {}).get(str(nc)), 3)} | {_fmt(min(r['per_class']), 2)} | "
                         f"{_fmt(r['fd_at'].get(str(nc)))} | {_fmt(r['ms_per_image'], 1)}{mark.get(r.get('note'), '')} | "
                         f"{r['n']} | "
                         f"{_fmt(r.get('accuracy'), 3)} | {_fmt(r['fd'])} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(store: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullFormatter, ScalarFormatter

    # one panel per model at its sweep guidance (the most common guidance among its runs)
    panels = {}
    for (model, w), runs in groups(store).items():
        if model not in panels or len(runs) > len(panels[model][1]):
            panels[model] = (w, runs)
    if not panels:
        return
    # one column per model; top row at the model's largest N (1000: the comparison that sets the defaults), bottom
    # row at the N every run of that model has (200: the SDE samplers' and RK45's curves), where they differ
    columns = []
    for model, (w, runs) in panels.items():
        nc, nmax = common_n(runs), max(r["n"] for r in runs)
        top = nmax if nmax > nc and sum(str(nmax) in r["fd_at"] for r in runs) >= 2 else nc
        columns.append([(model, w, runs, top)] + ([(model, w, runs, nc)] if top != nc else []))
    nrows = max(len(c) for c in columns)
    fig, axes = plt.subplots(nrows, len(columns), figsize=(5.6 * len(columns), 4.6 * nrows), squeeze=False)
    views, used = [], []
    for j, col in enumerate(columns):
        for i, view in enumerate(col):
            views.append(view)
            used.append(axes[i][j])
        for i in range(len(col), nrows):
            axes[i][j].set_visible(False)
    colors = {"dpmpp_2m": "C0", "heun": "C1", "euler_maruyama": "C2", "predictor_corrector": "C3", "rk45": "C4",
              "dpmpp_2m_sde": "C5"}
    floor = store.get("floor", {})
    for ax, (model, w, runs, nc) in zip(used, views):
        for s in SAMPLERS:
            pts = sorted((r["nfe"], r["fd_at"][str(nc)]) for r in runs if r["sampler"] == s and str(nc) in r["fd_at"]
                         and (r["sampler"], r["steps"]) != REFERENCE)
            if pts:
                ax.plot(*zip(*pts), "s--" if sampler_spec(s).adaptive else "o-", color=colors[s], label=s)
        ref = reference_run(runs, nc)
        if ref:
            ax.axhline(ref["fd_at"][str(nc)], color="k", ls="--", lw=1, label="EM-500 reference")
            ax.plot([500], [ref["fd_at"][str(nc)]], "k*", ms=9)
        if str(nc) in floor:
            ax.axhline(floor[str(nc)], color="grey", ls=":", lw=1, label=f"train vs test floor (N={nc})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([t for t in (5, 10, 20, 35, 50, 100, 250, 500) if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]])
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        low, high = ax.get_ylim()
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g") if high / low < 8 else NullFormatter())
        ax.set_xlabel("network evaluations (NFE)")
        ax.set_ylabel(f"Fréchet distance, classifier features (N={nc})")
        ax.set_title(f"{model}" + (f", w = {w:g}" if w is not None else "") + f": FD vs NFE, N = {nc}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Sample quality vs sampling cost (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(store: dict, out: Path) -> None:
    (out / "samplers.md").write_text(sampler_table(store))
    g = guidance_table(store)
    if g:
        (out / "guidance.md").write_text(g)
    plot(store, out / "quality_vs_nfe.png")


# ---------------------------------------------------------------- main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["pixel-cond", "latent-cond", "pixel-uncond"])
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    p.add_argument("--nfe", nargs="+", type=int, default=list(DEFAULT_NFE))
    p.add_argument("--rk45-tol", nargs="+", type=float, default=[1e-2, 1e-3])
    p.add_argument("--samples", type=int, default=1000, help="images per point (a multiple of 10)")
    p.add_argument("--guidance", nargs="+", type=float, default=[DEFAULT_GUIDANCE],
                   help="guidance weights (conditional models; several values make a sweep -> guidance.md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=CHUNK, help="images per generate() call")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="score network precision (default fp32, as every stored result; auto: the app's choice)")
    p.add_argument("--weights-dir", default=None)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--note", default="", help="stored with each record and shown in samplers.md (e.g. machine load)")
    p.add_argument("--grids", action="store_true", help="also save a 10x10 grid of each run's first 100 images")
    p.add_argument("--quick", action="store_true", help="smoke test: pixel-cond, 20 images, NFE 10, rk45 tol 1e-2")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its estimated wall time, run nothing")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite samplers.md, guidance.md and the plot from the stored results, run nothing")
    args = p.parse_args(argv)
    if args.report_only:
        out = Path(args.out)
        write_reports(load_store(out / "samplers.json"), out)
        print(f"wrote {out / 'samplers.md'}, {out / 'quality_vs_nfe.png'}")
        return
    if args.quick:
        args.models, args.nfe, args.samples, args.rk45_tol, args.chunk = ["pixel-cond"], [10], 20, [1e-2], 20
        args.out = str(Path(args.out) / "quick")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.samples % 10:
        p.error("--samples must be a multiple of 10")
    chunk = min(args.chunk, args.samples)

    from diffusion.hub import load_model, load_pipeline
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store_path = out / "samplers.json"
    store = load_store(store_path)
    from bench.inference import cpu_name
    store["machine"] = (f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}" if not torch.cuda.is_available()
                        else "GPU")

    pipes = {m: load_pipeline(m, weights_dir=args.weights_dir) for m in args.models}
    for pipe in pipes.values():
        pipe.precision = args.precision
    points = list(plan(args.models, args.samplers, args.nfe, args.rk45_tol, args.guidance))
    # dedupe guidance for unconditional models
    seen, todo = set(), []
    for m, s, steps, nfe, w, ex in points:
        w = w if pipes[m].conditional else None
        key = (m, s, steps, ex.get("rtol"), w)
        if key not in seen:
            seen.add(key)
            todo.append((m, s, steps, nfe, w, ex))

    cost = {(m, w): seconds_per_nfe(pipes[m].score_model, chunk, guidance=1.0 if w is None else w, reps=3)
            for m, _, _, _, w, _ in todo}
    total = 0.0
    print(f"plan: {len(todo)} points, {args.samples} images each (chunks of {chunk}), {torch.get_num_threads()} threads")
    for m, s, steps, nfe, w, ex in todo:
        est = cost[(m, w)] * args.samples * (nfe or sampler_spec(s).typical_nfe)
        total += est
        print(f"  {m:12s} {s:20s} steps {steps!s:>5} NFE {nfe or '~?':>4} w {w!s:>4}  ~{est:7.0f} s"
              + (f"  ({s}: NFE assumed {sampler_spec(s).typical_nfe})" if nfe is None else ""))
    print(f"estimated total: {total / 60:.1f} min ({', '.join(f'{k[0]} w={k[1]}: {1e3 * v:.2f} ms/img-NFE' for k, v in cost.items())})")
    if args.dry_run:
        return

    classifier = load_model("classifier", weights_dir=args.weights_dir)
    t0 = time.perf_counter()
    ev = Evaluator(classifier)
    prefixes = sorted({200, 400, 1000, args.samples} | {chunk})
    for n in sorted({10_000, *prefixes}):
        store["floor"][str(n)] = ev.floor(n)
    print("floor (train vs test): " + ", ".join(f"N={n}: {v:.2f}" for n, v in store["floor"].items())
          + f"  [{time.perf_counter() - t0:.0f} s]")

    t_all = time.perf_counter()
    for m, s, steps, nfe, w, ex in todo:
        print(f"{m} {s} steps={steps} tol={ex.get('rtol')} guidance={w} N={args.samples}", flush=True)
        images, labels, wall, nfe_used = generate(pipes[m], s, steps, args.samples, 1.0 if w is None else w,
                                                  args.seed, chunk, ex)
        res = ev.evaluate(images, labels if pipes[m].conditional else None, prefixes)
        if args.grids:
            from diffusion.images import save_grid
            (out / "grids").mkdir(exist_ok=True)
            tag = f"tol{ex['rtol']:g}" if sampler_spec(s).adaptive else f"{steps}steps"
            save_grid(images[:100], out / "grids" / f"{m}_{s}_{tag}_w{w if w is not None else 1:g}.png", nrow=10)
        rec = {"model": m, "sampler": s, "steps": steps, "tol": ex.get("rtol"), "nfe": nfe_used, "guidance": w,
               "n": args.samples, "seed": args.seed, "chunk": chunk, "wall_s": wall,
               "ms_per_image": 1e3 * wall / args.samples, "cpu_ms_per_image": 1e3 * generate.cpu_s / args.samples,
               "ms_per_image_nfe": 1e3 * wall / args.samples / nfe_used,
               "threads": torch.get_num_threads(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "note": args.note,
               "cpu": cpu_name() if not torch.cuda.is_available() else torch.cuda.get_device_name(),
               "precision": pipes[m].compute_precision, **res}
        merge(store, rec)
        store_path.write_text(json.dumps(store, indent=1))
        write_reports(store, out)
        print(f"  -> NFE {nfe_used:.0f}  FD {res['fd']:.2f}  acc {res.get('accuracy', float('nan')):.3f}  "
              f"{rec['ms_per_image']:.1f} ms/image  (run total {time.perf_counter() - t_all:.0f} s)", flush=True)
    write_reports(store, out)
    print(f"wrote {out / 'samplers.md'}, {out / 'quality_vs_nfe.png'}, {store_path}")


if __name__ == "__main__":
    main()
