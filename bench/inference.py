"""Inference speed on the app's default path, and latent vs pixel cost.

Part 1, the default path: pixel-cond, 16 images, the default sampler / steps / guidance. Each variant
runs the same seeded sampling; the figure is the median wall time over `--reps` interleaved repetitions
after a warm-up, and the final images are compared with the baseline's (max |diff| in [0, 1] units):
  baseline       torch.inference_mode, fp32, contiguous (NCHW), torch's default threads = Pipeline.generate with
                 precision "fp32" (its "auto" default is bf16 on a CPU with bf16 hardware: the row below)
  no_grad        torch.no_grad instead of inference_mode
  channels_last  model and input in channels_last memory format
  threads=N      torch.set_num_threads(N)
  compile        torch.compile(score_model.net) (compile time reported separately)
  bf16           torch.autocast("cpu", torch.bfloat16); quality also as FD / accuracy on `--bf16-samples`
A variant is worth adopting only at >= 1.2x and equal quality.

Part 2, latent vs pixel (`--latent`): seconds per network evaluation (one guided call on the 16-image
batch, and per image at batch 200) and per finished image on the default path, for pixel-cond and
latent-cond, measured in one run; the latent figure includes the decoder, whose share is given.

    python -m bench.inference [--reps 5] [--compile] [--bf16-samples 200] [--latent]
Writes bench/results/inference.md, latent_vs_pixel.md and inference.json.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from diffusion.pipeline import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS, cpu_name
from diffusion.registry import EVALUATOR_NAMES, FLAGSHIP, model_spec, pixel_and_latent
from diffusion.cost import seconds_per_nfe
from diffusion.samplers import sample, sampler_spec

from bench.samplers import load_evaluator, run_metrics

RESULTS = Path(__file__).resolve().parent / "results"


def run_default(score_model, n: int, *, seed: int = 0, grad_mode=torch.inference_mode, channels_last=False,
                autocast=False, sampler=DEFAULT_SAMPLER, steps=DEFAULT_STEPS, guidance=DEFAULT_GUIDANCE):
    """The pipeline's pixel path (prior -> sampler -> clamp) with the knobs under test; returns (images, seconds)."""
    t0 = time.perf_counter()
    with grad_mode():
        g = torch.Generator().manual_seed(seed)
        x = score_model.sde.prior_sample((n, *score_model.sample_shape), g)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        labels = torch.arange(n) % 10 if score_model.conditional else None
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with ctx:
            out, _ = sample(sampler, score_model, x, labels, num_steps=steps, generator=g, guidance=guidance)
        img = out.float().clamp(0, 1)[:, 0]
    return img, time.perf_counter() - t0


def timed(variants: dict, reps: int) -> dict:
    """variants: name -> zero-arg fn returning (images, seconds). Interleaved reps after one warm-up each."""
    times = {k: [] for k in variants}
    images = {}
    for k, fn in variants.items():
        images[k], _ = fn()
    for _ in range(reps):
        for k, fn in variants.items():
            times[k].append(fn()[1])
    return {k: (statistics.median(v), min(v), images[k]) for k, v in times.items()}


def with_threads(n: int, fn):
    def run():
        old = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(old)
    return run


