"""Evaluate the trained models with both evaluation networks and write their model cards.

    python -m train.evaluate --all                 # every model present in weights/
    python -m train.evaluate --models pixel-cond --samples 2000

Per model: classifiers -> test accuracy; autoencoder -> reconstruction MSE and reconstruction
accuracy; diffusion models -> in BOTH feature spaces (weights/classifier, weights/classifier-resnet) the
Frechet distance with its same-N real floor, KID (mean +- std over subsets), precision/recall, conditional
accuracy per digit (or the class histogram), plus the confident and speck rates (diffusion/metrics.py),
each beside the real test digits' own rate. Top-level keys keep the first classifier's figures.
Results go to weights/metrics.json, weights/<name>/README.md and docs/samples-<name>.png.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from diffusion.hub import DEFAULT_WEIGHTS_DIR, load_model, load_pipeline
from diffusion.images import save_grid
from diffusion.metrics import (Evaluator, PixelPCA, ResNetClassifier, classify, conditional_accuracy,
                               feature_stats, frechet_distance)
from diffusion.pipeline import Pipeline, defaults_for
from diffusion.registry import EVALUATOR_NAMES, NameView, model_spec
from train.cards import write_card
from train.data import load_mnist

ORDER = NameView("evaluation")              # `--all`: the registry's evaluation order (classifiers ... the guide)
EVALUATORS = EVALUATOR_NAMES                 # classifier (the main one), classifier-resnet


def load_evaluator(weights_dir: Path = DEFAULT_WEIGHTS_DIR, resnet_dir: Path | None = None, floor_n: int = 10000) -> Evaluator:
    """Both evaluation networks (the ResNet from `resnet_dir` or weights_dir/classifier-resnet), the 10k test digits
    as the reference and `floor_n` training digits (a fixed random draw) for the same-N floors."""
    main, second = EVALUATORS
    classifiers = {main: load_model(main, weights_dir=weights_dir)}
    resnet = Path(resnet_dir) if resnet_dir else Path(weights_dir) / second
    if (resnet / "model.safetensors").is_file():
        classifiers[second] = ResNetClassifier.from_pretrained(str(resnet))
    else:
        print(f"warning: no second evaluator at {resnet}: figures in one feature space only")
    x_test, y_test = load_mnist("test")
    x_train, _ = load_mnist("train")
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))
    # views no classifier chose: raw pixels on the principal axes of 10k other training digits; the autoencoder's latents
    views = {"pixel-pca": PixelPCA(x_train[order[floor_n:floor_n + 10000]])}
    if (Path(weights_dir) / "autoencoder" / "model.safetensors").is_file():
        ae = load_model("autoencoder", weights_dir=weights_dir).eval()
        views["autoencoder-latent"] = torch.inference_mode()(lambda x: torch.cat([ae.encode(c).flatten(1) for c in x.split(1000)]))
    return Evaluator(classifiers, x_test, y_test, x_train[order[:floor_n]], views=views)


def score_model_metrics(evaluator: Evaluator, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Evaluator output plus the first classifier's figures at top level (the keys cards and older readers use)."""
    full = evaluator.evaluate(images, labels if bool((labels >= 0).all()) else None)
    first = full["evaluators"][EVALUATORS[0]]
    out = {"frechet_distance": first["frechet_distance"], "frechet_floor_same_n": first["frechet_floor_same_n"], **full}
    if "conditional_accuracy" in first:
        out["conditional_accuracy"], out["per_digit_accuracy"] = first["conditional_accuracy"], first["per_digit_accuracy"]
    else:
        out["class_histogram"] = first["class_histogram"]
    out["real_test_rates"] = evaluator.real_rates()
    return out


def generate(pipe, n: int, sampler: str, steps: int, guidance: float, seed: int, batch: int = 500, **extras):
    """n samples; conditional: n/10 per digit, labels 0..9 repeated; extras go to the sampler (e.g. eta)."""
    images, labels, t0, nfe = [], [], time.perf_counter(), 0
    for b, start in enumerate(range(0, n, batch)):
        m = min(batch, n - start)
        lab = torch.arange(start, start + m) % 10 if pipe.conditional else None
        imgs, last = pipe.generate(lab, num_images=m, sampler=sampler, num_steps=steps, guidance=guidance, seed=seed + b,
                                    **extras)
        images.append(imgs)
        labels.append(lab if lab is not None else torch.full((m,), -1))
        nfe = last.nfe
    return torch.cat(images)[:, None], torch.cat(labels), nfe, time.perf_counter() - t0


