"""The sampler benchmark's results store (bench/results/samplers.json) and its reports: the per-model sampler tables
(samplers.md), the guidance sweep (guidance.md), the quality-vs-NFE plot, and the rule the v1 sampler defaults follow
(`cheapest_within`). Sampling and scoring live in bench/samplers.py.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from diffusion.registry import evaluation_order
from diffusion.samplers import SAMPLERS, sampler_spec

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_NFE = (10, 20, 35, 50, 100, 250, 500)
REFERENCE = ("euler_maruyama", 500)
CHUNK = 200                      # images per seeded chunk (bench/samplers.py samples in these)


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
    order = {name: i for i, name in enumerate(evaluation_order(role="score"))}     # pixel-cond, latent-cond, pixel-uncond
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
                ax.plot(*zip(*pts), "s--" if sampler_spec(s).adaptive else "o-",
                        color=colors.get(s, f"C{6 + sorted(SAMPLERS).index(s) % 4}"), label=s)
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