def sample_quality(score_model, n: int, autocast: bool, classifier, chunk: int = 100):
    """FD / accuracy of n default-path samples (balanced digits, chunk k seeded k) against the test set."""
    ev = load_evaluator(classifier)
    imgs = torch.cat([run_default(score_model, min(chunk, n - k * chunk), seed=1000 + k, autocast=autocast)[0]
                      for k in range(-(-n // chunk))])
    labels = torch.cat([torch.arange(min(chunk, n - k * chunk)) % 10 for k in range(-(-n // chunk))])
    return run_metrics(ev, imgs, labels, [n]), imgs


def latent_vs_pixel(n: int, reps: int, weights_dir=None) -> dict:
    from diffusion.hub import WeightsNotFound, load_model, load_pipeline
    from diffusion.pipeline import Pipeline
    out = {}
    pixel, latent = pixel_and_latent()
    pipes = {pixel: load_pipeline(pixel, weights_dir=weights_dir)}
    try:
        pipes[latent] = load_pipeline(latent, weights_dir=weights_dir)
        out["latent_weights"] = "trained"
    except WeightsNotFound:
        # cost depends on the architecture only: build latent-cond's (train/latent_cond.py) with random weights
        from train.diffusion_models import build_model
        from train.latent_cond import LatentCondConfig
        ae = load_model(model_spec(latent).autoencoder, weights_dir=weights_dir)
        sm = build_model(LatentCondConfig(), ae.latent_channels, ae.latent_shape[-1]).eval()
        pipes[latent] = Pipeline(sm, ae, name=latent)
        out["latent_weights"] = "untrained (latent-cond architecture from train/latent_cond.py, random init): cost only"
    for _ in range(2):  # warm-up both, then measure interleaved
        for p in pipes.values():
            p.generate(torch.arange(n) % 10, seed=0)
    runs = {name: [] for name in pipes}
    for _ in range(reps):
        for name, p in pipes.items():
            _, last = p.generate(torch.arange(n) % 10, seed=0)
            runs[name].append((last.elapsed, last.decode_time, last.nfe))
    for name, p in pipes.items():
        sm = p.score_model
        el = statistics.median(r[0] for r in runs[name])
        dec = statistics.median(r[1] for r in runs[name])
        rec = {"params": sum(q.numel() for q in sm.parameters()), "sample_shape": list(sm.sample_shape),
               "call_s_batch16_guided": n * seconds_per_nfe(sm, n, guidance=DEFAULT_GUIDANCE, reps=reps),
               "per_image_nfe_s_batch200_guided": seconds_per_nfe(sm, 200, guidance=DEFAULT_GUIDANCE, reps=3),
               "generate_s": el, "decode_s_in_generate": dec, "nfe": runs[name][0][2],
               "per_image_s": el / n}
        if p.is_latent:
            z = torch.randn(n, *sm.sample_shape)
            with torch.inference_mode():
                p.autoencoder.decode(z)
                ts = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    p.autoencoder.decode(z)
                    ts.append(time.perf_counter() - t0)
            rec["one_decode_s"] = statistics.median(ts)
            rec["decodes_per_generate"] = 3  # generate() decodes x and x0 at step 0, and the final sample
        out[name] = rec
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=FLAGSHIP)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2, 4])
    p.add_argument("--compile", action="store_true", help="also try torch.compile (slow to compile on CPU)")
    p.add_argument("--bf16-samples", type=int, default=0, help="FD/accuracy check of bf16 on this many samples")
    p.add_argument("--latent", action="store_true", help="also measure latent-cond against pixel-cond")
    p.add_argument("--skip-default", action="store_true", help="only the latent vs pixel part")
    p.add_argument("--weights-dir", default=None)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)

    from diffusion.hub import load_model
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "inference.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    n = args.images
    default_threads = torch.get_num_threads()
    t_start = time.perf_counter()

    if not args.skip_default:
        sm = load_model(args.model, weights_dir=args.weights_dir).eval()
        sm_cl = copy.deepcopy(sm).to(memory_format=torch.channels_last)
        variants = {
            "baseline (inference_mode, fp32)": lambda: run_default(sm, n),
            "no_grad": lambda: run_default(sm, n, grad_mode=torch.no_grad),
            "channels_last": lambda: run_default(sm_cl, n, channels_last=True),
            "bf16 autocast": lambda: run_default(sm, n, autocast=True),
            "bf16 autocast + channels_last": lambda: run_default(sm_cl, n, channels_last=True, autocast=True),
        }
        for t in args.threads:
            if t != default_threads:
                variants[f"threads={t}"] = with_threads(t, lambda: run_default(sm, n))
        compile_info = None
        if args.compile:
            import os
            import tempfile
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")  # a cold compile
            sm_c = copy.deepcopy(sm)
            try:
                sm_c.net = torch.compile(sm_c.net)
                t0 = time.perf_counter()
                run_default(sm_c, n)                 # first run: traces and compiles (+ recompiles, if any)
                compile_s = time.perf_counter() - t0
                variants["torch.compile"] = lambda: run_default(sm_c, n)
                compile_info = {"first_run_s": compile_s}
            except Exception as e:  # noqa: BLE001 - report and carry on
                compile_info = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        res = timed(variants, args.reps)
        base_med, _, base_img = res["baseline (inference_mode, fp32)"]
        rows = []
        for k, (med, mn, img) in res.items():
            rows.append({"variant": k, "median_s": med, "min_s": mn, "speedup": base_med / med,
                         "max_abs_diff": float((img - base_img).abs().max())})
        if compile_info and "first_run_s" in compile_info:
            compile_info["compile_s"] = compile_info["first_run_s"] - res["torch.compile"][0]
        bf16_quality = None
        if args.bf16_samples:
            classifier = load_model(EVALUATOR_NAMES[0], weights_dir=args.weights_dir)
            q32, i32 = sample_quality(sm, args.bf16_samples, False, classifier)
            q16, i16 = sample_quality(sm, args.bf16_samples, True, classifier)
            bf16_quality = {"n": args.bf16_samples, "fp32": {k: q32[k] for k in ("fd", "accuracy")},
                            "bf16": {k: q16[k] for k in ("fd", "accuracy")},
                            "max_abs_diff": float((i32 - i16).abs().max()),
                            "mean_abs_diff": float((i32 - i16).abs().mean())}
        results["default_path"] = {
            "model": args.model, "images": n, "sampler": DEFAULT_SAMPLER, "steps": DEFAULT_STEPS,
            "nfe": sampler_spec(DEFAULT_SAMPLER).nfe_for(DEFAULT_STEPS), "guidance": DEFAULT_GUIDANCE, "reps": args.reps,
            "default_threads": default_threads, "torch": torch.__version__, "cpu": cpu_name(), "rows": rows,
            "compile": compile_info, "bf16_quality": bf16_quality}
        for r in rows:
            print(f"{r['variant']:34s} {r['median_s']*1e3:8.1f} ms  x{r['speedup']:.2f}  max|diff| {r['max_abs_diff']:.2e}")
        print("compile:", compile_info, "\nbf16 quality:", bf16_quality)

    if args.latent:
        lp = latent_vs_pixel(n, args.reps, args.weights_dir)
        results["latent_vs_pixel"] = {"images": n, "sampler": DEFAULT_SAMPLER, "steps": DEFAULT_STEPS,
                                      "guidance": DEFAULT_GUIDANCE, "threads": default_threads, "cpu": cpu_name(),
                                      **lp}
        print(json.dumps(results["latent_vs_pixel"], indent=1))
    results["wall_s_last_run"] = time.perf_counter() - t_start
    path.write_text(json.dumps(results, indent=1))
    write_reports(results, out)
    print(f"wrote {out / 'inference.md'} ({results['wall_s_last_run']:.0f} s)")


def write_reports(results: dict, out: Path) -> None:
    d = results.get("default_path")
    if d:
        lines = ["# Inference optimisations on the default path", "",
                 f"{d['model']}, {d['images']} images, {d['sampler']} {d['steps']} steps (NFE {d['nfe']}), guidance "
                 f"{d['guidance']:g} (a doubled batch of {2 * d['images']}), torch {d['torch']}, "
                 f"{d.get('cpu', 'CPU')}, "
                 f"{d['default_threads']} threads by default. Median of {d['reps']} interleaved runs after a warm-up; "
                 "max |diff|: largest pixel difference of the final images from the baseline's (images in [0, 1]). "
                 "Adopt only at >= 1.2x and equal quality. At >= 1.2x on this machine: "
                 + (", ".join(f"{r['variant']} ({r['speedup']:.2f}x)" for r in d["rows"] if r["speedup"] >= 1.2) or "none")
                 + ".", "",
                 "| variant | median ms | min ms | speed-up | max abs diff |", "|---|---:|---:|---:|---:|"]
        for r in d["rows"]:
            lines.append(f"| {r['variant']} | {r['median_s'] * 1e3:.1f} | {r['min_s'] * 1e3:.1f} | "
                         f"{r['speedup']:.2f}x | {r['max_abs_diff']:.1e} |")
        c = d.get("compile")
        if c:
            lines += ["", "torch.compile: " + (f"failed: {c['error']}" if "error" in c else
                                               f"first run {c['first_run_s']:.1f} s, i.e. about "
                                               f"{c['compile_s']:.1f} s of compilation (cold cache) before the first image")]
        q = d.get("bf16_quality")
        if q:
            lines += ["", f"bf16 quality on {q['n']} default-path samples (same seeds): FD {q['fp32']['fd']:.2f} (fp32) "
                      f"vs {q['bf16']['fd']:.2f} (bf16); accuracy {q['fp32']['accuracy']:.3f} vs "
                      f"{q['bf16']['accuracy']:.3f}; max |diff| {q['max_abs_diff']:.3f}, mean |diff| "
                      f"{q['mean_abs_diff']:.4f}."]
        (out / "inference.md").write_text("\n".join(lines) + "\n")
    lp = results.get("latent_vs_pixel")
    if lp:
        pixel, latent = pixel_and_latent()
        px, la = lp[pixel], lp[latent]
        dec_share = la["decode_s_in_generate"] / la["generate_s"]
        final_share = la["one_decode_s"] / la["generate_s"]
        lines = ["# Latent vs pixel diffusion: cost", "",
                 f"One run, {lp['threads']} threads, {lp.get('cpu', 'CPU')}; default path: {lp['images']} images, {lp['sampler']} "
                 f"{lp['steps']} steps, guidance {lp['guidance']:g}. A network evaluation is one guided call "
                 f"(a doubled batch). latent-cond weights: {lp.get('latent_weights', 'trained')}.", "",
                 "| | pixel-cond | latent-cond | latent / pixel |", "|---|---:|---:|---:|",
                 f"| parameters | {px['params']:,} | {la['params']:,} | {la['params'] / px['params']:.2f} |",
                 f"| sample shape | {tuple(px['sample_shape'])} | {tuple(la['sample_shape'])} | |",
                 f"| one network evaluation, batch {lp['images']} (ms) | {px['call_s_batch16_guided'] * 1e3:.2f} | "
                 f"{la['call_s_batch16_guided'] * 1e3:.2f} | {la['call_s_batch16_guided'] / px['call_s_batch16_guided']:.2f} |",
                 f"| per image per evaluation, batch 200 (ms) | {px['per_image_nfe_s_batch200_guided'] * 1e3:.3f} | "
                 f"{la['per_image_nfe_s_batch200_guided'] * 1e3:.3f} | "
                 f"{la['per_image_nfe_s_batch200_guided'] / px['per_image_nfe_s_batch200_guided']:.2f} |",
                 f"| finished image, default path (ms) | {px['per_image_s'] * 1e3:.2f} | {la['per_image_s'] * 1e3:.2f} | "
                 f"{la['per_image_s'] / px['per_image_s']:.2f} |",
                 f"| whole request of {lp['images']} (ms) | {px['generate_s'] * 1e3:.1f} | {la['generate_s'] * 1e3:.1f} | "
                 f"{la['generate_s'] / px['generate_s']:.2f} |", "",
                 f"Decoder: one decode of {lp['images']} latents takes {la['one_decode_s'] * 1e3:.2f} ms "
                 f"({100 * final_share:.1f}% of the latent request); Pipeline.generate decodes "
                 f"{la['decodes_per_generate']} times (x and x0 at step 0, and the final sample), "
                 f"{la['decode_s_in_generate'] * 1e3:.2f} ms in all ({100 * dec_share:.1f}% of the request)."]
        (out / "latent_vs_pixel.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