def evaluate(names, samples: int, sampler: str | None, steps: int | None, guidance: float | None, weights_dir: Path,
             seed: int = 1234):
    """sampler / steps / guidance: None takes each model's default (diffusion.pipeline.defaults_for)."""
    metrics_path = weights_dir / "metrics.json"
    all_metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    evaluator = load_evaluator(weights_dir)
    x_test, y_test = evaluator.real, evaluator.real_labels
    names = [model_spec(name).name for name in names]      # an unknown name: a ValueError listing the names
    classifier = evaluator.classifiers[EVALUATORS[0]]
    test_pred, test_feat = classify(classifier, x_test)
    mu_test, cov_test = feature_stats(test_feat)
    floor = evaluator.floor(EVALUATORS[0], len(evaluator.floor_images))
    print(f"Frechet distance floor, train vs test: {floor:.3f} ({len(evaluator.floor_images)} train images), "
          f"{evaluator.floor(EVALUATORS[0], samples):.3f} ({samples} train images)")
    for name in names:
        m: dict = {"evaluated": time.strftime("%Y-%m-%d")}
        if name in EVALUATORS:
            if name not in evaluator.classifiers:
                raise SystemExit(f"{name}: no weights in {weights_dir / name}")
            pred, _ = classify(evaluator.classifiers[name], x_test)
            m["test_accuracy"] = float((pred == y_test).float().mean())
            m["per_digit_accuracy"] = conditional_accuracy(pred, y_test)[1]
        elif model_spec(name).role == "autoencoder":
            ae = load_model(name, weights_dir=weights_dir)
            with torch.inference_mode():
                recon = torch.cat([ae(c) for c in x_test.split(1000)])
            pred, feat = classify(classifier, recon)
            m["reconstruction_mse"] = float((recon - x_test).square().mean())
            m["reconstruction_accuracy"] = float((pred == y_test).float().mean())
            m["agreement_with_originals"] = float((pred == test_pred).float().mean())
            m["frechet_distance_recon"] = frechet_distance(*feature_stats(feat), mu_test, cov_test)
            m["latent_scale"] = ae.latent_scale
            save_grid(torch.cat([x_test[:10, 0], recon[:10, 0]]), Path("docs") / f"samples-{name}.png", nrow=10, scale=3)
        else:
            if model_spec(name).role == "guide":    # a guide, alone: how much weaker than the model it guides
                pipe = Pipeline(load_model(name, weights_dir=weights_dir), name=name)
                d = defaults_for(model_spec(name).guides)
            else:
                pipe = load_pipeline(name, weights_dir=weights_dir)
                d = defaults_for(name)
            s_name, s_steps = sampler or d.sampler, steps or d.steps
            g = (d.guidance if guidance is None else guidance) if pipe.guided else 1.0
            images, labels, nfe, wall = generate(pipe, samples, s_name, s_steps, g, seed)
            schedule = pipe.defaults.schedule                 # the pipeline applies the model's own (diffusion.guidance)
            m.update({"sampler": s_name, "steps": s_steps, "nfe": nfe, "precision": pipe.compute_precision,
                      "guidance": g if pipe.guided else None, "seed": seed,
                      **({"guidance_where": schedule.describe(short=True)}
                         if pipe.guided and not schedule.constant and g != 1.0 else {}),
                      **({"sampler_options": dict(d.options)} if d.options and s_name == d.sampler else {}),
                      **({"autoguide": pipe.score_model.good.autoguide} if pipe.guided and not pipe.conditional else {}),
                      "sampling_seconds_per_image": wall / samples})
            m.update(score_model_metrics(evaluator, images, labels))
            order = torch.argsort(labels, stable=True) if pipe.conditional else torch.arange(len(labels))
            save_grid(images[order][:: max(1, samples // 100)][:100, 0], Path("docs") / f"samples-{name}.png", nrow=10, scale=2)
        m["frechet_floor_train_vs_test"] = floor
        all_metrics[name] = m
        print(name, json.dumps(_rounded(m)))
        metrics_path.write_text(json.dumps(all_metrics, indent=1) + "\n")
        write_card(name, weights_dir, m)
    return all_metrics


def _rounded(v):
    if isinstance(v, float):
        return round(v, 4)
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_rounded(x) for x in v]
    return v


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="", help="comma-separated model names")
    p.add_argument("--all", action="store_true", help="every model present in the weights dir")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--sampler", default=None, help="default: each model's own (diffusion.pipeline.MODEL_DEFAULTS)")
    p.add_argument("--steps", type=int, default=None, help="default: each model's own")
    p.add_argument("--guidance", type=float, default=None, help="default: each model's own")
    p.add_argument("--weights-dir", default=str(DEFAULT_WEIGHTS_DIR))
    a = p.parse_args(argv)
    wd = Path(a.weights_dir)
    names = [n for n in ORDER if (wd / n / "model.safetensors").is_file()] if a.all else [n for n in a.models.split(",") if n]
    if not names:
        raise SystemExit("nothing to evaluate: give --models or --all with weights present")
    Path("docs").mkdir(exist_ok=True)
    evaluate(names, a.samples, a.sampler, a.steps, a.guidance, wd)


if __name__ == "__main__":
    main()
