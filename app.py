"""MNIST diffusion lab: a Gradio app that shows score-based diffusion (Song et al. 2021, VE SDE with
sigma = 25) working on MNIST, in pixel space and in an autoencoder's latent space.

    python app.py [--weights-dir weights] [--hub-repo USER/REPO [--revision SHA]] [--host H] [--port P]

Layout and wiring only: every handler validates its inputs (raising `gr.Error` that names the
parameter, before any network evaluation), calls `diffusion.Pipeline`, and turns tensors into
pictures. Events are wired with `preprocess=False` so that the handlers see the raw values a browser or
`gradio_client` sent and can say which parameter is wrong. `build_demo(pipelines, messages)` builds
the Blocks; `demo` is built on first access from the default weights; the device is chosen once, in
`pick_device`.
"""
from __future__ import annotations

import argparse
import atexit
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import gradio as gr  # noqa: E402
import gradio.utils as gradio_utils  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

import diffusion.pipeline as dp  # noqa: E402  (defaults read at build time, never copied)
from diffusion import hub  # noqa: E402
from diffusion.images import gif_bytes, grid  # noqa: E402
from diffusion.samplers import SAMPLER_DESCRIPTIONS, SAMPLERS, nfe_for  # noqa: E402
from diffusion.sde import VESDE  # noqa: E402

ASSETS = Path(__file__).resolve().parent / "app_assets"
SAMPLE_PATH = ASSETS / "mnist_test_sample.npz"
MODEL_NAMES = hub.PIPELINE_NAMES                      # ("pixel-uncond", "pixel-cond", "latent-cond")
MODEL_BLURB = {"pixel-uncond": "unconditional, pixel space",
               "pixel-cond": "class-conditional, pixel space",
               "latent-cond": "class-conditional, latent space"}
MAX_IMAGES, MAX_STEPS, MAX_GUIDANCE, MAX_SEED = 64, 1000, 20.0, 2**31 - 1
DEFAULT_IMAGES, DEFAULT_DIGIT, DEFAULT_SEED = 16, 3, 0
PREVIEW_INTERVAL = 0.1        # s between streamed updates: at most ~10 a second, the last one always
PREVIEW_FRAMES = 40           # previews decoded per run (every k-th step), and the GIF's frame budget
GRID_PX, GIF_PX = 460, 230    # target edge of an upscaled grid on the page / in the GIF
STRIP_ALPHAS = 9              # images in the interpolation strip (alpha = 0 .. 1)
DEFAULT_MAX_SECONDS = 120.0   # a request that runs longer is stopped (bounded work on a shared CPU)
LABELS = {"model": "Model", "digit": "Digit", "sampler": "Sampler", "steps": "Steps", "guidance": "Guidance",
          "seed": "Seed", "num_images": "Number of images", "digit_a": "Digit A", "digit_b": "Digit B",
          "alpha": "alpha", "source": "Source", "test_index": "Test image", "sketch": "Drawing", "t": "t",
          "noise_seed": "Noise seed", "denoiser": "Denoiser"}
CSS = """
.pixelated img, .pixelated canvas { image-rendering: crisp-edges; image-rendering: pixelated; }
.panel-note { color: var(--body-text-color-subdued); font-size: 0.95em; }
#status-line { min-height: 3.2em; }
"""


# ---------------------------------------------------------------- validation (raw UI / API values)

def _bad(name: str, must: str, value) -> gr.Error:
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return gr.Error(f"{name} ({LABELS.get(name, name)}) {must}; got {shown[:80]}.", title="Invalid input",
                    print_exception=False)


def _number(name: str, value) -> float:
    if isinstance(value, bool) or value is None:
        raise _bad(name, "must be a number", value)
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _bad(name, "must be a number", value) from None
    if not isinstance(value, (int, float, np.integer, np.floating)):
        raise _bad(name, "must be a number", value)
    try:
        finite = math.isfinite(float(value))
    except OverflowError:                    # an int beyond float range (e.g. 10**400 sent as JSON)
        raise _bad(name, "must be a number of a sensible size", value) from None
    if not finite:
        raise _bad(name, "must be a finite number", value)
    return value


def check_int(name: str, value, lo: int, hi: int) -> int:
    """An integer in [lo, hi]; integral floats (3.0) pass, 3.5 / nan / inf / True / 'x' do not."""
    v = _number(name, value)
    if isinstance(v, (float, np.floating)) and not float(v).is_integer():
        raise _bad(name, f"must be a whole number from {lo} to {hi}", value)
    v = int(v)
    if not lo <= v <= hi:
        raise _bad(name, f"must be a whole number from {lo} to {hi}", value)
    return v


def check_float(name: str, value, lo: float, hi: float) -> float:
    v = float(_number(name, value))
    if not lo <= v <= hi:
        raise _bad(name, f"must be a number from {lo:g} to {hi:g}", value)
    return v


def check_choice(name: str, value, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise _bad(name, f"must be one of {', '.join(map(str, choices))}", value)
    return value


# ---------------------------------------------------------------- pictures

def pick_device() -> torch.device:
    """The one place the app chooses a device."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def show_grid(images: torch.Tensor, target_px: int = GRID_PX) -> np.ndarray:
    """(B, 28, 28) in [0, 1] -> a square-ish uint8 grid about `target_px` wide, nearest-neighbour upscaled."""
    ncol = math.ceil(math.sqrt(images.shape[0]))
    scale = max(1, target_px // (ncol * images.shape[-1]))
    return grid(images, nrow=ncol, scale=scale, gap=max(1, scale // 2))


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def captioned(panels: list[np.ndarray], caption: str, gap: int = 8) -> np.ndarray:
    """Panels (uint8 H x W, same H) side by side, with a caption bar underneath (a GIF frame)."""
    h = max(p.shape[0] for p in panels)
    w = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("L", (w, h + 18), 255)
    x = 0
    for p in panels:
        canvas.paste(Image.fromarray(p), (x, 0))
        x += p.shape[1] + gap
    ImageDraw.Draw(canvas).text((4, h + 3), caption, fill=0, font=_font(12))
    return np.asarray(canvas)


def labelled_strip(images: torch.Tensor, labels: list[str], scale: int = 4) -> np.ndarray:
    """(N, 28, 28) in a row, each with a short label centred underneath."""
    row = grid(images, nrow=images.shape[0], scale=scale, gap=2, gap_value=1.0)
    canvas = Image.new("L", (row.shape[1], row.shape[0] + 30), 255)
    canvas.paste(Image.fromarray(row), (0, 0))
    draw, cell, font = ImageDraw.Draw(canvas), 28 * scale + 2, _font(22)
    for k, text in enumerate(labels):
        width = draw.textlength(text, font=font)
        draw.text((k * cell + (28 * scale - width) / 2, row.shape[0] + 3), text, fill=0, font=font)
    return np.asarray(canvas)


class FrameBuffer:
    """GIF frames of a trajectory, at most `limit`: when full, every other frame is dropped (the last kept)."""

    def __init__(self, limit: int = PREVIEW_FRAMES + 1):
        self.limit, self.stride, self.frames, self._seen = limit, 1, [], 0

    def add(self, make_frame, final: bool = False) -> None:
        keep = final or self._seen % self.stride == 0
        self._seen += 1
        if not keep:
            return
        self.frames.append(make_frame())
        if not final and len(self.frames) >= self.limit:   # room is always left for the final frame
            self.frames = self.frames[::2]
            self.stride *= 2


def sketch_to_digit(payload, root: str | Path | None = None) -> torch.Tensor:
    """A Sketchpad value (raw EditorData dict) -> (28, 28) in [0, 1], MNIST-style: the ink's bounding box
    fitted into 20 x 20 and centred by its centre of mass (LeCun et al. 1998's preprocessing).
    With `root`, the image must lie inside it (gradio's upload folder: gradio checks this too)."""
    if not isinstance(payload, dict):
        raise _bad("sketch", "must be a drawing (an image-editor value)", payload)
    composite = payload.get("composite") or {}
    layers = [layer for layer in (payload.get("layers") or []) if layer]
    path = composite.get("path") if isinstance(composite, dict) else None
    if not path and layers:
        path = layers[-1].get("path") if isinstance(layers[-1], dict) else None
    if not path:
        raise _bad("sketch", "is empty: draw a digit first (or choose 'test digit')", "nothing drawn")
    if root is not None and not Path(path).resolve().is_relative_to(Path(root).resolve()):
        raise _bad("sketch", "must be an image uploaded to this app", "another path")
    try:
        img = np.asarray(Image.open(path).convert("RGBA"), dtype=np.float32) / 255.0
    except Exception as e:  # noqa: BLE001 - any unreadable upload is the user's input error
        raise _bad("sketch", "could not be read as an image", type(e).__name__) from None
    # ink = how far each pixel is from the background colour (a corner), alpha included
    bg = np.median(np.stack([img[0, 0], img[0, -1], img[-1, 0], img[-1, -1]]), axis=0)
    rgb_a = img[..., :3] * img[..., 3:], bg[:3] * bg[3]
    ink = np.maximum(np.abs(rgb_a[0] - rgb_a[1]).max(-1), np.abs(img[..., 3] - bg[3]))
    ys, xs = np.nonzero(ink > 0.1)
    if len(ys) == 0:
        raise _bad("sketch", "is empty: draw a digit first (or choose 'test digit')", "blank canvas")
    crop = ink[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
    h, w = crop.shape
    s = 20.0 / max(h, w)
    small = Image.fromarray((crop * 255).astype(np.uint8)).resize(
        (max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
    small = np.asarray(small, dtype=np.float32) / 255.0
    out = np.zeros((28, 28), np.float32)
    top, left = (28 - small.shape[0]) // 2, (28 - small.shape[1]) // 2
    out[top: top + small.shape[0], left: left + small.shape[1]] = small
    # shift so the centre of mass sits at the centre
    yy, xx = np.mgrid[:28, :28]
    mass = out.sum()
    dy, dx = int(round(13.5 - (yy * out).sum() / mass)), int(round(13.5 - (xx * out).sum() / mass))
    out = np.roll(out, (dy, dx), axis=(0, 1))
    return torch.from_numpy(out).clamp(0, 1)


# ---------------------------------------------------------------- plots

def similarity_figure(pipelines: dict) -> Figure | None:
    """Cosine similarity of the 10 digit embeddings, one heatmap per conditional model."""
    conds = [(n, p) for n, p in pipelines.items() if p.conditional]
    if not conds:
        return None
    fig = Figure(figsize=(5.2 * len(conds) + 1.2, 5.2), layout="constrained")
    axes = fig.subplots(1, len(conds), squeeze=False)[0]
    sims = {}
    for name, pipe in conds:
        e = pipe.score_model.label_embeddings()[:10].float().cpu()          # (10, D)
        e = e / e.norm(dim=1, keepdim=True).clamp_min(1e-12)
        sims[name] = (e @ e.T).numpy()
    off = ~np.eye(10, dtype=bool)
    vmax = max(0.1, math.ceil(max(np.abs(s[off]).max() for s in sims.values()) * 20) / 20)  # one shared scale
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#d9d9d9")
    image = None
    for ax, (name, pipe) in zip(axes, conds):
        sim = sims[name]
        shown = np.ma.masked_where(~off, sim)          # the diagonal (always 1) is left out of the colours
        image = ax.imshow(shown, cmap=cmap, vmin=-vmax, vmax=vmax)
        for i in range(10):
            for j in range(10):
                if i != j:
                    ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if abs(sim[i, j]) > 0.6 * vmax else "black")
                else:
                    ax.text(j, i, "—", ha="center", va="center", fontsize=8, color="#555")
        ax.set_xticks(range(10))
        ax.set_yticks(range(10))
        ax.set_xlabel("digit")
        ax.set_ylabel("digit")
        ax.set_title(f"{name} ({pipe.score_model.label_embeddings().shape[1]}-d embeddings)", fontsize=10)
    fig.colorbar(image, ax=list(axes), shrink=0.85, label="cosine similarity")
    fig.suptitle("Cosine similarity between the learned digit embeddings\n(the diagonal, always 1, is greyed out)",
                 fontsize=11)
    return fig


def std_figure(sde: VESDE, t: float) -> Figure:
    ts = np.linspace(0, 1, 201)
    stds = sde.marginal_std(torch.from_numpy(ts)).numpy()
    cur = float(sde.marginal_std(torch.tensor(float(t), dtype=torch.float64)))
    fig = Figure(figsize=(6.4, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.plot(ts, stds, color="#1f77b4", label="std(t)")
    ax.axhline(1.0, color="#999", lw=0.8, ls="--", label="pixel range (1)")
    ax.plot([t], [cur], "o", color="#d62728", ms=8, label=f"t = {t:.2f}: std = {cur:.3g}")
    ax.set_xlabel("diffusion time t")
    ax.set_ylabel("noise std(t)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, stds[-1] * 1.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    ax.set_title(f"VE SDE noise level: std(t) = sqrt((σ^(2t) − 1) / (2 ln σ)), σ = {sde.sigma:g}", fontsize=10)
    return fig


# ---------------------------------------------------------------- model cards

_METRIC_HEADING = re.compile(r"metric|evaluat|result|quality|accuracy|fid|performance|sample", re.I)


def card_metrics(text: str, max_chars: int = 4000) -> str:
    """The metrics part of a model card (markdown): front matter dropped, the sections whose heading
    speaks of metrics/evaluation/results kept (else the card's tables, else its start)."""
    text = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S)
    text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"*(figure: \1)*", text)     # images are not served
    sections, current = [], None
    for line in text.splitlines():
        m = re.match(r"^(#{1,6})\s+(.*)", line)
        if m:
            current = [len(m.group(1)), m.group(2), []]
            sections.append(current)
        elif current is not None:
            current[2].append(line)
    kept, keep_level = [], None
    for level, heading, body in sections:
        if keep_level is not None and level <= keep_level:
            keep_level = None
        if keep_level is None and _METRIC_HEADING.search(heading):
            keep_level = level
        if keep_level is not None:
            kept.append("#" * max(level, 4) + " " + heading + "\n" + "\n".join(body).strip())
    out = "\n\n".join(kept).strip()
    if not out:
        tables = [line for line in text.splitlines() if line.lstrip().startswith("|")]
        out = "\n".join(tables) if tables else "*This model card has no evaluation section yet.*"
    return out[:max_chars] + ("\n\n*(truncated)*" if len(out) > max_chars else "")


def read_model_cards(names, weights_dir=None, hub_repo=None, revision=None) -> dict[str, str]:
    """{name: card text} from weights/<name>/README.md, or the Hub download cache when `hub_repo` is set."""
    cards = {}
    for name in names:
        path = Path(weights_dir or hub.DEFAULT_WEIGHTS_DIR) / name / "README.md"
        if hub_repo:
            try:
                from huggingface_hub import hf_hub_download
                path = Path(hf_hub_download(hub_repo, f"{name}/README.md", revision=revision, local_files_only=True))
            except Exception:  # noqa: BLE001 - fall back to the local card
                pass
        if path.is_file():
            cards[name] = path.read_text(encoding="utf-8", errors="replace")
    return cards


# ---------------------------------------------------------------- handlers

def _fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _params(module) -> str:
    n = sum(p.numel() for p in module.parameters())
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


class Lab:
    """State behind the UI: loaded pipelines, the shipped test digits, timing calibration, a temp dir.
    Each public method is one event handler (raw UI values in, pictures and text out)."""

    def __init__(self, pipelines: dict, messages=(), *, classifier=None, max_seconds: float = DEFAULT_MAX_SECONDS,
                 sample_path: Path = SAMPLE_PATH, calibrate: bool = True):
        self.pipelines, self.messages, self.classifier = dict(pipelines), list(messages), classifier
        self.max_seconds = float(max_seconds)
        any_model = next(iter(self.pipelines.values()), None)
        self.sde = any_model.score_model.sde if any_model is not None else VESDE(25.0)
        with np.load(sample_path, allow_pickle=False) as d:
            self.test_images = torch.from_numpy(d["images"].astype(np.float32) / 255.0)
            self.test_labels = d["labels"].astype(int)
        self.tmp = Path(tempfile.mkdtemp(prefix="mnist-diffusion-lab-"))
        atexit.register(shutil.rmtree, self.tmp, ignore_errors=True)
        self.sec_per_eval = {name: self._calibrate(p) for name, p in self.pipelines.items()} if calibrate else {}

    # -- helpers ---------------------------------------------------------------------------------
    @staticmethod
    @torch.inference_mode()
    def _calibrate(pipe, batch: int = 8) -> float:
        """Seconds per image per network evaluation (also warms the model up for the first request)."""
        x = torch.randn(batch, *pipe.score_model.sample_shape, device=pipe.device)
        labels = torch.zeros(batch, dtype=torch.long, device=pipe.device) if pipe.conditional else None
        t = torch.full((batch,), 0.5, device=pipe.device)
        pipe.score_model(x, t, labels)
        sync = torch.cuda.synchronize if pipe.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        pipe.score_model(x, t, labels)
        if pipe.is_latent:
            pipe.autoencoder.decode(x)
        sync()
        return (time.perf_counter() - start) / batch

    def _pipeline(self, name: str, *, conditional: bool | None = None, param: str = "model"):
        check_choice(param, name, MODEL_NAMES)
        if name not in self.pipelines:
            why = next((m for m in self.messages if m.startswith(name + ":")), "no weights were loaded")
            raise gr.Error(f"{param}: {name} is not available in this app ({why}).", title="Model unavailable",
                           print_exception=False)
        pipe = self.pipelines[name]
        if conditional and not pipe.conditional:
            raise _bad(param, "must be a class-conditional model (pixel-cond or latent-cond)", name)
        return pipe

    def _check_sampling(self, sampler, steps, guidance, seed):
        return (check_choice("sampler", sampler, list(SAMPLERS)), check_int("steps", steps, 1, MAX_STEPS),
                check_float("guidance", guidance, 0.0, MAX_GUIDANCE), check_int("seed", seed, 0, MAX_SEED))

    def _batch(self, pipe, n: int, guidance: float) -> int:
        return n * (2 if pipe.conditional and guidance != 1.0 else 1)

    def estimate_seconds(self, name: str, sampler: str, steps: int, n: int, guidance: float) -> float | None:
        nfe = nfe_for(sampler, steps) if sampler != "rk45" else 200
        per = self.sec_per_eval.get(name)
        return None if per is None else nfe * self._batch(self.pipelines[name], n, guidance) * per

    def _refuse_runaway(self, name, sampler, steps, n, guidance):
        est = self.estimate_seconds(name, sampler, steps, n, guidance)
        if est is not None and est > 3 * self.max_seconds:
            raise gr.Error(f"steps / num_images: this request would take about {est:.0f} s here, over the "
                           f"app's {self.max_seconds:.0f} s limit per request. Use fewer steps or images, "
                           f"or a sampler with fewer NFE per step.", title="Too much work", print_exception=False)

    def _check_time(self, elapsed: float):
        if elapsed > self.max_seconds:
            raise gr.Error(f"Stopped after {elapsed:.0f} s: the app's limit per request is {self.max_seconds:.0f} s. "
                           "Use fewer steps or images.", title="Time limit", print_exception=False)

    def _learn_speed(self, name, nfe, batch, seconds):
        if nfe and name in self.sec_per_eval:
            self.sec_per_eval[name] = 0.7 * self.sec_per_eval[name] + 0.3 * seconds / (nfe * batch)

    def _write_gif(self, frames, stem: str) -> str:
        for old in self.tmp.iterdir():                      # keep the temp dir small: drop files > 1 h old
            if time.time() - old.stat().st_mtime > 3600:
                shutil.rmtree(old, ignore_errors=True)
        folder = self.tmp / uuid.uuid4().hex
        folder.mkdir()
        path = folder / f"{stem}.gif"
        path.write_bytes(gif_bytes(frames, duration_ms=100, final_hold_ms=1500))
        return str(path)

    def _classifier_line(self, images: torch.Tensor, digit: int | None) -> str:
        if self.classifier is None:
            return ""
        from diffusion.metrics import classify
        preds, _ = classify(self.classifier, images[:, None])
        if digit is None:
            counts = np.bincount(preds.numpy(), minlength=10)
            return " · evaluation classifier reads: " + ", ".join(f"{d}×{c}" for d, c in enumerate(counts) if c)
        hits = int((preds == digit).sum())
        return f" · evaluation classifier reads {hits}/{len(preds)} as a {digit}"

    @staticmethod
    def preview_every(sampler: str, steps: int) -> int:
        return 1 if sampler == "rk45" else max(1, math.ceil(steps / PREVIEW_FRAMES))

    # -- Generate --------------------------------------------------------------------------------
    def generate(self, model, digit, sampler, steps, guidance, seed, num_images):
        """Stream x_t and the denoised estimate x0 side by side; end with the final grid and a GIF."""
        pipe = self._pipeline(model)
        digit = check_int("digit", digit, 0, 9)
        sampler, steps, guidance, seed = self._check_sampling(sampler, steps, guidance, seed)
        n = check_int("num_images", num_images, 1, MAX_IMAGES)
        self._refuse_runaway(model, sampler, steps, n, guidance)
        labels = [digit] * n if pipe.conditional else None
        what = (f"**{model}** · {f'digit {digit}' if pipe.conditional else 'unconditional (digit ignored)'} · "
                f"{sampler} · {'adaptive steps' if sampler == 'rk45' else f'{steps} steps'} · "
                f"guidance {guidance:g}{'' if pipe.conditional else ' (n/a)'} · seed {seed} · {n} images")
        frames, last_emit, step = FrameBuffer(), -1.0, None
        yield None, None, what + "\n\nstarting…", None, None, None
        try:
            # pixel models: every step comes back here (x and x0 are cheap to copy), so that the time limit and a
            # cancel (applied at this generator's yields, <= PREVIEW_INTERVAL apart) act within a step, not k steps;
            # latent models decode each preview, so only every k-th step is decoded
            every = self.preview_every(sampler, steps) if pipe.is_latent else 1
            stream = pipe.stream(labels, num_images=n, sampler=sampler, num_steps=steps, guidance=guidance,
                                 seed=seed, preview_every=every)
            for step in stream:
                self._check_time(step.elapsed)
                total = step.num_steps if sampler != "rk45" else "?"
                progress = (f"step {step.i + 1}/{total} · t = {step.t:.3f} · σ(t) = {step.sigma:.3g} · "
                            f"NFE {step.nfe} · {_fmt_s(step.elapsed)}")
                caption = (f"x_t | x0-hat   step {step.i + 1}/{total}  t={step.t:.3f}  sigma={step.sigma:.3g}  "
                           f"NFE {step.nfe}")                    # ASCII: PIL's default font has no Greek
                frames.add(lambda s=step, c=caption: captioned(
                    [show_grid(s.x, GIF_PX), show_grid(s.x0, GIF_PX)], c), final=step.final)
                now = time.perf_counter()
                if not step.final and now - last_emit >= PREVIEW_INTERVAL:     # <= 10 updates/s; final below
                    last_emit = now
                    yield (show_grid(step.x), show_grid(step.x0), f"{what}\n\n{progress}", gr.skip(), gr.skip(),
                           gr.skip())
        except (ValueError, RuntimeError) as e:   # the library's own checks (e.g. rk45's NFE cap)
            raise gr.Error(str(e), print_exception=False) from None
        batch = self._batch(pipe, n, guidance)
        self._learn_speed(model, step.nfe, batch, step.elapsed - step.decode_time)
        final = show_grid(step.x)
        decode = f" (autoencoder decoding: {_fmt_s(step.decode_time)})" if pipe.is_latent else ""
        label_arg = f"[{digit}] * {n}" if pipe.conditional else f"None, num_images={n}"
        summary = (f"{what}\n\n**Done** in {_fmt_s(step.elapsed)} wall time{decode}: {step.nfe} NFE, each on a batch "
                   f"of {batch}{' (images × 2 for guidance)' if batch == 2 * n else ''}"
                   f"{self._classifier_line(step.x, digit if pipe.conditional else None)}.\n\n"
                   f"Reproduce: `load_pipeline('{model}').generate({label_arg}, sampler='{sampler}', "
                   f"num_steps={steps}, guidance={guidance:g}, seed={seed})`")
        yield final, final, summary + "\n\nwriting the GIF…", final, gr.skip(), gr.skip()
        stem = f"{model}_{f'digit{digit}_' if pipe.conditional else ''}{sampler}_{steps}steps_seed{seed}"
        gif = self._write_gif(frames.frames, stem)
        yield final, final, summary, final, gif, gif       # complete, so that predict() returns everything

    def estimate(self, model, sampler, steps, num_images, guidance) -> str:
        """A one-line cost estimate for the Generate settings (never raises: shown inline)."""
        try:
            pipe = self._pipeline(model)
            sampler = check_choice("sampler", sampler, list(SAMPLERS))
            steps = check_int("steps", steps, 1, MAX_STEPS)
            n = check_int("num_images", num_images, 1, MAX_IMAGES)
            guidance = check_float("guidance", guidance, 0.0, MAX_GUIDANCE)
        except gr.Error as e:
            return f"⚠️ {e.message}"
        batch = self._batch(pipe, n, guidance)
        nfe = nfe_for(sampler, steps)
        est = self.estimate_seconds(model, sampler, steps, n, guidance)
        cost = (f"{steps} steps × {nfe // steps if nfe % steps == 0 else '≈2'} = {nfe} network evaluations"
                if nfe is not None else "adaptive: typically 100–300 network evaluations")
        when = f" ≈ {_fmt_s(est)} here" if est is not None else ""
        slow = " — slow: fewer steps or images, or dpmpp_2m, are quicker" if est is not None and est > 5 else ""
        return f"Cost: {cost} on a batch of {batch}{when}{slow}. {SAMPLER_DESCRIPTIONS[sampler]}."

    @staticmethod
    def recommended_settings(model) -> tuple[str, int]:
        """The model's default sampler and step count (diffusion.pipeline.MODEL_DEFAULTS), set when the model changes."""
        d = dp.defaults_for(str(model))
        return d.sampler, d.steps

    @staticmethod
    def random_seed() -> int:
        return int(np.random.default_rng().integers(0, MAX_SEED))

    # -- Pixel vs latent -------------------------------------------------------------------------
    def compare(self, digit, sampler, steps, guidance, seed, num_images):
        """pixel-cond and latent-cond, same digit/seed/sampler, stepped in lockstep; each one's own time."""
        names = ("pixel-cond", "latent-cond")
        pipes = [self._pipeline(n) for n in names]
        digit = check_int("digit", digit, 0, 9)
        sampler, steps, guidance, seed = self._check_sampling(sampler, steps, guidance, seed)
        n = check_int("num_images", num_images, 1, MAX_IMAGES)
        for name in names:
            self._refuse_runaway(name, sampler, steps, n, guidance)
        every = self.preview_every(sampler, steps)
        streams = [p.stream([digit] * n, sampler=sampler, num_steps=steps, guidance=guidance, seed=seed,
                            preview_every=every) for p in pipes]
        own = [0.0, 0.0]                   # each pipeline's own compute time (the other's turn excluded)
        last: list = [None, None]
        done = [False, False]
        last_emit = -1.0
        yield None, None, None, None, "starting…"
        try:
            while not all(done):
                for k, s in enumerate(streams):
                    if done[k]:
                        continue
                    start = time.perf_counter()
                    step = next(s, None)
                    own[k] += time.perf_counter() - start
                    if step is None:
                        done[k] = True
                    else:
                        last[k] = step
                        done[k] = step.final
                self._check_time(sum(own))
                now = time.perf_counter()
                if all(done) or now - last_emit >= PREVIEW_INTERVAL:
                    last_emit = now
                    imgs = [show_grid(s.x, 380) if s else gr.skip() for s in last] + \
                           [show_grid(s.x0, 380) if s else gr.skip() for s in last]
                    yield imgs[0], imgs[2], imgs[1], imgs[3], self._compare_table(names, pipes, last, own, done)
        except (ValueError, RuntimeError) as e:
            raise gr.Error(str(e), print_exception=False) from None

    def _compare_table(self, names, pipes, last, own, done) -> str:
        rows = ["| | " + " | ".join(names) + " |", "|---|---|---|"]

        def row(label, fn):
            rows.append(f"| {label} | " + " | ".join(fn(k) for k in range(2)) + " |")

        row("works on", lambda k: "×".join(map(str, pipes[k].score_model.sample_shape)) +
            (" latents" if pipes[k].is_latent else " pixels"))
        row("score-model parameters", lambda k: _params(pipes[k].score_model))
        row("progress", lambda k: ("done" if done[k] else f"step {last[k].i + 1}") if last[k] else "—")
        row("NFE", lambda k: str(last[k].nfe) if last[k] else "—")
        row("time per step", lambda k: _fmt_s(own[k] / (last[k].i + 1)) if last[k] else "—")
        row("total time", lambda k: _fmt_s(own[k]))
        row("autoencoder decoding", lambda k: "— (none)" if not pipes[k].is_latent else (
            f"{_fmt_s(last[k].decode_time)} ({100 * last[k].decode_time / max(own[k], 1e-9):.0f}% of its time)"
            if last[k] else "—"))
        return "\n".join(rows)

    # -- Digit embeddings ------------------------------------------------------------------------
    def interpolate(self, model, digit_a, digit_b, alpha, seed, num_images, sampler, steps, guidance):
        """Generate from (1 - alpha) e_a + alpha e_b; then the strip alpha = 0 .. 1 for the first noise."""
        pipe = self._pipeline(model, conditional=True)
        a, b = check_int("digit_a", digit_a, 0, 9), check_int("digit_b", digit_b, 0, 9)
        alpha = check_float("alpha", alpha, 0.0, 1.0)
        sampler, steps, guidance, seed = self._check_sampling(sampler, steps, guidance, seed)
        n = check_int("num_images", num_images, 1, MAX_IMAGES)
        self._refuse_runaway(model, sampler, steps, n + STRIP_ALPHAS, guidance)
        emb = pipe.score_model.label_embeddings()
        kw = dict(sampler=sampler, num_steps=steps, guidance=guidance, seed=seed)
        start = time.perf_counter()
        try:
            mix = ((1 - alpha) * emb[a] + alpha * emb[b]).expand(n, -1).clone()    # (B, D)
            images, last = pipe.generate(mix, **kw)
            head = (f"**{model}** · (1 − α)·e_{a} + α·e_{b}, α = {alpha:.2f} · {sampler} · {steps} steps · "
                    f"guidance {guidance:g} · seed {seed}")
            status = f"{head}\n\n{n} images in {_fmt_s(last.elapsed)}, {last.nfe} NFE."
            picture_grid = show_grid(images)
            yield picture_grid, None, status + " Now the strip α = 0 … 1…"
            alphas = np.linspace(0, 1, STRIP_ALPHAS)
            strip = []
            for al in alphas:      # batch of one per alpha: the same seed gives the same starting noise
                self._check_time(time.perf_counter() - start)
                e = ((1 - al) * emb[a] + al * emb[b])[None].clone()
                strip.append(pipe.generate(e, **kw)[0][0])
        except (ValueError, RuntimeError) as e:
            raise gr.Error(str(e), print_exception=False) from None
        total = time.perf_counter() - start
        picture = labelled_strip(torch.stack(strip), [f"{al:.3g}" for al in alphas])
        yield picture_grid, picture, f"{status} Strip: {STRIP_ALPHAS} more runs; {_fmt_s(total)} in all."

    # -- Forward diffusion -----------------------------------------------------------------------
    def pick_test_digit(self, evt: gr.SelectData):
        """A click on the grid of test digits -> its index (the grid is 10 x 10, see test_grid)."""
        x, y = (evt.index if isinstance(evt.index, (list, tuple)) else (0, 0))[:2]
        cell = self._test_grid_cell
        return min(int(y) // cell, 9) * 10 + min(int(x) // cell, 9), "test digit"

    @staticmethod
    def use_drawing(sketch):
        """A stroke on the sketchpad ('input' fires for strokes, and once when the editor starts, empty):
        switch the source to the drawing when there is ink."""
        try:
            sketch_to_digit(sketch)
        except gr.Error:
            return gr.skip()
        return "drawing"

    _test_grid_scale = 2
    _test_grid_cell = 28 * 2 + 1

    def test_grid(self) -> np.ndarray:
        return grid(self.test_images, nrow=10, scale=self._test_grid_scale, gap=1)

    def forward(self, source, test_index, sketch, t, noise_seed, denoiser):
        """x(t) = x(0) + std(t) z for a fixed z, the std(t) curve, and a one-step Tweedie estimate."""
        source = check_choice("source", source, ["test digit", "drawing"])
        index = check_int("test_index", test_index, 0, len(self.test_images) - 1)
        t = check_float("t", t, 0.0, 1.0)
        noise_seed = check_int("noise_seed", noise_seed, 0, MAX_SEED)
        denoisers = ["none"] + [n for n in MODEL_NAMES if n in self.pipelines and not self.pipelines[n].is_latent]
        denoiser = check_choice("denoiser", denoiser, denoisers)
        if source == "drawing":
            x0, what = sketch_to_digit(sketch, root=gradio_utils.get_upload_folder()), "your drawing"
        else:
            x0, what = self.test_images[index], f"test image #{index} (a {self.test_labels[index]})"
        std = float(self.sde.marginal_std(torch.tensor(t, dtype=torch.float64)))
        z = torch.randn((28, 28), generator=torch.Generator().manual_seed(noise_seed))
        xt = x0 + std * z
        lo, hi = float(xt.min()), float(xt.max())
        rescaled = (xt - lo) / max(hi - lo, 1e-8)
        up = lambda img: grid(img[None], scale=8)  # noqa: E731  (one 28x28 digit -> 224 px)
        tweedie, note = None, ""
        if denoiser != "none":
            pipe = self.pipelines[denoiser]
            te = max(t, self.sde.eps)           # the score model is trained on t >= eps
            se = float(self.sde.marginal_std(torch.tensor(te, dtype=torch.float64)))
            x_in = (x0 + se * z)[None, None].to(pipe.device)
            labels = torch.tensor([pipe.score_model.null_label], device=pipe.device) if pipe.conditional else None
            with torch.inference_mode():
                score = pipe.score_model(x_in, torch.tensor([te], device=pipe.device), labels)
            est = (x_in + se**2 * score)[0, 0].float().cpu()
            mse = float(((est.clamp(0, 1) - x0) ** 2).mean())
            tweedie = up(est.clamp(0, 1))
            note = (f" The {denoiser} network's one-step estimate x̂0 = x + std²·s(x, t)"
                    f"{' (null label: it is not told the digit)' if pipe.conditional else ''} has MSE {mse:.4f} "
                    f"against the clean image.")
        ratio = "well below" if std < 0.3 else ("about" if std < 3 else "far above")
        status = (f"{what}, t = {t:.3f}: std(t) = {std:.3g}, {ratio} the pixel range [0, 1]; x(t) spans "
                  f"[{lo:.2f}, {hi:.2f}].{note}")
        return up(x0), up(xt.clamp(0, 1)), up(rescaled), tweedie, std_figure(self.sde, t), status


# ---------------------------------------------------------------- layout and wiring

INTRO = """# MNIST diffusion lab
Watch score-based diffusion (Song et al. 2021, variance-exploding SDE with σ = 25) turn noise into
handwritten digits. Every result shows its seed, sampler, network evaluations (NFE) and wall time, so it can
be reproduced."""

ABOUT = """
### What is going on
**The forward SDE.** Training data x(0) is blurred into noise by the stochastic differential equation
dx = σ^t dw for t from 0 to 1. At time t the image is x(t) = x(0) + std(t)·z with z ~ N(0, I) and
std(t) = √((σ^(2t) − 1)/(2 ln σ)): 0.03 at t = 0.001, about 2 at t = 0.5 and 9.85 at t = 1, where the digit is gone.

**The score.** A U-Net learns the *score* s(x, t) ≈ ∇ₓ log p_t(x): the direction in which a noisy image
becomes more probable. It is trained by *denoising score matching*: add known noise std(t)·z to a digit and
ask the network to point back, minimising E‖std(t)·s(x + std(t)z, t) + z‖².

**Sampling.** Run time backwards from pure noise. The reverse-time SDE (Euler–Maruyama, predictor–corrector)
injects fresh noise at each step; the *probability-flow ODE* has the same marginals but is deterministic, so
higher-order solvers (Heun, DPM-Solver++, adaptive RK45) reach good digits with far fewer network evaluations.

**The denoised estimate (Tweedie).** At every step the best guess of the clean image given x(t) is
x̂0 = x + std(t)²·s(x, t) (Tweedie's formula). That is the right-hand picture in *Generate*: blurry and
average-looking early on, sharp at the end.

**Guidance.** The conditional models take a digit label; during training the label is replaced by a "null" class
10% of the time, so one network knows both p(x | digit) and p(x). Classifier-free guidance mixes them,
s = s_uncond + w·(s_cond − s_uncond): w = 1 is the plain conditional model, w = 0 ignores the label, larger w gives
more typical (and less varied) digits at the cost of two network evaluations per step, batched together.

**Latents.** The latent model runs the same SDE on an autoencoder's 4×10×10 codes instead of 28×28 pixels,
rescaled to unit variance first so that σ = 25 means the same thing there; every preview and the final sample
are decoded back to pixels, and that decoding is part of the cost shown in *Pixel vs latent*.

**Attention on one token.** The label enters the U-Net through cross-attention. With a single context token
(the label embedding) the softmax over keys has one entry, so every attention weight is exactly 1: the layer is
a learned linear map of the label embedding added to the features. There are no attention maps worth drawing,
and this app does not draw any.
"""


def build_demo(pipelines: dict, messages=(), *, classifier=None, cards: dict | None = None,
               max_seconds: float = DEFAULT_MAX_SECONDS, concurrency: int | None = None, max_queue: int = 16,
               device: torch.device | str | None = None, calibrate: bool = True) -> gr.Blocks:
    """The app, for already loaded pipelines {name: Pipeline}; `messages` say where models came from."""
    lab = Lab(pipelines, messages, classifier=classifier, max_seconds=max_seconds, calibrate=calibrate)
    available = [n for n in MODEL_NAMES if n in pipelines]
    conditional = [n for n in available if pipelines[n].conditional]
    device = device or (next(iter(pipelines.values())).device if pipelines else "cpu")
    concurrency = concurrency or (2 if torch.device(device).type == "cuda" else 1)
    sampler_choices = [(f"{name} — {SAMPLER_DESCRIPTIONS[name].split(':')[0]}", name) for name in SAMPLERS]
    model_choices = [(f"{n} ({MODEL_BLURB[n]})", n) for n in available]
    default_model = next((n for n in ("pixel-cond", "latent-cond", "pixel-uncond") if n in available), None)
    start = dp.defaults_for(default_model)              # each model's own, set again when the model changes
    D_SAMPLER, D_STEPS, D_GUIDANCE = start.sampler, start.steps, start.guidance
    img = dict(format="png", interactive=False, elem_classes=["pixelated"], buttons=["download", "fullscreen"])
    heavy = dict(preprocess=False, concurrency_id="sampling", concurrency_limit=concurrency)

    def note(text):
        return gr.Markdown(text, elem_classes=["panel-note"])

    def sampling_controls(prefix: str):
        with gr.Row():
            sampler = gr.Dropdown(sampler_choices, value=D_SAMPLER, label="Sampler", key=f"{prefix}-sampler")
            steps = gr.Number(D_STEPS, label="Steps", precision=0, minimum=1, maximum=MAX_STEPS, key=f"{prefix}-steps")
            guidance = gr.Slider(0, MAX_GUIDANCE, D_GUIDANCE, step=0.25, label="Guidance w",
                                 info="1 = plain conditional, 0 = ignore the digit", key=f"{prefix}-guidance")
        return sampler, steps, guidance

    problems = [m for m in messages if any(w in m for w in ("unavailable", "not loaded from the Hub", "could not"))]
    with gr.Blocks(title="MNIST diffusion lab", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(INTRO)
        with gr.Accordion("Models: where they came from" + (" — some are missing" if problems else ""),
                          open=bool(problems) or not available):
            lines = [f"- {m}" for m in messages] or ["- no models were loaded"]
            precision = " / ".join(sorted({p.compute_precision for p in pipelines.values()})) or "fp32"
            if "bf16" in precision:
                precision += " (autocast; `python app.py --precision fp32` turns it off)"
            lines.append(f"- device: `{torch.device(device)}`, score network in {precision}; {concurrency} "
                         f"generation(s) at a time, up to "
                         f"{max_queue} more waiting; each is stopped after {max_seconds:.0f} s")
            if classifier is not None:
                lines.append("- the evaluation classifier (weights/classifier) checks generated digits")
            gr.Markdown("\n".join(lines))

        # ------------------------------------------------------------------ 1. Generate
        with gr.Tab("Generate"):
            note("Pick a model and a digit and press **Generate**. Left: the noisy sample x_t as the sampler "
                 "walks back from t = 1 (pure noise, std 9.85) to t ≈ 0; right: the network's current guess of "
                 "the clean image (the Tweedie estimate x̂0). Both stream as they are computed; the final grid "
                 "and an animated GIF of the whole trajectory follow.")
            with gr.Row():
                g_model = gr.Radio(model_choices, value=default_model, label="Model")
                g_digit = gr.Radio(list(range(10)), value=DEFAULT_DIGIT, label="Digit",
                                   info="ignored by pixel-uncond")
            g_sampler, g_steps, g_guidance = sampling_controls("gen")
            with gr.Row():
                g_seed = gr.Number(DEFAULT_SEED, label="Seed", precision=0, minimum=0, maximum=MAX_SEED)
                g_dice = gr.Button("Random seed", scale=0, min_width=130)
                g_n = gr.Slider(1, MAX_IMAGES, DEFAULT_IMAGES, step=1, label="Number of images")
            g_cost = gr.Markdown(lab.estimate(default_model, D_SAMPLER, D_STEPS, DEFAULT_IMAGES, D_GUIDANCE)
                                 if default_model else "", elem_classes=["panel-note"])
            with gr.Row():
                g_run = gr.Button("Generate", variant="primary", interactive=bool(available), elem_id="gen-run")
                g_stop = gr.Button("Stop", variant="stop")
            g_status = gr.Markdown("", elem_id="status-line")
            with gr.Row():
                g_xt = gr.Image(label="x_t: the noisy sample", height=GRID_PX + 10, elem_id="gen-xt", **img)
                g_x0 = gr.Image(label="x̂0: denoised estimate (Tweedie)", height=GRID_PX + 10, elem_id="gen-x0", **img)
            note("When sampling ends, x_t and x̂0 coincide: the last step jumps to the denoised estimate (no noise "
                 "is added at the end). The GIF shows every k-th step, at most 40 frames, x_t left and x̂0 right.")
            with gr.Row():
                g_final = gr.Image(label="Final samples", height=GRID_PX + 10, elem_id="gen-final", **img)
                with gr.Column():
                    g_anim = gr.Image(label="The whole trajectory (x_t | x̂0), replayed", height=GRID_PX - 110,
                                      elem_id="gen-anim", interactive=False, elem_classes=["pixelated"],
                                      buttons=["fullscreen"])
                    g_gif = gr.File(label="Trajectory GIF (download)", interactive=False, elem_id="gen-gif")

        # ------------------------------------------------------------------ 2. Pixel vs latent
        with gr.Tab("Pixel vs latent"):
            note("The same digit, seed and sampler through **pixel-cond** (the SDE runs on 28×28 pixels) and "
                 "**latent-cond** (the same SDE on the autoencoder's 4×10×10 codes, decoded to pixels to be seen). "
                 "The two are stepped in turn and each is timed on its own; the table shows NFE, time per step, "
                 "and how much of the latent model's time went to the autoencoder's decoder.")
            with gr.Row():
                c_digit = gr.Radio(list(range(10)), value=DEFAULT_DIGIT, label="Digit")
                c_seed = gr.Number(DEFAULT_SEED, label="Seed", precision=0, minimum=0, maximum=MAX_SEED)
                c_n = gr.Slider(1, MAX_IMAGES, DEFAULT_IMAGES, step=1, label="Number of images")
            c_sampler, c_steps, c_guidance = sampling_controls("cmp")
            with gr.Row():
                c_run = gr.Button("Compare", variant="primary", elem_id="cmp-run",
                                  interactive={"pixel-cond", "latent-cond"} <= set(available))
                c_stop = gr.Button("Stop", variant="stop")
            with gr.Row():
                with gr.Column():
                    gr.Markdown("#### pixel-cond")
                    with gr.Row():
                        c_pix_xt = gr.Image(label="x_t", height=390, **img)
                        c_pix_x0 = gr.Image(label="x̂0", height=390, **img)
                with gr.Column():
                    gr.Markdown("#### latent-cond (decoded)")
                    with gr.Row():
                        c_lat_xt = gr.Image(label="decoded z_t", height=390, **img)
                        c_lat_x0 = gr.Image(label="decoded ẑ0", height=390, **img)
            c_table = gr.Markdown("", elem_id="cmp-table")
            note("A decoded noisy latent does not look like pixel noise: the decoder maps any code to something "
                 "smooth. Decoding each preview counts in the autoencoder's share; a run without previews "
                 "decodes only once.")

        # ------------------------------------------------------------------ 3. Digit embeddings
        with gr.Tab("Digit embeddings"):
            note("Each conditional model learns one vector per digit (plus a 'null' one for guidance); it reaches "
                 "the U-Net through cross-attention. The heatmap compares the ten digit vectors by cosine "
                 "similarity (colours scaled to the largest off-diagonal value): red pairs point the same way, blue "
                 "pairs opposite ways. Digits the model finds alike "
                 "(4/9 or 3/5/8, say) may sit closer.")
            gr.Plot(similarity_figure(pipelines), label="Embedding similarity", format="png")
            note("Below, the model is given a blend of two digit vectors, (1 − α)·e_A + α·e_B, instead of a digit. "
                 "The grid uses your α; the strip under it walks α from 0 to 1 for the first image's noise, so you "
                 "can see where one digit turns into the other.")
            with gr.Row():
                e_model = gr.Radio(conditional, value=conditional[0] if conditional else None, label="Model")
                e_a = gr.Radio(list(range(10)), value=1, label="Digit A")
                e_b = gr.Radio(list(range(10)), value=7, label="Digit B")
            with gr.Row():
                e_alpha = gr.Slider(0, 1, 0.5, step=0.05, label="alpha (0 = digit A, 1 = digit B)")
                e_seed = gr.Number(DEFAULT_SEED, label="Seed", precision=0, minimum=0, maximum=MAX_SEED)
                e_n = gr.Slider(1, MAX_IMAGES, 8, step=1, label="Number of images")
            with gr.Accordion("Sampler settings", open=False):
                e_sampler, e_steps, e_guidance = sampling_controls("emb")
            with gr.Row():
                e_run = gr.Button("Generate from the blend", variant="primary", interactive=bool(conditional),
                                  elem_id="emb-run")
                e_stop = gr.Button("Stop", variant="stop")
            e_status = gr.Markdown("")
            with gr.Row():
                e_grid = gr.Image(label="Samples at this α", height=360, scale=1, **img)
                e_strip = gr.Image(label="α = 0 (digit A) … 1 (digit B), the same starting noise", height=160, scale=2,
                                   elem_id="emb-strip",
                                   **img)

        # ------------------------------------------------------------------ 4. Forward diffusion
        with gr.Tab("Forward diffusion"):
            note("The forward process adds Gaussian noise: x(t) = x(0) + std(t)·z, with one fixed noise image z. "
                 "Slide t to see how fast the digit drowns: by t ≈ 0.5 the noise is already twice the pixel "
                 "range. The network's one-step denoised estimate shows how much of the digit is still recoverable.")
            with gr.Row():
                with gr.Column(scale=1):
                    f_source = gr.Radio(["test digit", "drawing"], value="test digit", label="Source")
                    f_index = gr.Slider(0, len(lab.test_images) - 1, 70, step=1,
                                        label="Test image (0–99: ten MNIST test digits of each class, in order)")
                    f_t = gr.Slider(0, 1, 0.3, step=0.01, label="t (diffusion time)")
                    f_seed = gr.Number(0, label="Noise seed", precision=0, minimum=0, maximum=MAX_SEED)
                    denoisers = ["none"] + [n for n in available if not pipelines[n].is_latent]
                    f_denoiser = gr.Radio(denoisers, value=denoisers[-1] if len(denoisers) > 1 else "none",
                                          label="Denoiser (one network evaluation)")
                with gr.Column(scale=1):
                    f_grid = gr.Image(lab.test_grid(), label="Click a test digit", height=400, elem_id="fwd-grid",
                                      **{**img, "buttons": []})
                with gr.Column(scale=1):
                    f_sketch = gr.Sketchpad(elem_id="fwd-sketch", label="…or draw a digit (white on black)",
                                            value={"background": np.zeros((280, 280, 3), np.uint8), "layers": [],
                                                   "composite": None},
                                            canvas_size=(280, 280), fixed_canvas=True, image_mode="RGB",
                                            brush=gr.Brush(default_size=20, colors=["#ffffff"], color_mode="fixed"),
                                            layers=False, transforms=(), height=400, format="png")
            with gr.Row():
                f_x0 = gr.Image(label="x(0): clean", height=234, **img)
                f_xt = gr.Image(label="x(t), shown clipped to [0, 1]", height=234, **img)
                f_xr = gr.Image(label="x(t), rescaled to its own range", height=234, **img)
                f_tw = gr.Image(label="one-step denoised estimate x̂0", height=234, **img)
            f_status = gr.Markdown("", elem_id="fwd-status")
            f_plot = gr.Plot(label="std(t)", format="png")
            note("The clipped view is what the numbers look like as pixels; the rescaled view stretches x(t) to its "
                 "own min–max so that the digit is visible for longer. The red dot marks the current t on the noise "
                 "schedule; the dashed line is the size of the data itself.")

        # ------------------------------------------------------------------ 5. About
        with gr.Tab("About"):
            gr.Markdown(ABOUT)
            note("Below: the evaluation sections of each model's card (`weights/NAME/README.md`), measured when the "
                 "weights were built. FID here is computed on the project's own MNIST classifier features, so it is "
                 "comparable between these models only.")
            for name in (*MODEL_NAMES, "autoencoder", "classifier"):
                with gr.Accordion(f"Model card: {name}", open=name in available[:1]):
                    text = (cards or {}).get(name)
                    gr.Markdown(card_metrics(text) if text else f"*No model card for {name} was found.*")

        # ------------------------------------------------------------------ wiring
        gen_inputs = [g_model, g_digit, g_sampler, g_steps, g_guidance, g_seed, g_n]
        gen = g_run.click(lab.generate, gen_inputs, [g_xt, g_x0, g_status, g_final, g_gif, g_anim],
                          api_name="generate", **heavy)
        g_stop.click(None, cancels=[gen])
        g_model.change(lab.recommended_settings, g_model, [g_sampler, g_steps], api_name="recommended_settings",
                       queue=False, show_progress="hidden")
        gr.on([g_model.change, g_sampler.change, g_steps.change, g_n.change, g_guidance.change], lab.estimate,
              [g_model, g_sampler, g_steps, g_n, g_guidance], g_cost, api_name="estimate_cost", queue=False,
              preprocess=False, show_progress="hidden")
        g_dice.click(lab.random_seed, None, g_seed, api_name="random_seed", queue=False)

        cmp = c_run.click(lab.compare, [c_digit, c_sampler, c_steps, c_guidance, c_seed, c_n],
                          [c_pix_xt, c_pix_x0, c_lat_xt, c_lat_x0, c_table], api_name="compare", **heavy)
        c_stop.click(None, cancels=[cmp])

        emb = e_run.click(lab.interpolate, [e_model, e_a, e_b, e_alpha, e_seed, e_n, e_sampler, e_steps, e_guidance],
                          [e_grid, e_strip, e_status], api_name="interpolate", **heavy)
        e_stop.click(None, cancels=[emb])

        fwd_inputs = [f_source, f_index, f_sketch, f_t, f_seed, f_denoiser]
        fwd_outputs = [f_x0, f_xt, f_xr, f_tw, f_plot, f_status]
        fwd = dict(preprocess=False, concurrency_id="forward", concurrency_limit=2, trigger_mode="always_last",
                   show_progress="minimal")
        gr.on([f_source.change, f_index.change, f_t.change, f_seed.change, f_denoiser.change, f_sketch.input],
              lab.forward, fwd_inputs, fwd_outputs, api_name="forward_diffusion", **fwd)
        f_grid.select(lab.pick_test_digit, None, [f_index, f_source], api_name="pick_test_digit", queue=False)
        f_sketch.input(lab.use_drawing, f_sketch, f_source, api_name="use_drawing", queue=False, preprocess=False)
        demo.load(lab.forward, fwd_inputs, fwd_outputs, api_name="forward_initial", **fwd)

    demo.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    demo.lab = lab            # for tests and benchmarks
    return demo


def launch_kwargs(host: str | None = None, port: int | None = None) -> dict:
    """Launch settings: CSS, and gradio's routes this app does not use switched off (monitoring, MCP, PWA,
    run history); uploads (drawings) capped at 5 MB; nothing extra is served (no allowed_paths: the weights
    stay private)."""
    return dict(server_name=host or os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                server_port=int(port or os.environ.get("GRADIO_SERVER_PORT", 7860)),
                css=CSS, footer_links=["api", "gradio"], run_history=False, enable_monitoring=False,
                mcp_server=False, pwa=False, ssr_mode=False, show_error=False, max_file_size="5mb")


def resolve_revision(hub_repo: str | None, revision: str | None, weights_dir=None) -> str | None:
    """--revision, else the revision weights/hub.json pinned for this repo (the rule `hub.load_model` follows)."""
    if not hub_repo or revision:
        return revision
    pin = hub.hub_pin(weights_dir)
    return pin.get("revision") if pin.get("repo") == hub_repo else None


def create_demo(weights_dir=None, hub_repo=None, revision=None, device=None, precision: str = "auto",
                **kwargs) -> gr.Blocks:
    """Load whatever models can be loaded (never raising for missing weights) and build the app.
    precision: "auto" (bf16 autocast on a CPU with bf16 hardware, else fp32), "fp32" or "bf16"."""
    device = device or pick_device()
    dp.resolve_precision(precision, device)                     # a bad value fails here, before any loading
    notes: list[str] = []
    pipelines, messages = hub.load_pipelines(weights_dir=weights_dir, hub_repo=hub_repo, revision=revision,
                                             device=device)     # no revision: the one pinned in hub.json
    for pipe in pipelines.values():
        pipe.precision = precision
    classifier = None
    try:
        classifier = hub.load_model("classifier", weights_dir=weights_dir, hub_repo=hub_repo, revision=revision,
                                    device=device, messages=[])
    except Exception as e:  # noqa: BLE001 - optional: the app works without it
        notes.append(f"classifier: unavailable, generated digits are not checked ({type(e).__name__})")
    cards = read_model_cards((*MODEL_NAMES, "autoencoder", "classifier"), weights_dir, hub_repo,
                             resolve_revision(hub_repo, revision, weights_dir))
    return build_demo(pipelines, notes + messages, classifier=classifier, cards=cards, device=device, **kwargs)


def __getattr__(name: str):
    """`app.demo`, built on first access from the default weights (env HUB_REPO / HUB_REVISION honoured)."""
    if name == "demo":
        globals()["demo"] = built = create_demo(hub_repo=os.environ.get("HUB_REPO") or None,
                                               revision=os.environ.get("HUB_REVISION") or None)
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", default=None, help=f"local weights folder (default {hub.DEFAULT_WEIGHTS_DIR})")
    parser.add_argument("--hub-repo", default=os.environ.get("HUB_REPO") or None,
                        help="load the models from this Hub repo (env HUB_REPO); local weights are the fallback")
    parser.add_argument("--revision", default=os.environ.get("HUB_REVISION") or None,
                        help="Hub commit to load (env HUB_REVISION; default: the one pinned in weights/hub.json)")
    parser.add_argument("--host", default=None, help="default $GRADIO_SERVER_NAME or 127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default $GRADIO_SERVER_PORT or 7860")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS, help="time limit per request")
    parser.add_argument("--max-queue", type=int, default=16, help="requests allowed to wait in the queue")
    parser.add_argument("--precision", choices=dp.PRECISIONS, default="auto",
                        help="score network precision: auto = bf16 autocast on a CPU with bf16 hardware "
                             "(AVX512-BF16/AMX, measured 1.2-1.5x at equal quality), else fp32")
    args = parser.parse_args(argv)
    app = create_demo(args.weights_dir, args.hub_repo, args.revision, max_seconds=args.max_seconds,
                      max_queue=args.max_queue, precision=args.precision)
    app.launch(**launch_kwargs(args.host, args.port))


if __name__ == "__main__":
    main()
